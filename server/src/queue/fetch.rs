//! The fetch loop, which fills a worker process's free slots, and the claims it takes leases with.
//!
//! The finish loop (queue/finish.rs) takes the next leases for the slots that ended attempts free,
//! up to each queue's share (unless the fetch loop waits on every queue's empty lanes: then the
//! next entry wakes that wait); the *fetch loop* fills the slots that are left: it reads every
//! open queue's streams (a blocking read, which answers at once when entries wait), shares the
//! slots among the queues by weight (queue/serving.rs), and takes leases on what it read, without
//! Lua where it can (queue/lease/plain.rs). Where a read would not do as well, it claims through
//! the script instead (one per queue; `fetch` says when); and it takes over entries whose holder
//! stopped renewing them. On a Redis Cluster a read keeps to one slot, so it blocks on each
//! queue's streams on a connection of that queue's own, and wakes the others (`CLIENT UNBLOCK`)
//! as soon as one read brings entries.

use super::{
    Backoff, Blocked, GROUP, Queue,
    finish::Ending,
    lease::{Lease, Leasing, PlainLeases, Started, idle_for},
    serving::{DISCOVER_EVERY, Served, Serving},
};
use crate::redis_client::{Conn, client_command, read_streams};
use futures::StreamExt;
use redis::{
    RedisResult, Value,
    streams::{StreamAutoClaimReply, StreamId},
};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

/// The most entries one read takes (bounded further by free worker slots).
const FETCH_BATCH: usize = 64;
/// How long one blocking read waits before looking again (and noticing shutdown, new queues,
/// queues resumed).
const BLOCK: Duration = Duration::from_secs(1);

/// Where each lane stream's next look for expired leases starts: where the last one stopped.
/// A look (`XAUTOCLAIM`) scans at most ten pending entries for each it may take, so from the
/// start each time it would see only the oldest, and an entry expired behind ten live leases
/// would wait for them all to end. The fetch loop keeps it, as it keeps its readers.
#[derive(Debug, Default)]
struct ReclaimFrom(HashMap<String, String>);

impl ReclaimFrom {
    /// Adds to `pipe` a look at `stream` for entries idle longer than `lease`, as many as `count`,
    /// taken over by `consumer`.
    fn look(&self, pipe: &mut redis::Pipeline, stream: &str, consumer: &str, lease: Duration, count: usize) {
        let from = self.0.get(stream).map_or("0-0", String::as_str);
        pipe.cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(lease.as_millis() as u64)
            .arg(from)
            .arg("COUNT")
            .arg(count);
    }

    /// Notes where the look at `stream` that answered `reply` stopped (`0-0`: it reached the end,
    /// and the next starts again).
    fn looked(&mut self, stream: &str, reply: &StreamAutoClaimReply) {
        if reply.next_stream_id == "0-0" {
            self.0.remove(stream);
        } else {
            self.0.insert(stream.to_string(), reply.next_stream_id.clone());
        }
    }
}

/// An entry read from a lane, for a claim to take: the lane's kind, the stream's index there (0
/// most urgent), the entry.
pub(super) type Given = (String, usize, Entry);

/// An entry of a lane stream: its id, and the task it names (its `task` field, the one field
/// Courier writes there; `None` in an entry without one, or one deleted since it was read).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) task: Option<String>,
}

impl Entry {
    /// An entry of an `XAUTOCLAIM` reply.
    fn claimed(entry: StreamId) -> Entry {
        let task = entry.get("task");
        Entry { id: entry.id, task }
    }
}

/// The entries of an `XREADGROUP` reply, by their stream's key (none on a timeout). Read from
/// the reply as it came, where redis-rs's `StreamReadReply` copies the whole reply before it
/// reads it and keeps each entry's fields in a map of their own (3 % of a worker's instructions in
/// a drain: docs/benchmark-notes.md, "Twenty-third step"). An entry that is not an array of its
/// id and its fields is left out: it stays pending, and is taken over as any other.
pub(super) fn entries_read(reply: Value) -> Vec<(Vec<u8>, Vec<Entry>)> {
    read_streams(reply)
        .into_iter()
        .map(|(key, entries)| {
            let Value::Array(entries) = entries else { return (key, Vec::new()) };
            (key, entries.into_iter().filter_map(entry_of).collect())
        })
        .collect()
}

/// One entry of a stream read: `[id, [field, value, …]]` (the fields nil once deleted).
fn entry_of(entry: Value) -> Option<Entry> {
    let Value::Array(parts) = entry else { return None };
    let mut parts = parts.into_iter();
    let id = redis::from_redis_value(parts.next()?).ok()?;
    let mut task = None;
    if let Some(Value::Array(fields)) = parts.next() {
        let mut fields = fields.into_iter();
        while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&field, Value::BulkString(name) if name == b"task") {
                task = redis::from_redis_value(value).ok();
                break;
            }
        }
    }
    Some(Entry { id, task })
}

/// A claim's replies, and why the queue may start nothing more now (with when to look again).
pub(super) type Claimed = (Vec<Vec<Vec<u8>>>, Option<(Blocked, u64)>);

impl Leasing {
    /// Fills free slots with new entries as they come (`fetch`); now and then it takes over
    /// entries whose lease expired.
    pub(super) async fn fetch_loop(
        self,
        slots: Arc<Semaphore>,
        _leases: mpsc::Sender<Box<Lease>>,
        _endings: mpsc::Sender<Ending>,
    ) {
        let mut readers = Readers::default();
        // What the last read saw (none yet): see `fetch`.
        let mut last = LastRead::default();
        let mut backoff = Backoff::default();
        let lease = self.serving.lease();
        // Every quarter lease: an entry is taken over within 1.25 leases of its holder's last
        // renewal. Each look costs Redis a command per lane stream, idle or not.
        let reclaim_every = (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
        let mut last_reclaim: Option<Instant> = None;
        let mut reclaim_from = ReclaimFrom::default();
        loop {
            if !self.relay.on_duty() {
                // The worker before has room for what comes: this one stands by, and its finishes
                // meanwhile take no leases either (as while it reads), until that one stays full.
                let _standing_by = Reading::start(&self.reading);
                tokio::select! {
                    () = self.relay.turn() => {}
                    () = self.shutdown.cancelled() => break,
                }
            }
            let first = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the worker slots are never closed"),
                () = self.shutdown.cancelled() => break,
            };
            if self.shutdown.is_cancelled() {
                break;
            }
            let mut free = vec![first];
            while free.len() < FETCH_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => free.push(slot),
                    Err(_) => break,
                }
            }
            let reclaim = last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every);
            if reclaim {
                last_reclaim = Some(Instant::now());
            }
            let fetched = match self.serving.refresh().await {
                Ok(()) => {
                    let reclaim = reclaim.then_some(&mut reclaim_from);
                    self.fetch(&mut readers, &mut free, reclaim, &mut last).await
                }
                Err(e) => {
                    Serving::warn_refresh(&e);
                    Ok(Vec::new())
                }
            };
            match fetched {
                Ok(leases) => {
                    backoff.reset();
                    // With every slot taken, more may wait: the next worker is told.
                    self.relay.took(|| self.serving.full(0));
                    // Slots left over (fewer tasks than slots) are freed here.
                    drop(free);
                    self.deliver(leases).await;
                }
                Err(_) if self.shutdown.is_cancelled() => break,
                Err(e) => {
                    readers.reset();
                    if e.code() == Some("NOGROUP") {
                        // Redis lost a group (a restart without persistence): make them again.
                        let kinds = self.serving.kinds();
                        for served in self.serving.all() {
                            let _ = served.queue.open_lanes(&kinds).await;
                        }
                    }
                    let pause = backoff.next();
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "reading the queue failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        debug!("fetching stopped");
    }

    /// Leases for the `free` slots: entries whose lease expired (when `reclaim` says where each
    /// stream's look starts), else new
    /// entries, shared among the queues by weight. A read takes them: it answers at once when
    /// entries wait and blocks when none do, and its entries are leased without Lua where they
    /// can be, which costs Redis less than the claim script's call (docs/benchmark-notes.md,
    /// "Twenty-third step"). Where the script does better than a read, claims come first, and a
    /// read follows only when they leave slots free:
    /// - while a queue is left alone, or when the queues open or the count of queues left alone
    ///   changed since the `last` read: a claim tells whether a queue is paused or at a limit,
    ///   where a read would take its entries only to hand them back, to the end of their streams;
    /// - after a read handed entries back (more waited on several streams than fitted), until a
    ///   claim leaves slots free: the script reads the most urgent first, where each read takes
    ///   up to the free slots of every stream and gives back what does not fit;
    /// - after a read that brought all it asked of a stream (more may wait), where the read's
    ///   entries would go to the script anyway (on a cluster, or a queue found with limits): one
    ///   call then, not a read and a call.
    ///
    /// Otherwise neither an idle worker nor one woken by a few tasks at a time runs a claim that
    /// finds nothing (docs/benchmark-notes.md, "Seventh step").
    async fn fetch(
        &self,
        readers: &mut Readers,
        free: &mut Vec<OwnedSemaphorePermit>,
        reclaim: Option<&mut ReclaimFrom>,
        last: &mut LastRead,
    ) -> RedisResult<Vec<Lease>> {
        if let Some(from) = reclaim {
            let leases = self.take_over(free, from).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
        }
        let open: Vec<String> = self.serving.open().iter().map(|s| s.queue.name().to_string()).collect();
        let blocks = self.serving.blocks();
        let everything_open = open.len() == self.serving.all().len();
        let on_cluster = self.serving.client().is_cluster();
        let read_plain = open.iter().all(|name| readers.plain.takes(on_cluster, name));
        let claims_first = !everything_open
            || open != last.open
            || blocks != last.blocks
            || last.crowded
            || (last.full && !read_plain);
        if claims_first {
            let leases = self.claim_new(free).await?;
            if !free.is_empty() {
                // The claims found fewer entries than slots: none waits that a read would not get.
                last.crowded = false;
            }
            if !leases.is_empty() {
                return Ok(leases);
            }
        }
        let (leases, read) = self.wait_for_entries(readers, free).await?;
        *last = LastRead { open, blocks, full: read.full, crowded: last.crowded || read.handed_back };
        Ok(leases)
    }

    /// Takes over entries whose holder stopped renewing their lease (every lane this process
    /// reads is looked at in one go: a pipeline per queue), as many as there are free slots, the
    /// first streams looked at first.
    async fn take_over(
        &self,
        free: &mut Vec<OwnedSemaphorePermit>,
        from: &mut ReclaimFrom,
    ) -> RedisResult<Vec<Lease>> {
        let kinds = self.serving.kinds();
        let served = self.serving.all();
        let mut looked = Vec::new();
        let mut pipes = Vec::new();
        for (at, s) in served.iter().enumerate() {
            let mut pipe = redis::pipe();
            for kind in &kinds {
                for (index, stream) in s.queue.keys.lane(kind).into_iter().enumerate() {
                    let lease = s.queue.settings.lease;
                    from.look(&mut pipe, &stream, &self.consumer, lease, free.len());
                    looked.push((at, kind, index, stream));
                }
            }
            pipes.push(async move {
                pipe.query_async::<Vec<StreamAutoClaimReply>>(&mut s.queue.conn.clone()).await
            });
        }
        if looked.is_empty() {
            return Ok(Vec::new());
        }
        // A queue whose master is away does not hold up the others' takeovers.
        let mut replies = Vec::new();
        for ((at, s), answer) in served.iter().enumerate().zip(futures::future::join_all(pipes).await) {
            match answer {
                Ok(answer) => {
                    replies.extend(looked.iter().filter(|(looked_at, ..)| *looked_at == at).zip(answer))
                }
                Err(e) => warn!(error = %e, queue = s.queue.name(), "looking for expired leases failed"),
            }
        }
        // Each stream's expired entries are this consumer's now, their idle time reset: those the
        // free slots take go to the claim script, which starts them; the others are marked
        // expired again, for the next look (this process's or another's) to take over rather
        // than wait a lease more.
        let mut leases = Vec::new();
        let mut failed = None;
        for (&(at, kind, index, ref stream), reply) in replies {
            from.looked(stream, &reply);
            if reply.claimed.is_empty() {
                continue;
            }
            let served = &served[at];
            let mut given: Vec<Given> =
                reply.claimed.into_iter().map(|e| (kind.clone(), index, Entry::claimed(e))).collect();
            let beyond = given.split_off(free.len().min(given.len()));
            if !given.is_empty() {
                debug!(
                    count = given.len(),
                    queue = served.queue.name(),
                    kind,
                    "taking over tasks whose lease expired"
                );
                let kinds = self.serving.kinds_arg();
                match served.queue.claim(&self.consumer, &kinds, given.len(), &given).await {
                    Ok(claimed) => leases.extend(self.leases_of_claim(served, claimed, free)),
                    Err(e) => {
                        leave_expired(&served.queue, &self.consumer, &given).await;
                        failed.get_or_insert(e);
                    }
                }
            }
            leave_expired(&served.queue, &self.consumer, &beyond).await;
        }
        match failed {
            Some(e) if leases.is_empty() => Err(e),
            Some(e) => {
                warn!(error = %e, "taking over some expired leases failed: they are looked at again");
                Ok(leases)
            }
            None => Ok(leases),
        }
    }

    /// Claims new entries for the free slots, shared among the open queues by weight; a queue
    /// that gives fewer than its part is out of work, and its part goes to the others.
    async fn claim_new(&self, free: &mut Vec<OwnedSemaphorePermit>) -> RedisResult<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut drained: HashSet<String> = HashSet::new();
        while !free.is_empty() {
            let candidates: Vec<Served> =
                self.serving.open().into_iter().filter(|s| !drained.contains(s.queue.name())).collect();
            let parts = Serving::allocate(&candidates, free.len());
            if parts.is_empty() {
                break;
            }
            let kinds = self.serving.kinds_arg();
            let claims = parts.iter().map(|(served, n)| served.queue.claim(&self.consumer, &kinds, *n, &[]));
            let claimed = futures::future::join_all(claims).await;
            if claimed.iter().all(Result::is_err) {
                // Leases taken in an earlier pass are started already: they run.
                return match claimed.into_iter().next() {
                    Some(Err(e)) if leases.is_empty() => Err(e),
                    Some(Err(e)) => {
                        warn!(error = %e, "claiming failed after some leases were taken");
                        Ok(leases)
                    }
                    _ => Ok(leases),
                };
            }
            for ((served, asked), claimed) in parts.into_iter().zip(claimed) {
                // A queue whose master is away is left alone for a second; the others go on.
                let claimed = match claimed {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        warn!(error = %e, queue = served.queue.name(), "claiming failed; trying again in a second");
                        self.serving.block(served.queue.name(), 1000);
                        drained.insert(served.queue.name().to_string());
                        continue;
                    }
                };
                let got = self.leases_of_claim(&served, claimed, free);
                if got.len() < asked {
                    drained.insert(served.queue.name().to_string());
                }
                leases.extend(got);
            }
        }
        Ok(leases)
    }

    /// Blocks on the streams of every open queue until entries come (or a second passes), and
    /// takes leases on as many as there are free slots, shared by weight; gives the rest back.
    /// Returns the leases, and what the read brought.
    async fn wait_for_entries(
        &self,
        readers: &mut Readers,
        free: &mut Vec<OwnedSemaphorePermit>,
    ) -> RedisResult<(Vec<Lease>, Brought)> {
        let open = self.serving.open();
        // Serving every queue, it looks for new ones between reads.
        // It times out on a tick of the wall clock, with the process's other looks.
        let longest = crate::store::until_next_tick(if self.serving.serves_every_queue() {
            DISCOVER_EVERY
        } else {
            BLOCK
        });
        let wait = match self.serving.next_unblock() {
            Some(at) => at.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), longest),
            None => longest,
        };
        if open.is_empty() {
            // Every queue is paused or at its limits: look again when the first may start.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {}
            }
            return Ok((Vec::new(), Brought::default()));
        }
        let kinds = self.serving.kinds();
        if kinds.is_empty() {
            // This process runs no kind (yet): nothing to wait on.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {}
            }
            return Ok((Vec::new(), Brought::default()));
        }
        // Every lane stream of every open queue, with what it is: (queue's place, kind, priority).
        let mut streams: Vec<String> = Vec::new();
        let mut places: Vec<(usize, &str, usize)> = Vec::new();
        for (at, s) in open.iter().enumerate() {
            for kind in &kinds {
                for (index, stream) in s.queue.keys.lane(kind).into_iter().enumerate() {
                    streams.push(stream);
                    places.push((at, kind, index));
                }
            }
        }
        let read = |streams: &[String]| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(GROUP)
                .arg(self.consumer.as_ref())
                .arg("COUNT")
                .arg(free.len())
                .arg("BLOCK")
                .arg(wait.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(streams)
                .arg(vec![">"; streams.len()]);
            read
        };
        // A finish meanwhile takes no leases (`Leasing::reading`) only where this read covers every
        // queue served, none of them blocked by its limits, and ends when the one read does.
        let covers_all = open.len() == self.serving.all().len() && !self.serving.client().is_cluster();
        let reading = covers_all.then(|| Reading::start(&self.reading));
        let replies = if self.serving.client().is_cluster() {
            // Each queue's streams share its slot: a read per queue, woken when one brings some.
            let per_queue = streams.len() / open.len();
            let groups: Vec<(&Served, &[String])> = open.iter().zip(streams.chunks(per_queue)).collect();
            readers.read_each(&self.serving, &groups, read).await?
        } else {
            entries_read(read(&streams).query_async(readers.one(&self.serving).await?).await?)
        };
        drop(reading);
        // Entries per queue (by its place in `open`), each with its lane and stream index.
        let mut given: Vec<Vec<Given>> = vec![Vec::new(); open.len()];
        let mut brought = Brought::default();
        for (key, entries) in replies {
            brought.full |= entries.len() >= free.len();
            if let Some(place) = streams.iter().position(|s| s.as_bytes() == key) {
                let (at, kind, index) = places[place];
                given[at].extend(entries.into_iter().map(|e| (kind.to_string(), index, e)));
            }
        }
        let (with_entries, counts): (Vec<Served>, Vec<usize>) =
            open.iter().zip(&given).filter(|(_, g)| !g.is_empty()).map(|(s, g)| (s.clone(), g.len())).unzip();
        let parts = Serving::allocate_up_to(&with_entries, &counts, free.len());
        let mut leases = Vec::new();
        for (served, entries) in open.iter().zip(given) {
            if entries.is_empty() {
                continue;
            }
            let part =
                parts.iter().find(|(p, _)| p.queue.name() == served.queue.name()).map_or(0, |(_, n)| *n);
            match self.take_read(readers, served, entries, part, free, &mut leases).await {
                Ok(extra) => brought.handed_back |= extra,
                Err(e) if leases.is_empty() => return Err(e),
                Err(e) => {
                    // The leases taken are handed out. The entries left stay pending for this
                    // worker, to be taken over once idle a lease's length, and the queue is left
                    // alone for a second (a read that then finds its lanes lost makes them
                    // again, as after any failed read).
                    warn!(error = %e, queue = served.queue.name(), "taking leases on the entries read failed");
                    self.serving.block(served.queue.name(), 1000);
                    return Ok((leases, brought));
                }
            }
        }
        Ok((leases, brought))
    }

    /// Takes leases on the most urgent `part` of `entries` (read from `served`'s lanes) into
    /// `leases`, without Lua where their tasks need no decision, the rest through the claim
    /// script; gives the entries beyond `part` back, and says whether there were any.
    async fn take_read(
        &self,
        readers: &mut Readers,
        served: &Served,
        mut entries: Vec<Given>,
        part: usize,
        free: &mut Vec<OwnedSemaphorePermit>,
        leases: &mut Vec<Lease>,
    ) -> RedisResult<bool> {
        // The most urgent first; what does not fit goes back for others to take.
        entries.sort_by_key(|(_, index, _)| *index);
        let extra = entries.split_off(part.min(entries.len()));
        let handed_back = !extra.is_empty();
        if handed_back {
            hand_back_unclaimed(&served.queue, &extra).await?;
        }
        if entries.is_empty() {
            return Ok(handed_back);
        }
        if let Some((runs, rest)) = readers.lease_plain(&served.queue, &self.consumer, &entries).await {
            leases.extend(self.leases_of_runs(&served.queue, &served.running, runs, free));
            entries = rest;
        }
        if !entries.is_empty() {
            let kinds = self.serving.kinds_arg();
            let claimed = served.queue.claim(&self.consumer, &kinds, entries.len(), &entries).await?;
            leases.extend(self.leases_of_claim(served, claimed, free));
        }
        Ok(handed_back)
    }

    /// The leases of a claim on `served`, noting when it said to leave the queue alone.
    pub(super) fn leases_of_claim(
        &self,
        served: &Served,
        (replies, blocked): Claimed,
        free: &mut Vec<OwnedSemaphorePermit>,
    ) -> Vec<Lease> {
        if let Some((_, retry_ms)) = blocked {
            self.serving.block(served.queue.name(), retry_ms);
        }
        self.leases_of(&served.queue, &served.running, replies, free)
    }
}

/// Marks the fetch loop as waiting in a blocking read (`Leasing::reading`) until dropped, however
/// the read ends.
struct Reading<'a>(&'a AtomicBool);

impl<'a> Reading<'a> {
    fn start(flag: &'a AtomicBool) -> Reading<'a> {
        flag.store(true, Ordering::Relaxed);
        Reading(flag)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Returns entries read but not claimed to their stream, as fresh entries, so others take them.
pub(super) async fn hand_back_unclaimed(queue: &Queue, entries: &[Given]) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (kind, index, entry) in entries {
        let stream = queue.keys.lane_stream(kind, *index);
        if let Some(task) = &entry.task {
            pipe.cmd("XADD").arg(&stream).arg("*").arg("task").arg(task).ignore();
            // Claims read only the lanes marked ready (lanes.lua).
            pipe.cmd("SADD").arg(queue.keys.ready_lanes()).arg(kind).ignore();
        }
        // Acknowledged only: the finish script trims acknowledged entries in bulk.
        pipe.cmd("XACK").arg(stream).arg(GROUP).arg(&entry.id).ignore();
    }
    pipe.query_async(&mut queue.conn.clone()).await
}

/// Marks `entries` (of `queue`, pending for `consumer`) idle for a lease again, as they were before
/// a look for expired leases moved them to it: the next look takes them over.
async fn leave_expired(queue: &Queue, consumer: &str, entries: &[Given]) {
    if entries.is_empty() {
        return;
    }
    let lease_ms = queue.settings.lease.as_millis() as u64;
    let mut pipe = redis::pipe();
    for (kind, index, entry) in entries {
        idle_for(&mut pipe, &queue.keys.lane_stream(kind, *index), consumer, &entry.id, lease_ms).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(&mut queue.conn.clone()).await {
        // Then they are taken over a lease from now.
        warn!(error = %e, queue = queue.name(), "marking entries expired again failed");
    }
}

/// What a fetch loop's last read saw, for the next look to choose between a read and claims
/// (`fetch`).
#[derive(Default)]
struct LastRead {
    /// The queues open when the look that read began (by name).
    open: Vec<String>,
    /// How many times the process had left a queue alone ([`Serving::block`]) by then.
    blocks: u64,
    /// It brought all it asked of some stream: more may wait there.
    full: bool,
    /// A read handed entries back, and no claim has left slots free since.
    crowded: bool,
}

/// What one read brought (`Leasing::wait_for_entries`).
#[derive(Default)]
struct Brought {
    /// It brought all it asked of some stream.
    full: bool,
    /// It brought more than fitted, and gave the rest back.
    handed_back: bool,
}

/// A fetch loop's connections for blocking reads (of their own: a blocked read would hold up
/// the commands behind it): one for every queue on one server; on a cluster, one per queue,
/// with the Redis client id that wakes it.
#[derive(Default)]
struct Readers {
    one: Option<Conn>,
    per_queue: HashMap<String, (Conn, Option<i64>)>,
    /// Leases taken without Lua on `one`, between its reads.
    plain: PlainLeases,
}

impl Readers {
    /// The connection that reads every queue (one server).
    async fn one(&mut self, serving: &Serving) -> RedisResult<&mut Conn> {
        let conn = match self.one.take() {
            Some(conn) => conn,
            None => serving.client().connect_blocking(BLOCK.max(DISCOVER_EVERY)).await?,
        };
        Ok(self.one.insert(conn))
    }

    /// Drops the connections (after an error: they are made again as needed; the next one is
    /// asked again whether Redis lets this user run transactions). What the plain leases learnt
    /// (a rest after a failure, the queues seen with limits) stays.
    fn reset(&mut self) {
        self.one = None;
        self.per_queue.clear();
        self.plain.connection_dropped();
    }

    /// Takes leases on `given` (entries of `queue` the last read on `one` brought) without Lua
    /// where their tasks need no decision: the starts and the entries left for the claim
    /// script, or None when every entry is left to it (reading per queue, on a cluster, always).
    async fn lease_plain(
        &mut self,
        queue: &Queue,
        consumer: &str,
        given: &[Given],
    ) -> Option<(Vec<Started>, Vec<Given>)> {
        let conn = self.one.as_mut()?;
        match self.plain.take(conn, queue, consumer, given).await {
            Ok(taken) => taken,
            Err(_) => {
                self.one = None;
                None
            }
        }
    }

    /// Blocks on each group of streams (a queue's, in one slot) at once, each on its queue's own
    /// connection; as soon as one read answers with entries, wakes the others, so that no
    /// queue's entries wait for another queue's read to time out.
    async fn read_each(
        &mut self,
        serving: &Serving,
        groups: &[(&Served, &[String])],
        read: impl Fn(&[String]) -> redis::Cmd,
    ) -> RedisResult<Vec<(Vec<u8>, Vec<Entry>)>> {
        for (served, streams) in groups {
            if !self.per_queue.contains_key(served.queue.name()) {
                let conn = serving.client().connect_blocking(BLOCK.max(DISCOVER_EVERY)).await?;
                // The id of its link to the queue's node. Without `CLIENT` (an ACL user), a read
                // is woken by its own timeout only.
                let id = conn.query_beside::<i64>(&streams[0], &client_command("ID")).await.ok();
                self.per_queue.insert(served.queue.name().to_string(), (conn, id));
            }
        }
        let mut pending = futures::stream::FuturesUnordered::new();
        for (at, (served, streams)) in groups.iter().enumerate() {
            let mut conn = self.per_queue[served.queue.name()].0.clone();
            let read = read(streams);
            pending.push(async move { (at, read.query_async::<Value>(&mut conn).await.map(entries_read)) });
        }
        let mut replies = Vec::new();
        let mut answered = vec![false; groups.len()];
        let mut failed = None;
        let mut woken = false;
        while let Some((at, reply)) = pending.next().await {
            answered[at] = true;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    // Its connection is made again next time; what the others read is claimed.
                    let name = groups[at].0.queue.name();
                    warn!(error = %e, queue = name, "a blocking read failed");
                    self.per_queue.remove(name);
                    failed = Some(e);
                    continue;
                }
            };
            if !woken && !reply.is_empty() {
                woken = true;
                for (at, (served, streams)) in groups.iter().enumerate().filter(|(at, _)| !answered[*at]) {
                    let Some(id) = self.per_queue.get(served.queue.name()).and_then(|(_, id)| *id) else {
                        continue;
                    };
                    // Not waited for: a master that is away must not hold up these entries.
                    let (conn, key) = (served.queue.conn.clone(), streams[0].clone());
                    tokio::spawn(async move {
                        let mut unblock = client_command("UNBLOCK");
                        unblock.arg(id);
                        if let Err(e) = conn.query_beside::<i64>(&key, &unblock).await {
                            debug!(error = %e, read = at, "waking a blocking read failed; it wakes by its timeout");
                        }
                    });
                }
            }
            replies.extend(reply);
        }
        match failed {
            Some(e) if replies.is_empty() => Err(e),
            _ => Ok(replies),
        }
    }
}

/// What a claim's last two reply fields say: why nothing more may start, and when to look again.
pub(super) fn blocked_of(reason: &[u8], retry_ms: u64) -> Option<(Blocked, u64)> {
    let blocked = match reason {
        b"paused" => Blocked::Paused,
        b"concurrency" => Blocked::Concurrency,
        b"rate" => Blocked::Rate,
        _ => return None,
    };
    Some((blocked, retry_ms))
}

impl Queue {
    /// Takes leases on the `given` entries, or when there are none on up to `count` new entries
    /// of the lanes of `kinds` (comma-separated, `*` for every lane), most urgent first, as far
    /// as the queue's limits allow.
    pub(super) async fn claim(
        &self,
        consumer: &str,
        kinds: &str,
        count: usize,
        given: &[Given],
    ) -> RedisResult<Claimed> {
        let mut call = self.scripts.claim.prepare_invoke();
        call.key(self.keys.events());
        self.leasing_args(&mut call, consumer, consumer, kinds).arg(count);
        for (kind, stream, entry) in given {
            // An entry without a task id is not ours to interpret: the script drops it.
            let task = entry.task.as_deref().unwrap_or_default();
            call.arg(kind).arg(stream + 1).arg(&entry.id).arg(task);
        }
        let (replies, reason, retry_ms): (Vec<Vec<Vec<u8>>>, Vec<u8>, u64) =
            call.invoke_async(&mut self.conn.clone()).await?;
        Ok((replies, blocked_of(&reason, retry_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::private_queue;
    use redis::{AsyncCommands, streams::StreamReadReply};

    /// `entries_read` reads what redis-rs's `StreamReadReply` reads of the lanes' entries, from a
    /// real `XREADGROUP` over two streams: new entries (the task field alone, beside others, or
    /// missing) and a pending entry deleted since it was read, whose fields come back nil.
    #[tokio::test]
    async fn entries_read_reads_ids_and_tasks_as_redis_rs_does() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let [high, normal, _] = queue.keys.lane("echo");
        let add = |stream: &str, fields: &[(&str, &str)]| {
            let mut add = redis::cmd("XADD");
            add.arg(stream).arg("*");
            for (field, value) in fields {
                add.arg(field).arg(value);
            }
            add
        };
        let task = "01890a5d-ac96-774b-bcce-b302099a8057";
        let gone: String = add(&high, &[("task", "deleted-later")]).query_async(&mut conn).await.unwrap();
        let read = |id: &str| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(GROUP).arg("unit-worker").arg("COUNT").arg(10);
            read.arg("STREAMS").arg(&high).arg(&normal).arg(id).arg(id);
            read
        };
        let _: Value = read(">").query_async(&mut conn).await.unwrap();
        let _: i64 = conn.xdel(&high, &[&gone]).await.unwrap();
        for fields in
            [&[("task", task)][..], &[("other", "x"), ("task", task), ("more", "y")], &[("other", "x")]]
        {
            let _: String = add(&high, fields).query_async(&mut conn).await.unwrap();
        }
        let _: String = add(&normal, &[("task", "not-an-id")]).query_async(&mut conn).await.unwrap();
        let new: Value = read(">").query_async(&mut conn).await.unwrap();
        let pending: Value = read("0").query_async(&mut conn).await.unwrap();

        let ours = |reply: Value| -> Vec<(String, String, Option<String>)> {
            entries_read(reply)
                .into_iter()
                .flat_map(|(key, entries)| {
                    let key = String::from_utf8(key).unwrap();
                    entries.into_iter().map(move |e| (key.clone(), e.id, e.task))
                })
                .collect()
        };
        let theirs = |reply: Value| -> Vec<(String, String, Option<String>)> {
            let reply: StreamReadReply = redis::from_redis_value(reply).unwrap();
            reply
                .keys
                .into_iter()
                .flat_map(|key| {
                    let name = key.key;
                    key.ids.into_iter().map(move |e| (name.clone(), e.id.clone(), e.get("task")))
                })
                .collect()
        };
        let tasks = |read: &[(String, String, Option<String>)]| -> Vec<Option<String>> {
            read.iter().map(|(.., task)| task.clone()).collect()
        };
        let new_read = ours(new.clone());
        assert_eq!(new_read, theirs(new));
        let named = |t: &str| Some(t.to_string());
        assert_eq!(tasks(&new_read), [named(task), named(task), None, named("not-an-id")]);
        let pending_read = ours(pending.clone());
        assert_eq!(pending_read, theirs(pending));
        assert_eq!(pending_read[0].1, gone, "the deleted entry is still pending");
        assert_eq!(pending_read[0].2, None, "its fields are gone");
        assert!(entries_read(Value::Nil).is_empty(), "a read that timed out");
    }

    /// An entry a look for expired leases moved to this process but did not start is marked
    /// expired again: another process's next look takes it over at once, not a lease later.
    #[tokio::test]
    async fn an_entry_left_expired_is_taken_over_by_the_next_look() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let [_, normal, _] = queue.keys.lane("echo");
        let task = "01890a5d-ac96-774b-bcce-b302099a8057";
        let id: String = conn.xadd(&normal, "*", &[("task", task)]).await.unwrap();
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg("this").arg("STREAMS").arg(&normal).arg(">");
        let _: Value = read.query_async(&mut conn).await.unwrap();
        let lease_ms = queue.settings.lease.as_millis() as u64;
        let mut look = redis::cmd("XAUTOCLAIM");
        look.arg(&normal).arg(GROUP).arg("other").arg(lease_ms).arg("0-0");
        let early: StreamAutoClaimReply = look.query_async(&mut conn).await.unwrap();
        assert!(early.claimed.is_empty(), "just read: its lease has not run out");

        let entry = Entry { id: id.clone(), task: Some(task.to_string()) };
        leave_expired(&queue, "this", &[("echo".to_string(), 1, entry)]).await;
        let taken: StreamAutoClaimReply = look.query_async(&mut conn).await.unwrap();
        let ids: Vec<&str> = taken.claimed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [id.as_str()]);
        let pending: redis::streams::StreamPendingCountReply =
            conn.xpending_count(&normal, GROUP, "-", "+", 10).await.unwrap();
        let owners: Vec<&str> = pending.ids.iter().map(|p| p.consumer.as_str()).collect();
        assert_eq!(owners, ["other"], "taken over once, by the other look");
    }

    /// An entry expired behind more live leases than one look scans is still taken over: each
    /// look at a stream goes on where the one before stopped. (From the start each time, as
    /// before, it was never found while the leases before it lived.)
    #[tokio::test]
    async fn an_entry_expired_behind_live_leases_is_found_by_a_later_look() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let [_, normal, _] = queue.keys.lane("echo");
        let mut ids: Vec<String> = Vec::new();
        for _ in 0..25 {
            ids.push(
                conn.xadd(&normal, "*", &[("task", "01890a5d-ac96-774b-bcce-b302099a8057")]).await.unwrap(),
            );
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg("this").arg("STREAMS").arg(&normal).arg(">");
        let _: Value = read.query_async(&mut conn).await.unwrap();
        // The newest alone ran out: its holder stopped renewing it.
        let lease = queue.settings.lease;
        let expired = ids.last().unwrap().clone();
        let mut pipe = redis::pipe();
        idle_for(&mut pipe, &normal, "this", &expired, 2 * lease.as_millis() as u64);
        let _: Value = pipe.query_async(&mut conn).await.unwrap();
        let mut from_start = redis::cmd("XAUTOCLAIM");
        from_start
            .arg(&normal)
            .arg(GROUP)
            .arg("other")
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1);
        let first: StreamAutoClaimReply = from_start.query_async(&mut conn).await.unwrap();
        assert!(first.claimed.is_empty(), "a look from the start sees only the oldest entries");

        let mut from = ReclaimFrom::default();
        let mut found = Vec::new();
        let mut looks = 0;
        while found.is_empty() && looks < 5 {
            let mut pipe = redis::pipe();
            from.look(&mut pipe, &normal, "other", lease, 1);
            let (reply,): (StreamAutoClaimReply,) = pipe.query_async(&mut conn).await.unwrap();
            from.looked(&normal, &reply);
            found.extend(reply.claimed.into_iter().map(|e| e.id));
            looks += 1;
        }
        assert_eq!(found, [expired], "found within {looks} looks");
        assert!(from.0.is_empty(), "that look reached the end: the next starts again");
    }
}
