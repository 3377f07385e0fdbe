//! `GET /metrics` in the Prometheus text format, and who may scrape it (every HTTP request is
//! counted and timed by the access log's layer, `access::log_and_count`).

use super::{ApiError, AppState, auth::forbidden};
use crate::{auth::Scope, queue::Queue};
use app::model::Problem;
use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: this process's counters and histograms, and every queue's gauges read from
/// Redis now (one script per queue, sent together, and the worker registry).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "With access control on: a bearer token with `read` on every queue.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The Prometheus text format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "No token, or an unknown, revoked or expired one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `read`, or does not reach every queue", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unreachable, or another recorder was installed first", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    admit(&state, &headers)?;
    let Some(recorder) = &state.metrics else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail("another metrics recorder was installed in this process before Courier's"));
    };
    let queues = state.tasks.queues().all().await?;
    let states = futures::future::try_join_all(queues.iter().map(Queue::state)).await?;
    let workers = state.workers.list(state.tasks.queues()).await?;
    for (queue, queue_state) in queues.iter().zip(&states) {
        crate::metrics::queue_state(queue.name(), queue_state);
        let serving =
            workers.iter().filter(|w| w.queues.iter().any(|q| q == "*" || q == queue.name())).count();
        crate::metrics::queue_workers(queue.name(), serving);
    }
    crate::metrics::sse_clients(state.events.open_streams());
    let mut response = recorder.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    Ok(response)
}

/// A worker's `GET /metrics` (`--metrics-addr`): this process's counters and histograms only.
pub async fn render_own(
    recorder: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<Response, ApiError> {
    let Some(recorder) = recorder else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail("another metrics recorder was installed in this process before Courier's"));
    };
    let mut response = recorder.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    Ok(response)
}

/// Who may scrape: anyone while access control is off; else a bearer token with the `read`
/// scope on every queue, since the metrics name every queue and count its tasks. (The access
/// layer's rule table covers `/api/v1` only; this route is outside it, where scrapers look.)
fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if !state.tokens.enabled() {
        return Ok(());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("`/metrics` needs an access token: `Authorization: Bearer <token>`")
        })?;
    let access = state
        .tokens
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))?;
    if !access.has(Scope::Read) {
        return Err(forbidden("this token lacks the `read` scope `/metrics` needs"));
    }
    if access.within().is_some() {
        return Err(forbidden(
            "`/metrics` tells of every queue: it needs a token that reaches every queue (`--queues '*'`)",
        ));
    }
    Ok(())
}
