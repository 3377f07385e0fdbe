//! Signed result links: a task's result (or payload) handed to a browser or another service as a
//! URL that works without a token until it expires. The same keys seal the tokens of pulled
//! leases (`queue/pull.rs`), which name where their lease is: sealed, no part of one can be
//! changed to name another task's entry or lane.
//!
//! A link carries `?expires=<unix s>&kid=<key id>&sig=<base64url HMAC-SHA256>` over
//! `"{method}\n{path}\n{expires}"`. The keys live in the hash `{prefix}:link-keys` (key id →
//! `{created ms}:{base64url key}`), shared by every process: the newest signs, every one still
//! kept verifies, so rotating (`courier link-key rotate`) keeps older links working until they
//! expire. A key stops being kept [`KEEP_RETIRED`] after a newer one took over: longer than any
//! link it signed can live.

use crate::redis_client::Conn;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use redis::AsyncCommands;
use sha2::Sha256;
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

/// How long a retired key keeps verifying: the longest `--result-link-ttl` and a day more (the
/// longest lease whose token it sealed).
const KEEP_RETIRED: Duration = Duration::from_secs(8 * 86_400);
/// How often every process reads the keys again.
const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// How often a link with an unknown key id may make this process read the keys again.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is incomplete: it needs expires, kid and sig")]
    Incomplete,
    #[error("the link has expired")]
    Expired,
    #[error("the link's signature does not match")]
    Forged,
}

/// One signing key.
#[derive(Clone)]
struct Key {
    id: String,
    created_ms: u64,
    secret: Vec<u8>,
}

/// The keys, as last read.
#[derive(Default)]
struct Ring {
    keys: Vec<Key>,
    read_at: Option<Instant>,
}

/// Signs and verifies result links; cheap to clone.
#[derive(Clone)]
pub struct Links {
    conn: Conn,
    /// `{prefix}:link-keys`, used alone, so with no hash tag (`layout.rs`).
    key: Arc<str>,
    ttl: Duration,
    ring: Arc<RwLock<Ring>>,
}

impl Links {
    /// The links under `prefix`, valid for `ttl`; makes the first key if there is none.
    pub async fn open(conn: Conn, prefix: &str, ttl: Duration) -> redis::RedisResult<Links> {
        let links = Links { conn, key: format!("{prefix}:link-keys").into(), ttl, ring: Arc::default() };
        links.reload().await?;
        if links.ring.read().expect("never poisoned").keys.is_empty() {
            links.add_key().await?;
        }
        Ok(links)
    }

    /// `path` signed for `method`: the query string to append (`expires=…&kid=…&sig=…`).
    pub fn sign(&self, method: &str, path: &str) -> String {
        let expires = (crate::store::now_ms() + self.ttl.as_millis() as u64).div_ceil(1000);
        let ring = self.ring.read().expect("never poisoned");
        let key = ring.keys.iter().max_by_key(|k| k.created_ms).expect("a key is made at open");
        let sig = URL_SAFE_NO_PAD.encode(mac(&key.secret, method, path, expires).finalize().into_bytes());
        format!("expires={expires}&kid={}&sig={sig}", key.id)
    }

    /// `path?{query}` as a signed link, if `query` holds any part of one: `None` for a request
    /// without, else whether it is valid now for `method`.
    pub async fn verify(&self, method: &str, path: &str, query: &str) -> Option<Result<(), LinkError>> {
        let params: HashMap<&str, &str> = query.split('&').filter_map(|pair| pair.split_once('=')).collect();
        // Any part of a link makes it one, checked whole: a link missing its signature is refused,
        // not read as no link at all.
        ["expires", "kid", "sig"].iter().find(|name| params.contains_key(*name))?;
        Some(self.check(method, path, &params).await)
    }

    async fn check(&self, method: &str, path: &str, params: &HashMap<&str, &str>) -> Result<(), LinkError> {
        let (Some(expires), Some(kid), Some(sig)) =
            (params.get("expires"), params.get("kid"), params.get("sig"))
        else {
            return Err(LinkError::Incomplete);
        };
        let expires: u64 = expires.parse().map_err(|_| LinkError::Forged)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| LinkError::Forged)?;
        let secret = self.secret_for(kid).await.ok_or(LinkError::Forged)?;
        // Checked before the expiry, so that a forged link never learns whether its time is up.
        mac(&secret, method, path, expires).verify_slice(&sig).map_err(|_| LinkError::Forged)?;
        if expires.saturating_mul(1000) <= crate::store::now_ms() {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    /// `text` sealed for a token: `{text}~{kid}~{sig}`, `sig` the MAC of `text` by the newest
    /// key. `text` is to have no `~` of its own at its end, and is signed as no link can be.
    pub fn seal(&self, text: &str) -> String {
        let ring = self.ring.read().expect("never poisoned");
        let key = ring.keys.iter().max_by_key(|k| k.created_ms).expect("a key is made at open");
        let sig = URL_SAFE_NO_PAD.encode(mac(&key.secret, SEAL, text, 0).finalize().into_bytes());
        format!("{text}~{}~{sig}", key.id)
    }

    /// The text `sealed` carries, when a key still kept sealed it ([`Links::seal`]).
    pub async fn unseal<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let mut parts = sealed.rsplitn(3, '~');
        let (sig, kid, text) = (parts.next()?, parts.next()?, parts.next()?);
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let secret = self.secret_for(kid).await?;
        mac(&secret, SEAL, text, 0).verify_slice(&sig).ok()?;
        Some(text)
    }

    /// The secret of the key `kid`, read again from Redis when this process does not know it
    /// (made by a rotation on another process since this one last read the keys).
    async fn secret_for(&self, kid: &str) -> Option<Vec<u8>> {
        let secret = self.secret(kid);
        if secret.is_some() || !self.claim_reload() {
            return secret;
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "reading the link keys failed");
        }
        self.secret(kid)
    }

    fn secret(&self, kid: &str) -> Option<Vec<u8>> {
        let ring = self.ring.read().expect("never poisoned");
        ring.keys.iter().find(|k| k.id == kid).map(|k| k.secret.clone())
    }

    /// Whether this request may read the keys again for an unknown key id: at most once a second
    /// for the whole process, claimed before the read so that a burst of forged ids costs one.
    fn claim_reload(&self) -> bool {
        let mut ring = self.ring.write().expect("never poisoned");
        if ring.read_at.is_some_and(|at| at.elapsed() < RELOAD_AT_MOST_EVERY) {
            return false;
        }
        ring.read_at = Some(Instant::now());
        true
    }

    /// Reads the keys again.
    pub async fn reload(&self) -> redis::RedisResult<()> {
        let stored: HashMap<String, String> = self.conn.clone().hgetall(&*self.key).await?;
        let keys = stored
            .into_iter()
            .filter_map(|(id, value)| {
                let (created, secret) = value.split_once(':')?;
                Some(Key {
                    id,
                    created_ms: created.parse().ok()?,
                    secret: URL_SAFE_NO_PAD.decode(secret).ok()?,
                })
            })
            .collect();
        let keys: Vec<Key> = keys;
        let mut ring = self.ring.write().expect("never poisoned");
        // With none in Redis (its data lost), the keys read before keep signing and verifying
        // here until a rotation writes new ones: signing needs one.
        if !keys.is_empty() {
            ring.keys = keys;
        }
        ring.read_at = Some(Instant::now());
        Ok(())
    }

    /// Reads the keys again every [`RELOAD_EVERY`] until `shutdown`, so that a key rotated in
    /// by another process soon signs here too.
    pub async fn keep_current(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "reading the link keys failed; links keep the keys read last");
            }
        }
    }

    /// Adds a new key, which signs from now on (here at once, on other processes as they read
    /// the keys again: every process verifies with it from the first link it sees), and forgets
    /// the keys retired longer than [`KEEP_RETIRED`] ago. Returns the new key's id.
    pub async fn rotate(&self) -> redis::RedisResult<String> {
        let id = self.add_key().await?;
        let mut keys = self.ring.read().expect("never poisoned").keys.clone();
        keys.sort_by_key(|k| k.created_ms);
        let now = crate::store::now_ms();
        // A key retires when the next one is made.
        let forget: Vec<String> = keys
            .windows(2)
            .filter(|pair| now.saturating_sub(pair[1].created_ms) > KEEP_RETIRED.as_millis() as u64)
            .map(|pair| pair[0].id.clone())
            .collect();
        if !forget.is_empty() {
            self.conn.clone().hdel::<_, _, ()>(&*self.key, forget).await?;
            self.reload().await?;
        }
        Ok(id)
    }

    async fn add_key(&self) -> redis::RedisResult<String> {
        let mut random = [0u8; 36];
        getrandom::fill(&mut random)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "no random bytes", e.to_string())))?;
        let id = crate::auth::hex(&random[..4]);
        let value = format!("{}:{}", crate::store::now_ms(), URL_SAFE_NO_PAD.encode(&random[4..]));
        let _: bool = self.conn.clone().hset_nx(&*self.key, &id, value).await?;
        self.reload().await?;
        Ok(id)
    }
}

/// What stands for the method in a sealed token's MAC: no request has it, so no link's signature
/// seals a token, nor a token's seal signs a link.
const SEAL: &str = "SEAL";

/// The MAC of a link: method, path and expiry, each on its own line.
fn mac(secret: &[u8], method: &str, path: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(format!("{method}\n{path}\n{expires}").as_bytes());
    mac
}
