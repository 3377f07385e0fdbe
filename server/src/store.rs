//! Task records, payloads and results in Redis: the key layout and the reads.
//!
//! Every key of a queue shares the hash tag `{queue}`, so one queue lives in one Cluster slot and
//! its scripts only touch keys they are given (keys of no queue carry tags of their own, starting
//! with `_`, which no queue name can: `layout.rs`):
//!
//! | key                              | type   | holds                                   |
//! |----------------------------------|--------|-----------------------------------------|
//! | `{prefix}:{queue}:task:{id}`     | hash   | the task record; a text payload up to 4 KiB too (`payload`), and a text result up to 4 KiB (`result`) |
//! | `{prefix}:{queue}:payload:{id}`  | string | a larger payload's bytes (claim-check); a topic message's once, under its first task's id |
//! | `{prefix}:{queue}:payload-refs:{id}` | hash | a shared payload's count of open tasks (`open`) and latest retention end (`until`) |
//! | `{prefix}:{queue}:result:{id}`   | string | the result bytes (none when they are the payload or in the record) |
//! | `{prefix}:{queue}:staged:{token}` | string | a large result, until its finish script renames it |
//! | `{prefix}:{queue}:ready:{kind}`  | stream | ids of runnable tasks of one kind (its lane), consumer group; trimmed in bulk once acknowledged |
//! | `{prefix}:{queue}:ready-high:{kind}` | stream | the same, for high priority (and `-low`) |
//! | `{prefix}:{queue}:lanes`         | set    | the kinds with a lane in the queue      |
//! | `{prefix}:{queue}:ready-lanes`   | set    | the kinds whose lane may hold tasks not handed out (what claims read) |
//! | `{prefix}:{queue}:reclaimed:{kind}` | string | set for a quarter second when a pull request looked for the lane's expired leases (pull.lua) |
//! | `{prefix}:{queue}:delayed`       | zset   | `h:`/`n:`/`l:` + id due later, by ms    |
//! | `{prefix}:{queue}:dead`          | zset   | ids of failed tasks, by failure time    |
//! | `{prefix}:{queue}:dead:kind:{kind}` | zset | the same, of one kind (kind_counts.lua)  |
//! | `{prefix}:{queue}:dead-kinds`    | set    | the kinds with such a set               |
//! | `{prefix}:{queue}:kind-counts`   | hash   | `{kind}:scheduled`, `{kind}:retrying`: each kind's tasks in the delayed and retrying sets; `since`, when counted from the sets |
//! | `{prefix}:{queue}:index`         | zset   | every retained id, for listing (by lex) |
//! | `{prefix}:{queue}:index-prune`   | string | where the last prune of the index stopped |
//! | `{prefix}:{queue}:expiring`      | zset   | ids of waiting tasks with an expiry, by it |
//! | `{prefix}:{queue}:retrying`      | zset   | `h:`/`n:`/`l:` + id waiting for a retry, by due ms |
//! | `{prefix}:{queue}:starts`        | zset   | lease tokens by start ms, the last `rate` period's |
//! | `{prefix}:{queue}:ended`         | hash   | Unix second -> tasks ended then (the last two minutes) |
//! | `{prefix}:{queue}:stats:s:{minute}`, `stats:m:{hour}`, `stats:h:{day}` | hash | tasks ended per second, minute and hour, and the wait and run histograms (`stats.rs`) |
//! | `{prefix}:{queue}:settings`      | hash   | `paused`, `max_depth`, `concurrency`, `rate_limit`, `rate_period_ms` |
//! | `{prefix}:{queue}:events`        | stream | the queue's task and queue events, capped (`{_kinds}` and `{_workflows}` have their own) |
//! | `{prefix}:{queue}:promoter`      | string | the process (or the worker, of a process running several) that moves due tasks of the queue now, for a few seconds (`Queue::promote_due`) |
//! | `{prefix}:{_queues}:queues`      | set    | the name of every queue                 |
//! | `{prefix}:{_queues}:queue-numbers`, `queue-names` | hash | each queue's number for life, both ways (task ids carry it) |
//! | `{prefix}:{_queues}:queue-numbers-since` | string | when queues began to have numbers (older ids are the default queue's) |
//! | `{prefix}:{_kinds}:kinds`        | hash   | declared kind name -> its declaration (JSON), `kinds.rs` |
//! | `{prefix}:{_kinds}:kinds-version` | string | count of changes to the declared kinds, increased with each |
//! | `{prefix}:{queue}:idem:{sha1}`   | string | `{task id} {request digest}` of a key   |
//! | `{prefix}:{queue}:session:{name}` | list  | a session's unfinished task ids, in order |

use crate::queue::record as field;
use crate::redis_client::Conn;
use app::model::{AttemptView, Status, TaskView};
use redis::AsyncCommands;
use std::{collections::HashMap, sync::Arc};
use uuid::Uuid;

pub use app::model::DEFAULT_QUEUE;

/// The key of an events stream: a queue's (in its hash slot, with the rest of its keys), or one
/// of Courier's own (`_kinds`, `_workflows`: tags no queue's name can be).
pub fn stream_key(prefix: &str, channel: &str) -> String {
    format!("{prefix}:{{{channel}}}:events")
}

/// Builds the Redis key names of one queue.
#[derive(Clone, Debug)]
pub struct Keys {
    queue: Arc<str>,
    base: Arc<str>,
    events: Arc<str>,
}

/// The ready streams of a lane, most urgent first (`Keys::lane`).
const LANE_STREAMS: [&str; 3] = ["ready-high", "ready", "ready-low"];

impl Keys {
    /// Keys of `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> Keys {
        Keys {
            queue: queue.into(),
            base: format!("{prefix}:{{{queue}}}").into(),
            events: stream_key(prefix, queue).into(),
        }
    }

    /// The name of the queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The prefix every key of this queue starts with (scripts build task keys from it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Tasks waiting for a retry, by when it is due.
    pub fn retrying(&self) -> String {
        format!("{}:retrying", self.base)
    }

    /// The tally of ends per second.
    pub fn ended(&self) -> String {
        format!("{}:ended", self.base)
    }

    /// The queue's limits and pause flag.
    pub fn settings(&self) -> String {
        format!("{}:settings", self.base)
    }

    /// Where a large payload waits for the enqueue script, which renames it.
    pub fn staged_payload(&self, id: &Uuid) -> String {
        format!("{}:staged:{id}", self.base)
    }

    pub fn task(&self, id: &Uuid) -> String {
        self.of_id("task", id)
    }

    pub fn payload(&self, id: &Uuid) -> String {
        self.of_id("payload", id)
    }

    pub fn result(&self, id: &Uuid) -> String {
        self.of_id("result", id)
    }

    /// `{base}:{part}:{tail}`, the shape of the keys made for each task, written straight into a
    /// string of its size (`format!` costs several times as much, and these are made a few
    /// times a task).
    fn join(&self, part: &str, tail: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + part.len() + tail.len() + 2);
        for piece in [&self.base, ":", part, ":", tail] {
            key.push_str(piece);
        }
        key
    }

    /// `{base}:{part}:{id}`.
    fn of_id(&self, part: &str, id: &Uuid) -> String {
        self.join(part, id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
    }

    /// Where a worker stages a large result before the finish script of its lease renames it.
    pub fn staged(&self, token: &str) -> String {
        format!("{}:staged:{token}", self.base)
    }

    /// The ready streams of `kind`'s lane in this queue, most urgent first (lanes.lua).
    pub fn lane(&self, kind: &str) -> [String; 3] {
        LANE_STREAMS.map(|stream| self.join(stream, kind))
    }

    /// The ready stream `index` (0 to 2) of `kind`'s lane: `lane(kind)[index]`, made alone.
    pub fn lane_stream(&self, kind: &str, index: usize) -> String {
        self.join(LANE_STREAMS[index], kind)
    }

    /// The set of kinds that have a lane in this queue.
    pub fn lanes(&self) -> String {
        format!("{}:lanes", self.base)
    }

    /// The set of kinds whose lane may hold tasks not handed out yet (lanes.lua).
    pub fn ready_lanes(&self) -> String {
        format!("{}:ready-lanes", self.base)
    }

    /// The ready streams of a Courier from before lanes, most urgent first: `open_lanes.lua`
    /// moves what they hold onto the lanes.
    pub fn ready_before_lanes(&self) -> [String; 3] {
        ["ready-high", "ready", "ready-low"].map(|stream| format!("{}:{stream}", self.base))
    }

    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.base)
    }

    pub fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }

    /// The list of an ordered session's unfinished tasks, the running one first.
    pub fn session(&self, name: &str) -> String {
        format!("{}:session:{name}", self.base)
    }

    /// The key that remembers which task an `Idempotency-Key` (by its digest) created.
    pub fn idempotency(&self, digest: &str) -> String {
        format!("{}:idem:{digest}", self.base)
    }

    pub fn index(&self) -> String {
        format!("{}:index", self.base)
    }

    /// Where the last prune of the listing index stopped.
    pub fn index_prune_cursor(&self) -> String {
        format!("{}:index-prune", self.base)
    }

    /// Ids of tasks with an expiry, by when they expire.
    pub fn expiring(&self) -> String {
        format!("{}:expiring", self.base)
    }

    /// Which process (or worker of one) moves the queue's due tasks now (`Queue::promote_due`).
    pub fn promoter(&self) -> String {
        format!("{}:promoter", self.base)
    }

    /// The count of open tasks sharing the payload stored under `owner`'s id.
    pub fn payload_refs(&self, owner: &Uuid) -> String {
        format!("{}:payload-refs:{owner}", self.base)
    }

    /// The queue's events stream (in its slot).
    pub fn events(&self) -> &str {
        &self.events
    }
}

/// Takes the lock `key` for `ttl` under `token` (`SET NX PX`), unless someone holds it; whether
/// it was taken.
pub async fn take_lock(
    conn: &mut Conn,
    key: &str,
    token: &str,
    ttl: std::time::Duration,
) -> redis::RedisResult<bool> {
    let taken: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .query_async(conn)
        .await?;
    Ok(taken.is_some())
}

/// Gives the lock `key` up if `token` still holds it (taken with [`take_lock`]).
pub async fn release_lock(conn: &mut Conn, key: &str, token: &str) -> redis::RedisResult<()> {
    static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end")
    });
    RELEASE.key(key).arg(token).invoke_async(conn).await
}

/// Milliseconds since the Unix epoch, the unit of every timestamp Courier stores.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long until the wall clock next reaches a whole multiple of `period` (at least a
/// millisecond). The periodic looks of idle processes wait for these ticks, so that every
/// process's looks of one period reach Redis together and it wakes once for them, not once for
/// each: an idle Redis pays more for a wake-up than for the commands it brings
/// (docs/benchmark-notes.md, "Idle workers").
pub fn until_next_tick(period: std::time::Duration) -> std::time::Duration {
    let period = (period.as_millis() as u64).max(1);
    std::time::Duration::from_millis(period - now_ms() % period)
}

/// Which tick of `period` (as `until_next_tick` counts them) the wall clock is in.
pub fn tick_number(period: std::time::Duration) -> u64 {
    now_ms() / (period.as_millis() as u64).max(1)
}

/// Formats stored milliseconds as RFC 3339 (UTC) with exactly three fractional digits, as the
/// API reports times: fixed width, so the strings sort as the times do.
pub fn rfc3339(ms: u64) -> String {
    // Whole seconds through `time` (an i64, where nanoseconds would take i128 arithmetic).
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return String::new();
    };
    // The shape is fixed, so its digits are written in place: every task event and view formats
    // one or more, and a format description costs some 2,000 instructions each (callgrind).
    // Years past 9999 are not dates `time` makes (the error above).
    let (year, month, day) = t.to_calendar_date();
    let mut text = *b"0000-00-00T00:00:00.000Z";
    for (value, end) in [
        (year.unsigned_abs(), 4),
        (u32::from(u8::from(month)), 7),
        (u32::from(day), 10),
        (u32::from(t.hour()), 13),
        (u32::from(t.minute()), 16),
        (u32::from(t.second()), 19),
        ((ms % 1000) as u32, 23),
    ] {
        // Right to left from `end`, over the zeros the template holds.
        let mut value = value;
        for place in text[..end].iter_mut().rev().take_while(|b| b.is_ascii_digit()) {
            *place = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(&text).expect("digits and ASCII marks").to_owned()
}

/// The attempts a task's record tells of: its attempt log (one field per ended attempt), its
/// running attempt, and a first attempt that ended unlogged (record.rs, `ATTEMPT_LOG`), first
/// first.
fn attempts_of(record: &TaskRecord, fields: &HashMap<String, String>) -> Vec<AttemptView> {
    let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    let ms = |text: &str| text.parse::<u64>().ok().map(rfc3339);
    let mut attempts: Vec<AttemptView> = fields
        .iter()
        .filter_map(|(name, entry)| {
            let attempt = name.strip_prefix(field::ATTEMPT_LOG)?.parse().ok()?;
            let [outcome, started, ended, worker, error] = log_entry(entry);
            Some(AttemptView {
                attempt,
                outcome: outcome.to_string(),
                started_at: ms(started).unwrap_or_default(),
                ended_at: ms(ended),
                worker: (!worker.is_empty()).then(|| worker.to_string()),
                error: (!error.is_empty()).then(|| error.to_string()),
            })
        })
        .collect();
    if record.status == Status::Running
        && let Some(started) = text(field::ATTEMPT_STARTED).as_deref().and_then(ms)
    {
        attempts.retain(|a| a.attempt != record.attempts);
        attempts.push(AttemptView {
            attempt: record.attempts,
            worker: text(field::WORKER),
            started_at: started,
            ended_at: None,
            outcome: "running".into(),
            error: None,
        });
    }
    if record.status.is_terminal()
        && record.attempts == 1
        && attempts.is_empty()
        && let Some(started) = text(field::STARTED).as_deref().and_then(ms)
    {
        attempts.push(AttemptView {
            attempt: 1,
            worker: text(field::WORKER),
            started_at: started,
            ended_at: record.finished_ms.map(rfc3339),
            outcome: record.status.as_str().into(),
            error: record.error.clone(),
        });
    }
    attempts.sort_by_key(|a| a.attempt);
    attempts
}

/// One task's hash, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub id: Uuid,
    /// The queue the task lives in (where its record was found).
    pub queue: String,
    pub kind: String,
    pub status: Status,
    pub attempts: u32,
    pub max_attempts: u32,
    pub progress: Option<u8>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub payload_bytes: u64,
    pub payload_type: String,
    pub result_type: Option<String>,
    /// The result is the payload, unchanged, kept once under the payload's key.
    pub result_is_payload: bool,
    /// A small text payload, kept in the record itself (`None`: under a key of its own).
    pub inline_payload: Option<String>,
    /// A small text result, kept in the record itself (`None`: under a key of its own, or none).
    pub inline_result: Option<String>,
    pub error: Option<String>,
    pub next_run_ms: Option<u64>,
    pub dead_reason: Option<String>,
    pub subscription: Option<String>,
    /// When the task expires if no attempt has started by then.
    pub expires_ms: Option<u64>,
    /// The task whose id a shared payload (a topic message's) is stored under.
    pub payload_ref: Option<Uuid>,
    /// The W3C trace context its attempts continue (`traceparent`).
    pub traceparent: Option<String>,
    /// The workflow the task is a step of, and which step.
    pub workflow: Option<Uuid>,
    pub workflow_step: Option<String>,
}

/// A record's fields by name, as [`TaskRecord::from_fields`] reads them.
pub trait Fields {
    fn field(&self, name: &str) -> Option<&str>;
}

/// An attempt log entry's parts (ends.lua's `attempt_log_entry`): outcome, start ms, end ms,
/// worker and error (the error last, so it may hold anything); empty where it says none.
fn log_entry(entry: &str) -> [&str; 5] {
    let mut parts = entry.splitn(5, field::ATTEMPT_LOG_SEPARATOR);
    std::array::from_fn(|_| parts.next().unwrap_or_default())
}

/// When attempt 1 started, as the attempt log says.
fn first_attempt_start(fields: &(impl Fields + ?Sized)) -> Option<u64> {
    let [_, started, ..] = log_entry(fields.field(&[field::ATTEMPT_LOG, "1"].concat())?);
    started.parse().ok()
}

/// A record's hash as `HGETALL` reads it.
impl Fields for HashMap<String, String> {
    fn field(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// Field-value pairs, the first of a name the one read: a lease's few dozen, which a linear
/// look-up reads with no hashing and no copy.
impl Fields for [(&str, &str)] {
    fn field(&self, name: &str) -> Option<&str> {
        self.iter().find(|(field, _)| *field == name).map(|(_, value)| *value)
    }
}

impl TaskRecord {
    /// Reads a record of `queue` from the fields of its hash; `None` if a required field is
    /// missing.
    pub fn from_fields(id: Uuid, queue: &str, fields: &(impl Fields + ?Sized)) -> Option<TaskRecord> {
        // Its options, kept together (record.rs, `OPTIONS`), or fields of their own in a record
        // stored before and in a lease's view.
        let options = fields.field(field::OPTIONS).and_then(|packed| field::Options::read(packed.as_bytes()));
        let text = |name: &str| match &options {
            Some(options) if field::OPTION_FIELDS.contains(&name) => options.get(name),
            _ => fields.field(name).filter(|v| !v.is_empty()),
        };
        let owned = |name: &str| text(name).map(str::to_string);
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let status = Status::parse(text(field::STATUS)?)?;
        Some(TaskRecord {
            id,
            queue: queue.to_string(),
            kind: owned(field::KIND)?,
            status,
            attempts: number(field::ATTEMPTS).unwrap_or(0) as u32,
            max_attempts: number(field::MAX_ATTEMPTS).unwrap_or(1) as u32,
            // A success is all of it: the end does not write it (older versions wrote `100`).
            progress: match status {
                Status::Succeeded => Some(100),
                _ => number(field::PROGRESS).map(|p| p.min(100) as u8),
            },
            created_ms: number(field::CREATED)?,
            // The latest of the stamps a change writes (record.rs, `UPDATED`).
            updated_ms: [field::UPDATED, field::FINISHED, field::ATTEMPT_STARTED]
                .into_iter()
                .filter_map(number)
                .fold(number(field::CREATED)?, u64::max),
            // Its first attempt's start, which the attempt log says too (record.rs, `STARTED`).
            started_ms: number(field::STARTED).or_else(|| first_attempt_start(fields)),
            finished_ms: number(field::FINISHED),
            // A payload in the record is its own size (record.rs, `PAYLOAD_BYTES`).
            payload_bytes: number(field::PAYLOAD_BYTES)
                .or_else(|| fields.field(field::PAYLOAD).map(|payload| payload.len() as u64))
                .unwrap_or(0),
            payload_type: owned(field::PAYLOAD_TYPE).unwrap_or_else(|| field::DEFAULT_PAYLOAD_TYPE.into()),
            result_type: owned(field::RESULT_TYPE),
            result_is_payload: text(field::RESULT_IS_PAYLOAD).is_some_and(|v| v == "1"),
            inline_payload: fields.field(field::PAYLOAD).map(str::to_string),
            inline_result: fields.field(field::RESULT).map(str::to_string),
            error: owned(field::ERROR),
            next_run_ms: number(field::NEXT_RUN),
            dead_reason: owned(field::DEAD_REASON),
            subscription: owned(field::SUBSCRIPTION),
            expires_ms: number(field::EXPIRES),
            payload_ref: text(field::PAYLOAD_REF).and_then(|v| v.parse().ok()),
            traceparent: owned(field::TRACEPARENT),
            workflow: text(field::WORKFLOW).and_then(|v| v.parse().ok()),
            workflow_step: owned(field::WORKFLOW_STEP),
        })
    }

    /// The public view of this record.
    pub fn view(&self) -> TaskView {
        TaskView {
            id: self.id,
            kind: self.kind.clone(),
            status: self.status,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            progress: self.progress,
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
            started_at: self.started_ms.map(rfc3339),
            finished_at: self.finished_ms.map(rfc3339),
            payload_bytes: self.payload_bytes,
            error: self.error.clone(),
            result_url: (self.status == Status::Succeeded)
                .then(|| format!("/api/v1/tasks/{}/result", self.id)),
            next_run_at: self.next_run_ms.filter(|_| self.status == Status::Retrying).map(rfc3339),
            subscription: self.subscription.clone(),
            expires_at: self.expires_ms.map(rfc3339),
            queue: self.queue.clone(),
            trace_id: self.traceparent.as_deref().and_then(crate::trace_context::trace_id_of),
            workflow_id: self.workflow,
            workflow_step: self.workflow_step.clone(),
        }
    }
}

/// Reads task records, payloads and results.
#[derive(Clone)]
pub struct Store {
    conn: Conn,
    keys: Keys,
}

/// A task's result bytes and their content type.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResult {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

/// Where a task keeps bytes of its own (its payload, its result).
enum Kept<'r> {
    /// Text in the record itself.
    InRecord(&'r str),
    /// Under a key of their own.
    Key(String),
}

/// The content type a result is served with.
fn result_type(record: &TaskRecord) -> String {
    record.result_type.clone().unwrap_or_else(|| field::DEFAULT_RESULT_TYPE.into())
}

impl Store {
    /// A store over `conn` for the queue whose keys are `keys`.
    pub fn new(conn: Conn, keys: Keys) -> Store {
        Store { conn, keys }
    }

    /// The keys this store reads.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The task's record, or `None` once it has expired (or never existed).
    pub async fn get(&self, id: &Uuid) -> redis::RedisResult<Option<TaskRecord>> {
        let fields: HashMap<String, String> = self.conn.clone().hgetall(self.keys.task(id)).await?;
        Ok(TaskRecord::from_fields(*id, self.keys.queue(), &fields))
    }

    /// The task's attempts, first first (`None` if the task is unknown or expired): those ended,
    /// from its attempt log, and the one running now.
    pub async fn attempts(&self, id: &Uuid) -> redis::RedisResult<Option<Vec<AttemptView>>> {
        let fields: HashMap<String, String> = self.conn.clone().hgetall(self.keys.task(id)).await?;
        Ok(TaskRecord::from_fields(*id, self.keys.queue(), &fields)
            .map(|record| attempts_of(&record, &fields)))
    }

    /// The result bytes with their content type, or `None` if there is none (yet, or any more).
    pub async fn result(&self, record: &TaskRecord) -> redis::RedisResult<Option<StoredResult>> {
        let bytes = self.read(self.result_place(record)).await?;
        Ok(bytes.map(|bytes| StoredResult { bytes, content_type: result_type(record) }))
    }

    /// The result's size and content type, for `HEAD`: what `result` would answer, without
    /// reading the bytes.
    pub async fn result_size(&self, record: &TaskRecord) -> redis::RedisResult<Option<(u64, String)>> {
        let size = self.measure(self.result_place(record)).await?;
        Ok(size.map(|size| (size, result_type(record))))
    }

    /// The task's payload bytes, or `None` once they have expired.
    pub async fn payload(&self, record: &TaskRecord) -> redis::RedisResult<Option<Vec<u8>>> {
        self.read(self.payload_place(record)).await
    }

    /// The payload's size, for `HEAD`: what `payload` would answer, without reading the bytes.
    pub async fn payload_size(&self, record: &TaskRecord) -> redis::RedisResult<Option<u64>> {
        self.measure(self.payload_place(record)).await
    }

    /// Where the result is: text in the record (the result's own, or the payload it is), or a
    /// key of its own (again the payload's, when it is the payload).
    fn result_place<'r>(&self, record: &'r TaskRecord) -> Kept<'r> {
        if !record.result_is_payload {
            return match &record.inline_result {
                Some(text) => Kept::InRecord(text),
                None => Kept::Key(self.keys.result(&record.id)),
            };
        }
        self.payload_place(record)
    }

    fn payload_place<'r>(&self, record: &'r TaskRecord) -> Kept<'r> {
        match &record.inline_payload {
            Some(text) => Kept::InRecord(text),
            None => Kept::Key(self.keys.payload(&record.payload_ref.unwrap_or(record.id))),
        }
    }

    async fn read(&self, kept: Kept<'_>) -> redis::RedisResult<Option<Vec<u8>>> {
        match kept {
            Kept::InRecord(text) => Ok(Some(text.as_bytes().to_vec())),
            Kept::Key(key) => self.conn.clone().get(key).await,
        }
    }

    /// The size of what `read` would bring, `None` where it would bring nothing (`STRLEN`
    /// answers 0 for a missing key too, so `EXISTS` tells the two apart).
    async fn measure(&self, kept: Kept<'_>) -> redis::RedisResult<Option<u64>> {
        match kept {
            Kept::InRecord(text) => Ok(Some(text.len() as u64)),
            Kept::Key(key) => {
                let (exists, size): (bool, u64) = redis::pipe()
                    .atomic()
                    .exists(&key)
                    .strlen(&key)
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(exists.then_some(size))
            }
        }
    }

    /// Up to `count` dead letters from rank `from` (oldest first) that failed before
    /// `before_ms`, each with its kind and reason (`None` once its record is gone). A rank is
    /// found in logarithmic time, so paging by rank costs the same on the last page as on the
    /// first.
    pub async fn dead_letter_page(
        &self,
        from: usize,
        count: usize,
        before_ms: u64,
    ) -> redis::RedisResult<Vec<DeadEntry>> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.keys.dead())
            .arg(from)
            .arg(from + count.max(1) - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let entries: Vec<(Uuid, u64)> = entries
            .into_iter()
            .take_while(|(_, ms)| *ms < before_ms)
            .filter_map(|(id, ms)| Some((id.parse().ok()?, ms)))
            .collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &entries {
            pipe.cmd("HMGET").arg(self.keys.task(id)).arg(field::KIND).arg(field::DEAD_REASON);
        }
        let fields: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
        Ok(entries
            .into_iter()
            .zip(fields)
            .map(|((id, failed_ms), (kind, reason))| DeadEntry { id, failed_ms, kind, reason })
            .collect())
    }

    /// How many entries of the dead-letter set failed before `ms` (the rank of the first one
    /// that failed at or after it).
    pub async fn dead_before(&self, ms: u64) -> redis::RedisResult<usize> {
        redis::cmd("ZCOUNT")
            .arg(self.keys.dead())
            .arg("-inf")
            .arg(format!("({ms}"))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// How many entries of the dead-letter set failed from `from_ms` (inclusive; any time if
    /// unset) to `before_ms` (exclusive).
    pub async fn dead_between(&self, from_ms: Option<u64>, before_ms: u64) -> redis::RedisResult<usize> {
        redis::cmd("ZCOUNT")
            .arg(self.keys.dead())
            .arg(from_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "-inf".into()))
            .arg(format!("({before_ms}"))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// The rank of dead letter `id` in the dead-letter set (oldest first), if it is there.
    pub async fn dead_rank(&self, id: &Uuid) -> redis::RedisResult<Option<usize>> {
        redis::cmd("ZRANK")
            .arg(self.keys.dead())
            .arg(id.to_string())
            .query_async(&mut self.conn.clone())
            .await
    }
}

/// One entry of a queue's dead-letter set, with what a filter needs to know of its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadEntry {
    pub id: Uuid,
    /// When it failed (its score), in ms since the epoch.
    pub failed_ms: u64,
    /// Its kind; `None` when its record is gone (expired): no longer a dead letter.
    pub kind: Option<String>,
    pub reason: Option<String>,
}

/// A stretch of failure times, in ms since the epoch: from `from_ms` (inclusive) to `before_ms`
/// (exclusive), each open when unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedBetween {
    pub from_ms: Option<u64>,
    pub before_ms: Option<u64>,
}

/// Up to `limit` dead letters of the queues of `stores` that failed in `between` and pass
/// `keep`, with the time they failed, most recent first, after `cursor` (the `(failed ms, id)`
/// of the last one of the previous page). A filter may skip many: one request reads at most a
/// bounded number of records, and a page cut short by it still carries the cursor to read on
/// from.
pub async fn dead_letters(
    stores: &[Store],
    between: FailedBetween,
    mut cursor: Option<(u64, Uuid)>,
    limit: usize,
    keep: impl Fn(&TaskRecord) -> bool,
) -> redis::RedisResult<(Vec<(TaskRecord, u64)>, Option<(u64, Uuid)>)> {
    const BATCH: usize = 200;
    const MAX_SCANNED: usize = 1_000;
    let Some(first) = stores.first() else { return Ok((Vec::new(), None)) };
    let conn = first.conn.clone();
    let min = between.from_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "-inf".into());
    let mut found: Vec<(TaskRecord, u64)> = Vec::new();
    let mut scanned = 0;
    loop {
        let max = match (cursor, between.before_ms) {
            (Some((ms, _)), Some(before)) if ms < before => ms.to_string(),
            (Some((ms, _)), None) => ms.to_string(),
            (_, Some(before)) => format!("({before}"),
            (None, None) => "+inf".into(),
        };
        // Each queue's most recent BATCH past the cursor hold the next BATCH of all; equal
        // scores come in descending id order, so fetch extra to step past the cursor's ties.
        let mut pipe = redis::pipe();
        for store in stores {
            pipe.cmd("ZRANGE")
                .arg(store.keys.dead())
                .arg(&max)
                .arg(&min)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH + 64)
                .arg("WITHSCORES");
        }
        let per_queue: Vec<Vec<(String, u64)>> = conn.query_spread(&pipe).await?;
        let mut entries: Vec<(u64, Uuid, &Store)> = stores
            .iter()
            .zip(per_queue)
            .flat_map(|(store, entries)| {
                entries.into_iter().filter_map(move |(id, ms)| Some((ms, id.parse().ok()?, store)))
            })
            .filter(|&(ms, id, _)| cursor.is_none_or(|(c_ms, c_id)| ms < c_ms || (ms == c_ms && id < c_id)))
            .collect();
        entries.sort_by_key(|&(ms, id, _)| std::cmp::Reverse((ms, id)));
        let more = entries.len() > BATCH;
        entries.truncate(BATCH);
        if entries.is_empty() {
            return Ok((found, None));
        }
        let mut pipe = redis::pipe();
        for (_, id, store) in &entries {
            pipe.hgetall(store.keys.task(id));
        }
        let fields: Vec<HashMap<String, String>> = conn.query_spread(&pipe).await?;
        for (index, (&(ms, id, store), fields)) in entries.iter().zip(fields).enumerate() {
            cursor = Some((ms, id));
            let Some(record) = TaskRecord::from_fields(id, store.keys.queue(), &fields) else { continue };
            if keep(&record) {
                found.push((record, ms));
                if found.len() == limit {
                    let rest = more || index + 1 < entries.len();
                    return Ok((found, cursor.filter(|_| rest)));
                }
            }
        }
        scanned += entries.len();
        if !more {
            return Ok((found, None));
        }
        if scanned >= MAX_SCANNED {
            return Ok((found, cursor));
        }
    }
}

/// A range of task ids in their (lexical, creation) order: from `at_least` on, below `below`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdRange {
    /// The least id (or beginning of one) in the range, inclusive.
    pub at_least: Option<String>,
    /// Ids from this one (or beginning of one) on are out of the range.
    pub below: Option<String>,
}

impl IdRange {
    /// Ids that begin with `prefix`.
    pub fn prefixed(prefix: &str) -> IdRange {
        // Ids are lowercase hex and hyphens: the next string past every one beginning with
        // `prefix` is `prefix` followed by a character above them all.
        IdRange { at_least: Some(prefix.to_string()), below: Some(format!("{prefix}~")) }
    }

    /// Ids made from `from_ms` (inclusive) to `before_ms` (exclusive), as far as their first 48
    /// bits (UUIDv7's time) say.
    pub fn created(from_ms: Option<u64>, before_ms: Option<u64>) -> IdRange {
        IdRange { at_least: from_ms.map(time_prefix), below: before_ms.map(time_prefix) }
    }

    /// The ids in both ranges.
    pub fn and(self, other: IdRange) -> IdRange {
        IdRange {
            at_least: self.at_least.into_iter().chain(other.at_least).max(),
            below: self.below.into_iter().chain(other.below).min(),
        }
    }

    /// Whether no id can be in it.
    pub fn is_empty(&self) -> bool {
        matches!((&self.at_least, &self.below), (Some(low), Some(high)) if low >= high)
    }
}

/// The beginning of the text of every UUIDv7 made at `ms`: its 48-bit time in hex, hyphenated.
fn time_prefix(ms: u64) -> String {
    let ms = ms.min((1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// Up to `limit` records of the queues of `stores` whose ids lie in `range`, newest first, that
/// pass `keep`. Returns them and the cursor of the next page (an id: pass it as the range's
/// `below`), if there may be one. Ids are UUIDv7, so their order is their creation order, across
/// queues too.
pub async fn list(
    stores: &[Store],
    range: IdRange,
    limit: usize,
    keep: impl Fn(&TaskRecord) -> bool,
) -> redis::RedisResult<(Vec<TaskRecord>, Option<Uuid>)> {
    const BATCH: usize = 200;
    // Filters can skip most of the index: one request reads at most this many records, and
    // a page cut short by it still carries the cursor to read on from.
    const MAX_SCANNED: usize = 1_000;
    let Some(first) = stores.first() else { return Ok((Vec::new(), None)) };
    if range.is_empty() {
        return Ok((Vec::new(), None));
    }
    let conn = first.conn.clone();
    let mut found = Vec::new();
    let mut upper = range.below.map(|id| format!("({id}")).unwrap_or_else(|| "+".into());
    let lower = range.at_least.map(|id| format!("[{id}")).unwrap_or_else(|| "-".into());
    let mut scanned = 0;
    loop {
        // The newest BATCH of each queue below `upper`: the newest BATCH of all are among them.
        let mut pipe = redis::pipe();
        for store in stores {
            pipe.cmd("ZREVRANGEBYLEX")
                .arg(store.keys.index())
                .arg(&upper)
                .arg(&lower)
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH);
        }
        let per_queue: Vec<Vec<String>> = conn.query_spread(&pipe).await?;
        let mut ids: Vec<(Uuid, &Store)> = stores
            .iter()
            .zip(per_queue)
            .flat_map(|(store, ids)| ids.into_iter().filter_map(move |id| Some((id.parse().ok()?, store))))
            .collect();
        let more = ids.len() >= BATCH;
        ids.sort_by_key(|&(id, _)| std::cmp::Reverse(id));
        ids.truncate(BATCH);
        let Some(&(last, _)) = ids.last() else {
            return Ok((found, None));
        };
        upper = format!("({last}");
        scanned += ids.len();
        let mut pipe = redis::pipe();
        for (id, store) in &ids {
            pipe.hgetall(store.keys.task(id));
        }
        let records: Vec<HashMap<String, String>> = conn.query_spread(&pipe).await?;
        for ((id, store), fields) in ids.iter().zip(records) {
            if let Some(record) =
                TaskRecord::from_fields(*id, store.keys.queue(), &fields).filter(|r| keep(r))
            {
                found.push(record);
                if found.len() == limit {
                    return Ok((found, Some(*id)));
                }
            }
        }
        if !more || scanned >= MAX_SCANNED {
            return Ok((found, more.then_some(last)));
        }
    }
}

/// How many items `gather` makes room for before the first growth.
const GATHER_ROOM: usize = 64;

/// `first` and what `ready` gives at once after it, up to `most` in all: what a group commit
/// (many callers' writes sent together) takes in one round trip.
pub fn gather<T>(first: T, most: usize, mut ready: impl FnMut() -> Option<T>) -> Vec<T> {
    // Room for a round's worth at once: grown a push at a time, large items are copied again at
    // each growth.
    let mut batch = Vec::with_capacity(most.clamp(1, GATHER_ROOM));
    batch.push(first);
    while batch.len() < most {
        match ready() {
            Some(next) => batch.push(next),
            None => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_a_whole_multiple_of_its_period_on_the_wall_clock() {
        let period = std::time::Duration::from_millis(500);
        let (before, wait) = (now_ms(), until_next_tick(period).as_millis() as u64);
        assert!((1..=500).contains(&wait), "{wait}");
        // The tick it waits for is the next multiple of 500 ms (give or take the read's ms).
        assert!(((before + wait) % 500 <= 1) || ((before + wait) % 500 >= 499), "{before} + {wait}");
        assert_eq!(tick_number(period), now_ms() / 500);
        assert!((1..=1).contains(&until_next_tick(std::time::Duration::ZERO).as_millis()));
    }

    #[test]
    fn every_key_of_a_queue_shares_its_hash_tag() {
        let keys = Keys::new("courier", "default");
        let id = Uuid::now_v7();
        for key in [
            keys.task(&id),
            keys.payload(&id),
            keys.result(&id),
            keys.lane("echo")[1].clone(),
            keys.lanes(),
            keys.events().to_string(),
        ] {
            assert!(key.starts_with("courier:{default}:"), "{key}");
        }
    }

    /// The scripts build the same keys from the base: the text must not change.
    #[test]
    fn a_tasks_keys_and_a_lanes_streams_are_spelt_as_the_scripts_spell_them() {
        let keys = Keys::new("courier", "default");
        let id = Uuid::parse_str("0192f3c1-7d2e-7a40-8b1c-3d4e5f60718A").unwrap();
        assert_eq!(keys.task(&id), "courier:{default}:task:0192f3c1-7d2e-7a40-8b1c-3d4e5f60718a");
        assert_eq!(keys.payload(&id), "courier:{default}:payload:0192f3c1-7d2e-7a40-8b1c-3d4e5f60718a");
        assert_eq!(keys.result(&id), "courier:{default}:result:0192f3c1-7d2e-7a40-8b1c-3d4e5f60718a");
        let lane = ["ready-high", "ready", "ready-low"].map(|s| format!("courier:{{default}}:{s}:resize.v2"));
        assert_eq!(keys.lane("resize.v2"), lane);
        for (index, stream) in lane.iter().enumerate() {
            assert_eq!(&keys.lane_stream("resize.v2", index), stream);
        }
    }

    #[test]
    fn an_id_range_of_times_holds_the_ids_made_then() {
        let made = |ms: u64| {
            Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                (ms % 1000) as u32 * 1_000_000,
            ))
            .to_string()
        };
        let range = IdRange::created(Some(1_700_000_000_000), Some(1_700_000_000_500));
        let (low, high) = (range.at_least.clone().unwrap(), range.below.clone().unwrap());
        for (ms, inside) in [(1_699_999_999_999, false), (1_700_000_000_000, true), (1_700_000_000_499, true)]
        {
            let id = made(ms);
            assert_eq!(id >= low && id < high, inside, "{ms}");
        }
        assert!(made(1_700_000_000_500) >= high);
        let prefixed = IdRange::prefixed("0193a");
        assert!(prefixed.below.as_deref().unwrap() > "0193afff-ffff");
        let narrowed = range.clone().and(IdRange::prefixed(&low));
        assert_eq!(narrowed.at_least, Some(low.clone()));
        assert_eq!(narrowed.below, Some(format!("{low}~")));
        assert!(IdRange::created(Some(2), Some(1)).is_empty());
        assert!(!IdRange::default().is_empty());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_700_000_000_670), "2023-11-14T22:13:20.670Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        // Fixed width: the strings order as the times do (a trimmed "20.67Z" sorted after "20.671Z").
        assert!(rfc3339(1_700_000_000_670) < rfc3339(1_700_000_000_671));
        // As `time`'s own RFC 3339 says it, at times spread over eight millennia.
        let mut ms = 1u64;
        while ms < 253_402_300_800_000 {
            let told = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            let told = told.format(&time::format_description::well_known::Rfc3339).unwrap();
            // `time` trims the fraction's zeros, or leaves it out.
            let (whole, fraction) = told.trim_end_matches('Z').split_once('.').unwrap_or((&told[..19], ""));
            assert_eq!(rfc3339(ms), format!("{whole}.{fraction:0<3}Z"), "{ms}");
            ms = ms * 3 + 7;
        }
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "", "past what `time` dates");
    }

    #[test]
    fn a_record_round_trips_from_its_hash_fields() {
        let id = Uuid::now_v7();
        let fields: HashMap<String, String> = [
            ("kind", "echo"),
            ("status", "succeeded"),
            ("attempts", "1"),
            ("max_attempts", "5"),
            ("progress", "100"),
            ("created", "1000"),
            ("updated", "2000"),
            ("payload_bytes", "12"),
            ("error", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let record = TaskRecord::from_fields(id, "default", &fields).unwrap();
        assert_eq!(record.status, Status::Succeeded);
        assert_eq!(record.error, None);
        let view = record.view();
        assert_eq!(view.result_url, Some(format!("/api/v1/tasks/{id}/result")));
        assert_eq!(view.progress, Some(100));
        assert_eq!(view.queue, "default");
        assert!(TaskRecord::from_fields(id, "default", &HashMap::new()).is_none());
    }

    /// A record's hash as `HGETALL` reads it: `base`'s fields, then `pairs`' (a later one of a
    /// name wins).
    fn hash(base: &[(&str, &str)], pairs: &[(&str, &str)]) -> HashMap<String, String> {
        base.iter().chain(pairs).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_ended_first_attempt_without_a_log_entry_is_read_from_its_record() {
        let id = Uuid::now_v7();
        let attempts = |pairs: &[(&str, &str)]| {
            let base = [("kind", "echo"), ("created", "1000"), ("started", "2000"), ("finished", "2500")];
            let fields = hash(&base, pairs);
            let record = TaskRecord::from_fields(id, "default", &fields).unwrap();
            attempts_of(&record, &fields)
        };
        let told = |status: &'static str, error: Option<&str>| AttemptView {
            attempt: 1,
            outcome: status.into(),
            started_at: rfc3339(2000),
            ended_at: Some(rfc3339(2500)),
            worker: Some("worker-1".into()),
            error: error.map(str::to_string),
        };
        let ended = |status: &'static str| [("status", status), ("attempts", "1"), ("worker", "worker-1")];
        assert_eq!(attempts(&ended("succeeded")), [told("succeeded", None)]);
        assert_eq!(
            attempts(&[&ended("failed")[..], &[("error", "boom")]].concat()),
            [told("failed", Some("boom"))]
        );
        assert_eq!(attempts(&ended("cancelled")), [told("cancelled", None)]);
        // A logged attempt 1 is the log's; a task not ended, or ended after more attempts or none,
        // tells no attempt of its own.
        let logged = ["succeeded", "2100", "2500", "worker-2", ""].join("\u{1f}");
        let from_log = attempts(&[&ended("succeeded")[..], &[("a:1", &logged)]].concat());
        assert_eq!((from_log.len(), from_log[0].started_at.as_str()), (1, rfc3339(2100).as_str()));
        assert_eq!(attempts(&[("status", "retrying"), ("attempts", "1")]), []);
        assert_eq!(attempts(&[("status", "failed"), ("attempts", "2")]), []);
        assert_eq!(attempts(&[("status", "cancelled")]), []);
    }

    #[test]
    fn a_result_without_its_type_is_served_as_json() {
        let id = Uuid::now_v7();
        let record = |pairs: &[(&str, &str)]| {
            let fields = hash(
                &[("kind", "echo"), ("status", "succeeded"), ("created", "1000"), ("result", "{}")],
                pairs,
            );
            TaskRecord::from_fields(id, "default", &fields).unwrap()
        };
        assert_eq!(result_type(&record(&[])), "application/json");
        assert_eq!(result_type(&record(&[("result_type", "text/csv")])), "text/csv");
    }

    #[test]
    fn a_record_without_its_start_or_its_payloads_size_reads_them_from_its_log_and_payload() {
        let id = Uuid::now_v7();
        let read = |pairs: &[(&str, &str)]| {
            let fields = hash(&[("kind", "echo"), ("status", "succeeded"), ("created", "1000")], pairs);
            let record = TaskRecord::from_fields(id, "default", &fields).unwrap();
            (record.started_ms, record.payload_bytes)
        };
        // As versions before the thirty-fourth step wrote them, and as it writes them.
        assert_eq!(
            read(&[("started", "2000"), ("payload_bytes", "7"), ("payload", "{\"n\":1}")]),
            (Some(2000), 7)
        );
        let log = |start: &str| ["retried", start, "2500", "worker-1", "boom"].join("\u{1f}");
        assert_eq!(
            read(&[("a:1", &log("2000")), ("a:2", &log("2600")), ("payload", "{\"n\":1}")]),
            (Some(2000), 7)
        );
        // Neither said: never started, no payload in the record (nor a broken log entry).
        assert_eq!(read(&[]), (None, 0));
        assert_eq!(read(&[("a:1", "retried")]), (None, 0));
        assert_eq!(read(&[("a:2", &log("2600"))]), (None, 0));
    }

    #[test]
    fn a_record_reads_its_last_change_as_the_latest_of_its_stamps() {
        let id = Uuid::now_v7();
        let read = |pairs: &[(&str, &str)]| {
            let fields = hash(&[("kind", "echo"), ("status", "queued"), ("created", "1000")], pairs);
            TaskRecord::from_fields(id, "default", &fields).unwrap().updated_ms
        };
        assert_eq!(read(&[]), 1000);
        // Ended: its end (this version's ends leave `updated` out), or an older end's `updated`.
        assert_eq!(read(&[("status", "succeeded"), ("finished", "3000")]), 3000);
        assert_eq!(read(&[("status", "succeeded"), ("finished", "3000"), ("updated", "3000")]), 3000);
        // Running: its attempt's start, or a later change (a progress report).
        assert_eq!(read(&[("status", "running"), ("attempt_started", "2000")]), 2000);
        assert_eq!(read(&[("status", "running"), ("attempt_started", "2000"), ("updated", "2400")]), 2400);
        // Waiting again after an attempt (its start stays until the next): the retry's change.
        assert_eq!(read(&[("status", "retrying"), ("attempt_started", "2000"), ("updated", "2600")]), 2600);
        // An empty or broken stamp is not one.
        assert_eq!(read(&[("updated", ""), ("finished", "x")]), 1000);
    }
}
