//! Access control with real processes: `courier serve` children and the `courier token` CLI on a
//! private redis-server. Every process logs at debug level into files that each test greps, at its
//! end, for the tokens and secrets it made.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use courier::{
    auth::Scope,
    embedded_redis::free_port,
    http::{ACCESS_RULES, QueueIn},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use support::{TestRedis, unique_prefix};
use tokio::process::{Child, Command};

/// One test's world: a redis-server, a prefix, the logs of every process it ran, and the secrets
/// it made (none of which may appear in a log).
struct World {
    redis: TestRedis,
    prefix: String,
    logs: tempfile::TempDir,
    secrets: Vec<String>,
    http: reqwest::Client,
    next_log: usize,
}

/// A `courier serve` child.
struct Courier {
    base: String,
    _child: Child,
}

impl World {
    async fn new() -> World {
        let redis = TestRedis::start().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut world = World {
            redis,
            prefix: unique_prefix(),
            logs: tempfile::tempdir().unwrap(),
            secrets: Vec::new(),
            http,
            next_log: 0,
        };
        // The Redis URL's password (if it has one) is a secret too.
        let url = world.redis.redis.url();
        if let Some(password) =
            url.split_once("://").and_then(|(_, rest)| rest.split_once('@')).and_then(|(credentials, _)| {
                credentials.split_once(':').map(|(_, password)| password.to_string())
            })
        {
            world.secrets.push(password);
        }
        world
    }

    fn log_file(&mut self, what: &str) -> std::fs::File {
        self.next_log += 1;
        std::fs::File::create(self.logs.path().join(format!("{}-{what}.log", self.next_log))).unwrap()
    }

    fn common_args(&self) -> Vec<String> {
        vec!["--redis-url".into(), self.redis.redis.url(), "--prefix".into(), self.prefix.clone()]
    }

    /// Starts `courier serve` with `args`, and waits until it is ready.
    async fn serve(&mut self, args: &[&str]) -> Courier {
        let port = free_port().unwrap();
        let log = self.log_file("serve");
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(self.common_args())
            .args(if args.contains(&"--concurrency") { &[][..] } else { &["--concurrency", "2"][..] })
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("courier serve starts");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if self.http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
                return Courier { base, _child: child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("courier serve did not become ready");
    }

    /// Runs `courier` with `args` on this world's Redis: (success, stdout, stderr).
    async fn cli(&mut self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(args)
            .args(self.common_args())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("courier runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        use std::io::Write;
        // The CLI's own words count as log lines too (the token aside, on stdout by design).
        self.log_file("cli").write_all(stderr.as_bytes()).unwrap();
        (output.status.success(), stdout, stderr)
    }

    /// A new token from the CLI.
    async fn token(&mut self, name: &str, scopes: &str, queues: &str) -> String {
        let (ok, stdout, stderr) =
            self.cli(&["token", "create", "--name", name, "--scopes", scopes, "--queues", queues]).await;
        assert!(ok, "token create failed: {stderr}");
        let token = stdout.trim().to_string();
        assert_eq!(stdout.lines().count(), 1, "stdout holds the token alone: {stdout:?}");
        self.secrets.push(token.clone());
        token
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Asserts that no log line of any process of this world holds a secret it made.
    fn assert_logs_hold_no_secret(&self) {
        let mut lines = 0;
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            lines += text.lines().count();
            for secret in &self.secrets {
                assert!(!text.contains(secret.as_str()), "{} holds a secret", path.display());
                // Nor a recognisable half of one.
                assert!(
                    !text.contains(&secret[..secret.len() / 2]),
                    "{} holds part of a secret",
                    path.display()
                );
            }
        }
        assert!(lines > 0, "the processes logged nothing: the check would prove nothing");
    }
}

impl Courier {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Waits until task `id` has ended, reading it with `token`.
async fn ended(world: &World, app: &Courier, token: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let view: Value = world
            .call(Method::GET, app.url(&format!("/api/v1/tasks/{id}")), Some(token), None)
            .await
            .json()
            .await
            .unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or_default()) {
            return view;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{id} has not ended: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits `body` with `token`; the task's id.
async fn submit(world: &World, app: &Courier, token: &str, body: Value) -> String {
    let response = world.call(Method::POST, app.url("/api/v1/tasks"), Some(token), Some(body)).await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

const ALL: &str = "submit,read,work,operate,admin";

/// A concrete URL for a route pattern: `task`'s, and the lease `lease` names.
fn concrete(path: &str, task: &str, lease: &str) -> String {
    path.replace("{id}", task)
        .replace("{name}", "default")
        .replace("{topic}", "news")
        .replace("{token}", lease)
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_token_with_401_and_a_token_lacking_its_scope_with_403() {
    let mut world = World::new().await;
    let admin = world.token("admin", ALL, "*").await;
    let work_only = world.token("worker", "work", "*").await;
    let read_only = world.token("reader", "read", "*").await;
    let elsewhere = world.token("elsewhere", ALL, "other-*").await;
    // No built-in worker: the task is pulled, so that the lease routes name a real lease (a
    // token Courier did not seal names no queue).
    let app = world.serve(&["--concurrency", "0"]).await;
    let task = submit(&world, &app, &admin, json!({"kind": "echo", "payload": {}})).await;
    let leases = app.url("/api/v1/queues/default/leases");
    let leased = world.call(Method::POST, leases, Some(&admin), Some(json!({"worker": "w"}))).await;
    let leased: Value = leased.json().await.unwrap();
    let lease = leased["leases"][0]["token"].as_str().unwrap_or_else(|| panic!("{leased}")).to_string();
    for rule in ACCESS_RULES {
        let method: Method = rule.method.parse().unwrap();
        let url = app.url(&concrete(rule.path, &task, &lease));
        let response = world.call(method.clone(), url.clone(), None, None).await;
        if rule.public {
            assert_eq!(response.status(), StatusCode::OK, "{method} {url} is public");
            continue;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {url} without a token");
        assert!(
            response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"),
            "{method} {url}: the 401 asks for a bearer token"
        );
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let response = world.call(method.clone(), url.clone(), Some("cour_not-a-token"), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {url} with an unknown token");
        // Every scope, but another queue: whatever the path names in the default queue is absent.
        if rule.queue != QueueIn::Handler {
            let response = world.call(method.clone(), url.clone(), Some(&elsewhere), None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {url} from another queue");
        }
        let Some(scope) = rule.scope else { continue };
        let lacking = if scope == Scope::Work { &read_only } else { &work_only };
        let response = world.call(method.clone(), url.clone(), Some(lacking), None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {url} lacking `{scope}`");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(scope.as_str()), "{problem}");
    }
    // The health checks stay open, for load balancers.
    assert_eq!(world.call(Method::GET, app.url("/healthz"), None, None).await.status(), 200);
    let me: Value = world
        .call(Method::GET, app.url("/api/v1/auth/me"), Some(&read_only), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"auth": true, "name": "reader", "scopes": ["read"], "queues": ["*"]}));
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn a_token_of_another_queue_finds_nothing_of_this_one_in_lookups_lists_or_events() {
    let mut world = World::new().await;
    let admin = world.token("admin", ALL, "*").await;
    let billing = world.token("billing", "submit,read,operate,work", "billing,reports-*").await;
    let app = world.serve(&["--concurrency", "0"]).await;
    let mut events = world.http.get(app.url("/api/v1/events")).bearer_auth(&billing).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let hidden = submit(&world, &app, &admin, json!({"kind": "echo", "payload": {}})).await;
    let visible =
        submit(&world, &app, &billing, json!({"kind": "echo", "payload": {}, "queue": "billing"})).await;
    let also =
        submit(&world, &app, &billing, json!({"kind": "echo", "payload": {}, "queue": "reports-eu"})).await;
    for path in [
        format!("/api/v1/tasks/{hidden}"),
        format!("/api/v1/tasks/{hidden}/status"),
        format!("/api/v1/tasks/{hidden}/events"),
        "/api/v1/queues/default".to_string(),
    ] {
        let response = world.call(Method::GET, app.url(&path), Some(&billing), None).await;
        assert_eq!(response.status(), 404, "GET {path}");
    }
    let cancel =
        world.call(Method::DELETE, app.url(&format!("/api/v1/tasks/{hidden}")), Some(&billing), None).await;
    assert_eq!(cancel.status(), 404);
    let pause = world.call(Method::POST, app.url("/api/v1/queues/default/pause"), Some(&billing), None).await;
    assert_eq!(pause.status(), 404);
    let lease = world
        .call(
            Method::POST,
            app.url("/api/v1/queues/default/leases"),
            Some(&billing),
            Some(json!({"kinds": ["echo"]})),
        )
        .await;
    assert_eq!(lease.status(), 404);
    // A lease of the default queue (taken by a token that reaches it) cannot be ended in a list
    // of ends by one that does not: that end is a 404, as its own request would be.
    let admins: Value = world
        .call(
            Method::POST,
            app.url("/api/v1/queues/default/leases"),
            Some(&admin),
            Some(json!({"worker": "w"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = admins["leases"][0]["token"].as_str().unwrap_or_else(|| panic!("{admins}"));
    let ends = json!({"ends": [{"token": token, "result": 1}]});
    let ended = world.call(Method::POST, app.url("/api/v1/leases/ends"), Some(&billing), Some(ends)).await;
    assert_eq!(ended.status(), 200);
    let ended: Value = ended.json().await.unwrap();
    assert_eq!(ended["ends"][0]["status"], 404, "{ended}");
    // Nor in a lease request of a queue the token does reach.
    let request = json!({"worker": "w", "kinds": ["nothing"], "ends": [{"token": token, "result": 1}]});
    let leased = world
        .call(Method::POST, app.url("/api/v1/queues/billing/leases"), Some(&billing), Some(request))
        .await;
    assert_eq!(leased.status(), 200);
    let leased: Value = leased.json().await.unwrap();
    assert_eq!(leased["ends"][0]["status"], 404, "{leased}");
    let view = world.call(Method::GET, app.url(&format!("/api/v1/tasks/{hidden}")), Some(&admin), None).await;
    assert_eq!(view.json::<Value>().await.unwrap()["status"], "running");
    let elsewhere = world
        .call(
            Method::POST,
            app.url("/api/v1/tasks"),
            Some(&billing),
            Some(json!({"kind": "echo", "payload": {}})),
        )
        .await;
    assert_eq!(elsewhere.status(), 404, "the default queue is out of reach");
    let batch = json!({"tasks": [{"kind": "echo", "payload": {}, "queue": "billing"}, {"kind": "echo", "payload": {}}]});
    let batch = world.call(Method::POST, app.url("/api/v1/tasks/batch"), Some(&billing), Some(batch)).await;
    assert_eq!(batch.status(), 404, "one task out of reach refuses the whole batch");
    // Lists carry only what the token reaches.
    let listed: Value =
        world.call(Method::GET, app.url("/api/v1/tasks"), Some(&billing), None).await.json().await.unwrap();
    let ids: Vec<&str> =
        listed["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&visible.as_str()) && ids.contains(&also.as_str()), "{listed}");
    assert!(!ids.contains(&hidden.as_str()), "{listed}");
    let everything: Value =
        world.call(Method::GET, app.url("/api/v1/tasks"), Some(&admin), None).await.json().await.unwrap();
    assert_eq!(everything["tasks"].as_array().unwrap().len(), 3);
    let queues: Value =
        world.call(Method::GET, app.url("/api/v1/queues"), Some(&billing), None).await.json().await.unwrap();
    let names: Vec<&str> =
        queues["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["billing", "reports-eu"]);
    // The event stream carried the two tasks it may see, and not the other.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains(&visible) && seen.contains(&also)) && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(1), events.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(seen.contains(&visible) && seen.contains(&also), "{seen}");
    assert!(!seen.contains(&hidden), "an event of the default queue reached a billing token: {seen}");
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_a_second_instance_within_a_second() {
    let mut world = World::new().await;
    let token = world.token("short-lived", "read", "*").await;
    let (a, b) = (world.serve(&[]).await, world.serve(&[]).await);
    for app in [&a, &b] {
        assert_eq!(
            world.call(Method::GET, app.url("/api/v1/queues"), Some(&token), None).await.status(),
            200
        );
    }
    let (ok, _, stderr) = world.cli(&["token", "revoke", "short-lived"]).await;
    assert!(ok, "{stderr}");
    let revoked = Instant::now();
    loop {
        let status = world.call(Method::GET, b.url("/api/v1/queues"), Some(&token), None).await.status();
        if status == 401 {
            break;
        }
        // The servers read the tokens again twice a second; a second and a half leaves room for
        // a loaded machine and still fails if revocation waited on anything slower.
        assert!(
            revoked.elapsed() < Duration::from_millis(1_500),
            "still {status} after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation reached the second instance after {:?}", revoked.elapsed());
    let (ok, _, _) = world.cli(&["token", "revoke", "short-lived"]).await;
    assert!(!ok, "revoking an unknown name fails");
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn the_cli_shows_a_token_once_and_lists_everything_else_about_it() {
    let mut world = World::new().await;
    let token = world.token("ci", "submit,read", "billing,reports-*").await;
    assert!(token.starts_with("cour_") && token.len() == 48, "{token}");
    let (ok, _, stderr) =
        world.cli(&["token", "create", "--name", "ci", "--scopes", "read", "--queues", "*"]).await;
    assert!(!ok && stderr.contains("exists already"), "{stderr}");
    let (ok, _, stderr) =
        world.cli(&["token", "create", "--name", "x", "--scopes", "root", "--queues", "*"]).await;
    assert!(!ok && stderr.contains("not a scope"), "{stderr}");
    let (ok, listed, _) = world.cli(&["token", "list"]).await;
    assert!(ok);
    assert!(
        listed.contains("ci") && listed.contains("submit,read") && listed.contains("billing,reports-*"),
        "{listed}"
    );
    assert!(!listed.contains(&token));
    // The same over the API, for an admin token.
    let admin = world.token("admin", "admin", "*").await;
    let app = world.serve(&[]).await;
    let created = world
        .call(
            Method::POST,
            app.url("/api/v1/tokens"),
            Some(&admin),
            Some(json!({"name": "api-made", "scopes": ["read"], "queues": ["billing"], "expires": "1h"})),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let made = created["token"].as_str().unwrap().to_string();
    world.secrets.push(made.clone());
    assert!(created["expires_ms"].as_u64().is_some());
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), Some(&made), None).await.status(), 200);
    let list =
        world.call(Method::GET, app.url("/api/v1/tokens"), Some(&admin), None).await.text().await.unwrap();
    assert!(list.contains("api-made") && list.contains("last_used_ms") && !list.contains(&made), "{list}");
    let revoked = world.call(Method::DELETE, app.url("/api/v1/tokens/api-made"), Some(&admin), None).await;
    assert_eq!(revoked.status(), 204);
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), Some(&made), None).await.status(), 401);
    let bad = world
        .call(
            Method::POST,
            app.url("/api/v1/tokens"),
            Some(&admin),
            Some(json!({"name": "x", "scopes": [], "queues": ["*"]})),
        )
        .await;
    assert_eq!(bad.status(), 422);
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn signed_result_links_work_without_a_token_until_they_expire_and_refuse_tampering() {
    let mut world = World::new().await;
    let admin = world.token("admin", ALL, "*").await;
    let app = world.serve(&["--result-link-ttl", "3s"]).await;
    let id = submit(&world, &app, &admin, json!({"kind": "echo", "payload": {"hello": "link"}})).await;
    let view = ended(&world, &app, &admin, &id).await;
    let link = view["result_url"].as_str().unwrap().to_string();
    assert!(
        link.starts_with(&format!("/api/v1/tasks/{id}/result?expires=")) && link.contains("&sig="),
        "{link}"
    );
    // The status monitor's 303 points at a signed link too.
    let status =
        world.call(Method::GET, app.url(&format!("/api/v1/tasks/{id}/status")), Some(&admin), None).await;
    assert_eq!(status.status(), 303);
    assert!(status.headers()["location"].to_str().unwrap().contains("&sig="));
    // No token needed.
    let fetched = world.call(Method::GET, app.url(&link), None, None).await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await.unwrap(), json!({"hello": "link"}));
    // A HEAD of it too (as the task page asks a large one's size); not of the bare path.
    let head = world.call(Method::HEAD, app.url(&link), None, None).await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], r#"{"hello":"link"}"#.len().to_string().as_str());
    let bare = format!("/api/v1/tasks/{id}/result");
    assert_eq!(world.call(Method::HEAD, app.url(&bare), None, None).await.status(), 401);
    // Tampered: another signature, another expiry, another task's path.
    let other = submit(&world, &app, &admin, json!({"kind": "echo", "payload": {}})).await;
    let flipped = {
        let (head, sig) = link.rsplit_once("&sig=").unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
        format!("{head}&sig={}", sig.into_iter().collect::<String>())
    };
    let later = link.replacen("expires=", "expires=9", 1);
    let elsewhere = link.replace(&id, &other);
    for forged in [flipped, later, elsewhere, link.replace("/result?", "/payload?")] {
        let response = world.call(Method::GET, app.url(&forged), None, None).await;
        assert_eq!(response.status(), 403, "{forged}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }
    // Rotating the key keeps the links it signed working.
    let (ok, _, stderr) = world.cli(&["link-key", "rotate"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(world.call(Method::GET, app.url(&link), None, None).await.status(), 200);
    // Expired.
    // Expiry is in whole seconds, rounded up: past 3 s and the rounding.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    let expired = world.call(Method::GET, app.url(&link), None, None).await;
    assert_eq!(expired.status(), 403);
    assert!(expired.text().await.unwrap().contains("expired"));
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn operator_actions_are_recorded_with_the_tokens_name_for_admins_to_read() {
    let mut world = World::new().await;
    let admin = world.token("admin", ALL, "*").await;
    let ops = world.token("ops", "submit,read,operate", "*").await;
    let app = world.serve(&["--concurrency", "0"]).await;
    let id = submit(&world, &app, &ops, json!({"kind": "echo", "payload": {}})).await;
    assert_eq!(
        world.call(Method::DELETE, app.url(&format!("/api/v1/tasks/{id}")), Some(&ops), None).await.status(),
        200
    );
    assert_eq!(
        world.call(Method::POST, app.url("/api/v1/queues/default/pause"), Some(&ops), None).await.status(),
        200
    );
    assert_eq!(world.call(Method::GET, app.url("/api/v1/audit"), Some(&ops), None).await.status(), 403);
    let audit: Value =
        world.call(Method::GET, app.url("/api/v1/audit"), Some(&admin), None).await.json().await.unwrap();
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(entries[0], ("ops".into(), "queue.pause".into(), "default".into()), "{audit}");
    assert_eq!(entries[1], ("ops".into(), "task.cancel".into(), id), "{audit}");
    assert!(
        entries
            .iter()
            .any(|(actor, action, target)| actor == "cli" && action == "token.create" && target == "ops")
    );
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn a_token_past_its_submit_rate_gets_429_and_others_are_unaffected() {
    let mut world = World::new().await;
    let noisy = world.token("noisy", "submit", "*").await;
    let quiet = world.token("quiet", "submit", "*").await;
    let app = world.serve(&["--rate-limit", "5", "--concurrency", "0"]).await;
    let batch = |n: usize| json!({"tasks": vec![json!({"kind": "echo", "payload": {}}); n]});
    let response =
        world.call(Method::POST, app.url("/api/v1/tasks/batch"), Some(&noisy), Some(batch(6))).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let response =
        world.call(Method::POST, app.url("/api/v1/tasks/batch"), Some(&quiet), Some(batch(5))).await;
    assert_eq!(response.status(), 202);
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn auth_turns_on_with_the_first_token_or_when_required_and_an_open_network_port_is_refused() {
    let mut world = World::new().await;
    // No token, loopback: open, as the README's first run.
    let open = world.serve(&[]).await;
    assert_eq!(world.call(Method::GET, open.url("/api/v1/queues"), None, None).await.status(), 200);
    let me: Value =
        world.call(Method::GET, open.url("/api/v1/auth/me"), None, None).await.json().await.unwrap();
    assert_eq!(me["auth"], false);
    let required = world.serve(&["--auth", "required"]).await;
    assert_eq!(world.call(Method::GET, required.url("/api/v1/queues"), None, None).await.status(), 401);
    // Every interface, no token: refused, saying how to make one.
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--addr", "0.0.0.0:0"])
        .args(world.common_args())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("courier token create") && stderr.contains("--insecure-no-auth"), "{stderr}");
    // The first token turns access control on, on the server already running, within a second.
    let token = world.token("first", "read", "*").await;
    let started = Instant::now();
    while world.call(Method::GET, open.url("/api/v1/queues"), None, None).await.status() != 401 {
        assert!(started.elapsed() < Duration::from_millis(1_500));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(world.call(Method::GET, open.url("/api/v1/queues"), Some(&token), None).await.status(), 200);
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn the_cli_finds_the_embedded_redis_of_a_running_server_or_starts_it_itself() {
    let mut world = World::new().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
        command.args(args).args(["--data-dir", &data_dir]).env_remove("COURIER_REDIS_URL");
        command
    };
    // No server: the CLI starts the embedded redis-server, writes, and stops it.
    let made = cli(&["token", "create", "--name", "first", "--scopes", "read", "--queues", "*"])
        .output()
        .await
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let first = String::from_utf8(made.stdout).unwrap().trim().to_string();
    world.secrets.push(first.clone());
    // A server on that data directory honours it...
    let port = free_port().unwrap();
    let log = world.log_file("embedded-serve");
    let server = cli(&["serve", "--addr", &format!("127.0.0.1:{port}"), "--concurrency", "0"])
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let app = Courier { base: format!("http://127.0.0.1:{port}"), _child: server };
    let started = Instant::now();
    while world.http.get(app.url("/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(20), "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), None, None).await.status(), 401);
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), Some(&first), None).await.status(), 200);
    // ...and the CLI reaches its running redis-server to revoke it.
    let revoked = cli(&["token", "revoke", "first"]).output().await.unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let started = Instant::now();
    while world.call(Method::GET, app.url("/api/v1/queues"), Some(&first), None).await.status() != 401 {
        assert!(started.elapsed() < Duration::from_millis(1_500), "the revocation did not reach the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped gently, so that it stops its redis-server too (a killed one would leave it behind).
    let mut server = app._child;
    let pid = server.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.wait()).await.unwrap().unwrap();
    assert!(stopped.success());
    let left = courier::embedded_redis::EmbeddedRedis::running_url(&data.path().join("redis")).await;
    assert!(left.is_none(), "the server left its redis-server running");
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn a_token_of_some_queues_cannot_mint_tokens_declare_kinds_or_rewire_topics() {
    let mut world = World::new().await;
    let root = world.token("root", ALL, "*").await;
    let tenant = world.token("tenant", ALL, "billing").await;
    let app = world.serve(&[]).await;
    let wider = json!({"name": "wider", "scopes": ["admin"], "queues": ["*"]});
    let kind = json!({"description": "x"});
    let subscription = json!({"kind": "echo", "queue": "billing"});
    let calls = [
        (Method::POST, "/api/v1/tokens", Some(wider.clone())),
        (Method::GET, "/api/v1/tokens", None),
        (Method::DELETE, "/api/v1/tokens/root", None),
        (Method::PUT, "/api/v1/kinds/mine", Some(kind.clone())),
        (Method::GET, "/api/v1/audit", None),
        (Method::PUT, "/api/v1/topics/news/subscriptions/copy", Some(subscription.clone())),
        (Method::DELETE, "/api/v1/topics/news/subscriptions/copy", None),
    ];
    for (method, path, body) in calls {
        let response = world.call(method.clone(), app.url(path), Some(&tenant), body).await;
        assert_eq!(response.status(), 403, "{method} {path}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains("every queue"), "{problem}");
    }
    // Its own queue's limits are its to set; the token of every queue does the rest.
    let limits =
        world.call(Method::PUT, app.url("/api/v1/queues/billing"), Some(&tenant), Some(json!({}))).await;
    assert_eq!(limits.status(), 200);
    let put = world
        .call(Method::PUT, app.url("/api/v1/topics/news/subscriptions/copy"), Some(&root), Some(subscription))
        .await;
    assert_eq!(put.status(), 201);
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn an_open_event_stream_ends_once_its_token_is_revoked() {
    let mut world = World::new().await;
    let _admin = world.token("admin", ALL, "*").await;
    let watcher = world.token("watcher", "read", "*").await;
    let app = world.serve(&[]).await;
    let mut stream = world.http.get(app.url("/api/v1/events")).bearer_auth(&watcher).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let (ok, _, stderr) = world.cli(&["token", "revoke", "watcher"]).await;
    assert!(ok, "{stderr}");
    let revoked = Instant::now();
    // Keep-alive comments may come first; the stream must then end.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("the stream of a revoked token is still open after {:?}", revoked.elapsed()),
        }
    }
    println!("the stream ended {:?} after the revocation", revoked.elapsed());
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn a_pull_worker_reads_a_large_payload_through_its_signed_link_with_a_work_token() {
    let mut world = World::new().await;
    let client = world.token("client", "submit,read", "*").await;
    let worker = world.token("worker", "work", "*").await;
    let app = world.serve(&["--concurrency", "0"]).await;
    let big = "x".repeat(100_000);
    submit(&world, &app, &client, json!({"kind": "echo", "payload": {"big": big}})).await;
    let leases: Value = world
        .call(
            Method::POST,
            app.url("/api/v1/queues/default/leases"),
            Some(&worker),
            Some(json!({"worker": "w", "max": 1})),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = leases["leases"][0]["payload_url"].as_str().unwrap_or_else(|| panic!("{leases}")).to_string();
    assert!(url.contains("&sig="), "{leases}");
    let payload = world.call(Method::GET, app.url(&url), Some(&worker), None).await;
    assert_eq!(payload.status(), 200);
    assert_eq!(payload.json::<Value>().await.unwrap()["big"].as_str().unwrap().len(), 100_000);
    world.assert_logs_hold_no_secret();
}

#[tokio::test]
async fn access_control_stays_on_when_the_tokens_vanish_from_redis() {
    let mut world = World::new().await;
    let token = world.token("only", "read", "*").await;
    let app = world.serve(&[]).await;
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), None, None).await.status(), 401);
    // As a flush or an eviction would: every key of the tokens gone.
    let mut conn = redis::Client::open(world.redis.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", world.prefix)).query_async(&mut conn).await.unwrap();
    assert!(keys.iter().any(|k| k.ends_with(":auth-enforced")), "{keys:?}");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), None, None).await.status(), 401);
    assert_eq!(world.call(Method::GET, app.url("/api/v1/queues"), Some(&token), None).await.status(), 401);
    world.assert_logs_hold_no_secret();
}
