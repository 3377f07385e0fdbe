//! The access layer: who each API call acts as, and whether it may do what it asks, checked
//! before any handler runs.
//!
//! Every API route has a rule ([`RULES`]): the scope it needs and where the queue it touches is
//! named (a queue in the path, a task id, a lease token). A call without a token is `401`; one
//! whose token lacks the scope is `403` naming it; one that reaches a queue outside its token's
//! patterns is `404`, as if the thing did not exist. Handlers whose queue is in the body, and
//! every list and event stream, ask the [`Access`] this layer leaves in the request's extensions.

use super::{ApiError, AppState, parse_id};
use crate::auth::{Access, Scope};
use axum::{
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Where a route names the queue it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueIn {
    /// Nowhere in the path: the handler checks a queue in the body, or filters what it lists.
    Handler,
    /// The `{name}` segment.
    Name,
    /// The queue of the task `{id}`.
    Task,
    /// The queue of the lease `{token}`.
    Lease,
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    /// None: any valid token (who am I).
    pub scope: Option<Scope>,
    pub queue: QueueIn,
    /// Needs no token at all: served outside the access layer (the API's own description).
    pub public: bool,
}

const fn rule(method: &'static str, path: &'static str, scope: Scope, queue: QueueIn) -> Rule {
    Rule { method, path, scope: Some(scope), queue, public: false }
}

use QueueIn::{Handler, Lease, Name, Task};
use Scope::{Admin, Operate, Read, Submit, Work};

/// Every API route and what it needs; a route missing here is refused to everyone (a unit test
/// compares this table with the router).
pub const RULES: &[Rule] = &[
    rule("GET", "/api/v1/tasks", Read, Handler),
    rule("POST", "/api/v1/tasks", Submit, Handler),
    rule("POST", "/api/v1/tasks/batch", Submit, Handler),
    rule("GET", "/api/v1/tasks/{id}", Read, Task),
    rule("DELETE", "/api/v1/tasks/{id}", Operate, Task),
    rule("GET", "/api/v1/tasks/{id}/status", Read, Task),
    rule("DELETE", "/api/v1/tasks/{id}/status", Operate, Task),
    rule("GET", "/api/v1/tasks/{id}/result", Read, Task),
    rule("GET", "/api/v1/tasks/{id}/payload", Read, Task),
    rule("GET", "/api/v1/tasks/{id}/attempts", Read, Task),
    rule("GET", "/api/v1/tasks/{id}/events", Read, Task),
    rule("GET", "/api/v1/events", Read, Handler),
    rule("GET", "/api/v1/kinds", Read, Handler),
    rule("GET", "/api/v1/kinds/{name}", Read, Handler),
    rule("PUT", "/api/v1/kinds/{name}", Admin, Handler),
    rule("DELETE", "/api/v1/kinds/{name}", Admin, Handler),
    rule("GET", "/api/v1/topics", Read, Handler),
    rule("POST", "/api/v1/topics/{topic}/messages", Submit, Handler),
    rule("GET", "/api/v1/topics/{topic}/subscriptions", Read, Handler),
    rule("GET", "/api/v1/topics/{topic}/subscriptions/{name}", Read, Handler),
    rule("PUT", "/api/v1/topics/{topic}/subscriptions/{name}", Operate, Handler),
    rule("DELETE", "/api/v1/topics/{topic}/subscriptions/{name}", Operate, Handler),
    rule("GET", "/api/v1/queues", Read, Handler),
    rule("GET", "/api/v1/queues/{name}", Read, Name),
    rule("PUT", "/api/v1/queues/{name}", Admin, Name),
    rule("POST", "/api/v1/queues/{name}/pause", Operate, Name),
    rule("POST", "/api/v1/queues/{name}/resume", Operate, Name),
    rule("POST", "/api/v1/queues/{name}/leases", Work, Name),
    // A schedule submits into any queue, as its owner: putting one is for a token of every queue.
    rule("GET", "/api/v1/schedules", Read, Handler),
    rule("GET", "/api/v1/schedules/{name}", Read, Handler),
    rule("PUT", "/api/v1/schedules/{name}", Admin, Handler),
    rule("DELETE", "/api/v1/schedules/{name}", Admin, Handler),
    rule("POST", "/api/v1/schedules/{name}/pause", Operate, Handler),
    rule("POST", "/api/v1/schedules/{name}/resume", Operate, Handler),
    rule("POST", "/api/v1/schedules/{name}/run", Operate, Handler),
    // Each end's queue is its token's: the handler checks every one.
    rule("POST", "/api/v1/leases/ends", Work, Handler),
    rule("POST", "/api/v1/leases/{token}/heartbeat", Work, Lease),
    rule("POST", "/api/v1/leases/{token}/complete", Work, Lease),
    rule("POST", "/api/v1/leases/{token}/fail", Work, Lease),
    rule("POST", "/api/v1/leases/{token}/release", Work, Lease),
    rule("GET", "/api/v1/dead-letters", Read, Handler),
    rule("DELETE", "/api/v1/dead-letters", Operate, Handler),
    rule("GET", "/api/v1/dead-letters/count", Read, Handler),
    rule("POST", "/api/v1/dead-letters/requeue", Operate, Handler),
    rule("DELETE", "/api/v1/dead-letters/{id}", Operate, Task),
    rule("POST", "/api/v1/dead-letters/{id}/requeue", Operate, Task),
    rule("GET", "/api/v1/workers", Read, Handler),
    rule("GET", "/api/v1/workflows", Read, Handler),
    rule("POST", "/api/v1/workflows", Submit, Handler),
    rule("GET", "/api/v1/workflows/{id}", Read, Handler),
    rule("DELETE", "/api/v1/workflows/{id}", Operate, Handler),
    rule("GET", "/api/v1/workflows/{id}/status", Read, Handler),
    rule("GET", "/api/v1/workflows/{id}/result", Read, Handler),
    rule("GET", "/api/v1/stats", Read, Handler),
    rule("GET", "/api/v1/stats/events", Read, Handler),
    rule("GET", "/api/v1/tokens", Admin, Handler),
    rule("POST", "/api/v1/tokens", Admin, Handler),
    rule("DELETE", "/api/v1/tokens/{name}", Admin, Handler),
    rule("GET", "/api/v1/audit", Admin, Handler),
    Rule { method: "GET", path: "/api/v1/auth/me", scope: None, queue: Handler, public: false },
    Rule { method: "GET", path: "/api/v1/openapi.json", scope: None, queue: Handler, public: true },
];

/// The rule for `method` on the route `path` (as the router matched it); `HEAD` is `GET`.
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    RULES.iter().find(|rule| rule.method == method && rule.path == path)
}

/// Authenticates and authorizes an API call, leaving its [`Access`] in the request's
/// extensions for the handler.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if serves_other_methods(&request) {
        // The router answers `405` with `Allow`, telling nothing the public API document does
        // not; refused here, it would be a `403` for a rule that no method of it needs.
        return next.run(request).await;
    }
    // The parts alone: a body cannot be shared across the awaits that find a task's queue.
    let (mut parts, body) = request.into_parts();
    match admit(&state, &parts).await {
        Ok(access) => {
            parts.extensions.insert(access);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Whether the request's route has rules, but for other methods than the request's.
fn serves_other_methods(request: &Request) -> bool {
    let Some(path) = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) else {
        return false;
    };
    rule_for(request.method(), path).is_none() && RULES.iter().any(|rule| rule.path == path)
}

async fn admit(state: &AppState, request: &Parts) -> Result<Access, ApiError> {
    let matched = request.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
    let rule = matched.and_then(|path| rule_for(&request.method, path));
    if let Some(granted) = signed_link(state, matched, request).await {
        return granted;
    }
    if !state.tokens.enabled() {
        return Ok(Access::everything());
    }
    let access = authenticate(state, request).await?;
    let Some(rule) = rule else {
        // A route without a rule (a path no route serves: the catch-all's 404) needs only a
        // token; a real route missing from the table is refused until it has one.
        return match matched {
            Some("/api/{*rest}") | None => Ok(access),
            Some(path) => {
                tracing::error!(route = path, "an API route has no access rule: refusing it");
                Err(forbidden("this endpoint has no access rule yet"))
            }
        };
    };
    if let Some(scope) = rule.scope
        && !access.has(scope)
    {
        return Err(forbidden(format!("this token lacks the `{scope}` scope this call needs")));
    }
    // What is not about one queue (tokens, kinds, the audit trail, every subscription of a
    // topic) is for tokens that reach every queue: a token of some queues could otherwise mint a
    // broader one, or route another queue's kind or messages to its own.
    if rule.queue == QueueIn::Handler && matches!(rule.scope, Some(Scope::Admin)) && access.within().is_some()
    {
        return Err(forbidden("this call needs a token that reaches every queue (`--queues '*'`)"));
    }
    if let Some(queue) = queue_of(state, rule, request).await?
        && !access.reaches(&queue)
    {
        return Err(hidden(rule.queue));
    }
    Ok(access)
}

/// The routes a signed link may open.
const LINKABLE: [&str; 2] = ["/api/v1/tasks/{id}/result", "/api/v1/tasks/{id}/payload"];

/// What a signed link grants, if the request is one: reading what it names while it is valid,
/// a `403` when it is tampered with or expired. Checked before any token: a link needs none.
async fn signed_link(
    state: &AppState,
    matched: Option<&str>,
    request: &Parts,
) -> Option<Result<Access, ApiError>> {
    let linkable = request.method == Method::GET || request.method == Method::HEAD;
    if !(linkable && matched.is_some_and(|m| LINKABLE.contains(&m))) {
        return None;
    }
    let verdict = state.links.verify("GET", request.uri.path(), request.uri.query()?).await?;
    Some(verdict.map(|()| Access::signed_link()).map_err(|e| {
        ApiError::new(StatusCode::FORBIDDEN, "invalid-link", "Invalid link")
            .detail(format!("{e}: ask for the task again for a fresh link"))
    }))
}

/// The access the request's credentials give, or the `401` that asks for them: a bearer token,
/// else the browser's session cookie (one Redis read). A cookie is sent whatever page makes the
/// request, so an unsafe call it signs in must show that it comes from this server's own pages.
async fn authenticate(state: &AppState, request: &Parts) -> Result<Access, ApiError> {
    let Some(value) = request.headers.get(header::AUTHORIZATION) else {
        let Some(session) = super::session::session_id(state, &request.headers) else {
            return Err(ApiError::unauthorized(
                "this call needs an access token: `Authorization: Bearer <token>`",
            ));
        };
        if !super::session::is_safe(&request.method)
            && !super::session::same_origin(&request.headers, &request.uri)
        {
            return Err(super::session::cross_site());
        }
        return state.sessions.access(session).await?.ok_or_else(|| {
            ApiError::unauthorized(
                "the browser's session has ended (signed out, expired or its token revoked): sign in again",
            )
        });
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
    state
        .tokens
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))
}

/// The queue the rule finds in the request's path; none where it is not in the path or the
/// thing it names does not exist (its handler answers `404` then).
async fn queue_of(state: &AppState, rule: &Rule, request: &Parts) -> Result<Option<String>, ApiError> {
    let segment = |name: &str| path_param(rule.path, request.uri.path(), name);
    Ok(match rule.queue {
        QueueIn::Handler => None,
        QueueIn::Name => segment("name"),
        QueueIn::Lease => match segment("token") {
            Some(token) => crate::queue::PullToken::open(&token, &state.links).await.map(|token| token.queue),
            None => None,
        },
        QueueIn::Task => {
            let Some(Ok(id)) = segment("id").map(|id| parse_id(&id)) else { return Ok(None) };
            let queue = state.tasks.queues().locate(&id).await?;
            queue.map(|queue| queue.name().to_string())
        }
    })
}

/// The value of `{name}` in `path` where the route pattern `pattern` has it.
fn path_param(pattern: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    let index = pattern.split('/').position(|segment| segment == wanted)?;
    let raw = path.split('/').nth(index)?;
    Some(percent_decode(raw))
}

/// Decodes `%XX` escapes (a queue name or token never needs them, but a client may send them).
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| raw.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `403`: known, but not allowed.
pub fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
}

/// The `404` for what lies in a queue the token does not reach: the same as for what does not
/// exist.
fn hidden(queue: QueueIn) -> ApiError {
    match queue {
        QueueIn::Name => ApiError::not_found("no queue by this name"),
        QueueIn::Lease => ApiError::not_found("no lease with this token"),
        QueueIn::Task | QueueIn::Handler => {
            ApiError::not_found("no task with this id (it never existed or has expired)")
        }
    }
}

/// The `404` a handler answers for a queue named in a body or query that the token does not
/// reach.
pub fn no_such_queue(name: &str) -> ApiError {
    ApiError::not_found(format!("no queue named `{name}`"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every `.route(…)` of the router, as (method, path) pairs, read from its source.
    pub(in crate::http) fn routes_in_router() -> Vec<(String, String)> {
        let source = include_str!("../http.rs");
        let mut routes = Vec::new();
        for call in source.split(".route(").skip(1) {
            let Some(path) = call.split('"').nth(1) else { continue };
            let body: String = call.chars().take_while(|c| *c != ';').collect();
            let end = body.find("\n        .").unwrap_or(body.len());
            let handlers = &body[..end];
            for (needle, method) in
                [("get(", "GET"), ("post(", "POST"), ("put(", "PUT"), ("delete(", "DELETE")]
            {
                if handlers.contains(needle) {
                    routes.push((method.to_string(), path.to_string()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_api_route_of_the_router_has_an_access_rule() {
        let routes = routes_in_router();
        assert!(routes.len() > 30, "the router's routes were not found: {routes:?}");
        for (method, path) in routes {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            assert!(
                rule_for(&method.parse().unwrap(), &path).is_some(),
                "{method} {path} has no rule in http/auth.rs RULES"
            );
        }
    }

    #[test]
    fn every_rule_names_a_route_of_the_router() {
        let routes = routes_in_router();
        for rule in RULES {
            assert!(
                routes.iter().any(|(m, p)| m == rule.method && p == rule.path),
                "{} {} is in RULES but not in the router",
                rule.method,
                rule.path
            );
        }
    }

    #[test]
    fn path_params_are_read_where_the_pattern_has_them() {
        let rule = "/api/v1/queues/{name}/pause";
        assert_eq!(path_param(rule, "/api/v1/queues/billing/pause", "name"), Some("billing".into()));
        assert_eq!(path_param(rule, "/api/v1/queues/a%2Db/pause", "name"), Some("a-b".into()));
        assert_eq!(path_param(rule, "/api/v1/queues/billing/pause", "id"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
