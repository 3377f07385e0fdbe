//! JSON written by hand for what the server writes most: every task event's SSE frame, and the
//! answers of the busiest routes (a task's view, a batch's, a grant of leases). Byte for byte
//! what serde_json writes for the same value (the tests hold each writer to it), without serde's
//! work for each field: its name escaped character by character, and a call for each piece.
//! That work was more than half of writing a task event or a view (docs/benchmark-notes.md,
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

/// An id as a JSON string (hyphenated, lower case: serde's form of a `Uuid`).
fn id(out: &mut Vec<u8>, id: &Uuid) {
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A field's name as JSON writes it before its value, `"name":` (the names here are plain
/// words, which JSON writes unescaped).
macro_rules! key {
    ($name:literal) => {
        concat!("\"", $name, "\":").as_bytes()
    };
}

/// A JSON object being written: its fields in the order given.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Object<'o> {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Starts the field whose `key` (its name quoted, and the colon: `key!`) is given: what
    /// follows in `out` is its value.
    #[inline]
    fn key(&mut self, key: &[u8]) -> &mut Vec<u8> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.extend_from_slice(key);
        self.out
    }

    #[inline]
    fn text(&mut self, key: &[u8], value: &str) {
        text(self.key(key), value);
    }

    #[inline]
    fn id(&mut self, key: &[u8], value: &Uuid) {
        id(self.key(key), value);
    }

    #[inline]
    fn number(&mut self, key: &[u8], value: impl itoa::Integer) {
        number(self.key(key), value);
    }

    #[inline]
    fn value(&mut self, key: &[u8], value: &impl WriteJson) {
        value.write_json(self.key(key));
    }

    /// The field with `write`'s value, or `null` (an `Option` serde writes whole).
    #[inline]
    fn or_null<T>(&mut self, key: &[u8], value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
        let out = self.key(key);
        match value {
            Some(value) => write(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// The field with `write`'s value, left out when there is none (serde's
    /// `skip_serializing_if = "Option::is_none"`).
    #[inline]
    fn unless_none<T>(&mut self, key: &[u8], value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
        if let Some(value) = value {
            write(self.key(key), value);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// `[` each `]`.
impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (n, item) in self.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

impl WriteJson for TaskEvent {
    fn write_json(&self, out: &mut Vec<u8>) {
        let TaskEvent { task_id, kind, queue, status, attempt, progress, error, at, workflow_id } = self;
        let mut event = Object::open(out);
        event.id(key!("task_id"), task_id);
        event.text(key!("kind"), kind);
        event.text(key!("queue"), queue);
        event.text(key!("status"), status.as_str());
        event.number(key!("attempt"), *attempt);
        event.or_null(key!("progress"), *progress, number);
        event.or_null(key!("error"), error.as_deref(), text);
        event.text(key!("at"), at);
        event.unless_none(key!("workflow_id"), workflow_id.as_ref(), id);
        event.close();
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
        let mut view = Object::open(out);
        view.id(key!("id"), task_id);
        view.text(key!("kind"), kind);
        view.text(key!("status"), status.as_str());
        view.number(key!("attempts"), *attempts);
        view.number(key!("max_attempts"), *max_attempts);
        view.or_null(key!("progress"), *progress, number);
        view.text(key!("created_at"), created_at);
        view.text(key!("updated_at"), updated_at);
        view.or_null(key!("started_at"), started_at.as_deref(), text);
        view.or_null(key!("finished_at"), finished_at.as_deref(), text);
        view.number(key!("payload_bytes"), *payload_bytes);
        view.or_null(key!("error"), error.as_deref(), text);
        view.or_null(key!("result_url"), result_url.as_deref(), text);
        view.unless_none(key!("next_run_at"), next_run_at.as_deref(), text);
        view.unless_none(key!("subscription"), subscription.as_deref(), text);
        view.unless_none(key!("expires_at"), expires_at.as_deref(), text);
        view.text(key!("queue"), queue);
        view.unless_none(key!("trace_id"), trace_id.as_deref(), text);
        view.unless_none(key!("workflow_id"), workflow_id.as_ref(), id);
        view.unless_none(key!("workflow_step"), workflow_step.as_deref(), text);
        view.close();
    }
}

impl WriteJson for BatchAccepted {
    fn write_json(&self, out: &mut Vec<u8>) {
        let BatchAccepted { tasks } = self;
        let mut batch = Object::open(out);
        batch.value(key!("tasks"), tasks);
        batch.close();
    }
}

impl WriteJson for LeaseGrant {
    fn write_json(&self, out: &mut Vec<u8>) {
        let LeaseGrant { token, task, payload, payload_url, expires_at, traceparent } = self;
        let mut grant = Object::open(out);
        grant.text(key!("token"), token);
        grant.value(key!("task"), task);
        // A payload is JSON already, checked when it was submitted: written as it is, as serde
        // writes a `RawValue`.
        grant.unless_none(key!("payload"), payload.as_deref(), |out, raw| {
            out.extend_from_slice(raw.get().as_bytes())
        });
        grant.unless_none(key!("payload_url"), payload_url.as_deref(), text);
        grant.text(key!("expires_at"), expires_at);
        grant.unless_none(key!("traceparent"), traceparent.as_deref(), text);
        grant.close();
    }
}

impl WriteJson for LeaseList {
    fn write_json(&self, out: &mut Vec<u8>) {
        let LeaseList { leases, ends } = self;
        let mut list = Object::open(out);
        list.value(key!("leases"), leases);
        // Ends come with a lease request now and then, and some carry a problem: serde's.
        list.unless_none(key!("ends"), ends.as_ref(), |out, ends| {
            serde_json::to_writer(out, ends).expect("ends always serialize")
        });
        list.close();
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
