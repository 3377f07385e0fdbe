//! Signing a browser in and out: `POST /auth/sign-in` turns a pasted token into a session cookie,
//! `POST /auth/sign-out` ends it, and the layer that sends every page to `/sign-in` while access
//! control is on and the browser has no session.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends
//! it) and holds only a random session id (`auth::sessions`). Over HTTPS it is `__Host-courier`,
//! which browsers accept only with `Secure` and `Path=/` and no `Domain`, so no sibling host can
//! plant or shadow it; over plain HTTP (loopback) `Secure` cannot be set, nor therefore that
//! prefix, and it is `courier-session`.

use super::{ApiError, AppState};
use crate::{auth::sessions::SessionError, config::Origin};
use app::model::Problem;
use axum::{
    Form,
    extract::{Request, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tracing::error;

/// The cookie's name over HTTPS.
pub const SECURE_COOKIE: &str = "__Host-courier";
/// The cookie's name over plain HTTP, where `__Host-` (which requires `Secure`) is not possible.
pub const PLAIN_COOKIE: &str = "courier-session";
/// The largest sign-in form: a token and a path to return to.
pub const SIGN_IN_MAX_BYTES: usize = 8 << 10;

/// Whether browsers reach this server over HTTPS (`--tls-cert`), so that its cookie can be
/// `Secure`. Behind a proxy that terminates TLS it is plain HTTP here, and the cookie says so.
pub fn served_over_https(state: &AppState) -> bool {
    state.https
}

/// The session cookie's name for this server.
fn cookie_name(state: &AppState) -> &'static str {
    if served_over_https(state) { SECURE_COOKIE } else { PLAIN_COOKIE }
}

/// The session id the request's cookie carries, if any.
pub fn session_id<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    find_cookie(headers, cookie_name(state))
}

/// The value of the cookie `name`, in any of the request's `Cookie` headers.
fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// Whether a request says positively that it comes from this server's own pages:
/// `Sec-Fetch-Site: same-origin`, or, from a browser that sends no fetch metadata, an `Origin`
/// naming the host the request is for. Neither header (curl) is no evidence: a request the
/// browser's cookie signs in must show it, since the cookie is sent whatever page asks.
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()?.parse::<Origin>().ok())
    else {
        return false;
    };
    let host = uri.authority().map(|a| a.as_str()).or_else(|| headers.get(header::HOST)?.to_str().ok());
    host.is_some_and(|host| names_origin(host, &origin))
}

/// Whether the `Host` value `host` is the host and port of `origin` (a port left out on either
/// side is the scheme's default).
fn names_origin(host: &str, origin: &Origin) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') => match port.parse::<u16>() {
            Ok(port) => (name, Some(port)),
            Err(_) => return false,
        },
        _ => (host.as_str(), None),
    };
    let port = port.filter(|p| *p != origin.default_port());
    name == origin.host() && port == origin.port()
}

/// The refusal of an unsafe request signed in by the cookie without same-origin evidence.
pub fn cross_site() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "cross-site", "Cross-site request refused").detail(
        "a change made with the browser's session must come from this server's own pages \
         (Sec-Fetch-Site: same-origin, or an Origin naming this server); other clients send \
         `Authorization: Bearer <token>`",
    )
}

/// Whether `method` changes nothing, so that a cookie alone may send it.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The sign-in form, as the page posts it.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    /// An access token.
    #[serde(default)]
    token: String,
    /// Where to go once signed in: a path of this server.
    #[serde(default)]
    next: Option<String>,
}

/// `POST /auth/sign-in` (form `token`, `next`): `303` to `next` with the session cookie, or back
/// to the sign-in page saying the token is unknown (never repeating it).
#[utoipa::path(
    post,
    path = "/auth/sign-in",
    operation_id = "sign_in",
    tag = "access",
    summary = "Sign a browser in with a token (a form post)",
    request_body(content = SignIn, content_type = "application/x-www-form-urlencoded"),
    security(()),
    responses(
        (status = 303, description = "Signed in: to `next`, with the session cookie; or back to `/sign-in?error=unknown-token`",
            headers(("Location" = String, description = "Where to go next"), ("Set-Cookie" = String, description = "The session cookie, when signed in"))),
        (status = 400, description = "Not a sign-in form", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The form is larger than 8 KiB", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn sign_in(
    State(state): State<AppState>,
    form: Result<Form<SignIn>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(form) = form.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let next = local_next(form.next.as_deref());
    let refused = || {
        let back = match next {
            "/" => String::new(),
            next => format!("&next={}", percent_encode(next)),
        };
        see_other(&format!("/sign-in?error=unknown-token{back}"), None)
    };
    let Some(access) = state.tokens.authenticate(form.token.trim()) else { return Ok(refused()) };
    let opened = match state.sessions.open(&access).await {
        Ok(opened) => opened,
        // It expired (or access control went off) between the check and now.
        Err(SessionError::Expired | SessionError::NoToken) => return Ok(refused()),
        Err(SessionError::Redis(e)) => return Err(e.into()),
        Err(e @ SessionError::Random(_)) => {
            error!(error = %e, "opening a browser session failed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ));
        }
    };
    state.audit.record(access.name(), "session.sign-in", "browser").await;
    let secure = if served_over_https(&state) { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        cookie_name(&state),
        opened.id,
        opened.lifetime.as_secs().max(1)
    );
    Ok(see_other(next, Some(cookie)))
}

/// `POST /auth/sign-out`: ends the browser's session and forgets its cookie; `303` to the
/// sign-in page.
#[utoipa::path(
    post,
    path = "/auth/sign-out",
    operation_id = "sign_out",
    tag = "access",
    summary = "Sign a browser out",
    security(()),
    responses(
        (status = 303, description = "Signed out (the cookie cleared): to `/sign-in`",
            headers(("Location" = String, description = "The sign-in page"), ("Set-Cookie" = String, description = "Clears the session cookie"))),
        (status = 403, description = "A session cookie, but not from this server's own pages", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn sign_out(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = session_id(&state, &headers) {
        // Signing someone out is a change too: only this server's pages may ask for it.
        if !same_origin(&headers, &uri) {
            return Err(cross_site());
        }
        state.sessions.close(id).await?;
    }
    let secure = if served_over_https(&state) { "; Secure" } else { "" };
    let cookie = format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}", cookie_name(&state));
    Ok(see_other("/sign-in", Some(cookie)))
}

/// Sends a page request to `/sign-in?next=…` while access control is on and the browser has no
/// valid session. The API (which answers `401` itself), the sign-in routes, health checks and
/// static files pass: the sign-in page needs its styles and scripts before anyone signs in.
pub async fn pages(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.tokens.enabled() || is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let signed_in = match session_id(&state, request.headers()) {
        Some(id) => match state.sessions.access(id).await {
            Ok(access) => access.is_some(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => false,
    };
    if signed_in {
        return next.run(request).await;
    }
    let wanted = request.uri().path_and_query().map_or("/", |p| p.as_str());
    see_other(&format!("/sign-in?next={}", percent_encode(wanted)), None)
}

/// Whether `path` is served without a session.
fn is_open(path: &str) -> bool {
    const EXACT: [&str; 7] =
        ["/sign-in", "/healthz", "/readyz", "/metrics", "/favicon.ico", "/favicon.svg", "/api"];
    const UNDER: [&str; 3] = ["/api/", "/auth/", "/pkg/"];
    EXACT.contains(&path) || UNDER.iter().any(|start| path.starts_with(start)) || is_static_file(path)
}

/// Whether `path` names a static file by its extension (pages have none).
fn is_static_file(path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or_default();
    let Some((_, extension)) = last.rsplit_once('.') else { return false };
    const STATIC: [&str; 14] = [
        "css", "js", "wasm", "svg", "ico", "png", "jpg", "jpeg", "gif", "webp", "woff", "woff2", "map", "txt",
    ];
    STATIC.iter().any(|known| extension.eq_ignore_ascii_case(known))
}

/// `next` if it is a path of this server, else `/`: never `//host` or `/\host`, which browsers
/// read as another site.
fn local_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && path.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            path
        }
        _ => "/",
    }
}

/// `303 See Other` to `location` (a local path), setting `cookie` if given; never cached.
fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/")),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `text` for a query value: every byte but the unreserved ones escaped.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_next(Some("/queues?x=1")), "/queues?x=1");
        assert_eq!(local_next(Some("/")), "/");
        for foreign in ["//evil.example", "/\\evil.example", "https://evil.example", "queues", "/a b", ""] {
            assert_eq!(local_next(Some(foreign)), "/", "{foreign}");
        }
        assert_eq!(local_next(None), "/");
    }

    #[test]
    fn pages_need_a_session_but_the_api_assets_and_health_checks_do_not() {
        for open in [
            "/sign-in",
            "/pkg/courier.wasm",
            "/pkg/courier.css",
            "/favicon.svg",
            "/healthz",
            "/api/v1/tasks",
            "/auth/sign-in",
        ] {
            assert!(is_open(open), "{open}");
        }
        for page in
            ["/", "/queues", "/dead-letters", "/tasks/0190", "/audit", "/sign-in-elsewhere", "/apiary"]
        {
            assert!(!is_open(page), "{page}");
        }
    }

    #[test]
    fn same_origin_evidence_is_fetch_metadata_or_an_origin_naming_this_host() {
        let uri = Uri::from_static("/api/v1/tasks");
        let host = ("host", "127.0.0.1:3000");
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")]), &uri));
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:3000")]), &uri));
        assert!(same_origin(&headers(&[("host", "localhost"), ("origin", "http://localhost")]), &uri));
        assert!(!same_origin(&headers(&[host]), &uri));
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "same-site")]), &uri));
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "none")]), &uri));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:3001")]), &uri));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")]), &uri));
        assert!(!same_origin(&headers(&[host, ("origin", "null")]), &uri));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "cross-site"), ("origin", "http://127.0.0.1:3000")]),
            &uri
        ));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let map = headers(&[("cookie", "a=1; courier-session=abc ; b=2"), ("cookie", "c=3")]);
        assert_eq!(find_cookie(&map, PLAIN_COOKIE), Some("abc"));
        assert_eq!(find_cookie(&map, "c"), Some("3"));
        assert_eq!(find_cookie(&map, SECURE_COOKIE), None);
    }

    #[test]
    fn a_query_value_escapes_everything_but_unreserved_bytes() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("/tasks/a-b?x=1&y"), "%2Ftasks%2Fa-b%3Fx%3D1%26y");
    }
}
