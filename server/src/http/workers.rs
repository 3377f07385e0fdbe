//! `GET /api/v1/workers`: the live worker processes (workers.rs keeps the registry).

use super::{ApiError, AppState, Json};
use crate::auth::Access;
use app::model::WorkerList;
use axum::{Extension, extract::State};

/// `GET /api/v1/workers`: every worker seen in the last two lease periods that serves a queue
/// this caller reaches, with the tasks it runs in those queues.
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    operation_id = "list_workers",
    tag = "operations",
    summary = "The live worker processes, built-in and pulling, with the tasks they run",
    responses((status = 200, description = "Every worker seen in the last two lease periods that serves a queue the token reaches", body = WorkerList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Json<WorkerList>, ApiError> {
    let mut workers = state.workers.list(state.tasks.queues()).await?;
    workers.retain(|worker| worker.queues.iter().any(|queue| queue == "*" || access.reaches(queue)));
    for worker in &mut workers {
        worker.running.retain(|task| access.reaches(&task.queue));
    }
    Ok(Json(WorkerList { workers }))
}
