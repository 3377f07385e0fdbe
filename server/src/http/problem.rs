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
    /// Ask for a bearer token (`WWW-Authenticate`), as a `401` does.
    challenge: bool,
}

impl ApiError {
    /// A problem with `status`, a type slug (`/problems/{slug}`) and a title.
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> ApiError {
        ApiError {
            status,
            slug,
            title,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
            challenge: false,
        }
    }

    /// Adds the explanation for this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    /// Asks the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The problem for a bare error `status` (one that no handler explained).
    pub fn for_status(status: StatusCode) -> ApiError {
        let slug = match status.as_u16() {
            400 => "bad-request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not-found",
            405 => "method-not-allowed",
            406 => "not-acceptable",
            408 => "request-timeout",
            409 => "conflict",
            411 => "length-required",
            413 => "payload-too-large",
            414 => "uri-too-long",
            415 => "unsupported-media-type",
            421 => "misdirected-request",
            422 => "unprocessable",
            429 => "too-many-requests",
            431 => "header-fields-too-large",
            500 => "internal",
            501 => "not-implemented",
            503 => "unavailable",
            _ if status.is_client_error() => "client-error",
            _ => "server-error",
        };
        ApiError::new(status, slug, status.canonical_reason().unwrap_or("Error"))
    }

    /// Adds itemised reasons (schema violations).
    pub fn errors(mut self, errors: Vec<String>) -> ApiError {
        self.errors = errors;
        self
    }

    /// `401` with `WWW-Authenticate: Bearer`: a token is missing, unknown, revoked or expired.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        let mut problem =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail);
        problem.challenge = true;
        problem
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
            SubmitError::UnsupportedContentType(detail) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail(detail),
            SubmitError::IdempotencyKeyReused => {
                ApiError::unprocessable("idempotency-key-reused", "Idempotency key reused", e.to_string())
            }
            SubmitError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", "Queue full")
                    .detail(e.to_string())
                    .retry_after(QUEUE_FULL_RETRY_AFTER_S)
            }
            SubmitError::TooManyQueues(detail) => {
                ApiError::new(StatusCode::CONFLICT, "too-many-queues", "Too many queues").detail(detail)
            }
            SubmitError::Unconfirmed(detail) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-replicated", "Not confirmed by a replica")
                    .detail(detail)
                    .retry_after(QUEUE_FULL_RETRY_AFTER_S)
            }
            SubmitError::Redis(e) => e.into(),
        }
    }
}

/// How long a submitter turned away by a full queue is asked to wait: workers drain a queue in
/// seconds, and a short wait spreads retries rather than bunching them.
const QUEUE_FULL_RETRY_AFTER_S: u64 = 1;

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

/// Makes an error answer a problem: one that is not already (axum's own `405`, an extractor's
/// rejection) becomes the problem of its status, with the same headers (`Allow`,
/// `Retry-After`…) and, for a client error, its text as the detail.
pub async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut problem = ApiError::for_status(status);
    // A server error's text may tell internals; a client error's says what was wrong.
    if status.is_client_error()
        && let Ok(text) = axum::body::to_bytes(body, 2048).await
        && let Ok(text) = std::str::from_utf8(&text)
        && !text.trim().is_empty()
    {
        problem = problem.detail(text.trim());
    }
    let (problem_parts, problem_body) = problem.into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &problem_parts.headers {
        if name != header::CONTENT_LENGTH {
            parts.headers.insert(name, value.clone());
        }
    }
    Response::from_parts(parts, problem_body)
}

impl ApiError {
    /// The problem document, for a body that carries one inside it (a status monitor's).
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.problem();
        let json = serde_json::to_vec(&body).expect("a problem always serializes");
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"courier\""));
        }
        response
    }
}
