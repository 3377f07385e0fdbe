//! Server-sent events: every task event, or one task's, resumable with `Last-Event-ID`.

use super::{ApiError, AppState, openapi::ServerSentEvent, parse_id};
use crate::{
    auth::Access,
    events::{Admission, Cursor, Delivery, Follow, StillAllowed},
};
use app::model::Problem;
use axum::{
    Extension,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// How long a client turned away for want of a stream slot is asked to wait.
const BUSY_RETRY_AFTER_S: u64 = 5;

#[derive(Deserialize)]
pub struct EventsQuery {
    task: Option<String>,
}

/// `GET /api/v1/events[?task=ID]`: every event from now (or after `Last-Event-ID`).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "stream_events",
    tag = "events",
    summary = "Server-sent events of every task (of the token's queues)",
    description = "`id:` the reader's place in the event streams (one per queue, and one each for kinds and workflows): `<stream>=<ms>-<seq>` for each, comma-separated (`default=1764561234567-0,reports=1764561234570-3`), with `.<index>` after it for an event before the last of the entry it was written in (`default=1764561234567-0.2`), `event:` a status, `progress`, `queue`, `kind`, `workflow` or `reset`, `data:` JSON (`TaskEvent`, `QueueEvent`, `KindEvent`, `WorkflowEvent`, `StreamReset`). Never ends by itself.",
    params(
        ("task" = Option<Uuid>, Query, description = "Only this task's events"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^(([0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?|(_kinds|_workflows|[a-z0-9][a-z0-9._-]{0,63})=[0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?)(,(_kinds|_workflows|[a-z0-9][a-z0-9._-]{0,63})=[0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?)*)?$", description = "Resume after this place (an `id:` the stream sent; empty: from now)"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 400, description = "A `Last-Event-ID` the stream could not have sent", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`task` is not a task id", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn all_events(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = query.task.as_deref().map(parse_id).transpose()?;
    let after = last_event_id(&headers)?;
    let admission = admit(&state)?;
    let follow = Follow {
        task,
        after,
        within: access.within().cloned(),
        allowed: Some(still_allowed(&state, access)),
        ..Follow::default()
    };
    Ok(to_sse(state.events.follow(admission, follow)))
}

/// `GET /api/v1/tasks/{id}/events`: the task's current state, then its events until it ends.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/events",
    operation_id = "stream_task_events",
    tag = "events",
    summary = "Server-sent events of one task, until it ends",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^(([0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?|(_kinds|_workflows|[a-z0-9][a-z0-9._-]{0,63})=[0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?)(,(_kinds|_workflows|[a-z0-9][a-z0-9._-]{0,63})=[0-9]{1,19}-[0-9]{1,19}(\\.[0-9]{1,9})?)*)?$", description = "Resume after this place (an `id:` the stream sent; empty: from now)"),
    ),
    responses(
        (status = 200, description = "The task's current state, then its events; closes after the terminal one", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 400, description = "A `Last-Event-ID` the stream could not have sent", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn task_events(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let after = last_event_id(&headers)?;
    let admission = admit(&state)?;
    let queue = state.tasks.queues().locate(&id).await?;
    // The access layer checked the task's queue; a task gone by now has no queue to check, and
    // its history in the event stream is still only for tokens that reach the queue it was in.
    let (within, allowed) = (access.within().cloned(), Some(still_allowed(&state, access)));
    let follow = match (after, queue) {
        // A resuming client has seen the state already: replay what it missed (from every
        // stream its id names when the task's queue is gone).
        (Some(after), queue) => Follow {
            task: Some(id),
            task_keys: queue.map(|q| q.keys().clone()),
            after: Some(after),
            until_terminal: true,
            within,
            allowed,
            ..Follow::default()
        },
        (None, Some(queue)) => {
            let snapshot = state.events.snapshot(queue.keys(), id).await?;
            let first = snapshot.ok_or_else(not_found)?;
            let task_keys = Some(queue.keys().clone());
            Follow {
                task: Some(id),
                task_keys,
                first: Some(first),
                until_terminal: true,
                within,
                allowed,
                ..Follow::default()
            }
        }
        (None, None) => return Err(not_found()),
    };
    Ok(to_sse(state.events.follow(admission, follow)))
}

/// Whether `access` still holds, for an open stream to ask every second.
fn still_allowed(state: &AppState, access: Access) -> StillAllowed {
    let tokens = state.tokens.clone();
    StillAllowed(std::sync::Arc::new(move || access.holds(&tokens)))
}

fn not_found() -> ApiError {
    ApiError::not_found("no task with this id (it never existed or has expired)")
}

/// The place a reconnecting client resumes after; none for a missing or empty header, a `400`
/// for anything but an id the event streams could have sent.
fn last_event_id(headers: &HeaderMap) -> Result<Option<Cursor>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let invalid = |detail: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-last-event-id", "Invalid Last-Event-ID")
            .detail(detail)
    };
    let id = value.to_str().map_err(|_| invalid("Last-Event-ID is not text"))?.trim();
    if id.is_empty() {
        return Ok(None);
    }
    Cursor::parse(id)
        .map(Some)
        .map_err(|why| invalid(&format!("Last-Event-ID is not a place an event stream sent as `id:`: {why}")))
}

/// A slot for one more event stream, or `503` with Retry-After while all are taken.
pub(super) fn admit(state: &AppState) -> Result<Admission, ApiError> {
    state.events.admit().ok_or_else(|| {
        tracing::warn!("answering 503: every event stream slot is taken (--max-sse-clients)");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too-many-streams", "Too many event streams")
            .detail("this server serves as many event streams as it is allowed to; retry shortly")
            .retry_after(BUSY_RETRY_AFTER_S)
    })
}

/// The event stream's answer: each delivery as its SSE frame ([`Delivery::frame`]), and a
/// comment after 15 s without one, so that proxies keep the connection open. axum's `Sse` would
/// build each frame again, for each follower, field by field.
fn to_sse(deliveries: impl Stream<Item = Delivery> + Send + 'static) -> Response {
    let frames = KeptAlive {
        frames: Box::pin(deliveries.map(|delivery| delivery.frame())),
        timer: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        sent: false,
    };
    let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    (headers, Body::from_stream(frames)).into_response()
}

/// How long an event stream stays silent before a comment keeps it open (axum's `KeepAlive`'s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What is sent after [`KEEP_ALIVE`] without a frame: an empty comment.
const KEEP_ALIVE_COMMENT: &[u8] = b":\n\n";

/// Frames, with a keep-alive comment when none came for [`KEEP_ALIVE`]. The timer is set again
/// when the stream runs out of frames for the moment, not at each frame.
struct KeptAlive<S> {
    frames: Pin<Box<S>>,
    timer: Pin<Box<Sleep>>,
    /// Frames were sent since the timer was last set.
    sent: bool,
}

impl<S: Stream<Item = Bytes>> Stream for KeptAlive<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.frames.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.sent = true;
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if std::mem::take(&mut this.sent) {
            this.timer.as_mut().reset(Instant::now() + KEEP_ALIVE);
        }
        ready!(this.timer.as_mut().poll(cx));
        this.timer.as_mut().reset(Instant::now() + KEEP_ALIVE);
        Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, channel::mpsc};

    fn kept_alive(frames: mpsc::UnboundedReceiver<Bytes>) -> KeptAlive<mpsc::UnboundedReceiver<Bytes>> {
        KeptAlive { frames: Box::pin(frames), timer: Box::pin(tokio::time::sleep(KEEP_ALIVE)), sent: false }
    }

    /// What the stream has ready now, without waiting.
    fn ready(stream: &mut KeptAlive<mpsc::UnboundedReceiver<Bytes>>) -> Option<Option<Bytes>> {
        stream.next().now_or_never().map(|item| item.map(|frame| frame.unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_gets_a_comment_every_fifteen_seconds_counted_from_its_last_frame() {
        let (send, frames) = mpsc::unbounded();
        let mut stream = kept_alive(frames);
        assert_eq!(ready(&mut stream), None, "nothing yet");
        tokio::time::advance(KEEP_ALIVE - Duration::from_millis(1)).await;
        assert_eq!(ready(&mut stream), None, "not before the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(ready(&mut stream), Some(Some(Bytes::from_static(b":\n\n"))));
        assert_eq!(ready(&mut stream), None, "one comment an interval");

        // A frame passes at once, and the next comment waits a whole interval after it.
        tokio::time::advance(Duration::from_secs(10)).await;
        send.unbounded_send(Bytes::from_static(b"id: a\nevent: queued\ndata: {}\n\n")).unwrap();
        assert_eq!(ready(&mut stream), Some(Some(Bytes::from_static(b"id: a\nevent: queued\ndata: {}\n\n"))));
        assert_eq!(ready(&mut stream), None);
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(
            ready(&mut stream),
            None,
            "past when the first comment's timer would fire, 14 s after the frame"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ready(&mut stream), Some(Some(Bytes::from_static(b":\n\n"))));

        // The stream ends when its frames do.
        drop(send);
        assert_eq!(ready(&mut stream), Some(None));
    }
}
