//! The types that cross the wire between the server, the browser and API clients.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod schedules;
pub mod workflow;

/// Where a task is in its life; the last three are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    /// Every status, in the order of a task's life.
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Scheduled,
        Status::Running,
        Status::Retrying,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The wire name, as in JSON bodies, SSE event names and Redis records.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Scheduled => "scheduled",
            Status::Running => "running",
            Status::Retrying => "retrying",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True once the task will not change again (unless requeued from the dead-letter queue).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The public view of one task, as served by `GET /api/v1/tasks/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub id: Uuid,
    pub kind: String,
    pub status: Status,
    pub attempts: u32,
    pub max_attempts: u32,
    pub progress: Option<u8>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub payload_bytes: u64,
    pub error: Option<String>,
    pub result_url: Option<String>,
    /// When a `retrying` or `scheduled` task runs next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
    /// The topic subscription (`topic/name`) a published message created this task for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// When the task expires if no attempt has started by then (it then fails as `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The queue the task waits and runs in.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The W3C trace id its submission and attempts share (32 hex digits): the submitter's
    /// `traceparent`'s, or a new trace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The workflow the task is a step of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    /// Its step in that workflow (`id`, or `id[n]` for the n-th task of a map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_step: Option<String>,
}

/// Integers as JSON Schema counts them: `60`, `60.0` and `6e1` are the same integer, and a
/// request may spell a count or a duration any of these ways. For `deserialize_with` on the
/// integer fields of request bodies (serde alone takes only the first spelling).
pub mod whole {
    use serde::de::{Deserializer, Error, Unexpected, Visitor};
    use std::{fmt, marker::PhantomData};

    /// An integer field.
    pub fn number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(Whole(PhantomData))
    }

    /// An optional integer field: `null` (or absent, with `#[serde(default)]`) is none.
    pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        deserializer.deserialize_option(Optional(PhantomData))
    }

    struct Whole<T>(PhantomData<T>);

    impl<'de, T: TryFrom<u64>> Visitor<'de> for Whole<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number in range")
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
            T::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
            let unsigned =
                u64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))?;
            self.visit_u64(unsigned)
        }

        fn visit_f64<E: Error>(self, value: f64) -> Result<T, E> {
            // 2^64 is the first float past u64::MAX; every whole float below it converts exactly.
            if value.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&value) {
                self.visit_u64(value as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(value), &self))
            }
        }
    }

    struct Optional<T>(PhantomData<T>);

    impl<'de, T: TryFrom<u64>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number or null")
        }

        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
            number(deserializer).map(Some)
        }
    }
}

/// The queue of tasks that name none, and of the built-in kinds.
pub const DEFAULT_QUEUE: &str = "default";

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// [`is_queue_name`] (and [`is_kind_name`]) as a regular expression, for the API's document.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

/// Whether `name` is a valid queue name: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn is_queue_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Whether `name` can name a kind: the same form as a queue's name, 1 to 64 of lowercase
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit (`csv.summary`).
pub fn is_kind_name(name: &str) -> bool {
    is_queue_name(name)
}

impl TaskView {
    /// Folds a pushed event into this view, so a list can follow a task without refetching it.
    pub fn apply(&mut self, event: &TaskEvent) {
        if event.status != Status::Running || self.status != Status::Running {
            self.status = event.status;
        }
        self.attempts = self.attempts.max(event.attempt);
        self.progress = event.progress.or(self.progress);
        if event.error.is_some() {
            self.error = event.error.clone();
        }
        self.updated_at = event.at.clone();
        if event.status == Status::Succeeded {
            self.result_url = Some(format!("/api/v1/tasks/{}/result", self.id));
        }
    }
}

/// One change of a task's state, as pushed over server-sent events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TaskEvent {
    pub task_id: Uuid,
    pub kind: String,
    /// The queue of the task.
    #[serde(default = "default_queue")]
    pub queue: String,
    pub status: Status,
    pub attempt: u32,
    pub progress: Option<u8>,
    pub error: Option<String>,
    pub at: String,
    /// The workflow the task is a step of (on the events of its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
}

/// The name of the server-sent event that says the events a client asked for are gone.
pub const RESET_EVENT: &str = "reset";

/// The data of a `reset` event: the client has missed events it cannot be sent, so it reloads
/// its state; the stream goes on after the event's `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StreamReset {
    pub reason: ResetReason,
    /// The oldest event the stream still holds, if any.
    pub oldest: Option<String>,
}

/// Why a client's place in the event stream cannot be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// The events after its `Last-Event-ID` were trimmed from the capped stream.
    TooOld,
    /// Its `Last-Event-ID` is later than any event the stream has held (another deployment's
    /// id, or a stream that was deleted).
    Unknown,
    /// It fell further behind than the server buffers before it had a place in the stream.
    Lagged,
}

/// How urgently a task should run relative to others in its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// The JSON body of `POST /api/v1/tasks`. The browser builds it with a parsed payload; the
/// server reads the payload as raw JSON text (`P = Box<RawValue>`), validated without a tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"kind": "echo", "payload": {"hello": "world"}, "max_attempts": 3})))]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest<P = serde_json::Value> {
    /// The task's kind (`GET /api/v1/kinds`).
    pub kind: String,
    /// The payload, checked against the kind's schema (any JSON).
    #[cfg_attr(feature = "ssr", schema(value_type = serde_json::Value))]
    pub payload: P,
    /// Run no sooner than this many ms from now (at most 30 days).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(maximum = 2_592_000_000_u64))]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Attempts before the task becomes a dead letter (default: the kind's, else the server's).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run (at most 24 hours).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 86_400_000_u64))]
    pub timeout_ms: Option<u64>,
    /// Tasks of one session run one at a time, in submission order (1 to 200 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(min_length = 1, max_length = 200))]
    pub session: Option<String>,
    /// Milliseconds from submission after which the task expires if no attempt has started.
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 31_536_000_000_u64))]
    pub ttl_ms: Option<u64>,
    /// The same as a time (RFC 3339); give one of `ttl_ms` and `expires_at`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The queue to run the task in; the kind's default queue when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$"))]
    pub queue: Option<String>,
}

/// The JSON body of `POST /api/v1/tasks/batch`: tasks enqueued together, all or none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"tasks": [{"kind": "echo", "payload": 1}, {"kind": "text.stats", "payload": "a b a"}]})))]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch<P = serde_json::Value> {
    pub tasks: Vec<SubmitRequest<P>>,
}

/// The answer to an accepted batch: each task's view, in the order submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct BatchAccepted {
    pub tasks: Vec<TaskView>,
}

/// A task kind as listed by `GET /api/v1/kinds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct KindInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the payload when it is sent as JSON.
    pub schema: serde_json::Value,
    /// An example payload, shown in the form.
    pub example: serde_json::Value,
    /// Whether the kind takes a raw (non-JSON) body, such as an uploaded file.
    pub accepts_raw: bool,
    /// The queue its tasks go to unless the submission names another.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The content types a raw body may have (`type/subtype` or `type/*`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// Declared at run time (`PUT /api/v1/kinds/{name}`, `[[kinds]]`), not compiled in.
    #[serde(default)]
    pub declared: bool,
}

/// The name of the event that says a kind was declared, replaced or deleted.
pub const KIND_EVENT: &str = "kind";

/// The data of a `kind` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct KindEvent {
    pub kind: String,
    /// False when the declaration was deleted.
    pub declared: bool,
    pub at: String,
}

/// A queue's limits, as set by `PUT /api/v1/queues/{name}` or `[[queues]]` in `courier.toml`;
/// each absent one is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"max_depth": 10000, "concurrency": 4, "rate": {"limit": 20, "period_ms": 1000}})))]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// The most tasks that may wait (queued, scheduled, retrying); a submit past it is a `429`.
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1))]
    pub max_depth: Option<u64>,
    /// The most of its tasks that run at once, across every worker process.
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1))]
    pub concurrency: Option<u32>,
    /// The most of its tasks started in any window of `period_ms`, across every worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

/// At most `limit` starts in any window of `period_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(deserialize_with = "whole::number")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1))]
    pub limit: u32,
    /// At most a day.
    #[serde(deserialize_with = "whole::number")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 86_400_000_u64))]
    pub period_ms: u64,
}

/// Tasks of a queue per state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueueCounts {
    /// Waiting to be taken, per priority.
    pub queued: QueuedCounts,
    pub scheduled: u64,
    pub running: u64,
    pub retrying: u64,
    /// In the dead letters.
    pub dead: u64,
}

/// Queued tasks per priority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueuedCounts {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
}

impl QueuedCounts {
    pub fn total(&self) -> u64 {
        self.high + self.normal + self.low
    }
}

/// A queue as `GET /api/v1/queues/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    pub limits: QueueLimits,
    pub counts: QueueCounts,
    /// How long the oldest queued task has waited, in ms (none when nothing is queued).
    pub oldest_waiting_ms: Option<u64>,
    /// Tasks of the queue that ended (succeeded, failed or cancelled) in the last minute.
    pub finished_last_minute: u64,
}

/// `GET /api/v1/queues`: every queue, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// The name of the server-sent event that says a queue was paused or resumed.
pub const QUEUE_EVENT: &str = "queue";

/// The data of a `queue` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueueEvent {
    pub queue: String,
    pub paused: bool,
    pub at: String,
}

/// One page of `GET /api/v1/tasks`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    pub next_cursor: Option<String>,
}

/// A failed task in the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    pub task: TaskView,
    /// One of [`DEAD_REASONS`].
    pub reason: String,
    pub failed_at: String,
}

/// Why a task can be a dead letter (`DeadLetter::reason`), as the `reason` filter takes them.
pub const DEAD_REASONS: [&str; 7] = [
    "attempts_exhausted",
    "non_retryable",
    "timeout",
    "workers_lost",
    "unknown_kind",
    "payload_expired",
    "expired",
];

/// `GET /api/v1/dead-letters/count`: how many dead letters a filter takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeadLetterCount {
    pub count: u64,
    /// The count is of those that failed before this time (RFC 3339): the filter's
    /// `failed_before`, or the moment of counting. Pass it as `failed_before` to a bulk action to
    /// act on exactly the dead letters counted (less any that left meanwhile).
    pub as_of: String,
}

/// The answer to `POST /api/v1/dead-letters/requeue`: how many were queued again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeadLettersRequeued {
    pub requeued: u64,
}

/// The answer to `DELETE /api/v1/dead-letters`: how many were deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeadLettersDeleted {
    pub deleted: u64,
}

/// One page of `GET /api/v1/dead-letters`, most recent failure first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

/// A topic with its subscriptions, as listed by `GET /api/v1/topics`. Subscriptions stay JSON
/// here: the page shows them, the server owns their shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicView {
    pub topic: String,
    pub subscriptions: std::collections::BTreeMap<String, serde_json::Value>,
    pub messages: u64,
    pub unmatched: u64,
}

/// The answer to publishing a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Published {
    pub message_id: Uuid,
    pub tasks: Vec<PublishedTask>,
}

/// One task a published message created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PublishedTask {
    pub subscription: String,
    pub task_id: Uuid,
}

/// An RFC 9457 problem document, as every API error is reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Every reason a payload failed its schema, when that is the problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `POST /api/v1/queues/{queue}/leases`: a worker pulling tasks over HTTP asks for leases,
/// ending the attempts it has finished in the same request if it likes (`ends`, applied before
/// any lease is taken). The server reads each end's result as raw JSON text (`R = Box<RawValue>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"worker": "worker-1", "kinds": ["echo"], "max": 1, "wait_ms": 0})))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest<R = serde_json::Value> {
    /// The worker's name for itself (1 to 128 printable characters), for logs and views.
    #[cfg_attr(feature = "ssr", schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,128}$"))]
    pub worker: String,
    /// The kinds it runs; every kind of the queue when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(schema_with = kind_names))]
    pub kinds: Option<Vec<String>>,
    /// The most leases to take (1 to 100; default 1).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1, maximum = 100))]
    pub max: Option<u32>,
    /// How long to wait for tasks when there are none (0 to 30,000 ms; default 0).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(maximum = 30_000))]
    pub wait_ms: Option<u64>,
    /// How long each lease lasts unrenewed (1,000 ms up to the server's `--lease`, its default).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(minimum = 1_000))]
    pub lease_ms: Option<u64>,
    /// The host the worker runs on, for `GET /api/v1/workers` (up to 255 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The worker's process id, for `GET /api/v1/workers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The worker's version, for `GET /api/v1/workers` (up to 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Up to 100 ends of attempts leased earlier, each token once, as `POST /api/v1/leases/ends`
    /// takes them: applied before the leases are taken, each on its own, and answered in the
    /// reply's `ends`. A worker that ends a lease's tasks and asks for the next in one request
    /// saves a round trip per lease.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "ssr", schema(max_items = 100))]
    pub ends: Vec<LeaseEnd<R>>,
}

/// The schema of [`LeaseRequest::kinds`]: 1 to 100 kind names.
#[cfg(feature = "ssr")]
fn kind_names() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type, schema::SchemaType};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(NAME_PATTERN)))
        .min_items(Some(1))
        .max_items(Some(100))
        .description(Some("The kinds it runs; every kind of the queue when absent."))
        .build()
}

/// One task leased to a pulling worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LeaseGrant {
    /// Names the lease in heartbeat, complete, fail and release; unguessable, and sealed: a token
    /// changed in any part names no lease (`404`).
    pub token: String,
    pub task: TaskView,
    /// The payload, when it is JSON of at most 64 KiB: as it was submitted, checked but not
    /// parsed into values and written out again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<serde_json::Value>))]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// Where to `GET` the payload otherwise (with its content type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_url: Option<String>,
    /// When the lease runs out unless renewed (RFC 3339).
    pub expires_at: String,
    /// The W3C trace context (`traceparent`) of this attempt, in the task's trace: the worker's
    /// spans for it continue it as their parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The answer to a lease request: the leases taken (none when the wait ended first), and, when
/// the request carried ends, a reply for each, in the order sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LeaseList {
    pub leases: Vec<LeaseGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<Vec<LeaseEndReply>>,
}

/// `POST /api/v1/leases/{token}/heartbeat`: renews a lease, optionally reporting progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// 0 to 100.
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(maximum = 100))]
    pub progress: Option<u8>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    /// When the lease now runs out (RFC 3339).
    pub expires_at: String,
    /// The task was cancelled: stop, and release the lease.
    pub cancel_requested: bool,
}

/// `POST /api/v1/leases/{token}/fail`: the attempt failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseFailure {
    /// What went wrong, for people (at most 4 KiB are kept).
    pub error: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
    /// The soonest the next attempt should come (bounded by the kind's retry cap).
    #[serde(default, deserialize_with = "whole::option", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `POST /api/v1/leases/ends`: the ends of many leases' attempts in one request (1 to 100, each
/// token once). Each end applies or fails on its own; the answer says which, in the same order.
/// The server reads each result as raw JSON text (`R = Box<RawValue>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(example = json!({"ends": [
    {"token": "default~echo~…", "result": {"rows": 120}},
    {"token": "default~echo~…", "failed": {"error": "upstream timed out", "retryable": true}},
]})))]
#[serde(deny_unknown_fields)]
pub struct LeaseEnds<R = serde_json::Value> {
    #[cfg_attr(feature = "ssr", schema(min_items = 1, max_items = 100))]
    pub ends: Vec<LeaseEnd<R>>,
}

/// One lease's end: succeeded with `result`, or `failed` (as `POST /api/v1/leases/{token}/fail`
/// would have it). Never both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseEnd<R = serde_json::Value> {
    /// The lease's token, as its grant gave it.
    pub token: String,
    /// The attempt succeeded: its result, stored as `application/json` (`null` when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<serde_json::Value>))]
    pub result: Option<R>,
    /// The attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<LeaseFailure>,
}

/// The answer to `POST /api/v1/leases/ends`: one reply per end, in the order they were sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LeaseEndsReply {
    pub ends: Vec<LeaseEndReply>,
}

/// How one end went: `status` is what its own request would have answered (`204` ended; `404`
/// no lease has this token; `409` the lease was lost, or the task was cancelled meanwhile and
/// ended cancelled), with the problem when it is not `204`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct LeaseEndReply {
    pub token: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// `GET /api/v1/auth/me`: who the caller is and what it may do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Me {
    /// Whether access control is on; when it is off, everyone may do everything.
    pub auth: bool,
    /// The token's name (`anonymous` when access control is off).
    pub name: String,
    /// Its scopes: submit, read, work, operate, admin.
    pub scopes: Vec<String>,
    /// The queues it reaches: names, and prefixes ending in `*`.
    pub queues: Vec<String>,
}

impl Me {
    /// Whether it carries `scope`.
    pub fn can(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// One operator action, as the audit trail records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its place in the trail (a stream id), to page with `before`.
    pub id: String,
    /// When, RFC 3339.
    pub at: String,
    /// The token's name (`anonymous` with access control off, `cli` for the command line).
    pub actor: String,
    /// What was done: `task.cancel`, `dead-letter.requeue`, `queue.pause`, `token.create`…
    pub action: String,
    /// What it was done to: a task id, a queue, a kind, a token's name.
    pub target: String,
}

/// `GET /api/v1/audit`: the newest actions first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for older entries; none at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A worker process as `GET /api/v1/workers` lists it: a built-in one (`courier serve` or
/// `courier worker`) or one pulling over HTTP, seen within the last two lease periods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkerView {
    /// The worker's id: `worker-{uuid}` for a built-in one, the name a pulling worker gives.
    pub id: String,
    /// `built-in` or `pull`.
    pub runs: String,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub version: Option<String>,
    /// The queues it serves (`*` for every queue).
    pub queues: Vec<String>,
    /// How many tasks it runs at once (for a pulling worker: the most leases it asked for).
    pub slots: u32,
    /// The tasks it runs now.
    pub running: Vec<RunningTask>,
    pub started_at: String,
    pub last_seen_at: String,
}

/// A task a worker runs now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct RunningTask {
    pub task_id: Uuid,
    pub queue: String,
    pub kind: String,
}

/// `GET /api/v1/workers`: the live worker processes, most recently started first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

/// `GET /api/v1/stats`: counts by queue and kind, throughput over three spans, and latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Stats {
    pub queues: Vec<QueueStats>,
    pub throughput: Throughput,
    pub latency_ms: Latency,
}

/// One queue's tasks by state (`queued`, `scheduled`, `retrying`, `running`, `dead`), and its
/// kinds'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct QueueStats {
    pub queue: String,
    pub paused: bool,
    pub counts: std::collections::BTreeMap<String, u64>,
    /// How long the oldest queued task has waited, in ms.
    pub oldest_waiting_ms: Option<u64>,
    /// Tasks of the queue that ended in the last minute.
    pub finished_last_minute: u64,
    pub kinds: Vec<KindStats>,
}

/// One kind's tasks in a queue by state, the same states as its queue's (`queued`, `scheduled`,
/// `retrying`, `running`, `dead`), which they add up to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct KindStats {
    pub kind: String,
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// Tasks that ended, per second over the last 15 minutes, per minute over 24 hours and per hour
/// over 30 days, oldest first, every bucket present (zeros included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Throughput {
    pub second: Vec<ThroughputPoint>,
    pub minute: Vec<ThroughputPoint>,
    pub hour: Vec<ThroughputPoint>,
}

/// The tasks that succeeded and failed in the bucket starting `at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ThroughputPoint {
    pub at: String,
    pub succeeded: u64,
    pub failed: u64,
}

/// Wait (ready to started) and run (started to ended) times over the last 15 minutes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Latency {
    pub wait: Percentiles,
    pub run: Percentiles,
}

/// Percentiles in ms (none without samples), each the upper bound of its histogram bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
    /// How many samples they come from.
    pub count: u64,
}

/// The name of the server-sent event that carries fresh [`Stats`] (once a second, to streams
/// that ask for it with `?stats=1`).
pub const STATS_EVENT: &str = "stats";

/// The result of a `csv.summary` task, as the task page reads it (the handler writes it; a test
/// there reads its output back into this).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSummary {
    pub rows: u64,
    pub columns: Vec<CsvColumn>,
}

/// One column of a [`CsvSummary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvColumn {
    pub name: String,
    /// `integer`, `number`, `boolean`, `text`, or `empty` when every value is blank.
    #[serde(rename = "type")]
    pub kind: String,
    /// Numeric for numbers, lexicographic for text.
    pub min: Option<serde_json::Value>,
    pub max: Option<serde_json::Value>,
    /// Only for numeric columns.
    pub mean: Option<f64>,
    pub distinct: u64,
    /// The distinct values stopped being counted at a cap: `distinct` is a lower bound.
    pub distinct_capped: bool,
    pub blanks: u64,
}

/// The result of a `text.stats` task, as the task page reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextStats {
    pub lines: u64,
    pub words: u64,
    pub chars: u64,
    pub top_words: Vec<WordCount>,
}

/// A word of [`TextStats`] and how often it occurs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

/// One attempt of a task, for the task page's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AttemptView {
    pub attempt: u32,
    /// The worker that ran it (a built-in worker's id, or a pulling worker's name).
    pub worker: Option<String>,
    pub started_at: String,
    /// None while it runs.
    pub ended_at: Option<String>,
    /// `running`, `succeeded`, `failed`, `retried`, `cancelled`, or `lost` (its worker stopped
    /// and another attempt took over).
    pub outcome: String,
    pub error: Option<String>,
}

/// `GET /api/v1/tasks/{id}/attempts`: a task's attempts, first first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AttemptList {
    pub attempts: Vec<AttemptView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_wire_names() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(Status::parse("done"), None);
    }

    #[test]
    fn queue_names_are_short_lowercase_words() {
        for good in ["default", "a", "reports-2", "eu.billing_v2", "0", &"q".repeat(64)] {
            assert!(is_queue_name(good), "{good}");
        }
        for bad in ["", "Reports", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", &"q".repeat(65), "{a}"] {
            assert!(!is_queue_name(bad), "{bad}");
        }
    }

    #[test]
    fn integers_are_read_in_any_whole_spelling_and_refused_out_of_range() {
        let limits: QueueLimits = serde_json::from_str(r#"{"max_depth": 60.0, "concurrency": 6e1}"#).unwrap();
        assert_eq!((limits.max_depth, limits.concurrency), (Some(60), Some(60)));
        let none: QueueLimits = serde_json::from_str(r#"{"max_depth": null}"#).unwrap();
        assert_eq!(none, QueueLimits::default());
        for bad in [
            r#"{"max_depth": 1.5}"#,
            r#"{"max_depth": -1}"#,
            r#"{"concurrency": 4294967296}"#,
            r#"{"max_depth": "1"}"#,
        ] {
            assert!(serde_json::from_str::<QueueLimits>(bad).is_err(), "{bad}");
        }
        let rate: RateLimit = serde_json::from_str(r#"{"limit": 2.0, "period_ms": 1000}"#).unwrap();
        assert_eq!(rate, RateLimit { limit: 2, period_ms: 1000 });
        assert!(serde_json::from_str::<Heartbeat>(r#"{"progress": 256.0}"#).is_err());
    }

    #[test]
    fn submit_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<SubmitRequest>(r#"{"kind":"echo","payload":1,"colour":"red"}"#);
        assert!(err.is_err());
    }
}
