//! Dead letters by filter (queue, kind, reason, when they failed): the count a bulk action
//! promises, the action moving exactly those, and filters that are refused.

use crate::support::*;
use courier::auth::Scope;
use serde_json::{Value, json};
use std::time::Duration;

/// A `flaky` task that fails its only attempt: a dead letter, `attempts_exhausted`.
fn always_fails() -> Value {
    json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})
}

/// Submits `body` and waits until it is a dead letter; returns its id.
async fn dead_letter(app: &TestApp, body: Value) -> String {
    let id = app.submit_ok(body).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "failed");
    id
}

/// A `text.stats` task whose payload is not UTF-8: a dead letter, `non_retryable`.
async fn non_retryable(app: &TestApp) -> String {
    let id = app.submit_raw_ok("text.stats", "text/plain", vec![0xff, 0xfe]).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "failed");
    id
}

/// The test queue's name (its tasks' queue when a test names none).
fn queue() -> String {
    test_queue().unwrap_or_else(|| "default".into())
}

async fn count(app: &TestApp, filter: &str) -> u64 {
    app.get_json(&format!("/api/v1/dead-letters/count?{filter}")).await["count"].as_u64().unwrap()
}

/// The ids the listing holds for `filter`, most recent failure first.
async fn listed(app: &TestApp, filter: &str) -> Vec<String> {
    let page = app.get_json(&format!("/api/v1/dead-letters?{filter}")).await;
    page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["task"]["id"].as_str().unwrap().into())
        .collect()
}

/// Now, as the API writes times.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn the_count_a_filter_promises_is_what_its_bulk_requeue_moves_and_nothing_else() {
    let app = spawn_app().await;
    let mut flaky = Vec::new();
    for _ in 0..3 {
        flaky.push(dead_letter(&app, always_fails()).await);
    }
    let mut fatal = Vec::new();
    for _ in 0..2 {
        fatal.push(non_retryable(&app).await);
    }
    assert_eq!(count(&app, "").await, 5);
    assert_eq!(count(&app, "kind=flaky").await, 3);
    assert_eq!(count(&app, "reason=non_retryable").await, 2);
    assert_eq!(count(&app, "kind=flaky&reason=non_retryable").await, 0);
    assert_eq!(count(&app, &format!("queue={}&reason=attempts_exhausted", queue())).await, 3);
    assert_eq!(count(&app, "queue=elsewhere").await, 0);
    assert_eq!(sorted(listed(&app, "reason=attempts_exhausted").await), sorted(flaky.clone()));
    assert_eq!(sorted(listed(&app, "kind=text.stats").await), sorted(fatal.clone()));

    // Paused, the queue keeps what is requeued waiting, so the dead letters left can be counted.
    let paused = app.http.post(app.url(&format!("/api/v1/queues/{}/pause", queue()))).send().await.unwrap();
    assert_eq!(paused.status(), 200);
    let preview = app.get_json("/api/v1/dead-letters/count?reason=attempts_exhausted").await;
    assert_eq!(preview["count"], 3);
    let as_of = preview["as_of"].as_str().unwrap().to_string();
    let requeue = app
        .http
        .post(
            app.url(&format!("/api/v1/dead-letters/requeue?reason=attempts_exhausted&failed_before={as_of}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(requeue.status(), 202);
    assert_eq!(requeue.json::<Value>().await.unwrap(), json!({"requeued": 3}));
    assert_eq!(count(&app, "").await, 2);
    assert_eq!(sorted(listed(&app, "").await), sorted(fatal.clone()));
    for id in &flaky {
        let task = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!((task["status"].as_str(), task["attempts"].as_u64()), (Some("queued"), Some(0)), "{task}");
        // It starts over: nothing of its earlier run shows, neither its start, its end nor its
        // attempt log.
        assert_eq!((&task["started_at"], &task["finished_at"]), (&Value::Null, &Value::Null), "{task}");
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}/attempts")).await["attempts"], json!([]));
        let fields = app.record_fields(id).await;
        assert!(!fields.keys().any(|f| f.starts_with("a:") || f == "started" || f == "worker"), "{fields:?}");
    }
    // Nothing more of that filter is left to requeue.
    let again = app.http.post(app.url("/api/v1/dead-letters/requeue?reason=attempts_exhausted")).send().await;
    assert_eq!(again.unwrap().json::<Value>().await.unwrap(), json!({"requeued": 0}));
}

#[tokio::test]
async fn the_time_filters_split_the_dead_letters_at_an_instant() {
    let app = spawn_app().await;
    let early = vec![dead_letter(&app, always_fails()).await, dead_letter(&app, always_fails()).await];
    tokio::time::sleep(Duration::from_millis(30)).await;
    let split = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let late = vec![
        dead_letter(&app, always_fails()).await,
        dead_letter(&app, always_fails()).await,
        dead_letter(&app, always_fails()).await,
    ];
    assert_eq!(count(&app, &format!("failed_before={split}")).await, 2);
    assert_eq!(count(&app, &format!("failed_after={split}")).await, 3);
    assert_eq!(sorted(listed(&app, &format!("failed_before={split}")).await), sorted(early.clone()));
    assert_eq!(sorted(listed(&app, &format!("failed_after={split}")).await), sorted(late.clone()));

    // The bounds are the failure times themselves: `failed_after` takes its instant, and
    // `failed_before` does not.
    let newest = app.get_json("/api/v1/dead-letters?limit=1").await["dead_letters"][0].clone();
    let at = newest["failed_at"].as_str().unwrap();
    assert_eq!(listed(&app, &format!("failed_after={at}")).await[0], newest["task"]["id"].as_str().unwrap());
    assert!(!listed(&app, &format!("failed_before={at}")).await.contains(&late[2]));

    // A timezone offset is the same instant.
    let offset = time::OffsetDateTime::parse(&split, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .to_offset(time::macros::offset!(+02:00))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(count(&app, &format!("failed_before={}", offset.replace('+', "%2B"))).await, 2);

    let deleted = app
        .http
        .delete(app.url(&format!("/api/v1/dead-letters?failed_before={split}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"deleted": 2}));
    for id in &early {
        let gone = app.http.get(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
        assert_problem(gone, 404, "/problems/not-found").await;
    }
    assert_eq!(sorted(listed(&app, "").await), sorted(late));
}

#[tokio::test]
async fn a_bulk_delete_names_what_it_deletes_and_bad_filters_are_refused_naming_the_parameter() {
    let app = spawn_app().await;
    let id = dead_letter(&app, always_fails()).await;
    let everything = app.http.delete(app.url("/api/v1/dead-letters")).send().await.unwrap();
    let problem = assert_problem(everything, 422, "/problems/invalid-query").await;
    assert!(problem["detail"].as_str().unwrap().contains("failed_before"), "{problem}");
    for (query, parameter) in [
        ("reason=bored", "`reason`"),
        ("kind=Not%20a%20kind", "`kind`"),
        ("queue=-x", "`queue`"),
        ("failed_after=yesterday", "`failed_after`"),
        ("failed_before=2025-13-01T00:00:00Z", "`failed_before`"),
        ("failed_after=2025-01-02T00:00:00Z&failed_before=2025-01-01T00:00:00Z", "`failed_before`"),
    ] {
        for (method, path) in [
            ("GET", "/api/v1/dead-letters"),
            ("GET", "/api/v1/dead-letters/count"),
            ("POST", "/api/v1/dead-letters/requeue"),
            ("DELETE", "/api/v1/dead-letters"),
        ] {
            let request = app.http.request(method.parse().unwrap(), app.url(&format!("{path}?{query}")));
            let problem = assert_problem(request.send().await.unwrap(), 422, "/problems/invalid-query").await;
            assert!(
                problem["detail"].as_str().unwrap().starts_with(parameter),
                "{method} {path}?{query}: {problem}"
            );
        }
    }
    let unknown = app.http.get(app.url("/api/v1/dead-letters/count?colour=red")).send().await.unwrap();
    assert_problem(unknown, 400, "/problems/bad-request").await;
    // Nothing of the refused calls touched the dead letter.
    assert_eq!(listed(&app, "").await, [id.as_str()]);
    let deleted = app.http.delete(app.url("/api/v1/dead-letters?kind=flaky")).send().await.unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"deleted": 1}));
    assert_eq!(count(&app, "").await, 0);
}

#[tokio::test]
async fn bulk_actions_reach_only_the_queues_of_the_token_and_are_audited() {
    let app = spawn_app().await;
    let admin = app.make_token("admin", &Scope::ALL, &["*"], None).await;
    let billing = app.make_token("billing-ops", &[Scope::Read, Scope::Operate], &["billing"], None).await;
    let reader = app.make_token("reader", &[Scope::Read], &["*"], None).await;
    let submit = |body: Value| {
        let request = app.http.post(app.url("/api/v1/tasks")).bearer_auth(&admin).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    };
    let mut ids = Vec::new();
    for queue in ["billing", "billing", "other"] {
        let mut body = always_fails();
        body["queue"] = queue.into();
        ids.push(submit(body).await);
    }
    let get = |path: String, token: &str| {
        let request = app.http.get(app.url(&path)).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    for id in &ids {
        let mut status = String::new();
        for _ in 0..200 {
            status =
                get(format!("/api/v1/tasks/{id}"), &admin).await.json::<Value>().await.unwrap()["status"]
                    .as_str()
                    .unwrap()
                    .to_string();
            if status == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, "failed");
    }
    let counted = |token: &str, filter: &str| {
        let request = get(format!("/api/v1/dead-letters/count?{filter}"), token);
        async move { request.await.json::<Value>().await.unwrap()["count"].as_u64().unwrap() }
    };
    assert_eq!(counted(&admin, "").await, 3);
    assert_eq!(counted(&billing, "").await, 2, "a token sees only the dead letters of its queues");
    assert_eq!(counted(&billing, "queue=other").await, 0);

    let refused = app.http.post(app.url("/api/v1/dead-letters/requeue")).bearer_auth(&reader).send().await;
    assert_eq!(refused.unwrap().status(), 403);
    let requeued =
        app.http.post(app.url("/api/v1/dead-letters/requeue?queue=other")).bearer_auth(&billing).send();
    assert_eq!(requeued.await.unwrap().json::<Value>().await.unwrap(), json!({"requeued": 0}));
    let deleted = app.http.delete(app.url("/api/v1/dead-letters?kind=flaky")).bearer_auth(&billing).send();
    assert_eq!(deleted.await.unwrap().json::<Value>().await.unwrap(), json!({"deleted": 2}));
    assert_eq!(counted(&admin, "").await, 1, "the other queue's dead letter is still there");
    assert_eq!(get(format!("/api/v1/tasks/{}", ids[2]), &admin).await.status(), 200);

    let audit: Value = get("/api/v1/audit".into(), &admin).await.json().await.unwrap();
    let entries: Vec<(&str, &str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(entries[0].0, "billing-ops");
    assert_eq!(entries[0].1, "dead-letter.delete-all");
    assert!(entries[0].2.starts_with("queue=* kind=flaky reason=* failed=[…, "), "{audit}");
    assert!(entries[0].2.ends_with(" deleted=2"), "{audit}");
    assert_eq!((entries[1].1, entries[1].2.ends_with(" requeued=0")), ("dead-letter.requeue-all", true));
    assert!(entries[1].2.starts_with("queue=other "), "{audit}");
}

#[tokio::test]
async fn a_filtered_listing_pages_through_what_matches() {
    let app = spawn_app().await;
    let mut flaky = Vec::new();
    for round in 0..3 {
        flaky.push(dead_letter(&app, always_fails()).await);
        if round < 2 {
            non_retryable(&app).await;
        }
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/dead-letters?kind=flaky&limit=2".to_string();
    loop {
        let page = app.get_json(&path).await;
        seen.extend(
            page["dead_letters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["task"]["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/dead-letters?kind=flaky&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    flaky.reverse();
    assert_eq!(seen, flaky, "most recent failure first, each once");
}
