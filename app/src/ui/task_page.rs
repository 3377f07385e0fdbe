//! A task's own page, as a person reads it: its record, its payload, its result (tables for the
//! kinds whose result is one, JSON as a foldable tree), its attempts as a timeline, its events as
//! they happen, and a Cancel button while it can still be cancelled (for a token that may
//! operate).

use super::{
    ProgressBar, StatusBadge, Viewer, api,
    api::Typed,
    attempts::AttemptTimeline,
    body_view::{Download, PayloadView, ResultView, SHOW_MAX, size},
    live,
};
use crate::model::{AttemptList, Status, TaskEvent, TaskView};
use leptos::{prelude::*, task::spawn_local};
use leptos_router::hooks::use_params_map;

/// What the page knows of a body it shows (the payload, the result).
#[derive(Clone, Debug, PartialEq)]
enum Shown {
    /// Fetched, to show.
    Body(Typed),
    /// Too large to show here: a download link.
    TooLarge(u64),
    /// Could not be fetched (or, for a result, there is none: the task failed).
    Missing(String),
}

impl Shown {
    /// `url`'s bytes, to show, or the server's reason they are missing.
    async fn of(url: &str) -> Shown {
        match api::get_typed(url).await {
            Ok(body) => Shown::Body(body),
            Err(e) => Shown::Missing(e),
        }
    }

    /// Their size when they are too large to show (asked with `HEAD`, which reads none of
    /// them), else as [`Shown::of`].
    async fn sized(url: &str) -> Shown {
        match api::content_length(url).await {
            Ok(Some(bytes)) if bytes > SHOW_MAX => Shown::TooLarge(bytes),
            _ => Shown::of(url).await,
        }
    }
}

/// `/tasks/{id}`.
#[component]
pub fn TaskPage() -> impl IntoView {
    let params = use_params_map();
    let id = params.read_untracked().get("id").unwrap_or_default();
    let task = RwSignal::new(None::<TaskView>);
    let events = RwSignal::new(Vec::<(String, TaskEvent)>::new());
    let result = RwSignal::new(None::<Shown>);
    let payload = RwSignal::new(None::<Shown>);
    // `Some(None)`: the server keeps no attempt history (an older server: it answers 404).
    let attempts = RwSignal::new(None::<Result<Option<AttemptList>, String>>);
    let load_error = RwSignal::new(None::<String>);
    let cancel_error = RwSignal::new(None::<String>);
    let cancelling = RwSignal::new(false);
    let viewer = Viewer::get();

    let fetch_result = move |id: String| {
        spawn_local(
            async move { result.set(Some(Shown::sized(&format!("/api/v1/tasks/{id}/result")).await)) },
        )
    };
    let fetch_payload = move |view: TaskView| {
        spawn_local(async move {
            let url = format!("/api/v1/tasks/{}/payload", view.id);
            // A large one is asked for with `HEAD` first: it may be gone (a succeeded task's
            // payload is kept only for `--payload-retention`), and a link would lead nowhere.
            let shown =
                if view.payload_bytes > SHOW_MAX { Shown::sized(&url).await } else { Shown::of(&url).await };
            payload.set(Some(shown));
        })
    };
    let load_attempts = move |id: String| {
        spawn_local(async move {
            attempts
                .set(Some(api::get_optional::<AttemptList>(&format!("/api/v1/tasks/{id}/attempts")).await));
        })
    };
    let load_task = move |id: String| {
        spawn_local(async move {
            match api::get_json::<TaskView>(&format!("/api/v1/tasks/{id}")).await {
                Ok(view) => {
                    if payload.read_untracked().is_none() {
                        fetch_payload(view.clone());
                    }
                    task.set(Some(view));
                }
                Err(e) => load_error.set(Some(e)),
            }
        })
    };
    // Effects run only in the browser, after hydration.
    Effect::new({
        let id = id.clone();
        move |_| {
            load_task(id.clone());
            load_attempts(id.clone());
            let id = id.clone();
            live::subscribe(&format!("/api/v1/tasks/{id}/events"), move |name, data| {
                // Events were missed: the record again (the task's state follows as an event).
                if name == live::RESET_EVENT {
                    load_task(id.clone());
                    load_attempts(id.clone());
                    return true;
                }
                let Ok(event) = serde_json::from_str::<TaskEvent>(data) else {
                    return true;
                };
                task.update(|view| {
                    if let Some(view) = view {
                        view.apply(&event);
                    }
                });
                if event.status == Status::Succeeded || event.status == Status::Failed {
                    fetch_result(id.clone());
                }
                // Each change of status begins or ends an attempt; progress changes none.
                if name != "progress" {
                    load_attempts(id.clone());
                }
                let terminal = event.status.is_terminal();
                events.update(|list| list.push((name.to_string(), event)));
                !terminal
            });
        }
    });

    // The task's own event (`cancelled`, or `running` for one told to stop) updates the page.
    let cancel = {
        let id = id.clone();
        move |_| {
            cancelling.set(true);
            cancel_error.set(None);
            let id = id.clone();
            spawn_local(async move {
                if let Err(e) = api::delete(&format!("/api/v1/tasks/{id}")).await {
                    cancel_error.set(Some(e));
                }
                cancelling.set(false);
            });
        }
    };
    let cancellable =
        move || viewer.can("operate") && task.read().as_ref().is_some_and(|t| !t.status.is_terminal());
    let kind = move || task.read().as_ref().map(|t| t.kind.clone()).unwrap_or_default();
    let payload_href = format!("/api/v1/tasks/{id}/payload");
    let result_href = {
        let id = id.clone();
        move || {
            let signed = task.read().as_ref().and_then(|t| t.result_url.clone());
            signed.unwrap_or_else(|| format!("/api/v1/tasks/{id}/result"))
        }
    };

    view! {
        <section class="task-page">
            <div class="heading">
                <h1>"Task " <code>{id.clone()}</code></h1>
                <Show when=cancellable>
                    <button class="danger" disabled=move || cancelling.get() on:click=cancel.clone()>
                        "Cancel task"
                    </button>
                </Show>
                <span class="submit-error" role="alert">{move || cancel_error.get()}</span>
            </div>
            {move || load_error.get().map(|e| view! { <p class="submit-error" role="alert">{e}</p> })}
            {move || task.get().map(|t| view! { <TaskRecord task=t/> })}
            <h2>"Result"</h2>
            <div class="result">
                {move || match result.get() {
                    None => view! { <p class="pending">"not finished yet"</p> }.into_any(),
                    Some(Shown::Body(body)) => view! { <ResultView kind=kind() body/> }.into_any(),
                    Some(Shown::TooLarge(bytes)) => view! {
                        <p class="hint">"Too large to show here. " <Download href=result_href() bytes/></p>
                    }
                    .into_any(),
                    Some(Shown::Missing(e)) => view! { <p class="error">{e}</p> }.into_any(),
                }}
            </div>
            <h2>"Payload"</h2>
            <div class="payload">
                {
                    let href = payload_href.clone();
                    move || {
                        let href = href.clone();
                        match payload.get() {
                            None => view! { <p class="pending">"loading…"</p> }.into_any(),
                            Some(Shown::Body(body)) => view! { <PayloadView body href/> }.into_any(),
                            Some(Shown::TooLarge(bytes)) => view! {
                                <p class="hint">
                                    {format!("{} — too large to show here. ", size(bytes))}
                                    <Download href bytes/>
                                </p>
                            }
                            .into_any(),
                            Some(Shown::Missing(e)) => view! { <p class="error">{e}</p> }.into_any(),
                        }
                    }
                }
            </div>
            <h2>"Attempts"</h2>
            <div class="attempts-timeline">
                {move || match attempts.get() {
                    None => view! { <p class="pending">"loading…"</p> }.into_any(),
                    Some(Ok(Some(list))) => view! { <AttemptTimeline attempts=list.attempts/> }.into_any(),
                    Some(Ok(None)) => {
                        view! { <p class="empty">"This server keeps no history of attempts."</p> }.into_any()
                    }
                    Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
                }}
            </div>
            <h2>"Events"</h2>
            <ol class="events">
                {move || {
                    events
                        .get()
                        .into_iter()
                        .map(|(name, e)| {
                            view! {
                                <li>
                                    <time>{e.at.clone()}</time>
                                    " "
                                    <span class="event-name">{name}</span>
                                    {e.progress.map(|p| format!(" {p}%"))}
                                    {e.error.map(|err| format!(" — {err}"))}
                                </li>
                            }
                        })
                        .collect_view()
                }}
            </ol>
        </section>
    }
}

/// The task's record as a definition list.
#[component]
fn TaskRecord(task: TaskView) -> impl IntoView {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    view! {
        <dl class="record">
            <dt>"Kind"</dt><dd class="kind">{task.kind}</dd>
            <dt>"Queue"</dt><dd class="queue"><a href="/queues">{task.queue}</a></dd>
            <dt>"Status"</dt><dd><StatusBadge status=task.status/></dd>
            <dt>"Progress"</dt><dd><ProgressBar progress=task.progress/></dd>
            <dt>"Attempts"</dt><dd>{format!("{} of {}", task.attempts, task.max_attempts)}</dd>
            <dt>"Payload"</dt><dd>{size(task.payload_bytes)}</dd>
            <dt>"Created"</dt><dd>{task.created_at}</dd>
            <dt>"Started"</dt><dd>{or_dash(task.started_at)}</dd>
            <dt>"Finished"</dt><dd>{or_dash(task.finished_at)}</dd>
            {task.expires_at.map(|at| view! { <dt>"Expires"</dt><dd class="expires">{at}</dd> })}
            <dt>"Error"</dt><dd>{or_dash(task.error)}</dd>
        </dl>
    }
}
