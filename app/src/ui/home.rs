//! The home page: submit a task, then watch every task change state live.

use super::{Allowed, ProgressBar, StatusBadge, api, live};
use crate::model::{KindInfo, QueueList, SubmitRequest, TaskEvent, TaskPage, TaskView, is_queue_name};
use crate::schema;
use leptos::{prelude::*, task::spawn_local};

/// How many recent tasks the live list shows.
const LIST_LEN: usize = 50;
/// How long "wait for the result" waits (`Prefer: wait`).
const WAIT_S: u32 = 30;

/// The form (for a token that may submit) and the live list under it.
#[component]
pub fn HomePage() -> impl IntoView {
    let tasks = RwSignal::new(Vec::<TaskView>::new());
    // Effects run only in the browser, after hydration.
    Effect::new(move |_| follow_all_tasks(tasks));
    view! {
        <Allowed scope="submit">
            <SubmitForm on_submitted=move |task| upsert(tasks, task)/>
            <super::workflows::WorkflowForm/>
        </Allowed>
        <section class="task-list">
            <h2>"Tasks"</h2>
            <Show
                when=move || !tasks.read().is_empty()
                fallback=|| view! { <p class="empty">"No tasks yet: submit one above."</p> }
            >
                <ul class="tasks">
                    <For
                        each=move || tasks.get()
                        key=|t| (t.id, t.status, t.progress, t.attempts)
                        children=|task| view! { <TaskRow task/> }
                    />
                </ul>
            </Show>
        </section>
    }
}

/// Loads the recent tasks, then keeps them current from the event stream, and loads them again
/// once the stream is open and whenever it says events were missed.
fn follow_all_tasks(tasks: RwSignal<Vec<TaskView>>) {
    spawn_local(load_recent(tasks, false));
    live::subscribe("/api/v1/events", move |name, data| {
        // Missed events, or ones that came between the first load and the stream's opening.
        if name == live::RESET_EVENT || name == live::OPEN_EVENT {
            spawn_local(load_recent(tasks, true));
            return true;
        }
        let Ok(event) = serde_json::from_str::<TaskEvent>(data) else {
            return true;
        };
        let known = tasks.try_update(|list| match list.iter_mut().find(|t| t.id == event.task_id) {
            Some(task) => {
                task.apply(&event);
                true
            }
            None => false,
        });
        if known == Some(false) {
            spawn_local(async move {
                if let Ok(task) = api::get_json::<TaskView>(&format!("/api/v1/tasks/{}", event.task_id)).await
                {
                    upsert(tasks, task);
                }
            });
        }
        true
    });
}

/// Fetches the recent tasks into the list: merged with what events brought first, or, after a
/// reset, in place of it (a copy pushed since the fetch is kept when it is later).
async fn load_recent(tasks: RwSignal<Vec<TaskView>>, replace: bool) {
    let Ok(page) = api::get_json::<TaskPage>(&format!("/api/v1/tasks?limit={LIST_LEN}")).await else {
        return;
    };
    tasks.update(|list| {
        if replace {
            let known = std::mem::take(list);
            *list = page
                .tasks
                .into_iter()
                .map(|task| match known.iter().find(|k| k.id == task.id) {
                    Some(k) if k.updated_at > task.updated_at => k.clone(),
                    _ => task,
                })
                .collect();
        } else {
            for task in page.tasks {
                if !list.iter().any(|t| t.id == task.id) {
                    list.push(task);
                }
            }
        }
        list.sort_by_key(|t| std::cmp::Reverse(t.id));
    });
}

/// Puts `task` in the list, newest first, replacing an older copy of it.
fn upsert(tasks: RwSignal<Vec<TaskView>>, task: TaskView) {
    tasks.update(|list| {
        match list.iter_mut().find(|t| t.id == task.id) {
            // The list may already be ahead of `task`, from pushed events: keep the later state.
            Some(existing) if existing.updated_at > task.updated_at => {}
            Some(existing) => *existing = task,
            None => list.push(task),
        }
        list.sort_by_key(|t| std::cmp::Reverse(t.id));
        list.truncate(LIST_LEN);
    });
}

/// One task in the list: kind, queue, status badge, progress, attempts, link to its page.
#[component]
pub(super) fn TaskRow(task: TaskView) -> impl IntoView {
    let href = format!("/tasks/{}", task.id);
    // UUIDv7s of one moment share their leading (time) digits; the tail tells them apart.
    let id = task.id.to_string();
    let short_id = id[id.len() - 8..].to_string();
    view! {
        <li class="task" data-task-id=task.id.to_string()>
            <a class="task-link" href=href>
                <span class="kind">{task.kind.clone()}</span>
                <span class="task-queue" title="queue">{task.queue.clone()}</span>
                <code class="id">{short_id}</code>
            </a>
            <StatusBadge status=task.status/>
            <ProgressBar progress=task.progress/>
            <span class="attempts">{format!("attempt {}/{}", task.attempts, task.max_attempts)}</span>
            {task.error.map(|e| view! { <span class="error">{e}</span> })}
        </li>
    }
}

/// The submit form: kind, queue (the kind's own unless changed), payload (checked against the
/// kind's schema first) or a file.
#[component]
fn SubmitForm(on_submitted: impl Fn(TaskView) + Copy + 'static) -> impl IntoView {
    let kinds = LocalResource::new(|| api::get_json::<Vec<KindInfo>>("/api/v1/kinds"));
    let known_queues = LocalResource::new(|| api::get_json::<QueueList>("/api/v1/queues"));
    let kind = RwSignal::new(String::from("echo"));
    let queue = RwSignal::new(String::new());
    let queue_error = RwSignal::new(None::<String>);
    let payload = RwSignal::new(String::new());
    let field_errors = RwSignal::new(Vec::<String>::new());
    let submit_error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let wait = RwSignal::new(false);
    let reply = RwSignal::new(None::<String>);
    let file_input = NodeRef::<leptos::html::Input>::new();

    let selected = move || -> Option<KindInfo> {
        let name = kind.get();
        kinds.get()?.ok()?.into_iter().find(|k| k.name == name)
    };
    // Prefill the payload with the chosen kind's example, and the queue with its own.
    Effect::new(move |_| {
        if let Some(info) = selected() {
            payload.set(serde_json::to_string_pretty(&info.example).unwrap_or_default());
            field_errors.set(Vec::new());
            queue.set(info.queue);
            queue_error.set(None);
        }
    });

    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        submit_error.set(None);
        reply.set(None);
        let Some(info) = selected() else {
            submit_error.set(Some("the task kinds have not loaded yet".into()));
            return;
        };
        let queue = match chosen_queue(&queue.get_untracked()) {
            Ok(queue) => queue,
            Err(e) => {
                queue_error.set(Some(e));
                return;
            }
        };
        #[cfg(feature = "hydrate")]
        if let Some(file) = file_input.get().and_then(|input| input.files()).and_then(|files| files.get(0)) {
            busy.set(true);
            let file = send_wrapper::SendWrapper::new(file);
            spawn_local(async move {
                match api::submit_file(&info.name, queue.as_deref(), file.take()).await {
                    Ok(task) => on_submitted(task),
                    Err(e) => submit_error.set(Some(e)),
                }
                busy.set(false);
            });
            return;
        }
        let value = match serde_json::from_str::<serde_json::Value>(&payload.get_untracked()) {
            Ok(value) => value,
            Err(e) => {
                field_errors.set(vec![format!("not valid JSON: {e}")]);
                return;
            }
        };
        if let Err(errors) = schema::validate(&info.schema, &value) {
            field_errors.set(errors);
            return;
        }
        field_errors.set(Vec::new());
        busy.set(true);
        let request = SubmitRequest {
            kind: info.name,
            payload: value,
            delay_ms: None,
            priority: None,
            max_attempts: None,
            timeout_ms: None,
            session: None,
            ttl_ms: None,
            expires_at: None,
            queue,
        };
        let wait = wait.get_untracked();
        spawn_local(async move {
            let outcome = if wait {
                api::submit_and_wait(&request, WAIT_S).await
            } else {
                api::submit(&request).await.map(|task| api::Reply::Accepted(Box::new(task)))
            };
            match outcome {
                Ok(api::Reply::Accepted(task)) => {
                    if wait {
                        reply.set(Some(format!(
                            "still running after {WAIT_S} s: follow it in the list below"
                        )));
                    }
                    on_submitted(*task)
                }
                Ok(api::Reply::Result(body)) => reply.set(Some(body)),
                Err(e) => submit_error.set(Some(e)),
            }
            busy.set(false);
        });
    };

    view! {
        <form class="submit" on:submit=on_submit>
            <h1>"Submit a task"</h1>
            <label for="kind">"Kind"</label>
            <select id="kind" name="kind" on:change=move |ev| kind.set(event_target_value(&ev))>
                {move || match kinds.get() {
                    None => view! { <option value="">"loading kinds…"</option> }.into_any(),
                    Some(Err(e)) => view! { <option value="">{format!("kinds unavailable: {e}")}</option> }.into_any(),
                    Some(Ok(list)) => list
                        .into_iter()
                        .map(|k| {
                            let is_selected = k.name == kind.get_untracked();
                            view! { <option value=k.name.clone() selected=is_selected>{k.name.clone()}</option> }
                        })
                        .collect_view()
                        .into_any(),
                }}
            </select>
            <p class="kind-description">{move || selected().map(|k| k.description)}</p>
            <label for="queue">"Queue"</label>
            <input
                id="queue"
                name="queue"
                type="text"
                list="known-queues"
                spellcheck="false"
                autocomplete="off"
                placeholder=move || selected().map(|k| k.queue)
                aria-invalid=move || queue_error.read().is_some().then_some("true")
                prop:value=move || queue.get()
                on:input=move |ev| {
                    queue.set(event_target_value(&ev));
                    queue_error.set(None);
                }
            />
            <datalist id="known-queues">
                {move || {
                    known_queues
                        .get()
                        .and_then(Result::ok)
                        .map(|list| {
                            list.queues.into_iter().map(|q| view! { <option value=q.name></option> }).collect_view()
                        })
                }}
            </datalist>
            <ul class="field-errors" id="queue-errors" role="alert">
                {move || queue_error.get().map(|e| view! { <li>{e}</li> })}
            </ul>
            <label for="payload">"Payload (JSON)"</label>
            <textarea
                id="payload"
                name="payload"
                rows="6"
                spellcheck="false"
                prop:value=move || payload.get()
                on:input=move |ev| payload.set(event_target_value(&ev))
            ></textarea>
            <ul class="field-errors" role="alert">
                {move || field_errors.get().into_iter().map(|e| view! { <li>{e}</li> }).collect_view()}
            </ul>
            <label for="file">"…or upload a file as the payload"</label>
            <input
                id="file"
                name="file"
                type="file"
                accept=move || selected().map(|k| k.content_types.join(",")).filter(|types| !types.is_empty())
                node_ref=file_input
            />
            <label class="inline">
                <input
                    id="wait"
                    type="checkbox"
                    prop:checked=move || wait.get()
                    on:change=move |ev| wait.set(event_target_checked(&ev))
                />
                {format!(" wait for the result (up to {WAIT_S} s) and show it here")}
            </label>
            <div class="actions">
                <button type="submit" disabled=move || busy.get()>"Submit"</button>
                <span class="submit-error" role="alert">{move || submit_error.get()}</span>
            </div>
            {move || {
                reply
                    .get()
                    .map(|body| {
                        view! {
                            <div class="inline-result">
                                <h2>"Result"</h2>
                                <pre class="result-body">{body}</pre>
                            </div>
                        }
                    })
            }}
        </form>
    }
}

/// The queue the form sends: none when the field is empty (the kind's own), else a valid name.
fn chosen_queue(field: &str) -> Result<Option<String>, String> {
    match field.trim() {
        "" => Ok(None),
        name if is_queue_name(name) => Ok(Some(name.to_string())),
        name => Err(format!(
            "“{name}” is not a queue name: use lowercase letters, digits, '.', '_' and '-' \
             (at most 64), starting with a letter or digit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_field_leaves_the_kind_its_own_queue_and_a_bad_name_is_refused() {
        assert_eq!(chosen_queue("  "), Ok(None));
        assert_eq!(chosen_queue(" reports-2 "), Ok(Some("reports-2".to_string())));
        assert!(chosen_queue("Bad Name").unwrap_err().contains("not a queue name"));
    }
}
