//! `rediss://`: Courier against a real TLS redis-server whose certificate a CA made by the test
//! signed, logging in as an ACL user; plain TCP is off, so every byte goes through TLS.

mod certificates;

use certificates::Certificates;
use courier::{
    Server,
    config::{Command, Config},
    embedded_redis::free_port,
};
use serde_json::json;
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

const USER: &str = "courier";
const PASSWORD: &str = "s3cret";

/// A redis-server listening only on a TLS port, with the ACL user `courier` and the default user
/// off; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    certificates: Certificates,
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        let certificates = Certificates::make();
        let port = free_port().expect("a free port");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(certificates.path("server.crt"))
            .arg("--tls-key-file")
            .arg(certificates.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certificates.path("ca.crt"))
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(certificates.dir.path())
            .args(["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"])
            .args(["--user", "default", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts (is it installed? ./scripts/setup.sh installs it)");
        let mut redis = TlsRedis { child, port, certificates };
        redis.wait_until_listening().await;
        redis
    }

    async fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("redis-server exited at start ({status})");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen within 10 s on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://{USER}:{password}@127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.certificates.path("ca.crt")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, ca: Option<PathBuf>) -> Config {
    let mut config = Config::defaults();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.redis_url = Some(url.parse().unwrap());
    config.redis_ca_cert = ca;
    config.concurrency = 2;
    config
}

/// Builds a server, failing the test if that takes longer than a refusal should.
async fn build(config: Config) -> anyhow::Result<Server> {
    tokio::time::timeout(Duration::from_secs(30), Server::build(config, Command::Serve))
        .await
        .expect("Server::build answers within 30 s, success or error")
}

#[tokio::test]
async fn a_task_runs_over_tls_as_an_acl_user_trusting_a_private_ca() {
    let redis = TlsRedis::start().await;
    let server = build(config(&redis.url(PASSWORD), Some(redis.ca()))).await.expect("the server builds");
    let base = format!("http://127.0.0.1:{}", server.port().expect("serve binds a port"));
    let shutdown: CancellationToken = server.shutdown_token();
    let running = tokio::spawn(server.run());
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{base}/api/v1/tasks"))
        .json(&json!({"kind": "echo", "payload": {"hello": "tls"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let view: serde_json::Value = response.json().await.unwrap();
    let id = view["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let view: serde_json::Value =
            http.get(format!("{base}/api/v1/tasks/{id}")).send().await.unwrap().json().await.unwrap();
        if view["status"] == "succeeded" {
            break view;
        }
        assert!(!["failed", "cancelled"].contains(&view["status"].as_str().unwrap()), "{view}");
        assert!(Instant::now() < deadline, "the task did not succeed within 30 s: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let result_url = view["result_url"].as_str().expect("a succeeded task has a result");
    let result: serde_json::Value =
        http.get(format!("{base}{result_url}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(result, json!({"hello": "tls"}));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the server stops within 30 s")
        .unwrap()
        .expect("the server stops cleanly");
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let redis = TlsRedis::start().await;
    let error = build(config(&redis.url(PASSWORD), None)).await.err().expect("the build fails");
    let message = format!("{error:#}");
    assert!(message.contains("certificate"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let redis = TlsRedis::start().await;
    let error = build(config(&redis.url("wrong"), Some(redis.ca()))).await.err().expect("the build fails");
    let message = format!("{error:#}");
    assert!(message.to_lowercase().contains("authentication failed"), "{message}");
    assert!(!message.contains("wrong@"), "{message}");
}

#[tokio::test]
async fn a_ca_certificate_without_a_rediss_url_stops_the_start_naming_the_flag() {
    let certificates = Certificates::make();
    let url = format!("redis://127.0.0.1:{}", free_port().unwrap());
    let error = build(config(&url, Some(certificates.path("ca.crt")))).await.err().expect("the build fails");
    assert!(format!("{error:#}").contains("--redis-ca-cert"), "{error:#}");

    // Without a URL the embedded redis-server would be plain TCP: refused before it starts.
    let mut embedded = config(&url, Some(certificates.path("ca.crt")));
    embedded.redis_url = None;
    embedded.data_dir = certificates.path("data");
    let error = build(embedded).await.err().expect("the build fails");
    assert!(format!("{error:#}").contains("--redis-ca-cert"), "{error:#}");
    assert!(!certificates.path("data").exists(), "no redis-server was started");
}

#[tokio::test]
async fn an_unreadable_ca_certificate_stops_the_process_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--addr", "127.0.0.1:0", "--redis-url", "rediss://127.0.0.1:1", "--redis-ca-cert"])
        .arg(&missing)
        .env_remove("COURIER_REDIS_CA_CERT")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("courier exits within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("--redis-ca-cert {}", missing.display())), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
