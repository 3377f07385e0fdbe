//! Command-line flags and `COURIER_*` environment variables, parsed and validated once at start.

use clap::{Args, Parser, Subcommand};
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// The most threads `--threads` takes.
const MAX_THREADS: usize = 1024;

/// `courier [serve|worker] [OPTIONS]`.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about = "Courier: async tasks on Redis, pushed live to the browser")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

impl Cli {
    /// The threads this process runs on (`serve`: its runtime's; `worker`: its workers', each on
    /// a runtime of one thread): `--threads`, else one for `worker` (a single
    /// thread spends a third less CPU a task than one a core where the worker shares the cores
    /// with Redis: docs/benchmark-notes.md, "Nineteenth step"), else one per core. `Err` names
    /// the flag when it is out of range (checked before the runtime starts, so before the rest).
    pub fn threads(&self) -> Result<usize, String> {
        check_threads(self.config.threads)?;
        Ok(self.config.threads.unwrap_or_else(|| match self.command {
            Some(Command::Worker) => 1,
            _ => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }))
    }
}

/// `--threads`, when given, within 1 and `MAX_THREADS`.
fn check_threads(threads: Option<usize>) -> Result<(), String> {
    match threads {
        Some(threads) if !(1..=MAX_THREADS).contains(&threads) => {
            Err(format!("--threads must be between 1 and {MAX_THREADS}, not {threads}"))
        }
        _ => Ok(()),
    }
}

/// What this process runs.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// UI, REST API, server-sent events and (unless --concurrency 0) workers. The default.
    Serve,
    /// Workers only, no HTTP.
    Worker,
    /// Access tokens: create, list, revoke (straight in Redis, so the first needs no token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The keys that sign result links.
    #[command(subcommand)]
    LinkKey(LinkKeyCommand),
}

/// `courier link-key …`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum LinkKeyCommand {
    /// Makes a new key sign result links; links signed before keep working until they expire.
    Rotate,
}

/// `courier token …`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum TokenCommand {
    /// Makes a token and prints it, alone, on standard output: the only time it is shown. The
    /// queues it reaches are given with `--queues`: comma-separated names or prefixes ending in
    /// `*` (`billing,reports-*`); `*` is every queue.
    Create {
        /// A unique name (what lists, logs and the audit trail show).
        #[arg(long)]
        name: String,
        /// Comma-separated: submit, read, work, operate, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<crate::auth::Scope>,
        /// How long it works (`90d`, `12h`); forever if unset.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Lists the tokens: name, scopes, queues, created, last used, expiry (never the token).
    List,
    /// Revokes a token: every server refuses it within a second.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Everything a Courier process can be told; each flag has an env var and a sane default.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free one).
    #[arg(long, env = "COURIER_ADDR", default_value = "127.0.0.1:3000", global = true)]
    pub addr: SocketAddr,

    /// Where `courier worker` serves `/healthz` and `/metrics` (Prometheus text) for its
    /// orchestrator and scraper, e.g. 127.0.0.1:9100 (port 0 picks a free one). Unset: nothing is
    /// served. No access control: bind it where only they reach. (`serve` has both on --addr.)
    #[arg(long, env = "COURIER_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,

    /// A PEM file with the certificate chain to serve HTTPS with (the server's own certificate
    /// first, then any intermediates); needs --tls-key. Unset: plain HTTP.
    #[arg(long, env = "COURIER_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// A PEM file with the private key of --tls-cert's certificate.
    #[arg(long, env = "COURIER_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Redis URL (redis:// or rediss://), or several separated by commas: the seed nodes of a
    /// Redis Cluster. Unset: `serve` starts its own redis-server.
    #[arg(long, env = "COURIER_REDIS_URL", global = true)]
    pub redis_url: Option<RedisUrl>,

    /// The Redis URL is a Redis Cluster's node (implied when the URL lists several): queues are
    /// spread over the cluster's masters, one slot each.
    #[arg(long, env = "COURIER_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// Answer a submission only once a replica of Redis holds it too (`WAIT 1` before the 202),
    /// so that a primary that fails right after the answer loses no accepted task. Redis
    /// replicates asynchronously: without this, the writes of the last moments before a
    /// failover may be lost. Costs a round trip to a replica per group of submissions.
    #[arg(long, env = "COURIER_DURABLE_SUBMIT", global = true)]
    pub durable_submit: bool,

    /// How long a durable submission waits for a replica; past it the answer is `503` with
    /// Retry-After (the task is on the primary, not yet confirmed: retry with the same
    /// Idempotency-Key).
    #[arg(long, env = "COURIER_DURABLE_SUBMIT_TIMEOUT", default_value = "1s", value_parser = parse_duration, global = true)]
    pub durable_submit_timeout: Duration,

    /// A PEM file with the CA that signed the rediss:// server's certificate (a private CA).
    /// Unset: the system's trusted roots.
    #[arg(long, env = "COURIER_REDIS_CA_CERT", global = true)]
    pub redis_ca_cert: Option<PathBuf>,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "COURIER_PREFIX", default_value = "courier", value_parser = parse_prefix, global = true)]
    pub prefix: String,

    /// Tasks this process runs at once; 0 runs no workers here.
    #[arg(long, env = "COURIER_CONCURRENCY", default_value_t = 16, global = true)]
    pub concurrency: usize,

    /// Threads this process runs on. `serve`: its async runtime's, one per core unless set.
    /// `worker`: one unless set (it waits on Redis and on endpoints, and its handlers run
    /// CPU-heavy work on threads of their own); with more, as many workers side by side, each on
    /// a thread of its own with its own Redis connections and its share of `--concurrency`, each
    /// but the first standing by until the one before it stays full.
    #[arg(long, env = "COURIER_THREADS", global = true)]
    pub threads: Option<usize>,

    /// The queues this process's workers serve, comma-separated, each with an optional weight
    /// that shares the slots between busy queues (`reports:3,default:1`). Unset: every queue.
    #[arg(long, env = "COURIER_QUEUES", value_delimiter = ',', global = true)]
    pub queues: Vec<String>,

    /// How long a worker holds a task without renewing before another may take it over.
    #[arg(long, env = "COURIER_LEASE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub lease: Duration,

    /// How long finished tasks, their payloads and results are kept.
    #[arg(long, env = "COURIER_RETENTION", default_value = "24h", value_parser = parse_duration, global = true)]
    pub retention: Duration,

    /// How long a succeeded task's payload is kept after it ends, when that should be shorter than
    /// `--retention` (`0s`: released as the task succeeds, so Redis reuses its memory). A payload
    /// that is the task's result, or small enough to live in its record, stays with them; a
    /// failed or cancelled task keeps its payload. Unset: `--retention`.
    #[arg(long, env = "COURIER_PAYLOAD_RETENTION", value_parser = parse_duration, global = true)]
    pub payload_retention: Option<Duration>,

    /// How long failed tasks stay in the dead letters.
    #[arg(long, env = "COURIER_DEAD_RETENTION", default_value = "7d", value_parser = parse_duration, global = true)]
    pub dead_retention: Duration,

    /// About how many events each queue's event stream keeps (a client resuming from before the
    /// oldest kept is told to reload with a `reset` event).
    #[arg(long, env = "COURIER_EVENTS_MAX", default_value_t = 100_000, global = true)]
    pub events_max: usize,

    /// Server-sent event streams this process serves at once; past it, `503` with Retry-After.
    #[arg(long, env = "COURIER_MAX_SSE_CLIENTS", default_value_t = 20_000, global = true)]
    pub max_sse_clients: usize,

    /// Largest accepted payload, e.g. 64MiB.
    #[arg(long, env = "COURIER_MAX_PAYLOAD", default_value = "64MiB", value_parser = parse_size, global = true)]
    pub max_payload: u64,

    /// Bytes of request bodies this process holds at once; past it, `503` with Retry-After.
    #[arg(long, env = "COURIER_MAX_BODY_MEMORY", default_value = "256MiB", value_parser = parse_size, global = true)]
    pub max_body_memory: u64,

    /// Attempts a task gets when neither it nor its kind says otherwise.
    #[arg(long, env = "COURIER_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100), global = true)]
    pub max_attempts: u32,

    /// Pause before the first retry; doubles with each failed attempt.
    #[arg(long, env = "COURIER_RETRY_BASE", default_value = "1s", value_parser = parse_duration, global = true)]
    pub retry_base: Duration,

    /// The longest pause between retries.
    #[arg(long, env = "COURIER_RETRY_CAP", default_value = "5m", value_parser = parse_duration, global = true)]
    pub retry_cap: Duration,

    /// How long in-flight tasks may take to finish after a shutdown signal.
    #[arg(long, env = "COURIER_GRACE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub grace: Duration,

    /// A TOML file declaring topic subscriptions (default: `courier.toml`, if present).
    #[arg(long, env = "COURIER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Where the embedded redis-server keeps its data (under `redis/`).
    #[arg(long, env = "COURIER_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// The built site (wasm, JS, CSS) that cargo-leptos writes.
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site", global = true)]
    pub site_root: PathBuf,

    /// The URL clients reach this server by (a name, or behind a proxy): its host is answered
    /// in `Host`, and its pages may make unsafe requests.
    #[arg(long, env = "COURIER_PUBLIC_URL", global = true)]
    pub public_url: Option<Origin>,

    /// Origins of front ends served elsewhere that may call the API (CORS), comma-separated:
    /// `scheme://host[:port]`.
    #[arg(long, env = "COURIER_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<Origin>,

    /// Longest a client may take to send a request's headers; then the connection is closed.
    #[arg(long, env = "COURIER_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout, global = true)]
    pub header_timeout: Duration,

    /// Longest an API request may take to be answered (`503`); a `Prefer: wait=N` submission
    /// gets N seconds more.
    #[arg(long, env = "COURIER_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_timeout, global = true)]
    pub request_timeout: Duration,

    /// Longest a request body may pause between two chunks (`408`).
    #[arg(long, env = "COURIER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout, global = true)]
    pub body_timeout: Duration,

    /// Submissions that may wait for their result (`Prefer: wait`) at once; past it, the usual
    /// `202` at once.
    #[arg(long, env = "COURIER_MAX_WAITING", default_value_t = 1000, global = true)]
    pub max_waiting: usize,

    /// When API calls need a token: `auto`, as soon as one exists (`courier token create`);
    /// `required`, always.
    #[arg(long, env = "COURIER_AUTH", value_enum, default_value = "auto", global = true)]
    pub auth: crate::auth::AuthMode,

    /// Serve a non-loopback address although no token exists, so that anyone who reaches the
    /// port may do anything.
    #[arg(long, env = "COURIER_INSECURE_NO_AUTH", global = true)]
    pub insecure_no_auth: bool,

    /// Tasks each token may submit per second, across every server; past it `429` with
    /// Retry-After. 0: no limit.
    #[arg(long, env = "COURIER_RATE_LIMIT", default_value_t = 0, global = true)]
    pub rate_limit: u64,

    /// How long a signed result link works.
    #[arg(long, env = "COURIER_RESULT_LINK_TTL", default_value = "15m", value_parser = parse_timeout, global = true)]
    pub result_link_ttl: Duration,

    /// How log lines are written (to standard output, filtered by `RUST_LOG`): `text` for people,
    /// `json` one object a line, each with the fields of the spans it is in (an attempt's lines
    /// carry `task_id` and `trace_id`).
    #[arg(long, env = "COURIER_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Where spans are exported over OTLP/HTTP (protobuf), e.g. http://127.0.0.1:4318 (`/v1/traces`
    /// is added unless the URL ends with it). Unset: no spans are exported. The `OTEL_*`
    /// variables of the OTLP exporter (headers, timeout, service name) apply.
    #[arg(long, env = "COURIER_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint, global = true)]
    pub otlp_endpoint: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, with the fields of the spans they are in.
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `span`, `message`, and the
    /// fields of the line and of every span it is in.
    Json,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Cli::parse_from(["courier"]).config
    }

    /// This worker configuration shared among `threads` workers of one process: the slots
    /// (`concurrency`) split as evenly as they go, never a worker without one (so fewer workers
    /// than threads when there are fewer slots), and `/healthz` and `/metrics` served by the
    /// first alone (the metrics are the process's, whichever worker records them).
    pub fn shared_among(&self, threads: usize) -> Vec<Config> {
        let workers = threads.clamp(1, self.concurrency.max(1));
        (0..workers)
            .map(|n| Config {
                concurrency: self.concurrency / workers + usize::from(n < self.concurrency % workers),
                metrics_addr: self.metrics_addr.filter(|_| n == 0),
                ..self.clone()
            })
            .collect()
    }

    /// Checks the settings together, before anything starts: the error names the flag and says
    /// what it takes. (Each flag's own syntax is checked as it is parsed.)
    pub fn validate(&self) -> Result<(), String> {
        const SECOND: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(86_400);
        // Redis takes expiry times in ms as 64-bit numbers; ten years stays far from overflow.
        const TEN_YEARS: Duration = Duration::from_secs(3_650 * 86_400);
        let within =
            |flag: &str, value: Duration, min: Duration, max: Duration, min_text: &str, max_text: &str| {
                if value < min || value > max {
                    Err(format!("--{flag} must be between {min_text} and {max_text}, not {}", show(value)))
                } else {
                    Ok(())
                }
            };
        within("lease", self.lease, Duration::from_millis(100), DAY, "100ms", "1d")?;
        within("retention", self.retention, SECOND, TEN_YEARS, "1s", "3650d")?;
        within("dead-retention", self.dead_retention, SECOND, TEN_YEARS, "1s", "3650d")?;
        if let Some(payloads) = self.payload_retention.filter(|&p| p > self.retention) {
            return Err(format!(
                "--payload-retention ({}) must not be longer than --retention ({})",
                show(payloads),
                show(self.retention)
            ));
        }
        within("retry-base", self.retry_base, Duration::ZERO, DAY, "0s", "1d")?;
        within("retry-cap", self.retry_cap, Duration::ZERO, DAY, "0s", "1d")?;
        within("grace", self.grace, Duration::ZERO, DAY, "0s", "1d")?;
        within("header-timeout", self.header_timeout, Duration::from_millis(1), DAY, "1ms", "1d")?;
        within("request-timeout", self.request_timeout, Duration::from_millis(1), DAY, "1ms", "1d")?;
        within("body-timeout", self.body_timeout, Duration::from_millis(1), DAY, "1ms", "1d")?;
        if self.retry_base > self.retry_cap {
            return Err(format!(
                "--retry-base ({}) must not be longer than --retry-cap ({})",
                show(self.retry_base),
                show(self.retry_cap)
            ));
        }
        if !(1..=4 << 30).contains(&self.max_payload) {
            return Err(format!("--max-payload must be between 1B and 4GiB, not {}", self.max_payload));
        }
        if self.max_body_memory < self.max_payload {
            return Err(format!(
                "--max-body-memory ({} bytes) must be at least --max-payload ({} bytes): a body of the largest size must fit",
                self.max_body_memory, self.max_payload
            ));
        }
        let count = |flag: &str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{flag} must be between {min} and {max}, not {value}"))
            }
        };
        count("concurrency", self.concurrency, 0, 10_000)?;
        check_threads(self.threads)?;
        crate::queue::parse_choice(&self.queues).map_err(|e| format!("--queues: {e}"))?;
        count("events-max", self.events_max, 100, 100_000_000)?;
        count("max-sse-clients", self.max_sse_clients, 1, 1_000_000)?;
        count("max-waiting", self.max_waiting, 0, 1_000_000)?;
        if self.rate_limit > 1_000_000 {
            return Err(format!("--rate-limit must be between 0 and 1000000, not {}", self.rate_limit));
        }
        within("result-link-ttl", self.result_link_ttl, SECOND, Duration::from_secs(7 * 86_400), "1s", "7d")?;
        let pair = "HTTPS takes a certificate and its private key";
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(format!("--tls-cert needs --tls-key: {pair}")),
            (None, Some(_)) => return Err(format!("--tls-key needs --tls-cert: {pair}")),
            _ => {}
        }
        within(
            "durable-submit-timeout",
            self.durable_submit_timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
            "1ms",
            "60s",
        )?;
        if self.redis_cluster && self.redis_url.is_none() {
            return Err("--redis-cluster needs a --redis-url: the embedded redis-server is one node".into());
        }
        if self.durable_submit && self.redis_url.is_none() {
            return Err(
                "--durable-submit needs a --redis-url with a replica: the embedded redis-server has none"
                    .into(),
            );
        }
        let tls = self.redis_url.as_ref().is_some_and(|url| url.expose().starts_with("rediss://"));
        if self.redis_ca_cert.is_some() && !tls {
            return Err("--redis-ca-cert needs a rediss:// --redis-url: a CA only applies to TLS".into());
        }
        Ok(())
    }
}

/// A duration as the flags take it (`1500ms`, `30s`).
fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// A Redis URL; its `Debug` and `Display` hide any password.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL itself, password included: hand it to the Redis client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl RedisUrl {
    /// Whether the URL lists several nodes (those of a Redis Cluster).
    pub fn lists_several(&self) -> bool {
        self.0.contains(',')
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scheme_ok = |url: &str| {
            let url = url.trim();
            url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")
        };
        if s.split(',').all(scheme_ok) {
            Ok(RedisUrl(s.to_string()))
        } else {
            Err("must start with redis://, rediss:// or redis+unix:// (each of a comma-separated list)"
                .into())
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep scheme and host, drop credentials: `redis://user:pw@host` prints `redis://…@host`.
        for (i, url) in self.0.split(',').enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match (url.split_once("://"), url.rsplit_once('@')) {
                (Some((scheme, _)), Some((_, host))) => write!(f, "{}://…@{host}", scheme.trim())?,
                _ => f.write_str(url)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// A web origin, `scheme://host[:port]` (http or https), lower case and without its scheme's
/// default port: the form browsers send in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The host, lower case; an IPv6 address keeps its brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when it is not the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The scheme's default port: 443 for https, 80 for http.
    pub fn default_port(&self) -> u16 {
        if self.scheme == "https" { 443 } else { 80 }
    }
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape =
            || format!("`{s}` is not an origin like https://app.example.com or http://localhost:4200");
        let (scheme, rest) = s.trim().split_once("://").ok_or_else(shape)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{s}`: only http and https origins"));
        }
        // A trailing slash is forgiven; a path, query or user is not part of an origin.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', '*', ' ']) {
            return Err(shape());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, Some(port.parse::<u16>().map_err(|_| format!("`{s}`: `{port}` is not a port"))?))
            }
            _ => (authority, None),
        };
        let valid_host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => {
                !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            }
        };
        if !valid_host {
            return Err(shape());
        }
        let mut origin = Origin { scheme, host: host.to_ascii_lowercase(), port };
        if origin.port == Some(origin.default_port()) {
            origin.port = None;
        }
        Ok(origin)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// An OTLP/HTTP traces URL: an http(s) base URL gets `/v1/traces`; one ending in it is kept.
fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{s}` is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{s}`: an OTLP endpoint takes no query or fragment"));
    }
    let base = url.as_str().trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") })
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(s.to_string()) } else { Err("1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'".into()) }
}

/// Parses `250ms`, `30s`, `5m`, `24h`, `7d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a duration like 30s, 5m or 24h"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!("unknown unit `{other}` in `{s}`: use ms, s, m, h or d"));
        }
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses a duration as [`parse_duration`] does, refusing zero.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let duration = parse_duration(s)?;
    if duration.is_zero() { Err("must be longer than zero".into()) } else { Ok(duration) }
}

/// Parses `1024`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB, as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size like 64MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!("unknown unit `{other}` in `{s}`: use B, KiB, MiB or GiB"));
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn redis_urls_never_print_their_password() {
        let url: RedisUrl = "redis://app:hunter2@cache:6379/0".parse().unwrap();
        assert_eq!(url.to_string(), "redis://…@cache:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!("http://x".parse::<RedisUrl>().is_err());
        let list: RedisUrl = "redis://a:pw1@n1:7000,redis://:pw2@n2:7001".parse().unwrap();
        assert_eq!(list.to_string(), "redis://…@n1:7000,redis://…@n2:7001");
        assert!(list.lists_several());
        assert!("redis://n1:7000,http://n2".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn defaults_match_the_readme() {
        let config = Config::defaults();
        assert_eq!(config.addr.to_string(), "127.0.0.1:3000");
        assert_eq!(config.prefix, "courier");
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(config.max_payload, 64 << 20);
    }

    #[test]
    fn origins_parse_to_the_form_browsers_send() {
        let origin = |s: &str| s.parse::<Origin>().map(|o| o.to_string());
        assert_eq!(origin("https://App.Example.com"), Ok("https://app.example.com".into()));
        assert_eq!(origin("https://app.example.com:443/"), Ok("https://app.example.com".into()));
        assert_eq!(origin("http://localhost:4200"), Ok("http://localhost:4200".into()));
        assert_eq!(origin("http://[::1]:8080"), Ok("http://[::1]:8080".into()));
        for bad in
            ["app.example.com", "ftp://x", "https://", "https://a/b", "https://a:x", "*", "https://u@a"]
        {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_cors_origin_stops_the_process_naming_the_flag() {
        let error =
            Cli::try_parse_from(["courier", "--cors-origins", "https://ok.example,nope"]).unwrap_err();
        assert!(error.to_string().contains("--cors-origins"), "{error}");
        let cli = Cli::parse_from(["courier", "--cors-origins", "https://a.example,http://localhost:4200"]);
        assert_eq!(cli.config.cors_origins.len(), 2);
        assert!(Cli::try_parse_from(["courier", "--request-timeout", "0s"]).is_err());
    }

    #[test]
    fn the_defaults_are_valid_and_every_bad_setting_names_its_flag() {
        assert_eq!(Config::defaults().validate(), Ok(()));
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 13] = [
            ("--lease", |c| c.lease = Duration::ZERO),
            ("--retention", |c| c.retention = Duration::ZERO),
            ("--retention", |c| c.retention = Duration::from_secs(u64::MAX / 2000)),
            ("--dead-retention", |c| c.dead_retention = Duration::from_millis(10)),
            ("--payload-retention", |c| c.payload_retention = Some(c.retention + Duration::from_secs(1))),
            ("--retry-base", |c| c.retry_base = c.retry_cap + Duration::from_secs(1)),
            ("--max-payload", |c| c.max_payload = 0),
            ("--max-body-memory", |c| c.max_body_memory = c.max_payload - 1),
            ("--concurrency", |c| c.concurrency = 1_000_000),
            ("--threads", |c| c.threads = Some(0)),
            ("--threads", |c| c.threads = Some(MAX_THREADS + 1)),
            ("--events-max", |c| c.events_max = 0),
            ("--durable-submit-timeout", |c| c.durable_submit_timeout = Duration::ZERO),
        ];
        for (flag, spoil) in cases {
            let mut config = Config::defaults();
            spoil(&mut config);
            let error = config.validate().expect_err(flag);
            assert!(error.starts_with(flag), "{flag}: {error}");
        }
    }

    #[test]
    fn a_tls_certificate_without_its_key_or_a_key_alone_is_refused_naming_the_flag() {
        let cli = Cli::parse_from(["courier", "--tls-cert", "cert.pem"]);
        let error = cli.config.validate().expect_err("a certificate alone");
        assert!(error.starts_with("--tls-cert") && error.contains("--tls-key"), "{error}");
        let cli = Cli::parse_from(["courier", "--tls-key", "key.pem"]);
        let error = cli.config.validate().expect_err("a key alone");
        assert!(error.starts_with("--tls-key") && error.contains("--tls-cert"), "{error}");
        let cli = Cli::parse_from(["courier", "serve", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
        assert_eq!(cli.config.validate(), Ok(()));
        assert_eq!(cli.config.tls_cert, Some(PathBuf::from("cert.pem")));
    }

    #[test]
    fn logs_are_text_unless_json_is_asked_for_and_an_otlp_endpoint_is_a_traces_url() {
        let config = Config::defaults();
        assert_eq!((config.log_format, config.otlp_endpoint), (LogFormat::Text, None));
        let cli =
            Cli::parse_from(["courier", "--log-format", "json", "--otlp-endpoint", "http://127.0.0.1:4318"]);
        assert_eq!(cli.config.log_format, LogFormat::Json);
        assert_eq!(cli.config.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        for (given, used) in [
            ("https://otel.example/", "https://otel.example/v1/traces"),
            ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
            ("http://otel.example:4318/tenant-a", "http://otel.example:4318/tenant-a/v1/traces"),
        ] {
            assert_eq!(parse_otlp_endpoint(given).as_deref(), Ok(used), "{given}");
        }
        for bad in ["127.0.0.1:4318", "ftp://otel.example", "http://otel.example/?a=1", "logs"] {
            assert!(parse_otlp_endpoint(bad).is_err(), "{bad}");
        }
        let error = Cli::try_parse_from(["courier", "--log-format", "yaml"]).unwrap_err();
        assert!(error.to_string().contains("--log-format"), "{error}");
    }

    #[test]
    fn a_durable_submit_needs_a_redis_of_its_own() {
        let cli = Cli::parse_from(["courier", "serve", "--durable-submit"]);
        let error = cli.config.validate().expect_err("the embedded redis-server has no replica");
        assert!(error.starts_with("--durable-submit") && error.contains("--redis-url"), "{error}");
        let cli = Cli::parse_from([
            "courier",
            "--durable-submit",
            "--durable-submit-timeout",
            "250ms",
            "--redis-url",
            "redis://127.0.0.1:7000",
        ]);
        assert_eq!(cli.config.validate(), Ok(()));
        assert!(cli.config.durable_submit);
        assert_eq!(cli.config.durable_submit_timeout, Duration::from_millis(250));
        assert!(!Config::defaults().durable_submit);
    }

    #[test]
    fn a_cluster_needs_a_redis_url_and_may_be_named_by_several() {
        let cli = Cli::parse_from(["courier", "serve", "--redis-cluster"]);
        let error = cli.config.validate().expect_err("the embedded redis-server is one node");
        assert!(error.starts_with("--redis-cluster") && error.contains("--redis-url"), "{error}");
        let cli = Cli::parse_from(["courier", "--redis-url", "redis://10.0.0.1:7000,redis://10.0.0.2:7000"]);
        assert_eq!(cli.config.validate(), Ok(()));
        assert!(cli.config.redis_url.as_ref().is_some_and(RedisUrl::lists_several));
        assert!(!Config::defaults().redis_cluster);
    }

    #[test]
    fn subcommands_and_flags_parse_in_either_order() {
        let cli = Cli::parse_from(["courier", "worker", "--concurrency", "3"]);
        assert_eq!(cli.command, Some(Command::Worker));
        assert_eq!(cli.config.concurrency, 3);
        let cli = Cli::parse_from(["courier", "--prefix", "t1", "serve"]);
        assert_eq!(cli.command, Some(Command::Serve));
        assert_eq!(cli.config.prefix, "t1");
    }

    #[test]
    fn a_worker_runs_on_one_thread_and_the_rest_on_one_a_core_unless_told() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(Cli::parse_from(["courier", "worker"]).threads(), Ok(1));
        assert_eq!(Cli::parse_from(["courier", "serve"]).threads(), Ok(cores));
        assert_eq!(Cli::parse_from(["courier"]).threads(), Ok(cores));
        assert_eq!(Cli::parse_from(["courier", "worker", "--threads", "4"]).threads(), Ok(4));
        assert_eq!(Cli::parse_from(["courier", "--threads", "1", "serve"]).threads(), Ok(1));
        for bad in ["0", "1025"] {
            let error = Cli::parse_from(["courier", "worker", "--threads", bad]).threads().unwrap_err();
            assert!(error.starts_with("--threads") && error.ends_with(bad), "{error}");
        }
        let error = Cli::try_parse_from(["courier", "worker", "--threads", "many"]).unwrap_err();
        assert!(error.to_string().contains("--threads"), "{error}");
    }

    #[test]
    fn a_workers_slots_are_shared_among_its_threads_none_without_one() {
        let slots = |args: &[&str], threads: usize| {
            let config = Cli::parse_from([&["courier", "worker"], args].concat()).config;
            config.shared_among(threads).iter().map(|c| c.concurrency).collect::<Vec<_>>()
        };
        assert_eq!(slots(&["--concurrency", "50"], 2), [25, 25]);
        assert_eq!(slots(&["--concurrency", "51"], 2), [26, 25]);
        assert_eq!(slots(&["--concurrency", "10"], 4), [3, 3, 2, 2]);
        assert_eq!(slots(&["--concurrency", "3"], 8), [1, 1, 1]);
        assert_eq!(slots(&["--concurrency", "0"], 2), [0]);
        assert_eq!(slots(&[], 1), [16]);
        let config =
            Cli::parse_from(["courier", "worker", "--metrics-addr", "127.0.0.1:0", "--prefix", "p"]).config;
        let shares = config.shared_among(2);
        assert_eq!(shares[0].metrics_addr, config.metrics_addr);
        assert_eq!(shares[1].metrics_addr, None, "one process, one /metrics");
        assert!(shares.iter().all(|c| c.prefix == "p"), "the rest is the process's");
    }
}
