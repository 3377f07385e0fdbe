//! The REST API over tasks: submit, status monitor, result, record, list, cancel.

use super::{
    ApiError, AppState, Json, Written,
    auth::no_such_queue,
    check_range, invalid_parameter, off_runtime,
    openapi::{Binary, QueueName},
    parse_id, parse_json, query_time, read_body,
};
use crate::{
    auth::Access,
    store::{TaskRecord, rfc3339},
    tasks::{BatchError, Cancelled, ListQuery, Options, Payload, Submission, Submitted},
};
use app::model::{BatchAccepted, Priority, Problem, Status, SubmitBatch, SubmitRequest, TaskPage, TaskView};
use axum::{
    Extension,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The query parameters of a signed link (`result_url`, the status monitor's `303`, a lease's
/// `payload_url`): with them a `GET` needs no token while the link is valid.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query string; `auth::signed_link` reads it
struct SignedLink {
    /// When the link stops working, in seconds since the epoch.
    expires: Option<u64>,
    /// The id of the key that signed it.
    kid: Option<String>,
    /// The signature (base64url).
    sig: Option<String>,
}

/// The default and largest page of `GET /api/v1/tasks`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// `POST /api/v1/tasks`: a JSON `SubmitRequest`, or a raw body with `?kind=` and options.
///
/// A JSON body carries the options itself and takes no query parameter; any other body is the
/// payload as it is, with the kind and options in the query string.
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    summary = "Submit a task",
    params(
        ("kind" = Option<String>, Query, description = "The kind of a raw submission (any body but JSON); its presence makes the body the raw payload"),
        ("queue" = inline(Option<QueueName>), Query, description = "Raw submissions: the queue to run in"),
        ("delay_ms" = Option<u64>, Query, maximum = 2_592_000_000_u64, description = "Raw submissions: run no sooner than this many ms from now"),
        ("priority" = Option<Priority>, Query, description = "Raw submissions: `high`, `normal` or `low`"),
        ("max_attempts" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Raw submissions: attempts before it becomes a dead letter (1 to 100)"),
        ("timeout_ms" = Option<u64>, Query, minimum = 1, maximum = 86_400_000_u64, description = "Raw submissions: how long one attempt may run"),
        ("session" = Option<String>, Query, min_length = 1, max_length = 200, description = "Raw submissions: tasks of one session run one at a time, in order"),
        ("ttl_ms" = Option<u64>, Query, minimum = 1, maximum = 31_536_000_000_u64, description = "Raw submissions: expire if no attempt has started this many ms after submission"),
        ("expires_at" = Option<String>, Query, description = "Raw submissions: the same as an RFC 3339 time"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,253}[!-~])?$", description = "The same key again returns the same task and enqueues nothing (1 to 255 visible ASCII characters)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 60): wait up to N s for the task to end and answer with its result"),
    ),
    request_body(
        description = "A JSON `SubmitRequest`, or the raw payload (with `?kind=`)",
        content(
            (SubmitRequest = "application/json"),
            (Binary = "application/octet-stream"),
            (String = "text/plain"),
            (String = "text/csv"),
        ),
    ),
    responses(
        (status = 200, description = "`Prefer: wait=N` and the task ended in time: its result, with `Preference-Applied`", content((serde_json::Value = "application/json"), (Binary = "*/*"))),
        (status = 202, description = "Accepted: the task, `Location` of its status monitor, `Retry-After`", body = TaskView,
            headers(("Location" = String, description = "The status monitor"), ("Retry-After" = u64, description = "Seconds before polling the status"))),
        (status = 400, description = "Malformed JSON, a bad header, or query options beside a JSON body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The queue is outside the token's reach", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON, and no `?kind=`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, a payload its schema refuses, a bad option, or an idempotency key reused with another body; or (`Prefer: wait`) the task failed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full, or the token past `--rate-limit`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let submission = match query.get("kind") {
        Some(kind) => {
            let options = options_from_query(&query)?;
            let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
            let content_type =
                if content_type.is_empty() { "application/octet-stream".to_string() } else { content_type };
            Submission {
                kind: kind.clone(),
                payload: Payload::Raw { bytes: body.bytes.clone(), content_type },
                options,
                idempotency_key: None,
            }
        }
        None if is_json(&content_type) => {
            if let Some(name) = query.keys().next() {
                return Err(ApiError::bad_request(format!(
                    "unexpected query parameter `{name}`: options of a JSON submission go in its body"
                )));
            }
            let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
            off_runtime(body.bytes.clone(), |bytes| Ok(json_submission(bytes, parse_json(bytes)?))).await?
        }
        None => {
            return Err(unsupported_media_type(
                "send a JSON body (Content-Type: application/json), or any body with ?kind=…",
            ));
        }
    };
    let submission = Submission { idempotency_key: idempotency_key(&headers)?, ..submission };
    check_reach(&state, &access, std::slice::from_ref(&submission))?;
    spend(&state, &access, 1).await?;
    // A waiting request holds its connection and a subscription: past --max-waiting the
    // preference is not applied (RFC 7240 lets a server ignore one) and the usual 202 answers
    // at once. The task is accepted either way; a 503 would invite a second submission.
    let wait = prefer_wait(&headers)
        .and_then(|seconds| Some((seconds, state.waiting.clone().try_acquire_owned().ok()?)));
    // Request-reply: listen before enqueueing, so the reply cannot slip past.
    let replies = wait.as_ref().map(|_| state.events.subscribe());
    let Submitted { record, replayed } = state.tasks.submit(submission).await?;
    if let (Some((seconds, _permit)), Some(replies)) = (wait, replies)
        && let Some(reply) = wait_for_reply(&state, record.clone(), seconds, replies).await?
    {
        return Ok(reply);
    }
    let mut response = (StatusCode::ACCEPTED, Written(record.view())).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header_value(&format!("/api/v1/tasks/{}/status", record.id)));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after(&state).await));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The most tasks one batch may hold.
const MAX_BATCH: usize = 1000;

/// `POST /api/v1/tasks/batch`: `{"tasks": [SubmitRequest…]}`, each validated as `POST
/// /api/v1/tasks` would, then all enqueued together (one MULTI), or on any error none. `202` with
/// the tasks' views in the order submitted.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/batch",
    operation_id = "submit_batch",
    tag = "tasks",
    summary = "Submit up to 1,000 tasks at once, all or none",
    request_body(content = SubmitBatch, content_type = "application/json"),
    responses(
        (status = 202, description = "Every task accepted: their views, in order", body = BatchAccepted,
            headers(("Retry-After" = u64, description = "Seconds before polling a status"))),
        (status = 400, description = "Malformed JSON, or an `Idempotency-Key` (single submissions only)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A queue is outside the token's reach", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No task or over 1,000, or one refused (the detail names it: `tasks[2]: …`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A queue is full, or the token past `--rate-limit`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_json(&headers, "the batch")?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::bad_request(
            "Idempotency-Key applies to single submissions: send the task to POST /api/v1/tasks",
        ));
    }
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    let submissions = off_runtime(body.bytes.clone(), |bytes| {
        // Counted before any task is parsed: a body of a million tiny tasks costs no more than
        // a pointer each before it is refused.
        let batch: RawBatch<'_> = parse_json(bytes)?;
        if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
            return Err(ApiError::unprocessable(
                "invalid-request",
                "Invalid request",
                format!("a batch holds 1 to {MAX_BATCH} tasks, not {}", batch.tasks.len()),
            ));
        }
        let mut submissions = Vec::with_capacity(batch.tasks.len());
        for (index, task) in batch.tasks.into_iter().enumerate() {
            let request: SubmitRequest<&RawValue> = parse_json(task.get().as_bytes()).map_err(|problem| {
                let detail = format!("tasks[{index}]: {}", problem.detail_text());
                problem.detail(detail)
            })?;
            submissions.push(json_submission(bytes, request));
        }
        Ok(submissions)
    })
    .await?;
    check_reach(&state, &access, &submissions)?;
    spend(&state, &access, submissions.len() as u64).await?;

    let records = state.tasks.submit_many(submissions).await.map_err(|e| match e {
        BatchError::Rejected { index, error } => {
            let problem = ApiError::from(error);
            let detail = format!("tasks[{index}]: {}", problem.detail_text());
            problem.detail(detail)
        }
        BatchError::Refused(error) => error.into(),
        BatchError::Redis(e) => e.into(),
    })?;
    let accepted = BatchAccepted { tasks: records.iter().map(TaskRecord::view).collect() };
    let mut response = (StatusCode::ACCEPTED, Written(accepted)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after(&state).await));
    Ok(response)
}

/// Refuses submissions to a queue the token does not reach, as if the queue did not exist.
fn check_reach(state: &AppState, access: &Access, submissions: &[Submission]) -> Result<(), ApiError> {
    if access.within().is_none() {
        return Ok(());
    }
    for submission in submissions {
        if let Some(queue) = state.tasks.queue_for(&submission.kind, submission.options.queue.as_deref())
            && !access.reaches(&queue)
        {
            return Err(no_such_queue(&queue));
        }
    }
    Ok(())
}

/// Counts `tasks` against the token's submission rate (`--rate-limit`): past it, `429`.
pub(super) async fn spend(state: &AppState, access: &Access, tasks: u64) -> Result<(), ApiError> {
    match state.tokens.spend(access, tasks).await? {
        None => Ok(()),
        Some(seconds) => Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Rate limited")
            .detail("this token submits more tasks per second than --rate-limit allows; retry shortly")
            .retry_after(seconds)),
    }
}

/// The body of `POST /api/v1/tasks/batch` (`app::model::SubmitBatch`), each task still raw JSON.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    #[serde(borrow)]
    tasks: Vec<&'a RawValue>,
}

/// A JSON submission read from `body`; its payload stays the JSON text it was sent as, a slice
/// of the body rather than a copy.
fn json_submission(body: &Bytes, request: SubmitRequest<&RawValue>) -> Submission {
    let options = Options {
        delay_ms: request.delay_ms,
        priority: request.priority,
        max_attempts: request.max_attempts,
        timeout_ms: request.timeout_ms,
        session: request.session,
        ttl_ms: request.ttl_ms,
        expires_at: request.expires_at,
        subscription: None,
        queue: request.queue,
    };
    let payload = Payload::Json(body.slice_ref(request.payload.get().as_bytes()));
    Submission { kind: request.kind, payload, options, idempotency_key: None }
}

/// `415` unless the body is JSON: `what` is what the client should send as JSON.
pub(super) fn require_json(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match is_json(content_type) {
        true => Ok(()),
        false => {
            Err(unsupported_media_type(&format!("send {what} as JSON (Content-Type: application/json)")))
        }
    }
}

pub(super) fn unsupported_media_type(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
        .detail(detail)
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255);
    let key = key
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters"))?;
    Ok(Some(key.to_string()))
}

/// The longest a request may wait for its reply (`Prefer: wait=N`).
const MAX_WAIT_S: u64 = 60;

/// `Prefer: wait=N` (RFC 7240), capped at a minute; other preferences are ignored.
pub(super) fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| pref.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .map(|n| n.min(MAX_WAIT_S))
}

/// Waits up to `seconds` for the task to end; its answer then, or `None` to answer `202`.
async fn wait_for_reply(
    state: &AppState,
    record: TaskRecord,
    seconds: u64,
    mut replies: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::events::StoredEvent>>,
) -> Result<Option<Response>, ApiError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut ended = record.status.is_terminal();
    while !ended {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(event)) => {
                ended = event.task().is_some_and(|t| t.task_id == record.id && t.status.is_terminal())
            }
            // Fell behind a burst of events: ask the record instead.
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                ended = state.tasks.get(&record.id).await?.is_some_and(|r| r.status.is_terminal());
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(None),
        }
    }
    let record =
        state.tasks.get(&record.id).await?.ok_or_else(|| ApiError::not_found("the task has expired"))?;
    let mut response =
        result_of(state, record.clone(), Asked::Bytes).await.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    headers.insert("preference-applied", header_value(&format!("wait={seconds}")));
    headers.insert(header::CONTENT_LOCATION, header_value(&format!("/api/v1/tasks/{}", record.id)));
    Ok(Some(response))
}

fn options_from_query(query: &HashMap<String, String>) -> Result<Options, ApiError> {
    fn number<T: std::str::FromStr>(
        query: &HashMap<String, String>,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        query
            .get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::unprocessable(
                        "invalid-option",
                        "Invalid task option",
                        format!("`{name}` must be a whole number"),
                    )
                })
            })
            .transpose()
    }
    for name in query.keys() {
        if !matches!(
            name.as_str(),
            "kind"
                | "delay_ms"
                | "priority"
                | "max_attempts"
                | "timeout_ms"
                | "session"
                | "ttl_ms"
                | "expires_at"
                | "queue"
        ) {
            return Err(ApiError::bad_request(format!("unknown query parameter `{name}`")));
        }
    }
    let priority = match query.get("priority").map(String::as_str) {
        None => None,
        Some("high") => Some(Priority::High),
        Some("normal") => Some(Priority::Normal),
        Some("low") => Some(Priority::Low),
        Some(other) => {
            return Err(ApiError::unprocessable(
                "invalid-option",
                "Invalid task option",
                format!("priority `{other}` is not one of high, normal, low"),
            ));
        }
    };
    Ok(Options {
        delay_ms: number(query, "delay_ms")?,
        priority,
        max_attempts: number(query, "max_attempts")?,
        timeout_ms: number(query, "timeout_ms")?,
        session: query.get("session").cloned(),
        ttl_ms: number(query, "ttl_ms")?,
        expires_at: query.get("expires_at").cloned(),
        subscription: None,
        queue: query.get("queue").cloned(),
    })
}

pub(super) fn is_json(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("paths built from UUIDs are valid header values")
}

/// Seconds a client should wait before polling the status monitor: the tasks waiting ahead,
/// over how fast tasks have finished lately (at least 1).
async fn retry_after(state: &AppState) -> u64 {
    // An estimate is no reason to fail a request: with Redis away, fall back to 1.
    let depth = state.tasks.depth_cached().await.unwrap_or(0);
    estimate_wait_s(depth, state.events.throughput())
}

/// `depth` tasks ahead at `per_second` finished per second, in whole seconds within [1, 3600].
fn estimate_wait_s(depth: u64, per_second: f64) -> u64 {
    let seconds = if per_second > 0.0 {
        (depth as f64 / per_second).ceil() as u64
    } else {
        // Nothing finished lately: no rate to go by, so stay modest.
        1 + depth / 100
    };
    seconds.clamp(1, 3600)
}

async fn find(state: &AppState, id: &str) -> Result<TaskRecord, ApiError> {
    let id = parse_id(id)?;
    state
        .tasks
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("no task with this id (it never existed or has expired)"))
}

/// `GET /api/v1/tasks/{id}`: the task's view.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    summary = "A task",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task (or it is past its retention)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Written<TaskView>, ApiError> {
    Ok(Written(present(&state, &find(&state, &id).await?)))
}

/// `GET /api/v1/tasks/{id}/attempts`: the task's attempts, first first, each with its worker,
/// start, end, outcome and error.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/attempts",
    operation_id = "list_attempts",
    tag = "tasks",
    summary = "A task's attempts: worker, start, end, outcome and error of each",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Its attempts, first first (a running one has no end)", body = app::model::AttemptList),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<app::model::AttemptList>, ApiError> {
    let id = parse_id(&id)?;
    let attempts = state
        .tasks
        .attempts(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("no task with this id (it never existed or has expired)"))?;
    Ok(Json(app::model::AttemptList { attempts }))
}

/// A task's view as this caller gets it: with access control on, its `result_url` is a signed
/// link, which can be handed to a browser or another service that has no token.
fn present(state: &AppState, record: &TaskRecord) -> TaskView {
    let mut view = record.view();
    if view.result_url.is_some() {
        view.result_url = Some(result_link(state, record.id));
    }
    view
}

/// The URL of task `id`'s result: signed while access control is on, plain when it is off.
fn result_link(state: &AppState, id: uuid::Uuid) -> String {
    signed(state, &format!("/api/v1/tasks/{id}/result"))
}

/// `path` as a link that works without a token (for `GET`) while access control is on.
pub(super) fn signed(state: &AppState, path: &str) -> String {
    if state.tokens.enabled() {
        format!("{path}?{}", state.links.sign("GET", path))
    } else {
        path.to_string()
    }
}

/// The status monitor's body while a task is pending, or once it failed or was cancelled.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TaskStatus)]
struct StatusBody {
    id: uuid::Uuid,
    status: Status,
    progress: Option<u8>,
    attempts: u32,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<app::model::Problem>,
}

/// `GET /api/v1/tasks/{id}/status`: the status monitor of async request-reply.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/status",
    operation_id = "get_task_status",
    tag = "tasks",
    summary = "The status monitor",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Pending (with `Retry-After`), or failed or cancelled (with the `error` problem)", body = StatusBody,
            headers(("Expires" = String, description = "When the task's retention ends"), ("Retry-After" = u64, description = "While pending: seconds before polling again"))),
        (status = 303, description = "Succeeded: `Location` is the result",
            headers(("Location" = String, description = "The result (a signed link while access control is on)"), ("Expires" = String, description = "When the task's retention ends"))),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let record = find(&state, &id).await?;
    let expires =
        rfc1123(record.finished_ms.unwrap_or(record.created_ms) + state.retention.as_millis() as u64);
    let mut response = if record.status == Status::Succeeded {
        let location = result_link(&state, record.id);
        (StatusCode::SEE_OTHER, [(header::LOCATION, header_value(&location))]).into_response()
    } else {
        let error = match record.status {
            Status::Failed => Some(failure_problem(&record)),
            Status::Cancelled => Some(app::model::Problem {
                kind: "/problems/cancelled".into(),
                title: "Task cancelled".into(),
                status: 409,
                detail: Some("the task was cancelled before it finished".into()),
                errors: Vec::new(),
            }),
            _ => None,
        };
        let body = StatusBody {
            id: record.id,
            status: record.status,
            progress: record.progress,
            attempts: record.attempts,
            created_at: rfc3339(record.created_ms),
            updated_at: rfc3339(record.updated_ms),
            error,
        };
        let mut response = Json(body).into_response();
        if !record.status.is_terminal() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after(&state).await));
        }
        response
    };
    response.headers_mut().insert(header::EXPIRES, header_value(&expires));
    Ok(response)
}

fn failure_problem(record: &TaskRecord) -> app::model::Problem {
    app::model::Problem {
        kind: "/problems/task-failed".into(),
        title: "Task failed".into(),
        status: 422,
        detail: record.error.clone(),
        errors: Vec::new(),
    }
}

/// `GET /api/v1/tasks/{id}/result`: the result bytes with their content type.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/result",
    operation_id = "get_task_result",
    tag = "tasks",
    summary = "A task's result",
    params(("id" = Uuid, Path, description = "The task's id"), SignedLink),
    responses(
        (status = 200, description = "The result's bytes, with their content type", content((serde_json::Value = "application/json"), (Binary = "*/*"))),
        (status = 404, description = "No such task, or its result has expired", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not finished yet, or cancelled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The task failed: its error", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn result(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = find(&state, &id).await?;
    result_of(&state, record, Asked::by(&method)).await
}

/// `GET /api/v1/tasks/{id}/payload`: the payload as submitted, with its content type (how a
/// pulling worker reads one too large or not JSON to come with its lease).
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/payload",
    operation_id = "get_task_payload",
    tag = "tasks",
    summary = "A task's payload",
    params(("id" = Uuid, Path, description = "The task's id"), SignedLink),
    responses(
        (status = 200, description = "The payload as submitted, with its content type", content((serde_json::Value = "application/json"), (Binary = "*/*"))),
        (status = 404, description = "No such task, or its payload has expired (a succeeded task's after `--payload-retention`)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn payload(
    State(state): State<AppState>,
    method: Method,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = find(&state, &id).await?;
    let served = match Asked::by(&method) {
        Asked::Size => state.tasks.payload_size(&record).await?.map(Served::Size),
        Asked::Bytes => state.tasks.payload(&record).await?.map(Served::Bytes),
    };
    let served = served.ok_or_else(|| {
        ApiError::not_found(match record.status {
            Status::Succeeded => {
                "the payload is no longer kept: a succeeded task keeps it for --payload-retention"
            }
            _ => "the payload has expired",
        })
    })?;
    Ok(untrusted_bytes(&record.payload_type, served))
}

/// What a request for a task's payload or result asks for: the bytes (`GET`), or only their
/// size (`HEAD`, measured in Redis, so that a `HEAD` of a large one reads nothing).
#[derive(Clone, Copy)]
enum Asked {
    Bytes,
    Size,
}

impl Asked {
    fn by(method: &Method) -> Asked {
        if method == Method::HEAD { Asked::Size } else { Asked::Bytes }
    }
}

/// The answer to an [`Asked`].
enum Served {
    Bytes(Vec<u8>),
    Size(u64),
}

/// Bytes a client sent, served so that a browser never runs them in Courier's origin.
fn untrusted_bytes(content_type: &str, served: Served) -> Response {
    let disposition = if renders_harmlessly(content_type) { "inline" } else { "attachment" };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
        ),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static(disposition)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'")),
    ];
    // (`nosniff` comes with every answer, from the router's layer.)
    match served {
        Served::Bytes(bytes) => (headers, bytes).into_response(),
        Served::Size(size) => (headers, [(header::CONTENT_LENGTH, HeaderValue::from(size))]).into_response(),
    }
}

/// The answer about a task's result: the bytes once succeeded, else the problem saying why not.
async fn result_of(state: &AppState, record: TaskRecord, asked: Asked) -> Result<Response, ApiError> {
    match record.status {
        Status::Succeeded => {
            let served = match asked {
                Asked::Size => state
                    .tasks
                    .result_size(&record)
                    .await?
                    .map(|(size, content_type)| (content_type, Served::Size(size))),
                Asked::Bytes => state
                    .tasks
                    .result(&record)
                    .await?
                    .map(|stored| (stored.content_type, Served::Bytes(stored.bytes))),
            };
            let (content_type, served) =
                served.ok_or_else(|| ApiError::not_found("the result has expired"))?;
            Ok(untrusted_bytes(&content_type, served))
        }
        Status::Failed => {
            Err(ApiError::unprocessable("task-failed", "Task failed", record.error.unwrap_or_default()))
        }
        Status::Cancelled => Err(ApiError::new(StatusCode::CONFLICT, "cancelled", "Task cancelled")
            .detail("the task was cancelled before it finished")),
        status => Err(ApiError::new(StatusCode::CONFLICT, "not-finished", "Task not finished")
            .detail(format!("the task is {status}; poll its status"))),
    }
}

/// Whether a browser shows a result of `content_type` without running anything in it: plain
/// text, JSON, CSV, raster images, audio and video. Anything else (HTML, SVG, XML, JavaScript,
/// types it does not know) is served as an attachment, downloaded rather than rendered.
fn renders_harmlessly(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/').unwrap_or((&essence, ""));
    match kind {
        "text" => matches!(subtype, "plain" | "csv"),
        "application" => subtype == "json" || subtype.ends_with("+json") || subtype == "octet-stream",
        "image" => matches!(subtype, "png" | "jpeg" | "gif" | "webp" | "avif"),
        "audio" | "video" => true,
        _ => false,
    }
}

/// `DELETE /api/v1/tasks/{id}`: cancel.
#[utoipa::path(
    delete,
    path = "/api/v1/tasks/{id}",
    operation_id = "cancel_task",
    tag = "tasks",
    summary = "Cancel a task",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Cancelled at once (it was waiting)", body = TaskView),
        (status = 202, description = "Running: its handler is told to stop", body = TaskView),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let cancelled = state.tasks.cancel(&id).await?;
    state.audit.record(access.name(), "task.cancel", &id.to_string()).await;
    let record = state.tasks.get(&id).await?.ok_or_else(|| ApiError::not_found("the task has expired"))?;
    let status = match cancelled {
        Cancelled::Now => StatusCode::OK,
        Cancelled::Requested => StatusCode::ACCEPTED,
    };
    Ok((status, Written(record.view())).into_response())
}

/// `DELETE /api/v1/tasks/{id}/status`: cancel, on the status monitor (as `DELETE
/// /api/v1/tasks/{id}`).
#[utoipa::path(
    delete,
    path = "/api/v1/tasks/{id}/status",
    operation_id = "cancel_task_on_status_monitor",
    tag = "tasks",
    summary = "Cancel a task (on its status monitor)",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Cancelled at once (it was waiting)", body = TaskView),
        (status = 202, description = "Running: its handler is told to stop", body = TaskView),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel_on_status_monitor(
    state: State<AppState>,
    access: Extension<Access>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    cancel(state, access, id).await
}

/// `GET /api/v1/tasks?id=&status=&kind=&queue=&created_after=&created_before=&limit=&cursor=`:
/// newest first. `id` is a whole task id or the beginning of one; the times are RFC 3339,
/// `created_after` inclusive and `created_before` exclusive.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    summary = "List tasks, newest first",
    params(
        ("id" = Option<String>, Query, description = "A whole task id, or the beginning of one (hex digits and dashes)"),
        ("status" = Option<Status>, Query, description = "Only tasks in this status"),
        ("kind" = Option<String>, Query, description = "Only tasks of this kind"),
        ("queue" = inline(Option<QueueName>), Query, description = "Only tasks of this queue"),
        ("created_after" = Option<String>, Query, format = DateTime, description = "Only tasks created at or after this time (RFC 3339)"),
        ("created_before" = Option<String>, Query, format = DateTime, description = "Only tasks created before this time (RFC 3339)"),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 500, description = "Tasks per page (default 50)"),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of tasks; a filtered page may be short, even empty, with a `next_cursor`", body = TaskPage),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad id, status, queue name, time, limit or cursor (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<TaskPage>, ApiError> {
    let invalid = |detail: String| ApiError::unprocessable("invalid-query", "Invalid query", detail);
    let within = access.within().cloned();
    let mut list = ListQuery { limit: DEFAULT_PAGE, within, ..ListQuery::default() };
    for (name, value) in &query {
        match name.as_str() {
            "status" => {
                list.status =
                    Some(Status::parse(value).ok_or_else(|| invalid(format!("`{value}` is not a status")))?)
            }
            "kind" => list.kind = Some(value.clone()),
            "id" => list.id = Some(id_or_prefix(value)?),
            "created_after" => list.created_from_ms = Some(query_time(name, value)?),
            "created_before" => list.created_before_ms = Some(query_time(name, value)?),
            "queue" if app::model::is_queue_name(value) => list.queue = Some(value.clone()),
            "queue" => return Err(invalid(format!("`{value}` is not a queue name"))),
            "limit" => list.limit = super::page_limit(value, MAX_PAGE)?,
            "cursor" => {
                list.cursor = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("`{value}` is not a cursor from a previous page")))?,
                )
            }
            other => {
                return Err(ApiError::bad_request(format!("unknown query parameter `{other}`")));
            }
        }
    }
    check_range(("created_after", list.created_from_ms), ("created_before", list.created_before_ms))?;
    let (records, next) = state.tasks.list(&list).await?;
    Ok(Json(TaskPage {
        tasks: records.iter().map(|record| present(&state, record)).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// The `id` of a task search: a whole task id, or the beginning of one (in lowercase).
fn id_or_prefix(value: &str) -> Result<String, ApiError> {
    let id = value.trim().to_ascii_lowercase();
    let well_formed = (1..=36).contains(&id.len())
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !well_formed {
        return Err(invalid_parameter(
            "id",
            format!(
                "`{value}` is neither a task id nor the beginning of one (hex digits and hyphens, as in 0193a1b2-…)"
            ),
        ));
    }
    Ok(id)
}

/// Any other `/api/…` path.
pub async fn no_such_endpoint() -> ApiError {
    ApiError::not_found("no such API endpoint; see README.md for the API")
}

/// An HTTP date (`Expires`), from milliseconds since the epoch.
fn rfc1123(ms: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_estimate_is_depth_over_throughput_and_at_least_a_second() {
        assert_eq!(estimate_wait_s(0, 50.0), 1);
        assert_eq!(estimate_wait_s(500, 50.0), 10);
        assert_eq!(estimate_wait_s(501, 50.0), 11);
        assert_eq!(estimate_wait_s(10, 0.0), 1);
        assert_eq!(estimate_wait_s(1000, 0.0), 11);
        assert_eq!(estimate_wait_s(10_000_000, 1.0), 3600);
    }

    #[test]
    fn prefer_wait_is_read_among_other_preferences_and_capped() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("prefer", v.parse().unwrap());
            h
        };
        assert_eq!(prefer_wait(&headers("wait=5")), Some(5));
        assert_eq!(prefer_wait(&headers("respond-async, wait=10")), Some(10));
        assert_eq!(prefer_wait(&headers("wait=600")), Some(60));
        assert_eq!(prefer_wait(&headers("return=minimal")), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn only_results_a_browser_cannot_run_are_shown_inline() {
        for inline in
            ["application/json", "text/plain; charset=utf-8", "application/problem+json", "image/png"]
        {
            assert!(renders_harmlessly(inline), "{inline}");
        }
        for attachment in [
            "text/html",
            "TEXT/HTML; charset=utf-8",
            "image/svg+xml",
            "application/xml",
            "text/javascript",
            "x",
        ] {
            assert!(!renders_harmlessly(attachment), "{attachment}");
        }
    }

    #[test]
    fn a_task_search_takes_a_whole_id_or_its_beginning() {
        assert_eq!(id_or_prefix("0193A1B2").unwrap(), "0193a1b2");
        assert_eq!(id_or_prefix("0193a1b2-").unwrap(), "0193a1b2-");
        let whole = uuid::Uuid::now_v7().to_string();
        assert_eq!(id_or_prefix(&whole).unwrap(), whole);
        assert_eq!(id_or_prefix("0193a1b2-1c3d-7").unwrap(), "0193a1b2-1c3d-7");
        for bad in ["", "xyz", "0193a1b2c", "0193a1b2-1c3d7", &format!("{whole}0")] {
            assert!(id_or_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_dates_follow_rfc_9110() {
        assert_eq!(rfc1123(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(rfc1123(1_700_000_000_999), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
