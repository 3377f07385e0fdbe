//! The HTTP edge: the router (UI, REST API, SSE), its shared state, and health checks.

mod access;
mod api;
mod audit;
mod auth;
mod connections;
mod dead_letters;
mod guard;
mod json;
mod kinds;
mod leases;
mod metrics;
mod openapi;
mod problem;
mod queues;
mod schedules;
mod session;
mod sse;
mod stats;
mod timeouts;
mod tls;
mod tokens;
mod topics;
mod workers;
mod workflows;

pub use access::REQUEST_ID;
pub use auth::{QueueIn, RULES as ACCESS_RULES, Rule};
pub use connections::serve;
pub use guard::Guard;
use json::{Json, Written};
pub use openapi::document as openapi_document;
pub use problem::ApiError;
pub use queues::validate as validate_limits;
pub use timeouts::Timeouts;
pub use tls::{TlsError, tls_acceptor};

use crate::redis_client::Conn;
use crate::{
    audit::Audit,
    auth::{Tokens, sessions::Sessions},
    events::Events,
    kinds::Kinds,
    links::Links,
    tasks::Tasks,
    topics::Topics,
};
use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRef, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use leptos::prelude::LeptosOptions;
use leptos_axum::{LeptosRoutes, generate_route_list};
use std::{sync::Arc, time::Duration};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use uuid::Uuid;

/// A worker process's own small router (`--metrics-addr`): `/healthz`, `/readyz` (Redis answers)
/// and `/metrics` (this process's counters and histograms: the queue gauges are `serve`'s).
pub fn worker_probes(redis: Conn, recorder: Option<metrics_exporter_prometheus::PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || metrics::render_own(recorder.clone())))
        .layer(middleware::from_fn(access::log))
        .with_state(redis)
}

/// Everything a request handler may need, behind one `Arc`: axum clones the state for every
/// extractor and middleware of every request, and a clone of the whole struct was some thirty
/// reference counts to bump and drop again (6 % of the server's CPU serving pull workers, perf).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What the Leptos routes take from the state.
impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> LeptosOptions {
        state.leptos_options.clone()
    }
}

/// What the readiness probe takes from the state.
impl FromRef<AppState> for Conn {
    fn from_ref(state: &AppState) -> Conn {
        state.redis.clone()
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub tasks: Tasks,
    pub topics: Topics,
    pub workflows: crate::workflows::Workflows,
    pub schedules: crate::schedules::Schedules,
    pub kinds: Kinds,
    pub events: Events,
    /// The access tokens every API call is checked against.
    pub tokens: Tokens,
    /// Where operator actions are recorded.
    pub audit: Audit,
    /// The browsers signed in with a token (their session cookies).
    pub sessions: Sessions,
    /// Signs result links.
    pub links: Links,
    pub redis: Conn,
    pub max_payload: u64,
    /// The bytes of request bodies held at once (--max-body-memory).
    pub body_budget: BodyBudget,
    pub retention: Duration,
    /// How retries are spaced for kinds without a policy of their own (a pulled task's failure).
    pub retry: crate::worker::RetryPolicy,
    pub leptos_options: LeptosOptions,
    /// Whether this server serves HTTPS (--tls-cert), e.g. so that its cookies can be `Secure`.
    pub https: bool,
    /// The hosts and origins answered.
    pub guard: Arc<Guard>,
    pub timeouts: Timeouts,
    /// Permits for submissions waiting for their result (`Prefer: wait`), --max-waiting of them.
    pub waiting: Arc<Semaphore>,
    /// Renders the process's metrics (`GET /metrics`); `None` when another recorder was
    /// installed in the process first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The worker registry (`GET /api/v1/workers`, `courier_workers`).
    pub workers: crate::workers::Workers,
}

/// The whole application: API routes first, then the Leptos pages and static files.
pub fn router(state: AppState) -> Router {
    let leptos_options = state.leptos_options.clone();
    let api = Router::new()
        .route("/api/v1/tasks", get(api::list).post(api::submit))
        .route("/api/v1/tasks/batch", post(api::submit_batch))
        .route("/api/v1/tasks/{id}", get(api::get).delete(api::cancel))
        .route("/api/v1/tasks/{id}/status", get(api::status).delete(api::cancel_on_status_monitor))
        .route("/api/v1/tasks/{id}/result", get(api::result))
        .route("/api/v1/tasks/{id}/payload", get(api::payload))
        .route("/api/v1/tasks/{id}/attempts", get(api::attempts))
        .route("/api/v1/tasks/{id}/events", get(sse::task_events))
        .route("/api/v1/events", get(sse::all_events))
        .route("/api/v1/kinds", get(kinds::list))
        .route("/api/v1/kinds/{name}", get(kinds::get).put(kinds::put).delete(kinds::delete))
        .route("/api/v1/topics", get(topics::list))
        .route("/api/v1/topics/{topic}/messages", post(topics::publish))
        .route("/api/v1/topics/{topic}/subscriptions", get(topics::subscriptions))
        .route(
            "/api/v1/topics/{topic}/subscriptions/{name}",
            get(topics::get).put(topics::put).delete(topics::delete),
        )
        .route("/api/v1/queues", get(queues::list))
        .route("/api/v1/queues/{name}", get(queues::get).put(queues::put))
        .route("/api/v1/queues/{name}/pause", post(queues::pause))
        .route("/api/v1/queues/{name}/resume", post(queues::resume))
        .route("/api/v1/queues/{name}/leases", post(leases::take))
        .route("/api/v1/schedules", get(schedules::list))
        .route("/api/v1/schedules/{name}", get(schedules::get).put(schedules::put).delete(schedules::delete))
        .route("/api/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/api/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/api/v1/schedules/{name}/run", post(schedules::run))
        .route("/api/v1/leases/ends", post(leases::end_many))
        .route("/api/v1/leases/{token}/heartbeat", post(leases::heartbeat))
        .route("/api/v1/leases/{token}/complete", post(leases::complete))
        .route("/api/v1/leases/{token}/fail", post(leases::fail))
        .route("/api/v1/leases/{token}/release", post(leases::release))
        .route("/api/v1/dead-letters", get(dead_letters::list).delete(dead_letters::delete_all))
        .route("/api/v1/dead-letters/count", get(dead_letters::count))
        .route("/api/v1/dead-letters/requeue", post(dead_letters::requeue_all))
        .route("/api/v1/dead-letters/{id}", delete(dead_letters::delete))
        .route("/api/v1/dead-letters/{id}/requeue", post(dead_letters::requeue))
        .route("/api/v1/workers", get(workers::list))
        .route("/api/v1/workflows", get(workflows::list).post(workflows::create))
        .route("/api/v1/workflows/{id}", get(workflows::get).delete(workflows::cancel))
        .route("/api/v1/workflows/{id}/status", get(workflows::status))
        .route("/api/v1/workflows/{id}/result", get(workflows::result))
        .route("/api/v1/stats", get(stats::get))
        .route("/api/v1/stats/events", get(stats::events))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{name}", delete(tokens::revoke))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/auth/me", get(tokens::me))
        .route("/api/{*rest}", axum::routing::any(api::no_such_endpoint))
        // Every API call's token, scope and queue, before its handler (not the health checks).
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::check))
        // Signing in and out: a plain form post, before any token; the guard below refuses
        // other sites' pages.
        .route(
            "/auth/sign-in",
            post(session::sign_in).layer(DefaultBodyLimit::max(session::SIGN_IN_MAX_BYTES)),
        )
        .route("/auth/sign-out", post(session::sign_out))
        // The API's own description, public: it holds nothing the README does not.
        .route("/api/v1/openapi.json", get(openapi::json))
        .route("/api/docs", get(openapi::reference))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Outside the API's access layer: it checks its own token (`read` on every queue).
        .route("/metrics", get(metrics::render))
        // One layer of layers, outermost first: `Router::layer` wraps every route in a boxed
        // service, so layers added one by one would box (and clone, on every request) each.
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(state.timeouts, api_answers))
                // Submissions enforce their own, configurable limit (413 as problem+json).
                .layer(DefaultBodyLimit::disable()),
        );
    let api = match state.guard.cors() {
        Some(cors) => api.layer(cors),
        None => api,
    };
    let routes = generate_route_list(app::App);
    api.leptos_routes(&state, routes, {
        let options = leptos_options.clone();
        move || app::shell(options.clone())
    })
    .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
    .layer(middleware::from_fn_with_state(state.clone(), front_door))
    .with_state(state)
}

/// Every request's way in, as one layer: each level of layers clones the boxed services below
/// it and boxes the request's future again, on every request (docs/benchmark-notes.md,
/// "Fortieth step").
/// - Every answer is logged once, with the id it is answered with, and counted as sent, the
///   refusals below included (`access`).
/// - A request for a host this server does not answer for (`421`) or an unsafe one from another
///   site's page (`403`) is refused, as problem+json (`guard`); then, with access control on, a
///   page without a session leads to the sign-in page (`session::pages`).
/// - Every answer is taken for the type it says it is, never sniffed for another.
async fn front_door(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admit = |request: Request| async move {
        match state.guard.admit(request.method(), request.uri(), request.headers()) {
            Ok(()) => session::pages(State(state), request, next).await,
            Err(problem) => problem.into_response(),
        }
    };
    let mut response = access::log_and_count(request, admit).await;
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Every API answer bounded in time (`timeouts::bound`), then made a problem+json if it is an
/// error that is not one yet (`problem::as_problem`): one layer for both, as [`admit`].
async fn api_answers(State(timeouts): State<Timeouts>, request: Request, next: Next) -> Response {
    problem::as_problem(timeouts::bound(State(timeouts), request, next).await).await
}

/// The bytes of request bodies held at once by this process (`--max-body-memory`), shared by
/// every request that reads one: past it, `503` + Retry-After instead of memory without bound.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> BodyBudget {
        let kib = usize::try_from(bytes / 1024).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        BodyBudget { kib: Arc::new(Semaphore::new(kib)) }
    }
}

/// A request body read whole; its share of the body budget is held until it is dropped.
pub struct ReadBody {
    pub bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// A body's share of the budget, taken as its bytes are announced or arrive.
struct BodyShare<'a> {
    budget: &'a BodyBudget,
    permit: Option<OwnedSemaphorePermit>,
    kib: usize,
}

impl BodyShare<'_> {
    /// Makes the share cover `bytes` in all, or refuses the request.
    fn cover(&mut self, bytes: usize) -> Result<(), ApiError> {
        let need = bytes.div_ceil(1024);
        if need <= self.kib {
            return Ok(());
        }
        let busy = || {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Server busy")
                .detail("too many request bodies are being received at once; retry shortly")
                .retry_after(1)
        };
        let more = u32::try_from(need - self.kib).map_err(|_| busy())?;
        let taken = self.budget.kib.clone().try_acquire_many_owned(more).map_err(|_| busy())?;
        match &mut self.permit {
            Some(permit) => permit.merge(taken),
            None => self.permit = Some(taken),
        }
        self.kib = need;
        Ok(())
    }
}

/// Reads a request body up to `limit` bytes; past it, `413` without reading the rest. The body's
/// bytes count against `budget` from the moment they are announced (Content-Length) or arrive.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    budget: &BodyBudget,
) -> Result<ReadBody, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
            .detail(format!("the body exceeds the limit of {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let declared = declared.unwrap_or(0) as usize;
    let mut share = BodyShare { budget, permit: None, kib: 0 };
    share.cover(declared)?;
    let mut buffer = BytesMut::with_capacity(declared);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if (buffer.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        share.cover(buffer.len() + chunk.len())?;
        buffer.extend_from_slice(&chunk);
    }
    Ok(ReadBody { bytes: buffer.freeze(), _budget: share.permit })
}

/// Bodies up to this size are parsed on the async runtime; larger ones on a blocking thread.
const PARSE_INLINE_MAX: usize = 64 * 1024;

/// Runs `work` on a body: here when it is small, on a blocking thread when it is large, so that
/// parsing megabytes never stalls the requests and events beside it.
async fn off_runtime<R: Send + 'static>(
    bytes: Bytes,
    work: impl FnOnce(&Bytes) -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    if bytes.len() <= PARSE_INLINE_MAX {
        return work(&bytes);
    }
    tokio::task::spawn_blocking(move || work(&bytes)).await.unwrap_or_else(|_| {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail("the server is shutting down")
            .retry_after(1))
    })
}

/// Parses a JSON body into `T`: bad syntax is a `400`, a wrong shape a `422`.
fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    refuse_array(bytes)
        .map_err(|detail| ApiError::unprocessable("invalid-request", "Invalid request", detail))?;
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable("invalid-request", "Invalid request", e.to_string())
        }
        // serde_json reports some shapes it cannot read as syntax (an enum given as a map of two
        // keys): JSON that parses is well-formed, and what is wrong with it is its shape.
        _ if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            ApiError::unprocessable("invalid-request", "Invalid request", e.to_string())
        }
        _ => ApiError::bad_request(format!("the body is not valid JSON: {e}")),
    })
}

/// Refuses a JSON array where an object is expected: serde reads a struct from an array of its
/// fields in order too (`["echo", 1]` as `{"kind": "echo", "payload": 1}`), which no client means
/// and the API's document does not allow.
fn refuse_array(bytes: &[u8]) -> Result<(), String> {
    match bytes.trim_ascii_start().first() {
        Some(b'[') => Err("the body must be a JSON object, not an array".into()),
        _ => Ok(()),
    }
}

/// A listing's `limit` query parameter: 1 to `max`, else a `422` saying so.
fn page_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    value.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid-query",
            "Invalid query",
            format!("limit must be between 1 and {max}"),
        )
    })
}

/// The `422` for query parameter `name`, saying what is wrong with it.
fn invalid_parameter(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid-query", "Invalid query", format!("`{name}`: {detail}"))
}

/// A time in query parameter `name` (RFC 3339, with its offset), in ms since the epoch; a time
/// between two milliseconds counts as the later one.
fn query_time(name: &str, value: &str) -> Result<u64, ApiError> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
        .filter(|nanos| *nanos >= 0)
        .and_then(|nanos| u64::try_from((nanos + 999_999) / 1_000_000).ok())
        .ok_or_else(|| {
            invalid_parameter(name, format!("`{value}` is not an RFC 3339 time, e.g. 2025-01-31T17:00:00Z"))
        })
}

/// Checks that a time range's beginning (inclusive) comes before its end (exclusive).
fn check_range(from: (&str, Option<u64>), before: (&str, Option<u64>)) -> Result<(), ApiError> {
    match (from.1, before.1) {
        (Some(a), Some(b)) if a >= b => {
            Err(invalid_parameter(before.0, format!("must come after `{}`: the range is empty", from.0)))
        }
        _ => Ok(()),
    }
}

/// Parses a task id from a path or query, as a problem if malformed.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found(format!("`{id}` is not a task id")))
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness: the process is up",
    security(()),
    responses((status = 200, description = "Up", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", redis: None })
}

/// The answer of the health checks.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
    /// `ok` (`GET /readyz` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
}

/// `GET /readyz`: Redis answers within a second.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness: Redis answers within a second",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Redis is unreachable", body = app::model::Problem, content_type = "application/problem+json"),
    ),
)]
async fn readyz(State(mut redis): State<Conn>) -> Result<Json<Health>, ApiError> {
    let ping =
        tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut redis))
            .await;
    match ping {
        Ok(Ok(_)) => Ok(Json(Health { status: "ok", redis: Some("ok") })),
        Ok(Err(e)) => Err(ApiError::unavailable(&e)),
        Err(_) => {
            Err(ApiError::unavailable(&redis::RedisError::from((redis::ErrorKind::Io, "PING timed out"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_times_are_rfc3339_with_an_offset_rounded_up_to_the_millisecond() {
        assert_eq!(query_time("t", "2023-11-14T22:13:20.123Z").unwrap(), 1_700_000_000_123);
        assert_eq!(query_time("t", "2023-11-14T23:13:20.123+01:00").unwrap(), 1_700_000_000_123);
        assert_eq!(query_time("t", "2023-11-14T22:13:20.1230001Z").unwrap(), 1_700_000_000_124);
        for bad in ["2023-11-14", "2023-11-14T22:13:20", "yesterday", "1969-12-31T23:59:59Z"] {
            let problem = query_time("failed_after", bad).unwrap_err();
            assert!(problem.detail_text().starts_with("`failed_after`"), "{bad}");
        }
        assert!(check_range(("a", Some(1)), ("b", Some(1))).is_err());
        assert!(check_range(("a", Some(1)), ("b", Some(2))).is_ok());
        assert!(check_range(("a", None), ("b", Some(0))).is_ok());
    }
}
