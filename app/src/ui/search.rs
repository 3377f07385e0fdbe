//! The search page: tasks by id (whole, or its beginning), kind, status, queue and when they
//! were created. The search lives in the page's address, so it can be linked and reloaded.

use super::{KindOptions, api, home::TaskRow, utc_time};
use crate::model::{Status, TaskPage, TaskView};
use leptos::{prelude::*, task::spawn_local};
use leptos_router::{
    NavigateOptions,
    hooks::{use_navigate, use_query_map},
    params::ParamsMap,
};

/// How many tasks one page of results holds.
const PAGE: usize = 50;

/// The search's fields, as the address carries them (the times as the form's fields write
/// them: UTC, to the minute or second).
const FIELDS: [&str; 6] = ["id", "kind", "status", "queue", "created_after", "created_before"];

/// `/search`.
#[component]
pub fn SearchPage() -> impl IntoView {
    let query = use_query_map();
    let navigate = use_navigate();
    let initial = |name: &str| query.read_untracked().get(name).unwrap_or_default();
    let fields: [RwSignal<String>; 6] = FIELDS.map(|name| RwSignal::new(initial(name)));
    let [id, kind, status, queue, after, before] = fields;
    let found = RwSignal::new(None::<Result<Vec<TaskView>, String>>);
    let next = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);

    // The API's query for the page's address: the times made RFC 3339.
    let api_query = move |asked: ParamsMap| {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for name in FIELDS {
            let Some(value) = asked.get(name).filter(|v| !v.trim().is_empty()) else { continue };
            let value = match name {
                "created_after" | "created_before" => utc_time(&value),
                _ => value.trim().to_string(),
            };
            pairs.push((name, value));
        }
        pairs
    };
    let load = move |pairs: Vec<(&'static str, String)>, cursor: Option<String>| {
        busy.set(true);
        spawn_local(async move {
            let mut pairs = pairs;
            pairs.push(("limit", PAGE.to_string()));
            let more = cursor.is_some();
            pairs.extend(cursor.map(|c| ("cursor", c)));
            match api::get_json::<TaskPage>(&format!("/api/v1/tasks{}", api::query(&pairs))).await {
                Ok(page) => {
                    next.set(page.next_cursor);
                    if more {
                        found.update(|f| {
                            if let Some(Ok(list)) = f {
                                list.extend(page.tasks);
                            }
                        });
                    } else {
                        found.set(Some(Ok(page.tasks)));
                    }
                }
                Err(e) => {
                    next.set(None);
                    found.set(Some(Err(e)));
                }
            }
            busy.set(false);
        })
    };
    // Effects run only in the browser: search again whenever the address changes.
    Effect::new(move |_| load(api_query(query.get()), None));

    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let pairs: Vec<(&str, String)> = FIELDS
            .into_iter()
            .zip(fields)
            .map(|(name, field)| (name, field.get_untracked().trim().to_string()))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        navigate(&format!("/search{}", api::query(&pairs)), NavigateOptions::default());
    };
    let text_field =
        move |label: &'static str, name: &'static str, field: RwSignal<String>, kind: &'static str| {
            view! {
                <label for=format!("search-{name}")>{label}</label>
                <input
                    id=format!("search-{name}")
                    name=name
                    type=kind
                    spellcheck="false"
                    autocomplete="off"
                    prop:value=move || field.get()
                    on:input=move |ev| field.set(event_target_value(&ev))
                />
            }
        };

    view! {
        <section class="search">
            <h1>"Search tasks"</h1>
            <form class="filters" on:submit=on_submit>
                <div class="field wide">{text_field("Id, or its beginning", "id", id, "search")}</div>
                <div class="field">
                    <label for="search-kind">"Kind"</label>
                    <select id="search-kind" name="kind" on:change=move |ev| kind.set(event_target_value(&ev))>
                        <option value="" selected=move || kind.read().is_empty()>"any kind"</option>
                        <KindOptions chosen=kind/>
                    </select>
                </div>
                <div class="field">
                    <label for="search-status">"Status"</label>
                    <select id="search-status" name="status" on:change=move |ev| status.set(event_target_value(&ev))>
                        <option value="" selected=move || status.read().is_empty()>"any status"</option>
                        {Status::ALL
                            .map(|s| {
                                view! {
                                    <option value=s.as_str() selected=move || status.read().as_str() == s.as_str()>
                                        {s.as_str()}
                                    </option>
                                }
                            })
                            .into_iter()
                            .collect_view()}
                    </select>
                </div>
                <div class="field">{text_field("Queue", "queue", queue, "text")}</div>
                <div class="field">{text_field("Created after (UTC)", "created_after", after, "datetime-local")}</div>
                <div class="field">{text_field("Created before (UTC)", "created_before", before, "datetime-local")}</div>
                <div class="actions">
                    <button type="submit" disabled=move || busy.get()>"Search"</button>
                </div>
            </form>
            {move || match found.get() {
                None => view! { <p class="pending">"searching…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty search-count">"No task matches."</p> }.into_any()
                }
                Some(Ok(list)) => {
                    let shown = format!(
                        "{} {}{}",
                        list.len(),
                        if list.len() == 1 { "task" } else { "tasks" },
                        if next.read().is_some() { ", and more" } else { "" }
                    );
                    view! {
                        <p class="search-count">{shown}</p>
                        <ul class="tasks search-results">
                            {list.into_iter().map(|task| view! { <TaskRow task/> }).collect_view()}
                        </ul>
                    }
                        .into_any()
                }
            }}
            <Show when=move || next.read().is_some()>
                <div class="actions">
                    <button
                        class="secondary"
                        disabled=move || busy.get()
                        on:click=move |_| load(api_query(query.get_untracked()), next.get_untracked())
                    >
                        "Load more"
                    </button>
                </div>
            </Show>
        </section>
    }
}
