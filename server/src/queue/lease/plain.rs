//! Leases without Lua (docs/benchmark-notes.md, "Eleventh step"). The entries a fetch loop's
//! blocking read brought are pending for this worker already, and on a queue without limits (no
//! limit field set in its settings: pause, concurrency, rate) a task that waits (not ended, not
//! left running by a holder that stopped, no cancel asked for, not expired), stored with its
//! options together (record.rs, `OPTIONS`), needs no decision in Redis to start:
//! its record and the queue's settings are watched and read, then one transaction of plain
//! commands writes what `take_lease` (lease.lua) writes for it (the record's running fields and
//! the `running` event) and reads a payload kept under a key of its own. Each start is made here
//! as a claim's run reply tells it (`Started`), with what it knows of the record for the end.
//!
//! Whatever needs a decision goes to the claim script as before, which takes these entries just
//! as it took them before: a task that does (the rest of the batch still starts here), a queue
//! with limits, a transaction voided by a change in between (the whole batch), or an error.
//!
//! The transactions go on the fetch loop's blocking-read connection, between two reads: nothing
//! else sends on it and nothing reconnects it, so a watch holds from the read to the transaction.
//! A finish round that takes leases reads and starts its entries the same way, with its ends, on
//! the connection of its own it ends attempts on (queue/finish/plain.rs): the read and the
//! transaction are built here in halves that both share.
//! Times (the expiry's check, the record's stamps) are Redis's at the read, a round trip before
//! the transaction applies: a task whose expiry falls in between starts, where the script would
//! have let it expire.

use super::{Known, LeasedPayload, Started, text_of};
use crate::{
    events::{append_task_events, task_event_value},
    queue::{
        Queue,
        fetch::Given,
        record,
        transaction::{allows_transactions, applied, watched},
    },
    redis_client::{Conn, bytes_of, command},
};
use redis::{RedisResult, Value};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tracing::warn;
use uuid::Uuid;

/// What a plain lease reads of each record, in this order (`Record`): its state, and its options
/// in one field (whose workflow is not for the start but for the end, which then need not read
/// it: `Known`).
const READ: [&str; 7] = [
    record::STATUS,
    record::CANCEL,
    record::ATTEMPTS,
    record::STARTED,
    record::OPTIONS,
    record::TRACEPARENT,
    record::PAYLOAD,
];

/// The queue settings that limit starts (`start_budget` of lease.lua): with any of them set, the
/// script decides.
const LIMITS: [&str; 4] = ["paused", "concurrency", "rate_limit", "rate_period_ms"];

/// Payloads under a key of their own up to this size come with the lease (`INLINE_PAYLOAD_MAX`
/// of lease.lua, which a unit test compares); a larger one the worker reads itself.
pub(in crate::queue) const LEASED_PAYLOAD_MAX: u64 = 16384;

/// How long leases go through the script after the plain way failed (an ACL user without the
/// transaction commands, a connection lost) before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a queue found with limits leaves its leases to the script before it is looked at
/// again (each look reads the records of a read's entries for nothing).
const LIMITED_FOR: Duration = Duration::from_secs(1);

/// A fetch loop's way of taking leases without Lua on the connection of its blocking reads.
#[derive(Default)]
pub(in crate::queue) struct PlainLeases {
    /// Whether Redis let this user watch and run a transaction (asked again after a failure).
    probed: bool,
    /// When the plain way last failed: it rests `RETRY_AFTER`.
    failed_at: Option<Instant>,
    /// The queues last found with limits, and when.
    limited: HashMap<String, Instant>,
}

/// What a plain lease reads of one record (`READ`): each field's bytes (`None` when absent), and
/// the options it holds (`None` when absent: a record stored before they were kept together, which
/// the script reads).
pub(in crate::queue) struct Record {
    fields: [Option<Vec<u8>>; READ.len()],
    options: Option<record::Options>,
}

impl Record {
    /// The record of `fields`, `READ`'s values.
    fn of(fields: [Option<Vec<u8>>; READ.len()]) -> Record {
        let options = Record::at(record::OPTIONS).and_then(|at| fields[at].as_deref());
        Record { options: options.and_then(record::Options::read), fields }
    }

    /// Whether `field` is one the record has read: of `READ`, or an option.
    fn has(field: &str) -> bool {
        READ.contains(&field) || record::OPTION_FIELDS.contains(&field)
    }

    /// Where `field` is among those read (None: an option, or not a field the lease reads).
    fn at(field: &str) -> Option<usize> {
        READ.iter().position(|f| *f == field)
    }

    /// A field read, or an option (one look through `READ`, then the options').
    fn field(&self, field: &str) -> Option<&[u8]> {
        debug_assert!(Record::has(field), "{field} is not a field the lease reads");
        match Record::at(field) {
            Some(at) => self.fields[at].as_deref(),
            None => self.options.as_ref()?.get(field).map(str::as_bytes),
        }
    }

    /// The field taken out of the record as text, empty when absent.
    fn take_text(&mut self, field: &str) -> String {
        debug_assert!(Record::has(field), "{field} is not a field the lease reads");
        match Record::at(field) {
            Some(at) => self.fields[at].take().map(text_of).unwrap_or_default(),
            None => self.options.as_mut().and_then(|options| options.take(field)).unwrap_or_default(),
        }
    }

    fn take(&mut self, field: &str) -> Option<Vec<u8>> {
        debug_assert!(Record::has(field), "{field} is not a field the lease reads");
        match Record::at(field) {
            Some(at) => self.fields[at].take(),
            None => self.options.as_mut()?.take(field).map(String::into_bytes),
        }
    }

    /// A number field as Lua's `tonumber` reads the values Courier writes: `Err` for one that is
    /// set but not a whole number (the script decides what it means).
    fn number(&self, field: &str) -> Result<Option<u64>, ()> {
        match self.field(field).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v).ok().and_then(|t| t.parse().ok()).map(Some).ok_or(()),
        }
    }

    /// The attempt this lease starts (lease.lua's `next_attempt`), when its task needs no decision
    /// in Redis at `now_ms`: it waits (neither ended nor running: a running one's holder stopped,
    /// and the script takes it over), no cancel was asked for and its expiry has not passed.
    fn plain_start(&self, now_ms: u64) -> Option<u64> {
        let waits = self
            .field(record::STATUS)
            .is_some_and(|status| !matches!(status, b"running" | b"succeeded" | b"failed" | b"cancelled"));
        let expired = self.number(record::EXPIRES).ok()?.is_some_and(|at| at <= now_ms);
        let cancel = self.field(record::CANCEL) == Some(b"1");
        let attempt = self.number(record::ATTEMPTS).ok()?.unwrap_or(0) + 1;
        (waits && !cancel && !expired).then_some(attempt)
    }

    /// The task a payload kept under a key of its own is stored under: the one it refers to, or
    /// its own. None for a reference not written as Courier writes ids (the script reads it).
    fn payload_owner(&self, id: Uuid) -> Option<Uuid> {
        match self.field(record::PAYLOAD_REF).filter(|r| !r.is_empty()) {
            None => Some(id),
            Some(owner) => std::str::from_utf8(owner).ok().and_then(task_id),
        }
    }

    /// The attempt this lease starts here, and the task whose payload key the transaction reads
    /// (a payload neither in the record nor too large to come with the lease): None when the task
    /// needs a decision, or the record's values do not read as the script reads them.
    fn plain(&self, id: Uuid, now_ms: u64) -> Option<(u64, Option<Uuid>)> {
        // A record without its options together (stored before) goes by the script.
        self.options.as_ref()?;
        // Absent, the size is 0, as the script reads it.
        let size = self.number(record::PAYLOAD_BYTES).ok()?.unwrap_or(0);
        let owner = self.payload_owner(id)?;
        let read_payload = self.field(record::PAYLOAD).is_none() && size <= LEASED_PAYLOAD_MAX;
        Some((self.plain_start(now_ms)?, read_payload.then_some(owner)))
    }
}

/// The task `text` names, if it is written as Courier writes ids (hyphenated, lower case): the
/// keys built from the id are then the ones the script builds from the text.
fn task_id(text: &str) -> Option<Uuid> {
    let id: Uuid = text.parse().ok()?;
    (id.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text).then_some(id)
}

/// One entry a plain lease starts: where it is, its task, what the read found of it, and the
/// task whose payload key the transaction reads, if it reads one.
pub(in crate::queue) struct Start<'g> {
    given: &'g Given,
    id: Uuid,
    record: Record,
    attempt: u64,
    read_payload: Option<Uuid>,
}

impl Start<'_> {
    /// Its entry: the ready stream's key and the entry's id.
    pub(in crate::queue) fn entry(&self, queue: &Queue) -> (String, String) {
        let (kind, stream, entry) = self.given;
        (queue.keys.lane_stream(kind, *stream), entry.id.clone())
    }
}

/// What the read before a plain lease found: the entries that start here, the rest (for the
/// script), and Redis's time (ms).
pub(in crate::queue) struct Read<'g> {
    pub(in crate::queue) starts: Vec<Start<'g>>,
    pub(in crate::queue) rest: Vec<Given>,
    now_ms: u64,
}

impl PlainLeases {
    /// Whether entries read of `queue` are leased here now, rather than all left to the script:
    /// not on a cluster (`on_cluster`), nor on a queue found with limits lately, nor while the
    /// plain way rests after a failure.
    pub(in crate::queue) fn takes(&self, on_cluster: bool, queue: &str) -> bool {
        let limited = self.limited.get(queue).is_some_and(|at| at.elapsed() < LIMITED_FOR);
        !on_cluster && !limited && self.failed_at.is_none_or(|at| at.elapsed() >= RETRY_AFTER)
    }

    /// The connection it took leases on was dropped: the next one is probed before its first
    /// transaction, as every connection is (transaction.rs).
    pub(in crate::queue) fn connection_dropped(&mut self) {
        self.probed = false;
    }

    /// Takes leases on `given` (entries of `queue` a blocking read brought for `consumer`) without
    /// Lua where their tasks need no decision, on `conn` (the fetch loop's, which nothing else
    /// uses and nothing reconnects): the starts and the entries left for the claim script,
    /// or None when every entry is left to it. After an error the caller drops `conn`, whose
    /// state is then unknown, and the script takes the entries.
    pub(in crate::queue) async fn take(
        &mut self,
        conn: &mut Conn,
        queue: &Queue,
        consumer: &str,
        given: &[Given],
    ) -> RedisResult<Option<(Vec<Started>, Vec<Given>)>> {
        if !self.takes(conn.is_cluster(), queue.name()) {
            return Ok(None);
        }
        let taken = async {
            if !self.probed {
                allows_transactions(conn, queue).await?;
                self.probed = true;
            }
            let Some(mut read) = read(conn, queue, given).await? else {
                self.limited.insert(queue.name().to_string(), Instant::now());
                return Ok(None);
            };
            if read.starts.is_empty() {
                return Ok(None);
            }
            let rest = std::mem::take(&mut read.rest);
            Ok(commit(conn, queue, consumer, read).await?.map(|runs| (runs, rest)))
        };
        taken.await.inspect_err(|e| {
            // The connection is dropped: a probe refused part way may have left it inside a
            // transaction. A transaction whose answer was lost may have been applied: the script
            // then finds those tasks running and takes them over (their first leases were never
            // handed out), logging those attempts as lost.
            warn!(queue = queue.name(), error = %e, "leasing without Lua failed: the script takes the leases");
            (self.probed, self.failed_at) = (false, Some(Instant::now()));
        })
    }
}

/// Watches the records of `given`'s tasks and `queue`'s settings on `conn` and reads what their
/// leases need. None (the watch let go) when the queue has limits, for the script to apply.
async fn read<'g>(conn: &mut Conn, queue: &Queue, given: &'g [Given]) -> RedisResult<Option<Read<'g>>> {
    let mut pipe = redis::pipe();
    let plan = queue_read(&mut pipe, queue, given, &[]);
    pipe.cmd("TIME");
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let found = Found::of(&mut replies, &plan)?;
    let now_ms = time_of(replies.next())?;
    let read = found.read(given, plan, now_ms);
    if read.as_ref().is_none_or(|read| read.starts.is_empty()) {
        redis::cmd("UNWATCH").exec_async(conn).await?;
    }
    Ok(read)
}

/// Whether `queue` has limits now (a look without a watch, before a round reads entries).
pub(in crate::queue) async fn has_limits(conn: &mut Conn, queue: &Queue) -> RedisResult<bool> {
    let limits: Vec<Option<String>> =
        redis::cmd("HMGET").arg(queue.keys.settings()).arg(&LIMITS[..]).query_async(conn).await?;
    Ok(any_set(&limits))
}

/// Whether any of the `LIMITS` read is set.
fn any_set(limits: &[Option<String>]) -> bool {
    limits.iter().flatten().any(|value| !value.is_empty())
}

/// Redis's time in ms, from `TIME`'s reply.
pub(in crate::queue) fn time_of(reply: Option<Value>) -> RedisResult<u64> {
    let (seconds, micros): (u64, u64) = redis::from_redis_value(reply.unwrap_or(Value::Nil))?;
    Ok(seconds * 1000 + micros / 1000)
}

/// The tasks a plain lease on some entries reads: each entry's, where it names one this batch
/// has not met before (an entry of a task met before is left to the script, which takes over the
/// lease the first one takes here, as is one not naming a task as Courier writes ids); and the
/// fields the caller asked for beyond those the lease reads.
pub(in crate::queue) struct ReadPlan {
    ids: Vec<Option<Uuid>>,
    also: &'static [&'static str],
}

impl ReadPlan {
    /// The tasks whose records the read asks for, in its order.
    pub(in crate::queue) fn tasks(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.ids.iter().flatten().copied()
    }

    /// The fields of `also` that the read does not have already, in their order.
    fn beyond_read(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.also.iter().copied().filter(|field| !Record::has(field))
    }
}

/// Adds to `pipe` the watch on `queue`'s settings and `given`'s records and the reads of what
/// their leases need (their replies: the watch's, the limits, then each record), with the fields
/// `also` of each record in the same command: what `Found::of` reads back.
pub(in crate::queue) fn queue_read(
    pipe: &mut redis::Pipeline,
    queue: &Queue,
    given: &[Given],
    also: &'static [&'static str],
) -> ReadPlan {
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<Option<Uuid>> = given
        .iter()
        .map(|(_, _, entry)| entry.task.as_deref().and_then(task_id).filter(|id| seen.insert(*id)))
        .collect();
    let plan = ReadPlan { ids, also };
    let tasks: Vec<String> = plan.tasks().map(|id| queue.keys.task(&id)).collect();
    let settings = queue.keys.settings();
    pipe.add_command(command("WATCH", 1 + tasks.len(), settings.len() + bytes_of(&tasks)))
        .arg(&settings)
        .arg(&tasks);
    pipe.cmd("HMGET").arg(settings).arg(&LIMITS[..]);
    let fields: Vec<&str> = READ.iter().copied().chain(plan.beyond_read()).collect();
    let fields_bytes = bytes_of(&fields);
    for task in &tasks {
        pipe.add_command(command("HMGET", 1 + fields.len(), task.len() + fields_bytes))
            .arg(task)
            .arg(&fields);
    }
    plan
}

/// What `queue_read`'s reads found: the records, unless the queue has limits; and each record's
/// fields asked for beyond them.
pub(in crate::queue) struct Found {
    records: Option<Vec<Record>>,
    also: Vec<Vec<Option<Vec<u8>>>>,
}

impl Found {
    /// Reads back, from `replies`, what `queue_read` asked for.
    pub(in crate::queue) fn of(
        replies: &mut impl Iterator<Item = Value>,
        plan: &ReadPlan,
    ) -> RedisResult<Found> {
        watched(replies)?;
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let limits: Vec<Option<String>> = redis::from_redis_value(next())?;
        let beyond = plan.beyond_read().count();
        let tasks = plan.tasks().count();
        let (mut records, mut also) = (Vec::with_capacity(tasks), Vec::with_capacity(tasks));
        for _ in plan.tasks() {
            let mut fields: Vec<Option<Vec<u8>>> = redis::from_redis_value(next())?;
            if fields.len() != READ.len() + beyond {
                return Err((redis::ErrorKind::Parse, "HMGET's reply").into());
            }
            // Read after `READ`, in `also`'s order.
            let mut beyond_read = fields.split_off(READ.len()).into_iter();
            let fields: [Option<Vec<u8>>; READ.len()] = fields.try_into().expect("READ's length, checked");
            let record = Record::of(fields);
            let asked = plan.also.iter().map(|field| match Record::has(field) {
                true => record.field(field).map(<[u8]>::to_vec),
                false => beyond_read.next().flatten(),
            });
            also.push(asked.collect());
            records.push(record);
        }
        Ok(Found { records: (!any_set(&limits)).then_some(records), also })
    }

    /// Whether the queue has limits (the script applies them).
    pub(in crate::queue) fn limited(&self) -> bool {
        self.records.is_none()
    }

    /// Each record's fields asked for as `also` (in that order), a record's in the plan's order
    /// of tasks; read once (after, none).
    pub(in crate::queue) fn take_also(&mut self) -> Vec<Vec<Option<Vec<u8>>>> {
        std::mem::take(&mut self.also)
    }

    /// The entries of `given` that start without Lua at `now_ms` and the rest; None when the
    /// queue has limits (every entry is the script's).
    pub(in crate::queue) fn read(self, given: &[Given], plan: ReadPlan, now_ms: u64) -> Option<Read<'_>> {
        let (mut starts, mut rest) = (Vec::with_capacity(given.len()), Vec::new());
        let mut records = self.records?.into_iter();
        for (given, id) in given.iter().zip(plan.ids) {
            let Some(id) = id else {
                rest.push(given.clone());
                continue;
            };
            let record = records.next().expect("a record read for each task");
            match record.plain(id, now_ms) {
                Some((attempt, read_payload)) => {
                    starts.push(Start { given, id, record, attempt, read_payload })
                }
                None => rest.push(given.clone()),
            }
        }
        Some(Read { starts, rest, now_ms })
    }
}

/// Sends the transaction that starts `read`'s tasks for `consumer`, as `take_lease` would, on the
/// connection that read them: their starts, or None when a change to a record or to the queue's
/// settings voided it.
async fn commit(
    conn: &mut Conn,
    queue: &Queue,
    consumer: &str,
    read: Read<'_>,
) -> RedisResult<Option<Vec<Started>>> {
    let mut pipe = redis::pipe();
    // By hand rather than `atomic()`, as for plain ends: `MULTI`'s own answer is read.
    pipe.ignore_errors().cmd("MULTI");
    let mut events = Vec::with_capacity(read.starts.len());
    let starting = queue_starts(&mut pipe, queue, consumer, read, &mut events);
    append_task_events(&mut pipe, queue.keys.events(), queue.settings.events_maxlen, &events);
    pipe.cmd("EXEC");
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let Some(mut applied) = applied(replies)? else { return Ok(None) };
    Ok(Some(starting.runs(&mut applied)))
}

/// Starts queued in a transaction: what they are made of once it is applied.
pub(in crate::queue) struct Starting<'g> {
    starts: Vec<Start<'g>>,
    tokens: Vec<String>,
    /// When they start (Redis's `TIME`, ms), as the transaction writes it.
    now: String,
    /// Where in `EXEC`'s answer each payload read is.
    reads: Vec<Option<usize>>,
}

/// Adds to a transaction on `pipe` (its first commands: `EXEC`'s answers from 0) the commands
/// that start `read`'s tasks for `consumer`, as `take_lease` would; their `running` events go to
/// `events`, for the caller to append with the transaction's others.
pub(in crate::queue) fn queue_starts<'g>(
    pipe: &mut redis::Pipeline,
    queue: &Queue,
    consumer: &str,
    read: Read<'g>,
    events: &mut Vec<String>,
) -> Starting<'g> {
    let Read { starts, now_ms, .. } = read;
    let now = now_ms.to_string();
    let token_base = Uuid::now_v7();
    let tokens: Vec<String> = (0..starts.len()).map(|n| format!("{token_base}:{n}")).collect();
    let mut reads: Vec<Option<usize>> = Vec::with_capacity(starts.len());
    let mut queued = 0;
    for (start, token) in starts.iter().zip(&tokens) {
        let Start { given: (kind, _, _), id, record, attempt, read_payload } = start;
        let attempt = attempt.to_string();
        let task = queue.keys.task(id);
        // Sized for what it holds, so that its buffers are not grown argument by argument.
        let mut hset = command("HSET", 19, 384);
        hset.arg(&task)
            .arg(record::STATUS)
            .arg("running")
            .arg(record::LEASE)
            .arg(token)
            .arg(record::ATTEMPTS)
            .arg(&attempt)
            .arg(record::ATTEMPT_STARTED)
            .arg(&now)
            .arg(record::WORKER)
            .arg(consumer);
        if record.field(record::STARTED).is_none() {
            // A first start.
            hset.arg(record::STARTED).arg(&now);
        } else {
            // A later one: the earlier attempt's progress and wait mark go.
            let bytes = task.len() + record::PROGRESS.len() + record::WAITED.len();
            pipe.add_command(command("HDEL", 3, bytes)).arg(&task).arg(record::PROGRESS).arg(record::WAITED);
            queued += 1;
        }
        pipe.add_command(hset);
        queued += 1;
        if let Some(owner) = read_payload {
            let payload = queue.keys.payload(owner);
            pipe.add_command(command("GET", 1, payload.len())).arg(payload);
            reads.push(Some(queued));
            queued += 1;
        } else {
            reads.push(None);
        }
        let id = id.to_string();
        events.push(task_event_value(["running", &id, kind, "running", &attempt, "", &now, "", ""]));
    }
    Starting { starts, tokens, now, reads }
}

impl Starting<'_> {
    /// The starts, from `applied` (`EXEC`'s answer).
    pub(in crate::queue) fn runs(self, applied: &mut [Value]) -> Vec<Started> {
        let Starting { starts, tokens, now, reads } = self;
        starts
            .into_iter()
            .zip(tokens)
            .zip(reads)
            .map(|((start, token), read)| {
                let read = read.and_then(|at| applied.get_mut(at)).map(std::mem::take);
                started(start, token, &now, read)
            })
            .collect()
    }
}

/// The lease `start` took (as `take_lease`'s run reply tells it, field for field), held by
/// `token`, started at `now` (ms); `read`: the answer to the `GET` of its payload, if the
/// transaction read it.
fn started(start: Start<'_>, token: String, now: &str, read: Option<Value>) -> Started {
    let Start { given: (kind, stream, entry), id, mut record, attempt, .. } = start;
    let payload_ref = record.take_text(record::PAYLOAD_REF);
    let known = Known {
        kind: kind.clone(),
        attempts: attempt.to_string(),
        attempt_started: now.to_string(),
        first_start: record.field(record::STARTED).is_none(),
        // A small payload lives in the record, which then says so (enqueue.rs).
        payload_in_record: record.field(record::PAYLOAD).is_some(),
        payload_ref: payload_ref.clone(),
        workflow: record.take_text(record::WORKFLOW),
    };
    let payload = match (record.take(record::PAYLOAD), read) {
        (Some(payload), _) => LeasedPayload::Here(payload.into()),
        (None, Some(read)) => match redis::from_redis_value::<Option<Vec<u8>>>(read).ok().flatten() {
            Some(payload) => LeasedPayload::Here(payload.into()),
            None => LeasedPayload::Gone,
        },
        (None, None) => LeasedPayload::Stored,
    };
    Started {
        task_id: id,
        stream_index: *stream,
        entry_id: entry.id.clone(),
        token,
        attempt: u32::try_from(attempt).unwrap_or(1),
        kind: kind.clone(),
        // As a run reply's numbers are read: the script writes what the record holds.
        max_attempts: record.take_text(record::MAX_ATTEMPTS).parse().unwrap_or(1),
        timeout_ms: record.take_text(record::TIMEOUT_MS).parse().ok(),
        payload,
        payload_ref,
        traceparent: record.take_text(record::TRACEPARENT),
        payload_type: record.take_text(record::PAYLOAD_TYPE),
        session: record.take_text(record::SESSION),
        idempotency_key: record.take_text(record::IDEMPOTENCY_KEY),
        known: Some(known),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{
        GROUP, NewTask, SharedPayload,
        fetch::entries_read,
        lease::Run,
        testing::{
            anonymous, claim_idempotency_key, echo_task, fcalls, private_queue, unpacked, without_multi,
        },
    };
    use bytes::Bytes;
    use redis::{
        AsyncCommands,
        streams::{StreamPendingCountReply, StreamRangeReply},
    };
    use std::collections::HashMap;

    /// The consumer the tests' leases are taken for.
    const WORKER: &str = "unit-worker";

    /// Reads up to `count` new entries of each stream of the `echo` lane for `WORKER`, as a
    /// blocking read gives them to the fetch loop: pending, each with its stream's place.
    async fn read_entries(queue: &Queue, count: usize) -> Vec<Given> {
        let streams = queue.keys.lane("echo");
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(WORKER)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&streams[..])
            .arg(&[">"; 3][..])
            .query_async(&mut queue.conn.clone())
            .await
            .unwrap();
        let place = |key: &[u8]| streams.iter().position(|s| s.as_bytes() == key).unwrap();
        let mut given = Vec::new();
        for (key, entries) in entries_read(reply) {
            let at = place(&key);
            given.extend(entries.into_iter().map(|entry| ("echo".to_string(), at, entry)));
        }
        given
    }

    /// The task an entry names.
    fn task_of((_, _, entry): &Given) -> Uuid {
        entry.task.as_deref().unwrap().parse().unwrap()
    }

    /// A connection for plain leases, as the fetch loop's blocking reads have.
    async fn own_connection(queue: &Queue) -> Conn {
        queue.client.connect_blocking(Duration::ZERO).await.unwrap()
    }

    /// Everything a lease on `given` left: its run reply, the task's record and whether it is
    /// kept for good, who holds the entry, and the task's events; its id, its entry, the id of
    /// the task whose payload it shares (`owner`) and its token's base written `ID`, `ENTRY`,
    /// `OWNER` and `BASE`, times `T`.
    async fn started(queue: &Queue, given: &Given, owner: Option<Uuid>, reply: Vec<Vec<u8>>) -> Vec<String> {
        let (_, stream, entry) = given;
        let id = task_of(given);
        let token = String::from_utf8_lossy(&reply[Run::Token as usize]).into_owned();
        let (base, n) = token.split_once(':').expect("a token is base:n");
        assert!(base.parse::<Uuid>().is_ok() && n.parse::<u32>().is_ok(), "{token}");
        let owner = owner.map(|o| o.to_string()).unwrap_or_else(|| "no owner".into());
        let clean = |text: &str| {
            let text = text.replace(base, "BASE").replace(&entry.id, "ENTRY").replace(&owner, "OWNER");
            anonymous(&text, id)
        };
        let mut lines: Vec<String> = reply
            .iter()
            .enumerate()
            .map(|(at, field)| clean(&format!("reply {at}: {}", String::from_utf8_lossy(field))))
            .collect();
        let mut conn = queue.conn.clone();
        let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&id)).await.unwrap();
        let mut fields: Vec<String> = record.iter().map(|(f, v)| clean(&format!("{f}={v}"))).collect();
        fields.sort();
        lines.extend(fields);
        let ttl: i64 = conn.pttl(queue.keys.task(&id)).await.unwrap();
        lines.push(format!("record kept for good: {}", ttl == -1));
        let stream = &queue.keys.lane("echo")[*stream];
        let pending: StreamPendingCountReply =
            conn.xpending_count(stream, GROUP, "-", "+", 100).await.unwrap();
        let holder = pending.ids.iter().find(|p| p.id == entry.id).map(|p| p.consumer.clone());
        lines.push(format!("entry held by {holder:?}"));
        let events: StreamRangeReply = conn.xrange_all(queue.keys.events()).await.unwrap();
        for entry in &events.ids {
            for (field, value) in &entry.map {
                let value: String = redis::from_redis_value(value.clone()).unwrap();
                for event in value.split('\u{1e}').filter(|e| e.contains(&id.to_string())) {
                    lines.push(clean(&format!("{field}: {event}")));
                }
            }
        }
        lines
    }

    /// A start's fields, in `Run`'s order (as a claim's unpacked are).
    fn fields(run: Started) -> Vec<Vec<u8>> {
        run.into_fields()
    }

    #[test]
    fn the_leased_payload_threshold_is_lease_luas() {
        let lua = include_str!("../lease.lua");
        assert!(lua.contains(&format!("\nlocal INLINE_PAYLOAD_MAX = {LEASED_PAYLOAD_MAX}\n")));
    }

    #[test]
    fn the_limits_are_the_ones_the_script_reads() {
        let lua = include_str!("../lease.lua");
        let start = "redis.call('HMGET', base .. ':settings', ";
        let read = &lua[lua.find(start).expect("start_budget reads the settings") + start.len()..];
        let read: Vec<String> = read[..read.find(')').unwrap()]
            .split(',')
            .map(|f| f.trim().trim_matches('\'').to_string())
            .collect();
        assert_eq!(read, LIMITS);
    }

    /// Tasks of every kind a plain lease starts, started by the script and plain, each way in one
    /// batch (so that tokens count up and payload reads sit among the other answers), leave the
    /// same record, holder and events and get the same run reply.
    #[tokio::test]
    async fn a_plain_lease_writes_and_replies_what_the_script_does() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let with_options = || {
            let mut task = echo_task(Bytes::from_static(b"{\"text\": \"options\"}"));
            task.payload_type = "application/json".into();
            task.max_attempts = 3;
            task.timeout_ms = Some(2500);
            task.priority = app::model::Priority::High;
            task.session = Some("account".into());
            task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
            task
        };
        let mut expiring = echo_task(Bytes::from_static(b"{\"text\": \"soon\"}"));
        expiring.expires_ms = Some(crate::store::now_ms() + 600_000);
        /// What sets a variant apart beyond its task.
        #[derive(Clone, Copy, PartialEq)]
        enum Then {
            Nothing,
            /// An earlier attempt ran (its retry came due).
            Again,
            /// Its payload, under a key of its own, expired.
            PayloadGone,
            /// Its payload is another task's.
            Shared,
        }
        let variants = [
            // A small text payload, kept in the record.
            (echo_task(Bytes::from_static(b"{\"text\": \"hello\"}")), Then::Nothing),
            // A small payload under a key of its own, read by the transaction.
            (echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])), Then::Nothing),
            (echo_task(Bytes::from_static(&[0xff, 0x01])), Then::PayloadGone),
            // A payload as large as comes with a lease, and one larger: the worker reads it.
            (echo_task(Bytes::from(vec![0xfd; LEASED_PAYLOAD_MAX as usize])), Then::Nothing),
            (echo_task(Bytes::from(vec![0xfe; LEASED_PAYLOAD_MAX as usize + 1])), Then::Nothing),
            // A task that expires later.
            (expiring, Then::Nothing),
            // Every option a lease hands on, and an idempotency key.
            (with_options(), Then::Nothing),
            (with_options(), Then::Again),
            // A topic message's payload, stored under the first message's id.
            (echo_task(Bytes::from_static(&[0xff, 0x02])), Then::Shared),
        ];
        // Each variant twice: the first of each pair for the script, the second to start plain.
        let mut twins: Vec<(NewTask, Option<Uuid>)> = Vec::new();
        for _way in 0..2 {
            for (variant, then) in &variants {
                let mut task = variant.clone();
                task.id = Uuid::now_v7();
                let mut owner = None;
                if then == &Then::Shared {
                    let mut first = echo_task(task.payload.clone());
                    first.shared_payload = Some(SharedPayload { owner: first.id, tasks: 2 });
                    queue.enqueue(&first).await.unwrap();
                    task.shared_payload = Some(SharedPayload { owner: first.id, tasks: 2 });
                    owner = Some(first.id);
                }
                if task.session.is_some() {
                    task.session = Some(format!("account-{}", task.id));
                    claim_idempotency_key(&queue, &mut task, 600).await;
                }
                queue.enqueue(&task).await.unwrap();
                let record = queue.keys.task(&task.id);
                match then {
                    Then::Again => {
                        let fields =
                            [("started", "1"), ("attempts", "1"), ("progress", "40"), ("waited", "-")];
                        let _: () = conn.hset_multiple(&record, &fields).await.unwrap();
                    }
                    Then::PayloadGone => {
                        let _: () = conn.del(queue.keys.payload(&task.id)).await.unwrap();
                    }
                    _ => {}
                }
                twins.push((task, owner));
            }
        }
        let (by_script, by_plain) = twins.split_at(variants.len());
        let entries = read_entries(&queue, 100).await;
        let of = |tasks: &[(NewTask, Option<Uuid>)]| -> Vec<Given> {
            let ids: Vec<Uuid> = tasks.iter().map(|(t, _)| t.id).collect();
            entries.iter().filter(|e| ids.contains(&task_of(e))).cloned().collect()
        };
        let (script_entries, plain_entries) = (of(by_script), of(by_plain));
        assert_eq!((script_entries.len(), plain_entries.len()), (variants.len(), variants.len()));
        let claimed = queue.claim(WORKER, "*", script_entries.len(), &script_entries).await.unwrap();
        let script_replies = unpacked(claimed.0);
        let before = fcalls(&queue).await;
        let mut plain = PlainLeases::default();
        let mut own = own_connection(&queue).await;
        let (runs, rest) = plain
            .take(&mut own, &queue, WORKER, &plain_entries)
            .await
            .unwrap()
            .expect("the tasks need no decision: they start plain");
        assert!(rest.is_empty());
        assert_eq!(fcalls(&queue).await, before, "no function ran");
        let plain_replies: Vec<Vec<Vec<u8>>> = runs.into_iter().map(fields).collect();
        assert_eq!(plain_replies.len(), variants.len());
        let mut payloads_read = 0;
        for (at, (script_task, owner)) in by_script.iter().enumerate() {
            let (plain_task, plain_owner) = &by_plain[at];
            let script_at = script_entries.iter().position(|e| task_of(e) == script_task.id).unwrap();
            let plain_at = plain_entries.iter().position(|e| task_of(e) == plain_task.id).unwrap();
            assert_eq!(script_at, plain_at, "the same place in each batch");
            let script_wrote =
                started(&queue, &script_entries[script_at], *owner, script_replies[script_at].clone()).await;
            let plain_wrote =
                started(&queue, &plain_entries[plain_at], *plain_owner, plain_replies[plain_at].clone())
                    .await;
            assert!(script_wrote.contains(&"status=running".to_string()), "{script_wrote:?}");
            assert!(
                script_wrote.iter().any(|l| l.starts_with("e: running\u{1f}ID\u{1f}echo")),
                "{script_wrote:?}"
            );
            assert_eq!(plain_wrote, script_wrote);
            let payload = &plain_replies[plain_at][Run::Payload as usize];
            payloads_read +=
                usize::from(payload.as_slice() == [0xff, 0x00, 0xfe] || payload.as_slice() == [0xff, 0x02]);
            payloads_read += usize::from(payload.len() == LEASED_PAYLOAD_MAX as usize);
        }
        assert_eq!(payloads_read, 3, "the transaction read the payloads under keys of their own");
    }

    /// Tasks that need a decision are left to the script (the others in the batch still start
    /// plain), and a queue with limits leaves the whole batch to it; nothing of theirs is written.
    #[tokio::test]
    async fn what_needs_a_decision_is_left_to_the_script_untouched() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let tasks: Vec<NewTask> = (0..9).map(|_| echo_task(Bytes::from_static(b"p"))).collect();
        for task in &tasks {
            queue.enqueue(task).await.unwrap();
        }
        let record = |i: usize| queue.keys.task(&tasks[i].id);
        // Left running by a holder that stopped, cancelled, expired, ended, gone, and stored
        // before the options were kept together (record.rs, `OPTIONS`).
        let stopped = [
            ("status", "running"),
            ("attempts", "1"),
            ("started", "1"),
            ("attempt_started", "1"),
            ("worker", "gone"),
        ];
        let _: () = conn.hset_multiple(record(0), &stopped).await.unwrap();
        let _: () = conn.hset(record(1), "cancel", "1").await.unwrap();
        let expired = record::Options::write([(record::EXPIRES, "1")]);
        let _: () = conn.hset(record(2), record::OPTIONS, expired).await.unwrap();
        let _: () = conn.hset(record(3), "status", "succeeded").await.unwrap();
        let _: () = conn.hset(record(4), "status", "failed").await.unwrap();
        let _: () = conn.hset(record(5), "status", "cancelled").await.unwrap();
        let _: () = conn.del(record(6)).await.unwrap();
        let _: () = conn.hdel(record(7), "options").await.unwrap();
        let mut entries = read_entries(&queue, 9).await;
        // The last task's entry twice (a task met twice in one read): its second goes to the script.
        entries.push(entries[8].clone());
        let mut records = Vec::new();
        for i in 0..9 {
            let fields: HashMap<String, String> = conn.hgetall(record(i)).await.unwrap();
            records.push(fields);
        }
        let mut plain = PlainLeases::default();
        let mut own = own_connection(&queue).await;
        // Those needing a decision alone: none starts, and their watch is let go (a change to one
        // of them does not void the next transaction).
        assert!(plain.take(&mut own, &queue, WORKER, &entries[..8]).await.unwrap().is_none());
        let _: () = conn.hset(record(0), "progress", "10").await.unwrap();
        records[0].insert("progress".into(), "10".into());
        let (runs, rest) =
            plain.take(&mut own, &queue, WORKER, &entries).await.unwrap().expect("one starts plain");
        let started: Vec<Vec<u8>> =
            runs.into_iter().map(|r| fields(r).swap_remove(Run::TaskId as usize)).collect();
        assert_eq!(started, [tasks[8].id.to_string().into_bytes()]);
        let entry_ids = |entries: &[Given]| entries.iter().map(|(_, _, e)| e.id.clone()).collect::<Vec<_>>();
        let left = [&entries[..8], &entries[9..]].concat();
        assert_eq!(entry_ids(&rest), entry_ids(&left));
        for (i, before) in records.iter().enumerate().take(8) {
            let now: HashMap<String, String> = conn.hgetall(record(i)).await.unwrap();
            assert_eq!(&now, before, "task {i} untouched");
        }
        // The script decides for the rest: a takeover, a cancel, an expiry, three ended tasks and
        // an erased one dropped, a start of the one stored before, and a takeover of the lease
        // just taken.
        let claimed = unpacked(queue.claim(WORKER, "*", rest.len(), &rest).await.unwrap().0);
        let answers: Vec<String> =
            claimed.iter().map(|r| String::from_utf8_lossy(&r[0]).into_owned()).collect();
        assert_eq!(answers, ["run", "cancelled", "expired", "drop", "drop", "drop", "drop", "run", "run"]);

        // A queue with a limit: every entry to the script, and the queue is looked at again only
        // after a while.
        for (field, value) in [("paused", "1"), ("concurrency", "10"), ("rate_limit", "100")] {
            let task = echo_task(Bytes::from_static(b"p"));
            queue.enqueue(&task).await.unwrap();
            let _: () = conn.hset(queue.keys.settings(), field, value).await.unwrap();
            let entries = read_entries(&queue, 1).await;
            let mut limited = PlainLeases::default();
            assert!(limited.take(&mut own, &queue, WORKER, &entries).await.unwrap().is_none(), "{field}");
            let _: () = conn.hdel(queue.keys.settings(), field).await.unwrap();
            // Looked at again only after a while (held here for an hour: no timing in the test).
            let seen = limited.limited.get_mut(queue.name()).expect("the queue is noted as limited");
            *seen = Instant::now() + Duration::from_secs(3600);
            assert!(
                limited.take(&mut own, &queue, WORKER, &entries).await.unwrap().is_none(),
                "{field}: later"
            );
            let status: String = conn.hget(queue.keys.task(&task.id), "status").await.unwrap();
            assert_eq!(status, "queued", "{field}");
            let claimed = queue.claim(WORKER, "*", 1, &entries).await.unwrap();
            assert_eq!(unpacked(claimed.0)[0][0], b"run");
        }
        // The watches were let go (the settings changed since): a transaction now is applied.
        let task = echo_task(Bytes::from_static(b"p"));
        queue.enqueue(&task).await.unwrap();
        let entries = read_entries(&queue, 1).await;
        assert!(plain.take(&mut own, &queue, WORKER, &entries).await.unwrap().is_some());
    }

    /// A record or the queue's settings changed between the read and the transaction voids it:
    /// nothing is written, and the script takes the entries.
    #[tokio::test]
    async fn a_change_after_the_read_voids_the_transaction() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let mut own = own_connection(&queue).await;
        for change in ["record", "settings"] {
            let task = echo_task(Bytes::from_static(b"p"));
            queue.enqueue(&task).await.unwrap();
            let entries = read_entries(&queue, 1).await;
            let read = read(&mut own, &queue, &entries).await.unwrap().expect("no limits");
            assert_eq!(read.starts.len(), 1);
            match change {
                "record" => {
                    let _: () = conn.hset(queue.keys.task(&task.id), "cancel", "1").await.unwrap();
                }
                _ => {
                    let _: () = conn.hset(queue.keys.settings(), "paused", "1").await.unwrap();
                }
            }
            assert!(commit(&mut own, &queue, WORKER, read).await.unwrap().is_none(), "{change}");
            let status: String = conn.hget(queue.keys.task(&task.id), "status").await.unwrap();
            assert_eq!(status, "queued", "{change}: nothing written");
            let claimed = unpacked(queue.claim(WORKER, "*", 1, &entries).await.unwrap().0);
            let answer = String::from_utf8_lossy(&claimed[0][0]).into_owned();
            assert_eq!(answer, if change == "record" { "cancelled" } else { "later" }, "{change}");
            let _: () = conn.hdel(queue.keys.settings(), "paused").await.unwrap();
        }
    }

    /// A Redis user that may not run a transaction never gets a lease's commands: the first use
    /// of the connection finds out (an error: its caller drops it), and the plain way rests while
    /// the script takes the leases.
    #[tokio::test]
    async fn a_user_refused_transactions_leaves_the_leases_to_the_script() {
        let ((redis, _dir), queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let limited = without_multi(&redis, &queue).await;
        let mut own = limited.client.connect_blocking(Duration::ZERO).await.unwrap();
        let task = echo_task(Bytes::from_static(b"p"));
        queue.enqueue(&task).await.unwrap();
        let entries = read_entries(&queue, 1).await;
        let mut plain = PlainLeases::default();
        // Refused: an error (the caller drops the connection), then a rest.
        assert!(plain.take(&mut own, &limited, WORKER, &entries).await.is_err());
        assert!(plain.take(&mut own, &limited, WORKER, &entries).await.unwrap().is_none(), "it rests");
        let status: String = conn.hget(queue.keys.task(&task.id), "status").await.unwrap();
        assert_eq!(status, "queued", "nothing of the lease ran");
        let claimed = unpacked(limited.claim(WORKER, "*", 1, &entries).await.unwrap().0);
        assert_eq!(claimed[0][0], b"run");
    }
}
