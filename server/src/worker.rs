//! The worker: apalis runs it over Courier's queue backend; around each handler it keeps the
//! lease alive, stores progress, enforces the timeout and records the outcome.

use crate::{
    handlers::{Context, HandlerError, Input, Output, Registry},
    queue::{DeadReason, Lease, Outcome, Relay, Renewal, ResultBytes, Serving},
    trace_context,
    workers::{Announcement, Running, Workers},
};
use apalis::prelude::{Data, Monitor, WorkerBuilder};
use futures::FutureExt;
use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, info_span, warn};

/// Takes an attempt off the running tasks when it ends, however it ends.
struct Ended<'a> {
    running: &'a Running,
    task: uuid::Uuid,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.running.ended(&self.task);
    }
}

/// How retries are spaced: `base × 2^(attempt-1)`, at most `cap`, jittered by ±10 %.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// The pause before the attempt after `attempt` (1-based); `jitter` in [0, 1).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponential = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exponential.min(self.cap).mul_f64(0.9 + 0.2 * jitter)
    }
}

/// Runs attempts: everything a worker needs, shared by all of a process's slots.
pub struct Runner {
    serving: Arc<Serving>,
    registry: Registry,
    retry: RetryPolicy,
    in_flight: TaskTracker,
    // Fired when the grace period ends: unfinished attempts go back to the queue.
    hand_back: CancellationToken,
    /// The tasks running here now, for the worker registry.
    running: Arc<Running>,
    workers: Workers,
    /// Its place among its process's workers: when it reads.
    relay: Relay,
}

impl Runner {
    /// A runner over the queues of `serving`, running the kinds in `registry`, announced in
    /// `workers`, reading when `relay` says.
    pub fn new(
        serving: Arc<Serving>,
        registry: Registry,
        retry: RetryPolicy,
        workers: Workers,
        relay: Relay,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            serving,
            registry,
            retry,
            in_flight: TaskTracker::new(),
            hand_back: CancellationToken::new(),
            running: Arc::default(),
            workers,
            relay,
        })
    }

    /// Runs workers with up to `concurrency` attempts at once until `shutdown` fires, then lets
    /// in-flight attempts finish for up to `grace`.
    pub async fn run(
        self: Arc<Self>,
        concurrency: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        // Announced until its last attempt has ended (or been handed back).
        let announced = CancellationToken::new();
        let announcement = Announcement::built_in(self.serving.queue_names(), concurrency as u32);
        let announcing = tokio::spawn(self.workers.clone().keep_announcing(
            self.serving.id(),
            announcement,
            self.running.clone(),
            announced.clone(),
        ));
        let runner = self.clone();
        let stop = shutdown.clone();
        let monitor = Monitor::new().register(move |_restarts| {
            WorkerBuilder::new("courier")
                .backend(crate::queue::backend(
                    runner.serving.clone(),
                    concurrency,
                    stop.clone(),
                    runner.relay.clone(),
                ))
                .data(runner.clone())
                .build(run_attempt)
        });
        let signal = shutdown.clone();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        monitor
            .with_terminator(async move { tokio::time::sleep(grace).await })
            .run_with_signal(async move {
                signal.cancelled().await;
                let _ = stopped_tx.send(Instant::now());
                Ok(())
            })
            .await?;
        // The monitor stops fetching at once; attempts in flight get what is left of the grace.
        self.in_flight.close();
        let stopped = stopped_rx.await.unwrap_or_else(|_| Instant::now());
        let left = grace.saturating_sub(stopped.elapsed());
        if tokio::time::timeout(left, self.in_flight.wait()).await.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "attempts still running after the grace period: handing them back to the queue"
            );
            self.hand_back.cancel();
            if tokio::time::timeout(Duration::from_secs(5), self.in_flight.wait()).await.is_err() {
                warn!(
                    "some attempts could not be handed back; their leases will expire and other workers take them over"
                );
            }
        }
        announced.cancel();
        let _ = announcing.await;
        Ok(())
    }

    async fn attempt(self: Arc<Self>, mut lease: Box<Lease>) {
        let queue = lease.queue.clone();
        self.running.started(lease.task_id, queue.shared_name(), &lease.kind);
        let _ended = Ended { running: &self.running, task: lease.task_id };
        crate::metrics::task_waited(queue.name(), || lease.waited());
        let payload = match queue.take_payload(&mut lease).await {
            Ok(payload) => payload,
            Err(e) => {
                // Nothing ran: the lease expires and the task is run again, here or elsewhere.
                warn!(error = %e, "reading the payload failed; the task runs again once its lease expires");
                return;
            }
        };
        if lease.attempt > lease.max_attempts {
            // Its holders kept dying (lease expired every time): stop trying.
            let error = format!(
                "gave up after {} attempts whose workers stopped before finishing",
                lease.max_attempts
            );
            self.record(&lease, Outcome::Failed { error, reason: DeadReason::WorkersLost }).await;
            return;
        }
        let Some(handler) = self.registry.get(&lease.kind).filter(|h| h.runs_here()) else {
            // A kind declared without an endpoint is known here but run by pull workers: until
            // workers lease only the kinds they run, meeting one is meeting an unknown kind.
            let error = match self.registry.get(&lease.kind) {
                Some(_) => format!("the kind `{}` is run by workers that pull it, not here", lease.kind),
                None => format!("no worker here knows the kind `{}`", lease.kind),
            };
            self.record(&lease, Outcome::Failed { error, reason: DeadReason::UnknownKind }).await;
            return;
        };
        let Some(bytes) = payload else {
            let error = "the payload expired before the task ran".to_string();
            self.record(&lease, Outcome::Failed { error, reason: DeadReason::PayloadExpired }).await;
            return;
        };
        // Kept alive, so that output bytes at the same address and length are the payload itself.
        let payload = bytes.clone();
        let input = Input { bytes, content_type: lease.payload_type.clone() };
        let cancel = CancellationToken::new();
        let (progress_tx, progress_rx) = watch::channel(None);
        let deadline = lease.timeout_ms.map(|ms| std::time::SystemTime::now() + Duration::from_millis(ms));
        let ctx = Context::new(lease.attempt, cancel.clone(), progress_tx).for_task(lease.task_id, deadline);
        let retry = handler.retry_policy().unwrap_or(self.retry);
        let started = Instant::now();
        // The handler runs inside this task, beside the lease keeping: no task of its own.
        let run = AssertUnwindSafe(handler.run(input, ctx)).catch_unwind();
        let Some(Watched { result, timed_out, state }) = self.watch(&lease, run, &cancel, progress_rx).await
        else {
            return;
        };
        crate::metrics::attempt_ran(queue.name(), started.elapsed());
        let duration_ms = started.elapsed().as_millis() as u64;
        let outcome = match result {
            _ if state == Renewal::Lost => {
                warn!(duration_ms, "lost the lease while running; the new holder decides the outcome");
                return;
            }
            _ if state == Renewal::CancelRequested => Outcome::Cancelled,
            Ok(Output { bytes, content_type }) => {
                let unchanged =
                    !bytes.is_empty() && bytes.as_ptr() == payload.as_ptr() && bytes.len() == payload.len();
                let result = if unchanged { ResultBytes::Payload } else { ResultBytes::New(bytes) };
                Outcome::Succeeded { result, content_type }
            }
            Err(e) => {
                let outcome = failure_outcome(e, lease.attempt, lease.max_attempts, retry, timed_out);
                match &outcome {
                    Outcome::Retry { error, after } => {
                        info!(
                            duration_ms,
                            error,
                            retry_in_ms = after.as_millis() as u64,
                            "attempt failed; will retry"
                        )
                    }
                    Outcome::Failed { error, .. } => info!(duration_ms, error, "task failed"),
                    _ => {}
                }
                outcome
            }
        };
        self.record(&lease, outcome).await;
    }

    /// Runs the handler's future while keeping the lease: renews it, stores progress, enforces
    /// the timeout and stops the handler when the task is cancelled or the lease lost. Returns
    /// `None` when the attempt was handed back to the queue (shutdown past the grace period).
    async fn watch(
        &self,
        lease: &Lease,
        run: impl Future<Output = std::thread::Result<Result<Output, HandlerError>>>,
        cancel: &CancellationToken,
        mut progress: watch::Receiver<Option<u8>>,
    ) -> Option<Watched> {
        let queue = &lease.queue;
        let every = (queue.settings().lease / 3).min(Duration::from_secs(1));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let deadline = lease.timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut run = std::pin::pin!(run);
        let mut timeout = std::pin::pin!(timeout);
        let mut state = Renewal::Held;
        let mut stored: Option<u8> = None;
        let mut timed_out = false;
        let result = loop {
            tokio::select! {
                result = &mut run => {
                    break result.unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panicked".into());
                        Err(HandlerError::retryable(format!("the handler crashed: {message}")))
                    });
                }
                () = &mut timeout => {
                    cancel.cancel();
                    timed_out = true;
                    let ms = lease.timeout_ms.unwrap_or_default();
                    break Err(HandlerError::retryable(format!("timed out after {ms} ms")));
                }
                () = self.hand_back.cancelled() => {
                    cancel.cancel();
                    match queue.release(lease).await {
                        Ok(true) => info!("handed the unfinished task back to the queue"),
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "handing the task back failed; its lease will expire"),
                    }
                    return None;
                }
                _ = renew.tick() => match queue.renew(lease).await {
                    Ok(Renewal::Held) => {}
                    Ok(other) => {
                        // Cancelled: the handler is told and its answer awaited. Lost: the new
                        // holder decides, so this one stops at once.
                        state = other;
                        cancel.cancel();
                        if other == Renewal::Lost {
                            break Err(HandlerError::retryable("the lease was lost".to_string()));
                        }
                    }
                    Err(e) => warn!(error = %e, "renewing the lease failed"),
                },
                Ok(()) = progress.changed() => {
                    let latest = *progress.borrow_and_update();
                    if let Some(percent) = latest {
                        match queue.progress(lease, percent).await {
                            Ok(_) => stored = Some(percent),
                            Err(e) => warn!(error = %e, "storing progress failed"),
                        }
                    }
                }
            }
        };
        // Progress reported just before the end is stored now, so its event comes before the
        // outcome's.
        let latest = *progress.borrow();
        if let Some(percent) = latest
            && latest != stored
            && state == Renewal::Held
            && let Err(e) = queue.progress(lease, percent).await
        {
            warn!(error = %e, "storing progress failed");
        }
        Some(Watched { result, timed_out, state })
    }

    /// Records the outcome, retrying while Redis is away, and counts it once stored; a lost
    /// lease is neither an error nor counted (its new holder's attempt is).
    async fn record(&self, lease: &Lease, outcome: Outcome) {
        let mut pause = Duration::from_millis(100);
        for _ in 0..20 {
            match lease.queue.finish(lease, outcome.clone()).await {
                Ok(true) => {
                    crate::metrics::attempt_ended(lease.queue.name(), &lease.kind, &outcome);
                    return;
                }
                Ok(false) => {
                    info!("the lease was taken over; this late result is ignored");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "recording the outcome failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        error!("gave up recording the outcome; the lease will expire and the task run again");
    }
}

/// The apalis task function: runs one attempt on its own tokio task, so attempts spread over
/// every core, and tracks it so shutdown can wait for it. The attempt's span continues the trace
/// its task keeps: every line logged in it carries `task_id` and `trace_id`.
async fn run_attempt(lease: Box<Lease>, runner: Data<Arc<Runner>>) {
    let runner: Arc<Runner> = (*runner).clone();
    let span = info_span!(
        "attempt",
        otel.kind = "consumer",
        task_id = %lease.task_id,
        trace_id = tracing::field::Empty,
        task.kind = %lease.kind,
        task.queue = %lease.queue.name(),
        task.attempt = lease.attempt,
    );
    let parent = lease.traceparent.as_deref().and_then(trace_context::parse);
    let context = trace_context::start(&span, parent.as_ref());
    let tracker = runner.in_flight.clone();
    // Boxed before it is wrapped: the attempt's future is large, and each wrapper (the span, the
    // context) and the task spawned would otherwise hold it by value, copied whole at each.
    let attempt = trace_context::within(Box::pin(runner.attempt(lease)), span, &context);
    let _ = tracker.spawn(attempt).await;
}

/// How an attempt's handler ended, as [`Runner::watch`] saw it.
struct Watched {
    result: Result<Output, HandlerError>,
    timed_out: bool,
    /// What the last renewal found.
    state: Renewal,
}

/// What a failed attempt (`attempt` of `max_attempts`) leads to: while attempts are left and the
/// failure is retryable, another attempt after the policy's pause (or the failure's own
/// Retry-After, up to the cap, when longer); else a dead letter saying why.
pub fn failure_outcome(
    e: HandlerError,
    attempt: u32,
    max_attempts: u32,
    retry: RetryPolicy,
    timed_out: bool,
) -> Outcome {
    if e.retryable && attempt < max_attempts {
        let after = retry.delay(attempt, jitter()).max(e.retry_after.unwrap_or_default().min(retry.cap));
        return Outcome::Retry { error: e.message, after };
    }
    let reason = match () {
        _ if timed_out => DeadReason::Timeout,
        _ if e.retryable => DeadReason::AttemptsExhausted,
        _ => DeadReason::NonRetryable,
    };
    let error =
        if e.retryable { format!("{} (attempt {attempt} of {max_attempts})", e.message) } else { e.message };
    Outcome::Failed { error, reason }
}

/// A number in [0, 1) from the random bits of a fresh UUIDv7.
fn jitter() -> f64 {
    (uuid::Uuid::now_v7().as_u128() & 0xffff_ffff) as f64 / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap_within_ten_percent() {
        let policy = RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(10) };
        assert_eq!(policy.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(policy.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(policy.delay(9, 0.5), Duration::from_secs(10));
        assert_eq!(policy.delay(2, 0.0), Duration::from_millis(1800));
        assert!(policy.delay(2, 0.999_999) < Duration::from_millis(2201));
        assert_eq!(policy.delay(200, 0.5), Duration::from_secs(10));
    }

    #[test]
    fn a_failure_retries_while_attempts_are_left_honouring_retry_after_up_to_the_cap() {
        let policy = RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(10) };
        let after = |e: HandlerError| match failure_outcome(e, 1, 3, policy, false) {
            Outcome::Retry { after, .. } => after,
            other => panic!("{other:?}"),
        };
        assert!(after(HandlerError::retryable("x")) < Duration::from_millis(1101));
        assert_eq!(after(HandlerError::retryable_after("x", Duration::from_secs(5))), Duration::from_secs(5));
        assert_eq!(
            after(HandlerError::retryable_after("x", Duration::from_secs(60))),
            Duration::from_secs(10)
        );
        let dead =
            |e: HandlerError, attempt, timed_out| match failure_outcome(e, attempt, 3, policy, timed_out) {
                Outcome::Failed { error, reason } => (error, reason),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            dead(HandlerError::retryable("down"), 3, false),
            ("down (attempt 3 of 3)".into(), DeadReason::AttemptsExhausted)
        );
        assert_eq!(dead(HandlerError::fatal("bad"), 1, false), ("bad".into(), DeadReason::NonRetryable));
        assert_eq!(dead(HandlerError::retryable("slow"), 3, true).1, DeadReason::Timeout);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
