//! Workers in another language, for real: `examples/python/worker.py` (Python's standard library
//! alone) run as separate processes against the real server, pulling over HTTP.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use serde_json::{Value, json};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use support::*;

/// A `worker.py` process, its log (stderr) in a file; killed when dropped.
struct PyWorker {
    child: tokio::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PyWorker {
    /// Starts `worker.py` against `app`'s test queue with `args` added.
    fn start(app: &TestApp, args: &[&str]) -> PyWorker {
        PyWorker::start_as(app, args, None)
    }

    /// [`PyWorker::start`] with `COURIER_TOKEN` set to `token`.
    fn start_as(app: &TestApp, args: &[&str], token: Option<&str>) -> PyWorker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/worker.py");
        let queue = test_queue().unwrap_or_else(|| "default".into());
        let child = tokio::process::Command::new("python3")
            .arg(script)
            .args(["--url", &app.base, "--queue", &queue, "--wait-ms", "2000"])
            .args(args)
            .envs(token.map(|t| ("COURIER_TOKEN", t)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs worker.py");
        PyWorker { child, log, _dir: dir }
    }

    /// The log's lines of `event`, each as its key=value fields.
    fn events(&self, event: &str) -> Vec<HashMap<String, String>> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(event))
            .map(|line| {
                line.split_whitespace()
                    .skip(2)
                    .filter_map(|field| field.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                    .collect()
            })
            .collect()
    }

    /// The ids of the tasks the log says `event` of.
    fn tasks(&self, event: &str) -> Vec<String> {
        self.events(event).into_iter().filter_map(|mut fields| fields.remove("task")).collect()
    }

    /// Waits until the log says `event` of task `id`.
    async fn until(&self, event: &str, id: &str) {
        let started = Instant::now();
        while !self.tasks(event).iter().any(|t| t == id) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no `{event}` of {id} in {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status once it stops by itself (within 20 s).
    async fn terminate_or_wait(mut self) -> (std::process::ExitStatus, PyWorker) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the worker stops by itself")
            .unwrap();
        (status, self)
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> (std::process::ExitStatus, PyWorker) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.unwrap().unwrap();
        (status, self)
    }
}

/// Waits until task `id` has ended, and returns its view.
async fn ended(app: &TestApp, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        if ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or_default()) {
            return view;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{id} has not ended: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An app with no built-in workers: only the Python workers run tasks.
async fn app() -> TestApp {
    spawn_app_with(|c| c.concurrency = 0).await
}

#[tokio::test]
async fn two_python_workers_share_200_tasks_and_each_task_succeeds_exactly_once() {
    let app = app().await;
    let ids: Vec<String> = futures::future::join_all(
        (0..200).map(|_| app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 50}}))),
    )
    .await;
    let workers = [
        PyWorker::start(&app, &["--function", "sleep", "--concurrency", "8"]),
        PyWorker::start(&app, &["--function", "sleep", "--concurrency", "8"]),
    ];
    for id in &ids {
        let view = ended(&app, id).await;
        assert_eq!(
            (view["status"].as_str(), view["attempts"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{view}"
        );
        let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
        assert_eq!(result.json::<Value>().await.unwrap(), json!({"slept_ms": 50}));
    }
    let mut succeeded = Vec::new();
    for worker in workers {
        let (status, worker) = worker.terminate().await;
        assert!(status.success(), "a stopped worker exits 0: {}", worker.log_text());
        let done = worker.tasks("succeeded");
        assert!(!done.is_empty(), "both workers take part: {}", worker.log_text());
        succeeded.extend(done);
    }
    succeeded.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(succeeded, expected, "every task succeeded once, on one worker");
}

#[tokio::test]
async fn a_task_whose_worker_is_killed_completes_on_another_after_its_lease() {
    let app = app().await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 3000}, "max_attempts": 3})).await;
    let mut doomed = PyWorker::start(&app, &["--function", "sleep", "--lease-ms", "1500", "--log-tokens"]);
    doomed.until("leased", &id).await;
    let token = doomed.events("leased").remove(0).remove("token").expect("--log-tokens logs the token");
    doomed.child.kill().await.unwrap();
    let survivor = PyWorker::start(&app, &["--function", "sleep", "--lease-ms", "1500"]);
    let view = ended(&app, &id).await;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["attempts"], 2, "the killed worker's attempt counts");
    // (The worker logs its success once its complete is answered: a moment after the record.)
    survivor.until("succeeded", &id).await;
    assert_eq!(survivor.tasks("succeeded"), vec![id.clone()]);
    assert!(doomed.tasks("succeeded").is_empty());

    // The dead worker's word, arriving late, changes nothing.
    let late = app
        .http
        .post(app.url(&format!("/api/v1/leases/{token}/complete")))
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await, view, "the record is unchanged");
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.json::<Value>().await.unwrap(), json!({"slept_ms": 3000}));
}

#[tokio::test]
async fn a_ten_second_task_on_a_three_second_lease_kept_by_heartbeats_is_never_taken_over() {
    let app = app().await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 10000}, "max_attempts": 3})).await;
    let runner = PyWorker::start(&app, &["--function", "sleep", "--lease-ms", "3000"]);
    runner.until("leased", &id).await;
    // The registry shows the Python worker as it describes itself, running the task; its
    // heartbeats keep it there while it asks for nothing else.
    let pid = u64::from(runner.child.id().unwrap());
    for _ in 0..5 {
        let workers = app.get_json("/api/v1/workers").await;
        let mine = workers["workers"].as_array().unwrap().iter().find(|w| w["pid"] == pid).cloned();
        let mine = mine.unwrap_or_else(|| panic!("no worker with pid {pid}: {workers:#}"));
        assert_eq!((mine["runs"].as_str(), mine["version"].as_str()), (Some("pull"), Some("python-example")));
        assert_eq!(mine["running"][0]["task_id"], id.as_str(), "{mine}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // Another worker asks all along: it would take the task over the moment a lease ran out.
    let rival = PyWorker::start(&app, &["--function", "sleep", "--lease-ms", "3000"]);
    let view = ended(&app, &id).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("succeeded"), Some(1)), "{view}");
    assert!(rival.tasks("leased").is_empty(), "the rival never got it: {}", rival.log_text());
}

#[tokio::test]
async fn a_cancelled_task_is_seen_at_the_next_heartbeat_and_its_worker_lets_it_go() {
    let app = app().await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 20000}})).await;
    let worker = PyWorker::start(&app, &["--function", "sleep"]);
    worker.until("leased", &id).await;
    let cancel = app.http.delete(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert!(cancel.status().is_success());
    worker.until("released", &id).await;
    let view = ended(&app, &id).await;
    assert_eq!(view["status"], "cancelled");
    assert!(worker.tasks("succeeded").is_empty());
}

#[tokio::test]
async fn sigterm_hands_running_tasks_back_without_counting_their_attempt() {
    let app = app().await;
    let id = app.submit_ok(json!({"kind": "sleep", "payload": {"ms": 20000}})).await;
    let worker = PyWorker::start(&app, &["--function", "sleep"]);
    worker.until("leased", &id).await;
    let (status, worker) = worker.terminate().await;
    assert!(status.success(), "{}", worker.log_text());
    let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("queued"), Some(0)), "{view}");
}

#[tokio::test]
async fn tasks_of_a_kind_nobody_runs_wait_and_run_once_a_worker_for_it_comes() {
    // Built-in workers run beside: they must leave the declared kind's tasks alone.
    let app = spawn_app_with(|c| c.concurrency = 4).await;
    let declared = app
        .http
        .put(app.url("/api/v1/kinds/shout"))
        .json(&json!({"description": "Upper-cases a text.", "queue": test_queue().unwrap_or_else(|| "default".into())}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);
    let ids: Vec<String> = futures::future::join_all(
        ["a", "b", "c"].map(|text| app.submit_ok(json!({"kind": "shout", "payload": {"text": text}}))),
    )
    .await;
    // A built-in task submitted after them runs at once: the waiting kind holds back nothing.
    let echo = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    assert_eq!(ended(&app, &echo).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        let view = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("queued"), Some(0)), "{view}");
    }
    let dead = app.get_json("/api/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"].as_array().map(Vec::len), Some(0), "none dead-lettered: {dead}");

    let _worker = PyWorker::start(&app, &["--kinds", "shout", "--function", "upper"]);
    for (id, text) in ids.iter().zip(["A", "B", "C"]) {
        assert_eq!(ended(&app, id).await["status"], "succeeded");
        let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
        assert_eq!(result.json::<Value>().await.unwrap(), json!({"text": text}));
    }
}

#[tokio::test]
async fn with_access_control_on_a_python_worker_pulls_with_a_work_token_and_stops_without_one() {
    let app = app().await;
    let tokens = courier::auth::Tokens::new(app.redis().await, &app.prefix, courier::auth::AuthMode::Auto);
    let mint = |name: &str, scopes: Vec<courier::auth::Scope>| {
        let request = courier::auth::TokenRequest {
            name: name.into(),
            scopes,
            queues: vec!["*".into()],
            expires: None,
        };
        let tokens = tokens.clone();
        async move { tokens.create(request).await.unwrap().token }
    };
    use courier::auth::Scope::{Read, Submit, Work};
    let client = mint("client", vec![Submit, Read]).await;
    let worker = mint("worker", vec![Work, Read]).await;
    // The server reads the tokens twice a second: wait until it asks for one.
    let started = Instant::now();
    while app.http.get(app.url("/api/v1/queues")).send().await.unwrap().status() != 401 {
        assert!(started.elapsed() < Duration::from_secs(5), "access control never came on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let submitted = app
        .http
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(&client)
        .json(&in_test_queue(json!({"kind": "sleep", "payload": {"ms": 10}})))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let id = submitted.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // A token without `work` is refused, and the worker stops rather than retrying for ever.
    let refused = PyWorker::start_as(&app, &["--function", "sleep"], Some(&client));
    let (status, refused) = refused.terminate_or_wait().await;
    assert!(!status.success(), "{}", refused.log_text());
    assert!(refused.log_text().contains("403"), "{}", refused.log_text());
    let working = PyWorker::start_as(&app, &["--function", "sleep"], Some(&worker));
    working.until("succeeded", &id).await;
    let view: Value = app
        .http
        .get(app.url(&format!("/api/v1/tasks/{id}")))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "succeeded");
}
