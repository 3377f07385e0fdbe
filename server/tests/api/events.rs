//! The event stream's edges: a `Last-Event-ID` Redis would refuse, a resume from events that are
//! no longer kept, catch-ups that must end, and the cap on open streams.

use crate::support::{TestApp, assert_problem, in_test_queue, spawn_app, spawn_app_with};
use serde_json::json;
use std::time::Duration;

/// Opens `path` as an event stream, with a `Last-Event-ID` if given, and returns the response
/// whatever its status.
async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.url(path)).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

/// Makes every read of the events stream fail, as a Redis in trouble does: the key holds a
/// string (WRONGTYPE).
async fn break_the_event_stream(app: &TestApp) {
    let mut redis = app.redis().await;
    let _: () =
        redis::cmd("SET").arg(app.key("events")).arg("not a stream").query_async(&mut redis).await.unwrap();
}

/// Waits until the server admits an event stream again, which it does once a slot is free;
/// `false` if that takes longer than `limit`.
async fn admitted_within(app: &TestApp, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if open(app, "/api/v1/events", None).await.status() == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether the body of `response` ends within `limit` (keep-alive comments aside).
async fn ends_within(response: &mut reqwest::Response, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None) | Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// Submits tasks (to a server without workers: one `queued` event each) until the events
/// stream, capped near 100 entries, has trimmed its first event; returns that event's id and
/// its task, still queued.
async fn trim_the_first_event(app: &TestApp) -> (String, String) {
    let first_task = app.submit_ok(json!({"kind": "echo", "payload": 0})).await;
    let mut redis = app.redis().await;
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(app.key("events"))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let first_id = first[0].0.clone();
    // Redis trims whole nodes of at most 100 entries, keeping at least the cap.
    for n in 1..300 {
        app.submit_ok(json!({"kind": "echo", "payload": n})).await;
    }
    let kept: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(app.key("events"))
        .arg(&first_id)
        .arg(&first_id)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(kept.is_empty(), "the first event should have been trimmed");
    (first_id, first_task)
}

#[tokio::test]
async fn a_last_event_id_redis_would_refuse_is_a_400_problem() {
    let app = spawn_app().await;
    let task = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let hostile = [
        "18446744073709551615-18446744073709551615",
        "18446744073709551616-0",
        "not-an-id",
        "12",
        "1-2-3",
        "-1-0",
        "+1-0",
    ];
    for id in hostile {
        for path in ["/api/v1/events".to_string(), format!("/api/v1/tasks/{task}/events")] {
            let response = open(&app, &path, Some(id)).await;
            let problem = assert_problem(response, 400, "/problems/invalid-last-event-id").await;
            assert!(problem["detail"].as_str().is_some_and(|d| d.contains("Last-Event-ID")), "{problem}");
        }
    }
}

#[tokio::test]
async fn a_last_event_id_of_zero_or_of_a_real_event_still_resumes() {
    let app = spawn_app().await;
    let mut live = app.sse("/api/v1/events", None).await;
    let task = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let seen = live.until_task_ends(&task, Duration::from_secs(10)).await;

    // Nothing was ever trimmed: from `0-0` the whole stream is replayed, with no reset.
    let mut from_zero = app.sse("/api/v1/events", Some("0-0")).await;
    let replayed = from_zero.until_task_ends(&task, Duration::from_secs(10)).await;
    assert_eq!(
        replayed.iter().map(|e| &e.id).collect::<Vec<_>>(),
        seen.iter().map(|e| &e.id).collect::<Vec<_>>()
    );

    let mut from_first = app.sse("/api/v1/events", Some(&seen[0].id)).await;
    let next = from_first.next_within(Duration::from_secs(10)).await.expect("the rest is replayed");
    assert_eq!(next.id, seen[1].id);
}

#[tokio::test]
async fn a_batch_writes_its_events_in_one_entry_and_a_reader_resumes_between_them() {
    let app = spawn_app_with(|config| config.concurrency = 0).await;
    let mut live = app.sse("/api/v1/events", None).await;
    let tasks: Vec<_> = (0..3).map(|n| in_test_queue(json!({"kind": "echo", "payload": n}))).collect();
    let response =
        app.http.post(app.url("/api/v1/tasks/batch")).json(&json!({"tasks": tasks})).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(live.next_within(Duration::from_secs(10)).await.expect("each task's queued event"));
    }
    let mut redis = app.redis().await;
    let entries: u64 = redis::cmd("XLEN").arg(app.key("events")).query_async(&mut redis).await.unwrap();
    assert_eq!(entries, 1, "one script call, one entry");
    // Each id places its event in that entry: the first two by their index, the last as the
    // entry itself.
    let ids: Vec<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    let entry = ids[2].rsplit('=').next().unwrap();
    assert!(ids[0].ends_with(&format!("{entry}.0")) && ids[1].ends_with(&format!("{entry}.1")), "{ids:?}");

    for (from, expected) in [(0, &seen[1..]), (1, &seen[2..])] {
        let mut resumed = app.sse("/api/v1/events", Some(ids[from])).await;
        for event in expected {
            let next = resumed.next_within(Duration::from_secs(10)).await.expect("the rest of the entry");
            assert_eq!((&next.id, &next.data), (&event.id, &event.data));
        }
        assert!(resumed.next_within(Duration::from_secs(1)).await.is_none(), "and nothing twice");
    }
    let mut resumed = app.sse("/api/v1/events", Some(ids[2])).await;
    assert!(resumed.next_within(Duration::from_secs(1)).await.is_none(), "nothing after the last");
}

/// A follower's catch-up reads ask for as many entries as held some 256 events in the last one
/// (`catch_up_entries`): here entries of up to 32 events (batches), then of one (tasks one by
/// one), then of 32 again. However the reads are sized, every event comes once, in order.
#[tokio::test]
async fn a_reader_far_behind_gets_every_event_once_in_order_whatever_its_entries_hold() {
    let app = spawn_app_with(|config| config.concurrency = 0).await;
    let mut live = app.sse("/api/v1/events", None).await;
    let task = in_test_queue(json!({"kind": "echo", "payload": 1}));
    app.submit_many(600, task.clone()).await;
    for _ in 0..300 {
        app.submit_ok(task.clone()).await;
    }
    app.submit_many(600, task).await;
    let mut seen = Vec::new();
    while seen.len() < 1500 {
        seen.push(live.next_within(Duration::from_secs(10)).await.expect("each task's queued event").id);
    }

    let mut resumed = app.sse("/api/v1/events", Some("0-0")).await;
    let mut replayed = Vec::new();
    while let Some(event) = resumed.next_within(Duration::from_secs(2)).await {
        replayed.push(event.id);
    }
    assert_eq!(replayed.len(), seen.len(), "every event once");
    assert!(replayed == seen, "in the order they were written");
}

#[tokio::test]
async fn resuming_from_a_trimmed_event_gets_a_reset_then_live_events() {
    let app = spawn_app_with(|config| (config.events_max, config.concurrency) = (100, 0)).await;
    let (first_id, _) = trim_the_first_event(&app).await;

    let mut resumed = app.sse("/api/v1/events", Some(&first_id)).await;
    let reset = resumed.next_within(Duration::from_secs(10)).await.expect("a reset comes first");
    assert_eq!(reset.name, "reset", "{reset:?}");
    assert_eq!(reset.data["reason"], "too_old");
    let oldest = reset.data["oldest"].as_str().expect("the oldest kept id");
    assert!(oldest != first_id && !reset.id.is_empty(), "{reset:?}");

    // Then live, from the end: the next event is a new task's, not a replay of old ones.
    let task = app.submit_ok(json!({"kind": "echo", "payload": "after"})).await;
    let next = resumed.next_within(Duration::from_secs(10)).await.expect("live events follow");
    assert_eq!(next.data["task_id"], task, "{next:?}");
}

#[tokio::test]
async fn a_task_stream_resumed_from_a_trimmed_event_resets_then_sends_the_tasks_state() {
    let app = spawn_app_with(|config| (config.events_max, config.concurrency) = (100, 0)).await;
    let (first_id, first_task) = trim_the_first_event(&app).await;

    let path = format!("/api/v1/tasks/{first_task}/events");
    let mut resumed = app.sse(&path, Some(&first_id)).await;
    let reset = resumed.next_within(Duration::from_secs(10)).await.expect("a reset comes first");
    assert_eq!(reset.name, "reset", "{reset:?}");
    let state = resumed.next_within(Duration::from_secs(10)).await.expect("then the task's state");
    assert_eq!((state.name.as_str(), &state.data["task_id"]), ("queued", &json!(first_task)));

    // Then live, until the task ends.
    let cancelled = app.http.delete(app.url(&format!("/api/v1/tasks/{first_task}"))).send().await.unwrap();
    assert!(cancelled.status().is_success(), "{}", cancelled.status());
    let last = resumed.next_within(Duration::from_secs(10)).await.expect("its end follows live");
    assert_eq!(last.name, "cancelled", "{last:?}");
    assert!(resumed.next_within(Duration::from_secs(2)).await.is_none(), "the stream ends with the task");
}

#[tokio::test]
async fn a_client_that_leaves_mid_catch_up_gives_its_stream_back() {
    let app = spawn_app_with(|config| config.max_sse_clients = 1).await;
    break_the_event_stream(&app).await;

    let catching_up = open(&app, "/api/v1/events", Some("0-0")).await;
    assert_eq!(catching_up.status(), 200);
    // Its catch-up keeps failing and holds the only slot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open(&app, "/api/v1/events", None).await.status(), 503);

    drop(catching_up);
    // Well before the catch-up would give up on Redis by itself (about 16 s).
    assert!(admitted_within(&app, Duration::from_secs(3)).await, "the catch-up outlived its client");
}

#[tokio::test]
async fn a_catch_up_ends_when_the_server_shuts_down() {
    let app = spawn_app().await;
    break_the_event_stream(&app).await;
    let mut catching_up = open(&app, "/api/v1/events", Some("0-0")).await;
    assert_eq!(catching_up.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    drop(app);
    assert!(ends_within(&mut catching_up, Duration::from_secs(3)).await, "the catch-up outlived the server");
}

#[tokio::test]
async fn past_max_sse_clients_a_stream_is_refused_with_503_until_one_leaves() {
    let app = spawn_app_with(|config| config.max_sse_clients = 2).await;
    let first = app.sse("/api/v1/events", None).await;
    let _second = app.sse("/api/v1/events", None).await;

    let refused = open(&app, "/api/v1/events", None).await;
    assert!(refused.headers().contains_key("retry-after"), "{:?}", refused.headers());
    assert_problem(refused, 503, "/problems/too-many-streams").await;
    let task = app.submit_ok(json!({"kind": "echo", "payload": 1})).await;
    let refused = open(&app, &format!("/api/v1/tasks/{task}/events"), None).await;
    assert_problem(refused, 503, "/problems/too-many-streams").await;

    drop(first);
    assert!(admitted_within(&app, Duration::from_secs(3)).await, "a client left but its slot stayed taken");
}

#[tokio::test]
async fn a_reader_resumes_exactly_where_it_was_in_every_queues_stream() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let mut live = app.sse("/api/v1/events", None).await;
    for queue in ["left", "right", "left", "right", "right", "left"] {
        app.submit_ok(json!({"kind": "echo", "payload": 1, "queue": queue})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = live.next_within(Duration::from_secs(10)).await.expect("every task's event");
        seen.push(event);
    }
    // Each id is the reader's place in each queue's stream.
    let last = &seen[5].id;
    assert!(last.contains("left=") && last.contains("right="), "{last}");

    // From the second event's place: exactly the four after it, whichever stream each is in.
    let mut resumed = app.sse("/api/v1/events", Some(&seen[1].id)).await;
    let mut replayed = Vec::new();
    while replayed.len() < 4 {
        let event = resumed.next_within(Duration::from_secs(10)).await.expect("what came after");
        replayed.push((event.data["task_id"].to_string(), event.name));
    }
    let mut expected: Vec<(String, String)> =
        seen[2..].iter().map(|e| (e.data["task_id"].to_string(), e.name.clone())).collect();
    replayed.sort();
    expected.sort();
    assert_eq!(replayed, expected);
    assert!(resumed.next_within(Duration::from_secs(1)).await.is_none(), "and nothing twice");

    // An id from before the streams were split, a bare place in time, resumes every stream
    // after it: exactly the events of a later millisecond than the fourth, in any stream.
    let place_of = |event: &crate::support::SseEvent| -> (u64, u64) {
        let queue = event.data["queue"].as_str().unwrap();
        let at = event.id.split(',').find_map(|p| p.strip_prefix(&format!("{queue}="))).unwrap();
        let entry = at.split('.').next().unwrap();
        let (ms, seq) = entry.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    let time = place_of(&seen[3]).0;
    let later: Vec<String> =
        seen.iter().filter(|e| place_of(e).0 > time).map(|e| e.data["task_id"].to_string()).collect();
    let mut from_time = app.sse("/api/v1/events", Some(&format!("{time}-{}", u64::MAX - 1))).await;
    let mut replayed = Vec::new();
    while let Some(event) = from_time.next_within(Duration::from_secs(1)).await {
        replayed.push(event.data["task_id"].to_string());
    }
    replayed.sort();
    let mut later = later;
    later.sort();
    assert_eq!(replayed, later);
}

#[tokio::test]
async fn a_place_no_stream_issued_yet_gets_a_reset_saying_so() {
    let app = spawn_app().await;
    for id in ["99999999999999-0", "default=99999999999999-0"] {
        let mut resumed = app.sse("/api/v1/events", Some(id)).await;
        let reset = resumed.next_within(Duration::from_secs(10)).await.expect("a reset");
        assert_eq!((reset.name.as_str(), &reset.data["reason"]), ("reset", &json!("unknown")), "{id}");
    }
}

/// Opens a connection whose first request is `GET path` asking for an event stream, with a
/// `Last-Event-ID` if given: answered without hyper (`http/connections/event_streams.rs`).
async fn raw_event_stream(app: &TestApp, path: &str, last_event_id: Option<&str>) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n{resume}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// What `stream` sends until `done` holds of all of it, or `limit` passes.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        while !done(&String::from_utf8_lossy(&received)) {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn an_event_stream_asked_for_first_on_a_connection_is_sent_in_chunks() {
    let app = spawn_app_with(|config| config.concurrency = 0).await;
    let mut stream = raw_event_stream(&app, "/api/v1/events", None).await;
    let head = read_until(&mut stream, Duration::from_secs(10), |r| r.contains("\r\n\r\n")).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream") && head.contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(head.contains("date: ") && head.contains("cache-control: no-cache"), "{head}");

    let task = app.submit_ok(json!({"kind": "echo", "payload": "chunked"})).await;
    let sent = read_until(&mut stream, Duration::from_secs(10), |r| r.contains(&task)).await;
    assert!(sent.contains("event: queued") && sent.contains(&task), "{sent}");
    // Chunked framing: a size line in hex before the event.
    let event_at = sent.find("id: ").expect("an event");
    let size_line = sent[..event_at].trim_end().rsplit("\r\n").next().unwrap();
    assert!(u64::from_str_radix(size_line, 16).is_ok_and(|n| n > 0), "{size_line:?} in {sent:?}");
}

#[tokio::test]
async fn a_refused_event_stream_asked_for_first_gets_its_problem_and_the_connection_closes() {
    let app = spawn_app().await;
    let mut stream = raw_event_stream(&app, "/api/v1/events", Some("not-an-id")).await;
    let answer = read_until(&mut stream, Duration::from_secs(10), |_| false).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json") && lower.contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("/problems/invalid-last-event-id") && answer.ends_with("0\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_asked_for_first_gives_its_slot_back() {
    let app = spawn_app_with(|config| config.max_sse_clients = 1).await;
    let mut stream = raw_event_stream(&app, "/api/v1/events", None).await;
    let head = read_until(&mut stream, Duration::from_secs(10), |r| r.contains("\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(open(&app, "/api/v1/events", None).await.status(), 503, "the only slot is taken");
    drop(stream);
    assert!(admitted_within(&app, Duration::from_secs(3)).await, "a client left but its slot stayed taken");
}

#[tokio::test]
async fn a_connection_whose_first_request_is_not_an_event_stream_is_served_as_before() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Two requests in one write, the first one asking for an event stream but with a body: both
    // are hyper's, answered in order on the one connection.
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let answers = read_until(&mut stream, Duration::from_secs(10), |_| false).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
}

/// A server that no client follows makes no events of what it reads (`Events::tail`). A client
/// that connects to it while tasks run is still sent every event from its first one on: a
/// replay from that one, read from Redis, tells the same events.
#[tokio::test]
async fn a_client_that_connects_to_an_unfollowed_server_as_tasks_run_misses_no_event() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let _worker = app.worker(&["--concurrency", "2"]);
    let task = || in_test_queue(json!({"kind": "sleep", "payload": {"ms": 40, "steps": 2}}));
    for _ in 0..10 {
        app.submit_ok(task()).await;
    }
    // Some have run unfollowed; the rest run as the client connects, and after.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut live = app.sse("/api/v1/events", None).await;
    let mut last = String::new();
    for _ in 0..10 {
        last = app.submit_ok(task()).await;
    }
    let seen = live.all_until_task_ends(&last, Duration::from_secs(60)).await;
    // The ten submitted while it was connected: queued, running, progress twice, succeeded.
    assert!(seen.len() >= 50, "{} events: {seen:?}", seen.len());
    let mut replay = app.sse("/api/v1/events", Some(&seen[0].id)).await;
    let replayed = replay.all_until_task_ends(&last, Duration::from_secs(60)).await;
    let ids = |events: &[crate::support::SseEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&seen[1..]));
}
