//! The dead-letter page: failed tasks with their reason, to requeue or delete; kept live.

use super::{Allowed, StatusBadge, Viewer, api, live};
use crate::model::{DeadLetter, DeadLetterPage, TaskView};
use leptos::{prelude::*, task::spawn_local};

/// How many dead letters the page shows.
const PAGE: usize = 100;

/// `/dead-letters`.
#[component]
pub fn DeadLettersPage() -> impl IntoView {
    let letters = RwSignal::new(None::<Result<Vec<DeadLetter>, String>>);
    let notice = RwSignal::new(None::<String>);
    let reload = move || {
        spawn_local(async move {
            let page = api::get_json::<DeadLetterPage>(&format!("/api/v1/dead-letters?limit={PAGE}")).await;
            letters.set(Some(page.map(|p| p.dead_letters)));
        })
    };
    // Effects run only in the browser: load, then reload whenever a task fails or is requeued,
    // or the stream says events were missed.
    Effect::new(move |_| {
        reload();
        live::subscribe("/api/v1/events", move |name, _data| {
            if name == "failed" || name == "queued" || name == live::RESET_EVENT {
                reload();
            }
            true
        });
    });
    let requeue_all = move |_| {
        spawn_local(async move {
            match api::post::<serde_json::Value>("/api/v1/dead-letters/requeue").await {
                Ok(answer) => notice.set(Some(format!("requeued {}", answer["requeued"]))),
                Err(e) => notice.set(Some(e)),
            }
            reload();
        })
    };

    view! {
        <section class="dead-letters">
            <div class="heading">
                <h1>"Dead letters"</h1>
                <Allowed scope="operate">
                    <button class="secondary" on:click=requeue_all>"Requeue all"</button>
                </Allowed>
                <span class="notice" role="status">{move || notice.get()}</span>
            </div>
            <p class="hint">
                "Tasks that failed for good: every attempt failed, the error was not retryable, or time ran out. "
                "Requeue runs one again with its attempts reset."
            </p>
            {move || match letters.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty">"No dead letters: nothing has failed for good."</p> }.into_any()
                }
                Some(Ok(list)) => {
                    view! {
                        <ul class="tasks">
                            {list
                                .into_iter()
                                .map(|letter| view! { <DeadLetterRow letter notice on_change=reload/> })
                                .collect_view()}
                        </ul>
                    }
                        .into_any()
                }
            }}
        </section>
    }
}

/// One dead letter, with its buttons for a token that may operate.
#[component]
fn DeadLetterRow(
    letter: DeadLetter,
    notice: RwSignal<Option<String>>,
    on_change: impl Fn() + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let DeadLetter { task, reason, failed_at } = letter;
    let id = task.id.to_string();
    let act = move |requeue: bool, id: String| {
        spawn_local(async move {
            let result = if requeue {
                api::post::<TaskView>(&format!("/api/v1/dead-letters/{id}/requeue")).await.map(|_| ())
            } else {
                api::delete(&format!("/api/v1/dead-letters/{id}")).await
            };
            if let Err(e) = result {
                notice.set(Some(e));
            }
            on_change();
        })
    };
    let viewer = Viewer::get();
    let buttons = {
        let id = id.clone();
        move || {
            let (requeue_id, delete_id) = (id.clone(), id.clone());
            viewer.can("operate").then(|| {
                view! {
                    <button on:click=move |_| act(true, requeue_id.clone())>"Requeue"</button>
                    <button class="danger" on:click=move |_| act(false, delete_id.clone())>"Delete"</button>
                }
            })
        }
    };
    view! {
        <li class="task dead-letter" data-task-id=id.clone()>
            <a class="task-link" href=format!("/tasks/{id}")>
                <span class="kind">{task.kind.clone()}</span>
                <span class="task-queue" title="queue">{task.queue.clone()}</span>
                <code class="id">{id[id.len() - 8..].to_string()}</code>
            </a>
            <StatusBadge status=task.status/>
            <span class="reason">{reason.replace('_', " ")}</span>
            <span class="actions">{buttons}</span>
            <span class="error">
                {format!("{} — after {} attempt(s), {}", task.error.unwrap_or_default(), task.attempts, failed_at)}
            </span>
        </li>
    }
}
