//! A task's whole trip: submit → 202 contract → events in order → status monitor → result.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_submitted_task_is_accepted_runs_and_its_events_arrive_in_order() {
    let app = spawn_app().await;
    let mut events = app.sse("/api/v1/events", None).await;

    let response = app.submit(json!({"kind": "echo", "payload": {"hello": "world"}})).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let view: serde_json::Value = response.json().await.unwrap();
    let id = view["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/tasks/{id}/status"));
    assert_eq!(view["status"], "queued");
    assert_eq!(view["kind"], "echo");
    assert_eq!(view["payload_bytes"], 17);
    assert_eq!(id.parse::<uuid::Uuid>().unwrap().get_version_num(), 7);

    let seen = events.until_task_ends(id, Duration::from_secs(10)).await;
    let names: Vec<&str> = seen.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["queued", "running", "succeeded"]);
    // Each id is the reader's place in every stream: the task's queue's moves on.
    let queue = view["queue"].as_str().unwrap();
    let positions: Vec<(u64, u64)> = seen
        .iter()
        .map(|e| {
            let place = e.id.split(',').find_map(|part| part.strip_prefix(&format!("{queue}="))).unwrap();
            let (ms, seq) = place.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "ids increase: {positions:?}");
    assert_eq!(seen[1].data["attempt"], 1);
    assert_eq!(seen[2].data["kind"], "echo");

    let status = app.http.get(app.url(&location)).send().await.unwrap();
    assert_eq!(status.status(), 303);
    assert_eq!(status.headers()["location"], format!("/api/v1/tasks/{id}/result").as_str());
    assert!(status.headers().contains_key("expires"));

    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "application/json");
    assert_eq!(result.json::<serde_json::Value>().await.unwrap(), json!({"hello": "world"}));

    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["result_url"], format!("/api/v1/tasks/{id}/result"));
    assert!(view["finished_at"].as_str().is_some());
}

#[tokio::test]
async fn the_status_monitor_answers_200_with_retry_after_while_the_task_waits() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let status = app.http.get(app.url(&format!("/api/v1/tasks/{id}/status"))).send().await.unwrap();
    assert_eq!(status.status(), 200);
    assert!(status.headers().contains_key("retry-after"));
    assert!(status.headers().contains_key("expires"));
    let body: serde_json::Value = status.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_problem(result, 409, "/problems/not-finished").await;
}

#[tokio::test]
async fn a_task_event_stream_starts_with_the_current_state_and_ends_after_the_last() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 400, "steps": 4}})).await;
    let mut events = app.sse(&format!("/api/v1/tasks/{id}/events"), None).await;
    let mut seen = Vec::new();
    while let Some(event) = events.next_within(Duration::from_secs(10)).await {
        seen.push(event);
    }
    assert!(["queued", "running", "progress"].contains(&seen[0].name.as_str()), "{:?}", seen[0]);
    let last = seen.last().unwrap();
    assert_eq!(last.name, "succeeded");
    assert_eq!(last.data["progress"], 100);
    let progress: Vec<u64> =
        seen.iter().filter(|e| e.name == "progress").map(|e| e.data["progress"].as_u64().unwrap()).collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "progress only grows: {progress:?}");
    assert_eq!(progress.last(), Some(&100));

    // Asked again after the end, it gives the final state and closes.
    let mut again = app.sse(&format!("/api/v1/tasks/{id}/events"), None).await;
    assert_eq!(again.next_within(Duration::from_secs(5)).await.unwrap().name, "succeeded");
    assert!(again.next_within(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn last_event_id_replays_exactly_what_was_missed() {
    let app = spawn_app().await;
    let mut first = app.sse("/api/v1/events", None).await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 200, "steps": 2}})).await;
    let all = first.until_task_ends(&id, Duration::from_secs(10)).await;
    assert!(all.len() >= 4, "{all:?}");
    drop(first);

    // A client that saw only the first event reconnects: it gets the rest, no more, no less.
    let mut resumed = app.sse("/api/v1/events", Some(&all[0].id)).await;
    let replayed = resumed.until_task_ends(&id, Duration::from_secs(10)).await;
    let ids = |events: &[SseEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&all[1..]));
}

#[tokio::test]
async fn a_five_mib_csv_sent_raw_is_summarised() {
    let app = spawn_app().await;
    let mut csv = String::from("id,price,label,flag\n");
    let mut rows = 0u64;
    while csv.len() < 5 << 20 {
        csv.push_str(&format!("{rows},{}.5,label-{},{}\n", rows % 1000, rows % 100, rows.is_multiple_of(2)));
        rows += 1;
    }
    let response = app
        .http
        .post(app.url("/api/v1/tasks?kind=csv.summary"))
        .header("content-type", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["payload_bytes"], csv.len());
    let id = view["id"].as_str().unwrap().to_string();
    let done = app.wait_until_done(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let summary = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(summary["rows"], rows);
    let columns = summary["columns"].as_array().unwrap();
    assert_eq!(columns[0]["type"], "integer");
    assert_eq!(columns[0]["min"], 0);
    assert_eq!(columns[0]["max"], rows - 1);
    assert_eq!(columns[1]["type"], "number");
    assert_eq!(columns[1]["min"], 0.5);
    assert_eq!(columns[1]["max"], 999.5);
    assert_eq!(columns[2]["type"], "text");
    assert_eq!(columns[2]["distinct"], 100);
    assert_eq!(columns[3]["type"], "boolean");
    assert_eq!(columns[3]["distinct"], 2);
}

#[tokio::test]
async fn text_stats_counts_a_json_string_payload() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"kind": "text.stats", "payload": "one two two\nthree"})).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    let stats = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(stats["lines"], 2);
    assert_eq!(stats["words"], 4);
    assert_eq!(stats["top_words"][0], json!({"word": "two", "count": 2}));
}

#[tokio::test]
async fn a_flaky_task_is_retried_until_it_succeeds() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": 2}, "max_attempts": 5})).await;
    let done = app.wait_until_done(&id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["attempts"], 3);
    let result = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result, json!({"succeeded_on_attempt": 3}));
}

#[tokio::test]
async fn a_task_that_always_fails_ends_failed_after_max_attempts() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 2})).await;
    let done = app.wait_until_done(&id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["attempts"], 2);
    assert!(done["error"].as_str().unwrap().contains("attempt 2 of 2"), "{done}");
    let status: serde_json::Value = app.get_json(&format!("/api/v1/tasks/{id}/status")).await;
    assert_eq!(status["error"]["type"], "/problems/task-failed");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_problem(result, 422, "/problems/task-failed").await;
}

#[tokio::test]
async fn a_queued_task_can_be_cancelled_once() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": "x"})).await;
    let response = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["status"], "cancelled");
    let again = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert_problem(again, 409, "/problems/finished").await;
}

#[tokio::test]
async fn the_list_is_newest_first_and_filters_by_status_and_kind() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let kind = if n % 2 == 0 { "echo" } else { "text.stats" };
        ids.push(app.submit_ok(json!({"kind": kind, "payload": format!("n{n}")})).await);
    }
    let page = app.get_json("/api/v1/tasks?limit=3").await;
    let listed: Vec<&str> =
        page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app.get_json(&format!("/api/v1/tasks?limit=3&cursor={cursor}")).await;
    let listed: Vec<&str> =
        rest["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()]);
    assert!(rest["next_cursor"].is_null());

    let echoes = app.get_json("/api/v1/tasks?kind=echo&status=queued").await;
    assert_eq!(echoes["tasks"].as_array().unwrap().len(), 3);
    let none = app.get_json("/api/v1/tasks?status=succeeded").await;
    assert!(none["tasks"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_separate_worker_process_runs_the_tasks_a_worker_less_server_accepts() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut worker = app.worker(&["--concurrency", "2"]);
    let mut events = app.sse("/api/v1/events", None).await;
    let id = app.submit_ok(json!({"kind": "text.stats", "payload": "a b c"})).await;
    let seen = events.until_task_ends(&id, Duration::from_secs(20)).await;
    assert_eq!(seen.last().unwrap().name, "succeeded");
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}/result")).await["words"], 3);
    assert!(worker.try_wait().unwrap().is_none(), "the worker keeps running");
    worker.kill().await.unwrap();
}

#[tokio::test]
async fn kinds_health_and_readiness_answer() {
    let app = spawn_app().await;
    let kinds = app.get_json("/api/v1/kinds").await;
    let names: Vec<&str> = kinds.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["csv.summary", "echo", "flaky", "sleep", "text.stats"]);
    let sleep = kinds.as_array().unwrap().iter().find(|k| k["name"] == "sleep").unwrap();
    assert_eq!(sleep["schema"]["required"], json!(["ms"]));
    assert!(!sleep["description"].as_str().unwrap().is_empty());
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
    assert_eq!(app.get_json("/readyz").await["redis"], "ok");
}

#[tokio::test]
async fn a_batch_is_accepted_whole_in_order_and_every_task_runs() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/api/v1/tasks/batch"))
        .json(&json!({"tasks": [
            {"kind": "echo", "payload": {"n": 1}},
            {"kind": "text.stats", "payload": "one two two", "priority": "high"},
            {"kind": "echo", "payload": [3], "delay_ms": 200, "max_attempts": 2},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("retry-after"));
    let accepted: serde_json::Value = response.json().await.unwrap();
    let views = accepted["tasks"].as_array().unwrap();
    let kinds: Vec<&str> = views.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["echo", "text.stats", "echo"]);
    assert_eq!(views[2]["status"], "scheduled");
    assert_eq!(views[2]["max_attempts"], 2);

    for view in views {
        let id = view["id"].as_str().unwrap();
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded", "{view}");
    }
    let first = app.get_json(&format!("/api/v1/tasks/{}/result", views[0]["id"].as_str().unwrap())).await;
    assert_eq!(first, json!({"n": 1}));
    let stats = app.get_json(&format!("/api/v1/tasks/{}/result", views[1]["id"].as_str().unwrap())).await;
    assert_eq!(stats["words"], 3);
}

/// Under a light load (a task at a time) a worker starts its tasks without the claim function:
/// its blocking read brings each task's entry, and the fetch loop takes the lease with plain
/// commands (docs/benchmark-notes.md, "Eleventh step"). Counted by Redis's slow log, which logs
/// every command at a threshold of 0 (a function call with its name).
#[tokio::test]
async fn a_task_at_a_time_starts_without_the_claim_function() {
    starts_a_task_at_a_time_without_the_claim_function(4).await;
}

/// So does a worker with one slot, whose every read brings as many entries as it asked for: the
/// next look for work is a read again, not a claim (docs/benchmark-notes.md, "Twenty-third
/// step").
#[tokio::test]
async fn a_worker_with_one_slot_starts_a_task_at_a_time_without_the_claim_function() {
    starts_a_task_at_a_time_without_the_claim_function(1).await;
}

async fn starts_a_task_at_a_time_without_the_claim_function(concurrency: usize) {
    let app = spawn_app_alone(|c| c.concurrency = concurrency).await;
    let mut redis = app.redis().await;
    // The first task lets the workers settle: their first looks claim, and find nothing.
    let first = app.submit_ok(json!({"kind": "echo", "payload": 0})).await;
    assert_eq!(app.wait_until_done(&first).await["status"], "succeeded");
    for (setting, value) in [("slowlog-max-len", "1000000"), ("slowlog-log-slower-than", "0")] {
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg(setting).arg(value).query_async(&mut redis).await.unwrap();
    }
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut redis).await.unwrap();
    const TASKS: usize = 20;
    for n in 1..=TASKS {
        let id = app.submit_ok(json!({"kind": "echo", "payload": n})).await;
        assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg("-1")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Each entry: id, time, µs, the command's arguments, client address and name.
    type Logged = (i64, i64, i64, Vec<Vec<u8>>, Vec<u8>, Vec<u8>);
    let log: Vec<Logged> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query_async(&mut redis).await.unwrap();
    let named = |args: &Vec<Vec<u8>>, command: &str| {
        args.first().is_some_and(|c| c.eq_ignore_ascii_case(command.as_bytes()))
    };
    let claims = log
        .iter()
        .filter(|(.., args, _, _)| {
            named(args, "fcall") && args.get(1).is_some_and(|f| f.ends_with(b"_claim"))
        })
        .count();
    // A plain start watches the queue's settings and its tasks' records (a connection's probe
    // watches the settings alone).
    let plain_starts = log
        .iter()
        .filter(|(.., args, _, _)| named(args, "watch") && args.len() > 2 && args[1].ends_with(b":settings"))
        .count();
    // A claim now and then (a queue discovered, a takeover looked for) but not one a task.
    assert!(claims <= 3, "{claims} claim calls for {TASKS} tasks");
    assert!(
        plain_starts + claims >= TASKS,
        "{plain_starts} plain starts and {claims} claims for {TASKS} tasks"
    );
}
