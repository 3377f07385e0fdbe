//! The dead-letter page: failed tasks with their reason, to requeue or delete one by one, or
//! every one a filter takes (queue, kind, reason, when they failed) after its count is shown and
//! confirmed; kept live.

use super::{Allowed, KindOptions, StatusBadge, Viewer, api, utc_time};
use crate::model::{
    DEAD_REASONS, DeadLetter, DeadLetterCount, DeadLetterPage, DeadLettersDeleted, DeadLettersRequeued,
    QueueList, TaskView, is_queue_name,
};
use leptos::{prelude::*, task::spawn_local};
use std::time::Duration;

/// How many dead letters the page lists.
const PAGE: usize = 100;
/// How long the filter must rest, or the events pause, before the page asks again.
const SETTLE: Duration = Duration::from_millis(300);

/// What a bulk action does, as the page words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bulk {
    Requeue,
    Delete,
}

impl Bulk {
    fn verb(self) -> &'static str {
        match self {
            Bulk::Requeue => "Requeue",
            Bulk::Delete => "Delete",
        }
    }
}

/// "1 dead letter", "37 dead letters".
fn dead_letters(n: u64) -> String {
    if n == 1 { "1 dead letter".into() } else { format!("{n} dead letters") }
}

/// `/dead-letters`.
#[component]
pub fn DeadLettersPage() -> impl IntoView {
    let known_queues = LocalResource::new(|| api::get_json::<QueueList>("/api/v1/queues"));
    let queue = RwSignal::new(String::new());
    let kind = RwSignal::new(String::new());
    let reason = RwSignal::new(String::new());
    let after = RwSignal::new(String::new());
    let before = RwSignal::new(String::new());
    let letters = RwSignal::new(None::<Result<Vec<DeadLetter>, String>>);
    let count = RwSignal::new(None::<Result<DeadLetterCount, String>>);
    // The action asked for and the count it was asked with, until confirmed or cancelled.
    let confirming = RwSignal::new(None::<(Bulk, DeadLetterCount)>);
    let busy = RwSignal::new(false);
    let notice = RwSignal::new(None::<String>);
    // Each reload has a number: an answer to an older one than the last asked is dropped.
    let asked = StoredValue::new(0u64);

    // The filter as API query pairs; an error names a field the API would refuse.
    let filter = Memo::new(move |_| -> Result<Vec<(&'static str, String)>, String> {
        let mut pairs = Vec::new();
        let queue = queue.get().trim().to_string();
        if !queue.is_empty() {
            if !is_queue_name(&queue) {
                return Err(format!("“{queue}” is not a queue name"));
            }
            pairs.push(("queue", queue));
        }
        for (name, field) in [("kind", kind), ("reason", reason)] {
            let value = field.get();
            if !value.is_empty() {
                pairs.push((name, value));
            }
        }
        for (name, field) in [("failed_after", after), ("failed_before", before)] {
            let value = field.get();
            if !value.trim().is_empty() {
                pairs.push((name, utc_time(&value)));
            }
        }
        Ok(pairs)
    });

    let reload = move || {
        let Ok(pairs) = filter.get_untracked() else {
            count.set(None);
            return;
        };
        asked.update_value(|n| *n += 1);
        let this = asked.get_value();
        spawn_local(async move {
            let mut listed = pairs.clone();
            listed.push(("limit", PAGE.to_string()));
            let counted = api::get_json::<DeadLetterCount>(&format!(
                "/api/v1/dead-letters/count{}",
                api::query(&pairs)
            ))
            .await;
            let page =
                api::get_json::<DeadLetterPage>(&format!("/api/v1/dead-letters{}", api::query(&listed)))
                    .await;
            if asked.get_value() == this {
                count.set(Some(counted));
                letters.set(Some(page.map(|p| p.dead_letters)));
            }
        });
    };
    // Waits for things to settle, then reloads once, however many asked meanwhile.
    let pending = StoredValue::new(false);
    let reload_soon = move || {
        if pending.get_value() {
            return;
        }
        pending.set_value(true);
        set_timeout(
            move || {
                pending.set_value(false);
                reload();
            },
            SETTLE,
        );
    };
    // Effects run only in the browser: the count and list follow the filter (a changed filter
    // also calls off an action waiting for its confirmation), then the events.
    Effect::new(move |first: Option<()>| {
        filter.track();
        confirming.set(None);
        if first.is_none() {
            reload();
            super::live::subscribe("/api/v1/events", move |name, _data| {
                if ["failed", "queued", super::live::RESET_EVENT, super::live::OPEN_EVENT].contains(&name) {
                    reload_soon();
                }
                true
            });
        } else {
            reload_soon();
        }
    });

    let act = move |action: Bulk, counted: DeadLetterCount| {
        let Ok(mut pairs) = filter.get_untracked() else { return };
        // Only the dead letters counted: none that failed since.
        pairs.retain(|(name, _)| *name != "failed_before");
        pairs.push(("failed_before", counted.as_of.clone()));
        busy.set(true);
        spawn_local(async move {
            let done = match action {
                Bulk::Requeue => api::post::<DeadLettersRequeued>(&format!(
                    "/api/v1/dead-letters/requeue{}",
                    api::query(&pairs)
                ))
                .await
                .map(|r| format!("Requeued {}.", dead_letters(r.requeued))),
                Bulk::Delete => api::delete_json::<DeadLettersDeleted>(&format!(
                    "/api/v1/dead-letters{}",
                    api::query(&pairs)
                ))
                .await
                .map(|r| format!("Deleted {}.", dead_letters(r.deleted))),
            };
            notice.set(Some(done.unwrap_or_else(|e| e)));
            confirming.set(None);
            busy.set(false);
            reload();
        });
    };

    let matching = move || count.get().and_then(Result::ok);
    let bulk_button = move |action: Bulk| {
        let class = if action == Bulk::Delete { "danger" } else { "secondary" };
        view! {
            <button
                class=class
                disabled=move || busy.get() || matching().is_none_or(|c| c.count == 0)
                on:click=move |_| {
                    notice.set(None);
                    confirming.set(matching().map(|c| (action, c)));
                }
            >
                {move || match matching() {
                    Some(c) if c.count > 0 => format!("{} {}", action.verb(), dead_letters(c.count)),
                    _ => format!("{} dead letters", action.verb()),
                }}
            </button>
        }
    };
    let field = |label: &'static str, id: &'static str, value: RwSignal<String>, kind: &'static str| {
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input
                    id=id
                    type=kind
                    spellcheck="false"
                    autocomplete="off"
                    list=(id == "dl-queue").then_some("dl-known-queues")
                    prop:value=move || value.get()
                    on:input=move |ev| value.set(event_target_value(&ev))
                />
            </div>
        }
    };

    view! {
        <section class="dead-letters">
            <div class="heading">
                <h1>"Dead letters"</h1>
                <span class="notice" role="status">{move || notice.get()}</span>
            </div>
            <p class="hint">
                "Tasks that failed for good: every attempt failed, the error was not retryable, or time ran out. "
                "Requeue runs one again from the start: its attempts and their timeline start over. Times are UTC."
            </p>
            <form class="filters" on:submit=|ev| ev.prevent_default()>
                {field("Queue", "dl-queue", queue, "text")}
                <datalist id="dl-known-queues">
                    {move || {
                        known_queues.get().and_then(Result::ok).map(|list| {
                            list.queues.into_iter().map(|q| view! { <option value=q.name></option> }).collect_view()
                        })
                    }}
                </datalist>
                <div class="field">
                    <label for="dl-kind">"Kind"</label>
                    <select id="dl-kind" on:change=move |ev| kind.set(event_target_value(&ev))>
                        <option value="">"any kind"</option>
                        <KindOptions chosen=kind/>
                    </select>
                </div>
                <div class="field">
                    <label for="dl-reason">"Reason"</label>
                    <select id="dl-reason" on:change=move |ev| reason.set(event_target_value(&ev))>
                        <option value="">"any reason"</option>
                        {DEAD_REASONS.map(|r| view! { <option value=r>{r.replace('_', " ")}</option> }).into_iter().collect_view()}
                    </select>
                </div>
                {field("Failed after", "dl-after", after, "datetime-local")}
                {field("Failed before", "dl-before", before, "datetime-local")}
            </form>
            <div class="bulk">
                <p class="bulk-count" role="status">
                    {move || match (filter.get(), count.get()) {
                        (Err(e), _) => view! { <span class="submit-error">{e}</span> }.into_any(),
                        (_, None) => view! { <span class="pending">"counting…"</span> }.into_any(),
                        (_, Some(Err(e))) => view! { <span class="submit-error">{e}</span> }.into_any(),
                        (_, Some(Ok(c))) if c.count == 0 => "No dead letter matches.".into_any(),
                        (_, Some(Ok(c))) => {
                            let verb = if c.count == 1 { "matches" } else { "match" };
                            format!("{} {verb}.", dead_letters(c.count)).into_any()
                        }
                    }}
                </p>
                <Allowed scope="operate">
                    {bulk_button(Bulk::Requeue)}
                    {bulk_button(Bulk::Delete)}
                </Allowed>
            </div>
            {move || confirming.get().map(|(action, counted)| {
                let question = format!(
                    "{} the {} that match, which failed before {}?",
                    action.verb(),
                    dead_letters(counted.count),
                    counted.as_of
                );
                let confirm = format!("Yes, {} {}", action.verb().to_lowercase(), counted.count);
                view! {
                    <div class="confirm" role="alertdialog" aria-label="Confirm">
                        <p>{question}</p>
                        <button
                            class=if action == Bulk::Delete { "danger" } else { "" }
                            disabled=move || busy.get()
                            on:click=move |_| act(action, counted.clone())
                        >
                            {confirm}
                        </button>
                        <button class="secondary" on:click=move |_| confirming.set(None)>"Cancel"</button>
                    </div>
                }
            })}
            {move || match letters.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty">"No dead letters here: nothing has failed for good."</p> }.into_any()
                }
                Some(Ok(list)) => {
                    let more = (list.len() == PAGE).then(|| {
                        view! { <p class="hint">{format!("The {PAGE} most recent are listed.")}</p> }
                    });
                    view! {
                        <ul class="tasks">
                            {list
                                .into_iter()
                                .map(|letter| view! { <DeadLetterRow letter notice on_change=reload/> })
                                .collect_view()}
                        </ul>
                        {more}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_worded_in_the_singular_and_plural() {
        assert_eq!(dead_letters(1), "1 dead letter");
        assert_eq!(dead_letters(37), "37 dead letters");
        assert_eq!(format!("{} {}", Bulk::Requeue.verb(), dead_letters(3)), "Requeue 3 dead letters");
    }
}
