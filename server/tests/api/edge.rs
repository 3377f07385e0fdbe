//! The HTTP edge: results that cannot run script, cross-site requests, CORS, DNS rebinding,
//! timeouts on slow clients and slow answers, the cap on waiting requests, and problem+json
//! for every error.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The port of `app`, from its base URL.
fn port(app: &TestApp) -> u16 {
    app.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// Reads what the server sends on `stream` until it closes or `limit` passes; `None` on timeout.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn a_result_is_served_so_that_a_browser_never_runs_it_in_couriers_origin() {
    let app = spawn_app().await;
    let html = "<script>alert(document.cookie)</script>";
    let id = app.submit_raw_ok("echo", "text/html", html).await;
    app.wait_until_done(&id).await;
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.status(), 200);
    let headers = result.headers();
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert!(headers["content-disposition"].to_str().unwrap().starts_with("attachment"));

    // The reply to a waiting submission is the same result, served the same way.
    let waited = app
        .http
        .post(app.url("/api/v1/tasks?kind=echo"))
        .header("content-type", "image/svg+xml")
        .header("prefer", "wait=10")
        .body("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);
    assert!(waited.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert!(waited.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));

    // Data a browser only shows stays inline, still sandboxed.
    let id = app.submit_ok(json!({"kind": "echo", "payload": {"a": 1}})).await;
    app.wait_until_done(&id).await;
    let result = app.http.get(app.url(&format!("/api/v1/tasks/{id}/result"))).send().await.unwrap();
    assert_eq!(result.headers()["content-type"], "application/json");
    assert_eq!(result.headers()["content-disposition"], "inline");
    assert!(result.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));

    // Every API answer, errors included, says its type is not to be sniffed.
    let kinds = app.http.get(app.url("/api/v1/kinds")).send().await.unwrap();
    assert_eq!(kinds.headers()["x-content-type-options"], "nosniff");
    let missing = app.http.get(app.url("/api/v1/nothing-here")).send().await.unwrap();
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn unsafe_requests_from_another_sites_page_are_refused_and_nothing_is_enqueued() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let raw_submit =
        || app.http.post(app.url("/api/v1/tasks?kind=echo")).header("content-type", "text/plain").body("hi");
    let refused = raw_submit().header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert!(!refused.headers()["x-request-id"].is_empty());
    assert_problem(refused, 403, "/problems/cross-site").await;
    let refused = raw_submit().header("origin", "http://evil.example").send().await.unwrap();
    assert_problem(refused, 403, "/problems/cross-site").await;
    let requeue_all =
        app.http.post(app.url("/api/v1/dead-letters/requeue")).header("origin", "http://evil.example");
    assert_problem(requeue_all.send().await.unwrap(), 403, "/problems/cross-site").await;
    let publish = app
        .http
        .post(app.url("/api/v1/topics/orders/messages"))
        .header("sec-fetch-site", "same-site")
        .header("content-type", "text/plain")
        .body(r#"{"payload": 1}"#);
    assert_problem(publish.send().await.unwrap(), 403, "/problems/cross-site").await;
    let page = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 0, "{page}");

    // The UI's own requests (same origin), and clients that are not browsers, pass.
    let same_origin = raw_submit()
        .header("sec-fetch-site", "same-origin")
        .header("origin", &app.base)
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 202);
    let origin_only = raw_submit().header("origin", &app.base).send().await.unwrap();
    assert_eq!(origin_only.status(), 202);
    assert_eq!(raw_submit().send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn a_listed_origin_gets_cors_and_may_make_unsafe_requests() {
    let front_end = "http://localhost:4200";
    let app = spawn_app_with(|c| c.cors_origins = vec![front_end.parse().unwrap()]).await;
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/tasks"))
        .header("origin", front_end)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type, idempotency-key, prefer")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], front_end);
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    for header in ["authorization", "content-type", "idempotency-key", "prefer", "last-event-id"] {
        assert!(allowed.contains(header), "{header} in {allowed}");
    }

    let submitted = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("origin", front_end)
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"kind": "echo", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    assert_eq!(submitted.headers()["access-control-allow-origin"], front_end);
    let exposed = submitted.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    for header in ["location", "retry-after", "preference-applied"] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }

    // Another origin gets no CORS answer and stays refused.
    let other = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/tasks"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let refused = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("origin", "http://evil.example")
        .json(&json!({"kind": "echo", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 403, "/problems/cross-site").await;
}

#[tokio::test]
async fn a_dns_rebinding_host_is_refused_and_the_bound_one_answered() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let port = port(&app);
    let get = |host: String| app.http.get(app.url("/api/v1/kinds")).header("host", host).send();
    let rebound = get(format!("evil.example:{port}")).await.unwrap();
    assert_problem(rebound, 421, "/problems/misdirected-request").await;
    let page =
        app.http.get(app.url("/")).header("host", format!("evil.example:{port}")).send().await.unwrap();
    assert_eq!(page.status(), 421);
    // Refused at the door, and still logged with an id and marked not to be sniffed.
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(!page.headers()["x-request-id"].is_empty());
    assert_eq!(get(format!("127.0.0.1:{port}")).await.unwrap().status(), 200);
    assert_eq!(get(format!("localhost:{port}")).await.unwrap().status(), 200);

    // With a public URL, its host is answered too.
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.public_url = Some("https://courier.example.com".parse().unwrap());
    })
    .await;
    let get = |host: &'static str| app.http.get(app.url("/api/v1/kinds")).header("host", host).send();
    assert_eq!(get("courier.example.com").await.unwrap().status(), 200);
    assert_eq!(get("evil.example").await.unwrap().status(), 421);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_after_the_header_timeout() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.header_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(("127.0.0.1", port(&app))).await.unwrap();
    stream.write_all(b"GET /api/v1/kinds HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "the connection was still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed after {:?}", started.elapsed());

    // A client that sends its headers in time is answered as ever.
    assert_eq!(app.http.get(app.url("/api/v1/kinds")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_body_that_stalls_midway_is_answered_408_after_the_body_timeout() {
    let app = spawn_app_with(|c| {
        c.concurrency = 0;
        c.body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(("127.0.0.1", port(&app))).await.unwrap();
    let head = "POST /api/v1/tasks?kind=echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let answer = answer.expect("an answer within 10 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("/problems/request-timeout"), "{answer}");
    let page = app.get_json("/api/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 0, "{page}");
}

#[tokio::test]
async fn an_answer_slower_than_the_request_timeout_is_a_503_with_retry_after() {
    let app = spawn_app_alone(|c| {
        c.concurrency = 0;
        c.request_timeout = Duration::from_secs(1);
    })
    .await;
    // Redis stops answering for three seconds: the lookup waits for it.
    let mut redis = app.redis().await;
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL").query_async(&mut redis).await.unwrap();
    let started = Instant::now();
    let id = uuid::Uuid::now_v7();
    let response = app.http.get(app.url(&format!("/api/v1/tasks/{id}"))).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(2500), "answered after {:?}", started.elapsed());
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "/problems/timeout").await;
}

#[tokio::test]
async fn a_waiting_submission_gets_its_wait_on_top_of_the_request_timeout() {
    let app = spawn_app_with(|c| c.request_timeout = Duration::from_secs(1)).await;
    let response = app
        .http
        .post(app.url("/api/v1/tasks"))
        .header("prefer", "wait=10")
        .json(&json!({"kind": "sleep", "payload": {"ms": 2000, "steps": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=10");
}

#[tokio::test]
async fn past_max_waiting_a_submission_is_accepted_at_once_without_waiting() {
    let app = spawn_app_with(|c| c.max_waiting = 1).await;
    let wait = |payload: serde_json::Value| {
        app.http.post(app.url("/api/v1/tasks")).header("prefer", "wait=20").json(&payload).send()
    };
    let slow = wait(json!({"kind": "sleep", "payload": {"ms": 3000, "steps": 3}}));
    let quick = async {
        // Let the slow one take the only permit first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        wait(json!({"kind": "echo", "payload": "quick"})).await.unwrap()
    };
    let (slow, quick) = tokio::join!(slow, quick);
    let slow = slow.unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(quick.status(), 202);
    assert!(!quick.headers().contains_key("preference-applied"));
    assert!(quick.headers().contains_key("location"));

    // The permit comes back when the wait ends.
    let after = wait(json!({"kind": "echo", "payload": "after"})).await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["preference-applied"], "wait=20");
}

#[tokio::test]
async fn a_wrong_method_and_a_malformed_path_are_problems_too() {
    let app = spawn_app_with(|c| c.concurrency = 0).await;
    let patch = app.http.patch(app.url("/api/v1/tasks")).send().await.unwrap();
    let allow = patch.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(patch, 405, "/problems/method-not-allowed").await;
    let bad_utf8 = app.http.get(app.url("/api/v1/tasks/%FF")).send().await.unwrap();
    let problem = assert_problem(bad_utf8, 400, "/problems/bad-request").await;
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
}
