//! Traces: the W3C trace context a task keeps from its submission (`traceparent`), continued by
//! its attempts and pulled leases; JSON log lines that carry an attempt's `task_id` and
//! `trace_id`; one access log line per request with its `x-request-id`; spans exported over
//! OTLP/HTTP to a real receiver. The log and export tests run a real `courier serve` process.

use crate::{otlp::OtlpReceiver, support::*};
use serde_json::{Value, json};
use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The trace the tests' submissions say they are part of (the W3C example).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The submitter's span in it.
const SUBMITTER: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{SUBMITTER}-01")
}

/// The trace id and span id of a `traceparent` value, checking its shape.
fn ids_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"), "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

fn is_trace_id(id: &Value) -> bool {
    id.as_str()
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
}

/// The queue the tests' tasks go to.
fn queue() -> String {
    test_queue().unwrap_or_else(|| "default".into())
}

#[tokio::test]
async fn a_traceparent_given_on_submit_is_kept_with_the_task_and_continued_by_its_pulled_lease() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let submitted = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("traceparent", traceparent())
        .json(&in_test_queue(json!({"kind": "echo", "payload": {"n": 1}})))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let view: Value = submitted.json().await.unwrap();
    assert_eq!(view["trace_id"], TRACE, "{view}");
    let id = view["id"].as_str().unwrap();
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{id}")).await["trace_id"], TRACE);

    let url = app.url(&format!("/api/v1/queues/{}/leases", queue()));
    let leased: Value =
        app.http.post(url).json(&json!({"worker": "w"})).send().await.unwrap().json().await.unwrap();
    let grant = &leased["leases"][0];
    assert_eq!(grant["task"]["id"], id);
    assert_eq!(grant["task"]["trace_id"], TRACE);
    let (trace, span) = ids_of(grant["traceparent"].as_str().expect("a grant carries a traceparent"));
    assert_eq!(trace, TRACE, "the worker continues the task's trace");
    assert_ne!(span, SUBMITTER, "in a span of the lease's own");

    // A batch's tasks share their request's trace.
    let batch = app
        .http
        .post(app.url("/api/v1/tasks/batch"))
        .header("traceparent", traceparent())
        .json(&json!({"tasks": [in_test_queue(json!({"kind": "echo", "payload": 1})), in_test_queue(json!({"kind": "echo", "payload": 2}))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 202);
    let accepted: Value = batch.json().await.unwrap();
    let tasks = accepted["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t["trace_id"] == TRACE), "{accepted}");
}

#[tokio::test]
async fn a_submission_without_a_valid_traceparent_starts_a_trace_of_its_own() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut seen = Vec::new();
    for header in
        [None, Some("00-not-a-trace-01"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")]
    {
        let mut request = app
            .http
            .post(app.url("/api/v1/tasks"))
            .json(&in_test_queue(json!({"kind": "echo", "payload": 0})));
        if let Some(header) = header {
            request = request.header("traceparent", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202, "a bad traceparent never fails a submission: {header:?}");
        let view: Value = response.json().await.unwrap();
        assert!(is_trace_id(&view["trace_id"]), "{header:?}: {view}");
        assert!(!seen.contains(&view["trace_id"]), "each submission is a trace of its own");
        seen.push(view["trace_id"].clone());
    }
}

/// A `courier serve` process writing log lines (JSON unless a test asks for text), which are
/// collected.
struct Courier {
    base: String,
    http: reqwest::Client,
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Courier {
    /// Starts `courier serve --log-format json` with `RUST_LOG` and `args` on `redis`, and waits
    /// until it is ready.
    async fn start(redis: &TestRedis, rust_log: &str, args: &[&str]) -> Courier {
        Courier::start_as(redis, "json", rust_log, args).await
    }

    /// [`Courier::start`] with its log lines in `format` (`--log-format`).
    async fn start_as(redis: &TestRedis, format: &str, rust_log: &str, args: &[&str]) -> Courier {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--redis-url", &redis.redis.url()])
            .args(["--prefix", &unique_prefix(), "--log-format", format, "--concurrency", "2"])
            .args(["--retry-base", "50ms"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("courier serve starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let courier = Courier {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            child,
            lines,
        };
        for _ in 0..200 {
            let ready = courier.http.get(courier.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return courier;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("courier serve did not become ready");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every line logged so far, as written.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line logged so far, each of which must be a JSON object.
    fn log(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(value) if value.is_object() => value,
                _ => panic!("a log line that is not a JSON object: {line}"),
            })
            .collect()
    }

    /// Waits up to 5 s until `found` finds what it looks for in what is logged.
    async fn until_logged<T>(&self, found: impl Fn(&Courier) -> Option<T>) -> Option<T> {
        for _ in 0..100 {
            if let Some(found) = found(self) {
                return Some(found);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits up to 5 s until a line that `wanted` picks is logged.
    async fn wait_for_line(&self, wanted: impl Fn(&Value) -> bool) {
        let logged = self.until_logged(|courier| courier.log().iter().any(&wanted).then_some(())).await;
        assert!(logged.is_some(), "the line looked for was not logged: {:#?}", self.log());
    }

    /// The access log lines of request `id`.
    fn access_lines(&self, id: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|l| l["target"] == "courier::http::access" && l["request_id"] == id)
            .collect()
    }

    /// Submits `body` with `traceparent`: the task's id.
    async fn submit(&self, body: Value) -> String {
        let response = self
            .http
            .post(self.url("/api/v1/tasks"))
            .header("traceparent", traceparent())
            .json(&in_test_queue(body))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    /// Waits until task `id` has ended: its view.
    async fn wait_until_done(&self, id: &str) -> Value {
        for _ in 0..300 {
            let view: Value = self
                .http
                .get(self.url(&format!("/api/v1/tasks/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or_default()) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not end");
    }

    /// SIGTERM, and the process's exit.
    async fn stop(mut self) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("courier stops within 20 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// Text log lines written anywhere but a terminal (here a pipe) are plain: no colour codes for a
/// file or a log collector to carry, and an attempt's line names its task as `task_id=…`.
#[tokio::test]
async fn text_log_lines_off_a_terminal_carry_no_colour_codes() {
    let redis = TestRedis::start().await;
    let courier = Courier::start_as(&redis, "text", "info", &[]).await;
    // Its first attempt fails (a line logged inside the attempt), its second succeeds.
    let id = courier.submit(json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 3})).await;
    courier.wait_until_done(&id).await;
    let failed = "attempt failed; will retry";
    let line =
        courier.until_logged(|courier| courier.lines().into_iter().find(|line| line.contains(failed))).await;
    let line = line.unwrap_or_else(|| panic!("no line says {failed:?}: {:#?}", courier.lines()));
    assert!(line.contains(&format!("task_id={id}")), "{line:?}");
    for line in courier.lines() {
        assert!(!line.contains('\u{1b}'), "a colour code: {line:?}");
    }
}

#[tokio::test]
async fn json_log_lines_of_an_attempt_carry_its_task_and_trace_and_each_request_is_logged_once() {
    let redis = TestRedis::start().await;
    let courier = Courier::start(&redis, "info", &[]).await;

    // Its first attempt fails (a line logged inside the attempt), its second succeeds.
    let id = courier.submit(json!({"kind": "flaky", "payload": {"fail_times": 1}, "max_attempts": 3})).await;
    let view = courier.wait_until_done(&id).await;
    assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some("succeeded"), Some(2)), "{view}");
    courier
        .wait_for_line(|l| {
            l["task_id"] == id.as_str()
                && l["message"] == "attempt failed; will retry"
                && l["task.attempt"] == 1
        })
        .await;
    let attempt_lines: Vec<Value> =
        courier.log().into_iter().filter(|l| l["task_id"] == id.as_str()).collect();
    for line in &attempt_lines {
        assert_eq!(line["trace_id"], TRACE, "{line}");
        assert_eq!(line["span"], "attempt", "{line}");
        assert_eq!(line["task.kind"], "flaky", "{line}");
    }

    // A request id given is kept, echoed and logged once, with the route's template.
    let given = "test-request-0001";
    let response = courier
        .http
        .get(courier.url(&format!("/api/v1/tasks/{id}")))
        .header("x-request-id", given)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], given);
    // An odd one is replaced by a new one (a UUIDv7), echoed and logged the same way.
    let response = courier
        .http
        .post(courier.url("/api/v1/tasks"))
        .header("x-request-id", "has spaces and \"quotes\"")
        .header("traceparent", traceparent())
        .json(&in_test_queue(json!({"kind": "echo", "payload": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let made = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.parse::<uuid::Uuid>().map(|u| u.get_version_num()), Ok(7), "{made}");
    // A stream is logged once too: when its answer's head is ready, not again when it ends.
    let stream = courier
        .http
        .get(courier.url(&format!("/api/v1/tasks/{id}/events")))
        .header("x-request-id", "test-stream-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let _ = stream.text().await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = courier.access_lines(given);
    assert_eq!(read.len(), 1, "{read:#?}");
    let read = &read[0];
    assert_eq!(read["level"], "INFO");
    assert_eq!(read["http.method"], "GET");
    assert_eq!(read["http.route"], "/api/v1/tasks/{id}", "the template, never the task's id");
    assert_eq!(read["http.status"], 200);
    assert!(read["duration_ms"].is_u64(), "{read}");
    assert!(is_trace_id(&read["trace_id"]), "{read}");
    let submitted = courier.access_lines(&made);
    assert_eq!(submitted.len(), 1, "{submitted:#?}");
    assert_eq!(
        (&submitted[0]["http.method"], &submitted[0]["http.route"], &submitted[0]["http.status"]),
        (&json!("POST"), &json!("/api/v1/tasks"), &json!(202))
    );
    assert_eq!(submitted[0]["trace_id"], TRACE, "a request continues its traceparent");
    let streamed = courier.access_lines("test-stream-0001");
    assert_eq!(streamed.len(), 1, "{streamed:#?}");
    assert_eq!(streamed[0]["http.route"], "/api/v1/tasks/{id}/events");
    courier.stop().await;
}

#[tokio::test]
async fn spans_are_exported_over_otlp_in_the_trace_given_on_submit() {
    let redis = TestRedis::start().await;
    let receiver = OtlpReceiver::start().await;
    // The log quiet: export does not depend on it.
    let courier = Courier::start(&redis, "warn", &["--otlp-endpoint", &receiver.endpoint]).await;
    let declared = courier
        .http
        .put(courier.url("/api/v1/kinds/reports.pulled"))
        .json(&json!({"description": "Run by a pulling worker.", "queue": queue()}))
        .send()
        .await
        .unwrap();
    assert!(declared.status().is_success(), "{}", declared.status());

    // One task run here, one leased by a pulling worker.
    let ran = courier.submit(json!({"kind": "echo", "payload": {"n": 1}})).await;
    assert_eq!(courier.wait_until_done(&ran).await["status"], "succeeded");
    let pulled = courier.submit(json!({"kind": "reports.pulled", "payload": {"n": 2}})).await;
    let url = courier.url(&format!("/api/v1/queues/{}/leases", queue()));
    let leased: Value = courier
        .http
        .post(url)
        .json(&json!({"worker": "w", "kinds": ["reports.pulled"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grant = &leased["leases"][0];
    assert_eq!(grant["task"]["id"], pulled.as_str(), "{leased}");
    let (trace, lease_span) = ids_of(grant["traceparent"].as_str().unwrap());
    assert_eq!(trace, TRACE);
    // Spans go in batches; a stopping process sends what it holds.
    courier.stop().await;

    let limit = Duration::from_secs(5);
    let submit = receiver.wait_for(TRACE, "POST /api/v1/tasks", limit).await;
    assert_eq!(submit.parent_span_id, SUBMITTER, "the request continues the submitter's span");
    assert_eq!(submit.service, "courier");
    let attempt = receiver.wait_for(TRACE, "attempt", limit).await;
    assert_eq!(attempt.attributes.get("task_id").map(String::as_str), Some(ran.as_str()));
    let submits: Vec<_> =
        receiver.trace(TRACE).into_iter().filter(|s| s.name == "POST /api/v1/tasks").collect();
    assert_eq!(submits.len(), 2, "{submits:#?}");
    assert!(
        submits.iter().any(|s| s.span_id == attempt.parent_span_id),
        "the attempt is a child of its task's submission: {attempt:#?} {submits:#?}"
    );
    let lease = receiver.wait_for(TRACE, "lease", limit).await;
    assert_eq!(lease.span_id, lease_span, "the grant's traceparent names the exported lease span");
    assert_eq!(lease.attributes.get("task_id").map(String::as_str), Some(pulled.as_str()));
    assert!(submits.iter().any(|s| s.span_id == lease.parent_span_id), "{lease:#?} {submits:#?}");
}

#[tokio::test]
async fn a_collector_out_of_reach_is_reported_and_does_not_hold_up_a_stopping_process() {
    let redis = TestRedis::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let courier = Courier::start(&redis, "info", &["--otlp-endpoint", &format!("http://{closed}")]).await;
    let id = courier.submit(json!({"kind": "echo", "payload": 1})).await;
    assert_eq!(courier.wait_until_done(&id).await["status"], "succeeded", "tasks run all the same");
    let lines = courier.lines.clone();
    let stopping = std::time::Instant::now();
    courier.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "{:?}", stopping.elapsed());
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("opentelemetry")
            && l.contains("ExportError")),
        "the failed export is logged: {lines:#?}"
    );
}
