//! The schedules page: every schedule with its next ticks and latest run (linked to its task),
//! and Pause, Resume and Run now buttons; read again as task events arrive.

use super::{StatusBadge, Viewer, api, dashboard::short_time, live};
use crate::model::{
    TaskView,
    schedules::{ScheduleList, ScheduleSpec, ScheduleView},
};
use leptos::{prelude::*, task::spawn_local};
use std::time::Duration;

/// The least time between two reloads while task events stream in.
const RELOAD_EVERY: Duration = Duration::from_millis(500);
/// Next ticks move on by themselves: the list is read again this often anyway.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// `/schedules`.
#[component]
pub fn SchedulesPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<ScheduleView>, String>>);
    let notice = RwSignal::new(None::<String>);
    let reload_due = StoredValue::new(false);
    let reload = move || {
        spawn_local(async move {
            let answer = api::get_json::<ScheduleList>("/api/v1/schedules").await.map(|l| l.schedules);
            let _ = list.try_set(Some(answer));
        });
    };
    Effect::new(move |_| {
        reload();
        // A run that starts or ends changes a schedule's latest run (and one may have before the stream opened):
        // reload, at most twice a second.
        live::subscribe("/api/v1/events", move |name, _| {
            if name != "progress" && reload_due.try_get_value() == Some(false) {
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
        if let Ok(every) = set_interval_with_handle(reload, REFRESH_EVERY) {
            on_cleanup(move || every.clear());
        }
    });
    view! {
        <section class="schedules">
            <div class="heading">
                <h1>"Schedules"</h1>
                <span class="notice" role="status">{move || notice.get()}</span>
            </div>
            <p class="hint">
                "Each schedule submits a task at every tick of its cron pattern or interval, once however many Courier processes run. "
                "Schedules are put with " <code>"PUT /api/v1/schedules/{name}"</code> " or declared in "
                <code>"courier.toml"</code> "; times are UTC."
            </p>
            {move || match list.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(schedules)) if schedules.is_empty() => {
                    view! { <p class="empty">"No schedules yet."</p> }.into_any()
                }
                Some(Ok(schedules)) => {
                    view! {
                        <table class="queue-table schedule-table">
                            <thead>
                                <tr>
                                    <th>"Schedule"</th>
                                    <th>"When"</th>
                                    <th>"Task"</th>
                                    <th>"State"</th>
                                    <th>"Next runs"</th>
                                    <th>"Last run"</th>
                                    <th></th>
                                </tr>
                            </thead>
                            <tbody>
                                {schedules
                                    .into_iter()
                                    .map(|schedule| view! { <ScheduleRow schedule list notice reload/> })
                                    .collect_view()}
                            </tbody>
                        </table>
                    }
                        .into_any()
                }
            }}
        </section>
    }
}

/// When a schedule ticks, in a few words: `*/5 * * * * (Europe/Paris)`, `every 30s`.
fn describe_timing(spec: &ScheduleSpec) -> String {
    match (&spec.cron, &spec.every) {
        (Some(cron), _) if spec.timezone == "UTC" => cron.clone(),
        (Some(cron), _) => format!("{cron} ({})", spec.timezone),
        (None, Some(every)) => format!("every {every}"),
        (None, None) => "—".into(),
    }
}

/// One schedule, with the buttons a token that may operate sees.
#[component]
fn ScheduleRow(
    schedule: ScheduleView,
    list: RwSignal<Option<Result<Vec<ScheduleView>, String>>>,
    notice: RwSignal<Option<String>>,
    reload: impl Fn() + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let ScheduleView { name, schedule: spec, paused, next_runs, last_run } = schedule;
    let viewer = Viewer::get();
    let busy = RwSignal::new(false);
    // Schedule names are `[A-Za-z0-9][A-Za-z0-9._-]*`: safe in a path as they are.
    let base = format!("/api/v1/schedules/{name}");
    let toggle_url = format!("{base}/{}", if paused { "resume" } else { "pause" });
    let toggle = move |_| {
        busy.set(true);
        let url = toggle_url.clone();
        spawn_local(async move {
            match api::post::<ScheduleView>(&url).await {
                Ok(fresh) => {
                    notice.set(None);
                    list.update(|list| {
                        if let Some(Ok(list)) = list
                            && let Some(row) = list.iter_mut().find(|s| s.name == fresh.name)
                        {
                            *row = fresh;
                        }
                    });
                }
                Err(e) => notice.set(Some(e)),
            }
            busy.set(false);
        });
    };
    let run_url = format!("{base}/run");
    let run_now = move |_| {
        busy.set(true);
        let url = run_url.clone();
        spawn_local(async move {
            match api::post::<TaskView>(&url).await {
                Ok(_) => {
                    notice.set(None);
                    reload();
                }
                Err(e) => notice.set(Some(e)),
            }
            busy.set(false);
        });
    };
    let task = spec.task.as_ref().map(|t| match &t.queue {
        Some(queue) => format!("{} → {queue}", t.kind),
        None => t.kind.clone(),
    });
    view! {
        <tr class=if paused { "schedule paused" } else { "schedule" } data-schedule=name.clone()>
            <td class="name"><code>{name.clone()}</code></td>
            <td class="timing"><code>{describe_timing(&spec)}</code></td>
            <td class="task"><code>{task}</code></td>
            <td class="state">
                {if paused {
                    view! { <span class="badge queue-paused">"paused"</span> }
                } else {
                    view! { <span class="badge queue-active">"active"</span> }
                }}
            </td>
            <td class="next-runs">
                {if next_runs.is_empty() {
                    view! { <span class="empty">"—"</span> }.into_any()
                } else {
                    view! {
                        <ol>
                            {next_runs.iter().map(|at| view! { <li class="time">{short_time(at)}</li> }).collect_view()}
                        </ol>
                    }
                        .into_any()
                }}
            </td>
            <td class="last-run">
                {match last_run {
                    None => view! { <span class="empty">"never"</span> }.into_any(),
                    Some(run) => {
                        let href = match (run.task_id, run.workflow_id) {
                            (_, Some(workflow)) => format!("/workflows/{workflow}"),
                            (task, None) => format!("/tasks/{}", task.map(|t| t.to_string()).unwrap_or_default()),
                        };
                        view! {
                            <a class="run-link" href=href>
                                <span class="time">{short_time(&run.tick)}</span>
                                {run.manual.then_some(" (by hand)")}
                            </a>
                            " "
                            {run.status.map(|status| view! { <StatusBadge status/> })}
                            {run
                                .workflow_status
                                .map(|s| view! { <span class=format!("badge status-{}", s.as_str())>{s.as_str()}</span> })}
                        }
                            .into_any()
                    }
                }}
            </td>
            <td class="toggle">
                <Show when=move || viewer.can("operate")>
                    <button class="secondary" disabled=move || busy.get() on:click=toggle.clone()>
                        {if paused { "Resume" } else { "Pause" }}
                    </button>
                    " "
                    <button class="secondary" disabled=move || busy.get() on:click=run_now.clone()>
                        "Run now"
                    </button>
                </Show>
            </td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_read_as_their_pattern_with_a_zone_other_than_utc() {
        let spec = |value| serde_json::from_value::<ScheduleSpec>(value).unwrap();
        let utc = spec(serde_json::json!({"cron": "*/5 * * * *"}));
        assert_eq!(describe_timing(&utc), "*/5 * * * *");
        let paris = spec(serde_json::json!({"cron": "0 9 * * 1", "timezone": "Europe/Paris"}));
        assert_eq!(describe_timing(&paris), "0 9 * * 1 (Europe/Paris)");
        assert_eq!(describe_timing(&spec(serde_json::json!({"every": "30s"}))), "every 30s");
    }
}
