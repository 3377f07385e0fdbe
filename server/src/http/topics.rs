//! Publish/subscribe over HTTP: topics, subscriptions, publishing.

use super::{ApiError, AppState, off_runtime, parse_json, read_body};
use crate::topics::{Message, Published, Subscription, TopicError, TopicView};
use axum::{
    Json,
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

/// `GET /api/v1/topics`: every topic with its subscriptions and message counts.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<TopicView>>, ApiError> {
    Ok(Json(state.topics.list().await?))
}

/// `GET /api/v1/topics/{topic}/subscriptions`.
pub async fn subscriptions(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<BTreeMap<String, Subscription>>, ApiError> {
    Ok(Json(state.topics.subscriptions(&topic).await?))
}

/// `GET /api/v1/topics/{topic}/subscriptions/{name}`.
pub async fn get(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<Subscription>, ApiError> {
    let mut all = state.topics.subscriptions(&topic).await?;
    all.remove(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no subscription `{name}` on `{topic}`")))
}

/// `PUT /api/v1/topics/{topic}/subscriptions/{name}`: `201` created, `200` replaced.
pub async fn put(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Subscription>), ApiError> {
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    let subscription: Subscription = parse_json(&body.bytes)?;
    let created = state.topics.put(&topic, &name, &subscription).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(subscription)))
}

/// `DELETE /api/v1/topics/{topic}/subscriptions/{name}`.
pub async fn delete(
    State(state): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.topics.delete(&topic, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no subscription `{name}` on `{topic}`")))
    }
}

/// `POST /api/v1/topics/{topic}/messages`: one task per matching subscription, all or none.
pub async fn publish(
    State(state): State<AppState>,
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
    Ok((StatusCode::ACCEPTED, Json(state.topics.publish(&topic, message).await?)))
}
