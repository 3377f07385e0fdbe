//! The dead-letter queue over HTTP: list, count, requeue and delete, one at a time or every one
//! a filter takes (queue, kind, reason, when they failed).

use super::{
    ApiError, AppState, Json, Written, check_range, invalid_parameter, openapi::QueueName, parse_id,
    query_time,
};
use crate::{
    auth::Access,
    store::rfc3339,
    tasks::{BulkAction, BulkError, DeadLetterFilter},
};
use app::model::{
    DEAD_REASONS, DeadLetter, DeadLetterCount, DeadLetterPage, DeadLettersDeleted, DeadLettersRequeued,
    Problem, TaskView,
};
use axum::{
    Extension,
    extract::{Path, Query, State},
    http::StatusCode,
};
use std::collections::HashMap;
use uuid::Uuid;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The filter of the dead-letter listing, count and bulk actions as the API document states it
/// (`filter_of` reads it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // a description for the document, never built
struct FilterParams {
    /// Only those of this queue
    #[param(value_type = Option<QueueName>, inline)]
    queue: Option<String>,
    /// Only those of this kind (a kind's name has a queue name's form)
    #[param(value_type = Option<QueueName>, inline)]
    kind: Option<String>,
    /// Only those that failed for this reason (`attempts_exhausted`, `non_retryable`,
    /// `timeout`, `workers_lost`, `unknown_kind`, `payload_expired`, `expired`)
    #[param(
        pattern = "^(attempts_exhausted|non_retryable|timeout|workers_lost|unknown_kind|payload_expired|expired)$"
    )]
    reason: Option<String>,
    /// Only those that failed at or after this time (RFC 3339)
    #[param(format = DateTime)]
    failed_after: Option<String>,
    /// Only those that failed before this time (RFC 3339)
    #[param(format = DateTime)]
    failed_before: Option<String>,
}

/// The filter parameters every dead-letter listing, count and bulk action takes.
const FILTERS: [&str; 5] = ["queue", "kind", "reason", "failed_after", "failed_before"];

/// Reads the filter out of `query` (the parameters of [`FILTERS`]), limited to the queues
/// `access` reaches; any other parameter is left to the caller.
fn filter_of(query: &HashMap<String, String>, access: &Access) -> Result<DeadLetterFilter, ApiError> {
    let mut filter = DeadLetterFilter { within: access.within().cloned(), ..DeadLetterFilter::default() };
    for (name, value) in query {
        match name.as_str() {
            "queue" if app::model::is_queue_name(value) => filter.queue = Some(value.clone()),
            "queue" => return Err(invalid_parameter(name, format!("`{value}` is not a queue name"))),
            "kind" if app::model::is_kind_name(value) => filter.kind = Some(value.clone()),
            "kind" => return Err(invalid_parameter(name, format!("`{value}` is not a kind name"))),
            "reason" if DEAD_REASONS.contains(&value.as_str()) => filter.reason = Some(value.clone()),
            "reason" => {
                return Err(invalid_parameter(
                    name,
                    format!("`{value}` is not one of {}", DEAD_REASONS.join(", ")),
                ));
            }
            "failed_after" => filter.failed.from_ms = Some(query_time(name, value)?),
            "failed_before" => filter.failed.before_ms = Some(query_time(name, value)?),
            _ => {}
        }
    }
    check_range(("failed_after", filter.failed.from_ms), ("failed_before", filter.failed.before_ms))?;
    Ok(filter)
}

/// Refuses any parameter but the filter's (and `also`).
fn only_filters(query: &HashMap<String, String>, also: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !FILTERS.contains(&k.as_str()) && !also.contains(&k.as_str())) {
        Some(other) => Err(ApiError::bad_request(format!("unknown query parameter `{other}`"))),
        None => Ok(()),
    }
}

/// `GET /api/v1/dead-letters?queue=&kind=&reason=&failed_after=&failed_before=&subscription=
/// topic/name&limit=&cursor=`: most recent failure first.
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
        FilterParams,
    ),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad limit, cursor or filter value (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    only_filters(&query, &["limit", "cursor", "subscription"])?;
    let filter = filter_of(&query, &access)?;
    let limit =
        query.get("limit").map(|v| super::page_limit(v, MAX_PAGE)).transpose()?.unwrap_or(DEFAULT_PAGE);
    let cursor = query
        .get("cursor")
        .map(|value| {
            parse_cursor(value).ok_or_else(|| {
                invalid_parameter("cursor", format!("`{value}` is not a cursor from a previous page"))
            })
        })
        .transpose()?;
    let subscription = query.get("subscription");
    let (letters, next) = state
        .tasks
        .dead_letters(&filter, cursor, limit, |record| {
            subscription.is_none_or(|wanted| record.subscription.as_ref() == Some(wanted))
        })
        .await?;
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

/// `GET /api/v1/dead-letters/count?queue=&kind=&reason=&failed_after=&failed_before=`: how many
/// dead letters a bulk action with the same filter would take now, and the time they failed
/// before (`as_of`), to pass on as `failed_before` so that the action takes no later ones.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/count",
    operation_id = "count_dead_letters",
    tag = "dead letters",
    summary = "How many dead letters a filter takes now (a bulk action's preview)",
    params(
        FilterParams,
    ),
    responses(
        (status = 200, description = "The count, and the time to pass as `failed_before` so that an action takes no later ones", body = DeadLetterCount),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter value (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn count(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterCount>, ApiError> {
    only_filters(&query, &[])?;
    let filter = filter_of(&query, &access)?.failed_before(crate::store::now_ms());
    let count = state.tasks.count_dead_letters(&filter).await?;
    let as_of = filter.failed.before_ms.expect("failed_before() sets it");
    Ok(Json(DeadLetterCount { count, as_of: rfc3339(as_of) }))
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
) -> Result<(StatusCode, Written<TaskView>), ApiError> {
    let id = parse_id(&id)?;
    if !state.tasks.requeue(&id).await? {
        return Err(not_a_dead_letter());
    }
    state.audit.record(access.name(), "dead-letter.requeue", &id.to_string()).await;
    let record = state.tasks.get(&id).await?.ok_or_else(|| ApiError::not_found("the task has expired"))?;
    Ok((StatusCode::ACCEPTED, Written(record.view())))
}

/// `POST /api/v1/dead-letters/requeue?queue=&kind=&reason=&failed_after=&failed_before=`:
/// requeues every dead letter the filter takes (every one without a filter) that failed before
/// the call; `202` with how many.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/requeue",
    operation_id = "requeue_dead_letters",
    tag = "dead letters",
    summary = "Run again every dead letter a filter takes (all without one)",
    params(
        FilterParams,
    ),
    responses(
        (status = 202, description = "How many were requeued", body = DeadLettersRequeued),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad filter value (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn requeue_all(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<DeadLettersRequeued>), ApiError> {
    only_filters(&query, &[])?;
    let filter = filter_of(&query, &access)?;
    let requeued = act(&state, &access, &filter, BulkAction::Requeue).await?;
    Ok((StatusCode::ACCEPTED, Json(DeadLettersRequeued { requeued })))
}

/// `DELETE /api/v1/dead-letters?queue=&kind=&reason=&failed_after=&failed_before=`: deletes
/// every dead letter the filter takes that failed before the call; `200` with how many. A
/// filter is required (`failed_before` alone will do): deleting every dead letter there is must
/// be asked for.
#[utoipa::path(
    delete,
    path = "/api/v1/dead-letters",
    operation_id = "delete_dead_letters",
    tag = "dead letters",
    summary = "Delete every dead letter a filter takes (a filter is required)",
    params(
        FilterParams,
    ),
    responses(
        (status = 200, description = "How many were deleted", body = DeadLettersDeleted),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No filter, or a bad filter value (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete_all(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLettersDeleted>, ApiError> {
    only_filters(&query, &[])?;
    if query.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid-query",
            "Invalid query",
            format!(
                "name the dead letters to delete with at least one of {}; to delete every one, \
                 say failed_before=<now>",
                FILTERS.join(", ")
            ),
        ));
    }
    let filter = filter_of(&query, &access)?;
    let deleted = act(&state, &access, &filter, BulkAction::Delete).await?;
    Ok(Json(DeadLettersDeleted { deleted }))
}

/// Does `action` to every dead letter `filter` takes, and records it in the audit trail with
/// how many, also when a Redis error stopped it part way (each dead letter is acted on whole).
async fn act(
    state: &AppState,
    access: &Access,
    filter: &DeadLetterFilter,
    action: BulkAction,
) -> Result<u64, ApiError> {
    let outcome = state.tasks.act_on_dead_letters(filter, action).await;
    let (name, done) = match action {
        BulkAction::Requeue => ("dead-letter.requeue-all", "requeued"),
        BulkAction::Delete => ("dead-letter.delete-all", "deleted"),
    };
    let count = match &outcome {
        Ok(n) => n.to_string(),
        Err(BulkError { done, .. }) => format!("{done} (stopped by an error)"),
    };
    let target = format!("{} {done}={count}", describe(filter));
    state.audit.record(access.name(), name, &target).await;
    outcome.map_err(|e| e.error.into())
}

/// A filter as the audit trail records it: `queue=* kind=flaky reason=* failed=[…, …)`.
fn describe(filter: &DeadLetterFilter) -> String {
    let or_any = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".into());
    let time = |ms: Option<u64>| ms.map(rfc3339).unwrap_or_else(|| "…".into());
    format!(
        "queue={} kind={} reason={} failed=[{}, {})",
        or_any(&filter.queue),
        or_any(&filter.kind),
        or_any(&filter.reason),
        time(filter.failed.from_ms),
        time(filter.failed.before_ms),
    )
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

fn parse_cursor(cursor: &str) -> Option<(u64, Uuid)> {
    let (ms, id) = cursor.split_once('_')?;
    Some((ms.parse().ok()?, id.parse().ok()?))
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
