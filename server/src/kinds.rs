//! Kinds declared without code: their declarations (`PUT /api/v1/kinds/{name}`, `[[kinds]]` in
//! `courier.toml`), how one is validated and stored, and the handler it becomes, run by pushing
//! each task to its endpoint or, without one, by workers that pull it over HTTP.
//!
//! Declarations live in the hash `{prefix}:{_kinds}:kinds` (name → JSON);
//! `{prefix}:{_kinds}:kinds-version` counts the changes, increased in the same MULTI as each,
//! which also appends a `kind` event to the events stream. API servers reload on the event ([`follow_events`]); worker processes ask for
//! the version every second ([`keep_current`]): every process sees a change at once, and a
//! reload that finds the version unchanged costs one `GET`.

use crate::redis_client::Conn;
use crate::{
    handlers::{Context, Handler, HandlerError, Input, Output, Registry},
    push::{EndpointConfig, Push},
    worker::RetryPolicy,
};
use app::model::{DEFAULT_QUEUE, KIND_EVENT, is_kind_name, is_queue_name};
use futures::future::BoxFuture;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The most attempts a kind may give its tasks (as a task may ask for).
const MAX_ATTEMPTS: u32 = 100;
/// The longest a timeout or a retry pause may be: a day.
const MAX_MS: u64 = 86_400_000;
/// The longest description.
const MAX_DESCRIPTION: usize = 1_000;
/// The most content types a kind may list.
const MAX_CONTENT_TYPES: usize = 50;
/// What an endpoint's secret reads as wherever a declaration is shown.
pub const REDACTED_SECRET: &str = "whsec_…";
/// The most kinds there may be declared: every process holds them all, and reads them all again
/// after each change.
pub const MAX_KINDS: usize = 1_000;
/// How often a worker process asks whether the declarations changed.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The Redis keys of the declared kinds, both tagged `{_kinds}` (`layout.rs`): they are read and
/// changed together.
#[derive(Clone, Debug)]
pub struct KindKeys {
    declared: String,
    version: String,
}

impl KindKeys {
    /// The keys under `prefix`.
    pub fn new(prefix: &str) -> KindKeys {
        KindKeys::under(&crate::layout::KINDS.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> KindKeys {
        KindKeys { declared: format!("{base}:kinds"), version: format!("{base}:kinds-version") }
    }

    /// Both keys.
    pub(crate) fn all(&self) -> [&str; 2] {
        [&self.declared, &self.version]
    }

    /// The hash of declarations, name → JSON.
    pub fn declared(&self) -> &str {
        &self.declared
    }

    /// The count of changes to the declarations.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The version of the declarations (0 before the first).
pub async fn version(conn: &Conn, keys: &KindKeys) -> redis::RedisResult<u64> {
    let version: Option<u64> = conn.clone().get(keys.version()).await?;
    Ok(version.unwrap_or(0))
}

/// Every stored declaration (name → JSON) with the version they are at, read at once.
pub async fn read_all(conn: &Conn, keys: &KindKeys) -> redis::RedisResult<(u64, BTreeMap<String, String>)> {
    let mut pipe = redis::pipe();
    pipe.atomic().get(keys.version()).hgetall(keys.declared());
    let (version, declared): (Option<u64>, BTreeMap<String, String>) =
        pipe.query_async(&mut conn.clone()).await?;
    Ok((version.unwrap_or(0), declared))
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// Any JSON: the schema of a kind that declares none.
fn any_json() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A kind as declared: what its payload is, how its tasks are retried, and how they run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    /// The kind's name; in a `PUT` body it may be left out (the path names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// One sentence for people choosing a kind.
    #[serde(default)]
    pub description: String,
    /// The queue its tasks go to unless a submission names another.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// JSON Schema of the payload when sent as JSON (the keywords `app::schema` enforces);
    /// default: any JSON.
    #[serde(default = "any_json")]
    pub schema: Value,
    /// A payload to show in the form; it must pass the schema.
    #[serde(default)]
    pub example: Value,
    /// Whether a raw (non-JSON) body is a valid payload.
    #[serde(default)]
    pub accepts_raw: bool,
    /// The content types a raw body may have (`type/subtype` or `type/*`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// Attempts its tasks get unless a task says otherwise; default: the server's.
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run unless a task says otherwise; default: no limit.
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<u64>,
    /// The pause before its first retry, doubling after each (given with `retry_cap_ms`);
    /// default: the worker's `--retry-base`.
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_base_ms: Option<u64>,
    /// The longest pause between its retries; default: the worker's `--retry-cap`.
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_cap_ms: Option<u64>,
    /// Where Courier's workers push its tasks; none: workers elsewhere pull them over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
}

/// Why a declaration cannot be a kind: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct Invalid {
    /// The field, as in the declaration (`endpoint.secret`).
    pub field: String,
    pub reason: String,
    /// Itemised reasons (a schema's problems, an example's violations).
    pub errors: Vec<String>,
}

impl Invalid {
    fn new(field: &str, reason: impl Into<String>) -> Invalid {
        Invalid { field: field.to_string(), reason: reason.into(), errors: Vec::new() }
    }
}

impl Declaration {
    /// Checks every field, the first problem naming its field (the endpoint by building it).
    pub fn validate(&self) -> Result<(), Invalid> {
        self.checked().map(drop)
    }

    /// [`Declaration::validate`], keeping the endpoint it built to check it.
    fn checked(&self) -> Result<Option<Push>, Invalid> {
        let invalid = |field: &str, reason: String| Err(Invalid::new(field, reason));
        if !is_kind_name(&self.name) {
            return invalid(
                "name",
                format!(
                    "`{}` is not a kind name: use 1 to 64 of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit",
                    self.name
                ),
            );
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return invalid("description", format!("at most {MAX_DESCRIPTION} characters"));
        }
        if !is_queue_name(&self.queue) {
            return invalid(
                "queue",
                format!(
                    "`{}` is not a queue name: use 1 to 64 of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit",
                    self.queue
                ),
            );
        }
        if let Err(errors) = app::schema::check(&self.schema) {
            let reason = format!("not a schema Courier can enforce: {}", errors.join("; "));
            return Err(Invalid { field: "schema".into(), reason, errors });
        }
        if let Err(errors) = app::schema::validate(&self.schema, &self.example) {
            let reason = format!("does not pass the schema: {}", errors.join("; "));
            return Err(Invalid { field: "example".into(), reason, errors });
        }
        if !self.content_types.is_empty() && !self.accepts_raw {
            return invalid(
                "content_types",
                "only a kind that accepts raw bodies (`accepts_raw`) lists them".into(),
            );
        }
        if self.content_types.len() > MAX_CONTENT_TYPES {
            return invalid("content_types", format!("at most {MAX_CONTENT_TYPES}"));
        }
        if let Some(bad) = self.content_types.iter().find(|t| !is_media_range(t)) {
            return invalid(
                "content_types",
                format!("`{bad}` is not a content type (`type/subtype` or `type/*`)"),
            );
        }
        if self.max_attempts.is_some_and(|n| !(1..=MAX_ATTEMPTS).contains(&n)) {
            return invalid("max_attempts", format!("must be between 1 and {MAX_ATTEMPTS}"));
        }
        if self.timeout_ms.is_some_and(|t| !(1..=MAX_MS).contains(&t)) {
            return invalid("timeout_ms", format!("must be between 1 and {MAX_MS} (a day)"));
        }
        match (self.retry_base_ms, self.retry_cap_ms) {
            (None, None) => {}
            (Some(_), None) => return invalid("retry_cap_ms", "is needed with retry_base_ms".into()),
            (None, Some(_)) => return invalid("retry_base_ms", "is needed with retry_cap_ms".into()),
            (Some(base), Some(cap)) => {
                if base > MAX_MS {
                    return invalid("retry_base_ms", format!("must be at most {MAX_MS} (a day)"));
                }
                if !(1..=MAX_MS).contains(&cap) {
                    return invalid("retry_cap_ms", format!("must be between 1 and {MAX_MS} (a day)"));
                }
                if base > cap {
                    return invalid("retry_base_ms", format!("{base} is more than retry_cap_ms ({cap})"));
                }
            }
        }
        self.endpoint.as_ref().map(|endpoint| endpoint_of(&self.name, endpoint)).transpose()
    }

    /// This declaration as it may be shown: the endpoint's secret replaced by
    /// [`REDACTED_SECRET`].
    pub fn redacted(&self) -> Declaration {
        let mut shown = self.clone();
        if let Some(endpoint) = &mut shown.endpoint {
            endpoint.secret = REDACTED_SECRET.to_string();
        }
        shown
    }

    /// The declaration of a `[[kinds]]` entry of the configuration file in directory `dir`:
    /// the same fields, with `schema_file` (a JSON file, relative to `dir`) instead of an
    /// inline `schema` if need be.
    pub fn from_file_entry(mut entry: toml::Table, dir: &Path) -> Result<Declaration, String> {
        let schema_file = match entry.remove("schema_file") {
            None => None,
            Some(toml::Value::String(path)) => Some(path),
            Some(_) => return Err("`schema_file`: must be a path".into()),
        };
        if schema_file.is_some() && entry.contains_key("schema") {
            return Err("give `schema` or `schema_file`, not both".into());
        }
        let mut declaration: Declaration = toml::Value::Table(entry).try_into().map_err(|e| e.to_string())?;
        if let Some(path) = schema_file {
            let path = dir.join(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("`schema_file`: reading {}: {e}", path.display()))?;
            declaration.schema = serde_json::from_str(&text)
                .map_err(|e| format!("`schema_file`: {} is not JSON: {e}", path.display()))?;
        }
        Ok(declaration)
    }
}

/// The endpoint, built (push.rs holds its rules), or why it cannot be one; a redacted secret sent
/// back is named as such.
fn endpoint_of(name: &str, endpoint: &EndpointConfig) -> Result<Push, Invalid> {
    if endpoint.secret == REDACTED_SECRET {
        return Err(Invalid::new(
            "endpoint.secret",
            "`whsec_…` is how a secret is shown, not a secret: send the secret itself",
        ));
    }
    Push::new(name, endpoint).map_err(|reason| {
        // Push's reasons start with the field they are about (`endpoint.secret must …`).
        let field =
            reason.split_whitespace().next().filter(|f| f.starts_with("endpoint.")).unwrap_or("endpoint");
        Invalid::new(field, reason.clone())
    })
}

/// Whether `text` is a media type (`type/subtype`) or a family of them (`type/*`).
fn is_media_range(text: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    text.split_once('/').is_some_and(|(kind, subtype)| token(kind) && (subtype == "*" || token(subtype)))
}

/// A declared kind, ready to run: its declaration and, with an endpoint, the endpoint.
pub struct DeclaredKind {
    declaration: Declaration,
    push: Option<Push>,
    /// The JSON it was read from, to tell whether a reload changed it.
    stored: String,
}

impl DeclaredKind {
    /// The kind `declaration` declares, or why it cannot be one.
    pub fn new(declaration: Declaration) -> Result<DeclaredKind, Invalid> {
        let push = declaration.checked()?;
        let stored = serde_json::to_string(&declaration).expect("declarations always serialize");
        Ok(DeclaredKind { declaration, push, stored })
    }

    /// The kind stored as `json` under `name`.
    pub fn from_stored(name: &str, json: &str) -> Result<DeclaredKind, String> {
        let mut declaration: Declaration = serde_json::from_str(json).map_err(|e| e.to_string())?;
        declaration.name = name.to_string();
        let mut kind = DeclaredKind::new(declaration).map_err(|e| e.to_string())?;
        kind.stored = json.to_string();
        Ok(kind)
    }

    /// The JSON it is stored as.
    pub fn stored(&self) -> &str {
        &self.stored
    }

    /// Its declaration.
    pub fn declaration(&self) -> &Declaration {
        &self.declaration
    }
}

impl Handler for DeclaredKind {
    fn name(&self) -> &str {
        &self.declaration.name
    }

    fn description(&self) -> &str {
        &self.declaration.description
    }

    fn schema(&self) -> Value {
        self.declaration.schema.clone()
    }

    fn example(&self) -> Value {
        self.declaration.example.clone()
    }

    fn accepts_raw(&self) -> bool {
        self.declaration.accepts_raw
    }

    fn content_types(&self) -> &[String] {
        &self.declaration.content_types
    }

    fn max_attempts(&self) -> Option<u32> {
        self.declaration.max_attempts
    }

    fn timeout(&self) -> Option<Duration> {
        self.declaration.timeout_ms.map(Duration::from_millis)
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        let (base, cap) = (self.declaration.retry_base_ms?, self.declaration.retry_cap_ms?);
        Some(RetryPolicy { base: Duration::from_millis(base), cap: Duration::from_millis(cap) })
    }

    fn runs_here(&self) -> bool {
        self.push.is_some()
    }

    fn queue(&self) -> &str {
        &self.declaration.queue
    }

    fn run(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        match &self.push {
            Some(push) => push.call(input, ctx),
            // Never leased here (`runs_here` is false): a worker that pulls it runs it.
            None => Box::pin(async {
                Err(HandlerError::fatal(
                    "this kind has no endpoint: its tasks are pulled by workers over HTTP",
                ))
            }),
        }
    }
}

/// Why a declaration was refused or not found.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error(transparent)]
    Invalid(Invalid),
    #[error("`{0}` is a built-in kind: it cannot be declared or deleted")]
    Compiled(String),
    #[error("no declared kind named `{0}`")]
    NotFound(String),
    #[error("there are {MAX_KINDS} declared kinds already, the most there may be")]
    TooMany,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What storing a declaration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Created,
    Replaced,
    /// The same declaration was stored already: nothing was written.
    Unchanged,
}

/// The declared kinds service: declares, reads and deletes kinds, and keeps this process's
/// registry current; cheap to clone.
#[derive(Clone)]
pub struct Kinds {
    conn: Conn,
    keys: Arc<KindKeys>,
    registry: Registry,
    /// The events stream a change is announced on, and its cap.
    events: Arc<str>,
    events_maxlen: usize,
}

impl Kinds {
    /// The declared kinds under `prefix`, kept in `registry`; changes are announced on the
    /// kinds' events stream (capped at `events_maxlen`).
    pub fn new(conn: Conn, prefix: &str, registry: Registry, events_maxlen: usize) -> Kinds {
        let events = crate::store::stream_key(prefix, crate::events::KINDS_CHANNEL).into();
        Kinds { conn, keys: Arc::new(KindKeys::new(prefix)), registry, events, events_maxlen }
    }

    /// The registry it keeps current.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads the declarations again if they changed.
    pub async fn reload(&self) -> redis::RedisResult<bool> {
        self.registry.reload(&self.conn, &self.keys).await
    }

    /// The stored declaration of `name`, if there is one (read from Redis, so it is the latest).
    pub async fn get(&self, name: &str) -> redis::RedisResult<Option<Declaration>> {
        let json: Option<String> = self.conn.clone().hget(self.keys.declared(), name).await?;
        // One that no longer reads (written by a newer version) is not this version's to show.
        Ok(json.and_then(|json| serde_json::from_str::<Declaration>(&json).ok()).map(|mut declaration| {
            declaration.name = name.to_string();
            declaration
        }))
    }

    /// Declares a kind, or replaces its declaration; every process sees it at once.
    pub async fn put(&self, declaration: Declaration) -> Result<Stored, KindError> {
        if self.registry.is_compiled(&declaration.name) {
            return Err(KindError::Compiled(declaration.name));
        }
        let kind = DeclaredKind::new(declaration).map_err(KindError::Invalid)?;
        let name = &kind.declaration.name;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hget(self.keys.declared(), name).hlen(self.keys.declared());
        let (current, count): (Option<String>, usize) = pipe.query_async(&mut conn).await?;
        if current.as_deref() == Some(kind.stored()) {
            return Ok(Stored::Unchanged);
        }
        if current.is_none() && count >= MAX_KINDS {
            return Err(KindError::TooMany);
        }
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.keys.declared(), name, kind.stored());
        self.announce(&mut pipe, name, true);
        let (created,): (i64,) = pipe.query_async(&mut conn).await?;
        info!(task.kind = %name, runs = if kind.runs_here() { "push" } else { "pull" }, "declared a kind");
        self.reload_after_change().await;
        Ok(if created == 1 { Stored::Created } else { Stored::Replaced })
    }

    /// Deletes a declared kind. Its tasks already queued still run wherever a worker knows it.
    pub async fn delete(&self, name: &str) -> Result<(), KindError> {
        if self.registry.is_compiled(name) {
            return Err(KindError::Compiled(name.to_string()));
        }
        let mut conn = self.conn.clone();
        let exists: bool = conn.hexists(self.keys.declared(), name).await?;
        if !exists {
            return Err(KindError::NotFound(name.to_string()));
        }
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(self.keys.declared(), name);
        self.announce(&mut pipe, name, false);
        let (removed,): (i64,) = pipe.query_async(&mut conn).await?;
        info!(task.kind = %name, "deleted a declared kind");
        self.reload_after_change().await;
        if removed == 0 { Err(KindError::NotFound(name.to_string())) } else { Ok(()) }
    }

    /// Adds to `pipe` what every change does besides itself: a new version and a `kind` event.
    fn announce(&self, pipe: &mut redis::Pipeline, name: &str, declared: bool) {
        let now = crate::store::now_ms().to_string();
        let status = if declared { "declared" } else { "deleted" };
        let fields = [("event", KIND_EVENT), ("kind", name), ("status", status), ("at", &now)];
        pipe.incr(self.keys.version(), 1).ignore();
        pipe.cmd("XADD")
            .arg(&*self.events)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.events_maxlen)
            .arg("*")
            .arg(&fields)
            .ignore();
    }

    /// Reloads this process's registry after a change it made, so its next request sees it;
    /// should that fail, the change's event reloads it.
    async fn reload_after_change(&self) {
        if let Err(e) = self.reload().await {
            warn!(error = %e, "reloading the declared kinds failed; the change's event will");
        }
    }

    /// Declares the kinds of a configuration file's `[[kinds]]` (`file` is its path, for
    /// `schema_file`s and errors).
    pub async fn declare_from_file(&self, file: &Path, entries: &[toml::Table]) -> anyhow::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        for (index, entry) in entries.iter().enumerate() {
            let named = entry.get("name").and_then(toml::Value::as_str).map(str::to_string);
            let which =
                named.clone().map(|n| format!("kind `{n}`")).unwrap_or_else(|| format!("kinds[{index}]"));
            let declaration = Declaration::from_file_entry(entry.clone(), dir)
                .map_err(|e| anyhow::anyhow!("{}: {which}: {e}", file.display()))?;
            match self.put(declaration).await {
                Ok(_) => {}
                Err(KindError::Redis(e)) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("{}: declaring {which}", file.display()))
                    );
                }
                Err(e) => anyhow::bail!("{}: {which}: {e}", file.display()),
            }
        }
        if !entries.is_empty() {
            info!(count = entries.len(), file = %file.display(), "declared kinds");
        }
        Ok(())
    }
}

/// Keeps the registry of an API server current until `shutdown`: reloads as it starts and after
/// the events tail reads `kind` events (once for any number read meanwhile).
pub async fn follow_events(kinds: Kinds, changes: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        // Read once as it starts: a change made between the server's first read and now has no
        // event left to come.
        if let Err(e) = kinds.reload().await {
            warn!(error = %e, "reloading the declared kinds failed; retrying at the next change");
        }
        tokio::select! {
            () = changes.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Keeps the registry of a worker process current until `shutdown`: asks every second whether
/// the declarations changed (one `GET`), and reads them when they did.
pub async fn keep_current(registry: Registry, conn: Conn, keys: KindKeys, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        // On a tick of the wall clock, with the process's other looks.
        tokio::select! {
            () = tokio::time::sleep(crate::store::until_next_tick(POLL_EVERY)) => {}
            () = shutdown.cancelled() => return,
        }
        match registry.reload(&conn, &keys).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                // Said once per outage, not once a second.
                warn!(error = %e, "reading the declared kinds failed; retrying every second");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declaration(value: Value) -> Declaration {
        let mut declaration: Declaration = serde_json::from_value(value).unwrap();
        if declaration.name.is_empty() {
            declaration.name = "resize".into();
        }
        declaration
    }

    fn field_of(value: Value) -> String {
        declaration(value).validate().unwrap_err().field
    }

    #[test]
    fn a_bare_declaration_takes_any_json_in_the_default_queue() {
        let d = declaration(json!({}));
        assert_eq!(d.validate(), Ok(()));
        assert_eq!((d.queue.as_str(), &d.schema, &d.example), ("default", &json!({}), &Value::Null));
        let kind = DeclaredKind::new(d).unwrap();
        assert!(!kind.runs_here(), "without an endpoint, workers pull it");
        assert_eq!(kind.retry_policy().map(|p| p.cap), None);
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases = [
            (json!({"name": "Bad Name"}), "name"),
            (json!({"queue": "Q"}), "queue"),
            (json!({"schema": {"type": "object", "oneOf": []}}), "schema"),
            (json!({"schema": {"type": "object"}, "example": 3}), "example"),
            (json!({"content_types": ["text/csv"]}), "content_types"),
            (json!({"accepts_raw": true, "content_types": ["csv"]}), "content_types"),
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"max_attempts": 101}), "max_attempts"),
            (json!({"timeout_ms": 0}), "timeout_ms"),
            (json!({"retry_base_ms": 10}), "retry_cap_ms"),
            (json!({"retry_base_ms": 10, "retry_cap_ms": 5}), "retry_base_ms"),
            (json!({"endpoint": {"url": "ftp://x", "secret": "whsec_AAAA"}}), "endpoint.url"),
            (json!({"endpoint": {"url": "https://x", "secret": "hunter2"}}), "endpoint.secret"),
            (json!({"endpoint": {"url": "https://x", "secret": REDACTED_SECRET}}), "endpoint.secret"),
            (
                json!({"endpoint": {"url": "https://x", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "concurrency": 0}}),
                "endpoint.concurrency",
            ),
        ];
        for (value, field) in cases {
            assert_eq!(field_of(value.clone()), field, "{value}");
        }
        let unknown = serde_json::from_value::<Declaration>(json!({"colour": "red"})).unwrap_err();
        assert!(unknown.to_string().contains("colour"), "{unknown}");
    }

    #[test]
    fn a_full_declaration_becomes_a_pushed_kind_with_its_own_policy() {
        let kind = DeclaredKind::new(declaration(json!({
            "description": "Resizes images.",
            "queue": "images",
            "schema": {"type": "object", "required": ["width"], "properties": {"width": {"type": "integer"}}},
            "example": {"width": 640},
            "accepts_raw": true,
            "content_types": ["image/*"],
            "max_attempts": 7,
            "timeout_ms": 30000,
            "retry_base_ms": 500,
            "retry_cap_ms": 60000,
            "endpoint": {"url": "https://images.example/run", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
        })))
        .unwrap();
        assert!(kind.runs_here());
        assert_eq!((kind.queue(), kind.max_attempts()), ("images", Some(7)));
        assert_eq!(kind.timeout(), Some(Duration::from_secs(30)));
        let policy = kind.retry_policy().unwrap();
        assert_eq!((policy.base, policy.cap), (Duration::from_millis(500), Duration::from_secs(60)));
        assert_eq!(kind.content_types(), ["image/*".to_string()]);
        let shown = kind.declaration().redacted();
        assert_eq!(shown.endpoint.unwrap().secret, REDACTED_SECRET);
        // What is stored reads back as the same kind.
        let again = DeclaredKind::from_stored("resize", kind.stored()).unwrap();
        assert_eq!(again.declaration(), kind.declaration());
    }

    #[test]
    fn a_file_entry_may_read_its_schema_from_a_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resize.json"), r#"{"type": "object", "required": ["width"]}"#)
            .unwrap();
        let entry: toml::Table =
            toml::from_str("name = \"resize\"\nschema_file = \"resize.json\"\nexample = { width = 1 }\n")
                .unwrap();
        let declaration = Declaration::from_file_entry(entry, dir.path()).unwrap();
        assert_eq!(declaration.schema, json!({"type": "object", "required": ["width"]}));
        assert_eq!(declaration.validate(), Ok(()));
        let both: toml::Table =
            toml::from_str("name = \"x\"\nschema_file = \"resize.json\"\nschema = {}\n").unwrap();
        assert!(Declaration::from_file_entry(both, dir.path()).is_err());
        let missing: toml::Table = toml::from_str("name = \"x\"\nschema_file = \"nope.json\"\n").unwrap();
        assert!(Declaration::from_file_entry(missing, dir.path()).unwrap_err().contains("schema_file"));
        let unknown: toml::Table = toml::from_str("name = \"x\"\ncolour = \"red\"\n").unwrap();
        assert!(Declaration::from_file_entry(unknown, dir.path()).unwrap_err().contains("colour"));
    }

    #[test]
    fn media_ranges_are_types_or_families() {
        for good in ["text/csv", "image/*", "application/vnd.api+json"] {
            assert!(is_media_range(good), "{good}");
        }
        for bad in ["csv", "*/*", "text/", "/csv", "text/csv; charset=utf-8", "a b/c"] {
            assert!(!is_media_range(bad), "{bad}");
        }
    }
}
