//! The apalis side of a worker process: `Queue::backend` starts the loops that take leases, and
//! `RedisBackend` hands their leases to apalis.
//!
//! Two loops serve a process's worker slots. The finish loop (queue/finish.rs) records ended
//! attempts in batches and, in the same round trip, takes leases for the slots they free; the
//! fetch loop (queue/fetch.rs) fills the slots that are left. Both hand leases to apalis through
//! one channel, which this backend reads.

use super::{
    Queue,
    lease::{Lease, Leasing},
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

impl Queue {
    /// Starts fetching for up to `concurrency` attempts at once, and returns the apalis backend
    /// that hands them to the worker. Fetching stops when `shutdown` fires; attempts in flight
    /// can still end after that.
    pub fn backend(&self, concurrency: usize, shutdown: CancellationToken) -> RedisBackend {
        let (leases, rx) = mpsc::channel(concurrency.max(1));
        let (endings, ending_rx) = mpsc::channel(concurrency.max(1));
        let leasing = Leasing::new(self.clone(), &leases, &endings, shutdown.clone());
        let slots = Arc::new(Semaphore::new(concurrency));
        tokio::spawn(self.clone().prune_consumers());
        tokio::spawn(leasing.clone().finish_loop(ending_rx));
        // The fetch loop owns the strong senders: the backend ends once it stops.
        tokio::spawn(leasing.fetch_loop(slots, leases, endings));
        tokio::spawn(self.clone().promote_loop(shutdown));
        RedisBackend { rx, next: None }
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
