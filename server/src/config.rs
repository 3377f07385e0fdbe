//! Command-line flags and `COURIER_*` environment variables, parsed and validated once at start.

use clap::{Args, Parser, Subcommand};
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

/// `courier [serve|worker] [OPTIONS]`.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about = "Courier: async tasks on Redis, pushed live to the browser")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// What this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// UI, REST API, server-sent events and (unless --concurrency 0) workers. The default.
    Serve,
    /// Workers only, no HTTP.
    Worker,
}

/// Everything a Courier process can be told; each flag has an env var and a sane default.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free one).
    #[arg(long, env = "COURIER_ADDR", default_value = "127.0.0.1:3000", global = true)]
    pub addr: SocketAddr,

    /// Redis URL (redis:// or rediss://). Unset: `serve` starts its own redis-server.
    #[arg(long, env = "COURIER_REDIS_URL", global = true)]
    pub redis_url: Option<RedisUrl>,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "COURIER_PREFIX", default_value = "courier", value_parser = parse_prefix, global = true)]
    pub prefix: String,

    /// Tasks this process runs at once; 0 runs no workers here.
    #[arg(long, env = "COURIER_CONCURRENCY", default_value_t = 16, global = true)]
    pub concurrency: usize,

    /// How long a worker holds a task without renewing before another may take it over.
    #[arg(long, env = "COURIER_LEASE", default_value = "30s", value_parser = parse_duration, global = true)]
    pub lease: Duration,

    /// How long finished tasks, their payloads and results are kept.
    #[arg(long, env = "COURIER_RETENTION", default_value = "24h", value_parser = parse_duration, global = true)]
    pub retention: Duration,

    /// How long failed tasks stay in the dead letters.
    #[arg(long, env = "COURIER_DEAD_RETENTION", default_value = "7d", value_parser = parse_duration, global = true)]
    pub dead_retention: Duration,

    /// Largest accepted payload, e.g. 64MiB.
    #[arg(long, env = "COURIER_MAX_PAYLOAD", default_value = "64MiB", value_parser = parse_size, global = true)]
    pub max_payload: u64,

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
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Cli::parse_from(["courier"]).config
    }
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

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("redis://") || s.starts_with("rediss://") || s.starts_with("redis+unix://") {
            Ok(RedisUrl(s.to_string()))
        } else {
            Err("must start with redis://, rediss:// or redis+unix://".into())
        }
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep scheme and host, drop credentials: `redis://user:pw@host` prints `redis://…@host`.
        match (self.0.split_once("://"), self.0.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => write!(f, "{scheme}://…@{host}"),
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
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
    fn subcommands_and_flags_parse_in_either_order() {
        let cli = Cli::parse_from(["courier", "worker", "--concurrency", "3"]);
        assert_eq!(cli.command, Some(Command::Worker));
        assert_eq!(cli.config.concurrency, 3);
        let cli = Cli::parse_from(["courier", "--prefix", "t1", "serve"]);
        assert_eq!(cli.command, Some(Command::Serve));
        assert_eq!(cli.config.prefix, "t1");
    }
}
