//! How the workers of one process (`courier worker --threads N`) share the work: the first reads
//! the queues all the time, and each of the others stands by until the one before it stays full.
//!
//! Workers that all read split a trickle of tasks between them: each round then holds fewer
//! tasks, and every round pays its fixed part in Redis and in the worker. So a worker joins in
//! only once the one before it has had a task in every slot for a moment (`JOIN_AFTER`: a
//! backlog waits, or long tasks hold its slots), and goes back to standing by once both have a
//! slot free again (docs/benchmark-notes.md, "Thirty-eighth step").

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Notify;

/// How long the worker before must have stayed full before the next joins in. Under a steady
/// stream of short tasks a worker's slots fill now and then for a moment, which the next worker
/// need not split; a backlog, or long tasks, keep them full (docs/benchmark-notes.md,
/// "Thirty-eighth step").
const JOIN_AFTER: Duration = Duration::from_millis(5);

/// What one worker tells the next.
#[derive(Default)]
struct Post {
    /// Since when (µs after the chain's `epoch`, at least 1) the worker's takes of leases have
    /// left a task in every slot; 0 while its last take left a slot free.
    full_since: AtomicU64,
    /// Calls the worker after it, when a take leaves it full.
    call: Notify,
}

/// A worker's place among its process's workers.
#[derive(Clone)]
pub struct Relay {
    /// The worker before this one; none for the first, which never stands by.
    before: Option<Arc<Post>>,
    own: Arc<Post>,
    /// What the chain's times count from.
    epoch: Instant,
    /// How long the worker before must stay full (`JOIN_AFTER`).
    join_after: Duration,
    /// Whether anyone reads `own`: a worker alone in its process need not tell whether it is
    /// full, nor work it out.
    heeded: bool,
}

impl Relay {
    /// The place of a worker alone in its process: it reads all the time.
    pub fn alone() -> Relay {
        Relay::chain(1).remove(0)
    }

    /// The places of `workers` workers of one process, in order (at least one).
    pub fn chain(workers: usize) -> Vec<Relay> {
        Relay::chain_joining_after(workers, JOIN_AFTER)
    }

    /// [`Relay::chain`], each worker joining in once the one before has stayed full for
    /// `join_after`.
    fn chain_joining_after(workers: usize, join_after: Duration) -> Vec<Relay> {
        let epoch = Instant::now();
        let workers = workers.max(1);
        let posts: Vec<Arc<Post>> = (0..workers).map(|_| Arc::default()).collect();
        posts
            .iter()
            .enumerate()
            .map(|(n, own)| Relay {
                before: n.checked_sub(1).map(|b| posts[b].clone()),
                own: own.clone(),
                epoch,
                join_after,
                heeded: workers > 1,
            })
            .collect()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Notes whether a take of leases left a task in every slot (`full` works it out, where
    /// anyone heeds it). The first such take after one that left a slot free starts the time the
    /// next worker waits for (`join_after`), and calls it.
    pub(super) fn took(&self, full: impl FnOnce() -> bool) {
        if !self.heeded {
            return;
        }
        match (full(), self.own.full_since.load(Ordering::Relaxed)) {
            (false, _) => self.own.full_since.store(0, Ordering::Relaxed),
            (true, 0) => {
                self.own.full_since.store(self.now(), Ordering::Relaxed);
                self.own.call.notify_one();
            }
            (true, _) => {}
        }
    }

    /// How long until this worker reads: zero for the first, and for the others while their own
    /// last take left them full or once the worker before has been full for `join_after`; the
    /// rest of that time while it is full; none (until called) while it has a slot free.
    fn until_duty(&self) -> Option<Duration> {
        let Some(before) = &self.before else { return Some(Duration::ZERO) };
        if self.own.full_since.load(Ordering::Relaxed) != 0 {
            return Some(Duration::ZERO);
        }
        match before.full_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let full_for = Duration::from_micros(self.now().saturating_sub(since));
                Some(self.join_after.saturating_sub(full_for))
            }
        }
    }

    /// Whether this worker reads now.
    pub(super) fn on_duty(&self) -> bool {
        self.until_duty() == Some(Duration::ZERO)
    }

    /// Waits until this worker reads. A call made since the last wait counts (a call is kept
    /// until it is waited for), so none is missed between a look and the wait for the next.
    pub(super) async fn turn(&self) {
        let Some(before) = &self.before else { return };
        loop {
            match self.until_duty() {
                Some(Duration::ZERO) => return,
                Some(left) => tokio::time::sleep(left).await,
                None => before.call.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn turns_within(relay: &Relay, wait: Duration) -> bool {
        tokio::time::timeout(wait, relay.turn()).await.is_ok()
    }

    #[tokio::test]
    async fn a_worker_stands_by_until_the_one_before_it_has_stayed_full() {
        let chain = Relay::chain(3);
        let [first, second, third] = [&chain[0], &chain[1], &chain[2]];
        assert!(first.on_duty(), "the first reads all the time");
        assert!(!second.on_duty() && !third.on_duty(), "the others stand by at the start");
        assert!(!turns_within(second, JOIN_AFTER * 4).await);

        first.took(|| false);
        assert!(!turns_within(second, JOIN_AFTER * 4).await, "a take with a slot left calls no one");
        let called = std::time::Instant::now();
        first.took(|| true);
        assert!(turns_within(second, Duration::from_secs(5)).await, "called, and it stayed full");
        // Counted in whole microseconds.
        assert!(called.elapsed() + Duration::from_micros(2) >= JOIN_AFTER, "it waited for that");
        assert!(second.on_duty() && !third.on_duty(), "the third waits on the second, not the first");

        second.took(|| true);
        first.took(|| false);
        assert!(second.on_duty(), "its own last take left it full: it goes on reading");
        assert!(turns_within(third, Duration::from_secs(5)).await && third.on_duty());
        second.took(|| false);
        assert!(!second.on_duty(), "both have room: it stands by again");
        assert!(!third.on_duty());
    }

    #[tokio::test]
    async fn a_worker_full_for_a_moment_calls_no_one_in() {
        let chain = Relay::chain_joining_after(2, Duration::from_secs(3600));
        let [first, second] = [&chain[0], &chain[1]];
        first.took(|| true);
        assert!(!second.on_duty(), "full, but not yet for long");
        first.took(|| true);
        first.took(|| false);
        assert!(!turns_within(second, Duration::from_millis(20)).await, "a slot free again: it stands by");
        assert!(!second.on_duty());
    }

    #[tokio::test]
    async fn a_worker_alone_reads_all_the_time() {
        let alone = Relay::alone();
        alone.took(|| panic!("nobody heeds a worker alone: whether it is full is not worked out"));
        assert!(alone.on_duty() && turns_within(&alone, Duration::from_millis(1)).await);
    }
}
