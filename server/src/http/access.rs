//! The access log and request ids: every request gets an id (`x-request-id`, the client's when it
//! sends a sane one), runs in a span continuing the client's `traceparent`, and is logged once,
//! when its answer's head is ready (a stream's or a long poll's too), with its route template,
//! status and duration.

use crate::trace_context;
use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, header::HeaderName},
    middleware::Next,
    response::Response,
};
use std::time::Instant;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id taken from a client.
const REQUEST_ID_MAX: usize = 128;

/// Logs the request once (target `courier::http::access`), inside a span that carries its id,
/// route and trace; answers with its `x-request-id`.
pub async fn log(request: Request, next: Next) -> Response {
    answer(request, |request| next.run(request), false).await
}

/// [`log`] around `inner` (what the same layer does next), and counts and times the request by
/// its route template (`crate::metrics`), the refusals of `inner` included: one layer where two
/// would each box the request's future again (docs/benchmark-notes.md, "Nineteenth step").
pub async fn log_and_count<F: Future<Output = Response>>(
    request: Request,
    inner: impl FnOnce(Request) -> F,
) -> Response {
    answer(request, inner, true).await
}

/// What [`log`] and [`log_and_count`] do; `count`: whether the request is counted too.
async fn answer<F: Future<Output = Response>>(
    mut request: Request,
    inner: impl FnOnce(Request) -> F,
    count: bool,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let request_id = match request.headers().get(&REQUEST_ID).filter(|id| is_sane(id.as_bytes())) {
        Some(id) => id.clone(),
        None => {
            let id =
                HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a header value");
            // Handlers see the id the answer and the log carry.
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let id = request_id.to_str().unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        request_id = %id,
        trace_id = tracing::field::Empty,
    );
    let context = trace_context::start(&span, trace_context::from_headers(request.headers()).as_ref());
    let mut response = trace_context::within(inner(request), span.clone(), &context).await;
    let status = response.status().as_u16();
    if count {
        // Counted by its route template (`/api/v1/tasks/{id}`, never the path itself, which would
        // make a series per task id); what no route matched is `unmatched`.
        crate::metrics::http_request(&route, status, started);
    }
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        target: "courier::http::access",
        duration_ms,
        http.method = %method,
        http.route = %route,
        http.status = status,
        request_id = %id,
        trace_id = %context.trace_id(),
        "request"
    );
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Whether a client's request id is fit to log and echo: 1 to 128 letters, digits and
/// `-_.:+=/@`.
fn is_sane(id: &[u8]) -> bool {
    (1..=REQUEST_ID_MAX).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_only_when_it_is_short_and_plain() {
        for sane in
            ["abc", "0190b4c8-5d7e-7c3a-9f1e-3b2a1c0d9e8f", "Root=1-5759e988:bd862e3f", &"a".repeat(128)]
        {
            assert!(is_sane(sane.as_bytes()), "{sane}");
        }
        for odd in ["", "has space", "quote\"d", "new\nline", "ünïcode", &"a".repeat(129), "a;b"] {
            assert!(!is_sane(odd.as_bytes()), "{odd}");
        }
    }
}
