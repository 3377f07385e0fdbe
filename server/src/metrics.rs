//! The process's Prometheus metrics: the recorder (one per process), every metric's name, and one
//! function per thing measured, so that no call site spells a name or a label.
//!
//! Counters and histograms count what this process did since it started; the gauges are set from
//! Redis just before each scrape renders them (`http/metrics.rs`), so every replica reports the
//! same queue depths.

use crate::queue::{Outcome, QueueState};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, LazyLock, OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Tasks stored by a submission, by queue and kind.
pub const TASKS_SUBMITTED: &str = "courier_tasks_submitted_total";
/// Attempts ended, by queue, kind and outcome (`succeeded`, `failed`, `cancelled`, `retried`).
pub const TASKS_FINISHED: &str = "courier_tasks_finished_total";
/// How long an attempt of the built-in worker ran, by queue.
pub const TASK_RUN: &str = "courier_task_run_seconds";
/// How long a task was ready before an attempt started, by queue.
pub const TASK_WAIT: &str = "courier_task_wait_seconds";
/// A queue's tasks by state, read at scrape time.
pub const QUEUE_TASKS: &str = "courier_queue_tasks";
/// How long a queue's oldest queued task has waited, read at scrape time.
pub const QUEUE_OLDEST_WAITING: &str = "courier_queue_oldest_waiting_seconds";
/// The worker processes serving a queue, from the worker registry at scrape time.
pub const WORKERS: &str = "courier_workers";
/// The event streams (SSE) open on this process.
pub const SSE_CLIENTS: &str = "courier_sse_clients";
/// HTTP requests answered, by route template and status.
pub const HTTP_REQUESTS: &str = "courier_http_requests_total";
/// How long HTTP requests took until their response's head, by route template.
pub const HTTP_DURATION: &str = "courier_http_request_duration_seconds";

/// Task attempts and waits run from milliseconds to hours.
const TASK_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0];
/// Most API calls answer within milliseconds; a long-polled lease request waits up to 30 s.
const HTTP_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// How often histogram samples are folded into their buckets when no scrape does it.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed by the first server built in it; `None` when something
/// else had installed a global recorder first (an embedding program's own).
static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Whether this process records nothing, for good ([`record_nothing`]).
static NOTHING: AtomicBool = AtomicBool::new(false);

/// Makes this process record no metrics, for good, unless a recorder is installed already (an
/// embedding program's, which goes on getting them): what `courier worker` without
/// `--metrics-addr` does, whose metrics no one could read. Each task's metrics were otherwise
/// made for no recorder, their labels copied and looked up each time: some 1,600 instructions a
/// task (docs/benchmark-notes.md, "Forty-third step"). A no-op recorder is installed, so that
/// none is installed later, to show figures that would leave out what came before.
pub fn record_nothing() {
    if metrics::set_global_recorder(metrics::NoopRecorder).is_ok() {
        NOTHING.store(true, Ordering::Relaxed);
    }
}

/// Whether what this process does is recorded: unless it records nothing ([`record_nothing`]).
fn recorded() -> bool {
    !NOTHING.load(Ordering::Relaxed)
}

/// The handle that renders this process's metrics, installing the recorder on the first call.
/// The recorder is global (the `metrics` macros record into it from anywhere), so every server
/// built in one process shares it; `None` when another recorder was installed before.
pub fn recorder() -> Option<PrometheusHandle> {
    RECORDER.get_or_init(install).clone()
}

fn install() -> Option<PrometheusHandle> {
    // Buckets make the histograms Prometheus histograms (summaries cannot be aggregated).
    let with_buckets = |builder: PrometheusBuilder, name: &str, bounds: &[f64]| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), bounds)
            .expect("the bucket lists are not empty")
    };
    let builder = PrometheusBuilder::new();
    let builder = with_buckets(builder, TASK_RUN, &TASK_BUCKETS);
    let builder = with_buckets(builder, TASK_WAIT, &TASK_BUCKETS);
    let builder = with_buckets(builder, HTTP_DURATION, &HTTP_BUCKETS);
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "another metrics recorder is installed: GET /metrics is unavailable");
            return None;
        }
    };
    describe();
    // Without our own upkeep, histogram samples would pile up between scrapes (or forever, with
    // no scraper). A thread, not a task: the runtime that built the first server may end first
    // (each test has its own).
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread: scrapes alone will fold samples");
    }
    Some(handle)
}

/// The `# HELP` lines (promtool's lint asks for one per metric).
fn describe() {
    metrics::describe_counter!(TASKS_SUBMITTED, "Tasks stored by a submission, by queue and kind.");
    metrics::describe_counter!(
        TASKS_FINISHED,
        "Attempts ended by this process (built-in workers and the pull API), by queue, kind and outcome."
    );
    metrics::describe_histogram!(TASK_RUN, "Seconds an attempt of a built-in worker ran, by queue.");
    metrics::describe_histogram!(
        TASK_WAIT,
        "Seconds a task was ready (submitted, due or handed back) before an attempt started, by queue."
    );
    metrics::describe_gauge!(QUEUE_TASKS, "Tasks in a queue by state, read from Redis at scrape time.");
    metrics::describe_gauge!(
        QUEUE_OLDEST_WAITING,
        "Seconds the oldest queued task of a queue has waited (0 when none), read at scrape time."
    );
    metrics::describe_gauge!(
        WORKERS,
        "Worker processes (built-in or pulling over HTTP) serving a queue, seen in the last two lease periods."
    );
    metrics::describe_gauge!(SSE_CLIENTS, "Event streams (SSE) open on this process.");
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template and status.");
    metrics::describe_histogram!(
        HTTP_DURATION,
        "Seconds until an HTTP response's head was ready, by route template."
    );
}

/// A task of `kind` was stored in `queue`.
pub fn task_submitted(queue: &str, kind: &str) {
    if !recorded() {
        return;
    }
    let make = || metrics::counter!(TASKS_SUBMITTED, "queue" => queue.to_owned(), "kind" => kind.to_owned());
    match handles_kept() {
        true => of_kind(queue, kind).submitted.get_or_init(make).increment(1),
        false => make().increment(1),
    }
}

/// An attempt of a task of `kind` in `queue` ended with `outcome`, and the store took it.
pub fn attempt_ended(queue: &str, kind: &str, outcome: &Outcome) {
    if !recorded() {
        return;
    }
    let (index, outcome) = match outcome {
        Outcome::Succeeded { .. } => (0, "succeeded"),
        Outcome::Failed { .. } => (1, "failed"),
        Outcome::Cancelled => (2, "cancelled"),
        Outcome::Retry { .. } => (3, "retried"),
    };
    let make = || {
        metrics::counter!(
            TASKS_FINISHED,
            "queue" => queue.to_owned(),
            "kind" => kind.to_owned(),
            "outcome" => outcome
        )
    };
    match handles_kept() {
        true => of_kind(queue, kind).finished[index].get_or_init(make).increment(1),
        false => make().increment(1),
    }
}

/// An attempt in `queue` ran for `ran` (its handler, start to end).
pub fn attempt_ran(queue: &str, ran: Duration) {
    if !recorded() {
        return;
    }
    let make = || metrics::histogram!(TASK_RUN, "queue" => queue.to_owned());
    match handles_kept() {
        true => of_queue(queue).ran.get_or_init(make).record(ran.as_secs_f64()),
        false => make().record(ran.as_secs_f64()),
    }
}

/// A task of `queue` started an attempt after `waited()` ready (None: it cannot tell), worked out
/// only when recorded.
pub fn task_waited(queue: &str, waited: impl FnOnce() -> Option<Duration>) {
    if !recorded() {
        return;
    }
    let Some(waited) = waited() else { return };
    let make = || metrics::histogram!(TASK_WAIT, "queue" => queue.to_owned());
    match handles_kept() {
        true => of_queue(queue).waited.get_or_init(make).record(waited.as_secs_f64()),
        false => make().record(waited.as_secs_f64()),
    }
}

/// Sets `queue`'s gauges from its state, as `GET /api/v1/queues` reads it.
pub fn queue_state(queue: &str, state: &QueueState) {
    let counts = &state.counts;
    for (name, count) in [
        ("queued", counts.queued.total()),
        ("scheduled", counts.scheduled),
        ("retrying", counts.retrying),
        ("running", counts.running),
        ("dead", counts.dead),
    ] {
        metrics::gauge!(QUEUE_TASKS, "queue" => queue.to_owned(), "state" => name).set(count as f64);
    }
    let oldest = state.oldest_waiting_ms.unwrap_or(0) as f64 / 1000.0;
    metrics::gauge!(QUEUE_OLDEST_WAITING, "queue" => queue.to_owned()).set(oldest);
}

/// `count` worker processes serve `queue`.
pub fn queue_workers(queue: &str, count: usize) {
    metrics::gauge!(WORKERS, "queue" => queue.to_owned()).set(count as f64);
}

/// `open` event streams are open on this process.
pub fn sse_clients(open: usize) {
    metrics::gauge!(SSE_CLIENTS).set(open as f64);
}

/// A request to `route` (a route template, or `unmatched`) was answered with `status`, its
/// response's head ready `started.elapsed()` after it arrived.
pub fn http_request(route: &str, status: u16, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let requests =
        || metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "status" => status.to_string());
    let duration = || metrics::histogram!(HTTP_DURATION, "route" => route.to_owned());
    if !handles_kept() {
        requests().increment(1);
        duration().record(seconds);
        return;
    }
    let route = ROUTES.of(route, Arc::default);
    route.requests.of(&status, requests).increment(1);
    route.duration.get_or_init(duration).record(seconds);
}

/// Whether the handles of the metrics recorded per task and per request are kept: once the
/// process's recorder is in place (ours, or one installed before it). A handle made earlier
/// would record into no recorder for good. The exporter forgets no metric (no idle timeout is
/// set), so a kept handle always records into what a scrape renders.
fn handles_kept() -> bool {
    RECORDER.get().is_some()
}

/// The handles of each queue's metrics, made on first use. Each `metrics::counter!` copies its
/// labels, hashes them and finds them in the registry: some 1,700 instructions, twice that for a
/// request's counter and histogram (docs/benchmark-notes.md, "Thirty-sixth step"), where a kept
/// handle records with an atomic add. They grow with the registry's own series, queue by kind.
static QUEUES: LazyLock<Kept<String, Arc<QueueHandles>>> = LazyLock::new(Kept::default);

/// The handles of each route's metrics (by route template: a bounded set).
static ROUTES: LazyLock<Kept<String, Arc<RouteHandles>>> = LazyLock::new(Kept::default);

/// The kept handles of `queue`'s metrics.
fn of_queue(queue: &str) -> Arc<QueueHandles> {
    QUEUES.of(queue, Arc::default)
}

/// The kept handles of the metrics of `kind` in `queue`.
fn of_kind(queue: &str, kind: &str) -> Arc<KindHandles> {
    of_queue(queue).kinds.of(kind, Arc::default)
}

#[derive(Default)]
struct QueueHandles {
    waited: OnceLock<Histogram>,
    ran: OnceLock<Histogram>,
    kinds: Kept<String, Arc<KindHandles>>,
}

#[derive(Default)]
struct KindHandles {
    submitted: OnceLock<Counter>,
    /// By outcome: succeeded, failed, cancelled, retried (`attempt_ended`).
    finished: [OnceLock<Counter>; 4],
}

#[derive(Default)]
struct RouteHandles {
    duration: OnceLock<Histogram>,
    /// By status: a route answers with a few.
    requests: Kept<u16, Counter>,
}

/// Values kept by a label's value, each made on first use.
struct Kept<K, V>(RwLock<HashMap<K, V>>);

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept(RwLock::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    /// The value kept for `key`, made by `make` if there is none yet.
    fn of<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> V
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(found) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return found.clone();
        }
        let mut all = self.0.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(key.to_owned()).or_insert_with(make).clone()
    }
}
