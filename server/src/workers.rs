//! The worker registry: every worker process, built-in or pulling over HTTP, announces itself in
//! Redis, so that `GET /api/v1/workers` and the `courier_workers` gauge see the whole fleet from
//! any instance.
//!
//! A worker is a hash, `{prefix}:{_workers}:worker:{id}`: what it is (`runs`, `host`, `pid`,
//! `version`, `slots`, `started`), the queues it serves (`q:{queue}` fields) and the tasks it
//! runs now (`t:{task id}` = `{queue} {kind}`). It expires two lease periods after the worker was
//! last seen, and `{prefix}:{_workers}:workers` (id → last seen, ms) lists the ids (one hash tag:
//! an entry and the list are written together). A built-in worker rewrites its
//! hash when its running tasks change (at most once a second) and otherwise renews it a few times
//! per lease period; a pulling worker is seen whenever it asks for leases, renews or ends one.
//! Listing checks each running task against its record, so a lease that was lost or taken over
//! is not shown as running where it no longer runs.

use crate::redis_client::Conn;
use crate::{
    queues::Queues,
    store::{now_ms, rfc3339},
};
use app::model::{RunningTask, WorkerView};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// The version every worker of this build announces.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A built-in worker looks at its running tasks this often, and rewrites its entry when they
/// changed.
const BEAT: Duration = Duration::from_secs(1);

/// The registry of worker processes under one prefix; cheap to clone.
#[derive(Clone)]
pub struct Workers {
    conn: Conn,
    keys: Arc<WorkerKeys>,
    /// How long an entry outlives the last time its worker was seen: two lease periods.
    ttl: Duration,
    /// Where the ends of pulled leases wait to be written together (started on first use).
    pulled_ends: Arc<std::sync::OnceLock<mpsc::Sender<PulledEnd>>>,
}

/// A pulling worker ended its lease on a task: the registry is to forget that it runs it.
struct PulledEnd {
    worker: String,
    task: Uuid,
}

/// The most ends of pulled leases written in one round trip.
const PULLED_ENDS_BATCH: usize = 256;
/// The most ends of pulled leases waiting to be written: some 100 bytes each. Past it (Redis
/// slower than the ends for a long while), an end is not written, and its task stays listed
/// under its worker until the worker's entry expires.
const PULLED_ENDS_WAITING: usize = 65_536;

/// The Redis keys of the worker registry, all tagged `{_workers}` (`layout.rs`).
#[derive(Clone, Debug)]
pub(crate) struct WorkerKeys {
    base: String,
}

impl WorkerKeys {
    /// The keys under `prefix`.
    pub(crate) fn new(prefix: &str) -> WorkerKeys {
        WorkerKeys::under(&crate::layout::WORKERS.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> WorkerKeys {
        WorkerKeys { base: base.to_string() }
    }

    /// Worker ids by when each was last seen.
    pub(crate) fn index(&self) -> String {
        format!("{}:workers", self.base)
    }

    /// Worker `id`'s entry.
    pub(crate) fn worker(&self, id: &str) -> String {
        format!("{}:worker:{id}", self.base)
    }
}

/// What a worker process says about itself.
#[derive(Clone, Debug)]
pub struct Announcement {
    /// `built-in` or `pull`.
    pub runs: &'static str,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub version: Option<String>,
    /// The queues it serves (`*` for every queue).
    pub queues: Vec<String>,
    pub slots: u32,
}

/// The tasks a built-in worker process runs now, kept by its runner and announced by its beat.
#[derive(Default)]
pub struct Running {
    tasks: Mutex<HashMap<Uuid, (Arc<str>, String)>>,
    /// Bumped on every change, so that the beat knows when to rewrite the entry.
    changes: AtomicU64,
}

impl Running {
    /// Task `id` of `kind` in `queue` started here.
    pub fn started(&self, id: Uuid, queue: Arc<str>, kind: &str) {
        self.lock().insert(id, (queue, kind.to_string()));
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Task `id` ended here (or went back to its queue).
    pub fn ended(&self, id: &Uuid) {
        self.lock().remove(id);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Arc<str>, String)>> {
        // A panic while holding it left a map, not a broken invariant.
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot(&self) -> (u64, Vec<(Uuid, Arc<str>, String)>) {
        let changes = self.changes.load(Ordering::Relaxed);
        let tasks =
            self.lock().iter().map(|(id, (queue, kind))| (*id, queue.clone(), kind.clone())).collect();
        (changes, tasks)
    }
}

impl Announcement {
    /// A built-in worker of this process, serving `queues` with `slots` attempts at once.
    pub fn built_in(queues: Vec<String>, slots: u32) -> Announcement {
        Announcement {
            runs: "built-in",
            host: this_host(),
            pid: Some(std::process::id()),
            version: Some(VERSION.to_string()),
            queues,
            slots,
        }
    }
}

/// This machine's host name, as the kernel has it.
fn this_host() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

impl Workers {
    /// The registry under `prefix`, whose entries expire two `lease` periods after their
    /// worker was last seen.
    pub fn new(conn: Conn, prefix: &str, lease: Duration) -> Workers {
        Workers {
            conn,
            keys: Arc::new(WorkerKeys::new(prefix)),
            ttl: lease.saturating_mul(2).max(Duration::from_secs(1)),
            pulled_ends: Default::default(),
        }
    }

    /// Keeps built-in worker `id`'s entry current until `shutdown`, then removes it: rewritten
    /// when its running tasks change, renewed a few times per lease period otherwise.
    pub async fn keep_announcing(
        self,
        id: Arc<str>,
        announcement: Announcement,
        running: Arc<Running>,
        shutdown: CancellationToken,
    ) {
        let renew_every = self.ttl / 4;
        let started_ms = now_ms();
        let mut written: Option<(u64, tokio::time::Instant)> = None;
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let (changes, tasks) = running.snapshot();
            let due = match written {
                None => true,
                Some((seen, at)) => seen != changes || at.elapsed() >= renew_every,
            };
            if !due {
                continue;
            }
            match self.announce(&id, &announcement, started_ms, &tasks).await {
                Ok(()) => written = Some((changes, tokio::time::Instant::now())),
                Err(e) => warn!(error = %e, "announcing this worker in the registry failed; retrying"),
            }
        }
        if let Err(e) = self.gone(&id).await {
            warn!(error = %e, "removing this worker from the registry failed; it expires on its own");
        }
    }

    /// Writes built-in worker `id`'s whole entry, in one transaction: what it is, when it
    /// started and the tasks it runs now.
    async fn announce(
        &self,
        id: &str,
        announcement: &Announcement,
        started_ms: u64,
        tasks: &[(Uuid, Arc<str>, String)],
    ) -> redis::RedisResult<()> {
        let key = self.keys.worker(id);
        let mut fields = identity(announcement);
        fields.push(("started".into(), started_ms.to_string()));
        fields.push(("slots".into(), announcement.slots.to_string()));
        fields.extend(announcement.queues.iter().map(|queue| (format!("q:{queue}"), "1".to_string())));
        fields
            .extend(tasks.iter().map(|(task, queue, kind)| (format!("t:{task}"), format!("{queue} {kind}"))));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg(&fields)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.ttl.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.index())
            .arg(now_ms())
            .arg(id)
            .ignore();
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Pulling worker `id` was seen asking `queue` for up to `slots` leases (and was handed the
    /// tasks of `pulled`: id and kind).
    pub async fn seen_pulling(
        &self,
        id: &str,
        announcement: &Announcement,
        queue: &str,
        pulled: &[(Uuid, String)],
    ) -> redis::RedisResult<()> {
        let key = self.keys.worker(id);
        let mut fields = identity(announcement);
        fields.push((format!("q:{queue}"), "1".into()));
        fields.extend(pulled.iter().map(|(task, kind)| (format!("t:{task}"), format!("{queue} {kind}"))));
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&fields)
            .ignore()
            .cmd("HSETNX")
            .arg(&key)
            .arg("started")
            .arg(now_ms())
            .ignore()
            // The most leases it asked for at once: its slots, as far as Courier can tell.
            .cmd("HSET")
            .arg(&key)
            .arg(format!("slots:{queue}"))
            .arg(announcement.slots)
            .ignore();
        self.renew_in(&mut pipe, id, &key);
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Pulling worker `id` was seen: it renewed a lease.
    pub async fn pulled_running(&self, id: &str) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        self.renew_in(&mut pipe, id, &self.keys.worker(id));
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Pulling worker `id` ended its lease on `task`: its entry forgets the task a moment later.
    /// The ends that arrive together are written in one round trip (a group commit, as the ends
    /// themselves are: `Queue::end_pulled`), each worker seen once however many of its leases
    /// ended. Nobody waits for it: the end's answer is the task's, which the store has taken,
    /// and a wait was a second round trip to Redis, and a wake-up, before every answer
    /// (docs/benchmark-notes.md, "Fortieth step").
    pub fn pulled_ended(&self, id: &str, task: Uuid) {
        let ends = self.pulled_ends.get_or_init(|| {
            let (ends, arrived) = mpsc::channel(PULLED_ENDS_WAITING);
            tokio::spawn(self.clone().write_pulled_ends(arrived));
            ends
        });
        if let Err(e) = ends.try_send(PulledEnd { worker: id.to_string(), task }) {
            warn!(worker = id, %task, error = %e, "a pulled lease's end was not written to the worker registry");
        }
    }

    /// Writes the ends of pulled leases waiting, together: those that arrive during a write go
    /// in the next. Runs as long as the runtime (the registry it serves holds its sender).
    async fn write_pulled_ends(self, mut arrived: mpsc::Receiver<PulledEnd>) {
        while let Some(first) = arrived.recv().await {
            let batch = crate::store::gather(first, PULLED_ENDS_BATCH, || arrived.try_recv().ok());
            let mut tasks_by_worker: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for end in &batch {
                tasks_by_worker.entry(&end.worker).or_default().push(format!("t:{}", end.task));
            }
            let mut pipe = redis::pipe();
            for (worker, tasks) in &tasks_by_worker {
                let key = self.keys.worker(worker);
                pipe.cmd("HDEL").arg(&key).arg(tasks).ignore();
                self.renew_in(&mut pipe, worker, &key);
            }
            let written: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
            if let Err(e) = written {
                warn!(ends = batch.len(), error = %e, "updating pulling workers in the registry failed");
            }
        }
    }

    /// Adds to `pipe` what marks worker `id` (entry `key`) as seen now.
    fn renew_in(&self, pipe: &mut redis::Pipeline, id: &str, key: &str) {
        pipe.cmd("PEXPIRE")
            .arg(key)
            .arg(self.ttl.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.index())
            .arg(now_ms())
            .arg(id)
            .ignore();
    }

    /// Removes worker `id` (it stopped).
    pub async fn gone(&self, id: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("DEL")
            .arg(self.keys.worker(id))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.index())
            .arg(id)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Every worker seen within the last two lease periods, most recently started first, with
    /// the tasks each runs now (as their records confirm).
    pub async fn list(&self, queues: &Queues) -> redis::RedisResult<Vec<WorkerView>> {
        let now = now_ms();
        let since = now.saturating_sub(self.ttl.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (seen,): (Vec<(String, u64)>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.index())
            .arg("-inf")
            .arg(format!("({since}"))
            .ignore()
            .cmd("ZRANGE")
            .arg(self.keys.index())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if seen.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &seen {
            pipe.cmd("HGETALL").arg(self.keys.worker(id));
        }
        let entries: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut workers = Vec::new();
        for ((id, last_seen), fields) in seen.into_iter().zip(entries) {
            if fields.is_empty() {
                // Expired: the worker stopped without saying so.
                continue;
            }
            workers.push(view(id, &fields, last_seen));
        }
        self.confirm_running(&mut workers, queues).await?;
        workers.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(workers)
    }

    /// Keeps only the running tasks whose records say they run on that worker now, and forgets
    /// the others (a lease lost or taken over, a task whose worker never said it ended).
    async fn confirm_running(&self, workers: &mut [WorkerView], queues: &Queues) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let mut asked = 0;
        for worker in workers.iter() {
            for task in &worker.running {
                pipe.cmd("HMGET")
                    .arg(queues.handle(&task.queue).keys().task(&task.task_id))
                    .arg(&[crate::queue::record::STATUS, crate::queue::record::WORKER]);
                asked += 1;
            }
        }
        if asked == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let records: Vec<(Option<String>, Option<String>)> = conn.query_spread(&pipe).await?;
        let mut records = records.into_iter();
        let (mut stale, mut forgotten) = (redis::pipe(), 0);
        for worker in workers.iter_mut() {
            let id = worker.id.clone();
            worker.running.retain(|task| {
                let (status, holder) = records.next().unwrap_or_default();
                let runs_here =
                    status.as_deref() == Some("running") && holder.as_deref() == Some(id.as_str());
                if !runs_here {
                    stale.cmd("HDEL").arg(self.keys.worker(&id)).arg(format!("t:{}", task.task_id)).ignore();
                    forgotten += 1;
                }
                runs_here
            });
        }
        if forgotten == 0 {
            return Ok(());
        }
        stale.query_async::<()>(&mut conn).await
    }
}

/// The fields that say what a worker is: how it runs, where, and which build.
fn identity(announcement: &Announcement) -> Vec<(String, String)> {
    let mut fields = vec![("runs".to_string(), announcement.runs.to_string())];
    fields.extend(announcement.host.clone().map(|host| ("host".to_string(), host)));
    fields.extend(announcement.pid.map(|pid| ("pid".to_string(), pid.to_string())));
    fields.extend(announcement.version.clone().map(|version| ("version".to_string(), version)));
    fields
}

/// A worker's view from its entry's fields.
fn view(id: String, fields: &HashMap<String, String>, last_seen_ms: u64) -> WorkerView {
    let mut queues = Vec::new();
    let mut running = Vec::new();
    // A pulling worker's slots: the most leases it asked one queue for, summed over its queues.
    let mut pulled_slots: BTreeMap<&str, u32> = BTreeMap::new();
    for (name, value) in fields {
        if let Some(queue) = name.strip_prefix("q:") {
            queues.push(queue.to_string());
        } else if let Some(task) = name.strip_prefix("t:") {
            let (queue, kind) = value.split_once(' ').unwrap_or((value.as_str(), ""));
            if let Ok(task_id) = task.parse() {
                running.push(RunningTask { task_id, queue: queue.to_string(), kind: kind.to_string() });
            }
        } else if let Some(queue) = name.strip_prefix("slots:") {
            pulled_slots.insert(queue, value.parse().unwrap_or(0));
        }
    }
    queues.sort();
    running.sort_by_key(|task| task.task_id);
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let slots = match pulled_slots.is_empty() {
        true => number("slots").unwrap_or(0) as u32,
        false => pulled_slots.values().sum(),
    };
    WorkerView {
        runs: fields.get("runs").cloned().unwrap_or_default(),
        host: fields.get("host").cloned(),
        pid: number("pid").map(|pid| pid as u32),
        version: fields.get("version").cloned(),
        queues,
        slots,
        running,
        started_at: rfc3339(number("started").unwrap_or(last_seen_ms)),
        last_seen_at: rfc3339(last_seen_ms),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_reads_back_as_it_was_announced() {
        let task = Uuid::now_v7();
        let fields: HashMap<String, String> = [
            ("runs", "built-in"),
            ("host", "box"),
            ("pid", "42"),
            ("version", "1.2.3"),
            ("slots", "8"),
            ("started", "1700000000000"),
            ("q:billing", "1"),
            ("q:reports", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(format!("t:{task}"), "billing csv.summary".to_string())])
        .collect();
        let worker = view("worker-1".into(), &fields, 1_700_000_005_000);
        assert_eq!(worker.runs, "built-in");
        assert_eq!(worker.pid, Some(42));
        assert_eq!(worker.slots, 8);
        assert_eq!(worker.queues, ["billing", "reports"]);
        assert_eq!(
            worker.running,
            [RunningTask { task_id: task, queue: "billing".into(), kind: "csv.summary".into() }]
        );
        assert_eq!(worker.started_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(worker.last_seen_at, "2023-11-14T22:13:25.000Z");
    }

    #[test]
    fn a_pulling_workers_slots_add_up_over_its_queues() {
        let fields: HashMap<String, String> =
            [("runs", "pull"), ("slots:a", "10"), ("slots:b", "5"), ("slots", "5")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(view("w".into(), &fields, 0).slots, 15);
    }
}
