//! The operator's numbers over HTTP: `GET /api/v1/stats` once, and `GET /api/v1/stats/events`, a
//! server-sent `stats` event every second for the dashboard (stats.rs reads them).

use super::openapi::ServerSentEvent;
use super::{ApiError, AppState, Json};
use crate::{
    auth::Access,
    queue::Queue,
    stats::{self, Spans},
};
use app::model::{Problem, STATS_EVENT, Stats};
use axum::{
    Extension,
    extract::{Query, State},
    response::sse::{Event, KeepAlive, Sse},
};
use futures::Stream;
use std::{collections::HashMap, convert::Infallible, time::Duration};
use tokio_stream::wrappers::ReceiverStream;

/// How often the live feed sends fresh stats.
const EVERY: Duration = Duration::from_secs(1);

/// `GET /api/v1/stats[?spans=second,minute,hour]`: the queues this caller reaches, with
/// throughput and latency over them.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    operation_id = "get_stats",
    tag = "operations",
    summary = "Counts by queue and kind, throughput per second, minute and hour, latency percentiles",
    params(("spans" = Option<String>, Query, pattern = "^(second|minute|hour)(,(second|minute|hour))*$", description = "The throughput series to include, comma-separated (default: all three)")),
    responses(
        (status = 200, description = "The stats of the queues the token reaches", body = Stats),
        (status = 400, description = "An unknown query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A span that is not `second`, `minute` or `hour`", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Stats>, ApiError> {
    let mut spans = Spans::ALL;
    for (name, value) in &query {
        match name.as_str() {
            "spans" => {
                spans = Spans::parse(value)
                    .map_err(|e| ApiError::unprocessable("invalid-query", "Invalid query", e))?
            }
            other => return Err(ApiError::bad_request(format!("unknown query parameter `{other}`"))),
        }
    }
    Ok(Json(read(&state, &access, spans).await?))
}

/// `GET /api/v1/stats/events`: a `stats` event at once and then every second (the seconds'
/// series only), until the client leaves, its token stops working or the server stops.
#[utoipa::path(
    get,
    path = "/api/v1/stats/events",
    operation_id = "stream_stats",
    tag = "events",
    summary = "A `stats` server-sent event every second (the seconds' series), for dashboards",
    description = "`event: stats`, `data:` JSON `Stats` with only the `second` series. Never ends by itself.",
    responses((status = 200, description = "The stats stream", content_type = "text/event-stream", body = ServerSentEvent)),
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let admission = super::sse::admit(&state)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stopping = state.events.stopping();
    tokio::spawn(async move {
        let _admission = admission;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tx.closed() => return,
                () = stopping.cancelled() => return,
            }
            if !access.holds(&state.tokens) {
                return;
            }
            let event = match read(&state, &access, Spans::LIVE).await {
                Ok(stats) => match Event::default().event(STATS_EVENT).json_data(&stats) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::error!(error = %e, "encoding stats failed");
                        return;
                    }
                },
                // Redis away for a moment: the next tick tries again; the page keeps its numbers.
                Err(e) => {
                    tracing::warn!(error = ?e, "reading stats for a live feed failed");
                    continue;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// The stats of the queues `access` reaches.
async fn read(state: &AppState, access: &Access, spans: Spans) -> Result<Stats, ApiError> {
    let mut queues = state.tasks.queues().all().await?;
    queues.retain(|queue| access.reaches(queue.name()));
    let states = futures::future::try_join_all(queues.iter().map(Queue::state)).await?;
    let queues: Vec<_> = queues.into_iter().zip(states).collect();
    Ok(stats::read(&state.redis, &queues, spans).await?)
}
