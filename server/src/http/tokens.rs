//! The tokens API (`admin`): create, list and revoke access tokens; and `GET /auth/me`, who the
//! caller is.

use super::{ApiError, AppState, Json, parse_json, read_body};
use crate::auth::{Access, TokenError, TokenInfo, TokenRequest};
use app::model::{Me, Problem};
use axum::{
    Extension,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};
use serde::Serialize;

/// The largest token request: a name, five scopes and a hundred patterns.
const MAX_REQUEST_BYTES: u64 = 16 << 10;

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Invalid(detail) => {
                ApiError::unprocessable("invalid-token-request", "Invalid token", detail)
            }
            TokenError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "token-exists", "Token exists").detail(e.to_string())
            }
            TokenError::NotFound(_) => ApiError::not_found(e.to_string()),
            TokenError::TooMany => ApiError::new(StatusCode::CONFLICT, "too-many-tokens", "Too many tokens")
                .detail(e.to_string()),
            TokenError::Redis(e) => e.into(),
        }
    }
}

/// A new token, as `POST /api/v1/tokens` answers it: the only time the token is shown.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CreatedToken)]
pub struct Created {
    /// The token (`cour_` and 43 characters); only its SHA-256 is kept.
    token: String,
    #[serde(flatten)]
    info: TokenInfo,
}

/// `GET /api/v1/tokens`: every token, never the secret.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    operation_id = "list_tokens",
    tag = "access",
    summary = "Every token (never the secret)",
    responses((status = 200, description = "The tokens", body = Vec<TokenInfo>)),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(state.tokens.list().await?))
}

/// `POST /api/v1/tokens` `{"name", "scopes", "queues", "expires"?}`: `201` with the token.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    operation_id = "create_token",
    tag = "access",
    summary = "Make a token",
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, shown this once", body = Created),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A token of this name exists, or there are too many", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid name, scope, queue pattern or expiry", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let body = read_body(body, &headers, MAX_REQUEST_BYTES, &state.body_budget).await?;
    let request: TokenRequest = parse_json(&body.bytes)?;
    let minted = state.tokens.create(request).await?;
    state.audit.record(access.name(), "token.create", &minted.info.name).await;
    let created = Created { token: minted.token, info: minted.info };
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /api/v1/tokens/{name}`: `204`; every server refuses it within a second.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{name}",
    operation_id = "revoke_token",
    tag = "access",
    summary = "Revoke a token",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked: every server refuses it within a second"),
        (status = 404, description = "No token by this name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.tokens.revoke(&name).await?;
    state.audit.record(access.name(), "token.revoke", &name).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/me`: the caller's token name, scopes and queues.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    operation_id = "who_am_i",
    tag = "access",
    summary = "Who the caller is and what it may do",
    responses((status = 200, description = "The caller's token name, scopes and queues", body = Me)),
)]
pub async fn me(State(state): State<AppState>, Extension(access): Extension<Access>) -> Json<Me> {
    Json(Me {
        auth: state.tokens.enabled(),
        name: access.name().to_string(),
        scopes: access.scopes().iter().map(|s| s.to_string()).collect(),
        queues: access.queues().to_strings(),
    })
}
