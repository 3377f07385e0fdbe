//! `courier token create|list|revoke`: the tokens, straight in Redis, so that the first admin
//! token needs none.

use super::{TokenInfo, TokenRequest, Tokens};
use crate::{audit::Audit, config::Config, config::TokenCommand, store::rfc3339};
use anyhow::Context;
use redis::aio::ConnectionManager;
use std::io::Write;

/// Runs one token command against the Redis of `config`.
pub async fn run(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
    let url = redis_url(config).await?;
    let client = crate::redis_client::open(&url, config.redis_ca_cert.as_deref())?;
    let conn = ConnectionManager::new(client).await.context("connecting to Redis")?;
    let tokens = Tokens::new(conn.clone(), &config.prefix, config.auth);
    let audit = Audit::new(conn, &config.prefix);
    match command {
        TokenCommand::Create { name, scopes, queues, expires } => {
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

/// The Redis to use: `--redis-url`, else the embedded one `courier serve` runs for the data dir.
async fn redis_url(config: &Config) -> anyhow::Result<String> {
    if let Some(url) = &config.redis_url {
        return Ok(url.expose().to_string());
    }
    anyhow::bail!("`courier token` needs a Redis: set COURIER_REDIS_URL or --redis-url")
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
