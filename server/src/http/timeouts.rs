//! How long a request may take: to be answered, and between two chunks of its body.

use super::{ApiError, api::prefer_wait};
use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::Frame;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// The bounds on one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Until the answer's head (a `Prefer: wait=N` request gets N seconds more).
    pub request: Duration,
    /// The longest pause between two chunks of the request body.
    pub body: Duration,
}

/// Answers `503` (Retry-After) when the answer takes longer than the request timeout, and `408`
/// when the client is the slow one: its body paused longer than the body timeout, or was still
/// arriving when the request timeout ran out. A streamed answer (SSE) is bounded until its head.
pub async fn bound(State(timeouts): State<Timeouts>, request: Request, next: Next) -> Response {
    let mut limit = timeouts.request + Duration::from_secs(prefer_wait(request.headers()).unwrap_or(0));
    if request.uri().path().ends_with("/leases") {
        // A lease request may wait for tasks (its `wait_ms`) before it answers.
        limit += super::leases::MAX_WAIT;
    }
    let progress = Arc::new(AtomicU8::new(UNREAD));
    let request = request.map(|body| Body::new(Watched::new(body, timeouts.body, progress.clone())));
    let answer = tokio::time::timeout(limit, next.run(request)).await;
    match (answer, progress.load(Ordering::Acquire)) {
        (_, STALLED) => too_slow(format!("the request body paused for longer than {:?}", timeouts.body)),
        (Err(_), READING) => too_slow(format!("the request took longer than {limit:?} to arrive")),
        (Ok(response), _) => response,
        (Err(_), _) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out")
            .detail(format!("no answer within {limit:?}; retry shortly"))
            .retry_after(1)
            .into_response(),
    }
}

/// `408` and the connection closed: the rest of the body will not be read.
fn too_slow(detail: String) -> Response {
    let mut response = ApiError::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request timeout")
        .detail(detail)
        .into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// How far a request body has been read.
const UNREAD: u8 = 0;
const READING: u8 = 1;
const DONE: u8 = 2;
const STALLED: u8 = 3;

/// A request body that fails when no chunk comes for `idle`, and reports how far it got.
struct Watched {
    body: Body,
    idle: Duration,
    /// Armed while waiting for a chunk.
    timer: Option<Pin<Box<Sleep>>>,
    progress: Arc<AtomicU8>,
}

impl Watched {
    fn new(body: Body, idle: Duration, progress: Arc<AtomicU8>) -> Watched {
        Watched { body, idle, timer: None, progress }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body paused for too long")]
struct BodyStalled;

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let _ = this.progress.compare_exchange(UNREAD, READING, Ordering::AcqRel, Ordering::Acquire);
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                if frame.is_none() {
                    this.progress.store(DONE, Ordering::Release);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.progress.store(STALLED, Ordering::Release);
                    return Poll::Ready(Some(Err(axum::Error::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
