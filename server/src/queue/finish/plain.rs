//! Ends without Lua (docs/benchmark-notes.md, "Tenth step"). A worker process's attempts that
//! succeeded and need no decision in Redis (no session to leave, no payload shared with other
//! tasks, a record stored with its options together: record.rs, `OPTIONS`) are ended as a plain
//! enqueue stores tasks: their records are
//! watched and read (is the lease still this holder's? what does the end write?), then one
//! transaction of plain commands writes what finish.lua writes for them. A record changed in
//! between (its lease taken over, a cancel asked for) voids the transaction, and the batch goes
//! through the script, which decides. A ready stream that a transaction found past `TRIM_ABOVE`
//! is trimmed by the next (the read before it finds the group's oldest pending entry: every entry
//! older is done with).
//!
//! A round that takes no leases (the fetch loop waits on every lane: a light load) takes two
//! round trips this way (`PlainEnds::end`). A round that takes leases (`PlainEnds::round`,
//! "Thirteenth step") takes three: it reads its next entries, then watches and reads the ended
//! attempts' records, the new entries' (as a plain lease reads them: queue/lease/plain.rs) and
//! the queue's limits, then one transaction ends the first and starts the second, and trims a
//! stream that is due for it (a queue's first round, and one on a queue last found with limits,
//! looks at its limits before it reads: `Mode`). Where the script took one round trip with about
//! 270,000 Redis instructions a task end to end, this takes three with about 190,000: Redis's CPU
//! a task falls, the worker's rises (it builds what the script built), and a lone worker's round
//! waits longer.
//! Whatever needs a decision goes to the scripts as before: an end that needs one (the whole
//! batch), an entry that needs one (the claim script takes it), a queue with limits, a voided
//! transaction, an error.
//!
//! `WATCH` belongs to a connection, so the finish loop keeps one per queue that nothing reconnects
//! (a reconnect between the read and the transaction would drop the watch): on any error it is
//! dropped, and the batch goes through the script, which tells what became of each attempt.

use super::{Ending, ResultPlace};
use crate::{
    events::{append_task_events, task_event_value},
    queue::{
        GROUP, Queue,
        fetch::{Given, entries_read, hand_back_unclaimed},
        finish::{Applied, Ended, Holders},
        lease::{
            Known, NOT_SAMPLED, Started, TRIM_ABOVE,
            plain::{self as lease, time_of},
        },
        record,
        transaction::{SCRIPTED_FOR, allows_transactions, applied, watched},
    },
    redis_client::{Conn, U64_DIGITS, bytes_of, command},
    stats::{Counted, latency_bin},
};
use redis::{RedisResult, Value, streams::StreamPendingReply};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::warn;
use uuid::Uuid;

/// What the end reads of each record, in this order (`Record`); an end whose start took no Lua
/// reads only the lease, the start having known the rest (`Known`).
const READ: [&str; 8] = [
    record::LEASE,
    record::KIND,
    record::ATTEMPTS,
    record::ATTEMPT_STARTED,
    record::STARTED,
    record::WAITED,
    // Read for its presence: a payload kept in the record has no key of its own.
    record::PAYLOAD,
    // Its shared payload's owner and its workflow; a pulled lease's session and idempotency key.
    record::OPTIONS,
];

/// Where `READ` has the payload.
const PAYLOAD_AT: usize = 6;

/// What only a running attempt has, deleted as it ends, and `updated`: an ended record's last
/// change is its `finished` (ends.lua's `end_told`). The worker goes too, unless the record tells
/// the attempt (`end_running`; finish.lua's `told`).
const RUNNING: [&str; 3] = [record::LEASE, record::ATTEMPT_STARTED, record::UPDATED];

/// The most an end deletes beyond `RUNNING` (`queue_ends`): the progress, the worker, and what an
/// earlier attempt's failure left.
const ENDED: [&str; 4] = [record::PROGRESS, record::WORKER, record::ERROR, record::NEXT_RUN];

/// What the end of a pulled lease reads beyond `READ`, in this order (`Holder`): the record names
/// the worker that pulled it (finish.lua's `PULLED_FIELDS`). Its holder knows neither its task's
/// session nor its idempotency key: the options `READ` has say them.
const READ_PULLED: [&str; 2] = [record::WORKER, record::CANCEL];

/// How long a queue's ends go through the script after the plain way failed (a connection refused,
/// an ACL user without the transaction commands) before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A finish loop's way of ending attempts without Lua.
#[derive(Default)]
pub(in crate::queue) struct PlainEnds {
    /// Each queue's connection of its own: one round at a time on it (a round holds it from the
    /// read to the transaction), two queues' rounds side by side.
    own: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Own>>>>,
    /// Ready streams found holding more than `TRIM_ABOVE` entries: the next transaction that ends
    /// attempts on them (or the script) trims them.
    trim_due: Mutex<HashSet<String>>,
    /// What each queue's rounds found of it (`Mode`); a queue not in it has not been looked at.
    modes: Mutex<HashMap<String, Mode>>,
}

/// How a queue's rounds that take leases go, from what they found of it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Plain: no limits when looked at (limits set since are found by a round's watched read).
    Plain,
    /// Through the script since then, for `SCRIPTED_FOR`: entries waited on several of a worker's
    /// streams at once (the script reads them in order, where a plain round reads each and hands
    /// back what it cannot start, to the end of its stream).
    ScriptedSince(Instant),
    /// Through the script since then, found with limits: after `SCRIPTED_FOR` the next round looks
    /// at them again before it reads anything. A round reads its entries before its watched read
    /// sees the limits, and the claim script hands back, to the end of its stream, each entry over
    /// the limits' budget: rounds that read on a paused or limited queue would keep moving its
    /// oldest entries behind the rest.
    LimitedSince(Instant),
}

/// What a round does first, from its queue's `Mode`.
#[derive(Debug, PartialEq)]
enum Turn {
    /// Reads its entries.
    Plain,
    /// Leaves the leases to the script.
    Script,
    /// Looks at the queue's limits first (a round trip): plain without, else the script's.
    Look,
}

impl Mode {
    /// What a round does first on a queue in `mode` (None: never looked at).
    fn turn(mode: Option<Mode>) -> Turn {
        match mode {
            Some(Mode::ScriptedSince(at) | Mode::LimitedSince(at)) if at.elapsed() < SCRIPTED_FOR => {
                Turn::Script
            }
            Some(Mode::Plain | Mode::ScriptedSince(_)) => Turn::Plain,
            None | Some(Mode::LimitedSince(_)) => Turn::Look,
        }
    }
}

/// What a plain round did: each attempt's end, the starts of the leases it took, and the
/// entries it read that need the script to decide (for the caller to have it claim them).
pub(in crate::queue) struct Round {
    pub(in crate::queue) ended: Vec<Ended>,
    pub(in crate::queue) runs: Vec<Started>,
    pub(in crate::queue) rest: Vec<Given>,
}

/// A queue's connection for plain ends.
#[derive(Default)]
struct Own {
    /// None until first used, or after an error.
    conn: Option<Conn>,
    /// When the plain way last failed: it rests `RETRY_AFTER`.
    failed_at: Option<Instant>,
}

/// What the end reads of one record (`READ`, and `READ_PULLED` for a pulled lease).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Record {
    lease: String,
    /// Whether its options are fields of their own, which the end does not read (a record stored
    /// before they were kept together: record.rs, `OPTIONS`): the script ends it.
    options_apart: bool,
    /// What the attempt's start left in the record (read, or known from the start).
    started: Known,
    waited: String,
    /// A pulled lease's: what the record says of its holder and task.
    pulled: Option<Holder>,
}

/// What the end of a pulled lease reads of its record beyond a worker process's (`READ_PULLED`).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Holder {
    /// The worker that pulled the lease (its name for itself).
    worker: String,
    /// Whether a cancel was asked for while it ran (the script ends it cancelled).
    cancel: bool,
    session: String,
    idempotency_key: String,
}

impl Record {
    /// The record of `fields` (`READ`'s values, then `READ_PULLED`'s for `holders` `Pulled`).
    fn of(fields: Vec<Option<String>>, holders: Holders) -> Record {
        // The payload is read for its presence alone.
        let payload_in_record = fields.get(PAYLOAD_AT).is_some_and(Option::is_some);
        let mut fields = fields.into_iter().map(Option::unwrap_or_default);
        let mut next = || fields.next().unwrap_or_default();
        // In `READ`'s order.
        let (lease, kind, attempts, attempt_started, first_started, waited, _payload, options) =
            (next(), next(), next(), next(), next(), next(), next(), next());
        let options = record::Options::read(options.as_bytes());
        let option = |field| options.as_ref().and_then(|o| o.get(field)).unwrap_or_default().to_string();
        let started = Known {
            kind,
            first_start: !attempt_started.is_empty() && first_started == attempt_started,
            attempts,
            attempt_started,
            payload_in_record,
            payload_ref: option(record::PAYLOAD_REF),
            workflow: option(record::WORKFLOW),
        };
        Record {
            lease,
            options_apart: options.is_none(),
            started,
            waited,
            pulled: (holders == Holders::Pulled).then(|| Holder {
                worker: next(),
                cancel: next() == "1",
                session: option(record::SESSION),
                idempotency_key: option(record::IDEMPOTENCY_KEY),
            }),
        }
    }

    /// The record whose lease field holds `lease`, as the start that knew `known` left it (a
    /// worker process's, whose start took no wait mark: lease.lua sets one only on a takeover).
    fn known(lease: String, known: &Known) -> Record {
        Record { lease, options_apart: false, started: known.clone(), waited: String::new(), pulled: None }
    }

    /// Whether the end needs the script to decide, for the attempt `ending` reports: its lease
    /// lost, its options not read (`options_apart`), its payload shared with other tasks or gone
    /// (`payload_length` 0: the result is the payload, which expired), or, pulled, a cancel asked
    /// for or a session to leave.
    fn decides(&self, ending: &Ending, payload_length: Option<u64>) -> bool {
        self.lease != ending.token
            || self.options_apart
            || !self.started.payload_ref.is_empty()
            || (!self.started.payload_in_record && payload_length == Some(0))
            || self.pulled.as_ref().is_some_and(|holder| holder.cancel || !holder.session.is_empty())
    }

    /// The worker the attempt log names: a pulled lease's holder, else `worker` (whose process
    /// ends it).
    fn worker<'r>(&'r self, worker: &'r str) -> &'r str {
        self.pulled.as_ref().map_or(worker, |holder| &holder.worker)
    }

    /// The idempotency key whose life follows the task's: a pulled lease's record's, else the
    /// one `ending`'s holder had from its lease.
    fn idempotency_key<'r>(&'r self, ending: &'r Ending) -> &'r str {
        self.pulled.as_ref().map_or(&ending.idempotency_key, |holder| &holder.idempotency_key)
    }
}

impl Ending {
    /// Whether this attempt's end needs no decision in Redis, as far as its holder knows: it
    /// succeeded, on a lease whose entry's stream is known, with no session to leave and no
    /// payload shared with other tasks. (The read then checks the lease and the payload, and a
    /// pulled lease's cancel and session.)
    fn may_go_plain(&self) -> bool {
        self.outcome == "succeeded"
            && !self.stream.is_empty()
            && self.session.is_empty()
            && !self.shared_payload
    }
}

/// Whether `batch` ends each task once. Two ends of one task (a pulled lease's `complete` sent
/// again while the first was on its way) would both read the lease as held; the script ends the
/// first and refuses the second.
fn each_task_once(batch: &[Ending]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    batch.iter().all(|ending| seen.insert(ending.task_id.as_str()))
}

impl PlainEnds {
    /// Ends `batch` (ended attempts on `queue`: `worker`'s, or `holders` `Pulled`, leases pulled
    /// over HTTP, whose records name their workers) without Lua where it can: each attempt's end,
    /// or None when the batch needs the script (nothing was changed).
    pub(in crate::queue) async fn end(
        &self,
        queue: &Queue,
        batch: &[Ending],
        holders: Holders,
        worker: &str,
    ) -> Option<Vec<Ended>> {
        if queue.conn.is_cluster() || !batch.iter().all(Ending::may_go_plain) || !each_task_once(batch) {
            return None;
        }
        let streams = streams_of(batch);
        let trims = self.trims_of(&streams);
        let own = self.own_of(queue);
        let mut own = own.lock().await;
        let conn = self.connected(&mut own, queue).await?;
        let ended = match read(conn, queue, batch, holders, &trims).await {
            Ok(Some(read)) => self.commit(conn, queue, batch, read, &streams, worker).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        ended.unwrap_or_else(|e| {
            // A transaction whose answer was lost may have been applied: the script then finds
            // the leases gone and says so.
            self.failed(&mut own, queue, &e);
            None
        })
    }

    /// Ends `batch` and starts up to `want` new entries of `lanes` (each a kind and its streams,
    /// the most urgent first) for `worker`, without Lua, in three round trips on the queue's own
    /// connection (four when it looks at the queue's limits first: `Mode`): a read of new entries;
    /// the watched read of the ended attempts' records, of the new entries' records and of the
    /// queue's limits; one transaction that ends the first and starts the second. None when it was not tried, or read nothing new and the ends need the
    /// script (nothing changed: the caller ends the batch, and takes leases, with the script);
    /// `Err` with the entries read, when the round needs the script after reading them (nothing
    /// ended or started: the caller ends the batch with the script and has it claim them).
    pub(in crate::queue) async fn round(
        &self,
        queue: &Queue,
        batch: &[Ending],
        worker: &str,
        lanes: &[(String, [String; 3])],
        want: usize,
    ) -> Option<Result<Round, Vec<Given>>> {
        if queue.conn.is_cluster() || lanes.is_empty() || !batch.iter().all(Ending::may_go_plain) {
            return None;
        }
        let turn = Mode::turn(self.mode_of(queue));
        if turn == Turn::Script {
            return None;
        }
        let streams = streams_of(batch);
        let trims = self.trims_of(&streams);
        let own = self.own_of(queue);
        let mut own = own.lock().await;
        let conn = self.connected(&mut own, queue).await?;
        if turn == Turn::Look {
            match lease::has_limits(conn, queue).await {
                Ok(true) => {
                    self.set_mode(queue, Mode::LimitedSince(Instant::now()));
                    return None;
                }
                Ok(false) => self.set_mode(queue, Mode::Plain),
                Err(e) => {
                    self.failed(&mut own, queue, &e);
                    return None;
                }
            }
        }
        let mut given = match read_new(conn, worker, lanes, want).await {
            Ok(given) => given,
            Err(e) => {
                self.failed(&mut own, queue, &e);
                return None;
            }
        };
        // Each stream may bring `want`: what does not fit goes back for others to take, and the
        // next rounds leave the reading to the script for a while.
        let extra = given.split_off(want.min(given.len()));
        if !extra.is_empty() {
            self.set_mode(queue, Mode::ScriptedSince(Instant::now()));
            if let Err(e) = hand_back_unclaimed(queue, &extra).await {
                // Left pending for this worker, they are taken over once idle a lease's length.
                warn!(queue = queue.name(), error = %e, "handing back the entries a round read failed");
            }
        }
        if given.is_empty() {
            // Nothing new: the round only ends (and trims what is due).
            drop(own);
            let ended = self.end(queue, batch, Holders::Process, worker).await?;
            return Some(Ok(Round { ended, runs: Vec::new(), rest: Vec::new() }));
        }
        match self.end_and_start(conn, queue, batch, &trims, worker, &given).await {
            Ok(Some(round)) => Some(Ok(round)),
            Ok(None) => Some(Err(given)),
            Err(e) => {
                // A transaction whose answer was lost may have been applied: the script then finds
                // the ended leases gone, and the started tasks running, which it takes over.
                self.failed(&mut own, queue, &e);
                Some(Err(given))
            }
        }
    }

    /// The round trips of `round` after the read of new entries (`given`, read for `worker`):
    /// the round, or None when it needs the script (the watch let go, nothing changed).
    async fn end_and_start(
        &self,
        conn: &mut Conn,
        queue: &Queue,
        batch: &[Ending],
        trims: &[String],
        worker: &str,
        given: &[Given],
    ) -> RedisResult<Option<Round>> {
        let Some(ends) = ReadPlan::of(queue, batch, Holders::Process) else { return Ok(None) };
        let streams = &streams_of(batch)[..];
        let mut pipe = redis::pipe();
        ends.queue(&mut pipe, queue);
        let starts = lease::queue_read(&mut pipe, queue, given, &[]);
        pipe.cmd("TIME");
        queue_oldest_pending(&mut pipe, trims);
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        let mut replies = replies.into_iter();
        let ended = ends.found(&mut replies, batch)?;
        let found = lease::Found::of(&mut replies, &starts)?;
        let now_ms = time_of(replies.next())?;
        let trim_to = oldest_pending(&mut replies, trims)?;
        let limited = found.limited();
        let (Some((ids, tasks, records)), Some(mut starting)) = (ended, found.read(given, starts, now_ms))
        else {
            if limited {
                self.set_mode(queue, Mode::LimitedSince(Instant::now()));
            }
            redis::cmd("UNWATCH").exec_async(conn).await?;
            return Ok(None);
        };
        let read = Read { ids, tasks, records, now_ms, trim_to };
        let rest = std::mem::take(&mut starting.rest);
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("MULTI");
        // The starts first: their answers are the first in `EXEC`'s (`Starting::runs`); the
        // events in the order the script writes them, the ends' first.
        let mut started = Vec::with_capacity(starting.starts.len());
        let starting = lease::queue_starts(&mut pipe, queue, worker, starting, &mut started);
        let mut events = Vec::with_capacity(batch.len() + started.len());
        let counted = queue_ends(&mut pipe, queue, batch, &read, streams, worker, &mut events);
        events.append(&mut started);
        append_task_events(&mut pipe, queue.keys.events(), queue.settings.events_maxlen, &events);
        queue_trims(&mut pipe, &read.trim_to);
        queue_lengths(&mut pipe, streams);
        pipe.cmd("EXEC");
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        let Some(mut applied) = applied(replies)? else { return Ok(None) };
        self.trimmed(&read.trim_to);
        self.note_lengths(streams, &applied);
        queue.count(&counted);
        let runs = starting.runs(&mut applied);
        Ok(Some(Round { ended: as_reported(batch), runs, rest }))
    }

    /// What `queue`'s rounds last found of it, if they looked.
    fn mode_of(&self, queue: &Queue) -> Option<Mode> {
        self.modes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(queue.name()).copied()
    }

    fn set_mode(&self, queue: &Queue, mode: Mode) {
        let mut modes = self.modes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        modes.insert(queue.name().to_string(), mode);
    }

    /// `own`'s connection, made if needed; None while the plain way rests after a failure.
    async fn connected<'o>(&self, own: &'o mut Own, queue: &Queue) -> Option<&'o mut Conn> {
        if own.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return None;
        }
        if own.conn.is_none() {
            match connect(queue).await {
                Ok(conn) => own.conn = Some(conn),
                Err(e) => {
                    warn!(queue = queue.name(), error = %e, "no connection for plain ends: the script ends them");
                    own.failed_at = Some(Instant::now());
                    return None;
                }
            }
        }
        own.conn.as_mut()
    }

    /// The plain way failed on `own`'s connection: it is dropped, and the way rests.
    fn failed(&self, own: &mut Own, queue: &Queue, error: &redis::RedisError) {
        warn!(queue = queue.name(), error = %error, "ending without Lua failed: the script ends them");
        (own.conn, own.failed_at) = (None, Some(Instant::now()));
    }

    /// The script ended `batch` on `queue`: the streams it settled are trimmed.
    pub(in crate::queue) fn settled(&self, batch: &[Ending]) {
        let mut due = self.trims_due();
        if !due.is_empty() {
            for ending in batch {
                due.remove(&ending.stream);
            }
        }
    }

    /// Those of `streams` due for a trim.
    fn trims_of(&self, streams: &[String]) -> Vec<String> {
        let due = self.trims_due();
        streams.iter().filter(|stream| due.contains(*stream)).cloned().collect()
    }

    fn trims_due(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.trim_due.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `queue`'s connection for plain ends.
    fn own_of(&self, queue: &Queue) -> Arc<tokio::sync::Mutex<Own>> {
        let mut own = self.own.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        own.entry(queue.name().to_string()).or_default().clone()
    }

    /// Sends the transaction that ends `batch` as `read` found it, on the connection that read
    /// it: each attempt's end, or None when a change to a record voided it.
    async fn commit(
        &self,
        conn: &mut Conn,
        queue: &Queue,
        batch: &[Ending],
        read: Read,
        streams: &[String],
        worker: &str,
    ) -> RedisResult<Option<Vec<Ended>>> {
        let (sent, counted) = transaction(queue, batch, &read, streams, worker);
        let replies: Vec<Value> = sent.query_async(conn).await?;
        // A record changed after the read: nothing of it was applied.
        let Some(applied) = applied(replies)? else { return Ok(None) };
        // From here on every attempt is ended: nothing below may answer otherwise.
        self.trimmed(&read.trim_to);
        self.note_lengths(streams, &applied);
        queue.count(&counted);
        Ok(Some(read.records.iter().map(|record| Ended::as_reported(record.worker(""))).collect()))
    }

    /// The streams of `trim_to` were trimmed.
    fn trimmed(&self, trim_to: &[(String, String)]) {
        if !trim_to.is_empty() {
            let mut due = self.trims_due();
            for (stream, _) in trim_to {
                due.remove(stream);
            }
        }
    }

    /// Notes the streams a transaction found past the trim threshold, from its last answers
    /// (`queue_lengths`): the next ends on them trim them.
    fn note_lengths(&self, streams: &[String], applied: &[Value]) {
        let tail = applied.iter().rev().map(|v| redis::from_redis_value_ref::<u64>(v).unwrap_or(0));
        let mut due = self.trims_due();
        for (stream, length) in streams.iter().rev().zip(tail) {
            if length > TRIM_ABOVE as u64 {
                due.insert(stream.clone());
            }
        }
    }
}

/// Reads new entries of `lanes` (each a kind and its streams, the most urgent first) for
/// `consumer`, up to `want` of each stream, the most urgent first: the caller hands back any
/// beyond `want`.
pub(in crate::queue) async fn read_new(
    conn: &mut Conn,
    consumer: &str,
    lanes: &[(String, [String; 3])],
    want: usize,
) -> RedisResult<Vec<Given>> {
    let streams: Vec<&String> = lanes.iter().flat_map(|(_, streams)| streams).collect();
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(want)
        .arg("STREAMS")
        .arg(&streams)
        .arg(vec![">"; streams.len()])
        .query_async(conn)
        .await?;
    let mut given: Vec<Given> = Vec::new();
    for (key, entries) in entries_read(reply) {
        let place = lanes.iter().find_map(|(kind, streams)| {
            streams.iter().position(|s| s.as_bytes() == key).map(|index| (kind, index))
        });
        if let Some((kind, index)) = place {
            given.extend(entries.into_iter().map(|e| (kind.clone(), index, e)));
        }
    }
    given.sort_by_key(|(_, index, _)| *index);
    Ok(given)
}

/// Each attempt of `batch` (a worker process's) ended as its holder reported it.
fn as_reported(batch: &[Ending]) -> Vec<Ended> {
    batch.iter().map(|_| Ended::as_reported("")).collect()
}

impl Ended {
    /// An attempt ended as its holder reported it; `worker`: the one its record named (pulled
    /// leases; else empty).
    fn as_reported(worker: &str) -> Ended {
        Ended { applied: Applied::AsReported, worker: worker.to_string() }
    }
}

/// A connection for plain ends: one that nothing reconnects, on which Redis has just let this
/// user watch and run a transaction.
async fn connect(queue: &Queue) -> RedisResult<Conn> {
    // A reply may take as long as on the shared connection.
    let mut conn = queue.client.connect_blocking(Duration::ZERO).await?;
    allows_transactions(&mut conn, queue).await?;
    Ok(conn)
}

/// What the read before a plain end found: the tasks' ids, records (and their keys), and Redis's
/// time (ms).
struct Read {
    ids: Vec<Uuid>,
    tasks: Vec<String>,
    records: Vec<Record>,
    now_ms: u64,
    /// The streams due for a trim that have entries pending, and the oldest pending's id: every
    /// entry older is done with (`trim_to` of a round).
    trim_to: Vec<(String, String)>,
}

/// Watches `batch`'s records on `conn` and reads what their ends need: None (the watch let go)
/// where one needs the script to decide (its lease lost, its payload shared or expired).
async fn read(
    conn: &mut Conn,
    queue: &Queue,
    batch: &[Ending],
    holders: Holders,
    trims: &[String],
) -> RedisResult<Option<Read>> {
    let Some(plan) = ReadPlan::of(queue, batch, holders) else { return Ok(None) };
    let mut pipe = redis::pipe();
    plan.queue(&mut pipe, queue);
    pipe.cmd("TIME");
    queue_oldest_pending(&mut pipe, trims);
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let found = plan.found(&mut replies, batch)?;
    let now_ms = time_of(replies.next())?;
    let trim_to = oldest_pending(&mut replies, trims)?;
    let read = found.map(|(ids, tasks, records)| Read { ids, tasks, records, now_ms, trim_to });
    if read.is_none() {
        redis::cmd("UNWATCH").exec_async(conn).await?;
    }
    Ok(read)
}

/// What the read before plain ends asks for: the records of a batch's tasks (ids and keys), and
/// the lengths of the payloads results are (which of the batch).
struct ReadPlan {
    ids: Vec<Uuid>,
    tasks: Vec<String>,
    echoes: Vec<usize>,
    holders: Holders,
    /// Which ends read only the record's lease: their start knew the rest (`Known`).
    lease_only: Vec<bool>,
}

impl ReadPlan {
    /// The read of `batch`'s records on `queue` (leases of `holders`): None when an id is not one
    /// (the script decides).
    fn of(queue: &Queue, batch: &[Ending], holders: Holders) -> Option<ReadPlan> {
        let ids = batch.iter().map(|e| Uuid::parse_str(&e.task_id)).collect::<Result<Vec<_>, _>>().ok()?;
        let tasks = ids.iter().map(|id| queue.keys.task(id)).collect();
        let lease_only = batch.iter().map(|e| holders == Holders::Process && e.known.is_some()).collect();
        // A payload in the record cannot expire apart from it.
        let echoes = (0..batch.len())
            .filter(|&i| matches!(batch[i].result, ResultPlace::Payload))
            .filter(|&i| !batch[i].known.as_ref().is_some_and(|known| known.payload_in_record))
            .collect();
        Some(ReadPlan { ids, tasks, echoes, holders, lease_only })
    }

    /// Adds to `pipe` the watch on the records and the reads: each record (only its lease where
    /// the start knew the rest), and the length of each payload the result is, unless it is in
    /// the record (an expired one leaves the attempt to the script, which runs it again).
    fn queue(&self, pipe: &mut redis::Pipeline, queue: &Queue) {
        pipe.add_command(command("WATCH", self.tasks.len(), bytes_of(&self.tasks))).arg(&self.tasks);
        let (read, read_bytes) = (READ.len() + READ_PULLED.len(), bytes_of(&READ) + bytes_of(&READ_PULLED));
        for (task, &lease_only) in self.tasks.iter().zip(&self.lease_only) {
            if lease_only {
                pipe.add_command(command("HGET", 2, task.len() + record::LEASE.len()))
                    .arg(task)
                    .arg(record::LEASE);
                continue;
            }
            let hmget = pipe
                .add_command(command("HMGET", 1 + read, task.len() + read_bytes))
                .arg(task)
                .arg(&READ[..]);
            if self.holders == Holders::Pulled {
                hmget.arg(&READ_PULLED[..]);
            }
        }
        for &i in &self.echoes {
            let payload = queue.keys.payload(&self.ids[i]);
            pipe.add_command(command("STRLEN", 1, payload.len())).arg(payload);
        }
    }

    /// Reads back from `replies` what `queue` asked for: the ids, keys and records, or None
    /// where an end needs the script to decide (`Record::decides`).
    #[allow(clippy::type_complexity)]
    fn found(
        self,
        replies: &mut impl Iterator<Item = Value>,
        batch: &[Ending],
    ) -> RedisResult<Option<(Vec<Uuid>, Vec<String>, Vec<Record>)>> {
        watched(replies)?;
        let mut records = Vec::with_capacity(batch.len());
        for (ending, &lease_only) in batch.iter().zip(&self.lease_only) {
            let reply = replies.next().unwrap_or(Value::Nil);
            records.push(match (lease_only, &ending.known) {
                (true, Some(known)) => Record::known(
                    redis::from_redis_value::<Option<String>>(reply)?.unwrap_or_default(),
                    known,
                ),
                _ => Record::of(redis::from_redis_value(reply)?, self.holders),
            });
        }
        let mut payload_lengths = vec![None; batch.len()];
        for &i in &self.echoes {
            payload_lengths[i] = Some(redis::from_redis_value::<u64>(replies.next().unwrap_or(Value::Nil))?);
        }
        let decides = batch
            .iter()
            .zip(&records)
            .zip(&payload_lengths)
            .any(|((ending, record), &length)| record.decides(ending, length));
        Ok((!decides).then_some((self.ids, self.tasks, records)))
    }
}

/// The transaction that ends `batch` as `read` found it, as finish.lua would, in a pipeline that
/// sends it (its one reply: `EXEC`'s), and what the stats count. Its last replies are each
/// stream's length.
fn transaction(
    queue: &Queue,
    batch: &[Ending],
    read: &Read,
    streams: &[String],
    worker: &str,
) -> (redis::Pipeline, Counted) {
    let mut pipe = redis::pipe();
    // Built by hand rather than `atomic()`: `MULTI`'s own answer is read (a refused `MULTI` would
    // leave the commands to run one by one), and an error inside the transaction, which Redis
    // applies all the same, is a reply like the others rather than the pipeline's error.
    pipe.ignore_errors().cmd("MULTI");
    let mut events = Vec::with_capacity(batch.len());
    let counted = queue_ends(&mut pipe, queue, batch, read, streams, worker, &mut events);
    append_task_events(&mut pipe, queue.keys.events(), queue.settings.events_maxlen, &events);
    queue_trims(&mut pipe, &read.trim_to);
    queue_lengths(&mut pipe, streams);
    pipe.cmd("EXEC");
    (pipe, counted)
}

/// Asks, in a read before a transaction, where the group's oldest pending entry is on each of
/// `trims` (the streams due for a trim; settle of lease.lua): `oldest_pending` reads it back.
fn queue_oldest_pending(pipe: &mut redis::Pipeline, trims: &[String]) {
    for stream in trims {
        pipe.cmd("XPENDING").arg(stream).arg(GROUP);
    }
}

/// Each of `trims` that has entries pending, with the oldest one's id, from `replies`
/// (`queue_oldest_pending`'s).
fn oldest_pending(
    replies: &mut impl Iterator<Item = Value>,
    trims: &[String],
) -> RedisResult<Vec<(String, String)>> {
    let mut trim_to = Vec::with_capacity(trims.len());
    for stream in trims {
        let pending: StreamPendingReply = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        if let StreamPendingReply::Data(data) = pending {
            trim_to.push((stream.clone(), data.start_id));
        }
    }
    Ok(trim_to)
}

/// Adds to a transaction the trims of `trim_to`'s streams. Every entry older than the oldest
/// pending when read is done with (acknowledged since, the oldest may be newer now: the trim keeps
/// more, never less). A stream with none pending waits for a transaction that finds some.
fn queue_trims(pipe: &mut redis::Pipeline, trim_to: &[(String, String)]) {
    for (stream, oldest) in trim_to {
        pipe.cmd("XTRIM").arg(stream).arg("MINID").arg("~").arg(oldest);
    }
}

/// Asks, at the end of a transaction, each of `streams`' length (the transaction's last answers:
/// `note_lengths` reads them).
fn queue_lengths(pipe: &mut redis::Pipeline, streams: &[String]) {
    for stream in streams {
        pipe.cmd("XLEN").arg(stream);
    }
}

/// Adds to a transaction on `pipe` the commands that end `batch` as `read` found it, as
/// finish.lua would (their `succeeded` events go to `events`, for the caller to append with the
/// transaction's others), and returns what the stats count.
fn queue_ends(
    pipe: &mut redis::Pipeline,
    queue: &Queue,
    batch: &[Ending],
    read: &Read,
    streams: &[String],
    worker: &str,
    events: &mut Vec<String>,
) -> Counted {
    let Read { ids, tasks, records, now_ms, .. } = read;
    let now_ms = *now_ms;
    let now = now_ms.to_string();
    let keep = queue.settings.retention.as_millis() as u64;
    // Samples by stage (`w` waited, `r` ran) and bin: a few distinct ones a batch.
    let mut samples: Vec<(char, u32, u64)> = Vec::new();
    let mut sample =
        |stage: char, bin: u32| match samples.iter_mut().find(|(s, b, _)| (*s, *b) == (stage, bin)) {
            Some((_, _, n)) => *n += 1,
            None => samples.push((stage, bin, 1)),
        };
    let mut acked: Vec<Vec<&str>> = streams.iter().map(|_| Vec::with_capacity(batch.len())).collect();
    let ended_bytes = bytes_of(&RUNNING) + bytes_of(&ENDED);
    let mut separator = [0; 4];
    let separator: &str = record::ATTEMPT_LOG_SEPARATOR.encode_utf8(&mut separator);
    for (((ending, record), id), task) in batch.iter().zip(records).zip(ids).zip(tasks) {
        let result_len = match &ending.result {
            ResultPlace::Record(bytes) => bytes.len(),
            _ => 0,
        };
        // Sized for what it holds, so that its buffers are not grown argument by argument.
        let mut hset = command("HSET", 23, 512 + result_len);
        hset.arg(task).arg(record::STATUS).arg("succeeded").arg(record::FINISHED).arg(&now);
        let result_type = record::stored_result_type(&ending.result_type);
        if !result_type.is_empty() {
            hset.arg(record::RESULT_TYPE).arg(result_type);
        }
        let attempt = if record.started.attempts.is_empty() { "0" } else { &record.started.attempts };
        // A first attempt begun at the task's first start goes unlogged: the record keeps its
        // worker, and says the rest (record.rs, `ATTEMPT_LOG`; finish.lua's `told`).
        let told = attempt == "1" && record.started.first_start;
        if !told {
            // The attempt's entry in the attempt log (ends.lua's attempt_log_entry).
            let mut log_entry = String::with_capacity(64);
            for piece in [
                "succeeded",
                separator,
                &record.started.attempt_started,
                separator,
                &now,
                separator,
                record.worker(worker),
                separator,
            ] {
                log_entry.push_str(piece);
            }
            hset.arg([record::ATTEMPT_LOG.as_bytes(), attempt.as_bytes()].concat()).arg(log_entry);
        }
        match &ending.result {
            ResultPlace::Record(bytes) => {
                hset.arg(record::RESULT).arg(bytes.as_ref());
            }
            ResultPlace::Payload => {
                hset.arg(record::RESULT_IS_PAYLOAD).arg("1");
            }
            // A large result is staged for the script, which would otherwise copy it through Lua;
            // a transaction sets it as it is.
            ResultPlace::Here(bytes) | ResultPlace::Staged(bytes) => {
                let key = queue.keys.result(id);
                pipe.add_command(command("SET", 4, key.len() + bytes.len() + "PX".len() + U64_DIGITS))
                    .arg(key)
                    .arg(bytes.as_ref())
                    .arg("PX")
                    .arg(keep);
            }
        }
        // What only a running attempt has goes first (ends.lua's `end_running`), so that the
        // record grows no further than it must; with it the progress (a success's reads as 100)
        // and what a later attempt's record may hold of an earlier one's failure.
        let running = pipe
            .add_command(command("HDEL", 1 + RUNNING.len() + ENDED.len(), task.len() + ended_bytes))
            .arg(task)
            .arg(&RUNNING[..])
            .arg(record::PROGRESS);
        if !told {
            running.arg(record::WORKER);
        }
        if record.started.attempts != "1" {
            running.arg(record::ERROR).arg(record::NEXT_RUN);
        }
        pipe.add_command(hset);
        // What keep_after_end keeps: the record, the idempotency key, a payload of its own.
        pipe.add_command(command("PEXPIRE", 2, task.len() + U64_DIGITS)).arg(task).arg(keep);
        let idempotency_key = record.idempotency_key(ending);
        if !idempotency_key.is_empty() {
            pipe.add_command(command("PEXPIRE", 2, idempotency_key.len() + U64_DIGITS))
                .arg(idempotency_key)
                .arg(keep);
        }
        // A payload that is the result is kept as the result; any other, as long as
        // `--payload-retention` says (0 deletes it now).
        if !record.started.payload_in_record {
            let payload_keep = match ending.result {
                ResultPlace::Payload => keep,
                _ => queue.settings.payload_retention.as_millis() as u64,
            };
            let payload = queue.keys.payload(id);
            pipe.add_command(command("PEXPIRE", 2, payload.len() + U64_DIGITS))
                .arg(payload)
                .arg(payload_keep);
        }
        let at = streams.iter().position(|s| *s == ending.stream).expect("streams_of lists every ending's");
        acked[at].push(&ending.entry_id);
        events.push(task_event_value([
            "succeeded",
            &ending.task_id,
            &record.started.kind,
            "succeeded",
            attempt,
            "100",
            &now,
            &record.started.workflow,
            "",
        ]));
        if let Ok(started) = record.started.attempt_started.parse::<u64>() {
            if record.waited != NOT_SAMPLED {
                // How long it waited ready: Redis stamped its entry's id as it joined.
                let joined = ending.entry_id.split('-').next().and_then(|ms| ms.parse().ok());
                sample('w', latency_bin(started.saturating_sub(joined.unwrap_or(started))));
            }
            sample('r', latency_bin(now_ms.saturating_sub(started)));
        }
    }
    let bins = samples.into_iter().map(|(stage, bin, n)| (format!("{stage}{bin}"), n)).collect();
    for (stream, entries) in streams.iter().zip(&acked) {
        let bytes = stream.len() + GROUP.len() + bytes_of(entries);
        pipe.add_command(command("XACK", 2 + entries.len(), bytes)).arg(stream).arg(GROUP).arg(entries);
    }
    let ends = batch.len() as u64;
    Counted { at_ms: now_ms, succeeded: ends, failed: 0, ended: ends, bins }
}

/// The ready streams of `batch`'s entries, each once, in the order first met.
fn streams_of(batch: &[Ending]) -> Vec<String> {
    let mut streams: Vec<String> = Vec::new();
    for ending in batch {
        if !streams.contains(&ending.stream) {
            streams.push(ending.stream.clone());
        }
    }
    streams
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{
        NewTask, Outcome, QueueParts, ResultBytes, WorkflowStep,
        finish::{Holders, tests::ending},
        lease::Run,
        pull::PullToken,
        testing::{
            anonymous, calls, claim_idempotency_key, echo_task, fcalls, private_queue, unpacked,
            without_multi,
        },
    };
    use bytes::Bytes;
    use redis::AsyncCommands;
    use std::collections::HashMap;

    /// The worker the tests' leases and ends name.
    const WORKER: &str = "unit-worker";

    /// Enqueues `task` and takes its lease: the ending of its attempt, succeeded with `result`.
    async fn leased(queue: &Queue, task: &NewTask, result: ResultBytes) -> Ending {
        queue.enqueue(task).await.unwrap();
        let replies = unpacked(queue.claim(WORKER, "*", 1, &[]).await.unwrap().0);
        let token = String::from_utf8_lossy(&replies[0][Run::Token as usize]).into_owned();
        let mut ending = ending(queue, &task.id.to_string(), &replies[0], &token, result);
        ending.idempotency_key = task.idempotency_key.clone().unwrap_or_default();
        ending
    }

    /// Enqueues `tasks` and starts them without Lua, as the fetch loop starts the entries a
    /// blocking read brings: their endings, succeeded with `result`, each with what its start knew
    /// of the record.
    async fn started_plain(queue: &Queue, tasks: &[NewTask], result: ResultBytes) -> Vec<Ending> {
        for task in tasks {
            queue.enqueue(task).await.unwrap();
        }
        let mut own = queue.client.connect_blocking(Duration::ZERO).await.unwrap();
        let given = read_new(&mut own, WORKER, &echo_lane(queue), tasks.len()).await.unwrap();
        let mut leases = crate::queue::lease::PlainLeases::default();
        let started = leases.take(&mut own, queue, WORKER, &given).await.unwrap();
        let (runs, rest) = started.expect("they start without Lua");
        assert!(rest.is_empty());
        let ending_of = |run: Started| {
            let known = run.known.clone();
            assert!(known.is_some(), "a start without Lua knows the record");
            let fields = run.into_fields();
            let text = |f: Run| String::from_utf8_lossy(&fields[f as usize]).into_owned();
            let mut ending = ending(queue, &text(Run::TaskId), &fields, &text(Run::Token), result.clone());
            ending.known = known;
            ending
        };
        runs.into_iter().map(ending_of).collect()
    }

    /// The endings, succeeded with the payload as result, of the attempts `replies` (a claim's,
    /// unpacked) started.
    fn endings_of(queue: &Queue, replies: &[Vec<Vec<u8>>]) -> Vec<Ending> {
        let text = |reply: &[Vec<u8>], f: Run| String::from_utf8_lossy(&reply[f as usize]).into_owned();
        let ending_of = |r: &Vec<Vec<u8>>| {
            ending(queue, &text(r, Run::TaskId), r, &text(r, Run::Token), ResultBytes::Payload)
        };
        replies.iter().map(ending_of).collect()
    }

    /// Everything the end of `ending`'s attempt leaves in Redis: its record, how long its keys
    /// are kept, its result key, whether its entry is still pending, and its events.
    async fn written(queue: &Queue, ending: &Ending) -> Vec<String> {
        let id = Uuid::parse_str(&ending.task_id).unwrap();
        let mut conn = queue.conn.clone();
        let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&id)).await.unwrap();
        let mut lines: Vec<String> = record.iter().map(|(f, v)| anonymous(&format!("{f}={v}"), id)).collect();
        lines.sort();
        let mut keys = vec![("record", queue.keys.task(&id)), ("payload", queue.keys.payload(&id))];
        keys.push(("result", queue.keys.result(&id)));
        if !ending.idempotency_key.is_empty() {
            keys.push(("idempotency key", ending.idempotency_key.clone()));
        }
        for (name, key) in keys {
            let ms: i64 = conn.pttl(&key).await.unwrap();
            // Kept the retention from the end (what is left of it, to the second), or for good.
            let kept = if ms > 0 { format!("{} s", seconds_left(ms)) } else { ms.to_string() };
            let value: Option<Vec<u8>> = match name {
                "result" => conn.get(&key).await.unwrap(),
                _ => None,
            };
            lines.push(format!("{name}: kept {kept}, {value:?}"));
        }
        let pending: redis::streams::StreamPendingCountReply =
            conn.xpending_count(&ending.stream, GROUP, "-", "+", 100).await.unwrap();
        let still = pending.ids.iter().any(|p| p.id == ending.entry_id);
        lines.push(format!("entry pending: {still}"));
        let events: redis::streams::StreamRangeReply = conn.xrange_all(queue.keys.events()).await.unwrap();
        for entry in &events.ids {
            for (field, value) in &entry.map {
                let value: String = redis::from_redis_value(value.clone()).unwrap();
                for event in value.split('\u{1e}').filter(|e| e.contains(&id.to_string())) {
                    lines.push(anonymous(&format!("{field}: {event}"), id));
                }
            }
        }
        lines
    }

    /// A TTL in ms (`PTTL`) as the whole seconds it began as: the retention a key was given.
    fn seconds_left(ms: i64) -> i64 {
        (ms + 999) / 1000
    }

    #[test]
    fn the_read_finds_the_payload_where_it_looks_for_it() {
        assert_eq!(READ[PAYLOAD_AT], record::PAYLOAD);
        let mut fields: Vec<Option<String>> = READ.iter().map(|f| Some(f.to_string())).collect();
        assert!(Record::of(fields.clone(), Holders::Process).started.payload_in_record);
        fields[PAYLOAD_AT] = None;
        let at = READ.iter().position(|f| *f == record::OPTIONS).unwrap();
        let options = [(record::PAYLOAD_REF, "owner"), (record::WORKFLOW, "flow"), (record::SESSION, "s")];
        fields[at] = Some(record::Options::write(options));
        let record = Record::of(fields.clone(), Holders::Pulled);
        assert!(!record.started.payload_in_record && !record.options_apart);
        assert_eq!(
            (record.started.payload_ref.as_str(), record.started.workflow.as_str()),
            ("owner", "flow")
        );
        assert_eq!(record.pulled.unwrap().session, "s");
        // A record stored before its options were kept together is the script's to end.
        fields[at] = None;
        assert!(Record::of(fields, Holders::Process).options_apart);
    }

    /// A succeeded task's payload under a key of its own is kept `--payload-retention` (30 s in
    /// the tests' queue), or deleted as the task ends when that is zero, the same on both ways.
    /// A payload that is the result is kept as the result, and a failed task's as a dead letter.
    #[tokio::test]
    async fn a_succeeded_tasks_payload_is_kept_the_payload_retention_on_both_ways() {
        let (_redis, queue) = private_queue().await;
        let mut settings = (*queue.settings).clone();
        settings.payload_retention = Duration::ZERO;
        // The same queue, ended by a process with `--payload-retention 0s`.
        let releasing = Queue(Arc::new(QueueParts { settings: Arc::new(settings), ..(*queue.0).clone() }));
        let mut conn = queue.conn.clone();
        let small = || ResultBytes::New(Bytes::from_static(b"{\"n\": 3}"));
        // Not text, so under a key of its own however small.
        let stored = || echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe]));
        // (the queue, the result, the seconds the payload is kept: None when it is gone)
        let cases = [
            (&queue, small(), Some(30)),
            (&releasing, small(), None),
            (&releasing, ResultBytes::Payload, Some(60)),
        ];
        let plain = PlainEnds::default();
        for (q, result, kept) in cases {
            let (by_script, by_plain) = (stored(), stored());
            let script_end = leased(q, &by_script, result.clone()).await;
            let finished =
                q.end_attempts(std::slice::from_ref(&script_end), Holders::Process, 0, WORKER, "*");
            assert_eq!(finished.await.unwrap().ended[0].applied, Applied::AsReported);
            let plain_end = leased(q, &by_plain, result).await;
            let ended = plain.end(q, std::slice::from_ref(&plain_end), Holders::Process, WORKER).await;
            assert_eq!(ended.expect("the end goes plain")[0].applied, Applied::AsReported);
            for task in [&by_script, &by_plain] {
                let payload_ms: i64 = conn.pttl(queue.keys.payload(&task.id)).await.unwrap();
                let payload_s = (payload_ms > 0).then(|| seconds_left(payload_ms));
                assert_eq!(payload_s, kept, "{kept:?}: {payload_ms} ms");
                let record_ms: i64 = conn.pttl(queue.keys.task(&task.id)).await.unwrap();
                assert_eq!(seconds_left(record_ms), 60, "the record is kept the retention");
            }
        }
        // A failed task keeps its payload with its dead letter, whatever the payload retention.
        let failing = stored();
        let mut failed = leased(&releasing, &failing, ResultBytes::Payload).await;
        failed.outcome = "failed";
        failed.error = "it broke".into();
        failed.reason = crate::queue::DeadReason::NonRetryable.as_str();
        let finished =
            releasing.end_attempts(std::slice::from_ref(&failed), Holders::Process, 0, WORKER, "*");
        assert_eq!(finished.await.unwrap().ended[0].applied, Applied::AsReported);
        let payload_ms: i64 = conn.pttl(queue.keys.payload(&failing.id)).await.unwrap();
        assert_eq!(seconds_left(payload_ms), 120, "kept the dead-letter retention");
    }

    /// An end finds a small payload kept in the record by its presence: the enqueue writes no
    /// `payload_inline` flag beside it (the one versions before the twenty-ninth step read), and
    /// an `echo` ends as reported on both ways, its result the payload.
    #[tokio::test]
    async fn a_payload_in_the_record_is_found_without_the_flag_earlier_versions_read() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let plain = PlainEnds::default();
        let payload: &'static [u8] = b"{\"text\": \"kept in the record\"}";
        for by_script in [true, false] {
            let task = echo_task(Bytes::from_static(payload));
            let end = leased(&queue, &task, ResultBytes::Payload).await;
            let fields: Vec<String> = conn.hkeys(queue.keys.task(&task.id)).await.unwrap();
            assert!(fields.iter().any(|f| f == record::PAYLOAD), "kept in the record: {fields:?}");
            assert!(!fields.iter().any(|f| f == "payload_inline"), "no flag beside it: {fields:?}");
            let ended = std::slice::from_ref(&end);
            let applied = match by_script {
                true => {
                    queue.end_attempts(ended, Holders::Process, 0, WORKER, "*").await.unwrap().ended[0]
                        .applied
                }
                false => {
                    plain.end(&queue, ended, Holders::Process, WORKER).await.expect("the end goes plain")[0]
                        .applied
                }
            };
            assert_eq!(applied, Applied::AsReported, "by the script: {by_script}");
            let record = queue.store().get(&task.id).await.unwrap().expect("the record");
            assert_eq!(queue.store().result(&record).await.unwrap().expect("its result").bytes, payload);
        }
    }

    #[tokio::test]
    async fn a_plain_end_writes_what_the_script_writes() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let text = |bytes: &'static [u8]| ResultBytes::New(Bytes::from_static(bytes));
        let with_options = || {
            let mut task = echo_task(Bytes::from_static(b"\"with options\""));
            task.workflow = Some(WorkflowStep { workflow: Uuid::now_v7(), step: "fetch".into() });
            task.max_attempts = 3;
            task
        };
        // (the task, its result, whether its record says an earlier attempt failed)
        let variants = [
            // A small text payload, kept in the record, and the result is the payload.
            (echo_task(Bytes::from_static(b"{\"text\": \"hello\"}")), ResultBytes::Payload, false),
            // A payload under a key of its own, the result the payload.
            (echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])), ResultBytes::Payload, false),
            // A small text result, kept in the record.
            (echo_task(Bytes::from_static(b"p")), text(b"{\"rows\": 3}"), false),
            // A result that is not text: under a key of its own.
            (echo_task(Bytes::from_static(b"p")), text(&[0xff, 0xfe]), false),
            // A payload under a key of its own and a result of its own: the payload is kept the
            // payload retention.
            (echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])), text(b"{\"n\": 3}"), false),
            // A large result: staged for the script, set by the transaction.
            (
                echo_task(Bytes::from_static(b"p")),
                ResultBytes::New(Bytes::from(vec![b'r'; super::super::INLINE_RESULT_MAX + 1])),
                false,
            ),
            // A workflow's step, on its second attempt (the first's error and next run cleared).
            (with_options(), text(b"done"), true),
        ];
        let plain = PlainEnds::default();
        let mut ends = 0;
        for (variant, result, second_attempt) in variants {
            let (mut by_script, mut by_plain) = (variant.clone(), variant);
            by_script.id = Uuid::now_v7();
            by_plain.id = Uuid::now_v7();
            for task in [&mut by_script, &mut by_plain] {
                claim_idempotency_key(&queue, task, 600).await;
            }
            let script_end = leased(&queue, &by_script, result.clone()).await;
            let plain_end = leased(&queue, &by_plain, result).await;
            // Started a minute after its entry joined the stream: a wait of 60 s, a run of nothing.
            for attempt in [&script_end, &plain_end] {
                let joined: u64 = attempt.entry_id.split('-').next().unwrap().parse().unwrap();
                let id = Uuid::parse_str(&attempt.task_id).unwrap();
                let _: () =
                    conn.hset(queue.keys.task(&id), "attempt_started", joined + 60_000).await.unwrap();
            }
            if second_attempt {
                for task in [&by_script, &by_plain] {
                    // Taken over from a holder that stopped: no wait sample.
                    let fields = [
                        ("attempts", "2"),
                        ("error", "an earlier failure"),
                        ("next_run", "1700000000000"),
                        ("waited", NOT_SAMPLED),
                    ];
                    let _: () = conn.hset_multiple(queue.keys.task(&task.id), &fields).await.unwrap();
                }
            }
            assert!(plain_end.may_go_plain());
            let finished =
                queue.end_attempts(std::slice::from_ref(&script_end), Holders::Process, 0, WORKER, "*").await;
            assert_eq!(finished.unwrap().ended[0].applied, Applied::AsReported);
            let before = fcalls(&queue).await;
            let ended = plain.end(&queue, std::slice::from_ref(&plain_end), Holders::Process, WORKER).await;
            let ended = ended.expect("the end needs no decision: it goes plain");
            assert_eq!(ended[0].applied, Applied::AsReported);
            assert_eq!(fcalls(&queue).await, before, "no function ran");
            ends += 2;
            let (script_wrote, plain_wrote) =
                (written(&queue, &script_end).await, written(&queue, &plain_end).await);
            assert!(script_wrote.contains(&"status=succeeded".to_string()), "{script_wrote:?}");
            assert!(
                script_wrote.iter().any(|l| l.starts_with("e: succeeded\u{1f}ID\u{1f}echo")),
                "{script_wrote:?}"
            );
            assert_eq!(plain_wrote, script_wrote);
            // Nothing empty is left behind: a second attempt's end drops the first's failure.
            let left = |field: &str| script_wrote.iter().any(|l| l.starts_with(&format!("{field}=")));
            assert!(!left("error") && !left("next_run") && !left("lease"), "{script_wrote:?}");
            assert!(script_wrote.iter().all(|l| !l.ends_with('=')), "{script_wrote:?}");
        }
        // Both ways counted every end in the stats, each with its run sample and, but the two
        // taken over, its wait sample, in their bins.
        queue.flush_counts().await.unwrap();
        let keys: Vec<String> = conn.keys(format!("{}:stats:s:*", queue.keys.base())).await.unwrap();
        let (mut succeeded, mut samples) = (0, HashMap::<String, u64>::new());
        for key in keys {
            let fields: HashMap<String, u64> = conn.hgetall(&key).await.unwrap();
            for (field, n) in fields {
                match field.chars().next() {
                    Some('w' | 'r') => *samples.entry(field).or_default() += n,
                    _ if field.ends_with('s') => succeeded += n,
                    _ => {}
                }
            }
        }
        assert_eq!(succeeded, ends);
        let bins = HashMap::from([
            (format!("w{}", latency_bin(60_000)), ends - 2),
            (format!("r{}", latency_bin(0)), ends),
        ]);
        assert_eq!(samples, bins);
        let tally: HashMap<String, u64> = conn.hgetall(queue.keys.ended()).await.unwrap();
        assert_eq!(tally.values().sum::<u64>(), ends, "the tally of ends per second");
    }

    /// An end whose lease a start without Lua took reads only the record's lease: the start knew
    /// the rest (`Known`), and what it knew is what a read of the whole record finds. It writes
    /// what an end that reads the whole record writes, and a lease lost meanwhile still declines.
    #[tokio::test]
    async fn an_end_after_a_start_without_lua_reads_only_its_lease() {
        let (_redis, queue) = private_queue().await;
        let text = |bytes: &'static [u8]| ResultBytes::New(Bytes::from_static(bytes));
        let step = || {
            let mut task = echo_task(Bytes::from_static(b"\"a step\""));
            task.workflow = Some(WorkflowStep { workflow: Uuid::now_v7(), step: "fetch".into() });
            task
        };
        let variants = [
            // A small text payload, in the record, and the result is the payload.
            (echo_task(Bytes::from_static(b"{\"text\": \"hello\"}")), ResultBytes::Payload),
            // A payload under a key of its own (whose length the end still reads), the result
            // the payload.
            (echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])), ResultBytes::Payload),
            // A workflow's step, with a result of its own.
            (step(), text(b"done")),
        ];
        let plain = PlainEnds::default();
        let mut conn = queue.conn.clone();
        for (variant, result) in variants {
            let twins = [variant.clone(), NewTask { id: Uuid::now_v7(), ..variant }];
            let mut endings = started_plain(&queue, &twins, result).await;
            let (knowing, mut reading) = (endings.remove(0), endings.remove(0));
            let known = knowing.known.clone().unwrap();
            let id = Uuid::parse_str(&knowing.task_id).unwrap();
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(queue.keys.task(&id))
                .arg(&READ[..])
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(Record::known(knowing.token.clone(), &known), Record::of(fields, Holders::Process));
            reading.known = None;

            let before = (calls(&queue, "hmget").await, calls(&queue, "strlen").await);
            let ended = plain.end(&queue, std::slice::from_ref(&knowing), Holders::Process, WORKER).await;
            assert_eq!(ended.expect("the end goes plain")[0].applied, Applied::AsReported);
            let strlen =
                u64::from(matches!(knowing.result, ResultPlace::Payload) && !known.payload_in_record);
            let after = (calls(&queue, "hmget").await, calls(&queue, "strlen").await);
            assert_eq!(after, (before.0, before.1 + strlen), "the record's lease, and no other field, read");
            let ended = plain.end(&queue, std::slice::from_ref(&reading), Holders::Process, WORKER).await;
            assert_eq!(ended.expect("the end goes plain")[0].applied, Applied::AsReported);
            assert!(calls(&queue, "hmget").await > after.0, "the whole record read");
            let (knowing_wrote, reading_wrote) =
                (written(&queue, &knowing).await, written(&queue, &reading).await);
            assert!(knowing_wrote.contains(&"status=succeeded".to_string()), "{knowing_wrote:?}");
            assert_eq!(knowing_wrote, reading_wrote);
        }

        let mut lost =
            started_plain(&queue, &[echo_task(Bytes::from_static(b"p"))], ResultBytes::Payload).await;
        let mut lost = lost.remove(0);
        lost.token = "a-lost-lease:0".into();
        let before = written(&queue, &lost).await;
        let declined = plain.end(&queue, std::slice::from_ref(&lost), Holders::Process, WORKER).await;
        assert!(declined.is_none());
        assert_eq!(written(&queue, &lost).await, before);
        assert!(before.contains(&"status=running".to_string()), "{before:?}");
    }

    /// An attempt whose lease is no longer its holder's, or whose result is a payload that
    /// expired, needs the script to decide: the plain way declines, having written nothing, and
    /// lets its watch go (a record changed after the decline does not void the next end).
    #[tokio::test]
    async fn a_lost_lease_or_an_expired_payload_declines_and_changes_nothing() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let plain = PlainEnds::default();
        let task = echo_task(Bytes::from_static(b"p"));
        let mut attempt = leased(&queue, &task, ResultBytes::Payload).await;
        let token = std::mem::replace(&mut attempt.token, "a-lost-lease:0".into());
        let before = written(&queue, &attempt).await;
        let declined = plain.end(&queue, std::slice::from_ref(&attempt), Holders::Process, WORKER).await;
        assert!(declined.is_none());
        assert_eq!(written(&queue, &attempt).await, before);
        assert!(before.contains(&"status=running".to_string()), "{before:?}");
        let _: () = conn.hset(queue.keys.task(&task.id), "progress", "50").await.unwrap();
        attempt.token = token;
        let ended = plain.end(&queue, std::slice::from_ref(&attempt), Holders::Process, WORKER).await;
        assert!(ended.is_some(), "the watch was let go");
        let status: String = conn.hget(queue.keys.task(&task.id), "status").await.unwrap();
        assert_eq!(status, "succeeded");

        // A payload under a key of its own, gone before the end.
        let task = echo_task(Bytes::from_static(&[0xff, 0x00]));
        let attempt = leased(&queue, &task, ResultBytes::Payload).await;
        let _: () = conn.del(queue.keys.payload(&task.id)).await.unwrap();
        let declined = plain.end(&queue, std::slice::from_ref(&attempt), Holders::Process, WORKER).await;
        assert!(declined.is_none());
        let status: String = conn.hget(queue.keys.task(&task.id), "status").await.unwrap();
        assert_eq!(status, "running");
    }

    /// The pulling worker the tests' pulled leases name.
    const PULLER: &str = "puller-7";

    /// Enqueues `task` and pulls its lease (as a worker over HTTP takes it) as `PULLER`.
    async fn pulled(queue: &Queue, task: &NewTask) -> PullToken {
        queue.enqueue(task).await.unwrap();
        let mut pulled = queue.pull(PULLER, "*", 1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(pulled.len(), 1);
        pulled.remove(0).token
    }

    /// The ending of the pulled lease `token`'s attempt, succeeded with `result`.
    fn pulled_ending(queue: &Queue, token: &PullToken, result: ResultBytes) -> Ending {
        let outcome = Outcome::Succeeded { result, content_type: "application/json".into() };
        queue.pulled_ending(token, outcome, tokio::sync::oneshot::channel().0)
    }

    /// A pulled lease's end, which knows neither its task's session nor its idempotency key, goes
    /// without Lua as a worker process's does, and leaves what the script leaves: the record
    /// (which tells its first attempt, naming the worker that pulled it), the kept keys, the
    /// idempotency key the record names kept as long, the entry acknowledged, the events; and it
    /// names that worker for the registry, as the script does. `Queue::end_pulled` takes the
    /// plain way.
    #[tokio::test]
    async fn a_pulled_lease_ends_without_lua_as_the_script_ends_it() {
        let (_redis, queue) = private_queue().await;
        let plain = PlainEnds::default();
        let variants = [
            // A small text payload, kept in the record, and the result is the payload.
            (echo_task(Bytes::from_static(b"{\"text\": \"hello\"}")), ResultBytes::Payload),
            // A payload under a key of its own, a small text result kept in the record.
            (
                echo_task(Bytes::from_static(&[0xff, 0x00, 0xfe])),
                ResultBytes::New(Bytes::from_static(b"{\"rows\": 3}")),
            ),
        ];
        for (variant, result) in variants {
            let (mut by_script, mut by_plain) = (variant.clone(), variant);
            by_script.id = Uuid::now_v7();
            by_plain.id = Uuid::now_v7();
            for task in [&mut by_script, &mut by_plain] {
                claim_idempotency_key(&queue, task, 600).await;
            }
            let (script_token, plain_token) =
                (pulled(&queue, &by_script).await, pulled(&queue, &by_plain).await);
            let mut script_end = pulled_ending(&queue, &script_token, result.clone());
            let mut plain_end = pulled_ending(&queue, &plain_token, result);
            assert!(plain_end.may_go_plain());
            let finished =
                queue.end_attempts(std::slice::from_ref(&script_end), Holders::Pulled, 0, "pull", "").await;
            let finished = finished.unwrap();
            assert_eq!(
                (finished.ended[0].applied, finished.ended[0].worker.as_str()),
                (Applied::AsReported, PULLER)
            );
            let before = fcalls(&queue).await;
            let ended = plain.end(&queue, std::slice::from_ref(&plain_end), Holders::Pulled, "").await;
            let ended = ended.expect("the end needs no decision: it goes plain");
            assert_eq!((ended[0].applied, ended[0].worker.as_str()), (Applied::AsReported, PULLER));
            assert_eq!(fcalls(&queue).await, before, "no function ran");
            // The endings knew no idempotency key; `written` looks at the ones the records name.
            script_end.idempotency_key = by_script.idempotency_key.clone().unwrap();
            plain_end.idempotency_key = by_plain.idempotency_key.clone().unwrap();
            let (script_wrote, plain_wrote) =
                (written(&queue, &script_end).await, written(&queue, &plain_end).await);
            assert!(script_wrote.contains(&"status=succeeded".to_string()), "{script_wrote:?}");
            assert!(script_wrote.contains(&format!("worker={PULLER}")), "{script_wrote:?}");
            assert!(
                script_wrote.iter().any(|l| l.starts_with("idempotency key: kept 60 s")),
                "{script_wrote:?}"
            );
            assert_eq!(plain_wrote, script_wrote);
            // Nothing empty is left behind, and nothing of the lease.
            assert!(
                script_wrote.iter().all(|l| !l.ends_with('=') && !l.starts_with("lease=")),
                "{script_wrote:?}"
            );
        }
        let token = pulled(&queue, &echo_task(Bytes::from_static(b"p"))).await;
        let before = fcalls(&queue).await;
        let outcome = Outcome::Succeeded { result: ResultBytes::Payload, content_type: "text/plain".into() };
        let ended = queue.end_pulled(&token, outcome).await.unwrap();
        assert_eq!((ended.applied, ended.worker.as_str()), (Applied::AsReported, PULLER));
        assert_eq!(fcalls(&queue).await, before, "end_pulled went without Lua");
    }

    /// Two ends of one pulled lease in one batch (a `complete` sent again while the first was on
    /// its way): both would read the lease as held, so the plain way declines, having written
    /// nothing, and the script ends the first and refuses the second.
    #[tokio::test]
    async fn a_batch_that_ends_a_task_twice_declines() {
        let (_redis, queue) = private_queue().await;
        let plain = PlainEnds::default();
        let token = pulled(&queue, &echo_task(Bytes::from_static(b"p"))).await;
        let twice = [
            pulled_ending(&queue, &token, ResultBytes::Payload),
            pulled_ending(&queue, &token, ResultBytes::New(Bytes::from_static(b"{\"again\": 1}"))),
        ];
        let before = written(&queue, &twice[0]).await;
        assert!(plain.end(&queue, &twice, Holders::Pulled, "").await.is_none());
        assert_eq!(written(&queue, &twice[0]).await, before, "nothing written");
        let finished = queue.end_attempts(&twice, Holders::Pulled, 0, "pull", "").await.unwrap();
        let applied: Vec<Applied> = finished.ended.iter().map(|ended| ended.applied).collect();
        assert_eq!(applied, [Applied::AsReported, Applied::Lost]);
    }

    /// A pulled lease's end needs the script when its task's cancel was asked for while it ran (it
    /// ends cancelled, whatever its holder reports), the task has a session to leave, or its
    /// record keeps its options as fields of their own (stored before they were kept together):
    /// the plain way declines, having written nothing, and `Queue::end_pulled` has the script
    /// decide.
    #[tokio::test]
    async fn a_pulled_end_with_a_cancel_asked_or_a_session_declines() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let plain = PlainEnds::default();
        let in_session = record::Options::write([(record::SESSION, "s-1")]);
        let changes = [
            (record::CANCEL, Some("1")),
            (record::OPTIONS, Some(in_session.as_str())),
            (record::OPTIONS, None),
        ];
        for (field, value) in changes {
            let task = echo_task(Bytes::from_static(b"p"));
            let token = pulled(&queue, &task).await;
            let _: () = match value {
                Some(value) => conn.hset(queue.keys.task(&task.id), field, value).await.unwrap(),
                None => conn.hdel(queue.keys.task(&task.id), field).await.unwrap(),
            };
            let ending = pulled_ending(&queue, &token, ResultBytes::Payload);
            let before = written(&queue, &ending).await;
            assert!(before.contains(&"status=running".to_string()), "{before:?}");
            let declined = plain.end(&queue, std::slice::from_ref(&ending), Holders::Pulled, "").await;
            assert!(declined.is_none(), "{field} {value:?}");
            assert_eq!(written(&queue, &ending).await, before, "{field} {value:?}");
            if field == record::CANCEL {
                let outcome =
                    Outcome::Succeeded { result: ResultBytes::Payload, content_type: "text/plain".into() };
                let ended = queue.end_pulled(&token, outcome).await.unwrap();
                assert_eq!(ended.applied, Applied::Cancelled);
                assert!(written(&queue, &ending).await.contains(&"status=cancelled".to_string()));
            }
        }
    }

    /// A Redis user that may not run a transaction (here, no `MULTI`) never gets the end's
    /// commands: the connection's first use finds out, nothing is written, and the plain way
    /// rests while the script ends the batch.
    #[tokio::test]
    async fn a_user_refused_transactions_leaves_the_ends_to_the_script() {
        let ((redis, _dir), queue) = private_queue().await;
        let limited = without_multi(&redis, &queue).await;
        let task = echo_task(Bytes::from_static(b"p"));
        let attempt = leased(&queue, &task, ResultBytes::Payload).await;
        let plain = PlainEnds::default();
        let before = written(&queue, &attempt).await;
        for _ in 0..2 {
            assert!(
                plain.end(&limited, std::slice::from_ref(&attempt), Holders::Process, WORKER).await.is_none()
            );
        }
        assert_eq!(written(&queue, &attempt).await, before, "nothing of the end ran");
        let finished =
            queue.end_attempts(std::slice::from_ref(&attempt), Holders::Process, 0, WORKER, "*").await;
        assert_eq!(finished.unwrap().ended[0].applied, Applied::AsReported);
    }

    /// The `echo` lane of `queue`, as a round reads it.
    fn echo_lane(queue: &Queue) -> Vec<(String, [String; 3])> {
        vec![("echo".to_string(), queue.keys.lane("echo"))]
    }

    /// The status of task `id`'s record.
    async fn status_of(queue: &Queue, id: &str) -> String {
        let id = Uuid::parse_str(id).unwrap();
        queue.conn.clone().hget(queue.keys.task(&id), "status").await.unwrap()
    }

    /// What the group has handed out of `queue`'s normal `echo` stream and not had back.
    async fn pending_summary(queue: &Queue) -> redis::streams::StreamPendingReply {
        queue.conn.clone().xpending(&queue.keys.lane("echo")[1], GROUP).await.unwrap()
    }

    /// How many entries of `queue`'s normal `echo` stream the group has handed out and not had
    /// back.
    async fn pending(queue: &Queue) -> usize {
        pending_summary(queue).await.count()
    }

    #[tokio::test]
    async fn a_round_ends_and_starts_without_lua() {
        let (_redis, queue) = private_queue().await;
        let tasks: Vec<NewTask> = (0..6).map(|i| echo_task(Bytes::from(format!("{{\"n\": {i}}}")))).collect();
        for task in &tasks {
            queue.enqueue(task).await.unwrap();
        }
        let replies = unpacked(queue.claim(WORKER, "*", 3, &[]).await.unwrap().0);
        let endings = endings_of(&queue, &replies);
        let plain = PlainEnds::default();
        let before = fcalls(&queue).await;
        let round = plain.round(&queue, &endings, WORKER, &echo_lane(&queue), 3).await;
        let Some(Ok(Round { ended, runs, rest })) = round else { panic!("the round goes plain") };
        assert_eq!(fcalls(&queue).await, before, "no function ran");
        assert!(ended.iter().all(|e| e.applied == Applied::AsReported));
        assert!(rest.is_empty());
        for ending in &endings {
            assert_eq!(status_of(&queue, &ending.task_id).await, "succeeded");
        }
        // The next three tasks, in the order they joined, each started for this worker with the
        // lease its start holds, its payload with it.
        assert_eq!(runs.len(), 3);
        let mut conn = queue.conn.clone();
        for (run, task) in runs.into_iter().zip(&tasks[3..]) {
            let run = run.into_fields();
            let text = |f: Run| String::from_utf8_lossy(&run[f as usize]).into_owned();
            assert_eq!(text(Run::TaskId), task.id.to_string());
            assert_eq!(text(Run::Attempt), "1");
            assert_eq!(run[Run::Payload as usize], task.payload.to_vec());
            let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&task.id)).await.unwrap();
            assert_eq!(record["status"], "running");
            assert_eq!(record["lease"], text(Run::Token));
            assert_eq!(record["worker"], WORKER);
        }
        // The ended entries acknowledged, the started ones pending; the events of both, the ends'
        // first.
        assert_eq!(pending(&queue).await, 3);
        let events: redis::streams::StreamRangeReply = conn.xrange_all(queue.keys.events()).await.unwrap();
        let last: String = events.ids.last().unwrap().get("e").unwrap();
        let names: Vec<&str> = last.split('\u{1e}').map(|e| e.split('\u{1f}').next().unwrap()).collect();
        assert_eq!(names, ["succeeded", "succeeded", "succeeded", "running", "running", "running"]);
    }

    /// A queue's rounds look at its limits before they read entries (the first round, and once a
    /// second while it has them): a paused or limited queue's entries are not read to be handed
    /// back to the end of their streams. Limits set after the look are found by the round's
    /// watched read, which then leaves the entries it read to the script.
    #[tokio::test]
    async fn a_round_on_a_limited_queue_leaves_everything_to_the_script() {
        let (_redis, queue) = private_queue().await;
        let tasks: Vec<NewTask> = (0..6).map(|_| echo_task(Bytes::from_static(b"p"))).collect();
        for task in &tasks[..4] {
            queue.enqueue(task).await.unwrap();
        }
        let replies = unpacked(queue.claim(WORKER, "*", 2, &[]).await.unwrap().0);
        let endings = endings_of(&queue, &replies);
        let _: () = queue.conn.clone().hset(queue.keys.settings(), "concurrency", 100).await.unwrap();
        let plain = PlainEnds::default();
        let lane = echo_lane(&queue);
        let stream_before = entries(&queue).await;
        // Looked at first, and again once the while is over: nothing read, nothing moved. Within
        // the while the round does not look (the mark stays as it was); after it, the look marks
        // the queue anew.
        assert!(plain.round(&queue, &endings, WORKER, &lane, 2).await.is_none());
        let Some(Mode::LimitedSince(looked)) = plain.mode_of(&queue) else { panic!("marked as limited") };
        assert!(plain.round(&queue, &endings, WORKER, &lane, 2).await.is_none());
        assert_eq!(plain.mode_of(&queue), Some(Mode::LimitedSince(looked)), "no look within the while");
        let long_ago = Instant::now() - SCRIPTED_FOR;
        plain.set_mode(&queue, Mode::LimitedSince(long_ago));
        assert!(plain.round(&queue, &endings, WORKER, &lane, 2).await.is_none());
        let Some(Mode::LimitedSince(looked)) = plain.mode_of(&queue) else { panic!("still limited") };
        assert!(looked > long_ago, "looked at again");
        assert_eq!(pending(&queue).await, 2, "only the two running");
        assert_eq!(entries(&queue).await, stream_before, "no entry read and handed back");
        // Limits set after a look: the round reads, its watched read finds them, and nothing is
        // ended or started.
        plain.set_mode(&queue, Mode::Plain);
        let Some(Err(given)) = plain.round(&queue, &endings, WORKER, &lane, 2).await else {
            panic!("a queue with limits is the script's")
        };
        assert_eq!(given.len(), 2);
        assert_eq!(pending(&queue).await, 4);
        for ending in &endings {
            assert_eq!(status_of(&queue, &ending.task_id).await, "running");
        }
        for task in &tasks[2..4] {
            assert_eq!(status_of(&queue, &task.id.to_string()).await, "queued");
        }
        assert!(plain.round(&queue, &endings, WORKER, &lane, 2).await.is_none(), "for a while");
        // The script ends the batch and starts what the round read.
        let finished = queue.end_attempts(&endings, Holders::Process, 0, WORKER, "*").await.unwrap();
        assert!(finished.ended.iter().all(|e| e.applied == Applied::AsReported));
        let (claimed, _) = queue.claim(WORKER, "*", given.len(), &given).await.unwrap();
        let claimed = unpacked(claimed);
        assert_eq!(claimed.len(), 2);
        for task in &tasks[2..4] {
            assert_eq!(status_of(&queue, &task.id.to_string()).await, "running");
        }
        // The limits gone, the next look finds none and the round goes plain.
        let _: () = queue.conn.clone().hdel(queue.keys.settings(), "concurrency").await.unwrap();
        for task in &tasks[4..] {
            queue.enqueue(task).await.unwrap();
        }
        plain.set_mode(&queue, Mode::LimitedSince(Instant::now() - SCRIPTED_FOR));
        let endings = endings_of(&queue, &claimed);
        let Some(Ok(round)) = plain.round(&queue, &endings, WORKER, &lane, 2).await else {
            panic!("without limits the round goes plain")
        };
        assert_eq!(round.runs.len(), 2);
        assert_eq!(plain.mode_of(&queue), Some(Mode::Plain));
    }

    /// The ids of the entries in `queue`'s normal `echo` stream, oldest first.
    async fn entries(queue: &Queue) -> Vec<String> {
        let range: redis::streams::StreamRangeReply =
            queue.conn.clone().xrange_all(&queue.keys.lane("echo")[1]).await.unwrap();
        range.ids.into_iter().map(|entry| entry.id).collect()
    }

    #[tokio::test]
    async fn a_round_hands_back_what_it_cannot_start_and_leaves_the_next_to_the_script() {
        let (_redis, queue) = private_queue().await;
        // Two normal tasks, then two urgent ones: a round of two starts the urgent ones.
        let mut tasks: Vec<NewTask> = (0..5).map(|_| echo_task(Bytes::from_static(b"p"))).collect();
        for task in &mut tasks[3..] {
            task.priority = app::model::Priority::High;
        }
        queue.enqueue(&tasks[0]).await.unwrap();
        let replies = unpacked(queue.claim(WORKER, "*", 1, &[]).await.unwrap().0);
        let endings = endings_of(&queue, &replies);
        for task in &tasks[1..] {
            queue.enqueue(task).await.unwrap();
        }
        let plain = PlainEnds::default();
        let lane = echo_lane(&queue);
        let Some(Ok(round)) = plain.round(&queue, &endings, WORKER, &lane, 2).await else {
            panic!("the round goes plain")
        };
        let started: Vec<String> = round.runs.iter().map(|run| run.task_id.to_string()).collect();
        assert_eq!(started, [tasks[3].id.to_string(), tasks[4].id.to_string()]);
        // The normal ones went back to their stream, to be read again.
        assert_eq!(pending(&queue).await, 0);
        let length: usize = queue.conn.clone().xlen(&queue.keys.lane("echo")[1]).await.unwrap();
        assert_eq!(length, 5, "the first entry, two handed out and back, and the two again");
        for task in &tasks[1..3] {
            assert_eq!(status_of(&queue, &task.id.to_string()).await, "queued");
        }
        // Entries waited on two streams at once: the next rounds leave the reading to the script.
        let next = endings_of(&queue, &round.runs.into_iter().map(Started::into_fields).collect::<Vec<_>>());
        assert!(plain.round(&queue, &next, WORKER, &lane, 2).await.is_none());
    }

    #[tokio::test]
    async fn rounds_trim_their_streams_without_the_script() {
        let (_redis, queue) = private_queue().await;
        let tasks: Vec<NewTask> = (0..600).map(|_| echo_task(Bytes::from_static(b"p"))).collect();
        queue.enqueue_many(&tasks).await.unwrap();
        let plain = PlainEnds::default();
        let lane = echo_lane(&queue);
        let stream = &queue.keys.lane("echo")[1];
        let mut replies = unpacked(queue.claim(WORKER, "*", 50, &[]).await.unwrap().0);
        let before = fcalls(&queue).await;
        let (mut rounds, mut by_script, mut longest_after_trim) = (0, 0, 0);
        let mut trimmed = false;
        while !replies.is_empty() {
            let endings = endings_of(&queue, &replies);
            let due = plain.trims_due().contains(stream);
            match plain.round(&queue, &endings, WORKER, &lane, 50).await {
                Some(Ok(round)) => {
                    rounds += 1;
                    if due {
                        // What the group is done with that the stream still holds: the entries
                        // before the oldest pending.
                        trimmed = true;
                        let oldest = match pending_summary(&queue).await {
                            redis::streams::StreamPendingReply::Data(data) => data.start_id,
                            _ => "+".to_string(),
                        };
                        let done: redis::streams::StreamRangeReply =
                            queue.conn.clone().xrange(stream, "-", &oldest).await.unwrap();
                        longest_after_trim = longest_after_trim.max(done.ids.len());
                    }
                    replies = round.runs.into_iter().map(Started::into_fields).collect();
                }
                None => {
                    assert!(due, "a round that was not tried");
                    let finished =
                        queue.end_attempts(&endings, Holders::Process, 0, WORKER, "*").await.unwrap();
                    assert!(finished.ended.iter().all(|e| e.applied == Applied::AsReported));
                    plain.settled(&endings);
                    by_script += 1;
                    replies.clear();
                }
                Some(Err(_)) => panic!("a round needed the script"),
            }
        }
        assert_eq!(fcalls(&queue).await, before + by_script, "no function ran but the last end's");
        assert!(rounds >= 11, "{rounds} rounds went plain");
        assert!(trimmed, "a round found its stream due for a trim");
        // A trim frees whole nodes (of up to a hundred entries) before the oldest pending, so a
        // stream trimmed holds fewer of the entries the group is done with than the threshold
        // (untrimmed, they would be all the round's ends before it: 550 by the last).
        assert!(longest_after_trim < TRIM_ABOVE, "{longest_after_trim} entries done with after a trim");
        for task in &tasks {
            assert_eq!(status_of(&queue, &task.id.to_string()).await, "succeeded");
        }
    }

    /// A record changed between the read and the transaction (here, its cancel asked for) voids
    /// the transaction: nothing of the end is written, and the script decides.
    #[tokio::test]
    async fn a_record_changed_after_the_read_voids_the_transaction() {
        let (_redis, queue) = private_queue().await;
        let task = echo_task(Bytes::from_static(b"p"));
        let attempt = leased(&queue, &task, ResultBytes::Payload).await;
        let plain = PlainEnds::default();
        let mut own = queue.client.connect_blocking(Duration::ZERO).await.unwrap();
        let batch = std::slice::from_ref(&attempt);
        let read = read(&mut own, &queue, batch, Holders::Process, &[])
            .await
            .unwrap()
            .expect("the end needs no decision");
        assert_eq!(queue.cancel(&task.id).await.unwrap(), crate::queue::CancelOutcome::Cancelling);
        let before = written(&queue, &attempt).await;
        let streams = streams_of(batch);
        let voided = plain.commit(&mut own, &queue, batch, read, &streams, WORKER).await.unwrap();
        assert!(voided.is_none(), "the transaction is voided");
        assert_eq!(written(&queue, &attempt).await, before, "nothing of the end was written");
        // The script decides: the worker's own end stands (a cancel is for pulled leases).
        let finished = queue.end_attempts(batch, Holders::Process, 0, WORKER, "*").await.unwrap();
        assert_eq!(finished.ended[0].applied, Applied::AsReported);
    }

    /// Plain ends trim their streams: once one finds a stream past `TRIM_ABOVE`, the next trims it
    /// to the oldest entry pending; no end needs the script, and every task ends.
    #[tokio::test]
    async fn plain_ends_trim_their_streams() {
        let (_redis, queue) = private_queue().await;
        // Two streams: the normal one grows past the threshold, the urgent one does not.
        let tasks: Vec<NewTask> = (0..400)
            .map(|i| {
                let mut task = echo_task(Bytes::from_static(b"p"));
                if i % 4 == 0 {
                    task.priority = app::model::Priority::High;
                }
                task
            })
            .collect();
        for task in &tasks {
            queue.enqueue(task).await.unwrap();
        }
        let plain = PlainEnds::default();
        let normal = &queue.keys.lane("echo")[1];
        let mut replies = unpacked(queue.claim(WORKER, "*", 50, &[]).await.unwrap().0);
        let (mut ended, mut trims) = (0, 0);
        while !replies.is_empty() {
            let endings = endings_of(&queue, &replies);
            let due = plain.trims_due().contains(normal);
            let before: usize = queue.conn.clone().xlen(normal).await.unwrap();
            assert!(plain.end(&queue, &endings, Holders::Process, WORKER).await.is_some(), "a plain end");
            ended += endings.len();
            let after: usize = queue.conn.clone().xlen(normal).await.unwrap();
            if due && after < before {
                trims += 1;
            }
            replies = unpacked(queue.claim(WORKER, "*", 50, &[]).await.unwrap().0);
        }
        assert_eq!(ended, tasks.len());
        assert!(trims > 0, "a stream due for a trim was trimmed by a plain end");
        for stream in &queue.keys.lane("echo")[..2] {
            let length: usize = queue.conn.clone().xlen(stream).await.unwrap();
            assert!(length <= TRIM_ABOVE, "{stream}: {length} entries left");
        }
        for task in &tasks {
            let status: String = queue.conn.clone().hget(queue.keys.task(&task.id), "status").await.unwrap();
            assert_eq!(status, "succeeded");
        }
    }

    /// Of a batch's streams, the one past `TRIM_ABOVE` is the one due for a trim (each stream's
    /// length read from the transaction's replies, in its order).
    #[tokio::test]
    async fn the_stream_past_the_threshold_is_the_one_due_for_a_trim() {
        let (_redis, queue) = private_queue().await;
        for _ in 0..=TRIM_ABOVE {
            queue.enqueue(&echo_task(Bytes::from_static(b"p"))).await.unwrap();
        }
        let mut urgent = echo_task(Bytes::from_static(b"p"));
        urgent.priority = app::model::Priority::High;
        queue.enqueue(&urgent).await.unwrap();
        // The urgent entry first, then normal ones: two streams in one batch.
        let replies = unpacked(queue.claim(WORKER, "*", 3, &[]).await.unwrap().0);
        let batch = endings_of(&queue, &replies);
        let plain = PlainEnds::default();
        assert_eq!(streams_of(&batch).len(), 2);
        assert!(plain.end(&queue, &batch, Holders::Process, WORKER).await.is_some());
        let [high, normal, _] = queue.keys.lane("echo");
        assert_eq!(*plain.trims_due(), HashSet::from([normal.clone()]), "not {high}");
    }

    /// `stats::latency_bin` puts every duration in the bin ends.lua's `latency_bin` does, run by
    /// Redis's Lua: around each bin's bounds, and every ms of the first ten seconds.
    #[tokio::test]
    async fn the_bins_of_a_plain_end_are_the_scripts() {
        let (_redis, queue) = private_queue().await;
        let lua = include_str!("../ends.lua");
        let from = lua.find("local floor, log\n").expect("ends.lua defines latency_bin's math");
        let to = from + lua[from..].find("\nend\n").expect("latency_bin ends") + 5;
        let script = format!(
            "{}floor, log = math.floor, math.log\nlocal bins = {{}}\nfor i, ms in ipairs(ARGV) do bins[i] = latency_bin(tonumber(ms)) end\nreturn bins",
            &lua[from..to]
        );
        let mut durations: Vec<u64> = (0..10_000).collect();
        for bin in 0..120 {
            let bound = 2f64.powf(f64::from(bin) / 4.0) - 1.0;
            durations.extend([bound.floor() as u64, bound.ceil() as u64, bound.ceil() as u64 + 1]);
        }
        let bins: Vec<u32> = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(&durations)
            .query_async(&mut queue.conn.clone())
            .await
            .unwrap();
        for (ms, lua_bin) in durations.iter().zip(bins) {
            assert_eq!(latency_bin(*ms), lua_bin, "{ms} ms");
        }
    }
}
