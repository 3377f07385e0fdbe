//! The markdown comparison of one Courier run and one peer (BullMQ) run.

use anyhow::Context;
use serde_json::Value;
use std::{fmt::Write, path::Path};

/// The figures of one run: JSON lines with `peer`, `metric`, `value` and extras.
struct Figures(Vec<Value>);

impl Figures {
    fn load(path: &Path) -> anyhow::Result<Figures> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Figures(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()))
    }

    /// The value of `metric` from the line that also matches `filter` (key, value).
    fn get(&self, metric: &str, filter: Option<(&str, &str)>) -> Option<f64> {
        self.0
            .iter()
            .filter(|l| l["metric"] == metric)
            .find(|l| filter.is_none_or(|(k, v)| l[k].as_str() == Some(v)))
            .and_then(|l| l["value"].as_f64())
    }

    /// The value of `metric` from the line whose fields match every one of `filters`.
    fn get_where(&self, metric: &str, filters: &[(&str, Value)]) -> Option<f64> {
        self.0
            .iter()
            .filter(|l| l["metric"] == metric)
            .find(|l| filters.iter().all(|(k, v)| &l[*k] == v))
            .and_then(|l| l["value"].as_f64())
    }

    fn all(&self, metric: &str) -> Vec<&Value> {
        self.0.iter().filter(|l| l["metric"] == metric).collect()
    }
}

/// The threads of the `courier worker` a figure was measured with (one where it does not say).
fn threads_of(line: &Value) -> u64 {
    line["worker_threads"].as_u64().unwrap_or(1)
}

/// How a row names a worker process's threads: nothing for one.
fn on_threads(threads: u64) -> String {
    match threads {
        1 => String::new(),
        n => format!(" (one worker process, `--threads {n}`)"),
    }
}

fn show(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Renders the comparison: of a Courier run and a peer run, and of the backlog's drain and the
/// latency run in turns by both (`turns`: both sides' lines, each with its `turn`).
pub fn markdown(courier: &Path, peer: Option<&Path>, turns: Option<&Path>) -> anyhow::Result<String> {
    let c = Figures::load(courier)?;
    let load = |path: Option<&Path>| path.map_or(Ok(Figures(Vec::new())), Figures::load);
    let (p, turns) = (load(peer)?, Turns::of(&load(turns)?));
    let fork = Some(("worker_mode", "fork"));
    let inproc = Some(("worker_mode", "inproc"));
    let mut out = String::new();
    let redis =
        p.0.iter().find(|l| l["metric"] == "loadavg_before").and_then(|l| l["redis"].as_str()).unwrap_or("?");
    let nproc = c.0.iter().find(|l| l["metric"] == "meta").and_then(|l| l["nproc"].as_u64()).unwrap_or(0);
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Written by `scripts/bench.sh`: Courier and the peer harness (BullMQ 6.7.0) in one run, on one \
         private Redis ({redis}), on a {nproc}-core machine. Absolute figures drift on shared machines; \
         the ratios compare figures from the same run. BullMQ's reference is its `fork` mode (worker in \
         a second process), as Courier's worker runs in a `courier worker` process, on one thread \
         unless a row says `--threads` (as many workers side by side, each on a thread of its own, \
         sharing the process's slots).\n"
    )?;

    writeln!(out, "## Targets\n")?;
    writeln!(out, "| target | Courier | BullMQ | ratio | goal | met |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let mut target = |name: &str,
                      ours: Option<f64>,
                      theirs: Option<f64>,
                      r: Option<f64>,
                      goal: &str,
                      met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        writeln!(out, "| {name} | {} | {} | {} | {goal} | {met} |", show(ours), show(theirs), show(r))
    };
    let process = p.get("process_jobs_per_s", fork);
    // Issue 18: the Redis CPU each task costs, end to end, against BullMQ's per job (its enqueue
    // and process phases).
    let their_cpu = p.get("redis_cpu_us_per_job", fork);
    for (batch, how, goal) in [(100, "batches of 100", 0.5), (1, "a request per task", 0.6)] {
        let ours = c.get_where(
            "e2e_cpu_us_per_task",
            &[("process", Value::from("redis")), ("batch", Value::from(batch))],
        );
        let r = ratio(ours, their_cpu);
        target(
            &format!("Redis CPU µs per task end to end ({how}) vs BullMQ `redis_cpu_us_per_job`"),
            ours,
            their_cpu,
            r,
            &format!("≤ {goal}"),
            r.map(|r| r <= goal),
        )?;
    }
    // The worker process on the most threads the run tried (one in runs before `--threads`).
    let backlog = c.all("process_tasks_per_s").into_iter().max_by_key(|l| threads_of(l));
    let (threads, backlog) = (backlog.map_or(1, threads_of), backlog.and_then(|l| l["value"].as_f64()));
    let r = ratio(backlog, process);
    target(
        &format!("process a queued backlog, tasks/s, vs BullMQ `process_jobs_per_s`{}", on_threads(threads)),
        backlog,
        process,
        r,
        "≥ 2",
        r.map(|r| r >= 2.0),
    )?;
    if let Some((turn, r, pairs)) = turns.median(Turn::backlog_ratio) {
        target(
            &format!(
                "… the same in turns, the median of {pairs} pairs (each BullMQ's drain and Courier's, one \
                 right after the other){}",
                on_threads(turn.threads)
            ),
            Some(turn.courier),
            Some(turn.bullmq),
            Some(r),
            "≥ 2",
            Some(r >= 2.0),
        )?;
    }
    for (metric, how) in [
        ("pull_tasks_per_s", "a complete each"),
        ("pull_ends_tasks_per_s", "a lease's ends in one request"),
        ("pull_carried_tasks_per_s", "a lease's ends in the next lease request"),
    ] {
        let pull = c.get(metric, None);
        let r = ratio(pull, process);
        target(
            &format!(
                "pull workers over HTTP (leases of 100, {how}), tasks/s, vs BullMQ `process_jobs_per_s`"
            ),
            pull,
            process,
            r,
            "≥ 1",
            r.map(|r| r >= 1.0),
        )?;
    }
    // Issue 18 also counts the end-to-end target met "where this 2-core machine is the limit, the
    // CPU per task of every process showing that it would be on a free core": the processes
    // together kept at least three quarters of the cores busy, and the busiest of them (the load
    // generator included) spends no more than a core gives each task at 1.5 × BullMQ's rate.
    let core_budget = process.filter(|p| *p > 0.0).map(|p| 1e6 / (1.5 * p));
    for (metric, how) in [("e2e_batch_tasks_per_s", "batches"), ("e2e_tasks_per_s", "a request per task")] {
        let e2e = c.get(metric, None);
        let r = ratio(e2e, process);
        let batch = c.all(metric).first().and_then(|l| l["batch"].as_u64()).unwrap_or(1);
        let processes = e2e_cpu(&c, batch);
        let busiest = processes.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        let cores_busy: f64 = processes.iter().map(|p| p.2).sum();
        let machine_bound = nproc > 0 && cores_busy >= 0.75 * nproc as f64;
        let fits = ratio(busiest.map(|p| p.1), core_budget);
        let how = if batch > 1 { format!("{how} of {batch}") } else { how.to_string() };
        target(
            &format!("tasks/s end to end (HTTP + SSE, {how}) vs BullMQ `process_jobs_per_s`"),
            e2e,
            process,
            r,
            "≥ 1.5, or the next row",
            r.map(|r| r >= 1.5 || (machine_bound && fits.is_some_and(|f| f <= 1.0))),
        )?;
        target(
            &format!(
                "… or, the cores the limit ({cores_busy:.2} of {nproc} busy), on a core per process: the \
                 busiest ({}) µs per task vs a core's µs per task at 1.5 × BullMQ `process_jobs_per_s`",
                busiest.map_or("—", |p| p.0)
            ),
            busiest.map(|p| p.1),
            core_budget,
            fits,
            "≤ 1, ≥ 3/4 of the cores busy",
            fits.map(|f| f <= 1.0 && machine_bound),
        )?;
    }
    let p99 = c.get("e2e_latency_p99_ms", None);
    let their_p99 = p.get("e2e_latency_p99_ms", fork);
    let r = ratio(p99, their_p99);
    target("latency p99, ms (500 tasks/s, done event)", p99, their_p99, r, "≤ 0.25", r.map(|r| r <= 0.25))?;
    if let Some((turn, r, pairs)) = turns.median(Turn::p99_ratio) {
        target(
            &format!("… the same in turns, the median of {pairs} pairs"),
            turn.p99.map(|p| p.1),
            turn.p99.map(|p| p.0),
            Some(r),
            "≤ 0.25",
            Some(r <= 0.25),
        )?;
    }
    let cc = c.get("claimcheck_e2e_mb_per_s", None);
    let their_cc = p.get("claimcheck_e2e_mb_per_s", fork);
    let r = ratio(cc, their_cc);
    target("1 MiB claim-check MB/s end to end", cc, their_cc, r, "≥ 1", r.map(|r| r >= 1.0))?;
    let drains = c.all("drain_tasks_per_s");
    let smallest = drains.first().and_then(|l| l["value"].as_f64());
    let largest = drains.last().and_then(|l| l["value"].as_f64());
    let sizes = format!(
        "drain rate at {} vs {} tasks",
        drains.last().map(|l| l["backlog"].to_string()).unwrap_or_default(),
        drains.first().map(|l| l["backlog"].to_string()).unwrap_or_default()
    );
    let r = ratio(largest, smallest);
    target(&sizes, largest, smallest, r, "≥ 0.9", r.map(|r| r >= 0.9))?;
    let delivered = c.get("sse_all_delivered", None);
    let clients = c.all("sse_all_delivered").first().and_then(|l| l["clients"].as_u64()).unwrap_or(0);
    target(
        &format!("{clients} SSE clients each got every event"),
        delivered,
        None,
        None,
        "1 (yes)",
        delivered.map(|d| d >= 1.0),
    )?;
    let rss = c.get("server_peak_rss_mb", None);
    target("server peak RSS with them, MB", rss, None, None, "≤ 150", rss.map(|r| r <= 150.0))?;

    writeln!(out, "\n## Every figure\n")?;
    writeln!(out, "| workload | Courier | BullMQ fork | BullMQ inproc |")?;
    writeln!(out, "|---|---|---|---|")?;
    let rows = [
        ("submit tasks/s over HTTP, a request per task (no worker)", "submit_tasks_per_s", ""),
        (
            "submit tasks/s over HTTP, batches of 100 · BullMQ `addBulk`",
            "submit_batch_tasks_per_s",
            "enqueue_jobs_per_s",
        ),
        (
            "process tasks/s (queued backlog, concurrency 50, one worker process on one thread)",
            "process_tasks_per_s",
            "process_jobs_per_s",
        ),
        (
            "process tasks/s by pull workers over HTTP (leases of 100, a complete each)",
            "pull_tasks_per_s",
            "",
        ),
        (
            "process tasks/s by pull workers over HTTP (leases of 100, a lease's ends in one request)",
            "pull_ends_tasks_per_s",
            "",
        ),
        (
            "process tasks/s by pull workers over HTTP (leases of 100, a lease's ends in the next lease request)",
            "pull_carried_tasks_per_s",
            "",
        ),
        ("process tasks/s pushed to an HTTP endpoint (one worker, concurrency 50)", "push_tasks_per_s", ""),
        ("end to end tasks/s, a request per task (submit + process + done event)", "e2e_tasks_per_s", ""),
        ("end to end tasks/s, batches of 100", "e2e_batch_tasks_per_s", ""),
        ("latency p50, ms", "e2e_latency_p50_ms", "e2e_latency_p50_ms"),
        ("latency p95, ms", "e2e_latency_p95_ms", "e2e_latency_p95_ms"),
        ("latency p99, ms", "e2e_latency_p99_ms", "e2e_latency_p99_ms"),
        ("latency max, ms", "e2e_latency_max_ms", "e2e_latency_max_ms"),
        (
            "the machine's CPU time stolen by its hypervisor during the latency run, %",
            "e2e_latency_host_steal_pct",
            "",
        ),
        (
            "how long an idle vCPU polls before it halts (cpuidle-haltpoll), µs; at 0 each hand-off between processes wakes a halted one",
            "e2e_latency_host_halt_poll_us",
            "",
        ),
        ("light queue latency p50, ms, while a heavy queue drains", "light_queue_latency_p50_ms", ""),
        ("light queue latency p99, ms, while a heavy queue drains", "light_queue_latency_p99_ms", ""),
        ("light queue latency max, ms, while a heavy queue drains", "light_queue_latency_max_ms", ""),
        ("1 MiB claim-check, enqueue MB/s", "claimcheck_enqueue_mb_per_s", "claimcheck_enqueue_mb_per_s"),
        ("1 MiB claim-check, end to end MB/s", "claimcheck_e2e_mb_per_s", "claimcheck_e2e_mb_per_s"),
        ("1 MiB inside the job, end to end MB/s", "", "large_e2e_mb_per_s"),
        ("SSE events delivered per second (all clients)", "sse_events_per_s", ""),
    ];
    for (label, ours, theirs) in rows {
        let ours = if ours.is_empty() { None } else { c.get(ours, None) };
        let (f, i) =
            if theirs.is_empty() { (None, None) } else { (p.get(theirs, fork), p.get(theirs, inproc)) };
        writeln!(out, "| {label} | {} | {} | {} |", show(ours), show(f), show(i))?;
    }
    for line in c.all("process_tasks_per_s").into_iter().filter(|l| threads_of(l) > 1) {
        writeln!(
            out,
            "| process tasks/s (queued backlog, concurrency 50, one worker process on `--threads {}`) | {} | — | — |",
            threads_of(line),
            show(line["value"].as_f64())
        )?;
    }
    for line in drains {
        writeln!(
            out,
            "| drain tasks/s, backlog {} | {} | — | — |",
            line["backlog"],
            show(line["value"].as_f64())
        )?;
    }
    redis_memory(&mut out, &c, &p)?;
    cpu_table(&mut out, &c, process, nproc)?;
    drain_cpu(&mut out, &c, nproc)?;
    turns.tables(&mut out)?;
    own_kinds_cpu(&mut out, &c)?;
    auth_cost(&mut out, &c)?;
    scale(&mut out, &c)?;
    Ok(out)
}

/// One turn of the comparison run in turns: BullMQ's and Courier's runs of the backlog's drain
/// and of the latency workload, one right after the other on the same Redis, so that both meet
/// the machine as it is in that minute.
struct Turn {
    number: u64,
    courier_first: bool,
    /// BullMQ's drain, jobs/s (`process_jobs_per_s`, its worker in a process of its own), and
    /// the Redis CPU a job of it cost, µs.
    bullmq: f64,
    bullmq_redis: Option<f64>,
    /// Courier's drain on one thread, where the worker process ran on more after it.
    courier_one: Option<f64>,
    /// Courier's drain on the most threads the turn ran (`threads`), as the backlog's target
    /// takes, and the Redis CPU a task of it cost, µs.
    courier: f64,
    threads: u64,
    courier_redis: Option<f64>,
    /// The latency's p99, ms: BullMQ's and Courier's, where both ran it.
    p99: Option<(f64, f64)>,
    /// The share of the machine its hypervisor stole during Courier's latency run, %.
    stolen: Option<f64>,
}

impl Turn {
    /// Turn `number` of `lines` (both sides' lines of every turn): None when either side's drain
    /// is missing from it.
    fn of(lines: &Figures, number: u64) -> Option<Turn> {
        let of_side = |peer: &str| [("turn", Value::from(number)), ("peer", Value::from(peer))];
        let forked = |metric: &str| {
            lines.get_where(metric, &[&of_side("bullmq")[..], &[("worker_mode", "fork".into())]].concat())
        };
        let courier = |metric: &str, more: &[(&str, Value)]| {
            lines.get_where(metric, &[&of_side("courier")[..], more].concat())
        };
        let first_line = |peer: &str| lines.0.iter().position(|l| l["turn"] == number && l["peer"] == peer);
        // The drain on the most threads the turn ran, as the backlog's target takes.
        let drain = lines
            .all("process_tasks_per_s")
            .into_iter()
            .filter(|l| l["turn"] == number && l["peer"] == "courier")
            .max_by_key(|l| threads_of(l))?;
        let threads = threads_of(drain);
        let on = |threads: u64| ("worker_threads", Value::from(threads));
        Some(Turn {
            number,
            courier_first: first_line("courier") < first_line("bullmq"),
            bullmq: forked("process_jobs_per_s").filter(|v| *v > 0.0)?,
            bullmq_redis: forked("redis_cpu_us_per_job_process"),
            courier_one: if threads > 1 { courier("process_tasks_per_s", &[on(1)]) } else { None },
            courier: drain["value"].as_f64()?,
            threads,
            courier_redis: courier("process_cpu_us_per_task", &[("process", "redis".into()), on(threads)]),
            p99: forked("e2e_latency_p99_ms")
                .zip(courier("e2e_latency_p99_ms", &[]))
                .filter(|(theirs, _)| *theirs > 0.0),
            stolen: courier("e2e_latency_host_steal_pct", &[]),
        })
    }

    /// Always there (a turn without both drains is none); an `Option` as `Turns::median` takes.
    fn backlog_ratio(&self) -> Option<f64> {
        Some(self.courier / self.bullmq)
    }

    fn p99_ratio(&self) -> Option<f64> {
        self.p99.map(|(theirs, ours)| ours / theirs)
    }
}

/// The comparison run in turns, in the order they ran; a turn that lacks either side's drain is
/// left out.
struct Turns(Vec<Turn>);

impl Turns {
    fn of(lines: &Figures) -> Turns {
        let mut numbers: Vec<u64> = lines.0.iter().filter_map(|l| l["turn"].as_u64()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        Turns(numbers.into_iter().filter_map(|number| Turn::of(lines, number)).collect())
    }

    /// Of the turns that have a `ratio`, the one whose ratio is the median (the lower of the
    /// middle two where there is an even number of them), and how many had one.
    fn median(&self, ratio: fn(&Turn) -> Option<f64>) -> Option<(&Turn, f64, usize)> {
        let mut rated: Vec<(&Turn, f64)> = self.0.iter().filter_map(|t| ratio(t).map(|r| (t, r))).collect();
        rated.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (turn, r) = *rated.get(rated.len().saturating_sub(1) / 2)?;
        Some((turn, r, rated.len()))
    }

    /// The sections that list every turn's figures.
    fn tables(&self, out: &mut String) -> anyhow::Result<()> {
        let Some((median, r, _)) = self.median(Turn::backlog_ratio) else { return Ok(()) };
        writeln!(out, "\n## The backlog and the latency in turns\n")?;
        writeln!(
            out,
            "The backlog's drain (50,000 queued tasks, concurrency 50) and the latency workload, \
             BullMQ's and Courier's one right after the other, {} times over, who goes first \
             alternating: this machine's speed moves by a fifth or more within minutes, and a single \
             pass of each, minutes apart, can meet it at two speeds. Each side's Redis CPU a task \
             shows the speed its drain met. The targets' rows \"in turns\" take the turn with the \
             median ratio.\n",
            self.0.len()
        )?;
        writeln!(
            out,
            "| turn | first | BullMQ jobs/s | its Redis µs a job | Courier tasks/s, one thread | Courier{} | its Redis µs a task | ratio |",
            on_threads(median.threads)
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|")?;
        for turn in &self.0 {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                turn.number,
                if turn.courier_first { "Courier" } else { "BullMQ" },
                show(Some(turn.bullmq)),
                show(turn.bullmq_redis),
                show(turn.courier_one),
                show(Some(turn.courier)),
                show(turn.courier_redis),
                show(turn.backlog_ratio())
            )?;
        }
        writeln!(out, "\nThe backlog's median ratio: {r:.2} (turn {}).", median.number)?;
        if let Some((median, r, _)) = self.median(Turn::p99_ratio) {
            writeln!(
                out,
                "\n| turn | BullMQ p99, ms | Courier p99, ms | ratio | stolen during Courier's, % |"
            )?;
            writeln!(out, "|---|---|---|---|---|")?;
            for turn in &self.0 {
                let (theirs, ours) = (turn.p99.map(|p| p.0), turn.p99.map(|p| p.1));
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    turn.number,
                    show(theirs),
                    show(ours),
                    show(turn.p99_ratio()),
                    show(turn.stolen)
                )?;
            }
            writeln!(out, "\nThe latency p99's median ratio: {r:.2} (turn {}).", median.number)?;
        }
        Ok(())
    }
}

/// Rows of the figures' table: the Redis memory a task holds after each backlog's submission and
/// after its drain (kept for the retention), beside a BullMQ job's of the same payload (queued,
/// and completed: BullMQ keeps completed jobs unless told otherwise) where its count matches.
fn redis_memory(out: &mut String, c: &Figures, p: &Figures) -> anyhow::Result<()> {
    for line in c.all("redis_bytes_per_task") {
        let (backlog, state) = (&line["backlog"], line["state"].as_str().unwrap_or("?"));
        let theirs_state = if state == "succeeded" { "completed" } else { state };
        let theirs =
            p.get_where("redis_bytes_per_job", &[("n", backlog.clone()), ("state", theirs_state.into())]);
        writeln!(
            out,
            "| Redis memory a task, bytes, {state} (backlog {backlog}) · BullMQ a job, {theirs_state} | {} | {} | — |",
            show(line["value"].as_f64()),
            show(theirs)
        )?;
    }
    Ok(())
}

/// The same backlog through one Redis node and through a cluster of three masters: tasks per
/// second, and the CPU each process spent per task, submitting and draining.
fn scale(out: &mut String, c: &Figures) -> anyhow::Result<()> {
    let cpu = c.all("scale_cpu_us_per_task");
    if cpu.is_empty() {
        return Ok(());
    }
    const MODES: [&str; 2] = ["node", "cluster-3"];
    let first = c.all("scale_drain_tasks_per_s").first().copied().cloned().unwrap_or_default();
    let queues: Vec<String> = first["queues"]
        .as_array()
        .map(|q| q.iter().map(|q| format!("`{}`", q.as_str().unwrap_or("?"))).collect())
        .unwrap_or_default();
    writeln!(out, "\n## One Redis node against a cluster of three masters\n")?;
    writeln!(
        out,
        "`--workloads scale`: {} echo tasks split over three queues ({}) whose slots sit on three \
         different masters, submitted in batches of {} with no worker running, then drained by {} \
         `courier worker` processes (concurrency {} each) started together; once on one \
         redis-server, once on a Redis Cluster of three masters without replicas, all on this \
         machine. CPU time (user + system) each process spent per task: `redis-{{i}}` is the \
         master holding the `i`th queue, `redis` and `worker` are sums; `serve` takes the \
         submissions, then serves the SSE client that sees the drain end; `serve-idle` is a \
         second `courier serve` that takes no request (every one tails every queue's events).\n",
        first["n"],
        queues.join(", "),
        first["batch"],
        first["workers"],
        first["concurrency"],
    )?;
    writeln!(out, "| | one node | three masters |")?;
    writeln!(out, "|---|---|---|")?;
    for (label, metric) in
        [("submit tasks/s", "scale_submit_tasks_per_s"), ("drain tasks/s", "scale_drain_tasks_per_s")]
    {
        let [node, cluster] = MODES.map(|mode| c.get(metric, Some(("redis", mode))));
        writeln!(out, "| {label} | {} | {} |", show(node), show(cluster))?;
    }
    let network = c.all("scale_redis_bytes_per_task");
    for (label, direction) in [("Redis bytes read per task", "in"), ("Redis bytes written per task", "out")] {
        let [node, cluster] = MODES.map(|mode| {
            let lines = network.iter().filter(|l| l["redis"] == mode && l["direction"] == direction);
            lines.filter_map(|l| l["value"].as_f64()).reduce(|a, b| a + b)
        });
        writeln!(out, "| {label} (submit + drain, all servers) | {} | {} |", show(node), show(cluster))?;
    }
    writeln!(
        out,
        "\n| process | submit µs per task, one node | three masters | drain µs per task, one node | three masters |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let mut processes: Vec<&str> = cpu.iter().filter_map(|l| l["process"].as_str()).collect();
    // Each worker, then their sum; each master, then their sum; the benchmark client last.
    let rank = |p: &str| match p {
        "serve" | "serve-idle" => 0,
        "worker" => 2,
        "redis" => 4,
        "client" => 5,
        p if p.starts_with("worker-") => 1,
        _ => 3,
    };
    processes.sort_by_key(|p| (rank(p), *p));
    processes.dedup();
    for process in processes {
        let mut row = format!("| {process} |");
        for phase in ["submit", "drain"] {
            for mode in MODES {
                let value = cpu
                    .iter()
                    .find(|l| l["process"] == process && l["phase"] == phase && l["redis"] == mode)
                    .and_then(|l| l["value"].as_f64());
                write!(row, " {} |", show(value))?;
            }
        }
        writeln!(out, "{row}")?;
    }
    Ok(())
}

/// What a token costs a request: submissions with access control off and with a token.
fn auth_cost(out: &mut String, c: &Figures) -> anyhow::Result<()> {
    let rates = c.all("auth_submit_tasks_per_s");
    if rates.is_empty() {
        return Ok(());
    }
    let rate = |mode: &str| rates.iter().find(|l| l["auth"] == mode).and_then(|l| l["value"].as_f64());
    let cpu = c.all("auth_cpu_us_per_request");
    let cpu = |mode: &str, process: &str| {
        cpu.iter().find(|l| l["auth"] == mode && l["process"] == process).and_then(|l| l["value"].as_f64())
    };
    writeln!(out, "\n## What access control costs a request\n")?;
    writeln!(
        out,
        "Small submissions, a request each, to a server without tokens and to one where a bearer \
         token authenticates every call (looked up in memory, its scope and queue checked).\n"
    )?;
    writeln!(out, "| | tasks/s | server µs per request | Redis µs per request |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (label, mode) in [
        ("access control off", "off"),
        ("a bearer token", "token"),
        ("a bearer token and `--rate-limit`", "token-rate-limit"),
    ] {
        writeln!(
            out,
            "| {label} | {} | {} | {} |",
            show(rate(mode)),
            show(cpu(mode, "serve")),
            show(cpu(mode, "redis"))
        )?;
    }
    Ok(())
}

/// Where the CPU of the backlog's drain went, per process, and how much of the machine was left
/// idle: a worker and a Redis that take turns on each round leave idle what neither is short of.
fn drain_cpu(out: &mut String, c: &Figures, nproc: u64) -> anyhow::Result<()> {
    let lines = c.all("process_cpu_us_per_task");
    if lines.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n## Where the CPU goes, draining a backlog\n")?;
    writeln!(
        out,
        "CPU time each process spent per task while one worker process drained the queued backlog \
         (the server and the client carry the SSE stream that times it), and the share of one core \
         it kept busy.\n"
    )?;
    let mut runs: Vec<u64> = lines.iter().map(|l| threads_of(l)).collect();
    runs.sort_unstable();
    runs.dedup();
    for threads in runs {
        if threads > 1 {
            writeln!(out, "\nThe worker process on `--threads {threads}`:\n")?;
        }
        writeln!(out, "| process | µs per task | cores |")?;
        writeln!(out, "|---|---|---|")?;
        let (mut total, mut busy) = (0.0, 0.0);
        for name in ["redis", "serve", "worker", "client"] {
            let found = lines.iter().find(|l| l["process"] == name && threads_of(l) == threads);
            let Some(line) = found else { continue };
            let (us, share) =
                (line["value"].as_f64().unwrap_or(0.0), line["cpu_share"].as_f64().unwrap_or(0.0));
            (total, busy) = (total + us, busy + share);
            writeln!(out, "| {name} | {us:.1} | {share:.2} |")?;
        }
        writeln!(out, "| all | {total:.1} | {busy:.2} |")?;
        let idle = c.all("process_idle_share").into_iter().find(|l| threads_of(l) == threads);
        if let Some(idle) = idle.and_then(|l| l["value"].as_f64()) {
            writeln!(
                out,
                "\nOf the {nproc} cores' time over the drain, {:.0} % was idle (or waiting on I/O).",
                idle * 100.0
            )?;
        }
    }
    Ok(())
}

/// Where the CPU of the pull and push runs went, per process.
fn own_kinds_cpu(out: &mut String, c: &Figures) -> anyhow::Result<()> {
    let pull = c.all("pull_cpu_us_per_task");
    let ends = c.all("pull_ends_cpu_us_per_task");
    let carried = c.all("pull_carried_cpu_us_per_task");
    let push = c.all("push_cpu_us_per_task");
    if pull.is_empty() && push.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n## Where the CPU goes, your own kinds\n")?;
    writeln!(
        out,
        "CPU time each process spent per task while pull workers drained a backlog over HTTP (the \
         client is the pull workers; a complete per task, a lease's ends in one request, or in the \
         next lease request) and while one worker pushed one to an endpoint (the client is the \
         endpoint).\n"
    )?;
    writeln!(
        out,
        "| process | pull µs per task | pull, ends together | pull, ends carried | push µs per task |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let cell = |lines: &[&Value], process: &str| {
        lines.iter().find(|l| l["process"] == process).and_then(|l| l["value"].as_f64())
    };
    for name in ["redis", "serve", "worker", "client"] {
        let (pull, ends, push) = (cell(&pull, name), cell(&ends, name), cell(&push, name));
        let carried = cell(&carried, name);
        writeln!(out, "| {name} | {} | {} | {} | {} |", show(pull), show(ends), show(carried), show(push))?;
    }
    Ok(())
}

/// Where the CPU of the end-to-end runs went, per process, against what the machine could give
/// each task at the target rate.
/// Each process's CPU µs per task and share of a core in the end-to-end run of `batch` tasks a
/// request, in the order the run wrote them: the first run of that size only (both runs are of
/// one task a request with `--batch 1`).
fn e2e_cpu(c: &Figures, batch: u64) -> Vec<(&str, f64, f64)> {
    let mut processes: Vec<(&str, f64, f64)> = Vec::new();
    for l in c.all("e2e_cpu_us_per_task").into_iter().filter(|l| l["batch"].as_u64() == Some(batch)) {
        let Some(name) = l["process"].as_str() else { continue };
        if !processes.iter().any(|p| p.0 == name) {
            processes.push((
                name,
                l["value"].as_f64().unwrap_or(0.0),
                l["cpu_share"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    processes
}

fn cpu_table(out: &mut String, c: &Figures, process: Option<f64>, nproc: u64) -> anyhow::Result<()> {
    let lines = c.all("e2e_cpu_us_per_task");
    if lines.is_empty() {
        return Ok(());
    }
    let batch = lines.iter().filter_map(|l| l["batch"].as_u64()).max().unwrap_or(1);
    let runs = [e2e_cpu(c, batch), e2e_cpu(c, 1)];
    writeln!(out, "\n## Where the CPU goes, end to end\n")?;
    writeln!(
        out,
        "CPU time (user + system) each process spent per task during the end-to-end runs, and the \
         share of one core it kept busy.\n"
    )?;
    writeln!(
        out,
        "| process | µs per task, batches of {batch} | cores | µs per task, a request per task | cores |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let mut totals = [(0.0, 0.0); 2];
    for name in ["redis", "serve", "worker", "client"] {
        let mut row = format!("| {name} |");
        for (run, total) in runs.iter().zip(&mut totals) {
            let (us, share) =
                run.iter().find(|p| p.0 == name).map_or((0.0, 0.0), |&(_, us, share)| (us, share));
            total.0 += us;
            total.1 += share;
            write!(row, " {us:.1} | {share:.2} |")?;
        }
        writeln!(out, "{row}")?;
    }
    let [(bu, bs), (ru, rs)] = totals;
    writeln!(out, "| all | {bu:.1} | {bs:.2} | {ru:.1} | {rs:.2} |")?;
    if let Some(process) = process.filter(|p| *p > 0.0) {
        let goal = 1.5 * process;
        writeln!(
            out,
            "\nAt the target, 1.5 × BullMQ's {process:.0} = {goal:.0} tasks/s, {nproc} cores give all \
             processes together {:.1} µs of CPU per task.",
            nproc as f64 * 1e6 / goal
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of a Courier run whose end-to-end batches reached `e2e` tasks/s with `redis`
    /// µs of Redis CPU per task and `busy` cores busy, against a BullMQ that processed 10,000
    /// jobs/s.
    fn report(e2e: f64, redis: f64, busy: f64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let lines = |lines: &[Value]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        let courier = dir.path().join("courier.jsonl");
        let peer = dir.path().join("peer.jsonl");
        std::fs::write(
            &courier,
            lines(&[
                serde_json::json!({"metric": "meta", "nproc": 2}),
                serde_json::json!({"metric": "e2e_batch_tasks_per_s", "batch": 100, "value": e2e}),
                serde_json::json!({"metric": "e2e_cpu_us_per_task", "batch": 100, "process": "redis", "value": redis, "cpu_share": busy / 2.0}),
                serde_json::json!({"metric": "e2e_cpu_us_per_task", "batch": 100, "process": "serve", "value": 30.0, "cpu_share": busy / 2.0}),
            ]),
        )
        .unwrap();
        std::fs::write(
            &peer,
            lines(&[
                serde_json::json!({"metric": "process_jobs_per_s", "worker_mode": "fork", "value": 10000.0}),
            ]),
        )
        .unwrap();
        markdown(&courier, Some(&peer), None).unwrap()
    }

    /// The "met" cell of the target row whose name starts with `name`.
    fn met(report: &str, name: &str) -> String {
        let row = report.lines().find(|l| l.starts_with(&format!("| {name}"))).unwrap();
        row.trim_end_matches(" |").rsplit(" | ").next().unwrap().to_string()
    }

    #[test]
    fn the_drain_shows_each_process_cpu_and_the_idle_share() {
        let dir = tempfile::tempdir().unwrap();
        let courier = dir.path().join("courier.jsonl");
        let lines = [
            serde_json::json!({"metric": "meta", "nproc": 2}),
            serde_json::json!({"metric": "process_tasks_per_s", "value": 20000.0}),
            serde_json::json!({"metric": "process_cpu_us_per_task", "process": "redis", "value": 25.0, "cpu_share": 0.5}),
            serde_json::json!({"metric": "process_cpu_us_per_task", "process": "worker", "value": 20.0, "cpu_share": 0.4}),
            serde_json::json!({"metric": "process_idle_share", "value": 0.27}),
        ];
        std::fs::write(&courier, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let report = markdown(&courier, None, None).unwrap();
        assert!(report.contains("## Where the CPU goes, draining a backlog"), "{report}");
        assert!(
            report.contains("| redis | 25.0 | 0.50 |\n| worker | 20.0 | 0.40 |\n| all | 45.0 | 0.90 |"),
            "{report}"
        );
        assert!(
            report.contains("Of the 2 cores' time over the drain, 27 % was idle (or waiting on I/O)."),
            "{report}"
        );
        // Without the idle share, the table alone.
        let without_idle: String = lines[..4].iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&courier, without_idle).unwrap();
        let report = markdown(&courier, None, None).unwrap();
        assert!(report.contains("| all | 45.0 | 0.90 |") && !report.contains("was idle"), "{report}");
        // Without the figures (an older run, or the workload not run), no section.
        std::fs::write(&courier, format!("{}\n", lines[1])).unwrap();
        assert!(!markdown(&courier, None, None).unwrap().contains("draining a backlog"));
    }

    #[test]
    fn a_drain_on_more_threads_is_the_backlogs_target_and_shows_beside_the_one_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let (courier, peer) = (dir.path().join("courier.jsonl"), dir.path().join("peer.jsonl"));
        let lines = [
            serde_json::json!({"metric": "meta", "nproc": 2}),
            serde_json::json!({"metric": "process_tasks_per_s", "value": 20000.0, "worker_threads": 1}),
            serde_json::json!({"metric": "process_cpu_us_per_task", "process": "worker", "value": 20.0, "cpu_share": 0.4, "worker_threads": 1}),
            serde_json::json!({"metric": "process_idle_share", "value": 0.3, "worker_threads": 1}),
            serde_json::json!({"metric": "process_tasks_per_s", "value": 30000.0, "worker_threads": 2}),
            serde_json::json!({"metric": "process_cpu_us_per_task", "process": "worker", "value": 22.0, "cpu_share": 0.66, "worker_threads": 2}),
            serde_json::json!({"metric": "process_idle_share", "value": 0.1, "worker_threads": 2}),
        ];
        std::fs::write(&courier, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let bullmq =
            serde_json::json!({"metric": "process_jobs_per_s", "worker_mode": "fork", "value": 10000.0});
        std::fs::write(&peer, format!("{bullmq}\n")).unwrap();
        let report = markdown(&courier, Some(&peer), None).unwrap();
        assert!(
            report.contains(
                "| process a queued backlog, tasks/s, vs BullMQ `process_jobs_per_s` (one worker process, \
                 `--threads 2`) | 30000 | 10000 | 3.00 | ≥ 2 | yes |"
            ),
            "{report}"
        );
        assert!(
            report.contains("| process tasks/s (queued backlog, concurrency 50, one worker process on one thread) | 20000 |"),
            "{report}"
        );
        assert!(
            report.contains(
                "| process tasks/s (queued backlog, concurrency 50, one worker process on `--threads 2`) | 30000 |"
            ),
            "{report}"
        );
        let on_one =
            "| worker | 20.0 | 0.40 |\n| all | 20.0 | 0.40 |\n\nOf the 2 cores' time over the drain, 30 %";
        let on_two = "The worker process on `--threads 2`:\n\n| process | µs per task | cores |\n|---|---|---|\n\
                      | worker | 22.0 | 0.66 |\n| all | 22.0 | 0.66 |\n\nOf the 2 cores' time over the drain, 10 %";
        assert!(report.contains(on_one) && report.contains(on_two), "{report}");
        // A run from before the setting: one drain, its figures unnamed, the target on it.
        std::fs::write(
            &courier,
            format!("{}\n", serde_json::json!({"metric": "process_tasks_per_s", "value": 25000.0})),
        )
        .unwrap();
        let report = markdown(&courier, Some(&peer), None).unwrap();
        assert!(
            report.contains(
                "| process a queued backlog, tasks/s, vs BullMQ `process_jobs_per_s` | 25000 | 10000 | 2.50 |"
            ),
            "{report}"
        );
    }

    /// The lines of one turn: BullMQ's drain at `bullmq` jobs/s, and Courier's at `one` and `two`
    /// tasks/s (one thread, then two), the p99s `(BullMQ's, Courier's)`, and half the turn's
    /// number as the share stolen during Courier's latency; Courier's lines first if so told.
    fn turn(
        number: u64,
        courier_first: bool,
        bullmq: f64,
        one: f64,
        two: f64,
        p99s: (f64, f64),
    ) -> Vec<Value> {
        let their = vec![
            serde_json::json!({"turn": number, "peer": "host", "metric": "loadavg_before", "value": 1.0}),
            serde_json::json!({"turn": number, "peer": "bullmq", "worker_mode": "fork", "metric": "process_jobs_per_s", "value": bullmq}),
            serde_json::json!({"turn": number, "peer": "bullmq", "worker_mode": "fork", "metric": "redis_cpu_us_per_job_process", "value": 60.0}),
            serde_json::json!({"turn": number, "peer": "bullmq", "worker_mode": "fork", "metric": "e2e_latency_p99_ms", "value": p99s.0}),
        ];
        let ours = vec![
            serde_json::json!({"turn": number, "peer": "courier", "metric": "process_tasks_per_s", "value": one, "worker_threads": 1}),
            serde_json::json!({"turn": number, "peer": "courier", "metric": "process_cpu_us_per_task", "process": "redis", "value": 30.0, "worker_threads": 1}),
            serde_json::json!({"turn": number, "peer": "courier", "metric": "process_tasks_per_s", "value": two, "worker_threads": 2}),
            serde_json::json!({"turn": number, "peer": "courier", "metric": "process_cpu_us_per_task", "process": "redis", "value": 25.0, "worker_threads": 2}),
            serde_json::json!({"turn": number, "peer": "courier", "metric": "e2e_latency_p99_ms", "value": p99s.1}),
            serde_json::json!({"turn": number, "peer": "courier", "metric": "e2e_latency_host_steal_pct", "value": 0.5 * number as f64}),
        ];
        if courier_first { [ours, their].concat() } else { [their, ours].concat() }
    }

    #[test]
    fn the_targets_in_turns_take_the_median_pair_and_every_turn_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (courier, peer, turns) =
            (dir.path().join("courier.jsonl"), dir.path().join("peer.jsonl"), dir.path().join("turns.jsonl"));
        let one_pass =
            serde_json::json!({"metric": "process_tasks_per_s", "value": 15000.0, "worker_threads": 2});
        std::fs::write(&courier, format!("{one_pass}\n")).unwrap();
        let bullmq =
            serde_json::json!({"metric": "process_jobs_per_s", "worker_mode": "fork", "value": 10000.0});
        std::fs::write(&peer, format!("{bullmq}\n")).unwrap();
        let write = |lines: Vec<Value>| {
            std::fs::write(&turns, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap()
        };
        // Ratios 1.5, 2.5 and 2.2: the median is the third turn's. A fourth turn whose BullMQ side
        // is missing is no pair.
        let mut lines = [
            turn(1, false, 10000.0, 12000.0, 15000.0, (4.0, 2.0)),
            turn(2, true, 8000.0, 15000.0, 20000.0, (8.0, 1.0)),
            turn(3, false, 10000.0, 18000.0, 22000.0, (5.0, 1.5)),
        ]
        .concat();
        lines.push(
            serde_json::json!({"turn": 4, "peer": "courier", "metric": "process_tasks_per_s", "value": 1.0}),
        );
        write(lines.clone());
        let report = markdown(&courier, Some(&peer), Some(&turns)).unwrap();
        // The single pass keeps its row; the turns' row stands under it.
        assert!(report.contains("vs BullMQ `process_jobs_per_s` (one worker process, `--threads 2`) | 15000 | 10000 | 1.50 | ≥ 2 | **no** |"), "{report}");
        assert!(
            report.contains(
                "| … the same in turns, the median of 3 pairs (each BullMQ's drain and Courier's, one right after \
                 the other) (one worker process, `--threads 2`) | 22000 | 10000 | 2.20 | ≥ 2 | yes |"
            ),
            "{report}"
        );
        // p99 ratios 0.5, 0.125 and 0.3: the median is the third turn's.
        assert!(
            report.contains(
                "| … the same in turns, the median of 3 pairs | 1.50 | 5.00 | 0.30 | ≤ 0.25 | **no** |"
            ),
            "{report}"
        );
        assert!(
            report.contains(
                "| 1 | BullMQ | 10000 | 60.00 | 12000 | 15000 | 25.00 | 1.50 |\n\
                 | 2 | Courier | 8000 | 60.00 | 15000 | 20000 | 25.00 | 2.50 |\n\
                 | 3 | BullMQ | 10000 | 60.00 | 18000 | 22000 | 25.00 | 2.20 |\n\
                 \nThe backlog's median ratio: 2.20 (turn 3)."
            ),
            "{report}"
        );
        assert!(report.contains("| 2 | 8.00 | 1.00 | 0.12 | 1.00 |\n"), "{report}");
        assert!(report.contains("The latency p99's median ratio: 0.30 (turn 3)."), "{report}");
        // Of an even number, the lower of the middle two; without the latency, no latency rows.
        let first_two = |l: &&Value| l["turn"].as_u64() <= Some(2) && l["metric"] != "e2e_latency_p99_ms";
        write(lines.iter().filter(first_two).cloned().collect());
        let report = markdown(&courier, Some(&peer), Some(&turns)).unwrap();
        assert!(report.contains("| … the same in turns, the median of 2 pairs (each BullMQ's drain and Courier's, one right after the other) (one worker process, `--threads 2`) | 15000 | 10000 | 1.50 |"), "{report}");
        assert!(
            !report.contains("p99's median")
                && !report.contains("| … the same in turns, the median of 2 pairs |"),
            "{report}"
        );
        // Without turns, neither the rows nor the section.
        let report = markdown(&courier, Some(&peer), None).unwrap();
        assert!(!report.contains("in turns"), "{report}");
    }

    #[test]
    fn the_memory_a_task_holds_stands_beside_bullmqs_for_the_same_count() {
        let dir = tempfile::tempdir().unwrap();
        let (courier, peer) = (dir.path().join("courier.jsonl"), dir.path().join("peer.jsonl"));
        let lines = |lines: &[Value]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(
            &courier,
            lines(&[
                serde_json::json!({"metric": "redis_bytes_per_task", "backlog": 1000, "state": "queued", "value": 1700.4}),
                serde_json::json!({"metric": "redis_bytes_per_task", "backlog": 100000, "state": "queued", "value": 1583.0}),
                serde_json::json!({"metric": "redis_bytes_per_task", "backlog": 100000, "state": "succeeded", "value": 2584.0}),
            ]),
        )
        .unwrap();
        std::fs::write(
            &peer,
            lines(&[
                serde_json::json!({"metric": "redis_bytes_per_job", "n": 100000, "state": "queued", "value": 670.0}),
                serde_json::json!({"metric": "redis_bytes_per_job", "n": 100000, "state": "completed", "value": 1151.0}),
            ]),
        )
        .unwrap();
        let report = markdown(&courier, Some(&peer), None).unwrap();
        for row in [
            "| Redis memory a task, bytes, queued (backlog 1000) · BullMQ a job, queued | 1700 | — | — |",
            "| Redis memory a task, bytes, queued (backlog 100000) · BullMQ a job, queued | 1583 | 670 | — |",
            "| Redis memory a task, bytes, succeeded (backlog 100000) · BullMQ a job, completed | 2584 | 1151 | — |",
        ] {
            assert!(report.contains(row), "{row} in {report}");
        }
    }

    #[test]
    fn end_to_end_counts_as_met_when_every_process_would_keep_up_on_a_core_of_its_own() {
        // 1.5 × 10,000 jobs/s leaves a core 66.7 µs per task.
        let throughput = "tasks/s end to end (HTTP + SSE, batches of 100)";
        let per_core = "… or, the cores the limit";
        let fits = report(9000.0, 60.0, 1.9);
        assert_eq!(met(&fits, throughput), "yes");
        assert_eq!(met(&fits, per_core), "yes");
        assert!(fits.contains("(1.90 of 2 busy), on a core per process: the busiest (redis)"), "{fits}");
        let too_busy = report(9000.0, 70.0, 1.9);
        assert_eq!(met(&too_busy, throughput), "**no**");
        assert_eq!(met(&too_busy, per_core), "**no**");
        // Cores left idle: something else held it back, so the CPU per task says nothing.
        let idle_cores = report(9000.0, 60.0, 1.2);
        assert_eq!(met(&idle_cores, throughput), "**no**");
        assert_eq!(met(&idle_cores, per_core), "**no**");
        let fast = report(16000.0, 70.0, 1.2);
        assert_eq!(met(&fast, throughput), "yes");
    }
}
