//! `examples/python/endpoint.py`, the push endpoint the README offers, as a real process behind a
//! declared kind: it accepts Courier's signed requests and refuses forged ones.

use crate::endpoint::{OTHER_SECRET, SECRET};
use crate::support::*;
use serde_json::{Value, json};
use std::{path::Path, process::Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts the example endpoint with `SECRET`; returns it and its URL.
async fn example_endpoint() -> (tokio::process::Child, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/endpoint.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--port", "0", "--secret", SECRET])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs endpoint.py");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .expect("endpoint.py says where it listens")
        .unwrap()
        .unwrap();
    let url = first.strip_prefix("listening on ").expect("its first line names its URL").trim().to_string();
    (child, url)
}

#[tokio::test]
async fn the_example_endpoint_runs_courier_s_signed_tasks_and_refuses_forged_requests() {
    let app = spawn_app().await;
    let (_endpoint, url) = example_endpoint().await;
    let declaration = json!({
        "description": "Upper-cases a text, at the example endpoint.",
        "endpoint": {"url": url.clone(), "secret": SECRET},
    });
    let declared = app.http.put(app.url("/api/v1/kinds/shout")).json(&declaration).send().await.unwrap();
    assert_eq!(declared.status(), 201);
    let id = app.submit_ok(json!({"kind": "shout", "payload": {"text": "hello"}})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.json::<Value>().await.unwrap(), json!({"text": "HELLO"}));

    // The same endpoint, declared with another secret: every request is refused (401), a
    // failure no retry can fix.
    let declaration = json!({
        "description": "Signed with the wrong secret.",
        "endpoint": {"url": url, "secret": OTHER_SECRET},
    });
    let declared = app.http.put(app.url("/api/v1/kinds/forged")).json(&declaration).send().await.unwrap();
    assert_eq!(declared.status(), 201);
    let id = app.submit_ok(json!({"kind": "forged", "payload": {"text": "hello"}, "max_attempts": 3})).await;
    let view = app.wait_until_done(&id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 1, "a 401 is not retried");
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("401"), "{error}");
}
