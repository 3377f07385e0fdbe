//! The dead-letter queue over HTTP: list, requeue (one or all), delete.

use super::{ApiError, AppState, parse_id};
use crate::{auth::Access, store::rfc3339};
use app::model::{DeadLetter, DeadLetterPage};
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
pub async fn requeue(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<app::model::TaskView>), ApiError> {
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
pub async fn requeue_all(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "requeued": requeued }))))
}

/// `DELETE /api/v1/dead-letters/{id}`: deletes the task, its payload and result.
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
