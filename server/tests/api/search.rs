//! Task search on `GET /api/v1/tasks`: by id (whole, or its beginning), kind, status and when
//! the task was created, within the queues the caller reaches.

use crate::support::*;
use courier::auth::Scope;
use serde_json::{Value, json};
use std::time::Duration;

/// The ids a search finds, newest first.
async fn found(app: &TestApp, query: &str) -> Vec<String> {
    let page = app.get_json(&format!("/api/v1/tasks?{query}")).await;
    page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn a_task_is_found_by_its_id_or_the_beginning_of_it() {
    let app = spawn_app().await;
    let echo = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let other = app.submit_ok(json!({"kind": "echo", "payload": 2})).await;
    assert_eq!(found(&app, &format!("id={echo}")).await, [echo.as_str()]);
    assert_eq!(found(&app, &format!("id={}", echo.to_uppercase())).await, [echo.as_str()]);
    // The whole id and another filter: both must hold.
    assert_eq!(found(&app, &format!("id={echo}&kind=echo")).await, [echo.as_str()]);
    assert!(found(&app, &format!("id={echo}&kind=sleep")).await.is_empty());
    // Its beginning: the first 13 characters are its creation time, so both tasks share a few.
    // (Up to 8: the first 8 change every 65.5 s, and the two may have been made across a change.)
    let shared = echo.chars().zip(other.chars()).take(8).take_while(|(a, b)| a == b).count();
    let both = found(&app, &format!("id={}", &echo[..shared])).await;
    assert!(both.contains(&echo) && both.contains(&other), "{both:?}");
    assert_eq!(found(&app, &format!("id={}", &echo[..24])).await, [echo.as_str()]);
    assert!(found(&app, "id=0000").await.is_empty());
    let unknown = uuid::Uuid::now_v7();
    assert!(found(&app, &format!("id={unknown}")).await.is_empty());
    for bad in ["xyz", "0193a1b2c", "%20"] {
        let response = app.http.get(app.url(&format!("/api/v1/tasks?id={bad}"))).send().await.unwrap();
        let problem = assert_problem(response, 422, "/problems/invalid-query").await;
        assert!(problem["detail"].as_str().unwrap().starts_with("`id`"), "{problem}");
    }
}

#[tokio::test]
async fn tasks_are_found_by_kind_status_and_the_time_they_were_created() {
    let app = spawn_app().await;
    let first = app.submit_ok(json!({"kind": "echo", "payload": "first"})).await;
    let failed =
        app.submit_ok(json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1})).await;
    assert_eq!(app.wait_until_done(&failed).await["status"], "failed");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let split = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let later = app.submit_ok(json!({"kind": "echo", "payload": "later"})).await;
    assert_eq!(app.wait_until_done(&later).await["status"], "succeeded");
    assert_eq!(app.wait_until_done(&first).await["status"], "succeeded");

    assert_eq!(found(&app, "kind=flaky&status=failed").await, [failed.as_str()]);
    assert_eq!(found(&app, "kind=echo&status=succeeded").await, [later.clone(), first.clone()]);
    assert!(found(&app, "kind=flaky&status=succeeded").await.is_empty());
    assert_eq!(found(&app, &format!("created_before={split}")).await, [failed.clone(), first.clone()]);
    assert_eq!(found(&app, &format!("created_after={split}")).await, [later.as_str()]);
    assert_eq!(found(&app, &format!("created_after={split}&kind=flaky")).await, Vec::<String>::new());
    // `created_after` takes its own instant, `created_before` does not.
    let task = app.get_json(&format!("/api/v1/tasks/{later}")).await;
    let at = task["created_at"].as_str().unwrap();
    assert_eq!(found(&app, &format!("created_after={at}")).await, [later.as_str()]);
    assert!(!found(&app, &format!("created_before={at}")).await.contains(&later));
    // The time filters page on like any other: a cursor from a page of one.
    let page = app.get_json(&format!("/api/v1/tasks?created_before={split}&limit=1")).await;
    let cursor = page["next_cursor"].as_str().expect("a second page");
    assert_eq!(
        found(&app, &format!("created_before={split}&limit=1&cursor={cursor}")).await,
        [first.as_str()]
    );

    for (query, parameter) in [
        ("created_after=noon", "`created_after`"),
        ("created_before=2025-01-01", "`created_before`"),
        ("created_after=2025-01-02T00:00:00Z&created_before=2025-01-01T00:00:00Z", "`created_before`"),
    ] {
        let response = app.http.get(app.url(&format!("/api/v1/tasks?{query}"))).send().await.unwrap();
        let problem = assert_problem(response, 422, "/problems/invalid-query").await;
        assert!(problem["detail"].as_str().unwrap().starts_with(parameter), "{query}: {problem}");
    }
}

#[tokio::test]
async fn a_search_by_id_finds_nothing_in_a_queue_the_token_does_not_reach() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let admin = app.make_token("admin", &Scope::ALL, &["*"], None).await;
    let billing = app.make_token("billing", &[Scope::Read], &["billing"], None).await;
    let submit = |queue: &str| {
        let body = json!({"kind": "echo", "payload": {}, "queue": queue});
        let request = app.http.post(app.url("/api/v1/tasks")).bearer_auth(&admin).json(&body);
        async move {
            request.send().await.unwrap().json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    };
    let hidden = submit("other").await;
    let visible = submit("billing").await;
    let search = |query: String| {
        let request = app.http.get(app.url(&format!("/api/v1/tasks?{query}"))).bearer_auth(&billing);
        async move {
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(search(format!("id={hidden}")).await.is_empty());
    assert_eq!(search(format!("id={visible}")).await, [visible.as_str()]);
    assert_eq!(search(format!("id={}", &hidden[..8])).await, [visible]);
}
