//! Records an older version stored: this one reads and runs them as that version did.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Submits a JSON task with an `Idempotency-Key`, which must be accepted; its id.
async fn submit_keyed(app: &TestApp, key: &str, body: Value) -> String {
    let response = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("idempotency-key", key)
        .json(&in_test_queue(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// The Redis key of the idempotency key task `id`'s options name.
async fn idempotency_key_of(app: &TestApp, id: &str) -> String {
    app.record_options(id).await.remove("idem").expect("an idempotency key")
}

/// Tasks stored before the forty-second step kept each option as a field of its own: their
/// views read the same, and they run with their options, end their sessions, release their
/// idempotency keys, expire, move their workflow on and are requeued as before.
#[tokio::test]
async fn records_stored_before_their_options_were_kept_together_run_as_they_did() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    // Fails once: with its second attempt allowed it succeeds, and its session's next runs after.
    let flaky = app
        .submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 2,
            "timeout_ms": 30000, "session": "s-upgrade", "ttl_ms": 600000}))
        .await;
    let after_flaky =
        app.submit_ok(json!({"kind": "echo", "payload": "after", "session": "s-upgrade"})).await;
    // Bytes that are not text: under a key of their own, with their type and size.
    let queue = test_queue().map(|q| format!("&queue={q}")).unwrap_or_default();
    let raw = app
        .http
        .post(app.url(&format!("/api/v1/tasks?kind=echo&priority=low{queue}")))
        .header("content-type", "application/octet-stream")
        .header("idempotency-key", "upgrade-raw")
        .body(vec![0xff, 0x00, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 202);
    let raw = raw.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // Cancelled while it waits: its session's next runs, its idempotency key is kept no longer.
    let cancelled =
        submit_keyed(&app, "upgrade-cancelled", json!({"kind": "echo", "payload": 1, "session": "s-cancel"}))
            .await;
    let after_cancelled = app.submit_ok(json!({"kind": "echo", "payload": 2, "session": "s-cancel"})).await;
    // Expire while they wait, then are requeued: the older record and one of this version.
    let expiring =
        app.submit_ok(json!({"kind": "echo", "payload": 3, "ttl_ms": 300, "priority": "high"})).await;
    let expiring_now = app.submit_ok(json!({"kind": "echo", "payload": 4, "ttl_ms": 300})).await;
    let mut steps = json!({"steps": [
        {"id": "a", "kind": "echo", "payload": {"n": 7}},
        {"id": "b", "kind": "echo", "after": ["a"], "payload": {"$from": "a", "pointer": "/n"}},
    ]});
    if let Some(queue) = test_queue() {
        for step in steps["steps"].as_array_mut().unwrap() {
            step["queue"] = queue.clone().into();
        }
    }
    let workflow = app.http.post(app.url("/api/v1/workflows")).json(&steps).send().await.unwrap();
    assert_eq!(workflow.status(), 202);
    let workflow = workflow.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let view = app.get_json(&format!("/api/v1/workflows/{workflow}")).await;
    let first_step = view["steps"].as_array().unwrap().iter().find(|s| s["id"] == "a").unwrap();
    let first_step = first_step["tasks"][0].as_str().expect("the first step's task").to_string();

    let keys = [idempotency_key_of(&app, &raw).await, idempotency_key_of(&app, &cancelled).await];
    for id in [&flaky, &after_flaky, &raw, &cancelled, &after_cancelled, &expiring, &first_step] {
        let before = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        app.store_options_apart(id).await;
        let fields = app.record_fields(id).await;
        assert!(!fields.contains_key("options") && fields.contains_key("kind"), "{fields:?}");
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await, before, "{id} reads as before");
    }
    assert_eq!(app.record_fields(&flaky).await["max_attempts"], "2");

    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{cancelled}"))).send().await.unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    // Past both expiries.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _worker = app.worker(&["--concurrency", "4", "--retry-base", "100ms"]);

    let flaky_view = app.wait_until_done(&flaky).await;
    assert_eq!(
        (flaky_view["status"].as_str(), flaky_view["attempts"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    let next_view = app.wait_until_done(&after_flaky).await;
    assert_eq!(next_view["status"], "succeeded");
    assert!(next_view["started_at"].as_str() >= flaky_view["finished_at"].as_str(), "{next_view}");
    assert_eq!(app.wait_until_done(&raw).await["status"], "succeeded");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{raw}/result"))).send().await.unwrap();
    assert_eq!(result.headers()["content-type"], "application/octet-stream");
    assert_eq!(result.bytes().await.unwrap().as_ref(), [0xff, 0x00, 0xfe]);
    assert_eq!(app.wait_until_done(&cancelled).await["status"], "cancelled");
    assert_eq!(app.wait_until_done(&after_cancelled).await["status"], "succeeded");
    for id in [&expiring, &expiring_now] {
        let view = app.wait_until_done(id).await;
        assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("failed"), Some(0)), "{view}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = app.get_json(&format!("/api/v1/workflows/{workflow}")).await;
        if view["status"] != "running" {
            assert_eq!(view["status"], "succeeded", "{view}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the workflow moves on and ends: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The ended tasks' idempotency keys are kept as long as their records, no longer.
    let mut redis = app.redis().await;
    for key in &keys {
        let ttl: i64 = redis::AsyncCommands::pttl(&mut redis, key).await.unwrap();
        assert!(ttl > 0, "{key}: {ttl}");
    }

    // Requeued, an expired task runs: its expiry went with its earlier run, wherever it was kept.
    for id in [&expiring, &expiring_now] {
        let requeued =
            app.http.post(app.url(&format!("/api/v1/dead-letters/{id}/requeue"))).send().await.unwrap();
        assert_eq!(requeued.status(), 202);
        let view = app.wait_until_done(id).await;
        assert_eq!(
            (view["status"].as_str(), view["expires_at"].as_str()),
            (Some("succeeded"), None),
            "{view}"
        );
    }
    let options = app.record_options(&expiring_now).await;
    assert_eq!(options, [("max_attempts".to_string(), "5".to_string())].into(), "{options:?}");
    assert!(!app.record_fields(&expiring).await.contains_key("expires"));
}
