//! Test helpers: a shared private redis-server, `spawn_app`, an SSE reader.

use courier::{
    Server,
    config::{Command, Config},
    embedded_redis::EmbeddedRedis,
};
use futures::StreamExt;
use reqwest::header::HeaderMap;
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// A private redis-server in a temporary directory, killed when dropped.
pub struct TestRedis {
    pub redis: EmbeddedRedis,
    #[allow(dead_code)] // only the fault tests restart Redis in its directory
    pub dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let redis = EmbeddedRedis::start(dir.path()).await.expect("redis-server starts (is it installed?)");
        TestRedis { redis, dir }
    }
}

/// A Redis for a test's own processes: the shared one (see [`shared_redis`]), else a private
/// redis-server that lives as long as this.
#[allow(dead_code)] // not every test binary that includes this file starts processes
pub struct RedisForTest {
    pub url: String,
    _private: Option<TestRedis>,
}

#[allow(dead_code)]
impl RedisForTest {
    pub async fn start() -> RedisForTest {
        if let Some(url) = shared_redis() {
            return RedisForTest { url, _private: None };
        }
        let private = TestRedis::start().await;
        RedisForTest { url: private.redis.url(), _private: Some(private) }
    }
}

/// The queue the tests' tasks go to when they name none: `COURIER_TEST_QUEUE`, else the default
/// one. The suite runs twice (scripts/test.sh): on `default`, and on a named queue, which must
/// behave exactly alike.
pub fn test_queue() -> Option<String> {
    std::env::var("COURIER_TEST_QUEUE").ok().filter(|q| !q.is_empty())
}

/// `body` sent to the test queue, unless it names a queue of its own.
pub fn in_test_queue(mut body: serde_json::Value) -> serde_json::Value {
    if let (Some(queue), Some(fields)) = (test_queue(), body.as_object_mut()) {
        fields.entry("queue").or_insert(queue.into());
    }
    body
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A running server on a free port.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub redis_url: String,
    pub prefix: String,
    shutdown: CancellationToken,
    // Dropped last: the server stops before its Redis goes away.
    _redis: Option<TestRedis>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Redis every test shares when `COURIER_TEST_REDIS_URL` names one (scripts/test.sh runs
/// the API tests once more on a Redis Cluster, naming its masters), else `None`: each test
/// starts its own redis-server.
pub fn shared_redis() -> Option<String> {
    std::env::var("COURIER_TEST_REDIS_URL").ok().filter(|url| !url.is_empty())
}

/// Starts a server, with its own redis-server (or on the shared one, see [`shared_redis`]),
/// in-process workers and test-friendly settings changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    match shared_redis() {
        Some(url) => spawn_app_on(&url, tweak).await,
        None => spawn_app_alone(tweak).await,
    }
}

/// The bytes Redis has sent to its clients so far (for a test on a Redis of its own,
/// [`spawn_app_alone`]).
pub async fn bytes_sent(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut app.redis().await).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Starts a server with a redis-server of its own even when the tests share one: for a test that
/// counts what Redis did (`INFO`), or stops it, which other tests' work would blur.
pub async fn spawn_app_alone(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let redis = TestRedis::start().await;
    let mut app = spawn_app_on(&redis.redis.url(), tweak).await;
    app._redis = Some(redis);
    app
}

/// Starts a server on an existing Redis, under a fresh key prefix.
pub async fn spawn_app_on(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let redis_url = redis_url.to_string();
    let prefix = unique_prefix();
    let mut config = Config::defaults();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.redis_url = Some(redis_url.parse().unwrap());
    config.prefix = prefix.clone();
    config.concurrency = 4;
    config.retry_base = Duration::from_millis(50);
    config.lease = Duration::from_secs(5);
    tweak(&mut config);
    let server = Server::build(config, Command::Serve).await.expect("the server builds");
    let port = server.port().expect("serve binds a port");
    let shutdown = server.shutdown_token();
    tokio::spawn(server.run());
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestApp { base: format!("http://127.0.0.1:{port}"), http, redis_url, prefix, shutdown, _redis: None }
}

/// Starts a server with the defaults of [`spawn_app_with`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submits a JSON task and returns the whole response.
    pub async fn submit(&self, body: serde_json::Value) -> reqwest::Response {
        self.http.post(self.url("/api/v1/tasks")).json(&in_test_queue(body)).send().await.unwrap()
    }

    /// Submits a JSON task that must be accepted, and returns its id.
    pub async fn submit_ok(&self, body: serde_json::Value) -> String {
        let response = self.submit(body).await;
        assert_eq!(response.status(), 202);
        let view: serde_json::Value = response.json().await.unwrap();
        view["id"].as_str().unwrap().to_string()
    }

    /// Submits `count` copies of `task`, as it is, in batches of 500 that must be accepted;
    /// returns their ids.
    pub async fn submit_many(&self, count: usize, task: serde_json::Value) -> Vec<String> {
        let mut ids = Vec::new();
        for chunk in 0..count.div_ceil(500) {
            let tasks: Vec<_> = (0..500.min(count - chunk * 500)).map(|_| task.clone()).collect();
            let response = self
                .http
                .post(self.url("/api/v1/tasks/batch"))
                .json(&serde_json::json!({"tasks": tasks}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let accepted: serde_json::Value = response.json().await.unwrap();
            ids.extend(
                accepted["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()),
            );
        }
        ids
    }

    /// Submits `body` raw as a task of `kind` that must be accepted, and returns its id.
    pub async fn submit_raw_ok(
        &self,
        kind: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> String {
        let queue = test_queue().map(|q| format!("&queue={q}")).unwrap_or_default();
        let url = self.url(&format!("/api/v1/tasks?kind={kind}{queue}"));
        let response =
            self.http.post(url).header("content-type", content_type).body(body).send().await.unwrap();
        assert_eq!(response.status(), 202);
        let view: serde_json::Value = response.json().await.unwrap();
        view["id"].as_str().unwrap().to_string()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// Waits until the task reaches a terminal status, via its event stream, and returns the view.
    pub async fn wait_until_done(&self, id: &str) -> serde_json::Value {
        let mut events = self.sse(&format!("/api/v1/tasks/{id}/events"), None).await;
        loop {
            let event =
                events.next_within(Duration::from_secs(60)).await.expect("the task ends within a minute");
            if ["succeeded", "failed", "cancelled"].contains(&event.name.as_str()) {
                return self.get_json(&format!("/api/v1/tasks/{id}")).await;
            }
        }
    }

    /// A `courier worker` process on this app's Redis and prefix, with `args` added; killed when
    /// dropped.
    pub fn worker(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["worker", "--redis-url", &self.redis_url, "--prefix", &self.prefix])
            .args(args)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("courier worker starts")
    }

    /// A direct Redis connection, to look at what the server stored (on a cluster, `KEYS`
    /// asks every master).
    pub async fn redis(&self) -> courier::redis_client::Conn {
        courier::redis_client::open(&self.redis_url, false, None)
            .unwrap()
            .connect(Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// The name of one of the test queue's keys, e.g. `ready` or `events` (its stream of events).
    pub fn key(&self, name: &str) -> String {
        let queue = test_queue().unwrap_or_else(|| "default".into());
        format!("{}:{{{queue}}}:{name}", self.prefix)
    }

    /// Every field of task `id`'s record (in the test queue), as Redis holds it.
    pub async fn record_fields(&self, id: &str) -> std::collections::HashMap<String, String> {
        redis::AsyncCommands::hgetall(&mut self.redis().await, self.key(&format!("task:{id}"))).await.unwrap()
    }

    /// Deletes `field` from task `id`'s record: a record as another version may write it.
    pub async fn drop_record_field(&self, id: &str, field: &str) {
        let _: () =
            redis::AsyncCommands::hdel(&mut self.redis().await, self.key(&format!("task:{id}")), field)
                .await
                .unwrap();
    }

    /// Task `id`'s options (its `options` field), each by its name.
    pub async fn record_options(&self, id: &str) -> std::collections::HashMap<String, String> {
        let packed = &self.record_fields(id).await["options"];
        let values: Vec<Option<String>> = serde_json::from_str(packed).unwrap();
        let names = courier::queue::record::OPTION_FIELDS.iter().map(|name| name.to_string());
        names.zip(values).filter_map(|(name, value)| Some((name, value?))).collect()
    }

    /// Task `id`'s record as its readers see it: its fields, and each of its options by name.
    pub async fn record_values(&self, id: &str) -> std::collections::HashMap<String, String> {
        let mut fields = self.record_fields(id).await;
        if fields.contains_key("options") {
            fields.extend(self.record_options(id).await);
        }
        fields
    }

    /// Rewrites task `id`'s record as versions before the forty-second step stored it: each of
    /// its options (its `options` field) a field of its own.
    pub async fn store_options_apart(&self, id: &str) {
        let options = self.record_options(id).await;
        let key = self.key(&format!("task:{id}"));
        let mut rewrite = redis::pipe();
        rewrite.atomic().hdel(&key, "options");
        if !options.is_empty() {
            rewrite.hset_multiple(&key, &options.into_iter().collect::<Vec<_>>());
        }
        let () = rewrite.query_async(&mut self.redis().await).await.unwrap();
    }

    /// How many entries the test queue's ready streams hold, over every kind's lane.
    pub async fn ready_len(&self) -> u64 {
        let mut redis = self.redis().await;
        let kinds: Vec<String> = redis::AsyncCommands::smembers(&mut redis, self.key("lanes")).await.unwrap();
        let mut entries = 0;
        for kind in kinds {
            for stream in ["ready-high", "ready", "ready-low"] {
                let len: u64 = redis::AsyncCommands::xlen(&mut redis, self.key(&format!("{stream}:{kind}")))
                    .await
                    .unwrap();
                entries += len;
            }
        }
        entries
    }

    /// The name of one of the default queue's keys (where tasks of earlier versions are).
    pub fn default_key(&self, name: &str) -> String {
        format!("{}:{{default}}:{name}", self.prefix)
    }

    /// Opens an SSE stream, optionally resuming after `last_event_id`.
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut headers = HeaderMap::new();
        headers.insert("accept", "text/event-stream".parse().unwrap());
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().unwrap());
        }
        let response = self.http.get(self.url(path)).headers(headers).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader { body: Box::pin(response.bytes_stream()), buffer: String::new() }
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub name: String,
    pub data: serde_json::Value,
}

/// Reads server-sent events off a response body.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    /// The next event, `None` if the stream ends or nothing comes within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<SseEvent> {
        tokio::time::timeout(limit, self.next()).await.ok().flatten()
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event =
                    SseEvent { id: String::new(), name: "message".into(), data: serde_json::Value::Null };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    event.data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(event);
                }
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events of `task` until one has a terminal status; fails if that takes over `limit`.
    pub async fn until_task_ends(&mut self, task: &str, limit: Duration) -> Vec<SseEvent> {
        let every = self.all_until_task_ends(task, limit).await;
        every.into_iter().filter(|event| event.data["task_id"] == task).collect()
    }

    /// Every event, of any task, until one of `task` has a terminal status (that one included);
    /// fails if that takes over `limit`.
    pub async fn all_until_task_ends(&mut self, task: &str, limit: Duration) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("task {task} did not end; saw {seen:?}"));
            let done = event.data["task_id"] == task
                && ["succeeded", "failed", "cancelled"].contains(&event.name.as_str());
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

/// Asserts a problem+json answer with `status` and `type`, and returns the problem.
pub async fn assert_problem(response: reqwest::Response, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], kind, "{problem}");
    assert_eq!(problem["status"], status);
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
    problem
}

impl TestApp {
    /// Makes a token on the app's Redis and prefix, as `courier token create` does, and waits
    /// until the server honours it (it reads the tokens again within half a second).
    #[allow(dead_code)] // not every test binary that includes this file makes tokens
    pub async fn make_token(
        &self,
        name: &str,
        scopes: &[courier::auth::Scope],
        queues: &[&str],
        expires: Option<&str>,
    ) -> String {
        use courier::auth::{AuthMode, TokenRequest, Tokens};
        let minted = Tokens::new(self.redis().await, &self.prefix, AuthMode::Auto)
            .create(TokenRequest {
                name: name.into(),
                scopes: scopes.to_vec(),
                queues: queues.iter().map(|q| q.to_string()).collect(),
                expires: expires.map(str::to_string),
            })
            .await
            .unwrap();
        for _ in 0..100 {
            let me =
                self.http.get(self.url("/api/v1/auth/me")).bearer_auth(&minted.token).send().await.unwrap();
            // With access control still off, any call is `anonymous`: wait for the token's own name.
            if me.status() == 200 && me.json::<serde_json::Value>().await.unwrap()["name"] == name {
                return minted.token;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server never honoured the token `{name}`");
    }
}

/// The value of the series `name` whose labels include every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let pairs: Vec<(&str, &str)> = rest
            .strip_suffix('}')?
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key, value.trim_matches('"')))
            .collect();
        (metric == name && labels.iter().all(|label| pairs.contains(label)))
            .then(|| value.parse().ok())
            .flatten()
    })
}
