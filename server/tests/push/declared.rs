//! Kinds declared through the API with an endpoint, run by a real `courier worker` process.

use crate::endpoint::{OTHER_SECRET, SECRET, TestEndpoint, verify_with_reference_library};
use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A server without workers of its own (a `courier worker` process pushes the tasks) and an
/// endpoint.
pub(crate) async fn start() -> (TestApp, TestEndpoint) {
    (spawn_app_with(|c| c.concurrency = 0).await, TestEndpoint::start().await)
}

/// Declares kind `name`, pushed to `url`, retried after 100 ms at first; `extra` adds to (or
/// overrides) the declaration's fields, and its `endpoint` object to the endpoint's.
pub(crate) async fn declare(app: &TestApp, name: &str, url: &str, extra: Value) {
    let mut declaration = json!({
        "description": "Pushed to the test endpoint.",
        "retry_base_ms": 100,
        "retry_cap_ms": 5000,
        "endpoint": {"url": url, "secret": SECRET},
    });
    for (field, value) in extra.as_object().expect("extra fields are an object") {
        match (field.as_str(), value) {
            ("endpoint", Value::Object(more)) => {
                declaration["endpoint"].as_object_mut().unwrap().extend(more.clone());
            }
            _ => {
                declaration[field] = value.clone();
            }
        }
    }
    let response =
        app.http.put(app.url(&format!("/api/v1/kinds/{name}"))).json(&declaration).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(matches!(status.as_u16(), 200 | 201), "PUT /api/v1/kinds/{name}: {status} {body}");
}

/// A worker process; started after the kinds are declared, so that it knows them from its start.
fn worker(app: &TestApp) -> tokio::process::Child {
    app.worker(&["--concurrency", "4"])
}

/// The dead letter of task `id`.
async fn dead_letter(app: &TestApp, id: &str) -> Value {
    let page = app.get_json("/api/v1/dead-letters").await;
    let letters = page["dead_letters"].as_array().unwrap();
    letters.iter().find(|l| l["task"]["id"] == id).cloned().unwrap_or_else(|| panic!("no dead letter {id}"))
}

#[tokio::test]
async fn a_pushed_task_s_result_is_the_endpoint_s_answer_and_its_request_is_signed() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.invoice", &endpoint.url, json!({})).await;
    let _worker = worker(&app);

    let payload = json!({"answer": 200, "reply": {"invoice": 42, "total": "9.99"}});
    let id = app.submit_ok(json!({"kind": "orders.invoice", "payload": payload})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["attempts"], 1);

    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "application/json");
    assert_eq!(result.json::<Value>().await.unwrap(), json!({"invoice": 42, "total": "9.99"}));

    let requests = endpoint.requests_for(&id);
    assert_eq!(requests.len(), 1);
    let headers = &requests[0]["headers"];
    assert_eq!(headers["courier-kind"], "orders.invoice");
    assert_eq!(headers["courier-attempt"], "1");
    assert_eq!(headers["webhook-id"], id.as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(serde_json::from_str::<Value>(requests[0]["body"].as_str().unwrap()).unwrap(), payload);
    verify_with_reference_library(SECRET, &requests[0]).await.expect("the reference library accepts it");
    let refused = verify_with_reference_library(OTHER_SECRET, &requests[0]).await.unwrap_err();
    assert!(refused.contains("No matching signature"), "{refused}");
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_no_sooner_than_it_says_and_then_succeeds() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.busy", &endpoint.url, json!({})).await;
    let _worker = worker(&app);

    let payload = json!({"answer": 503, "retry_after": 1, "times": 1});
    let id = app.submit_ok(json!({"kind": "orders.busy", "payload": payload})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["attempts"], 2);

    let requests = endpoint.requests_for(&id);
    let attempts: Vec<&Value> = requests.iter().map(|r| &r["attempt"]).collect();
    assert_eq!(attempts, [&json!("1"), &json!("2")]);
    // The kind's own backoff starts at 100 ms: only the Retry-After explains a second's wait.
    let gap = requests[1]["at"].as_f64().unwrap() - requests[0]["at"].as_f64().unwrap();
    assert!(gap >= 0.95, "the retry came {gap:.3} s after the 503");
}

#[tokio::test]
async fn a_422_is_a_dead_letter_whose_error_names_the_status() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.refused", &endpoint.url, json!({})).await;
    let _worker = worker(&app);

    let payload = json!({"answer": 422, "text": "order 42 does not exist"});
    let id = app.submit_ok(json!({"kind": "orders.refused", "payload": payload})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 1);
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("422 Unprocessable Entity: order 42 does not exist"), "{error}");
    assert_eq!(dead_letter(&app, &id).await["reason"], "non_retryable");
    assert_eq!(endpoint.requests_for(&id).len(), 1);
}

#[tokio::test]
async fn an_endpoint_slower_than_its_timeout_is_retried() {
    let (app, endpoint) = start().await;
    let extra = json!({"max_attempts": 2, "endpoint": {"timeout_ms": 300}});
    declare(&app, "orders.slow", &endpoint.url, extra).await;
    let _worker = worker(&app);

    let id = app.submit_ok(json!({"kind": "orders.slow", "payload": {"answer": "sleep", "ms": 5000}})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 2);
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("did not answer within 300 ms"), "{error}");
    assert_eq!(dead_letter(&app, &id).await["reason"], "attempts_exhausted");
    assert_eq!(endpoint.requests_for(&id).len(), 2);
}

#[tokio::test]
async fn a_port_nothing_listens_on_is_retried_until_the_attempts_run_out() {
    let (app, _endpoint) = start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook");
    declare(&app, "orders.nowhere", &url, json!({"max_attempts": 2})).await;
    let _worker = worker(&app);

    let id = app.submit_ok(json!({"kind": "orders.nowhere", "payload": {"answer": 200}})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 2);
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("cannot connect to the endpoint"), "{error}");
    assert_eq!(dead_letter(&app, &id).await["reason"], "attempts_exhausted");
}

#[tokio::test]
async fn cancelling_a_pushed_task_ends_it_and_closes_the_endpoint_s_connection() {
    let (app, endpoint) = start().await;
    declare(&app, "orders.long", &endpoint.url, json!({})).await;
    let _worker = worker(&app);

    let id =
        app.submit_ok(json!({"kind": "orders.long", "payload": {"answer": "sleep", "ms": 10_000}})).await;
    endpoint.wait_for("request", &id, Duration::from_secs(20)).await;
    let cancelled_at = Instant::now();
    let response = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 202, "a running task is asked to stop");

    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    endpoint.wait_for("closed", &id, Duration::from_secs(3)).await;
    // Long before the endpoint's 10 s were up.
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "{:?}", cancelled_at.elapsed());
    assert_eq!(endpoint.requests_for(&id).len(), 1);
}
