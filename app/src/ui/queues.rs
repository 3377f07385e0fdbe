//! The queues page: every named queue with its counts, limits and a pause switch; kept live.

use super::{Viewer, api, live};
use crate::model::{QUEUE_EVENT, QueueEvent, QueueLimits, QueueList, QueueView};
use leptos::{prelude::*, task::spawn_local};
use std::time::Duration;

/// The least time between two reloads of the list while events stream in: a burst of task
/// events costs one request, not one each.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// `/queues`.
#[component]
pub fn QueuesPage() -> impl IntoView {
    let shown = Shown::new();
    let notice = RwSignal::new(None::<String>);
    // Effects run only in the browser, after hydration.
    Effect::new(move |_| {
        shown.reload();
        follow_queues(shown);
    });

    view! {
        <section class="queues">
            <div class="heading">
                <h1>"Queues"</h1>
                <span class="notice" role="status">{move || notice.get()}</span>
            </div>
            <p class="hint">
                "Every task waits in a queue. A paused queue keeps its tasks and starts none of them until it is resumed; "
                "its limits are set with " <code>"PUT /api/v1/queues/{name}"</code> "."
            </p>
            {move || match shown.list.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty">"No queues yet: a queue appears when a task is first sent to it."</p> }
                        .into_any()
                }
                Some(Ok(list)) => view! { <QueueTable list shown notice/> }.into_any(),
            }}
        </section>
    }
}

/// The queues the page shows, and the order of the answers that fill it.
#[derive(Clone, Copy)]
struct Shown {
    list: RwSignal<Option<Result<Vec<QueueView>, String>>>,
    /// Every change to the list takes a number in the order it was asked for; a change numbered
    /// below the last one applied arrives late (a slow reload) and is dropped, so it cannot undo
    /// a later one such as a Pause answer.
    asked: StoredValue<u64>,
    applied: StoredValue<u64>,
    /// Whether a reload is already waiting for its turn.
    reload_due: StoredValue<bool>,
}

impl Shown {
    fn new() -> Self {
        Shown {
            list: RwSignal::new(None),
            asked: StoredValue::new(0),
            applied: StoredValue::new(0),
            reload_due: StoredValue::new(false),
        }
    }

    /// Fetches every queue now.
    fn reload(self) {
        let number = self.ask();
        spawn_local(async move {
            let answer = api::get_json::<QueueList>("/api/v1/queues").await.map(|list| list.queues);
            if self.is_newest(number) {
                self.list.set(Some(answer));
            }
        });
    }

    /// Reloads at most once every [`RELOAD_EVERY`]: the first call of a burst sets a timer and
    /// the calls before it fires ride along, so the reload always comes after the last of them.
    fn reload_soon(self) {
        // The page may be gone by the time the timer fires: hence the `try_` forms.
        if self.reload_due.try_get_value() != Some(false) {
            return;
        }
        self.reload_due.set_value(true);
        set_timeout(
            move || {
                if self.reload_due.try_set_value(false).is_none() {
                    self.reload();
                }
            },
            RELOAD_EVERY,
        );
    }

    /// Puts a queue's fresh view (the answer to Pause or Resume) in place of its row at once.
    fn replace(self, queue: QueueView) {
        self.patch(|list| {
            if let Some(row) = list.iter_mut().find(|q| q.name == queue.name) {
                *row = queue;
            }
        });
    }

    /// Marks a queue paused or active as a `queue` event says, before the reload that follows.
    fn set_paused(self, event: &QueueEvent) {
        self.patch(|list| {
            if let Some(row) = list.iter_mut().find(|q| q.name == event.queue) {
                row.paused = event.paused;
            }
        });
    }

    /// Changes the rows in place, as the newest change.
    fn patch(self, change: impl FnOnce(&mut Vec<QueueView>)) {
        let number = self.ask();
        if self.is_newest(number) {
            self.list.update(|list| {
                if let Some(Ok(list)) = list {
                    change(list);
                }
            });
        }
    }

    /// The next number in the order of changes asked for.
    fn ask(self) -> u64 {
        self.asked
            .try_update_value(|n| {
                *n += 1;
                *n
            })
            .unwrap_or_default()
    }

    /// True, once, for a change asked for after every change applied so far.
    fn is_newest(self, number: u64) -> bool {
        self.applied
            .try_update_value(|last| {
                let newest = number > *last;
                if newest {
                    *last = number;
                }
                newest
            })
            .unwrap_or(false)
    }
}

/// Keeps the list current from the event stream: a `queue` event flips its row at once; task
/// events change counts, so the list is reloaded (throttled); so do a `reset` and the stream's
/// opening.
fn follow_queues(shown: Shown) {
    live::subscribe("/api/v1/events", move |name, data| {
        if name == QUEUE_EVENT
            && let Ok(event) = serde_json::from_str::<QueueEvent>(data)
        {
            shown.set_paused(&event);
        }
        // Progress moves no task from one count to another.
        if name != "progress" {
            shown.reload_soon();
        }
        true
    });
}

/// The table of queues, one row each.
#[component]
fn QueueTable(list: Vec<QueueView>, shown: Shown, notice: RwSignal<Option<String>>) -> impl IntoView {
    view! {
        <table class="queue-table">
            <thead>
                <tr>
                    <th>"Queue"</th>
                    <th>"State"</th>
                    <th class="num" title="waiting to be taken; per priority: high / normal / low">"Queued"</th>
                    <th class="num">"Scheduled"</th>
                    <th class="num">"Running"</th>
                    <th class="num">"Retrying"</th>
                    <th class="num" title="in the dead letters">"Dead"</th>
                    <th class="num" title="how long the oldest queued task has waited">"Oldest wait"</th>
                    <th class="num" title="tasks that ended in the last minute">"Done / min"</th>
                    <th>"Limits"</th>
                    <th></th>
                </tr>
            </thead>
            <tbody>{list.into_iter().map(|queue| view! { <QueueRow queue shown notice/> }).collect_view()}</tbody>
        </table>
    }
}

/// One queue: its counts, its limits and, for a token that may operate, its Pause or Resume
/// button.
#[component]
fn QueueRow(queue: QueueView, shown: Shown, notice: RwSignal<Option<String>>) -> impl IntoView {
    let QueueView { name, paused, limits, counts, oldest_waiting_ms, finished_last_minute } = queue;
    let busy = RwSignal::new(false);
    let viewer = Viewer::get();
    // Queue names are `[a-z0-9][a-z0-9._-]*`: safe in a path as they are.
    let url = format!("/api/v1/queues/{name}/{}", if paused { "resume" } else { "pause" });
    let toggle = move |_| {
        busy.set(true);
        let url = url.clone();
        spawn_local(async move {
            match api::post::<QueueView>(&url).await {
                Ok(view) => {
                    notice.set(None);
                    shown.replace(view);
                }
                Err(e) => notice.set(Some(e)),
            }
            busy.set(false);
        });
    };
    let queued = counts.queued;
    let data_queue = name.clone();
    let by_priority = format!("high {}, normal {}, low {}", queued.high, queued.normal, queued.low);
    view! {
        <tr class=if paused { "queue paused" } else { "queue" } data-queue=data_queue>
            <td class="name"><code>{name}</code></td>
            <td class="state">
                {if paused {
                    view! { <span class="badge queue-paused">"paused"</span> }
                } else {
                    view! { <span class="badge queue-active">"active"</span> }
                }}
            </td>
            <td class="num queued" title=by_priority>
                <span class="queued-total">{queued.total()}</span>
                {(queued.total() > 0)
                    .then(|| {
                        view! {
                            <small class="by-priority">
                                {format!("{} / {} / {}", queued.high, queued.normal, queued.low)}
                            </small>
                        }
                    })}
            </td>
            <td class="num scheduled">{counts.scheduled}</td>
            <td class="num running">{counts.running}</td>
            <td class="num retrying">{counts.retrying}</td>
            <td class="num dead">{counts.dead}</td>
            <td class="num oldest">{oldest_waiting_ms.map_or_else(|| "—".to_string(), human_duration)}</td>
            <td class="num finished">{finished_last_minute}</td>
            <td class="limits">{describe_limits(&limits)}</td>
            <td class="toggle">
                <Show when=move || viewer.can("operate")>
                    <button class="secondary" disabled=move || busy.get() on:click=toggle.clone()>
                        {if paused { "Resume" } else { "Pause" }}
                    </button>
                </Show>
            </td>
        </tr>
    }
}

/// A duration for a person: "250 ms", "1.2 s", "3 min", "1.5 h", "2 d" (rounded down).
pub(super) fn human_duration(ms: u64) -> String {
    const SECOND: u64 = 1_000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    if ms < SECOND {
        format!("{ms} ms")
    } else if ms < MINUTE {
        format!("{}.{} s", ms / SECOND, ms % SECOND / (SECOND / 10))
    } else if ms < HOUR {
        format!("{} min", ms / MINUTE)
    } else if ms < DAY {
        format!("{}.{} h", ms / HOUR, ms % HOUR / (HOUR / 10))
    } else {
        format!("{} d", ms / DAY)
    }
}

/// The limits a queue has, in a line ("max depth 1000, concurrency 4, 20 / 1000 ms"); "—"
/// when it has none.
fn describe_limits(limits: &QueueLimits) -> String {
    let parts: Vec<String> = [
        limits.max_depth.map(|depth| format!("max depth {depth}")),
        limits.concurrency.map(|n| format!("concurrency {n}")),
        limits.rate.map(|rate| format!("{} / {} ms", rate.limit, rate.period_ms)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { "—".to_string() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RateLimit;

    #[test]
    fn durations_read_in_the_largest_unit_that_fits() {
        assert_eq!(human_duration(0), "0 ms");
        assert_eq!(human_duration(999), "999 ms");
        assert_eq!(human_duration(1_250), "1.2 s");
        assert_eq!(human_duration(59_999), "59.9 s");
        assert_eq!(human_duration(3 * 60_000 + 59_000), "3 min");
        assert_eq!(human_duration(90 * 60_000), "1.5 h");
        assert_eq!(human_duration(2 * 86_400_000 + 1), "2 d");
    }

    #[test]
    fn limits_list_only_those_set_or_a_dash() {
        assert_eq!(describe_limits(&QueueLimits::default()), "—");
        let limits = QueueLimits {
            max_depth: Some(1000),
            concurrency: None,
            rate: Some(RateLimit { limit: 20, period_ms: 1000 }),
        };
        assert_eq!(describe_limits(&limits), "max depth 1000, 20 / 1000 ms");
    }
}
