//! The test endpoint (`endpoint.py`) as a separate process, its request log, and the Standard
//! Webhooks reference library to check what it received.

use serde_json::Value;
use std::{path::PathBuf, process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The secret the tests' endpoints sign with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another valid secret, which must not verify what [`SECRET`] signed.
pub const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";

/// A running `endpoint.py`, killed when dropped.
pub struct TestEndpoint {
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl TestEndpoint {
    pub async fn start() -> TestEndpoint {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = dir.path().join("requests.jsonl");
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/push/endpoint.py"))
            .arg(&log)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts endpoint.py (is python3 installed?)");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut first = String::new();
        tokio::time::timeout(Duration::from_secs(10), BufReader::new(stdout).read_line(&mut first))
            .await
            .expect("endpoint.py says its port within 10 s")
            .expect("endpoint.py's output is readable");
        let port: u16 = first.trim().parse().expect("endpoint.py's first line is its port");
        TestEndpoint { url: format!("http://127.0.0.1:{port}/hook"), log, _dir: dir, _child: child }
    }

    /// Every entry logged so far, oldest first.
    pub fn entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).expect("each log line is JSON")).collect()
    }

    /// The requests logged so far for task `task`, oldest first.
    pub fn requests_for(&self, task: &str) -> Vec<Value> {
        self.entries().into_iter().filter(|e| e["event"] == "request" && e["task"] == task).collect()
    }

    /// Waits until an entry with `event` for task `task` is logged, and returns it.
    pub async fn wait_for(&self, event: &str, task: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(entry) = self.entries().into_iter().find(|e| e["event"] == event && e["task"] == task)
            {
                return entry;
            }
            assert!(tokio::time::Instant::now() < deadline, "no `{event}` of task {task} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Where scripts/setup.sh puts the venv with the `standardwebhooks` package.
fn reference_python() -> PathBuf {
    let python = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs the Standard Webhooks library)",
        python.display()
    );
    python
}

/// Checks a logged request's signature with the Standard Webhooks reference library (PyPI
/// `standardwebhooks`) and `secret`: `Err` with the library's reason when it refuses.
pub async fn verify_with_reference_library(secret: &str, request: &Value) -> Result<(), String> {
    const VERIFY: &str = "import json, sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        request = json.load(sys.stdin)\n\
        Webhook(sys.argv[1]).verify(request['body'], request['headers'], json_parse=False)\n";
    let mut child = tokio::process::Command::new(reference_python())
        .args(["-c", VERIFY, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, request.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.lines().last().unwrap_or_default().to_string())
    }
}
