//! A binary of the user's own with a kind of its own (`examples/custom_kind.rs`), run as a real
//! process: its kind is listed, validated by its schema, and run by its workers. The example is
//! built by `cargo test` (as every example is), beside this test's binary.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use serde_json::json;
use std::{path::PathBuf, time::Duration};
use support::*;

/// Where `cargo test` put the example: `target/<profile>/examples/`, beside `deps/`.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
    let binary = profile_dir.join("examples").join("custom_kind");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        binary.display()
    );
    binary
}

#[tokio::test]
async fn a_binary_of_your_own_runs_its_own_kind_beside_the_built_in_ones() {
    let redis = TestRedis::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = tokio::process::Command::new(example_binary())
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--redis-url", &redis.redis.url()])
        .args(["--prefix", &unique_prefix(), "--concurrency", "2"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the example starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the example's server did not become ready");
    let kinds: serde_json::Value =
        http.get(format!("{base}/api/v1/kinds")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = kinds.as_array().unwrap().iter().filter_map(|k| k["name"].as_str()).collect();
    assert!(names.contains(&"reverse") && names.contains(&"echo"), "{names:?}");
    // Its schema is enforced like a built-in kind's.
    let refused = http
        .post(format!("{base}/api/v1/tasks"))
        .json(&json!({"kind": "reverse", "payload": {"text": 7}}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 422, "/problems/invalid-payload").await;
    // And its workers run it: wait for the result.
    let answer = http
        .post(format!("{base}/api/v1/tasks"))
        .header("prefer", "wait=20")
        .json(&json!({"kind": "reverse", "payload": {"text": "stressed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<serde_json::Value>().await.unwrap(), json!({"reversed": "desserts"}));
}
