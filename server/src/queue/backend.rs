//! The apalis side of a worker process: `backend` starts the loops that take leases, and
//! `RedisBackend` hands their leases to apalis.
//!
//! Two loops serve a process's worker slots. The finish loop (queue/finish.rs) records ended
//! attempts in batches and, in the same round trip, takes leases for the slots they free; the
//! fetch loop (queue/fetch.rs) fills the slots that are left. Both hand leases to apalis through
//! one channel, which this backend reads.

use super::{
    Backoff, PROMOTE_BATCH, PROMOTE_TICK, PROMOTER_STANDBY,
    lease::{Lease, Leasing},
    relay::Relay,
    serving::Serving,
};
use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    layers::Identity,
    task::{Task, task_id::RandomId},
    worker::context::WorkerContext,
};
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Starts fetching from the queues of `serving` for up to `concurrency` attempts at once, and
/// returns the apalis backend that hands them to the worker, which reads when its place among
/// its process's workers (`relay`) says. Fetching stops when `shutdown` fires; attempts in flight
/// can still end after that.
pub fn backend(
    serving: Arc<Serving>,
    concurrency: usize,
    shutdown: CancellationToken,
    relay: Relay,
) -> RedisBackend {
    let (leases, rx) = mpsc::channel(concurrency.max(1));
    let (endings, ending_rx) = mpsc::channel(concurrency.max(1));
    let leasing = Leasing::new(serving.clone(), &leases, &endings, shutdown.clone(), relay);
    let slots = Arc::new(Semaphore::new(concurrency));
    tokio::spawn(leasing.clone().finish_loop(ending_rx));
    // The fetch loop owns the strong senders: the backend ends once it stops.
    tokio::spawn(leasing.fetch_loop(slots, leases, endings));
    tokio::spawn(promote_loop(serving, shutdown));
    RedisBackend { rx, next: None }
}

/// Moves due delayed tasks and retries of every queue served onto their ready streams (and ends
/// expired ones), every tick, or at once again while a queue has more due than one move takes;
/// of a queue whose due tasks another process moves, it only asks now and then whether it should
/// take over.
async fn promote_loop(serving: Arc<Serving>, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut pruned = std::collections::HashSet::new();
    let mut standby: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        // Looks on ticks of the wall clock, with the process's (and every process's) others.
        let mut pause = crate::store::until_next_tick(PROMOTE_TICK);
        for served in serving.all() {
            let name = served.queue.name();
            if pruned.insert(name.to_string()) {
                tokio::spawn(served.queue.clone().prune_consumers());
            }
            if standby.get(name).is_some_and(|until| tokio::time::Instant::now() < *until) {
                continue;
            }
            match served.queue.promote_due().await {
                Ok(None) => {
                    let next = crate::store::until_next_tick(PROMOTER_STANDBY);
                    standby.insert(name.to_string(), tokio::time::Instant::now() + next);
                }
                Ok(Some(moved)) if moved >= PROMOTE_BATCH => pause = std::time::Duration::ZERO,
                Ok(Some(_)) => backoff.reset(),
                Err(e) => {
                    // Left alone for a while; the other queues (on other masters) go on.
                    let retry_in = backoff.next();
                    standby.insert(name.to_string(), tokio::time::Instant::now() + retry_in);
                    warn!(error = %e, queue = name, retry_in_ms = retry_in.as_millis() as u64, "promoting delayed tasks failed");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
    // Stopping: another process takes over now rather than when the term runs out.
    for served in serving.all() {
        if let Err(e) = served.queue.resign_promoter().await {
            debug!(error = %e, queue = served.queue.name(), "giving up the promoter's term failed; it runs out");
        }
    }
}

/// The apalis side of the queue: yields leased tasks; never fails, because the loops behind it
/// ride out Redis errors themselves (a backend error would end the apalis worker).
pub struct RedisBackend {
    rx: mpsc::Receiver<Box<Lease>>,
    next: Option<Box<Lease>>,
}

/// The error type apalis asks of a backend; this one never produces it.
#[derive(Debug, thiserror::Error)]
#[error("the Courier queue backend stopped")]
pub struct BackendStopped;

impl Backend for RedisBackend {
    type Task = Task<Box<Lease>>;
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
    type Args = Box<Lease>;
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
