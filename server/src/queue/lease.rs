//! A worker's hold on one attempt (`Lease`), and how the replies of a claim become leases.
//!
//! Both scripts that take leases (the claim, and the finish that takes the next ones) end in
//! `take_lease` of lease.lua: this module names the arguments they start with and reads the `run`
//! replies they return. `Leasing` is what a worker process's leases share: the queues they are
//! taken from, the consumer they are taken for, the finish loop they end through and the channel
//! that hands them to apalis.

use super::library::Call;
use super::{
    GROUP, Outcome, Queue,
    finish::{Applied, Ending, PlainEnds},
    record,
    relay::Relay,
    serving::Serving,
};
use crate::store::{TaskRecord, now_ms};
use bytes::Bytes;
use redis::RedisResult;
use std::{
    borrow::Cow,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

pub(super) mod plain;
pub(super) use plain::PlainLeases;

/// A worker's hold on one attempt of one task: what it needs to run it and to report back.
#[derive(Debug)]
pub struct Lease {
    pub task_id: Uuid,
    /// The queue the task is in.
    pub queue: Queue,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub payload_type: String,
    /// The ordered session the task belongs to.
    pub session: Option<String>,
    /// The W3C trace context the attempt continues (`traceparent`), if the task keeps one.
    pub traceparent: Option<String>,
    /// The payload as the claim left it; [`Queue::take_payload`] hands it to the runner.
    pub(super) payload: LeasedPayload,
    /// The Redis key of the task's `Idempotency-Key`, kept as long as the task.
    pub(super) idempotency_key: Option<String>,
    /// The task whose id the payload is stored under when it is shared (a topic message's).
    pub(super) payload_ref: Option<Uuid>,
    /// What a start without Lua knows of the record for the end.
    pub(super) known: Option<Known>,
    pub(super) entry_id: String,
    /// The ready stream the entry is on: its key, and its place (0 = most urgent).
    pub(super) stream: String,
    pub(super) stream_index: usize,
    pub(super) token: String,
    pub(super) consumer: Arc<str>,
    /// The worker slot the attempt occupies; the finish loop passes it on to the next lease.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    finisher: mpsc::Sender<Ending>,
    /// Counts the lease among its queue's in this process while it lives.
    _running: Running,
}

/// One attempt counted among a queue's running ones in this process, until dropped.
#[derive(Debug)]
pub(super) struct Running(Arc<AtomicUsize>);

impl Running {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The fields of a `run` reply of `take_lease` (queue/lease.lua), by their place in it: the
/// first `JOINED` in its first string, separated by the unit separator, each of the others a
/// string of its own.
#[derive(Clone, Copy)]
pub(super) enum Run {
    Tag,
    TaskId,
    Stream,
    Entry,
    Token,
    Attempt,
    Kind,
    MaxAttempts,
    TimeoutMs,
    PayloadIs,
    PayloadRef,
    Traceparent,
    PayloadType,
    Session,
    IdempotencyKey,
    Payload,
}

impl Run {
    /// Every field in reply order, with the name lease.lua gives it.
    const FIELDS: [(Run, &'static str); 16] = [
        (Run::Tag, "run"),
        (Run::TaskId, "id"),
        (Run::Stream, "stream"),
        (Run::Entry, "entry"),
        (Run::Token, "token"),
        (Run::Attempt, "attempt"),
        (Run::Kind, "kind"),
        (Run::MaxAttempts, "max_attempts"),
        (Run::TimeoutMs, "timeout_ms"),
        (Run::PayloadIs, "payload_is"),
        (Run::PayloadRef, "payload_ref"),
        (Run::Traceparent, "traceparent"),
        (Run::PayloadType, "payload_type"),
        (Run::Session, "session"),
        (Run::IdempotencyKey, "idempotency_key"),
        (Run::Payload, "payload"),
    ];
    /// How many fields the reply's first string joins.
    const JOINED: usize = Run::PayloadType as usize;
    /// How many strings a run reply is.
    const STRINGS: usize = 1 + Run::FIELDS.len() - Run::JOINED;
}

/// A claim's `run` reply for one task, its fields as text in `Run`'s order: how a script tells of
/// a lease it took, read into a [`Started`].
pub(super) struct RunReply(Vec<Vec<u8>>);

/// A lease's start, as a claim's run reply tells it or a start without Lua made it
/// (lease/plain.rs): what a worker process's lease, or a pulled one, is made of.
#[cfg_attr(test, derive(Clone, Debug, PartialEq))]
pub(super) struct Started {
    pub(super) task_id: Uuid,
    /// The ready stream its entry is on, by place (0 is the most urgent).
    pub(super) stream_index: usize,
    pub(super) entry_id: String,
    pub(super) token: String,
    pub(super) attempt: u32,
    pub(super) kind: String,
    pub(super) max_attempts: u32,
    pub(super) timeout_ms: Option<u64>,
    pub(super) payload: LeasedPayload,
    /// As the record keeps them, each empty where it has none: the task whose id the payload is
    /// stored under when shared, the trace context, the payload's type (empty: the default),
    /// the ordered session and the idempotency key.
    pub(super) payload_ref: String,
    pub(super) traceparent: String,
    pub(super) payload_type: String,
    pub(super) session: String,
    pub(super) idempotency_key: String,
    /// What a start without Lua knows of the record for the end (a script's start: none).
    pub(super) known: Option<Known>,
}

/// What a start without Lua wrote, or read, of its task's record that the attempt's end reads
/// (finish/plain.rs): while the record's lease is still this one, the record holds them as the
/// start left them, so that end reads the lease alone. A start by the script leaves the end to
/// read them all.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Known {
    pub(super) kind: String,
    pub(super) attempts: String,
    /// When the attempt started (ms): the start's `TIME`.
    pub(super) attempt_started: String,
    /// Whether the record's `started` is this attempt's start: the task's first start (a first
    /// attempt's end then leaves the attempt to its record to tell, finish.lua's `told`).
    pub(super) first_start: bool,
    pub(super) payload_in_record: bool,
    pub(super) payload_ref: String,
    pub(super) workflow: String,
}

impl RunReply {
    /// The reply, if it is a `run` reply of the expected shape. (Any other reply, `drop` or
    /// `later`, is one string; one that says `run` but is not of that shape is a fault, logged:
    /// its task's lease runs out unreported.)
    fn of(mut reply: Vec<Vec<u8>>) -> Option<RunReply> {
        let says_run = reply.first().is_some_and(|first| first.starts_with(b"run\x1f"));
        let mut fields: Vec<Vec<u8>> = Vec::with_capacity(Run::FIELDS.len());
        if reply.len() == Run::STRINGS {
            fields.extend(reply[0].split(|&b| b == 0x1f).map(<[u8]>::to_vec));
        }
        if fields.len() != Run::JOINED || fields[Run::Tag as usize] != b"run" {
            if says_run {
                warn!(strings = reply.len(), fields = fields.len(), "a claim's run reply could not be read");
            }
            return None;
        }
        fields.extend(reply.drain(1..));
        Some(RunReply(fields))
    }

    /// A reply with its fields unpacked when it is a run reply, else as it came (for tests).
    #[cfg(test)]
    pub(super) fn unpacked(reply: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        match RunReply::of(reply.clone()) {
            Some(run) => run.0,
            None => reply,
        }
    }

    /// The task's id and its entry's stream (0 most urgent), if the reply names them.
    fn task(&self) -> Option<(Uuid, usize)> {
        let task_id = self.text(Run::TaskId).parse::<Uuid>().ok()?;
        let stream = self.text(Run::Stream).parse::<usize>().ok()?.checked_sub(1).filter(|&s| s < 3)?;
        Some((task_id, stream))
    }

    /// The field as text, borrowed (copied only where it is not UTF-8).
    fn text(&self, field: Run) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0[field as usize])
    }

    /// The field as text, taken out of the reply: its bytes become the string, uncopied.
    fn take_text(&mut self, field: Run) -> String {
        text_of(self.take(field))
    }

    fn take(&mut self, field: Run) -> Vec<u8> {
        std::mem::take(&mut self.0[field as usize])
    }

    /// The start the reply tells of; None (logged) when it names no task this worker can read.
    fn started(mut self) -> Option<Started> {
        let Some((task_id, stream_index)) = self.task() else {
            warn!("a claim named no task this worker can read; its lease will expire");
            return None;
        };
        let payload = match self.take(Run::PayloadIs).as_slice() {
            b"1" => LeasedPayload::Here(Bytes::from(self.take(Run::Payload))),
            b"2" => LeasedPayload::Stored,
            _ => LeasedPayload::Gone,
        };
        Some(Started {
            task_id,
            stream_index,
            entry_id: self.take_text(Run::Entry),
            token: self.take_text(Run::Token),
            attempt: self.text(Run::Attempt).parse().unwrap_or(1),
            kind: self.take_text(Run::Kind),
            max_attempts: self.text(Run::MaxAttempts).parse().unwrap_or(1),
            timeout_ms: self.text(Run::TimeoutMs).parse().ok(),
            payload,
            payload_ref: self.take_text(Run::PayloadRef),
            traceparent: self.take_text(Run::Traceparent),
            payload_type: self.take_text(Run::PayloadType),
            session: self.take_text(Run::Session),
            idempotency_key: self.take_text(Run::IdempotencyKey),
            known: None,
        })
    }
}

/// Bytes as text, uncopied (copied only where they are not UTF-8, lossily).
pub(super) fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|not_utf8| String::from_utf8_lossy(not_utf8.as_bytes()).into_owned())
}

/// `text`, unless empty.
fn unless_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

/// A payload's type as a lease hands it on: the one the record keeps (`Started::payload_type`),
/// or the default where it keeps none.
pub(super) fn payload_type_or_default(stored: String) -> String {
    unless_empty(stored).unwrap_or_else(|| record::DEFAULT_PAYLOAD_TYPE.into())
}

impl Started {
    /// The start a claim's reply tells of, if it is a run reply naming a task this worker can read.
    pub(super) fn of(reply: Vec<Vec<u8>>) -> Option<Started> {
        RunReply::of(reply)?.started()
    }

    /// The start a claim's reply tells of and the field-value pairs of its task's view that
    /// follow the run reply (when the claim asked for them: pull.lua), apart.
    pub(super) fn with_view(mut reply: Vec<Vec<u8>>) -> Option<(Started, Vec<Vec<u8>>)> {
        let view = reply.split_off(reply.len().min(Run::STRINGS));
        Some((Started::of(reply)?, view))
    }

    /// The record of its task (in `queue`) as this lease left it, from the start and `view`, the
    /// field-value pairs that follow a run reply when the claim was asked for them (pull.lua):
    /// what a view of the task shows. `None` when they do not make one.
    pub(super) fn record(&self, queue: &str, view: &[Vec<u8>]) -> Option<TaskRecord> {
        let (attempt, max_attempts) = (self.attempt.to_string(), self.max_attempts.to_string());
        // The start's own fields first: they are the record as the lease left it, and a look-up
        // takes the first of a name.
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(view.len() / 2 + 7);
        fields.extend([
            (record::KIND, self.kind.as_str()),
            (record::ATTEMPTS, &attempt),
            (record::MAX_ATTEMPTS, &max_attempts),
            (record::PAYLOAD_TYPE, &self.payload_type),
            (record::PAYLOAD_REF, &self.payload_ref),
            (record::TRACEPARENT, &self.traceparent),
            (record::STATUS, "running"),
        ]);
        for pair in view.chunks_exact(2) {
            fields.push((std::str::from_utf8(&pair[0]).ok()?, std::str::from_utf8(&pair[1]).ok()?));
        }
        TaskRecord::from_fields(self.task_id, queue, fields.as_slice())
    }

    /// Its fields as a claim's run reply has them, in `Run`'s order (for tests, which read leases
    /// as claims reply them).
    #[cfg(test)]
    pub(super) fn into_fields(self) -> Vec<Vec<u8>> {
        let (payload_is, payload): (&str, Vec<u8>) = match self.payload {
            LeasedPayload::Here(bytes) => ("1", bytes.to_vec()),
            LeasedPayload::Stored => ("2", Vec::new()),
            LeasedPayload::Gone => ("0", Vec::new()),
        };
        let texts = [
            "run".to_string(),
            self.task_id.to_string(),
            (self.stream_index + 1).to_string(),
            self.entry_id,
            self.token,
            self.attempt.to_string(),
            self.kind,
            self.max_attempts.to_string(),
            self.timeout_ms.map(|ms| ms.to_string()).unwrap_or_default(),
            payload_is.to_string(),
            self.payload_ref,
            self.traceparent,
            self.payload_type,
            self.session,
            self.idempotency_key,
        ];
        let mut fields: Vec<Vec<u8>> = texts.into_iter().map(String::into_bytes).collect();
        fields.push(payload);
        fields
    }
}

/// A lease's payload: small ones come with the claim, large ones are read on their own.
#[derive(Debug)]
#[cfg_attr(test, derive(Clone, PartialEq))]
pub(super) enum LeasedPayload {
    Here(Bytes),
    /// Too large to copy through the claim script: a plain `GET` reads it.
    Stored,
    /// Expired before the task ran (or already taken).
    Gone,
}

/// Where a lease's entry is and what holds it: what renewing or handing it back needs.
pub(super) struct HeldEntry<'a> {
    pub(super) task_id: &'a Uuid,
    pub(super) stream: &'a str,
    pub(super) entry_id: &'a str,
    pub(super) token: &'a str,
    pub(super) consumer: &'a str,
}

/// How long the task of ready entry `entry_id` had waited at `now_ms`. Redis stamps an entry's id
/// (`{ms}-{seq}`) with its clock as the task joins its stream: at submission, when its delay or
/// retry pause ends (promotion), or when it is handed back. The record keeps no due time of a
/// delayed task (only the delayed set's score does), and the id costs no read.
pub(super) fn waited_since(entry_id: &str, now_ms: u64) -> Option<Duration> {
    let (ms, _) = entry_id.split_once('-')?;
    let ready_ms: u64 = ms.parse().ok()?;
    Some(Duration::from_millis(now_ms.saturating_sub(ready_ms)))
}

/// Queues an `XCLAIM` that leaves pending entry `entry_id` of `stream` with `consumer` but idle for
/// `idle_ms` already, so that a look for expired leases takes it over a lease less `idle_ms` from
/// now: a shorter pulled lease, or a takeover's entry left for the next look.
pub(super) fn idle_for<'p>(
    pipe: &'p mut redis::Pipeline,
    stream: &str,
    consumer: &str,
    entry_id: &str,
    idle_ms: u64,
) -> &'p mut redis::Pipeline {
    pipe.cmd("XCLAIM")
        .arg(stream)
        .arg(super::GROUP)
        .arg(consumer)
        .arg(0)
        .arg(entry_id)
        .arg("IDLE")
        .arg(idle_ms)
        .arg("JUSTID")
}

impl Lease {
    /// How long its task waited ready before this attempt was taken.
    pub fn waited(&self) -> Option<Duration> {
        waited_since(&self.entry_id, now_ms())
    }

    /// Where this lease's entry is.
    pub(super) fn held(&self) -> HeldEntry<'_> {
        HeldEntry {
            task_id: &self.task_id,
            stream: &self.stream,
            entry_id: &self.entry_id,
            token: &self.token,
            consumer: &self.consumer,
        }
    }

    /// Sends the ended attempt to the finish loop, with the lease's slot the first time, and
    /// waits until it is recorded: `false` if the lease was lost meanwhile.
    pub(super) async fn end(&self, outcome: Outcome) -> RedisResult<bool> {
        let stopped =
            || redis::RedisError::from((redis::ErrorKind::Client, "the worker's finish loop stopped"));
        let (reply, answer) = oneshot::channel();
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let ending = Ending::of(self, outcome, slot, reply);
        self.finisher.send(ending).await.map_err(|_| stopped())?;
        Ok(answer.await.map_err(|_| stopped())??.applied != Applied::Lost)
    }
}

/// What the leases of one worker process share, and where they go.
#[derive(Clone)]
pub(super) struct Leasing {
    pub(super) serving: Arc<Serving>,
    pub(super) consumer: Arc<str>,
    /// Weak, so that the channels close once the fetch loop and every lease are gone.
    leases: mpsc::WeakSender<Box<Lease>>,
    endings: mpsc::WeakSender<Ending>,
    pub(super) shutdown: CancellationToken,
    /// Whether the fetch loop waits in a blocking read on the lanes of every queue it serves
    /// (none of them blocked by its limits; one server). Any new entry wakes that read, so a
    /// finish meanwhile takes no leases: it would find none, and the slots it frees go to the
    /// read's next round (docs/benchmark-notes.md, "Seventh step"). A queue left out of the read
    /// (at its concurrency limit, say) would have no one to refill it, so then it stays unset.
    /// It is set too while the worker stands by (`relay`): the worker before it has room.
    pub(super) reading: Arc<AtomicBool>,
    /// How the finish loop ends attempts without Lua.
    pub(super) plain_ends: Arc<PlainEnds>,
    /// This worker's place among its process's workers: when it reads, and whom it calls.
    pub(super) relay: Relay,
}

impl Leasing {
    /// A worker process's leasing on the queues it serves, under its id as consumer name;
    /// leases go to `leases` and end through `endings`, neither of which it keeps open.
    pub(super) fn new(
        serving: Arc<Serving>,
        leases: &mpsc::Sender<Box<Lease>>,
        endings: &mpsc::Sender<Ending>,
        shutdown: CancellationToken,
        relay: Relay,
    ) -> Leasing {
        Leasing {
            consumer: serving.id(),
            serving,
            leases: leases.downgrade(),
            endings: endings.downgrade(),
            shutdown,
            reading: Arc::default(),
            plain_ends: Arc::default(),
            relay,
        }
    }

    /// Turns the replies of a claim on `queue` into leases, each taking a slot from `slots` and
    /// counted in `running`; replies that are not runnable tasks (dropped, cancelled, left for
    /// later) take none.
    pub(super) fn leases_of(
        &self,
        queue: &Queue,
        running: &Arc<AtomicUsize>,
        replies: Vec<Vec<Vec<u8>>>,
        slots: &mut Vec<OwnedSemaphorePermit>,
    ) -> Vec<Lease> {
        self.leases_of_runs(queue, running, replies.into_iter().filter_map(Started::of), slots)
    }

    /// Turns starts on `queue` into leases, each taking a slot from `slots` and counted in
    /// `running`.
    pub(super) fn leases_of_runs(
        &self,
        queue: &Queue,
        running: &Arc<AtomicUsize>,
        runs: impl IntoIterator<Item = Started>,
        slots: &mut Vec<OwnedSemaphorePermit>,
    ) -> Vec<Lease> {
        let Some(finisher) = self.endings.upgrade() else { return Vec::new() };
        // A lease is large: grown a push at a time, the vector copied each one again.
        let mut leases = Vec::with_capacity(slots.len());
        for started in runs {
            let Some(slot) = slots.pop() else {
                warn!("a claim returned more tasks than there were free slots");
                break;
            };
            let Started {
                task_id,
                stream_index,
                entry_id,
                token,
                attempt,
                kind,
                max_attempts,
                timeout_ms,
                payload,
                payload_ref,
                traceparent,
                payload_type,
                session,
                idempotency_key,
                known,
            } = started;
            leases.push(Lease {
                task_id,
                queue: queue.clone(),
                stream: queue.keys.lane_stream(&kind, stream_index),
                kind,
                attempt,
                max_attempts,
                timeout_ms,
                payload_type: payload_type_or_default(payload_type),
                session: unless_empty(session),
                traceparent: unless_empty(traceparent),
                payload,
                idempotency_key: unless_empty(idempotency_key),
                payload_ref: payload_ref.parse().ok(),
                known,
                entry_id,
                stream_index,
                token,
                consumer: self.consumer.clone(),
                slot: Mutex::new(Some(slot)),
                finisher: finisher.clone(),
                _running: Running::new(running),
            });
        }
        leases
    }

    /// Hands leases to apalis; once the worker is stopping, hands them back to the queue instead.
    pub(super) async fn deliver(&self, leases: Vec<Lease>) {
        for lease in leases {
            // Boxed for the way through apalis, which moves each task several times over.
            let lease = Box::new(lease);
            let undelivered = match self.leases.upgrade() {
                Some(tx) => tx.send(lease).await.err().map(|e| e.0),
                None => Some(lease),
            };
            if let Some(lease) = undelivered
                && let Err(e) = lease.queue.release(&lease).await
            {
                warn!(error = %e, "handing back a task taken while stopping failed; its lease will expire");
            }
        }
    }
}

impl Queue {
    /// The arguments both lease-taking scripts start with (lease.lua's `leasing_context`): key
    /// base, group, consumer, a fresh token base (each lease's token is `base:n`), the worker's
    /// id (each attempt it starts records it), events maxlen, dead-letter retention (for tasks a
    /// claim finds expired), retention, the kinds the worker runs (comma-separated, or `*` for
    /// all).
    pub(super) fn leasing_args<'c, 'f>(
        &self,
        call: &'c mut Call<'f>,
        consumer: &str,
        worker: &str,
        kinds: &str,
    ) -> &'c mut Call<'f> {
        call.arg(self.keys.base())
            .arg(GROUP)
            .arg(consumer)
            .arg(Uuid::now_v7().to_string())
            .arg(worker)
            .arg(self.settings.events_maxlen)
            .arg(self.settings.dead_retention.as_millis() as u64)
            .arg(self.settings.retention.as_millis() as u64)
            .arg(kinds)
    }
}

#[cfg(test)]
impl Lease {
    /// A lease on `task_id` held with `token`, its payload as `payload`, for tests that read it
    /// without a fetch loop: its slot is its own and its finisher leads nowhere.
    pub(super) fn for_test(queue: &Queue, task_id: Uuid, payload: LeasedPayload, token: String) -> Lease {
        let (consumer, permits): (Arc<str>, _) =
            ("unit-worker".into(), Arc::new(tokio::sync::Semaphore::new(1)));
        let (finisher, _endings) = mpsc::channel(1);
        Lease {
            task_id,
            queue: queue.clone(),
            kind: "echo".into(),
            attempt: 1,
            max_attempts: 1,
            timeout_ms: None,
            payload_type: String::new(),
            session: None,
            traceparent: None,
            payload,
            idempotency_key: None,
            payload_ref: None,
            known: None,
            entry_id: String::new(),
            stream: String::new(),
            stream_index: 1,
            token,
            consumer,
            slot: Mutex::new(permits.try_acquire_owned().ok()),
            finisher,
            _running: Running::new(&Arc::default()),
        }
    }
}

/// A record's `waited` when its attempt was taken over from a holder that stopped: its end takes
/// no wait sample (`NOT_SAMPLED` of lease.lua, which a unit test compares).
pub(super) const NOT_SAMPLED: &str = "-";

/// A ready stream is trimmed once it holds more entries than this (`TRIM_ABOVE` of lease.lua,
/// which a unit test compares).
pub(super) const TRIM_ABOVE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trim_threshold_is_lease_luas() {
        assert!(include_str!("lease.lua").contains(&format!("\nlocal TRIM_ABOVE = {TRIM_ABOVE}\n")));
    }

    #[test]
    fn the_mark_of_an_unsampled_wait_is_lease_luas() {
        assert!(include_str!("lease.lua").contains(&format!("\nlocal NOT_SAMPLED = '{NOT_SAMPLED}'\n")));
    }

    #[test]
    fn the_run_reply_is_read_in_the_order_lease_lua_writes_it() {
        let lua = include_str!("lease.lua");
        let line =
            lua.lines().find_map(|l| l.strip_prefix("-- run reply: ")).expect("lease.lua names its reply");
        let (joined, apart) = line.split_once(" | ").expect("the joined fields, then the others");
        let written: Vec<&str> = joined.split(", ").chain(apart.split(", ")).collect();
        let read: Vec<&str> = Run::FIELDS.iter().map(|(_, name)| *name).collect();
        assert_eq!(written, read);
        assert_eq!(joined.split(", ").count(), Run::JOINED);
        for (place, (field, _)) in Run::FIELDS.iter().enumerate() {
            assert_eq!(*field as usize, place);
        }
        // And the reply take_lease builds holds those fields in that order: a record field
        // (`f[i]`, the i-th its HMGET reads) by its name, a local by what it holds.
        let start = "f = redis.call('HMGET', task, ";
        let hmget = &lua[lua.find(start).expect("take_lease reads the record") + start.len()..];
        let record: Vec<&str> = hmget[..hmget.find(", unpack(").unwrap()]
            .split(',')
            .map(|f| f.trim().trim_matches('\''))
            .collect();
        let start = "local run = {";
        let built = &lua[lua.find(start).expect("take_lease builds a run reply") + start.len()..];
        let built = &built[..built.find('}').unwrap()];
        let (joined, apart) = built.split_once(", ").unwrap();
        let expressions: Vec<&str> = joined.split("\\31'").chain(apart.split(',').map(str::trim)).collect();
        assert_eq!(expressions.len(), Run::FIELDS.len(), "{expressions:?}");
        let field_of = |expression: &str| {
            let cleaned = expression.replace("..", "").replace(['(', ')', '\'', '\n'], "");
            let value = cleaned.split(" or ").next().unwrap().trim().to_string();
            // A field of the record's own, or one of its options (`options_of`).
            let field = match value.strip_prefix("f[").and_then(|i| i.strip_suffix(']')) {
                Some(i) => Some(record[i.parse::<usize>().unwrap() - 1]),
                None => value.strip_prefix("options."),
            };
            match field {
                Some("idem") => "idempotency_key".to_string(),
                Some(field) => field.to_string(),
                None => match value.as_str() {
                    "STREAM_TEXT[s]" => "stream".to_string(),
                    "has" => "payload_is".to_string(),
                    local => local.to_string(),
                },
            }
        };
        let built: Vec<String> = expressions.iter().map(|e| field_of(e)).collect();
        assert_eq!(built, read_names(), "{expressions:?}");
    }

    /// The names of the run reply's fields, in `Run`'s order.
    fn read_names() -> Vec<String> {
        Run::FIELDS.iter().map(|(_, name)| name.to_string()).collect()
    }

    #[test]
    fn a_run_reply_is_read_into_its_start_and_a_malformed_one_is_none() {
        let id = Uuid::now_v7();
        let strings = |joined: &str| {
            let mut reply = vec![joined.as_bytes().to_vec()];
            reply.extend([b"text/plain".to_vec(), b"s\x1f1".to_vec(), b"".to_vec(), b"a\x1fb".to_vec()]);
            reply
        };
        let joined = format!("run\x1f{id}\x1f2\x1f1-0\x1ft:0\x1f3\x1fecho\x1f5\x1f\x1f1\x1f\x1f00-ab");
        let started = Started::of(strings(&joined)).expect("a run reply");
        let expected = Started {
            task_id: id,
            stream_index: 1,
            entry_id: "1-0".into(),
            token: "t:0".into(),
            attempt: 3,
            kind: "echo".into(),
            max_attempts: 5,
            timeout_ms: None,
            payload: LeasedPayload::Here(Bytes::from_static(b"a\x1fb")),
            payload_ref: String::new(),
            traceparent: "00-ab".into(),
            payload_type: "text/plain".into(),
            // The fields apart may hold the separator.
            session: "s\u{1f}1".into(),
            idempotency_key: String::new(),
            known: None,
        };
        assert_eq!(started, expected);
        // Written back, field for field as the claim replied.
        assert_eq!(started.clone().into_fields(), RunReply::unpacked(strings(&joined)));
        // A field not UTF-8 is read as lossy text.
        let mut odd = strings(&joined);
        odd[1] = b"text/\xffplain".to_vec();
        assert_eq!(Started::of(odd).expect("a run reply").payload_type, "text/\u{fffd}plain");
        // Numbers that do not read go as the script's defaults: attempt 1 of 1, no timeout.
        let unread =
            Started::of(strings(&joined.replacen("\x1f3\x1fecho\x1f5\x1f", "\x1fx\x1fecho\x1f-\x1fy", 1)))
                .expect("a run reply");
        assert_eq!((unread.attempt, unread.max_attempts, unread.timeout_ms), (1, 1, None));
        // A payload stored apart, or gone.
        let stored = Started::of(strings(&joined.replacen("\x1f1\x1f\x1f00-ab", "\x1f2\x1f\x1f00-ab", 1)));
        assert_eq!(stored.expect("a run reply").payload, LeasedPayload::Stored);
        let gone = Started::of(strings(&joined.replacen("\x1f1\x1f\x1f00-ab", "\x1f0\x1f\x1f00-ab", 1)));
        assert_eq!(gone.expect("a run reply").payload, LeasedPayload::Gone);
        // Not a run reply, or not one of its shape, or naming no task this worker reads.
        assert!(Started::of(strings("drop")).is_none());
        assert!(Started::of(strings(&joined.replacen("run", "ran", 1))).is_none());
        assert!(Started::of(strings(&format!("{joined}\x1fmore"))).is_none());
        assert!(Started::of(vec![b"drop".to_vec()]).is_none());
        assert!(Started::of(strings(&joined.replacen(&id.to_string(), "ID", 1))).is_none());
        assert!(Started::of(strings(&joined.replacen("\x1f2\x1f", "\x1f4\x1f", 1))).is_none());
        let mut with_view = strings(&joined);
        with_view.extend([b"created".to_vec(), b"1".to_vec()]);
        let (with, view) = Started::with_view(with_view).expect("a run reply and its view");
        assert_eq!(with, expected);
        assert_eq!(view, [b"created".to_vec(), b"1".to_vec()]);
    }

    #[test]
    fn a_task_has_waited_since_its_entry_was_stamped_and_never_less_than_nothing() {
        assert_eq!(waited_since("1700000000000-3", 1_700_000_001_500), Some(Duration::from_millis(1500)));
        // Redis's clock ahead of ours: no negative wait.
        assert_eq!(waited_since("1700000000000-0", 1_699_999_999_000), Some(Duration::ZERO));
        assert_eq!(waited_since("", 1), None);
        assert_eq!(waited_since("abc-1", 1), None);
    }
}
