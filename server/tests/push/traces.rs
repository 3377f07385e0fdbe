//! Traces across a push: the request Courier sends to an endpoint carries a `traceparent` in the
//! trace the task was submitted with, for the push's own span (exported, with `--otlp-endpoint`,
//! as a child of the attempt's).

use crate::declared::{declare, start};
use crate::otlp::OtlpReceiver;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SUBMITTER: &str = "00f067aa0ba902b7";

/// Submits a task of `kind` as part of trace `TRACE`: its id.
async fn submit_in_trace(app: &TestApp, kind: &str) -> String {
    let response = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("traceparent", format!("00-{TRACE}-{SUBMITTER}-01"))
        .json(&in_test_queue(json!({"kind": kind, "payload": {"answer": 200, "reply": {}}})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// The trace id and span id of the `traceparent` the endpoint received for task `id`.
fn received_traceparent(requests: &[Value]) -> (String, String) {
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let header = requests[0]["headers"]["traceparent"].as_str().expect("the request carries a traceparent");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{header}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn a_pushed_request_carries_a_traceparent_in_the_trace_given_on_submit() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.traced", &endpoint.url, json!({})).await;
    let _worker = app.worker(&["--concurrency", "2"]);

    let id = submit_in_trace(&app, "orders.traced").await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    let (trace, span) = received_traceparent(&endpoint.requests_for(&id));
    assert_eq!(trace, TRACE);
    assert_ne!(span, SUBMITTER, "the push's own span, a descendant of the submitter's");
}

#[tokio::test]
async fn an_exporting_worker_s_push_span_is_the_one_its_request_names() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.exported", &endpoint.url, json!({})).await;
    let receiver = OtlpReceiver::start().await;
    let mut worker = app.worker(&["--concurrency", "2", "--otlp-endpoint", &receiver.endpoint]);

    let id = submit_in_trace(&app, "orders.exported").await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    let (trace, span) = received_traceparent(&endpoint.requests_for(&id));
    assert_eq!(trace, TRACE);
    // A stopping worker sends the spans it holds.
    let pid = worker.id().expect("the worker runs").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await.expect("it stops");
    assert!(stopped.unwrap().success());

    let push = receiver.wait_for(TRACE, "POST", Duration::from_secs(5)).await;
    assert_eq!(push.span_id, span, "the traceparent sent names the exported push span");
    let attempt = receiver.wait_for(TRACE, "attempt", Duration::from_secs(5)).await;
    assert_eq!(push.parent_span_id, attempt.span_id, "the push is a child of the attempt");
    assert_eq!(attempt.attributes.get("task_id").map(String::as_str), Some(id.as_str()));
    assert_ne!(attempt.parent_span_id, "", "the attempt continues its task's stored trace context");
}
