//! Server-sent events: every task event, or one task's, resumable with `Last-Event-ID`.

use super::{ApiError, AppState, parse_id};
use crate::events::{Follow, StoredEvent};
use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::{convert::Infallible, sync::Arc};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Deserialize)]
pub struct EventsQuery {
    task: Option<String>,
}

/// `GET /api/v1/events[?task=ID]`: every event from now (or after `Last-Event-ID`).
pub async fn all_events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let task = query.task.as_deref().map(parse_id).transpose()?;
    let follow = Follow { task, after: last_event_id(&headers), ..Follow::default() };
    Ok(to_sse(state.events.follow(follow)))
}

/// `GET /api/v1/tasks/{id}/events`: the task's current state, then its events until it ends.
pub async fn task_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    let follow = match last_event_id(&headers) {
        // A resuming client has seen the state already: replay what it missed.
        Some(after) => {
            Follow { task: Some(id), after: Some(after), until_terminal: true, ..Follow::default() }
        }
        None => {
            let snapshot = state.events.snapshot(&state.keys.task(&id), id).await?;
            let first = snapshot.ok_or_else(|| {
                ApiError::not_found("no task with this id (it never existed or has expired)")
            })?;
            Follow { task: Some(id), first: Some(first), until_terminal: true, ..Follow::default() }
        }
    };
    Ok(to_sse(state.events.follow(follow)))
}

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get("last-event-id")?.to_str().ok()?.trim();
    crate::events::Position::parse(id).map(|_| id.to_string())
}

fn to_sse(
    rx: tokio::sync::mpsc::Receiver<Arc<StoredEvent>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = ReceiverStream::new(rx)
        .map(|stored| Ok(Event::default().id(&stored.id).event(&stored.name).data(&*stored.data)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}
