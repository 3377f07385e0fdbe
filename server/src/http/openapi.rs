//! The API's own description: the OpenAPI 3.1 document (`GET /api/v1/openapi.json`), generated
//! from the handlers' `#[utoipa::path]` annotations and the wire types' `ToSchema` derives, and
//! the API reference page (`GET /api/docs`) rendered from it here, with nothing fetched from
//! elsewhere.
//!
//! A route of the router without an operation here fails a unit test, and so does an operation
//! that no route serves. What every API call may answer whatever it is (the access layer's `401`
//! and `403`, `503` while Redis is away or a request takes too long, `408` for a body that stops
//! arriving) is added to each operation by [`CommonProblems`] rather than repeated on each.

use super::{
    api, audit, dead_letters, kinds, leases, metrics, queues, schedules, session, sse, stats, tokens, topics,
    workers, workflows,
};
use app::model::{KindEvent, Problem, QueueEvent, Stats, StreamReset, TaskEvent, workflow::WorkflowEvent};
use axum::{
    http::{HeaderValue, header},
    response::{Html, IntoResponse, Response},
};
use serde_json::Value;
use std::{fmt::Write, sync::LazyLock};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        Content, Ref, RefOr, ResponseBuilder,
        path::Operation,
        schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// The document's source: every operation and the schemas it names.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Courier",
        description = "An async task orchestrator on Redis: submit tasks, follow them (status monitor, server-sent events), \
            fetch results; queues, dead letters, topics, declared kinds and pull workers. Every error is \
            `application/problem+json` (RFC 9457). With access control on, calls carry `Authorization: Bearer <token>` \
            (or a browser's session cookie); a token's scopes and queue patterns decide what it may do."
    ),
    paths(
        api::list,
        api::submit,
        api::submit_batch,
        api::get,
        api::cancel,
        api::status,
        api::cancel_on_status_monitor,
        api::result,
        api::payload,
        api::attempts,
        sse::task_events,
        sse::all_events,
        kinds::list,
        kinds::get,
        kinds::put,
        kinds::delete,
        topics::list,
        topics::publish,
        topics::subscriptions,
        topics::get,
        topics::put,
        topics::delete,
        queues::list,
        queues::get,
        queues::put,
        queues::pause,
        queues::resume,
        leases::take,
        schedules::list,
        schedules::get,
        schedules::put,
        schedules::delete,
        schedules::pause,
        schedules::resume,
        schedules::run,
        leases::heartbeat,
        leases::complete,
        leases::end_many,
        leases::fail,
        leases::release,
        dead_letters::list,
        dead_letters::requeue_all,
        dead_letters::delete_all,
        dead_letters::count,
        workers::list,
        workflows::list,
        workflows::create,
        workflows::get,
        workflows::cancel,
        workflows::status,
        workflows::result,
        stats::get,
        stats::events,
        dead_letters::delete,
        dead_letters::requeue,
        tokens::list,
        tokens::create,
        tokens::revoke,
        audit::list,
        tokens::me,
        json,
        session::sign_in,
        session::sign_out,
        super::healthz,
        super::readyz,
        metrics::render,
    ),
    components(schemas(Problem, ServerSentEvent, TaskEvent, QueueEvent, KindEvent, WorkflowEvent, StreamReset, Stats)),
    modifiers(&Security, &CommonProblems),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "tasks", description = "Submit tasks, follow them, fetch their results, cancel them"),
        (name = "events", description = "Server-sent events, resumable with `Last-Event-ID`"),
        (name = "kinds", description = "Built-in kinds, and kinds declared without code"),
        (name = "topics", description = "Publish/subscribe: a message becomes a task per matching subscription"),
        (name = "queues", description = "Named queues: counts, limits, pause and resume"),
        (name = "schedules", description = "Recurring schedules: a task per tick of a cron pattern or an interval, once however many processes run"),
        (name = "pull workers", description = "Workers in any language lease tasks over HTTP"),
        (name = "dead letters", description = "Tasks that failed for good: list, requeue, delete"),
        (name = "workflows", description = "Steps that run as tasks when the steps they come after end: chains, fan-out and fan-in, maps"),
        (name = "access", description = "Tokens, browser sessions, the audit trail"),
        (name = "operations", description = "Health checks, metrics, this document"),
    ),
)]
struct ApiDoc;

/// The OpenAPI document of this server's HTTP API.
pub fn document() -> Value {
    let mut document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document always serializes");
    bound_unsigned(&mut document);
    headers_are_never_null(&mut document);
    // utoipa has no builder for `contentSchema`: what an event's `data` holds, once parsed.
    let events = ["TaskEvent", "QueueEvent", "KindEvent", "WorkflowEvent", "StreamReset", "Stats"]
        .map(|name| serde_json::json!({"$ref": format!("#/components/schemas/{name}")}));
    document["components"]["schemas"]["ServerSentEvent"]["properties"]["data"]["contentSchema"] =
        serde_json::json!({ "anyOf": events });
    document
}

/// Makes an optional header parameter's schema a plain string: utoipa writes an `Option` as
/// `["string", "null"]`, but a header is absent or a string, never `null`.
fn headers_are_never_null(document: &mut Value) {
    let Some(paths) = document["paths"].as_object_mut() else { return };
    for item in paths.values_mut() {
        let Some(operations) = item.as_object_mut() else { continue };
        for operation in operations.values_mut() {
            let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for parameter in parameters.iter_mut().filter(|p| p["in"] == "header") {
                if let Some(kinds) = parameter["schema"]["type"].as_array_mut() {
                    kinds.retain(|kind| kind != "null");
                    if let [only] = kinds.as_slice() {
                        parameter["schema"]["type"] = only.clone();
                    }
                }
            }
        }
    }
}

/// The document as served, built once.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    serde_json::to_string_pretty(&document()).expect("the OpenAPI document always serializes")
});

/// The reference page, rendered once from the document.
static REFERENCE_HTML: LazyLock<String> = LazyLock::new(|| render(&document()));

/// Gives every unsigned integer (`format: uint8` … `uint64`, as utoipa writes Rust's `u8` …
/// `u64`) the largest value its type holds, unless a smaller one is given: JSON Schema knows no
/// such formats, and without a bound a client could not tell that `4294967296` is too large for
/// a `u32`.
fn bound_unsigned(value: &mut Value) {
    match value {
        Value::Object(object) => {
            // utoipa spells them `u-int32`.
            let (format, largest) = match object.get("format").and_then(Value::as_str) {
                Some("uint8" | "u-int8") => ("uint8", u64::from(u8::MAX)),
                Some("uint16" | "u-int16") => ("uint16", u64::from(u16::MAX)),
                Some("uint32" | "u-int32") => ("uint32", u64::from(u32::MAX)),
                Some("uint64" | "u-int64") => ("uint64", u64::MAX),
                _ => ("", 0),
            };
            if !format.is_empty() {
                object.insert("format".into(), format.into());
                let narrower = object.get("maximum").and_then(Value::as_u64).is_some_and(|m| m <= largest);
                if !narrower {
                    object.insert("maximum".into(), largest.into());
                }
                object.entry("minimum").or_insert(0.into());
            }
            object.values_mut().for_each(bound_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub async fn json() -> Response {
    let mut response = DOCUMENT_JSON.as_str().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /api/docs`: the API reference, one HTML page with every operation.
pub async fn reference() -> Html<&'static str> {
    Html(REFERENCE_HTML.as_str())
}

/// Raw bytes of any content type: a raw payload, a result.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// One server-sent event, as a client reads it off `text/event-stream`.
pub struct ServerSentEvent;

impl PartialSchema for ServerSentEvent {
    fn schema() -> RefOr<Schema> {
        let string =
            |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
        ObjectBuilder::new()
            .description(Some(
                "One event of the stream: `id:` its place (resume after it with `Last-Event-ID`), `event:` a \
                 status, `progress`, `queue`, `kind`, `workflow` or `reset`, `data:` JSON: a `TaskEvent`, \
                 `QueueEvent`, `KindEvent`, `WorkflowEvent` or `StreamReset`",
            ))
            .property("id", string("The reader's place in the event streams: `<stream>=<ms>-<seq>` for each, comma-separated, with `.<index>` for an event before the last of its entry"))
            .property("event", string("A task status, `progress`, `queue`, `kind`, `workflow` or `reset`"))
            .property("data", string("The event, as JSON").content_media_type("application/json"))
            .required("data")
            .into()
    }
}

impl ToSchema for ServerSentEvent {}

/// A queue's name as paths and queries take it: `[a-z0-9][a-z0-9._-]{0,63}`
/// ([`app::model::is_queue_name`]).
pub struct QueueName;

impl PartialSchema for QueueName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(app::model::NAME_PATTERN)).into()
    }
}

impl ToSchema for QueueName {}

/// A topic's or subscription's name as paths take it: 1 to 100 of `A-Za-z0-9._-`.
pub struct TopicName;

impl PartialSchema for TopicName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z0-9._-]{1,100}$")).into()
    }
}

impl ToSchema for TopicName {}

/// The two ways to present a token: a bearer token, or the session cookie a browser got by
/// signing in with one.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cour_…")
                    .description(Some(
                        "An access token (`courier token create`, `POST /api/v1/tokens`), needed once access control is on",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::session::PLAIN_COOKIE,
                "A browser's session (`POST /auth/sign-in`); `__Host-courier` over HTTPS. Unsafe calls signed in \
                 by it must come from this server's own pages",
            ))),
        );
    }
}

/// Adds to each operation the problems any call may answer: `401`/`403` where a token is
/// needed, `503` for an API call (Redis away, no answer in time, a full body budget), `408` where
/// a body is read.
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let secured_by_default = openapi.security.as_ref().is_some_and(|s| !s.is_empty());
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = match &operation.security {
                    None => secured_by_default,
                    Some(requirements) => !requirements.is_empty() && !is_public(operation),
                };
                if secured && api {
                    add(
                        operation,
                        401,
                        "No token, or an unknown, revoked or expired one (`WWW-Authenticate: Bearer`)",
                    );
                    add(
                        operation,
                        403,
                        "The token lacks the scope this call needs, or reaches too few queues",
                    );
                }
                if operation.request_body.is_some() {
                    add(operation, 408, "The body paused for longer than `--body-timeout`");
                }
                if api {
                    add(
                        operation,
                        503,
                        "Redis is unreachable, the request took longer than `--request-timeout`, too many bodies \
                         are being received, or (`--durable-submit`) no replica confirmed a submission in time \
                         (`Retry-After`)",
                    );
                }
            }
        }
    }
}

/// Whether the operation says it needs nothing (`security: [{}]`).
fn is_public(operation: &Operation) -> bool {
    operation.security.as_ref().is_some_and(|requirements| {
        requirements
            .iter()
            .all(|r| serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty())))
    })
}

/// Adds a problem response of `status` unless the operation documents one already.
fn add(operation: &mut Operation, status: u16, description: &str) {
    let status = status.to_string();
    if operation.responses.responses.contains_key(&status) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", Content::new(Some(Ref::from_schema_name("Problem"))))
        .build();
    operation.responses.responses.insert(status, RefOr::T(response));
}

/// The reference page: every operation with its parameters, bodies and responses, then every
/// schema with its fields, as plain HTML with its own styles.
fn render(document: &Value) -> String {
    let mut page = String::with_capacity(256 * 1024);
    let title = text(&document["info"]["title"]);
    let version = text(&document["info"]["version"]);
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API reference</title><style>{STYLE}</style></head><body><main>\
         <h1>{title} API reference <small>v{version}</small></h1><p>{}</p>\
         <p>The document itself: <a href=\"/api/v1/openapi.json\"><code>/api/v1/openapi.json</code></a> \
         (OpenAPI {}).</p>",
        markup(&text(&document["info"]["description"])),
        escape(&text(&document["openapi"])),
    );
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    let tags = document["tags"].as_array().cloned().unwrap_or_default();
    page.push_str("<nav><ul>");
    for tag in &tags {
        let name = text(&tag["name"]);
        let _ = write!(page, "<li><a href=\"#tag-{}\">{}</a></li>", anchor(&name), escape(&name));
    }
    page.push_str("<li><a href=\"#schemas\">Schemas</a></li></ul></nav>");
    for tag in &tags {
        let name = text(&tag["name"]);
        let _ = write!(
            page,
            "<section><h2 id=\"tag-{}\">{}</h2><p>{}</p>",
            anchor(&name),
            escape(&name),
            markup(&text(&tag["description"]))
        );
        for (path, item) in &paths {
            for method in ["get", "put", "post", "delete", "patch"] {
                let operation = &item[method];
                let tagged =
                    operation["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == &tag["name"]));
                if tagged {
                    operation_html(&mut page, method, path, operation);
                }
            }
        }
        page.push_str("</section>");
    }
    page.push_str("<section><h2 id=\"schemas\">Schemas</h2>");
    if let Some(schemas) = document["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(
                page,
                "<article class=\"schema\"><h3 id=\"schema-{}\">{}</h3>",
                anchor(name),
                escape(name)
            );
            schema_html(&mut page, schema);
            page.push_str("</article>");
        }
    }
    page.push_str("</section></main></body></html>");
    page
}

fn operation_html(page: &mut String, method: &str, path: &str, operation: &Value) {
    let id = text(&operation["operationId"]);
    let _ = write!(
        page,
        "<article class=\"operation\" id=\"op-{}\"><h3><span class=\"method {method}\">{}</span> <code>{}</code></h3>\
         <p class=\"summary\">{}</p>",
        anchor(&id),
        method.to_uppercase(),
        escape(path),
        markup(&text(&operation["summary"])),
    );
    let description = text(&operation["description"]);
    if !description.is_empty() {
        let _ = write!(page, "<p>{}</p>", markup(&description));
    }
    match operation["security"].as_array() {
        Some(requirements) if requirements.iter().all(|r| r.as_object().is_some_and(|o| o.is_empty())) => {
            page.push_str("<p class=\"auth\">No token needed.</p>")
        }
        Some(requirements) => {
            let schemes: Vec<String> =
                requirements.iter().filter_map(Value::as_object).flat_map(|r| r.keys().cloned()).collect();
            let _ = write!(page, "<p class=\"auth\">Needs: {}.</p>", escape(&schemes.join(" or ")));
        }
        None => {}
    }
    if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
        page.push_str("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>schema</th><th></th></tr>");
        for parameter in parameters {
            let required = if parameter["required"] == true { " <em>required</em>" } else { "" };
            let _ = write!(
                page,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&text(&parameter["name"])),
                escape(&text(&parameter["in"])),
                schema_summary(&parameter["schema"]),
                markup(&text(&parameter["description"])),
            );
        }
        page.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        page.push_str("<h4>Request body</h4>");
        let description = text(&operation["requestBody"]["description"]);
        if !description.is_empty() {
            let _ = write!(page, "<p>{}</p>", markup(&description));
        }
        page.push_str("<ul>");
        for (media, body) in content {
            let _ =
                write!(page, "<li><code>{}</code>: {}</li>", escape(media), schema_summary(&body["schema"]));
        }
        page.push_str("</ul>");
    }
    if let Some(responses) = operation["responses"].as_object() {
        page.push_str("<h4>Responses</h4><table><tr><th>status</th><th></th><th>body</th></tr>");
        for (status, response) in responses {
            let mut bodies: Vec<String> = response["content"]
                .as_object()
                .map(|content| {
                    content
                        .iter()
                        .map(|(media, body)| {
                            format!("<code>{}</code> {}", escape(media), schema_summary(&body["schema"]))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let Some(headers) = response["headers"].as_object() {
                let names: Vec<String> =
                    headers.keys().map(|h| format!("<code>{}</code>", escape(h))).collect();
                bodies.push(format!("headers: {}", names.join(", ")));
            }
            let class = if status.starts_with('2') || status.starts_with('3') { "ok" } else { "problem" };
            let _ = write!(
                page,
                "<tr><td class=\"{class}\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(status),
                markup(&text(&response["description"])),
                bodies.join("<br>"),
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</article>");
}

fn schema_html(page: &mut String, schema: &Value) {
    let description = text(&schema["description"]);
    if !description.is_empty() {
        let _ = write!(page, "<p>{}</p>", markup(&description));
    }
    match schema["properties"].as_object() {
        Some(properties) => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            page.push_str("<table><tr><th>field</th><th>schema</th><th></th></tr>");
            for (name, property) in properties {
                let flag = if required.contains(&name.as_str()) { " <em>required</em>" } else { "" };
                let _ = write!(
                    page,
                    "<tr><td><code>{}</code>{flag}</td><td>{}</td><td>{}</td></tr>",
                    escape(name),
                    schema_summary(property),
                    markup(&text(&property["description"])),
                );
            }
            page.push_str("</table>");
        }
        None => {
            let _ = write!(page, "<p>{}</p>", schema_summary(schema));
        }
    }
}

/// A schema in a few words: its type or the schema it names, with its constraints.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), escape(name));
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(branches) = schema[combinator].as_array() {
            let parts: Vec<String> = branches.iter().map(schema_summary).collect();
            let joiner = if combinator == "allOf" { " and " } else { " | " };
            return parts.join(joiner);
        }
    }
    let words = match &schema["type"] {
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds.iter().map(text).collect::<Vec<_>>().join(" | "),
        _ => "any".to_string(),
    };
    let mut out = escape(&words);
    if !schema["items"].is_null() {
        let _ = write!(out, " of {}", schema_summary(&schema["items"]));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> =
            values.iter().map(|v| format!("<code>{}</code>", escape(&v.to_string()))).collect();
        let _ = write!(out, ": {}", values.join(", "));
    }
    if schema["additionalProperties"].is_object() {
        let _ = write!(out, " of {}", schema_summary(&schema["additionalProperties"]));
    }
    for (keyword, label) in [
        ("format", "format"),
        ("pattern", "pattern"),
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
    ] {
        if !schema[keyword].is_null() {
            let _ = write!(
                out,
                " <span class=\"constraint\">{label} <code>{}</code></span>",
                escape(&text(&schema[keyword]))
            );
        }
    }
    out
}

/// A JSON value as text: a string as it is, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped, with its `code spans` shown as code (the only markdown the descriptions use).
fn markup(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// `name` as an HTML id.
fn anchor(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}\
main{max-width:70rem;margin:0 auto;padding:1rem 2rem 4rem}h1 small{font-size:.5em;color:#667}\
nav ul{display:flex;flex-wrap:wrap;gap:.5rem 1.25rem;list-style:none;padding:0}\
article{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:.25rem 1rem 1rem;margin:1rem 0}\
h3 code{font-size:1rem}.method{display:inline-block;min-width:4.5rem;text-align:center;border-radius:4px;\
padding:.1rem .4rem;color:#fff;font-size:.85rem}.get{background:#2f6fdb}.post{background:#1f8a4c}\
.put{background:#a36a00}.delete{background:#c0392b}.patch{background:#6c4bb6}\
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;vertical-align:top;\
border-top:1px solid #eceff3;padding:.3rem .5rem}td.ok{color:#1f8a4c;font-weight:600}\
td.problem{color:#c0392b;font-weight:600}.constraint{color:#667}.auth{color:#556;font-size:.9rem}\
code{font-family:ui-monospace,monospace;background:#f0f2f5;padding:0 .2rem;border-radius:3px}\
em{color:#a36a00;font-style:normal;font-size:.8rem}";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the document, as (method, path) pairs.
    fn documented() -> Vec<(String, String)> {
        let document = document();
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"] {
                if item.get(method).is_some() {
                    operations.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    /// Routes that are not part of the API: the reference page (HTML about the API) and the
    /// catch-all that answers `404` for any other `/api/…` path.
    const UNDOCUMENTED: [&str; 2] = ["/api/docs", "/api/{*rest}"];

    #[test]
    fn every_route_of_the_router_is_in_the_document() {
        let routes = super::super::auth::tests::routes_in_router();
        assert!(routes.len() > 40, "the router's routes were not found: {routes:?}");
        let documented = documented();
        for (method, path) in routes {
            if UNDOCUMENTED.contains(&path.as_str()) {
                continue;
            }
            assert!(
                documented.contains(&(method.clone(), path.clone())),
                "{method} {path} is served but not in the OpenAPI document: annotate its handler with \
                 #[utoipa::path] and list it in http/openapi.rs"
            );
        }
    }

    #[test]
    fn every_operation_of_the_document_is_served() {
        let routes = super::super::auth::tests::routes_in_router();
        for (method, path) in documented() {
            assert!(
                routes.contains(&(method.clone(), path.clone())),
                "{method} {path} is in the OpenAPI document but not in the router"
            );
        }
    }

    #[test]
    fn every_error_response_is_a_problem() {
        let document = document();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        let content = response["content"].as_object().unwrap_or_else(|| {
                            panic!("{method} {path} {status} has no body: every error is a problem")
                        });
                        let keys: Vec<&String> = content.keys().collect();
                        assert_eq!(keys, ["application/problem+json"], "{method} {path} {status}");
                        assert_eq!(
                            content["application/problem+json"]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let document = document();
        let mut ids = Vec::new();
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let id = operation["operationId"].as_str().expect("every operation has an id").to_string();
                assert!(!ids.contains(&id), "operationId `{id}` twice");
                ids.push(id);
            }
        }
    }

    #[test]
    fn unsigned_integers_are_bounded_by_their_type() {
        let mut schema = serde_json::json!({"properties": {
            "a": {"type": "integer", "format": "uint32", "minimum": 0},
            "b": {"type": ["integer", "null"], "format": "uint8", "maximum": 100},
            "c": {"type": "integer", "format": "int32"},
        }});
        bound_unsigned(&mut schema);
        assert_eq!(schema["properties"]["a"]["maximum"], u32::MAX);
        assert_eq!(schema["properties"]["b"]["maximum"], 100);
        assert_eq!(schema["properties"]["b"]["minimum"], 0);
        assert!(schema["properties"]["c"]["maximum"].is_null());
    }

    #[test]
    fn the_reference_page_lists_every_operation_and_escapes_what_it_shows() {
        let page = REFERENCE_HTML.as_str();
        for (method, path) in documented() {
            assert!(
                page.contains(&format!("{method}</span> <code>{}</code>", escape(&path))),
                "{method} {path}"
            );
        }
        for fetch in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!page.contains(fetch), "the page fetches nothing: it holds `{fetch}`");
        }
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(markup("say `<b>`"), "say <code>&lt;b&gt;</code>");
    }
}
