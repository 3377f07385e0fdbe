//! The task service: submit, look up, list and cancel tasks. The one place these rules live;
//! the REST API and the UI both go through it.

use crate::{
    auth::QueuePatterns,
    handlers::{Registry, content_type_accepted},
    queue::{CancelOutcome, Enqueued, NewTask, Queue, SharedPayload},
    queues::{QueueError, Queues},
    store::{self, StoredResult, TaskRecord},
};
use app::model::{KindInfo, Priority, Status, is_queue_name};
use bytes::Bytes;
use uuid::Uuid;

mod dead_letters;

pub use dead_letters::{BulkAction, BulkError, DeadLetterFilter};

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
    /// The queue to run it in; the kind's default when absent.
    pub queue: Option<String>,
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
    /// A raw body of a content type its kind does not take.
    #[error("{0}")]
    UnsupportedContentType(String),
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("queue `{queue}` holds {waiting} waiting tasks and takes at most {max_depth}")]
    QueueFull { queue: String, waiting: u64, max_depth: u64 },
    #[error("{0}")]
    TooManyQueues(String),
    /// `--durable-submit`: the tasks are stored on the primary, but no replica confirmed them in
    /// time.
    #[error("{0}")]
    Unconfirmed(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What a durable submission tells when no replica confirmed its tasks in time.
fn unconfirmed(ids: impl Iterator<Item = Uuid>) -> String {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    format!(
        "no replica of Redis confirmed the submission in time: task {} is stored on the primary, \
         not yet on a replica, so a failover now could lose it; retry with the same Idempotency-Key \
         to have it confirmed",
        ids.join(", ")
    )
}

impl From<QueueError> for SubmitError {
    fn from(e: QueueError) -> SubmitError {
        match e {
            QueueError::InvalidName(_) => SubmitError::InvalidOption(e.to_string()),
            QueueError::TooMany => SubmitError::TooManyQueues(e.to_string()),
            QueueError::Redis(e) => SubmitError::Redis(e),
        }
    }
}

/// Why a batch of submissions was refused; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The submission at `index` (from 0) was refused.
    #[error("submission {index}: {error}")]
    Rejected { index: usize, error: SubmitError },
    /// The batch as a whole was refused (its queue is full, or cannot be opened).
    #[error(transparent)]
    Refused(SubmitError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl From<QueueError> for BatchError {
    fn from(e: QueueError) -> BatchError {
        BatchError::Refused(e.into())
    }
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
    pub queue: Option<String>,
    /// The task's id, or the beginning of it (lowercase).
    pub id: Option<String>,
    /// Created at or after (ms since the epoch).
    pub created_from_ms: Option<u64>,
    /// Created before (ms since the epoch).
    pub created_before_ms: Option<u64>,
    pub limit: usize,
    pub cursor: Option<Uuid>,
    /// Only the queues these patterns reach (an access token's); every queue if unset.
    pub within: Option<QueuePatterns>,
}

impl ListQuery {
    /// Whether `record` passes every filter but the queue's.
    fn keeps(&self, record: &TaskRecord) -> bool {
        self.status.is_none_or(|s| record.status == s)
            && self.kind.as_deref().is_none_or(|k| record.kind == k)
            && self.created_from_ms.is_none_or(|ms| record.created_ms >= ms)
            && self.created_before_ms.is_none_or(|ms| record.created_ms < ms)
    }

    /// The ids the listing reads: those of the id's beginning, created within a second of the
    /// asked-for times (a record's time and its id's are two readings of the clock; [`keeps`]
    /// decides exactly), before the cursor.
    ///
    /// [`keeps`]: ListQuery::keeps
    fn ids(&self) -> store::IdRange {
        const MARGIN_MS: u64 = 1_000;
        let mut range = store::IdRange::created(
            self.created_from_ms.map(|ms| ms.saturating_sub(MARGIN_MS)),
            self.created_before_ms.map(|ms| ms.saturating_add(MARGIN_MS)),
        );
        if let Some(prefix) = &self.id {
            range = range.and(store::IdRange::prefixed(prefix));
        }
        if let Some(cursor) = self.cursor {
            range = range.and(store::IdRange { at_least: None, below: Some(cursor.to_string()) });
        }
        range
    }
}

/// The task service; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    queues: Queues,
    registry: Registry,
    default_max_attempts: u32,
    depth_cache: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, u64)>>>,
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
    /// The service over `queues`, accepting the kinds in `registry`.
    pub fn new(queues: Queues, registry: Registry, default_max_attempts: u32) -> Tasks {
        Tasks { queues, registry, default_max_attempts, depth_cache: Default::default() }
    }

    /// The kinds tasks may be of.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The queues tasks go to.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Every kind, with its description and payload schema.
    pub fn kinds(&self) -> Vec<KindInfo> {
        self.registry.describe()
    }

    /// Validates a submission into the task to enqueue. `checked`: the payload has already
    /// passed this kind's schema (one topic message for several subscriptions of a kind).
    /// `traceparent`: the trace context its attempts continue.
    fn prepare(
        &self,
        submission: Submission,
        checked: bool,
        traceparent: &str,
    ) -> Result<NewTask, SubmitError> {
        let Submission { kind, payload, options, idempotency_key: _ } = submission;
        let handler = self.registry.get(&kind).ok_or_else(|| SubmitError::UnknownKind(kind.clone()))?;
        let queue = options.queue.clone().unwrap_or_else(|| handler.queue().to_string());
        if !is_queue_name(&queue) {
            return Err(QueueError::InvalidName(queue).into());
        }
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
                if !content_type_accepted(handler.content_types(), &content_type) {
                    return Err(SubmitError::UnsupportedContentType(format!(
                        "`{kind}` takes a raw body of {} (or JSON), not `{content_type}`",
                        handler.content_types().join(", ")
                    )));
                }
                (bytes, content_type)
            }
        };
        Ok(NewTask {
            id: Uuid::now_v7(),
            created_ms,
            queue,
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
            traceparent: Some(traceparent.to_string()),
            workflow: None,
        })
    }

    /// Validates every submission in order, the first refusal naming its index; on a blocking
    /// thread when the payloads are large. `shared`: the payloads are one message's, checked
    /// once per kind. Each task keeps the trace context of the request that submits it (its
    /// `traceparent`, continued by the request's span), or a new trace's.
    async fn prepare_all(
        &self,
        submissions: Vec<Submission>,
        shared: bool,
    ) -> Result<Vec<NewTask>, BatchError> {
        let traceparent = crate::trace_context::format(&crate::trace_context::current());
        let size: usize = submissions.iter().map(|s| s.payload.len()).sum();
        if size <= VALIDATE_INLINE_MAX {
            return self.prepare_each(submissions, shared, &traceparent);
        }
        let service = self.clone();
        let prepared =
            tokio::task::spawn_blocking(move || service.prepare_each(submissions, shared, &traceparent));
        match prepared.await {
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
    fn prepare_each(
        &self,
        submissions: Vec<Submission>,
        shared: bool,
        traceparent: &str,
    ) -> Result<Vec<NewTask>, BatchError> {
        let mut passed = std::collections::HashSet::new();
        let mut tasks = Vec::with_capacity(submissions.len());
        for (index, submission) in submissions.into_iter().enumerate() {
            let checked = shared && passed.contains(&submission.kind);
            let kind = shared.then(|| submission.kind.clone());
            let task = self
                .prepare(submission, checked, traceparent)
                .map_err(|error| BatchError::Rejected { index, error })?;
            passed.extend(kind);
            tasks.push(task);
        }
        Ok(tasks)
    }

    /// Opens the queue of each task (registering it on first use) and gives the task an id that
    /// names it, so that the task is found by its id alone.
    async fn place(&self, tasks: &mut [NewTask]) -> Result<(), SubmitError> {
        for task in tasks {
            let queue = self.queues.open(&task.queue).await?;
            task.id = crate::queues::stamp(task.id, queue.number());
        }
        Ok(())
    }

    /// Enqueues `tasks`, all of one queue, at once; nothing if the queue's `max_depth` would be
    /// passed. Every submission stores its tasks here, so here they are counted, once each.
    async fn enqueue(&self, tasks: &[NewTask]) -> Result<Queue, SubmitError> {
        let queue = self.queues.open(&tasks[0].queue).await?;
        match queue.enqueue_many(tasks).await? {
            stored @ (Enqueued::Stored | Enqueued::Unconfirmed) => {
                for task in tasks {
                    self.queues.remember(task.id, &queue);
                    crate::metrics::task_submitted(&task.queue, &task.kind);
                }
                if stored == Enqueued::Unconfirmed {
                    return Err(SubmitError::Unconfirmed(unconfirmed(tasks.iter().map(|t| t.id))));
                }
                Ok(queue)
            }
            Enqueued::Full { waiting, max_depth } => {
                Err(SubmitError::QueueFull { queue: queue.name().to_string(), waiting, max_depth })
            }
        }
    }

    /// Validates every submission, then enqueues them all at once (one script), or none: the
    /// error names the first refused one. A batch goes to one queue. Idempotency keys are not
    /// taken here.
    pub async fn submit_many(&self, submissions: Vec<Submission>) -> Result<Vec<TaskRecord>, BatchError> {
        let mut tasks = self.prepare_all(submissions, false).await?;
        if let Some(index) = tasks.iter().position(|t| t.queue != tasks[0].queue) {
            let error = SubmitError::Unsupported(format!(
                "a batch goes to one queue: this task names `{}`, the first `{}`",
                tasks[index].queue, tasks[0].queue
            ));
            return Err(BatchError::Rejected { index, error });
        }
        self.place(&mut tasks).await.map_err(BatchError::Refused)?;
        if !tasks.is_empty() {
            self.enqueue(&tasks).await.map_err(BatchError::Refused)?;
        }
        Ok(tasks.iter().map(record_of).collect())
    }

    /// Like [`Tasks::submit_many`] for submissions that carry one and the same payload (a topic
    /// message for each matching subscription): the payload is stored once per queue and shared,
    /// and freed after the last of its tasks there has ended. The tasks may go to several queues:
    /// each queue's are enqueued at once; should a queue refuse them (its `max_depth`), the tasks
    /// already enqueued in other queues are cancelled, so none runs.
    pub async fn submit_shared(&self, submissions: Vec<Submission>) -> Result<Vec<TaskRecord>, BatchError> {
        let mut tasks = self.prepare_all(submissions, true).await?;
        self.place(&mut tasks).await.map_err(BatchError::Refused)?;
        // Each queue's tasks share one copy, stored under the first of them.
        let mut by_queue: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (index, task) in tasks.iter().enumerate() {
            by_queue.entry(task.queue.clone()).or_default().push(index);
        }
        for group in by_queue.values().filter(|g| g.len() > 1) {
            let shared = SharedPayload { owner: tasks[group[0]].id, tasks: group.len() };
            for &index in group {
                tasks[index].shared_payload = Some(shared);
            }
        }
        let mut stored: Vec<Uuid> = Vec::new();
        let mut unconfirmed = None;
        for group in by_queue.values() {
            let group: Vec<NewTask> = group.iter().map(|&index| tasks[index].clone()).collect();
            match self.enqueue(&group).await {
                Ok(_) => {}
                // Stored all the same: the others go on, and the answer says it.
                Err(e @ SubmitError::Unconfirmed(_)) => unconfirmed = Some(e),
                Err(refused) => {
                    for id in &stored {
                        let _ = self.cancel(id).await;
                    }
                    return Err(BatchError::Refused(refused));
                }
            }
            stored.extend(group.iter().map(|t| t.id));
        }
        match unconfirmed {
            Some(e) => Err(BatchError::Refused(e)),
            None => Ok(tasks.iter().map(record_of).collect()),
        }
    }

    /// Checks what a workflow step will submit, before the workflow is stored: its kind, its
    /// options, and its payload when it is known already.
    pub fn check_step(
        &self,
        kind: &str,
        options: &Options,
        payload: Option<&serde_json::Value>,
    ) -> Result<(), SubmitError> {
        let handler = self.registry.get(kind).ok_or_else(|| SubmitError::UnknownKind(kind.to_string()))?;
        if let Some(queue) = &options.queue
            && !is_queue_name(queue)
        {
            return Err(QueueError::InvalidName(queue.clone()).into());
        }
        let max_attempts =
            options.max_attempts.or(handler.max_attempts()).unwrap_or(self.default_max_attempts);
        validate_options(options, max_attempts)?;
        if let Some(payload) = payload {
            check_schema(kind, &handler.schema(), payload.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Submits the task of a workflow step (or of one element of a map step), once: the same
    /// `step` submitted again, by any server, gives the task the first submission created. The
    /// claim is an idempotency key of the step's own (`wf-…`), which no client's key can be.
    pub async fn submit_step(
        &self,
        submission: Submission,
        step: crate::queue::WorkflowStep,
    ) -> Result<TaskRecord, SubmitError> {
        let request = fingerprint_options(&submission.options);
        let mut task = match self.prepare_all(vec![submission], false).await {
            Ok(mut tasks) => tasks.pop().expect("one submission makes one task"),
            Err(BatchError::Rejected { error, .. } | BatchError::Refused(error)) => return Err(error),
            Err(BatchError::Redis(e)) => return Err(e.into()),
        };
        self.place(std::slice::from_mut(&mut task)).await?;
        let queue = self.queues.open(&task.queue).await?;
        let key_name = queue.keys().idempotency(&format!("wf-{}-{}", step.workflow, step.step));
        task.workflow = Some(step);
        Ok(self.submit_once(task, queue, key_name, &request).await?.record)
    }

    /// Checks a submission as [`Tasks::submit`] would, storing nothing: a schedule's task is
    /// checked when the schedule is put, long before a tick submits it.
    pub fn check(&self, submission: Submission) -> Result<(), SubmitError> {
        self.prepare(submission, false, "").map(|_| ())
    }

    /// Validates and enqueues a task; on any error nothing is stored.
    pub async fn submit(&self, mut submission: Submission) -> Result<Submitted, SubmitError> {
        // What only an idempotent request needs is worked out only for one.
        let idempotency_key =
            submission.idempotency_key.take().map(|key| (key, fingerprint_options(&submission.options)));
        let mut task = match self.prepare_all(vec![submission], false).await {
            Ok(mut tasks) => tasks.pop().expect("one submission makes one task"),
            Err(BatchError::Rejected { error, .. } | BatchError::Refused(error)) => return Err(error),
            Err(BatchError::Redis(e)) => return Err(e.into()),
        };
        self.place(std::slice::from_mut(&mut task)).await?;
        let Some((key, request)) = idempotency_key else {
            self.enqueue(std::slice::from_ref(&task)).await?;
            return Ok(Submitted { record: record_of(&task), replayed: false });
        };
        let queue = self.queues.open(&task.queue).await?;
        let key_name = queue.keys().idempotency(&sha1_smol::Sha1::from(key.as_bytes()).digest().to_string());
        self.submit_once(task, queue, key_name, &request).await
    }

    /// Enqueues `task` under the idempotency key `key_name`, or gives the task an earlier
    /// request with the same key and the same `request` (its options and `task`) created.
    async fn submit_once(
        &self,
        mut task: NewTask,
        queue: Queue,
        key_name: String,
        request: &str,
    ) -> Result<Submitted, SubmitError> {
        let digest = fingerprint(&task, request);
        task.idempotency_key = Some(key_name.clone());
        match queue.claim_idempotency_key(&key_name, &format!("{} {digest}", task.id)).await? {
            None => match self.enqueue(std::slice::from_ref(&task)).await {
                Ok(_) => Ok(Submitted { record: record_of(&task), replayed: false }),
                // Stored: the key stays with the task, so that a retry confirms this one.
                Err(e @ SubmitError::Unconfirmed(_)) => Err(e),
                Err(e) => {
                    // Best effort: a key that stays claimed would make retries of this request fail.
                    let _ = queue.release_idempotency_key(&key_name).await;
                    Err(e)
                }
            },
            Some(held) => {
                let (id, held_digest) = held.split_once(' ').unwrap_or((held.as_str(), ""));
                if held_digest != digest {
                    return Err(SubmitError::IdempotencyKeyReused);
                }
                let id: Uuid = id.parse().map_err(|_| SubmitError::IdempotencyKeyReused)?;
                let record = self.wait_for_record(&queue, &id).await?;
                // The first request's answer may have been lost, or unconfirmed: this one is
                // confirmed afresh.
                if !queue.confirm_durable(&key_name, &held).await? {
                    return Err(SubmitError::Unconfirmed(unconfirmed(std::iter::once(id))));
                }
                Ok(Submitted { record, replayed: true })
            }
        }
    }

    /// The record of a task whose first request may still be storing it (a few milliseconds).
    async fn wait_for_record(&self, queue: &Queue, id: &Uuid) -> Result<TaskRecord, SubmitError> {
        for _ in 0..50 {
            if let Some(record) = queue.store().get(id).await? {
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
        match self.queues.locate(id).await? {
            Some(queue) => queue.store().get(id).await,
            None => Ok(None),
        }
    }

    /// The task's attempts, first first, or `None` if the task is unknown or expired.
    pub async fn attempts(&self, id: &Uuid) -> redis::RedisResult<Option<Vec<app::model::AttemptView>>> {
        match self.queues.locate(id).await? {
            Some(queue) => queue.store().attempts(id).await,
            None => Ok(None),
        }
    }

    /// The result of a succeeded task.
    pub async fn result(&self, record: &TaskRecord) -> redis::RedisResult<Option<StoredResult>> {
        self.queues.handle(&record.queue).store().result(record).await
    }

    /// The result's size and content type, without its bytes (`HEAD`).
    pub async fn result_size(&self, record: &TaskRecord) -> redis::RedisResult<Option<(u64, String)>> {
        self.queues.handle(&record.queue).store().result_size(record).await
    }

    /// The payload of a task, as submitted.
    pub async fn payload(&self, record: &TaskRecord) -> redis::RedisResult<Option<Vec<u8>>> {
        self.queues.handle(&record.queue).store().payload(record).await
    }

    /// The payload's size, without its bytes (`HEAD`).
    pub async fn payload_size(&self, record: &TaskRecord) -> redis::RedisResult<Option<u64>> {
        self.queues.handle(&record.queue).store().payload_size(record).await
    }

    /// The queues a filter names: the one given (none if it does not exist), or all of them.
    async fn queues_named(
        &self,
        name: Option<&str>,
        within: Option<&QueuePatterns>,
    ) -> redis::RedisResult<Vec<Queue>> {
        let mut queues = match name {
            Some(name) => self.queues.existing(name).await?.into_iter().collect(),
            None => self.queues.all().await?,
        };
        queues.retain(|queue| within.is_none_or(|w| w.allows(queue.name())));
        Ok(queues)
    }

    /// The queue a task of `kind` goes to: `named`, else its kind's; `None` for a kind nobody
    /// knows (its submission is refused anyway).
    pub fn queue_for(&self, kind: &str, named: Option<&str>) -> Option<String> {
        match named {
            Some(queue) => Some(queue.to_string()),
            None => self.registry.get(kind).map(|handler| handler.queue().to_string()),
        }
    }

    /// Tasks newest first, filtered, one page at a time.
    pub async fn list(&self, query: &ListQuery) -> redis::RedisResult<(Vec<TaskRecord>, Option<Uuid>)> {
        // A whole id: one lookup, not a walk of the index.
        if let Some(id) = query.id.as_deref().and_then(|id| Uuid::try_parse(id).ok()) {
            let found = self.get(&id).await?.filter(|record| {
                query.within.as_ref().is_none_or(|w| w.allows(&record.queue))
                    && query.queue.as_deref().is_none_or(|q| record.queue == q)
                    && query.cursor.is_none_or(|cursor| id < cursor)
                    && query.keeps(record)
            });
            return Ok((found.into_iter().collect(), None));
        }
        let stores: Vec<_> = self
            .queues_named(query.queue.as_deref(), query.within.as_ref())
            .await?
            .iter()
            .map(Queue::store)
            .collect();
        store::list(&stores, query.ids(), query.limit, |r| query.keeps(r)).await
    }

    /// Cancels a waiting task at once, or tells a running one to stop.
    pub async fn cancel(&self, id: &Uuid) -> Result<Cancelled, CancelError> {
        let Some(queue) = self.queues.locate(id).await? else { return Err(CancelError::NotFound) };
        match queue.cancel(id).await? {
            CancelOutcome::Missing => Err(CancelError::NotFound),
            CancelOutcome::Cancelled => Ok(Cancelled::Now),
            CancelOutcome::Cancelling => Ok(Cancelled::Requested),
            CancelOutcome::AlreadyFinished(status) => Err(CancelError::Finished(status)),
        }
    }

    /// Queues a dead letter again with its attempts reset; `false` if it is not a dead letter.
    pub async fn requeue(&self, id: &Uuid) -> redis::RedisResult<bool> {
        match self.queues.locate(id).await? {
            Some(queue) => queue.requeue(id).await,
            None => Ok(false),
        }
    }

    /// Deletes a dead letter with its payload; `false` if it is not a dead letter.
    pub async fn purge(&self, id: &Uuid) -> redis::RedisResult<bool> {
        match self.queues.locate(id).await? {
            Some(queue) => queue.purge(id).await,
            None => Ok(false),
        }
    }

    /// How many tasks wait to run in every queue, read at most every quarter second: it only
    /// feeds estimates. One caller reads it while the others wait for its answer (every
    /// submission asks, and a busy server's would all read it at once when it goes stale).
    pub async fn depth_cached(&self) -> redis::RedisResult<u64> {
        const FRESH: std::time::Duration = std::time::Duration::from_millis(250);
        let mut cache = self.depth_cache.lock().await;
        if let Some((at, depth)) = *cache
            && at.elapsed() < FRESH
        {
            return Ok(depth);
        }
        let queues = self.queues.all().await?;
        let depth = futures::future::try_join_all(queues.iter().map(Queue::depth)).await?.into_iter().sum();
        *cache = Some((std::time::Instant::now(), depth));
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

/// Whether a content type is JSON's.
pub(crate) fn is_json(content_type: &str) -> bool {
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
        queue: task.queue.clone(),
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
        inline_payload: task.payload_in_record().then(|| String::from_utf8_lossy(&task.payload).into_owned()),
        inline_result: None,
        error: None,
        next_run_ms: None,
        dead_reason: None,
        subscription: task.subscription.clone(),
        expires_ms: task.expires_ms,
        payload_ref: task.shared_payload.map(|s| s.owner),
        traceparent: task.traceparent.clone(),
        workflow: task.workflow.as_ref().map(|step| step.workflow),
        workflow_step: task.workflow.as_ref().map(|step| step.step.clone()),
    }
}
