//! A worker process's side of the queue: how attempts get their leases and how they end.
//!
//! Two loops serve a process's worker slots. The *finish loop* records ended attempts in batches
//! (one script for all that ended meanwhile) and, in the same round trip, takes leases on new
//! entries for the slots those attempts free, so a busy worker goes from one task to the next
//! without a read of its own. The *fetch loop* fills the slots that are left: it reads new
//! entries (one script), blocks on the streams when they are empty, and takes over entries whose
//! holder stopped renewing them. Both hand leases to apalis through one channel.

use super::{Backoff, GROUP, Outcome, Queue, ResultBytes};
use crate::store::now_ms;
use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    layers::Identity,
    task::{Task, task_id::RandomId},
    worker::context::WorkerContext,
};
use bytes::Bytes;
use redis::{
    AsyncConnectionConfig, RedisResult, ScriptInvocation,
    aio::MultiplexedConnection,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};
use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

/// The most entries one read takes (bounded further by free worker slots).
const FETCH_BATCH: usize = 64;
/// The most attempts one finish script ends.
const FINISH_BATCH: usize = 64;
/// How long one blocking read waits before looking again (and noticing shutdown).
const BLOCK: Duration = Duration::from_secs(1);
/// Results larger than this are staged with a plain `SET` before the finish script, which only
/// renames them: copying large strings through Lua stalls Redis for everyone.
const INLINE_RESULT_MAX: usize = 16 * 1024;
/// How long a staged result waits for its finish script (which runs right after it) at most.
const STAGED_TTL: Duration = Duration::from_secs(300);

/// A worker's hold on one attempt of one task: what it needs to run it and to report back.
#[derive(Debug)]
pub struct Lease {
    pub task_id: Uuid,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub payload_type: String,
    /// The ordered session the task belongs to.
    pub session: Option<String>,
    /// The payload as the claim left it; [`Queue::take_payload`] hands it to the runner.
    pub(super) payload: LeasedPayload,
    /// The Redis key of the task's `Idempotency-Key`, kept as long as the task.
    pub(super) idempotency_key: Option<String>,
    /// The task whose id the payload is stored under when it is shared (a topic message's).
    pub(super) payload_ref: Option<Uuid>,
    pub(super) entry_id: String,
    /// The ready stream the entry is on: its key, and its place (0 = most urgent).
    pub(super) stream: String,
    pub(super) stream_index: usize,
    pub(super) token: String,
    pub(super) consumer: Arc<str>,
    /// The worker slot the attempt occupies; the finish loop passes it on to the next lease.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    finisher: mpsc::Sender<Ending>,
}

/// The fields of a `run` reply of `take_lease` (queue/lease.lua), by their place in it.
#[derive(Clone, Copy)]
enum Run {
    Tag,
    TaskId,
    Stream,
    Entry,
    Token,
    Attempt,
    Kind,
    MaxAttempts,
    TimeoutMs,
    PayloadType,
    Session,
    PayloadIs,
    Payload,
    IdempotencyKey,
    PayloadRef,
}

impl Run {
    /// Every field in reply order, with the name lease.lua gives it.
    const FIELDS: [(Run, &'static str); 15] = [
        (Run::Tag, "run"),
        (Run::TaskId, "id"),
        (Run::Stream, "stream"),
        (Run::Entry, "entry"),
        (Run::Token, "token"),
        (Run::Attempt, "attempt"),
        (Run::Kind, "kind"),
        (Run::MaxAttempts, "max_attempts"),
        (Run::TimeoutMs, "timeout_ms"),
        (Run::PayloadType, "payload_type"),
        (Run::Session, "session"),
        (Run::PayloadIs, "payload_is"),
        (Run::Payload, "payload"),
        (Run::IdempotencyKey, "idempotency_key"),
        (Run::PayloadRef, "payload_ref"),
    ];
}

/// A claim's reply for one task to run, read by field name.
struct RunReply(Vec<Vec<u8>>);

impl RunReply {
    /// The reply, if it is a `run` reply of the expected length.
    fn of(reply: Vec<Vec<u8>>) -> Option<RunReply> {
        (reply.len() == Run::FIELDS.len() && reply[Run::Tag as usize] == b"run").then_some(RunReply(reply))
    }

    fn text(&self, field: Run) -> String {
        String::from_utf8_lossy(&self.0[field as usize]).into_owned()
    }

    /// The field as text, `None` when empty.
    fn optional(&self, field: Run) -> Option<String> {
        Some(self.text(field)).filter(|t| !t.is_empty())
    }

    fn take(&mut self, field: Run) -> Vec<u8> {
        std::mem::take(&mut self.0[field as usize])
    }
}

/// A lease's payload: small ones come with the claim, large ones are read on their own.
#[derive(Debug)]
pub(super) enum LeasedPayload {
    Here(Bytes),
    /// Too large to copy through the claim script: a plain `GET` reads it.
    Stored,
    /// Expired before the task ran (or already taken).
    Gone,
}

/// An ended attempt on its way to the finish loop, in the finish script's terms.
struct Ending {
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
    slot: Option<OwnedSemaphorePermit>,
    reply: oneshot::Sender<RedisResult<bool>>,
}

/// Where the finish script finds an ended attempt's result, decided once per attempt.
enum ResultPlace {
    /// Small enough to pass as a script argument.
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
            ResultBytes::New(bytes) => ResultPlace::Here(bytes),
            ResultBytes::Payload => ResultPlace::Payload,
        }
    }

    /// The finish script's two result arguments: the bytes, and where the result is.
    fn script_args(&self) -> (&[u8], &'static str) {
        match self {
            ResultPlace::Here(bytes) => (bytes, ""),
            ResultPlace::Staged(_) => (b"", "staged"),
            ResultPlace::Payload => (b"", "payload"),
        }
    }
}

impl Lease {
    /// Sends the ended attempt to the finish loop, with the lease's slot the first time, and
    /// waits until it is recorded: `false` if the lease was lost meanwhile.
    pub(super) async fn end(&self, outcome: Outcome) -> RedisResult<bool> {
        let stopped =
            || redis::RedisError::from((redis::ErrorKind::Client, "the worker's finish loop stopped"));
        let (reply, answer) = oneshot::channel();
        let mut ending = Ending {
            task_id: self.task_id.to_string(),
            stream_index: self.stream_index,
            entry_id: self.entry_id.clone(),
            token: self.token.clone(),
            outcome: "",
            error: String::new(),
            result_type: String::new(),
            due_ms: 0,
            result: ResultPlace::Here(Bytes::new()),
            reason: "",
            session: self.session.clone().unwrap_or_default(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            slot: self.slot.lock().unwrap_or_else(|e| e.into_inner()).take(),
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
        self.finisher.send(ending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What the leases of one worker process share, and where they go.
#[derive(Clone)]
struct Leasing {
    queue: Queue,
    consumer: Arc<str>,
    /// Weak, so that the channels close once the fetch loop and every lease are gone.
    leases: mpsc::WeakSender<Lease>,
    endings: mpsc::WeakSender<Ending>,
    shutdown: CancellationToken,
}

impl Leasing {
    /// Turns the replies of a claim into leases, each taking a slot from `slots`; replies that
    /// are not runnable tasks (dropped, cancelled) take none.
    fn leases_of(&self, replies: Vec<Vec<Vec<u8>>>, slots: &mut Vec<OwnedSemaphorePermit>) -> Vec<Lease> {
        let Some(finisher) = self.endings.upgrade() else { return Vec::new() };
        let streams = self.queue.keys.ready_streams();
        let mut leases = Vec::new();
        for reply in replies {
            let Some(mut reply) = RunReply::of(reply) else { continue };
            let (Ok(task_id), Some(stream_index)) = (
                reply.text(Run::TaskId).parse::<Uuid>(),
                reply
                    .text(Run::Stream)
                    .parse::<usize>()
                    .ok()
                    .and_then(|s| s.checked_sub(1))
                    .filter(|&s| s < 3),
            ) else {
                warn!("a claim named no task this worker can read; its lease will expire");
                continue;
            };
            let Some(slot) = slots.pop() else {
                warn!("a claim returned more tasks than there were free slots");
                break;
            };
            let payload = match reply.text(Run::PayloadIs).as_str() {
                "1" => LeasedPayload::Here(Bytes::from(reply.take(Run::Payload))),
                "2" => LeasedPayload::Stored,
                _ => LeasedPayload::Gone,
            };
            leases.push(Lease {
                task_id,
                kind: reply.text(Run::Kind),
                attempt: reply.text(Run::Attempt).parse().unwrap_or(1),
                max_attempts: reply.text(Run::MaxAttempts).parse().unwrap_or(1),
                timeout_ms: reply.text(Run::TimeoutMs).parse().ok(),
                payload_type: reply.optional(Run::PayloadType).unwrap_or_else(|| "application/json".into()),
                session: reply.optional(Run::Session),
                payload,
                idempotency_key: reply.optional(Run::IdempotencyKey),
                payload_ref: reply.text(Run::PayloadRef).parse().ok(),
                entry_id: reply.text(Run::Entry),
                stream: streams[stream_index].clone(),
                stream_index,
                token: reply.text(Run::Token),
                consumer: self.consumer.clone(),
                slot: Mutex::new(Some(slot)),
                finisher: finisher.clone(),
            });
        }
        leases
    }

    /// Hands leases to apalis; once the worker is stopping, hands them back to the queue instead.
    async fn deliver(&self, leases: Vec<Lease>) {
        for lease in leases {
            let undelivered = match self.leases.upgrade() {
                Some(tx) => tx.send(lease).await.err().map(|e| e.0),
                None => Some(lease),
            };
            if let Some(lease) = undelivered
                && let Err(e) = self.queue.release(&lease).await
            {
                warn!(error = %e, "handing back a task taken while stopping failed; its lease will expire");
            }
        }
    }
}

impl Queue {
    /// Starts fetching for up to `concurrency` attempts at once, and returns the apalis backend
    /// that hands them to the worker. Fetching stops when `shutdown` fires; attempts in flight
    /// can still end after that.
    pub fn backend(&self, concurrency: usize, shutdown: CancellationToken) -> RedisBackend {
        let (leases, rx) = mpsc::channel(concurrency.max(1));
        let (endings, ending_rx) = mpsc::channel(concurrency.max(1));
        let leasing = Leasing {
            queue: self.clone(),
            consumer: format!("worker-{}", Uuid::now_v7()).into(),
            leases: leases.downgrade(),
            endings: endings.downgrade(),
            shutdown: shutdown.clone(),
        };
        let slots = Arc::new(Semaphore::new(concurrency));
        tokio::spawn(self.clone().prune_consumers());
        tokio::spawn(leasing.clone().finish_loop(ending_rx));
        // The fetch loop owns the strong senders: the backend ends once it stops.
        tokio::spawn(leasing.fetch_loop(slots, leases, endings));
        tokio::spawn(self.clone().promote_loop(shutdown));
        RedisBackend { rx, next: None }
    }

    /// Ends a batch of attempts and takes up to `want` new leases, in one script.
    async fn end_attempts(
        &self,
        endings: &[Ending],
        want: usize,
        consumer: &str,
    ) -> RedisResult<(Vec<i64>, Vec<Vec<Vec<u8>>>)> {
        let settings = &self.settings;
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
        call.key(&self.keys.ready_streams())
            .key(self.keys.events())
            .key(self.keys.delayed())
            .key(self.keys.dead());
        self.leasing_args(&mut call, consumer).arg(settings.retention.as_millis() as u64).arg(want);
        for e in endings {
            call.arg(&e.task_id)
                .arg(e.stream_index + 1)
                .arg(&e.entry_id)
                .arg(&e.token)
                .arg(e.outcome)
                .arg(&e.error)
                .arg(&e.result_type)
                .arg(e.due_ms);
            let (bytes, source) = e.result.script_args();
            call.arg(bytes).arg(e.reason).arg(&e.session).arg(&e.idempotency_key).arg(source);
        }
        call.invoke_async(&mut self.conn.clone()).await
    }

    /// The arguments both lease-taking scripts start with: key base, group, consumer, a fresh
    /// token base (each lease's token is `base:n`), now, events maxlen, dead-letter retention
    /// (for tasks a claim finds expired).
    fn leasing_args<'c, 'a>(
        &self,
        call: &'c mut ScriptInvocation<'a>,
        consumer: &str,
    ) -> &'c mut ScriptInvocation<'a> {
        call.arg(self.keys.base())
            .arg(GROUP)
            .arg(consumer)
            .arg(Uuid::now_v7().to_string())
            .arg(now_ms())
            .arg(self.settings.events_maxlen)
            .arg(self.settings.dead_retention.as_millis() as u64)
    }

    /// Takes leases on the `given` entries (stream index, entry), or when there are none on up
    /// to `count` new entries, most urgent first; returns the script's replies.
    async fn claim(
        &self,
        consumer: &str,
        count: usize,
        given: &[(usize, StreamId)],
    ) -> RedisResult<Vec<Vec<Vec<u8>>>> {
        let mut call = self.scripts.claim.prepare_invoke();
        call.key(&self.keys.ready_streams()).key(self.keys.events());
        self.leasing_args(&mut call, consumer).arg(count);
        for (stream, entry) in given {
            // An entry without a task id is not ours to interpret: the script drops it.
            let task = entry.get::<String>("task").unwrap_or_default();
            call.arg(stream + 1).arg(&entry.id).arg(task);
        }
        call.invoke_async(&mut self.conn.clone()).await
    }

    async fn blocking_connection(&self) -> RedisResult<MultiplexedConnection> {
        // Blocking reads wait longer than any response timeout would allow.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }
}

impl Leasing {
    /// Records ended attempts in batches, and reuses their slots for new leases taken in the
    /// same script. Runs until every lease and the fetch loop are gone.
    async fn finish_loop(self, mut endings: mpsc::Receiver<Ending>) {
        while let Some(first) = endings.recv().await {
            let mut batch = vec![first];
            while batch.len() < FINISH_BATCH {
                match endings.try_recv() {
                    Ok(ending) => batch.push(ending),
                    Err(_) => break,
                }
            }
            let mut slots: Vec<_> = batch.iter_mut().filter_map(|e| e.slot.take()).collect();
            let want = if self.shutdown.is_cancelled() { 0 } else { slots.len() };
            match self.queue.end_attempts(&batch, want, &self.consumer).await {
                Ok((applied, claims)) => {
                    for (ending, applied) in batch.into_iter().zip(applied) {
                        let _ = ending.reply.send(Ok(applied == 1));
                    }
                    let leases = self.leases_of(claims, &mut slots);
                    drop(slots);
                    self.deliver(leases).await;
                }
                Err(e) => {
                    // Nothing was applied: each attempt's runner tries again.
                    for ending in batch {
                        let _ = ending.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        debug!("finishing stopped");
    }

    /// Fills free slots: new entries if there are any, else a blocking read; now and then it
    /// takes over entries whose lease expired.
    async fn fetch_loop(
        self,
        slots: Arc<Semaphore>,
        _leases: mpsc::Sender<Lease>,
        _endings: mpsc::Sender<Ending>,
    ) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        let lease = self.queue.settings.lease;
        let reclaim_every = (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_reclaim: Option<Instant> = None;
        loop {
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
            match self.fetch(&mut conn, &mut free, reclaim).await {
                Ok(leases) => {
                    backoff.reset();
                    // Slots left over (fewer tasks than slots) are freed here.
                    drop(free);
                    self.deliver(leases).await;
                }
                Err(_) if self.shutdown.is_cancelled() => break,
                Err(e) => {
                    conn = None;
                    if e.code() == Some("NOGROUP") {
                        // Redis lost the group (a restart without persistence): make it again.
                        let _ = self.queue.ensure_group().await;
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

    /// Leases for the `free` slots: entries whose lease expired (when `reclaim`), else new
    /// entries, else whatever a blocking read brings. Entries claimed but not runnable are
    /// dropped by the script.
    async fn fetch(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        free: &mut Vec<OwnedSemaphorePermit>,
        reclaim: bool,
    ) -> RedisResult<Vec<Lease>> {
        let queue = &self.queue;
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(queue.blocking_connection().await?),
        };
        let streams = queue.keys.ready_streams();
        if reclaim {
            for (index, stream) in streams.iter().enumerate() {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(self.consumer.as_ref())
                    .arg(queue.settings.lease.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(free.len())
                    .query_async(conn)
                    .await?;
                if !reply.claimed.is_empty() {
                    debug!(count = reply.claimed.len(), "taking over tasks whose lease expired");
                    let given: Vec<_> = reply.claimed.into_iter().map(|e| (index, e)).collect();
                    let replies = queue.claim(&self.consumer, given.len(), &given).await?;
                    return Ok(self.leases_of(replies, free));
                }
            }
        }
        let replies = queue.claim(&self.consumer, free.len(), &[]).await?;
        if !replies.is_empty() {
            return Ok(self.leases_of(replies, free));
        }
        // Nothing anywhere: one blocking read over all, woken by whichever gets a task first.
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(self.consumer.as_ref())
            .arg("COUNT")
            .arg(free.len())
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&[">", ">", ">"][..])
            .query_async(conn)
            .await?;
        // Several streams may answer at once (up to `free` entries each): claim the most urgent
        // first, and give back what does not fit.
        let mut given: Vec<(usize, StreamId)> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| {
                let index = streams.iter().position(|s| *s == k.key).unwrap_or(1);
                k.ids.into_iter().map(move |e| (index, e))
            })
            .collect();
        given.sort_by_key(|(index, _)| *index);
        let extra = given.split_off(given.len().min(free.len()));
        if !extra.is_empty() {
            self.hand_back_unclaimed(conn, &extra).await?;
        }
        if given.is_empty() {
            return Ok(Vec::new());
        }
        let replies = queue.claim(&self.consumer, given.len(), &given).await?;
        Ok(self.leases_of(replies, free))
    }

    /// Returns entries read but not claimed to their stream, as fresh entries, so others take
    /// them.
    async fn hand_back_unclaimed(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &[(usize, StreamId)],
    ) -> RedisResult<()> {
        let streams = self.queue.keys.ready_streams();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (index, entry) in entries {
            let stream = &streams[*index];
            if let Some(task) = entry.get::<String>("task") {
                pipe.cmd("XADD").arg(stream).arg("*").arg("task").arg(task).ignore();
            }
            // Acknowledged only: the finish script trims acknowledged entries in bulk.
            pipe.cmd("XACK").arg(stream).arg(GROUP).arg(&entry.id).ignore();
        }
        pipe.query_async(conn).await
    }
}

/// The apalis side of the queue: yields leased tasks; never fails, because the loops behind it
/// ride out Redis errors themselves (a backend error would end the apalis worker).
pub struct RedisBackend {
    rx: mpsc::Receiver<Lease>,
    next: Option<Lease>,
}

/// The error type apalis asks of a backend; this one never produces it.
#[derive(Debug, thiserror::Error)]
#[error("the Courier queue backend stopped")]
pub struct BackendStopped;

impl Backend for RedisBackend {
    type Task = Task<Lease>;
    type Error = BackendStopped;

    fn poll_ready(&mut self, cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        if self.next.is_none() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(lease) => self.next = lease,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        // `None` only once the fetch loop has stopped (shutdown): the worker then drains and ends.
        Poll::Ready(self.next.take().map(|lease| Ok(Task::new(lease))))
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RedisBackend {
    type Args = Lease;
    type Id = RandomId;
    // Leases arrive decoded, so apalis has no codec to wrap around this backend.
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        embedded_redis::EmbeddedRedis,
        queue::{NewTask, QueueSettings},
        store::Keys,
    };
    use app::model::Priority;
    use redis::AsyncCommands;

    /// A queue on a redis-server of its own, which lives as long as the first half (the
    /// server stops before its directory goes).
    async fn private_queue() -> ((EmbeddedRedis, tempfile::TempDir), Queue) {
        let dir = tempfile::tempdir().unwrap();
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let conn = client.get_connection_manager().await.unwrap();
        let settings = QueueSettings {
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(60),
            dead_retention: Duration::from_secs(120),
            events_maxlen: 1000,
        };
        let queue = Queue::new(client, conn, Keys::new("unit", "default"), settings);
        queue.ensure_group().await.unwrap();
        ((redis, dir), queue)
    }

    /// Enqueues an `echo` task with `payload`; returns its id.
    async fn enqueue_echo(queue: &Queue, payload: Bytes) -> Uuid {
        let id = Uuid::now_v7();
        queue
            .enqueue(&NewTask {
                id,
                created_ms: now_ms(),
                kind: "echo".into(),
                payload,
                payload_type: "application/octet-stream".into(),
                max_attempts: 1,
                timeout_ms: None,
                delay_ms: None,
                priority: Priority::Normal,
                session: None,
                subscription: None,
                idempotency_key: None,
                expires_ms: None,
                shared_payload: None,
            })
            .await
            .unwrap();
        id
    }

    /// Claims every ready entry and ends, with its holder's token, each task that runs; returns
    /// how many ran.
    async fn run_all(queue: &Queue) -> usize {
        let mut ran = 0;
        loop {
            let replies = queue.claim("unit-worker", 64, &[]).await.unwrap();
            if replies.is_empty() {
                return ran;
            }
            let endings: Vec<Ending> = replies
                .iter()
                .filter(|r| r[0] == b"run")
                .map(|r| {
                    let (id, token) = (String::from_utf8_lossy(&r[1]), String::from_utf8_lossy(&r[4]));
                    ending(&id, r, &token, ResultBytes::New(Bytes::from_static(b"ok")))
                })
                .collect();
            let (applied, _) = queue.end_attempts(&endings, 0, "unit-worker").await.unwrap();
            assert!(applied.iter().all(|&a| a == 1));
            ran += endings.len();
        }
    }

    async fn staged_keys(queue: &Queue) -> Vec<String> {
        queue.conn.clone().keys(format!("{}:staged:*", queue.keys.base())).await.unwrap()
    }

    fn ending(task_id: &str, reply: &[Vec<u8>], token: &str, result: ResultBytes) -> Ending {
        let text = |field: Run| String::from_utf8_lossy(&reply[field as usize]).into_owned();
        Ending {
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
            slot: None,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn the_run_reply_is_read_in_the_order_lease_lua_writes_it() {
        let lua = include_str!("lease.lua");
        let line =
            lua.lines().find_map(|l| l.strip_prefix("-- run reply: ")).expect("lease.lua names its reply");
        let written: Vec<&str> = line.split(", ").collect();
        let read: Vec<&str> = Run::FIELDS.iter().map(|(_, name)| *name).collect();
        assert_eq!(written, read);
        for (place, (field, _)) in Run::FIELDS.iter().enumerate() {
            assert_eq!(*field as usize, place);
        }
        // And the return statement builds as many fields as the comment names.
        let ret = &lua[lua.find("return {'run'").expect("take_lease returns a run reply")..];
        let ret = &ret[..ret.find('}').unwrap()];
        assert_eq!(ret.matches(',').count() + 1, read.len());
    }

    /// Large payloads and results never pass through Lua: the claim leaves the payload for a
    /// plain GET, a large result is staged and renamed, and a late holder's staged result goes.
    #[tokio::test]
    async fn large_payloads_and_results_travel_outside_the_scripts() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let payload = Bytes::from(vec![b'p'; 20_000]);
        let id = enqueue_echo(&queue, payload.clone()).await;

        let replies = queue.claim("unit-worker", 1, &[]).await.unwrap();
        let reply = &replies[0];
        let field = |f: Run| reply[f as usize].as_slice();
        assert_eq!(
            (field(Run::Tag), field(Run::PayloadIs), field(Run::Payload)),
            (&b"run"[..], &b"2"[..], &b""[..])
        );
        let token = String::from_utf8(field(Run::Token).to_vec()).unwrap();
        let (consumer, permits): (Arc<str>, _) = ("unit-worker".into(), Arc::new(Semaphore::new(1)));
        let (finisher, _endings) = mpsc::channel(1);
        let mut lease = Lease {
            task_id: id,
            kind: "echo".into(),
            attempt: 1,
            max_attempts: 1,
            timeout_ms: None,
            payload_type: String::new(),
            session: None,
            payload: LeasedPayload::Stored,
            idempotency_key: None,
            payload_ref: None,
            entry_id: String::new(),
            stream: String::new(),
            stream_index: 1,
            token: token.clone(),
            consumer,
            slot: Mutex::new(permits.try_acquire_owned().ok()),
            finisher,
        };
        assert_eq!(queue.take_payload(&mut lease).await.unwrap(), Some(payload));

        let result = Bytes::from(vec![b'r'; 40_000]);
        let late = ending(&id.to_string(), reply, "a-lost-lease:0", ResultBytes::New(result.clone()));
        let (applied, _) = queue.end_attempts(&[late], 0, "unit-worker").await.unwrap();
        assert_eq!(applied, vec![0]);
        assert_eq!(staged_keys(&queue).await, Vec::<String>::new(), "the late holder's result is gone");
        let status: String = conn.hget(queue.keys.task(&id), "status").await.unwrap();
        assert_eq!(status, "running");

        let holder = ending(&id.to_string(), reply, &token, ResultBytes::New(result.clone()));
        let (applied, _) = queue.end_attempts(&[holder], 0, "unit-worker").await.unwrap();
        assert_eq!(applied, vec![1]);
        let stored: Vec<u8> = conn.get(queue.keys.result(&id)).await.unwrap();
        assert_eq!(stored, result.as_ref());
        let (status, size): (String, u64) = redis::cmd("HMGET")
            .arg(queue.keys.task(&id))
            .arg("status")
            .arg("result_bytes")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((status.as_str(), size), ("succeeded", 40_000));
        let ttl: i64 = conn.pttl(queue.keys.result(&id)).await.unwrap();
        assert!(ttl > 50_000, "the result is kept for the retention, not the staging time: {ttl}");
        assert_eq!(staged_keys(&queue).await, Vec::<String>::new());
    }

    /// Ended attempts' entries leave the ready stream in bulk trims, never one still pending: a
    /// holder's entry survives every trim until it ends, and can be taken over meanwhile.
    #[tokio::test]
    async fn acknowledged_entries_are_trimmed_and_pending_ones_kept() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let ready = queue.keys.ready();
        let small = || Bytes::from_static(b"{}");
        for _ in 0..300 {
            enqueue_echo(&queue, small()).await;
        }
        assert_eq!(run_all(&queue).await, 300);
        let held = enqueue_echo(&queue, small()).await;
        let replies = queue.claim("unit-worker", 1, &[]).await.unwrap();
        assert_eq!(replies[0][1], held.to_string().into_bytes());
        let held_entry = String::from_utf8(replies[0][3].clone()).unwrap();
        for _ in 0..300 {
            enqueue_echo(&queue, small()).await;
        }
        assert_eq!(queue.depth().await.unwrap(), 300, "entries handed out do not count as waiting");
        assert_eq!(run_all(&queue).await, 300);
        assert_eq!(queue.depth().await.unwrap(), 0);

        // Everything older than the held entry went, but for a node's worth; it stays.
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

        // Once it ends, nothing is pending and the trim reaches the last entry handed out.
        let token = String::from_utf8(replies[0][4].clone()).unwrap();
        let (applied, _) = queue
            .end_attempts(
                &[ending(&held.to_string(), &replies[0], &token, ResultBytes::New(small()))],
                0,
                "unit-worker",
            )
            .await
            .unwrap();
        assert_eq!(applied, vec![1]);
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
        assert!(left < 100, "{left} entries left after 300 dropped ones");
    }
}
