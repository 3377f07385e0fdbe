//! Ordered sessions: one task at a time per session, in submission order, across workers.

use crate::support::*;
use serde_json::json;
use std::{collections::HashMap, time::Duration};

fn workers(app: &TestApp, count: usize) -> Vec<tokio::process::Child> {
    (0..count).map(|_| app.worker(&["--concurrency", "4", "--retry-base", "100ms"])).collect()
}

/// Where in the event sequence each task first ran and ended.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    started: usize,
    ended: usize,
}

#[tokio::test]
async fn tasks_of_a_session_run_one_at_a_time_in_order_across_three_workers() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut sessions: HashMap<&str, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    // Interleaved submissions: a, b, free, a, b, free, …
    for round in 0..5 {
        for session in ["a", "b"] {
            let id = app
                .submit_ok(json!({"kind": "sleep", "payload": {"ms": 150, "steps": 1}, "session": format!("s-{session}")}))
                .await;
            sessions.entry(session).or_default().push(id.clone());
            all.push(id);
        }
        all.push(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 50, "steps": 1}})).await);
        let _ = round;
    }
    // A failing task holds its session until it succeeds (c) or is a dead letter (d).
    let c_flaky = app
        .submit_ok(
            json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 3, "session": "s-c"}),
        )
        .await;
    let c_next = app.submit_ok(json!({"kind": "echo", "payload": "after c", "session": "s-c"})).await;
    let d_flaky = app
        .submit_ok(
            json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 2, "session": "s-d"}),
        )
        .await;
    let d_next = app.submit_ok(json!({"kind": "echo", "payload": "after d", "session": "s-d"})).await;
    all.extend([c_flaky.clone(), c_next.clone(), d_flaky.clone(), d_next.clone()]);

    let _workers = workers(&app, 3);
    let mut spans: HashMap<String, Span> = HashMap::new();
    let mut ended = 0;
    let mut index = 0;
    while ended < all.len() {
        let event = events.next_within(Duration::from_secs(30)).await.expect("every task ends");
        index += 1;
        let id = event.data["task_id"].as_str().unwrap().to_string();
        let span = spans.entry(id).or_insert(Span { started: usize::MAX, ended: usize::MAX });
        if event.name == "running" && span.started == usize::MAX {
            span.started = index;
        }
        if ["succeeded", "failed", "cancelled"].contains(&event.name.as_str()) {
            span.ended = index;
            ended += 1;
        }
    }

    for (session, ids) in &sessions {
        for pair in ids.windows(2) {
            let (before, after) = (spans[&pair[0]], spans[&pair[1]]);
            assert!(
                before.ended < after.started,
                "session {session}: {} must end before {} starts",
                pair[0],
                pair[1]
            );
        }
    }
    let overlaps = sessions["a"].iter().any(|a| {
        sessions["b"].iter().any(|b| spans[a].started < spans[b].ended && spans[b].started < spans[a].ended)
    });
    assert!(overlaps, "different sessions run in parallel");

    assert!(spans[&c_flaky].ended < spans[&c_next].started);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{c_flaky}")).await["attempts"], 2);
    assert!(spans[&d_flaky].ended < spans[&d_next].started);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{d_flaky}")).await["status"], "failed");
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{d_next}")).await["status"], "succeeded");
}

#[tokio::test]
async fn cancelling_a_waiting_session_task_lets_the_session_go_on() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let first = app.submit_ok(json!({"kind": "echo", "payload": 1, "session": "s"})).await;
    let second = app.submit_ok(json!({"kind": "echo", "payload": 2, "session": "s"})).await;
    let third = app.submit_ok(json!({"kind": "echo", "payload": 3, "session": "s"})).await;
    for id in [&first, &second] {
        let response = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let _workers = workers(&app, 1);
    assert_eq!(app.wait_until_done(&third).await["status"], "succeeded");
}

#[tokio::test]
async fn session_options_that_would_break_the_order_are_refused() {
    let app = spawn_app().await;
    let delayed = app.submit(json!({"kind": "echo", "payload": 1, "session": "s", "delay_ms": 10})).await;
    assert_problem(delayed, 422, "/problems/unsupported").await;
    let urgent = app.submit(json!({"kind": "echo", "payload": 1, "session": "s", "priority": "high"})).await;
    assert_problem(urgent, 422, "/problems/unsupported").await;
    let empty = app.submit(json!({"kind": "echo", "payload": 1, "session": ""})).await;
    assert_problem(empty, 422, "/problems/invalid-option").await;
}
