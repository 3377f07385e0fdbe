//! Each kind's tasks by state in `GET /api/v1/stats`: scheduled, retrying and dead counted per
//! kind as exactly as queued and running, through every way a task enters or leaves those
//! states, in two queues at once, after an upgrade from a Redis that never counted them, and
//! never past the dead letters' retention. The truth each count is held to is the task records
//! themselves, as the listing reads them, and the queue's own counts, which the kinds add up to.

use crate::support::*;
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

/// The test queue's name (its tasks' queue when a test names none).
fn queue() -> String {
    test_queue().unwrap_or_else(|| "default".into())
}

/// A second queue, with tasks of the same kinds.
const OTHER: &str = "kinds-elsewhere";

const STATES: [&str; 5] = ["queued", "scheduled", "retrying", "running", "dead"];

/// Counts by kind, then state.
type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// The queue's stats: its counts by state, and each kind's, as `GET /api/v1/stats` serves them.
async fn stats_of(app: &TestApp, queue: &str) -> (BTreeMap<String, u64>, Counts) {
    let stats = app.get_json("/api/v1/stats?spans=second").await;
    let Some(mine) = stats["queues"].as_array().unwrap().iter().find(|q| q["queue"] == queue) else {
        return (STATES.iter().map(|s| (s.to_string(), 0)).collect(), Counts::new());
    };
    let counts = serde_json::from_value(mine["counts"].clone()).unwrap();
    let kinds = mine["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (k["kind"].as_str().unwrap().to_string(), serde_json::from_value(k["counts"].clone()).unwrap())
        })
        .collect();
    (counts, kinds)
}

/// The ids of the tasks in `queue`'s waiting set `set` (`delayed` or `retrying`).
async fn waiting_ids(app: &TestApp, queue: &str, set: &str) -> Vec<String> {
    let key = format!("{}:{{{queue}}}:{set}", app.prefix);
    let members: Vec<String> =
        redis::AsyncCommands::zrange(&mut app.redis().await, key, 0, -1).await.unwrap();
    members.into_iter().map(|m| m[2..].to_string()).collect()
}

/// The queue's tasks by kind and state, tallied from their records (a failed task is a dead
/// letter; succeeded and cancelled ones are in no state counted). A record says `scheduled` or
/// `retrying` until an attempt starts, also once the task came due and was queued: the delayed
/// and retrying sets tell which ones still wait for their time.
async fn truth(app: &TestApp, queue: &str) -> Counts {
    let page = app.get_json(&format!("/api/v1/tasks?queue={queue}&limit=100")).await;
    let tasks = page["tasks"].as_array().unwrap();
    assert!(tasks.len() < 100 && page["next_cursor"].is_null(), "one page holds every task");
    let (delayed, retrying) =
        (waiting_ids(app, queue, "delayed").await, waiting_ids(app, queue, "retrying").await);
    let mut counts = Counts::new();
    for task in tasks {
        let id = task["id"].as_str().unwrap().to_string();
        let state = match task["status"].as_str().unwrap() {
            "failed" => "dead",
            "succeeded" | "cancelled" => continue,
            "scheduled" if delayed.contains(&id) => "scheduled",
            "retrying" if retrying.contains(&id) => "retrying",
            "scheduled" | "retrying" => "queued",
            other => other,
        };
        *counts.entry(task["kind"].as_str().unwrap().into()).or_default().entry(state.into()).or_default() +=
            1;
    }
    counts
}

/// Asserts that every kind's count of every state in `queue` is the truth, that every state is
/// named, and that the kinds add up to the queue's counts; returns the counts.
async fn assert_exact(app: &TestApp, queue: &str) -> Counts {
    let (totals, kinds) = stats_of(app, queue).await;
    let truth = truth(app, queue).await;
    for (kind, counts) in &kinds {
        let mut named: Vec<&str> = counts.keys().map(String::as_str).collect();
        named.sort();
        assert_eq!(named, ["dead", "queued", "retrying", "running", "scheduled"], "{kind}: every state");
        for state in STATES {
            let expected = truth.get(kind).and_then(|t| t.get(state)).copied().unwrap_or(0);
            assert_eq!(counts[state], expected, "{queue}: {kind} {state}: {kinds:?}, truth {truth:?}");
        }
    }
    for (kind, counts) in &truth {
        assert!(kinds.contains_key(kind), "{queue}: {kind} ({counts:?}) is missing: {kinds:?}");
    }
    for state in STATES {
        let sum: u64 = kinds.values().map(|c| c[state]).sum();
        assert_eq!(
            sum, totals[state],
            "{queue}: the kinds' {state} add up to the queue's: {kinds:?} {totals:?}"
        );
    }
    kinds
}

/// The count of `state` of `kind` in `counts` (0 when the kind is not there).
fn count(counts: &Counts, kind: &str, state: &str) -> u64 {
    counts.get(kind).map_or(0, |c| c[state])
}

/// Submits `body` to `queue` and returns the task's id.
async fn submit_to(app: &TestApp, queue: &str, mut body: Value) -> String {
    body["queue"] = queue.into();
    app.submit_ok(body).await
}

/// Takes a lease on a task of `kind` in `queue` as a pulling worker, waiting up to 5 s for one
/// (each try moves due delayed tasks and retries first); returns its token and task id.
async fn lease(app: &TestApp, queue: &str, kind: &str) -> (String, String) {
    let url = app.url(&format!("/api/v1/queues/{queue}/leases"));
    let body = json!({"worker": "counter", "kinds": [kind], "wait_ms": 5000});
    let leases: Value = app.http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
    let grant = &leases["leases"][0];
    let token = grant["token"].as_str().unwrap_or_else(|| panic!("a lease: {leases}"));
    (token.to_string(), grant["task"]["id"].as_str().unwrap().to_string())
}

/// Moves the queue's due delayed tasks and retries (and expires what has expired), taking no
/// lease: nothing else moves them in an app without workers.
async fn promote(app: &TestApp, queue: &str) {
    let url = app.url(&format!("/api/v1/queues/{queue}/leases"));
    let response = app.http.post(url).json(&json!({"worker": "counter", "kinds": ["sleep"]})).send().await;
    assert_eq!(response.unwrap().status(), 200);
}

/// Fails the attempt `token` holds: to be retried after `retry_after_ms`, or for good.
async fn fail(app: &TestApp, token: &str, retry_after_ms: Option<u64>) {
    let body = match retry_after_ms {
        Some(ms) => json!({"error": "not now", "retryable": true, "retry_after_ms": ms}),
        None => json!({"error": "never", "retryable": false}),
    };
    let response = app.http.post(app.url(&format!("/api/v1/leases/{token}/fail"))).json(&body).send().await;
    assert_eq!(response.unwrap().status(), 204);
}

/// Makes a dead letter of kind `kind` in `queue`: submits one, leases one (another, if one of
/// the kind was queued already: the queue's counts are the same either way) and fails it for
/// good; returns the dead letter's id.
async fn dead_letter(app: &TestApp, queue: &str, kind: &str) -> String {
    submit_to(app, queue, json!({"kind": kind, "payload": {"fail_times": -1}})).await;
    let (token, id) = lease(app, queue, kind).await;
    fail(app, &token, None).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "failed");
    id
}

async fn post(app: &TestApp, path: &str) -> Value {
    let response = app.http.post(app.url(path)).send().await.unwrap();
    assert!(response.status().is_success(), "POST {path}: {}", response.status());
    response.json().await.unwrap_or(Value::Null)
}

async fn delete(app: &TestApp, path: &str) -> Value {
    let response = app.http.delete(app.url(path)).send().await.unwrap();
    assert!(response.status().is_success(), "DELETE {path}: {}", response.status());
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn each_kinds_scheduled_retrying_and_dead_tasks_are_counted_exactly_through_every_move() {
    // No built-in workers: tasks move only when the test moves them, as a pulling worker.
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let (q, other) = (queue(), OTHER);
    let echo = json!({"kind": "echo", "payload": {"n": 1}, "delay_ms": 600_000});
    let flaky = json!({"kind": "flaky", "payload": {"fail_times": -1}, "delay_ms": 600_000});

    // Delayed: scheduled, per kind and queue.
    let mut delayed_echo = Vec::new();
    for _ in 0..3 {
        delayed_echo.push(submit_to(&app, &q, echo.clone()).await);
    }
    for _ in 0..2 {
        submit_to(&app, &q, flaky.clone()).await;
    }
    submit_to(&app, other, echo.clone()).await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "scheduled"), count(&counts, "flaky", "scheduled")), (3, 2));
    assert_eq!(count(&assert_exact(&app, other).await, "echo", "scheduled"), 1);

    // A delayed task cancelled leaves its kind's scheduled count, once however often it is.
    let cancelled = &delayed_echo[0];
    for _ in 0..2 {
        app.http.delete(app.url(&format!("/api/v1/tasks/{cancelled}"))).send().await.unwrap();
    }
    assert_eq!(count(&assert_exact(&app, &q).await, "echo", "scheduled"), 2);

    // A delayed task whose expiry passes while it waits (nothing moved it when it came due): a
    // dead letter of its kind.
    submit_to(&app, &q, json!({"kind": "echo", "payload": {"n": 2}, "delay_ms": 50, "ttl_ms": 100})).await;
    assert_eq!(count(&assert_exact(&app, &q).await, "echo", "scheduled"), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    promote(&app, &q).await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "scheduled"), count(&counts, "echo", "dead")), (2, 1));

    // Delayed tasks that come due are queued on their kind's lane.
    for _ in 0..2 {
        submit_to(&app, &q, json!({"kind": "echo", "payload": {"n": 3}, "delay_ms": 50})).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    promote(&app, &q).await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "scheduled"), count(&counts, "echo", "queued")), (2, 2));

    // A failed attempt waits for its retry, counted as retrying; its last attempt fails for good.
    let id =
        submit_to(&app, &q, json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 2})).await;
    let (token, _) = lease(&app, &q, "flaky").await;
    assert_eq!(count(&assert_exact(&app, &q).await, "flaky", "running"), 1);
    fail(&app, &token, Some(200)).await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "flaky", "retrying"), count(&counts, "flaky", "running")), (1, 0));
    let (token, _) = lease(&app, &q, "flaky").await;
    assert_eq!(count(&assert_exact(&app, &q).await, "flaky", "retrying"), 0);
    fail(&app, &token, Some(200)).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "failed");
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "flaky", "dead"), count(&counts, "flaky", "retrying")), (1, 0));

    // More dead letters, of both kinds, in both queues.
    let mut dead_echo = vec![dead_letter(&app, &q, "echo").await];
    dead_echo.push(dead_letter(&app, &q, "echo").await);
    for _ in 0..2 {
        dead_letter(&app, &q, "flaky").await;
        dead_letter(&app, other, "flaky").await;
    }
    dead_letter(&app, other, "echo").await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "dead"), count(&counts, "flaky", "dead")), (3, 3));
    let counts = assert_exact(&app, other).await;
    assert_eq!((count(&counts, "echo", "dead"), count(&counts, "flaky", "dead")), (1, 2));

    // Requeued one at a time (twice: the second finds no dead letter), then by filter.
    post(&app, &format!("/api/v1/dead-letters/{}/requeue", dead_echo[0])).await;
    let again =
        app.http.post(app.url(&format!("/api/v1/dead-letters/{}/requeue", dead_echo[0]))).send().await;
    assert_eq!(again.unwrap().status(), 404);
    assert_eq!(count(&assert_exact(&app, &q).await, "echo", "dead"), 2);
    let requeued = post(&app, &format!("/api/v1/dead-letters/requeue?queue={q}&kind=flaky")).await;
    assert_eq!(requeued, json!({"requeued": 3}));
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "flaky", "dead"), count(&counts, "echo", "dead")), (0, 2));
    assert_eq!(count(&assert_exact(&app, other).await, "flaky", "dead"), 2);

    // Deleted one at a time, then by filter (echo, in both queues).
    delete(&app, &format!("/api/v1/dead-letters/{}", dead_echo[1])).await;
    assert_eq!(count(&assert_exact(&app, &q).await, "echo", "dead"), 1);
    assert_eq!(delete(&app, "/api/v1/dead-letters?kind=echo").await, json!({"deleted": 2}));
    assert_eq!(count(&assert_exact(&app, &q).await, "echo", "dead"), 0);
    assert_eq!(count(&assert_exact(&app, other).await, "echo", "dead"), 0);

    // Every dead letter requeued; more of the other queue's, then every one of them deleted.
    dead_letter(&app, &q, "echo").await;
    assert_eq!(post(&app, "/api/v1/dead-letters/requeue").await, json!({"requeued": 3}));
    assert_eq!(assert_exact(&app, &q).await.values().map(|c| c["dead"]).sum::<u64>(), 0);
    let counts = assert_exact(&app, other).await;
    assert_eq!((count(&counts, "flaky", "dead"), count(&counts, "flaky", "queued")), (0, 2));
    for kind in ["echo", "flaky", "flaky"] {
        dead_letter(&app, other, kind).await;
    }
    assert_eq!(delete(&app, &format!("/api/v1/dead-letters?queue={other}")).await, json!({"deleted": 3}));
    let counts = assert_exact(&app, other).await;
    assert_eq!((count(&counts, "echo", "dead"), count(&counts, "flaky", "dead")), (0, 0));
    assert_eq!(count(&counts, "echo", "scheduled"), 1);
}

#[tokio::test]
async fn built_in_retries_are_counted_retrying_until_their_task_ends() {
    // Retries an hour away: a failed attempt stays retrying until the test cancels it.
    let app = spawn_app_with(|c| {
        c.retry_base = Duration::from_secs(3600);
        c.retry_cap = Duration::from_secs(3600);
    })
    .await;
    let q = queue();
    let waiting =
        app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 2})).await;
    let mut events = app.sse(&format!("/api/v1/tasks/{waiting}/events"), None).await;
    while events.next_within(Duration::from_secs(30)).await.expect("an event").name != "retrying" {}
    let counts = assert_exact(&app, &q).await;
    assert_eq!(count(&counts, "flaky", "retrying"), 1);
    app.http.delete(app.url(&format!("/api/v1/tasks/{waiting}"))).send().await.unwrap();
    assert_eq!(app.wait_until_done(&waiting).await["status"], "cancelled");
    assert_eq!(count(&assert_exact(&app, &q).await, "flaky", "retrying"), 0);

    // Quick retries: through retrying to the dead letters, counted out of retrying on the way.
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 3})).await,
        );
    }
    ids.push(app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 3})).await);
    for id in &ids {
        app.wait_until_done(id).await;
    }
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "flaky", "dead"), count(&counts, "flaky", "retrying")), (3, 0));
}

#[tokio::test]
async fn a_redis_from_before_the_kinds_were_counted_has_them_counted_at_the_first_read() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let q = queue();
    for kind in ["echo", "echo", "flaky"] {
        submit_to(&app, &q, json!({"kind": kind, "payload": {"fail_times": 0}, "delay_ms": 600_000})).await;
    }
    submit_to(&app, &q, json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 2})).await;
    fail(&app, &lease(&app, &q, "flaky").await.0, Some(600_000)).await;
    dead_letter(&app, &q, "echo").await;
    let before = assert_exact(&app, &q).await;
    // What an older Courier left: the sets, and nothing that counts them per kind.
    let mut redis = app.redis().await;
    let mut gone: Vec<String> =
        redis::AsyncCommands::smembers(&mut redis, app.key("dead-kinds")).await.unwrap();
    gone = gone.iter().map(|kind| app.key(&format!("dead:kind:{kind}"))).collect();
    gone.extend([app.key("kind-counts"), app.key("dead-kinds")]);
    let deleted: u64 = redis::AsyncCommands::del(&mut redis, &gone).await.unwrap();
    assert_eq!(deleted, 3, "{gone:?}");
    let after = assert_exact(&app, &q).await;
    assert_eq!(after, before);
    assert_eq!(
        (
            count(&after, "echo", "scheduled"),
            count(&after, "flaky", "retrying"),
            count(&after, "echo", "dead")
        ),
        (2, 1, 1)
    );
    // Counted from then on as if they always had been.
    let id = submit_to(&app, &q, json!({"kind": "flaky", "payload": {"fail_times": 0}, "delay_ms": 600_000}))
        .await;
    app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    dead_letter(&app, &q, "echo").await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "flaky", "scheduled"), count(&counts, "echo", "dead")), (1, 2));
}

#[tokio::test]
async fn dead_letters_past_their_retention_count_for_neither_their_kind_nor_their_queue() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.dead_retention = Duration::from_secs(1);
    })
    .await;
    let q = queue();
    dead_letter(&app, &q, "echo").await;
    dead_letter(&app, &q, "flaky").await;
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "dead"), count(&counts, "flaky", "dead")), (1, 1));
    // Their records expire with the retention; nothing has trimmed the sets since.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut redis = app.redis().await;
    let held: u64 = redis::AsyncCommands::zcard(&mut redis, app.key("dead:kind:echo")).await.unwrap();
    assert_eq!(held, 1, "the set still holds the expired one");
    let counts = assert_exact(&app, &q).await;
    assert_eq!((count(&counts, "echo", "dead"), count(&counts, "flaky", "dead")), (0, 0));
    assert_eq!(stats_of(&app, &q).await.0["dead"], 0);
}
