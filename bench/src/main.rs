//! `courier-bench`: starts real `courier` processes on a given Redis, drives them over the public
//! HTTP API and server-sent events, and prints one JSON line per figure (the peer benchmark's
//! form). `courier-bench report` turns both runs' lines into the markdown table of
//! `docs/benchmarks.md`.

mod cpu;
mod redis_servers;
mod report;
mod sse;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cpu::{CpuSeconds, HostTicks, ProcessSeconds, info_field};
use futures::StreamExt;
use redis_servers::RedisServers;
use serde_json::{Value, json};
use sse::{EventTap, FanoutClient};
use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

#[derive(Parser)]
#[command(name = "courier-bench", about = "Measures Courier over HTTP and SSE; prints JSON lines")]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Tool {
    /// Writes the markdown comparison from the JSON lines of a Courier run and a peer run.
    Report {
        #[arg(long)]
        courier: PathBuf,
        #[arg(long)]
        peer: Option<PathBuf>,
        /// Both sides' lines of the backlog's drain and the latency run in turns, each with its
        /// `turn`.
        #[arg(long)]
        turns: Option<PathBuf>,
    },
    /// Prints a loopback port nobody listens on (for scripts).
    FreePort,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The `courier` binary to start.
    #[arg(long, default_value = "target/release/courier")]
    courier: PathBuf,
    /// The Redis every process uses (each workload under its own key prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Small tasks for the submit, process and end-to-end workloads.
    #[arg(long, default_value_t = 50_000)]
    n: usize,
    /// Tasks each worker process runs at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Keep-alive HTTP connections the client submits over.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Tasks per request where the workloads also submit in batches (`POST /api/v1/tasks/batch`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Tasks per second for the latency workload.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of the latency workload.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// 1 MiB payloads for the claim-check workload.
    #[arg(long, default_value_t = 200)]
    large_n: usize,
    /// Backlog sizes whose drain rates are compared.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    backlogs: Vec<usize>,
    /// Concurrent SSE clients of the fan-out workload.
    #[arg(long, default_value_t = 10_000)]
    sse_clients: usize,
    /// Tasks whose every event each SSE client must receive.
    #[arg(long, default_value_t = 1_000)]
    sse_tasks: usize,
    /// Pull workers (HTTP clients taking leases of 100) of the pull workload.
    #[arg(long, default_value_t = 4)]
    pullers: usize,
    /// Threads of the `courier worker` (its `--threads`: a worker on each, sharing
    /// `--concurrency`) that drains the `submit` workload's backlog a second time, after the drain
    /// on one thread; 1 drains it once. Every other workload's worker runs on one thread.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// `courier worker` processes that drain the scale workload's backlog (on each Redis).
    #[arg(long, default_value_t = 2)]
    scale_workers: usize,
    /// Which workloads to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "submit,e2e,latency,queues,claimcheck,backlog,fanout,pull,push,auth,scale"
    )]
    workloads: Vec<String>,
    /// Tiny sizes: checks that every workload works, measures nothing worth reading.
    #[arg(long)]
    smoke: bool,
}

impl RunArgs {
    fn shrink_for_smoke(&mut self) {
        self.n = 300;
        self.rate = 50;
        self.duration_s = 2;
        self.large_n = 5;
        self.backlogs = vec![100, 300];
        self.sse_clients = 20;
        self.sse_tasks = 20;
    }
}

/// Prints one figure as a JSON line.
fn emit(metric: &str, value: f64, extra: Value) {
    let mut line = json!({"peer": "courier", "metric": metric, "value": (value * 100.0).round() / 100.0});
    if let (Some(line), Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
    println!("{line}");
}

/// How the `pull` workload's workers end their leases' tasks.
#[derive(Clone, Copy)]
enum Ending {
    /// A `complete` request per task.
    Each,
    /// One `POST /api/v1/leases/ends` per lease request.
    Together,
    /// In the next lease request (its `ends`).
    Carried,
}

impl Ending {
    fn prefix(self) -> &'static str {
        match self {
            Ending::Each => "pull",
            Ending::Together => "pull-ends",
            Ending::Carried => "pull-carried",
        }
    }

    /// The names of its rate and CPU figures, and its note.
    fn metrics(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Ending::Each => ("pull_tasks_per_s", "pull_cpu_us_per_task", "HTTP lease + complete per task"),
            Ending::Together => (
                "pull_ends_tasks_per_s",
                "pull_ends_cpu_us_per_task",
                "HTTP lease + one ends request per lease",
            ),
            Ending::Carried => (
                "pull_carried_tasks_per_s",
                "pull_carried_cpu_us_per_task",
                "HTTP lease requests, each ending the last lease's tasks",
            ),
        }
    }
}

/// The `ends` of a request that ends the leases of `tokens` as succeeded with `{}`.
fn ends_of(tokens: &[String]) -> Vec<Value> {
    tokens.iter().map(|token| json!({"token": token, "result": {}})).collect()
}

/// How many of an answer's `ends` there were, checking that there were `sent` and that each
/// applied.
fn all_applied(answer: &Value, sent: usize) -> anyhow::Result<usize> {
    let replies = answer["ends"].as_array().map_or(&[][..], Vec::as_slice);
    anyhow::ensure!(
        replies.len() == sent && replies.iter().all(|r| r["status"] == 204),
        "not every end applied: {answer}"
    );
    Ok(sent)
}

/// Ends the leases of `tokens` as succeeded with one `POST /api/v1/leases/ends`, checking that
/// every end applied; how many there were.
async fn end_together<'t>(
    http: &reqwest::Client,
    base: &str,
    tokens: impl Iterator<Item = &'t str>,
) -> anyhow::Result<usize> {
    let tokens: Vec<String> = tokens.map(str::to_string).collect();
    if tokens.is_empty() {
        return Ok(0);
    }
    let url = format!("{base}/api/v1/leases/ends");
    let answer: Value = http
        .post(url)
        .json(&json!({"ends": ends_of(&tokens)}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    all_applied(&answer, tokens.len())
}

/// A `courier` process this tool started; killed when dropped.
struct Process {
    child: Child,
    base: String,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident memory so far, in MiB (Linux `VmHWM`).
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

/// A backlog drained by a worker process: tasks finished per second (from the worker's start to
/// the last task's event), and over the seconds from just after that start to then, the CPU
/// seconds each process spent and the share of the machine's CPU time left idle.
struct Drained {
    rate: f64,
    seconds: f64,
    cpu: [(&'static str, f64); 4],
    idle: f64,
}

/// See [`Bench::pipeline`]; its processes are killed when it is dropped.
struct Pipeline {
    server: Process,
    tap: EventTap,
    worker: Child,
}

struct Bench {
    args: RunArgs,
    http: reqwest::Client,
    redis: redis::aio::MultiplexedConnection,
    run_id: String,
    next: usize,
}

impl Bench {
    fn prefix(&mut self, workload: &str) -> String {
        self.next += 1;
        format!("bench-{}-{}-{workload}", self.run_id, self.next)
    }

    fn command(&self, prefix: &str) -> Command {
        let mut command = Command::new(&self.args.courier);
        command
            .args(["--redis-url", &self.args.redis_url, "--prefix", prefix])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `courier serve` on a free port, ready when this returns.
    async fn serve(&self, prefix: &str, concurrency: usize) -> anyhow::Result<Process> {
        self.serve_with(prefix, concurrency, &[]).await
    }

    /// [`Bench::serve`] with `extra` flags.
    async fn serve_with(&self, prefix: &str, concurrency: usize, extra: &[&str]) -> anyhow::Result<Process> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = self
            .command(prefix)
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(extra)
            .spawn()
            .with_context(|| format!("starting {}", self.args.courier.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if self.http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(Process { child, base });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("courier serve did not become ready")
    }

    /// What the workloads that process tasks while they submit them run against: a worker-less
    /// `courier serve`, one `courier worker` and an SSE tap on every event, under a fresh prefix.
    async fn pipeline(&mut self, workload: &str) -> anyhow::Result<Pipeline> {
        let prefix = self.prefix(workload);
        let server = self.serve(&prefix, 0).await?;
        let worker = self.worker(&prefix)?;
        let tap = EventTap::open(&self.http, &server.base).await?;
        Ok(Pipeline { server, tap, worker })
    }

    /// `courier worker` on one thread.
    fn worker(&self, prefix: &str) -> anyhow::Result<Child> {
        self.worker_on(prefix, 1)
    }

    /// `courier worker` on `threads` threads.
    fn worker_on(&self, prefix: &str, threads: usize) -> anyhow::Result<Child> {
        Ok(self
            .command(prefix)
            .args(["worker", "--concurrency", &self.args.concurrency.to_string()])
            .args(["--threads", &threads.to_string()])
            .spawn()?)
    }

    /// Submits `count` small echo tasks over `connections` keep-alive connections; returns the
    /// accepted ids and the seconds it took.
    async fn submit_small(&self, base: &str, count: usize) -> anyhow::Result<(Vec<String>, f64)> {
        self.submit_small_as(base, count, None).await
    }

    /// [`Bench::submit_small`], each request with `token` (`Authorization: Bearer`) if given.
    async fn submit_small_as(
        &self,
        base: &str,
        count: usize,
        token: Option<&str>,
    ) -> anyhow::Result<(Vec<String>, f64)> {
        let started = Instant::now();
        let url = format!("{base}/api/v1/tasks");
        let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
            .map(|n| {
                let mut request = self
                    .http
                    .post(&url)
                    .json(&json!({"kind": "echo", "payload": {"n": n, "pad": "x".repeat(64)}}));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                async move { accepted_id(request.send().await?).await }
            })
            .buffer_unordered(self.args.connections)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        Ok((ids.into_iter().collect::<anyhow::Result<_>>()?, elapsed))
    }

    /// Submits `count` small echo tasks in batches of `--batch`, a few requests at a time;
    /// returns their ids and the seconds it took.
    async fn submit_batched(&self, base: &str, count: usize) -> anyhow::Result<(Vec<String>, f64)> {
        self.submit_batched_of("echo", None, base, count).await
    }

    /// [`Bench::submit_batched`] with tasks of `kind`, in `queue` if given (else the default).
    async fn submit_batched_of(
        &self,
        kind: &str,
        queue: Option<&str>,
        base: &str,
        count: usize,
    ) -> anyhow::Result<(Vec<String>, f64)> {
        let started = Instant::now();
        let url = format!("{base}/api/v1/tasks/batch");
        let size = self.args.batch.max(1);
        let batches: Vec<anyhow::Result<Vec<String>>> = futures::stream::iter((0..count).step_by(size))
            .map(|first| {
                let tasks: Vec<Value> = (first..count.min(first + size))
                    .map(|n| {
                        let mut task = json!({"kind": kind, "payload": {"n": n, "pad": "x".repeat(64)}});
                        if let Some(queue) = queue {
                            task["queue"] = queue.into();
                        }
                        task
                    })
                    .collect();
                let request = self.http.post(&url).json(&json!({"tasks": tasks}));
                async move { accepted_ids(request.send().await?).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let ids = batches.into_iter().collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect();
        Ok((ids, elapsed))
    }

    /// Submit rates with no workers (one request per task, then batches), then the drain rate of
    /// the first backlog by one worker process on one thread, and of the same backlog again (in
    /// batches) by one on `--worker-threads`.
    async fn submit_and_process(&mut self) -> anyhow::Result<()> {
        let prefix = self.prefix("process");
        let server = self.serve(&prefix, 0).await?;
        let (ids, seconds) = self.submit_small(&server.base, self.args.n).await?;
        emit(
            "submit_tasks_per_s",
            ids.len() as f64 / seconds,
            json!({"n": ids.len(), "connections": self.args.connections}),
        );
        self.process(&server, &prefix, ids.len(), 1).await?;
        if self.args.worker_threads > 1 {
            let prefix = self.prefix("process-threads");
            let server = self.serve(&prefix, 0).await?;
            let (ids, _) = self.submit_batched(&server.base, self.args.n).await?;
            self.process(&server, &prefix, ids.len(), self.args.worker_threads).await?;
        }

        let prefix = self.prefix("batch");
        let server = self.serve(&prefix, 0).await?;
        let (ids, seconds) = self.submit_batched(&server.base, self.args.n).await?;
        emit(
            "submit_batch_tasks_per_s",
            ids.len() as f64 / seconds,
            json!({"n": ids.len(), "batch": self.args.batch}),
        );
        Ok(())
    }

    /// Drains the queued backlog of `count` with a worker on `threads` threads: its rate, each
    /// process's CPU a task and the machine's idle share, each figure naming the threads.
    async fn process(
        &mut self,
        server: &Process,
        prefix: &str,
        count: usize,
        threads: usize,
    ) -> anyhow::Result<()> {
        let drained = self.drain_on(server, prefix, count, threads).await?;
        let extra = json!({"n": count, "concurrency": self.args.concurrency, "worker_threads": threads});
        emit("process_tasks_per_s", drained.rate, extra);
        for (process, spent) in drained.cpu {
            emit(
                "process_cpu_us_per_task",
                spent * 1e6 / count as f64,
                json!({"process": process, "cpu_share": spent / drained.seconds, "worker_threads": threads}),
            );
        }
        emit("process_idle_share", drained.idle, json!({"n": count, "worker_threads": threads}));
        Ok(())
    }

    /// Starts a worker on a queued backlog of `count` and times it until the last task's event.
    async fn drain(&mut self, server: &Process, prefix: &str, count: usize) -> anyhow::Result<Drained> {
        self.drain_on(server, prefix, count, 1).await
    }

    /// [`Bench::drain`] with the worker on `threads` threads.
    async fn drain_on(
        &mut self,
        server: &Process,
        prefix: &str,
        count: usize,
        threads: usize,
    ) -> anyhow::Result<Drained> {
        let mut tap = EventTap::open(&self.http, &server.base).await?;
        let started = Instant::now();
        let worker = self.worker_on(prefix, threads)?;
        let pids = (server.pid().context("serve has no pid")?, worker.id().context("worker has no pid")?);
        // The CPU from here: the worker's start is timed, its first millisecond not counted.
        let (cpu_before, host) =
            (CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?, HostTicks::read()?);
        let counted = Instant::now();
        tap.until_finished(count, Duration::from_secs(600)).await?;
        let rate = count as f64 / started.elapsed().as_secs_f64();
        let cpu = CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?.since(&cpu_before);
        let idle = HostTicks::read()?.idle_since(&host);
        Ok(Drained { rate, seconds: counted.elapsed().as_secs_f64(), cpu, idle })
    }

    /// Submit and process at once, through HTTP and SSE: tasks per second end to end, submitted
    /// one request per task, then in batches; and the CPU time each process spent per task.
    async fn end_to_end(&mut self) -> anyhow::Result<()> {
        for batched in [false, true] {
            let Pipeline { server, mut tap, worker } = self.pipeline("e2e").await?;
            let pids = (server.pid().context("serve has no pid")?, worker.id().context("worker has no pid")?);
            let cpu_before = CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?;
            let started = Instant::now();
            let (ids, _) = match batched {
                false => self.submit_small(&server.base, self.args.n).await?,
                true => self.submit_batched(&server.base, self.args.n).await?,
            };
            tap.until_finished(ids.len(), Duration::from_secs(600)).await?;
            let seconds = started.elapsed().as_secs_f64();
            let cpu = CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?.since(&cpu_before);
            let (metric, batch) = match batched {
                false => ("e2e_tasks_per_s", 1),
                true => ("e2e_batch_tasks_per_s", self.args.batch),
            };
            emit(
                metric,
                ids.len() as f64 / seconds,
                json!({"n": ids.len(), "concurrency": self.args.concurrency, "batch": batch, "note": "HTTP submit + worker process + SSE done events"}),
            );
            for (process, spent) in cpu {
                emit(
                    "e2e_cpu_us_per_task",
                    spent * 1e6 / ids.len() as f64,
                    json!({"process": process, "batch": batch, "cpu_share": spent / seconds}),
                );
            }
        }
        Ok(())
    }

    /// Submit → `succeeded` event latency at a steady rate.
    async fn latency(&mut self) -> anyhow::Result<()> {
        let Pipeline { server, mut tap, worker: _worker } = self.pipeline("latency").await?;
        let total = (self.args.rate * self.args.duration_s) as usize;
        let host = HostTicks::read()?;
        let sent_at = self
            .steady(&server.base, self.args.rate, total, |n| json!({"kind": "echo", "payload": {"n": n}}))
            .await?;
        let done = tap.until_finished(total, Duration::from_secs(120)).await?;
        let stolen = HostTicks::read()?.stolen_since(&host);
        let extra = json!({"n": sent_at.len(), "rate": self.args.rate, "duration_s": self.args.duration_s});
        emit_latencies("e2e_latency", &sent_at, &done, extra.clone());
        emit("e2e_latency_host_steal_pct", stolen * 100.0, extra.clone());
        if let Some(us) = cpu::halt_poll_us() {
            emit("e2e_latency_host_halt_poll_us", us, extra);
        }
        Ok(())
    }

    /// Submits `total` tasks (`body(n)`) at `rate` a second, each on its own request; returns when
    /// each was sent, by task id.
    async fn steady(
        &self,
        base: &str,
        rate: u64,
        total: usize,
        body: impl Fn(usize) -> Value,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let url = format!("{base}/api/v1/tasks");
        let mut sent = tokio::task::JoinSet::new();
        for n in 0..total {
            ticks.tick().await;
            let request = self.http.post(&url).json(&body(n));
            sent.spawn(async move {
                let at = Instant::now();
                accepted_id(request.send().await?).await.map(|id| (id, at))
            });
        }
        let mut sent_at = HashMap::new();
        while let Some(joined) = sent.join_next().await {
            let (id, at) = joined??;
            sent_at.insert(id, at);
        }
        Ok(sent_at)
    }

    /// The latency of a light queue while a heavy one drains: a backlog of 100 ms tasks in
    /// `heavy`, enough to keep every worker slot busy for the whole run, and echo tasks at a
    /// tenth of `--rate` in `light`; one worker process serves both with equal weights.
    async fn queues(&mut self) -> anyhow::Result<()> {
        const HEAVY_TASK_MS: u64 = 100;
        let prefix = self.prefix("queues");
        let server = self.serve(&prefix, 0).await?;
        let heavy = self.args.concurrency * (1000 / HEAVY_TASK_MS as usize) * self.args.duration_s as usize;
        let url = format!("{}/api/v1/tasks/batch", server.base);
        for first in (0..heavy).step_by(1000) {
            let tasks: Vec<Value> = (first..heavy.min(first + 1000))
                .map(|_| json!({"kind": "sleep", "payload": {"ms": HEAVY_TASK_MS}, "queue": "heavy"}))
                .collect();
            accepted_ids(self.http.post(&url).json(&json!({"tasks": tasks})).send().await?).await?;
        }
        let mut tap = EventTap::open(&self.http, &server.base).await?;
        let _worker = self.worker(&prefix)?;
        let rate = (self.args.rate / 10).max(1);
        let total = (rate * self.args.duration_s) as usize;
        let sent_at = self
            .steady(
                &server.base,
                rate,
                total,
                |n| json!({"kind": "echo", "payload": {"n": n}, "queue": "light"}),
            )
            .await?;
        let ids = sent_at.keys().cloned().collect();
        let done = tap.until_all(&ids, Duration::from_secs(120)).await?;
        let heavy_done = done.len().saturating_sub(sent_at.len());
        let extra = json!({"n": sent_at.len(), "rate": rate, "heavy_backlog": heavy, "heavy_task_ms": HEAVY_TASK_MS, "heavy_done_meanwhile": heavy_done, "concurrency": self.args.concurrency});
        emit_latencies("light_queue_latency", &sent_at, &done, extra);
        Ok(())
    }

    /// 1 MiB payloads sent raw (stored under their own key, the queue carrying the id), processed
    /// by a worker process while they arrive: MB/s sent, and MB/s through to the done event.
    async fn claim_check(&mut self) -> anyhow::Result<()> {
        let Pipeline { server, mut tap, worker: _worker } = self.pipeline("claimcheck").await?;
        let payload = bytes_of_mib();
        let url = format!("{}/api/v1/tasks?kind=echo", server.base);
        let started = Instant::now();
        let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..self.args.large_n)
            .map(|_| {
                let request = self
                    .http
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(payload.clone());
                async move { accepted_id(request.send().await?).await }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let sent_s = started.elapsed().as_secs_f64();
        let count = ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?.len();
        tap.until_finished(count, Duration::from_secs(300)).await?;
        let total_s = started.elapsed().as_secs_f64();
        let mb = count as f64 * payload.len() as f64 / 1e6;
        let extra = json!({"n": count, "payload_bytes": payload.len(), "note": "echo: the result is the payload, kept once under its key"});
        emit("claimcheck_enqueue_mb_per_s", mb / sent_s, extra.clone());
        emit("claimcheck_e2e_mb_per_s", mb / total_s, extra);
        Ok(())
    }

    /// The drain rate of backlogs of each size, to see that cost per task does not grow; and the
    /// Redis memory each task holds, queued and then kept for the retention once it succeeded.
    async fn backlogs(&mut self) -> anyhow::Result<()> {
        for size in self.args.backlogs.clone() {
            let prefix = self.prefix("backlog");
            let server = self.serve(&prefix, 0).await?;
            let before = used_memory(&mut self.redis).await?;
            let (ids, _) = self.submit_small(&server.base, size).await?;
            let queued = used_memory(&mut self.redis).await?;
            let rate = self.drain(&server, &prefix, ids.len()).await?.rate;
            let succeeded = used_memory(&mut self.redis).await?;
            emit("drain_tasks_per_s", rate, json!({"backlog": size, "concurrency": self.args.concurrency}));
            for (state, used) in [("queued", queued), ("succeeded", succeeded)] {
                let bytes = used.saturating_sub(before) as f64 / ids.len().max(1) as f64;
                emit("redis_bytes_per_task", bytes, json!({"backlog": size, "state": state}));
            }
        }
        Ok(())
    }

    /// A queued backlog drained by workers pulling over HTTP (leases of 100), three times: each
    /// task completed with its own request; a lease's tasks ended with one request
    /// (`POST /api/v1/leases/ends`); a lease's tasks ended by the next lease request (its
    /// `ends`). Beside `process_tasks_per_s` of the built-in worker: tasks per second, and the
    /// CPU each process spent per task.
    async fn pull(&mut self) -> anyhow::Result<()> {
        for ending in [Ending::Each, Ending::Together, Ending::Carried] {
            self.pull_drain(ending).await?;
        }
        Ok(())
    }

    /// One drain of `pull`, its tasks ended as `ending` says; timed until its last task ended
    /// (pullers that find the queue empty before then wait out their last request).
    async fn pull_drain(&mut self, ending: Ending) -> anyhow::Result<()> {
        const LEASES: usize = 100;
        let prefix = self.prefix(ending.prefix());
        let server = self.serve(&prefix, 0).await?;
        let (ids, _) = self.submit_batched(&server.base, self.args.n).await?;
        let pid = server.pid().context("serve has no pid")?;
        let cpu_before = CpuSeconds::read(&mut self.redis, pid, pid).await?;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let finished = std::sync::OnceLock::new();
        let started = Instant::now();
        let lease_url = format!("{}/api/v1/queues/default/leases", server.base);
        let (total, http, pullers) = (ids.len(), &self.http, self.args.pullers.max(1));
        let pullers = (0..pullers).map(|n| {
            let (done, finished, lease_url, base) = (&done, &finished, &lease_url, &server.base);
            async move {
                let worker = format!("bench-{n}");
                // Carried: the tokens of the last lease, ended by the next request.
                let mut held: Vec<String> = Vec::new();
                while done.load(std::sync::atomic::Ordering::Relaxed) < total {
                    let carried = std::mem::take(&mut held);
                    let request = match carried.is_empty() {
                        true => json!({"worker": worker, "max": LEASES, "wait_ms": 1000}),
                        // Tasks are still queued while a puller holds some: no wait needed.
                        false => {
                            json!({"worker": worker, "max": LEASES, "wait_ms": 0, "ends": ends_of(&carried)})
                        }
                    };
                    let answer: Value =
                        http.post(lease_url).json(&request).send().await?.error_for_status()?.json().await?;
                    let mut ended = all_applied(&answer, carried.len())?;
                    let leases = answer["leases"].as_array().cloned().unwrap_or_default();
                    let tokens = leases.iter().map(|lease| lease["token"].as_str().unwrap_or_default());
                    ended += match ending {
                        Ending::Carried => {
                            held = tokens.map(str::to_string).collect();
                            0
                        }
                        Ending::Together => end_together(http, base, tokens).await?,
                        Ending::Each => {
                            let completions = tokens.map(|token| {
                                let url = format!("{base}/api/v1/leases/{token}/complete");
                                let request =
                                    http.post(url).header("content-type", "application/json").body("{}");
                                async move { anyhow::Ok(request.send().await?.error_for_status()?) }
                            });
                            futures::future::try_join_all(completions).await?.len()
                        }
                    };
                    if done.fetch_add(ended, std::sync::atomic::Ordering::Relaxed) + ended >= total {
                        finished.get_or_init(Instant::now);
                    }
                }
                anyhow::ensure!(held.is_empty(), "a puller stopped holding leases");
                anyhow::Ok(())
            }
        });
        tokio::time::timeout(Duration::from_secs(600), futures::future::try_join_all(pullers))
            .await
            .context("the pull workers did not drain the backlog within 10 minutes")??;
        let last_end = finished.get().context("the drain never ended its last task")?;
        let seconds = last_end.duration_since(started).as_secs_f64();
        // The CPU is read over the whole run, the pullers' last waits included.
        let window = started.elapsed().as_secs_f64();
        let cpu = CpuSeconds::read(&mut self.redis, pid, pid).await?.since(&cpu_before);
        let (rate, cpu_name, note) = ending.metrics();
        let extra =
            json!({"n": ids.len(), "leases_per_request": LEASES, "pullers": self.args.pullers, "note": note});
        emit(rate, ids.len() as f64 / seconds, extra);
        for (process, spent) in cpu.into_iter().filter(|(p, _)| *p != "worker") {
            emit(
                cpu_name,
                spent * 1e6 / ids.len() as f64,
                json!({"process": process, "cpu_share": spent / window}),
            );
        }
        Ok(())
    }

    /// What access control costs a request: small submissions, a request each, to a server
    /// without a token and to one where a token (scoped to the queue) authenticates every call;
    /// tasks per second and the server's and Redis's CPU per request, side by side.
    async fn auth(&mut self) -> anyhow::Result<()> {
        for mode in ["off", "token", "token-rate-limit"] {
            let prefix = self.prefix(&format!("auth-{mode}"));
            let token = if mode == "off" { None } else { Some(self.create_token(&prefix).await?) };
            // A limit no run reaches: what counting each submission costs.
            let extra: &[&str] = if mode == "token-rate-limit" { &["--rate-limit", "1000000"] } else { &[] };
            let server = self.serve_with(&prefix, 0, extra).await?;
            let pid = server.pid().context("serve has no pid")?;
            // Warm the connections and the server's caches first.
            self.submit_small_as(&server.base, 200.min(self.args.n), token.as_deref()).await?;
            let cpu_before = CpuSeconds::read(&mut self.redis, pid, pid).await?;
            let (ids, seconds) = self.submit_small_as(&server.base, self.args.n, token.as_deref()).await?;
            let cpu = CpuSeconds::read(&mut self.redis, pid, pid).await?.since(&cpu_before);
            emit(
                "auth_submit_tasks_per_s",
                ids.len() as f64 / seconds,
                json!({"auth": mode, "n": ids.len()}),
            );
            for (process, spent) in cpu.into_iter().filter(|(p, _)| *p == "serve" || *p == "redis") {
                emit(
                    "auth_cpu_us_per_request",
                    spent * 1e6 / ids.len() as f64,
                    json!({"auth": mode, "process": process}),
                );
            }
        }
        Ok(())
    }

    /// A token with every scope on the default queue, made by `courier token create`.
    async fn create_token(&self, prefix: &str) -> anyhow::Result<String> {
        let output = self
            .command(prefix)
            .args(["token", "create", "--name", "bench", "--scopes", "submit,read", "--queues", "default"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .await?;
        anyhow::ensure!(output.status.success(), "courier token create failed");
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    /// A queued backlog of a declared kind drained by one `courier worker` pushing every task to
    /// an HTTP endpoint (in this process, answering `200 {}` at once, signatures unchecked):
    /// tasks per second, beside `process_tasks_per_s`, and the CPU each process spent per task.
    async fn push(&mut self) -> anyhow::Result<()> {
        let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint_url = format!("http://{}/run", endpoint.local_addr()?);
        let app = axum::Router::new().route("/run", axum::routing::post(|| async { axum::Json(json!({})) }));
        let serving = tokio::spawn(async move { axum::serve(endpoint, app).await });
        let prefix = self.prefix("push");
        let server = self.serve(&prefix, 0).await?;
        let declaration = json!({
            "description": "The benchmark's push kind.",
            "endpoint": {"url": endpoint_url, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "concurrency": self.args.concurrency},
        });
        let url = format!("{}/api/v1/kinds/bench.push", server.base);
        self.http.put(url).json(&declaration).send().await?.error_for_status()?;
        let (ids, _) = self.submit_batched_of("bench.push", None, &server.base, self.args.n).await?;
        let mut tap = EventTap::open(&self.http, &server.base).await?;
        let worker = self.worker(&prefix)?;
        let pids = (server.pid().context("serve has no pid")?, worker.id().context("worker has no pid")?);
        let cpu_before = CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?;
        let started = Instant::now();
        tap.until_finished(ids.len(), Duration::from_secs(600)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = CpuSeconds::read(&mut self.redis, pids.0, pids.1).await?.since(&cpu_before);
        serving.abort();
        let extra = json!({"n": ids.len(), "concurrency": self.args.concurrency, "note": "one courier worker; the endpoint is in the client process"});
        emit("push_tasks_per_s", ids.len() as f64 / seconds, extra);
        for (process, spent) in cpu {
            emit(
                "push_cpu_us_per_task",
                spent * 1e6 / ids.len() as f64,
                json!({"process": process, "cpu_share": spent / seconds}),
            );
        }
        Ok(())
    }

    /// The same backlog through one redis-server and through a Redis Cluster of three masters
    /// without replicas (both started here, fresh): three queues whose slots sit on three
    /// different masters, `--n` echo tasks split over them and submitted in batches with no worker
    /// running, then drained by `--scale-workers` `courier worker` processes started together.
    /// Tasks per second of the submit and of the drain, and the CPU each process spent per task in
    /// each phase.
    async fn scale(&mut self) -> anyhow::Result<()> {
        const MASTERS: usize = 3;
        let queues = redis_servers::queues_on_distinct_masters(MASTERS);
        for mode in ["node", "cluster-3"] {
            let servers = match mode {
                "node" => RedisServers::node().await?,
                _ => RedisServers::cluster(MASTERS).await?,
            };
            // The processes this bench starts use `servers`; their CPU, Redis's included, is read
            // from /proc, so `redis` is only a connection to the first of them.
            let bench = Bench {
                args: RunArgs { redis_url: servers.url(), ..self.args.clone() },
                http: self.http.clone(),
                redis: servers.connection(0).await?,
                run_id: self.run_id.clone(),
                next: self.next,
            };
            bench.scale_on(mode, &servers, &queues).await.with_context(|| format!("on the {mode}"))?;
        }
        Ok(())
    }

    /// One run of [`Bench::scale`], on `servers` (this bench's `--redis-url`). The CPU figures
    /// name each process: `serve` (which takes the submissions and serves the SSE client that
    /// sees the drain end), `serve-idle` (a second one that takes no request), `worker-{k}`,
    /// `redis` for the one node or `redis-{i}` for the master that holds the `i`th queue, and
    /// `client`; `worker` and (on a cluster) `redis` are their sums.
    async fn scale_on(&self, mode: &str, servers: &RedisServers, queues: &[String]) -> anyhow::Result<()> {
        let prefix = format!("bench-{}-scale", self.run_id);
        let holders = servers.holders(&prefix, queues).await?;
        let on_cluster = mode != "node";
        if on_cluster {
            let distinct: std::collections::HashSet<_> = holders.iter().collect();
            anyhow::ensure!(
                distinct.len() == queues.len(),
                "the queues {queues:?} do not sit one on each master: {holders:?}"
            );
        }
        let mut processes = Vec::new();
        for (index, pid) in servers.pids()?.into_iter().enumerate() {
            let name = match holders.iter().position(|h| *h == index) {
                Some(queue) if on_cluster => format!("redis-{}", queue + 1),
                _ => "redis".to_string(),
            };
            processes.push((name, pid));
        }
        let server = self.serve(&prefix, 0).await?;
        // Every `courier serve` tails every queue's events; one that gets no request shows what
        // that alone costs each of them.
        let idle = self.serve(&prefix, 0).await?;
        processes.push(("serve".to_string(), server.pid().context("serve has no pid")?));
        processes.push(("serve-idle".to_string(), idle.pid().context("serve has no pid")?));
        processes.push(("client".to_string(), std::process::id()));
        let mut extra = json!({"redis": mode, "queues": queues, "workers": self.args.scale_workers, "concurrency": self.args.concurrency, "batch": self.args.batch});

        let network = servers.network_bytes().await?;
        let before = ProcessSeconds::read(&processes)?;
        let started = Instant::now();
        let shares = queues.iter().enumerate().map(|(i, queue)| {
            let count = self.args.n / queues.len() + usize::from(i < self.args.n % queues.len());
            self.submit_batched_of("echo", Some(queue), &server.base, count)
        });
        let submitted = futures::future::try_join_all(shares).await?;
        let seconds = started.elapsed().as_secs_f64();
        let spent = ProcessSeconds::read(&processes)?.since(&before);
        let count: usize = submitted.iter().map(|(ids, _)| ids.len()).sum();
        let network = emit_network(mode, "submit", servers, network, count).await?;
        extra["n"] = count.into();
        emit("scale_submit_tasks_per_s", count as f64 / seconds, extra.clone());
        emit_scale_cpu(mode, "submit", &spent, count, seconds, queues);

        let mut tap = EventTap::open(&self.http, &server.base).await?;
        let before = ProcessSeconds::read(&processes)?;
        let started = Instant::now();
        // Held until the drain ends: a worker is killed when dropped.
        let mut workers = Vec::with_capacity(self.args.scale_workers);
        for k in 1..=self.args.scale_workers.max(1) {
            let worker = self.worker(&prefix)?;
            processes.push((format!("worker-{k}"), worker.id().context("a worker has no pid")?));
            workers.push(worker);
        }
        tap.until_finished(count, Duration::from_secs(600)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let spent = ProcessSeconds::read(&processes)?.since(&before);
        emit_network(mode, "drain", servers, network, count).await?;
        emit("scale_drain_tasks_per_s", count as f64 / seconds, extra);
        emit_scale_cpu(mode, "drain", &spent, count, seconds, queues);
        Ok(())
    }

    /// Many SSE clients each receiving every event of a run, and the server's peak memory.
    async fn fanout(&mut self) -> anyhow::Result<()> {
        let prefix = self.prefix("fanout");
        let server = self.serve(&prefix, self.args.concurrency).await?;
        let clients = FanoutClient::connect_many(&server.base, self.args.sse_clients).await?;
        let rss_idle = server.peak_rss_mb();
        let started = Instant::now();
        let (ids, _) = self.submit_small(&server.base, self.args.sse_tasks).await?;
        // queued, running, succeeded: three events per echo task.
        let expected = 3 * ids.len() as u64;
        let (min, total) = clients.until_each_has(expected, Duration::from_secs(300)).await;
        let seconds = started.elapsed().as_secs_f64();
        let extra =
            json!({"clients": self.args.sse_clients, "tasks": ids.len(), "expected_per_client": expected});
        emit("sse_events_delivered_min_per_client", min as f64, extra.clone());
        emit("sse_events_delivered_total", total as f64, extra.clone());
        emit("sse_events_per_s", total as f64 / seconds, extra.clone());
        emit("sse_all_delivered", f64::from(u8::from(min >= expected)), extra.clone());
        if let Some(rss) = server.peak_rss_mb() {
            emit(
                "server_peak_rss_mb",
                rss,
                json!({"clients": self.args.sse_clients, "idle_with_clients_mb": rss_idle}),
            );
        }
        Ok(())
    }
}

/// Prints `scale_redis_bytes_per_task`, read from and written to clients by every Redis together
/// since `before` (as [`RedisServers::network_bytes`] gave it), for `count` tasks; returns the
/// bytes now, the start of the next phase.
async fn emit_network(
    mode: &str,
    phase: &str,
    servers: &RedisServers,
    before: (u64, u64),
    count: usize,
) -> anyhow::Result<(u64, u64)> {
    let now = servers.network_bytes().await?;
    for (direction, bytes) in [("in", now.0 - before.0), ("out", now.1 - before.1)] {
        emit(
            "scale_redis_bytes_per_task",
            bytes as f64 / count as f64,
            json!({"redis": mode, "phase": phase, "direction": direction, "n": count}),
        );
    }
    Ok(now)
}

/// Prints `scale_cpu_us_per_task` for each process of one phase of the scale workload (`spent`:
/// CPU seconds by name, over `seconds`, for `count` tasks), then the sum of the workers and, when
/// there are several, of the Redis masters.
fn emit_scale_cpu(
    mode: &str,
    phase: &str,
    spent: &[(String, f64)],
    count: usize,
    seconds: f64,
    queues: &[String],
) {
    let line = |process: &str, cpu: f64, queue: Option<&str>| {
        let mut extra = json!({"redis": mode, "phase": phase, "process": process, "n": count, "cpu_share": cpu / seconds});
        if let Some(queue) = queue {
            extra["queue"] = queue.into();
        }
        emit("scale_cpu_us_per_task", cpu * 1e6 / count as f64, extra);
    };
    for (process, cpu) in spent {
        let queue = process.strip_prefix("redis-").and_then(|i| queues.get(i.parse::<usize>().ok()? - 1));
        line(process, *cpu, queue.map(String::as_str));
    }
    for (sum, members) in [("worker", "worker-"), ("redis", "redis-")] {
        let of: Vec<f64> = spent.iter().filter(|(p, _)| p.starts_with(members)).map(|(_, s)| *s).collect();
        if !of.is_empty() {
            line(sum, of.iter().sum(), None);
        }
    }
}

/// Prints the p50, p95, p99 and max of the times from each task's submission (`sent_at`) to its
/// end (`done`), in ms, as `{metric}_p50_ms` and so on.
fn emit_latencies(
    metric: &str,
    sent_at: &HashMap<String, Instant>,
    done: &HashMap<String, Instant>,
    extra: Value,
) {
    let mut latencies: Vec<f64> = sent_at
        .iter()
        .filter_map(|(id, at)| done.get(id).map(|d| d.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    for (name, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
        emit(&format!("{metric}_{name}_ms"), percentile(&latencies, p), extra.clone());
    }
    emit(&format!("{metric}_max_ms"), latencies.last().copied().unwrap_or(0.0), extra);
}

/// Redis's `used_memory`: the bytes its allocator holds, for its data and its buffers.
async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await?;
    info_field(&info, "used_memory").context("no used_memory in INFO memory")
}

/// The id from a `202 Accepted`, or an error with the status.
async fn accepted_id(response: reqwest::Response) -> anyhow::Result<String> {
    if response.status() != 202 {
        bail!("submit answered {}: {}", response.status(), response.text().await.unwrap_or_default());
    }
    let view: Value = response.json().await?;
    view["id"].as_str().map(str::to_string).context("no id in the 202 body")
}

/// The ids from a batch's `202 Accepted`, in order.
async fn accepted_ids(response: reqwest::Response) -> anyhow::Result<Vec<String>> {
    if response.status() != 202 {
        bail!("batch submit answered {}: {}", response.status(), response.text().await.unwrap_or_default());
    }
    let accepted: Value = response.json().await?;
    let views = accepted["tasks"].as_array().context("no tasks in the 202 body")?;
    views.iter().map(|v| v["id"].as_str().map(str::to_string).context("a task without an id")).collect()
}

fn bytes_of_mib() -> Vec<u8> {
    (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The `p`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Tool::Report { courier, peer, turns }) => {
            print!("{}", report::markdown(&courier, peer.as_deref(), turns.as_deref())?);
            return Ok(());
        }
        Some(Tool::FreePort) => {
            println!("{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
            return Ok(());
        }
        None => {}
    }
    let mut args = cli.run;
    if args.smoke {
        args.shrink_for_smoke();
    }
    let run_id = format!("{}", std::process::id());
    // The pool keeps every connection it opens (reqwest's default): the pull workers send a
    // lease's completes at once, 400 in flight with four, and a pool capped below that closed
    // the rest after each burst and opened them again for the next (a handshake, an accept and a
    // connection task each: docs/benchmark-notes.md, "Twenty-seventh step").
    let http = reqwest::Client::builder().build()?;
    let redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", args.redis_url))?;
    let mut bench = Bench { args: args.clone(), http, redis, run_id, next: 0 };
    emit(
        "meta",
        0.0,
        json!({"n": args.n, "concurrency": args.concurrency, "worker_threads": args.worker_threads, "connections": args.connections, "smoke": args.smoke, "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)}),
    );
    for workload in &args.workloads {
        let result = match workload.as_str() {
            "submit" => bench.submit_and_process().await,
            "e2e" => bench.end_to_end().await,
            "latency" => bench.latency().await,
            "queues" => bench.queues().await,
            "claimcheck" => bench.claim_check().await,
            "backlog" => bench.backlogs().await,
            "fanout" => bench.fanout().await,
            "pull" => bench.pull().await,
            "push" => bench.push().await,
            "auth" => bench.auth().await,
            "scale" => bench.scale().await,
            other => bail!("unknown workload `{other}`"),
        };
        result.with_context(|| format!("workload {workload}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
