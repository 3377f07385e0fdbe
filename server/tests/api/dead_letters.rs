//! Retries, timeouts, the dead-letter queue, delays and cancellation, end to end.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

fn ms_of(rfc3339: &serde_json::Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test]
async fn attempts_back_off_exponentially_then_the_task_is_a_dead_letter_that_can_be_requeued() {
    let app = spawn_app_with(|c| c.retry_base = Duration::from_millis(500)).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let id = app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 3})).await;
    let seen = events.until_task_ends(&id, Duration::from_secs(20)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["queued", "running", "retrying", "running", "retrying", "running", "failed"]);

    // Each retry waits base × 2^(attempt-1) (±10 % jitter) after the failure: within ±20 %.
    for (retrying, expected_ms) in [(2, 500.0), (4, 1000.0)] {
        let gap = (ms_of(&seen[retrying + 1].data["at"]) - ms_of(&seen[retrying].data["at"])) as f64;
        assert!(
            (expected_ms * 0.8..=expected_ms * 1.2).contains(&gap),
            "gap {gap} ms, expected ~{expected_ms}"
        );
    }

    let page = app.get_json("/api/v1/dead-letters").await;
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["task"]["id"], id.as_str());
    assert_eq!(letters[0]["task"]["attempts"], 3);
    assert_eq!(letters[0]["reason"], "attempts_exhausted");
    assert!(letters[0]["task"]["error"].as_str().unwrap().contains("attempt 3 of 3"));
    // Its last end dropped the retry's next run, and nothing it ran left an empty field.
    let fields = app.record_fields(&id).await;
    assert!(!fields.contains_key("next_run") && !fields.contains_key("lease"), "{fields:?}");
    assert!(fields.values().all(|v| !v.is_empty()), "{fields:?}");

    let requeued =
        app.http.post(app.url(&format!("/api/v1/dead-letters/{id}/requeue"))).send().await.unwrap();
    assert_eq!(requeued.status(), 202);
    let view: serde_json::Value = requeued.json().await.unwrap();
    // A worker may have taken it already; either way the count started over.
    assert_eq!(view["id"], id.as_str());
    assert!(view["attempts"].as_u64() <= Some(1), "{view}");
    let again = events.until_task_ends(&id, Duration::from_secs(20)).await;
    assert_eq!(again[0].name, "queued");
    assert_eq!(again[1].name, "running");
    assert_eq!(again[1].data["attempt"], 1);
    assert_eq!(again.last().unwrap().name, "failed");
    assert_eq!(app.get_json("/api/v1/dead-letters").await["dead_letters"].as_array().unwrap().len(), 1);

    let deleted = app.http.delete(app.url(&format!("/api/v1/dead-letters/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = app.http.get(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_problem(gone, 404, "/problems/not-found").await;
    let twice = app.http.delete(app.url(&format!("/api/v1/dead-letters/{id}"))).send().await.unwrap();
    assert_problem(twice, 404, "/problems/not-found").await;
    assert!(app.get_json("/api/v1/dead-letters").await["dead_letters"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_non_retryable_error_goes_straight_to_the_dead_letters() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/api/v1/tasks?kind=text.stats&max_attempts=5"))
        .header("content-type", "text/plain")
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let done = app.wait_until_done(&id).await;
    assert_eq!((done["status"].as_str(), done["attempts"].as_u64()), (Some("failed"), Some(1)));
    let letters = app.get_json("/api/v1/dead-letters").await;
    assert_eq!(letters["dead_letters"][0]["reason"], "non_retryable");
}

#[tokio::test]
async fn an_attempt_over_its_timeout_is_stopped_and_counts_as_failed() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"kind": "sleep", "payload": {"ms": 30000, "steps": 300}, "timeout_ms": 300, "max_attempts": 2}))
        .await;
    let done = app.wait_until_done(&id).await;
    assert_eq!((done["status"].as_str(), done["attempts"].as_u64()), (Some("failed"), Some(2)));
    assert!(done["error"].as_str().unwrap().contains("timed out after 300 ms"), "{done}");
    let letters = app.get_json("/api/v1/dead-letters").await;
    assert_eq!(letters["dead_letters"][0]["reason"], "timeout");
}

#[tokio::test]
async fn bulk_requeue_takes_every_dead_letter_of_a_kind() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})).await,
        );
    }
    for id in &ids {
        assert_eq!(app.wait_until_done(id).await["status"], "failed");
    }
    let none = app.http.post(app.url("/api/v1/dead-letters/requeue?kind=echo")).send().await.unwrap();
    assert_eq!(none.json::<serde_json::Value>().await.unwrap(), json!({"requeued": 0}));
    let all = app.http.post(app.url("/api/v1/dead-letters/requeue?kind=flaky")).send().await.unwrap();
    assert_eq!(all.status(), 202);
    assert_eq!(all.json::<serde_json::Value>().await.unwrap(), json!({"requeued": 3}));
    for id in &ids {
        assert_eq!(app.wait_until_done(id).await["status"], "failed");
    }
}

#[tokio::test]
async fn a_delayed_task_starts_on_time() {
    let app = spawn_app().await;
    let mut events = app.sse("/api/v1/events", None).await;
    let response = app.submit(json!({"kind": "echo", "payload": 1, "delay_ms": 700})).await;
    assert_eq!(response.status(), 202);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["status"], "scheduled");
    let id = view["id"].as_str().unwrap();
    let seen = events.until_task_ends(id, Duration::from_secs(10)).await;
    assert_eq!(seen[0].name, "scheduled");
    let late = ms_of(&seen[1].data["at"]) - ms_of(&view["created_at"]) - 700;
    assert!((0..=100).contains(&late), "started {late} ms after its due time");
}

#[tokio::test]
async fn a_running_task_stops_within_a_step_when_cancelled() {
    let app = spawn_app().await;
    let mut events = app.sse("/api/v1/events", None).await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 60000, "steps": 600}})).await;
    loop {
        let event = events.next_within(Duration::from_secs(10)).await.expect("the task starts");
        if event.data["task_id"] == id.as_str() && event.name == "progress" {
            break;
        }
    }
    let response = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let started = std::time::Instant::now();
    let seen = events.until_task_ends(&id, Duration::from_secs(5)).await;
    assert_eq!(seen.last().unwrap().name, "cancelled");
    // The lease is renewed (and the cancel flag read) every second at most, plus one step.
    assert!(started.elapsed() < Duration::from_secs(3));
    let finished = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_problem(finished, 409, "/problems/finished").await;
}

#[tokio::test]
async fn a_kind_default_timeout_applies_unless_the_task_sets_its_own() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let default = app.submit_ok(json!({"kind": "csv.summary", "payload": "a\n1"})).await;
    let own = app.submit_ok(json!({"kind": "csv.summary", "payload": "a\n1", "timeout_ms": 1234})).await;
    let none = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let mut timeouts = Vec::new();
    for id in [&default, &own, &none] {
        timeouts.push(app.record_values(id).await.remove("timeout_ms").unwrap_or_default());
    }
    assert_eq!(timeouts, ["600000", "1234", ""]);
}

#[tokio::test]
async fn a_task_is_gone_after_its_retention() {
    let app = spawn_app_with(|c| c.retention = Duration::from_secs(1)).await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": "short-lived"})).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    let status = app.http.get(app.url(&format!("/api/v1/tasks/{id}/status"))).send().await.unwrap();
    let expires = status.headers()["expires"].to_str().unwrap().to_string();
    assert!(expires.ends_with(" GMT"), "{expires}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for path in ["", "/status", "/result"] {
        let gone = app.http.get(app.url(&format!("/api/v1/tasks/{id}{path}"))).send().await.unwrap();
        assert_problem(gone, 404, "/problems/not-found").await;
    }
    let mut redis = app.redis().await;
    let left: Vec<String> =
        redis::AsyncCommands::keys(&mut redis, format!("{}:*{id}*", app.prefix)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}
