//! Browser sessions: signing in with a token sets a session cookie that authenticates the API and
//! the event stream, signing out or revoking the token ends it, a change it signs needs
//! same-origin evidence, and with access control on every page leads to the sign-in page.

#[path = "../tls/certificates.rs"]
mod certificates;

use crate::support::*;
use courier::auth::{AuthMode, Scope, TokenRequest, Tokens};
use futures::StreamExt;
use reqwest::{Response, header};
use serde_json::json;
use std::time::Duration;

/// Posts the sign-in form as the page does.
async fn sign_in(app: &TestApp, token: &str, next: Option<&str>) -> Response {
    let mut body = format!("token={}", encode(token));
    if let Some(next) = next {
        body.push_str(&format!("&next={}", encode(next)));
    }
    app.http
        .post(app.url("/auth/sign-in"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Signs in with `token` and returns the `Cookie` header value that carries the session.
async fn session_cookie(app: &TestApp, token: &str) -> String {
    let response = sign_in(app, token, None).await;
    assert_eq!(response.status(), 303);
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn location(response: &Response) -> &str {
    response.headers()[header::LOCATION].to_str().unwrap()
}

/// `GET /api/v1/auth/me` with only `cookie`.
async fn me_with(app: &TestApp, cookie: &str) -> Response {
    app.http.get(app.url("/api/v1/auth/me")).header(header::COOKIE, cookie).send().await.unwrap()
}

/// The names of the session keys in Redis.
async fn session_keys(app: &TestApp) -> Vec<String> {
    let mut redis = app.redis().await;
    redis::AsyncCommands::keys(&mut redis, format!("{}:web-session:*", app.prefix)).await.unwrap()
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_that_authenticates_api_calls_and_events() {
    let app = spawn_app().await;
    let token = app.make_token("ops", &[Scope::Read, Scope::Submit], &["*"], None).await;

    let response = sign_in(&app, &token, Some("/queues")).await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/queues");
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    let attributes: Vec<&str> = set.split(';').map(str::trim).collect();
    let (name, id) = attributes[0].split_once('=').unwrap();
    assert_eq!(name, "courier-session", "plain HTTP cannot carry __Host- (it requires Secure)");
    assert_eq!(id.len(), 43, "256 random bits in base64url");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&flag), "{flag} missing from {set}");
    }
    assert!(!attributes.contains(&"Secure"), "{set}");
    let max_age: u64 = attributes.iter().find_map(|a| a.strip_prefix("Max-Age=")).unwrap().parse().unwrap();
    assert!((12 * 3600 - 60..=12 * 3600).contains(&max_age), "{max_age}");
    // Redis holds the session under the id's digest, never the id, for as long as the cookie.
    let keys = session_keys(&app).await;
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(id));
    let cookie = attributes[0];

    let me = me_with(&app, cookie).await;
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["name"], "ops");
    assert_eq!(me["auth"], true);
    assert_eq!(me["scopes"], json!(["submit", "read"]));
    assert_eq!(app.http.get(app.url("/api/v1/auth/me")).send().await.unwrap().status(), 401);

    // The event stream, as EventSource opens it: the cookie and nothing else.
    let events = app
        .http
        .get(app.url("/api/v1/events"))
        .header(header::COOKIE, cookie)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()[header::CONTENT_TYPE], "text/event-stream");
    let submitted = app
        .http
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(&token)
        .json(&in_test_queue(json!({"kind": "echo", "payload": {"hello": "session"}})))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let task: serde_json::Value = submitted.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let mut body = events.bytes_stream();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(&id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the task's events never came over the cookie's stream: {seen}");
}

#[tokio::test]
async fn a_wrong_token_signs_nobody_in_and_is_never_repeated() {
    let app = spawn_app().await;
    app.make_token("admin", &Scope::ALL, &["*"], None).await;
    let wrong = "cour_thisIsNotATokenAnyoneWasGivenAtAll0123456789";

    let response = sign_in(&app, wrong, Some("/dead-letters")).await;
    assert_eq!(response.status(), 303);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let to = location(&response).to_string();
    assert!(to.starts_with("/sign-in?error="), "{to}");
    assert!(to.contains("next=%2Fdead-letters"), "{to}");
    assert!(!to.contains(wrong) && !to.contains("thisIsNot"), "{to}");
    let body = response.text().await.unwrap();
    assert!(!body.contains("thisIsNot"));
    assert!(session_keys(&app).await.is_empty());

    // The sign-in page says so.
    let page = app.http.get(app.url(&to)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("unknown"));
}

#[tokio::test]
async fn signing_out_ends_the_session_and_clears_the_cookie() {
    let app = spawn_app().await;
    let token = app.make_token("reader", &[Scope::Read], &["*"], None).await;
    let cookie = session_cookie(&app, &token).await;
    assert_eq!(me_with(&app, &cookie).await.status(), 200);

    let response = app
        .http
        .post(app.url("/auth/sign-out"))
        .header(header::COOKIE, &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/sign-in");
    let cleared = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("courier-session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    assert!(session_keys(&app).await.is_empty());
    assert_eq!(me_with(&app, &cookie).await.status(), 401);
    let page = app.http.get(app.url("/")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 303);
}

#[tokio::test]
async fn revoking_the_token_ends_the_sessions_opened_with_it() {
    let app = spawn_app().await;
    let admin = app.make_token("admin", &Scope::ALL, &["*"], None).await;
    let viewer = app.make_token("viewer", &[Scope::Read], &["*"], None).await;
    let cookie = session_cookie(&app, &viewer).await;
    assert_eq!(me_with(&app, &cookie).await.status(), 200);
    let page = app.http.get(app.url("/")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);

    let revoked = app.http.delete(app.url("/api/v1/tokens/viewer")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 204);

    assert_eq!(me_with(&app, &cookie).await.status(), 401);
    let page = app.http.get(app.url("/")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(location(&page), "/sign-in?next=%2F");
}

#[tokio::test]
async fn a_session_lasts_no_longer_than_its_token() {
    let app = spawn_app().await;
    let token = app.make_token("brief", &[Scope::Read], &["*"], Some("1h")).await;
    let response = sign_in(&app, &token, None).await;
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    let max_age: u64 =
        set.split(';').find_map(|a| a.trim().strip_prefix("Max-Age=")).unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&max_age), "{max_age}");
    let mut redis = app.redis().await;
    let key = &session_keys(&app).await[0];
    let ttl_ms: i64 = redis::AsyncCommands::pttl(&mut redis, key).await.unwrap();
    assert!((3_500_000..=3_600_000).contains(&ttl_ms), "{ttl_ms}");
}

#[tokio::test]
async fn a_change_signed_by_the_cookie_needs_same_origin_evidence() {
    let app = spawn_app().await;
    let admin = app.make_token("admin", &Scope::ALL, &["*"], None).await;
    let cookie = session_cookie(&app, &admin).await;
    let pause = |headers: &[(&str, &str)]| {
        let mut request =
            app.http.post(app.url("/api/v1/queues/default/pause")).header(header::COOKIE, &cookie);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    assert_problem(pause(&[("sec-fetch-site", "cross-site")]).await.unwrap(), 403, "/problems/cross-site")
        .await;
    assert_problem(pause(&[("origin", "http://evil.example")]).await.unwrap(), 403, "/problems/cross-site")
        .await;
    assert_problem(pause(&[("sec-fetch-site", "same-site")]).await.unwrap(), 403, "/problems/cross-site")
        .await;
    // Neither header: what curl sends, and what the guard lets through; a cookie does not.
    let problem = assert_problem(pause(&[]).await.unwrap(), 403, "/problems/cross-site").await;
    assert!(problem["detail"].as_str().unwrap().contains("session"), "{problem}");
    let paused: serde_json::Value = app.get_json_with(&admin, "/api/v1/queues/default").await;
    assert_eq!(paused["paused"], false, "no refused request paused the queue");

    let allowed = pause(&[("sec-fetch-site", "same-origin")]).await.unwrap();
    assert_eq!(allowed.status(), 200);
    let own_origin = app.base.clone();
    let allowed = app
        .http
        .post(app.url("/api/v1/queues/default/resume"))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, own_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    // A bearer token needs no such evidence: no page can make a browser send one.
    let scripted =
        app.http.post(app.url("/api/v1/queues/default/pause")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(scripted.status(), 200);
    // Reading with the cookie needs none either.
    assert_eq!(me_with(&app, &cookie).await.status(), 200);
}

#[tokio::test]
async fn with_access_control_on_pages_lead_to_sign_in_and_assets_do_not() {
    let app = spawn_app().await;
    let token = app.make_token("reader", &[Scope::Read], &["*"], None).await;

    for (page, next) in
        [("/", "%2F"), ("/queues?x=1", "%2Fqueues%3Fx%3D1"), ("/dead-letters", "%2Fdead-letters")]
    {
        let response = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(response.status(), 303, "{page}");
        assert_eq!(location(&response), format!("/sign-in?next={next}"), "{page}");
    }
    for open in ["/pkg/courier.css", "/pkg/courier.wasm", "/favicon.svg", "/sign-in", "/healthz", "/readyz"] {
        let response = app.http.get(app.url(open)).send().await.unwrap();
        assert_ne!(response.status(), 303, "{open}");
    }
    assert_eq!(app.http.get(app.url("/sign-in")).send().await.unwrap().status(), 200);
    // The API answers for itself.
    assert_eq!(app.http.get(app.url("/api/v1/tasks")).send().await.unwrap().status(), 401);

    let cookie = session_cookie(&app, &token).await;
    let page = app.http.get(app.url("/queues")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test]
async fn with_access_control_off_pages_need_no_session() {
    let app = spawn_app().await;
    for page in ["/", "/queues", "/dead-letters"] {
        assert_eq!(app.http.get(app.url(page)).send().await.unwrap().status(), 200, "{page}");
    }
}

#[tokio::test]
async fn sign_in_follows_only_a_path_of_this_server() {
    let app = spawn_app().await;
    let token = app.make_token("reader", &[Scope::Read], &["*"], None).await;
    for foreign in ["//evil.example", "https://evil.example/", "/\\evil.example", "evil"] {
        let response = sign_in(&app, &token, Some(foreign)).await;
        assert_eq!(response.status(), 303);
        assert_eq!(location(&response), "/", "{foreign}");
    }
    let response = sign_in(&app, &token, Some("/tasks/abc?x=1")).await;
    assert_eq!(location(&response), "/tasks/abc?x=1");
}

#[tokio::test]
async fn over_https_the_cookie_is_secure_and_host_prefixed() {
    let certificates = certificates::Certificates::make();
    let app = spawn_app_with(|c| {
        c.tls_cert = Some(certificates.path("server.crt"));
        c.tls_key = Some(certificates.path("server.key"));
    })
    .await;
    let ca = std::fs::read(certificates.path("ca.crt")).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = app.base.replace("http://", "https://");
    let token = Tokens::new(app.redis().await, &app.prefix, AuthMode::Auto)
        .create(TokenRequest {
            name: "tls".into(),
            scopes: vec![Scope::Read],
            queues: vec!["*".into()],
            expires: None,
        })
        .await
        .unwrap()
        .token;
    let sign_in = || {
        https
            .post(format!("{base}/auth/sign-in"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    // The server reads the new token within half a second.
    let mut response = sign_in().await.unwrap();
    for _ in 0..100 {
        if location(&response) == "/" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = sign_in().await.unwrap();
    }
    assert_eq!(location(&response), "/");
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    let attributes: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("__Host-courier="), "{set}");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&flag), "{flag} missing from {set}");
    }
    assert!(!set.contains("Domain"), "__Host- cookies carry no Domain: {set}");

    let me =
        |cookie: String| https.get(format!("{base}/api/v1/auth/me")).header(header::COOKIE, cookie).send();
    assert_eq!(me(attributes[0].to_string()).await.unwrap().status(), 200);
    // The plain-HTTP name is not read over HTTPS: a cookie set without Secure cannot stand in.
    let id = attributes[0].split_once('=').unwrap().1;
    assert_eq!(me(format!("courier-session={id}")).await.unwrap().status(), 401);

    let out = https
        .post(format!("{base}/auth/sign-out"))
        .header(header::COOKIE, attributes[0])
        .header(header::ORIGIN, base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let cleared = out.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("__Host-courier=;") && cleared.contains("Secure"), "{cleared}");
    assert_eq!(me(attributes[0].to_string()).await.unwrap().status(), 401);
}

impl TestApp {
    /// `GET path` with a bearer token, as JSON.
    async fn get_json_with(&self, token: &str, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }
}
