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
    let response = app
        .http
        .post(app.url("/api/v1/tasks?kind=echo"))
        .header("content-type", "application/octet-stream")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let mut redis = app.redis().await;
    let stored: Vec<u8> = redis.get(app.key(&format!("payload:{id}"))).await.unwrap();
    assert_eq!(stored, payload.as_bytes());

    // The ready stream's only entry is the id.
    let entries: redis::streams::StreamRangeReply = redis.xrange_all(app.key("ready")).await.unwrap();
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
