//! Push: a declared kind's tasks POSTed to an HTTP endpoint, signed the Standard Webhooks way,
//! and the endpoint's answer read as the attempt's outcome.

use crate::handlers::{Context, HandlerError, Input, Output};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use reqwest::{
    StatusCode, Url,
    header::{CONTENT_TYPE, RETRY_AFTER},
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::Semaphore;

/// The task's id (a UUID), the same on every attempt.
pub const TASK_ID_HEADER: &str = "courier-task-id";
/// The task's kind.
pub const KIND_HEADER: &str = "courier-kind";
/// The attempt, 1 for the first.
pub const ATTEMPT_HEADER: &str = "courier-attempt";
/// When the attempt times out (RFC 3339), if it has a timeout.
pub const DEADLINE_HEADER: &str = "courier-deadline";
/// Standard Webhooks' message id: the task's id, so a receiver can drop a repeated delivery.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks' signing time, Unix seconds.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks' signature: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// Requests in flight to one endpoint from one process when its declaration does not say.
pub const DEFAULT_CONCURRENCY: usize = 16;
const MAX_CONCURRENCY: usize = 1024;
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// How long a request may take when neither the endpoint nor the attempt says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest signing key Standard Webhooks allows.
const MIN_KEY_BYTES: usize = 24;
/// The largest answer kept as a result: an endpoint answering more fails the attempt rather
/// than the process's memory.
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// How much of a refusal's body its error quotes.
const QUOTED_BYTES: usize = 1024;

/// Where and how a declared kind's tasks are pushed (`endpoint = {…}` in a kind declaration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://` or `https://` URL the tasks are POSTed to.
    pub url: String,
    /// The signing secret, `whsec_` and base64 (Standard Webhooks).
    pub secret: String,
    /// How long one request may take (default: the attempt's timeout, else 30 s).
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<u64>,
    /// The most requests in flight to this endpoint from one process (default 16).
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency: Option<usize>,
}

/// A kind's endpoint, ready to call: its client, signing key and in-flight bound; cheap to clone.
#[derive(Clone)]
pub struct Push {
    endpoint: Arc<Endpoint>,
}

struct Endpoint {
    kind: String,
    url: Url,
    key: Vec<u8>,
    timeout: Option<Duration>,
    client: reqwest::Client,
    permits: Semaphore,
}

impl std::fmt::Debug for Push {
    // The signing key stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("kind", &self.endpoint.kind)
            .field("url", &self.endpoint.url.as_str())
            .finish()
    }
}

impl Push {
    /// The endpoint of kind `kind`, or why `config` cannot be one (a bad URL or secret).
    pub fn new(kind: &str, config: &EndpointConfig) -> Result<Push, String> {
        let url = Url::parse(&config.url).map_err(|e| format!("endpoint.url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("endpoint.url must be http:// or https://, not {}://", url.scheme()));
        }
        let key = signing_key(&config.secret)?;
        let concurrency = config.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!(
                "endpoint.concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}"
            ));
        }
        let timeout = match config.timeout_ms {
            Some(ms) if !(1..=MAX_TIMEOUT_MS).contains(&ms) => {
                return Err(format!("endpoint.timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, not {ms}"));
            }
            ms => ms.map(Duration::from_millis),
        };
        // A redirect is the endpoint's mistake to report, not a place to send a signed payload.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("courier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the endpoint's HTTP client cannot be built: {e}"))?;
        let endpoint = Endpoint {
            kind: kind.to_string(),
            url,
            key,
            timeout,
            client,
            permits: Semaphore::new(concurrency),
        };
        Ok(Push { endpoint: Arc::new(endpoint) })
    }

    /// Delivers one attempt: POSTs the payload and reads the answer as the outcome.
    ///
    /// A 2xx answer is the result (its body and content type); 408, 429, 5xx, a timeout or a
    /// failed connection are worth another attempt (after the answer's `Retry-After`, if any);
    /// a 3xx or any other 4xx is final. When `ctx.cancel` fires, the request (or the wait for a
    /// turn among the endpoint's `concurrency`) is dropped and the attempt fails as `cancelled`.
    pub fn call(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        let endpoint = Arc::clone(&self.endpoint);
        Box::pin(async move {
            let cancel = ctx.cancel.clone();
            // Dropping the delivery drops its connection: the endpoint sees the request end.
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(HandlerError::retryable("cancelled")),
                outcome = endpoint.deliver(input, &ctx) => outcome,
            }
        })
    }
}

impl Endpoint {
    /// Delivers one attempt in a span of its own, whose trace context (a child of the attempt's)
    /// goes with the request as `traceparent`.
    async fn deliver(&self, input: Input, ctx: &Context) -> Result<Output, HandlerError> {
        let span = tracing::info_span!(
            "push",
            otel.name = "POST",
            otel.kind = "client",
            http.request.method = "POST",
            server.address = self.url.host_str().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let context = crate::trace_context::start(&span, None);
        let traceparent = crate::trace_context::format(&context);
        crate::trace_context::within(self.send(input, ctx, traceparent), span, &context).await
    }

    async fn send(&self, input: Input, ctx: &Context, traceparent: String) -> Result<Output, HandlerError> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        let timeout = request_timeout(self.timeout, ctx.deadline, SystemTime::now());
        let id = ctx.task_id.to_string();
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let signed = if input.bytes.len() <= SIGN_INLINE_MAX {
            signature(&self.key, &id, timestamp, &input.bytes)
        } else {
            // Signing a large body takes long enough to hold up everything else on the worker's
            // thread (lease renewals too): it is signed on a thread of its own.
            let (key, task, body) = (self.key.clone(), id.clone(), input.bytes.clone());
            tokio::task::spawn_blocking(move || signature(&key, &task, timestamp, &body))
                .await
                .map_err(|_| HandlerError::retryable("signing the delivery was interrupted"))?
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .header(CONTENT_TYPE, &input.content_type)
            .header(TASK_ID_HEADER, &id)
            .header(KIND_HEADER, &self.kind)
            .header(ATTEMPT_HEADER, ctx.attempt)
            .header(WEBHOOK_TIMESTAMP_HEADER, timestamp)
            .header(WEBHOOK_SIGNATURE_HEADER, signed)
            .header(WEBHOOK_ID_HEADER, id)
            .header(crate::trace_context::TRACEPARENT, traceparent);
        if let Some(deadline) = ctx.deadline {
            let ms = deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            request = request.header(DEADLINE_HEADER, crate::store::rfc3339(ms));
        }
        let started = Instant::now();
        let response = request.body(input.bytes).send().await.map_err(|e| failed_request(e, timeout))?;
        tracing::Span::current().record("http.response.status_code", response.status().as_u16());
        tracing::debug!(
            http.status = response.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "the endpoint answered"
        );
        outcome(response, timeout).await
    }
}

/// The signing key of a `whsec_…` secret, or why it is not one.
fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    // Never quote the secret: these messages are shown to whoever declared the kind, and logged.
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("endpoint.secret must start with `whsec_` (a Standard Webhooks secret)")?;
    let key = BASE64.decode(encoded).map_err(|_| "endpoint.secret is not base64 after `whsec_`")?;
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "endpoint.secret must hold at least {MIN_KEY_BYTES} bytes after `whsec_`, not {}",
            key.len()
        ));
    }
    Ok(key)
}

/// The largest body signed on the worker's own thread (a few hundred microseconds of HMAC).
const SIGN_INLINE_MAX: usize = 256 * 1024;

/// The `webhook-signature` of `body` sent as message `id` at `timestamp` (Unix seconds).
fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// How long a request may take: the endpoint's timeout, else the time left to the attempt's
/// deadline, else 30 s; never past the deadline.
fn request_timeout(configured: Option<Duration>, deadline: Option<SystemTime>, now: SystemTime) -> Duration {
    let left = deadline.map(|d| d.duration_since(now).unwrap_or(Duration::ZERO));
    match (configured, left) {
        (Some(configured), Some(left)) => configured.min(left),
        (configured, left) => configured.or(left).unwrap_or(DEFAULT_TIMEOUT),
    }
}

/// What an answer's status says of the attempt.
#[derive(Debug, PartialEq)]
enum Verdict {
    Done,
    /// Another attempt may succeed (408, 429, 5xx).
    Retry,
    /// No retry can fix it (3xx, other 4xx).
    Refused,
}

fn verdict(status: StatusCode) -> Verdict {
    if status.is_success() {
        Verdict::Done
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Verdict::Retry
    } else {
        Verdict::Refused
    }
}

/// The attempt's outcome from the endpoint's answer.
async fn outcome(mut response: reqwest::Response, timeout: Duration) -> Result<Output, HandlerError> {
    let status = response.status();
    if verdict(status) == Verdict::Done {
        if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let (bytes, whole) =
            read_at_most(&mut response, MAX_ANSWER_BYTES).await.map_err(|e| failed_request(e, timeout))?;
        return if whole { Ok(Output { bytes, content_type }) } else { Err(too_large()) };
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // A body that breaks off changes nothing: the status has decided already.
    let quoted = read_at_most(&mut response, QUOTED_BYTES).await.map(|(b, _)| b).unwrap_or_default();
    let message = refusal(status, &quoted);
    Err(match (verdict(status), retry_after) {
        (Verdict::Retry, Some(after)) => HandlerError::retryable_after(message, after),
        (Verdict::Retry, None) => HandlerError::retryable(message),
        _ => HandlerError::fatal(message),
    })
}

fn too_large() -> HandlerError {
    HandlerError::fatal(format!("the endpoint's answer is larger than {} MiB", MAX_ANSWER_BYTES >> 20))
}

/// "the endpoint answered 422 Unprocessable Entity: {the body's first KiB}".
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let quoted = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES)]);
    match quoted.trim() {
        "" => format!("the endpoint answered {status}"),
        quoted => format!("the endpoint answered {status}: {quoted}"),
    }
}

/// Up to `limit` bytes of the answer's body, and whether that was all of it.
async fn read_at_most(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body.freeze(), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), true))
}

/// A `Retry-After` value as a wait from `now`: delay-seconds or an HTTP date (RFC 9110).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "much later".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The failure of a request that got no (whole) answer: retryable unless it could never be sent.
fn failed_request(error: reqwest::Error, timeout: Duration) -> HandlerError {
    if error.is_timeout() {
        return HandlerError::retryable(format!(
            "the endpoint did not answer within {} ms",
            timeout.as_millis()
        ));
    }
    let builder = error.is_builder();
    let connect = error.is_connect();
    // The URL stays out: it may carry credentials, and the kind's declaration names it anyway.
    let error = error.without_url();
    let mut causes: Vec<String> = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        // hyper's errors repeat their cause in their own message; say each thing once.
        let said = cause.to_string();
        if !causes.iter().any(|c| c.contains(&said)) {
            causes.push(said);
        }
        source = cause.source();
    }
    let cause = causes.join(": ");
    if builder {
        HandlerError::fatal(format!("the request to the endpoint cannot be built: {cause}"))
    } else if connect {
        HandlerError::retryable(format!("cannot connect to the endpoint: {cause}"))
    } else {
        HandlerError::retryable(format!("the request to the endpoint failed: {cause}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, secret: &str) -> EndpointConfig {
        EndpointConfig { url: url.into(), secret: secret.into(), timeout_ms: None, concurrency: None }
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_signature_is_the_standard_webhooks_reference_vector() {
        let key = signing_key(SECRET).unwrap();
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_is_whsec_and_at_least_24_bytes_of_base64() {
        assert_eq!(signing_key(SECRET).map(|k| k.len()), Ok(24));
        let refused = |secret: &str| signing_key(secret).unwrap_err();
        assert!(refused("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").contains("must start with `whsec_`"));
        assert!(refused("whsec_not base64!").contains("not base64"));
        assert!(refused("whsec_c2hvcnQ=").contains("at least 24 bytes after `whsec_`, not 5"));
        // The secret itself never appears in the message.
        assert!(!refused("whsec_c2hvcnQ=").contains("c2hvcnQ"));
    }

    #[test]
    fn a_configuration_is_checked_when_the_endpoint_is_made() {
        let error = |c: EndpointConfig| Push::new("k", &c).unwrap_err();
        assert!(Push::new("k", &config("http://127.0.0.1:9/hook", SECRET)).is_ok());
        assert!(Push::new("k", &config("https://example.com/hook", SECRET)).is_ok());
        assert!(error(config("not a url", SECRET)).starts_with("endpoint.url is not a URL"));
        assert!(error(config("/relative", SECRET)).starts_with("endpoint.url is not a URL"));
        assert_eq!(
            error(config("ftp://example.com/", SECRET)),
            "endpoint.url must be http:// or https://, not ftp://"
        );
        assert!(error(config("http://example.com/", "secret")).starts_with("endpoint.secret"));
        for (concurrency, ok) in [(0, false), (1, true), (1024, true), (1025, false)] {
            let c =
                EndpointConfig { concurrency: Some(concurrency), ..config("http://example.com/", SECRET) };
            match Push::new("k", &c) {
                Ok(_) => assert!(ok, "{concurrency}"),
                Err(e) => {
                    assert!(!ok, "{concurrency}");
                    assert_eq!(
                        e,
                        format!("endpoint.concurrency must be between 1 and 1024, not {concurrency}")
                    );
                }
            }
        }
        for (timeout_ms, ok) in [(0, false), (1, true), (3_600_000, true), (3_600_001, false)] {
            let c = EndpointConfig { timeout_ms: Some(timeout_ms), ..config("http://example.com/", SECRET) };
            match Push::new("k", &c) {
                Ok(_) => assert!(ok, "{timeout_ms}"),
                Err(e) => {
                    assert!(!ok, "{timeout_ms}");
                    assert_eq!(
                        e,
                        format!("endpoint.timeout_ms must be between 1 and 3600000, not {timeout_ms}")
                    );
                }
            }
        }
    }

    #[test]
    fn the_debug_form_names_the_endpoint_but_not_its_key() {
        let push = Push::new("k", &config("http://example.com/hook", SECRET)).unwrap();
        let shown = format!("{push:?}");
        assert!(shown.contains("http://example.com/hook"), "{shown}");
        assert!(!shown.contains("key") && !shown.contains("MfKQ"), "{shown}");
    }

    #[test]
    fn the_status_decides_success_retry_or_refusal() {
        for (status, expected) in [
            (200, Verdict::Done),
            (201, Verdict::Done),
            (204, Verdict::Done),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (502, Verdict::Retry),
            (503, Verdict::Retry),
            (504, Verdict::Retry),
            (301, Verdict::Refused),
            (302, Verdict::Refused),
            (304, Verdict::Refused),
            (400, Verdict::Refused),
            (401, Verdict::Refused),
            (404, Verdict::Refused),
            (409, Verdict::Refused),
            (422, Verdict::Refused),
        ] {
            assert_eq!(verdict(StatusCode::from_u16(status).unwrap()), expected, "{status}");
        }
    }

    #[test]
    fn a_refusal_names_the_status_and_quotes_the_first_kib_of_the_body() {
        assert_eq!(
            refusal(StatusCode::UNPROCESSABLE_ENTITY, b"no such order\n"),
            "the endpoint answered 422 Unprocessable Entity: no such order"
        );
        assert_eq!(refusal(StatusCode::NOT_FOUND, b""), "the endpoint answered 404 Not Found");
        let long = refusal(StatusCode::BAD_REQUEST, &[b'x'; 5000]);
        assert_eq!(long.len(), "the endpoint answered 400 Bad Request: ".len() + 1024);
        assert!(refusal(StatusCode::BAD_REQUEST, b"\xff\xfeoops").ends_with("\u{fffd}\u{fffd}oops"));
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date_and_garbage_is_ignored() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
        for garbage in ["", "soon", "-5", "+5", "1.5", "Tue, 99 Foo 2023 25:00:00 GMT"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_request_takes_the_endpoints_timeout_else_the_time_to_the_deadline_else_30_s() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = Duration::from_secs;
        assert_eq!(request_timeout(None, None, now), secs(30));
        assert_eq!(request_timeout(Some(secs(5)), None, now), secs(5));
        assert_eq!(request_timeout(None, Some(now + secs(7)), now), secs(7));
        assert_eq!(request_timeout(Some(secs(5)), Some(now + secs(7)), now), secs(5));
        assert_eq!(request_timeout(Some(secs(9)), Some(now + secs(7)), now), secs(7));
        assert_eq!(request_timeout(Some(secs(9)), Some(now - secs(1)), now), Duration::ZERO);
    }
}
