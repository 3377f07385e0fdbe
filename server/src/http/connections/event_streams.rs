//! Event streams served without hyper's connection buffers.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every HTTP/1 connection, for
//! its life, and its builder cannot make them smaller. An event stream holds its connection
//! open for hours and, but for its first request, neither reads nor writes much: 10,000
//! followers cost ~70 MB in those buffers alone (docs/benchmark-notes.md). So the first request
//! of every connection is read here: a well-formed `GET` asking for `text/event-stream` is
//! answered by the router directly and its stream written to the connection as chunks, with no
//! buffer between the two; anything else (and everything after it) is hyper's, given the bytes
//! read so far first. A connection whose first request is an event stream serves only it.

use axum::{
    Router,
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header},
};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

/// The largest head read here: a larger one is hyper's to judge.
const MAX_HEAD: usize = 8 * 1024;
/// How many bytes of ready frames one write gathers, at most (one frame more may follow).
const WRITE_BATCH: usize = 4 * 1024;
/// How many frames one write gathers, at most.
const MAX_FRAMES_A_WRITE: usize = 64;
/// The most headers an event stream's request may have to be answered here.
const MAX_HEADERS: usize = 48;

/// The first request of a connection, as far as this module cares.
pub(super) enum FirstRequest {
    /// A request for an event stream, to be answered here.
    EventStream(Box<Request<Body>>),
    /// Anything else: the bytes read so far, for hyper to read first.
    Other(Bytes),
}

/// Reads the head of the first request of `io`; `None` if the client closed the connection
/// before sending a byte or an error ended it.
pub(super) async fn first_request<I: AsyncRead + Unpin>(io: &mut I) -> Option<FirstRequest> {
    let mut read = BytesMut::with_capacity(1024);
    loop {
        if read.len() >= MAX_HEAD {
            return Some(FirstRequest::Other(read.freeze()));
        }
        let n = match io.read_buf(&mut read).await {
            Ok(n) => n,
            Err(_) if read.is_empty() => return None,
            Err(_) => return Some(FirstRequest::Other(read.freeze())),
        };
        if n == 0 {
            return (!read.is_empty()).then(|| FirstRequest::Other(read.freeze()));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&read) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(length)) => {
                // Bytes past the head (a body, a pipelined request) are hyper's business.
                let request = (length == read.len()).then(|| event_stream_request(&parsed)).flatten();
                return Some(match request {
                    Some(request) => FirstRequest::EventStream(Box::new(request)),
                    None => FirstRequest::Other(read.freeze()),
                });
            }
            // Malformed, or too many headers: hyper answers it.
            Err(_) => return Some(FirstRequest::Other(read.freeze())),
        }
    }
}

/// `parsed` as a request to answer here: an HTTP/1.1 `GET` of an event stream (one of the
/// API's, or anything that accepts `text/event-stream`), with no body and nothing that changes
/// the connection.
fn event_stream_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path?;
    let mut request = Request::builder().method(Method::GET).version(Version::HTTP_11).uri(target);
    let mut wants_events = is_event_stream_path(target.split('?').next().unwrap_or_default());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT]
            .contains(&name)
            || (name == header::CONNECTION && !value.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
        {
            return None;
        }
        wants_events |=
            name == header::ACCEPT && value.to_str().is_ok_and(|v| v.contains("text/event-stream"));
        request = request.header(name, value);
    }
    if !wants_events {
        return None;
    }
    request.body(Body::empty()).ok()
}

/// Whether `path` is one of the API's event streams: `/api/v1/events`, or a task's,
/// `/api/v1/tasks/{id}/events`.
fn is_event_stream_path(path: &str) -> bool {
    path == "/api/v1/events"
        || path
            .strip_prefix("/api/v1/tasks/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// Answers `request` on `io` with `router`, then closes the connection: an event stream as
/// chunks until it ends or the client leaves; any other answer (a problem) likewise, whole.
pub(super) async fn answer<I>(mut io: I, router: Router, request: Request<Body>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(response) = router.oneshot(request).await;
    let (parts, body) = response.into_parts();
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let framing: &[(&str, &str)] = match bodiless {
        true => &[("connection", "close")],
        false => &[("transfer-encoding", "chunked"), ("connection", "close")],
    };
    if write(&mut io, &head(&parts, framing)).await.is_err() || bodiless {
        let _ = io.shutdown().await;
        return;
    }
    let mut frames = body.into_data_stream();
    // A client sends nothing more: a read that returns tells that it left.
    let mut probe = [0u8; 64];
    let mut ended = false;
    while !ended {
        let first = tokio::select! {
            frame = frames.next() => frame,
            read = io.read(&mut probe) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        // Every frame ready now goes in one chunk and one write (a burst of events costs one
        // system call, not one each), written from the frames themselves: followers share an
        // event's frame, so a client that falls behind holds references to it, not a copy.
        // The list lives only while it is written.
        let mut ready = Vec::new();
        let mut size = 0;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            match frame {
                Some(Ok(data)) => {
                    size += data.len();
                    if !data.is_empty() {
                        ready.push(data);
                    }
                    if size < WRITE_BATCH && ready.len() < MAX_FRAMES_A_WRITE {
                        next = frames.next().now_or_never();
                    }
                }
                Some(Err(_)) | None => ended = true,
            }
        }
        if (!ready.is_empty() || ended) && write_chunk(&mut io, &ready, ended).await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// Writes `frames` as one chunk of a chunked body (none if there are none), and the body's end
/// after it if `last`, in as few system calls as the connection allows; then flushes.
async fn write_chunk<I: AsyncWrite + Unpin>(io: &mut I, frames: &[Bytes], last: bool) -> io::Result<()> {
    let size: usize = frames.iter().map(Bytes::len).sum();
    let head = format!("{size:x}\r\n");
    let mut parts = Vec::with_capacity(frames.len() + 3);
    if size > 0 {
        parts.push(IoSlice::new(head.as_bytes()));
        parts.extend(frames.iter().map(|frame| IoSlice::new(frame)));
        parts.push(IoSlice::new(b"\r\n"));
    }
    if last {
        parts.push(IoSlice::new(b"0\r\n\r\n"));
    }
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let written = io.write_vectored(parts).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, written);
    }
    io.flush().await
}

/// The status line and headers of `parts`, with `extra` ones (the framing), as HTTP/1.1 writes
/// them.
fn head(parts: &axum::http::response::Parts, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    let framing = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION];
    for (name, value) in parts.headers.iter().filter(|(name, _)| !framing.contains(name)) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(
            format!("date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now())).as_bytes(),
        );
    }
    for (name, value) in extra {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes all of `bytes` and flushes them (a TLS stream holds writes until flushed).
async fn write<I: AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// A connection whose first bytes were read already: they are read again first.
pub(super) struct Replayed<I> {
    read: Bytes,
    io: I,
}

impl<I> Replayed<I> {
    pub(super) fn new(read: Bytes, io: I) -> Replayed<I> {
        Replayed { read, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replayed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let first = self.read.split_to(n);
            buf.put_slice(&first);
            if self.read.is_empty() {
                // Let go of the buffer they were read into.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replayed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_event_streams_are_known_by_their_path() {
        for path in ["/api/v1/events", "/api/v1/tasks/01890a5d-ac96-774b-bcce-b302099a8057/events"] {
            assert!(is_event_stream_path(path), "{path}");
        }
        for path in [
            "/api/v1/tasks",
            "/api/v1/tasks//events",
            "/api/v1/tasks/a/b/events",
            "/api/v1/events/x",
            "/events",
        ] {
            assert!(!is_event_stream_path(path), "{path}");
        }
    }

    /// What [`write_chunk`] writes of `frames` through a pipe that takes five bytes at a time,
    /// so that the chunk goes in many writes, most of them ending inside a part.
    async fn written(frames: &[&'static [u8]], last: bool) -> String {
        let (mut client, mut server) = tokio::io::duplex(5);
        let frames: Vec<Bytes> = frames.iter().copied().map(Bytes::from_static).collect();
        let writer = tokio::spawn(async move { write_chunk(&mut server, &frames, last).await });
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        writer.await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn the_frames_ready_go_as_one_chunk_whatever_each_write_takes() {
        assert_eq!(written(&[b"id: a\n\n", b"id: bb\n\n"], false).await, "f\r\nid: a\n\nid: bb\n\n\r\n");
        assert_eq!(written(&[b"id: a\n\n"], true).await, "7\r\nid: a\n\n\r\n0\r\n\r\n", "and the body's end");
        assert_eq!(written(&[], true).await, "0\r\n\r\n", "the end alone");
    }

    #[tokio::test]
    async fn the_bytes_read_first_are_read_again_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut replayed = Replayed::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        replayed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
