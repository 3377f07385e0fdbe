//! Messaging patterns: async request-reply headers, idempotency, request-reply with a wait,
//! and events across server instances.

use crate::support::*;
use futures::StreamExt;
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn retry_after_grows_with_the_queue_ahead() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let first = app.submit(json!({"kind": "echo", "payload": 0})).await;
    assert_eq!(first.headers()["retry-after"], "1");
    futures::stream::iter(0..299)
        .map(|n| app.submit(json!({"kind": "echo", "payload": n})))
        .buffer_unordered(16)
        .count()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 300 waiting and nothing finishing lately: 1 + 300 / 100.
    let later = app.submit(json!({"kind": "echo", "payload": "x"})).await;
    assert_eq!(later.headers()["retry-after"], "4");
    let id = later.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let status = app.http.get(app.url(&format!("/api/v1/tasks/{id}/status"))).send().await.unwrap();
    assert_eq!(status.headers()["retry-after"], "4");
    // DELETE on the status monitor cancels, and the monitor then reports it with an Expires.
    let cancelled = app.http.delete(app.url(&format!("/api/v1/tasks/{id}/status"))).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    let status = app.http.get(app.url(&format!("/api/v1/tasks/{id}/status"))).send().await.unwrap();
    assert!(status.headers().contains_key("expires"));
    assert!(!status.headers().contains_key("retry-after"));
    let body: serde_json::Value = status.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["type"], "/problems/cancelled");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_give_the_same_task_even_when_fifty_race() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let body = json!({"kind": "echo", "payload": {"order": 42}});
    let post = |key: &'static str, body: serde_json::Value| {
        app.http
            .post(app.url("/api/v1/tasks"))
            .header("idempotency-key", key)
            .json(&in_test_queue(body))
            .send()
    };
    let responses: Vec<reqwest::Response> =
        futures::future::join_all((0..50).map(|_| post("order-42", body.clone())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for response in responses {
        assert_eq!(response.status(), 202);
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        fresh += usize::from(!replayed);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/api/v1/tasks/{id}/status"));
        ids.insert(id);
    }
    assert_eq!((ids.len(), fresh), (1, 1), "one task, created once");
    let queued = app.ready_len().await;
    assert_eq!(queued, 1, "enqueued once");

    let other = post("order-42", json!({"kind": "echo", "payload": {"order": 43}})).await.unwrap();
    assert_problem(other, 422, "/problems/idempotency-key-reused").await;
    let fresh_key = post("order-43", body.clone()).await.unwrap();
    assert!(fresh_key.headers().get("idempotent-replayed").is_none());
    let queued = app.ready_len().await;
    assert_eq!(queued, 2);
}

#[tokio::test]
async fn prefer_wait_answers_with_the_result_from_a_worker_in_another_process() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let _worker = app.worker(&["--concurrency", "4"]);
    let reply = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("prefer", "wait=10")
        .json(&json!({"kind": "text.stats", "payload": "request reply"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["preference-applied"], "wait=10");
    assert_eq!(reply.headers()["content-type"], "application/json");
    let stats: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(stats["words"], 2);

    let failed = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("prefer", "wait=10")
        .json(&json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.headers()["preference-applied"], "wait=10");
    assert_problem(failed, 422, "/problems/task-failed").await;

    let slow = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("prefer", "wait=1")
        .json(&json!({"kind": "sleep", "payload": {"ms": 5000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 202, "too slow for the wait: the usual 202");
    assert!(slow.headers().get("preference-applied").is_none());
    assert!(slow.headers().contains_key("location"));
}

#[tokio::test]
async fn every_instance_streams_every_event_and_resumes_from_either() {
    let a = spawn_app_with(|c| c.concurrency = 0).await;
    let b = spawn_app_on(&a.redis_url, |c| {
        c.prefix = a.prefix.clone();
        c.concurrency = 0;
    })
    .await;
    let _worker = a.worker(&["--concurrency", "4"]);
    let mut on_b = b.sse("/api/v1/events", None).await;
    let id = a.submit_ok(json!({"kind": "sleep", "payload": {"ms": 300, "steps": 3}})).await;
    let seen = on_b.until_task_ends(&id, Duration::from_secs(20)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["queued", "running", "progress", "progress", "progress", "succeeded"], "{seen:?}");

    // A client that saw two events reconnects to the other instance, and to the first.
    let ids = |events: &[SseEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    for app in [&a, &b] {
        let mut resumed = app.sse("/api/v1/events", Some(&seen[1].id)).await;
        let replayed = resumed.until_task_ends(&id, Duration::from_secs(10)).await;
        assert_eq!(ids(&replayed), ids(&seen[2..]));
    }
}

#[tokio::test]
async fn an_idempotency_key_lives_and_dies_with_its_task() {
    let app = spawn_app().await;
    let body = in_test_queue(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1}));
    let post =
        || app.http.post(app.url("/api/v1/tasks")).header("idempotency-key", "doomed").json(&body).send();
    let first = post().await.unwrap();
    let id = first.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_until_done(&id).await["status"], "failed");

    // A dead letter is kept for the dead-letter retention (7 days), and so is its key.
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis.keys(format!("{}:*:idem:*", app.prefix)).await.unwrap();
    assert_eq!(keys.len(), 1);
    let task_ttl: i64 =
        redis::cmd("PTTL").arg(app.key(&format!("task:{id}"))).query_async(&mut redis).await.unwrap();
    let key_ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut redis).await.unwrap();
    assert!(
        key_ttl > 24 * 3_600_000 && (task_ttl - key_ttl).abs() < 60_000,
        "task {task_ttl} ms, key {key_ttl} ms"
    );
    let replay = post().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    // Deleted with the task: the same key then makes a new task.
    let deleted = app.http.delete(app.url(&format!("/api/v1/dead-letters/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let left: Vec<String> = redis.keys(format!("{}:*:idem:*", app.prefix)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let fresh = post().await.unwrap();
    assert!(fresh.headers().get("idempotent-replayed").is_none());
    assert_ne!(fresh.json::<serde_json::Value>().await.unwrap()["id"], id.as_str());
}
