//! The pull API: workers in any language lease tasks over HTTP, keep them with heartbeats, and
//! end them with complete, fail or release (queue/pull.rs holds the leases).
//!
//! A lease request long-polls: it claims at once, and when nothing is there it waits for an event
//! that may bring work (a task of the queue queued, the queue resumed) and claims again; it also
//! looks again every second, for what comes without an event (delayed tasks come due, retries,
//! leases that ran out). Each look promotes the queue's due tasks itself, so pull workers need no
//! built-in worker beside them.

use super::{
    ApiError, AppState, Json, Written,
    openapi::{Binary, QueueName},
    read_body,
};
use crate::{
    auth::Access,
    events::Pushed,
    handlers::HandlerError,
    queue::{Applied, Outcome, PullToken, Pulled, Queue, Renewal, ResultBytes},
    store::rfc3339,
    worker::failure_outcome,
    workers::Announcement,
};
use app::model::{
    Heartbeat, HeartbeatReply, LeaseEnd, LeaseEndReply, LeaseEnds, LeaseEndsReply, LeaseFailure, LeaseGrant,
    LeaseList, LeaseRequest, Problem, Status, is_kind_name,
};
use axum::{
    Extension,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a lease request waits for tasks.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most leases one request takes.
const MAX_LEASES: u32 = 100;
/// The shortest lease.
const MIN_LEASE_MS: u64 = 1_000;
/// How often a waiting request looks again without an event.
const RECHECK: Duration = Duration::from_secs(1);
/// JSON payloads up to this size come with the lease; others are fetched from `payload_url`.
const INLINE_PAYLOAD_MAX: u64 = 64 * 1024;
/// The largest control body (a lease request, heartbeat or failure).
const CONTROL_BODY_MAX: u64 = 16 * 1024;
/// The most of a failure's message kept.
const ERROR_MAX: usize = 4 * 1024;

/// `POST /api/v1/queues/{queue}/leases`: up to `max` leases on the queue's tasks of `kinds`,
/// waiting up to `wait_ms` for some; the request's `ends` (attempts the worker finished) are
/// applied first, so their slots are free before the leases are counted.
#[utoipa::path(
    post,
    path = "/api/v1/queues/{name}/leases",
    operation_id = "take_leases",
    tag = "pull workers",
    summary = "Lease tasks of a queue (long-polls up to `wait_ms`), ending finished ones first",
    params(("name" = inline(QueueName), Path, description = "The queue's name")),
    request_body(content = LeaseRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The leases taken (none when the wait ended first), and each end's own answer in the order sent", body = LeaseList),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a lease request, or one outside its bounds (nothing was ended); or not a queue name", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn take(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Written<LeaseList>, ApiError> {
    let refused = invalid("invalid-lease-request");
    let mut request: LeaseRequest<Box<RawValue>> = with_ends(&state, &headers, body, refused.clone()).await?;
    check_ends(&request.ends, 0).map_err(&refused)?;
    let queue = state.tasks.queues().open(&name).await.map_err(crate::tasks::SubmitError::from)?;
    let ask = Ask::of(&request, queue.settings().lease).map_err(&refused)?;
    let ends = match std::mem::take(&mut request.ends) {
        ends if ends.is_empty() => None,
        ends => Some(end_all(&state, &access, ends).await),
    };
    match (lease(&state, &queue, &request, &ask).await, ends) {
        (Ok(leases), ends) => Ok(Written(LeaseList { leases, ends })),
        (Err(e), None) => Err(e),
        // The ends applied: their answers are not lost to a failure after them.
        (Err(e), Some(ends)) => {
            let problem = e.problem();
            tracing::warn!(status = problem.status, detail = ?problem.detail, queue = %name, "taking leases after a request's ends failed; answering the ends alone");
            Ok(Written(LeaseList { leases: Vec::new(), ends: Some(ends) }))
        }
    }
}

/// The leases of `ask` on `queue`: at once when there are tasks, else as soon as some come, or
/// none once the wait is over.
async fn lease(
    state: &AppState,
    queue: &Queue,
    request: &LeaseRequest<Box<RawValue>>,
    ask: &Ask,
) -> Result<Vec<LeaseGrant>, ApiError> {
    let deadline = Instant::now() + ask.wait;
    // Subscribed only once a claim found nothing and there is time to wait: the claim that
    // follows at once finds what was queued before the subscription, the events what comes after
    // it. A pull workers' server whose requests find work then has no subscriber and makes no
    // events (`Events::tail`).
    let mut events = None;
    loop {
        // Due delayed tasks and retries first: where no built-in worker runs, nothing else
        // moves them.
        queue.promote_due().await?;
        let pulled = queue.pull(&request.worker, &ask.kinds, ask.max, ask.lease).await?;
        let now = Instant::now();
        if !pulled.is_empty() || now >= deadline {
            let tasks: Vec<_> = pulled.iter().map(|p| (p.token.task_id, p.token.kind.clone())).collect();
            let announcement = ask.announcement(request);
            if let Err(e) =
                state.workers.seen_pulling(&request.worker, &announcement, queue.name(), &tasks).await
            {
                tracing::warn!(error = %e, worker = %request.worker, "recording a pulling worker in the registry failed");
            }
            return grants(state, queue, pulled).await;
        }
        let Some(events) = &mut events else {
            events = Some(state.events.subscribe());
            continue;
        };
        let look_again = deadline.min(now + RECHECK);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if ask.woken_by(&event.event, queue.name()) => break,
                    Ok(_) => {}
                    // Missed events may have been ours: look now.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(look_again).await;
                        break;
                    }
                },
                () = tokio::time::sleep_until(look_again) => break,
            }
        }
    }
}

/// A lease request, checked.
struct Ask {
    /// As the scripts take them: comma-separated, or `*`.
    kinds: String,
    only: Option<Vec<String>>,
    max: usize,
    wait: Duration,
    lease: Duration,
}

impl Ask {
    /// `request` checked against its bounds (`lease` is the queue's, the longest a lease may be).
    fn of<R>(request: &LeaseRequest<R>, lease: Duration) -> Result<Ask, String> {
        let worker = &request.worker;
        if worker.is_empty() || worker.chars().count() > 128 || worker.chars().any(char::is_control) {
            return Err("worker must be 1 to 128 printable characters".into());
        }
        if let Some(kinds) = &request.kinds {
            if kinds.is_empty() || kinds.len() > 100 {
                return Err("kinds must list 1 to 100 kinds (or be left out for every kind)".into());
            }
            if let Some(bad) = kinds.iter().find(|k| !is_kind_name(k)) {
                return Err(format!("`{bad}` is not a kind name"));
            }
        }
        if request.host.as_ref().is_some_and(|h| h.chars().count() > 255 || h.chars().any(char::is_control)) {
            return Err("host must be at most 255 printable characters".into());
        }
        if request.version.as_ref().is_some_and(|v| v.chars().count() > 64 || v.chars().any(char::is_control))
        {
            return Err("version must be at most 64 printable characters".into());
        }
        let max = request.max.unwrap_or(1);
        if !(1..=MAX_LEASES).contains(&max) {
            return Err(format!("max must be 1 to {MAX_LEASES}"));
        }
        let wait_ms = request.wait_ms.unwrap_or(0);
        if wait_ms > MAX_WAIT.as_millis() as u64 {
            return Err(format!("wait_ms must be 0 to {}", MAX_WAIT.as_millis()));
        }
        let longest = lease.as_millis() as u64;
        let lease_ms = request.lease_ms.unwrap_or(longest);
        if !(MIN_LEASE_MS.min(longest)..=longest).contains(&lease_ms) {
            return Err(format!("lease_ms must be {MIN_LEASE_MS} to {longest} (the server's --lease)"));
        }
        Ok(Ask {
            kinds: request.kinds.as_ref().map_or_else(|| "*".to_string(), |k| k.join(",")),
            only: request.kinds.clone(),
            max: max as usize,
            wait: Duration::from_millis(wait_ms),
            lease: Duration::from_millis(lease_ms),
        })
    }

    /// What the worker asking says about itself, for the worker registry.
    fn announcement<R>(&self, request: &LeaseRequest<R>) -> Announcement {
        Announcement {
            runs: "pull",
            host: request.host.clone(),
            pid: request.pid,
            version: request.version.clone(),
            queues: Vec::new(),
            slots: self.max as u32,
        }
    }

    /// Whether `event` may have brought this request work in queue `queue`.
    fn woken_by(&self, event: &Pushed, queue: &str) -> bool {
        match event {
            Pushed::Task(e) => {
                e.queue == queue
                    && e.status == Status::Queued
                    && self.only.as_ref().is_none_or(|kinds| kinds.contains(&e.kind))
            }
            Pushed::Queue(e) => e.queue == queue,
            Pushed::Kind(_) | Pushed::Workflow(..) => false,
        }
    }
}

/// The grants of `pulled`: each with its task's view and its payload, or where to get it.
async fn grants(state: &AppState, queue: &Queue, pulled: Vec<Pulled>) -> Result<Vec<LeaseGrant>, ApiError> {
    let mut grants = Vec::with_capacity(pulled.len());
    for pulled in pulled {
        let record = pulled.record;
        crate::metrics::task_waited(queue.name(), || pulled.token.waited());
        let json = super::api::is_json(&pulled.payload_type);
        let bytes = match pulled.payload {
            Some(bytes) => Some(bytes.to_vec()),
            None if json && record.payload_bytes <= INLINE_PAYLOAD_MAX => {
                state.tasks.payload(&record).await?
            }
            None => None,
        };
        let payload = bytes
            .filter(|_| json)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|text| RawValue::from_string(text).ok());
        // Signed while access control is on: a worker's token needs `work`, not `read`.
        let payload_url = payload
            .is_none()
            .then(|| super::api::signed(state, &format!("/api/v1/tasks/{}/payload", record.id)));
        grants.push(LeaseGrant {
            token: pulled.token.seal(&state.links),
            traceparent: Some(lease_traceparent(&record)),
            task: record.view(),
            payload,
            payload_url,
            expires_at: rfc3339(pulled.expires_ms),
        });
    }
    Ok(grants)
}

/// The trace context a pulling worker continues for the attempt leased on `record`: a `lease`
/// span's, in the task's trace (or, for a task stored without one, in the lease request's).
fn lease_traceparent(record: &crate::store::TaskRecord) -> String {
    let span = tracing::info_span!(
        "lease",
        otel.kind = "producer",
        task_id = %record.id,
        trace_id = tracing::field::Empty,
        task.kind = %record.kind,
        task.queue = %record.queue,
        task.attempt = record.attempts,
    );
    let parent = record.traceparent.as_deref().and_then(crate::trace_context::parse);
    crate::trace_context::format(&crate::trace_context::start(&span, parent.as_ref()))
}

/// `POST /api/v1/leases/{token}/heartbeat`: renews the lease (storing progress, if given).
#[utoipa::path(
    post,
    path = "/api/v1/leases/{token}/heartbeat",
    operation_id = "heartbeat_lease",
    tag = "pull workers",
    summary = "Renew a lease, optionally reporting progress",
    params(("token" = String, Path, description = "The lease's token")),
    request_body(content = Option<Heartbeat>, content_type = "application/json", description = "Optional: without a `Content-Type`, no body is read"),
    responses(
        (status = 200, description = "Renewed", body = HeartbeatReply),
        (status = 404, description = "No lease has this token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lease was taken over or has ended", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a heartbeat, or progress over 100", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<HeartbeatReply>, ApiError> {
    // No body, or `null`: a renewal that reports nothing.
    let beat: Heartbeat = if headers.contains_key(header::CONTENT_TYPE) {
        control_body::<Option<Heartbeat>>(&state, &headers, body, "invalid-heartbeat")
            .await?
            .unwrap_or_default()
    } else {
        Heartbeat::default()
    };
    if beat.progress.is_some_and(|p| p > 100) {
        return Err(invalid("invalid-heartbeat")("progress must be 0 to 100".into()));
    }
    let (queue, token) = lease_of(&state, &token).await?;
    let cancel_requested = match queue.heartbeat(&token, beat.progress).await? {
        Renewal::Lost => return Err(lost()),
        Renewal::Held => false,
        Renewal::CancelRequested => true,
    };
    // A worker busy with long tasks asks for no leases: its heartbeats keep it in the registry.
    if let Err(e) = seen_holding(&state, &queue, &token).await {
        tracing::warn!(error = %e, "recording a pulling worker in the registry failed");
    }
    Ok(Json(HeartbeatReply { expires_at: rfc3339(queue.renewed_until(&token)), cancel_requested }))
}

/// `POST /api/v1/leases/{token}/complete`: the attempt succeeded; the body (any content type,
/// up to the payload limit) is the result.
#[utoipa::path(
    post,
    path = "/api/v1/leases/{token}/complete",
    operation_id = "complete_lease",
    tag = "pull workers",
    summary = "End a lease's attempt: succeeded, with the result",
    params(("token" = String, Path, description = "The lease's token")),
    request_body(
        description = "The result, with its content type (any)",
        content((Binary = "application/octet-stream"), (serde_json::Value = "application/json"), (String = "text/plain")),
    ),
    responses(
        (status = 204, description = "The task succeeded"),
        (status = 404, description = "No lease has this token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lease was taken over or has ended, or the task was cancelled meanwhile (it ended cancelled)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The result is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn complete(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (queue, token) = lease_of(&state, &token).await?;
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let result = ResultBytes::New(body.bytes.clone());
    end(&state, &queue, &token, Outcome::Succeeded { result, content_type }).await
}

/// `POST /api/v1/leases/{token}/fail`: the attempt failed; retried while attempts are left and
/// the failure is retryable, else a dead letter.
#[utoipa::path(
    post,
    path = "/api/v1/leases/{token}/fail",
    operation_id = "fail_lease",
    tag = "pull workers",
    summary = "End a lease's attempt: failed",
    params(("token" = String, Path, description = "The lease's token")),
    request_body(content = LeaseFailure, content_type = "application/json"),
    responses(
        (status = 204, description = "Retried, or a dead letter"),
        (status = 404, description = "No lease has this token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lease was taken over or has ended, or the task was cancelled meanwhile (it ended cancelled)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a failure report", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn fail(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let failure: LeaseFailure = control_body(&state, &headers, body, "invalid-failure").await?;
    let (queue, token) = lease_of(&state, &token).await?;
    let outcome = failed(&state, &queue, &token, failure).await?;
    end(&state, &queue, &token, outcome).await
}

/// The outcome of a failed attempt on `token`: a retry while attempts are left and the failure
/// is retryable (after the kind's backoff, or the worker's `retry_after_ms`), else a dead letter.
async fn failed(
    state: &AppState,
    queue: &Queue,
    token: &PullToken,
    failure: LeaseFailure,
) -> Result<Outcome, ApiError> {
    let record = queue.store().get(&token.task_id).await?.ok_or_else(lost)?;
    let mut message = failure.error;
    if message.len() > ERROR_MAX {
        let cut = (0..=ERROR_MAX).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
    }
    let error = match (failure.retryable, failure.retry_after_ms) {
        (true, Some(ms)) => HandlerError::retryable_after(message, Duration::from_millis(ms)),
        (true, None) => HandlerError::retryable(message),
        (false, _) => HandlerError::fatal(message),
    };
    let retry =
        state.tasks.registry().get(&record.kind).and_then(|h| h.retry_policy()).unwrap_or(state.retry);
    Ok(failure_outcome(error, record.attempts, record.max_attempts, retry, false))
}

/// `POST /api/v1/leases/ends`: ends many leases' attempts in one request, each on its own (one
/// lost lease does not stop the others); the answer has a reply per end, in order. The ends that
/// arrive together reach Redis together (one script call), as single ends from many requests do.
#[utoipa::path(
    post,
    path = "/api/v1/leases/ends",
    operation_id = "end_leases",
    tag = "pull workers",
    summary = "End many leases' attempts at once: each succeeded with a JSON result, or failed",
    request_body(content = LeaseEnds, content_type = "application/json"),
    responses(
        (status = 200, description = "Each end's own answer, in the order sent", body = LeaseEndsReply),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a list of 1 to 100 ends, each token once, each with a result or a failure (nothing was ended)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn end_many(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LeaseEndsReply>, ApiError> {
    let refused = invalid("invalid-lease-ends");
    let request: LeaseEnds<Box<RawValue>> = with_ends(&state, &headers, body, refused.clone()).await?;
    check_ends(&request.ends, 1).map_err(&refused)?;
    Ok(Json(LeaseEndsReply { ends: end_all(&state, &access, request.ends).await }))
}

/// A body that may carry ends (up to `--max-payload`, results included), parsed into `T`; its
/// bytes are let go once parsed. Past `PARSE_INLINE_MAX` it is parsed off the runtime.
async fn with_ends<T: DeserializeOwned + Send + 'static>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    refused: impl Fn(String) -> ApiError + Send + 'static,
) -> Result<T, ApiError> {
    let body = read_body(body, headers, state.max_payload, &state.body_budget).await?;
    super::off_runtime(body.bytes.clone(), move |bytes| {
        super::refuse_array(bytes).map_err(&refused)?;
        serde_json::from_slice(bytes).map_err(|e| refused(format!("the body does not fit: {e}")))
    })
    .await
}

/// Refuses a list of ends that is not `fewest` to 100 long, each token once, none with both a
/// result and a failure; nothing is ended then.
fn check_ends(ends: &[LeaseEnd<Box<RawValue>>], fewest: usize) -> Result<(), String> {
    if !(fewest..=MAX_LEASES as usize).contains(&ends.len()) {
        return Err(format!("ends must list {fewest} to {MAX_LEASES} ends"));
    }
    let mut tokens = std::collections::HashSet::with_capacity(ends.len());
    if let Some(twice) = ends.iter().position(|end| !tokens.insert(end.token.as_str())) {
        return Err(format!("ends[{twice}] names a token an earlier end named"));
    }
    if let Some(both) = ends.iter().position(|end| end.result.is_some() && end.failed.is_some()) {
        return Err(format!("ends[{both}] has both a result and a failure"));
    }
    Ok(())
}

/// Applies `ends`, each on its own; a reply per end, in order. The ends reach Redis together
/// (one transaction or script call), as single ends from many requests do.
async fn end_all(
    state: &AppState,
    access: &Access,
    ends: Vec<LeaseEnd<Box<RawValue>>>,
) -> Vec<LeaseEndReply> {
    futures::future::join_all(ends.into_iter().map(|end| end_one(state, access, end))).await
}

/// One end of `POST /api/v1/leases/ends`, answered as its own request would have been.
async fn end_one(state: &AppState, access: &Access, request: LeaseEnd<Box<RawValue>>) -> LeaseEndReply {
    let LeaseEnd { token: text, result, failed: failure } = request;
    let ended = async {
        let (queue, token) = lease_of(state, &text).await?;
        if !access.reaches(&token.queue) {
            return Err(ApiError::not_found("no lease has this token"));
        }
        let outcome = match failure {
            Some(failure) => failed(state, &queue, &token, failure).await?,
            None => Outcome::Succeeded {
                // The result's own text, as the body had it (no copy of it made here).
                result: ResultBytes::New(match result {
                    Some(result) => Bytes::from(Box::<str>::from(result).into_boxed_bytes()),
                    None => Bytes::from_static(b"null"),
                }),
                content_type: "application/json".to_string(),
            },
        };
        end(state, &queue, &token, outcome).await
    };
    match ended.await {
        Ok(status) => LeaseEndReply { token: text, status: status.as_u16(), problem: None },
        Err(e) => LeaseEndReply { token: text, status: e.status().as_u16(), problem: Some(e.problem()) },
    }
}

/// `POST /api/v1/leases/{token}/release`: hands the task back unfinished (a worker shutting
/// down); the attempt does not count.
#[utoipa::path(
    post,
    path = "/api/v1/leases/{token}/release",
    operation_id = "release_lease",
    tag = "pull workers",
    summary = "Hand a lease's task back unfinished",
    params(("token" = String, Path, description = "The lease's token")),
    responses(
        (status = 204, description = "Handed back"),
        (status = 404, description = "No lease has this token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lease was taken over or has ended", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn release(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (queue, token) = lease_of(&state, &token).await?;
    let worker = queue.pulled_worker(&token).await?;
    match queue.release_pulled(&token).await? {
        true => {
            ended_in_registry(&state, worker.as_deref(), &token);
            Ok(StatusCode::NO_CONTENT)
        }
        false => Err(lost()),
    }
}

/// Renews, in the worker registry, the worker that holds `token`.
async fn seen_holding(state: &AppState, queue: &Queue, token: &PullToken) -> redis::RedisResult<()> {
    match queue.pulled_worker(token).await? {
        Some(worker) if !worker.is_empty() => state.workers.pulled_running(&worker).await,
        _ => Ok(()),
    }
}

/// Takes the task of `token` off the running tasks of `worker` in the registry (a moment later).
fn ended_in_registry(state: &AppState, worker: Option<&str>, token: &PullToken) {
    let Some(worker) = worker.filter(|w| !w.is_empty()) else { return };
    state.workers.pulled_ended(worker, token.task_id);
}

/// Ends the lease's attempt with `outcome` — or, when its task was cancelled meanwhile, as
/// cancelled, answering `409` so the worker knows its outcome was not taken. Counted once the
/// store took it; the worker's entry in the registry forgets the task a moment after.
async fn end(
    app: &AppState,
    queue: &Queue,
    token: &PullToken,
    outcome: Outcome,
) -> Result<StatusCode, ApiError> {
    let ended = queue.end_pulled(token, outcome.clone()).await?;
    let recorded = match ended.applied {
        Applied::Lost => return Err(lost()),
        Applied::AsReported => outcome,
        Applied::Cancelled => Outcome::Cancelled,
    };
    ended_in_registry(app, Some(&ended.worker), token);
    crate::metrics::attempt_ended(queue.name(), &token.kind, &recorded);
    match ended.applied {
        Applied::Cancelled => Err(ApiError::new(StatusCode::CONFLICT, "cancelled", "Task cancelled")
            .detail("the task was cancelled while it ran; it ended cancelled")),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// The queue and lease a token names (no lookup: the token says where its lease is, and its
/// seal that it says so as Courier wrote it).
async fn lease_of(state: &AppState, token: &str) -> Result<(Queue, PullToken), ApiError> {
    let token = PullToken::open(token, &state.links)
        .await
        .ok_or_else(|| ApiError::not_found("no lease has this token"))?;
    Ok((state.tasks.queues().handle(&token.queue), token))
}

/// The answer for a lease that was taken over or has ended.
fn lost() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "lease-lost", "Lease lost")
        .detail("this lease was taken over or has ended; nothing was changed")
}

/// A `422` of type `slug` with the detail it is given.
fn invalid(slug: &'static str) -> impl Fn(String) -> ApiError + Clone + Send + 'static {
    move |detail| ApiError::unprocessable(slug, "Invalid request", detail)
}

/// A small JSON body (`CONTROL_BODY_MAX` at most), parsed into `T`.
async fn control_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    slug: &'static str,
) -> Result<T, ApiError> {
    let body = read_body(body, headers, CONTROL_BODY_MAX, &state.body_budget).await?;
    super::refuse_array(&body.bytes).map_err(invalid(slug))?;
    serde_json::from_slice(&body.bytes).map_err(|e| invalid(slug)(format!("the body does not fit: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> LeaseRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn lease_requests_are_held_to_their_bounds() {
        let lease = Duration::from_secs(30);
        let ask = Ask::of(&request(serde_json::json!({"worker": "w"})), lease).unwrap();
        assert_eq!((ask.kinds.as_str(), ask.max, ask.wait, ask.lease), ("*", 1, Duration::ZERO, lease));
        let ask = Ask::of(
            &request(serde_json::json!({"worker": "w", "kinds": ["a", "b.c"], "max": 100, "wait_ms": 30000, "lease_ms": 3000})),
            lease,
        )
        .unwrap();
        assert_eq!((ask.kinds.as_str(), ask.max, ask.lease), ("a,b.c", 100, Duration::from_secs(3)));
        for bad in [
            serde_json::json!({"worker": ""}),
            serde_json::json!({"worker": "w\n"}),
            serde_json::json!({"worker": "w", "kinds": []}),
            serde_json::json!({"worker": "w", "kinds": ["Bad"]}),
            serde_json::json!({"worker": "w", "max": 0}),
            serde_json::json!({"worker": "w", "max": 101}),
            serde_json::json!({"worker": "w", "wait_ms": 30001}),
            serde_json::json!({"worker": "w", "lease_ms": 999}),
            serde_json::json!({"worker": "w", "lease_ms": 30001}),
        ] {
            assert!(Ask::of(&request(bad.clone()), lease).is_err(), "{bad}");
        }
    }
}
