//! Who may do what: access tokens, their scopes and queue patterns, and the table of them every
//! process keeps in memory.
//!
//! A token is `cour_` and 43 base64url characters (256 bits from the OS). Only its SHA-256 is
//! stored: the hash `{prefix}:{_auth}:tokens` (hex digest → JSON [`TokenInfo`]), with
//! `{prefix}:{_auth}:token-names` (name → digest) keeping names unique,
//! `{prefix}:{_auth}:token-used` (digest → ms) when each was last used, and
//! `{prefix}:{_auth}:tokens-version` counting the changes (one hash tag: they are changed
//! together). Every process holds the whole table and reads it again when the version moves
//! ([`Tokens::keep_current`], twice a second): authenticating a request costs no Redis read, and
//! a revocation is refused everywhere within a second. The first token also sets
//! `{prefix}:{_auth}:auth-enforced`: from then on access control stays on, even once every token
//! is revoked (delete that key to open the server again), so that revoking the last token never
//! opens the server to everyone.
//!
//! A request's token is found by the digest of what it presents, so no comparison ever runs over
//! the secret itself: the time a lookup takes tells an attacker about a SHA-256 digest, which
//! gives nothing about a token it does not have.

pub mod cli;
pub mod sessions;

use crate::redis_client::Conn;
use base64::Engine as _;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What every token starts with: a secret scanner can find them, and a person can tell one.
pub const TOKEN_PREFIX: &str = "cour_";
/// How often a process asks whether the tokens changed.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// A token's `last used` is written at most this often per process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// The most tokens there may be: every process holds them all.
pub const MAX_TOKENS: usize = 10_000;
/// The most queue patterns one token may carry.
const MAX_PATTERNS: usize = 100;

/// One right a token may carry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit tasks and publish messages.
    Submit,
    /// Read tasks, results, payloads, events, lists, queues, kinds and topics.
    Read,
    /// Take and settle leases over the pull API.
    Work,
    /// Cancel tasks, requeue and delete dead letters, pause and resume queues, subscriptions.
    Operate,
    /// Tokens, kinds, queue limits and the audit trail.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Scope; 5] = [Scope::Submit, Scope::Read, Scope::Work, Scope::Operate, Scope::Admin];

    /// Its name, as tokens and problems spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Work => "work",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s.trim()).ok_or_else(|| {
            format!("`{s}` is not a scope: use submit, read, work, operate or admin (comma-separated)")
        })
    }
}

/// The queues a token reaches: exact names, and prefixes written with a trailing `*`
/// (`reports-*`); `*` alone is every queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueuePatterns {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl QueuePatterns {
    /// Every queue.
    pub fn any() -> QueuePatterns {
        QueuePatterns { exact: Vec::new(), prefixes: vec![String::new()] }
    }

    /// Parses patterns one by one; each is a queue name, optionally ending in `*`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<QueuePatterns, String> {
        if patterns.is_empty() {
            return Err("name at least one queue pattern (`*` for every queue)".into());
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} queue patterns"));
        }
        let mut parsed = QueuePatterns::default();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            match pattern.strip_suffix('*') {
                Some(prefix) if prefix.is_empty() || is_name_prefix(prefix) => {
                    parsed.prefixes.push(prefix.to_string())
                }
                None if app::model::is_queue_name(pattern) => parsed.exact.push(pattern.to_string()),
                _ => {
                    return Err(format!(
                        "`{pattern}` is not a queue pattern: a queue name, or a beginning of one \
                         followed by `*`"
                    ));
                }
            }
        }
        Ok(parsed)
    }

    /// Whether queue `name` matches.
    pub fn allows(&self, name: &str) -> bool {
        self.exact.iter().any(|q| q == name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Whether every queue matches.
    pub fn is_any(&self) -> bool {
        self.prefixes.iter().any(String::is_empty)
    }

    /// The patterns as written.
    pub fn to_strings(&self) -> Vec<String> {
        self.exact.iter().cloned().chain(self.prefixes.iter().map(|p| format!("{p}*"))).collect()
    }
}

/// Whether `prefix` can begin a queue name (what a `*` pattern may start with).
fn is_name_prefix(prefix: &str) -> bool {
    prefix.len() < 64 && app::model::is_queue_name(prefix)
}

/// A stored token, as listed: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub queues: Vec<String>,
    /// When it was made, in ms since the epoch.
    pub created_ms: u64,
    /// When it stops working, in ms since the epoch; never if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When a request last presented it (to within a minute), if ever; kept beside, not in, the
    /// stored JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

/// What a new token is asked for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// 1 to 64 of `A-Za-z0-9._-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    pub queues: Vec<String>,
    /// How long it works, `90d`, `12h`; forever if unset.
    #[serde(default)]
    pub expires: Option<String>,
}

/// Who a request acts as, and what it may do: a token's grant, or everything when access
/// control is off.
#[derive(Debug, Clone)]
pub struct Access {
    grant: Arc<Grant>,
}

#[derive(Debug)]
struct Grant {
    /// The token's name; empty when access control is off.
    name: String,
    scopes: Vec<Scope>,
    queues: QueuePatterns,
    /// The stored digest (hex), to note its use; none when access control is off.
    digest: Option<String>,
    expires_ms: Option<u64>,
}

impl Access {
    /// Whether it still holds: its token is still honoured (not revoked, not expired); with no
    /// token, while access control is still off. An event stream asks this every second.
    pub fn holds(&self, tokens: &Tokens) -> bool {
        match &self.grant.digest {
            Some(digest) => tokens.by_digest(digest).is_some(),
            None => self.grant.name == "signed-link" || !tokens.enabled(),
        }
    }

    /// Everything, for everyone: access control is off. One grant, made once and shared: every
    /// API request takes it while access control is off.
    pub fn everything() -> Access {
        static EVERYTHING: std::sync::LazyLock<Arc<Grant>> = std::sync::LazyLock::new(|| {
            Arc::new(Grant {
                name: String::new(),
                scopes: Scope::ALL.to_vec(),
                queues: QueuePatterns::any(),
                digest: None,
                expires_ms: None,
            })
        });
        Access { grant: Arc::clone(&EVERYTHING) }
    }

    /// What a valid signed link grants: reading the one thing it names (the link's signature
    /// binds its path, which the access layer checked).
    pub fn signed_link() -> Access {
        Access {
            grant: Arc::new(Grant {
                name: "signed-link".into(),
                scopes: vec![Scope::Read],
                queues: QueuePatterns::any(),
                digest: None,
                expires_ms: None,
            }),
        }
    }

    /// The token's name (what the audit trail records); `anonymous` when access control is off.
    pub fn name(&self) -> &str {
        if self.grant.name.is_empty() { "anonymous" } else { &self.grant.name }
    }

    /// Whether it carries `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.grant.scopes.contains(&scope)
    }

    /// Its scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.grant.scopes
    }

    /// The queues it reaches.
    pub fn queues(&self) -> &QueuePatterns {
        &self.grant.queues
    }

    /// The queues it is limited to; `None` when it reaches every queue.
    pub fn within(&self) -> Option<&QueuePatterns> {
        (!self.grant.queues.is_any()).then_some(&self.grant.queues)
    }

    /// Whether it reaches queue `name`.
    pub fn reaches(&self, name: &str) -> bool {
        self.grant.queues.allows(name)
    }

    /// When its token stops working, in ms since the epoch; never if unset.
    pub fn expires_ms(&self) -> Option<u64> {
        self.grant.expires_ms
    }

    /// The stored digest of its token (hex); none when access control is off.
    pub fn digest(&self) -> Option<&str> {
        self.grant.digest.as_deref()
    }
}

/// When access control is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// As soon as one token exists.
    #[default]
    Auto,
    /// Always: with no token, every API call is refused.
    Required,
}

/// A new token: the secret, shown once, and what is stored of it.
pub struct Minted {
    pub token: String,
    pub info: TokenInfo,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted").field("token", &"cour_…").field("info", &self.info).finish()
    }
}

/// Why a token change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named `{0}` exists already: revoke it first, or choose another name")]
    Exists(String),
    #[error("no token is named `{0}`")]
    NotFound(String),
    #[error("there are {MAX_TOKENS} tokens already: revoke some first")]
    TooMany,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The Redis keys of the tokens, all tagged `{_auth}` (`layout.rs`): their scripts, the reload's
/// MULTI and the listing's pipeline touch them together.
#[derive(Debug, Clone)]
pub(crate) struct TokenKeys {
    tokens: String,
    names: String,
    used: String,
    version: String,
    /// Set by the first token: access control is on from then on.
    enforced: String,
}

impl TokenKeys {
    /// The keys under `prefix`.
    pub(crate) fn new(prefix: &str) -> TokenKeys {
        TokenKeys::under(&crate::layout::AUTH.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> TokenKeys {
        TokenKeys {
            tokens: format!("{base}:tokens"),
            names: format!("{base}:token-names"),
            used: format!("{base}:token-used"),
            version: format!("{base}:tokens-version"),
            enforced: format!("{base}:auth-enforced"),
        }
    }

    /// Every key of the tokens.
    pub(crate) fn all(&self) -> [&str; 5] {
        [&self.tokens, &self.names, &self.used, &self.version, &self.enforced]
    }
}

/// The tokens this process honours, by digest, as of `version`.
#[derive(Default)]
struct Table {
    version: Option<u64>,
    /// A token was ever made: access control stays on with none left.
    enforced: bool,
    grants: HashMap<[u8; 32], Arc<Grant>>,
}

/// The tokens: stored in Redis, held in memory; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    conn: Conn,
    keys: Arc<TokenKeys>,
    /// `{prefix}:rate`, the start of each token's per-second submission counters: each is used
    /// alone, so it needs no tag.
    rate: Arc<str>,
    mode: AuthMode,
    /// Tasks a token may submit per second (0: no limit).
    rate_limit: u64,
    table: Arc<RwLock<Table>>,
    /// When this process last wrote each token's `last used`.
    touched: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Tokens {
    /// The tokens under `prefix`, none loaded yet ([`Tokens::reload`]).
    pub fn new(conn: Conn, prefix: &str, mode: AuthMode) -> Tokens {
        Tokens {
            conn,
            keys: Arc::new(TokenKeys::new(prefix)),
            rate: format!("{prefix}:rate").into(),
            mode,
            rate_limit: 0,
            table: Arc::default(),
            touched: Arc::default(),
        }
    }

    /// Limits each token to `per_second` submitted tasks (0: no limit).
    pub fn with_rate_limit(mut self, per_second: u64) -> Tokens {
        self.rate_limit = per_second;
        self
    }

    /// Counts `tasks` submissions against the token's rate, shared by every process (a counter
    /// per token and second in Redis); the seconds to wait when they are past it.
    pub async fn spend(&self, access: &Access, tasks: u64) -> redis::RedisResult<Option<u64>> {
        let Some(digest) = access.digest().filter(|_| self.rate_limit > 0) else { return Ok(None) };
        let second = crate::store::now_ms() / 1000;
        // The digest's first half names the counter: unique enough, and no secret.
        let key = format!("{}:{}:{second}", self.rate, &digest[..32]);
        let mut pipe = redis::pipe();
        pipe.incr(&key, tasks).expire(&key, 2).ignore();
        let (spent,): (u64,) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok((spent > self.rate_limit).then_some(1))
    }

    /// Whether requests must present a token: `--auth required`, or a token was ever made
    /// (revoking the last one leaves every call refused rather than the server open).
    pub fn enabled(&self) -> bool {
        self.mode == AuthMode::Required || self.read_table().enforced
    }

    /// The access `token` grants, if it is one this process honours and it has not expired.
    pub fn authenticate(&self, token: &str) -> Option<Access> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let grant = self.read_table().grants.get(&digest).cloned()?;
        if grant.expires_ms.is_some_and(|at| at <= crate::store::now_ms()) {
            return None;
        }
        self.touch(&grant);
        Some(Access { grant })
    }

    /// The access of the token stored under `digest` (hex), as for [`Tokens::authenticate`]: a
    /// web session holds the digest of the token it was opened with, never the token.
    pub fn by_digest(&self, digest: &str) -> Option<Access> {
        let bytes: [u8; 32] = decode_hex(digest)?;
        let grant = self.read_table().grants.get(&bytes).cloned()?;
        if grant.expires_ms.is_some_and(|at| at <= crate::store::now_ms()) {
            return None;
        }
        self.touch(&grant);
        Some(Access { grant })
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().expect("never poisoned: no code panics holding it")
    }

    /// Notes that `grant` was used, at most once a minute per token per process, without
    /// holding up the request.
    fn touch(&self, grant: &Grant) {
        let Some(digest) = &grant.digest else { return };
        {
            let mut touched = self.touched.lock().expect("never poisoned");
            let now = Instant::now();
            if touched.get(digest).is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY) {
                return;
            }
            touched.insert(digest.clone(), now);
        }
        let (mut conn, key, digest) = (self.conn.clone(), self.keys.used.clone(), digest.clone());
        tokio::spawn(async move {
            let now = crate::store::now_ms();
            if let Err(e) = conn.hset::<_, _, _, ()>(key, digest, now).await {
                warn!(error = %e, "noting when a token was last used failed");
            }
        });
    }

    /// Reads the tokens again if they changed; whether they did.
    pub async fn reload(&self) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let version: Option<u64> = conn.get(&self.keys.version).await?;
        let version = version.unwrap_or(0);
        if self.read_table().version == Some(version) {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        pipe.atomic().get(&self.keys.version).hgetall(&self.keys.tokens).exists(&self.keys.enforced);
        let (version, stored, enforced): (Option<u64>, HashMap<String, String>, bool) =
            pipe.query_async(&mut conn).await?;
        let grants: HashMap<[u8; 32], Arc<Grant>> = stored
            .into_iter()
            .filter_map(|(digest, json)| {
                let bytes = decode_hex(&digest)?;
                // One that does not read (written by a newer version) is honoured by that one.
                let info: TokenInfo = serde_json::from_str(&json).ok()?;
                let queues = QueuePatterns::parse(&info.queues).ok()?;
                let grant = Grant {
                    name: info.name,
                    scopes: info.scopes,
                    queues,
                    digest: Some(digest),
                    expires_ms: info.expires_ms,
                };
                Some((bytes, Arc::new(grant)))
            })
            .collect();
        let mut table = self.table.write().expect("never poisoned");
        // Once on, on for this process's life: tokens lost with Redis's data (a flush, an
        // eviction, a restart without persistence) must not open the server to everyone.
        let enforced = table.enforced || enforced || !grants.is_empty();
        *table = Table { version: Some(version.unwrap_or(0)), enforced, grants };
        Ok(true)
    }

    /// Reloads the table whenever the tokens change, until `shutdown`.
    pub async fn keep_current(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.reload().await {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    // Said once per outage; the table read last stays in force meanwhile.
                    warn!(error = %e, "reading the access tokens failed; retrying twice a second");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// Makes a token; the secret is in the answer and nowhere else.
    pub async fn create(&self, request: TokenRequest) -> Result<Minted, TokenError> {
        let info = validate(request, crate::store::now_ms())?;
        let token = mint()?;
        let digest = hex(&Sha256::digest(token.as_bytes()));
        let json = serde_json::to_string(&info).expect("a token's info always serializes");
        let created: i64 = Script::new(include_str!("auth/create_token.lua"))
            .key(&self.keys.names)
            .key(&self.keys.tokens)
            .key(&self.keys.version)
            .key(&self.keys.enforced)
            .arg(&info.name)
            .arg(&digest)
            .arg(json)
            .arg(MAX_TOKENS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match created {
            1 => {
                self.reload_after_change().await;
                Ok(Minted { token, info })
            }
            0 => Err(TokenError::Exists(info.name)),
            _ => Err(TokenError::TooMany),
        }
    }

    /// Revokes the token named `name`: every process refuses it within a second, and the web
    /// sessions opened with it end.
    pub async fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let revoked: i64 = Script::new(include_str!("auth/revoke_token.lua"))
            .key(&self.keys.names)
            .key(&self.keys.tokens)
            .key(&self.keys.used)
            .key(&self.keys.version)
            .arg(name)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if revoked == 0 {
            return Err(TokenError::NotFound(name.to_string()));
        }
        self.reload_after_change().await;
        Ok(())
    }

    /// Every token, by name, with when each was last used.
    pub async fn list(&self) -> redis::RedisResult<Vec<TokenInfo>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(&self.keys.tokens).hgetall(&self.keys.used);
        let (stored, used): (HashMap<String, String>, HashMap<String, u64>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let mut tokens: Vec<TokenInfo> = stored
            .iter()
            .filter_map(|(digest, json)| {
                let mut info: TokenInfo = serde_json::from_str(json).ok()?;
                info.last_used_ms = used.get(digest).copied();
                Some(info)
            })
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    /// Reloads this process's table after a change it made, so its next request sees it; should
    /// that fail, the next poll does.
    async fn reload_after_change(&self) {
        if let Err(e) = self.reload().await {
            warn!(error = %e, "reloading the access tokens failed; the next poll will");
        }
    }
}

/// Checks a request for a token and turns it into what is stored.
fn validate(request: TokenRequest, now_ms: u64) -> Result<TokenInfo, TokenError> {
    let invalid = |e: String| TokenError::Invalid(e);
    if !is_token_name(&request.name) {
        return Err(invalid(format!(
            "`{}` is not a token name: 1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            request.name
        )));
    }
    if request.scopes.is_empty() {
        return Err(invalid("give the token at least one scope: submit, read, work, operate, admin".into()));
    }
    let patterns = QueuePatterns::parse(&request.queues).map_err(invalid)?;
    let expires_ms = match request.expires.as_deref() {
        None => None,
        Some(text) => {
            let lifetime =
                crate::config::parse_duration(text).map_err(|e| invalid(format!("expires: {e}")))?;
            const TEN_YEARS: Duration = Duration::from_secs(3_650 * 86_400);
            if lifetime.is_zero() || lifetime > TEN_YEARS {
                return Err(invalid(format!("expires: `{text}` must be between 1ms and 3650d")));
            }
            Some(now_ms + lifetime.as_millis() as u64)
        }
    };
    let mut scopes = request.scopes;
    scopes.sort();
    scopes.dedup();
    Ok(TokenInfo {
        name: request.name,
        scopes,
        queues: patterns.to_strings(),
        created_ms: now_ms,
        expires_ms,
        last_used_ms: None,
    })
}

/// Whether `name` can name a token.
pub fn is_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A new token: the prefix and 256 random bits from the OS.
fn mint() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| TokenError::Invalid(format!("the OS gave no random bytes: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a lower-case hex string of exactly `N` bytes.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_patterns_match_exact_names_and_prefixes_only() {
        let patterns = QueuePatterns::parse(&["billing", "reports-*"]).unwrap();
        assert!(patterns.allows("billing"));
        assert!(patterns.allows("reports-eu"));
        assert!(patterns.allows("reports-"));
        assert!(!patterns.allows("billing2"));
        assert!(!patterns.allows("reports"));
        assert!(!patterns.allows("default"));
        assert!(!patterns.is_any());
        assert_eq!(patterns.to_strings(), ["billing", "reports-*"]);
        assert!(QueuePatterns::parse(&["*"]).unwrap().allows("anything"));
        for bad in ["", "a b", "re*ports", "**", "a/b*"] {
            assert!(QueuePatterns::parse(&[bad]).is_err(), "{bad}");
        }
        assert!(QueuePatterns::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn a_token_request_is_checked_and_normalised() {
        let request = |name: &str, scopes: Vec<Scope>, queues: &[&str], expires: Option<&str>| TokenRequest {
            name: name.into(),
            scopes,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            expires: expires.map(str::to_string),
        };
        let info = validate(
            request("ci", vec![Scope::Read, Scope::Submit, Scope::Read], &["b*"], Some("1d")),
            1_000,
        )
        .unwrap();
        assert_eq!(info.scopes, [Scope::Submit, Scope::Read]);
        assert_eq!(info.expires_ms, Some(1_000 + 86_400_000));
        assert!(validate(request("bad name", vec![Scope::Read], &["*"], None), 0).is_err());
        assert!(validate(request("ci", vec![], &["*"], None), 0).is_err());
        assert!(validate(request("ci", vec![Scope::Read], &[], None), 0).is_err());
        assert!(validate(request("ci", vec![Scope::Read], &["*"], Some("0s")), 0).is_err());
        assert!(validate(request("ci", vec![Scope::Read], &["*"], Some("soon")), 0).is_err());
    }

    #[test]
    fn minted_tokens_are_prefixed_random_and_url_safe() {
        let (a, b) = (mint().unwrap(), mint().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert!(a[TOKEN_PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(!format!("{:?}", Minted { token: a.clone(), info: validate_ok() }).contains(&a));
    }

    fn validate_ok() -> TokenInfo {
        validate(
            TokenRequest {
                name: "x".into(),
                scopes: vec![Scope::Read],
                queues: vec!["*".into()],
                expires: None,
            },
            0,
        )
        .unwrap()
    }

    #[test]
    fn hex_reads_back_as_written() {
        let digest: [u8; 32] = Sha256::digest(b"x").into();
        assert_eq!(decode_hex::<32>(&hex(&digest)), Some(digest));
        assert_eq!(decode_hex::<32>("zz"), None);
        assert_eq!(decode_hex::<1>("g0"), None);
    }
}
