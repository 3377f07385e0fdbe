//! The audit trail over HTTP (`admin`): who did what, newest first.

use super::{ApiError, AppState};
use app::model::AuditPage;
use axum::{
    Json,
    extract::{Query, State},
};
use std::collections::HashMap;

/// The most entries one page holds.
const MAX_LIMIT: usize = 500;

/// `GET /api/v1/audit?limit=&before=`.
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
