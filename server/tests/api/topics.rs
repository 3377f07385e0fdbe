//! Publish/subscribe: subscriptions over the API and from courier.toml, filters, publishing.

use crate::support::*;
use redis::AsyncCommands;
use serde_json::json;

async fn put(app: &TestApp, topic: &str, name: &str, body: serde_json::Value) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/api/v1/topics/{topic}/subscriptions/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn publish(app: &TestApp, topic: &str, body: serde_json::Value) -> reqwest::Response {
    app.http.post(app.url(&format!("/api/v1/topics/{topic}/messages"))).json(&body).send().await.unwrap()
}

/// Publishes `body` to `topic` (accepted): the ids of the tasks it made.
async fn published_ids(app: &TestApp, topic: &str, body: serde_json::Value) -> Vec<String> {
    let response = publish(app, topic, body).await;
    assert_eq!(response.status(), 202);
    let published: serde_json::Value = response.json().await.unwrap();
    published["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().into()).collect()
}

#[tokio::test]
async fn subscriptions_are_created_replaced_listed_and_deleted() {
    let app = spawn_app().await;
    let audit = json!({"kind": "echo", "filter": {"region": {"equals": "eu"}}, "max_attempts": 2});
    assert_eq!(put(&app, "orders", "audit", audit.clone()).await.status(), 201);
    assert_eq!(put(&app, "orders", "audit", audit.clone()).await.status(), 200);
    assert_eq!(app.get_json("/api/v1/topics/orders/subscriptions/audit").await, audit);
    let all = app.get_json("/api/v1/topics/orders/subscriptions").await;
    assert_eq!(all, json!({"audit": audit}));
    let topics = app.get_json("/api/v1/topics").await;
    assert_eq!(topics[0]["topic"], "orders");
    assert_eq!(topics[0]["subscriptions"]["audit"]["kind"], "echo");

    let unknown = put(&app, "orders", "x", json!({"kind": "teleport"})).await;
    assert_problem(unknown, 422, "/problems/unknown-kind").await;
    let bad_filter = put(&app, "orders", "x", json!({"kind": "echo", "filter": {"a": {"like": 1}}})).await;
    assert_problem(bad_filter, 422, "/problems/invalid-request").await;
    let bad_name = put(&app, "orders", "no spaces", json!({"kind": "echo"})).await;
    assert_problem(bad_name, 400, "/problems/bad-request").await;

    let url = app.url("/api/v1/topics/orders/subscriptions/audit");
    assert_eq!(app.http.delete(&url).send().await.unwrap().status(), 204);
    assert_problem(app.http.delete(&url).send().await.unwrap(), 404, "/problems/not-found").await;
}

#[tokio::test]
async fn a_message_becomes_one_task_per_matching_subscription() {
    let app = spawn_app().await;
    put(&app, "orders", "audit", json!({"kind": "echo"})).await;
    put(&app, "orders", "eu", json!({"kind": "echo", "filter": {"region": {"equals": "eu"}}})).await;
    put(&app, "orders", "gold", json!({"kind": "echo", "filter": {"tier": {"in": ["gold"]}}})).await;
    put(&app, "orders", "traced", json!({"kind": "echo", "filter": {"trace": {"exists": true}}})).await;

    let response = publish(
        &app,
        "orders",
        json!({"payload": {"order": 7}, "properties": {"region": "eu", "tier": "silver"}}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let published: serde_json::Value = response.json().await.unwrap();
    assert!(published["message_id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    let tasks = published["tasks"].as_array().unwrap();
    let subscriptions: Vec<&str> = tasks.iter().map(|t| t["subscription"].as_str().unwrap()).collect();
    assert_eq!(subscriptions, ["audit", "eu"]);
    for task in tasks {
        let id = task["task_id"].as_str().unwrap();
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
        assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}/result")).await, json!({"order": 7}));
    }

    // Nothing matches: accepted, no task, and counted.
    let nobody = publish(&app, "nobody-listens", json!({"payload": 1})).await;
    assert_eq!(nobody.status(), 202);
    assert_eq!(nobody.json::<serde_json::Value>().await.unwrap()["tasks"], json!([]));
    let topics = app.get_json("/api/v1/topics").await;
    let stats = topics.as_array().unwrap().iter().find(|t| t["topic"] == "nobody-listens").unwrap();
    assert_eq!((stats["messages"].as_u64(), stats["unmatched"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test]
async fn each_subscription_has_its_own_retries_and_dead_letters() {
    let app = spawn_app().await;
    put(&app, "jobs", "fragile", json!({"kind": "flaky", "max_attempts": 2})).await;
    put(&app, "jobs", "sturdy", json!({"kind": "flaky", "max_attempts": 5})).await;
    let published: serde_json::Value =
        publish(&app, "jobs", json!({"payload": {"fail_times": 2}})).await.json().await.unwrap();
    let by_name = |name: &str| {
        published["tasks"].as_array().unwrap().iter().find(|t| t["subscription"] == name).unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fragile = app.wait_until_done(&by_name("fragile")).await;
    assert_eq!((fragile["status"].as_str(), fragile["attempts"].as_u64()), (Some("failed"), Some(2)));
    let sturdy = app.wait_until_done(&by_name("sturdy")).await;
    assert_eq!((sturdy["status"].as_str(), sturdy["attempts"].as_u64()), (Some("succeeded"), Some(3)));
    let letters = app.get_json("/api/v1/dead-letters").await;
    let ids: Vec<&str> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["task"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [by_name("fragile")]);
}

#[tokio::test]
async fn a_message_one_subscription_cannot_take_creates_no_task_at_all() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    put(&app, "mixed", "echoer", json!({"kind": "echo"})).await;
    put(&app, "mixed", "sleeper", json!({"kind": "sleep"})).await;
    let response = publish(&app, "mixed", json!({"payload": {"not": "a sleep"}})).await;
    let problem = assert_problem(response, 422, "/problems/invalid-payload").await;
    assert!(problem["detail"].as_str().unwrap().starts_with("subscription `sleeper`"), "{problem}");
    let queued = app.ready_len().await;
    assert_eq!(queued, 0, "all or none");
    assert_problem(
        publish(&app, "mixed", json!({"payload": 1, "extra": 2})).await,
        422,
        "/problems/invalid-request",
    )
    .await;
    let malformed = app.http.post(app.url("/api/v1/topics/mixed/messages")).body("{").send().await.unwrap();
    assert_problem(malformed, 400, "/problems/bad-request").await;
}

#[tokio::test]
async fn courier_toml_declares_subscriptions_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("courier.toml");
    std::fs::write(
        &path,
        "[[subscriptions]]\ntopic = \"signups\"\nname = \"welcome\"\nkind = \"echo\"\nfilter = { plan = { in = [\"pro\"] } }\n",
    )
    .unwrap();
    let app = spawn_app_with(|c| c.config = Some(path.clone())).await;
    let welcome = app.get_json("/api/v1/topics/signups/subscriptions/welcome").await;
    assert_eq!(welcome, json!({"kind": "echo", "filter": {"plan": {"in": ["pro"]}}}));
    let published: serde_json::Value =
        publish(&app, "signups", json!({"payload": "hi", "properties": {"plan": "pro"}}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(published["tasks"][0]["subscription"], "welcome");
}

#[tokio::test]
async fn a_message_over_the_payload_limit_is_a_413_and_creates_nothing() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.max_payload = 1024;
    })
    .await;
    put(&app, "big", "echoer", json!({"kind": "echo"})).await;
    let sized = publish(&app, "big", json!({"payload": "y".repeat(2000)})).await;
    assert_problem(sized, 413, "/problems/payload-too-large").await;
    // Streamed without a length, the limit holds as well.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let streamed = app
        .http
        .post(app.url("/api/v1/topics/big/messages"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(streamed, 413, "/problems/payload-too-large").await;
    let queued = app.ready_len().await;
    assert_eq!(queued, 0);
    assert_eq!(publish(&app, "big", json!({"payload": 1})).await.status(), 202);
}

/// The payload keys under the app's prefix, with the bytes each takes in Redis.
async fn payload_keys(app: &TestApp) -> Vec<(String, u64)> {
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis.keys(format!("{}:*:payload:*", app.prefix)).await.unwrap();
    let mut sized = Vec::new();
    for key in keys {
        let bytes: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(&mut redis).await.unwrap();
        sized.push((key, bytes.unwrap_or(0)));
    }
    sized
}

#[tokio::test]
async fn a_message_for_twenty_subscriptions_is_stored_once_and_freed_after_the_last_task() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.retention = std::time::Duration::from_secs(2);
    })
    .await;
    for n in 0..20 {
        assert_eq!(put(&app, "big", &format!("s{n}"), json!({"kind": "echo"})).await.status(), 201);
    }
    let text = "x".repeat(1 << 20);
    let ids = published_ids(&app, "big", json!({"payload": {"text": text}})).await;
    assert_eq!(ids.len(), 20);

    let stored = payload_keys(&app).await;
    assert_eq!(stored.len(), 1, "one payload for twenty tasks: {stored:?}");
    assert!((1 << 20..2 << 20).contains(&stored[0].1), "{stored:?}");
    let mut redis = app.redis().await;
    let ttl: i64 = redis.pttl(&stored[0].0).await.unwrap();
    assert_eq!(ttl, -1, "kept while its tasks wait");

    // Cancelling some ends them; the payload stays for the others, which still run with it.
    for id in &ids[..5] {
        let cancelled = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
        assert_eq!(cancelled.status(), 200);
    }
    let ttl: i64 = redis.pttl(&stored[0].0).await.unwrap();
    assert_eq!(ttl, -1, "still kept: 15 tasks wait for it");
    let _worker = app.worker(&["--retention", "2s"]);
    for id in &ids[5..] {
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
        let result = app.get_json(&format!("/api/v1/tasks/{id}/result")).await;
        assert_eq!(result["text"].as_str().map(str::len), Some(1 << 20));
    }
    // The last one ended: the payload now lives out the retention, then goes.
    let ttl: i64 = redis.pttl(&stored[0].0).await.unwrap();
    assert!((1..=2000).contains(&ttl), "TTL after the last task ended: {ttl}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(payload_keys(&app).await.is_empty());
    let refs: Vec<String> = redis.keys(format!("{}:*:payload-refs:*", app.prefix)).await.unwrap();
    assert!(refs.is_empty(), "{refs:?}");
}

#[tokio::test]
async fn a_topic_takes_a_hundred_subscriptions_and_no_more() {
    let app = spawn_app().await;
    for n in 0..100 {
        assert_eq!(put(&app, "wide", &format!("s{n}"), json!({"kind": "echo"})).await.status(), 201);
    }
    let refused = put(&app, "wide", "s100", json!({"kind": "echo"})).await;
    assert_problem(refused, 409, "/problems/too-many-subscriptions").await;
    // Replacing one that exists is still allowed.
    assert_eq!(put(&app, "wide", "s7", json!({"kind": "echo", "max_attempts": 2})).await.status(), 200);
    let all = app.get_json("/api/v1/topics/wide/subscriptions").await;
    assert_eq!(all.as_object().unwrap().len(), 100);
}

#[tokio::test]
async fn a_released_message_goes_when_its_last_task_succeeds_and_stays_for_a_cancelled_one() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    for n in 0..3 {
        assert_eq!(put(&app, "texts", &format!("s{n}"), json!({"kind": "text.stats"})).await.status(), 201);
    }
    let text = "a shared text ".repeat(80_000);
    let mut messages = Vec::new();
    for _ in 0..2 {
        let ids = published_ids(&app, "texts", json!({"payload": text})).await;
        assert_eq!(ids.len(), 3);
        messages.push(ids);
    }
    assert_eq!(payload_keys(&app).await.len(), 2, "each message stored once");
    // One task of the second message is cancelled before it runs: it keeps the message.
    let cancelled =
        app.http.delete(app.url(&format!("/api/v1/tasks/{}", messages[1][0]))).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);

    let _worker = app.worker(&["--payload-retention", "0s"]);
    for id in messages[0].iter().chain(&messages[1][1..]) {
        assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
    }
    // The first message went with its last task; the second stays the retention, for the
    // cancelled task.
    let stored = payload_keys(&app).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].0.ends_with(&messages[1][0]), "{stored:?}");
    let mut redis = app.redis().await;
    let ttl: i64 = redis.pttl(&stored[0].0).await.unwrap();
    assert!(ttl > 3_600_000, "kept the retention: {ttl} ms");
    // (Under the kind's queue, whichever queue the tests name.)
    let refs: Vec<String> = redis.keys(format!("{}:*:payload-refs:*", app.prefix)).await.unwrap();
    assert_eq!(refs.len(), 1, "{refs:?}");
}
