//! The claim-check property: a payload is stored once, under its own key; queues carry ids only.

use crate::support::*;
use redis::AsyncCommands;
use std::collections::HashMap;

#[tokio::test]
async fn a_one_mib_payload_is_stored_once_and_the_queue_holds_only_its_id() {
    // No workers: the task stays queued, so the queue can be inspected.
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let marker = "claim-check-marker-";
    let payload: String = marker.repeat((1 << 20) / marker.len() + 1)[..1 << 20].to_string();
    let id = app.submit_raw_ok("echo", "application/octet-stream", payload.clone()).await;

    let mut redis = app.redis().await;
    let stored: Vec<u8> = redis.get(app.key(&format!("payload:{id}"))).await.unwrap();
    assert_eq!(stored, payload.as_bytes());

    // The ready stream's only entry is the id.
    let entries: redis::streams::StreamRangeReply = redis.xrange_all(app.key("ready:echo")).await.unwrap();
    assert_eq!(entries.ids.len(), 1);
    let fields: HashMap<String, String> = entries.ids[0]
        .map
        .iter()
        .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
        .collect();
    assert_eq!(fields, HashMap::from([("task".to_string(), id.clone())]));

    // No other key holds anything near the payload's size: it was written once.
    let keys: Vec<String> = redis.keys(format!("{}:*", app.prefix)).await.unwrap();
    for key in keys {
        if key == app.key(&format!("payload:{id}")) {
            continue;
        }
        let bytes: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(bytes.unwrap_or(0) < 64 * 1024, "{key} holds {bytes:?} bytes");
    }
}

#[tokio::test]
async fn an_echoed_one_mib_payload_is_its_own_result_kept_once() {
    let app = spawn_app().await;
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let id = app.submit_raw_ok("echo", "application/x-test", payload.clone()).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");

    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "application/x-test");
    assert_eq!(result.bytes().await.unwrap(), payload);

    // The payload serves as the result: one copy in Redis, kept as long as the task.
    let mut redis = app.redis().await;
    let exists: bool = redis.exists(app.key(&format!("result:{id}"))).await.unwrap();
    assert!(!exists, "no second copy under the result key");
    let task_ttl: i64 = redis.pttl(app.key(&format!("task:{id}"))).await.unwrap();
    let payload_ttl: i64 = redis.pttl(app.key(&format!("payload:{id}"))).await.unwrap();
    assert!((task_ttl - payload_ttl).abs() < 1000, "task {task_ttl} ms, payload {payload_ttl} ms");
}

#[tokio::test]
async fn a_large_result_of_its_own_is_stored_whole() {
    let app = spawn_app().await;
    let columns = 600;
    let header: Vec<String> = (0..columns).map(|c| format!("column_{c}")).collect();
    let row = |r: usize| (0..columns).map(|c| (r * c).to_string()).collect::<Vec<_>>().join(",");
    let csv = format!("{}\n{}\n{}\n", header.join(","), row(1), row(2));
    let id = app.submit_raw_ok("csv.summary", "text/csv", csv).await;
    assert_eq!(app.wait_until_done(&id).await["status"], "succeeded");

    let bytes = app
        .http
        .get(app.url(&format!("/api/v1/tasks/{id}/result")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.len() > 32 * 1024, "a result larger than any Lua argument Courier sends: {}", bytes.len());
    let summary: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(summary["columns"].as_array().unwrap().len(), columns);
    assert_eq!(summary["columns"][599]["max"], 2 * 599);
    let mut redis = app.redis().await;
    let staged: Vec<String> = redis.keys(app.key("staged:*")).await.unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    let ttl: i64 = redis.pttl(app.key(&format!("result:{id}"))).await.unwrap();
    assert!(ttl > 0, "the result expires with the task");
}

#[tokio::test]
async fn a_worker_with_payload_retention_zero_releases_a_succeeded_tasks_payload_and_keeps_its_result() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let _worker = app.worker(&["--payload-retention", "0s"]);
    // A 1 MiB text whose result is its counts, and a 1 MiB payload echoed: its own result.
    let text = "claim check ".repeat((1 << 20) / 12);
    let counted = app.submit_raw_ok("text.stats", "text/plain", text.clone()).await;
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let echoed = app.submit_raw_ok("echo", "application/x-test", payload.clone()).await;
    assert_eq!(app.wait_until_done(&counted).await["status"], "succeeded");
    assert_eq!(app.wait_until_done(&echoed).await["status"], "succeeded");

    // The counted text's payload is gone from Redis and says why; its task and result stay.
    let mut redis = app.redis().await;
    let kept: bool = redis.exists(app.key(&format!("payload:{counted}"))).await.unwrap();
    assert!(!kept, "the payload was released as the task succeeded");
    let answer = app.http.get(app.url(&format!("/api/v1/tasks/{counted}/payload"))).send().await.unwrap();
    let problem = assert_problem(answer, 404, "/problems/not-found").await;
    assert!(problem["detail"].as_str().unwrap().contains("--payload-retention"), "{problem}");
    let head = app.http.head(app.url(&format!("/api/v1/tasks/{counted}/payload"))).send().await.unwrap();
    assert_eq!(head.status(), 404, "a HEAD finds it gone too");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{counted}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    let stats: serde_json::Value = result.json().await.unwrap();
    assert_eq!(stats["words"], 2 * ((1 << 20) / 12));
    let task = app.http.get(app.url(&format!("/api/v1/tasks/{counted}"))).send().await.unwrap();
    assert_eq!(task.status(), 200);
    let task_ttl: i64 = redis.pttl(app.key(&format!("task:{counted}"))).await.unwrap();
    assert!(task_ttl > 3_600_000, "the record keeps the retention: {task_ttl} ms");

    // The echoed payload is the result: kept with it.
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{echoed}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.bytes().await.unwrap(), payload);
    let answer = app.http.get(app.url(&format!("/api/v1/tasks/{echoed}/payload"))).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn a_head_of_a_payload_or_a_result_answers_its_size_and_type_without_reading_its_bytes() {
    // A Redis of its own: the bytes it sends are counted.
    let app = spawn_app_alone(|_| {}).await;
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let echoed = app.submit_raw_ok("echo", "application/x-test", payload).await;
    let text = "a few words ".repeat(100);
    let counted = app.submit_raw_ok("text.stats", "text/plain", text.clone()).await;
    assert_eq!(app.wait_until_done(&echoed).await["status"], "succeeded");
    assert_eq!(app.wait_until_done(&counted).await["status"], "succeeded");

    // Each HEAD answers what its GET would: the status, the type and the length, with no body.
    for (id, what) in [(&echoed, "payload"), (&echoed, "result"), (&counted, "payload"), (&counted, "result")]
    {
        let url = app.url(&format!("/api/v1/tasks/{id}/{what}"));
        let sent = bytes_sent(&app).await;
        let head = app.http.head(&url).send().await.unwrap();
        let read = bytes_sent(&app).await - sent;
        let get = app.http.get(&url).send().await.unwrap();
        assert_eq!((head.status().as_u16(), get.status().as_u16()), (200, 200), "{what} of {id}");
        for header in ["content-type", "content-length", "content-disposition"] {
            assert_eq!(
                head.headers().get(header),
                get.headers().get(header),
                "{header} of the {what} of {id}"
            );
        }
        let length: usize = head.headers()["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(length, get.bytes().await.unwrap().len(), "the {what} of {id}");
        assert!(head.bytes().await.unwrap().is_empty());
        // Redis sent the record and a size, not the bytes (1 MiB for the echoed task's).
        assert!(read < 16 * 1024, "a HEAD of the {what} of {id} had Redis send {read} bytes");
    }
    // The 1 MiB payload under its own key, and the text kept in the record.
    let mut redis = app.redis().await;
    let own_key: (bool, bool) = redis::pipe()
        .exists(app.key(&format!("payload:{echoed}")))
        .exists(app.key(&format!("payload:{counted}")))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(own_key, (true, false));
    let length =
        |response: &reqwest::Response| response.headers()["content-length"].to_str().unwrap().to_string();
    let head = app.http.head(app.url(&format!("/api/v1/tasks/{echoed}/payload"))).send().await.unwrap();
    assert_eq!(length(&head), (1 << 20).to_string());
    let head = app.http.head(app.url(&format!("/api/v1/tasks/{counted}/payload"))).send().await.unwrap();
    assert_eq!(length(&head), text.len().to_string());
}
