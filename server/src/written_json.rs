//! JSON written by hand for what the server writes most: every task event's SSE frame, and the
//! answers of the busiest routes (a task's view, a batch's, a grant of leases). Byte for byte
//! what serde_json writes for the same value (the tests hold each writer to it), without serde's
//! work for each field: its name escaped character by character, and a call for each piece.
//! That work was about half of writing a task event or a view (docs/benchmark-notes.md,
//! "Forty-fifth step"). Each writer names every field of its type, so a field added to the type
//! does not build until it is written here too.

use app::model::{BatchAccepted, LeaseGrant, LeaseList, TaskEvent, TaskView};
use uuid::Uuid;

/// A value that writes itself as JSON, as serde_json would write it.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

/// `text` as a JSON string: quoted as it is when it holds nothing JSON escapes (a quote, a
/// backslash, a control character; serde_json escapes no others), else escaped by serde_json.
fn text(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("a string always serializes");
    }
}

/// `text` as a JSON string, or `null`.
fn text_or_null(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// An id as a JSON string (hyphenated, lower case: serde's form of a `Uuid`).
fn id(out: &mut Vec<u8>, id: &Uuid) {
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn number_or_null(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => number(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// `,"name":` then what `value` writes, when the field is there (serde's
/// `skip_serializing_if = "Option::is_none"`).
fn optional<T: ?Sized>(out: &mut Vec<u8>, name: &[u8], value: Option<&T>, write: fn(&mut Vec<u8>, &T)) {
    if let Some(value) = value {
        out.extend_from_slice(name);
        write(out, value);
    }
}

/// `[` each `]`.
fn array<T: WriteJson>(out: &mut Vec<u8>, items: &[T]) {
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        item.write_json(out);
    }
    out.push(b']');
}

impl WriteJson for TaskEvent {
    fn write_json(&self, out: &mut Vec<u8>) {
        let TaskEvent { task_id, kind, queue, status, attempt, progress, error, at, workflow_id } = self;
        out.extend_from_slice(b"{\"task_id\":");
        id(out, task_id);
        out.extend_from_slice(b",\"kind\":");
        text(out, kind);
        out.extend_from_slice(b",\"queue\":");
        text(out, queue);
        out.extend_from_slice(b",\"status\":");
        text(out, status.as_str());
        out.extend_from_slice(b",\"attempt\":");
        number(out, *attempt);
        out.extend_from_slice(b",\"progress\":");
        number_or_null(out, *progress);
        out.extend_from_slice(b",\"error\":");
        text_or_null(out, error.as_deref());
        out.extend_from_slice(b",\"at\":");
        text(out, at);
        optional(out, b",\"workflow_id\":", workflow_id.as_ref(), id);
        out.push(b'}');
    }
}

impl WriteJson for TaskView {
    fn write_json(&self, out: &mut Vec<u8>) {
        let TaskView {
            id: task_id,
            kind,
            status,
            attempts,
            max_attempts,
            progress,
            created_at,
            updated_at,
            started_at,
            finished_at,
            payload_bytes,
            error,
            result_url,
            next_run_at,
            subscription,
            expires_at,
            queue,
            trace_id,
            workflow_id,
            workflow_step,
        } = self;
        out.extend_from_slice(b"{\"id\":");
        id(out, task_id);
        out.extend_from_slice(b",\"kind\":");
        text(out, kind);
        out.extend_from_slice(b",\"status\":");
        text(out, status.as_str());
        out.extend_from_slice(b",\"attempts\":");
        number(out, *attempts);
        out.extend_from_slice(b",\"max_attempts\":");
        number(out, *max_attempts);
        out.extend_from_slice(b",\"progress\":");
        number_or_null(out, *progress);
        out.extend_from_slice(b",\"created_at\":");
        text(out, created_at);
        out.extend_from_slice(b",\"updated_at\":");
        text(out, updated_at);
        out.extend_from_slice(b",\"started_at\":");
        text_or_null(out, started_at.as_deref());
        out.extend_from_slice(b",\"finished_at\":");
        text_or_null(out, finished_at.as_deref());
        out.extend_from_slice(b",\"payload_bytes\":");
        number(out, *payload_bytes);
        out.extend_from_slice(b",\"error\":");
        text_or_null(out, error.as_deref());
        out.extend_from_slice(b",\"result_url\":");
        text_or_null(out, result_url.as_deref());
        optional(out, b",\"next_run_at\":", next_run_at.as_deref(), text);
        optional(out, b",\"subscription\":", subscription.as_deref(), text);
        optional(out, b",\"expires_at\":", expires_at.as_deref(), text);
        out.extend_from_slice(b",\"queue\":");
        text(out, queue);
        optional(out, b",\"trace_id\":", trace_id.as_deref(), text);
        optional(out, b",\"workflow_id\":", workflow_id.as_ref(), id);
        optional(out, b",\"workflow_step\":", workflow_step.as_deref(), text);
        out.push(b'}');
    }
}

impl WriteJson for BatchAccepted {
    fn write_json(&self, out: &mut Vec<u8>) {
        let BatchAccepted { tasks } = self;
        out.extend_from_slice(b"{\"tasks\":");
        array(out, tasks);
        out.push(b'}');
    }
}

impl WriteJson for LeaseGrant {
    fn write_json(&self, out: &mut Vec<u8>) {
        let LeaseGrant { token, task, payload, payload_url, expires_at, traceparent } = self;
        out.extend_from_slice(b"{\"token\":");
        text(out, token);
        out.extend_from_slice(b",\"task\":");
        task.write_json(out);
        // A payload is JSON already, checked when it was submitted: written as it is, as serde
        // writes a `RawValue`.
        optional(out, b",\"payload\":", payload.as_deref(), |out, raw| {
            out.extend_from_slice(raw.get().as_bytes())
        });
        optional(out, b",\"payload_url\":", payload_url.as_deref(), text);
        out.extend_from_slice(b",\"expires_at\":");
        text(out, expires_at);
        optional(out, b",\"traceparent\":", traceparent.as_deref(), text);
        out.push(b'}');
    }
}

impl WriteJson for LeaseList {
    fn write_json(&self, out: &mut Vec<u8>) {
        let LeaseList { leases, ends } = self;
        out.extend_from_slice(b"{\"leases\":");
        array(out, leases);
        // Ends come with a lease request now and then, and some carry a problem: serde's.
        optional(out, b",\"ends\":", ends.as_ref(), |out, ends| {
            serde_json::to_writer(out, ends).expect("ends always serialize")
        });
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::model::{LeaseEndReply, Problem, Status};
    use serde::Serialize;

    /// Each value's JSON, ours and serde's, as text (a difference shows where it is).
    fn both<T: WriteJson + Serialize>(value: &T) -> (String, String) {
        let mut ours = Vec::new();
        value.write_json(&mut ours);
        (String::from_utf8(ours).unwrap(), serde_json::to_string(value).unwrap())
    }

    /// Texts JSON writes as they are (other scripts, the delete character), and some it escapes,
    /// each kind of escape alone in a text of its own.
    const TEXTS: [&str; 11] = [
        "",
        "naïve → ok ✓ 😀",
        "del \u{7f}",
        "a \"quoted\" word",
        "back\\slash",
        "line\nbreak",
        "tab\t",
        "nul \u{0}",
        "unit \u{1f} separator",
        "\u{1}\u{10}\r controls",
        "</script>",
    ];

    fn event() -> TaskEvent {
        TaskEvent {
            task_id: Uuid::parse_str("01a251a8-1a2c-70cf-a1b7-6c7cdb4d0f5c").unwrap(),
            kind: "echo".into(),
            queue: "default".into(),
            status: Status::Running,
            attempt: 1,
            progress: None,
            error: None,
            at: "2026-12-07T17:58:20.973Z".into(),
            workflow_id: None,
        }
    }

    fn view() -> TaskView {
        TaskView {
            id: Uuid::now_v7(),
            kind: "echo".into(),
            status: Status::Queued,
            attempts: 0,
            max_attempts: 5,
            progress: None,
            created_at: "2026-12-07T17:58:20.973Z".into(),
            updated_at: "2026-12-07T17:58:20.973Z".into(),
            started_at: None,
            finished_at: None,
            payload_bytes: 0,
            error: None,
            result_url: None,
            next_run_at: None,
            subscription: None,
            expires_at: None,
            queue: "default".into(),
            trace_id: None,
            workflow_id: None,
            workflow_step: None,
        }
    }

    /// A view with every field set, each to `text` where it is text.
    fn full_view(text: &str) -> TaskView {
        TaskView {
            kind: text.into(),
            status: Status::Failed,
            attempts: 3,
            max_attempts: u32::MAX,
            progress: Some(255),
            created_at: text.into(),
            updated_at: text.into(),
            started_at: Some(text.into()),
            finished_at: Some(text.into()),
            payload_bytes: u64::MAX,
            error: Some(text.into()),
            result_url: Some(text.into()),
            next_run_at: Some(text.into()),
            subscription: Some(text.into()),
            expires_at: Some(text.into()),
            queue: text.into(),
            trace_id: Some(text.into()),
            workflow_id: Some(Uuid::now_v7()),
            workflow_step: Some(text.into()),
            ..view()
        }
    }

    #[test]
    fn a_task_event_is_written_as_serde_writes_it() {
        let mut events = vec![event()];
        events.extend(Status::ALL.map(|status| TaskEvent { status, ..event() }));
        events.extend([0, 9, 10, u32::MAX].map(|attempt| TaskEvent { attempt, ..event() }));
        events.extend([0, 7, 100, 255].map(|progress| TaskEvent { progress: Some(progress), ..event() }));
        events.push(TaskEvent { workflow_id: Some(Uuid::now_v7()), ..event() });
        for text in TEXTS {
            events.push(TaskEvent { error: Some(text.into()), ..event() });
            events.push(TaskEvent { kind: text.into(), queue: text.into(), at: text.into(), ..event() });
        }
        for event in &events {
            let (ours, serde) = both(event);
            assert_eq!(ours, serde);
        }
    }

    #[test]
    fn a_task_view_is_written_as_serde_writes_it() {
        let mut views = vec![view()];
        views.extend(Status::ALL.map(|status| TaskView { status, ..view() }));
        views.extend(TEXTS.map(full_view));
        // Each field that may be left out, alone.
        views.push(TaskView { next_run_at: Some("2026-12-08T00:00:00.000Z".into()), ..view() });
        views.push(TaskView { subscription: Some("orders/audit".into()), ..view() });
        views.push(TaskView { expires_at: Some("2026-12-08T00:00:00.000Z".into()), ..view() });
        views.push(TaskView { trace_id: Some("fd4c277451ad0034e6bd92c5bb15799c".into()), ..view() });
        views.push(TaskView { workflow_id: Some(Uuid::now_v7()), ..view() });
        views.push(TaskView { workflow_step: Some("resize[3]".into()), ..view() });
        for view in &views {
            let (ours, serde) = both(view);
            assert_eq!(ours, serde);
        }
        let batch = BatchAccepted { tasks: views };
        let (ours, serde) = both(&batch);
        assert_eq!(ours, serde);
        let (ours, serde) = both(&BatchAccepted { tasks: Vec::new() });
        assert_eq!((ours.as_str(), serde.as_str()), ("{\"tasks\":[]}", "{\"tasks\":[]}"));
    }

    #[test]
    fn a_grant_of_leases_is_written_as_serde_writes_it() {
        let raw = |json: &str| serde_json::value::RawValue::from_string(json.into()).unwrap();
        let grant = |payload: Option<&str>| LeaseGrant {
            token: "c29tZSB0b2tlbg.bWFj".into(),
            task: view(),
            payload: payload.map(raw),
            payload_url: None,
            expires_at: "2026-12-07T17:58:50.973Z".into(),
            traceparent: None,
        };
        let full = LeaseGrant {
            task: full_view("a \"quoted\" word"),
            payload_url: Some("/api/v1/tasks/x/payload".into()),
            traceparent: Some("00-fd4c277451ad0034e6bd92c5bb15799c-870ba028c3941168-01".into()),
            ..grant(Some("{\"n\": 1, \"s\": \"ä\\n\"}"))
        };
        let lists = [
            LeaseList { leases: Vec::new(), ends: None },
            LeaseList { leases: vec![grant(None)], ends: None },
            LeaseList { leases: vec![grant(Some("[1,2]")), grant(Some("\"text\"")), full], ends: None },
            LeaseList {
                leases: vec![grant(Some("null"))],
                ends: Some(vec![
                    LeaseEndReply { token: "t1".into(), status: 200, problem: None },
                    LeaseEndReply {
                        token: "t2".into(),
                        status: 409,
                        problem: Some(Problem {
                            kind: "about:blank".into(),
                            title: "Conflict".into(),
                            status: 409,
                            detail: Some("the lease was \"taken over\"".into()),
                            errors: vec!["one".into()],
                        }),
                    },
                ]),
            },
            LeaseList { leases: Vec::new(), ends: Some(Vec::new()) },
        ];
        for list in &lists {
            let (ours, serde) = both(list);
            assert_eq!(ours, serde);
        }
    }
}
