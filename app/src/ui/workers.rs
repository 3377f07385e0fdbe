//! The workers page: every live worker process, built-in or pulling over HTTP, with the tasks it
//! runs now (each linked to its page); read again as task events arrive.

use super::{api, dashboard::short_time, live};
use crate::model::{WorkerList, WorkerView};
use leptos::prelude::*;
use std::time::Duration;

/// The least time between two reloads while task events stream in.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// `/workers`.
#[component]
pub fn WorkersPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<WorkerView>, String>>);
    let reload_due = StoredValue::new(false);
    let reload = move || {
        leptos::task::spawn_local(async move {
            let answer = api::get_json::<WorkerList>("/api/v1/workers").await.map(|l| l.workers);
            let _ = list.try_set(Some(answer));
        });
    };
    Effect::new(move |_| {
        reload();
        // A task that starts or ends changes what some worker runs (and one may have before the stream opened): reload, at most
        // twice a second.
        live::subscribe("/api/v1/events", move |_, _| {
            if reload_due.try_get_value() == Some(false) {
                reload_due.set_value(true);
                set_timeout(
                    move || {
                        if reload_due.try_set_value(false).is_none() {
                            reload();
                        }
                    },
                    RELOAD_EVERY,
                );
            }
            true
        });
        // Workers come and go without task events (a new idle process, one that died).
        if let Ok(every) = set_interval_with_handle(reload, Duration::from_secs(5)) {
            on_cleanup(move || every.clear());
        }
    });
    view! {
        <section class="workers">
            <div class="heading">
                <h1>"Workers"</h1>
            </div>
            <p class="hint">
                "Every worker process seen in the last two lease periods: Courier's own ("
                <code>"courier serve"</code> ", " <code>"courier worker"</code>
                ") and those pulling over HTTP. A worker that stops leaves at once; one that dies, within two lease periods."
            </p>
            {move || match list.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(workers)) if workers.is_empty() => {
                    view! { <p class="empty">"No worker is running."</p> }.into_any()
                }
                Some(Ok(workers)) => view! { <WorkerTable workers/> }.into_any(),
            }}
        </section>
    }
}

#[component]
fn WorkerTable(workers: Vec<WorkerView>) -> impl IntoView {
    view! {
        <table class="queue-table worker-table">
            <thead>
                <tr>
                    <th>"Worker"</th>
                    <th>"Runs"</th>
                    <th>"Host / pid"</th>
                    <th>"Queues"</th>
                    <th class="num">"Busy"</th>
                    <th>"Running now"</th>
                    <th>"Started"</th>
                    <th>"Last seen"</th>
                </tr>
            </thead>
            <tbody>
                {workers
                    .into_iter()
                    .map(|w| {
                        let host = match (&w.host, w.pid) {
                            (Some(host), Some(pid)) => format!("{host} / {pid}"),
                            (Some(host), None) => host.clone(),
                            (None, Some(pid)) => pid.to_string(),
                            (None, None) => "—".into(),
                        };
                        view! {
                            <tr class="worker" data-worker=w.id.clone()>
                                <td class="name">
                                    <code>{w.id.clone()}</code>
                                    <small class="version">{w.version.clone().map(|v| format!(" v{v}"))}</small>
                                </td>
                                <td>{w.runs.clone()}</td>
                                <td>{host}</td>
                                <td>{w.queues.join(", ")}</td>
                                <td class="num busy">{format!("{} / {}", w.running.len(), w.slots)}</td>
                                <td class="running-tasks">
                                    {w
                                        .running
                                        .iter()
                                        .map(|task| {
                                            view! {
                                                <a href=format!("/tasks/{}", task.task_id) title=task.queue.clone()>
                                                    <code>{task.kind.clone()}</code>
                                                    " "
                                                    {task.task_id.to_string()[..8].to_string()}
                                                </a>
                                            }
                                        })
                                        .collect_view()}
                                </td>
                                <td class="time">{short_time(&w.started_at)}</td>
                                <td class="time">{short_time(&w.last_seen_at)}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}
