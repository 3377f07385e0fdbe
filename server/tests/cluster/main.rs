//! Redis Cluster with real processes: a cluster of three masters and three replicas started by
//! the test (`harness.rs`), `courier serve` and `courier worker` on it in cluster mode, and a
//! master killed under load. Every accepted task must end, and no `courier` process may exit.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

mod harness;

use courier::{embedded_redis::free_port, store::Keys};
use harness::TestCluster;
use serde_json::{Value, json};
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};
use support::unique_prefix;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The queues of the load; their slots lie on two masters at least (asserted).
const QUEUES: [&str; 3] = ["q-a", "q-b", "q-c"];

/// How long one submission is retried, under one Idempotency-Key, before the test gives up.
const SUBMIT_LIMIT: Duration = Duration::from_secs(30);

/// How long every accepted task may take to end once the load stops.
const END_LIMIT: Duration = Duration::from_secs(60);

/// A `courier` process in cluster mode on `seeds` (comma-separated urls), under `prefix`:
/// `serve` on `port` with durable submits and no workers of its own, or a `worker` (no port).
fn courier(seeds: &str, prefix: &str, port: Option<u16>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    match port {
        Some(port) => command.args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--concurrency",
            "0",
            "--durable-submit",
        ]),
        None => command.args(["worker", "--concurrency", "8", "--lease", "2s"]),
    };
    command
        .args(["--prefix", prefix])
        .env("COURIER_REDIS_URL", seeds)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("courier starts")
}

/// Waits until `server` answers `/readyz` with 200 (30 s at most); panics if it exits first.
async fn until_ready(http: &reqwest::Client, base: &str, server: &mut Child, seeds: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("courier serve exited ({status}) before it was ready, on COURIER_REDIS_URL={seeds}");
        }
        assert!(Instant::now() < deadline, "courier serve was not ready within 30 s on {seeds}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What became of one submission of the load.
#[derive(Debug)]
struct Submission {
    queue: &'static str,
    /// When its first attempt was sent.
    sent: Instant,
    /// The task's id from the 202, if one came within [`SUBMIT_LIMIT`].
    id: Option<String>,
    /// How long after [`Submission::sent`] the 202 came.
    waited: Duration,
    /// Answers `503 /problems/not-replicated`: no replica confirmed the task in time.
    not_replicated: u32,
    /// Other 5xx answers.
    unavailable: u32,
    /// Attempts that got no answer (refused, reset, timed out).
    unanswered: u32,
}

/// Posts `body` under the Idempotency-Key `key` until it is accepted, retrying every 200 ms after
/// a 5xx or no answer, for [`SUBMIT_LIMIT`] at most; panics on any other answer.
async fn submit_until_accepted(
    http: reqwest::Client,
    url: String,
    queue: &'static str,
    body: Value,
    key: String,
) -> Submission {
    let sent = Instant::now();
    let mut submission = Submission {
        queue,
        sent,
        id: None,
        waited: Duration::ZERO,
        not_replicated: 0,
        unavailable: 0,
        unanswered: 0,
    };
    while sent.elapsed() < SUBMIT_LIMIT {
        match http.post(&url).header("idempotency-key", &key).json(&body).send().await {
            Ok(response) if response.status() == 202 => {
                let view: Value = response.json().await.expect("a task view");
                submission.id = Some(view["id"].as_str().expect("the task's id").to_string());
                submission.waited = sent.elapsed();
                return submission;
            }
            Ok(response) if response.status().is_server_error() => {
                let status = response.status();
                let problem: Value = response.json().await.unwrap_or_default();
                if status == 503 && problem["type"] == "/problems/not-replicated" {
                    submission.not_replicated += 1;
                } else {
                    submission.unavailable += 1;
                }
            }
            Ok(response) => {
                let status = response.status();
                panic!("submission {key} to {queue}: {status} {}", response.text().await.unwrap_or_default())
            }
            Err(_) => submission.unanswered += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    submission
}

/// Submits a task every 25 ms until `stop`, round-robin over [`QUEUES`], `echo` and short `sleep`
/// in turn, each under an Idempotency-Key of its own and retried on its own; returns them all
/// once each is accepted or given up.
async fn steady_load(http: reqwest::Client, base: String, stop: CancellationToken) -> Vec<Submission> {
    let mut pending = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        let queue = QUEUES[n % QUEUES.len()];
        let body = if n % 2 == 0 {
            json!({"kind": "echo", "queue": queue, "payload": {"n": n}})
        } else {
            json!({"kind": "sleep", "queue": queue, "payload": {"ms": 200, "steps": 2}})
        };
        let url = format!("{base}/api/v1/tasks");
        pending.push(tokio::spawn(submit_until_accepted(
            http.clone(),
            url,
            queue,
            body,
            format!("load-{n}"),
        )));
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut submissions = Vec::new();
    for submission in pending {
        submissions.push(submission.await.expect("a submission panicked"));
    }
    submissions
}

/// Polls each task in `ids` until it ends (succeeded, failed or cancelled), all within
/// [`END_LIMIT`]; returns the end of each. Panics with the ones that did not end (a task lost
/// with its master answers 404).
async fn until_all_end(http: &reqwest::Client, base: &str, ids: &[&str]) -> HashMap<String, String> {
    let deadline = Instant::now() + END_LIMIT;
    let mut ended = HashMap::new();
    for id in ids {
        loop {
            let seen = match http.get(format!("{base}/api/v1/tasks/{id}")).send().await {
                Ok(response) if response.status() == 200 => {
                    response.json::<Value>().await.map(|view| view["status"].clone()).unwrap_or_default()
                }
                Ok(response) => json!(response.status().as_u16()),
                Err(e) => json!(e.to_string()),
            };
            if let Some(status) = seen.as_str().filter(|s| ["succeeded", "failed", "cancelled"].contains(s)) {
                ended.insert(id.to_string(), status.to_string());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} accepted tasks ended within {END_LIMIT:?}; {id} is at {seen}",
                ended.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ended
}

/// A master killed with `kill -9` under steady load: its replica takes over, Courier's
/// clients follow it, and with `--durable-submit` every task that was accepted ends, and
/// succeeds; submissions refused meanwhile are accepted on a retry with their Idempotency-Key.
#[tokio::test]
async fn every_task_accepted_while_a_master_fails_over_ends_and_succeeds() {
    let forming = Instant::now();
    let mut cluster = TestCluster::start().await;
    println!("the cluster formed in {:.1?}", forming.elapsed());
    let prefix = unique_prefix();
    let mut owners = HashMap::new();
    for queue in QUEUES {
        owners.insert(queue, cluster.master_for_key(&Keys::new(&prefix, queue).retrying()).await);
    }
    let masters: HashSet<u16> = owners.values().copied().collect();
    assert!(masters.len() >= 2, "the queues lie on two masters at least: {owners:?}");
    let victim = owners[QUEUES[0]];
    let slot = cluster.slot(&Keys::new(&prefix, QUEUES[0]).retrying()).await;

    let seeds = cluster.seed_urls();
    let port = free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = courier(&seeds, &prefix, Some(port));
    let mut worker = courier(&seeds, &prefix, None);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    until_ready(&http, &base, &mut server, &seeds).await;

    let stop = CancellationToken::new();
    let load_started = Instant::now();
    let load = tokio::spawn(steady_load(http.clone(), base.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(victim).await;
    let killed = Instant::now();
    let successor = cluster.until_failover(slot).await;
    let failed_over = Instant::now();
    // The new master has no replica: a durable submission to it cannot be confirmed (503, or
    // held while the clients find the new master) until the failed server comes back, as its
    // replica.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_node(victim, successor).await;
    let replicated = Instant::now();
    // The load goes on for 6 s in all, and for a second at least once the new master has its replica.
    let load_end = (load_started + Duration::from_secs(6)).max(replicated + Duration::from_secs(1));
    tokio::time::sleep_until(load_end.into()).await;
    stop.cancel();
    let submissions = load.await.expect("the load runs");

    let refused: Vec<&Submission> = submissions.iter().filter(|s| s.id.is_none()).collect();
    let sum = |count: fn(&Submission) -> u32| submissions.iter().map(count).sum::<u32>();
    let accepted: Vec<&str> = submissions.iter().filter_map(|s| s.id.as_deref()).collect();
    let longest = submissions.iter().map(|s| s.waited).max().unwrap_or_default();
    println!(
        "{} of {} submissions accepted; slot {slot} of {} failed over from {victim} to {successor} in \
         {:.1?}; on the way: {} 503 not-replicated, {} other 5xx, {} unanswered attempts; the longest \
         wait for a 202 {longest:.1?}",
        accepted.len(),
        submissions.len(),
        QUEUES[0],
        failed_over - killed,
        sum(|s| s.not_replicated),
        sum(|s| s.unavailable),
        sum(|s| s.unanswered),
    );
    assert!(refused.is_empty(), "submissions never accepted within {SUBMIT_LIMIT:?}: {refused:?}");
    assert!(
        submissions.iter().any(|s| s.queue == QUEUES[0] && s.sent > replicated && s.id.is_some()),
        "{} takes submissions again on its new master",
        QUEUES[0]
    );

    let ended = until_all_end(&http, &base, &accepted).await;
    let unsuccessful: Vec<_> = ended.iter().filter(|(_, status)| *status != "succeeded").collect();
    assert!(unsuccessful.is_empty(), "accepted tasks that did not succeed: {unsuccessful:?}");
    assert!(server.try_wait().unwrap().is_none(), "courier serve keeps running");
    assert!(worker.try_wait().unwrap().is_none(), "courier worker keeps running");
}
