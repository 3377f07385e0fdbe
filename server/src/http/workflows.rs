//! `/api/v1/workflows`: create a workflow (`202` + its status monitor, or its result with
//! `Prefer: wait`), read it, follow it, cancel it. Its steps' queues must all be within the
//! caller's token, or the workflow is, for the caller, not there.

use super::{
    ApiError, AppState, Json,
    api::{prefer_wait, spend},
    auth::no_such_queue,
    off_runtime, parse_json, read_body,
};
use crate::{
    auth::Access,
    tasks::SubmitError,
    workflows::{Checked, CreateError},
};
use app::model::{
    Problem,
    workflow::{WorkflowList, WorkflowRequest, WorkflowStatus, WorkflowView},
};
use axum::{
    Extension,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use uuid::Uuid;

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> ApiError {
        match e {
            CreateError::Refused(refusal) => {
                ApiError::unprocessable("invalid-workflow", "Invalid workflow", refusal.to_string())
            }
            CreateError::Step { step, error } => {
                let inner = ApiError::from(error);
                let detail = format!("step `{step}`: {}", inner.detail_text());
                if inner.status() == StatusCode::UNPROCESSABLE_ENTITY
                    || inner.status() == StatusCode::BAD_REQUEST
                {
                    ApiError::unprocessable("invalid-workflow", "Invalid workflow", detail)
                } else {
                    inner
                }
            }
            CreateError::IdempotencyKeyReused => {
                ApiError::unprocessable("idempotency-key-reused", "Idempotency key reused", e.to_string())
            }
            CreateError::Unconfirmed(_) => SubmitError::Unconfirmed(e.to_string()).into(),
            CreateError::Redis(e) => e.into(),
        }
    }
}

/// Seconds a client waits before polling a running workflow's status again.
const POLL_AFTER_S: u64 = 1;

/// `POST /api/v1/workflows`: checks the whole definition, then stores it and starts its first
/// steps; `202` + `Location` of its status monitor.
#[utoipa::path(
    post,
    path = "/api/v1/workflows",
    operation_id = "create_workflow",
    tag = "workflows",
    summary = "Create a workflow",
    request_body = WorkflowRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,253}[!-~])?$", description = "The same key with the same definition gives the same workflow (1 to 255 visible ASCII characters)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 60): wait up to N s for the workflow to end and answer with its result"),
    ),
    responses(
        (status = 200, description = "`Prefer: wait=N` and the workflow succeeded in time: its result", body = serde_json::Value),
        (status = 202, description = "Accepted: the workflow, `Location` of its status monitor", body = WorkflowView,
            headers(("Location" = String, description = "The status monitor"), ("Retry-After" = u64, description = "Seconds before polling the status"))),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A step's queue is outside the token's", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The definition is over 1 MiB (or `--max-payload`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A cycle, an unknown step or kind, a payload its kind refuses (the step named); or (`Prefer: wait`) the workflow failed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The token is past `--rate-limit`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::api::require_json(&headers, "the workflow")?;
    let idempotency_key = super::api::idempotency_key(&headers)?;
    let limit = state.max_payload.min(crate::workflows::MAX_DEFINITION_BYTES);
    let body = read_body(body, &headers, limit, &state.body_budget).await?;
    let request: WorkflowRequest = off_runtime(body.bytes.clone(), |bytes| parse_json(bytes)).await?;
    let service = state.workflows.clone();
    let checked: Checked = tokio::task::spawn_blocking(move || service.check(request))
        .await
        .map_err(|_| ApiError::for_status(StatusCode::SERVICE_UNAVAILABLE))??;
    for queue in checked.queues() {
        if !access.reaches(&queue) {
            return Err(no_such_queue(&queue));
        }
    }
    spend(&state, &access, 1).await?;
    let wait = prefer_wait(&headers)
        .and_then(|seconds| Some((seconds, state.waiting.clone().try_acquire_owned().ok()?)));
    let updates = wait.as_ref().map(|_| state.events.subscribe());
    let (view, replayed) = state.workflows.create(checked, idempotency_key.as_deref()).await?;
    if let (Some((seconds, _permit)), Some(updates)) = (wait, updates)
        && let Some(reply) = wait_for_end(&state, view.id, seconds, updates).await?
    {
        return Ok(reply);
    }
    let mut response = (StatusCode::ACCEPTED, Json(&view)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header_text(&format!("/api/v1/workflows/{}/status", view.id)));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_S));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Waits up to `seconds` for workflow `id` to end; its status monitor's answer then, or `None`.
async fn wait_for_end(
    state: &AppState,
    id: Uuid,
    seconds: u64,
    mut updates: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::events::StoredEvent>>,
) -> Result<Option<Response>, ApiError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let ended = |state: &AppState| {
        let workflows = state.workflows.clone();
        async move { Ok::<_, ApiError>(workflows.view(&id).await?.is_some_and(|v| v.status.is_terminal())) }
    };
    let mut done = ended(state).await?;
    while !done {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(event)) => {
                done = event
                    .workflow()
                    .is_some_and(|w| w.workflow_id == id && w.step.is_none() && w.status != "running");
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => done = ended(state).await?,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(None),
        }
    }
    let view = find(state, &id.to_string(), None).await?;
    let mut response = match state.workflows.result(&view).await? {
        Some(result) => Json(result).into_response(),
        None => failure(&view).into_response(),
    };
    let headers = response.headers_mut();
    headers.insert("preference-applied", header_text(&format!("wait={seconds}")));
    headers.insert(header::CONTENT_LOCATION, header_text(&format!("/api/v1/workflows/{id}")));
    Ok(Some(response))
}

fn header_text(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("paths and numbers are valid header values")
}

/// The workflow `id`, if it exists and the caller reaches every queue of it.
async fn find(state: &AppState, id: &str, access: Option<&Access>) -> Result<WorkflowView, ApiError> {
    let missing = || ApiError::not_found("no workflow with this id (it never existed or has expired)");
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found(format!("`{id}` is not a workflow id")))?;
    let view = state.workflows.view(&id).await?.ok_or_else(missing)?;
    if access.is_some_and(|a| !view.steps.iter().all(|s| a.reaches(&s.queue))) {
        return Err(missing());
    }
    Ok(view)
}

/// The problem a failed or cancelled workflow answers with.
fn failure(view: &WorkflowView) -> ApiError {
    match view.status {
        WorkflowStatus::Cancelled => ApiError::new(StatusCode::CONFLICT, "cancelled", "Workflow cancelled")
            .detail("the workflow was cancelled before it finished"),
        _ => ApiError::unprocessable(
            "workflow-failed",
            "Workflow failed",
            view.error.clone().unwrap_or_else(|| "the workflow failed".into()),
        ),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, newest first (1 to 200; 50 when absent).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// `GET /api/v1/workflows`: the newest workflows.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    operation_id = "list_workflows",
    tag = "workflows",
    summary = "Workflows, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "The workflows", body = WorkflowList),
        (status = 400, description = "A bad limit", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<ListQuery>,
) -> Result<Json<WorkflowList>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 200"));
    }
    let workflows = state.workflows.list(limit, |queue| access.reaches(queue)).await?;
    Ok(Json(WorkflowList { workflows }))
}

/// `GET /api/v1/workflows/{id}`: the workflow and each step's state and tasks.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    operation_id = "get_workflow",
    tag = "workflows",
    summary = "A workflow",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(find(&state, &id, Some(&access)).await?))
}

/// `GET /api/v1/workflows/{id}/status`: the status monitor, as a task's: `200` + `Retry-After`
/// while it runs, `303` to its result once it succeeded, `200` with the error once it failed or
/// was cancelled.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/status",
    operation_id = "get_workflow_status",
    tag = "workflows",
    summary = "A workflow's status monitor",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 200, description = "Running (with `Retry-After`), or failed or cancelled (`error` says why)", body = WorkflowStatusBody),
        (status = 303, description = "Succeeded: `Location` is the result", headers(("Location" = String, description = "The result"))),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn status(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = find(&state, &id, Some(&access)).await?;
    if view.status == WorkflowStatus::Succeeded {
        let location = format!("/api/v1/workflows/{}/result", view.id);
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, header_text(&location))]).into_response());
    }
    let error = view.status.is_terminal().then(|| failure(&view).problem());
    let body =
        WorkflowStatusBody { id: view.id, status: view.status, failed_step: view.failed_step.clone(), error };
    let mut response = Json(body).into_response();
    if !view.status.is_terminal() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_S));
    }
    Ok(response)
}

/// The body of a workflow's status monitor while it runs, or once it failed or was cancelled.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WorkflowStatusBody {
    id: Uuid,
    status: WorkflowStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Problem>,
}

/// `GET /api/v1/workflows/{id}/result`: the result of a succeeded workflow: each step that
/// nothing comes after, by id, with its result. A `HEAD` answers the status and type a `GET`
/// would, without reading the steps' results (nor the length, which only they tell: RFC 9110
/// lets a `HEAD` leave out a header only the content determines).
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/result",
    operation_id = "get_workflow_result",
    tag = "workflows",
    summary = "A workflow's result",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 200, description = "Step id → result, for each step nothing comes after", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running, or cancelled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "It failed: the error names the step", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn result(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    method: Method,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = find(&state, &id, Some(&access)).await?;
    match view.status {
        WorkflowStatus::Running => Err(ApiError::new(StatusCode::CONFLICT, "not-finished", "Not finished")
            .detail("the workflow is still running")
            .retry_after(POLL_AFTER_S)),
        WorkflowStatus::Succeeded if method == Method::HEAD => {
            // A body of no known length, which hyper leaves without a `Content-Length: 0`.
            let unknown = futures::stream::empty::<Result<axum::body::Bytes, std::convert::Infallible>>();
            Ok((
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                Body::from_stream(unknown),
            )
                .into_response())
        }
        WorkflowStatus::Succeeded => {
            let result = state.workflows.result(&view).await?.unwrap_or_default();
            Ok(Json(result).into_response())
        }
        _ => Err(failure(&view)),
    }
}

/// `DELETE /api/v1/workflows/{id}`: cancels the workflow: its running steps' tasks are
/// cancelled and nothing else starts. `202` with the workflow; `409` if it has ended.
#[utoipa::path(
    delete,
    path = "/api/v1/workflows/{id}",
    operation_id = "cancel_workflow",
    tag = "workflows",
    summary = "Cancel a workflow",
    params(("id" = Uuid, Path, description = "The workflow's id")),
    responses(
        (status = 202, description = "Cancelled: its running tasks are asked to stop", body = WorkflowView),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It has ended already", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = find(&state, &id, Some(&access)).await?;
    if view.status.is_terminal() {
        return Err(ApiError::new(StatusCode::CONFLICT, "already-finished", "Already finished")
            .detail(format!("the workflow has already {}", view.status.as_str())));
    }
    state.workflows.cancel(&view.id).await?;
    let view = find(&state, &id, None).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
