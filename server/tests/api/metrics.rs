//! `GET /metrics`: what a queue's tasks did shows in its counters, histograms and gauges, the
//! text passes `promtool check metrics`, and with access control on only a `read` token of every
//! queue may scrape it.
//!
//! The recorder is one per process, shared by every server this test binary starts: each test
//! looks only at the series of a queue of its own.

use crate::support::*;
use courier::auth::Scope;
use serde_json::json;
use std::{process::Stdio, time::Duration};
use tokio::io::AsyncWriteExt;

/// A queue name no other test uses.
fn own_queue(app: &TestApp) -> String {
    format!("metrics-{}", app.prefix)
}

/// `GET /metrics`, with `token` as a bearer token if given.
async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let request = app.http.get(app.url("/metrics"));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

/// The scraped text once `ready` holds of it (attempts are counted just after their end is
/// stored, so a scrape may come a moment before).
async fn scrape_until(app: &TestApp, ready: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        let response = scrape(app, None).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"),
            "{:?}",
            response.headers()["content-type"]
        );
        text = response.text().await.unwrap();
        if ready(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never showed what was expected:\n{text}");
}

/// Runs `promtool check metrics` on `text` and returns whether it passed, with what it said.
async fn promtool_check(text: &str) -> (bool, String) {
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's `prometheus` package; scripts/setup.sh installs it)");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().await.unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[tokio::test]
async fn a_queues_tasks_show_in_its_counters_histograms_and_gauges_and_promtool_accepts_the_text() {
    let app = spawn_app().await;
    let queue = own_queue(&app);
    let ids = [
        app.submit_ok(json!({"kind": "echo", "payload": {"n": 1}, "queue": queue})).await,
        app.submit_ok(json!({"kind": "echo", "payload": {"n": 2}, "queue": queue})).await,
        // Fails once, then succeeds: one retried attempt, one succeeded.
        app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "queue": queue})).await,
        // Fails its only attempt: a dead letter.
        app.submit_ok(
            json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1, "queue": queue}),
        )
        .await,
    ];
    for id in &ids {
        app.wait_until_done(id).await;
    }
    // Refused: counted under the same route, by its own status.
    let refused = app.http.post(app.url("/api/v1/tasks")).json(&json!({"kind": ""})).send().await.unwrap();
    let refused = refused.status().as_u16().to_string();
    assert!(refused.starts_with('4'), "{refused}");
    let q = queue.as_str();
    let finished = |text: &str, kind: &str, outcome: &str| {
        sample(text, "courier_tasks_finished_total", &[("queue", q), ("kind", kind), ("outcome", outcome)])
    };
    let text = scrape_until(&app, |text| {
        finished(text, "echo", "succeeded") == Some(2.0)
            && finished(text, "flaky", "succeeded") == Some(1.0)
            && finished(text, "flaky", "failed") == Some(1.0)
    })
    .await;

    let submitted = |kind| sample(&text, "courier_tasks_submitted_total", &[("queue", q), ("kind", kind)]);
    assert_eq!(submitted("echo"), Some(2.0));
    assert_eq!(submitted("flaky"), Some(2.0));
    assert_eq!(finished(&text, "flaky", "retried"), Some(1.0));
    assert_eq!(finished(&text, "echo", "failed"), None);
    // Five attempts ran and waited; rendered as histograms (buckets), not summaries.
    assert!(text.contains("# TYPE courier_task_run_seconds histogram"), "{text}");
    assert_eq!(sample(&text, "courier_task_run_seconds_count", &[("queue", q)]), Some(5.0));
    assert_eq!(sample(&text, "courier_task_run_seconds_bucket", &[("queue", q), ("le", "+Inf")]), Some(5.0));
    assert_eq!(sample(&text, "courier_task_wait_seconds_count", &[("queue", q)]), Some(5.0));
    // The gauges, read from Redis by the scrape.
    assert_eq!(sample(&text, "courier_queue_tasks", &[("queue", q), ("state", "dead")]), Some(1.0));
    assert_eq!(sample(&text, "courier_queue_tasks", &[("queue", q), ("state", "queued")]), Some(0.0));
    assert_eq!(sample(&text, "courier_queue_oldest_waiting_seconds", &[("queue", q)]), Some(0.0));
    assert!(sample(&text, "courier_sse_clients", &[]).is_some(), "{text}");
    // Requests by route template: the four submissions at least (other tests share the recorder).
    let submissions = &[("route", "/api/v1/tasks"), ("status", "202")];
    assert!(sample(&text, "courier_http_requests_total", submissions).is_some_and(|n| n >= 4.0), "{text}");
    let refusals = &[("route", "/api/v1/tasks"), ("status", refused.as_str())];
    assert!(sample(&text, "courier_http_requests_total", refusals).is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        sample(&text, "courier_http_request_duration_seconds_count", &[("route", "/api/v1/tasks")]).is_some()
    );
    // Never the raw path: a task's own URL is counted under its template.
    assert!(!text.contains(&format!("route=\"/api/v1/tasks/{}", ids[0])), "{text}");
    assert!(
        sample(&text, "courier_http_requests_total", &[("route", "/api/v1/tasks/{id}/events")]).is_some()
    );

    let (passed, said) = promtool_check(&text).await;
    assert!(passed, "promtool check metrics failed:\n{said}\n---\n{text}");
}

#[tokio::test]
async fn attempts_ended_over_the_pull_api_are_counted_by_outcome() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let queue = own_queue(&app);
    for n in 0..2 {
        app.submit_ok(json!({"kind": "echo", "payload": {"n": n}, "queue": queue})).await;
    }
    let response = app
        .http
        .post(app.url(&format!("/api/v1/queues/{queue}/leases")))
        .json(&json!({"worker": "test", "max": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let tokens: Vec<&str> =
        body["leases"].as_array().unwrap().iter().map(|l| l["token"].as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 2);
    let on = |token: &str, action: &str| app.http.post(app.url(&format!("/api/v1/leases/{token}/{action}")));
    assert_eq!(on(tokens[0], "complete").body("done").send().await.unwrap().status(), 204);
    let failure = json!({"error": "no", "retryable": false});
    assert_eq!(on(tokens[1], "fail").json(&failure).send().await.unwrap().status(), 204);

    let text = scrape(&app, None).await.text().await.unwrap();
    let q = queue.as_str();
    let finished = |outcome| {
        sample(&text, "courier_tasks_finished_total", &[("queue", q), ("kind", "echo"), ("outcome", outcome)])
    };
    assert_eq!(finished("succeeded"), Some(1.0));
    assert_eq!(finished("failed"), Some(1.0));
    assert_eq!(sample(&text, "courier_task_wait_seconds_count", &[("queue", q)]), Some(2.0));
    // The pull worker's run time is its own: only built-in workers time their attempts.
    assert_eq!(sample(&text, "courier_task_run_seconds_count", &[("queue", q)]), None);
}

#[tokio::test]
async fn with_access_control_on_only_a_read_token_of_every_queue_may_scrape() {
    let app = spawn_app().await;
    assert_eq!(scrape(&app, None).await.status(), 200, "open while access control is off");
    let every = app.make_token("scraper", &[Scope::Read], &["*"], None).await;
    let one_queue = app.make_token("billing-reader", &[Scope::Read], &["billing"], None).await;
    let no_read = app.make_token("submitter", &[Scope::Submit], &["*"], None).await;

    let anonymous = scrape(&app, None).await;
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_problem(anonymous, 401, "/problems/unauthorized").await;
    assert_problem(scrape(&app, Some("cour_not-a-token")).await, 401, "/problems/unauthorized").await;
    assert_problem(scrape(&app, Some(&one_queue)).await, 403, "/problems/forbidden").await;
    assert_problem(scrape(&app, Some(&no_read)).await, 403, "/problems/forbidden").await;
    let allowed = scrape(&app, Some(&every)).await;
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("# TYPE courier_http_requests_total counter"));
}
