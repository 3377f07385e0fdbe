//! The task service: submit, look up, list and cancel tasks. The one place these rules live;
//! the REST API and the UI both go through it.

use crate::{
    handlers::Registry,
    queue::{CancelOutcome, NewTask, Queue},
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
    /// A JSON value, checked against the kind's schema.
    Json(serde_json::Value),
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

impl Tasks {
    /// The service over `queue` and `store`, accepting the kinds in `registry`.
    pub fn new(queue: Queue, store: Store, registry: Registry, default_max_attempts: u32) -> Tasks {
        Tasks { queue, store, registry, default_max_attempts, depth_cache: Default::default() }
    }

    /// Every kind, with its description and payload schema.
    pub fn kinds(&self) -> Vec<KindInfo> {
        self.registry.describe()
    }

    /// Validates a submission into the task to enqueue.
    fn prepare(&self, kind: String, payload: Payload, options: &Options) -> Result<NewTask, SubmitError> {
        let handler = self.registry.get(&kind).ok_or_else(|| SubmitError::UnknownKind(kind.clone()))?;
        let max_attempts =
            options.max_attempts.or(handler.max_attempts()).unwrap_or(self.default_max_attempts);
        validate_options(options, max_attempts)?;
        let timeout_ms = options.timeout_ms.or(handler.timeout().map(|t| t.as_millis() as u64));
        let (bytes, payload_type) = match payload {
            Payload::Json(value) => {
                check_schema(&kind, &handler.schema(), &value)?;
                (
                    Bytes::from(serde_json::to_vec(&value).expect("a parsed JSON value serializes")),
                    "application/json".to_string(),
                )
            }
            Payload::Raw { bytes, content_type } if is_json(&content_type) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| SubmitError::MalformedJson(e.to_string()))?;
                check_schema(&kind, &handler.schema(), &value)?;
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
            created_ms: crate::store::now_ms(),
            kind,
            payload: bytes,
            payload_type,
            max_attempts,
            timeout_ms,
            delay_ms: options.delay_ms.filter(|&d| d > 0),
            priority: options.priority.unwrap_or_default(),
            session: options.session.clone(),
            subscription: options.subscription.clone(),
            idempotency_key: None,
        })
    }

    /// Validates every submission, then enqueues them all at once (one MULTI), or none: the
    /// error names the first refused one. Idempotency keys are not taken here.
    pub async fn submit_many(&self, submissions: Vec<Submission>) -> Result<Vec<TaskRecord>, BatchError> {
        let tasks = submissions
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                self.prepare(s.kind, s.payload, &s.options)
                    .map_err(|error| BatchError::Rejected { index, error })
            })
            .collect::<Result<Vec<NewTask>, _>>()?;
        if !tasks.is_empty() {
            self.queue.enqueue_many(&tasks).await?;
        }
        Ok(tasks.iter().map(record_of).collect())
    }

    /// Validates and enqueues a task; on any error nothing is stored.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, SubmitError> {
        let Submission { kind, payload, options, idempotency_key } = submission;
        let mut task = self.prepare(kind, payload, &options)?;
        let Some(key) = idempotency_key else {
            self.queue.enqueue(&task).await?;
            return Ok(Submitted { record: record_of(&task), replayed: false });
        };
        let key_name =
            self.store.keys().idempotency(&sha1_smol::Sha1::from(key.as_bytes()).digest().to_string());
        let digest = fingerprint(&task);
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
    pub async fn requeue_all(&self, kind: Option<&str>) -> redis::RedisResult<usize> {
        const BATCH: usize = 500;
        let until = crate::store::now_ms();
        let mut requeued = 0;
        let mut skipped = 0;
        loop {
            // Skipped ones (another kind) stay in the set, so page past them.
            let ids = self.store.dead_letter_ids(until, skipped + BATCH).await?;
            let batch: Vec<Uuid> = ids.into_iter().skip(skipped).collect();
            if batch.is_empty() {
                return Ok(requeued);
            }
            for id in &batch {
                let wanted = match kind {
                    None => true,
                    Some(kind) => self.store.get(id).await?.is_some_and(|r| r.kind == kind),
                };
                if wanted && self.queue.requeue(id).await? {
                    requeued += 1;
                } else if !wanted {
                    skipped += 1;
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

/// A digest of everything that makes two submissions the same request.
fn fingerprint(task: &NewTask) -> String {
    let mut hash = sha1_smol::Sha1::new();
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

fn check_schema(
    kind: &str,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), SubmitError> {
    app::schema::validate(schema, value)
        .map_err(|errors| SubmitError::InvalidPayload { kind: kind.to_string(), errors })
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
    }
}
