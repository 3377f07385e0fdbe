//! Kinds declared without code: declared, read and deleted over the API or in `courier.toml`,
//! validated with the field at fault named, enforced on submit, and seen by every process.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn put_kind(app: &TestApp, name: &str, declaration: Value) -> reqwest::Response {
    app.http.put(app.url(&format!("/api/v1/kinds/{name}"))).json(&declaration).send().await.unwrap()
}

async fn delete_kind(app: &TestApp, name: &str) -> reqwest::Response {
    app.http.delete(app.url(&format!("/api/v1/kinds/{name}"))).send().await.unwrap()
}

/// The names of the kinds `GET /api/v1/kinds` lists, with whether each was declared.
async fn listed(app: &TestApp) -> Vec<(String, bool)> {
    let kinds = app.get_json("/api/v1/kinds").await;
    kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap().to_string(), k["declared"].as_bool().unwrap()))
        .collect()
}

fn resize() -> Value {
    json!({
        "description": "Resizes an image to a width.",
        "queue": "images",
        "schema": {
            "type": "object",
            "required": ["width"],
            "additionalProperties": false,
            "properties": {"width": {"type": "integer", "minimum": 1, "maximum": 10000}}
        },
        "example": {"width": 640},
        "max_attempts": 3,
        "timeout_ms": 5000,
        "retry_base_ms": 100,
        "retry_cap_ms": 1000,
        "endpoint": {"url": "http://127.0.0.1:1/resize", "secret": SECRET}
    })
}

#[tokio::test]
async fn a_declared_kind_round_trips_with_its_secret_never_shown() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let created = put_kind(&app, "resize", resize()).await;
    assert_eq!(created.status(), 201);
    let shown: Value = created.json().await.unwrap();
    assert_eq!(shown["name"], "resize");
    assert_eq!(shown["endpoint"]["secret"], "whsec_…");

    let read = app.http.get(app.url("/api/v1/kinds/resize")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let text = read.text().await.unwrap();
    assert!(!text.contains(SECRET), "{text}");
    let read: Value = serde_json::from_str(&text).unwrap();
    let mut expected = resize();
    expected["name"] = "resize".into();
    expected["endpoint"]["secret"] = "whsec_…".into();
    expected["accepts_raw"] = false.into();
    assert_eq!(read, expected);

    let list = app.http.get(app.url("/api/v1/kinds")).send().await.unwrap().text().await.unwrap();
    assert!(!list.contains(SECRET), "{list}");
    let kinds: Value = serde_json::from_str(&list).unwrap();
    let info = kinds.as_array().unwrap().iter().find(|k| k["name"] == "resize").expect("resize is listed");
    assert_eq!((info["declared"].as_bool(), info["queue"].as_str()), (Some(true), Some("images")));
    assert_eq!(info["example"], json!({"width": 640}));
    assert!(listed(&app).await.contains(&("echo".to_string(), false)));

    // The same again changes nothing; a new description replaces it.
    assert_eq!(put_kind(&app, "resize", resize()).await.status(), 200);
    let mut renamed = resize();
    renamed["name"] = "resize".into();
    renamed["description"] = "Resizes.".into();
    assert_eq!(put_kind(&app, "resize", renamed).await.status(), 200);
    assert_eq!(app.get_json("/api/v1/kinds/resize").await["description"], "Resizes.");

    assert_eq!(delete_kind(&app, "resize").await.status(), 204);
    let gone = app.http.get(app.url("/api/v1/kinds/resize")).send().await.unwrap();
    assert_problem(gone, 404, "/problems/not-found").await;
    assert_problem(delete_kind(&app, "resize").await, 404, "/problems/not-found").await;
    assert!(!listed(&app).await.iter().any(|(name, _)| name == "resize"));
}

#[tokio::test]
async fn a_declared_kinds_schema_and_content_types_are_enforced_on_submit() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut declaration = resize();
    declaration.as_object_mut().unwrap().remove("endpoint");
    declaration["accepts_raw"] = true.into();
    declaration["content_types"] = json!(["text/csv", "image/*"]);
    assert_eq!(put_kind(&app, "resize", declaration).await.status(), 201);

    let refused = app.submit(json!({"kind": "resize", "payload": {"width": "wide"}})).await;
    let problem = assert_problem(refused, 422, "/problems/invalid-payload").await;
    assert_eq!(problem["errors"], json!(["/width: must be integer"]));
    let id = app.submit_ok(json!({"kind": "resize", "payload": {"width": 320}})).await;
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!((view["kind"].as_str(), view["max_attempts"].as_u64()), (Some("resize"), Some(3)));
    if test_queue().is_none() {
        assert_eq!(view["queue"], "images", "the kind's own queue");
    }

    // A raw body: only of the content types it lists.
    app.submit_raw_ok("resize", "text/csv; charset=utf-8", "a,b\n1,2\n").await;
    app.submit_raw_ok("resize", "image/png", vec![0x89, b'P', b'N', b'G']).await;
    let queue = test_queue().map(|q| format!("&queue={q}")).unwrap_or_default();
    let plain = app
        .http
        .post(app.url(&format!("/api/v1/tasks?kind=resize{queue}")))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(plain, 415, "/problems/unsupported-media-type").await;
    assert!(problem["detail"].as_str().unwrap().contains("text/csv"), "{problem}");
}

#[tokio::test]
async fn invalid_declarations_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let with = |field: &str, value: Value| {
        let mut declaration = resize();
        declaration[field] = value;
        declaration
    };
    let cases = [
        ("Bad_Name", resize(), "`name`"),
        ("resize", with("name", "other".into()), "`name`"),
        ("resize", with("schema", json!({"type": "object", "oneOf": []})), "`schema`"),
        ("resize", with("schema", json!({"type": "thing"})), "`schema`"),
        ("resize", with("example", json!({"width": 0})), "`example`"),
        ("resize", with("max_attempts", json!(0)), "`max_attempts`"),
        (
            "resize",
            with("endpoint", json!({"url": "http://127.0.0.1:1", "secret": "hunter2"})),
            "`endpoint.secret`",
        ),
        (
            "resize",
            with("endpoint", json!({"url": "http://127.0.0.1:1", "secret": "whsec_…"})),
            "`endpoint.secret`",
        ),
        ("resize", with("colour", "red".into()), "colour"),
    ];
    for (name, declaration, field) in cases {
        let response = put_kind(&app, name, declaration.clone()).await;
        let problem = assert_problem(response, 422, "/problems/invalid-declaration").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{field} in {detail} ({declaration})");
    }
    let example = assert_problem(
        put_kind(&app, "resize", with("example", json!({"width": 0}))).await,
        422,
        "/problems/invalid-declaration",
    )
    .await;
    assert_eq!(example["errors"], json!(["/width: must be at least 1"]));
    let malformed = app
        .http
        .put(app.url("/api/v1/kinds/resize"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "/problems/bad-request").await;

    assert!(listed(&app).await.iter().all(|(_, declared)| !declared));
    let mut redis = app.redis().await;
    let keys = courier::kinds::KindKeys::new(&app.prefix);
    let stored: usize = redis::cmd("HLEN").arg(keys.declared()).query_async(&mut redis).await.unwrap();
    let version: Option<u64> = redis::cmd("GET").arg(keys.version()).query_async(&mut redis).await.unwrap();
    assert_eq!((stored, version), (0, None));
}

#[tokio::test]
async fn a_built_in_kind_cannot_be_declared_or_deleted() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    assert_problem(put_kind(&app, "echo", json!({})).await, 409, "/problems/built-in-kind").await;
    assert_problem(delete_kind(&app, "echo").await, 409, "/problems/built-in-kind").await;
    let echo = app.get_json("/api/v1/kinds/echo").await;
    assert_eq!((echo["name"].as_str(), echo["declared"].as_bool()), (Some("echo"), Some(false)));
    let unknown = app.http.get(app.url("/api/v1/kinds/nothing")).send().await.unwrap();
    assert_problem(unknown, 404, "/problems/not-found").await;
}

#[tokio::test]
async fn another_instance_sees_a_declaration_and_its_deletion_within_a_second() {
    let a = spawn_app_with(|c| c.concurrency = 0).await;
    let b = spawn_app_on(&a.redis_url, |c| {
        c.prefix = a.prefix.clone();
        c.concurrency = 0;
    })
    .await;
    let seen_on_b = |declared: bool| {
        let b = &b;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            loop {
                if listed(b).await.iter().any(|(name, _)| name == "resize") == declared {
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(!listed(&b).await.iter().any(|(name, _)| name == "resize"), "not declared yet");
    assert_eq!(put_kind(&a, "resize", resize()).await.status(), 201);
    assert!(seen_on_b(true).await, "b lists the kind a declared within a second");
    // b enforces its schema as a does.
    let refused = b.submit(json!({"kind": "resize", "payload": {}})).await;
    assert_problem(refused, 422, "/problems/invalid-payload").await;
    b.submit_ok(json!({"kind": "resize", "payload": {"width": 10}})).await;

    assert_eq!(delete_kind(&a, "resize").await.status(), 204);
    assert!(seen_on_b(false).await, "b forgets the kind a deleted within a second");
    let unknown = b.submit(json!({"kind": "resize", "payload": {"width": 10}})).await;
    assert_problem(unknown, 422, "/problems/unknown-kind").await;
}

#[tokio::test]
async fn a_worker_process_learns_a_declared_kind_and_runs_it_through_its_endpoint() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let _worker = app.worker(&["--concurrency", "2"]);
    // Once it has run a task, the worker is up and has read the declarations of its start.
    let echo = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    assert_eq!(app.wait_until_done(&echo).await["status"], "succeeded");
    let mut declaration = resize();
    declaration["max_attempts"] = 1.into();
    declaration["queue"] = "default".into();
    assert_eq!(put_kind(&app, "resize", declaration).await.status(), 201);
    // The worker asks for the version every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = app.submit_ok(json!({"kind": "resize", "payload": {"width": 10}})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "failed", "nothing listens at the endpoint: {view}");
    let letters = app.get_json("/api/v1/dead-letters").await;
    let letter = letters["dead_letters"].as_array().unwrap().iter().find(|l| l["task"]["id"] == id.as_str());
    let reason = letter.expect("the task is a dead letter")["reason"].as_str().unwrap().to_string();
    assert_ne!(reason, "unknown_kind", "the worker knew the kind: it called the endpoint");
}

#[tokio::test]
async fn kinds_in_courier_toml_are_declared_at_start_with_a_schema_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("courier.toml");
    std::fs::write(
        dir.path().join("resize.schema.json"),
        r#"{"type": "object", "required": ["width"], "properties": {"width": {"type": "integer"}}}"#,
    )
    .unwrap();
    std::fs::write(
        &path,
        "[[kinds]]\nname = \"resize\"\ndescription = \"Resizes an image.\"\nschema_file = \"resize.schema.json\"\nexample = { width = 640 }\n",
    )
    .unwrap();
    let app = spawn_app_with(|c| {
        c.config = Some(path.clone());
        c.concurrency = 0;
    })
    .await;
    let kinds = app.get_json("/api/v1/kinds").await;
    let resize = kinds.as_array().unwrap().iter().find(|k| k["name"] == "resize").expect("resize is listed");
    assert_eq!(resize["declared"], true);
    assert_eq!(resize["schema"]["required"], json!(["width"]));
    let refused = app.submit(json!({"kind": "resize", "payload": {"width": "wide"}})).await;
    assert_problem(refused, 422, "/problems/invalid-payload").await;

    // A declaration that cannot be stops the start, naming the kind and the field.
    std::fs::write(
        &path,
        "[[kinds]]\nname = \"resize\"\nschema_file = \"resize.schema.json\"\nexample = 1\n",
    )
    .unwrap();
    let mut config = courier::config::Config::defaults();
    config.redis_url = Some(app.redis_url.parse().unwrap());
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.prefix = unique_prefix();
    config.config = Some(path.clone());
    let error = courier::Server::build(config, courier::config::Command::Serve).await.err().expect("refused");
    let error = format!("{error:#}");
    assert!(error.contains("kind `resize`") && error.contains("`example`"), "{error}");
}
