//! HTTPS: the real `courier serve` process with `--tls-cert` and `--tls-key` (a certificate for
//! localhost signed by a CA the test makes), reached with curl and reqwest trusting that CA.

#[path = "../tls/certificates.rs"]
mod certificates;
#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use certificates::Certificates;
use futures::StreamExt;
use serde_json::json;
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use support::{TestRedis, unique_prefix};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

/// A `courier serve` child serving HTTPS on a port it picked, on a private redis-server; killed
/// when dropped.
struct Served {
    child: Child,
    port: u16,
    certificates: Certificates,
    _redis: TestRedis,
}

impl Served {
    /// Starts `courier serve` on port 0 with the test's certificate and `args` added, and waits
    /// for the log line that says where it serves.
    async fn start(args: &[&str]) -> Served {
        let certificates = Certificates::make();
        let redis = TestRedis::start().await;
        let log = certificates.path("courier.log");
        let mut child = courier()
            .args(["serve", "--addr", "127.0.0.1:0", "--redis-url", &redis.redis.url()])
            .args(["--prefix", &unique_prefix(), "--concurrency", "2"])
            .arg("--tls-cert")
            .arg(certificates.path("server.crt"))
            .arg("--tls-key")
            .arg(certificates.path("server.key"))
            .args(args)
            // Its log lines go to stdout.
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("courier serve starts");
        let port = served_port(&mut child, &log).await;
        Served { child, port, certificates, _redis: redis }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.certificates.path("ca.crt")
    }

    /// A reqwest client that trusts the test's CA, and no other.
    fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// `curl` for `url`, with `args` added: its exit status and stderr.
    async fn curl(&self, args: &[&str], url: &str) -> (std::process::Output, String) {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--noproxy", "*", "--max-time", "20"])
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("curl runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output, stderr)
    }
}

/// `courier`, with no TLS or Redis settings of the environment's own.
fn courier() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    for name in ["COURIER_TLS_CERT", "COURIER_TLS_KEY", "COURIER_REDIS_URL", "COURIER_ADDR"] {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// The port in the `url=https://127.0.0.1:PORT` of the line that says the server is serving.
async fn served_port(child: &mut Child, log: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text
            .lines()
            .filter(|line| line.contains("serving the UI and the API"))
            .find_map(|line| line.split_once("url=https://127.0.0.1:"))
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
        if let Some(port) = port {
            return port;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("courier serve exited ({status}): {text}");
        }
        assert!(Instant::now() < deadline, "courier serve did not say it serves HTTPS: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal to a child by its pid.
fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("the child is running");
    let status =
        std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test]
async fn curl_trusting_the_ca_is_answered_over_https_and_curl_without_it_is_refused() {
    let served = Served::start(&[]).await;
    let ca = served.ca();
    let (output, stderr) = served.curl(&["--cacert", ca.to_str().unwrap()], &served.url("/healthz")).await;
    assert!(output.status.success(), "{stderr}");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap(), json!({"status": "ok"}));

    let (output, stderr) = served.curl(&[], &served.url("/healthz")).await;
    // 60: the peer's certificate cannot be verified with the known CA certificates.
    assert_eq!(output.status.code(), Some(60), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn plain_http_on_the_https_port_gets_no_http_answer() {
    let served = Served::start(&[]).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", served.port)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    assert!(!String::from_utf8_lossy(&answer).contains("\"status\""), "no API answer");
}

#[tokio::test]
async fn a_task_submitted_over_https_is_read_back_and_its_events_stream_over_https() {
    let served = Served::start(&[]).await;
    let http = served.client();
    let events = http
        .get(served.url("/api/v1/events"))
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.version(), reqwest::Version::HTTP_11, "ALPN offers http/1.1 alone");
    let mut events = events.bytes_stream();

    let response = http
        .post(served.url("/api/v1/tasks"))
        .json(&json!({"kind": "echo", "payload": {"over": "https"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let view: serde_json::Value =
        http.get(served.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["kind"], "echo");

    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.lines().any(|line| line.starts_with("data:") && line.contains(&id)) {
        let chunk = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no event of {id} within 30 s: {text}"))
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_does_not_hold_up_another() {
    // Far longer than the other client's timeout: were the handshake in the accept loop, the
    // silent client would hold the loop for a minute and the second request would time out.
    let served = Served::start(&["--header-timeout", "60s"]).await;
    let mut silent = TcpStream::connect(("127.0.0.1", served.port)).await.unwrap();
    let response = served.client().get(served.url("/healthz")).send().await.expect("answered at once");
    assert_eq!(response.status(), 200);
    let mut byte = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(200), silent.read(&mut byte)).await;
    assert!(still_open.is_err(), "the silent client was still waited for meanwhile");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_disconnected_after_the_header_timeout() {
    let served = Served::start(&["--header-timeout", "1s"]).await;
    let mut silent = TcpStream::connect(("127.0.0.1", served.port)).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still connected 20 s after a 1 s header timeout");
}

#[tokio::test]
async fn sigterm_ends_the_process_cleanly_with_https_streams_and_handshakes_open() {
    let mut served = Served::start(&["--header-timeout", "60s", "--grace", "5s"]).await;
    let http = served.client();
    let events =
        http.get(served.url("/api/v1/events")).timeout(Duration::from_secs(600)).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let mut events = events.bytes_stream();
    let _silent = TcpStream::connect(("127.0.0.1", served.port)).await.unwrap();

    signal(&served.child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), served.child.wait())
        .await
        .expect("courier exits within 30 s, not after the 60 s header timeout")
        .unwrap();
    assert!(status.success(), "{status}");
    // The event stream was ended by the server, not cut.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap() {
        chunk.expect("the stream ends cleanly");
    }
}

#[tokio::test]
async fn a_missing_key_or_a_certificate_without_its_key_stops_courier_naming_the_flag() {
    let certificates = Certificates::make();
    let missing = certificates.path("missing.key");
    let cases: [(Vec<PathBuf>, String); 3] = [
        (
            vec!["--tls-cert".into(), certificates.path("server.crt"), "--tls-key".into(), missing.clone()],
            format!("--tls-key {}", missing.display()),
        ),
        (vec!["--tls-cert".into(), certificates.path("server.crt")], "--tls-cert needs --tls-key".into()),
        (
            // The CA's key does not go with the server's certificate.
            vec![
                "--tls-cert".into(),
                certificates.path("server.crt"),
                "--tls-key".into(),
                certificates.path("ca.key"),
            ],
            format!("--tls-cert {}", certificates.path("server.crt").display()),
        ),
    ];
    for (args, expected) in cases {
        let output = courier()
            .args(["serve", "--addr", "127.0.0.1:0", "--redis-url", "redis://127.0.0.1:1"])
            .args(&args)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .expect("courier exits within 30 s")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
