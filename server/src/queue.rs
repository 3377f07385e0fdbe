//! Courier's own Redis queue backend, and its adapter to apalis's `Backend` trait.
//!
//! Runnable task ids sit on Redis Streams read through a consumer group, one set per kind in a
//! queue (its lane, so a worker reads only the kinds it runs): `XREADGROUP BLOCK` hands
//! an entry to exactly one worker and records it as pending, which is the lease; the worker
//! renews it (`XCLAIM … JUSTID`) while the handler runs, and any worker takes over entries idle
//! longer than the lease (`XAUTOCLAIM`). Each claim writes a fresh token into the task record,
//! and every later write checks it, so a late ack from a dead lease's holder changes nothing.
//! Delays and retries wait in a sorted set until due. Every transition is one Lua script over
//! keys of one queue (one hash tag), that also appends the task event.
//!
//! Read top to bottom: this file (the queue's handle, enqueue, the operations on one task), then
//! `record` (the task record's fields), `lease` (a worker's hold on an attempt, and the claim's
//! reply), `fetch` (how free slots get leases), `finish` (how ended attempts are recorded in
//! batches, taking the next leases), `backend` (the adapter to apalis). The Lua scripts beside
//! them are the functions of one Redis Functions library (`library`, with `call.lua`, what each
//! call does first) and share its helpers: `events.lua` (the one task event), `kind_counts.lua`
//! (each kind's share of the delayed, retrying and dead sets), `ends.lua` (what every end does),
//! `session.lua`, `group.lua`, `lease.lua`.

use crate::redis_client::Conn;
use crate::store::{Keys, now_ms};
use app::model::{Priority, QueueCounts, QueueLimits, QueuedCounts, RateLimit};
use bytes::Bytes;
use library::{Access, Function, Library};
use redis::{AsyncCommands, streams::StreamInfoConsumersReply};
use std::{sync::Arc, time::Duration};
use tracing::warn;
use uuid::Uuid;

mod backend;
mod enqueue;
mod fetch;
mod finish;
mod lease;
mod library;
mod pull;
pub mod record;
mod relay;
mod serving;
mod transaction;

pub use backend::{BackendStopped, RedisBackend, backend};
pub use enqueue::Enqueued;
pub use finish::{Applied, Ended};
use lease::HeldEntry;
pub use lease::Lease;
use lease::LeasedPayload;
pub use pull::{PullToken, Pulled};
pub use relay::Relay;
pub use serving::{QueueChoice, Serving, parse_choice};

/// The consumer group every worker of a queue reads through.
const GROUP: &str = "workers";
/// How often the process that moves a queue's due tasks looks for them: a delayed task starts
/// within this of its due time (and a blocking read's wake-up after it).
const PROMOTE_TICK: Duration = Duration::from_millis(50);
/// How long a process stays the one that moves a queue's due tasks after its last look: another
/// takes over within about this much longer once it stops.
const PROMOTER_TERM: Duration = Duration::from_secs(3);
/// How often a process that does not move a queue's due tasks asks whether it should.
const PROMOTER_STANDBY: Duration = Duration::from_secs(1);
/// How many due tasks one promotion moves.
const PROMOTE_BATCH: usize = 500;

/// Tunables of a queue, from the configuration.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// How long an entry may go unrenewed before another worker takes it over.
    pub lease: Duration,
    /// How long finished records, payloads and results are kept.
    pub retention: Duration,
    /// How long dead letters (failed tasks) are kept.
    pub dead_retention: Duration,
    /// How long a succeeded task's payload is kept (at most `retention`; zero: released as the
    /// task succeeds), unless the payload is its result or lives in its record.
    pub payload_retention: Duration,
    /// The approximate cap of the events stream.
    pub events_maxlen: usize,
    /// Set: submissions are confirmed by a replica before they are answered.
    pub durable: Option<Durable>,
}

/// How submissions are made durable (`--durable-submit`): each enqueue is followed, in the same
/// round trip, by `WAIT 1`, so it is answered only once a replica holds it.
#[derive(Clone)]
pub struct Durable {
    /// A connection of its own: `WAIT` holds up every command behind it on its connection, and
    /// covers the writes made on it.
    pub conn: Conn,
    /// How long to wait for the replica.
    pub timeout: Duration,
}

impl Durable {
    /// Confirms that a replica holds every write Redis took before `touch`, a write that changes
    /// nothing (the same value again) sent on this connection: what another connection wrote,
    /// this one can then wait for.
    pub async fn confirm(&self, touch: redis::Cmd) -> redis::RedisResult<bool> {
        let mut pipe = redis::pipe();
        pipe.add_command(touch).ignore();
        pipe.add_command(enqueue::wait_for_replica(self));
        let (replicas,): (u64,) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(replicas >= enqueue::REPLICAS)
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// The queue's scripts: the functions of one library (`library.rs`).
struct Scripts {
    library: Arc<Library>,
    enqueue: Function,
    view: Function,
    claim: Function,
    pull: Function,
    renew: Function,
    progress: Function,
    finish: Function,
    cancel: Function,
    promote: Function,
    requeue: Function,
    purge: Function,
    release: Function,
    depth: Function,
    prune_index: Function,
    open_lanes: Function,
}

/// The helpers the scripts share, in the library in this order: a Lua local must be defined
/// before its first use.
const RECORD: &str = include_str!("queue/record.lua");
const NUMBERS: &str = include_str!("queue/numbers.lua");
const EVENTS: &str = include_str!("queue/events.lua");
const KIND_COUNTS: &str = include_str!("queue/kind_counts.lua");
const LANES: &str = include_str!("queue/lanes.lua");
const SESSIONS: &str = include_str!("queue/session.lua");
const GROUPS: &str = include_str!("queue/group.lua");
const ENDS: &str = include_str!("queue/ends.lua");
const LEASES: &str = include_str!("queue/lease.lua");
const HELPERS: [&str; 9] = [RECORD, NUMBERS, EVENTS, KIND_COUNTS, LANES, SESSIONS, GROUPS, ENDS, LEASES];

impl Scripts {
    fn load() -> Scripts {
        let library = Library::new(
            &HELPERS,
            &[
                ("enqueue", include_str!("queue/enqueue.lua"), Access::Writes),
                ("view", include_str!("queue/queue_view.lua"), Access::WritesEvenOom),
                ("claim", include_str!("queue/claim.lua"), Access::Writes),
                ("pull", include_str!("queue/pull.lua"), Access::Writes),
                ("renew", include_str!("queue/renew.lua"), Access::WritesEvenOom),
                ("progress", include_str!("queue/progress.lua"), Access::Writes),
                ("finish", include_str!("queue/finish.lua"), Access::Writes),
                ("cancel", include_str!("queue/cancel.lua"), Access::Writes),
                ("promote", include_str!("queue/promote.lua"), Access::Writes),
                ("requeue", include_str!("queue/requeue.lua"), Access::Writes),
                ("purge", include_str!("queue/purge.lua"), Access::WritesEvenOom),
                ("release", include_str!("queue/release.lua"), Access::WritesEvenOom),
                ("depth", include_str!("queue/depth.lua"), Access::Reads),
                ("prune_index", include_str!("queue/prune_index.lua"), Access::WritesEvenOom),
                ("open_lanes", include_str!("queue/open_lanes.lua"), Access::Writes),
            ],
        );
        Scripts {
            enqueue: library.function("enqueue"),
            view: library.function("view"),
            claim: library.function("claim"),
            pull: library.function("pull"),
            renew: library.function("renew"),
            progress: library.function("progress"),
            finish: library.function("finish"),
            cancel: library.function("cancel"),
            promote: library.function("promote"),
            requeue: library.function("requeue"),
            purge: library.function("purge"),
            release: library.function("release"),
            depth: library.function("depth"),
            prune_index: library.function("prune_index"),
            open_lanes: library.function("open_lanes"),
            library,
        }
    }
}

/// A boolean as the scripts read it.
fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

/// A handle on one queue in Redis; cheap to clone: its parts are shared, behind one reference
/// count (a worker clones a handle for each lease and each end).
#[derive(Clone)]
pub struct Queue(Arc<QueueParts>);

/// What the handles on one queue share (read through [`Queue`]).
#[derive(Clone)]
pub struct QueueParts {
    name: Arc<str>,
    /// Its number in the registry (0 for the default queue), which its task ids carry.
    number: u16,
    conn: Conn,
    client: crate::redis_client::RedisClient,
    keys: Keys,
    settings: Arc<QueueSettings>,
    scripts: Arc<Scripts>,
    /// When this process last pruned the listing index (ms since the epoch).
    last_prune_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The name this handle holds the queue's promoter term under: random, made by
    /// `Queue::new` and kept by every sibling and clone, so one per process, or per worker of a
    /// process on several threads (each has its own `Queue::new`), and never two promoting.
    promoter_id: Arc<str>,
    /// When this handle (or a clone) last renewed its term as the queue's promoter (ms since the
    /// epoch).
    promoter_renewed_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Where this handle's submissions wait to be sent together (started on first use).
    enqueuer: Arc<std::sync::OnceLock<enqueue::Enqueuer>>,
    /// What this process's enqueues found of the queue's limits: what lets the next submissions
    /// go as plain commands.
    limits_seen: Arc<enqueue::LimitsSeen>,
    /// Where the ends of this handle's pulled leases wait to be sent together (started on first
    /// use).
    pulled_ends: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<finish::Ending>>>,
    /// Where this handle's lease requests take leases without Lua (one at a time).
    plain_pulls: Arc<pull::PlainPulls>,
    /// What the finishes of every queue's handles in this process counted for the stats, until
    /// written together (a queue's tally is made by its first finish: a handle made to read
    /// what some name holds costs nothing there).
    tallies: Arc<crate::stats::Tallies>,
}

impl std::ops::Deref for Queue {
    type Target = QueueParts;

    fn deref(&self) -> &QueueParts {
        &self.0
    }
}

impl Queue {
    /// A handle for a loop this handle starts (its submissions' group commits, its pulled
    /// ends'): everything shared but the senders of its loops, so that a loop ends once every
    /// handle that feeds it is gone. (A loop holding its own sender would run for ever: one per
    /// handle made for a single request.)
    fn for_loop(&self) -> Queue {
        let parts =
            QueueParts { enqueuer: Default::default(), pulled_ends: Default::default(), ..(*self.0).clone() };
        Queue(Arc::new(parts))
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A task to enqueue: its record's first fields and its payload.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: Uuid,
    pub created_ms: u64,
    /// The queue it goes to.
    pub queue: String,
    pub kind: String,
    pub payload: Bytes,
    pub payload_type: String,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    pub priority: Priority,
    /// Tasks of one session run one at a time, in submission order.
    pub session: Option<String>,
    /// The topic subscription (`topic/name`) that created the task, if one did.
    pub subscription: Option<String>,
    /// The Redis key of the `Idempotency-Key` that created the task, if one did.
    pub idempotency_key: Option<String>,
    /// When the task expires if it has not started by then (ms since the epoch).
    pub expires_ms: Option<u64>,
    /// The payload this task shares with others (a topic message's), stored once.
    pub shared_payload: Option<SharedPayload>,
    /// The W3C trace context its attempts continue (`traceparent`).
    pub traceparent: Option<String>,
    /// The workflow step it runs, if it is one.
    pub workflow: Option<WorkflowStep>,
}

/// A task's place in a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowStep {
    pub workflow: Uuid,
    /// The step's id, or `id[n]` for the n-th task of a map.
    pub step: String,
}

/// A payload stored once for several tasks: under the id of the first of them (its owner), with a
/// count of the tasks still open that the ending scripts decrement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedPayload {
    /// The task under whose id the payload is stored.
    pub owner: Uuid,
    /// How many tasks share it; only the owner's enqueue writes it.
    pub tasks: usize,
}

/// The one-letter tag of a priority, as delayed-set members carry it (`h:{id}`).
fn priority_tag(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "h",
        Priority::Normal => "n",
        Priority::Low => "l",
    }
}

/// Why a worker may start nothing more from a queue for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    Paused,
    /// As many of its tasks run as its `concurrency` allows.
    Concurrency,
    /// Its `rate` allows no more starts in the current window.
    Rate,
}

/// A queue's counts, limits and pause flag, read at once.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueState {
    pub paused: bool,
    pub limits: QueueLimits,
    pub counts: QueueCounts,
    pub oldest_waiting_ms: Option<u64>,
    pub finished_last_minute: u64,
    /// Per kind with a lane in the queue or tasks waiting for a time or in the dead letters: its
    /// tasks by state, by kind name.
    pub kinds: std::collections::BTreeMap<String, KindCounts>,
}

/// One kind's tasks in a queue, by state: its lane counts those queued and running,
/// kind_counts.lua those scheduled, retrying and dead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub queued: u64,
    pub running: u64,
    pub scheduled: u64,
    pub retrying: u64,
    pub dead: u64,
}

/// The per-kind counts of a queue view's reply (`kind:{kind}:{state}`).
fn kind_counts(
    reply: &std::collections::HashMap<String, String>,
) -> std::collections::BTreeMap<String, KindCounts> {
    let mut kinds = std::collections::BTreeMap::<String, KindCounts>::new();
    for (name, value) in reply {
        let Some((kind, state)) = name.strip_prefix("kind:").and_then(|rest| rest.rsplit_once(':')) else {
            continue;
        };
        let value = value.parse().unwrap_or(0);
        let counts = kinds.entry(kind.to_string()).or_default();
        match state {
            "queued" => counts.queued = value,
            "running" => counts.running = value,
            "scheduled" => counts.scheduled = value,
            "retrying" => counts.retrying = value,
            "dead" => counts.dead = value,
            _ => {}
        }
    }
    kinds
}

/// How an attempt ended, as recorded by [`Queue::finish`].
#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded { result: ResultBytes, content_type: String },
    Retry { error: String, after: Duration },
    Failed { error: String, reason: DeadReason },
    Cancelled,
}

/// The bytes a succeeded attempt leaves as its result.
#[derive(Clone, Debug)]
pub enum ResultBytes {
    New(Bytes),
    /// The payload, unchanged: the task's payload key serves as its result, so nothing is
    /// copied or sent back.
    Payload,
}

/// Why a task ended in the dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// Every attempt failed with a retryable error.
    AttemptsExhausted,
    /// The handler said no retry could help.
    NonRetryable,
    /// The last attempt ran out of time.
    Timeout,
    /// Every attempt's worker stopped before finishing (crash, kill, lost lease).
    WorkersLost,
    /// No worker knows the kind.
    UnknownKind,
    /// The payload expired before the task ran.
    PayloadExpired,
    /// The task's own expiry (`ttl_ms` or `expires_at`) passed before an attempt could start.
    Expired,
}

impl DeadReason {
    /// Every reason, as [`app::model::DEAD_REASONS`] names them.
    pub const ALL: [DeadReason; 7] = [
        DeadReason::AttemptsExhausted,
        DeadReason::NonRetryable,
        DeadReason::Timeout,
        DeadReason::WorkersLost,
        DeadReason::UnknownKind,
        DeadReason::PayloadExpired,
        DeadReason::Expired,
    ];

    /// The wire name, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::AttemptsExhausted => "attempts_exhausted",
            DeadReason::NonRetryable => "non_retryable",
            DeadReason::Timeout => "timeout",
            DeadReason::WorkersLost => "workers_lost",
            DeadReason::UnknownKind => "unknown_kind",
            DeadReason::PayloadExpired => "payload_expired",
            DeadReason::Expired => "expired",
        }
    }
}

/// What renewing a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Held,
    Lost,
    CancelRequested,
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    Missing,
    Cancelled,
    /// The task is running: its handler has been told to stop.
    Cancelling,
    /// The task had already ended with this status.
    AlreadyFinished(app::model::Status),
}

impl Queue {
    /// Opens queue `name` under key `prefix` on the Redis behind `client`.
    pub fn new(
        client: crate::redis_client::RedisClient,
        conn: Conn,
        prefix: &str,
        name: &str,
        settings: QueueSettings,
    ) -> Queue {
        let tallies = Arc::new(crate::stats::Tallies::new(conn.clone()));
        Queue::with_scripts(
            client,
            conn,
            Keys::new(prefix, name),
            Arc::new(settings),
            Arc::new(Scripts::load()),
            tallies,
            Uuid::now_v7().to_string().into(),
        )
    }

    /// Another queue of the same Redis and settings, sharing the loaded scripts.
    pub fn sibling(&self, prefix: &str, name: &str) -> Queue {
        Queue::with_scripts(
            self.client.clone(),
            self.conn.clone(),
            Keys::new(prefix, name),
            self.settings.clone(),
            self.scripts.clone(),
            self.tallies.clone(),
            self.promoter_id.clone(),
        )
    }

    fn with_scripts(
        client: crate::redis_client::RedisClient,
        conn: Conn,
        keys: Keys,
        settings: Arc<QueueSettings>,
        scripts: Arc<Scripts>,
        tallies: Arc<crate::stats::Tallies>,
        promoter_id: Arc<str>,
    ) -> Queue {
        Queue(Arc::new(QueueParts {
            tallies,
            promoter_id,
            name: keys.queue().into(),
            number: 0,
            conn,
            client,
            keys,
            settings,
            scripts,
            last_prune_ms: Default::default(),
            promoter_renewed_ms: Default::default(),
            enqueuer: Default::default(),
            limits_seen: Default::default(),
            pulled_ends: Default::default(),
            plain_pulls: Default::default(),
        }))
    }

    /// The stats counts of every queue this handle's Redis has in this process (`stats::Tally`).
    pub fn tallies(&self) -> Arc<crate::stats::Tallies> {
        self.tallies.clone()
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's name, shared rather than copied.
    pub fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }

    /// This handle with the queue's registry number.
    pub(crate) fn numbered(mut self, number: u16) -> Queue {
        Arc::make_mut(&mut self.0).number = number;
        self
    }

    /// The queue's registry number (0 for the default queue).
    pub fn number(&self) -> u16 {
        self.number
    }

    /// The key names of this queue.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Reads of this queue's records, payloads and results.
    pub fn store(&self) -> crate::store::Store {
        crate::store::Store::new(self.conn.clone(), self.keys.clone())
    }

    /// The queue's settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Opens the lanes of `kinds` (ready streams and consumer group) where the queue has none
    /// yet, and moves tasks left on the ready streams of a Courier from before lanes onto theirs.
    pub async fn open_lanes(&self, kinds: &[String]) -> redis::RedisResult<()> {
        const BATCH: usize = 1_000;
        loop {
            // Its keys are given although the script builds them too, so that a Cluster client
            // sends it to the queue's node.
            let moved: usize = self
                .scripts
                .open_lanes
                .key(self.keys.lanes())
                .key(self.keys.ready_lanes())
                .key(&self.keys.ready_before_lanes())
                .arg(self.keys.base())
                .arg(BATCH)
                .arg(kinds)
                .invoke_async(&mut self.conn.clone())
                .await?;
            if moved < BATCH {
                return Ok(());
            }
        }
    }

    /// Every kind with a lane in this queue.
    pub async fn lane_kinds(&self) -> redis::RedisResult<Vec<String>> {
        self.conn.clone().smembers(self.keys.lanes()).await
    }

    /// Drops the listing index's entries of tasks that are gone, at most once a second per
    /// process and a bounded number at a time; an error only delays it.
    pub(super) async fn prune_index_now_and_then(&self) {
        use std::sync::atomic::Ordering;
        const EVERY_MS: u64 = 1_000;
        const MOST: usize = 1_000;
        let now = now_ms();
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now < last + EVERY_MS
            || self.last_prune_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        // Tasks created within the retention cannot have ended and expired yet; ids are UUIDv7,
        // so an id's first 48 bits are its creation time and the index sorts by it.
        let horizon = now.saturating_sub(self.settings.retention.as_millis() as u64);
        let pruned: redis::RedisResult<usize> = self
            .scripts
            .prune_index
            .key(self.keys.index())
            .key(self.keys.index_prune_cursor())
            .arg(self.keys.base())
            .arg(format!("{:08x}-{:04x}", horizon >> 16, horizon & 0xffff))
            .arg(MOST)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(e) = pruned {
            warn!(error = %e, "pruning the listing index failed; the next submit tries again");
        }
    }

    /// The task's idempotency key, or (for scripts that take one either way) a key never written.
    fn idempotency_key_or_none(&self, key: Option<&str>) -> String {
        key.map(str::to_string).unwrap_or_else(|| self.keys.idempotency(""))
    }

    /// The session a task belongs to (or `""`) and the key of its idempotency key, if any: its
    /// options (record.rs, `OPTIONS`), or fields of their own in a record stored before.
    async fn links_of(&self, id: &Uuid) -> redis::RedisResult<(String, Option<String>)> {
        let (packed, session, idem): (Option<Vec<u8>>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.task(id))
            .arg(record::OPTIONS)
            .arg(record::SESSION)
            .arg(record::IDEMPOTENCY_KEY)
            .query_async(&mut self.conn.clone())
            .await?;
        let (session, idem) = match packed.as_deref().and_then(record::Options::read) {
            Some(options) => (
                options.get(record::SESSION).map(str::to_string),
                options.get(record::IDEMPOTENCY_KEY).map(str::to_string),
            ),
            None => (session, idem),
        };
        Ok((session.unwrap_or_default(), idem.filter(|k| !k.is_empty())))
    }

    /// Takes the lease's payload for its handler, reading it from Redis if it was too large to
    /// come with the claim: `None` if it expired before the task ran.
    pub async fn take_payload(&self, lease: &mut Lease) -> redis::RedisResult<Option<Bytes>> {
        match std::mem::replace(&mut lease.payload, LeasedPayload::Gone) {
            LeasedPayload::Here(bytes) => Ok(Some(bytes)),
            LeasedPayload::Gone => Ok(None),
            LeasedPayload::Stored => {
                let owner = lease.payload_ref.unwrap_or(lease.task_id);
                let bytes: Option<Vec<u8>> = self.conn.clone().get(self.keys.payload(&owner)).await?;
                Ok(bytes.map(Bytes::from))
            }
        }
    }

    /// Renews `lease`, and tells whether it is still held and whether cancellation was asked.
    pub async fn renew(&self, lease: &Lease) -> redis::RedisResult<Renewal> {
        self.renew_entry(&lease.held(), Duration::ZERO).await
    }

    /// Renews the lease `held` with its entry left `idle` (zero: a full lease from now).
    async fn renew_entry(&self, held: &HeldEntry<'_>, idle: Duration) -> redis::RedisResult<Renewal> {
        let answer: i64 = self
            .scripts
            .renew
            .key(self.keys.task(held.task_id))
            .key(held.stream)
            .arg(held.token)
            .arg(GROUP)
            .arg(held.consumer)
            .arg(held.entry_id)
            .arg(idle.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match answer {
            0 => Renewal::Lost,
            2 => Renewal::CancelRequested,
            _ => Renewal::Held,
        })
    }

    /// Records progress (0–100) of a running attempt; `false` if the lease was lost.
    pub async fn progress(&self, lease: &Lease, percent: u8) -> redis::RedisResult<bool> {
        self.progress_of(&lease.task_id, &lease.token, percent).await
    }

    /// Records progress of the attempt of task `task_id` held with `token`.
    async fn progress_of(&self, task_id: &Uuid, token: &str, percent: u8) -> redis::RedisResult<bool> {
        let applied: i64 = self
            .scripts
            .progress
            .key(self.keys.task(task_id))
            .key(self.keys.events())
            .arg(token)
            .arg(percent.min(100))
            .arg(now_ms())
            .arg(task_id.to_string())
            .arg(self.settings.events_maxlen)
            .arg(self.keys.base())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(applied == 1)
    }

    /// Ends the attempt held by `lease` (through the worker's finish loop, which records
    /// attempts in batches); `false` (and no change) if the lease was lost.
    pub async fn finish(&self, lease: &Lease, outcome: Outcome) -> redis::RedisResult<bool> {
        lease.end(outcome).await
    }

    /// Hands an unfinished attempt back to the queue (it does not count); `false` if the lease
    /// was lost meanwhile.
    pub async fn release(&self, lease: &Lease) -> redis::RedisResult<bool> {
        self.release_entry(&lease.held()).await
    }

    /// Hands the attempt `held` back to the queue.
    async fn release_entry(&self, held: &HeldEntry<'_>) -> redis::RedisResult<bool> {
        let released: i64 = self
            .scripts
            .release
            .key(self.keys.task(held.task_id))
            .key(held.stream)
            .key(self.keys.events())
            .arg(held.token)
            .arg(GROUP)
            .arg(held.entry_id)
            .arg(now_ms())
            .arg(held.task_id.to_string())
            .arg(self.settings.events_maxlen)
            .arg(self.keys.base())
            .arg(self.settings.retention.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(released == 1)
    }

    /// Cancels a task: a waiting one at once, a running one by telling its handler to stop.
    pub async fn cancel(&self, id: &Uuid) -> redis::RedisResult<CancelOutcome> {
        let (session, idem) = self.links_of(id).await?;
        let mut call = self.scripts.cancel.prepare_invoke();
        call.key(self.keys.task(id))
            .key(self.keys.delayed())
            .key(self.keys.events())
            .key(self.keys.session(&session))
            .key(self.idempotency_key_or_none(idem.as_deref()))
            .key(self.keys.retrying());
        self.requeue_args(&mut call, id, &session, idem.is_some());
        let answer: String = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(match answer.as_str() {
            "missing" => CancelOutcome::Missing,
            "cancelled" => CancelOutcome::Cancelled,
            "cancelling" => CancelOutcome::Cancelling,
            other => {
                let status = other.strip_prefix("finished:").and_then(app::model::Status::parse);
                CancelOutcome::AlreadyFinished(status.unwrap_or(app::model::Status::Succeeded))
            }
        })
    }

    /// Claims an idempotency key for `value`; returns `None` when claimed, or the value it
    /// already holds. The claim lasts a minute unless the enqueue that follows makes it the
    /// task's (kept until the task ends, then for its retention).
    pub async fn claim_idempotency_key(&self, key: &str, value: &str) -> redis::RedisResult<Option<String>> {
        const CLAIM_MS: u64 = 60_000;
        let mut conn = self.conn.clone();
        loop {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_MS)
                .query_async(&mut conn)
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            let held: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
            // Expired between the two commands: try to claim it again.
            if let Some(held) = held {
                return Ok(Some(held));
            }
        }
    }

    /// Forgets an idempotency key whose task could not be enqueued.
    pub async fn release_idempotency_key(&self, key: &str) -> redis::RedisResult<()> {
        redis::cmd("DEL").arg(key).query_async(&mut self.conn.clone()).await
    }

    /// The arguments the cancel and requeue scripts share: now, task id, events maxlen,
    /// retention, session ('' for none), whether the task has an idempotency key, key base.
    fn requeue_args(&self, call: &mut library::Call<'_>, id: &Uuid, session: &str, has_idem: bool) {
        call.arg(now_ms())
            .arg(id.to_string())
            .arg(self.settings.events_maxlen)
            .arg(self.settings.retention.as_millis() as u64)
            .arg(session)
            .arg(flag(has_idem))
            .arg(self.keys.base());
    }

    /// Takes a dead letter out of the dead-letter set and queues it again with its attempts
    /// reset; `false` if it is not a dead letter.
    pub async fn requeue(&self, id: &Uuid) -> redis::RedisResult<bool> {
        let (session, idem) = self.links_of(id).await?;
        let mut call = self.scripts.requeue.prepare_invoke();
        call.key(self.keys.task(id))
            .key(self.keys.dead())
            .key(self.keys.events())
            .key(self.keys.session(&session))
            .key(self.idempotency_key_or_none(idem.as_deref()));
        self.requeue_args(&mut call, id, &session, idem.is_some());
        let requeued: i64 = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(requeued == 1)
    }

    /// Deletes a dead letter with its payload; `false` if it is not a dead letter.
    pub async fn purge(&self, id: &Uuid) -> redis::RedisResult<bool> {
        let (_, idem) = self.links_of(id).await?;
        let purged: i64 = self
            .scripts
            .purge
            .key(self.keys.task(id))
            .key(self.keys.dead())
            .key(self.keys.payload(id))
            .key(self.keys.result(id))
            .key(self.keys.index())
            .key(self.idempotency_key_or_none(idem.as_deref()))
            .arg(id.to_string())
            .arg(self.keys.base())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(purged == 1)
    }

    /// Gives up this handle's term as the queue's promoter, if it has one (its worker stops).
    pub async fn resign_promoter(&self) -> redis::RedisResult<()> {
        crate::store::release_lock(&mut self.conn.clone(), &self.keys.promoter(), &self.promoter_id).await
    }

    /// Ends waiting tasks whose expiry passed, and moves delayed tasks that are due onto the
    /// ready stream, if nobody else (another process, or another worker of this one) does that
    /// for this queue now (one at a time, so that idle workers cost Redis next to nothing);
    /// returns how many moved or expired (the larger of the two), `None` when another holds the
    /// queue's promoter term.
    ///
    /// A look is one round trip of plain commands (a script call costs Redis ~50 µs here when
    /// it idles, measured: docs/benchmark-notes.md); the promotion's script runs only when
    /// something is due.
    pub async fn promote_due(&self) -> redis::RedisResult<Option<usize>> {
        let now = now_ms();
        let term = PROMOTER_TERM.as_millis() as u64;
        let promoter = self.keys.promoter();
        let mut look = redis::pipe();
        // Nobody's (or the last one's term ran out): this worker's now.
        look.cmd("SET").arg(&promoter).arg(&*self.promoter_id).arg("NX").arg("PX").arg(term).ignore();
        look.cmd("GET").arg(&promoter);
        for waiting in [self.keys.delayed(), self.keys.retrying(), self.keys.expiring()] {
            look.cmd("ZRANGEBYSCORE").arg(waiting).arg("-inf").arg(now).arg("LIMIT").arg(0).arg(1);
        }
        let mut conn = self.conn.clone();
        let (holder, delayed, retrying, expiring): (Option<String>, Vec<String>, Vec<String>, Vec<String>) =
            look.query_async(&mut conn).await?;
        if holder.as_deref() != Some(&*self.promoter_id) {
            return Ok(None);
        }
        // The term is renewed a few times per term, not at every look. Should the renewal come
        // after the term ran out and another took over, both promote for a moment: harmless, a
        // promotion moves each due task once.
        let renewed = self.promoter_renewed_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(renewed) >= term / 3 {
            redis::cmd("SET")
                .arg(&promoter)
                .arg(&*self.promoter_id)
                .arg("XX")
                .arg("PX")
                .arg(term)
                .query_async::<()>(&mut conn)
                .await?;
            self.promoter_renewed_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        if delayed.is_empty() && retrying.is_empty() && expiring.is_empty() {
            return Ok(Some(0));
        }
        self.scripts
            .promote
            .key(self.keys.delayed())
            .key(self.keys.expiring())
            .key(self.keys.events())
            .key(self.keys.retrying())
            .arg(now)
            .arg(PROMOTE_BATCH)
            .arg(self.keys.base())
            .arg(self.settings.dead_retention.as_millis() as u64)
            .arg(self.settings.events_maxlen)
            .invoke_async(&mut conn)
            .await
            .map(Some)
    }

    /// Loads the queue's scripts into Redis (every queue's: they are one library) unless it has
    /// them: a process does as it starts, so that a Redis that cannot run them (before 7.0, or an
    /// ACL user without `FUNCTION LOAD`) says so at once.
    pub async fn load_scripts(&self) -> redis::RedisResult<()> {
        self.scripts.library.load(&mut self.conn.clone()).await
    }

    /// How many tasks wait to run: queued, scheduled or waiting for a retry.
    pub async fn depth(&self) -> redis::RedisResult<u64> {
        self.scripts
            .depth
            .key(self.keys.delayed())
            .key(self.keys.retrying())
            .arg(GROUP)
            .arg(self.keys.base())
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// The queue's counts, limits and pause flag, in one read.
    pub async fn state(&self) -> redis::RedisResult<QueueState> {
        let reply: std::collections::HashMap<String, String> = self
            .scripts
            .view
            .key(self.keys.delayed())
            .key(self.keys.retrying())
            .key(self.keys.dead())
            .key(self.keys.ended())
            .key(self.keys.settings())
            .arg(GROUP)
            .arg(now_ms())
            .arg(self.keys.base())
            .arg(self.settings.dead_retention.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let number = |name: &str| reply.get(name).and_then(|v| v.parse::<u64>().ok());
        let count = |name: &str| number(name).unwrap_or(0);
        let small = |n: u64| n.min(u64::from(u32::MAX)) as u32;
        Ok(QueueState {
            paused: reply.get("paused").is_some_and(|p| p == "1"),
            limits: QueueLimits {
                max_depth: number("max_depth"),
                concurrency: number("concurrency").map(small),
                rate: number("rate_limit")
                    .zip(number("rate_period_ms"))
                    .map(|(limit, period_ms)| RateLimit { limit: small(limit), period_ms }),
            },
            counts: QueueCounts {
                queued: QueuedCounts {
                    high: count("queued_high"),
                    normal: count("queued_normal"),
                    low: count("queued_low"),
                },
                scheduled: count("scheduled"),
                retrying: count("retrying"),
                running: count("running"),
                dead: count("dead"),
            },
            oldest_waiting_ms: number("oldest_waiting_ms"),
            finished_last_minute: count("finished_last_minute"),
            kinds: kind_counts(&reply),
        })
    }

    /// Replaces the queue's limits (an absent one is no limit); every worker's next claim and this
    /// process's next submit obey them (another server's within a group commit or two:
    /// queue/enqueue.rs).
    pub async fn set_limits(&self, limits: &QueueLimits) -> redis::RedisResult<()> {
        let key = self.keys.settings();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(&key)
            .arg(&["max_depth", "concurrency", "rate_limit", "rate_period_ms"])
            .ignore();
        let mut fields: Vec<(&str, u64)> = Vec::new();
        fields.extend(limits.max_depth.map(|d| ("max_depth", d)));
        fields.extend(limits.concurrency.map(|c| ("concurrency", u64::from(c))));
        if let Some(rate) = limits.rate {
            fields.push(("rate_limit", u64::from(rate.limit)));
            fields.push(("rate_period_ms", rate.period_ms));
        }
        if !fields.is_empty() {
            pipe.cmd("HSET").arg(&key).arg(&fields).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        // This process's next submissions look at the limits afresh (another process's do from
        // its next round trip: enqueue.rs).
        self.forget_unlimited();
        Ok(())
    }

    /// Pauses (workers take none of its tasks; running ones finish) or resumes the queue, and
    /// tells every event stream; `false` if it already was so.
    pub async fn set_paused(&self, paused: bool) -> redis::RedisResult<bool> {
        let (now, status) = (now_ms().to_string(), if paused { "paused" } else { "active" });
        let mut pipe = redis::pipe();
        pipe.atomic();
        if paused {
            pipe.cmd("HSETNX").arg(self.keys.settings()).arg("paused").arg("1");
        } else {
            pipe.cmd("HDEL").arg(self.keys.settings()).arg("paused");
        }
        let fields =
            [("event", app::model::QUEUE_EVENT), ("queue", &self.name), ("status", status), ("at", &now)];
        pipe.cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings.events_maxlen)
            .arg("*")
            .arg(&fields)
            .ignore();
        let (changed,): (i64,) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(changed == 1)
    }

    /// Forgets consumers of stopped workers (nothing pending, idle for an hour), so the group's
    /// consumer list does not grow with every worker that ever ran.
    pub(super) async fn prune_consumers(self) {
        const IDLE_MS: usize = 3_600_000;
        let kinds = self.lane_kinds().await.unwrap_or_default();
        for stream in kinds.iter().flat_map(|kind| self.keys.lane(kind)) {
            let mut conn = self.conn.clone();
            let info: redis::RedisResult<StreamInfoConsumersReply> =
                redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP).query_async(&mut conn).await;
            let Ok(info) = info else { continue };
            for consumer in info.consumers.iter().filter(|c| c.pending == 0 && c.idle > IDLE_MS) {
                let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&consumer.name)
                    .query_async(&mut conn)
                    .await;
            }
        }
    }
}

/// Exponential pauses between attempts to reach Redis: 50 ms doubling up to 5 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = (self.failures + 1).min(8);
        Duration::from_millis(50 << (self.failures - 1)).min(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the queue modules' tests share: a queue on a Redis of its own, and a plain task for it.
#[cfg(test)]
pub(crate) mod testing {
    use super::{NewTask, Queue, QueueSettings};
    use crate::{embedded_redis::EmbeddedRedis, store::now_ms};
    use app::model::Priority;
    use bytes::Bytes;
    use std::time::Duration;
    use uuid::Uuid;

    /// A queue on a redis-server of its own, with an `echo` lane, which lives as long as the
    /// first half (the server stops before its directory goes).
    pub(crate) async fn private_queue() -> ((EmbeddedRedis, tempfile::TempDir), Queue) {
        let dir = tempfile::tempdir().unwrap();
        let redis = EmbeddedRedis::start(dir.path()).await.unwrap();
        let client = crate::redis_client::open(&redis.url(), false, None).unwrap();
        let conn = client.connect(Duration::from_secs(10)).await.unwrap();
        let settings = QueueSettings {
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(60),
            dead_retention: Duration::from_secs(120),
            // Shorter than the retention, so that a test tells the two apart.
            payload_retention: Duration::from_secs(30),
            events_maxlen: 1000,
            durable: None,
        };
        let queue = Queue::new(client, conn, "unit", "default", settings);
        queue.open_lanes(&["echo".to_string()]).await.unwrap();
        ((redis, dir), queue)
    }

    /// A claim's replies with each run reply's fields unpacked, in `lease::Run`'s order (other
    /// replies as they came): what a test reads a lease from.
    pub(crate) fn unpacked(replies: Vec<Vec<Vec<u8>>>) -> Vec<Vec<Vec<u8>>> {
        replies.into_iter().map(super::lease::RunReply::unpacked).collect()
    }

    /// How many times Redis ran `FCALL` so far.
    pub(crate) async fn fcalls(queue: &Queue) -> u64 {
        calls(queue, "fcall").await
    }

    /// How many times Redis ran `command` (lower case) so far, by `INFO commandstats`.
    pub(crate) async fn calls(queue: &Queue, command: &str) -> u64 {
        let info: String =
            redis::cmd("INFO").arg("commandstats").query_async(&mut queue.conn.clone()).await.unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Text with task `id` written `ID` and every time in ms (13 digits) written `T`.
    pub(crate) fn anonymous(text: &str, id: Uuid) -> String {
        let text = text.replace(&id.to_string(), "ID");
        let mut out = String::with_capacity(text.len());
        let mut digits = String::new();
        for c in text.chars().chain(std::iter::once('\0')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            out.push_str(if digits.len() == 13 { "T" } else { &digits });
            digits.clear();
            if c != '\0' {
                out.push(c);
            }
        }
        out
    }

    /// `queue` as seen by a Redis user of `redis` that may run every command but `MULTI` (made
    /// here): what a transaction's probe must find out.
    pub(crate) async fn without_multi(redis: &EmbeddedRedis, queue: &Queue) -> Queue {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "no-multi", "on", ">pw", "~*", "&*", "+@all", "-multi"][..])
            .query_async(&mut queue.conn.clone())
            .await
            .unwrap();
        let url = redis.url();
        let at = url.find('@').expect("the URL names a user");
        let client =
            crate::redis_client::open(&format!("redis://no-multi:pw{}", &url[at..]), false, None).unwrap();
        let conn = client.connect(Duration::from_secs(10)).await.unwrap();
        Queue::new(client, conn, "unit", "default", (*queue.settings).clone())
    }

    /// Gives `task` an idempotency key, claimed for it as a submission claims one before its
    /// enqueue, kept `ttl_s` seconds.
    pub(crate) async fn claim_idempotency_key(queue: &Queue, task: &mut NewTask, ttl_s: u64) {
        let key = queue.keys.idempotency(&task.id.to_string());
        let _: () = redis::AsyncCommands::set_ex(&mut queue.conn.clone(), &key, task.id.to_string(), ttl_s)
            .await
            .unwrap();
        task.idempotency_key = Some(key);
    }

    /// An `echo` task with `payload` and no options.
    pub(crate) fn echo_task(payload: Bytes) -> NewTask {
        NewTask {
            id: Uuid::now_v7(),
            created_ms: now_ms(),
            queue: "default".into(),
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
            traceparent: None,
            workflow: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_reasons_are_the_ones_the_model_names() {
        let names: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, app::model::DEAD_REASONS);
        assert!(include_str!("queue/ends.lua").contains("'dead_reason', 'expired'"));
    }

    #[test]
    fn the_lanes_are_read_through_the_group_the_workers_use() {
        assert!(LANES.contains(&format!("local LANE_GROUP = '{GROUP}'")));
    }

    #[test]
    fn redis_backoff_doubles_up_to_five_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(pauses, vec![50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn one_worker_promotes_with_every_handle_of_its_own_and_another_waits_its_turn() {
        let ((_redis, _dir), queue) = testing::private_queue().await;
        // Another worker of the same process (`--threads`) or of another: a `Queue::new` of its own.
        let other = Queue::new(
            queue.client.clone(),
            queue.conn.clone(),
            "unit",
            "default",
            (*queue.settings).clone(),
        );
        assert_eq!(queue.promote_due().await.unwrap(), Some(0), "the first to look takes the term");
        assert_eq!(other.promote_due().await.unwrap(), None, "the other waits");
        // The holder's handles promote as it: a sibling (what `Queues::handle` makes for a queue
        // this process has not opened, for each pull request) and a loop's.
        assert_eq!(queue.sibling("unit", "default").promote_due().await.unwrap(), Some(0));
        assert_eq!(queue.for_loop().promote_due().await.unwrap(), Some(0));
        // Resigned (its worker stops): the other takes over at its next look.
        queue.resign_promoter().await.unwrap();
        assert_eq!(other.promote_due().await.unwrap(), Some(0));
        assert_eq!(queue.promote_due().await.unwrap(), None);
    }
}
