//! Retention counts from a task's end: waiting tasks, their payloads and idempotency keys live
//! until they end; a task that must not wait for ever says so (`ttl_ms`, `expires_at`) and then
//! ends visibly, as a dead letter with reason `expired`. A record holds no field its readers take
//! for granted: it is kept that long.

use crate::support::*;
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;

/// A `courier worker` process with this file's short retentions.
fn worker(app: &TestApp) -> tokio::process::Child {
    app.worker(&["--concurrency", "4", "--retention", "1s", "--dead-retention", "1s"])
}

async fn ttl_ms(app: &TestApp, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(&mut app.redis().await).await.unwrap()
}

#[tokio::test]
async fn tasks_waiting_longer_than_the_retention_still_run_once_a_worker_comes() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.retention = Duration::from_secs(1);
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.submit_ok(json!({"kind": "echo", "payload": {"n": n}})).await);
    }
    ids.push(app.submit_ok(json!({"kind": "echo", "payload": {"n": "late"}, "delay_ms": 2500})).await);
    // A payload over 4 KiB has a key of its own; smaller ones live in their task's record.
    let large = app.submit_ok(json!({"kind": "echo", "payload": {"pad": "x".repeat(5000)}})).await;
    ids.push(large.clone());
    let keyed_submit = || {
        app.http
            .post(app.url("/api/v1/tasks"))
            .header("idempotency-key", "waits-long")
            .json(&in_test_queue(json!({"kind": "echo", "payload": {"n": "keyed"}})))
            .send()
    };
    let response = keyed_submit().await.unwrap();
    assert_eq!(response.status(), 202);
    let keyed: serde_json::Value = response.json().await.unwrap();
    ids.push(keyed["id"].as_str().unwrap().to_string());

    tokio::time::sleep(Duration::from_millis(3500)).await;
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert!(["queued", "scheduled"].contains(&view["status"].as_str().unwrap()), "{view}");
        assert_eq!(ttl_ms(&app, &app.key(&format!("task:{id}"))).await, -1, "a waiting record has no TTL");
        let payload_ttl = ttl_ms(&app, &app.key(&format!("payload:{id}"))).await;
        let expected = if *id == large { -1 } else { -2 };
        assert_eq!(payload_ttl, expected, "nor its payload's key (-2: none, the record holds it)");
    }
    // The idempotency key still stands for its task: the same request gets the same task.
    let again = keyed_submit().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.unwrap()["id"], keyed["id"]);

    let _worker = worker(&app);
    for id in &ids {
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded", "{id}");
    }
    // Once ended, the retention runs: the record and payload now expire within a second.
    let ttl = ttl_ms(&app, &app.key(&format!("task:{}", ids[0]))).await;
    assert!((1..=1000).contains(&ttl), "ended record TTL {ttl}");
    assert!((1..=1000).contains(&ttl_ms(&app, &app.key(&format!("payload:{large}"))).await));
    let payload = app.http.get(app.url(&format!("/api/v1/tasks/{}/payload", ids[0]))).send().await.unwrap();
    assert_eq!(payload.status(), 200, "a payload in its record is read back from it");
    assert_eq!(payload.json::<serde_json::Value>().await.unwrap(), json!({"n": 0}));
}

#[tokio::test]
async fn a_task_that_outlives_its_ttl_becomes_an_expired_dead_letter_with_its_event() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut events = app.sse("/api/v1/events", None).await;
    let queued = app.submit_ok(json!({"kind": "echo", "payload": 1, "ttl_ms": 300})).await;
    let view = app.get_json(&format!("/api/v1/tasks/{queued}")).await;
    assert!(view["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{view}");
    let fresh = app.submit_ok(json!({"kind": "echo", "payload": 2, "ttl_ms": 600_000})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let _worker = worker(&app);
    let seen = events.until_task_ends(&queued, Duration::from_secs(20)).await;
    let last = seen.last().unwrap();
    assert_eq!(last.name, "failed");
    assert!(last.data["error"].as_str().unwrap().contains("expired"), "{:?}", last.data);
    assert!(seen.iter().all(|e| e.name != "running"), "an expired task never runs: {seen:?}");
    let view = app.get_json(&format!("/api/v1/tasks/{queued}")).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("failed"), Some(0)));
    let dead = app.get_json("/api/v1/dead-letters").await;
    let letter = dead["dead_letters"].as_array().unwrap().iter().find(|d| d["task"]["id"] == queued.as_str());
    assert_eq!(letter.expect("the expired task is a dead letter")["reason"], "expired");
    assert_eq!(app.wait_until_done(&fresh).await["status"], "succeeded");
}

#[tokio::test]
async fn a_delayed_task_whose_expiry_comes_first_expires_while_it_waits() {
    let app = spawn_app().await;
    let at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(700);
    let expires_at = at.format(&time::format_description::well_known::Rfc3339).unwrap();
    let id =
        app.submit_ok(json!({"kind": "echo", "payload": 1, "delay_ms": 600, "expires_at": expires_at})).await;
    // Due before it expires: it runs.
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    // Expiring while delayed (a retry's wait): the sweep ends it before it is due.
    let id = app
        .submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "ttl_ms": 400, "max_attempts": 3}))
        .await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "succeeded", "a 50 ms retry comes before the expiry: {view}");
    // Its success dropped what the failed attempt left: the record keeps no empty error.
    assert_eq!((view["attempts"].as_u64(), &view["error"]), (Some(2), &serde_json::Value::Null), "{view}");
    let fields = app.record_fields(&id).await;
    for left in ["error", "next_run", "lease", "worker", "attempt_started", "progress", "waited"] {
        assert!(!fields.contains_key(left), "{left} in {fields:?}");
    }
    let slow = spawn_app_with(|c| c.retry_base = Duration::from_secs(5)).await;
    let id = slow
        .submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "ttl_ms": 800, "max_attempts": 3}))
        .await;
    let started = std::time::Instant::now();
    let view = slow.wait_until_done(&id).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("failed"), Some(1)), "{view}");
    assert!(view["error"].as_str().unwrap().contains("expired"), "{view}");
    assert!(started.elapsed() < Duration::from_secs(4), "expired before the 5 s retry was due");
    // The expiry dropped the retry's next run and what its failed attempt left, and wrote no
    // empty lease or cancel.
    let fields = slow.record_fields(&id).await;
    assert_eq!(fields.get("dead_reason").map(String::as_str), Some("expired"), "{fields:?}");
    for left in ["next_run", "lease", "cancel", "worker", "attempt_started", "updated"] {
        assert!(!fields.contains_key(left), "{left} in {fields:?}");
    }
}

#[tokio::test]
async fn a_session_goes_on_past_a_task_that_expired_in_it() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let first = app.submit_ok(json!({"kind": "echo", "payload": 1, "session": "s", "ttl_ms": 200})).await;
    let second = app.submit_ok(json!({"kind": "echo", "payload": 2, "session": "s"})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _worker = worker(&app);
    assert_eq!(app.wait_until_done(&first).await["status"], "failed");
    assert_eq!(app.wait_until_done(&second).await["status"], "succeeded");
}

#[tokio::test]
async fn expiry_options_that_cannot_hold_are_refused() {
    let app = spawn_app().await;
    let cases = [
        json!({"kind": "echo", "payload": 1, "ttl_ms": 100, "expires_at": "2099-01-01T00:00:00Z"}),
        json!({"kind": "echo", "payload": 1, "ttl_ms": 0}),
        json!({"kind": "echo", "payload": 1, "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"kind": "echo", "payload": 1, "expires_at": "tomorrow"}),
        json!({"kind": "echo", "payload": 1, "ttl_ms": 1000, "delay_ms": 1000}),
    ];
    for body in cases {
        let problem = assert_problem(app.submit(body.clone()).await, 422, "/problems/invalid-option").await;
        assert!(problem["detail"].as_str().is_some(), "{body}: {problem}");
    }
    let raw = app.http.post(app.url("/api/v1/tasks?kind=echo&ttl_ms=soon")).body("x").send().await.unwrap();
    assert_problem(raw, 422, "/problems/invalid-option").await;
}

/// Writes a task as dcdf036's enqueue did (record and payload with the retention as TTL, no
/// expiry or payload-ref fields), queued (`delay_ms` None) or delayed.
async fn enqueue_as_dcdf036(app: &TestApp, payload: &str, delay_ms: Option<u64>) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let now = courier::store::now_ms();
    let status = if delay_ms.is_some() { "scheduled" } else { "queued" };
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(app.default_key(&format!("payload:{id}")))
        .arg(payload)
        .arg("PX")
        .arg(86_400_000)
        .ignore()
        .cmd("HSET")
        .arg(app.default_key(&format!("task:{id}")))
        .arg(&[
            ("kind", "echo"),
            ("status", status),
            ("attempts", "0"),
            ("max_attempts", "3"),
            ("created", &now.to_string()),
            ("updated", &now.to_string()),
            ("payload_bytes", &payload.len().to_string()),
            ("payload_type", "application/json"),
            ("timeout_ms", ""),
            ("priority", "n"),
            ("session", ""),
            ("subscription", ""),
            ("idem", ""),
        ])
        .ignore()
        .cmd("PEXPIRE")
        .arg(app.default_key(&format!("task:{id}")))
        .arg(86_400_000)
        .ignore()
        .cmd("ZADD")
        .arg(app.default_key("index"))
        .arg(0)
        .arg(&id)
        .ignore();
    match delay_ms {
        Some(delay) => {
            pipe.cmd("ZADD").arg(app.default_key("delayed")).arg(now + delay).arg(format!("n:{id}")).ignore()
        }
        None => pipe.cmd("XADD").arg(app.default_key("ready")).arg("*").arg("task").arg(&id).ignore(),
    };
    pipe.query_async::<()>(&mut app.redis().await).await.unwrap();
    id
}

#[tokio::test]
async fn tasks_written_by_the_previous_layout_still_run_after_the_upgrade() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let queued = enqueue_as_dcdf036(&app, r#"{"n":1}"#, None).await;
    let delayed = enqueue_as_dcdf036(&app, r#"{"n":2}"#, Some(300)).await;
    // A retry then waited in the delayed set too (now it has a set of its own).
    let retrying = enqueue_as_dcdf036(&app, r#"{"n":3}"#, Some(200)).await;
    let mut redis = app.redis().await;
    let _: () = redis
        .hset_multiple(
            app.default_key(&format!("task:{retrying}")),
            &[("status", "retrying"), ("attempts", "1")],
        )
        .await
        .unwrap();
    // And its events had no queue: they are the default queue's.
    let mut events = app.sse("/api/v1/events", None).await;
    let _: String = redis
        .xadd(
            app.default_key("events"),
            "*",
            &[
                ("event", "queued"),
                ("task", queued.as_str()),
                ("kind", "echo"),
                ("status", "queued"),
                ("attempt", "0"),
                ("progress", ""),
                ("error", ""),
                ("at", "1"),
            ],
        )
        .await
        .unwrap();
    let old = events.next_within(Duration::from_secs(5)).await.expect("the old event is sent");
    assert_eq!(
        (old.data["task_id"].as_str(), old.data["queue"].as_str()),
        (Some(queued.as_str()), Some("default"))
    );
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{queued}")).await["status"], "queued");
    let _worker = worker(&app);
    for (id, n) in [(&queued, 1), (&delayed, 2), (&retrying, 3)] {
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}/result")).await, json!({"n": n}));
    }
    // Ended, they keep the retention of this version.
    let ttl = ttl_ms(&app, &app.default_key(&format!("task:{queued}"))).await;
    assert!((1..=1000).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn a_record_leaves_out_what_its_readers_take_for_granted_and_its_view_says_it_all_the_same() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    // Plain submissions (queue/enqueue.rs) and the script's (a session's: enqueue.lua).
    let normal = app.submit_ok(json!({"kind": "echo", "payload": {"n": 1}})).await;
    let high = app.submit_ok(json!({"kind": "echo", "payload": {"n": 2}, "priority": "high"})).await;
    let in_session = app.submit_ok(json!({"kind": "echo", "payload": {"n": 3}, "session": "s"})).await;
    let stepped = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 300, "steps": 3}})).await;
    let once = app.submit_ok(json!({"kind": "echo", "payload": {"n": 4}, "max_attempts": 1})).await;
    let once_in_session =
        app.submit_ok(json!({"kind": "echo", "payload": {"n": 5}, "max_attempts": 1, "session": "t"})).await;
    for id in [&normal, &in_session, &stepped, &once, &once_in_session] {
        let fields = app.record_values(id).await;
        assert_eq!(fields.get("status").map(String::as_str), Some("queued"), "{fields:?}");
        // What every reader takes for granted (a payload in the record is its own size), and the
        // flag that versions before the twenty-ninth step read beside a small payload.
        for granted in ["priority", "updated", "attempts", "payload_type", "payload_bytes", "payload_inline"]
        {
            assert!(!fields.contains_key(granted), "{granted} in {fields:?}");
        }
        let payload = fields.get("payload").expect("a small payload lives in the record");
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(view["payload_bytes"], payload.len(), "{view}");
        assert_eq!(view["updated_at"], view["created_at"], "{view}");
        assert_eq!(view["attempts"], 0, "{view}");
    }
    // A `max_attempts` of 1 is taken for granted too; the default (5) is written.
    for (id, written, allowed) in [(&normal, Some("5"), 5), (&once, None, 1), (&once_in_session, None, 1)] {
        let fields = app.record_values(id).await;
        assert_eq!(fields.get("max_attempts").map(String::as_str), written, "{fields:?}");
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["max_attempts"], allowed);
    }
    assert_eq!(app.record_fields(&high).await.get("priority").map(String::as_str), Some("h"));
    // A JSON payload's type is taken for granted (`application/json`); any other is written.
    let text = app.submit_raw_ok("echo", "text/plain", "plain words").await;
    let text_type = app.record_values(&text).await.get("payload_type").cloned();
    assert_eq!(text_type.as_deref(), Some("text/plain"));
    for (id, content_type) in [(&normal, "application/json"), (&text, "text/plain")] {
        let payload = app.http.get(app.url(&format!("/api/v1/tasks/{id}/payload"))).send().await.unwrap();
        assert_eq!(payload.headers()["content-type"], content_type, "{id}");
    }

    // Run by a worker process: a success writes no progress, and reads as all of it (`sleep`
    // reports its own on its way).
    let _worker = app.worker(&["--concurrency", "4"]);
    for id in [&normal, &high, &in_session, &stepped, &once, &once_in_session] {
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!((&view["progress"], &view["attempts"]), (&json!(100), &json!(1)), "{view}");
    }
    for id in [&normal, &high, &in_session] {
        assert!(!app.record_fields(id).await.contains_key("progress"), "{id}");
    }
    // What only the running attempt had is gone but its worker: the record tells its one attempt
    // without a log entry (record.rs, `ATTEMPT_LOG`). With no value over 64 bytes, Redis keeps it
    // as a listpack, its compact encoding of a small hash.
    let fields = app.record_fields(&normal).await;
    for running in ["lease", "attempt_started", "a:1"] {
        assert!(!fields.contains_key(running), "{running} in {fields:?}");
    }
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(app.key(&format!("task:{normal}")))
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    assert_eq!(encoding, "listpack", "{fields:?}");
    let attempts = app.get_json(&format!("/api/v1/tasks/{normal}/attempts")).await;
    let attempt = &attempts["attempts"][0];
    assert!(attempt["worker"].as_str().is_some_and(|w| w.starts_with("worker-")), "{attempts}");
    assert_eq!(
        (attempt["outcome"].as_str(), attempts["attempts"].as_array().map(Vec::len)),
        (Some("succeeded"), Some(1))
    );
}

#[tokio::test]
async fn a_started_or_ended_record_keeps_no_updated_field_and_its_view_changed_as_it_did() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    // Each way a task ends: a success (the plain end), a failure (finish.lua), an expiry
    // (ends.lua's `expire_task`), a cancel while it waits (cancel.lua) and one while it runs.
    let succeeded = app.submit_ok(json!({"kind": "echo", "payload": {"n": 1}})).await;
    let text = app.submit_raw_ok("echo", "text/plain", b"plain words".to_vec()).await;
    let retried =
        app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 2})).await;
    let dead =
        app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})).await;
    let expired = app.submit_ok(json!({"kind": "echo", "payload": 2, "ttl_ms": 200})).await;
    let waiting = app.submit_ok(json!({"kind": "echo", "payload": 3, "delay_ms": 600_000})).await;
    // (One step: no progress report changes its record while it runs.)
    let running = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 20_000, "steps": 1}})).await;
    let cancelled = app.http.delete(app.url(&format!("/api/v1/tasks/{waiting}"))).send().await.unwrap();
    assert!(cancelled.status().is_success(), "{}", cancelled.status());
    tokio::time::sleep(Duration::from_millis(400)).await;

    let mut events = app.sse(&format!("/api/v1/tasks/{running}/events"), None).await;
    // (Default retentions: the records are read after their ends.)
    let mut first_worker = app.worker(&["--concurrency", "4"]);
    loop {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the sleep starts");
        if event.name == "running" {
            break;
        }
    }
    // Running, its record keeps no `updated` either: its attempt's start says when it changed.
    let fields = app.record_fields(&running).await;
    assert!(!fields.contains_key("updated") && fields.contains_key("attempt_started"), "{fields:?}");
    let view = app.get_json(&format!("/api/v1/tasks/{running}")).await;
    let attempts = app.get_json(&format!("/api/v1/tasks/{running}/attempts")).await;
    assert_eq!(attempts["attempts"][0]["outcome"], "running", "{attempts}");
    assert_eq!(view["updated_at"], attempts["attempts"][0]["started_at"], "{view} {attempts}");
    let cancelling = app.http.delete(app.url(&format!("/api/v1/tasks/{running}"))).send().await.unwrap();
    assert!(cancelling.status().is_success(), "{}", cancelling.status());

    for (id, status) in [
        (&succeeded, "succeeded"),
        (&text, "succeeded"),
        (&retried, "succeeded"),
        (&dead, "failed"),
        (&expired, "failed"),
        (&waiting, "cancelled"),
        (&running, "cancelled"),
    ] {
        let view = app.wait_until_done(id).await;
        assert_eq!(view["status"], status, "{view}");
        let fields = app.record_fields(id).await;
        assert!(!fields.contains_key("updated"), "{status} {id}: {fields:?}");
        assert!(view["finished_at"].is_string(), "{view}");
        assert_eq!(view["updated_at"], view["finished_at"], "{view}");
    }
    // A task that ended on its first attempt (the plain end, finish.lua's success, failure and
    // cancel) logs no attempt: its record keeps the attempt's worker and tells it (record.rs,
    // `ATTEMPT_LOG`). One that ran again logs each attempt.
    for (id, tells_it) in
        [(&succeeded, true), (&text, true), (&dead, true), (&running, true), (&retried, false)]
    {
        let fields = app.record_fields(id).await;
        let logged = fields.keys().filter(|field| field.starts_with("a:")).count();
        assert_eq!((logged == 0, fields.contains_key("worker")), (tells_it, tells_it), "{id}: {fields:?}");
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        let attempts = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
        let first = &attempts["attempts"][0];
        assert!(view["started_at"].is_string() && first["worker"].is_string(), "{view} {attempts}");
        assert_eq!(view["started_at"], first["started_at"], "{view} {attempts}");
        let last = attempts["attempts"].as_array().unwrap().last().unwrap();
        assert_eq!(
            (&last["ended_at"], &last["outcome"]),
            (&view["finished_at"], &view["status"]),
            "{attempts}"
        );
    }
    let attempts = app.get_json(&format!("/api/v1/tasks/{dead}/attempts")).await;
    assert!(attempts["attempts"][0]["error"].is_string(), "{attempts}");
    // Without its `started`, a record whose attempts are logged says its first start all the same
    // (versions since the thirty-third step read it from `a:1`).
    let before = app.get_json(&format!("/api/v1/tasks/{retried}")).await;
    app.drop_record_field(&retried, "started").await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{retried}")).await, before);
    // A JSON result's type is not written (an absent one reads as JSON); any other type is.
    for (id, stored, served) in
        [(&succeeded, None, "application/json"), (&text, Some("text/plain"), "text/plain")]
    {
        let fields = app.record_fields(id).await;
        assert_eq!(fields.get("result_type").map(String::as_str), stored, "{fields:?}");
        let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
        assert_eq!(result.status(), 200);
        assert_eq!(result.headers()["content-type"], served);
    }

    // A dead letter queued again has had no attempt yet (no `attempts` field), and changed as it
    // was queued; then it runs, a first attempt again.
    first_worker.kill().await.unwrap();
    let requeued =
        app.http.post(app.url(&format!("/api/v1/dead-letters/{dead}/requeue"))).send().await.unwrap();
    assert!(requeued.status().is_success(), "{}", requeued.status());
    let fields = app.record_fields(&dead).await;
    assert_eq!(fields.get("status").map(String::as_str), Some("queued"), "{fields:?}");
    for gone in ["attempts", "finished", "error", "dead_reason", "started", "worker"] {
        assert!(!fields.contains_key(gone), "{gone} in {fields:?}");
    }
    let view = app.get_json(&format!("/api/v1/tasks/{dead}")).await;
    assert_eq!((view["attempts"].as_u64(), &view["finished_at"]), (Some(0), &json!(null)), "{view}");
    assert!(view["updated_at"].as_str() > view["created_at"].as_str(), "{view}");
    let _worker = app.worker(&["--concurrency", "4"]);
    let view = app.wait_until_done(&dead).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("failed"), Some(1)), "{view}");
}
