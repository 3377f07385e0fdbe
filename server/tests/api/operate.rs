//! What an operator reads: `GET /api/v1/stats` (the same on every instance), a task's attempts,
//! the worker registry (`GET /api/v1/workers`, built-in and pulling workers, real `courier
//! worker` processes that stop or die), a worker's `--metrics-addr`, and the live stats feed.

use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The queue the test's tasks are in.
fn queue() -> String {
    test_queue().unwrap_or_else(|| "default".into())
}

/// The succeeded and failed tasks a throughput series counts.
fn totals(series: &Value) -> (u64, u64) {
    series.as_array().unwrap().iter().fold((0, 0), |(s, f), point| {
        (s + point["succeeded"].as_u64().unwrap(), f + point["failed"].as_u64().unwrap())
    })
}

/// `GET /api/v1/stats` until `ready` holds of it (a process writes its ends' counts together, a
/// moment after it stores them: `stats::Tally`).
async fn stats_until(app: &TestApp, ready: impl Fn(&Value) -> bool) -> Value {
    let mut stats = Value::Null;
    for _ in 0..100 {
        stats = app.get_json("/api/v1/stats").await;
        if ready(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stats never got there: {stats:#}");
}

#[tokio::test]
async fn stats_count_what_ended_per_second_minute_and_hour_and_every_instance_reads_the_same() {
    let app = spawn_app().await;
    let prefix = app.prefix.clone();
    let other = spawn_app_on(&app.redis_url, |c| {
        c.prefix = prefix;
        c.concurrency = 0;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_ok(json!({"kind": "echo", "payload": {"n": i}})).await);
    }
    for _ in 0..2 {
        ids.push(
            app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})).await,
        );
    }
    for id in &ids {
        app.wait_until_done(id).await;
    }
    let stats = stats_until(&app, |s| totals(&s["throughput"]["second"]) == (5, 2)).await;
    // Every span counts the same tasks, in buckets of its own, every bucket present.
    for (span, buckets) in [("second", 900), ("minute", 1440), ("hour", 720)] {
        let series = &stats["throughput"][span];
        assert_eq!(series.as_array().unwrap().len(), buckets, "{span}");
        assert_eq!(totals(series), (5, 2), "{span}");
        let times: Vec<&str> = series.as_array().unwrap().iter().map(|p| p["at"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{span}: oldest first");
    }
    // Seven attempts ran: each waited and ran, and the percentiles are in order.
    for measure in ["wait", "run"] {
        let p = &stats["latency_ms"][measure];
        assert_eq!(p["count"], 7, "{measure}: {p}");
        let (p50, p95, p99) =
            (p["p50"].as_u64().unwrap(), p["p95"].as_u64().unwrap(), p["p99"].as_u64().unwrap());
        assert!(p50 <= p95 && p95 <= p99 && p99 < 60_000, "{measure}: {p}");
    }
    let mine = stats["queues"].as_array().unwrap().iter().find(|q| q["queue"] == queue().as_str()).unwrap();
    assert_eq!(mine["counts"]["dead"], 2, "{mine}");
    assert_eq!(mine["counts"]["queued"], 0, "{mine}");
    let kinds: Vec<&str> =
        mine["kinds"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"echo") && kinds.contains(&"flaky"), "{mine}");
    // Another instance on the same Redis draws the same numbers (read within the same second:
    // the windows move on with the clock).
    let newest = |s: &Value| s["throughput"]["second"].as_array().unwrap().last().unwrap()["at"].clone();
    let (here, there) = loop {
        let here = app.get_json("/api/v1/stats").await;
        let there = other.get_json("/api/v1/stats").await;
        if newest(&here) == newest(&there) {
            break (here, there);
        }
    };
    assert_eq!(there["throughput"], here["throughput"]);
    assert_eq!(there["latency_ms"], here["latency_ms"]);
    assert_eq!(here["latency_ms"], stats["latency_ms"]);
    // Only the spans asked for; a span that is none is a 422.
    let seconds = app.get_json("/api/v1/stats?spans=second").await;
    assert_eq!(seconds["throughput"]["second"].as_array().unwrap().len(), 900);
    assert_eq!(seconds["throughput"]["hour"], json!([]));
    let response = app.http.get(app.url("/api/v1/stats?spans=week")).send().await.unwrap();
    assert_problem(response, 422, "/problems/invalid-query").await;
}

#[tokio::test]
async fn a_tasks_attempts_tell_each_try_with_its_worker_outcome_and_error() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 2}, "max_attempts": 5})).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    let attempts = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await["attempts"].clone();
    let attempts = attempts.as_array().unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retried", "retried", "succeeded"], "{attempts:#?}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert!(attempt["worker"].as_str().unwrap().starts_with("worker-"), "{attempt}");
        assert!(
            attempt["started_at"].as_str().unwrap() <= attempt["ended_at"].as_str().unwrap(),
            "{attempt}"
        );
    }
    assert!(attempts[0]["error"].as_str().unwrap().contains("attempt 1"), "{}", attempts[0]);
    assert_eq!(attempts[2]["error"], Value::Null);
    // A running attempt shows as running, with no end yet.
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 2000, "steps": 2}})).await;
    let mut running = Value::Null;
    for _ in 0..100 {
        running = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
        if running["attempts"].as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running["attempts"][0]["outcome"], "running", "{running}");
    assert_eq!(running["attempts"][0]["ended_at"], Value::Null, "{running}");
    let unknown =
        app.http.get(app.url(&format!("/api/v1/tasks/{}/attempts", uuid::Uuid::now_v7()))).send().await;
    assert_problem(unknown.unwrap(), 404, "/problems/not-found").await;
}

/// `GET /api/v1/workers` until `ready` holds of its list.
async fn workers_until(app: &TestApp, limit: Duration, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let workers = app.get_json("/api/v1/workers").await["workers"].as_array().unwrap().clone();
        if ready(&workers) {
            return workers;
        }
        assert!(started.elapsed() < limit, "the workers never got there: {workers:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_registry_lists_built_in_and_pulling_workers_with_the_tasks_they_run() {
    let app = spawn_app().await;
    // The app's own worker, as soon as it has announced itself.
    let workers = workers_until(&app, Duration::from_secs(5), |w| w.len() == 1).await;
    let own = &workers[0];
    assert_eq!(own["runs"], "built-in");
    assert_eq!(own["pid"], std::process::id());
    assert_eq!(own["slots"], 4);
    assert_eq!(own["queues"], json!(["*"]));
    assert_eq!(own["version"], env!("CARGO_PKG_VERSION"));
    assert!(own["host"].as_str().is_some_and(|h| !h.is_empty()), "{own}");
    // A task it runs shows under it while it runs, and is gone once it ended.
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 3}})).await;
    let workers =
        workers_until(&app, Duration::from_secs(5), |w| w[0]["running"].as_array().unwrap().len() == 1).await;
    assert_eq!(workers[0]["running"][0]["task_id"], id.as_str());
    assert_eq!(workers[0]["running"][0]["kind"], "sleep");
    app.wait_until_done(&id).await;
    workers_until(&app, Duration::from_secs(5), |w| w[0]["running"].as_array().unwrap().is_empty()).await;

    // A pulling worker is one as soon as it asks, even when there is nothing to lease.
    let body = json!({"worker": "py-7", "host": "box-1", "pid": 4242, "version": "0.3", "max": 5});
    let url = app.url(&format!("/api/v1/queues/{}/leases", queue()));
    let response = app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let workers = workers_until(&app, Duration::from_secs(5), |w| w.iter().any(|w| w["id"] == "py-7")).await;
    let py = workers.iter().find(|w| w["id"] == "py-7").unwrap();
    assert_eq!(
        (py["runs"].as_str(), py["host"].as_str(), py["pid"].as_u64()),
        (Some("pull"), Some("box-1"), Some(4242))
    );
    assert_eq!(py["queues"], json!([queue()]));
    assert_eq!(py["slots"], 5);
    // A bad self-description is refused like any bad lease request.
    let long_host = json!({"worker": "w", "host": "h".repeat(256)});
    let response = app.http.post(&url).json(&long_host).send().await.unwrap();
    assert_problem(response, 422, "/problems/invalid-lease-request").await;
}

#[tokio::test]
async fn a_pulling_workers_lease_shows_under_it_until_it_completes() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": {"n": 1}})).await;
    let url = app.url(&format!("/api/v1/queues/{}/leases", queue()));
    let leases: Value =
        app.http.post(&url).json(&json!({"worker": "go-1"})).send().await.unwrap().json().await.unwrap();
    let token = leases["leases"][0]["token"].as_str().unwrap().to_string();
    let workers = workers_until(&app, Duration::from_secs(5), |w| w.len() == 1).await;
    assert_eq!(workers[0]["id"], "go-1");
    assert_eq!(workers[0]["running"][0]["task_id"], id.as_str(), "{workers:#?}");
    // The attempt names it too.
    let attempts = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
    assert_eq!(attempts["attempts"][0]["worker"], "go-1", "{attempts}");
    let done =
        app.http.post(app.url(&format!("/api/v1/leases/{token}/complete"))).json(&json!({"ok": 1})).send();
    assert_eq!(done.await.unwrap().status(), 204);
    let workers = app.get_json("/api/v1/workers").await;
    assert_eq!(workers["workers"][0]["running"], json!([]), "{workers}");
    let attempts = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
    assert_eq!(attempts["attempts"][0]["outcome"], "succeeded", "{attempts}");
}

/// A free local port, for a process told to listen on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_worker_process_serves_its_probes_and_leaves_the_registry_when_it_stops_or_dies() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut stopping = app.worker(&["--concurrency", "2", "--metrics-addr", &addr]);
    let mut dying = app.worker(&["--concurrency", "3", "--lease", "1s"]);
    let pids = [stopping.id().unwrap(), dying.id().unwrap()];
    let workers = workers_until(&app, Duration::from_secs(20), |w| w.len() == 2).await;
    for worker in &workers {
        assert!(pids.contains(&(worker["pid"].as_u64().unwrap() as u32)), "{worker}");
    }
    // Killed: its entry outlives it by two of its lease periods at most (2 s here).
    dying.start_kill().unwrap();
    dying.wait().await.unwrap();
    let killed = Instant::now();
    workers_until(&app, Duration::from_secs(6), |w| w.len() == 1).await;
    let gone_after = killed.elapsed();
    assert!(
        gone_after > Duration::from_millis(300),
        "a killed worker says nothing: it expires ({gone_after:?})"
    );
    // Its probes: alive, ready, and its own counters once it ran a task (the only worker left).
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("http://{addr}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("http://{addr}/readyz")).send().await.unwrap().status(), 200);
    let id = app.submit_ok(json!({"kind": "echo", "payload": {"n": 2}})).await;
    app.wait_until_done(&id).await;
    let response = http.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let metrics = response.text().await.unwrap();
    let q = queue();
    let labels = [("queue", q.as_str()), ("kind", "echo"), ("outcome", "succeeded")];
    let finished = sample(&metrics, "courier_tasks_finished_total", &labels);
    assert_eq!(finished, Some(1.0), "{metrics}");
    // Stopped gracefully: it takes itself off at once.
    let pid = stopping.id().unwrap();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    stopping.wait().await.unwrap();
    let workers = app.get_json("/api/v1/workers").await;
    assert_eq!(workers["workers"], json!([]), "{workers}");
}

#[tokio::test]
async fn the_live_feed_pushes_stats_every_second_as_tasks_end() {
    let app = spawn_app().await;
    let mut feed = app.sse("/api/v1/stats/events", None).await;
    let first = feed.next_within(Duration::from_secs(5)).await.expect("a first stats event at once");
    assert_eq!(first.name, "stats");
    assert_eq!(first.data["throughput"]["second"].as_array().unwrap().len(), 900);
    assert_eq!(first.data["throughput"]["minute"], json!([]), "the live feed carries the seconds only");
    let before = totals(&first.data["throughput"]["second"]).0;
    let id = app.submit_ok(json!({"kind": "echo", "payload": {"live": true}})).await;
    app.wait_until_done(&id).await;
    // Within a few events, the task that ended shows.
    for _ in 0..10 {
        let event = feed.next_within(Duration::from_secs(3)).await.expect("an event every second");
        if totals(&event.data["throughput"]["second"]).0 == before + 1 {
            return;
        }
    }
    panic!("the feed never counted the task that ended");
}

#[tokio::test]
async fn stats_and_workers_show_a_token_only_the_queues_it_reaches() {
    use courier::auth::Scope;
    let app = spawn_app().await;
    let everything = app.make_token("ops", &[Scope::Read, Scope::Submit], &["*"], None).await;
    let billing = app.make_token("billing", &[Scope::Read], &["billing"], None).await;
    for queue in ["billing", "reports"] {
        let body = json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 3}, "queue": queue});
        let response = app.http.post(app.url("/api/v1/tasks")).bearer_auth(&everything).json(&body).send();
        assert_eq!(response.await.unwrap().status(), 202);
    }
    let get = |path: &'static str, token: String| {
        let request = app.http.get(app.url(path)).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let stats = get("/api/v1/stats", billing.clone()).await;
    let queues: Vec<&str> =
        stats["queues"].as_array().unwrap().iter().map(|q| q["queue"].as_str().unwrap()).collect();
    assert_eq!(queues, ["billing"]);
    // The worker serves every queue: the billing token sees it, running billing's task only.
    let mut workers = Value::Null;
    for _ in 0..100 {
        workers = get("/api/v1/workers", everything.clone()).await;
        if workers["workers"][0]["running"].as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(workers["workers"][0]["running"].as_array().unwrap().len(), 2, "{workers}");
    let seen = get("/api/v1/workers", billing.clone()).await;
    let running = seen["workers"][0]["running"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{seen}");
    assert_eq!(running[0]["queue"], "billing");
    let anonymous = app.http.get(app.url("/api/v1/workers")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// A worker process writes its finishes' stats a moment after they end (`stats::Tally`); one
/// told to stop writes what it has left before it exits.
#[tokio::test]
async fn a_worker_that_stops_writes_the_stats_of_its_last_tasks_first() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut worker = app.worker(&["--concurrency", "4"]);
    workers_until(&app, Duration::from_secs(20), |w| w.len() == 1).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.submit_ok(json!({"kind": "echo", "payload": {"n": i}})).await);
    }
    for id in &ids {
        app.wait_until_done(id).await;
    }
    let pid = worker.id().expect("still running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker stops within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    // Nothing is left to write them later: they are there, once.
    let stats = app.get_json("/api/v1/stats?spans=second").await;
    assert_eq!(totals(&stats["throughput"]["second"]), (3, 0), "{stats:#}");
    assert_eq!(stats["latency_ms"]["run"]["count"], 3, "{stats:#}");
}
