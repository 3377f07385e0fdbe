//! The HTTP edge: the router (UI, REST API, SSE), its shared state, and health checks.

mod api;
mod dead_letters;
mod problem;
mod sse;
mod topics;

pub use problem::ApiError;

use crate::{events::Events, store::Keys, tasks::Tasks, topics::Topics};
use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRef, State},
    http::{HeaderMap, StatusCode, header},
    routing::{delete, get, post},
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use leptos::prelude::LeptosOptions;
use leptos_axum::{LeptosRoutes, generate_route_list};
use redis::aio::ConnectionManager;
use std::time::Duration;
use uuid::Uuid;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub tasks: Tasks,
    pub topics: Topics,
    pub events: Events,
    pub keys: Keys,
    pub redis: ConnectionManager,
    pub max_payload: u64,
    pub retention: Duration,
    pub leptos_options: LeptosOptions,
}

/// The whole application: API routes first, then the Leptos pages and static files.
pub fn router(state: AppState) -> Router {
    let leptos_options = state.leptos_options.clone();
    let api = Router::new()
        .route("/api/v1/tasks", get(api::list).post(api::submit))
        .route("/api/v1/tasks/batch", post(api::submit_batch))
        .route("/api/v1/tasks/{id}", get(api::get).delete(api::cancel))
        .route("/api/v1/tasks/{id}/status", get(api::status).delete(api::cancel))
        .route("/api/v1/tasks/{id}/result", get(api::result))
        .route("/api/v1/tasks/{id}/events", get(sse::task_events))
        .route("/api/v1/events", get(sse::all_events))
        .route("/api/v1/kinds", get(api::kinds))
        .route("/api/v1/topics", get(topics::list))
        .route("/api/v1/topics/{topic}/messages", post(topics::publish))
        .route("/api/v1/topics/{topic}/subscriptions", get(topics::subscriptions))
        .route(
            "/api/v1/topics/{topic}/subscriptions/{name}",
            get(topics::get).put(topics::put).delete(topics::delete),
        )
        .route("/api/v1/dead-letters", get(dead_letters::list))
        .route("/api/v1/dead-letters/requeue", post(dead_letters::requeue_all))
        .route("/api/v1/dead-letters/{id}", delete(dead_letters::delete))
        .route("/api/v1/dead-letters/{id}/requeue", post(dead_letters::requeue))
        .route("/api/{*rest}", axum::routing::any(api::no_such_endpoint))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Submissions enforce their own, configurable limit (413 as problem+json).
        .layer(DefaultBodyLimit::disable());
    let routes = generate_route_list(app::App);
    api.leptos_routes(&state, routes, {
        let options = leptos_options.clone();
        move || app::shell(options.clone())
    })
    .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
    .with_state(state)
}

/// Reads a request body up to `limit` bytes; past it, `413` without reading the rest.
async fn read_body(body: Body, headers: &HeaderMap, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
            .detail(format!("the body exceeds the limit of {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if (buffer.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Parses a JSON body into `T`: bad syntax is a `400`, a wrong shape a `422`.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable("invalid-request", "Invalid request", e.to_string())
        }
        _ => ApiError::bad_request(format!("the body is not valid JSON: {e}")),
    })
}

/// Parses a task id from a path or query, as a problem if malformed.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found(format!("`{id}` is not a task id")))
}

/// `GET /healthz`: the process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: Redis answers within a second.
async fn readyz(State(mut redis): State<ConnectionManager>) -> Result<Json<serde_json::Value>, ApiError> {
    let ping =
        tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut redis))
            .await;
    match ping {
        Ok(Ok(_)) => Ok(Json(serde_json::json!({"status": "ok", "redis": "ok"}))),
        Ok(Err(e)) => Err(ApiError::unavailable(&e)),
        Err(_) => {
            Err(ApiError::unavailable(&redis::RedisError::from((redis::ErrorKind::Io, "PING timed out"))))
        }
    }
}
