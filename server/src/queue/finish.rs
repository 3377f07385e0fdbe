//! How attempts end: the finish loop of a worker process, the script call it batches them into,
//! and the rounds both it and the pulled leases' ends (queue/pull.rs) go out in.
//!
//! The *finish loop* records ended attempts in batches (a round for all that ended meanwhile)
//! and, in the same round, takes leases on new entries for the slots those attempts free, so a
//! busy worker goes from one task to the next without a read of its own (not while the fetch loop
//! waits on every queue's empty lanes: the next entry wakes that wait). A round goes without Lua
//! where nothing in it needs a decision in Redis (`plain`), else through the finish script, which
//! ends the batch and takes the next leases in one call.

use super::{
    Outcome, Queue, ResultBytes,
    fetch::{Given, blocked_of},
    lease::{Known, Lease, Leasing},
    serving::Served,
};
use crate::{
    stats::{Counted, FLUSH_AFTER},
    store::now_ms,
};
use bytes::Bytes;
use redis::RedisResult;
use std::{sync::atomic::Ordering, time::Duration};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{debug, warn};

pub(super) mod plain;
pub(super) use plain::PlainEnds;
use plain::Round;

/// The most attempts one finish script ends.
const FINISH_BATCH: usize = 64;
/// Results larger than this are staged with a plain `SET` before the finish script, which only
/// renames them: copying large strings through Lua stalls Redis for everyone.
const INLINE_RESULT_MAX: usize = 16 * 1024;
/// Text results up to this size live in the task's record (the record is read as text); the
/// threshold a payload in the record has, for the same reasons (docs/benchmark-notes.md).
const RECORD_RESULT_MAX: usize = 4 * 1024;
/// How long a staged result waits for its finish script (which runs right after it) at most.
const STAGED_TTL: Duration = Duration::from_secs(300);

/// Whose leases a finish script call ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Holders {
    /// A worker process's, which knows each task's session and idempotency key from its lease.
    Process,
    /// Leases pulled over HTTP: the script reads the session and idempotency key, ends a task
    /// whose cancel was asked for as cancelled, and names the worker each record holds.
    Pulled,
}

/// What the finish script made of an ended attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The lease was no longer held: nothing changed.
    Lost,
    /// Recorded as its holder reported it.
    AsReported,
    /// Its task's cancel was asked for while it ran, so it ended cancelled (pulled leases).
    Cancelled,
}

/// What became of an ended attempt: how it was applied, and (pulled leases) the worker the record
/// named as its holder (empty when the lease was no longer held).
#[derive(Clone, Debug)]
pub struct Ended {
    pub applied: Applied,
    pub worker: String,
}

impl Ended {
    /// The finish script's answer for one attempt: its code (0 lost, 1 as reported, 2
    /// cancelled) and worker.
    fn of(code: i64, worker: Option<String>) -> Ended {
        let applied = match code {
            1 => Applied::AsReported,
            2 => Applied::Cancelled,
            _ => Applied::Lost,
        };
        Ended { applied, worker: worker.unwrap_or_default() }
    }
}

/// An ended attempt on its way to the finish loop, in the finish script's terms.
pub(super) struct Ending {
    queue: Queue,
    task_id: String,
    stream_index: usize,
    entry_id: String,
    token: String,
    outcome: &'static str,
    error: String,
    result_type: String,
    due_ms: u64,
    result: ResultPlace,
    reason: &'static str,
    session: String,
    idempotency_key: String,
    /// The key of the ready stream the entry is on, where the holder knows it (a worker
    /// process's lease); else empty.
    stream: String,
    /// Whether the task's payload is shared with other tasks (a topic message's).
    shared_payload: bool,
    /// What the lease's start knows of the record (a start without Lua's): a plain end then reads
    /// only the lease.
    known: Option<Known>,
    slot: Option<OwnedSemaphorePermit>,
    reply: oneshot::Sender<RedisResult<Ended>>,
}

/// Where the finish script finds an ended attempt's result, decided once per attempt.
enum ResultPlace {
    /// Small text: passed as a script argument and kept in the task's record (no key of its
    /// own to write, expire and delete), as a small payload is.
    Record(Bytes),
    /// Small enough to pass as a script argument, kept under a key of its own.
    Here(Bytes),
    /// Too large for Lua: staged under `staged:{token}` before the script, which renames it.
    Staged(Bytes),
    /// The payload, unchanged.
    Payload,
}

impl ResultPlace {
    fn of(result: ResultBytes) -> ResultPlace {
        match result {
            ResultBytes::New(bytes) if bytes.len() > INLINE_RESULT_MAX => ResultPlace::Staged(bytes),
            ResultBytes::New(bytes)
                if bytes.len() <= RECORD_RESULT_MAX && std::str::from_utf8(&bytes).is_ok() =>
            {
                ResultPlace::Record(bytes)
            }
            ResultBytes::New(bytes) => ResultPlace::Here(bytes),
            ResultBytes::Payload => ResultPlace::Payload,
        }
    }

    /// The finish script's two result arguments: the bytes, and where the result is.
    fn script_args(&self) -> (&[u8], &'static str) {
        match self {
            ResultPlace::Record(bytes) => (bytes, "record"),
            ResultPlace::Here(bytes) => (bytes, ""),
            ResultPlace::Staged(_) => (b"", "staged"),
            ResultPlace::Payload => (b"", "payload"),
        }
    }
}

/// What the finish script needs to know of a lease: where its entry is, its token, and the
/// session and idempotency key its task ends.
pub(super) struct Held {
    pub(super) queue: Queue,
    pub(super) task_id: String,
    pub(super) stream_index: usize,
    pub(super) entry_id: String,
    pub(super) token: String,
    pub(super) session: String,
    pub(super) idempotency_key: String,
}

impl Ending {
    /// The attempt of `lease` ended with `outcome`, with the slot it frees (if not passed on
    /// already); `reply` learns whether it was recorded.
    pub(super) fn of(
        lease: &Lease,
        outcome: Outcome,
        slot: Option<OwnedSemaphorePermit>,
        reply: oneshot::Sender<RedisResult<Ended>>,
    ) -> Ending {
        let held = Held {
            queue: lease.queue.clone(),
            task_id: lease.task_id.to_string(),
            stream_index: lease.stream_index,
            entry_id: lease.entry_id.clone(),
            token: lease.token.clone(),
            session: lease.session.clone().unwrap_or_default(),
            idempotency_key: lease.idempotency_key.clone().unwrap_or_default(),
        };
        let mut ending = Ending::held(held, outcome, slot, reply);
        ending.stream.clone_from(&lease.stream);
        ending.shared_payload = lease.payload_ref.is_some();
        ending.known.clone_from(&lease.known);
        ending
    }

    /// This ending, its entry on `stream` (the ready stream's key, where the holder knows it).
    pub(super) fn on_stream(mut self, stream: String) -> Ending {
        self.stream = stream;
        self
    }

    /// Tells whoever waits for this ending what became of it.
    pub(super) fn answer(self, answer: RedisResult<Ended>) {
        let _ = self.reply.send(answer);
    }

    /// The attempt `held` ended with `outcome`.
    pub(super) fn held(
        held: Held,
        outcome: Outcome,
        slot: Option<OwnedSemaphorePermit>,
        reply: oneshot::Sender<RedisResult<Ended>>,
    ) -> Ending {
        let mut ending = Ending {
            queue: held.queue,
            task_id: held.task_id,
            stream_index: held.stream_index,
            entry_id: held.entry_id,
            token: held.token,
            outcome: "",
            error: String::new(),
            result_type: String::new(),
            due_ms: 0,
            result: ResultPlace::Here(Bytes::new()),
            reason: "",
            session: held.session,
            idempotency_key: held.idempotency_key,
            stream: String::new(),
            shared_payload: false,
            known: None,
            slot,
            reply,
        };
        match outcome {
            Outcome::Succeeded { result, content_type } => {
                (ending.outcome, ending.result, ending.result_type) =
                    ("succeeded", ResultPlace::of(result), content_type);
            }
            Outcome::Retry { error, after } => {
                let due = now_ms() + after.as_millis() as u64;
                (ending.outcome, ending.error, ending.due_ms) = ("retrying", error, due);
            }
            Outcome::Failed { error, reason } => {
                (ending.outcome, ending.error, ending.reason) = ("failed", error, reason.as_str());
            }
            Outcome::Cancelled => ending.outcome = "cancelled",
        }
        ending
    }
}

/// Hands the endings `endings` brings to `round` in batches, one round at a time (a group
/// commit: each the first to arrive and those ready at once after it, up to `FINISH_BATCH`; the
/// ones that end while a round runs go together in the next). Returns once `endings` is closed.
/// (Two rounds in flight measured no faster: docs/benchmark-notes.md.)
pub(super) async fn in_rounds<Round: Future<Output = ()>>(
    mut endings: mpsc::Receiver<Ending>,
    mut round: impl FnMut(Vec<Ending>) -> Round,
) {
    while let Some(first) = endings.recv().await {
        round(crate::store::gather(first, FINISH_BATCH, || endings.try_recv().ok())).await;
    }
}

impl Leasing {
    /// Records ended attempts in batches (a round per queue), and reuses their slots for new
    /// leases taken in the same round (plain, or the script's), up to each queue's share, unless
    /// the fetch loop waits on every queue's empty lanes (`Leasing::reading`). Runs until every
    /// lease and the fetch loop are gone.
    pub(super) async fn finish_loop(self, endings: mpsc::Receiver<Ending>) {
        in_rounds(endings, |batch| self.finish_batch(batch)).await;
        debug!("finishing stopped");
    }

    /// Ends a batch of attempts: a round per queue, at once.
    async fn finish_batch(&self, batch: Vec<Ending>) {
        let mut by_queue: Vec<(Served, Vec<Ending>)> = Vec::new();
        let mut left = batch.len();
        for ending in batch {
            match by_queue.iter_mut().find(|(s, _)| s.queue.name() == ending.queue.name()) {
                Some((_, group)) => group.push(ending),
                None => {
                    let served = self.serving.served(&ending.queue);
                    // Room for every ending left (an `Ending` is large: each growth copies them).
                    let mut group = Vec::with_capacity(left);
                    group.push(ending);
                    by_queue.push((served, group));
                }
            }
            left -= 1;
        }
        let rounds = by_queue.into_iter().map(|(served, group)| self.finish_group(served, group));
        futures::future::join_all(rounds).await;
    }

    /// Ends the attempts of one queue and takes its next leases: without Lua where nothing needs
    /// a decision in Redis (plain.rs), else by the scripts.
    async fn finish_group(&self, served: Served, mut batch: Vec<Ending>) {
        let ending = batch.len();
        let mut slots: Vec<_> = batch.iter_mut().filter_map(|e| e.slot.take()).collect();
        // None while stopping, nor while the fetch loop waits on empty lanes for any new entry.
        let want = match self.shutdown.is_cancelled() || self.reading.load(Ordering::Relaxed) {
            true => 0,
            false => self.serving.refill(&served, slots.len(), batch.len()),
        };
        let queue = &served.queue;
        // A round that takes no leases may go without Lua; its slots go back to the fetch loop.
        if want == 0
            && let Some(ended) = self.plain_ends.end(queue, &batch, Holders::Process, &self.consumer).await
        {
            for (ending, ended) in batch.into_iter().zip(ended) {
                ending.answer(Ok(ended));
            }
            return;
        }
        let kinds = self.serving.kinds_arg();
        if want > 0 {
            let lanes: Vec<(String, [String; 3])> =
                self.serving.kinds().into_iter().map(|kind| (kind.clone(), queue.keys.lane(&kind))).collect();
            match self.plain_ends.round(queue, &batch, &self.consumer, &lanes, want).await {
                Some(Ok(Round { ended, runs, rest })) => {
                    for (ending, ended) in batch.into_iter().zip(ended) {
                        ending.answer(Ok(ended));
                    }
                    let mut leases = self.leases_of_runs(queue, &served.running, runs, &mut slots);
                    leases.extend(self.claim_read(&served, &kinds, &rest, &mut slots).await);
                    drop(slots);
                    self.deliver_refill(leases, ending).await;
                    return;
                }
                Some(Err(given)) => {
                    // The entries were read: the script ends the batch, then claims them.
                    match queue.end_attempts(&batch, Holders::Process, 0, &self.consumer, &kinds).await {
                        Ok(Finished { ended, .. }) => {
                            self.plain_ends.settled(&batch);
                            for (ending, ended) in batch.into_iter().zip(ended) {
                                ending.answer(Ok(ended));
                            }
                        }
                        Err(e) => {
                            for ending in batch {
                                ending.answer(Err(e.clone()));
                            }
                        }
                    }
                    let leases = self.claim_read(&served, &kinds, &given, &mut slots).await;
                    drop(slots);
                    self.deliver_refill(leases, ending).await;
                    return;
                }
                None => {}
            }
        }
        match queue.end_attempts(&batch, Holders::Process, want, &self.consumer, &kinds).await {
            Ok(Finished { ended, claims, reason, retry_ms }) => {
                self.plain_ends.settled(&batch);
                for (ending, ended) in batch.into_iter().zip(ended) {
                    ending.answer(Ok(ended));
                }
                let claimed = (claims, blocked_of(&reason, retry_ms));
                let leases = self.leases_of_claim(&served, claimed, &mut slots);
                // Slots not refilled go back to the fetch loop, which shares them by weight.
                drop(slots);
                self.deliver_refill(leases, ending).await;
            }
            Err(e) => {
                // Nothing was applied: each attempt's runner tries again.
                for ending in batch {
                    ending.answer(Err(e.clone()));
                }
            }
        }
    }
}

impl Leasing {
    /// Hands out the leases a round took for the slots of the `ending` attempts it ended, and
    /// tells the next worker (queue/relay.rs) whether every slot is taken now.
    async fn deliver_refill(&self, leases: Vec<Lease>, ending: usize) {
        self.relay.took(|| self.serving.full(ending));
        self.deliver(leases).await;
    }

    /// Leases on `given` (entries of `served`'s lanes read for this worker) through the claim
    /// script. On an error they stay pending for this worker, taken over once idle a lease's
    /// length.
    async fn claim_read(
        &self,
        served: &Served,
        kinds: &str,
        given: &[Given],
        slots: &mut Vec<OwnedSemaphorePermit>,
    ) -> Vec<Lease> {
        if given.is_empty() {
            return Vec::new();
        }
        match served.queue.claim(&self.consumer, kinds, given.len(), given).await {
            Ok(claimed) => self.leases_of_claim(served, claimed, slots),
            Err(e) => {
                warn!(queue = served.queue.name(), error = %e, "claiming the entries read failed");
                Vec::new()
            }
        }
    }
}

/// What one finish script call did: each attempt's end, in order, the claim's replies for the
/// new leases, and why no more may start (with when to look again).
pub(super) struct Finished {
    pub(super) ended: Vec<Ended>,
    pub(super) claims: Vec<Vec<Vec<u8>>>,
    pub(super) reason: Vec<u8>,
    pub(super) retry_ms: u64,
}

impl Queue {
    /// Ends a batch of attempts of `holders`' leases and takes up to `want` new leases, in one
    /// script.
    pub(super) async fn end_attempts(
        &self,
        endings: &[Ending],
        holders: Holders,
        want: usize,
        consumer: &str,
        kinds: &str,
    ) -> RedisResult<Finished> {
        let mut stage = redis::pipe();
        for e in endings {
            if let ResultPlace::Staged(bytes) = &e.result {
                stage
                    .cmd("SET")
                    .arg(self.keys.staged(&e.token))
                    .arg(bytes.as_ref())
                    .arg("PX")
                    .arg(STAGED_TTL.as_millis() as u64)
                    .ignore();
            }
        }
        if !stage.is_empty() {
            stage.query_async::<()>(&mut self.conn.clone()).await?;
        }
        let mut call = self.scripts.finish.prepare_invoke();
        call.key(self.keys.events()).key(self.keys.retrying()).key(self.keys.dead());
        self.leasing_args(&mut call, consumer, consumer, kinds)
            .arg(want)
            .arg(if holders == Holders::Pulled { "pulled" } else { "" })
            .arg(self.settings.payload_retention.as_millis() as u64);
        for e in endings {
            call.arg(&e.task_id)
                .arg(e.stream_index + 1)
                .arg(&e.entry_id)
                .arg(&e.token)
                .arg(e.outcome)
                .arg(&e.error)
                .arg(super::record::stored_result_type(&e.result_type))
                .arg(e.due_ms);
            let (bytes, source) = e.result.script_args();
            call.arg(bytes).arg(e.reason).arg(&e.session).arg(&e.idempotency_key).arg(source);
        }
        type Reply = (
            Vec<i64>,
            Vec<Vec<Vec<u8>>>,
            Vec<u8>,
            u64,
            Vec<String>,
            (u64, u64, u64, u64),
            Vec<String>,
            Vec<u64>,
        );
        let reply: Reply = call.invoke_async(&mut self.conn.clone()).await?;
        let (applied, claims, reason, retry_ms, workers, (at_ms, succeeded, failed, ended), bins, counts) =
            reply;
        self.count(&Counted {
            at_ms,
            succeeded,
            failed,
            ended,
            bins: bins.into_iter().zip(counts).collect(),
        });
        let mut workers = workers.into_iter();
        let ended = applied.into_iter().map(|code| Ended::of(code, workers.next())).collect();
        Ok(Finished { ended, claims, reason, retry_ms })
    }

    /// Adds what a finish counted to this queue's stats not written yet, and starts the flusher
    /// that writes them a moment later when none is on its way (`stats::Tally`).
    fn count(&self, counted: &Counted) {
        let tally = self.tallies.of(&self.keys);
        if !tally.add(counted) {
            return;
        }
        let (conn, queue) = (self.conn.clone(), self.name.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_AFTER).await;
                if let Err(e) = tally.flush(&conn).await {
                    warn!(%queue, error = %e, "writing the stats failed; their counts are lost");
                }
                if tally.done() {
                    return;
                }
            }
        });
    }

    /// Writes what this queue's finishes in this process counted and no flusher wrote yet, now.
    #[cfg(test)]
    pub(super) async fn flush_counts(&self) -> RedisResult<()> {
        self.tallies.of(&self.keys).flush(&self.conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        queue::{
            GROUP,
            lease::{LeasedPayload, Run, TRIM_ABOVE},
            testing::{echo_task, private_queue, unpacked},
        },
        stats::TALLY_SECONDS,
    };
    use redis::{AsyncCommands, streams::StreamAutoClaimReply};
    use std::sync::Arc;
    use uuid::Uuid;

    /// Enqueues an `echo` task with `payload`; returns its id.
    async fn enqueue_echo(queue: &Queue, payload: Bytes) -> Uuid {
        let task = echo_task(payload);
        queue.enqueue(&task).await.unwrap();
        task.id
    }

    /// Claims every ready entry and ends, with its holder's token, each task that runs; returns
    /// how many ran.
    async fn run_all(queue: &Queue) -> usize {
        let mut ran = 0;
        loop {
            let replies = unpacked(queue.claim("unit-worker", "*", 64, &[]).await.unwrap().0);
            if replies.is_empty() {
                return ran;
            }
            let endings: Vec<Ending> = replies
                .iter()
                .filter(|r| r[0] == b"run")
                .map(|r| {
                    let (id, token) = (String::from_utf8_lossy(&r[1]), String::from_utf8_lossy(&r[4]));
                    ending(queue, &id, r, &token, ResultBytes::New(Bytes::from_static(b"ok")))
                })
                .collect();
            assert!(end(queue, &endings).await.iter().all(|&a| a == Applied::AsReported));
            ran += endings.len();
        }
    }

    /// Enqueues an echo task and takes its lease: its id, the claim's replies (unpacked) and the
    /// lease's token.
    async fn lease_one_echo(queue: &Queue) -> (uuid::Uuid, Vec<Vec<Vec<u8>>>, String) {
        let id = enqueue_echo(queue, Bytes::from_static(b"p")).await;
        let replies = unpacked(queue.claim("unit-worker", "*", 1, &[]).await.unwrap().0);
        let token = String::from_utf8_lossy(&replies[0][Run::Token as usize]).into_owned();
        (id, replies, token)
    }

    /// Ends `endings` as a worker process does, taking no new leases: how each was applied.
    async fn end(queue: &Queue, endings: &[Ending]) -> Vec<Applied> {
        let finished = queue.end_attempts(endings, Holders::Process, 0, "unit-worker", "*").await.unwrap();
        finished.ended.iter().map(|e| e.applied).collect()
    }

    async fn staged_keys(queue: &Queue) -> Vec<String> {
        queue.conn.clone().keys(format!("{}:staged:*", queue.keys.base())).await.unwrap()
    }

    pub(super) fn ending(
        queue: &Queue,
        task_id: &str,
        reply: &[Vec<u8>],
        token: &str,
        result: ResultBytes,
    ) -> Ending {
        let text = |field: Run| String::from_utf8_lossy(&reply[field as usize]).into_owned();
        Ending {
            queue: queue.clone(),
            task_id: task_id.into(),
            stream_index: text(Run::Stream).parse::<usize>().unwrap() - 1,
            entry_id: text(Run::Entry),
            token: token.into(),
            outcome: "succeeded",
            error: String::new(),
            result_type: "application/octet-stream".into(),
            due_ms: 0,
            result: ResultPlace::of(result),
            reason: "",
            session: String::new(),
            idempotency_key: String::new(),
            stream: queue.keys.lane("echo")[text(Run::Stream).parse::<usize>().unwrap() - 1].clone(),
            shared_payload: false,
            known: None,
            slot: None,
            reply: oneshot::channel().0,
        }
    }

    /// The loops a handle starts (its submissions' group commits, its pulled ends') do not keep
    /// the handle's senders alive: a handle made for one request leaves nothing running behind
    /// once dropped, and the loops it fed end.
    #[tokio::test]
    async fn a_dropped_handle_leaves_no_loop_behind() {
        let (_redis, queue) = private_queue().await;
        let handle = queue.sibling("unit", "default");
        enqueue_echo(&handle, Bytes::from_static(b"p")).await;
        let token = format!("default~echo~{}~1~1700000000000-0~3000~{}:0", Uuid::now_v7(), Uuid::now_v7());
        let token = crate::queue::PullToken::decode(&token).unwrap();
        let ended = handle.end_pulled(&token, Outcome::Cancelled).await.unwrap();
        assert_eq!(ended.applied, Applied::Lost);
        let (submissions, ends) = (Arc::downgrade(&handle.enqueuer), Arc::downgrade(&handle.pulled_ends));
        assert!(submissions.upgrade().is_some_and(|e| e.get().is_some()), "the handle started its loops");
        assert!(ends.upgrade().is_some_and(|e| e.get().is_some()));
        drop(handle);
        assert!(submissions.upgrade().is_none(), "no loop holds the submissions' sender");
        assert!(ends.upgrade().is_none(), "no loop holds the pulled ends' sender");
    }

    /// A cancel asked for as an attempt ran stays on its record when the attempt fails anyway
    /// (nothing reads it of an ended task); the dead letter, queued again, runs rather than ending
    /// cancelled, with the failure's error and reason gone.
    #[tokio::test]
    async fn a_dead_letter_whose_cancel_was_asked_runs_when_queued_again() {
        let (_redis, queue) = private_queue().await;
        let (id, replies, token) = lease_one_echo(&queue).await;
        assert_eq!(queue.cancel(&id).await.unwrap(), crate::queue::CancelOutcome::Cancelling);
        let mut failed = ending(&queue, &id.to_string(), &replies[0], &token, ResultBytes::Payload);
        (failed.outcome, failed.error, failed.reason) = ("failed", "boom".into(), "non_retryable");
        assert_eq!(end(&queue, &[failed]).await, vec![Applied::AsReported]);
        let dead = queue.store().get(&id).await.unwrap().unwrap();
        assert_eq!(
            (dead.error.as_deref(), dead.dead_reason.as_deref()),
            (Some("boom"), Some("non_retryable"))
        );
        assert!(queue.requeue(&id).await.unwrap());
        let replies = unpacked(queue.claim("unit-worker", "*", 1, &[]).await.unwrap().0);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0][0], b"run", "the requeued task runs");
        let running = queue.store().get(&id).await.unwrap().unwrap();
        assert_eq!((running.status, running.attempts), (app::model::Status::Running, 1));
        assert_eq!((running.error, running.dead_reason), (None, None));
    }

    /// An error reported with the record separator in it: the end's event stays one event.
    #[tokio::test]
    async fn an_error_with_the_record_separator_keeps_to_its_own_event() {
        let (_redis, queue) = private_queue().await;
        let (id, replies, token) = lease_one_echo(&queue).await;
        let mut failing = ending(&queue, &id.to_string(), &replies[0], &token, ResultBytes::Payload);
        (failing.outcome, failing.reason) = ("failed", "non_retryable");
        failing.error = "one\u{1e}two\u{1f}three".into();
        assert_eq!(end(&queue, &[failing]).await, vec![Applied::AsReported]);
        // The end's entry holds its one event, whose error has a space for the separator; the
        // record keeps the error as it came.
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(queue.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut queue.conn.clone())
            .await
            .unwrap();
        let (field, events) = &entries[0].1[0];
        assert_eq!(field, "e");
        let events: Vec<&str> = events.split('\u{1e}').collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].starts_with(&format!("failed\u{1f}{id}\u{1f}")), "{events:?}");
        assert!(events[0].ends_with("\u{1f}one two\u{1f}three"), "{events:?}");
        let record = queue.store().get(&id).await.unwrap().unwrap();
        assert_eq!(record.error.as_deref(), Some("one\u{1e}two\u{1f}three"));
    }

    /// A small text result lives in the task's record; one that is not text, or larger, under a
    /// key of its own (kept for the retention); each reads back as it was given.
    #[tokio::test]
    async fn a_small_text_result_lives_in_the_record_and_any_other_under_its_own_key() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let results: [(&[u8], bool); 5] = [
            (br#"{"rows": 3, "text": "\u00e9t\u00e9"}"#, true),
            ("été".as_bytes(), true),
            (b"", true),
            (&[0xff, 0xfe, 0x00], false),
            (&[b'r'; RECORD_RESULT_MAX + 1], false),
        ];
        for (result, in_record) in results {
            let (id, replies, token) = lease_one_echo(&queue).await;
            let holder = ending(
                &queue,
                &id.to_string(),
                &replies[0],
                &token,
                ResultBytes::New(Bytes::copy_from_slice(result)),
            );
            assert_eq!(end(&queue, &[holder]).await, vec![Applied::AsReported]);
            let own_key: bool = conn.exists(queue.keys.result(&id)).await.unwrap();
            assert_eq!(own_key, !in_record, "{result:?}");
            let record = queue.store().get(&id).await.unwrap().unwrap();
            assert_eq!(record.inline_result.is_some(), in_record);
            let stored = queue.store().result(&record).await.unwrap().unwrap();
            assert_eq!(stored.bytes, result);
            assert_eq!(stored.content_type, "application/octet-stream");
        }
    }

    /// Large payloads and results never pass through Lua: the claim leaves the payload for a
    /// plain GET, a large result is staged and renamed, and a late holder's staged result goes.
    #[tokio::test]
    async fn large_payloads_and_results_travel_outside_the_scripts() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let payload = Bytes::from(vec![b'p'; 20_000]);
        let id = enqueue_echo(&queue, payload.clone()).await;

        let replies = unpacked(queue.claim("unit-worker", "*", 1, &[]).await.unwrap().0);
        let reply = &replies[0];
        let field = |f: Run| reply[f as usize].as_slice();
        assert_eq!(
            (field(Run::Tag), field(Run::PayloadIs), field(Run::Payload)),
            (&b"run"[..], &b"2"[..], &b""[..])
        );
        let token = String::from_utf8(field(Run::Token).to_vec()).unwrap();
        let mut lease = Lease::for_test(&queue, id, LeasedPayload::Stored, token.clone());
        assert_eq!(queue.take_payload(&mut lease).await.unwrap(), Some(payload));

        let result = Bytes::from(vec![b'r'; 40_000]);
        let late = ending(&queue, &id.to_string(), reply, "a-lost-lease:0", ResultBytes::New(result.clone()));
        assert_eq!(end(&queue, &[late]).await, vec![Applied::Lost]);
        assert_eq!(staged_keys(&queue).await, Vec::<String>::new(), "the late holder's result is gone");
        let status: String = conn.hget(queue.keys.task(&id), "status").await.unwrap();
        assert_eq!(status, "running");

        let holder = ending(&queue, &id.to_string(), reply, &token, ResultBytes::New(result.clone()));
        assert_eq!(end(&queue, &[holder]).await, vec![Applied::AsReported]);
        let stored: Vec<u8> = conn.get(queue.keys.result(&id)).await.unwrap();
        assert_eq!(stored, result.as_ref());
        let status: String = conn.hget(queue.keys.task(&id), "status").await.unwrap();
        assert_eq!(status, "succeeded");
        let ttl: i64 = conn.pttl(queue.keys.result(&id)).await.unwrap();
        assert!(ttl > 50_000, "the result is kept for the retention, not the staging time: {ttl}");
        assert_eq!(staged_keys(&queue).await, Vec::<String>::new());
    }

    /// A finish returns what it counted, and the process writes its finishes' counts together:
    /// each end counted once in every span's bucket, its wait and run sampled in the seconds' key,
    /// each key given its time to live.
    #[tokio::test]
    async fn the_counts_of_finishes_reach_the_stats_buckets_once() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        for _ in 0..5 {
            enqueue_echo(&queue, Bytes::from_static(b"{}")).await;
        }
        for _ in 0..5 {
            // One end per finish call.
            let replies = unpacked(queue.claim("unit-worker", "*", 1, &[]).await.unwrap().0);
            let (id, token) =
                (String::from_utf8_lossy(&replies[0][1]), String::from_utf8_lossy(&replies[0][4]));
            let one = ending(&queue, &id, &replies[0], &token, ResultBytes::New(Bytes::from_static(b"ok")));
            assert_eq!(end(&queue, &[one]).await, vec![Applied::AsReported]);
        }
        // However the flusher and these flushes take turns, each count is written once.
        queue.flush_counts().await.unwrap();
        queue.flush_counts().await.unwrap();

        let keys: Vec<String> = conn.keys(format!("{}:stats:*", queue.keys.base())).await.unwrap();
        // Per span: tasks succeeded, wait samples, run samples.
        let mut spans: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
        for key in keys {
            let span = key.rsplit(':').nth(1).unwrap().to_string();
            let fields: std::collections::HashMap<String, u64> = conn.hgetall(&key).await.unwrap();
            let counted = spans.entry(span).or_default();
            for (field, n) in fields {
                match field.split_at(1) {
                    ("w", _) => counted.1 += n,
                    ("r", _) => counted.2 += n,
                    _ if field.ends_with('s') => counted.0 += n,
                    _ => panic!("{key}: no end failed, yet {field} = {n}"),
                }
            }
            let ttl: i64 = conn.pttl(&key).await.unwrap();
            assert!(ttl > 0, "{key} is kept for its span's time, not for ever: {ttl}");
        }
        let expected: std::collections::BTreeMap<String, (u64, u64, u64)> =
            [("h".into(), (5, 0, 0)), ("m".into(), (5, 0, 0)), ("s".into(), (5, 5, 5))].into();
        assert_eq!(spans, expected);
        // And in the tally of ends per second, which the queue's view reads.
        let tally: std::collections::HashMap<u64, u64> = conn.hgetall(queue.keys.ended()).await.unwrap();
        assert_eq!(tally.values().sum::<u64>(), 5, "{tally:?}");
        assert_eq!(queue.state().await.unwrap().finished_last_minute, 5);
    }

    /// The tally of ends per second gets a process's counts per second of Redis's clock, and a
    /// flush that leaves it holding more than `TALLY_SECONDS` drops the older seconds; the queue's
    /// view counts the last minute of it.
    #[tokio::test]
    async fn the_tally_of_ends_keeps_two_minutes_and_the_view_reads_one() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let now = now_ms() / 1000;
        let mut written: Vec<(u64, u64)> = (0..TALLY_SECONDS).map(|s| (now - 1_000 - s, 1)).collect();
        written.push((now - 100, 2));
        written.push((now - 30, 7));
        let _: () = conn.hset_multiple(queue.keys.ended(), &written).await.unwrap();
        // A retry's run sample alone: a flush that writes no ends.
        let retried = Counted { at_ms: now * 1000, bins: vec![("r3".into(), 1)], ..Counted::default() };
        queue.count(&retried);
        queue.flush_counts().await.unwrap();
        queue.count(&Counted { at_ms: now * 1000, succeeded: 2, failed: 0, ended: 3, bins: Vec::new() });
        queue.count(&Counted { at_ms: now * 1000 + 999, ended: 1, ..Counted::default() });
        queue.flush_counts().await.unwrap();
        let tally: std::collections::HashMap<u64, u64> = conn.hgetall(queue.keys.ended()).await.unwrap();
        assert_eq!(tally, [(now - 100, 2), (now - 30, 7), (now, 4)].into());
        assert_eq!(queue.state().await.unwrap().finished_last_minute, 11);
    }

    /// Ended attempts' entries leave the ready stream in bulk trims, once it holds more than
    /// `TRIM_ABOVE`, never one still pending: a holder's entry survives every trim until it ends,
    /// and can be taken over meanwhile.
    #[tokio::test]
    async fn acknowledged_entries_are_trimmed_and_pending_ones_kept() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let ready = queue.keys.lane("echo")[1].clone();
        let small = || Bytes::from_static(b"{}");
        for _ in 0..300 {
            enqueue_echo(&queue, small()).await;
        }
        assert_eq!(run_all(&queue).await, 300);
        let held = enqueue_echo(&queue, small()).await;
        let replies = unpacked(queue.claim("unit-worker", "*", 1, &[]).await.unwrap().0);
        assert_eq!(replies[0][1], held.to_string().into_bytes());
        let held_entry = String::from_utf8(replies[0][3].clone()).unwrap();
        for _ in 0..300 {
            enqueue_echo(&queue, small()).await;
        }
        assert_eq!(queue.depth().await.unwrap(), 300, "entries handed out do not count as waiting");
        assert_eq!(run_all(&queue).await, 300);
        assert_eq!(queue.depth().await.unwrap(), 0);

        // The 300 newer entries keep the stream over `TRIM_ABOVE`, so each finish trims: everything
        // older than the held entry went, but for a node's worth; it stays.
        let older: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&ready)
            .arg("-")
            .arg(format!("({held_entry}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(older.len() < 100, "{} entries older than the pending one are left", older.len());
        let taken_over: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&ready)
            .arg(GROUP)
            .arg("another-worker")
            .arg(0)
            .arg("0-0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<_> = taken_over.claimed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec![held_entry.as_str()], "the pending entry is intact and can be taken over");
        assert_eq!(taken_over.claimed[0].get::<String>("task"), Some(held.to_string()));

        // Once it ends, nothing is pending and the trim (the stream holds the 300 newer entries)
        // reaches the last entry handed out, but for a node's worth.
        let token = String::from_utf8(replies[0][4].clone()).unwrap();
        let holder = ending(&queue, &held.to_string(), &replies[0], &token, ResultBytes::New(small()));
        assert_eq!(end(&queue, &[holder]).await, vec![Applied::AsReported]);
        let left: usize = conn.xlen(&ready).await.unwrap();
        assert!(left < 100, "{left} of 601 entries left after every task ended");
        enqueue_echo(&queue, small()).await;
        assert_eq!(queue.depth().await.unwrap(), 1);
        assert_eq!(run_all(&queue).await, 1, "a new entry after the trim is handed out");

        // Entries a claim drops (their tasks were cancelled while queued) are trimmed as well.
        for _ in 0..300 {
            let id = enqueue_echo(&queue, small()).await;
            queue.cancel(&id).await.unwrap();
        }
        assert_eq!(run_all(&queue).await, 0, "cancelled tasks do not run");
        let left: usize = conn.xlen(&ready).await.unwrap();
        assert!(left <= TRIM_ABOVE, "{left} entries left after 300 dropped ones");
    }
}
