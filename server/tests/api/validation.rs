//! Bad input: each gets its status and a problem+json body, and nothing is enqueued.

use crate::support::*;
use redis::AsyncCommands;
use serde_json::json;

/// Asserts that the app stored no task at all.
async fn assert_nothing_enqueued(app: &TestApp) {
    let mut redis = app.redis().await;
    let ready = app.ready_len().await;
    let indexed: u64 = redis.zcard(app.key("index")).await.unwrap();
    let payloads: Vec<String> = redis.keys(app.key("payload:*")).await.unwrap();
    let records: Vec<String> = redis.keys(app.key("task:*")).await.unwrap();
    assert_eq!((ready, indexed, payloads.len(), records.len()), (0, 0, 0, 0));
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.http.post(app.url(path)).header("content-type", content_type).body(body).send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    let response =
        post_raw(&app, "/api/v1/tasks", "application/json", r#"{"kind": "echo", "payload": "#).await;
    let problem = assert_problem(response, 400, "/problems/bad-request").await;
    assert!(problem["detail"].as_str().unwrap().contains("not valid JSON"));
    assert_nothing_enqueued(&app).await;
}

#[tokio::test]
async fn an_unknown_kind_is_a_422() {
    let app = spawn_app().await;
    let problem = assert_problem(
        app.submit(json!({"kind": "teleport", "payload": {}})).await,
        422,
        "/problems/unknown-kind",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("teleport"));
    let raw = post_raw(&app, "/api/v1/tasks?kind=teleport", "text/plain", "hi").await;
    assert_problem(raw, 422, "/problems/unknown-kind").await;
    assert_nothing_enqueued(&app).await;
}

#[tokio::test]
async fn a_payload_that_breaks_the_schema_is_a_422_listing_every_reason() {
    let app = spawn_app().await;
    let response = app.submit(json!({"kind": "sleep", "payload": {"ms": "soon", "naps": 2}})).await;
    let problem = assert_problem(response, 422, "/problems/invalid-payload").await;
    let mut errors: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    errors.sort();
    assert_eq!(errors, ["/ms: must be integer", "/naps: is not allowed"]);
    // The same rule holds for a raw JSON body.
    let raw = post_raw(&app, "/api/v1/tasks?kind=sleep", "application/json", r#"{"steps": 2}"#).await;
    let problem = assert_problem(raw, 422, "/problems/invalid-payload").await;
    assert_eq!(problem["errors"], json!(["/ms: is required"]));
    assert_nothing_enqueued(&app).await;
}

#[tokio::test]
async fn a_submission_missing_fields_or_with_unknown_ones_is_a_422() {
    let app = spawn_app().await;
    assert_problem(app.submit(json!({"payload": 1})).await, 422, "/problems/invalid-request").await;
    assert_problem(
        app.submit(json!({"kind": "echo", "payload": 1, "colour": "red"})).await,
        422,
        "/problems/invalid-request",
    )
    .await;
    assert_problem(
        app.submit(json!({"kind": "echo", "payload": 1, "max_attempts": 0})).await,
        422,
        "/problems/invalid-option",
    )
    .await;
    assert_problem(
        app.submit(json!({"kind": "echo", "payload": 1, "priority": "urgent"})).await,
        422,
        "/problems/invalid-request",
    )
    .await;
    let bad_option = post_raw(&app, "/api/v1/tasks?kind=echo&max_attempts=many", "text/plain", "x").await;
    assert_problem(bad_option, 422, "/problems/invalid-option").await;
    assert_nothing_enqueued(&app).await;
}

#[tokio::test]
async fn a_payload_over_the_limit_is_a_413() {
    let app = spawn_app_with(|c| c.max_payload = 1024).await;
    let raw = post_raw(&app, "/api/v1/tasks?kind=echo", "application/octet-stream", vec![b'x'; 2048]).await;
    assert_problem(raw, 413, "/problems/payload-too-large").await;
    let json = app.submit(json!({"kind": "echo", "payload": "y".repeat(2000)})).await;
    assert_problem(json, 413, "/problems/payload-too-large").await;
    // Streamed without a length, the limit holds as well.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'z'; 512])));
    let streamed = post_raw(
        &app,
        "/api/v1/tasks?kind=echo",
        "application/octet-stream",
        reqwest::Body::wrap_stream(chunks),
    )
    .await;
    assert_problem(streamed, 413, "/problems/payload-too-large").await;
    assert_nothing_enqueued(&app).await;
    // Just under the limit is fine.
    let ok = post_raw(&app, "/api/v1/tasks?kind=echo", "application/octet-stream", vec![b'x'; 1024]).await;
    assert_eq!(ok.status(), 202);
}

#[tokio::test]
async fn a_raw_body_for_a_json_only_kind_or_without_a_kind_is_refused() {
    let app = spawn_app().await;
    let raw = post_raw(&app, "/api/v1/tasks?kind=sleep", "text/plain", "100").await;
    assert_problem(raw, 422, "/problems/unsupported").await;
    let no_kind = post_raw(&app, "/api/v1/tasks", "text/plain", "hello").await;
    assert_problem(no_kind, 415, "/problems/unsupported-media-type").await;
    assert_nothing_enqueued(&app).await;
}

#[tokio::test]
async fn unknown_tasks_and_endpoints_are_404_problems() {
    let app = spawn_app().await;
    let unknown =
        app.http.get(app.url(&format!("/api/v1/tasks/{}", uuid::Uuid::now_v7()))).send().await.unwrap();
    assert_problem(unknown, 404, "/problems/not-found").await;
    let malformed = app.http.get(app.url("/api/v1/tasks/not-a-uuid/status")).send().await.unwrap();
    assert_problem(malformed, 404, "/problems/not-found").await;
    let nowhere = app.http.get(app.url("/api/v1/nowhere")).send().await.unwrap();
    assert_problem(nowhere, 404, "/problems/not-found").await;
    let bad_list = app.http.get(app.url("/api/v1/tasks?status=done")).send().await.unwrap();
    assert_problem(bad_list, 422, "/problems/invalid-query").await;
}

#[tokio::test]
async fn a_batch_with_one_bad_task_enqueues_none_of_them() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let batch = |tasks: serde_json::Value| {
        app.http.post(app.url("/api/v1/tasks/batch")).json(&json!({"tasks": tasks})).send()
    };
    let good = json!({"kind": "echo", "payload": {"n": 1}});

    let schema = batch(json!([good, good, {"kind": "sleep", "payload": {"ms": "soon"}}])).await.unwrap();
    let problem = assert_problem(schema, 422, "/problems/invalid-payload").await;
    assert!(problem["detail"].as_str().unwrap().starts_with("tasks[2]: "), "{problem}");
    assert_eq!(problem["errors"], json!(["/ms: must be integer"]));

    let kind = batch(json!([good, {"kind": "teleport", "payload": {}}])).await.unwrap();
    let problem = assert_problem(kind, 422, "/problems/unknown-kind").await;
    assert!(problem["detail"].as_str().unwrap().contains("tasks[1]"), "{problem}");

    let option = batch(json!([{"kind": "echo", "payload": 1, "max_attempts": 0}, good])).await.unwrap();
    assert_problem(option, 422, "/problems/invalid-option").await;
    let unknown_field = batch(json!([{"kind": "echo", "payload": 1, "colour": "red"}])).await.unwrap();
    assert_problem(unknown_field, 422, "/problems/invalid-request").await;
    let empty = batch(json!([])).await.unwrap();
    assert_problem(empty, 422, "/problems/invalid-request").await;
    let too_many = batch(json!(vec![good.clone(); 1001])).await.unwrap();
    let problem = assert_problem(too_many, 422, "/problems/invalid-request").await;
    assert!(problem["detail"].as_str().unwrap().contains("1 to 1000 tasks"), "{problem}");

    let malformed = post_raw(&app, "/api/v1/tasks/batch", "application/json", r#"{"tasks": ["#).await;
    assert_problem(malformed, 400, "/problems/bad-request").await;
    let not_json = post_raw(&app, "/api/v1/tasks/batch", "text/plain", "echo").await;
    assert_problem(not_json, 415, "/problems/unsupported-media-type").await;
    let keyed = app
        .http
        .post(app.url("/api/v1/tasks/batch"))
        .header("idempotency-key", "k1")
        .json(&json!({"tasks": [good]}))
        .send()
        .await
        .unwrap();
    assert_problem(keyed, 400, "/problems/bad-request").await;
    assert_nothing_enqueued(&app).await;
}
