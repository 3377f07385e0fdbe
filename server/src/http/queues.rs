//! The queues API: list and inspect queues, set their limits, pause and resume them.

use super::{ApiError, AppState, Json, openapi::QueueName};
use crate::{
    auth::Access,
    queue::{Queue, QueueState},
};
use app::model::{Problem, QueueLimits, QueueList, QueueView};
use axum::{
    Extension,
    extract::{Path, State},
};
use bytes::Bytes;

/// The longest `rate` period: a day.
const MAX_RATE_PERIOD_MS: u64 = 86_400_000;

/// `GET /api/v1/queues`: every queue, by name.
#[utoipa::path(
    get,
    path = "/api/v1/queues",
    operation_id = "list_queues",
    tag = "queues",
    summary = "Every queue (the token reaches), by name",
    responses((status = 200, description = "The queues", body = QueueList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Json<QueueList>, ApiError> {
    let mut queues = state.tasks.queues().all().await?;
    queues.retain(|queue| access.reaches(queue.name()));
    let states = futures::future::try_join_all(queues.iter().map(Queue::state)).await?;
    let queues = queues.iter().zip(states).map(|(queue, state)| view(queue, state)).collect();
    Ok(Json(QueueList { queues }))
}

/// `GET /api/v1/queues/{name}`.
#[utoipa::path(
    get,
    path = "/api/v1/queues/{name}",
    operation_id = "get_queue",
    tag = "queues",
    summary = "A queue: counts, oldest wait, limits",
    params(("name" = String, Path, description = "The queue's name")),
    responses(
        (status = 200, description = "The queue", body = QueueView),
        (status = 404, description = "No queue by this name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    let queue = state
        .tasks
        .queues()
        .existing(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no queue named `{name}`")))?;
    Ok(Json(view(&queue, queue.state().await?)))
}

/// `PUT /api/v1/queues/{name}`: replaces the queue's limits (creating the queue if need be); an
/// absent limit is none.
#[utoipa::path(
    put,
    path = "/api/v1/queues/{name}",
    operation_id = "set_queue_limits",
    tag = "queues",
    summary = "Set a queue's limits",
    params(("name" = inline(QueueName), Path, description = "The queue's name")),
    request_body(content = QueueLimits, content_type = "application/json"),
    responses(
        (status = 200, description = "The queue with its new limits", body = QueueView),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not queue limits, or a limit of zero", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<QueueView>, ApiError> {
    super::refuse_array(&body)
        .map_err(|detail| ApiError::unprocessable("invalid-limits", "Invalid queue limits", detail))?;
    let limits: QueueLimits = serde_json::from_slice(&body).map_err(|e| {
        ApiError::unprocessable(
            "invalid-limits",
            "Invalid queue limits",
            format!("the body is not queue limits: {e}"),
        )
    })?;
    validate(&limits)
        .map_err(|detail| ApiError::unprocessable("invalid-limits", "Invalid queue limits", detail))?;
    let queue = open(&state, &name).await?;
    queue.set_limits(&limits).await?;
    state.audit.record(access.name(), "queue.limits", &name).await;
    Ok(Json(view(&queue, queue.state().await?)))
}

/// `POST /api/v1/queues/{name}/pause`: workers start none of its tasks until it is resumed.
#[utoipa::path(
    post,
    path = "/api/v1/queues/{name}/pause",
    operation_id = "pause_queue",
    tag = "queues",
    summary = "Pause a queue",
    params(("name" = inline(QueueName), Path, description = "The queue's name")),
    responses(
        (status = 200, description = "The paused queue", body = QueueView),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a queue name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &access, &name, true).await
}

/// `POST /api/v1/queues/{name}/resume`.
#[utoipa::path(
    post,
    path = "/api/v1/queues/{name}/resume",
    operation_id = "resume_queue",
    tag = "queues",
    summary = "Resume a queue",
    params(("name" = inline(QueueName), Path, description = "The queue's name")),
    responses(
        (status = 200, description = "The resumed queue", body = QueueView),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a queue name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &access, &name, false).await
}

async fn set_paused(
    state: &AppState,
    access: &Access,
    name: &str,
    paused: bool,
) -> Result<Json<QueueView>, ApiError> {
    let queue = open(state, name).await?;
    queue.set_paused(paused).await?;
    let action = if paused { "queue.pause" } else { "queue.resume" };
    state.audit.record(access.name(), action, name).await;
    Ok(Json(view(&queue, queue.state().await?)))
}

/// Queue `name`, created if need be; a `422` for a name that cannot be one.
async fn open(state: &AppState, name: &str) -> Result<Queue, ApiError> {
    state.tasks.queues().open(name).await.map_err(|e| crate::tasks::SubmitError::from(e).into())
}

/// Why `limits` cannot be set, if they cannot.
pub fn validate(limits: &QueueLimits) -> Result<(), String> {
    if limits.max_depth == Some(0) {
        return Err("max_depth must be at least 1 (pause the queue to stop its tasks)".into());
    }
    if limits.concurrency == Some(0) {
        return Err("concurrency must be at least 1 (pause the queue to stop its tasks)".into());
    }
    if let Some(rate) = limits.rate
        && (rate.limit == 0 || !(1..=MAX_RATE_PERIOD_MS).contains(&rate.period_ms))
    {
        return Err(format!("rate needs a limit of at least 1 and a period_ms of 1 to {MAX_RATE_PERIOD_MS}"));
    }
    Ok(())
}

fn view(queue: &Queue, state: QueueState) -> QueueView {
    QueueView {
        name: queue.name().to_string(),
        paused: state.paused,
        limits: state.limits,
        counts: state.counts,
        oldest_waiting_ms: state.oldest_waiting_ms,
        finished_last_minute: state.finished_last_minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::model::RateLimit;

    #[test]
    fn limits_of_zero_are_refused_and_absent_ones_are_none() {
        assert!(validate(&QueueLimits::default()).is_ok());
        assert!(validate(&QueueLimits { max_depth: Some(0), ..QueueLimits::default() }).is_err());
        assert!(validate(&QueueLimits { concurrency: Some(0), ..QueueLimits::default() }).is_err());
        let rate = |limit, period_ms| QueueLimits {
            rate: Some(RateLimit { limit, period_ms }),
            ..QueueLimits::default()
        };
        assert!(validate(&rate(20, 1000)).is_ok());
        assert!(validate(&rate(0, 1000)).is_err());
        assert!(validate(&rate(20, 0)).is_err());
        assert!(validate(&rate(20, MAX_RATE_PERIOD_MS + 1)).is_err());
    }
}
