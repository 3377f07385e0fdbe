//! Fault tests with real processes: `courier worker` and `courier serve` children killed,
//! paused and stopped, and a redis-server restarted under load. Every accepted task must reach
//! a terminal state, and no surviving process may exit.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use courier::embedded_redis::{EmbeddedRedis, free_port};
use serde_json::json;
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use support::*;
use tokio::process::{Child, Command};

/// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`) to a child.
fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("the child is running");
    let status =
        std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits until `count` distinct tasks have a `running` event, and returns their ids.
async fn until_running(events: &mut SseReader, count: usize) -> HashSet<String> {
    let mut running = HashSet::new();
    while running.len() < count {
        let event = events.next_within(Duration::from_secs(20)).await.expect("tasks start running");
        if event.name == "running" {
            running.insert(event.data["task_id"].as_str().unwrap().to_string());
        }
    }
    running
}

/// Waits until every task of `ids` has reported progress: its handler runs. (A `running` event is
/// written as the lease is taken, before the worker hands the lease to a handler.)
async fn until_progress(events: &mut SseReader, ids: &HashSet<String>) {
    let mut reported = HashSet::new();
    while reported.len() < ids.len() {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the handlers report progress");
        if let Some(id) =
            event.data["task_id"].as_str().filter(|id| event.name == "progress" && ids.contains(*id))
        {
            reported.insert(id.to_string());
        }
    }
}

/// Waits until every task in `ids` has a terminal event; returns the final event name of each.
async fn until_all_end(
    events: &mut SseReader,
    ids: &HashSet<String>,
    limit: Duration,
) -> HashMap<String, String> {
    let mut ended = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while ended.len() < ids.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = events
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("only {} of {} ended", ended.len(), ids.len()));
        let id = event.data["task_id"].as_str().unwrap().to_string();
        if ids.contains(&id) && ["succeeded", "failed", "cancelled"].contains(&event.name.as_str()) {
            ended.insert(id, event.name);
        }
    }
    ended
}

#[tokio::test]
async fn tasks_of_a_killed_worker_are_finished_by_another_after_the_lease() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut first = app.worker(&["--concurrency", "10", "--lease", "2s"]);
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.insert(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 3000, "steps": 3}})).await);
    }
    assert_eq!(until_running(&mut events, 10).await, ids);

    signal(&first, "KILL");
    first.wait().await.unwrap();
    let mut second = app.worker(&["--concurrency", "10", "--lease", "2s"]);
    // Lease (2 s) + task (3 s), with room for a slow machine.
    let ended = until_all_end(&mut events, &ids, Duration::from_secs(30)).await;
    assert!(ended.values().all(|status| status == "succeeded"), "{ended:?}");
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(
            (view["status"].as_str(), view["attempts"].as_u64()),
            (Some("succeeded"), Some(2)),
            "{view}"
        );
    }
    assert!(second.try_wait().unwrap().is_none(), "the second worker keeps running");
}

/// A worker killed while its tasks sat on three streams (a priority each): the next look for
/// expired leases takes over all of them, not one stream's now and the others' a lease later.
#[tokio::test]
async fn a_killed_workers_tasks_on_several_streams_are_taken_over_by_one_look() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut first = app.worker(&["--concurrency", "6", "--lease", "3s"]);
    let mut ids = HashSet::new();
    for priority in ["high", "normal", "low"] {
        for _ in 0..2 {
            let task = json!({"kind": "sleep", "payload": {"ms": 3000, "steps": 3}, "priority": priority});
            ids.insert(app.submit_ok(task).await);
        }
    }
    assert_eq!(until_running(&mut events, 6).await, ids);

    signal(&first, "KILL");
    first.wait().await.unwrap();
    let mut second = app.worker(&["--concurrency", "6", "--lease", "3s"]);
    let mut restarted: HashMap<String, chrono::DateTime<chrono::FixedOffset>> = HashMap::new();
    while restarted.len() < ids.len() {
        let event = events.next_within(Duration::from_secs(30)).await.expect("the tasks start again");
        if event.name == "running" && event.data["attempt"] == 2 {
            let at = chrono::DateTime::parse_from_rfc3339(event.data["at"].as_str().unwrap()).unwrap();
            restarted.insert(event.data["task_id"].as_str().unwrap().to_string(), at);
        }
    }
    // Their leases ran out within a renewal (1 s) of each other, and the looks come every quarter
    // lease (0.75 s): at most some 1.75 s apart. A stream left for a later look would wait a whole
    // lease (3 s) more.
    let (earliest, latest) = (restarted.values().min().unwrap(), restarted.values().max().unwrap());
    let spread = *latest - *earliest;
    assert!(spread < chrono::Duration::milliseconds(2500), "second attempts started at {restarted:?}");
    let ended = until_all_end(&mut events, &ids, Duration::from_secs(30)).await;
    assert!(ended.values().all(|status| status == "succeeded"), "{ended:?}");
    assert!(second.try_wait().unwrap().is_none(), "the second worker keeps running");
}

#[tokio::test]
async fn a_paused_workers_late_ack_is_ignored_and_both_workers_live_on() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut paused = app.worker(&["--concurrency", "1", "--lease", "1s"]);
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 3000, "steps": 3}})).await;
    until_running(&mut events, 1).await;

    signal(&paused, "STOP");
    let mut other = app.worker(&["--concurrency", "1", "--lease", "1s"]);
    let seen = events.until_task_ends(&id, Duration::from_secs(20)).await;
    assert!(seen.iter().any(|e| e.name == "running" && e.data["attempt"] == 2), "{seen:?}");
    assert_eq!(seen.last().unwrap().name, "succeeded");
    let settled = app.get_json(&format!("/api/v1/tasks/{id}")).await;

    // The paused worker wakes up holding a lease that is no longer its own.
    signal(&paused, "CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(later, settled, "the late holder changed nothing");
    assert_eq!((later["status"].as_str(), later["attempts"].as_u64()), (Some("succeeded"), Some(2)));
    while let Some(event) = events.next_within(Duration::from_millis(200)).await {
        assert_ne!(event.data["task_id"], id.as_str(), "no event after the end: {event:?}");
    }
    assert!(paused.try_wait().unwrap().is_none(), "the resumed worker keeps running");
    assert!(other.try_wait().unwrap().is_none(), "the other worker keeps running");
}

#[tokio::test]
async fn sigterm_lets_in_flight_tasks_finish_and_leaves_the_rest_queued() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut stopping = app.worker(&["--concurrency", "2", "--grace", "20s"]);
    let mut ids = HashSet::new();
    for _ in 0..6 {
        ids.insert(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 3}})).await);
    }
    let in_flight = until_running(&mut events, 2).await;
    // A lease taken but not yet handed to a handler when the signal comes goes back to the queue,
    // as it should: the signal waits until both handlers run.
    until_progress(&mut events, &in_flight).await;
    signal(&stopping, "TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(20), stopping.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status}");
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        let expected = if in_flight.contains(id) { "succeeded" } else { "queued" };
        assert_eq!(view["status"], expected, "{view}");
    }

    let _next = app.worker(&["--concurrency", "4"]);
    let ended = until_all_end(&mut events, &ids, Duration::from_secs(30)).await;
    assert!(ended.values().all(|status| status == "succeeded"), "{ended:?}");
    for id in &ids {
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["attempts"], 1);
    }
}

/// The worker that ran a task's first attempt.
async fn ran_by(app: &TestApp, task: &str) -> String {
    let attempts = app.get_json(&format!("/api/v1/tasks/{task}/attempts")).await;
    attempts["attempts"][0]["worker"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn three_worker_threads_share_the_slots_join_in_as_each_fills_and_stop_as_one() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let mut process =
        app.worker(&["--concurrency", "7", "--threads", "3", "--grace", "20s", "--metrics-addr", &metrics]);
    let pid = process.id().unwrap();
    // Three workers in the registry, all of this process, its seven slots shared among them.
    let started = std::time::Instant::now();
    let workers = loop {
        let workers = app.get_json("/api/v1/workers").await["workers"].as_array().unwrap().clone();
        if workers.len() == 3 {
            break workers;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "three workers never announced: {workers:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(workers.iter().all(|w| w["pid"] == pid && w["runs"] == "built-in"), "{workers:#?}");
    let mut slots: Vec<u64> = workers.iter().map(|w| w["slots"].as_u64().unwrap()).collect();
    slots.sort_unstable();
    assert_eq!(slots, [2, 2, 3], "{workers:#?}");
    let ids: HashSet<String> = workers.iter().map(|w| w["id"].as_str().unwrap().to_string()).collect();

    // Tasks one at a time: the first worker has room for each, and the others stand by.
    let mut trickled = HashSet::new();
    for n in 0..10 {
        let task = app.submit_ok(json!({"kind": "echo", "payload": {"n": n}})).await;
        let one = HashSet::from([task.clone()]);
        assert_eq!(until_all_end(&mut events, &one, Duration::from_secs(20)).await[&task], "succeeded");
        trickled.insert(ran_by(&app, &task).await);
    }
    assert_eq!(trickled.len(), 1, "one worker ran them all: {trickled:?}");
    let first = workers.iter().find(|w| trickled.contains(w["id"].as_str().unwrap())).unwrap();
    assert_eq!(first["slots"], 3, "the first, which has the most slots: {workers:#?}");

    // Seven long tasks run at once: as each worker fills up, the next joins in.
    let mut tasks = HashSet::new();
    for _ in 0..7 {
        tasks.insert(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 3}})).await);
    }
    assert_eq!(until_running(&mut events, 7).await, tasks);
    let mut running_on = HashSet::new();
    for task in &tasks {
        running_on.insert(ran_by(&app, task).await);
    }
    assert_eq!(running_on, ids, "each of the three workers runs some");
    let ended = until_all_end(&mut events, &tasks, Duration::from_secs(20)).await;
    assert!(ended.values().all(|status| status == "succeeded"), "{ended:?}");
    // The process's one `/metrics` counts what all three ran.
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let succeeded =
        sample(&text, "courier_tasks_finished_total", &[("kind", "sleep"), ("outcome", "succeeded")]);
    assert_eq!(succeeded, Some(7.0), "{text}");

    // One signal stops them all, each letting its tasks finish.
    let mut last = HashSet::new();
    for _ in 0..3 {
        last.insert(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 1500, "steps": 3}})).await);
    }
    until_progress(&mut events, &last).await;
    signal(&process, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), process.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status}");
    for id in &last {
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "succeeded");
    }
    let workers = app.get_json("/api/v1/workers").await;
    assert_eq!(workers["workers"], json!([]), "each left the registry as it stopped: {workers}");
}

#[tokio::test]
async fn sigterm_past_the_grace_period_hands_running_tasks_back() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let mut stopping = app.worker(&["--concurrency", "2", "--grace", "300ms", "--lease", "30s"]);
    let mut ids = HashSet::new();
    for _ in 0..2 {
        ids.insert(app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 4000, "steps": 4}})).await);
    }
    until_running(&mut events, 2).await;
    signal(&stopping, "TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(10), stopping.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status}");
    let mut first_starts = HashMap::new();
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("queued"), Some(0)), "{view}");
        assert!(view["started_at"].is_string(), "{view}");
        first_starts.insert(id.clone(), view["started_at"].clone());
    }
    // Handed back, not left to a 30 s lease: the next worker starts them at once.
    let _next = app.worker(&["--concurrency", "2"]);
    let ended = until_all_end(&mut events, &ids, Duration::from_secs(20)).await;
    assert!(ended.values().all(|status| status == "succeeded"), "{ended:?}");
    // Each ended on attempt 1, begun after the start it was handed back from: its record keeps
    // that first start, which its attempt log does not say.
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        let attempts = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
        assert_eq!(view["started_at"], first_starts[id], "{view}");
        assert!(attempts["attempts"][0]["started_at"].as_str() > view["started_at"].as_str(), "{attempts}");
        assert!(app.record_fields(id).await.contains_key("started"));
    }
}

#[tokio::test]
async fn every_accepted_task_ends_across_two_redis_restarts() {
    let redis = TestRedis::start().await;
    let (url, port) = (redis.redis.url(), redis.redis.port());
    let dir = redis.dir.path().to_path_buf();
    let mut server_redis: Option<EmbeddedRedis> = Some(redis.redis);
    let prefix = unique_prefix();
    let http_port = free_port().unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{http_port}"),
            "--redis-url",
            &url,
            "--prefix",
            &prefix,
        ])
        .args(["--concurrency", "0"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // On a runtime of several threads (a worker's default is one, which the other tests run).
    let mut worker = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["worker", "--redis-url", &url, "--prefix", &prefix, "--concurrency", "8", "--threads", "2"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for _ in 0..100 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut accepted = Vec::new();
    let mut refused = 0;
    let started = std::time::Instant::now();
    let mut restarts = 0;
    for round in 0..120 {
        let body = json!({"kind": "sleep", "payload": {"ms": 50, "steps": 1}});
        match http.post(format!("{base}/api/v1/tasks")).json(&body).send().await {
            Ok(r) if r.status() == 202 => accepted
                .push(r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string()),
            Ok(r) => {
                assert_eq!(r.status(), 503, "Redis down is a 503");
                assert!(r.headers().contains_key("retry-after"));
                refused += 1;
            }
            Err(e) => panic!("the server must answer while Redis is down: {e}"),
        }
        if round == 40 || round == 80 {
            server_redis.take().unwrap().stop().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            server_redis = Some(EmbeddedRedis::start_on(&dir, port).await.unwrap());
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(restarts, 2);
    assert!(
        accepted.len() >= 80,
        "accepted {} (refused {refused}) in {:?}",
        accepted.len(),
        started.elapsed()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &accepted {
        loop {
            let view: serde_json::Value = match http.get(format!("{base}/api/v1/tasks/{id}")).send().await {
                Ok(r) if r.status() == 200 => r.json().await.unwrap(),
                _ => serde_json::Value::Null,
            };
            if view["status"] == "succeeded" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {id} did not end: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(server.try_wait().unwrap().is_none(), "the server keeps running");
    assert!(worker.try_wait().unwrap().is_none(), "the worker keeps running");
    drop(server_redis);
}

/// A `courier` process (`serve` on `port`, or `worker` with `port` = None) on `url` and `prefix`.
fn courier(url: &str, prefix: &str, port: Option<u16>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    match port {
        Some(port) => command.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--concurrency", "0"]),
        None => command.args(["worker", "--concurrency", "4", "--lease", "1s"]),
    };
    command
        .args(["--redis-url", url, "--prefix", prefix])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Polls `GET path` on `base` until `check` holds of the JSON (a minute at most); retries while
/// the server is starting.
async fn until_json(
    http: &reqwest::Client,
    url: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(response) = http.get(url).send().await
            && let Ok(value) = response.json::<serde_json::Value>().await
        {
            if check(&value) {
                return value;
            }
            last = value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never got there: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_workflow_completes_after_its_worker_and_then_every_process_is_killed() {
    let redis = TestRedis::start().await;
    let url = redis.redis.url();
    let prefix = unique_prefix();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let port = free_port().unwrap();
    let mut server = courier(&url, &prefix, Some(port));
    let mut worker = courier(&url, &prefix, None);
    let base = format!("http://127.0.0.1:{port}");
    until_json(&http, &format!("{base}/readyz"), |_| true).await;
    let nap = json!({"ms": 2000, "steps": 4});
    let body = json!({"steps": [
        {"id": "a", "kind": "sleep", "payload": nap},
        {"id": "b", "kind": "echo", "after": ["a"], "payload": {"x": 1}},
        {"id": "c", "kind": "sleep", "after": ["b"], "payload": nap},
        {"id": "d", "kind": "echo", "after": ["b", "c"], "payload": {"got": {"$from": "b", "pointer": "/x"}}},
    ]});
    let created = http.post(format!("{base}/api/v1/workflows")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 202);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let view = format!("/api/v1/workflows/{id}");
    // A step runs once its task does (the workflow records the state it finds at its looks).
    let until_step_runs = |base: String, step: usize| {
        let (http, view) = (http.clone(), view.clone());
        async move {
            let started =
                until_json(&http, &format!("{base}{view}"), |v| v["steps"][step]["tasks"][0].is_string())
                    .await;
            let task = started["steps"][step]["tasks"][0].as_str().unwrap().to_string();
            until_json(&http, &format!("{base}/api/v1/tasks/{task}"), |t| t["status"] == "running").await;
        }
    };

    // The worker dies mid-step: another takes the step over once its lease runs out.
    until_step_runs(base.clone(), 0).await;
    signal(&worker, "KILL");
    worker.wait().await.unwrap();
    worker = courier(&url, &prefix, None);

    // Every process dies mid-step, and comes back.
    until_step_runs(base.clone(), 2).await;
    for child in [&server, &worker] {
        signal(child, "KILL");
    }
    server.wait().await.unwrap();
    worker.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let port = free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let _server = courier(&url, &prefix, Some(port));
    let _worker = courier(&url, &prefix, None);
    let ended = until_json(&http, &format!("{base}{view}"), |v| v["status"] != "running").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let result: serde_json::Value =
        http.get(format!("{base}{view}/result")).send().await.unwrap().json().await.unwrap();
    assert_eq!(result, json!({"d": {"got": 1}}));
}

/// A plain redis-server on `port` (no password, nothing saved), a replica of `primary` if given.
fn redis_server(port: u16, dir: &std::path::Path, primary: Option<u16>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.arg("--dir").arg(dir);
    if let Some(primary) = primary {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    command.stdout(std::process::Stdio::null()).kill_on_drop(true).spawn().expect("redis-server starts")
}

/// Waits until `INFO replication` of the server at `url` holds `line`.
async fn until_replication(url: &str, line: &str) {
    let client = redis::Client::open(url).unwrap();
    for _ in 0..200 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && let Ok(info) = redis::cmd("INFO").arg("replication").query_async::<String>(&mut conn).await
            && info.lines().any(|l| l.trim() == line)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never said `{line}`");
}

/// Redis replicates asynchronously: a primary that fails right after a write may take it with
/// it. A 202 from `--durable-submit` is only given once a replica holds the task; without it, a
/// task can be accepted and then lost in a failover.
#[tokio::test]
async fn a_durable_submit_is_confirmed_by_a_replica_and_a_plain_one_can_be_lost_in_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (primary_port, replica_port) = (free_port().unwrap(), free_port().unwrap());
    let mut primary = redis_server(primary_port, &dir.path().join("p"), None);
    let _replica = redis_server(replica_port, &dir.path().join("r"), Some(primary_port));
    let (primary_url, replica_url) =
        (format!("redis://127.0.0.1:{primary_port}"), format!("redis://127.0.0.1:{replica_port}"));
    until_replication(&replica_url, "master_link_status:up").await;
    let prefix = unique_prefix();
    let shared = |durable: bool| {
        let prefix = prefix.clone();
        move |c: &mut courier::config::Config| {
            c.prefix = prefix;
            c.concurrency = 0;
            c.durable_submit = durable;
            c.durable_submit_timeout = Duration::from_millis(300);
        }
    };
    let plain = spawn_app_on(&primary_url, shared(false)).await;
    let durable = spawn_app_on(&primary_url, shared(true)).await;
    let task = json!({"kind": "echo", "payload": {"message": "kept?"}});

    // With the replica in step, every durable submission is confirmed, one by one and in a batch.
    let mut confirmed = Vec::new();
    for _ in 0..5 {
        confirmed.push(durable.submit_ok(task.clone()).await);
    }
    let batch = durable
        .http
        .post(durable.url("/api/v1/tasks/batch"))
        .json(&json!({"tasks": [task.clone(), task.clone(), task.clone()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202);
    let batch: serde_json::Value = batch.json().await.unwrap();
    confirmed
        .extend(batch["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()));
    assert_eq!(confirmed.len(), 8);
    let workflow = json!({"steps": [{"id": "a", "kind": "echo", "payload": {"n": 1}}]});
    let created = durable.http.post(durable.url("/api/v1/workflows")).json(&workflow).send().await.unwrap();
    assert_eq!(created.status(), 202);
    let workflow_id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    // The replica falls out of step (it is cut off, as a partition would): writes from now on
    // are on the primary alone.
    let replica_client = redis::Client::open(replica_url.as_str()).unwrap();
    let mut replica_conn = replica_client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut replica_conn).await.unwrap();
    until_replication(&primary_url, "connected_slaves:0").await;
    let accepted_then_lost = plain.submit_ok(task.clone()).await;
    let submit_once = || {
        durable
            .http
            .post(durable.url("/api/v1/tasks"))
            .header("idempotency-key", "durable-1")
            .json(&task)
            .send()
    };
    let refused = submit_once().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, 503, "/problems/not-replicated").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("replica") && detail.contains("Idempotency-Key"), "{detail}");
    // Its retry is no better while no replica has it: the same task, still unconfirmed.
    let retried = submit_once().await.unwrap();
    let again = assert_problem(retried, 503, "/problems/not-replicated").await;
    let task_of = |detail: &str| {
        detail.split_whitespace().find_map(|w| w.trim_end_matches(',').parse::<uuid::Uuid>().ok())
    };
    assert_eq!(task_of(again["detail"].as_str().unwrap()), task_of(detail), "{again}");
    assert!(task_of(detail).is_some(), "{detail}");
    let unconfirmed =
        durable.http.post(durable.url("/api/v1/workflows")).json(&workflow).send().await.unwrap();
    assert_problem(unconfirmed, 503, "/problems/not-replicated").await;

    // The primary dies; the replica, now the primary, is all that is left.
    signal(&primary, "KILL");
    primary.wait().await.unwrap();
    let survivor = spawn_app_on(&replica_url, shared(false)).await;
    for id in &confirmed {
        let response = survivor.http.get(survivor.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "a confirmed task {id} survives the failover");
    }
    let kept =
        survivor.http.get(survivor.url(&format!("/api/v1/workflows/{workflow_id}"))).send().await.unwrap();
    assert_eq!(kept.status(), 200, "a confirmed workflow survives the failover");
    let lost =
        survivor.http.get(survivor.url(&format!("/api/v1/tasks/{accepted_then_lost}"))).send().await.unwrap();
    assert_eq!(lost.status(), 404, "a plain submission was accepted, and lost with the primary");
}
