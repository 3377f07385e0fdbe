//! Schedules with real processes: several `courier serve` children on one private redis-server
//! ticking the same schedules (one task per tick, changes, overlap, catch-up after every process
//! was stopped), and the API's answers from an in-process server.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;

use courier::embedded_redis::free_port;
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};
use support::*;
use tokio::process::{Child, Command};

/// A `courier serve` child on a free port.
struct Serve {
    base: String,
    child: Child,
}

/// Starts `count` `courier serve` processes on one Redis and prefix, and waits until each answers.
async fn serve(count: usize, redis_url: &str, prefix: &str) -> Vec<Serve> {
    let mut servers = Vec::new();
    for _ in 0..count {
        let port = free_port().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--redis-url", redis_url])
            .args(["--prefix", prefix, "--concurrency", "4"])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("courier serve starts");
        servers.push(Serve { base: format!("http://127.0.0.1:{port}"), child });
    }
    let http = reqwest::Client::new();
    for server in &servers {
        let mut ready = false;
        for _ in 0..200 {
            if http.get(format!("{}/readyz", server.base)).send().await.is_ok_and(|r| r.status() == 200) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "courier serve at {} never became ready", server.base);
    }
    servers
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn put(base: &str, name: &str, body: Value) -> reqwest::Response {
    client().put(format!("{base}/api/v1/schedules/{name}")).json(&body).send().await.unwrap()
}

async fn get_json(base: &str, path: &str) -> Value {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    response.json().await.unwrap()
}

/// Every task of `queue`, oldest first.
async fn tasks_of(base: &str, queue: &str) -> Vec<Value> {
    let page = get_json(base, &format!("/api/v1/tasks?queue={queue}&limit=500")).await;
    let mut tasks = page["tasks"].as_array().unwrap().clone();
    tasks.reverse();
    tasks
}

fn ms(rfc3339: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time")).unwrap().timestamp_millis() as u64
}

/// The tasks of `queue` by the second they were created in: a tick's task is created just after
/// its tick, well within its second.
async fn tasks_per_second(base: &str, queue: &str) -> BTreeMap<u64, usize> {
    let mut seconds = BTreeMap::new();
    for task in tasks_of(base, queue).await {
        *seconds.entry(ms(&task["created_at"]) / 1000).or_insert(0) += 1;
    }
    seconds
}

#[tokio::test]
async fn three_processes_make_exactly_one_task_per_tick_and_lose_none_when_a_fourth_dies() {
    let redis = RedisForTest::start().await;
    let mut servers = serve(4, &redis.url.clone(), &unique_prefix()).await;
    let schedule =
        json!({"every": "1s", "task": {"kind": "echo", "payload": {"tick": true}, "queue": "ticks"}});
    assert_eq!(put(&servers[0].base, "each-second", schedule).await.status(), 201);
    // Three processes tick for 10 s; a fourth is killed (-9) half way, whatever it was doing.
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    servers[3].child.start_kill().unwrap();
    servers[3].child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_700)).await;
    let deleted =
        client().delete(format!("{}/api/v1/schedules/each-second", servers[1].base)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    // A tick being submitted as the schedule went may still land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seconds = tasks_per_second(&servers[2].base, "ticks").await;
    assert!(seconds.len() >= 8, "ten seconds made only {} ticks: {seconds:?}", seconds.len());
    assert!(seconds.values().all(|count| *count == 1), "a tick made more than one task: {seconds:?}");
    let (first, last) = (*seconds.keys().next().unwrap(), *seconds.keys().last().unwrap());
    assert_eq!(seconds.len() as u64, last - first + 1, "a tick in the middle made no task: {seconds:?}");
    let after = tasks_per_second(&servers[2].base, "ticks").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tasks_per_second(&servers[2].base, "ticks").await, after, "a deleted schedule still ticks");
}

#[tokio::test]
async fn changing_a_schedule_stops_its_old_ticks_in_every_process() {
    let redis = RedisForTest::start().await;
    let servers = serve(2, &redis.url.clone(), &unique_prefix()).await;
    let old = json!({"every": "1s", "task": {"kind": "echo", "payload": "old", "queue": "old-ticks"}});
    assert_eq!(put(&servers[0].base, "report", old).await.status(), 201);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new =
        json!({"cron": "*/2 * * * * *", "task": {"kind": "echo", "payload": "new", "queue": "new-ticks"}});
    let changed = put(&servers[0].base, "report", new.clone()).await;
    assert_eq!(changed.status(), 200);
    let view: Value = changed.json().await.unwrap();
    assert_eq!(view["schedule"]["cron"], "*/2 * * * * *");
    for next in view["next_runs"].as_array().unwrap() {
        assert_eq!(ms(next) % 2000, 0, "not a tick of the new pattern: {next}");
    }
    let changed_at = courier::store::now_ms();
    let old_before = tasks_of(&servers[1].base, "old-ticks").await.len();
    assert!(old_before >= 2, "the old schedule made {old_before} tasks in 3 s");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The process that did not take the change stopped the old ticks too (a tick it was
    // submitting as the change was made may land just after).
    let late_old: Vec<Value> = tasks_of(&servers[1].base, "old-ticks")
        .await
        .into_iter()
        .filter(|t| ms(&t["created_at"]) > changed_at + 200)
        .collect();
    assert!(late_old.is_empty(), "the old schedule kept ticking: {late_old:?}");
    let new_seconds = tasks_per_second(&servers[1].base, "new-ticks").await;
    assert!(new_seconds.len() >= 2, "the new pattern made {} ticks in 5 s", new_seconds.len());
    assert!(new_seconds.iter().all(|(second, count)| second % 2 == 0 && *count == 1), "{new_seconds:?}");
    // Putting it again unchanged starts nothing new.
    assert_eq!(put(&servers[1].base, "report", new).await.status(), 200);
}

#[tokio::test]
async fn overlap_skip_skips_ticks_while_the_previous_run_has_not_ended() {
    let redis = RedisForTest::start().await;
    let servers = serve(2, &redis.url.clone(), &unique_prefix()).await;
    let slow = json!({
        "every": "1s",
        "overlap": "skip",
        "task": {"kind": "sleep", "payload": {"ms": 2500, "steps": 1}, "queue": "slow"}
    });
    assert_eq!(put(&servers[0].base, "slow", slow).await.status(), 201);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        client().delete(format!("{}/api/v1/schedules/slow", servers[0].base)).send().await.unwrap().status(),
        204
    );

    let tasks = tasks_of(&servers[1].base, "slow").await;
    assert!((2..=4).contains(&tasks.len()), "8 s of 2.5 s runs, one at a time: {} tasks", tasks.len());
    for pair in tasks.windows(2) {
        let ended = pair[0]["finished_at"].as_str().map(|_| ms(&pair[0]["finished_at"]));
        let ended =
            ended.unwrap_or_else(|| panic!("a run started while the one before had not ended: {pair:?}"));
        assert!(ms(&pair[1]["created_at"]) >= ended, "a run started while the one before ran: {pair:?}");
    }
}

/// Waits until schedule `name` records a run for a tick after `after` (ms); returns that tick.
async fn next_run(base: &str, name: &str, after: u64) -> u64 {
    for _ in 0..200 {
        let view = get_json(base, &format!("/api/v1/schedules/{name}")).await;
        if let Some(tick) = view["last_run"]["tick"].as_str().map(|_| ms(&view["last_run"]["tick"]))
            && tick > after
        {
            return tick;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("schedule {name} ran no tick after {after}");
}

#[tokio::test]
async fn after_every_process_stopped_catch_up_none_skips_and_latest_runs_the_latest_missed_tick_once() {
    let redis = RedisForTest::start().await;
    let (url, prefix) = (redis.url.clone(), unique_prefix());
    let servers = serve(2, &url, &prefix).await;
    for catch_up in ["none", "latest"] {
        let schedule =
            json!({"every": "4s", "catch_up": catch_up, "task": {"kind": "echo", "queue": catch_up}});
        assert_eq!(put(&servers[0].base, catch_up, schedule).await.status(), 201);
    }
    // Stop every process just after a tick, for 5 s: the next tick falls while none runs.
    let tick = next_run(&servers[0].base, "latest", 0).await;
    let tick = next_run(&servers[0].base, "latest", tick).await;
    drop(servers);
    let stopped_at = courier::store::now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let servers = serve(2, &url, &prefix).await;

    // The last tick before the stop (one more may have come before it took effect).
    let created_before_stop = tasks_of(&servers[0].base, "latest")
        .await
        .iter()
        .map(|t| ms(&t["created_at"]))
        .filter(|created| *created < stopped_at)
        .max();
    let tick = created_before_stop.map_or(tick, |created| created / 4_000 * 4_000);
    let missed = tick + 4_000;
    let caught_up = next_run(&servers[1].base, "latest", tick).await;
    assert_eq!(caught_up, missed, "catch_up latest runs the latest missed tick");
    let after_restart = next_run(&servers[1].base, "none", tick).await;
    assert_eq!(after_restart, tick + 8_000, "catch_up none runs the next tick, not the missed one");

    for (queue, expected) in [("none", 0), ("latest", 1)] {
        let made = tasks_of(&servers[0].base, queue).await;
        let in_gap = made.iter().filter(|t| (missed..missed + 4_000).contains(&ms(&t["created_at"]))).count();
        assert_eq!(in_gap, expected, "catch_up {queue}: {made:?}");
    }
}

#[tokio::test]
async fn invalid_schedules_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    let task = json!({"kind": "echo", "payload": 1});
    let cases = [
        ("bad-cron", json!({"cron": "61 * * * *", "task": task}), "`cron`"),
        ("six-of-seven", json!({"cron": "0 0 0 1 1 * 2030", "task": task}), "`cron`"),
        ("bad-zone", json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "task": task}), "`timezone`"),
        ("both", json!({"cron": "* * * * *", "every": "1m", "task": task}), "`every`"),
        ("neither", json!({"task": task}), "`cron`"),
        ("too-often", json!({"every": "500ms", "task": task}), "`every`"),
        ("not-an-interval", json!({"every": "soon", "task": task}), "`every`"),
        ("unknown-kind", json!({"every": "1m", "task": {"kind": "nope"}}), "`task`"),
        ("bad-payload", json!({"every": "1m", "task": {"kind": "sleep", "payload": {"ms": "x"}}}), "`task`"),
        ("no-task", json!({"every": "1m"}), "`task`"),
        ("workflow", json!({"every": "1m", "workflow": {"steps": []}}), "`workflow`"),
        ("bad-start", json!({"every": "1m", "task": task, "start_at": "tomorrow"}), "`start_at`"),
        (
            "ends-first",
            json!({"every": "1m", "task": task, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}),
            "`end_at`",
        ),
        ("-bad-name", json!({"every": "1m", "task": task}), "`name`"),
        ("typo", json!({"evry": "1m", "task": task}), "evry"),
    ];
    for (name, body, field) in cases {
        let response =
            app.http.put(app.url(&format!("/api/v1/schedules/{name}"))).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 422, "{name}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{name}: the detail `{detail}` does not name {field}");
        let got = app.http.get(app.url(&format!("/api/v1/schedules/{name}"))).send().await.unwrap();
        assert_eq!(got.status(), 404, "{name} was stored");
    }
    assert_eq!(app.get_json("/api/v1/schedules").await["schedules"], json!([]));
}

#[tokio::test]
async fn a_schedule_can_be_run_now_paused_and_resumed() {
    let app = spawn_app().await;
    let body = json!({"cron": "30 2 * * *", "timezone": "Europe/Paris", "task": {"kind": "echo", "payload": {"a": 1}}});
    let created = app.http.put(app.url("/api/v1/schedules/nightly")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let view: Value = created.json().await.unwrap();
    assert_eq!(view["next_runs"].as_array().unwrap().len(), 5);
    assert_eq!(view["last_run"], Value::Null);

    let ran = app.http.post(app.url("/api/v1/schedules/nightly/run")).send().await.unwrap();
    assert_eq!(ran.status(), 202);
    let task: Value = ran.json().await.unwrap();
    let id = task["id"].as_str().unwrap();
    assert_eq!(app.wait_until_done(id).await["status"], "succeeded");
    let view = app.get_json("/api/v1/schedules/nightly").await;
    assert_eq!(
        (view["last_run"]["task_id"].as_str(), view["last_run"]["manual"].as_bool()),
        (Some(id), Some(true))
    );
    assert_eq!(view["last_run"]["status"], "succeeded");

    let paused: Value =
        app.http.post(app.url("/api/v1/schedules/nightly/pause")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (paused["paused"].as_bool(), paused["next_runs"].as_array().map(Vec::len)),
        (Some(true), Some(0))
    );
    let resumed: Value = app
        .http
        .post(app.url("/api/v1/schedules/nightly/resume"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (resumed["paused"].as_bool(), resumed["next_runs"].as_array().map(Vec::len)),
        (Some(false), Some(5))
    );
    let listed = app.get_json("/api/v1/schedules").await;
    assert_eq!(listed["schedules"][0]["name"], "nightly");

    for path in ["/api/v1/schedules/nope/run", "/api/v1/schedules/nope/pause"] {
        assert_problem(app.http.post(app.url(path)).send().await.unwrap(), 404, "/problems/not-found").await;
    }
    assert_eq!(app.http.delete(app.url("/api/v1/schedules/nightly")).send().await.unwrap().status(), 204);
    assert_eq!(app.http.delete(app.url("/api/v1/schedules/nightly")).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_configuration_file_declares_schedules_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("courier.toml");
    std::fs::write(
        &path,
        r#"
        [[schedules]]
        name = "hourly-report"
        cron = "0 * * * *"
        timezone = "Europe/Paris"
        overlap = "skip"
        task = { kind = "echo", payload = { report = "hourly" } }
        "#,
    )
    .unwrap();
    let app = spawn_app_with(|c| c.config = Some(path.clone())).await;
    let view = app.get_json("/api/v1/schedules/hourly-report").await;
    assert_eq!(view["schedule"]["task"]["payload"], json!({"report": "hourly"}));
    assert_eq!(view["schedule"]["overlap"], "skip");
    assert_eq!(view["next_runs"].as_array().unwrap().len(), 5);

    std::fs::write(&path, "[[schedules]]\nname = \"bad\"\ncron = \"nope\"\ntask = { kind = \"echo\" }\n")
        .unwrap();
    let mut config = courier::config::Config::defaults();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.redis_url = Some(app.redis_url.parse().unwrap());
    config.prefix = unique_prefix();
    config.config = Some(path);
    let refused = courier::Server::build(config, courier::config::Command::Serve)
        .await
        .err()
        .expect("a bad schedule stops the start");
    assert!(format!("{refused:#}").contains("`cron`"), "{refused:#}");
}

#[tokio::test]
async fn putting_a_schedule_needs_admin_and_a_token_of_some_queues_sees_only_their_schedules() {
    use courier::auth::Scope::{Admin, Operate, Read};
    let app = spawn_app().await;
    let admin = app.make_token("admin", &[Admin, Read, Operate], &["*"], None).await;
    for (name, queue) in [("in-a", "a"), ("in-b", "b")] {
        let body = json!({"every": "1h", "task": {"kind": "echo", "queue": queue}});
        let put = app.http.put(app.url(&format!("/api/v1/schedules/{name}"))).bearer_auth(&admin).json(&body);
        assert_eq!(put.send().await.unwrap().status(), 201);
    }
    let of_a = app.make_token("of-a", &[Read, Operate], &["a"], None).await;
    let listed: Value = app
        .http
        .get(app.url("/api/v1/schedules"))
        .bearer_auth(&of_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> =
        listed["schedules"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["in-a"]);
    let call =
        |method: reqwest::Method, path: &str| app.http.request(method, app.url(path)).bearer_auth(&of_a);
    assert_eq!(call(reqwest::Method::GET, "/api/v1/schedules/in-b").send().await.unwrap().status(), 404);
    assert_eq!(
        call(reqwest::Method::POST, "/api/v1/schedules/in-b/pause").send().await.unwrap().status(),
        404
    );
    assert_eq!(
        call(reqwest::Method::POST, "/api/v1/schedules/in-a/pause").send().await.unwrap().status(),
        200
    );
    let body = json!({"every": "1h", "task": {"kind": "echo", "queue": "a"}});
    let refused = call(reqwest::Method::PUT, "/api/v1/schedules/mine").json(&body).send().await.unwrap();
    assert_problem(refused, 403, "/problems/forbidden").await;
    let anonymous = app.http.get(app.url("/api/v1/schedules")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_courier_worker_process_ticks_the_schedules_too() {
    let redis = RedisForTest::start().await;
    let (url, prefix) = (redis.url.clone(), unique_prefix());
    let servers = serve(1, &url, &prefix).await;
    let schedule = json!({"every": "1s", "task": {"kind": "echo", "queue": "by-worker"}});
    assert_eq!(put(&servers[0].base, "each-second", schedule).await.status(), 201);
    drop(servers);
    let stopped_at = courier::store::now_ms();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["worker", "--redis-url", &url, "--prefix", &prefix, "--concurrency", "2"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("courier worker starts");
    tokio::time::sleep(Duration::from_secs(4)).await;
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let worked_until = courier::store::now_ms();

    let servers = serve(1, &url, &prefix).await;
    let by_worker: Vec<Value> = tasks_of(&servers[0].base, "by-worker")
        .await
        .into_iter()
        .filter(|t| (stopped_at..worked_until).contains(&ms(&t["created_at"])))
        .collect();
    assert!(by_worker.len() >= 2, "the worker alone made {} ticks in 4 s", by_worker.len());
    // It ran them too (those it had time for before it was killed).
    let settled: Vec<&Value> =
        by_worker.iter().filter(|t| ms(&t["created_at"]) + 1_000 < worked_until).collect();
    assert!(!settled.is_empty() && settled.iter().all(|t| t["status"] == "succeeded"), "{by_worker:?}");
}

#[tokio::test]
async fn a_schedule_of_a_workflow_starts_one_workflow_per_tick_across_three_processes() {
    let redis = RedisForTest::start().await;
    let servers = serve(3, &redis.url.clone(), &unique_prefix()).await;
    let workflow = json!({"name": "ticked", "steps": [
        {"id": "a", "kind": "echo", "payload": {"n": 1}, "queue": "wf-ticks"},
        {"id": "b", "kind": "echo", "after": ["a"], "payload": {"got": {"$from": "a", "pointer": "/n"}}, "queue": "wf-ticks"},
    ]});
    let schedule = json!({"every": "1s", "workflow": workflow});
    assert_eq!(put(&servers[0].base, "workflow-each-second", schedule).await.status(), 201);
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    let deleted = client()
        .delete(format!("{}/api/v1/schedules/workflow-each-second", servers[1].base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let listed = get_json(&servers[2].base, "/api/v1/workflows?limit=200").await;
    let workflows = listed["workflows"].as_array().unwrap().clone();
    let mut seconds: BTreeMap<u64, usize> = BTreeMap::new();
    for workflow in &workflows {
        *seconds.entry(ms(&workflow["created_at"]) / 1000).or_default() += 1;
    }
    assert!(seconds.len() >= 4, "five seconds made only {} workflows: {seconds:?}", seconds.len());
    assert!(seconds.values().all(|count| *count == 1), "a tick made more than one workflow: {seconds:?}");
    for workflow in workflows {
        let id = workflow["id"].as_str().unwrap();
        let mut status = workflow["status"].clone();
        for _ in 0..200 {
            if status != "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = get_json(&servers[0].base, &format!("/api/v1/workflows/{id}")).await["status"].clone();
        }
        assert_eq!(status, "succeeded", "workflow {id}");
        let result = get_json(&servers[1].base, &format!("/api/v1/workflows/{id}/result")).await;
        assert_eq!(result, json!({"b": {"got": 1}}));
    }
}

#[tokio::test]
async fn a_schedule_of_a_workflow_runs_now_and_shows_its_last_workflow() {
    let app = spawn_app().await;
    let workflow = json!({"steps": [{"id": "only", "kind": "echo", "payload": 1}]});
    let body = json!({"cron": "0 0 1 1 *", "workflow": workflow});
    assert_eq!(put(&app.base, "yearly", body).await.status(), 201);
    let run = client().post(format!("{}/api/v1/schedules/yearly/run", app.base)).send().await.unwrap();
    assert_eq!(run.status(), 202);
    let location = run.headers()["location"].to_str().unwrap().to_string();
    let started: Value = run.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/workflows/{id}/status"));
    assert!(started["steps"].is_array(), "the run is a workflow: {started}");
    let mut last = Value::Null;
    for _ in 0..200 {
        last = get_json(&app.base, "/api/v1/schedules/yearly").await["last_run"].clone();
        if last["workflow_status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((&last["workflow_id"], &last["workflow_status"]), (&json!(id), &json!("succeeded")), "{last}");
    assert_eq!(last["manual"], true);
    assert!(last.get("task_id").is_none(), "{last}");
    // A workflow its steps make invalid is refused when put, naming the field.
    let cycle = json!({"every": "1m", "workflow": {"steps": [{"id": "x", "kind": "echo", "after": ["x"]}]}});
    let refused = put(&app.base, "cyclic", cycle).await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().starts_with("`workflow`: step `x`"), "{problem}");
}
