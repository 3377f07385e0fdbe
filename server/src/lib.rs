//! Courier: an async message orchestrator on Redis. This library is the whole server; `main.rs`
//! only parses the configuration and runs it.
//!
//! Arrows point down: `http` → `tasks`/`kinds` → `store`/`queue`/`events`; `worker` →
//! `queue`/`handlers`.

pub mod audit;
pub mod auth;
pub mod config;
pub mod embedded_redis;
pub mod events;
pub mod handlers;
pub mod http;
pub mod kinds;
pub mod layout;
pub mod links;
pub mod metrics;
pub mod push;
pub mod queue;
pub mod queues;
pub mod redis_client;
pub mod schedules;
pub mod stats;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod topics;
pub mod trace_context;
pub mod worker;
pub mod workers;
pub mod workflows;
pub mod written_json;

use anyhow::Context;
use config::{Command, Config};
use embedded_redis::EmbeddedRedis;
use events::Events;
use handlers::Registry;
use kinds::{KindKeys, Kinds};
use queue::{Queue, QueueSettings, Relay, Serving};
use queues::Queues;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use store::DEFAULT_QUEUE;
use tasks::Tasks;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use topics::{FileConfig, Topics};
use tracing::info;
use worker::{RetryPolicy, Runner};

/// A built Courier process: bound to its port (if it serves HTTP), connected to Redis, ready to
/// run until a shutdown signal.
pub struct Server {
    listener: Option<TcpListener>,
    /// A worker's `/healthz` and `/metrics` (`--metrics-addr`), with what they read.
    probes: Option<(TcpListener, axum::Router)>,
    /// Set when it serves HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Option<axum::Router>,
    runner: Option<Arc<Runner>>,
    /// Ticked from `run` on, in every process.
    schedules: schedules::Schedules,
    /// The stats counts of every queue's finishes in this process, written last as it stops.
    tallies: Arc<stats::Tallies>,
    config: Config,
    redis: Option<EmbeddedRedis>,
    shutdown: CancellationToken,
}

impl Server {
    /// Connects to Redis (starting one if no URL is given and the role is `serve`), binds the
    /// HTTP port (for `serve`), and prepares the workers (unless `--concurrency 0`), for the
    /// built-in kinds.
    pub async fn build(config: Config, role: Command) -> anyhow::Result<Server> {
        Server::build_with(config, role, Registry::builtin()).await
    }

    /// [`Server::build`] for the kinds of `registry` (the built-in ones and your own).
    pub async fn build_with(config: Config, role: Command, registry: Registry) -> anyhow::Result<Server> {
        Server::build_stopped_by(config, role, registry, CancellationToken::new(), Relay::alone()).await
    }

    /// [`Server::build_with`], stopped when `shutdown` is cancelled (as its own signal handler
    /// cancels it), its workers reading when `relay` says: the workers of one process, each on a
    /// thread of its own, share one token, and take their places in one chain.
    async fn build_stopped_by(
        config: Config,
        role: Command,
        registry: Registry,
        shutdown: CancellationToken,
        relay: Relay,
    ) -> anyhow::Result<Server> {
        config.validate().map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
        // Read before anything starts: a bad file stops the start, not each connection.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) if role == Command::Serve => Some(http::tls_acceptor(cert, key)?),
            _ => None,
        };
        let (url, redis) = match &config.redis_url {
            Some(url) => (url.expose().to_string(), None),
            None if role == Command::Serve => {
                let dir = config.data_dir.join("redis");
                let redis = EmbeddedRedis::start(&dir).await.context("starting the embedded redis-server")?;
                info!(redis.port = redis.port(), redis.dir = %dir.display(), "started an embedded redis-server (set COURIER_REDIS_URL to use your own)");
                (redis.url(), Some(redis))
            }
            None => anyhow::bail!("`courier worker` needs a Redis: set COURIER_REDIS_URL or --redis-url"),
        };
        let client = redis_client::open(&url, config.redis_cluster, config.redis_ca_cert.as_deref())?;
        let conn = client.connect(Duration::from_secs(10)).await.with_context(|| {
            format!(
                "connecting to Redis at {}",
                config
                    .redis_url
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "the embedded redis-server".into())
            )
        })?;
        // Before anything reads them: keys of the layout before hash tags move once.
        layout::upgrade(&conn, &config.prefix).await.context("moving the keys to the tagged layout")?;
        let durable = match config.durable_submit {
            // WAIT answers within its timeout; the connection waits a little longer for it.
            true => Some(queue::Durable {
                conn: client
                    .connect(config.durable_submit_timeout + Duration::from_secs(10))
                    .await
                    .context("connecting to Redis for durable submissions")?,
                timeout: config.durable_submit_timeout,
            }),
            false => None,
        };
        let settings = QueueSettings {
            lease: config.lease,
            retention: config.retention,
            dead_retention: config.dead_retention,
            payload_retention: config.payload_retention.unwrap_or(config.retention),
            events_maxlen: config.events_max,
            durable,
        };
        let queue = Queue::new(client.clone(), conn.clone(), &config.prefix, DEFAULT_QUEUE, settings);
        let tallies = queue.tallies();
        queue.load_scripts().await.context(
            "loading Courier's scripts into Redis (a library of Redis Functions: Redis 7.0 or later, \
             and an ACL user allowed FUNCTION LOAD and FCALL)",
        )?;
        queue.open_lanes(&[]).await.context("opening the default queue's lanes")?;
        let queues = Queues::open_registry(queue, conn.clone(), &config.prefix)
            .await
            .context("reading the queue registry")?;
        let file = read_file_config(&config)?;
        declare_queues(&file, &queues).await?;
        // Every clone of the registry (the API's, the workers') sees what a reload reads.
        let kinds = Kinds::new(conn.clone(), &config.prefix, registry.clone(), config.events_max);
        kinds.reload().await.context("reading the declared kinds")?;
        if let Some((path, file)) = &file {
            kinds.declare_from_file(path, &file.kinds).await?;
        }
        let workers = workers::Workers::new(conn.clone(), &config.prefix, config.lease);

        // Every process ticks the schedules, `serve` and `worker` alike: no leader.
        let tasks = Tasks::new(queues.clone(), registry.clone(), config.max_attempts);
        // A schedule may start a workflow in any process; only `serve` moves workflows on.
        let workflows = workflows::Workflows::new(
            tasks.clone(),
            conn.clone(),
            &config.prefix,
            config.events_max,
            config.retention,
        );
        let schedules =
            schedules::Schedules::new(conn.clone(), &config.prefix, tasks.clone(), workflows.clone());
        if let Some((path, file)) = &file {
            schedules.declare_from_file(path, &file.schedules).await?;
        }
        let runner = (config.concurrency > 0).then(|| {
            let retry = RetryPolicy { base: config.retry_base, cap: config.retry_cap };
            let choice = queue::parse_choice(&config.queues).unwrap_or(queue::QueueChoice::Every);
            let kinds = registry.clone();
            let serving =
                Serving::new(queues.clone(), choice, config.concurrency, Arc::new(move || kinds.run_here()));
            Runner::new(serving, registry.clone(), retry, workers.clone(), relay)
        });
        let (listener, router) = if role == Command::Serve {
            let tokens = auth::Tokens::new(conn.clone(), &config.prefix, config.auth)
                .with_rate_limit(config.rate_limit);
            tokens.reload().await.context("reading the access tokens")?;
            refuse_open_network(&config, &tokens)?;
            tokio::spawn(tokens.clone().keep_current(shutdown.clone()));
            let links = links::Links::open(conn.clone(), &config.prefix, config.result_link_ttl)
                .await
                .context("reading the result link keys")?;
            tokio::spawn(links.clone().keep_current(shutdown.clone()));
            let listener =
                TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
            let events =
                Events::start(client, conn.clone(), queues.clone(), config.max_sse_clients, shutdown.clone())
                    .await
                    .context("reading the event stream")?;
            tokio::spawn(kinds::follow_events(kinds.clone(), events.kind_changes(), shutdown.clone()));
            let topics = Topics::new(conn.clone(), &config.prefix, tasks.clone());
            workflows.start(&events, shutdown.clone());
            declare_subscriptions(&file, &topics).await?;
            let state = http::AppState::new(http::Shared {
                tasks,
                topics,
                workflows,
                schedules: schedules.clone(),
                kinds,
                events,
                sessions: auth::sessions::Sessions::new(conn.clone(), &config.prefix, tokens.clone()),
                tokens,
                audit: audit::Audit::new(conn.clone(), &config.prefix),
                links: links.clone(),
                redis: conn.clone(),
                max_payload: config.max_payload,
                body_budget: http::BodyBudget::new(config.max_body_memory),
                retention: config.retention,
                retry: RetryPolicy { base: config.retry_base, cap: config.retry_cap },
                leptos_options: leptos_options(&config, listener.local_addr()?),
                https: tls.is_some(),
                guard: Arc::new(http::Guard::new(&config, listener.local_addr()?)),
                timeouts: http::Timeouts { request: config.request_timeout, body: config.body_timeout },
                waiting: Arc::new(tokio::sync::Semaphore::new(
                    config.max_waiting.min(tokio::sync::Semaphore::MAX_PERMITS),
                )),
                metrics: metrics::recorder(),
                workers,
            });
            (Some(listener), Some(http::router(state)))
        } else {
            let keys = KindKeys::new(&config.prefix);
            tokio::spawn(kinds::keep_current(registry, conn.clone(), keys, shutdown.clone()));
            (None, None)
        };
        let probes = match config.metrics_addr {
            Some(addr) if role == Command::Worker => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --metrics-addr {addr}"))?;
                Some((listener, http::worker_probes(conn, metrics::recorder())))
            }
            _ => None,
        };
        Ok(Server { listener, probes, tls, router, runner, schedules, tallies, config, redis, shutdown })
    }

    /// The bound HTTP port; `None` for a worker-only process.
    pub fn port(&self) -> Option<u16> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port())
    }

    /// The port of a worker's `/healthz` and `/metrics` (`--metrics-addr`); `None` without.
    pub fn metrics_port(&self) -> Option<u16> {
        self.probes.as_ref().and_then(|(l, _)| l.local_addr().ok()).map(|a| a.port())
    }

    /// A token that stops the process gracefully when cancelled (as SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves and works until SIGINT, SIGTERM or the shutdown token; then stops taking work,
    /// lets in-flight tasks finish within the grace period, and stops the embedded Redis.
    pub async fn run(self) -> anyhow::Result<()> {
        let Server { listener, probes, tls, router, runner, schedules, tallies, config, redis, shutdown } =
            self;
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        tokio::spawn(schedules.tick(shutdown.clone()));
        if let Some((listener, router)) = probes {
            info!(addr = %listener.local_addr()?, "serving /healthz and /metrics");
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let served =
                    axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "serving /healthz and /metrics stopped");
                }
            });
        }
        let workers =
            runner.map(|runner| tokio::spawn(runner.run(config.concurrency, shutdown.clone(), config.grace)));
        if let (Some(listener), Some(router)) = (listener, router) {
            let addr = listener.local_addr()?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            info!(addr = %addr, url = %format_args!("{scheme}://{addr}"), "serving the UI and the API");
            http::serve(listener, router, tls, config.header_timeout, shutdown.clone()).await;
        } else {
            info!(concurrency = config.concurrency, "working");
            shutdown.cancelled().await;
        }
        if let Some(workers) = workers {
            workers.await.context("the worker task panicked")??;
        }
        // Every attempt has ended and every request been answered: their counts, before Redis may go.
        tallies.flush_all().await;
        if let Some(redis) = redis {
            redis.stop().await.context("stopping the embedded redis-server")?;
            info!("stopped the embedded redis-server");
        }
        Ok(())
    }
}

/// Refuses to serve a non-loopback address while anyone who reaches it could do anything,
/// unless the operator insists (`--insecure-no-auth`).
fn refuse_open_network(config: &Config, tokens: &auth::Tokens) -> anyhow::Result<()> {
    if config.addr.ip().is_loopback() || tokens.enabled() || config.insecure_no_auth {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {} with no access token: anyone who reaches it could read every task \
         and cancel any. Create an admin token first (`courier token create --name admin --scopes \
         submit,read,work,operate,admin --queues '*'`, with the same --redis-url and --prefix), or \
         pass --insecure-no-auth to serve it open",
        config.addr
    )
}

/// The configuration file: `--config`, else `courier.toml` if there is one, else nothing.
fn read_file_config(config: &Config) -> anyhow::Result<Option<(std::path::PathBuf, FileConfig)>> {
    let path = match &config.config {
        Some(path) => path.clone(),
        None if std::path::Path::new("courier.toml").exists() => "courier.toml".into(),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file = FileConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some((path, file)))
}

/// Sets the limits of the queues the configuration file declares.
async fn declare_queues(
    file: &Option<(std::path::PathBuf, FileConfig)>,
    queues: &Queues,
) -> anyhow::Result<()> {
    let Some((path, file)) = file else { return Ok(()) };
    for declared in &file.queues {
        let limits = declared.limits();
        http::validate_limits(&limits)
            .map_err(|e| anyhow::anyhow!("{}: queue `{}`: {e}", path.display(), declared.name))?;
        let queue = queues
            .open(&declared.name)
            .await
            .with_context(|| format!("{}: declaring queue `{}`", path.display(), declared.name))?;
        queue
            .set_limits(&limits)
            .await
            .with_context(|| format!("setting the limits of queue `{}`", declared.name))?;
    }
    if !file.queues.is_empty() {
        info!(count = file.queues.len(), file = %path.display(), "declared queues");
    }
    Ok(())
}

/// Creates or updates the subscriptions the configuration file declares.
async fn declare_subscriptions(
    file: &Option<(std::path::PathBuf, FileConfig)>,
    topics: &Topics,
) -> anyhow::Result<()> {
    let Some((path, file)) = file else { return Ok(()) };
    for declared in &file.subscriptions {
        topics
            .put(&declared.topic, &declared.name, &declared.subscription)
            .await
            .with_context(|| format!("declaring subscription {}/{}", declared.topic, declared.name))?;
    }
    info!(count = file.subscriptions.len(), file = %path.display(), "declared subscriptions");
    Ok(())
}

/// What the `courier` binary does, for the kinds of `registry`: parses the command line and the
/// `COURIER_*` variables, starts the threads `--threads` asks for (`Cli::threads`: for `serve` a
/// runtime of that many, one per core unless set; for `worker` a worker on each, one unless set:
/// `run_worker_threads`), starts logging (`RUST_LOG`, `--log-format`) and span export
/// (`--otlp-endpoint`), then serves or works on it until a shutdown signal. A
/// binary of your own with kinds of its own makes this its `main` (`examples/custom_kind.rs`).
pub fn run(registry: Registry) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = config::Cli::parse();
    let threads = cli.threads().map_err(|e| anyhow::anyhow!("invalid setting: {e}"))?;
    if cli.command == Some(Command::Worker) && cli.config.metrics_addr.is_none() {
        // No one could read this worker's metrics.
        metrics::record_nothing();
    }
    if threads > 1 && cli.command == Some(Command::Worker) {
        return run_worker_threads(cli, registry, threads);
    }
    let mut runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    runtime.enable_all().build().context("starting the runtime")?.block_on(main_with_cli(cli, registry))
}

/// `courier worker --threads N`, N > 1: N workers side by side in this process, each on a thread
/// of its own with a single-threaded runtime and Redis connections of its own, the slots
/// (`--concurrency`) shared between them. A runtime of N threads instead woke a parked thread for
/// nearly every reply (docs/benchmark-notes.md, "Nineteenth step"); workers that share nothing
/// but the process wake only themselves, so a worker process goes past one core at the CPU a
/// task of one thread ("Thirty-seventh step"). Each but the first stands by until the one before
/// it stays full (queue/relay.rs), so tasks that trickle in keep to one worker's rounds
/// ("Thirty-eighth step").
fn run_worker_threads(cli: config::Cli, registry: Registry, threads: usize) -> anyhow::Result<()> {
    one_thread_runtime()?.block_on(async move {
        let telemetry = telemetry::init(cli.config.log_format, cli.config.otlp_endpoint.as_deref())?;
        let ran = run_workers(cli.config.shared_among(threads), registry).await;
        telemetry.shutdown().await;
        ran
    })
}

fn one_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

/// Runs a worker for each of `shares` (this thread's the first), until a shutdown signal or
/// until one of them fails, which stops the rest. Each but the first stands by until the one
/// before it stays full (queue/relay.rs).
async fn run_workers(shares: Vec<Config>, registry: Registry) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let places = Relay::chain(shares.len());
    let mut shares = shares.into_iter().zip(places);
    let (first, place) = shares.next().context("no worker to run")?;
    // Built before the others start: it moves the keys' layout and loads the scripts, once.
    let first =
        Server::build_stopped_by(first, Command::Worker, registry.clone(), shutdown.clone(), place).await?;
    let mut others = Vec::new();
    let mut ran = Ok(());
    for (n, (config, place)) in shares.enumerate() {
        match start_worker_thread(n + 1, config, place, registry.clone(), shutdown.clone()).await {
            Ok(thread) => others.push(thread),
            Err(e) => {
                ran = Err(e);
                break;
            }
        }
    }
    if ran.is_ok() {
        ran = first.run().await;
    }
    // However the first ended, the others stop with it (a signal has stopped them already).
    shutdown.cancel();
    let joined =
        tokio::task::spawn_blocking(move || others.into_iter().map(|t| t.join()).collect::<Vec<_>>())
            .await
            .context("waiting for the worker threads")?;
    for result in joined {
        result.map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
    }
    ran
}

/// Starts worker `n` of a process, in its `place`, on a thread of its own, and returns once it is
/// built (or with why it could not be). Should it fail later, it stops the others through `shutdown`.
async fn start_worker_thread(
    n: usize,
    config: Config,
    place: Relay,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let (ready, built) = tokio::sync::oneshot::channel();
    let run = async move {
        let server =
            Server::build_stopped_by(config, Command::Worker, registry, shutdown.clone(), place).await;
        let server = match server {
            Ok(server) => server,
            // Told through `ready`: this thread has nothing more to say.
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        let _ = ready.send(Ok(()));
        let ran = server.run().await;
        if ran.is_err() {
            shutdown.cancel();
        }
        ran
    };
    let thread = std::thread::Builder::new()
        .name(format!("courier-worker-{n}"))
        .spawn(move || one_thread_runtime()?.block_on(run))
        .context("starting a worker thread")?;
    match built.await {
        Ok(built) => built.map(|()| thread),
        // It ended before it could say (its runtime did not start): its own error says why.
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("a worker thread stopped before it was built")),
        },
    }
}

/// [`run`] on a runtime of the caller's (which `--threads` then does not change).
pub async fn main_with(registry: Registry) -> anyhow::Result<()> {
    use clap::Parser;
    main_with_cli(config::Cli::parse(), registry).await
}

/// What [`run`] and [`main_with`] run once `cli` is parsed.
async fn main_with_cli(cli: config::Cli, registry: Registry) -> anyhow::Result<()> {
    let telemetry = telemetry::init(cli.config.log_format, cli.config.otlp_endpoint.as_deref())?;
    let ran = match cli.command.unwrap_or(Command::Serve) {
        Command::Token(command) => auth::cli::run(&cli.config, command).await,
        Command::LinkKey(command) => auth::cli::run_link_key(&cli.config, command).await,
        role => match Server::build_with(cli.config, role, registry).await {
            Ok(server) => server.run().await,
            Err(e) => Err(e),
        },
    };
    // The spans of a run that failed are the ones most worth sending.
    telemetry.shutdown().await;
    ran
}

fn leptos_options(config: &Config, addr: SocketAddr) -> leptos::prelude::LeptosOptions {
    leptos::prelude::LeptosOptions::builder()
        .output_name("courier")
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .build()
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
        () = shutdown.cancelled() => return,
    }
    info!("shutdown signal received: finishing in-flight work");
    shutdown.cancel();
}
