//! Workflows: results passed along a diamond, every failure policy, a map and its gather,
//! cancellation, requeueing a dead step, a success reported twice, idempotency, `Prefer: wait`,
//! their events, and a thousand at once.

use crate::support::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// `body` with every step in the test queue (when the run names one).
fn in_queue(mut body: Value) -> Value {
    if let Some(queue) = test_queue() {
        for step in body["steps"].as_array_mut().unwrap() {
            step.as_object_mut().unwrap().entry("queue").or_insert(queue.clone().into());
        }
    }
    body
}

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.http.post(app.url("/api/v1/workflows")).json(&in_queue(body)).send().await.unwrap()
}

/// Creates a workflow that must be accepted; its view.
async fn create_ok(app: &TestApp, body: Value) -> Value {
    let response = create(app, body).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.get_json(&format!("/api/v1/workflows/{id}")).await
}

/// Polls the workflow until it has ended (a minute at most); its view.
async fn until_ended(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = app.get_json(&format!("/api/v1/workflows/{id}")).await;
        if view["status"] != "running" {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "the workflow ends within a minute: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["steps"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap()
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_diamond_passes_results_along_and_ends_with_the_last_steps_result() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"name": "diamond", "steps": [
            {"id": "a", "kind": "echo", "payload": {"n": 7, "text": "to be or not to be"}},
            {"id": "b", "kind": "echo", "after": ["a"], "payload": {"$from": "a", "pointer": "/n"}},
            {"id": "c", "kind": "text.stats", "after": ["a"], "payload": {"$from": "a", "pointer": "/text"}},
            {"id": "d", "kind": "echo", "after": ["b", "c"],
             "payload": {"n": {"$from": "b"}, "words": {"$from": "c", "pointer": "/words"}}},
        ]}),
    )
    .await;
    assert_eq!(view["name"], "diamond");
    let id = id_of(&view);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    for name in ["a", "b", "c", "d"] {
        assert_eq!(step(&ended, name)["state"], "succeeded");
        let task = step(&ended, name)["tasks"][0].as_str().unwrap().to_string();
        let task = app.get_json(&format!("/api/v1/tasks/{task}")).await;
        assert_eq!((&task["workflow_id"], &task["workflow_step"]), (&json!(id), &json!(name)));
    }

    let status = app.http.get(app.url(&format!("/api/v1/workflows/{id}/status"))).send().await.unwrap();
    assert_eq!(status.status(), 303);
    let location = status.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/workflows/{id}/result"));
    assert_eq!(app.get_json(&location).await, json!({"d": {"n": 7, "words": 6}}));
}

#[tokio::test]
async fn a_running_workflow_answers_its_monitor_with_retry_after_and_its_result_with_409() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "nap", "kind": "sleep", "payload": {"ms": 1500, "steps": 3}},
            {"id": "after", "kind": "echo", "after": ["nap"], "payload": 1},
        ]}),
    )
    .await;
    let id = id_of(&view);
    let status = app.http.get(app.url(&format!("/api/v1/workflows/{id}/status"))).send().await.unwrap();
    assert_eq!(status.status(), 200);
    assert!(status.headers().contains_key("retry-after"));
    assert_eq!(status.json::<Value>().await.unwrap()["status"], "running");
    let result = app.http.get(app.url(&format!("/api/v1/workflows/{id}/result"))).send().await.unwrap();
    assert_problem(result, 409, "/problems/not-finished").await;
    assert_eq!(step(&view, "after")["state"], "waiting");
    assert_eq!(until_ended(&app, &id).await["status"], "succeeded");
}

/// A step that fails for good at its first attempt.
fn doomed(id: &str) -> Value {
    json!({"id": id, "kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})
}

#[tokio::test]
async fn fail_fails_the_workflow_naming_the_step_and_cancels_the_steps_not_started() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"steps": [
            doomed("a"),
            {"id": "b", "kind": "echo", "after": ["a"]},
            {"id": "c", "kind": "echo", "after": ["b"]},
        ]}),
    )
    .await;
    let id = id_of(&view);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "failed");
    assert_eq!(ended["failed_step"], "a");
    assert!(ended["error"].as_str().unwrap().starts_with("step `a` failed: flaky"), "{ended}");
    assert_eq!(
        ["a", "b", "c"].map(|s| step(&ended, s)["state"].clone()),
        [json!("failed"), json!("cancelled"), json!("cancelled")]
    );
    assert!(step(&ended, "b")["tasks"].as_array().unwrap().is_empty(), "nothing started after it");
    let status: Value = app
        .http
        .get(app.url(&format!("/api/v1/workflows/{id}/status")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["error"]["type"], "/problems/workflow-failed");
    assert_eq!(status["failed_step"], "a");
}

#[tokio::test]
async fn continue_runs_the_step_with_the_failure_in_place_of_the_result() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"steps": [doomed("a"), {"id": "b", "kind": "echo", "after": ["a"], "on_failure": "continue"}]}),
    )
    .await;
    let id = id_of(&view);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let result = app.get_json(&format!("/api/v1/workflows/{id}/result")).await;
    assert_eq!((&result["b"]["step"], &result["b"]["state"]), (&json!("a"), &json!("failed")));
    assert!(result["b"]["error"].as_str().unwrap().contains("failed on purpose"), "{result}");
}

#[tokio::test]
async fn skip_skips_the_step_and_those_after_it_unless_they_continue() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"steps": [
            doomed("a"),
            {"id": "b", "kind": "echo", "after": ["a"], "on_failure": "skip"},
            {"id": "c", "kind": "echo", "after": ["b"]},
            {"id": "d", "kind": "echo", "after": ["b"], "on_failure": "continue"},
        ]}),
    )
    .await;
    let id = id_of(&view);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(
        ["a", "b", "c", "d"].map(|s| step(&ended, s)["state"].clone()),
        [json!("failed"), json!("skipped"), json!("skipped"), json!("succeeded")]
    );
    let result = app.get_json(&format!("/api/v1/workflows/{id}/result")).await;
    assert_eq!(result, json!({"c": null, "d": {"step": "b", "state": "skipped"}}));
}

#[tokio::test]
async fn a_hundred_way_map_runs_a_task_per_element_and_the_gather_gets_them_in_order() {
    let app = spawn_app().await;
    let chunks: Vec<String> = (0..100).map(|i| "word ".repeat(i % 7 + 1)).collect();
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "split", "kind": "echo", "payload": {"chunks": chunks}},
            {"id": "count", "kind": "text.stats", "after": ["split"], "map": {"$from": "split", "pointer": "/chunks"}},
            {"id": "gather", "kind": "echo", "after": ["count"]},
        ]}),
    )
    .await;
    let id = id_of(&view);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let tasks = step(&ended, "count")["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 100);
    let tenth = app.get_json(&format!("/api/v1/tasks/{}", tasks[10].as_str().unwrap())).await;
    assert_eq!(tenth["workflow_step"], "count[10]");
    let result = app.get_json(&format!("/api/v1/workflows/{id}/result")).await;
    let words: Vec<u64> =
        result["gather"].as_array().unwrap().iter().map(|s| s["words"].as_u64().unwrap()).collect();
    assert_eq!(words, (0..100).map(|i| (i % 7 + 1) as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_head_of_a_workflows_result_answers_as_its_get_without_reading_the_results() {
    // A Redis of its own: the bytes it sends are counted.
    let app = spawn_app_alone(|_| {}).await;
    // A delayed step keeps the workflow running while the first HEAD asks.
    let slow = create_ok(&app, json!({"steps": [{"id": "a", "kind": "echo", "delay_ms": 60_000}]})).await;
    let url = app.url(&format!("/api/v1/workflows/{}/result", id_of(&slow)));
    let (head, get) = (app.http.head(&url).send().await.unwrap(), app.http.get(&url).send().await.unwrap());
    assert_eq!((head.status().as_u16(), get.status().as_u16()), (409, 409));
    assert_eq!(head.headers().get("retry-after"), get.headers().get("retry-after"));

    // Its result is a map's hundred results, each in a record of its own.
    let words: Vec<String> = (0..100).map(|i| "word ".repeat(i % 7 + 1)).collect();
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "split", "kind": "echo", "payload": words},
            {"id": "count", "kind": "text.stats", "after": ["split"], "map": {"$from": "split"}},
        ]}),
    )
    .await;
    let ended = until_ended(&app, &id_of(&view)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let url = app.url(&format!("/api/v1/workflows/{}/result", id_of(&view)));
    let sent = bytes_sent(&app).await;
    let head = app.http.head(&url).send().await.unwrap();
    let head_read = bytes_sent(&app).await - sent;
    let sent = bytes_sent(&app).await;
    let get = app.http.get(&url).send().await.unwrap();
    let get_read = bytes_sent(&app).await - sent;
    assert_eq!((head.status().as_u16(), get.status().as_u16()), (200, 200));
    assert_eq!(head.headers().get("content-type"), get.headers().get("content-type"));
    assert_eq!(head.headers()["content-type"], "application/json");
    // No length it would have to build the result to know, and certainly not a wrong one.
    assert_eq!(head.headers().get("content-length"), None, "{:?}", head.headers());
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(get.json::<Value>().await.unwrap()["count"].as_array().map(Vec::len), Some(100));
    // The GET read the hundred records and results; the HEAD, the workflow alone.
    assert!(head_read * 4 < get_read, "Redis sent {head_read} bytes for the HEAD, {get_read} for the GET");
}

#[tokio::test]
async fn a_payload_refused_when_its_step_becomes_ready_fails_that_step() {
    let app = spawn_app().await;
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "a", "kind": "echo", "payload": "not a number"},
            {"id": "b", "kind": "flaky", "after": ["a"], "payload": {"fail_times": {"$from": "a"}}},
            {"id": "m", "kind": "echo", "after": ["a"], "on_failure": "continue", "map": {"$from": "a"}},
        ]}),
    )
    .await;
    let ended = until_ended(&app, &id_of(&view)).await;
    assert_eq!(ended["status"], "failed");
    let b = step(&ended, "b");
    assert_eq!((&b["state"], b["tasks"].as_array().unwrap().len()), (&json!("failed"), 0));
    assert!(b["error"].as_str().unwrap().contains("schema"), "{b}");
    assert!(step(&ended, "m")["error"].as_str().unwrap().contains("takes an array"), "{ended}");
}

#[tokio::test]
async fn a_definition_with_a_fault_is_refused_whole_naming_the_step() {
    let app = spawn_app().await;
    let cases = [
        (json!({"steps": []}), "1 to 500 steps"),
        (
            json!({"steps": [{"id": "a", "kind": "echo", "after": ["b"]}, {"id": "b", "kind": "echo", "after": ["a"]}]}),
            "cycle",
        ),
        (json!({"steps": [{"id": "a", "kind": "echo", "after": ["zz"]}]}), "step `a`"),
        (json!({"steps": [{"id": "a", "kind": "no.such.kind"}]}), "step `a`: unknown task kind"),
        (json!({"steps": [{"id": "a", "kind": "flaky", "payload": {"fail_times": "x"}}]}), "step `a`"),
        (json!({"steps": [{"id": "a", "kind": "echo", "max_attempts": 0}]}), "step `a`: max_attempts"),
        (
            json!({"steps": [{"id": "a", "kind": "echo"}, {"id": "b", "kind": "echo", "after": ["a"], "payload": {"$from": "c"}}]}),
            "step `b`",
        ),
        (json!({"steps": [{"id": "a", "kind": "echo", "queue": "Bad Name"}]}), "step `a`"),
    ];
    for (body, says) in cases {
        let problem =
            assert_problem(create(&app, body.clone()).await, 422, "/problems/invalid-workflow").await;
        assert!(problem["detail"].as_str().unwrap().contains(says), "{body} → {problem}");
    }
    let shape = create(&app, json!({"steps": [{"id": "a"}]})).await;
    assert_eq!(shape.status(), 422);
    let listed = app.get_json("/api/v1/workflows").await;
    assert!(listed["workflows"].as_array().unwrap().is_empty(), "nothing stored: {listed}");
}

#[tokio::test]
async fn a_step_shows_running_once_its_task_starts_though_no_look_followed() {
    let app = spawn_app().await;
    let pause = app.http.post(app.url("/api/v1/queues/wf-held/pause")).send().await.unwrap();
    assert_eq!(pause.status(), 200);
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "nap", "kind": "sleep", "queue": "wf-held", "payload": {"ms": 3000, "steps": 30}},
            {"id": "next", "kind": "echo", "after": ["nap"], "payload": 1},
        ]}),
    )
    .await;
    let id = id_of(&view);
    // The workflow's looks are over while its queue holds the task: `queued` is recorded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = app.get_json(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(step(&held, "nap")["state"], "queued", "{held}");
    let task = step(&held, "nap")["tasks"][0].as_str().unwrap().to_string();
    let mut events = app.sse("/api/v1/events", None).await;
    let resume = app.http.post(app.url("/api/v1/queues/wf-held/resume")).send().await.unwrap();
    assert_eq!(resume.status(), 200);
    loop {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the step's task runs");
        if event.name == "running" && event.data["task_id"] == task.as_str() {
            break;
        }
    }
    // Looks follow task ends, none came: the view reads that the task started.
    let seen = app.get_json(&format!("/api/v1/workflows/{id}")).await;
    assert_eq!(step(&seen, "nap")["state"], "running", "{seen}");
    assert_eq!(step(&seen, "next")["state"], "waiting");
    assert_eq!(until_ended(&app, &id).await["status"], "succeeded");
}

#[tokio::test]
async fn cancelling_stops_the_running_step_and_starts_nothing_else() {
    let app = spawn_app().await;
    let mut events = app.sse("/api/v1/events", None).await;
    let view = create_ok(
        &app,
        json!({"steps": [
            {"id": "long", "kind": "sleep", "payload": {"ms": 20000, "steps": 200}},
            {"id": "next", "kind": "echo", "after": ["long"], "payload": 1},
        ]}),
    )
    .await;
    let id = id_of(&view);
    loop {
        let event = events.next_within(Duration::from_secs(20)).await.expect("the first step runs");
        if event.name == "running" {
            break;
        }
    }
    let cancelled = app.http.delete(app.url(&format!("/api/v1/workflows/{id}"))).send().await.unwrap();
    assert_eq!(cancelled.status(), 202);
    let ended = until_ended(&app, &id).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(step(&ended, "next")["state"], "cancelled");
    let task = step(&ended, "long")["tasks"][0].as_str().unwrap().to_string();
    assert_eq!(app.wait_until_done(&task).await["status"], "cancelled");
    let again = app.http.delete(app.url(&format!("/api/v1/workflows/{id}"))).send().await.unwrap();
    assert_problem(again, 409, "/problems/already-finished").await;
    let status: Value = app
        .http
        .get(app.url(&format!("/api/v1/workflows/{id}/status")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["error"]["status"], 409);
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_workflow_and_another_body_is_refused() {
    let app = spawn_app().await;
    let body = in_queue(json!({"steps": [{"id": "a", "kind": "echo", "payload": 1}]}));
    let send = |body: Value| {
        app.http.post(app.url("/api/v1/workflows")).header("idempotency-key", "wf-1").json(&body).send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = send(in_queue(json!({"steps": [{"id": "a", "kind": "echo", "payload": 2}]}))).await.unwrap();
    assert_problem(other, 422, "/problems/idempotency-key-reused").await;
    assert_eq!(app.get_json("/api/v1/workflows").await["workflows"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn prefer_wait_answers_with_the_result_once_the_workflow_ends() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/api/v1/workflows"))
        .header("prefer", "wait=20")
        .json(&in_queue(json!({"steps": [
            {"id": "a", "kind": "echo", "payload": {"x": 1}},
            {"id": "b", "kind": "echo", "after": ["a"], "payload": {"got": {"$from": "a", "pointer": "/x"}}},
        ]})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=20");
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"b": {"got": 1}}));
}

#[tokio::test]
async fn steps_and_the_workflow_push_events() {
    let app = spawn_app().await;
    let mut events = app.sse("/api/v1/events", None).await;
    let view = create_ok(
        &app,
        json!({"steps": [{"id": "a", "kind": "echo", "payload": 1}, {"id": "b", "kind": "echo", "after": ["a"]}]}),
    )
    .await;
    let id = id_of(&view);
    let mut seen = Vec::new();
    while !seen.contains(&(None, "succeeded".to_string())) {
        let event = events.next_within(Duration::from_secs(20)).await.expect("workflow events arrive");
        if event.name == "workflow" && event.data["workflow_id"] == id.as_str() {
            seen.push((
                event.data["step"].as_str().map(str::to_string),
                event.data["status"].as_str().unwrap().to_string(),
            ));
        }
    }
    // A step may pass through a state between two looks (a quick one is queued and done): what
    // is pushed is each state seen, in order, ending with each step's end and then the workflow's.
    let position = |step: Option<&str>, status: &str| {
        seen.iter()
            .position(|(s, st)| s.as_deref() == step && st == status)
            .unwrap_or_else(|| panic!("{step:?} {status} in {seen:?}"))
    };
    assert!(position(Some("a"), "succeeded") < position(Some("b"), "succeeded"));
    assert!(position(Some("b"), "succeeded") < position(None, "succeeded"));
}

#[tokio::test]
async fn a_thousand_workflows_at_once_all_end() {
    let app = spawn_app_with(|c| c.concurrency = 16).await;
    let body = in_queue(json!({"steps": [
        {"id": "a", "kind": "echo", "payload": {"n": 1}},
        {"id": "b", "kind": "echo", "after": ["a"], "payload": {"m": {"$from": "a", "pointer": "/n"}}},
    ]}));
    let ids: Vec<String> = futures::stream::iter(0..1000)
        .map(|_| {
            let request = app.http.post(app.url("/api/v1/workflows")).json(&body).send();
            async move {
                let response = request.await.unwrap();
                assert_eq!(response.status(), 202);
                response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut left: Vec<String> = ids;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !left.is_empty() {
        let mut still = Vec::new();
        for id in left {
            let view = app.get_json(&format!("/api/v1/workflows/{id}")).await;
            match view["status"].as_str().unwrap() {
                "running" => still.push(id),
                status => assert_eq!(status, "succeeded", "{view}"),
            }
        }
        left = still;
        assert!(tokio::time::Instant::now() < deadline, "{} workflows still running", left.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_definition_over_a_mebibyte_is_refused_with_413() {
    let app = spawn_app().await;
    let big = "x".repeat(1024 * 1024);
    let response = create(&app, json!({"steps": [{"id": "a", "kind": "echo", "payload": big}]})).await;
    assert_problem(response, 413, "/problems/payload-too-large").await;
}

#[tokio::test]
async fn an_ended_workflow_goes_after_its_retention_and_leaves_the_listing() {
    let app = spawn_app_with(|c| c.retention = Duration::from_secs(1)).await;
    let view = create_ok(&app, json!({"steps": [{"id": "a", "kind": "echo", "payload": 1}]})).await;
    let id = id_of(&view);
    assert_eq!(until_ended(&app, &id).await["status"], "succeeded");
    let listing = courier::workflows::WorkflowKeys::new(&app.prefix).list();
    let mut redis = app.redis().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed: u64 = redis::AsyncCommands::zcard(&mut redis, &listing).await.unwrap();
        let gone =
            app.http.get(app.url(&format!("/api/v1/workflows/{id}"))).send().await.unwrap().status() == 404;
        if listed == 0 && gone {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listed: {listed}, gone: {gone}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
