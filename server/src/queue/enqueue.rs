//! How tasks get into a queue: one script (enqueue.lua) stores each record and payload, queues its
//! id and appends its event, or refuses the lot when the queue's `max_depth` would be passed.
//!
//! Submissions that arrive while an enqueue of the same queue is on its way to Redis go together
//! in the next one (a group commit), each keeping its own all-or-nothing answer: a busy server
//! pays one script call, and one round trip, per group rather than per request, and an idle one
//! sends each at once. Large payloads and large batches go on their own, their payloads staged
//! with a plain `SET` first (the script renames them), so no large string passes through Lua.
//!
//! Most tasks need no decision in Redis: no session to join, no due time, a payload of their own,
//! and a queue without a `max_depth`. A group of only such tasks goes as a transaction of plain
//! commands (`MULTI`…`EXEC`) that writes what the script would, at about half its Redis CPU: Lua
//! costs more turning each argument into a Lua string and back into a Redis one than the commands
//! cost themselves (docs/benchmark-notes.md). Whether the queue has a `max_depth` is read by
//! every round trip, for the next to decide with: a limit set through this process's handle
//! applies to its next submission, while one set on another server lets the group commit under
//! way here, and at most one more, pass unchecked.

use super::{GROUP, NewTask, Queue, priority_tag, record};
use crate::events::{append_task_events, task_event_value};
use crate::redis_client::command;
use crate::store::now_ms;
use app::model::Priority;
use redis::{RedisResult, Value};
use std::{collections::HashSet, sync::Mutex, time::Duration};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Payloads up to this size go to the enqueue script as arguments; larger ones are staged.
const INLINE_PAYLOAD_MAX: usize = 16 * 1024;
/// Text payloads up to this size live in the task's record rather than under a key of their own:
/// a task then costs Redis three commands fewer (the payload's SET, GET and PEXPIRE), ~3 µs, and
/// ~550 bytes more memory once the payload passes 64 bytes (the record is then a hash table, not
/// a listpack) — docs/benchmark-notes.md. Text only, as the record is read as text.
const RECORD_PAYLOAD_MAX: usize = 4 * 1024;
/// How long a staged payload waits for its enqueue script (which runs right after it) at most.
const STAGED_TTL: Duration = Duration::from_secs(300);
/// The most tasks one group commit carries; a batch this large goes on its own.
const GROUP_COMMIT_MAX: usize = 256;
/// How long a look that found the queue without a `max_depth` lets submissions go as plain
/// commands: a busy queue looks with every round trip, an idle one's next submission goes through
/// the script (which looks as it stores).
const UNLIMITED_SEEN_FOR_MS: u64 = 1_000;
/// The field of a queue's settings that limits its waiting tasks (enqueue.lua reads it).
const MAX_DEPTH: &str = "max_depth";

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Stored,
    /// Stored, but no replica confirmed it in time (`--durable-submit`): a failover now could
    /// lose it.
    Unconfirmed,
    /// The queue's `max_depth` would be passed: nothing was stored.
    Full {
        waiting: u64,
        max_depth: u64,
    },
}

/// What this process's enqueues found of the queue's limits: whether the next submissions may go
/// as plain commands.
#[derive(Debug, Default)]
pub(super) struct LimitsSeen(Mutex<Seen>);

#[derive(Debug, Default)]
struct Seen {
    /// When the newest look that found no `max_depth` started (ms since the epoch; 0 when the
    /// newest found one, or none looked).
    unlimited_at_ms: u64,
    /// When the newest look applied started: an older one's answer, arriving later, is stale.
    newest_look_ms: u64,
    /// How many times this process changed the queue's limits: a look started before the last
    /// change is stale too.
    changes: u64,
}

/// An enqueue's look at whether the queue has a `max_depth`: when it started, after how many of
/// this process's changes to the limits.
#[derive(Clone, Copy)]
struct Look {
    at_ms: u64,
    changes: u64,
}

/// Submissions waiting to be sent together; one per queue handle, started on first use.
pub(super) struct Enqueuer {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Tasks to store together, and who waits for the answer.
struct Job {
    tasks: Vec<NewTask>,
    reply: oneshot::Sender<RedisResult<Enqueued>>,
}

impl NewTask {
    /// Whether this task's enqueue stores its payload (a shared payload is stored by its owner).
    fn owns_payload(&self) -> bool {
        self.shared_payload.is_none_or(|shared| shared.owner == self.id)
    }

    /// Whether its enqueue keeps its payload in its record (a small text payload of its own).
    pub fn payload_in_record(&self) -> bool {
        self.shared_payload.is_none()
            && self.payload.len() <= RECORD_PAYLOAD_MAX
            && std::str::from_utf8(&self.payload).is_ok()
    }

    /// Its record's options (`record::OPTIONS`), as both ways of storing it write them. What
    /// readers take for granted is left out: a `max_attempts` of 1, a JSON payload's type
    /// (`record::DEFAULT_PAYLOAD_TYPE`) and the size of a payload kept in the record (its own
    /// length, `record::PAYLOAD_BYTES`).
    fn options(&self) -> String {
        let text = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        let workflow = self.workflow.as_ref();
        let max_attempts = if self.max_attempts == 1 { String::new() } else { self.max_attempts.to_string() };
        let payload_type = match self.payload_type == record::DEFAULT_PAYLOAD_TYPE {
            true => "",
            false => &self.payload_type,
        };
        let payload_bytes = text((!self.payload_in_record()).then_some(self.payload.len() as u64));
        let payload_ref = self.shared_payload.map(|shared| shared.owner.to_string()).unwrap_or_default();
        let workflow_id = workflow.map(|w| w.workflow.to_string()).unwrap_or_default();
        // (In the order they are kept.)
        record::Options::write([
            (record::MAX_ATTEMPTS, max_attempts.as_str()),
            (record::TIMEOUT_MS, &text(self.timeout_ms)),
            (record::EXPIRES, &text(self.expires_ms)),
            (record::PAYLOAD_TYPE, payload_type),
            (record::PAYLOAD_BYTES, &payload_bytes),
            (record::SESSION, self.session.as_deref().unwrap_or_default()),
            (record::IDEMPOTENCY_KEY, self.idempotency_key.as_deref().unwrap_or_default()),
            (record::PAYLOAD_REF, &payload_ref),
            (record::SUBSCRIPTION, self.subscription.as_deref().unwrap_or_default()),
            (record::WORKFLOW, &workflow_id),
            (record::WORKFLOW_STEP, workflow.map_or("", |w| w.step.as_str())),
        ])
    }

    /// Whether its payload is staged before the script rather than passed to it.
    fn staged(&self) -> bool {
        self.owns_payload() && self.payload.len() > INLINE_PAYLOAD_MAX
    }

    /// Whether its enqueue needs no decision in Redis (no session to join, no due time, a
    /// payload of its own passed as an argument): it may go as plain commands.
    fn plain(&self) -> bool {
        self.session.is_none() && self.delay_ms.is_none() && self.shared_payload.is_none() && !self.staged()
    }
}

impl Queue {
    /// Stores the payload and the record and queues the id, atomically.
    pub async fn enqueue(&self, task: &NewTask) -> RedisResult<Enqueued> {
        self.enqueue_many(std::slice::from_ref(task)).await
    }

    /// Enqueues several tasks: all of them, or (on error, or when the queue's `max_depth` would
    /// be passed) none.
    pub async fn enqueue_many(&self, tasks: &[NewTask]) -> RedisResult<Enqueued> {
        if tasks.len() > GROUP_COMMIT_MAX || tasks.iter().any(NewTask::staged) {
            let answers = self.enqueue_groups(&[tasks]).await?;
            return Ok(answers.into_iter().next().unwrap_or(Enqueued::Stored));
        }
        let (reply, answer) = oneshot::channel();
        let gone = || redis::RedisError::from((redis::ErrorKind::Io, "the enqueue loop stopped"));
        let enqueuer = self.enqueuer.get_or_init(|| {
            let (jobs, queued) = mpsc::unbounded_channel();
            tokio::spawn(self.for_loop().group_commits(queued));
            Enqueuer { jobs }
        });
        enqueuer.jobs.send(Job { tasks: tasks.to_vec(), reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Sends the jobs waiting, together, one call at a time: those that arrive during a call go
    /// in the next. Runs as long as a handle that sends it jobs (`for_loop`).
    async fn group_commits(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        // The kinds whose lanes this loop has seen made: a task of another goes through the
        // script, which makes its lane.
        let mut lanes: HashSet<String> = HashSet::new();
        while let Some(first) = jobs.recv().await {
            let mut count = first.tasks.len();
            let mut batch = vec![first];
            while count < GROUP_COMMIT_MAX {
                match jobs.try_recv() {
                    Ok(job) => {
                        count += job.tasks.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            let groups: Vec<&[NewTask]> = batch.iter().map(|job| job.tasks.as_slice()).collect();
            let plain = self.settings.durable.is_none()
                && self.seen_unlimited()
                && groups
                    .iter()
                    .flat_map(|group| group.iter())
                    .all(|task| task.plain() && lanes.contains(&task.kind));
            let sent =
                if plain { self.enqueue_plain(&groups).await } else { self.enqueue_groups(&groups).await };
            match sent {
                Ok(answers) => {
                    for (job, answer) in batch.into_iter().zip(answers) {
                        if !matches!(answer, Enqueued::Full { .. }) {
                            // (A delayed task, or one behind others of its session, is on no
                            // lane yet: the script made none for it.)
                            let queued = job.tasks.iter().filter(|task| task.plain());
                            lanes.extend(queued.map(|task| task.kind.clone()));
                        }
                        let _ = job.reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Confirms that a replica holds every write this queue's durable connection made before,
    /// and what `key` (an idempotency key, holding `value`) says, which an earlier request may
    /// have stored through another connection: it is written again, unchanged, and waited for.
    /// Always `true` without `--durable-submit`.
    pub async fn confirm_durable(&self, key: &str, value: &str) -> RedisResult<bool> {
        let Some(durable) = self.settings.durable.as_ref() else { return Ok(true) };
        let mut touch = redis::cmd("SET");
        touch.arg(key).arg(value).arg("XX").arg("KEEPTTL");
        durable.confirm(touch).await
    }

    /// Stores `groups` of tasks in one script call, each all or none; the answer of each. Large
    /// payloads are staged in the same round trip, just before the script.
    async fn enqueue_groups(&self, groups: &[&[NewTask]]) -> RedisResult<Vec<Enqueued>> {
        let look = self.look();
        let mut call = self.scripts.enqueue.prepare_invoke();
        call.key(self.keys.delayed())
            .key(self.keys.retrying())
            .key(self.keys.index())
            .key(self.keys.expiring())
            .key(self.keys.events())
            .key(self.keys.settings())
            .arg(self.keys.base())
            .arg(GROUP)
            .arg(self.settings.events_maxlen);
        for group in groups {
            call.arg(group.len());
            for task in group.iter() {
                add_task_args(&mut call, task);
            }
        }
        let mut pipe = redis::pipe();
        // Whether the queue has a max_depth, for the next submissions (the script reads it too).
        pipe.hexists(self.keys.settings(), MAX_DEPTH);
        for task in groups.iter().flat_map(|g| g.iter()).filter(|t| t.staged()) {
            pipe.cmd("SET")
                .arg(self.keys.staged_payload(&task.id))
                .arg(task.payload.as_ref())
                .arg("PX")
                .arg(STAGED_TTL.as_millis() as u64)
                .ignore();
        }
        pipe.add_command(call.command());
        let durable = self.settings.durable.as_ref();
        if let Some(durable) = durable {
            pipe.add_command(wait_for_replica(durable));
        }
        let mut conn = durable.map_or_else(|| self.conn.clone(), |durable| durable.conn.clone());
        let sent: RedisResult<Vec<Value>> = pipe.query_async(&mut conn).await;
        drop(pipe);
        let (replies, replicas): (Vec<Value>, Option<u64>) = match sent {
            // The first call since Redis last lost the library (a start, a restart): the payloads
            // are staged already; the library is loaded, and the script run.
            Err(e) if super::library::is_missing(&e) => {
                let replies: Vec<Value> = call.load_and_send(&call.command(), &mut conn).await?;
                // The look the failed pipeline carried, again; the tasks are stored whatever it
                // answers (without one, the next group goes through the script and looks).
                let limited: RedisResult<bool> = redis::cmd("HEXISTS")
                    .arg(self.keys.settings())
                    .arg(MAX_DEPTH)
                    .query_async(&mut conn)
                    .await;
                if let Ok(limited) = limited {
                    self.saw_limits(limited, look);
                }
                let replicas = match durable {
                    // On a cluster, to the node the script ran on.
                    Some(durable) => {
                        Some(conn.query_beside(&self.keys.settings(), &wait_for_replica(durable)).await?)
                    }
                    None => None,
                };
                (replies, replicas)
            }
            other => {
                let mut replies = other?.into_iter();
                let limited: Option<bool> = replies.next().map(redis::from_redis_value).transpose()?;
                self.saw_limits(limited.unwrap_or(true), look);
                let script = replies.next().map(redis::from_redis_value).transpose()?.unwrap_or_default();
                (script, replies.next().map(redis::from_redis_value).transpose()?)
            }
        };
        let confirmed = replicas.is_none_or(|replicas| replicas >= REPLICAS);
        let answers: Vec<Enqueued> = replies
            .into_iter()
            .map(answer_of)
            .map(|answer| match answer {
                Enqueued::Stored if !confirmed => Enqueued::Unconfirmed,
                answer => answer,
            })
            .collect();
        if answers.contains(&Enqueued::Stored) {
            self.prune_index_now_and_then().await;
        }
        Ok(answers)
    }
}

impl Queue {
    /// Stores `groups` of plain tasks (`NewTask::plain`) on a queue without a `max_depth` as one
    /// transaction of plain commands that writes what enqueue.lua writes for them: each payload
    /// and record, its lane entry, the listing index and the `queued` events. The transaction
    /// reads whether the queue has a `max_depth` now, for the next submissions. Every group is
    /// stored.
    async fn enqueue_plain(&self, groups: &[&[NewTask]]) -> RedisResult<Vec<Enqueued>> {
        let look = self.look();
        let tasks: Vec<&NewTask> = groups.iter().flat_map(|group| group.iter()).collect();
        let mut kinds: Vec<&str> = tasks.iter().map(|task| task.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let mut pipe = redis::pipe();
        pipe.atomic().hexists(self.keys.settings(), MAX_DEPTH);
        // Each kind's lane is in the set of lanes (this loop saw it made): one missing means
        // Redis lost it, and it is made again below.
        for kind in &kinds {
            pipe.sismember(self.keys.lanes(), *kind);
        }
        let mut events = Vec::with_capacity(tasks.len());
        let mut index = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let id = task.id.to_string();
            let created = task.created_ms.to_string();
            let in_record = task.payload_in_record();
            if !in_record {
                pipe.set(self.keys.payload(&task.id), task.payload.as_ref());
            }
            if let Some(expires) = task.expires_ms {
                pipe.zadd(self.keys.expiring(), &id, expires);
            }
            if let Some(key) = &task.idempotency_key {
                // Claimed with a short TTL in case this never runs; the task's own from now.
                pipe.persist(key);
            }
            pipe.add_command(self.new_record(task, &created, in_record));
            let [high, normal, low] = self.keys.lane(&task.kind);
            let stream = match task.priority {
                Priority::High => high,
                Priority::Normal => normal,
                Priority::Low => low,
            };
            pipe.xadd(stream, "*", &[("task", &id)]);
            events.push(task_event_value(["queued", &id, &task.kind, "queued", "0", "", &created, "", ""]));
            index.push((0, id));
        }
        pipe.sadd(self.keys.ready_lanes(), &kinds);
        pipe.zadd_multiple(self.keys.index(), &index);
        append_task_events(&mut pipe, self.keys.events(), self.settings.events_maxlen, &events);
        let replies: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        // From here on every task is stored: nothing below may answer otherwise.
        // Only the first replies are read (the depth setting's, then each kind's lane's); the
        // rest are not marked `ignore()`, for the reason transaction.rs's `applied` gives.
        let mut replies = replies.into_iter().map(redis::from_redis_value::<bool>);
        let limited = !matches!(replies.next(), Some(Ok(false)));
        self.saw_limits(limited, look);
        let lost: Vec<String> = kinds
            .iter()
            .zip(replies)
            .filter(|(_, has)| !matches!(has, Ok(true)))
            .map(|(kind, _)| kind.to_string())
            .collect();
        if !lost.is_empty() {
            // Its stream holds the entries just added, without a consumer group: the group is
            // made from the stream's start, so they are handed out. Should this fail, the next
            // enqueue of the kind finds the lane missing again and tries again, as does a
            // worker whose read finds no group (fetch.rs).
            warn!(queue = %self.name, kinds = ?lost, "a lane was missing from Redis: it is made again");
            if let Err(e) = self.open_lanes(&lost).await {
                warn!(queue = %self.name, error = %e, "could not make the missing lanes again");
            }
        }
        self.prune_index_now_and_then().await;
        Ok(vec![Enqueued::Stored; groups.len()])
    }

    /// The `HSET` that makes a plain task's record, as enqueue.lua's makes it: the fields every
    /// task has, its options (`NewTask::options`), its trace context, a priority but the normal
    /// one and, `in_record`, its payload. What readers take for granted is left out, each field
    /// being some 64 bytes of Redis's memory for as long as the task is kept: `updated` (until a
    /// change, `created`), a normal priority (`n`) and `attempts` (0 until a start writes it).
    fn new_record(&self, task: &NewTask, created: &str, in_record: bool) -> redis::Cmd {
        // Room for every field (a command's arguments grew from empty: six copies a task).
        let payload = if in_record { task.payload.len() } else { 0 };
        let options = task.options();
        let mut hset = command("HSET", NEW_RECORD_ARGS, NEW_RECORD_BYTES + options.len() + payload);
        hset.arg(self.keys.task(&task.id))
            .arg(record::KIND)
            .arg(&task.kind)
            .arg(record::STATUS)
            .arg("queued")
            .arg(record::CREATED)
            .arg(created)
            .arg(record::OPTIONS)
            .arg(options);
        if let Some(traceparent) = task.traceparent.as_deref().filter(|t| !t.is_empty()) {
            hset.arg(record::TRACEPARENT).arg(traceparent);
        }
        if task.priority != Priority::Normal {
            hset.arg(record::PRIORITY).arg(priority_tag(task.priority));
        }
        if in_record {
            hset.arg(record::PAYLOAD).arg(task.payload.as_ref());
        }
        hset
    }

    /// An enqueue's look at the queue's limits, starting now.
    fn look(&self) -> Look {
        Look { at_ms: now_ms(), changes: self.seen().changes }
    }

    /// Whether submissions may go as plain commands now: the newest look found the queue without
    /// a `max_depth`, less than `UNLIMITED_SEEN_FOR_MS` ago.
    fn seen_unlimited(&self) -> bool {
        now_ms() < self.seen().unlimited_at_ms + UNLIMITED_SEEN_FOR_MS
    }

    /// Records what `look` found: whether a `max_depth` limits the queue. A look that started
    /// before this process last changed the limits, or before the newest look recorded, is stale
    /// (enqueues outside the loop, large ones, run beside it); of two that started in the same
    /// millisecond, a limit found wins.
    fn saw_limits(&self, limited: bool, look: Look) {
        let mut seen = self.seen();
        let newer = look.at_ms > seen.newest_look_ms || (limited && look.at_ms == seen.newest_look_ms);
        if look.changes == seen.changes && newer {
            seen.newest_look_ms = look.at_ms;
            seen.unlimited_at_ms = if limited { 0 } else { look.at_ms };
        }
    }

    /// Forgets what enqueues found of the queue's limits, and any look under way: the next
    /// submissions go through the script, which reads them.
    pub(super) fn forget_unlimited(&self) {
        let mut seen = self.seen();
        // (The looks before it are stale by their count of changes, so the newest is no one's.)
        *seen = Seen { changes: seen.changes + 1, ..Seen::default() };
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.limits_seen.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The most arguments of a new record's `HSET` after the command: the key, and a name and a value
/// for each of the 7 fields it may write.
const NEW_RECORD_ARGS: usize = 15;
/// Room for a new record's arguments but its options and payload: the key, the field names and
/// the values of a task with a trace context come to some 180 bytes.
const NEW_RECORD_BYTES: usize = 192;

/// The replicas a durable submission waits for.
pub(super) const REPLICAS: u64 = 1;

/// `WAIT`: until a replica holds every write made before on the connection, or the timeout.
pub(super) fn wait_for_replica(durable: &super::Durable) -> redis::Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(REPLICAS).arg(durable.timeout.as_millis().max(1) as u64);
    wait
}

/// One group's answer from the script: `1`, or `{waiting, max_depth}`.
fn answer_of(reply: Value) -> Enqueued {
    match redis::from_redis_value::<(u64, u64)>(reply) {
        Ok((waiting, max_depth)) => Enqueued::Full { waiting, max_depth },
        Err(_) => Enqueued::Stored,
    }
}

/// The 13 arguments of one task in enqueue.lua, in its order.
fn add_task_args(call: &mut super::library::Call<'_>, task: &NewTask) {
    let text = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let due = task.delay_ms.map(|delay| task.created_ms + delay);
    let shared_open = match task.shared_payload {
        Some(shared) if shared.owner == task.id => shared.tasks.to_string(),
        _ => String::new(),
    };
    let source = match () {
        _ if !task.owns_payload() => "shared",
        _ if task.staged() => "staged",
        _ if task.payload_in_record() => "record",
        _ => "here",
    };
    call.arg(task.id.to_string())
        .arg(task.created_ms)
        .arg(&task.kind)
        .arg(text(due))
        .arg(priority_tag(task.priority))
        .arg(task.options())
        .arg(task.session.as_deref().unwrap_or(""))
        .arg(task.idempotency_key.as_deref().unwrap_or(""))
        .arg(text(task.expires_ms))
        .arg(shared_open)
        .arg(source)
        .arg(task.traceparent.as_deref().unwrap_or(""));
    if source == "here" || source == "record" {
        call.arg(task.payload.as_ref());
    } else {
        call.arg("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{
        WorkflowStep,
        testing::{claim_idempotency_key, echo_task, private_queue, unpacked},
    };
    use bytes::Bytes;
    use redis::AsyncCommands;
    use std::collections::HashMap;
    use uuid::Uuid;

    /// How many times Redis ran `EXEC` and `FCALL` so far (a first `FCALL` that finds the library
    /// not loaded yet counts too).
    async fn calls(conn: &mut impl redis::aio::ConnectionLike) -> (u64, u64) {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
        let count = |command: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse().ok())
                .unwrap_or(0)
        };
        (count("exec"), count("fcall"))
    }

    /// Everything a queue's keys say of task `id`, with its id written `ID`: its record, its
    /// payload key, the lane stream its entry is on, its index and expiry scores and its events.
    async fn written(queue: &Queue, id: Uuid) -> Vec<String> {
        let mut conn = queue.conn.clone();
        let anonymous = |text: String| text.replace(&id.to_string(), "ID");
        let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&id)).await.unwrap();
        let mut record: Vec<String> =
            record.into_iter().map(|(f, v)| anonymous(format!("{f}={v}"))).collect();
        record.sort();
        let payload: Option<Vec<u8>> = conn.get(queue.keys.payload(&id)).await.unwrap();
        record.push(format!("payload key: {payload:?}"));
        for stream in queue.keys.lane("echo") {
            let entries: redis::streams::StreamRangeReply = conn.xrange_all(&stream).await.unwrap();
            let ids = entries.ids.iter().filter(|e| e.get::<String>("task") == Some(id.to_string()));
            record.push(format!("{stream}: {}", ids.count()));
        }
        let index: Option<f64> = conn.zscore(queue.keys.index(), id.to_string()).await.unwrap();
        let expiring: Option<f64> = conn.zscore(queue.keys.expiring(), id.to_string()).await.unwrap();
        record.push(format!("index {index:?}, expiring {expiring:?}"));
        let events: redis::streams::StreamRangeReply = conn.xrange_all(queue.keys.events()).await.unwrap();
        for entry in &events.ids {
            for (field, value) in &entry.map {
                let value: String = redis::from_redis_value(value.clone()).unwrap();
                if value.contains(&id.to_string()) {
                    record.push(anonymous(format!("{field}: {value}")));
                }
            }
        }
        record
    }

    #[tokio::test]
    async fn a_plain_enqueue_writes_what_the_script_writes() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let with_options = |payload: &'static [u8]| {
            let mut task = echo_task(Bytes::from_static(payload));
            task.created_ms = 1_700_000_000_000;
            task.max_attempts = 3;
            task.timeout_ms = Some(5_000);
            task.priority = Priority::High;
            task.subscription = Some("orders/audit".into());
            task.expires_ms = Some(1_800_000_000_000);
            task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
            task.workflow = Some(WorkflowStep { workflow: Uuid::now_v7(), step: "fetch".into() });
            task
        };
        let variants = [
            // A small JSON payload, kept in the record.
            {
                let mut task = echo_task(Bytes::from_static(b"{\"text\": \"hello\"}"));
                task.payload_type = record::DEFAULT_PAYLOAD_TYPE.into();
                task
            },
            // Bytes that are not text: under a key of their own.
            echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])),
            with_options(b"\"with every option a plain task may have\""),
            {
                let mut task = echo_task(Bytes::new());
                task.priority = Priority::Low;
                task
            },
        ];
        let mut in_record = false;
        for variant in variants {
            let (mut by_script, mut plain) = (variant.clone(), variant.clone());
            by_script.id = Uuid::now_v7();
            plain.id = Uuid::now_v7();
            for task in [&mut by_script, &mut plain] {
                // An idempotency key, claimed with a short TTL before the enqueue.
                claim_idempotency_key(&queue, task, 60).await;
            }
            assert!(plain.plain());
            let before = calls(&mut conn).await;
            assert_eq!(
                queue.enqueue_groups(&[std::slice::from_ref(&by_script)]).await.unwrap(),
                [Enqueued::Stored]
            );
            let between = calls(&mut conn).await;
            assert_eq!(
                queue.enqueue_plain(&[std::slice::from_ref(&plain)]).await.unwrap(),
                [Enqueued::Stored]
            );
            let after = calls(&mut conn).await;
            assert!(between.0 == before.0 && between.1 > before.1, "the script's way runs the script");
            assert_eq!(
                (after.0 - between.0, after.1 - between.1),
                (1, 0),
                "the plain way is one transaction"
            );
            let (script_wrote, plain_wrote) =
                (written(&queue, by_script.id).await, written(&queue, plain.id).await);
            assert!(
                script_wrote.iter().any(|line| line.starts_with("e: queued\u{1f}ID")),
                "{script_wrote:?}"
            );
            assert_eq!(plain_wrote, script_wrote);
            // Options are kept together, none as a field of its own (record.rs, `OPTIONS`).
            for option in record::OPTION_FIELDS {
                let apart = script_wrote.iter().any(|line| line.starts_with(&format!("{option}=")));
                assert!(!apart, "{option} in {script_wrote:?}");
            }
            // A field of the record's own, or one of its options.
            let options =
                script_wrote.iter().find_map(|line| line.strip_prefix("options=")).expect("options");
            let options = record::Options::read(options.as_bytes()).expect("options as Courier writes them");
            let written = |field: &str| {
                script_wrote.iter().any(|line| line.starts_with(&format!("{field}=")))
                    || options.get(field).is_some()
            };
            // A small payload in the record is told by its presence alone: neither way writes the
            // `payload_inline` flag versions before the twenty-ninth step read (record.rs).
            in_record |= written("payload");
            assert!(!written("payload_inline"), "{script_wrote:?}");
            // Such a payload is its own size; any other has its size written (record.rs).
            assert_ne!(written("payload"), written("payload_bytes"), "{script_wrote:?}");
            // Nor `attempts` (0), a `max_attempts` of 1 or a JSON payload's type: the record reads
            // them so.
            assert!(!written("attempts"), "{script_wrote:?}");
            assert_eq!(written("max_attempts"), variant.max_attempts != 1, "{script_wrote:?}");
            assert_eq!(
                written("payload_type"),
                variant.payload_type != record::DEFAULT_PAYLOAD_TYPE,
                "{script_wrote:?}"
            );
            for task in [&by_script, &plain] {
                let view = queue.store().get(&task.id).await.unwrap().expect("the record");
                assert_eq!((view.attempts, view.max_attempts), (0, variant.max_attempts));
                assert_eq!(view.payload_type, variant.payload_type);
                let ttl: i64 = conn.ttl(task.idempotency_key.as_ref().unwrap()).await.unwrap();
                assert_eq!(ttl, -1, "an idempotency key lives as long as its task");
            }
        }
        assert!(in_record, "a variant keeps its payload in the record");
    }

    #[tokio::test]
    async fn submissions_go_plain_only_where_the_queue_was_seen_without_a_max_depth() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let echo = || echo_task(Bytes::from_static(b"1"));
        // Which way an enqueue through the group-commit loop went, and its answer.
        let way = async |task: NewTask| {
            let mut conn = queue.conn.clone();
            let before = calls(&mut conn).await;
            let answer = queue.enqueue(&task).await.unwrap();
            let after = calls(&mut conn).await;
            // (The script's way may also prune the listing index, a script of its own.)
            match (after.0 - before.0, after.1 - before.1) {
                (1, 0) => ("plain", answer),
                (0, 1..) => ("script", answer),
                other => panic!("{other:?}"),
            }
        };
        // The first looks at the queue's limits as the script stores it; the next go plain.
        assert_eq!(way(echo()).await, ("script", Enqueued::Stored));
        assert_eq!(way(echo()).await, ("plain", Enqueued::Stored));
        // A session, a due time or a kind whose lane this loop has not stored go by the script.
        let mut session = echo();
        session.session = Some("s".into());
        assert_eq!(way(session).await, ("script", Enqueued::Stored));
        let mut later = echo();
        later.delay_ms = Some(60_000);
        assert_eq!(way(later).await, ("script", Enqueued::Stored));
        let mut other = echo();
        other.kind = "other".into();
        assert_eq!(way(other.clone()).await, ("script", Enqueued::Stored));
        other.id = Uuid::now_v7();
        assert_eq!(way(other).await, ("plain", Enqueued::Stored));
        // A max_depth set through this handle applies to the next submission at once.
        let limits = app::model::QueueLimits { max_depth: Some(1), ..Default::default() };
        queue.set_limits(&limits).await.unwrap();
        let ("script", Enqueued::Full { waiting, max_depth: 1 }) = way(echo()).await else {
            panic!("a full queue refuses")
        };
        // One set on another server lets one group more pass (this loop looked before it was
        // set), then applies.
        queue.set_limits(&Default::default()).await.unwrap();
        assert_eq!(way(echo()).await, ("script", Enqueued::Stored));
        let _: () = conn.hset(queue.keys.settings(), MAX_DEPTH, waiting + 2).await.unwrap();
        assert_eq!(way(echo()).await, ("plain", Enqueued::Stored));
        let full = Enqueued::Full { waiting: waiting + 2, max_depth: waiting + 2 };
        assert_eq!(way(echo()).await, ("script", full));
    }

    #[tokio::test]
    async fn an_older_look_answering_later_changes_nothing() {
        let (_redis, queue) = private_queue().await;
        let pause = || std::thread::sleep(Duration::from_millis(2));
        let older = queue.look();
        pause();
        let newer = queue.look();
        queue.saw_limits(true, newer);
        queue.saw_limits(false, older);
        assert!(!queue.seen_unlimited(), "the newer look found a limit");
        pause();
        queue.saw_limits(false, queue.look());
        assert!(queue.seen_unlimited());
        // A change to the limits through this process makes the looks under way stale.
        let under_way = queue.look();
        queue.forget_unlimited();
        queue.saw_limits(false, under_way);
        assert!(!queue.seen_unlimited());
    }

    #[tokio::test]
    async fn a_lane_redis_lost_is_made_again_by_the_next_plain_enqueue() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        queue.enqueue(&echo_task(Bytes::from_static(b"1"))).await.unwrap();
        // Redis loses the queue's data (a restart without persistence) while this loop runs, and
        // a lane stream comes back without its group.
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let early = echo_task(Bytes::from_static(b"1"));
        let lane = &queue.keys.lane("echo")[1];
        let _: String = conn.xadd(lane, "*", &[("task", early.id.to_string())]).await.unwrap();
        let _: () = conn.sadd(queue.keys.ready_lanes(), "echo").await.unwrap();
        // A claim reads nothing there, and fails nothing.
        let replies = unpacked(queue.claim("unit-worker", "*", 10, &[]).await.unwrap().0);
        assert!(replies.is_empty());
        let task = echo_task(Bytes::from_static(b"2"));
        queue.enqueue(&task).await.unwrap();
        let lanes: Vec<String> = conn.smembers(queue.keys.lanes()).await.unwrap();
        assert_eq!(lanes, ["echo"]);
        // Its group reads the lane from its start: the task is handed out (the entry whose record
        // Redis lost is dropped).
        let replies = unpacked(queue.claim("unit-worker", "*", 10, &[]).await.unwrap().0);
        let tags: Vec<String> =
            replies.iter().map(|reply| String::from_utf8_lossy(&reply[0]).into_owned()).collect();
        assert_eq!(tags, ["drop", "run"]);
        assert_eq!(replies[1][1], task.id.to_string().into_bytes());
    }
}
