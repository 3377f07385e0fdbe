//! Priorities: a high task overtakes a normal backlog; low waits for normal.

use crate::support::*;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_high_priority_task_behind_ten_thousand_normal_ones_starts_next() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let submitted = futures::stream::iter(0..10_000)
        .map(|n| app.submit(json!({"kind": "echo", "payload": n})))
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(r.status() == 202))
        .count()
        .await;
    assert_eq!(submitted, 10_000);
    let low = app.submit_ok(json!({"kind": "echo", "payload": "low", "priority": "low"})).await;
    let high = app.submit_ok(json!({"kind": "echo", "payload": "high", "priority": "high"})).await;

    let mut events = app.sse("/api/v1/events", None).await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["worker", "--redis-url", &app.redis_url, "--prefix", &app.prefix, "--concurrency", "1"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut started = Vec::new();
    while started.len() < 3 {
        let event = events.next_within(Duration::from_secs(20)).await.expect("tasks start");
        if event.name == "running" {
            started.push(event.data["task_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(started[0], high);
    assert!(!started.contains(&low), "low waits for the normal backlog");
    worker.kill().await.unwrap();
}
