//! Recurring schedules over HTTP: put, read, delete, pause, resume, run now.

use super::{ApiError, AppState, Json, parse_json, read_body};
use crate::{auth::Access, schedules::ScheduleError};
use app::model::{
    Problem, TaskView,
    schedules::{SCHEDULE_NAME_PATTERN, ScheduleList, ScheduleSpec, ScheduleView},
    workflow::WorkflowView,
};
use axum::{
    Extension,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{RefOr, Schema, schema::ObjectBuilder, schema::Type},
};

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> ApiError {
        match e {
            ScheduleError::InvalidName | ScheduleError::Invalid(_) => {
                ApiError::unprocessable("invalid-schedule", "Invalid schedule", e.to_string())
            }
            ScheduleError::Task(error) => {
                let problem = ApiError::from(error);
                let detail = format!("`task`: {}", problem.detail_text());
                problem.detail(detail)
            }
            ScheduleError::NotFound(_) => ApiError::not_found(e.to_string()),
            ScheduleError::Redis(e) => e.into(),
        }
    }
}

/// A schedule's name as paths take it ([`SCHEDULE_NAME_PATTERN`]).
pub struct ScheduleName;

impl PartialSchema for ScheduleName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(SCHEDULE_NAME_PATTERN)).into()
    }
}

impl ToSchema for ScheduleName {}

/// What running a schedule now started: its task, or its workflow.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Started {
    Task(TaskView),
    Workflow(WorkflowView),
}

fn no_such_schedule(name: &str) -> ApiError {
    ApiError::not_found(format!("no schedule named `{name}`"))
}

/// Whether the token reaches every queue a schedule's tasks go to.
fn reaches(state: &AppState, access: &Access, spec: &ScheduleSpec) -> bool {
    let queues = state.schedules.queues_of_spec(spec);
    access.within().is_none() || (!queues.is_empty() && queues.iter().all(|q| access.reaches(q)))
}

/// Refuses (as not found) a schedule whose tasks go to a queue the token does not reach.
async fn reachable(state: &AppState, access: &Access, name: &str) -> Result<(), ApiError> {
    if access.within().is_none() {
        return Ok(());
    }
    match state.schedules.queues_of(name).await? {
        Some(queues) if !queues.is_empty() && queues.iter().all(|q| access.reaches(q)) => Ok(()),
        _ => Err(no_such_schedule(name)),
    }
}

/// `GET /api/v1/schedules`: every schedule (into a queue the token reaches), by name.
#[utoipa::path(
    get,
    path = "/api/v1/schedules",
    operation_id = "list_schedules",
    tag = "schedules",
    summary = "Every schedule, with its next five ticks and latest run",
    responses((status = 200, description = "The schedules", body = ScheduleList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Json<ScheduleList>, ApiError> {
    let mut schedules = state.schedules.list().await?;
    schedules.retain(|view| reaches(&state, &access, &view.schedule));
    Ok(Json(ScheduleList { schedules }))
}

/// `GET /api/v1/schedules/{name}`.
#[utoipa::path(
    get,
    path = "/api/v1/schedules/{name}",
    operation_id = "get_schedule",
    tag = "schedules",
    summary = "A schedule, with its next five ticks and latest run",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state
        .schedules
        .get(&name)
        .await?
        .filter(|view| reaches(&state, &access, &view.schedule))
        .map(Json)
        .ok_or_else(|| no_such_schedule(&name))
}

/// `PUT /api/v1/schedules/{name}`: `201` created, `200` replaced (or unchanged). A changed
/// schedule's ticks count from now: no tick of the old definition runs afterwards.
#[utoipa::path(
    put,
    path = "/api/v1/schedules/{name}",
    operation_id = "put_schedule",
    tag = "schedules",
    summary = "Create or replace a schedule",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    request_body(content = ScheduleSpec, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced, or unchanged", body = ScheduleView),
        (status = 201, description = "Created", body = ScheduleView),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `--max-payload`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a schedule: a bad name, cron pattern, interval, time zone or time, a workflow, an unknown kind or a payload its schema refuses (the detail names the field)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let body = read_body(body, &headers, state.max_payload, &state.body_budget).await?;
    let spec: ScheduleSpec = parse_json(&body.bytes)?;
    let (created, view) = state.schedules.put(&name, &spec).await?;
    state.audit.record(access.name(), "schedule.put", &name).await;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

/// `DELETE /api/v1/schedules/{name}`.
#[utoipa::path(
    delete,
    path = "/api/v1/schedules/{name}",
    operation_id = "delete_schedule",
    tag = "schedules",
    summary = "Delete a schedule",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.schedules.delete(&name).await? {
        return Err(no_such_schedule(&name));
    }
    state.audit.record(access.name(), "schedule.delete", &name).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/schedules/{name}/pause`: no tick runs until it is resumed.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{name}/pause",
    operation_id = "pause_schedule",
    tag = "schedules",
    summary = "Pause a schedule",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The paused schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(state, access, name, true).await
}

/// `POST /api/v1/schedules/{name}/resume`: ticks run again from now; those of the pause never.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{name}/resume",
    operation_id = "resume_schedule",
    tag = "schedules",
    summary = "Resume a schedule",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The resumed schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(state, access, name, false).await
}

async fn set_paused(
    state: AppState,
    access: Access,
    name: String,
    paused: bool,
) -> Result<Json<ScheduleView>, ApiError> {
    reachable(&state, &access, &name).await?;
    let view = state.schedules.set_paused(&name, paused).await?.ok_or_else(|| no_such_schedule(&name))?;
    let action = if paused { "schedule.pause" } else { "schedule.resume" };
    state.audit.record(access.name(), action, &name).await;
    Ok(Json(view))
}

/// `POST /api/v1/schedules/{name}/run`: submits the schedule's task now, outside its ticks.
#[utoipa::path(
    post,
    path = "/api/v1/schedules/{name}/run",
    operation_id = "run_schedule",
    tag = "schedules",
    summary = "Run a schedule's task now",
    params(("name" = inline(ScheduleName), Path, description = "The schedule's name")),
    responses(
        (status = 202, description = "Accepted: the task (or the workflow, for a schedule of one), `Location` of its status monitor", body = Started,
            headers(("Location" = String, description = "The status monitor"))),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many queues", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The task is refused now (its kind is gone, say)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Its queue is full", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn run(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
) -> Result<(StatusCode, HeaderMap, Json<Started>), ApiError> {
    reachable(&state, &access, &name).await?;
    let started = state.schedules.run_now(&name).await?;
    state.audit.record(access.name(), "schedule.run", &name).await;
    let (location, body) = match started {
        crate::schedules::Started::Task(record) => {
            (format!("/api/v1/tasks/{}/status", record.id), Started::Task(record.view()))
        }
        crate::schedules::Started::Workflow(view) => {
            (format!("/api/v1/workflows/{}/status", view.id), Started::Workflow(view))
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).expect("a path is a header value"));
    Ok((StatusCode::ACCEPTED, headers, Json(body)))
}
