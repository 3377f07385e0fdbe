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
    let mut worker = app.worker(&["--concurrency", "1"]);
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

#[tokio::test]
async fn a_busy_worker_takes_a_new_high_priority_task_before_any_other() {
    // Under load a worker takes its next tasks in the round that records the last ones; that
    // path must read the most urgent stream first too.
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    // 2,000 tasks of 10 ms on 4 slots: the backlog lasts about five seconds.
    let submitted = futures::stream::iter(0..2_000)
        .map(|_| app.submit(json!({"kind": "sleep", "payload": {"ms": 10, "steps": 1}})))
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(r.status() == 202))
        .count()
        .await;
    assert_eq!(submitted, 2_000);

    let mut events = app.sse("/api/v1/events", None).await;
    let _worker = app.worker(&["--concurrency", "4"]);
    let mut succeeded = 0;
    while succeeded < 40 {
        let event = events.next_within(Duration::from_secs(20)).await.expect("tasks run");
        succeeded += usize::from(event.name == "succeeded");
    }
    let high = app.submit_ok(json!({"kind": "echo", "payload": "high", "priority": "high"})).await;

    // The events stream orders every start: once the high task is queued, it starts in the
    // worker's next round. A round reads its entries a round trip before it starts them
    // (docs/benchmark-notes.md, "Thirteenth step"), so the one in flight may still start the
    // normal tasks it read before the high one was queued: at most a slot's worth each.
    let mut queued = false;
    let mut normal_after = 0;
    loop {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the high task starts");
        let task = event.data["task_id"].as_str().unwrap_or_default();
        match event.name.as_str() {
            "queued" if task == high => queued = true,
            "running" if queued && task == high => break,
            "running" if queued => {
                normal_after += 1;
                assert!(
                    normal_after <= 4,
                    "{normal_after} normal tasks started after the high one was queued"
                );
            }
            _ => {}
        }
    }
    // …while the normal backlog was still being drained.
    loop {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the backlog goes on");
        if event.name == "running" {
            assert_ne!(event.data["task_id"].as_str(), Some(high.as_str()));
            break;
        }
    }
}
