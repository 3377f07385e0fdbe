//! Which queues a worker process serves, with what weights, and how its free slots are shared
//! among the queues that have work.
//!
//! A worker serves the queues it is told (`--queues reports:3,default:1`) or, told none, every
//! queue there is (it looks for new ones every second). When several queues have work, free slots
//! go to the queue furthest below its share (its running attempts over its weight), so one
//! queue's backlog never holds another's tasks back beyond the weights. A queue that is paused,
//! or at its concurrency or rate limit, is left alone until the claim says to look again.
//!
//! Of each queue it reads the lanes of the kinds it runs (lanes.lua), which it asks for afresh
//! at every look, as declared kinds come and go.

use super::Queue;
use crate::queues::{QueueError, Queues};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::warn;

/// How often a worker serving every queue looks for new ones (and so the longest the first task
/// of a new queue waits for it: a delayed one too, as no process promotes the due tasks of a
/// queue it has not found yet). Each look ends the blocking read to start another; the looks of
/// every process fall on the same ticks of the wall clock, so Redis wakes once for them all.
/// Measured (docs/benchmark-notes.md): 100 idle workers cost Redis 2.6 % of a core at 250 ms,
/// 1.7 % at 500 ms, 1.4 % at 1 s, where the first delayed task of a new queue started 300 ms
/// late.
pub(super) const DISCOVER_EVERY: Duration = Duration::from_millis(500);

/// The kinds a worker process runs, asked afresh at every look (declared kinds come and go).
pub type KindsRun = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The queues a worker is told to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueChoice {
    /// Every queue there is, now and later, each weighing 1.
    Every,
    /// These queues, with their weights.
    Only(Vec<(String, u32)>),
}

/// One queue a worker serves, with its weight and what this process runs of it.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) queue: Queue,
    pub(super) weight: u32,
    /// Attempts of this queue running in this process.
    pub(super) running: Arc<AtomicUsize>,
    /// Left alone until then (paused, or at its limits).
    blocked_until: Option<Instant>,
}

/// The queues of one worker process.
pub struct Serving {
    queues: Queues,
    choice: QueueChoice,
    concurrency: usize,
    served: Mutex<Vec<Served>>,
    discovered: Mutex<Option<u64>>,
    kinds_run: KindsRun,
    /// The kinds whose lanes are open in every queue served, as the scripts take them
    /// (comma-separated).
    kinds: Mutex<(Vec<String>, Arc<str>)>,
    /// The worker process's id (`worker-{uuid}`): its consumer name in every queue's group, what
    /// its attempts record, and its entry in the worker registry.
    id: Arc<str>,
    /// How many times a queue was left alone for a while ([`Serving::block`]).
    blocks: std::sync::atomic::AtomicU64,
}

impl Serving {
    /// The queues `choice` names, of `queues`, for a process running `concurrency` attempts of
    /// the kinds `kinds_run` names.
    pub fn new(queues: Queues, choice: QueueChoice, concurrency: usize, kinds_run: KindsRun) -> Arc<Serving> {
        Arc::new(Serving {
            queues,
            choice,
            concurrency,
            served: Mutex::default(),
            discovered: Mutex::default(),
            blocks: Default::default(),
            kinds_run,
            kinds: Mutex::new((Vec::new(), "".into())),
            id: format!("worker-{}", uuid::Uuid::now_v7()).into(),
        })
    }

    /// The worker process's id.
    pub fn id(&self) -> Arc<str> {
        self.id.clone()
    }

    /// The queues it serves, as the worker registry lists them (`*` for every queue).
    pub fn queue_names(&self) -> Vec<String> {
        match &self.choice {
            QueueChoice::Every => vec!["*".to_string()],
            QueueChoice::Only(queues) => queues.iter().map(|(name, _)| name.clone()).collect(),
        }
    }

    /// How many attempts it runs at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The kinds this process runs, whose lanes it reads, as the scripts take them.
    pub(super) fn kinds_arg(&self) -> Arc<str> {
        self.kinds.lock().expect("never poisoned").1.clone()
    }

    /// The kinds this process runs, whose lanes it reads.
    pub(super) fn kinds(&self) -> Vec<String> {
        self.kinds.lock().expect("never poisoned").0.clone()
    }

    /// How long a lease lasts unrenewed (the same for every queue).
    pub(super) fn lease(&self) -> Duration {
        self.queues.default_queue().settings.lease
    }

    /// The Redis client, for connections of a worker's own.
    pub(super) fn client(&self) -> &crate::redis_client::RedisClient {
        &self.queues.default_queue().client
    }

    /// Opens the queues to serve (and, serving every queue, those made since the last look), with
    /// the lanes of the kinds this process runs now.
    pub(super) async fn refresh(&self) -> Result<(), QueueError> {
        {
            // Once per tick of the wall clock (`store::tick_number`), with the process's other
            // looks.
            let tick = crate::store::tick_number(DISCOVER_EVERY);
            let mut discovered = self.discovered.lock().expect("never poisoned");
            if *discovered == Some(tick) {
                return Ok(());
            }
            *discovered = Some(tick);
        }
        let mut kinds = (self.kinds_run)();
        kinds.sort();
        kinds.dedup();
        if kinds != self.kinds() {
            for served in self.all() {
                served.queue.open_lanes(&kinds).await?;
            }
            *self.kinds.lock().expect("never poisoned") = (kinds.clone(), kinds.join(",").into());
        }
        let wanted: Vec<(String, u32)> = match &self.choice {
            QueueChoice::Only(named) => named.clone(),
            QueueChoice::Every => {
                self.queues.all().await?.iter().map(|q| (q.name().to_string(), 1)).collect()
            }
        };
        let known: HashSet<String> =
            self.served.lock().expect("never poisoned").iter().map(|s| s.queue.name().to_string()).collect();
        for (name, weight) in wanted.into_iter().filter(|(name, _)| !known.contains(name)) {
            let queue = self.queues.open(&name).await?;
            queue.open_lanes(&kinds).await?;
            let served =
                Served { queue, weight: weight.max(1), running: Arc::default(), blocked_until: None };
            self.served.lock().expect("never poisoned").push(served);
        }
        Ok(())
    }

    /// What this process serves of `queue` (a queue it took a lease of, served by definition).
    pub(super) fn served(&self, queue: &Queue) -> Served {
        let found = self
            .served
            .lock()
            .expect("never poisoned")
            .iter()
            .find(|s| s.queue.name() == queue.name())
            .cloned();
        found.unwrap_or_else(|| Served {
            queue: queue.clone(),
            weight: 1,
            running: Arc::default(),
            blocked_until: None,
        })
    }

    /// Every queue served, blocked or not.
    pub(super) fn all(&self) -> Vec<Served> {
        self.served.lock().expect("never poisoned").clone()
    }

    /// The queues served that are not blocked now.
    pub(super) fn open(&self) -> Vec<Served> {
        let now = Instant::now();
        self.all().into_iter().filter(|s| s.blocked_until.is_none_or(|at| at <= now)).collect()
    }

    /// Whether this worker serves every queue, new ones included.
    pub(super) fn serves_every_queue(&self) -> bool {
        self.choice == QueueChoice::Every
    }

    /// When the first blocked queue may be looked at again.
    pub(super) fn next_unblock(&self) -> Option<Instant> {
        self.all().iter().filter_map(|s| s.blocked_until).filter(|&at| at > Instant::now()).min()
    }

    /// Leaves queue `name` alone for `retry_ms`, as its claim asked.
    pub(super) fn block(&self, name: &str, retry_ms: u64) {
        self.blocks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = Instant::now() + Duration::from_millis(retry_ms.clamp(1, 5_000));
        if let Some(served) =
            self.served.lock().expect("never poisoned").iter_mut().find(|s| s.queue.name() == name)
        {
            served.blocked_until = Some(until);
        }
    }

    /// How many times this process has left a queue alone for a while ([`Serving::block`]).
    pub(super) fn blocks(&self) -> u64 {
        self.blocks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many of `free` slots each of `candidates` gets (those with none left out): each slot
    /// to the queue with the fewest running per unit of weight, counting the slots it got.
    pub(super) fn allocate(candidates: &[Served], free: usize) -> Vec<(Served, usize)> {
        Serving::allocate_up_to(candidates, &vec![usize::MAX; candidates.len()], free)
    }

    /// As `allocate`, each of `candidates` getting at most its `most` (what a read brought of
    /// it): a slot its part cannot use goes to the others.
    pub(super) fn allocate_up_to(candidates: &[Served], most: &[usize], free: usize) -> Vec<(Served, usize)> {
        let mut given = vec![0usize; candidates.len()];
        for _ in 0..free {
            let pick = (0..candidates.len()).filter(|&i| given[i] < most[i]).min_by(|&a, &b| {
                let load = |i: usize| {
                    (candidates[i].running.load(Ordering::Relaxed) + given[i] + 1) as f64
                        / f64::from(candidates[i].weight)
                };
                load(a).total_cmp(&load(b))
            });
            match pick {
                Some(i) => given[i] += 1,
                None => break,
            }
        }
        candidates.iter().cloned().zip(given).filter(|(_, n)| *n > 0).collect()
    }

    /// Whether an attempt runs in every slot of this worker, not counting `ending` of them that a
    /// finish round ends now (queue/relay.rs).
    pub(super) fn full(&self, ending: usize) -> bool {
        let all = self.served.lock().expect("never poisoned");
        let running: usize = all.iter().map(|s| s.running.load(Ordering::Relaxed)).sum();
        running.saturating_sub(ending) >= self.concurrency
    }

    /// How many more attempts of `served` the finish loop may start for the slots `freed` by its
    /// ended ones (`ended` of them): with one queue served, all of them; with several, only up to
    /// the queue's share of the slots, the rest going back to the fetch loop, which offers them
    /// to every queue by weight.
    pub(super) fn refill(&self, served: &Served, freed: usize, ended: usize) -> usize {
        // Read under the lock, not cloned: this runs for every batch of ends.
        let (queues, total) = {
            let all = self.served.lock().expect("never poisoned");
            (all.len(), all.iter().map(|s| u64::from(s.weight)).sum::<u64>())
        };
        if queues <= 1 {
            return freed;
        }
        let share = (self.concurrency as u64 * u64::from(served.weight)).div_ceil(total.max(1)) as usize;
        let still_running = served.running.load(Ordering::Relaxed).saturating_sub(ended);
        freed.min(share.saturating_sub(still_running))
    }
}

/// Parses `--queues`: `reports:3,default` (weight 1 when not given); empty for every queue.
pub fn parse_choice(list: &[String]) -> Result<QueueChoice, String> {
    if list.is_empty() {
        return Ok(QueueChoice::Every);
    }
    let mut named: Vec<(String, u32)> = Vec::new();
    for item in list {
        let (name, weight) = match item.split_once(':') {
            Some((name, weight)) => {
                let weight =
                    weight.parse::<u32>().ok().filter(|w| (1..=1000).contains(w)).ok_or_else(|| {
                        format!(
                            "the weight of `{name}` must be a whole number from 1 to 1000, not `{weight}`"
                        )
                    })?;
                (name, weight)
            }
            None => (item.as_str(), 1),
        };
        if !app::model::is_queue_name(name) {
            return Err(format!("`{name}` is not a queue name"));
        }
        if named.iter().any(|(n, _)| n == name) {
            return Err(format!("queue `{name}` is named twice"));
        }
        named.push((name.to_string(), weight));
    }
    Ok(QueueChoice::Only(named))
}

impl Serving {
    /// Logs a failure to open the queues, once per call site's attempt.
    pub(super) fn warn_refresh(e: &QueueError) {
        warn!(error = %e, "opening the queues to serve failed; trying again shortly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lists_read_names_and_weights() {
        assert_eq!(parse_choice(&[]), Ok(QueueChoice::Every));
        assert_eq!(
            parse_choice(&["reports:3".into(), "default".into()]),
            Ok(QueueChoice::Only(vec![("reports".into(), 3), ("default".into(), 1)]))
        );
        for bad in [&["Reports"][..], &["a:0"], &["a:x"], &["a", "a:2"], &["a:1001"]] {
            let list: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(parse_choice(&list).is_err(), "{bad:?}");
        }
    }

    /// Slots go by weight and by what each queue runs, and a queue's part stops at what it may
    /// take: the slots it cannot use go to the others.
    #[tokio::test]
    async fn slots_go_by_weight_up_to_what_each_queue_may_take() {
        let (_redis, queue) = crate::queue::testing::private_queue().await;
        let served = |weight: u32, running: usize| Served {
            queue: queue.clone(),
            weight,
            running: Arc::new(AtomicUsize::new(running)),
            blocked_until: None,
        };
        let parts = |candidates: &[Served], most: Option<&[usize]>, free: usize| -> Vec<usize> {
            let given = match most {
                Some(most) => Serving::allocate_up_to(candidates, most, free),
                None => Serving::allocate(candidates, free),
            };
            given.iter().map(|(_, n)| *n).collect()
        };
        let pair = [served(1, 0), served(3, 0)];
        assert_eq!(parts(&pair, None, 8), [2, 6]);
        assert_eq!(parts(&pair, Some(&[8, 1]), 8), [7, 1]);
        assert_eq!(parts(&pair, Some(&[2, 3]), 8), [2, 3], "more slots than both may take");
        assert_eq!(parts(&[served(1, 4), served(1, 0)], None, 4), [4], "the busy one waits");
    }
}
