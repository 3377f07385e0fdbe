//! The task service: submit, look up, list and cancel tasks. The one place these rules live;
//! the REST API and the UI both go through it.

use crate::{
    handlers::Registry,
    queue::{CancelOutcome, NewTask, Queue, SharedPayload},
    store::{Store, StoredResult, TaskRecord},
};
use app::model::{KindInfo, Priority, Status};
use bytes::Bytes;
use uuid::Uuid;

/// The longest a task may be delayed.
const MAX_DELAY_MS: u64 = 30 * 24 * 3_600_000;
/// The longest timeout a task may ask for.
const MAX_TIMEOUT_MS: u64 = 24 * 3_600_000;
/// The most attempts a task may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// The longest a task may wait before it expires (`ttl_ms`, `expires_at`).
const MAX_TTL_MS: u64 = 365 * 24 * 3_600_000;
/// Payloads up to this size are validated on the async runtime; larger ones on a blocking
/// thread, so that parsing megabytes never stalls the requests and events beside them.
const VALIDATE_INLINE_MAX: usize = 64 * 1024;

/// A task as submitted, before validation.
#[derive(Clone, Debug)]
pub struct Submission {
    pub kind: String,
    pub payload: Payload,
    pub options: Options,
    /// The client's `Idempotency-Key`: the same key with the same request gives the same task.
    pub idempotency_key: Option<String>,
}

/// An accepted submission.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub record: TaskRecord,
    /// True when an earlier request with the same idempotency key created the task.
    pub replayed: bool,
}

/// The payload of a submission.
#[derive(Clone, Debug)]
pub enum Payload {
    /// JSON text (the `payload` of a JSON submission, as sent): checked without a parsed tree.
    Json(Bytes),
    /// Raw bytes with their content type (an upload); JSON bytes are checked like `Json`.
    Raw { bytes: Bytes, content_type: String },
}

/// Per-task options, from the JSON body or the query string.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub delay_ms: Option<u64>,
    pub priority: Option<Priority>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub session: Option<String>,
    /// Expire after this many ms from submission if no attempt has started.
    pub ttl_ms: Option<u64>,
    /// Expire at this time (RFC 3339) if no attempt has started.
    pub expires_at: Option<String>,
    /// Set by publishing: the subscription (`topic/name`) the task is for.
    pub subscription: Option<String>,
}

/// Why a submission was refused; nothing was stored for it.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown task kind `{0}`")]
    UnknownKind(String),
    #[error("the payload does not match the schema of `{kind}`")]
    InvalidPayload { kind: String, errors: Vec<String> },
    #[error("{0}")]
    InvalidOption(String),
    #[error("the payload is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Why a batch of submissions was refused; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The submission at `index` (from 0) was refused.
    #[error("submission {index}: {error}")]
    Rejected { index: usize, error: SubmitError },
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Why a cancel request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no task with this id (it never existed or has expired)")]
    NotFound,
    #[error("the task has already {0}")]
    Finished(Status),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting and is cancelled now.
    Now,
    /// It is running; its handler has been told to stop.
    Requested,
}

/// Filters and paging of a task listing.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub kind: Option<String>,
    pub limit: usize,
    pub cursor: Option<Uuid>,
}

/// The task service; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    queue: Queue,
    store: Store,
    registry: Registry,
    default_max_attempts: u32,
    depth_cache: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
}

impl Payload {
    /// The payload's size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(bytes) | Payload::Raw { bytes, .. } => bytes.len(),
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Tasks {
    /// The service over `queue` and `store`, accepting the kinds in `registry`.
    pub fn new(queue: Queue, store: Store, registry: Registry, default_max_attempts: u32) -> Tasks {
        Tasks { queue, store, registry, default_max_attempts, depth_cache: Default::default() }
    }

    /// Every kind, with its description and payload schema.
    pub fn kinds(&self) -> Vec<KindInfo> {
        self.registry.describe()
    }

    /// Validates a submission into the task to enqueue. `checked`: the payload has already
    /// passed this kind's schema (one topic message for several subscriptions of a kind).
    fn prepare(&self, submission: Submission, checked: bool) -> Result<NewTask, SubmitError> {
        let Submission { kind, payload, options, idempotency_key: _ } = submission;
        let handler = self.registry.get(&kind).ok_or_else(|| SubmitError::UnknownKind(kind.clone()))?;
        let max_attempts =
            options.max_attempts.or(handler.max_attempts()).unwrap_or(self.default_max_attempts);
        validate_options(&options, max_attempts)?;
        let created_ms = crate::store::now_ms();
        let expires_ms = expiry(&options, created_ms)?;
        let timeout_ms = options.timeout_ms.or(handler.timeout().map(|t| t.as_millis() as u64));
        let (bytes, payload_type) = match payload {
            Payload::Json(bytes) => {
                if !checked {
                    check_schema(&kind, &handler.schema(), &bytes)?;
                }
                (bytes, "application/json".to_string())
            }
            Payload::Raw { bytes, content_type } if is_json(&content_type) => {
                check_schema(&kind, &handler.schema(), &bytes)?;
                (bytes, "application/json".to_string())
            }
            Payload::Raw { bytes, content_type } => {
                if !handler.accepts_raw() {
                    return Err(SubmitError::Unsupported(format!(
                        "`{kind}` takes a JSON payload (Content-Type: application/json)"
                    )));
                }
                (bytes, content_type)
            }
        };
        Ok(NewTask {
            id: Uuid::now_v7(),
            created_ms,
            kind,
            payload: bytes,
            payload_type,
            max_attempts,
            timeout_ms,
            delay_ms: options.delay_ms.filter(|&d| d > 0),
            priority: options.priority.unwrap_or_default(),
            session: options.session,
            subscription: options.subscription,
            idempotency_key: None,
            expires_ms,
            shared_payload: None,
        })
    }

    /// Validates every submission in order, the first refusal naming its index; on a blocking
    /// thread when the payloads are large. `shared`: the payloads are one message's, checked
    /// once per kind.
    async fn prepare_all(
        &self,
        submissions: Vec<Submission>,
        shared: bool,
    ) -> Result<Vec<NewTask>, BatchError> {
        let size: usize = submissions.iter().map(|s| s.payload.len()).sum();
        if size <= VALIDATE_INLINE_MAX {
            return self.prepare_each(submissions, shared);
        }
        let service = self.clone();
        match tokio::task::spawn_blocking(move || service.prepare_each(submissions, shared)).await {
            Ok(prepared) => prepared,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only a runtime shutting down cancels a blocking task.
                Err(_) => Err(BatchError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the server is shutting down",
                )))),
            },
        }
    }

    /// [`Tasks::prepare`] for each submission, in order, the first refusal naming its index.
    fn prepare_each(&self, submissions: Vec<Submission>, shared: bool) -> Result<Vec<NewTask>, BatchError> {
        let mut passed = std::collections::HashSet::new();
        let mut tasks = Vec::with_capacity(submissions.len());
        for (index, submission) in submissions.into_iter().enumerate() {
            let checked = shared && passed.contains(&submission.kind);
            let kind = shared.then(|| submission.kind.clone());
            let task =
                self.prepare(submission, checked).map_err(|error| BatchError::Rejected { index, error })?;
            passed.extend(kind);
            tasks.push(task);
        }
        Ok(tasks)
    }

    /// Validates every submission, then enqueues them all at once (one MULTI), or none: the
    /// error names the first refused one. Idempotency keys are not taken here.
    pub async fn submit_many(&self, submissions: Vec<Submission>) -> Result<Vec<TaskRecord>, BatchError> {
        let tasks = self.prepare_all(submissions, false).await?;
        if !tasks.is_empty() {
            self.queue.enqueue_many(&tasks).await?;
        }
        Ok(tasks.iter().map(record_of).collect())
    }

    /// Like [`Tasks::submit_many`] for submissions that carry one and the same payload (a topic
    /// message for each matching subscription): the payload is stored once and shared, and freed
    /// after the last of its tasks has ended.
    pub async fn submit_shared(&self, submissions: Vec<Submission>) -> Result<Vec<TaskRecord>, BatchError> {
        let mut tasks = self.prepare_all(submissions, true).await?;
        if let [first, _, ..] = tasks.as_slice() {
            let shared = SharedPayload { owner: first.id, tasks: tasks.len() };
            for task in &mut tasks {
                task.shared_payload = Some(shared);
            }
        }
        if !tasks.is_empty() {
            self.queue.enqueue_many(&tasks).await?;
        }
        Ok(tasks.iter().map(record_of).collect())
    }

    /// Validates and enqueues a task; on any error nothing is stored.
    pub async fn submit(&self, mut submission: Submission) -> Result<Submitted, SubmitError> {
        // What only an idempotent request needs is worked out only for one.
        let idempotency_key =
            submission.idempotency_key.take().map(|key| (key, fingerprint_options(&submission.options)));
        let mut task = match self.prepare_all(vec![submission], false).await {
            Ok(mut tasks) => tasks.pop().expect("one submission makes one task"),
            Err(BatchError::Rejected { error, .. }) => return Err(error),
            Err(BatchError::Redis(e)) => return Err(e.into()),
        };
        let Some((key, request)) = idempotency_key else {
            self.queue.enqueue(&task).await?;
            return Ok(Submitted { record: record_of(&task), replayed: false });
        };
        let key_name =
            self.store.keys().idempotency(&sha1_smol::Sha1::from(key.as_bytes()).digest().to_string());
        let digest = fingerprint(&task, &request);
        task.idempotency_key = Some(key_name.clone());
        match self.queue.claim_idempotency_key(&key_name, &format!("{} {digest}", task.id)).await? {
            None => match self.queue.enqueue(&task).await {
                Ok(()) => Ok(Submitted { record: record_of(&task), replayed: false }),
                Err(e) => {
                    // Best effort: a key that stays claimed would make retries of this request fail.
                    let _ = self.queue.release_idempotency_key(&key_name).await;
                    Err(e.into())
                }
            },
            Some(held) => {
                let (id, held_digest) = held.split_once(' ').unwrap_or((held.as_str(), ""));
                if held_digest != digest {
                    return Err(SubmitError::IdempotencyKeyReused);
                }
                let id: Uuid = id.parse().map_err(|_| SubmitError::IdempotencyKeyReused)?;
                Ok(Submitted { record: self.wait_for_record(&id).await?, replayed: true })
            }
        }
    }

    /// The record of a task whose first request may still be storing it (a few milliseconds).
    async fn wait_for_record(&self, id: &Uuid) -> Result<TaskRecord, SubmitError> {
        for _ in 0..50 {
            if let Some(record) = self.store.get(id).await? {
                return Ok(record);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(SubmitError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the task of this Idempotency-Key was not stored",
        ))))
    }

    /// The task's record, or `None` if unknown or expired.
    pub async fn get(&self, id: &Uuid) -> redis::RedisResult<Option<TaskRecord>> {
        self.store.get(id).await
    }

    /// The result of a succeeded task.
    pub async fn result(&self, record: &TaskRecord) -> redis::RedisResult<Option<StoredResult>> {
        self.store.result(record).await
    }

    /// Tasks newest first, filtered, one page at a time.
    pub async fn list(&self, query: &ListQuery) -> redis::RedisResult<(Vec<TaskRecord>, Option<Uuid>)> {
        self.store
            .list(query.cursor, query.limit, |r| {
                query.status.is_none_or(|s| r.status == s)
                    && query.kind.as_deref().is_none_or(|k| r.kind == k)
            })
            .await
    }

    /// Cancels a waiting task at once, or tells a running one to stop.
    pub async fn cancel(&self, id: &Uuid) -> Result<Cancelled, CancelError> {
        match self.queue.cancel(id).await? {
            CancelOutcome::Missing => Err(CancelError::NotFound),
            CancelOutcome::Cancelled => Ok(Cancelled::Now),
            CancelOutcome::Cancelling => Ok(Cancelled::Requested),
            CancelOutcome::AlreadyFinished(status) => Err(CancelError::Finished(status)),
        }
    }

    /// Dead letters, most recent failure first, one page at a time.
    pub async fn dead_letters(
        &self,
        cursor: Option<(u64, Uuid)>,
        limit: usize,
    ) -> redis::RedisResult<(Vec<(TaskRecord, u64)>, Option<(u64, Uuid)>)> {
        self.store.dead_letters(cursor, limit).await
    }

    /// Queues a dead letter again with its attempts reset; `false` if it is not a dead letter.
    pub async fn requeue(&self, id: &Uuid) -> redis::RedisResult<bool> {
        self.queue.requeue(id).await
    }

    /// Queues again every dead letter there is now (optionally of one kind); returns how many.
    /// Pages through the dead letters by rank, stepping over the ones of other kinds, so the work
    /// grows with the dead letters there are, once each.
    pub async fn requeue_all(&self, kind: Option<&str>) -> redis::RedisResult<usize> {
        const BATCH: usize = 500;
        let until = crate::store::now_ms();
        let mut requeued = 0;
        // Requeued ones leave the set; the ones stepped over stay before the next page.
        let mut kept = 0;
        loop {
            let page = self.store.dead_letter_page(kept, BATCH, until).await?;
            if page.is_empty() {
                return Ok(requeued);
            }
            for (id, task_kind) in page {
                if kind.is_some_and(|k| task_kind.as_deref() != Some(k)) {
                    kept += 1;
                } else if self.queue.requeue(&id).await? {
                    // (A requeue that finds no record still takes the stale id out of the set.)
                    requeued += 1;
                }
            }
        }
    }

    /// Deletes a dead letter with its payload; `false` if it is not a dead letter.
    pub async fn purge(&self, id: &Uuid) -> redis::RedisResult<bool> {
        self.queue.purge(id).await
    }

    /// How many tasks wait to run (ready and delayed).
    pub async fn depth(&self) -> redis::RedisResult<u64> {
        self.queue.depth().await
    }

    /// [`Tasks::depth`], read at most every quarter second: it only feeds estimates.
    pub async fn depth_cached(&self) -> redis::RedisResult<u64> {
        const FRESH: std::time::Duration = std::time::Duration::from_millis(250);
        if let Some((at, depth)) = *self.depth_cache.lock().expect("never poisoned")
            && at.elapsed() < FRESH
        {
            return Ok(depth);
        }
        let depth = self.queue.depth().await?;
        *self.depth_cache.lock().expect("never poisoned") = Some((std::time::Instant::now(), depth));
        Ok(depth)
    }
}

/// The options of a request that its task keeps only in a derived form (an expiry relative to
/// the submission), as they were asked for.
fn fingerprint_options(options: &Options) -> String {
    format!("{:?}\0{:?}\0", options.ttl_ms, options.expires_at)
}

/// A digest of everything that makes two submissions the same request.
fn fingerprint(task: &NewTask, request: &str) -> String {
    let mut hash = sha1_smol::Sha1::new();
    hash.update(request.as_bytes());
    let options = format!(
        "{}\0{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0",
        task.kind,
        task.payload_type,
        task.max_attempts,
        task.timeout_ms,
        task.delay_ms,
        task.priority,
        task.session
    );
    hash.update(options.as_bytes());
    hash.update(&task.payload);
    hash.digest().to_string()
}

fn is_json(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Checks JSON text against a kind's schema, without building a tree of it.
fn check_schema(kind: &str, schema: &serde_json::Value, text: &[u8]) -> Result<(), SubmitError> {
    app::schema::validate_text(schema, text).map_err(|invalid| match invalid {
        app::schema::Invalid::Syntax(e) => SubmitError::MalformedJson(e),
        app::schema::Invalid::Schema(errors) => {
            SubmitError::InvalidPayload { kind: kind.to_string(), errors }
        }
    })
}

/// When a task expires, from its `ttl_ms` or `expires_at` (at most one), submitted at `now`.
fn expiry(options: &Options, now: u64) -> Result<Option<u64>, SubmitError> {
    let invalid = |m: String| Err(SubmitError::InvalidOption(m));
    let expires = match (options.ttl_ms, &options.expires_at) {
        (Some(_), Some(_)) => return invalid("give ttl_ms or expires_at, not both".into()),
        (None, None) => return Ok(None),
        (Some(ttl), None) => {
            if !(1..=MAX_TTL_MS).contains(&ttl) {
                return invalid(format!("ttl_ms must be between 1 and {MAX_TTL_MS} (365 days)"));
            }
            now + ttl
        }
        (None, Some(at)) => {
            let parsed = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp_nanos() / 1_000_000)
                .filter(|&ms| ms > i128::from(now) && ms <= i128::from(now + MAX_TTL_MS));
            match parsed {
                Some(ms) => ms as u64,
                None => {
                    return invalid(format!(
                        "expires_at must be an RFC 3339 time in the future, within 365 days, not `{at}`"
                    ));
                }
            }
        }
    };
    if options.delay_ms.is_some_and(|delay| now + delay >= expires) {
        return invalid("the task would expire before it is due: its expiry must come after delay_ms".into());
    }
    Ok(Some(expires))
}

fn validate_options(options: &Options, max_attempts: u32) -> Result<(), SubmitError> {
    let invalid = |m: String| Err(SubmitError::InvalidOption(m));
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return invalid(format!("max_attempts must be between 1 and {MAX_ATTEMPTS}"));
    }
    if options.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
        return invalid(format!("delay_ms must be at most {MAX_DELAY_MS} (30 days)"));
    }
    if options.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
        return invalid(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS} (24 hours)"));
    }
    if let Some(session) = &options.session {
        if session.is_empty() || session.len() > 200 {
            return invalid("session must be 1 to 200 characters".into());
        }
        // A session's order is its schedule: its tasks neither wait for a time nor jump ahead.
        if options.delay_ms.is_some_and(|d| d > 0) {
            return Err(SubmitError::Unsupported("a task of a session cannot be delayed".into()));
        }
        if options.priority.is_some_and(|p| p != Priority::Normal) {
            return Err(SubmitError::Unsupported(
                "a task of a session runs in its order, not by priority".into(),
            ));
        }
    }
    Ok(())
}

/// The record `enqueue` just stored for `task`, field for field.
fn record_of(task: &NewTask) -> TaskRecord {
    let now = task.created_ms;
    TaskRecord {
        id: task.id,
        kind: task.kind.clone(),
        status: if task.delay_ms.is_some() { Status::Scheduled } else { Status::Queued },
        attempts: 0,
        max_attempts: task.max_attempts,
        progress: None,
        created_ms: now,
        updated_ms: now,
        started_ms: None,
        finished_ms: None,
        payload_bytes: task.payload.len() as u64,
        payload_type: task.payload_type.clone(),
        result_type: None,
        result_is_payload: false,
        error: None,
        next_run_ms: None,
        dead_reason: None,
        subscription: task.subscription.clone(),
        expires_ms: task.expires_ms,
        payload_ref: task.shared_payload.map(|s| s.owner),
    }
}
