//! The topics page: topics with their subscriptions, and a form to publish a message.

use super::{Allowed, api};
use crate::model::{Published, TopicView};
use leptos::{prelude::*, task::spawn_local};

/// `/topics`.
#[component]
pub fn TopicsPage() -> impl IntoView {
    let topics = RwSignal::new(None::<Result<Vec<TopicView>, String>>);
    let reload = move || {
        spawn_local(async move { topics.set(Some(api::get_json::<Vec<TopicView>>("/api/v1/topics").await)) })
    };
    // Effects run only in the browser.
    Effect::new(move |_| reload());

    view! {
        <section class="topics">
            <h1>"Topics"</h1>
            <Allowed scope="submit">
                <PublishForm on_published=reload/>
            </Allowed>
            <h2>"Subscriptions"</h2>
            {move || match topics.get() {
                None => view! { <p class="pending">"loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! {
                        <p class="empty">
                            "No topics yet. Declare subscriptions in courier.toml, or "
                            <code>"PUT /api/v1/topics/{topic}/subscriptions/{name}"</code>
                            "."
                        </p>
                    }
                        .into_any()
                }
                Some(Ok(list)) => list.into_iter().map(|topic| view! { <TopicCard topic/> }).collect_view().into_any(),
            }}
        </section>
    }
}

/// One topic: counters and a table of subscriptions.
#[component]
fn TopicCard(topic: TopicView) -> impl IntoView {
    let TopicView { topic, subscriptions, messages, unmatched } = topic;
    let data_topic = topic.clone();
    view! {
        <div class="topic" data-topic=data_topic>
            <h3>
                <code>{topic}</code>
                <span class="counts">{format!("{messages} messages, {unmatched} matched no subscription")}</span>
            </h3>
            <table class="subscriptions">
                <thead>
                    <tr><th>"Subscription"</th><th>"Kind"</th><th>"Filter"</th><th>"Attempts"</th></tr>
                </thead>
                <tbody>
                    {subscriptions
                        .into_iter()
                        .map(|(name, sub)| {
                            let filter = match &sub["filter"] {
                                serde_json::Value::Object(f) if !f.is_empty() => sub["filter"].to_string(),
                                _ => "every message".to_string(),
                            };
                            let attempts = sub["max_attempts"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "default".into());
                            let data_name = name.clone();
                            view! {
                                <tr class="subscription" data-name=data_name>
                                    <td>{name}</td>
                                    <td class="kind">{sub["kind"].as_str().unwrap_or_default().to_string()}</td>
                                    <td><code>{filter}</code></td>
                                    <td>{attempts}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// Publishes a message: topic, JSON payload, JSON properties.
#[component]
fn PublishForm(on_published: impl Fn() + Copy + 'static) -> impl IntoView {
    let topic = RwSignal::new(String::new());
    let payload = RwSignal::new(String::from("{\"hello\": \"subscribers\"}"));
    let properties = RwSignal::new(String::from("{}"));
    let outcome = RwSignal::new(None::<Result<Published, String>>);
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let parse = |what: &str, text: String| {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("{what} is not valid JSON: {e}"))
        };
        let body = parse("the payload", payload.get_untracked()).and_then(|payload| {
            Ok(serde_json::json!({"payload": payload, "properties": parse("the properties", properties.get_untracked())?}))
        });
        let body = match body {
            Ok(body) => body,
            Err(e) => return outcome.set(Some(Err(e))),
        };
        let url = format!("/api/v1/topics/{}/messages", topic.get_untracked().trim());
        spawn_local(async move {
            outcome.set(Some(api::post_json::<Published>(&url, &body).await));
            on_published();
        });
    };
    view! {
        <form class="submit publish" on:submit=on_submit>
            <h2>"Publish a message"</h2>
            <label for="topic">"Topic"</label>
            <input id="topic" required prop:value=move || topic.get() on:input=move |ev| topic.set(event_target_value(&ev))/>
            <label for="message-payload">"Payload (JSON)"</label>
            <textarea
                id="message-payload"
                rows="3"
                prop:value=move || payload.get()
                on:input=move |ev| payload.set(event_target_value(&ev))
            ></textarea>
            <label for="properties">"Properties (JSON object, matched by subscription filters)"</label>
            <textarea
                id="properties"
                rows="2"
                prop:value=move || properties.get()
                on:input=move |ev| properties.set(event_target_value(&ev))
            ></textarea>
            <div class="actions">
                <button type="submit">"Publish"</button>
            </div>
            {move || match outcome.get() {
                None => ().into_any(),
                Some(Err(e)) => view! { <p class="submit-error" role="alert">{e}</p> }.into_any(),
                Some(Ok(published)) => {
                    view! {
                        <div class="published" role="status">
                            <p>{format!("Published: {} task(s) created.", published.tasks.len())}</p>
                            <ul>
                                {published
                                    .tasks
                                    .into_iter()
                                    .map(|t| {
                                        view! {
                                            <li>
                                                {format!("{} → ", t.subscription)}
                                                <a href=format!("/tasks/{}", t.task_id)>{t.task_id.to_string()}</a>
                                            </li>
                                        }
                                    })
                                    .collect_view()}
                            </ul>
                        </div>
                    }
                        .into_any()
                }
            }}
        </form>
    }
}
