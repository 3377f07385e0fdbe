//! Cheap requests stay cheap: a filtered listing reads a bounded number of records per page, and
//! counting or requeueing dead letters of one kind reads each dead letter once.

use crate::support::*;
use serde_json::json;

/// How many times Redis has run `command` so far.
async fn calls(app: &TestApp, command: &str) -> u64 {
    let info: String =
        redis::cmd("INFO").arg("commandstats").query_async(&mut app.redis().await).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_filter_that_matches_nothing_reads_a_bounded_page_and_hands_back_a_cursor() {
    let app = spawn_app_alone(|c| c.concurrency = 0).await;
    app.submit_many(3000, json!({"kind": "echo", "payload": 1})).await;
    let before = calls(&app, "hgetall").await;
    let page = app.get_json("/api/v1/tasks?kind=nope").await;
    let read = calls(&app, "hgetall").await - before;
    assert_eq!(page["tasks"], json!([]));
    assert!(read <= 1000, "one page read {read} records");
    // The cursor goes on from where the page stopped, and the listing ends.
    let mut cursor = page["next_cursor"].as_str().expect("a cursor to read on from").to_string();
    let mut pages = 1;
    while let Some(next) =
        app.get_json(&format!("/api/v1/tasks?kind=nope&cursor={cursor}")).await["next_cursor"].as_str()
    {
        cursor = next.to_string();
        pages += 1;
        assert!(pages <= 4, "3000 records take at most 3 bounded pages, and one that finds the end");
    }
    // A filter that matches still fills its page.
    let echoes = app.get_json("/api/v1/tasks?kind=echo&status=queued&limit=20").await;
    assert_eq!(echoes["tasks"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn requeueing_one_kind_reads_each_dead_letter_once_and_moves_only_that_kind() {
    const DEAD: usize = 1200;
    let app = spawn_app_alone(|_| {}).await;
    let ids = app
        .submit_many(DEAD, json!({"kind": "flaky", "payload": {"fail_times": -1}, "max_attempts": 1}))
        .await;
    let mut redis = app.redis().await;
    for _ in 0..400 {
        let dead: usize = redis::AsyncCommands::zcard(&mut redis, app.key("dead")).await.unwrap();
        if dead == DEAD {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{}", ids[DEAD - 1])).await["status"], "failed");

    // Stepping over every one of them (none is an echo) reads each once: paging by a growing
    // offset read the first ones again on every page, and every record whole.
    let sent = bytes_sent(&app).await;
    let none = app.http.post(app.url("/api/v1/dead-letters/requeue?kind=echo")).send().await.unwrap();
    assert_eq!(none.json::<serde_json::Value>().await.unwrap()["requeued"], 0);
    let per_letter = (bytes_sent(&app).await - sent) / DEAD as u64;
    assert!(per_letter <= 150, "Redis sent {per_letter} bytes per dead letter");
    // Counting what a filter takes reads each one once too.
    let sent = bytes_sent(&app).await;
    assert_eq!(app.get_json("/api/v1/dead-letters/count?kind=echo").await["count"], 0);
    assert_eq!(app.get_json("/api/v1/dead-letters/count?reason=attempts_exhausted").await["count"], DEAD);
    let per_letter = (bytes_sent(&app).await - sent) / (2 * DEAD as u64);
    assert!(per_letter <= 150, "Redis sent {per_letter} bytes per dead letter counted");

    let all = app.http.post(app.url("/api/v1/dead-letters/requeue?kind=flaky")).send().await.unwrap();
    assert_eq!(all.json::<serde_json::Value>().await.unwrap()["requeued"], DEAD);
}
