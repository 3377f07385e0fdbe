//! The dead-letter queue over HTTP: list, requeue (one or all), delete.

use super::{ApiError, AppState, openapi::QueueName, parse_id};
use crate::{auth::Access, store::rfc3339};
use app::model::{DeadLetter, DeadLetterPage, Problem, TaskView};
use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use std::collections::HashMap;
use uuid::Uuid;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// `GET /api/v1/dead-letters?limit=&cursor=&subscription=topic/name`: most recent failure first.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    operation_id = "list_dead_letters",
    tag = "dead letters",
    summary = "List dead letters, most recent failure first",
    params(
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 500, description = "Dead letters per page (default 50)"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,19}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "`next_cursor` of the previous page"),
        ("subscription" = Option<String>, Query, description = "Only those of this topic subscription (`topic/name`)"),
        ("queue" = inline(Option<QueueName>), Query, description = "Only those of this queue"),
    ),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad limit, cursor or queue name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let invalid = |detail: String| ApiError::unprocessable("invalid-query", "Invalid query", detail);
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
    let mut subscription = None;
    let mut queue = None;
    for (name, value) in &query {
        match name.as_str() {
            "limit" => limit = super::page_limit(value, MAX_PAGE)?,
            "cursor" => {
                cursor = Some(
                    parse_cursor(value)
                        .ok_or_else(|| invalid(format!("`{value}` is not a cursor from a previous page")))?,
                )
            }
            "subscription" => subscription = Some(value.clone()),
            "queue" if app::model::is_queue_name(value) => queue = Some(value.as_str()),
            "queue" => return Err(invalid(format!("`{value}` is not a queue name"))),
            other => return Err(ApiError::bad_request(format!("unknown query parameter `{other}`"))),
        }
    }
    let (mut letters, next) = state.tasks.dead_letters(queue, access.within(), cursor, limit).await?;
    // One subscription's dead letters: a view over the shared set (filtered per page).
    if let Some(wanted) = &subscription {
        letters.retain(|(record, _)| record.subscription.as_ref() == Some(wanted));
    }
    Ok(Json(DeadLetterPage {
        dead_letters: letters
            .into_iter()
            .map(|(record, failed_ms)| DeadLetter {
                reason: record.dead_reason.clone().unwrap_or_default(),
                failed_at: rfc3339(failed_ms),
                task: record.view(),
            })
            .collect(),
        next_cursor: next.map(|(ms, id)| format!("{ms}_{id}")),
    }))
}

fn parse_cursor(cursor: &str) -> Option<(u64, Uuid)> {
    let (ms, id) = cursor.split_once('_')?;
    Some((ms.parse().ok()?, id.parse().ok()?))
}

/// `POST /api/v1/dead-letters/{id}/requeue`: runs it again, attempts reset.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{id}/requeue",
    operation_id = "requeue_dead_letter",
    tag = "dead letters",
    summary = "Run a dead letter again, attempts reset",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 202, description = "Requeued: the task", body = TaskView),
        (status = 404, description = "No dead letter with this id", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn requeue(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let id = parse_id(&id)?;
    if !state.tasks.requeue(&id).await? {
        return Err(not_a_dead_letter());
    }
    state.audit.record(access.name(), "dead-letter.requeue", &id.to_string()).await;
    let record = state.tasks.get(&id).await?.ok_or_else(|| ApiError::not_found("the task has expired"))?;
    Ok((StatusCode::ACCEPTED, Json(record.view())))
}

/// `POST /api/v1/dead-letters/requeue[?kind=&queue=]`: requeues every dead letter (of that kind,
/// in that queue).
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/requeue",
    operation_id = "requeue_dead_letters",
    tag = "dead letters",
    summary = "Run every dead letter (of a kind, in a queue) again",
    params(
        ("kind" = Option<String>, Query, description = "Only those of this kind"),
        ("queue" = inline(Option<QueueName>), Query, description = "Only those of this queue"),
    ),
    responses(
        (status = 202, description = "How many were requeued", body = Requeued),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a queue name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn requeue_all(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    if let Some(other) = query.keys().find(|k| !matches!(k.as_str(), "kind" | "queue")) {
        return Err(ApiError::bad_request(format!("unknown query parameter `{other}`")));
    }
    let (queue, kind) = (query.get("queue").map(String::as_str), query.get("kind").map(String::as_str));
    if let Some(queue) = queue.filter(|q| !app::model::is_queue_name(q)) {
        let detail = format!("`{queue}` is not a queue name");
        return Err(ApiError::unprocessable("invalid-query", "Invalid query", detail));
    }
    let requeued = state.tasks.requeue_all(queue, kind, access.within()).await?;
    let target = format!("queue={} kind={} requeued={requeued}", queue.unwrap_or("*"), kind.unwrap_or("*"));
    state.audit.record(access.name(), "dead-letter.requeue-all", &target).await;
    Ok((StatusCode::ACCEPTED, Json(Requeued { requeued })))
}

/// The answer to requeueing every dead letter.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Requeued {
    /// How many dead letters were requeued.
    requeued: usize,
}

/// `DELETE /api/v1/dead-letters/{id}`: deletes the task, its payload and result.
#[utoipa::path(
    delete,
    path = "/api/v1/dead-letters/{id}",
    operation_id = "delete_dead_letter",
    tag = "dead letters",
    summary = "Delete a dead letter: the task, its payload and result",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No dead letter with this id", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if !state.tasks.purge(&id).await? {
        return Err(not_a_dead_letter());
    }
    state.audit.record(access.name(), "dead-letter.delete", &id.to_string()).await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_a_dead_letter() -> ApiError {
    ApiError::not_found("no dead letter with this id (it was requeued, deleted, or has expired)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(parse_cursor(&format!("17_{id}")), Some((17, id)));
        assert_eq!(parse_cursor("17"), None);
        assert_eq!(parse_cursor("x_y"), None);
    }
}
