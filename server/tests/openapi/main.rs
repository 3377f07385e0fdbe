//! The API's own description against the real server: the OpenAPI document and the reference
//! page are served without a token, and schemathesis (PyPI; `scripts/setup.sh` puts it in
//! `.venv`) runs every one of its checks against a real server with access control on: no `5xx`,
//! every answer as the document says, every error a problem. What it found once stays found by
//! the focused tests below it.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use courier::auth::{AuthMode, Scope};
use serde_json::{Value, json};
use std::{path::PathBuf, process::Stdio, time::Duration};
use support::*;

/// A server with access control on, as schemathesis meets it.
async fn guarded_app() -> TestApp {
    spawn_app_with(|config| config.auth = AuthMode::Required).await
}

#[tokio::test]
async fn the_document_and_the_reference_page_are_served_without_a_token() {
    let app = guarded_app().await;
    let response = app.http.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "Courier");
    let submit = &document["paths"]["/api/v1/tasks"]["post"];
    assert_eq!(
        submit["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TaskView"
    );
    assert_eq!(
        submit["responses"]["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert!(document["components"]["securitySchemes"]["bearer"].is_object(), "{document}");

    let page = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("POST</span> <code>/api/v1/tasks</code>"), "{html}");
    assert!(html.contains("id=\"schema-taskview\""));
    // The rest of the API still wants a token.
    let tasks = app.http.get(app.url("/api/v1/tasks")).send().await.unwrap();
    assert_problem(tasks, 401, "/problems/unauthorized").await;
}

/// Where scripts/setup.sh installs schemathesis.
fn schemathesis() -> PathBuf {
    let st = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/st"));
    assert!(st.exists(), "{} is missing: run scripts/setup.sh (it installs schemathesis)", st.display());
    st
}

/// Examples per operation: enough to find what it found, few enough for a run of about a
/// minute. `COURIER_SCHEMATHESIS_EXAMPLES` and `COURIER_SCHEMATHESIS_SEED` change them (a fixed
/// seed by default, so that a run is repeated exactly).
const EXAMPLES: &str = "25";
const SEED: &str = "1";

#[tokio::test]
async fn schemathesis_finds_the_server_true_to_its_document() {
    let app = guarded_app().await;
    let token = app.make_token("schemathesis", &Scope::ALL, &["*"], None).await;
    let here = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi"));
    let work = tempfile::tempdir().unwrap();
    let examples = std::env::var("COURIER_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let seed = std::env::var("COURIER_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let run = tokio::process::Command::new(schemathesis())
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .arg("run")
        .arg(app.url("/api/v1/openapi.json"))
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed])
        .args(["--request-timeout", "30", "--no-color", "--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        // Its reports and caches go to a directory of its own, not the repository.
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &here)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("COURIER_FUZZ_TOKEN_NAME", "schemathesis")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis ends within five minutes")
        .expect("schemathesis starts");
    let report =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found the server untrue to its document:\n{report}");
    // A run that tested nothing would pass too.
    assert!(report.contains("passed"), "{report}");
}

// What schemathesis found, each kept found.

#[tokio::test]
async fn the_audit_trail_before_its_first_possible_entry_is_empty_rather_than_a_server_error() {
    let app = spawn_app().await;
    app.http.post(app.url("/api/v1/queues/default/pause")).send().await.unwrap();
    let page = app.get_json("/api/v1/audit?before=0-0").await;
    assert_eq!(page, json!({"entries": []}));
    let all = app.get_json("/api/v1/audit").await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 1, "{all}");
}

#[tokio::test]
async fn a_json_array_is_not_taken_for_an_object_of_its_fields() {
    let app = spawn_app().await;
    // serde reads a struct from the array of its fields, in order; the document says object.
    let submit = app.submit(json!(["echo", {"a": 1}])).await;
    let problem = assert_problem(submit, 422, "/problems/invalid-request").await;
    assert!(problem["detail"].as_str().unwrap().contains("not an array"), "{problem}");
    let limits =
        app.http.put(app.url("/api/v1/queues/default")).json(&json!([null, null])).send().await.unwrap();
    assert_problem(limits, 422, "/problems/invalid-limits").await;
    let lease =
        app.http.post(app.url("/api/v1/queues/default/leases")).json(&json!(["w"])).send().await.unwrap();
    assert_problem(lease, 422, "/problems/invalid-lease-request").await;
}

#[tokio::test]
async fn an_integer_may_be_written_as_a_whole_float_as_json_schema_allows() {
    let app = spawn_app().await;
    let limits = json!({"max_depth": 5.0, "concurrency": 2e0, "rate": {"limit": 3.0, "period_ms": 1000.0}});
    let response = app.http.put(app.url("/api/v1/queues/default")).json(&limits).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let queue: Value = response.json().await.unwrap();
    assert_eq!(
        queue["limits"],
        json!({"max_depth": 5, "concurrency": 2, "rate": {"limit": 3, "period_ms": 1000}})
    );
    let id = app.submit_ok(json!({"kind": "echo", "payload": 1, "max_attempts": 3.0, "delay_ms": 0.0})).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["max_attempts"], 3);
    for fraction in
        [json!({"max_depth": 1.5}), json!({"concurrency": -1}), json!({"concurrency": 4294967296_u64})]
    {
        let response = app.http.put(app.url("/api/v1/queues/default")).json(&fraction).send().await.unwrap();
        assert_problem(response, 422, "/problems/invalid-limits").await;
    }
}

#[tokio::test]
async fn a_heartbeat_whose_body_is_null_reports_nothing_and_renews_the_lease() {
    let app = spawn_app_with(|config| config.concurrency = 0).await;
    app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let queue = test_queue().unwrap_or_else(|| "default".into());
    let leases: Value = app
        .http
        .post(app.url(&format!("/api/v1/queues/{queue}/leases")))
        .json(&json!({"worker": "w", "wait_ms": 5000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = leases["leases"][0]["token"].as_str().expect("a lease").to_string();
    let beat = app
        .http
        .post(app.url(&format!("/api/v1/leases/{token}/heartbeat")))
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 200);
    let reply: Value = beat.json().await.unwrap();
    assert_eq!(reply["cancel_requested"], false);
}

#[tokio::test]
async fn a_method_a_route_does_not_serve_is_a_405_with_allow_with_access_control_on_too() {
    let app = guarded_app().await;
    let token = app.make_token("admin", &Scope::ALL, &["*"], None).await;
    for (method, path, allow) in [
        (reqwest::Method::PATCH, "/api/v1/tasks", "GET,HEAD,POST"),
        (
            reqwest::Method::PUT,
            "/api/v1/tasks/0196a0e4-0000-7000-8000-000000000000/status",
            "GET,HEAD,DELETE",
        ),
    ] {
        for bearer in [None, Some(&token)] {
            let mut request = app.http.request(method.clone(), app.url(path));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["allow"], allow, "{method} {path}");
            assert_problem(response, 405, "/problems/method-not-allowed").await;
        }
    }
}

#[tokio::test]
async fn a_result_link_missing_its_signature_is_refused_rather_than_ignored() {
    let app = guarded_app().await;
    let token = app.make_token("reader", &Scope::ALL, &["*"], None).await;
    let id = {
        let body = in_test_queue(json!({"kind": "echo", "payload": 1}));
        let response =
            app.http.post(app.url("/api/v1/tasks")).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    };
    for query in ["expires=null", "kid=k1", "expires=1&kid=k1"] {
        let url = app.url(&format!("/api/v1/tasks/{id}/payload?{query}"));
        let response = app.http.get(url).bearer_auth(&token).send().await.unwrap();
        assert_problem(response, 403, "/problems/invalid-link").await;
    }
    let plain = app
        .http
        .get(app.url(&format!("/api/v1/tasks/{id}/payload")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
}

#[tokio::test]
async fn well_formed_json_of_the_wrong_shape_is_a_422_even_where_serde_calls_it_syntax() {
    let app = spawn_app().await;
    // An enum given as a map of two keys: serde_json reports "expected value", a syntax error.
    let subscription = json!({"kind": "echo", "filter": {"region": {"exists": true, "equals": "eu"}}});
    let response = app
        .http
        .put(app.url("/api/v1/topics/orders/subscriptions/audit"))
        .json(&subscription)
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "/problems/invalid-request").await;
    let broken = app
        .http
        .put(app.url("/api/v1/topics/orders/subscriptions/audit"))
        .header("content-type", "application/json")
        .body(r#"{"kind": "echo", "filter": {"#)
        .send()
        .await
        .unwrap();
    assert_problem(broken, 400, "/problems/bad-request").await;
}
