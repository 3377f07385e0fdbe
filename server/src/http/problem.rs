//! RFC 9457 problem+json: the one error type of the HTTP edge.

use crate::tasks::{CancelError, SubmitError};
use app::model::Problem;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tracing::{error, warn};

/// An error answer: status, a stable `type`, a title and the details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: Option<String>,
    errors: Vec<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A problem with `status`, a type slug (`/problems/{slug}`) and a title.
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> ApiError {
        ApiError { status, slug, title, detail: None, errors: Vec::new(), retry_after: None }
    }

    /// Adds the explanation for this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    /// Adds itemised reasons (schema violations).
    pub fn errors(mut self, errors: Vec<String>) -> ApiError {
        self.errors = errors;
        self
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    pub fn unprocessable(slug: &'static str, title: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title).detail(detail)
    }

    /// Redis could not be reached or failed: the client may retry shortly.
    pub fn unavailable(e: &redis::RedisError) -> ApiError {
        warn!(error = %e, "answering 503: Redis is unavailable");
        let mut problem =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                .detail("the task store is unreachable; retry shortly");
        problem.retry_after = Some(1);
        problem
    }

    /// The explanation, or the title when there is none.
    pub fn detail_text(&self) -> String {
        self.detail.clone().unwrap_or_else(|| self.title.to_string())
    }

    /// The status this problem answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> ApiError {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            return ApiError::unavailable(&e);
        }
        error!(error = %e, "answering 500: unexpected Redis error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::UnknownKind(_) => {
                ApiError::unprocessable("unknown-kind", "Unknown task kind", e.to_string())
            }
            SubmitError::InvalidPayload { ref errors, .. } => {
                let errors = errors.clone();
                ApiError::unprocessable("invalid-payload", "Payload does not match the schema", e.to_string())
                    .errors(errors)
            }
            SubmitError::InvalidOption(detail) => {
                ApiError::unprocessable("invalid-option", "Invalid task option", detail)
            }
            SubmitError::MalformedJson(_) => ApiError::bad_request(e.to_string()),
            SubmitError::Unsupported(detail) => {
                ApiError::unprocessable("unsupported", "Not supported", detail)
            }
            SubmitError::IdempotencyKeyReused => {
                ApiError::unprocessable("idempotency-key-reused", "Idempotency key reused", e.to_string())
            }
            SubmitError::Redis(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> ApiError {
        match e {
            CancelError::NotFound => ApiError::not_found(e.to_string()),
            CancelError::Finished(_) => {
                ApiError::new(StatusCode::CONFLICT, "finished", "Task already finished").detail(e.to_string())
            }
            CancelError::Redis(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("/problems/{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let json = serde_json::to_vec(&body).expect("a problem always serializes");
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
