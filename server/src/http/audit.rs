//! The audit trail over HTTP (`admin`): who did what, newest first.

use super::{ApiError, AppState, Json};
use app::model::{AuditPage, Problem};
use axum::extract::{Query, State};
use std::collections::HashMap;

/// The most entries one page holds.
const MAX_LIMIT: usize = 500;

/// `GET /api/v1/audit?limit=&before=`.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "access",
    summary = "The audit trail, newest first",
    params(
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 500, description = "Entries per page (default 50)"),
        ("before" = Option<String>, Query, pattern = "^[0-9]{1,19}-[0-9]{1,19}$", description = "`next` of the previous page: entries older than this id"),
    ),
    responses(
        (status = 200, description = "A page of the trail", body = AuditPage),
        (status = 400, description = "An unknown query parameter, or a bad `before`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad limit", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    let mut limit = 50;
    let mut before = None;
    for (name, value) in &query {
        match name.as_str() {
            "limit" => limit = super::page_limit(value, MAX_LIMIT)?,
            "before" if crate::events::Position::parse(value).is_some() => before = Some(value.as_str()),
            "before" => return Err(ApiError::bad_request("before must be an entry id from a previous page")),
            other => return Err(ApiError::bad_request(format!("unknown parameter `{other}`"))),
        }
    }
    Ok(Json(state.audit.recent(limit, before).await?))
}
