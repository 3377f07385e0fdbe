//! The million-task backlog: accepted, then drained completely, at a rate that does not fall as
//! the backlog grows. Ignored by default (it takes minutes); run it with
//! `cargo test --release -p courier --test backlog -- --ignored --nocapture`
//! (`BACKLOG=100000` for a smaller run). It prints the drain rate early and late.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use courier::{
    queue::{NewTask, Queue, QueueSettings},
    store::{DEFAULT_QUEUE, now_ms},
};
use futures::StreamExt;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes minutes: run with --ignored --release"]
async fn a_million_task_backlog_is_accepted_and_drained_at_a_steady_rate() {
    let total: usize = std::env::var("BACKLOG").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let redis = TestRedis::start().await;
    let prefix = unique_prefix();
    let client = courier::redis_client::open(&redis.redis.url(), false, None).unwrap();
    let conn = client.connect(Duration::from_secs(10)).await.unwrap();
    let settings = QueueSettings {
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(3600),
        dead_retention: Duration::from_secs(3600),
        payload_retention: Duration::from_secs(3600),
        events_maxlen: 100_000,
        durable: None,
    };
    let queue = Queue::new(client.clone(), conn, &prefix, DEFAULT_QUEUE, settings);
    queue.open_lanes(&["echo".to_string()]).await.unwrap();

    let started = Instant::now();
    futures::stream::iter(0..total)
        .map(|n| {
            let queue = queue.clone();
            async move {
                let task = NewTask {
                    id: uuid::Uuid::now_v7(),
                    created_ms: now_ms(),
                    queue: DEFAULT_QUEUE.into(),
                    kind: "echo".into(),
                    payload: format!("{{\"n\":{n}}}").into_bytes().into(),
                    payload_type: "application/json".into(),
                    max_attempts: 3,
                    timeout_ms: None,
                    delay_ms: None,
                    priority: Default::default(),
                    session: None,
                    subscription: None,
                    idempotency_key: None,
                    expires_ms: None,
                    shared_payload: None,
                    traceparent: None,
                    workflow: None,
                };
                queue.enqueue(&task).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let enqueue_s = started.elapsed().as_secs_f64();
    println!(
        "{{\"metric\": \"backlog_enqueue_jobs_per_s\", \"backlog\": {total}, \"value\": {:.0}}}",
        total as f64 / enqueue_s
    );
    assert_eq!(queue.depth().await.unwrap(), total as u64);

    let app = spawn_app_on(&redis.redis.url(), |c| {
        c.prefix = prefix.clone();
        c.concurrency = 64;
    })
    .await;
    let drain_started = Instant::now();
    let tenth = total / 10;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    loop {
        let left = queue.depth().await.unwrap();
        samples.push((drain_started.elapsed().as_secs_f64(), left));
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rate_between = |from_left: u64, to_left: u64| {
        let at = |left: u64| samples.iter().find(|(_, l)| *l <= left).map(|(t, _)| *t).unwrap();
        (from_left - to_left) as f64 / (at(to_left) - at(from_left)).max(0.001)
    };
    let total = total as u64;
    let early = rate_between(total - tenth as u64, total - 2 * tenth as u64);
    let late = rate_between(2 * tenth as u64, tenth as u64);
    println!(
        "{{\"metric\": \"backlog_drain_jobs_per_s_early\", \"backlog\": {total}, \"value\": {early:.0}}}"
    );
    println!("{{\"metric\": \"backlog_drain_jobs_per_s_late\", \"backlog\": {total}, \"value\": {late:.0}}}");
    println!(
        "{{\"metric\": \"backlog_drain_total_s\", \"backlog\": {total}, \"value\": {:.1}}}",
        drain_started.elapsed().as_secs_f64()
    );

    // Drained means done: the newest tasks succeeded, and nothing is pending or running.
    let page = app.get_json("/api/v1/tasks?limit=50").await;
    assert!(page["tasks"].as_array().unwrap().iter().all(|t| t["status"] == "succeeded"), "{page}");
    let running = app.get_json("/api/v1/tasks?status=running&limit=1").await;
    assert!(running["tasks"].as_array().unwrap().is_empty());
}
