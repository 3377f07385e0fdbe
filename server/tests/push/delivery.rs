//! `Push::call` against the real test endpoint: what is sent, and how each answer is read.

use crate::endpoint::{OTHER_SECRET, SECRET, TestEndpoint, verify_with_reference_library};
use courier::{
    handlers::{Context, HandlerError, Input},
    push::{EndpointConfig, Push},
};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const KIND: &str = "billing.invoice";

fn push_to(url: &str, tweak: impl FnOnce(&mut EndpointConfig)) -> Push {
    let mut config =
        EndpointConfig { url: url.to_string(), secret: SECRET.into(), timeout_ms: None, concurrency: None };
    tweak(&mut config);
    Push::new(KIND, &config).expect("the test's endpoint is valid")
}

fn json_input(payload: &Value) -> Input {
    Input { bytes: serde_json::to_vec(payload).unwrap().into(), content_type: "application/json".into() }
}

fn context(task: Uuid, attempt: u32, deadline: Option<SystemTime>) -> Context {
    let (progress, _) = tokio::sync::watch::channel(None);
    Context::new(attempt, CancellationToken::new(), progress).for_task(task, deadline)
}

/// Calls `push` with `payload` as attempt 1 of a new task; returns the task's id and the outcome.
async fn call(push: &Push, payload: Value) -> (String, Result<Value, HandlerError>) {
    let task = Uuid::now_v7();
    let outcome = push.call(json_input(&payload), context(task, 1, None)).await;
    (task.to_string(), outcome.map(|output| serde_json::from_slice(&output.bytes).unwrap()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_2xx_answer_is_the_result_and_the_request_is_labelled_and_signed() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let task = Uuid::now_v7();
    let deadline = UNIX_EPOCH + Duration::from_millis(unix_now() * 1000 + 60_123);
    let payload = json!({"answer": 201, "reply": {"total": 3}});

    let output = push.call(json_input(&payload), context(task, 1, Some(deadline))).await.unwrap();
    assert_eq!(output.content_type, "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&output.bytes).unwrap(), json!({"total": 3}));

    let requests = endpoint.requests_for(&task.to_string());
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request["body"], payload.to_string(), "the payload is sent as submitted");
    let headers = &request["headers"];
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["courier-task-id"], task.to_string());
    assert_eq!(headers["courier-kind"], KIND);
    assert_eq!(headers["courier-attempt"], "1");
    let said_deadline = time::OffsetDateTime::parse(
        headers["courier-deadline"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(SystemTime::from(said_deadline), deadline);
    assert_eq!(headers["webhook-id"], task.to_string());
    let timestamp: u64 = headers["webhook-timestamp"].as_str().unwrap().parse().unwrap();
    assert!(timestamp.abs_diff(unix_now()) <= 5, "{timestamp}");

    verify_with_reference_library(SECRET, request).await.expect("the reference library accepts it");
    let refused = verify_with_reference_library(OTHER_SECRET, request).await.unwrap_err();
    assert!(refused.contains("No matching signature"), "{refused}");
}

#[tokio::test]
async fn a_body_too_large_to_sign_on_the_workers_thread_is_signed_all_the_same() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    // Past the 256 KiB signed inline: this one is signed on a blocking thread.
    let payload = json!({"answer": 200, "reply": {"ok": true}, "pad": "x".repeat(300 * 1024)});
    let (task, outcome) = call(&push, payload.clone()).await;
    assert_eq!(outcome.unwrap(), json!({"ok": true}));
    let requests = endpoint.requests_for(&task);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["body"], payload.to_string());
    verify_with_reference_library(SECRET, &requests[0]).await.expect("the reference library accepts it");
    let refused = verify_with_reference_library(OTHER_SECRET, &requests[0]).await.unwrap_err();
    assert!(refused.contains("No matching signature"), "{refused}");
}

#[tokio::test]
async fn every_attempt_carries_the_same_webhook_id_and_its_own_attempt_number() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let task = Uuid::now_v7();
    let input = json_input(&json!({"answer": 503, "times": 1}));

    let first = push.call(input.clone(), context(task, 1, None)).await.unwrap_err();
    assert!(first.retryable, "{first:?}");
    let second = push.call(input, context(task, 2, None)).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&second.bytes).unwrap(), json!({"attempt": 2}));

    let requests = endpoint.requests_for(&task.to_string());
    let seen: Vec<(&Value, &Value)> =
        requests.iter().map(|r| (&r["headers"]["webhook-id"], &r["headers"]["courier-attempt"])).collect();
    let id = json!(task.to_string());
    assert_eq!(seen, [(&id, &json!("1")), (&id, &json!("2"))]);
    // No deadline, no header saying one.
    assert!(requests.iter().all(|r| r["headers"].get("courier-deadline").is_none()));
    for request in &requests {
        verify_with_reference_library(SECRET, request).await.expect("each attempt is signed anew");
    }
}

#[tokio::test]
async fn an_answer_without_a_content_type_is_octet_stream_and_a_raw_payload_keeps_its_own() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let bare = json_input(&json!({"answer": 200, "bare": "some bytes"}));
    let output = push.call(bare, context(Uuid::now_v7(), 1, None)).await.unwrap();
    assert_eq!(output.bytes, "some bytes");
    assert_eq!(output.content_type, "application/octet-stream");

    // A raw payload goes as it came, with its own content type.
    let raw = Input { bytes: "plain words".into(), content_type: "text/plain".into() };
    let task = Uuid::now_v7();
    push.call(raw, context(task, 1, None)).await.unwrap();
    let request = &endpoint.requests_for(&task.to_string())[0];
    assert_eq!(request["headers"]["content-type"], "text/plain");
    assert_eq!(request["body"], "plain words");
    verify_with_reference_library(SECRET, request).await.expect("a raw payload is signed as sent");
}

#[tokio::test]
async fn a_503_or_429_is_retryable_no_sooner_than_its_retry_after() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});

    let (_, outcome) = call(&push, json!({"answer": 503, "retry_after": 7})).await;
    let error = outcome.unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
    assert!(error.message.starts_with("the endpoint answered 503 Service Unavailable"), "{error}");

    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    let (_, outcome) = call(&push, json!({"answer": 429, "retry_after": at})).await;
    let error = outcome.unwrap_err();
    assert!(error.retryable);
    let after = error.retry_after.expect("an HTTP date is a Retry-After");
    assert!((Duration::from_secs(27)..=Duration::from_secs(30)).contains(&after), "{after:?}");

    for (answer, retry_after) in [(500, "soon"), (408, "")] {
        let (_, outcome) = call(&push, json!({"answer": answer, "retry_after": retry_after})).await;
        let error = outcome.unwrap_err();
        assert!(error.retryable && error.retry_after.is_none(), "{answer}: {error:?}");
    }
}

#[tokio::test]
async fn a_422_is_fatal_and_its_error_names_the_status_and_quotes_the_body() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let (_, outcome) = call(&push, json!({"answer": 422, "text": "order 42 does not exist"})).await;
    let error = outcome.unwrap_err();
    assert_eq!(
        error,
        HandlerError::fatal("the endpoint answered 422 Unprocessable Entity: order 42 does not exist")
    );

    let (_, outcome) = call(&push, json!({"answer": 404, "text": "x".repeat(5000)})).await;
    let error = outcome.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.message, format!("the endpoint answered 404 Not Found: {}", "x".repeat(1024)));
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_fatal() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let (task, outcome) = call(&push, json!({"answer": 307, "location": endpoint.url})).await;
    let error = outcome.unwrap_err();
    assert!(!error.retryable);
    assert!(error.message.starts_with("the endpoint answered 307 Temporary Redirect"), "{error}");
    assert_eq!(endpoint.requests_for(&task).len(), 1, "the redirect was followed");
}

#[tokio::test]
async fn an_endpoint_slower_than_its_timeout_is_a_retryable_failure() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |c| c.timeout_ms = Some(300));
    let started = Instant::now();
    let (task, outcome) = call(&push, json!({"answer": "sleep", "ms": 5000})).await;
    let error = outcome.unwrap_err();
    assert_eq!(error, HandlerError::retryable("the endpoint did not answer within 300 ms"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    endpoint.wait_for("closed", &task, Duration::from_secs(3)).await;

    // Without a timeout of its own, the attempt's deadline bounds the request.
    let push = push_to(&endpoint.url, |_| {});
    let task = Uuid::now_v7();
    let deadline = SystemTime::now() + Duration::from_millis(500);
    let payload = json_input(&json!({"answer": "sleep", "ms": 5000}));
    let error = push.call(payload, context(task, 1, Some(deadline))).await.unwrap_err();
    assert!(error.retryable && error.message.starts_with("the endpoint did not answer within 4"), "{error}");
}

#[tokio::test]
async fn a_port_nothing_listens_on_is_a_retryable_connection_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let push = push_to(&format!("http://127.0.0.1:{port}/hook?token=s3cret"), |_| {});
    let (_, outcome) = call(&push, json!({"answer": 200})).await;
    let error = outcome.unwrap_err();
    assert!(error.retryable, "{error:?}");
    assert!(error.message.starts_with("cannot connect to the endpoint: "), "{error}");
    assert!(error.message.to_lowercase().contains("refused"), "{error}");
    assert!(!error.message.contains("s3cret"), "the URL stays out of the error: {error}");
}

#[tokio::test]
async fn a_connection_reset_before_the_answer_is_retryable() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let (task, outcome) = call(&push, json!({"answer": "reset"})).await;
    let error = outcome.unwrap_err();
    assert!(error.retryable, "{error:?}");
    assert!(error.message.starts_with("the request to the endpoint failed: "), "{error}");
    assert_eq!(endpoint.requests_for(&task).len(), 1);
}

#[tokio::test]
async fn cancelling_aborts_the_request_and_the_endpoint_sees_its_connection_close() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |_| {});
    let task = Uuid::now_v7();
    let ctx = context(task, 1, None);
    let cancel = ctx.cancel.clone();
    let call = tokio::spawn(push.call(json_input(&json!({"answer": "sleep", "ms": 10_000})), ctx));
    endpoint.wait_for("request", &task.to_string(), Duration::from_secs(5)).await;

    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(2), call).await.expect("the call ends at once");
    assert_eq!(outcome.unwrap().unwrap_err(), HandlerError::retryable("cancelled"));
    endpoint.wait_for("closed", &task.to_string(), Duration::from_secs(3)).await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "{:?}", cancelled_at.elapsed());
}

#[tokio::test]
async fn no_more_than_concurrency_requests_are_in_flight_and_a_wait_for_a_turn_ends_on_cancel() {
    let endpoint = TestEndpoint::start().await;
    let push = push_to(&endpoint.url, |c| c.concurrency = Some(2));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let payload = json_input(&json!({"answer": "sleep", "ms": 300}));
            tokio::spawn(push.call(payload, context(Uuid::now_v7(), 1, None)))
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every call succeeds in its turn");
    }
    let in_flight: Vec<u64> = endpoint.entries().iter().filter_map(|e| e["in_flight"].as_u64()).collect();
    assert_eq!(in_flight.len(), 5);
    assert_eq!(in_flight.iter().max(), Some(&2), "{in_flight:?}");

    // One permit, held by a slow request: the next call waits for its turn, and a cancel ends
    // the wait without a request.
    let push = push_to(&endpoint.url, |c| c.concurrency = Some(1));
    let holder = tokio::spawn(
        push.call(json_input(&json!({"answer": "sleep", "ms": 3000})), context(Uuid::now_v7(), 1, None)),
    );
    let waiting_task = Uuid::now_v7();
    let ctx = context(waiting_task, 1, None);
    let cancel = ctx.cancel.clone();
    let waiting = tokio::spawn(push.call(json_input(&json!({"answer": 200})), ctx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second call did not wait for the first");
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("the wait ends at once");
    assert_eq!(outcome.unwrap().unwrap_err(), HandlerError::retryable("cancelled"));
    assert!(endpoint.requests_for(&waiting_task.to_string()).is_empty());
    holder.abort();
}
