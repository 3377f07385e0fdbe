//! Publish/subscribe over HTTP: topics, subscriptions, publishing.

use super::{ApiError, AppState, Json, off_runtime, openapi::TopicName, parse_json, read_body};
use crate::{
    auth::Access,
    topics::{Message, Published, Subscription, TopicError, TopicView},
};
use app::model::Problem;
use axum::{
    Extension,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> ApiError {
        match e {
            TopicError::InvalidName(detail) => ApiError::bad_request(detail),
            TopicError::UnknownKind(_) => {
                ApiError::unprocessable("unknown-kind", "Unknown task kind", e.to_string())
            }
            TopicError::InvalidAttempts => {
                ApiError::unprocessable("invalid-option", "Invalid subscription option", e.to_string())
            }
            TopicError::TooManySubscriptions(_) => {
                ApiError::new(StatusCode::CONFLICT, "too-many-subscriptions", "Too many subscriptions")
                    .detail(e.to_string())
            }
            TopicError::Rejected { subscription, error } => {
                let mut problem = ApiError::from(error);
                let detail = format!("subscription `{subscription}`: {}", problem.detail_text());
                problem = problem.detail(detail);
                problem
            }
            TopicError::Refused(error) => error.into(),
            TopicError::Redis(e) => e.into(),
        }
    }
}

/// Refuses a subscription change to a token limited to some queues: topics are shared by every
/// queue, and a subscription of its own queue would hand it copies of messages others publish
/// (and refuse their publishing, which must reach every subscription).
fn every_queue(access: &Access) -> Result<(), ApiError> {
    match access.within() {
        None => Ok(()),
        Some(_) => Err(super::auth::forbidden(
            "changing a topic's subscriptions needs a token that reaches every queue (`--queues '*'`)",
        )),
    }
}

/// The queue a subscription's tasks go to, where the token's patterns are checked.
fn queue_of(state: &AppState, subscription: &Subscription) -> Option<String> {
    state.tasks.queue_for(&subscription.kind, subscription.queue.as_deref())
}

/// Whether the token reaches the queue a subscription delivers to.
fn reaches(state: &AppState, access: &Access, subscription: &Subscription) -> bool {
    access.within().is_none() || queue_of(state, subscription).is_some_and(|q| access.reaches(&q))
}

/// `GET /api/v1/topics`: every topic with its subscriptions (those to queues the token reaches)
/// and message counts.
#[utoipa::path(
    get,
    path = "/api/v1/topics",
    operation_id = "list_topics",
    tag = "topics",
    summary = "Every topic, with its subscriptions and message counts",
    responses((status = 200, description = "The topics", body = Vec<TopicView>)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Json<Vec<TopicView>>, ApiError> {
    let mut topics = state.topics.list().await?;
    for topic in &mut topics {
        topic.subscriptions.retain(|_, subscription| reaches(&state, &access, subscription));
    }
    Ok(Json(topics))
}

/// `GET /api/v1/topics/{topic}/subscriptions`.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic}/subscriptions",
    operation_id = "list_subscriptions",
    tag = "topics",
    summary = "A topic's subscriptions, by name",
    params(("topic" = inline(TopicName), Path, description = "The topic's name")),
    responses(
        (status = 200, description = "The subscriptions (into the queues the token reaches)", body = BTreeMap<String, Subscription>),
        (status = 400, description = "Not a topic name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn subscriptions(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(topic): Path<String>,
) -> Result<Json<BTreeMap<String, Subscription>>, ApiError> {
    let mut all = state.topics.subscriptions(&topic).await?;
    all.retain(|_, subscription| reaches(&state, &access, subscription));
    Ok(Json(all))
}

/// `GET /api/v1/topics/{topic}/subscriptions/{name}`.
#[utoipa::path(
    get,
    path = "/api/v1/topics/{topic}/subscriptions/{name}",
    operation_id = "get_subscription",
    tag = "topics",
    summary = "A subscription",
    params(("topic" = inline(TopicName), Path, description = "The topic's name"), ("name" = inline(TopicName), Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = 400, description = "Not a topic name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Subscription>, ApiError> {
    let mut all = state.topics.subscriptions(&topic).await?;
    all.remove(&name)
        .filter(|subscription| reaches(&state, &access, subscription))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no subscription `{name}` on `{topic}`")))
}

/// `PUT /api/v1/topics/{topic}/subscriptions/{name}`: `201` created, `200` replaced.
#[utoipa::path(
    put,
    path = "/api/v1/topics/{topic}/subscriptions/{name}",
    operation_id = "put_subscription",
    tag = "topics",
    summary = "Subscribe to a topic, or replace a subscription",
    params(("topic" = inline(TopicName), Path, description = "The topic's name"), ("name" = inline(TopicName), Path, description = "The subscription's name")),
    request_body(content = Subscription, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = Subscription),
        (status = 201, description = "Created", body = Subscription),
        (status = 400, description = "Malformed JSON, or not a topic or subscription name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The topic has 100 subscriptions", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a subscription, an unknown kind or bad max_attempts", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Subscription>), ApiError> {
    every_queue(&access)?;
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    let subscription: Subscription = parse_json(&body.bytes)?;
    let created = state.topics.put(&topic, &name, &subscription).await?;
    state.audit.record(access.name(), "subscription.put", &format!("{topic}/{name}")).await;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(subscription)))
}

/// `DELETE /api/v1/topics/{topic}/subscriptions/{name}`.
#[utoipa::path(
    delete,
    path = "/api/v1/topics/{topic}/subscriptions/{name}",
    operation_id = "delete_subscription",
    tag = "topics",
    summary = "Delete a subscription",
    params(("topic" = inline(TopicName), Path, description = "The topic's name"), ("name" = inline(TopicName), Path, description = "The subscription's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a topic or subscription name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    every_queue(&access)?;
    if !state.topics.delete(&topic, &name).await? {
        return Err(ApiError::not_found(format!("no subscription `{name}` on `{topic}`")));
    }
    state.audit.record(access.name(), "subscription.delete", &format!("{topic}/{name}")).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/topics/{topic}/messages`: one task per matching subscription, all or none.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic}/messages",
    operation_id = "publish_message",
    tag = "topics",
    summary = "Publish a message: one task per matching subscription, all or none",
    params(("topic" = inline(TopicName), Path, description = "The topic's name")),
    request_body(content = Message<serde_json::Value>, content_type = "application/json"),
    responses(
        (status = 202, description = "The tasks it became (none when no subscription matched)", body = Published),
        (status = 400, description = "Malformed JSON, or not a topic name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a message, or a payload a subscription's kind refuses (the detail names it)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A queue is full, or the token past `--rate-limit`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn publish(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    // The payload is a slice of the body, not a copy.
    let message = off_runtime(body.bytes.clone(), |bytes| {
        let Message { payload, properties } = parse_json::<Message<&RawValue>>(bytes)?;
        Ok(Message { payload: bytes.slice_ref(payload.get().as_bytes()), properties })
    })
    .await?;
    // A message goes to every matching subscription or to none: one to a queue the token does
    // not reach refuses it, without naming that queue.
    if access.within().is_some()
        && state.topics.subscriptions(&topic).await?.values().any(|s| !reaches(&state, &access, s))
    {
        return Err(super::auth::forbidden(
            "this topic delivers to a queue this token does not reach: publishing needs a token \
             that reaches every queue its subscriptions deliver to",
        ));
    }
    super::api::spend(&state, &access, 1).await?;
    Ok((StatusCode::ACCEPTED, Json(state.topics.publish(&topic, message).await?)))
}
