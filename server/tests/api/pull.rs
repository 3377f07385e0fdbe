//! Pull workers over HTTP: leases taken, kept, ended and fenced exactly as the built-in
//! workers' are. (The Python worker, as real processes, is in tests/pull.)

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The queue the test's tasks are in.
fn queue() -> String {
    test_queue().unwrap_or_else(|| "default".into())
}

/// An app without built-in workers: every task waits for a pull worker.
async fn app_without_workers() -> TestApp {
    spawn_app_with(|c| c.concurrency = 0).await
}

impl TestApp {
    async fn lease(&self, request: Value) -> reqwest::Response {
        let url = self.url(&format!("/api/v1/queues/{}/leases", queue()));
        self.http.post(url).json(&request).send().await.unwrap()
    }

    /// Leases as `request` asks, which must be answered `200`.
    async fn leases(&self, request: Value) -> Vec<Value> {
        let response = self.lease(request).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["leases"].as_array().unwrap().clone()
    }

    async fn on_lease(&self, token: &str, action: &str, body: Option<Value>) -> reqwest::Response {
        let request = self.http.post(self.url(&format!("/api/v1/leases/{token}/{action}")));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.unwrap()
    }
}

fn token(lease: &Value) -> &str {
    lease["token"].as_str().unwrap()
}

#[tokio::test]
async fn a_pulled_task_ends_once_and_every_later_word_from_its_lease_is_a_409() {
    let app = app_without_workers().await;
    let ids: Vec<String> = futures::future::join_all(
        (0..3).map(|n| app.submit_ok(json!({"kind": "echo", "payload": {"n": n}}))),
    )
    .await;
    let leases = app.leases(json!({"worker": "test", "max": 10})).await;
    assert_eq!(leases.len(), 3);
    for lease in &leases {
        assert!(ids.contains(&lease["task"]["id"].as_str().unwrap().to_string()));
        assert_eq!(lease["task"]["status"], "running");
        assert_eq!(lease["task"]["attempts"], 1);
        assert!(lease["payload"]["n"].is_number(), "a small JSON payload comes with its lease: {lease}");
        assert!(lease["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let [done, dead, released] = [&leases[0], &leases[1], &leases[2]];

    // Complete: the body is the result, with its content type.
    let response = app
        .http
        .post(app.url(&format!("/api/v1/leases/{}/complete", token(done))))
        .header("content-type", "text/plain")
        .body("all done")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let id = done["task"]["id"].as_str().unwrap();
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "succeeded");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.headers()["content-type"], "text/plain");
    assert_eq!(result.text().await.unwrap(), "all done");
    // Ended: nothing its token says changes anything.
    for action in ["complete", "heartbeat", "release"] {
        assert_problem(app.on_lease(token(done), action, None).await, 409, "/problems/lease-lost").await;
    }
    let fail = json!({"error": "late", "retryable": false});
    assert_problem(app.on_lease(token(done), "fail", Some(fail)).await, 409, "/problems/lease-lost").await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "succeeded");

    // Fail, not retryable: a dead letter saying so.
    let fail = json!({"error": "the invoice has no lines", "retryable": false});
    assert_eq!(app.on_lease(token(dead), "fail", Some(fail)).await.status(), 204);
    let view = app.get_json(&format!("/api/v1/tasks/{}", dead["task"]["id"].as_str().unwrap())).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["error"], "the invoice has no lines", "not retryable: no attempt count added");

    // Release: queued again, the attempt not counted, and leased afresh.
    assert_eq!(app.on_lease(token(released), "release", None).await.status(), 204);
    let again = app.leases(json!({"worker": "test"})).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["task"]["id"], released["task"]["id"]);
    assert_eq!(again[0]["task"]["attempts"], 1, "a released attempt does not count");
    assert_problem(app.on_lease(token(released), "complete", None).await, 409, "/problems/lease-lost").await;
}

#[tokio::test]
async fn a_leased_json_payload_is_the_json_submitted_digit_for_digit() {
    let app = app_without_workers().await;
    // Wider than a double holds, and spaced: parsed into values and written out again, it
    // would come back as 1.2345678901234568e22, without its spaces.
    let payload = r#"{"n": 12345678901234567890123, "text": "caf\u00e9"}"#;
    let id = app.submit_raw_ok("echo", "application/json", payload).await;
    let response = app.lease(json!({"worker": "test"})).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains(payload), "the payload as it came: {body}");
    let leases: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(leases["leases"][0]["task"]["id"], id.as_str());
    assert_eq!(leases["leases"][0]["payload"]["text"], "café");
}

#[tokio::test]
async fn many_leases_end_in_one_request_each_on_its_own() {
    let app = app_without_workers().await;
    futures::future::join_all(
        (0..5).map(|n| app.submit_ok(json!({"kind": "echo", "payload": {"n": n}, "max_attempts": 3}))),
    )
    .await;
    let leases = app.leases(json!({"worker": "test", "max": 10})).await;
    assert_eq!(leases.len(), 5);
    let [done, empty, retried, lost, cancelled] =
        [&leases[0], &leases[1], &leases[2], &leases[3], &leases[4]];
    let id = |lease: &Value| lease["task"]["id"].as_str().unwrap().to_string();
    // One lease lost before the batch (ended on its own), one task cancelled while it ran.
    assert_eq!(app.on_lease(token(lost), "complete", None).await.status(), 204);
    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{}", id(cancelled)))).send().await.unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());

    let ends = json!({"ends": [
        {"token": token(done), "result": {"rows": [1, 2, 3], "text": "é"}},
        {"token": token(empty)},
        {"token": token(retried), "failed": {"error": "upstream busy", "retryable": true}},
        {"token": token(lost), "result": 1},
        {"token": token(cancelled), "result": 2},
        {"token": "nonsense", "result": 3},
    ]});
    // The result is stored as its own text, spaces and all.
    let compact = r#""result":{"rows":[1,2,3],"text":"é"}"#;
    let body = ends.to_string().replace(compact, r#""result": {"rows": [1, 2, 3], "text": "é"}"#);
    assert!(!body.contains(compact));
    let request = app.http.post(app.url("/api/v1/leases/ends")).header("content-type", "application/json");
    let response = request.body(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let replies: Value = response.json().await.unwrap();
    let replies = replies["ends"].as_array().unwrap();
    let statuses: Vec<_> = replies.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [204, 204, 204, 409, 409, 404], "{replies:?}");
    let problems: Vec<_> = replies.iter().map(|r| r["problem"]["type"].as_str().unwrap_or("")).collect();
    assert_eq!(problems, ["", "", "", "/problems/lease-lost", "/problems/cancelled", "/problems/not-found"]);
    assert_eq!(replies[0]["token"], token(done), "each reply names its token, in the order sent");

    // Each end is what its own request would have made it.
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{}/result", id(done)))).send().await.unwrap();
    assert_eq!(result.headers()["content-type"], "application/json");
    assert_eq!(result.text().await.unwrap(), r#"{"rows": [1, 2, 3], "text": "é"}"#, "the result's own text");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{}/result", id(empty)))).send().await.unwrap();
    assert_eq!(result.text().await.unwrap(), "null");
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", id(retried))).await["status"], "retrying");
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", id(cancelled))).await["status"], "cancelled");
    let lost_result =
        app.http.get(app.url(&format!("/api/v1/tasks/{}/result", id(lost)))).send().await.unwrap();
    assert_eq!(lost_result.text().await.unwrap(), "", "the lost lease's second word changed nothing");
}

/// A lease request that carries the worker's ends applies them first, each on its own, answers
/// each in `ends`, then takes the next leases: with the queue at its concurrency limit, the ends
/// free the slots the new leases take. A bad request ends nothing and takes nothing.
#[tokio::test]
async fn a_lease_request_ends_the_last_leases_first_and_takes_the_next() {
    let app = app_without_workers().await;
    let limits = json!({"concurrency": 2});
    let response = app.http.put(app.url(&format!("/api/v1/queues/{}", queue()))).json(&limits).send().await;
    assert_eq!(response.unwrap().status(), 200);
    let ids =
        futures::future::join_all((0..4).map(|n| app.submit_ok(json!({"kind": "echo", "payload": n})))).await;
    let first = app.leases(json!({"worker": "test", "max": 10})).await;
    assert_eq!(first.len(), 2, "the limit lets two run");
    assert!(app.leases(json!({"worker": "test", "max": 10})).await.is_empty(), "and no more");
    let id = |lease: &Value| lease["task"]["id"].as_str().unwrap().to_string();

    let request = json!({"worker": "test", "max": 10, "ends": [
        {"token": token(&first[0]), "result": {"rows": 3}},
        {"token": token(&first[1]), "failed": {"error": "bad input", "retryable": false}},
        {"token": "nonsense"},
    ]});
    let response = app.lease(request).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let statuses: Vec<_> = answer["ends"].as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [204, 204, 404], "{answer}");
    assert_eq!(answer["ends"][1]["token"], token(&first[1]), "each reply names its token, in order");
    let next = answer["leases"].as_array().unwrap();
    assert_eq!(next.len(), 2, "the ends freed both slots before the leases were counted: {answer}");
    let mut leased: Vec<String> = first.iter().chain(next).map(id).collect();
    leased.sort();
    let mut submitted = ids.clone();
    submitted.sort();
    assert_eq!(leased, submitted, "the next leases are the two tasks not yet run");
    let result =
        app.http.get(app.url(&format!("/api/v1/tasks/{}/result", id(&first[0])))).send().await.unwrap();
    assert_eq!(result.text().await.unwrap(), r#"{"rows":3}"#);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", id(&first[1]))).await["status"], "failed");

    // Refused whole: a bad end, or a bad lease with good ends, ends nothing and leases nothing.
    let good = json!({"token": token(&next[0]), "result": 1});
    let many: Vec<Value> = (0..101).map(|n| json!({"token": format!("t{n}")})).collect();
    for bad in [
        json!({"worker": "test", "ends": [good, good]}),
        json!({"worker": "test", "ends": many}),
        json!({"worker": "test", "ends": [good, {"token": "x", "result": 1, "failed": {"error": "e", "retryable": false}}]}),
        json!({"worker": "test", "ends": {"token": "x"}}),
        json!({"worker": "test", "max": 0, "ends": [good]}),
        json!({"worker": "", "ends": [good]}),
    ] {
        assert_problem(app.lease(bad).await, 422, "/problems/invalid-lease-request").await;
    }
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", id(&next[0]))).await["status"], "running");
    let answer: Value = app.lease(json!({"worker": "test", "ends": [good]})).await.json().await.unwrap();
    assert_eq!(answer["ends"][0]["status"], 204, "{answer}");
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", id(&next[0]))).await["status"], "succeeded");
    // Without ends, the answer has none.
    let answer: Value = app.lease(json!({"worker": "test"})).await.json().await.unwrap();
    assert_eq!(answer, json!({"leases": []}));
}

#[tokio::test]
async fn a_bad_list_of_ends_is_refused_whole_and_ends_nothing() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let lease = app.leases(json!({"worker": "test"})).await.remove(0);
    let good = json!({"token": token(&lease), "result": 1});
    let many: Vec<Value> = (0..101).map(|n| json!({"token": format!("t{n}")})).collect();
    for bad in [
        json!({}),
        json!([good]),
        json!({"ends": []}),
        json!({"ends": many}),
        json!({"ends": [good, good]}),
        json!({"ends": [good, {"token": "x", "result": 1, "failed": {"error": "e", "retryable": false}}]}),
        json!({"ends": [good, {"token": "x", "outcome": "done"}]}),
        json!({"ends": [good, {"token": "x", "failed": {"error": "e"}}]}),
        json!({"ends": [good, {"result": 1}]}),
    ] {
        let response = app.http.post(app.url("/api/v1/leases/ends")).json(&bad).send().await.unwrap();
        assert_problem(response, 422, "/problems/invalid-lease-ends").await;
    }
    let response = app
        .http
        .post(app.url("/api/v1/leases/ends"))
        .header("content-type", "application/json")
        .body("{\"ends\": [");
    assert_problem(response.send().await.unwrap(), 422, "/problems/invalid-lease-ends").await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "running", "nothing was ended");
    let ends = json!({"ends": [good]});
    let response = app.http.post(app.url("/api/v1/leases/ends")).json(&ends).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "succeeded");
}

/// A grant shows its task as the task's own view does once leased, whatever options it has.
#[tokio::test]
async fn a_grant_shows_its_task_as_its_view_does() {
    let app = app_without_workers().await;
    let options = json!({
        "kind": "echo",
        "payload": {"text": "x".repeat(20_000)},
        "max_attempts": 4,
        "timeout_ms": 60000,
        "session": "grant-view",
        "ttl_ms": 600_000,
    });
    let ids = [
        app.submit_ok(json!({"kind": "echo", "payload": 1})).await,
        app.submit_ok(options).await,
        app.submit_ok(json!({"kind": "echo", "payload": {"n": 3}})).await,
    ];
    // A small payload is kept in its record without its size (record.rs, `PAYLOAD_BYTES`): its
    // grant and its view read the size from the payload. A large one, under a key of its own,
    // has its size written.
    let fields = app.record_values(&ids[2]).await;
    assert!(fields.contains_key("payload") && !fields.contains_key("payload_bytes"), "{fields:?}");
    let fields = app.record_values(&ids[1]).await;
    assert!(!fields.contains_key("payload") && fields.contains_key("payload_bytes"), "{fields:?}");
    let leases = app.leases(json!({"worker": "test", "max": 10})).await;
    assert_eq!(leases.len(), 3);
    for lease in &leases {
        let id = lease["task"]["id"].as_str().unwrap();
        assert!(ids.iter().any(|i| i == id), "{lease}");
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(lease["task"], view, "{lease}");
        assert_eq!(view["status"], "running");
    }
    let optioned = leases.iter().find(|l| l["task"]["id"] == ids[1].as_str()).unwrap();
    assert!(
        optioned["task"]["expires_at"].is_string()
            && optioned["task"]["payload_bytes"].as_u64() > Some(20_000)
    );
    let sizeless = leases.iter().find(|l| l["task"]["id"] == ids[2].as_str()).unwrap();
    assert_eq!(sizeless["task"]["payload_bytes"], r#"{"n":3}"#.len(), "{sizeless}");

    // The session's next task waits for this one, which its end lets go (the end reads the
    // session from the record: a pulled lease's token does not carry it).
    let next = app.submit_ok(json!({"kind": "echo", "payload": 2, "session": "grant-view"})).await;
    assert!(app.leases(json!({"worker": "test"})).await.is_empty(), "the session's next task waits");
    assert_eq!(app.on_lease(token(optioned), "complete", None).await.status(), 204);
    let after = app.leases(json!({"worker": "test", "wait_ms": 5000})).await;
    assert_eq!(after[0]["task"]["id"], next.as_str());
}

#[tokio::test]
async fn a_retryable_failure_runs_again_after_its_retry_after() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1, "max_attempts": 2})).await;
    let first = app.leases(json!({"worker": "test"})).await;
    let fail = json!({"error": "upstream busy", "retryable": true, "retry_after_ms": 1500});
    assert_eq!(app.on_lease(token(&first[0]), "fail", Some(fail)).await.status(), 204);
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(view["status"], "retrying");
    assert!(app.leases(json!({"worker": "test"})).await.is_empty(), "not before its Retry-After");
    // It waits for its time, then the long poll (looking again each second) gets it.
    let second = app.leases(json!({"worker": "test", "wait_ms": 10000})).await;
    assert_eq!(second[0]["task"]["id"], id.as_str());
    assert_eq!(second[0]["task"]["attempts"], 2);
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(second[0]["task"], view, "the grant shows the task as its view does, the last error too");
    let fail = json!({"error": "still busy", "retryable": true});
    assert_eq!(app.on_lease(token(&second[0]), "fail", Some(fail)).await.status(), 204);
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["error"], "still busy (attempt 2 of 2)");
}

#[tokio::test]
async fn a_waiting_lease_request_is_answered_by_the_next_submit() {
    let app = app_without_workers().await;
    let request = {
        let (http, url) = (app.http.clone(), app.url(&format!("/api/v1/queues/{}/leases", queue())));
        tokio::spawn(async move {
            let response =
                http.post(url).json(&json!({"worker": "w", "wait_ms": 20000})).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "with nothing queued, the request waits");
    let id = app.submit_ok(json!({"kind": "echo", "payload": "wake"})).await;
    let answer = tokio::time::timeout(Duration::from_secs(15), request).await.unwrap().unwrap();
    assert_eq!(answer["leases"][0]["task"]["id"], id.as_str());
    assert_eq!(answer["leases"][0]["payload"], "wake");
}

#[tokio::test]
async fn a_lease_not_renewed_is_taken_over_and_one_renewed_is_not() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1, "max_attempts": 3})).await;
    let first = app.leases(json!({"worker": "a", "lease_ms": 2000})).await;
    assert_eq!(first.len(), 1);

    // Renewed every 300 ms for 3 s, longer than the lease: no one takes it over.
    for _ in 0..10 {
        let beat = app.on_lease(token(&first[0]), "heartbeat", Some(json!({"progress": 40}))).await;
        assert_eq!(beat.status(), 200);
        let beat: Value = beat.json().await.unwrap();
        assert_eq!(beat["cancel_requested"], false);
        assert!(app.leases(json!({"worker": "b"})).await.is_empty(), "a renewed lease is kept");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["progress"], 40);

    // Not renewed for its 2 s: the next request takes it over, as another attempt.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = app.leases(json!({"worker": "b"})).await;
    assert_eq!(second.len(), 1, "the lease ran out and was taken over");
    assert_eq!(second[0]["task"]["id"], id.as_str());
    assert_eq!(second[0]["task"]["attempts"], 2);
    // The first holder's late word changes nothing; the second's counts.
    let late = app.http.post(app.url(&format!("/api/v1/leases/{}/complete", token(&first[0])))).body("late");
    assert_problem(late.send().await.unwrap(), 409, "/problems/lease-lost").await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "running");
    let done =
        app.http.post(app.url(&format!("/api/v1/leases/{}/complete", token(&second[0])))).body("on time");
    assert_eq!(done.send().await.unwrap().status(), 204);
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.text().await.unwrap(), "on time");
    // Its history: the first attempt lost by the worker that held it, the second done by the other.
    let history = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
    let attempts: Vec<_> = history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["outcome"].as_str().unwrap(), a["worker"].as_str().unwrap(), a["started_at"].is_string()))
        .collect();
    assert_eq!(attempts, [("lost", "a", true), ("succeeded", "b", true)], "{history}");
}

/// A lease that runs out behind more live leases than one look scans (ten per lease asked
/// for) is still taken over: each look goes on where the one before stopped. (Looking from the
/// start each time, a worker asking for one lease never found it while the others lived.)
#[tokio::test]
async fn a_lease_that_runs_out_behind_many_live_ones_is_taken_over() {
    let app = app_without_workers().await;
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(app.submit_ok(json!({"kind": "echo", "payload": n})).await);
    }
    let held = app.leases(json!({"worker": "a", "max": 25, "lease_ms": 1000})).await;
    assert_eq!(held.len(), 25);
    // The newest task's holder goes quiet; the others keep their leases.
    let newest = ids.last().unwrap().clone();
    let live: Vec<&Value> = held.iter().filter(|l| l["task"]["id"] != newest.as_str()).collect();
    let mut taken = Vec::new();
    for round in 0..16 {
        let beats = live.iter().map(|l| app.on_lease(token(l), "heartbeat", None));
        for beat in futures::future::join_all(beats).await {
            assert_eq!(beat.status(), 200, "round {round}: a renewed lease is kept");
        }
        if round >= 5 {
            taken.extend(app.leases(json!({"worker": "b", "max": 1})).await);
        }
        if !taken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let taken: Vec<_> =
        taken.iter().map(|l| (l["task"]["id"].as_str().unwrap(), l["task"]["attempts"].clone())).collect();
    assert_eq!(taken, [(newest.as_str(), json!(2))], "the lease that ran out, taken over");
}

#[tokio::test]
async fn a_cancelled_pulled_task_is_told_at_its_next_heartbeat_and_ends_cancelled() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let lease = app.leases(json!({"worker": "w"})).await.remove(0);
    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let beat: Value = app.on_lease(token(&lease), "heartbeat", None).await.json().await.unwrap();
    assert_eq!(beat["cancel_requested"], true);
    let complete = app.on_lease(token(&lease), "complete", None).await;
    assert_problem(complete, 409, "/problems/cancelled").await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "cancelled");
}

/// A task whose cancel was asked for while its holder ran it, and whose holder then went silent,
/// ends cancelled when its lease runs out and the next lease request finds it: its attempt is
/// logged as cancelled, naming that holder.
#[tokio::test]
async fn a_cancelled_task_whose_holder_went_silent_ends_cancelled_with_its_attempt_logged() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let held = app.leases(json!({"worker": "silent", "lease_ms": 1000})).await;
    assert_eq!(held.len(), 1);
    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert!(cancel.status().is_success(), "{}", cancel.status());
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "running");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.leases(json!({"worker": "next"})).await.is_empty(), "nothing to run");
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    let history = app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await;
    let attempt = &history["attempts"][0];
    assert_eq!(
        (history["attempts"].as_array().map(Vec::len), &attempt["outcome"]),
        (Some(1), &json!("cancelled"))
    );
    assert_eq!(attempt["worker"], "silent", "{history}");
    assert_eq!((&attempt["started_at"], &attempt["ended_at"]), (&view["started_at"], &view["finished_at"]));
}

#[tokio::test]
async fn a_worker_gets_only_the_kinds_it_asks_for_and_the_others_wait() {
    let app = app_without_workers().await;
    let echo = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let sleep = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 1}})).await;
    let got = app.leases(json!({"worker": "w", "kinds": ["sleep"], "max": 10})).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task"]["id"], sleep.as_str());
    assert!(app.leases(json!({"worker": "w", "kinds": ["sleep", "flaky"]})).await.is_empty());
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{echo}")).await["status"], "queued", "not dead-lettered");
    let got = app.leases(json!({"worker": "w", "kinds": ["echo"]})).await;
    assert_eq!(got[0]["task"]["id"], echo.as_str());
}

#[tokio::test]
async fn payloads_too_large_or_not_json_are_fetched_from_their_url() {
    let app = app_without_workers().await;
    let raw = app.submit_raw_ok("text.stats", "text/plain", "some words to count").await;
    let large: String = "x".repeat(70 * 1024);
    let big = app.submit_ok(json!({"kind": "echo", "payload": large})).await;
    let leases = app.leases(json!({"worker": "w", "max": 2})).await;
    assert_eq!(leases.len(), 2);
    for lease in &leases {
        assert_eq!(lease.get("payload"), None, "{lease}");
        let url = lease["payload_url"].as_str().unwrap();
        let response = app.http.get(app.url(url)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let id = lease["task"]["id"].as_str().unwrap();
        if id == raw {
            assert_eq!(response.headers()["content-type"], "text/plain");
            assert_eq!(response.text().await.unwrap(), "some words to count");
        } else {
            assert_eq!(id, big);
            assert_eq!(response.json::<Value>().await.unwrap(), json!(large));
        }
    }
}

#[tokio::test]
async fn bad_lease_requests_and_unknown_tokens_get_clear_problems() {
    let app = app_without_workers().await;
    for bad in [
        json!({}),
        json!({"worker": ""}),
        json!({"worker": "w", "max": 0}),
        json!({"worker": "w", "max": 101}),
        json!({"worker": "w", "wait_ms": 30001}),
        json!({"worker": "w", "lease_ms": 10}),
        json!({"worker": "w", "lease_ms": 600000}),
        json!({"worker": "w", "kinds": ["Not A Kind"]}),
        json!({"worker": "w", "colour": "red"}),
    ] {
        let response = app.lease(bad.clone()).await;
        assert_problem(response, 422, "/problems/invalid-lease-request").await;
    }
    let response = app.http.post(app.url("/api/v1/queues/Bad%20Name/leases")).json(&json!({"worker": "w"}));
    assert_eq!(response.send().await.unwrap().status(), 422);
    for token in ["nonsense", "default~echo~0190b1c2-0000-7000-8000-000000000000~1~1-0~1000~abc:0"] {
        let response = app.on_lease(token, "heartbeat", None).await;
        let status = response.status().as_u16();
        assert!(status == 404 || status == 409, "{token}: {status}");
    }
    let beat = app.on_lease("nonsense", "heartbeat", Some(json!({"progress": 101}))).await;
    assert_eq!(beat.status(), 422);
}

/// `token` with its `n`th part (`queue~kind~task~stream~entry~ms~token~kid~sig`) made `part`.
fn with_part(token: &str, n: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('~').collect();
    assert_eq!(parts.len(), 9, "{token}");
    parts[n] = part;
    parts.join("~")
}

/// A worker holds each lease's token whole: one changed to name another task's entry, another
/// kind's lane or stream, or a longer lease is no lease (`404`), and changes nothing. (Before
/// tokens were sealed, the first acknowledged the other task's entry while ending its own task,
/// so that a crash of the other task's worker left it running for good.)
#[tokio::test]
async fn a_token_changed_to_name_another_entry_lane_or_lease_ends_nothing() {
    let app = app_without_workers().await;
    let a = app.submit_ok(json!({"kind": "echo", "payload": "a"})).await;
    let b = app.submit_ok(json!({"kind": "echo", "payload": "b"})).await;
    let leases = app.leases(json!({"worker": "test", "max": 2})).await;
    assert_eq!(leases.len(), 2);
    let of = |id: &str| token(leases.iter().find(|l| l["task"]["id"] == id).unwrap()).to_string();
    let (token_a, token_b) = (of(&a), of(&b));
    let entry_b = token_b.split('~').nth(4).unwrap();
    let forged = [
        with_part(&token_a, 4, entry_b),
        with_part(&token_a, 1, "sleep"),
        with_part(&token_a, 3, "0"),
        with_part(&token_a, 5, "3600000"),
    ];
    for forged in &forged {
        for action in ["complete", "heartbeat", "release"] {
            let body = (action == "complete").then(|| json!("forged"));
            let response = app.on_lease(forged, action, body).await;
            assert_problem(response, 404, "/problems/not-found").await;
        }
    }
    let ends: Vec<Value> = forged.iter().map(|t| json!({"token": t, "result": "forged"})).collect();
    let response = app.http.post(app.url("/api/v1/leases/ends")).json(&json!({"ends": ends})).send();
    let replies: Value = response.await.unwrap().json().await.unwrap();
    let statuses: Vec<_> = replies["ends"].as_array().unwrap().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [404, 404, 404, 404], "{replies}");

    // Both tasks are still their holders' own, each entry still pending.
    for id in [&a, &b] {
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "running");
    }
    let mut redis = app.redis().await;
    let pending: redis::streams::StreamPendingReply =
        redis::AsyncCommands::xpending(&mut redis, app.key("ready:echo"), "workers").await.unwrap();
    assert_eq!(pending.count(), 2, "both entries are still pending");
    for (token, id, result) in [(&token_a, &a, "\"a\""), (&token_b, &b, "\"b\"")] {
        let response = app.on_lease(token, "complete", Some(serde_json::from_str(result).unwrap())).await;
        assert_eq!(response.status(), 204);
        let stored = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
        assert_eq!(stored.text().await.unwrap(), result);
    }
}

#[tokio::test]
async fn a_cancelled_task_handed_back_by_its_worker_ends_cancelled_at_once() {
    let app = app_without_workers().await;
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let lease = app.leases(json!({"worker": "w"})).await.remove(0);
    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert!(cancel.status().is_success());
    // The worker stops as the heartbeat asks and releases: the task ends now, not when some
    // later claim finds it.
    assert_eq!(app.on_lease(token(&lease), "release", None).await.status(), 204);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["status"], "cancelled");
}

/// Creates a two-step workflow (`a`, then `b` with `a`'s result) in the test queue; its id.
async fn chain(app: &TestApp) -> String {
    let body = json!({"steps": [
        {"id": "a", "kind": "echo", "payload": {"n": 1}, "queue": queue()},
        {"id": "b", "kind": "echo", "after": ["a"], "queue": queue()},
    ]});
    let response = app.http.post(app.url("/api/v1/workflows")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// Polls workflow `id` until `check` holds of its view (20 s at most).
async fn until_workflow(app: &TestApp, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let view = app.get_json(&format!("/api/v1/workflows/{id}")).await;
        if check(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("workflow {id} never got there: {}", app.get_json(&format!("/api/v1/workflows/{id}")).await);
}

#[tokio::test]
async fn a_steps_success_reported_twice_moves_its_workflow_on_once() {
    let app = app_without_workers().await;
    let id = chain(&app).await;
    // Two holders of step a's task: the first lets its lease run out, the second takes it over;
    // both report success, as in a takeover race.
    let first = app.leases(json!({"worker": "slow", "lease_ms": 1000})).await;
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = app.leases(json!({"worker": "quick"})).await;
    assert_eq!(second.len(), 1, "the lease ran out and was taken over");
    let task = second[0]["task"]["id"].as_str().unwrap().to_string();
    let complete = |lease: &Value| {
        app.http
            .post(app.url(&format!("/api/v1/leases/{}/complete", token(lease))))
            .json(&json!({"n": 1}))
            .send()
    };
    assert_eq!(complete(&second[0]).await.unwrap().status(), 204);
    assert_problem(complete(&first[0]).await.unwrap(), 409, "/problems/lease-lost").await;
    // And the end's event arrives twice, as a second report would send it.
    let mut redis = app.redis().await;
    let events: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(app.key("events"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(50)
        .query_async(&mut redis)
        .await
        .unwrap();
    let ended = events
        .into_iter()
        .map(|(_, fields)| fields)
        // A task entry is one field, `e`: its events separated by the record separator, each its
        // event, task, … separated by the unit separator.
        .find(|fields| {
            fields.iter().any(|(field, value)| {
                field == "e"
                    && value.split('\u{1e}').any(|e| e.starts_with(&format!("succeeded\u{1f}{task}\u{1f}")))
            })
        })
        .expect("the end's event");
    let mut again = redis::cmd("XADD");
    again.arg(app.key("events")).arg("*");
    for (field, value) in &ended {
        again.arg(field).arg(value);
    }
    let _: String = again.query_async(&mut redis).await.unwrap();

    let view =
        until_workflow(&app, &id, |v| v["steps"][1]["tasks"].as_array().is_some_and(|t| !t.is_empty())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = app.leases(json!({"worker": "quick", "max": 10})).await;
    assert_eq!(b.len(), 1, "one task for step b: {b:?}");
    assert_eq!(b[0]["task"]["id"], view["steps"][1]["tasks"][0]);
    assert_eq!(b[0]["payload"], json!({"n": 1}), "b takes a's result");
    assert_eq!(complete(&b[0]).await.unwrap().status(), 204);
    let done = until_workflow(&app, &id, |v| v["status"] != "running").await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["steps"][1]["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn requeueing_a_dead_steps_task_resumes_its_failed_workflow() {
    let app = app_without_workers().await;
    let id = chain(&app).await;
    let first = app.leases(json!({"worker": "w"})).await;
    let task = first[0]["task"]["id"].as_str().unwrap().to_string();
    let fail =
        app.on_lease(token(&first[0]), "fail", Some(json!({"error": "disk full", "retryable": false}))).await;
    assert_eq!(fail.status(), 204);
    let failed = until_workflow(&app, &id, |v| v["status"] != "running").await;
    assert_eq!((&failed["status"], &failed["failed_step"]), (&json!("failed"), &json!("a")));
    assert_eq!(failed["steps"][1]["state"], "cancelled");

    let requeued =
        app.http.post(app.url(&format!("/api/v1/dead-letters/{task}/requeue"))).send().await.unwrap();
    assert!(requeued.status().is_success(), "{}", requeued.status());
    let resumed = until_workflow(&app, &id, |v| v["status"] == "running").await;
    assert_eq!(resumed["steps"][1]["state"], "waiting");
    let again = app.leases(json!({"worker": "w"})).await;
    assert_eq!(again[0]["task"]["id"], task.as_str());
    let done =
        app.http.post(app.url(&format!("/api/v1/leases/{}/complete", token(&again[0])))).json(&json!(5));
    assert_eq!(done.send().await.unwrap().status(), 204);
    let b = loop {
        let leases = app.leases(json!({"worker": "w", "wait_ms": 5000})).await;
        if let Some(lease) = leases.into_iter().next() {
            break lease;
        }
    };
    assert_eq!(b["payload"], 5);
    let complete =
        app.http.post(app.url(&format!("/api/v1/leases/{}/complete", token(&b)))).json(&json!("ok"));
    assert_eq!(complete.send().await.unwrap().status(), 204);
    let ended = until_workflow(&app, &id, |v| v["status"] != "running").await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert!(ended.get("error").is_none() && ended.get("failed_step").is_none(), "{ended}");
}
