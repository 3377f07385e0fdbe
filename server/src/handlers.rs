//! Task kinds: the `Handler` trait every kind implements, and the registry of the kinds a process
//! knows: the built-in ones, and the ones declared at run time (`crate::kinds`).
//!
//! Adding a built-in kind is one file in `handlers/` and one line in [`Registry::builtin`].

mod csv_summary;
mod echo;
mod flaky;
mod sleep;
mod text_stats;

use crate::kinds::{self, DeclaredKind, KindKeys};
use crate::redis_client::Conn;
use app::model::KindInfo;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A task's payload as the handler receives it.
#[derive(Clone, Debug)]
pub struct Input {
    pub bytes: Bytes,
    pub content_type: String,
}

impl Input {
    /// True when the payload was sent as JSON.
    pub fn is_json(&self) -> bool {
        self.content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    }

    /// The payload parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| HandlerError::fatal(format!("payload does not fit this kind: {e}")))
    }

    /// The payload as text: a JSON string when sent as JSON, else the raw bytes as UTF-8.
    pub fn text(&self) -> Result<String, HandlerError> {
        if self.is_json() {
            self.json::<String>()
        } else {
            String::from_utf8(self.bytes.to_vec())
                .map_err(|_| HandlerError::fatal("payload is not UTF-8 text"))
        }
    }
}

/// What a handler produced: bytes and their content type.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub bytes: Bytes,
    pub content_type: String,
}

impl Output {
    /// A JSON result.
    pub fn json(value: &impl serde::Serialize) -> Output {
        Output {
            bytes: serde_json::to_vec(value).expect("results are plain data and always serialize").into(),
            content_type: "application/json".into(),
        }
    }
}

/// Why an attempt failed, and whether another attempt could succeed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
    pub retryable: bool,
    /// When the next attempt may come at the soonest (a `Retry-After`), if the failure said;
    /// the kind's retry cap still bounds it.
    pub retry_after: Option<std::time::Duration>,
}

impl HandlerError {
    /// A failure worth another attempt (a flaky dependency, a timeout).
    pub fn retryable(message: impl Into<String>) -> HandlerError {
        HandlerError { message: message.into(), retryable: true, retry_after: None }
    }

    /// A failure worth another attempt, no sooner than `after` (a peer's `Retry-After`).
    pub fn retryable_after(message: impl Into<String>, after: std::time::Duration) -> HandlerError {
        HandlerError { message: message.into(), retryable: true, retry_after: Some(after) }
    }

    /// A failure no retry can fix (a payload the kind cannot use): straight to the dead letters.
    pub fn fatal(message: impl Into<String>) -> HandlerError {
        HandlerError { message: message.into(), retryable: false, retry_after: None }
    }
}

/// What a running handler may know and do besides its input.
#[derive(Clone)]
pub struct Context {
    /// The task's id: the same on every attempt (a key to make the work idempotent).
    pub task_id: uuid::Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When this attempt times out, if its kind or task set a timeout.
    pub deadline: Option<std::time::SystemTime>,
    /// Fires when the task is cancelled or its lease is lost: stop soon.
    pub cancel: CancellationToken,
    progress: Arc<watch::Sender<Option<u8>>>,
}

impl Context {
    /// A context whose progress reports go to `progress`.
    pub fn new(attempt: u32, cancel: CancellationToken, progress: watch::Sender<Option<u8>>) -> Context {
        Context { task_id: uuid::Uuid::nil(), attempt, deadline: None, cancel, progress: Arc::new(progress) }
    }

    /// This context for attempt `attempt` of task `task_id`, due to end by `deadline`.
    pub fn for_task(mut self, task_id: uuid::Uuid, deadline: Option<std::time::SystemTime>) -> Context {
        self.task_id = task_id;
        self.deadline = deadline;
        self
    }

    /// Reports progress (0–100); cheap, and coalesced if reported faster than it is stored.
    pub fn progress(&self, percent: u8) {
        self.progress.send_replace(Some(percent.min(100)));
    }
}

/// One task kind.
pub trait Handler: Send + Sync + 'static {
    /// The kind's name, as in `{"kind": "…"}`.
    fn name(&self) -> &str;
    /// One sentence for people choosing a kind.
    fn description(&self) -> &str;
    /// JSON Schema of the payload when sent as JSON.
    fn schema(&self) -> serde_json::Value;
    /// A payload to show in the form.
    fn example(&self) -> serde_json::Value;
    /// Whether a raw (non-JSON) body is a valid payload.
    fn accepts_raw(&self) -> bool {
        false
    }
    /// The content types a raw body may have (`type/subtype`, or `type/*`); empty: any.
    fn content_types(&self) -> &[String] {
        &[]
    }
    /// Attempts a task of this kind gets unless the task says otherwise.
    fn max_attempts(&self) -> Option<u32> {
        None
    }
    /// How long one attempt may run unless the task says otherwise; `None`: no limit.
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// How its retries are spaced, when not as the worker's `--retry-base`/`--retry-cap` say.
    fn retry_policy(&self) -> Option<crate::worker::RetryPolicy> {
        None
    }
    /// Whether this process runs it. A kind declared without an endpoint is run by workers
    /// that pull it over HTTP: it is known here (validated, listed) but never leased here.
    fn runs_here(&self) -> bool {
        true
    }
    /// The queue its tasks go to unless a submission names another.
    fn queue(&self) -> &str {
        app::model::DEFAULT_QUEUE
    }
    /// Attempts the task. Must be safe to run twice: delivery is at least once. A `courier
    /// worker` runs on one thread unless `--threads` says otherwise: push CPU-heavy or blocking
    /// work to `tokio::task::spawn_blocking`, or it holds up every other task's lease renewal.
    fn run(&self, input: Input, ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>>;
}

/// Whether a raw body of `content_type` fits `accepted` (`type/subtype` or `type/*`, compared
/// without parameters and case); an empty list accepts any.
pub fn content_type_accepted(accepted: &[String], content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    accepted.is_empty()
        || accepted.iter().any(|allowed| match allowed.strip_suffix("/*") {
            Some(family) => media
                .split_once('/')
                .is_some_and(|(kind, subtype)| !subtype.is_empty() && kind.eq_ignore_ascii_case(family)),
            None => media.eq_ignore_ascii_case(allowed),
        })
}

/// The kinds this process knows, by name: the compiled ones, and the ones declared at run time
/// as last read by [`Registry::reload`]. Cheap to clone (every request's state and the worker
/// hold one), and every clone sees a reload at once.
#[derive(Clone)]
pub struct Registry {
    compiled: Arc<BTreeMap<String, Arc<dyn Handler>>>,
    declared: Arc<RwLock<Declared>>,
    /// One reload at a time, so that an older read never replaces a newer one.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

/// The declared kinds as last read, and the version of the declarations they were read at.
#[derive(Default)]
struct Declared {
    version: Option<u64>,
    kinds: BTreeMap<String, Arc<DeclaredKind>>,
}

impl Registry {
    /// Every built-in kind.
    pub fn builtin() -> Registry {
        let handlers: [Arc<dyn Handler>; 5] = [
            Arc::new(echo::Echo),
            Arc::new(text_stats::TextStats),
            Arc::new(csv_summary::CsvSummary),
            Arc::new(sleep::Sleep),
            Arc::new(flaky::Flaky),
        ];
        Registry {
            compiled: Arc::new(handlers.into_iter().map(|h| (h.name().to_string(), h)).collect()),
            declared: Arc::default(),
            reloading: Arc::default(),
        }
    }

    /// This registry with `handler` added: a kind of your own, in a binary of your own
    /// (`examples/custom_kind.rs`). A kind of the same name is replaced.
    ///
    /// # Panics
    /// When the kind's name is not a valid kind name (`app::model::is_kind_name`): a mistake in
    /// the binary's code, found the first time it starts.
    pub fn with(self, handler: impl Handler) -> Registry {
        assert!(app::model::is_kind_name(handler.name()), "`{}` is not a valid kind name", handler.name());
        let mut compiled = (*self.compiled).clone();
        compiled.insert(handler.name().to_string(), Arc::new(handler));
        Registry { compiled: Arc::new(compiled), ..self }
    }

    /// The handler of `kind`, if there is one: a compiled kind's, else a declared one's.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        if let Some(handler) = self.compiled.get(kind) {
            return Some(handler.clone());
        }
        let declared = self.declared.read().expect("never poisoned");
        declared.kinds.get(kind).map(|k| k.clone() as Arc<dyn Handler>)
    }

    /// Whether `kind` is compiled into this process (built in, or added with [`Registry::with`]):
    /// such a name cannot be declared.
    pub fn is_compiled(&self, kind: &str) -> bool {
        self.compiled.contains_key(kind)
    }

    /// Every kind, compiled ones first where a name is both, by name.
    fn all(&self) -> BTreeMap<String, (Arc<dyn Handler>, bool)> {
        let declared = self.declared.read().expect("never poisoned");
        let mut all: BTreeMap<String, (Arc<dyn Handler>, bool)> = declared
            .kinds
            .iter()
            .map(|(name, kind)| (name.clone(), (kind.clone() as Arc<dyn Handler>, true)))
            .collect();
        all.extend(self.compiled.iter().map(|(name, h)| (name.clone(), (h.clone(), false))));
        all
    }

    /// The kinds this process runs (compiled in, or declared with an endpoint), by name: what
    /// its workers lease.
    pub fn run_here(&self) -> Vec<String> {
        self.all().into_iter().filter(|(_, (h, _))| h.runs_here()).map(|(name, _)| name).collect()
    }

    /// Every kind, described for `GET /api/v1/kinds`, by name.
    pub fn describe(&self) -> Vec<KindInfo> {
        self.all()
            .into_values()
            .map(|(h, declared)| KindInfo {
                name: h.name().into(),
                description: h.description().into(),
                schema: h.schema(),
                example: h.example(),
                accepts_raw: h.accepts_raw(),
                queue: h.queue().into(),
                content_types: h.content_types().to_vec(),
                declared,
            })
            .collect()
    }

    /// Reads the declared kinds again if their version changed since the last read (one `GET`
    /// when it did not); `true` if they were read. A declaration that no longer reads (written by
    /// a newer version) is left out, and said once per read. An unchanged declaration keeps its
    /// handler (and its endpoint's connections and in-flight bound).
    pub async fn reload(&self, conn: &Conn, keys: &KindKeys) -> redis::RedisResult<bool> {
        let _one_at_a_time = self.reloading.lock().await;
        let version = kinds::version(conn, keys).await?;
        if self.declared.read().expect("never poisoned").version == Some(version) {
            return Ok(false);
        }
        let (version, stored) = kinds::read_all(conn, keys).await?;
        let current = self.declared.read().expect("never poisoned").kinds.clone();
        let mut read = BTreeMap::new();
        for (name, json) in stored {
            if let Some(kept) = current.get(&name).filter(|k| k.stored() == json) {
                read.insert(name, kept.clone());
                continue;
            }
            match DeclaredKind::from_stored(&name, &json) {
                Ok(kind) => {
                    read.insert(name, Arc::new(kind));
                }
                Err(e) => warn!(task.kind = %name, error = %e, "skipping a declared kind that does not read"),
            }
        }
        *self.declared.write().expect("never poisoned") = Declared { version: Some(version), kinds: read };
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Runs `handler` on a JSON payload with a fresh context.
    pub async fn run_json(
        handler: &dyn Handler,
        payload: serde_json::Value,
        attempt: u32,
    ) -> Result<Output, HandlerError> {
        let input = Input {
            bytes: serde_json::to_vec(&payload).unwrap().into(),
            content_type: "application/json".into(),
        };
        let (tx, _rx) = watch::channel(None);
        handler.run(input, Context::new(attempt, CancellationToken::new(), tx)).await
    }

    pub fn json_of(output: &Output) -> serde_json::Value {
        serde_json::from_slice(&output.bytes).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_passes_its_own_schema() {
        for kind in Registry::builtin().describe() {
            assert_eq!(app::schema::validate(&kind.schema, &kind.example), Ok(()), "{}", kind.name);
        }
    }

    #[test]
    fn raw_content_types_match_exactly_or_by_family_without_parameters() {
        let accepted = ["text/csv".to_string(), "image/*".to_string()];
        assert!(content_type_accepted(&accepted, "text/csv; charset=utf-8"));
        assert!(content_type_accepted(&accepted, "Text/CSV"));
        assert!(content_type_accepted(&accepted, "image/png"));
        assert!(!content_type_accepted(&accepted, "image/"));
        assert!(!content_type_accepted(&accepted, "text/plain"));
        assert!(!content_type_accepted(&accepted, "application/octet-stream"));
        assert!(content_type_accepted(&[], "application/octet-stream"));
    }

    #[test]
    fn the_five_builtin_kinds_are_registered() {
        let names: Vec<String> = Registry::builtin().describe().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["csv.summary", "echo", "flaky", "sleep", "text.stats"]);
    }
}
