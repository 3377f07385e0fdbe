//! Upgrading a Redis from the key layout before hash tags: at the first start every key of no
//! queue moves once under its family's tag (`courier::layout`), and everything stored before
//! works as it did.

use crate::support::*;
use redis::{AsyncCommands, aio::MultiplexedConnection};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::{collections::BTreeMap, time::Duration};
use uuid::Uuid;

/// A token as `courier token create` mints them (`cour_` and 43 base64url characters).
const TOKEN: &str = "cour_migratedmigratedmigratedmigratedmigrate";
/// The workflow's `Idempotency-Key`.
const IDEMPOTENCY_KEY: &str = "nightly-2024-06-01";
const DAY_MS: u64 = 86_400_000;

fn workflow_body() -> Value {
    json!({"name": "nightly", "steps": [{"id": "a", "kind": "echo", "payload": 1, "queue": "default"}]})
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What the old layout was seeded with.
struct Seeded {
    /// A finished task of queue `reports` (number 7), by its id alone.
    task: Uuid,
    workflow: Uuid,
    /// Every key written under its old name.
    old_keys: Vec<String>,
}

/// The digest a workflow's idempotency key holds for [`workflow_body`], as this build computes
/// it: asked of a server under a prefix of its own.
async fn request_digest(redis_url: &str) -> String {
    let scratch = spawn_app_on(redis_url, |c| c.concurrency = 0).await;
    let created = scratch
        .http
        .post(scratch.url("/api/v1/workflows"))
        .header("idempotency-key", IDEMPOTENCY_KEY)
        .json(&workflow_body())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    let mut redis = scratch.redis().await;
    let keys: Vec<String> = redis.keys(format!("{}:*wf-idem:*", scratch.prefix)).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let held: String = redis.get(&keys[0]).await.unwrap();
    held.split_once(' ').unwrap().1.to_string()
}

/// Writes what a Courier of the layout before tags stored under `prefix`: an admin token, a
/// declared kind, a topic with a subscription, a named queue with a task, a finished workflow
/// with an idempotency key, and a worker.
async fn seed_old_layout(redis: &mut MultiplexedConnection, prefix: &str, request_digest: &str) -> Seeded {
    let now = now_ms();
    let p = |rest: &str| format!("{prefix}:{rest}");
    let digest = courier::auth::hex(&Sha256::digest(TOKEN.as_bytes()));
    let info = json!({"name": "admin", "scopes": ["submit", "read", "work", "operate", "admin"],
        "queues": ["*"], "created_ms": now - DAY_MS});
    let task = courier::queues::stamp(Uuid::now_v7(), 7);
    let workflow = Uuid::now_v7();
    let step_task = Uuid::now_v7();
    let idem_key = p(&format!("wf-idem:{}", sha1_smol::Sha1::from(IDEMPOTENCY_KEY).digest()));
    let _: () = redis::pipe()
        .hset(p("tokens"), &digest, info.to_string())
        .hset(p("token-names"), "admin", &digest)
        .hset(p("token-used"), &digest, now - 1_000)
        .set(p("tokens-version"), 1)
        .set(p("auth-enforced"), 1)
        .hset(p("kinds"), "resize", json!({"description": "Resizes an image."}).to_string())
        .set(p("kinds-version"), 1)
        .hset(p("topic:orders"), "audit", json!({"kind": "echo"}).to_string())
        .hset(p("topic-stats:orders"), "messages", 5)
        .sadd(p("topics"), "orders")
        .sadd(p("queues"), "reports")
        .hset(p("queue-numbers"), "reports", 7)
        .hset(p("queue-names"), 7, "reports")
        .set(p("queue-numbers-since"), now - DAY_MS)
        .hset_multiple(
            format!("{prefix}:{{reports}}:task:{task}"),
            &[
                ("kind", "echo".to_string()),
                ("status", "succeeded".into()),
                ("attempts", "1".into()),
                ("max_attempts", "3".into()),
                ("created", now.to_string()),
                ("updated", now.to_string()),
                ("finished", now.to_string()),
            ],
        )
        .hset_multiple(
            p(&format!("wf:{workflow}")),
            &[
                ("spec", workflow_body().to_string()),
                ("status", "succeeded".into()),
                ("created", now.to_string()),
                ("updated", now.to_string()),
                ("finished", now.to_string()),
                ("queues", "default".into()),
                ("idem", idem_key.clone()),
                ("t:a", step_task.to_string()),
                ("s:a", "succeeded\u{1f}".into()),
            ],
        )
        .pexpire(p(&format!("wf:{workflow}")), DAY_MS as i64)
        .zadd(p("workflows"), workflow.to_string(), now)
        .set(&idem_key, format!("{workflow} {request_digest}"))
        .pexpire(&idem_key, DAY_MS as i64)
        .zadd(p("workers"), "old-worker", now)
        .hset(p("worker:old-worker"), "runs", "pull")
        .query_async(redis)
        .await
        .unwrap();
    let old_keys = [
        "tokens",
        "token-names",
        "token-used",
        "tokens-version",
        "auth-enforced",
        "kinds",
        "kinds-version",
        "topic:orders",
        "topic-stats:orders",
        "topics",
        "queues",
        "queue-numbers",
        "queue-names",
        "queue-numbers-since",
        &format!("wf:{workflow}"),
        "workflows",
        "workers",
        "worker:old-worker",
    ]
    .iter()
    .map(|rest| p(rest))
    .chain([idem_key])
    .collect();
    Seeded { task, workflow, old_keys }
}

/// `GET path` with the token, which must succeed; the JSON answer.
async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.http.get(app.url(path)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Polls task `id` until it has ended (a minute at most); its view.
async fn until_done(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = get(app, &format!("/api/v1/tasks/{id}")).await;
        if ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap()) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "the task ends within a minute: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The queue number a task id carries (`queues::stamp`).
fn queue_number(id: &str) -> u16 {
    let bytes = *id.parse::<Uuid>().unwrap().as_bytes();
    (u16::from(bytes[6] & 0x0f) << 8) | u16::from(bytes[7])
}

/// Every key under `prefix`.
async fn keys_under(redis: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis.keys(format!("{prefix}:*")).await.unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_redis_of_the_layout_before_tags_moves_once_and_everything_stored_still_works() {
    let redis = TestRedis::start().await;
    let url = redis.redis.url();
    let digest = request_digest(&url).await;
    let prefix = unique_prefix();
    let mut conn =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let seeded = seed_old_layout(&mut conn, &prefix, &digest).await;

    // Two processes starting at once: one moves the keys, the other waits for it.
    let (app, other) = tokio::join!(
        spawn_app_on(&url, |c| c.prefix = prefix.clone()),
        spawn_app_on(&url, |c| c.prefix = prefix.clone()),
    );
    drop(other);
    let left: Vec<String> = keys_under(&mut conn, &prefix).await;
    let stale: Vec<&String> = left.iter().filter(|k| seeded.old_keys.contains(k)).collect();
    assert!(stale.is_empty(), "old keys left: {stale:?}");
    for key in &left {
        let lone = ["layout", "link-keys", "audit"].iter().any(|rest| *key == format!("{prefix}:{rest}"));
        assert!(courier::layout::hash_tag(key).is_some() || lone, "{key} has no tag");
    }
    let layout: u64 = conn.get(courier::layout::marker(&prefix)).await.unwrap();
    assert_eq!(layout, 2);

    // The token authenticates, and access control stays on.
    let me = get(&app, "/api/v1/auth/me").await;
    assert_eq!(me["name"], "admin");
    let anonymous = app.http.get(app.url("/api/v1/queues")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // The declared kind is listed.
    let kinds = get(&app, "/api/v1/kinds").await;
    let resize = kinds.as_array().unwrap().iter().find(|k| k["name"] == "resize").expect("resize is listed");
    assert_eq!(resize["declared"], true);

    // The topic keeps its subscription and counters, and a message becomes a task.
    let topics = get(&app, "/api/v1/topics").await;
    assert_eq!(topics[0]["topic"], "orders", "{topics}");
    assert_eq!(topics[0]["messages"], 5, "{topics}");
    let published = app
        .http
        .post(app.url("/api/v1/topics/orders/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({"payload": {"order": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    let published: Value = published.json().await.unwrap();
    let tasks = published["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{published}");
    assert_eq!(until_done(&app, tasks[0]["task_id"].as_str().unwrap()).await["status"], "succeeded");
    assert_eq!(get(&app, "/api/v1/topics").await[0]["messages"], 6);

    // The named queue keeps its number: its old task is found by id, a new one carries it too.
    let old_task = get(&app, &format!("/api/v1/tasks/{}", seeded.task)).await;
    assert_eq!(
        (old_task["queue"].as_str(), old_task["status"].as_str()),
        (Some("reports"), Some("succeeded"))
    );
    let submitted = app
        .http
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(TOKEN)
        .json(&json!({"kind": "echo", "payload": 1, "queue": "reports"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let id = submitted.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(queue_number(&id), 7);
    assert_eq!(until_done(&app, &id).await["queue"], "reports");

    // The workflow is listed and viewed, and its Idempotency-Key replays it.
    let workflow = seeded.workflow.to_string();
    let listed = get(&app, "/api/v1/workflows").await;
    assert!(listed["workflows"].as_array().unwrap().iter().any(|w| w["id"] == workflow.as_str()), "{listed}");
    let view = get(&app, &format!("/api/v1/workflows/{workflow}")).await;
    assert_eq!((view["name"].as_str(), view["status"].as_str()), (Some("nightly"), Some("succeeded")));
    let replayed = app
        .http
        .post(app.url("/api/v1/workflows"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", IDEMPOTENCY_KEY)
        .json(&workflow_body())
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 202);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.unwrap()["id"], workflow.as_str());
    let keys = courier::workflows::WorkflowKeys::new(&prefix);
    let idem: String = conn.hget(keys.workflow(&workflow), "idem").await.unwrap();
    let idem_digest = sha1_smol::Sha1::from(IDEMPOTENCY_KEY).digest().to_string();
    assert_eq!(idem, keys.idempotency(&idem_digest));
    for key in [keys.workflow(&workflow), idem] {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= DAY_MS as i64, "{key} keeps its retention: {ttl}");
    }
    drop(app);

    // A second start finds the layout moved and moves nothing, not even a key with an old name.
    let kinds_key = courier::kinds::KindKeys::new(&prefix);
    let before: BTreeMap<String, String> = conn.hgetall(kinds_key.declared()).await.unwrap();
    let stray = format!("{prefix}:kinds");
    let _: () = conn.hset(&stray, "stray", json!({"description": "Not moved."}).to_string()).await.unwrap();
    let again = spawn_app_on(&url, |c| c.prefix = prefix.clone()).await;
    assert!(conn.exists::<_, bool>(&stray).await.unwrap());
    let after: BTreeMap<String, String> = conn.hgetall(kinds_key.declared()).await.unwrap();
    assert_eq!(after, before);
    let kinds = get(&again, "/api/v1/kinds").await;
    assert!(kinds.as_array().unwrap().iter().all(|k| k["name"] != "stray"), "{kinds}");
    assert_eq!(get(&again, "/api/v1/auth/me").await["name"], "admin");
}
