//! `courier token create|list|revoke` and `courier link-key rotate`: straight in Redis, so that
//! the first admin token needs none.

use super::{TokenInfo, TokenRequest, Tokens};
use crate::redis_client::Conn;
use crate::{
    audit::Audit,
    config::{Config, LinkKeyCommand, TokenCommand},
    embedded_redis::EmbeddedRedis,
    links::Links,
    store::rfc3339,
};
use anyhow::Context;
use std::io::Write;
use std::time::Duration;

/// Runs one token command against the Redis of `config`.
pub async fn run(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let redis = Redis::reach(config).await?;
    let outcome = run_token(config, command, redis.conn.clone()).await;
    redis.stop().await?;
    outcome
}

async fn run_token(config: &Config, command: TokenCommand, conn: Conn) -> anyhow::Result<()> {
    // The tokens of the layout before hash tags move first: a token made beside them would be
    // lost when they do.
    crate::layout::upgrade(&conn, &config.prefix).await.context("moving the keys to the tagged layout")?;
    let tokens = Tokens::new(conn.clone(), &config.prefix, config.auth);
    let audit = Audit::new(conn, &config.prefix);
    match command {
        TokenCommand::Create { name, scopes, expires } => {
            // The global `--queues` (which queues a worker serves) names the token's patterns.
            let queues = config.queues.clone();
            if queues.is_empty() {
                anyhow::bail!(
                    "name the queues the token reaches: --queues 'billing,reports-*' ('*' for all)"
                );
            }
            let minted = tokens.create(TokenRequest { name, scopes, queues, expires }).await?;
            audit.record("cli", "token.create", &minted.info.name).await;
            // The token alone on stdout, for a script to capture; the rest for the person.
            println!("{}", minted.token);
            eprintln!(
                "created token `{}` ({}; queues {}{}): it is shown this once, keep it safe",
                minted.info.name,
                join(minted.info.scopes.iter().map(|s| s.as_str())),
                minted.info.queues.join(","),
                minted.info.expires_ms.map(|ms| format!("; expires {}", rfc3339(ms))).unwrap_or_default()
            );
        }
        TokenCommand::List => print_list(&tokens.list().await?)?,
        TokenCommand::Revoke { name } => {
            tokens.revoke(&name).await?;
            audit.record("cli", "token.revoke", &name).await;
            eprintln!("revoked token `{name}`: every server refuses it within a second");
        }
    }
    Ok(())
}

/// Runs one link-key command against the Redis of `config`.
pub async fn run_link_key(config: &Config, command: LinkKeyCommand) -> anyhow::Result<()> {
    let redis = Redis::reach(config).await?;
    let outcome = rotate_link_key(config, command, redis.conn.clone()).await;
    redis.stop().await?;
    outcome
}

async fn rotate_link_key(config: &Config, command: LinkKeyCommand, conn: Conn) -> anyhow::Result<()> {
    let LinkKeyCommand::Rotate = command;
    let links = Links::open(conn.clone(), &config.prefix, config.result_link_ttl).await?;
    let id = links.rotate().await?;
    Audit::new(conn, &config.prefix).record("cli", "link-key.rotate", &id).await;
    eprintln!("key `{id}` signs result links from now on; links signed before work until they expire");
    Ok(())
}

/// The Redis of `config`: `--redis-url`; else the embedded redis-server of a `courier serve`
/// running on the same data directory; else that one, started for this command alone.
struct Redis {
    conn: Conn,
    started: Option<EmbeddedRedis>,
}

impl Redis {
    async fn reach(config: &Config) -> anyhow::Result<Redis> {
        // `--queues` holds a token's patterns here, not the queues a worker serves.
        let checked = Config { queues: Vec::new(), ..config.clone() };
        checked.validate().map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
        let dir = config.data_dir.join("redis");
        let (url, started) = match &config.redis_url {
            Some(url) => (url.expose().to_string(), None),
            None => match EmbeddedRedis::running_url(&dir).await {
                Some(url) => (url, None),
                None => {
                    let redis = EmbeddedRedis::start(&dir).await.with_context(|| {
                        format!("starting the embedded redis-server in {}", dir.display())
                    })?;
                    (redis.url(), Some(redis))
                }
            },
        };
        let client = crate::redis_client::open(&url, config.redis_cluster, config.redis_ca_cert.as_deref())?;
        let conn = client.connect(Duration::from_secs(10)).await.context("connecting to Redis")?;
        Ok(Redis { conn, started })
    }

    /// Stops the redis-server this command started, if it did (flushing what it wrote).
    async fn stop(self) -> anyhow::Result<()> {
        match self.started {
            Some(redis) => redis.stop().await.context("stopping the embedded redis-server"),
            None => Ok(()),
        }
    }
}

/// The tokens as a table: name, scopes, queues, created, last used, expires.
fn print_list(tokens: &[TokenInfo]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<32} {:<24} {:<25} {:<25} EXPIRES",
        "NAME", "SCOPES", "QUEUES", "CREATED", "LAST USED"
    )?;
    for token in tokens {
        let never = || "-".to_string();
        writeln!(
            out,
            "{:<24} {:<32} {:<24} {:<25} {:<25} {}",
            token.name,
            join(token.scopes.iter().map(|s| s.as_str())),
            token.queues.join(","),
            rfc3339(token.created_ms),
            token.last_used_ms.map(rfc3339).unwrap_or_else(never),
            token.expires_ms.map(rfc3339).unwrap_or_else(never),
        )?;
    }
    Ok(())
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}
