//! Workflows in the browser: a form that submits one as JSON (on the home page), the list of
//! recent ones, and a page per workflow that draws its graph as SVG, each step coloured by its
//! state and linked to its task, redrawn as the workflow's events arrive.

use super::{api, dashboard::short_time, live};
use crate::model::workflow::{
    StepState, StepView, WORKFLOW_EVENT, WorkflowEvent, WorkflowList, WorkflowStatus, WorkflowView, layout,
};
use crate::model::{Status, TaskEvent};
use leptos::{prelude::*, task::spawn_local};
use leptos_router::hooks::use_params_map;
use std::time::Duration;

/// The least time between two reloads while events stream in.
const RELOAD_EVERY: Duration = Duration::from_millis(300);

/// What the workflow form starts with: a split, a map over its parts, and a gather.
const EXAMPLE: &str = r#"{
  "name": "word counts",
  "steps": [
    {"id": "split", "kind": "echo", "payload": {"parts": ["to be or not to be", "that is the question"]}},
    {"id": "count", "kind": "text.stats", "after": ["split"], "map": {"$from": "split", "pointer": "/parts"}},
    {"id": "gather", "kind": "echo", "after": ["count"]}
  ]
}"#;

/// Submits a workflow written as JSON (`POST /api/v1/workflows`) and links to its page.
#[component]
pub fn WorkflowForm() -> impl IntoView {
    let text = RwSignal::new(EXAMPLE.to_string());
    let created = RwSignal::new(None::<WorkflowView>);
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        error.set(None);
        let body = match serde_json::from_str::<serde_json::Value>(&text.get_untracked()) {
            Ok(body) => body,
            Err(e) => {
                error.set(Some(format!("not JSON: {e}")));
                return;
            }
        };
        busy.set(true);
        spawn_local(async move {
            match api::post_json::<WorkflowView>("/api/v1/workflows", &body).await {
                Ok(view) => created.set(Some(view)),
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };
    view! {
        <details class="workflow-form">
            <summary>"Submit a workflow (JSON)"</summary>
            <form class="submit" on:submit=on_submit>
                <p class="hint">
                    "Steps run as tasks once the steps in their " <code>"after"</code>
                    " have ended; a payload value " <code>"{\"$from\": \"step\", \"pointer\": \"/a\"}"</code>
                    " takes that step's result, and " <code>"map"</code> " runs the kind once per element."
                </p>
                <label for="workflow">"Workflow"</label>
                <textarea
                    id="workflow"
                    rows="10"
                    spellcheck="false"
                    prop:value=move || text.get()
                    on:input=move |ev| text.set(event_target_value(&ev))
                ></textarea>
                <div class="actions">
                    <button type="submit" disabled=move || busy.get()>"Submit workflow"</button>
                    <span class="submit-error" role="alert">{move || error.get()}</span>
                </div>
                {move || {
                    created
                        .get()
                        .map(|w| {
                            view! {
                                <p class="created">
                                    "Workflow " <a href=format!("/workflows/{}", w.id)>{w.id.to_string()}</a>
                                    " accepted."
                                </p>
                            }
                        })
                }}
            </form>
        </details>
    }
}

/// Calls `reload` now, and again (at most every [`RELOAD_EVERY`]) once the event stream is open
/// (an event may have come between the first load and the stream), whenever an event that
/// `concerns` (given its name and data) arrives, or when events were missed.
fn reload_on_events(
    reload: impl Fn() + Copy + Send + Sync + 'static,
    concerns: impl Fn(&str, &str) -> bool + 'static,
) {
    let due = StoredValue::new(false);
    reload();
    live::subscribe("/api/v1/events", move |name, data| {
        let wanted = name == live::OPEN_EVENT || name == live::RESET_EVENT || concerns(name, data);
        if wanted && due.try_get_value() == Some(false) {
            due.set_value(true);
            set_timeout(
                move || {
                    if due.try_set_value(false).is_none() {
                        reload();
                    }
                },
                RELOAD_EVERY,
            );
        }
        true
    });
}

/// The workflow event `name` and `data` make, if they make one.
fn workflow_event(name: &str, data: &str) -> Option<WorkflowEvent> {
    (name == WORKFLOW_EVENT).then(|| serde_json::from_str(data).ok()).flatten()
}

/// `/workflows`: the newest workflows with their status.
#[component]
pub fn WorkflowsPage() -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<WorkflowView>, String>>);
    let reload = move || {
        spawn_local(async move {
            let answer = api::get_json::<WorkflowList>("/api/v1/workflows").await.map(|l| l.workflows);
            let _ = list.try_set(Some(answer));
        });
    };
    Effect::new(move |_| {
        reload_on_events(reload, |name, data| workflow_event(name, data).is_some_and(|e| e.step.is_none()))
    });
    view! {
        <section class="workflows">
            <div class="heading">
                <h1>"Workflows"</h1>
            </div>
            {move || match list.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty">"No workflows yet: submit one from the Tasks page."</p> }.into_any()
                }
                Some(Ok(list)) => {
                    view! {
                        <table class="queue-table workflow-table">
                            <thead>
                                <tr>
                                    <th>"Workflow"</th>
                                    <th>"Status"</th>
                                    <th class="num">"Steps done"</th>
                                    <th>"Created"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {list
                                    .into_iter()
                                    .map(|w| {
                                        let done = w.steps.iter().filter(|s| s.state.has_ended()).count();
                                        view! {
                                            <tr class="workflow" data-workflow=w.id.to_string()>
                                                <td>
                                                    <a href=format!("/workflows/{}", w.id)>
                                                        {w.name.clone().unwrap_or_else(|| w.id.to_string())}
                                                    </a>
                                                </td>
                                                <td><WorkflowBadge status=w.status/></td>
                                                <td class="num">{format!("{done} / {}", w.steps.len())}</td>
                                                <td class="time">{short_time(&w.created_at)}</td>
                                            </tr>
                                        }
                                    })
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

#[component]
fn WorkflowBadge(status: WorkflowStatus) -> impl IntoView {
    let class = match status {
        WorkflowStatus::Running => "running",
        other => other.as_str(),
    };
    view! { <span class=format!("badge status-{class}")>{status.as_str()}</span> }
}

/// `/workflows/:id`: the workflow's graph, live.
#[component]
pub fn WorkflowPage() -> impl IntoView {
    let params = use_params_map();
    let id = params.read_untracked().get("id").unwrap_or_default();
    let workflow = RwSignal::new(None::<Result<Option<WorkflowView>, String>>);
    let url = format!("/api/v1/workflows/{id}");
    let reload = {
        let url = StoredValue::new(url);
        move || {
            spawn_local(async move {
                let answer = api::get_optional::<WorkflowView>(&url.get_value()).await;
                let _ = workflow.try_set(Some(answer));
            });
        }
    };
    let mine = id.clone();
    Effect::new(move |_| {
        let mine = mine.clone();
        reload_on_events(reload, move |name, data| {
            if let Some(event) = workflow_event(name, data) {
                return event.workflow_id.to_string() == mine;
            }
            // A step's task started: the step is running now (looks follow task ends only).
            name == Status::Running.as_str()
                && serde_json::from_str::<TaskEvent>(data).is_ok_and(|event| {
                    workflow.with_untracked(|w| {
                        matches!(w, Some(Ok(Some(view)))
                            if view.steps.iter().any(|s| s.tasks.contains(&event.task_id)))
                    })
                })
        });
    });
    view! {
        <section class="workflow-page">
            {move || match workflow.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(None)) => {
                    view! { <p class="empty">"No workflow with this id (it never existed or has expired)."</p> }
                        .into_any()
                }
                Some(Ok(Some(w))) => view! { <WorkflowDetail workflow=w/> }.into_any(),
            }}
        </section>
    }
}

#[component]
fn WorkflowDetail(workflow: WorkflowView) -> impl IntoView {
    let title = workflow.name.clone().unwrap_or_else(|| "Workflow".into());
    view! {
        <div class="heading">
            <h1>{title}</h1>
            <WorkflowBadge status=workflow.status/>
        </div>
        <p class="hint">
            <code>{workflow.id.to_string()}</code>
            " · created " {short_time(&workflow.created_at)}
            {workflow.finished_at.as_deref().map(|t| format!(" · ended {}", short_time(t)))}
        </p>
        {workflow.error.clone().map(|e| view! { <p class="submit-error workflow-error" role="alert">{e}</p> })}
        <Graph steps=workflow.steps.clone()/>
    }
}

/// Where the graph's boxes go, in SVG units.
const COLUMN: f64 = 200.0;
const ROW: f64 = 70.0;
const BOX_W: f64 = 160.0;
const BOX_H: f64 = 48.0;
const MARGIN: f64 = 10.0;

/// The steps as boxes in columns (each right of its parents), with an edge from each parent.
#[component]
fn Graph(steps: Vec<StepView>) -> impl IntoView {
    let index = |id: &str| steps.iter().position(|s| s.id == id);
    let after: Vec<Vec<usize>> =
        steps.iter().map(|s| s.after.iter().filter_map(|a| index(a)).collect()).collect();
    let places = layout(&after);
    let at = |i: usize| {
        let (column, row) = places[i];
        (MARGIN + column as f64 * COLUMN, MARGIN + row as f64 * ROW)
    };
    let columns = places.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    let rows = places.iter().map(|p| p.1).max().unwrap_or(0) + 1;
    let width = 2.0 * MARGIN + (columns - 1) as f64 * COLUMN + BOX_W;
    let height = 2.0 * MARGIN + (rows - 1) as f64 * ROW + BOX_H;
    let edges = after
        .iter()
        .enumerate()
        .flat_map(|(child, parents)| parents.iter().map(move |&parent| (parent, child)))
        .map(|(parent, child)| {
            let ((px, py), (cx, cy)) = (at(parent), at(child));
            let (x1, y1, x2, y2) = (px + BOX_W, py + BOX_H / 2.0, cx, cy + BOX_H / 2.0);
            let bend = (x2 - x1) / 2.0;
            let d = format!("M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}", x1 + bend, x2 - bend);
            view! { <path class="edge" d=d></path> }
        })
        .collect_view();
    // Leptos makes an `<a>` an HTML element even inside an `<svg>`, where it is not drawn: a step
    // is a focusable `<g>` that opens its task's page when clicked (or Enter is pressed on it).
    let navigate = leptos_router::hooks::use_navigate();
    let boxes = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let (x, y) = at(i);
            let detail = match (step.map, step.tasks.len()) {
                (true, n) if n > 0 => format!("{} ×{n} · {}", step.kind, step.state.as_str()),
                _ => format!("{} · {}", step.kind, step.state.as_str()),
            };
            let label = match &step.error {
                Some(error) => format!("{}: {}: {error}", step.id, step.state.as_str()),
                None => format!("{}: {}", step.id, step.state.as_str()),
            };
            let href = step.tasks.first().map(|task| format!("/tasks/{task}"));
            let open = {
                let (navigate, href) = (navigate.clone(), href.clone());
                move || {
                    if let Some(href) = &href {
                        navigate(href, Default::default());
                    }
                }
            };
            let on_key = {
                let open = open.clone();
                move |ev: leptos::ev::KeyboardEvent| {
                    if ev.key() == "Enter" {
                        open();
                    }
                }
            };
            view! {
                <g
                    class=format!("step state-{}", step.state.as_str())
                    class:linked=href.is_some()
                    data-step=step.id.clone()
                    data-state=step.state.as_str()
                    data-href=href.clone()
                    role=href.is_some().then_some("link")
                    tabindex=href.is_some().then_some("0")
                    aria-label=label
                    on:click=move |_| open()
                    on:keydown=on_key
                >
                    <rect x=x y=y width=BOX_W height=BOX_H rx="6"></rect>
                    <text class="step-id" x=x + 10.0 y=y + 20.0>{step.id.clone()}</text>
                    <text class="step-detail" x=x + 10.0 y=y + 38.0>{detail}</text>
                </g>
            }
        })
        .collect_view();
    view! {
        <svg
            class="workflow-graph"
            role="img"
            aria-label="the workflow's steps"
            viewBox=format!("0 0 {width} {height}")
            width=width
            height=height
        >
            {edges}
            {boxes}
        </svg>
        <Legend/>
    }
}

#[component]
fn Legend() -> impl IntoView {
    let states = [
        StepState::Waiting,
        StepState::Queued,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Skipped,
        StepState::Cancelled,
    ];
    view! {
        <p class="graph-legend">
            {states
                .into_iter()
                .map(|s| view! { <span class=format!("legend state-{}", s.as_str())>{s.as_str()}</span> })
                .collect_view()}
        </p>
    }
}
