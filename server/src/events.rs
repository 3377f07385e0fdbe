//! Task events: each queue has a stream of events (and kinds and workflows one each); every
//! process tails them all (one blocking read) and fans each event out to its server-sent-event
//! clients. A follower's SSE id is its [`Cursor`], a place in each stream, so a client that
//! reconnects with `Last-Event-ID` resumes on any instance without losing an event, or is told
//! with a `reset` that what it missed is no longer kept.

mod cursor;

pub use cursor::{Cursor, KINDS_CHANNEL, Position, WORKFLOWS_CHANNEL, is_channel};

use crate::redis_client::{Conn, RedisClient, client_command, read_streams};
use crate::{
    queues::Queues,
    store::{Keys, TaskRecord, rfc3339, stream_key},
    written_json::WriteJson,
};
use app::model::{
    KIND_EVENT, KindEvent, QUEUE_EVENT, QueueEvent, RESET_EVENT, ResetReason, Status, StreamReset, TaskEvent,
    workflow::{WORKFLOW_EVENT, WorkflowEvent},
};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use redis::{Value, streams::StreamRangeReply};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    future::Future,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

/// The parts of a task event in its queue's events stream, in the order its one writer gives
/// them (the Lua helper `emit_event`, queue/events.lua): separated by the unit separator, the
/// error last (it may hold anything but the record separator). `workflow` is the workflow whose
/// step the task is, on the events after which it moves on (empty otherwise).
pub const TASK_EVENT_PARTS: [&str; 9] =
    ["event", "task", "kind", "status", "attempt", "progress", "at", "workflow", "error"];
/// The one field of an entry of task events: the events of one script call, in order, separated
/// by the record separator.
pub(crate) const TASK_EVENTS_FIELD: &str = "e";
/// What separates the events of a `TASK_EVENTS_FIELD`.
const EVENT_SEPARATOR: u8 = 0x1e;
/// What separates the parts of a task event (`TASK_EVENT_PARTS`).
const PART_SEPARATOR: u8 = 0x1f;
/// The field of an entry that is one task event, as versions before the field of many wrote them
/// (one such field per event): read still, so a stream they wrote reads on after an upgrade.
const TASK_EVENT_FIELD: &str = "t";
/// The most events one entry holds (`EVENTS_PER_ENTRY` of queue/events.lua; a unit test compares
/// them).
pub(crate) const EVENTS_PER_ENTRY: usize = 32;

/// A task event as the scripts write it (`emit_event`, queue/events.lua): its parts, in the order
/// of `TASK_EVENT_PARTS`, joined by the unit separator (a record separator in the error becomes a
/// space). For the one writer outside Lua: a plain enqueue's `queued` events (queue/enqueue.rs).
pub(crate) fn task_event_value(parts: [&str; TASK_EVENT_PARTS.len()]) -> String {
    let mut value = String::with_capacity(parts.iter().map(|part| part.len() + 1).sum());
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            value.push(char::from(PART_SEPARATOR));
        }
        match n == parts.len() - 1 && part.contains(char::from(EVENT_SEPARATOR)) {
            // The error may not hold the separator of events.
            true => value.push_str(&part.replace(char::from(EVENT_SEPARATOR), " ")),
            false => value.push_str(part),
        }
    }
    value
}

/// The value of an entry's `TASK_EVENTS_FIELD`: `events` (`task_event_value`s), in order.
pub(crate) fn task_events_value(events: &[String]) -> String {
    events.join("\u{1e}")
}

/// How `count` events written together are split into entries (`flush_events`, queue/events.lua):
/// evenly, over as few entries of at most `EVENTS_PER_ENTRY` as hold them. The ranges of events
/// each entry holds, in order.
pub(crate) fn event_entries(count: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let entries = count.div_ceil(EVENTS_PER_ENTRY).max(1);
    let per_entry = count.div_ceil(entries).max(1);
    (0..count).step_by(per_entry).map(move |first| first..(first + per_entry).min(count))
}

/// Appends `events` (`task_event_value`s, in order) to the task events stream `stream` as
/// `flush_events` (queue/events.lua) does: split by `event_entries`, each entry capping the stream
/// near `maxlen` events' worth of entries its size. For the writers outside Lua (queue/enqueue.rs,
/// queue/finish/plain.rs). Their replies (each entry's id) are not marked `ignore()`: the callers
/// read the replies before them, or a transaction's answers by place.
pub(crate) fn append_task_events(pipe: &mut redis::Pipeline, stream: &str, maxlen: usize, events: &[String]) {
    for entry in event_entries(events.len()) {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(maxlen.div_ceil(entry.len()))
            .arg("*")
            .arg(TASK_EVENTS_FIELD)
            .arg(task_events_value(&events[entry]));
    }
}

/// How many events a slow SSE client may fall behind before it catches up from Redis.
const FANOUT_BUFFER: usize = 4096;
/// How many entries one read of the tail takes (the process's one reader of every stream).
const TAIL_READ: usize = 1000;
/// About how many events one catch-up read brings a follower: what a follower that fell behind
/// holds at once, until its client has taken them ([`catch_up_entries`]).
const CATCH_UP_EVENTS: usize = 256;
/// How many times in a row a follower's Redis call may fail before its stream is closed (its
/// client then reconnects with `Last-Event-ID`); the pauses between them double up to 5 s.
const FOLLOW_ATTEMPTS: u32 = 8;

/// An event with its place: its stream and its position there.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The stream it is in: its queue's (a task's, a queue's event), `_kinds` or `_workflows`.
    pub channel: Arc<str>,
    /// Its entry id in that stream.
    pub position: Position,
    /// The SSE `event` name: a task's new status, `progress`, or `queue`.
    pub name: String,
    pub event: Pushed,
    /// The SSE frame made for the first follower it was sent to ([`StoredEvent::frame_for`]),
    /// made once however many clients it is sent to. (A process whose events nobody follows, a
    /// pull workers' server most of the time, makes no `StoredEvent` at all: `Events::tail`.)
    first_frame: OnceLock<Bytes>,
}

/// Two events are the same event whether or not either was serialized yet.
impl PartialEq for StoredEvent {
    fn eq(&self, other: &StoredEvent) -> bool {
        (&self.channel, self.position, &self.name, &self.event)
            == (&other.channel, other.position, &other.name, &other.event)
    }
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Pushed {
    Task(TaskEvent),
    /// A queue was paused or resumed.
    Queue(QueueEvent),
    /// A kind was declared, replaced or deleted.
    Kind(KindEvent),
    /// A workflow or one of its steps changed; with the queues of its steps, which a follower
    /// must all reach to see it.
    Workflow(WorkflowEvent, Vec<String>),
}

/// A task event that names the workflow whose step the task is, and its place.
#[derive(Clone, Debug)]
pub struct StepEvent {
    pub workflow: Uuid,
    /// The stream it is in (its task's queue's).
    pub channel: Arc<str>,
    pub position: Position,
}

impl StoredEvent {
    fn new(channel: Arc<str>, position: Position, name: String, event: Pushed) -> StoredEvent {
        StoredEvent { channel, position, name, event, first_frame: OnceLock::new() }
    }

    /// The whole SSE event for a follower whose `id` is this: `id`, then the `event` and `data`
    /// lines every follower is sent the same, then the blank line that ends it. The first
    /// follower's frame is kept, and a follower with the same id is sent that very frame:
    /// followers of the same streams that keep up have the same id, so an event costs them one
    /// frame between them, not one each, and a client that falls behind holds a reference to
    /// it, not a copy. A follower with an id of its own gets a copy of the lines under it.
    fn frame_for(&self, id: &str) -> Bytes {
        let first = self.first_frame.get_or_init(|| {
            sse_frame(id, &self.name, |data| match &self.event {
                Pushed::Task(event) => {
                    event.write_json(data);
                    Ok(())
                }
                Pushed::Queue(event) => serde_json::to_writer(data, event),
                Pushed::Kind(event) => serde_json::to_writer(data, event),
                Pushed::Workflow(event, _) => serde_json::to_writer(data, event),
            })
        });
        let after_id = first.strip_prefix(b"id: ").and_then(|line| line.strip_prefix(id.as_bytes()));
        if after_id.is_some_and(|rest| rest.starts_with(b"\n")) {
            first.clone()
        } else {
            frame_of(id, split_frame(first).1)
        }
    }

    /// The task event, if this is one.
    pub fn task(&self) -> Option<&TaskEvent> {
        match &self.event {
            Pushed::Task(event) => Some(event),
            Pushed::Queue(_) | Pushed::Kind(_) | Pushed::Workflow(..) => None,
        }
    }

    /// The workflow event, if this is one.
    pub fn workflow(&self) -> Option<&WorkflowEvent> {
        match &self.event {
            Pushed::Workflow(event, _) => Some(event),
            _ => None,
        }
    }

    /// The queues the event is about; none for one about no queue (a kind's).
    pub fn queues(&self) -> &[String] {
        match &self.event {
            Pushed::Task(event) => std::slice::from_ref(&event.queue),
            Pushed::Queue(event) => std::slice::from_ref(&event.queue),
            Pushed::Kind(_) => &[],
            Pushed::Workflow(_, queues) => queues,
        }
    }

    /// Reads an entry of the events stream in the form Courier wrote before task events were
    /// one field (a stream keeps its entries across an upgrade), or a queue's, kind's or
    /// workflow's entry, from its field/value list as Redis sent it; `None` if it is not a
    /// well-formed event. An old task entry has the fields `event`, `task`, `kind`, `queue`,
    /// `status`, `attempt`, `progress`, `error`, `at` and `workflow`. A queue's entry
    /// (`Queue::set_paused`) has `event` = `queue`, `queue`, `status` (`paused` or `active`) and
    /// `at`; a kind's (`Kinds::put`, `Kinds::delete`) `event` = `kind`, `kind`, `status`
    /// (`declared` or `deleted`) and `at`; a workflow's (`workflows.rs`) `event` = `workflow`,
    /// `workflow`, `step`, `status`, `error`, `at` and `queue` (the queues of its steps,
    /// comma-separated).
    fn from_fields(channel: &Arc<str>, position: Position, fields: &[Value]) -> Option<StoredEvent> {
        let (
            mut name,
            mut task,
            mut kind,
            mut queue,
            mut status,
            mut attempt,
            mut progress,
            mut error,
            mut at,
            mut workflow,
            mut step,
        ) = (None, None, "", None, None, 0, None, None, None, None, None);
        for pair in fields.chunks_exact(2) {
            let (Value::BulkString(field), Value::BulkString(value)) = (&pair[0], &pair[1]) else {
                continue;
            };
            let Ok(value) = std::str::from_utf8(value) else { continue };
            let value = Some(value).filter(|v| !v.is_empty());
            match field.as_slice() {
                b"event" => name = value,
                b"task" => task = value,
                b"kind" => kind = value.unwrap_or_default(),
                b"queue" => queue = value,
                b"status" => status = value,
                b"attempt" => attempt = value.and_then(|a| a.parse().ok()).unwrap_or(0),
                b"progress" => progress = value.and_then(|p| p.parse().ok()),
                b"error" => error = value,
                b"at" => at = value,
                b"workflow" => workflow = value,
                b"step" => step = value,
                _ => {}
            }
        }
        let at = rfc3339(at?.parse().ok()?);
        if name? == QUEUE_EVENT {
            let paused = status? == "paused";
            let event = Pushed::Queue(QueueEvent { queue: queue?.to_string(), paused, at });
            return Some(StoredEvent::new(channel.clone(), position, QUEUE_EVENT.into(), event));
        }
        if name? == WORKFLOW_EVENT {
            let queues = queue.unwrap_or_default().split(',').map(str::to_string).collect();
            let event = WorkflowEvent {
                workflow_id: workflow?.parse().ok()?,
                step: step.map(str::to_string),
                status: status?.to_string(),
                error: error.map(str::to_string),
                at,
            };
            let event = Pushed::Workflow(event, queues);
            return Some(StoredEvent::new(channel.clone(), position, WORKFLOW_EVENT.into(), event));
        }
        if name? == KIND_EVENT {
            let declared = status? == "declared";
            let event = Pushed::Kind(KindEvent { kind: kind.to_string(), declared, at });
            return Some(StoredEvent::new(channel.clone(), position, KIND_EVENT.into(), event));
        }
        Some(StoredEvent::new(
            channel.clone(),
            position,
            name?.to_string(),
            Pushed::Task(TaskEvent {
                task_id: task?.parse().ok()?,
                kind: kind.to_string(),
                // Written before queues had names: the default queue's.
                queue: queue.unwrap_or(app::model::DEFAULT_QUEUE).to_string(),
                status: Status::parse(status?)?,
                attempt,
                progress,
                error: error.map(str::to_string),
                at,
                workflow_id: workflow.and_then(|w| w.parse().ok()),
            }),
        ))
    }

    /// Reads a task's entry of `channel`'s stream (its queue's) from its one field's value
    /// (`TASK_EVENT_PARTS`); `None` if it is not well formed.
    fn from_task_entry(channel: &Arc<str>, position: Position, value: &[u8]) -> Option<StoredEvent> {
        let parts = TaskParts::read(value)?;
        let event = TaskEvent {
            task_id: parts.task_id,
            kind: parts.kind.to_string(),
            queue: String::from(&**channel),
            status: parts.status,
            attempt: parts.attempt,
            progress: parts.progress,
            error: parts.error.map(str::to_string),
            at: rfc3339(parts.at_ms),
            workflow_id: parts.workflow_id,
        };
        Some(StoredEvent::new(channel.clone(), position, parts.name.to_string(), Pushed::Task(event)))
    }

    /// The event that stands for a task's current state, at `position` in its queue's stream.
    pub fn snapshot(record: &TaskRecord, position: Position) -> StoredEvent {
        StoredEvent::new(
            record.queue.as_str().into(),
            position,
            record.status.as_str().to_string(),
            Pushed::Task(TaskEvent {
                task_id: record.id,
                kind: record.kind.clone(),
                queue: record.queue.clone(),
                status: record.status,
                attempt: record.attempts,
                progress: record.progress,
                error: record.error.clone(),
                at: rfc3339(record.updated_ms),
                workflow_id: None,
            }),
        )
    }
}

/// A task event's parts as its entry holds them (`TASK_EVENT_PARTS`), read and checked but not
/// yet copied into a `TaskEvent`.
struct TaskParts<'a> {
    name: &'a str,
    task_id: Uuid,
    kind: &'a str,
    status: Status,
    attempt: u32,
    progress: Option<u8>,
    at_ms: u64,
    workflow_id: Option<Uuid>,
    error: Option<&'a str>,
}

impl<'a> TaskParts<'a> {
    /// `None` if `value` is not a well-formed task event.
    fn read(value: &'a [u8]) -> Option<TaskParts<'a>> {
        let mut parts = Parts { rest: Some(std::str::from_utf8(value).ok()?), left: TASK_EVENT_PARTS.len() };
        let mut part = || parts.next().filter(|part| !part.is_empty());
        let (name, task, kind, status) = (part()?, part()?, part(), part()?);
        let (attempt, progress, at) = (part(), part(), part()?);
        let (workflow, error) = (part(), part());
        Some(TaskParts {
            name,
            task_id: task.parse().ok()?,
            kind: kind.unwrap_or_default(),
            status: Status::parse(status)?,
            attempt: attempt.and_then(|a| a.parse().ok()).unwrap_or(0),
            progress: progress.and_then(|p| p.parse().ok()),
            at_ms: at.parse().ok()?,
            workflow_id: workflow.and_then(|w| w.parse().ok()),
            error,
        })
    }
}

/// The parts of a task event, as `str::splitn` would split them at `PART_SEPARATOR` (the last
/// takes the rest), found byte by byte: the parts are short, and `splitn`'s search for a char
/// took two-thirds of a read (docs/benchmark-notes.md, "Thirty-sixth step").
struct Parts<'a> {
    rest: Option<&'a str>,
    /// The parts left to give, the last one included.
    left: usize,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        let here = self.rest.take()?;
        self.left -= 1;
        if self.left == 0 {
            return Some(here);
        }
        match here.bytes().position(|b| b == PART_SEPARATOR) {
            // The separator is ASCII: both sides of it are whole characters.
            Some(at) => {
                self.rest = Some(&here[at + 1..]);
                Some(&here[..at])
            }
            None => Some(here),
        }
    }
}

/// An event as its stream's entry holds it.
#[derive(Clone, Copy)]
enum Written<'a> {
    /// One of the events of a task entry (`TASK_EVENT_PARTS`, joined).
    Task(&'a [u8]),
    /// A whole entry's fields and values (`StoredEvent::from_fields`).
    Fields(&'a [Value]),
    /// A field of an older task entry that is not a string: no event.
    Unreadable,
}

impl Written<'_> {
    /// The event, at `position` of `channel`'s stream; `None` if it is not well formed.
    fn event(self, channel: &Arc<str>, position: Position) -> Option<StoredEvent> {
        match self {
            Written::Task(value) => StoredEvent::from_task_entry(channel, position, value),
            Written::Fields(fields) => StoredEvent::from_fields(channel, position, fields),
            Written::Unreadable => None,
        }
    }

    /// What the tail makes of the event without a `StoredEvent`: a task event's parts are read,
    /// none copied (the rare other entries are read whole).
    fn seen(self, channel: &Arc<str>, position: Position) -> Seen {
        match self {
            Written::Task(value) => {
                TaskParts::read(value).map(|parts| Seen::of_task(&parts)).unwrap_or_default()
            }
            other => other.event(channel, position).map(|event| Seen::of(&event)).unwrap_or_default(),
        }
    }
}

/// What the tail itself needs of an event, whether or not anyone follows the streams: the
/// tasks that end (`Events::throughput`), the workflows to move on and the kinds to read again.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Seen {
    /// A task ended (a terminal status; not a `progress` event).
    ended: bool,
    /// The workflow a task's event names (the process's workflow follower moves it on).
    workflow: Option<Uuid>,
    /// A kind was declared, replaced or deleted.
    kind: bool,
}

impl Seen {
    fn of(event: &StoredEvent) -> Seen {
        let task = event.task();
        Seen {
            ended: task.is_some_and(|t| Seen::ends(&event.name, t.status)),
            workflow: task.and_then(|t| t.workflow_id),
            kind: matches!(event.event, Pushed::Kind(_)),
        }
    }

    fn of_task(parts: &TaskParts<'_>) -> Seen {
        Seen { ended: Seen::ends(parts.name, parts.status), workflow: parts.workflow_id, kind: false }
    }

    /// Whether a task event named `name` with `status` tells its task's end: a `progress` event
    /// of a task that has ended does not.
    fn ends(name: &str, status: Status) -> bool {
        status.is_terminal() && name != "progress"
    }
}

/// The events of an `XRANGE` reply (or of one stream of an `XREAD` reply) of `channel`'s stream,
/// oldest first: each event's position, with the event when it is a well-formed one. An entry
/// that holds no well-formed event still has its place (as a whole), so a reader moves past it.
fn entries_of(channel: &Arc<str>, reply: &Value) -> Vec<(Position, Option<StoredEvent>)> {
    let mut events = Vec::new();
    each_written(reply, |position, written| events.push((position, written.event(channel, position))));
    events
}

/// Calls `each` with every event of an `XRANGE` reply (or of one stream of an `XREAD` reply), in
/// order, and its position. A task entry holds the events one script call wrote
/// (queue/events.lua), in order, in one field `e` (or, as older versions wrote them, each in a
/// field `t`): each is placed at its index in the entry, the last at the entry as a whole. Any
/// other entry is one event. An entry without a readable id is passed over.
fn each_written<'a>(reply: &'a Value, mut each: impl FnMut(Position, Written<'a>)) {
    let Value::Array(entries) = reply else { return };
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let (id, fields) = match parts.as_slice() {
            [.., id, Value::Array(fields)] => (id, fields.as_slice()),
            [.., id, _] => (id, &[][..]),
            _ => continue,
        };
        let entry = match id {
            Value::BulkString(id) => std::str::from_utf8(id).ok().and_then(Position::parse),
            Value::SimpleString(id) => Position::parse(id),
            _ => None,
        };
        let Some(entry) = entry else { continue };
        match fields {
            [Value::BulkString(field), Value::BulkString(value)]
                if field.as_slice() == TASK_EVENTS_FIELD.as_bytes() =>
            {
                let events = value.split(|&b| b == EVENT_SEPARATOR).map(Written::Task);
                each_placed(entry, events, &mut each);
            }
            [Value::BulkString(field), ..] if field.as_slice() == TASK_EVENT_FIELD.as_bytes() => {
                let events = fields.chunks_exact(2).map(|pair| match (&pair[0], &pair[1]) {
                    (Value::BulkString(field), Value::BulkString(value))
                        if field.as_slice() == TASK_EVENT_FIELD.as_bytes() =>
                    {
                        Written::Task(value)
                    }
                    _ => Written::Unreadable,
                });
                each_placed(entry, events, &mut each);
            }
            _ => each(entry, Written::Fields(fields)),
        }
    }
}

/// Calls `each` with the events of entry `entry`, in order: each placed at its index in the
/// entry, the last at the entry as a whole.
fn each_placed<'a>(
    entry: Position,
    events: impl Iterator<Item = Written<'a>>,
    each: &mut impl FnMut(Position, Written<'a>),
) {
    let mut events = events.enumerate().peekable();
    while let Some((index, written)) = events.next() {
        let place = match u32::try_from(index) {
            Ok(index) if events.peek().is_some() => entry.event(index),
            _ => entry,
        };
        each(place, written);
    }
}

/// Counts events in one-second buckets over a sliding window.
#[derive(Default)]
pub struct Throughput {
    buckets: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

impl Throughput {
    /// The window the rate is measured over, in seconds.
    const WINDOW_S: u64 = 30;

    fn now_s() -> u64 {
        crate::store::now_ms() / 1000
    }

    /// Counts `n` events now.
    pub fn record(&self, n: u64) {
        self.record_at(Self::now_s(), n);
    }

    fn record_at(&self, second: u64, n: u64) {
        let mut buckets = self.buckets.lock().expect("never poisoned: no panics while held");
        match buckets.back_mut() {
            Some((at, count)) if *at == second => *count += n,
            _ => buckets.push_back((second, n)),
        }
        while buckets.front().is_some_and(|(at, _)| *at + Self::WINDOW_S < second) {
            buckets.pop_front();
        }
    }

    /// Events per second over the window ending now.
    pub fn per_second(&self) -> f64 {
        self.per_second_at(Self::now_s())
    }

    fn per_second_at(&self, now: u64) -> f64 {
        let buckets = self.buckets.lock().expect("never poisoned: no panics while held");
        let count: u64 = buckets.iter().filter(|(at, _)| *at + Self::WINDOW_S >= now).map(|(_, n)| n).sum();
        count as f64 / Self::WINDOW_S as f64
    }
}

/// What a follower is sent: an event, or word that events it asked for are gone; with the
/// follower's cursor after it, the SSE id.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Event(Arc<StoredEvent>, String),
    Reset(StreamReset, String),
}

impl Delivery {
    /// The SSE `id`: the place a reconnecting client resumes after.
    pub fn id(&self) -> &str {
        match self {
            Delivery::Event(_, id) | Delivery::Reset(_, id) => id,
        }
    }

    /// The whole SSE event, as the follower's stream writes it: `id`, then the `event` and `data`
    /// lines, then the blank line that ends it. An event's is shared by the followers with the
    /// same id ([`StoredEvent::frame_for`]).
    pub fn frame(&self) -> Bytes {
        match self {
            Delivery::Event(event, id) => event.frame_for(id),
            Delivery::Reset(reset, id) => {
                sse_frame(id, RESET_EVENT, |data| serde_json::to_writer(data, reset))
            }
        }
    }
}

/// Room for a task event's SSE frame (some 220 bytes, and its id): one allocation for most.
const SSE_FRAME_CAPACITY: usize = 320;

/// The SSE frame `id: {id}`, `event: {name}`, `data: {JSON}` and a blank line, the JSON written
/// by `write`. One `data` line holds it all: serde_json writes no line breaks (it escapes those
/// in strings), and an event name or id never has one.
fn sse_frame(id: &str, name: &str, write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) -> Bytes {
    let mut frame = Vec::with_capacity(SSE_FRAME_CAPACITY);
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\nevent: ");
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    write(&mut frame).expect("events always serialize");
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// A frame [`sse_frame`] made, as its id and the lines after the id's (the blank line with
/// them).
fn split_frame(frame: &[u8]) -> (&[u8], &[u8]) {
    let id_line = frame.strip_prefix(b"id: ").expect("a frame starts with its id");
    let end = id_line.iter().position(|&b| b == b'\n').expect("an id line ends");
    (&id_line[..end], &id_line[end + 1..])
}

/// A frame with `id`, and the lines (the blank line with them) of another.
fn frame_of(id: &str, lines: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(b"id: \n".len() + id.len() + lines.len());
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\n");
    frame.extend_from_slice(lines);
    frame.freeze()
}

/// What `XINFO STREAM` says of the events stream: its ends, and whether it ever lost entries.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bounds {
    /// The oldest entry kept.
    first: Option<Position>,
    /// The newest id the stream ever issued, kept or not.
    last: Position,
    /// Entries were trimmed (assumed before Redis 7, which does not count what was added).
    trimmed: bool,
}

impl Bounds {
    /// A stream that does not exist: nothing was ever written to it.
    const NONE: Bounds = Bounds { first: None, last: Position::ZERO, trimmed: false };

    /// Reads an `XINFO STREAM` reply (RESP2 pairs or a RESP3 map).
    fn from_info(reply: Value) -> Option<Bounds> {
        let pairs: Vec<(Value, Value)> = match reply {
            Value::Map(pairs) => pairs,
            Value::Array(items) => {
                let mut items = items.into_iter();
                std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
            }
            _ => return None,
        };
        let text = |value: &Value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_string),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        };
        let (mut first, mut last, mut length, mut added) = (None, None, None, None);
        for (field, value) in pairs {
            match text(&field).as_deref() {
                Some("last-generated-id") => last = text(&value).as_deref().and_then(Position::parse),
                Some("first-entry") => {
                    first = match &value {
                        Value::Array(entry) => {
                            entry.first().and_then(text).as_deref().and_then(Position::parse)
                        }
                        _ => None,
                    }
                }
                Some("length") => length = if let Value::Int(n) = value { Some(n) } else { None },
                Some("entries-added") => added = if let Value::Int(n) = value { Some(n) } else { None },
                _ => {}
            }
        }
        let trimmed = match (length, added) {
            (Some(length), Some(added)) => added > length,
            _ => true,
        };
        Some(Bounds { first, last: last?, trimmed })
    }

    /// Why a follower whose last event was `after` cannot be sent what came after it, if so.
    fn gap_after(&self, after: Position) -> Option<ResetReason> {
        if after > self.last {
            return Some(ResetReason::Unknown);
        }
        // Trimming takes the oldest entries: before the first one kept, something may be gone
        // (a stream trimmed to nothing has lost everything up to its last id). A place inside an
        // entry needs the rest of that entry.
        let missed = match self.first {
            Some(first) => after.whole() < first,
            None => after < self.last,
        };
        (self.trimmed && missed).then_some(ResetReason::TooOld)
    }
}

/// One step of a catch-up in one stream.
enum Replay {
    /// The next events, oldest first: each position, with its event when it is a well-formed
    /// one; and how many entries were read (as many as asked: more may follow).
    Entries(Vec<(Position, Option<StoredEvent>)>, usize),
    /// The place is gone; the follower goes on after the stream's last id, given.
    Gone(StreamReset, Position),
}

/// `XINFO STREAM` on a key that does not exist.
fn no_such_key(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("no such key"))
}

/// A place among the event streams this process serves at once, given back when dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

/// Which events a subscriber wants, from where, and for how long.
#[derive(Clone, Debug, Default)]
pub struct Follow {
    /// Only this task's events.
    pub task: Option<Uuid>,
    /// The keys of that task's queue, whose stream alone it reads, and where its state is read
    /// again after a gap.
    pub task_keys: Option<Keys>,
    /// Replay what came after this place first (from `Last-Event-ID`).
    pub after: Option<Cursor>,
    /// Send this first (a task's current state).
    pub first: Option<StoredEvent>,
    /// End after the first terminal event.
    pub until_terminal: bool,
    /// Only the events of these queues (an access token's), and those of no queue.
    pub within: Option<crate::auth::QueuePatterns>,
    /// Asked every second: the stream ends once its reader may no longer read it (its token
    /// revoked or expired, or access control turned on under an anonymous reader).
    pub allowed: Option<StillAllowed>,
}

impl Follow {
    /// Whether the follower reads `channel`'s stream: its task's queue's alone, or those of the
    /// queues it reaches and Courier's own (whose events it is sent if it reaches all their
    /// queues).
    fn reads(&self, channel: &str) -> bool {
        if let Some(keys) = &self.task_keys {
            return keys.queue() == channel;
        }
        channel.starts_with('_') || self.within.as_ref().is_none_or(|within| within.allows(channel))
    }
}

/// Whether an event stream's reader may still read it.
#[derive(Clone)]
pub struct StillAllowed(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for StillAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StillAllowed(…)")
    }
}

/// How often an open stream asks whether its reader may still read it.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The next tick of `recheck`, or never without one.
async fn next_check(recheck: &mut Option<tokio::time::Interval>) {
    match recheck {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The process's view of the event streams; cheap to clone.
#[derive(Clone)]
pub struct Events {
    conn: Conn,
    prefix: Arc<str>,
    queues: Queues,
    /// Every event, to the process's followers (SSE streams, requests that wait): sent, and made,
    /// only while there are any.
    fanout: broadcast::Sender<Arc<StoredEvent>>,
    /// The task events that name a workflow (`step_events`).
    steps: broadcast::Sender<StepEvent>,
    /// Told of the kinds' events (`kind_changes`).
    kinds_changed: Arc<Notify>,
    finished: Arc<Throughput>,
    /// One permit per open stream of followers.
    streams: Arc<Semaphore>,
    /// The permits `streams` started with: the most streams open at once.
    max_streams: usize,
    /// The last entry the tail has read of each stream (and, after it, handed to the
    /// subscribers); every stream it reads is named, those still empty at zero.
    read_up_to: Arc<std::sync::Mutex<Cursor>>,
    /// Set when a queue may have been made: the tail reads the registry again.
    stale: Arc<AtomicBool>,
    /// The Redis client id of the tail's blocking connection, to wake it (`CLIENT UNBLOCK`).
    tail_client: Arc<AtomicI64>,
    shutdown: CancellationToken,
}

/// How far the clocks of Redis and of this process may differ: a place in time further ahead
/// than that was never issued.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How often the tail reads the queue registry for queues another process made.
const CHANNELS_EVERY: Duration = Duration::from_secs(1);

impl Events {
    /// Starts tailing the event streams of every queue under `queues` (and those of kinds and
    /// workflows) from their current ends, until `shutdown`; at most `max_streams` followers at
    /// once. Queues made later are tailed from their first event.
    pub async fn start(
        client: RedisClient,
        conn: Conn,
        queues: Queues,
        max_streams: usize,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<Events> {
        let (fanout, _) = broadcast::channel(FANOUT_BUFFER);
        let (steps, _) = broadcast::channel(FANOUT_BUFFER);
        let max_streams = max_streams.min(Semaphore::MAX_PERMITS);
        let events = Events {
            conn,
            prefix: queues.prefix().into(),
            queues,
            fanout,
            steps,
            kinds_changed: Default::default(),
            finished: Default::default(),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            read_up_to: Default::default(),
            stale: Default::default(),
            tail_client: Default::default(),
            shutdown,
        };
        // Fix the starting point now: an event appended before the tail's first read still
        // reaches every subscriber that connected after `start` returned.
        let channels = events.channels().await?;
        let from = events.latest(&channels).await?;
        *events.read_up_to.lock().expect("never poisoned") = from.clone();
        if client.is_cluster() {
            tokio::spawn(events.clone().tail_each(client, from));
        } else {
            tokio::spawn(events.clone().tail(client, from, None));
            tokio::spawn(events.clone().wake_on_new_queues());
        }
        Ok(events)
    }

    /// On a cluster, where one read keeps to one slot: a tail per stream, each from `from` (or,
    /// for a queue made later, from its stream's first event), started as the queues appear.
    async fn tail_each(self, client: RedisClient, from: Cursor) {
        let opened = self.queues.opened();
        let mut tailed: Vec<Arc<str>> = Vec::new();
        loop {
            match self.channels().await {
                Ok(found) => {
                    let new: Vec<Arc<str>> = found.into_iter().filter(|c| !tailed.contains(c)).collect();
                    for channel in new {
                        // A stream new to the tail is read from its beginning: every entry in
                        // it was written after the tail started.
                        let mut at = Cursor::default();
                        at.set(&channel, from.get(&channel));
                        self.read_up_to.lock().expect("never poisoned").set(&channel, at.get(&channel));
                        tokio::spawn(self.clone().tail(client.clone(), at, Some(channel.clone())));
                        tailed.push(channel);
                    }
                }
                Err(e) => debug!(error = %e, "reading the queue registry failed; the tail tries again"),
            }
            tokio::select! {
                () = tokio::time::sleep(CHANNELS_EVERY) => {}
                () = opened.notified() => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Every stream there is: each queue's, and Courier's own.
    async fn channels(&self) -> redis::RedisResult<Vec<Arc<str>>> {
        let mut channels: Vec<Arc<str>> = vec![KINDS_CHANNEL.into(), WORKFLOWS_CHANNEL.into()];
        channels.extend(self.queues.names().await?.into_iter().map(Arc::from));
        Ok(channels)
    }

    /// The newest entry of each of `channels`' streams.
    async fn latest(&self, channels: &[Arc<str>]) -> redis::RedisResult<Cursor> {
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("XREVRANGE").arg(self.key(channel)).arg("+").arg("-").arg("COUNT").arg(1);
        }
        let latest: Vec<StreamRangeReply> = self.conn.query_spread(&pipe).await?;
        let mut cursor = Cursor::default();
        for (channel, latest) in channels.iter().zip(latest) {
            let position = latest.ids.first().and_then(|entry| Position::parse(&entry.id));
            cursor.set(channel, position.unwrap_or(Position::ZERO));
        }
        Ok(cursor)
    }

    /// The key of `channel`'s stream.
    fn key(&self, channel: &str) -> String {
        stream_key(&self.prefix, channel)
    }

    /// Wakes the tail whenever this process makes a queue, so that its first events are read at
    /// once rather than at the next look at the registry.
    async fn wake_on_new_queues(self) {
        let opened = self.queues.opened();
        loop {
            tokio::select! {
                () = opened.notified() => {}
                () = self.shutdown.cancelled() => return,
            }
            self.stale.store(true, Ordering::Release);
            let client = self.tail_client.load(Ordering::Acquire);
            if client > 0 {
                let woken: redis::RedisResult<i64> =
                    client_command("UNBLOCK").arg(client).query_async(&mut self.conn.clone()).await;
                if let Err(e) = woken {
                    debug!(error = %e, "waking the events tail failed; it looks again within a second");
                }
            }
        }
    }

    /// Reads the streams of `from` (`only` that one, or every one and those of the queues made
    /// later) from where `from` places them, and hands their events to the subscribers.
    async fn tail(self, client: RedisClient, from: Cursor, only: Option<Arc<str>>) {
        let mut conn: Option<Conn> = None;
        // Never skip an id, even across reconnects, so no subscriber misses an event.
        let mut at = from;
        let mut channels: Vec<Arc<str>> = at.channels().cloned().collect();
        let mut keys: Vec<String> = channels.iter().map(|channel| self.key(channel)).collect();
        let mut looked = tokio::time::Instant::now();
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            if only.is_none()
                && (self.stale.swap(false, Ordering::AcqRel) || looked.elapsed() >= CHANNELS_EVERY)
            {
                looked = tokio::time::Instant::now();
                match self.channels().await {
                    // A stream new to the tail is read from its beginning: every entry in it
                    // was written after the tail started.
                    Ok(found) => {
                        let new: Vec<Arc<str>> =
                            found.into_iter().filter(|c| !channels.contains(c)).collect();
                        for channel in new {
                            at.set(&channel, Position::ZERO);
                            keys.push(self.key(&channel));
                            channels.push(channel);
                        }
                    }
                    Err(e) => debug!(error = %e, "reading the queue registry failed; the tail tries again"),
                }
            }
            let step = async {
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => {
                        let mut fresh = client.connect_blocking(CHANNELS_EVERY).await?;
                        if only.is_none() {
                            // An ACL user without `CLIENT` is woken by the read's timeout instead.
                            let id: redis::RedisResult<i64> =
                                client_command("ID").query_async(&mut fresh).await;
                            self.tail_client.store(id.unwrap_or(0), Ordering::Release);
                        }
                        conn.insert(fresh)
                    }
                };
                let mut read = redis::cmd("XREAD");
                read.arg("COUNT").arg(TAIL_READ).arg("BLOCK").arg(CHANNELS_EVERY.as_millis() as u64);
                read.arg("STREAMS").arg(&keys);
                for channel in &channels {
                    read.arg(at.get(channel).id());
                }
                let reply: Value = read.query_async(conn).await?;
                redis::RedisResult::Ok(read_streams(reply))
            };
            let step = tokio::select! {
                step = step => step,
                () = self.shutdown.cancelled() => break,
            };
            match step {
                Ok(streams) => {
                    failures = 0;
                    let streams: Vec<(&Arc<str>, Value)> = streams
                        .into_iter()
                        .filter_map(|(key, entries)| {
                            let index = keys.iter().position(|k| k.as_bytes() == key)?;
                            Some((&channels[index], entries))
                        })
                        .collect();
                    let mut read = Vec::new();
                    for (channel, entries) in &streams {
                        each_written(entries, |position, written| {
                            at.set(channel, position);
                            read.push((*channel, position, written));
                        });
                    }
                    let mut read_up_to = self.read_up_to.lock().expect("never poisoned");
                    for channel in &channels {
                        read_up_to.set(channel, at.get(channel));
                    }
                    drop(read_up_to);
                    // Taken after the cursor moved: a follower that subscribes later finds
                    // these events behind the cursor it starts from, so it is sent none of them
                    // live. Without subscribers no event is made at all.
                    let followed = self.fanout.receiver_count() > 0;
                    for (channel, position, written) in read {
                        let seen = match followed.then(|| written.event(channel, position)).flatten() {
                            Some(event) => {
                                let seen = Seen::of(&event);
                                // None may be left by now: nobody is watching then.
                                let _ = self.fanout.send(Arc::new(event));
                                seen
                            }
                            None => written.seen(channel, position),
                        };
                        self.act_on(channel, position, seen);
                    }
                }
                Err(e) => {
                    conn = None;
                    self.tail_client.store(0, Ordering::Release);
                    failures = (failures + 1).min(7);
                    let pause = Duration::from_millis(50 << failures).min(Duration::from_secs(5));
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "tailing task events failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
    }

    /// The last event the tail read of each stream: every event up to it has been handed to the
    /// subscribers.
    pub fn cursor(&self) -> Cursor {
        self.read_up_to.lock().expect("never poisoned").clone()
    }

    /// Tasks finished per second over the last half minute, across every worker.
    pub fn throughput(&self) -> f64 {
        self.finished.per_second()
    }

    /// A receiver of every event from now on, for a caller that follows or waits (a task's end,
    /// work for a lease): the tail makes events only while there are such receivers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.fanout.subscribe()
    }

    /// A receiver of the task events that name a workflow, from now on: for the process's
    /// workflow follower (`Workflows::start`), which is not woken by the others.
    pub fn step_events(&self) -> broadcast::Receiver<StepEvent> {
        self.steps.subscribe()
    }

    /// Notified each time the tail reads a kind's event (at least once after any number of them):
    /// for the process's kinds follower (`kinds::follow_events`).
    pub fn kind_changes(&self) -> Arc<Notify> {
        self.kinds_changed.clone()
    }

    /// What the tail does with each event it reads, followed or not.
    fn act_on(&self, channel: &Arc<str>, position: Position, seen: Seen) {
        if seen.ended {
            self.finished.record(1);
        }
        if let Some(workflow) = seen.workflow {
            // No receivers is fine: the process follows no workflows.
            let _ = self.steps.send(StepEvent { workflow, channel: channel.clone(), position });
        }
        if seen.kind {
            self.kinds_changed.notify_one();
        }
    }

    /// The next entries of `channel`'s stream after `after` (oldest first, at most `count`),
    /// read in one transaction with the stream's bounds, so that a place the stream no longer
    /// holds is always told. `named`: the place was this stream's own; a place in time (from a
    /// cursor's base) may be past the stream's last entry.
    async fn replay(
        &self,
        channel: &Arc<str>,
        after: Position,
        named: bool,
        count: usize,
    ) -> redis::RedisResult<Replay> {
        let key = self.key(channel);
        let start = after.read_from();
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors().cmd("XINFO").arg("STREAM").arg(&key);
        if let Some(start) = start {
            pipe.cmd("XRANGE").arg(&key).arg(start.id()).arg("+").arg("COUNT").arg(count);
        }
        let mut replies: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut self.conn.clone()).await?;
        let entries = match start {
            Some(_) => replies.pop().unwrap_or(Ok(Value::Nil))?,
            None => Value::Nil,
        };
        let unreadable =
            || redis::RedisError::from((redis::ErrorKind::Parse, "unreadable XINFO STREAM reply"));
        let bounds = match replies.pop() {
            Some(Ok(info)) => Bounds::from_info(info).ok_or_else(unreadable)?,
            Some(Err(e)) if no_such_key(&e) => Bounds::NONE,
            Some(Err(e)) => return Err(e),
            None => return Err(unreadable()),
        };
        // A place in time past the stream's end is no gap, unless that time has not come yet.
        let issued = named || after.0 <= crate::store::now_ms() + CLOCK_SKEW.as_millis() as u64;
        Ok(match bounds.gap_after(after) {
            Some(ResetReason::Unknown) if !named && issued => Replay::Entries(Vec::new(), 0),
            Some(reason) => {
                let oldest = bounds.first.map(|first| first.to_string());
                Replay::Gone(StreamReset { reason, oldest }, bounds.last)
            }
            None => {
                let mut events = entries_of(channel, &entries);
                // Each entry ends with one place as a whole: so many entries were read.
                let read = events.iter().filter(|(position, _)| position.is_whole()).count();
                // An entry read again for the rest of its events: those before go.
                events.retain(|(position, _)| *position > after);
                Replay::Entries(events, read)
            }
        })
    }

    /// A task's record together with the position of its queue's stream when it was read (one
    /// MULTI), so that following from there misses nothing and repeats nothing.
    pub async fn snapshot(&self, keys: &Keys, id: Uuid) -> redis::RedisResult<Option<StoredEvent>> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XREVRANGE")
            .arg(keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("HGETALL")
            .arg(keys.task(&id));
        let (latest, fields): (StreamRangeReply, HashMap<String, String>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let position = latest.ids.first().and_then(|e| Position::parse(&e.id)).unwrap_or(Position::ZERO);
        Ok(TaskRecord::from_fields(id, keys.queue(), &fields)
            .map(|record| StoredEvent::snapshot(&record, position)))
    }

    /// How many streams of events are open now (each holds one of the `--max-sse-clients`
    /// places).
    pub fn open_streams(&self) -> usize {
        self.max_streams.saturating_sub(self.streams.available_permits())
    }

    /// Fired when the process stops: every stream ends.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A place for one more stream of events; `None` while the most allowed are open.
    pub fn admit(&self) -> Option<Admission> {
        self.streams.clone().try_acquire_owned().ok().map(|permit| Admission { _permit: permit })
    }

    /// The events `follow` asks for, as a stream that ends when the process stops (or, for a
    /// follower `until_terminal`, after its task's end); `admission` is held until it is
    /// dropped. The stream does its work when it is polled, in its client's connection: a
    /// follower costs no task and no queue of its own, and holds no event its client has not
    /// taken yet but those of one catch-up read.
    pub fn follow(
        &self,
        admission: Admission,
        follow: Follow,
    ) -> impl Stream<Item = Delivery> + Send + use<> {
        // Subscribe before reading history, so nothing falls between the two.
        let live = self.fanout.subscribe();
        // A new follower starts where the tail is: what it read is history, what it reads next
        // reaches the follower live.
        let mut sent = follow.after.clone().unwrap_or_else(|| self.cursor());
        sent.retain(|channel| follow.reads(channel));
        let recheck = follow.allowed.as_ref().map(|_| {
            let mut interval = tokio::time::interval(RECHECK_EVERY);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut follower = Follower {
            events: self.clone(),
            catching_up: None,
            catch_up_entries: CATCH_UP_EVENTS / EVENTS_PER_ENTRY,
            resume: follow.after.is_some(),
            follow,
            live,
            sent,
            recheck,
            ready: VecDeque::new(),
            done: false,
            _admission: admission,
        };
        if let Some(first) = follower.follow.first.take() {
            // What happened between the snapshot and the subscription is read from Redis.
            follower.sent.set(&first.channel, first.position);
            follower.resume = true;
            follower.deliver(Arc::new(first));
        }
        tracing::trace!(follower_bytes = std::mem::size_of_val(&follower), "following events");
        // Boxed: the stream moves its state in and out of each step's future, a pointer rather
        // than the whole follower (four copies of it an event, a tenth of what sending it cost).
        futures::stream::unfold(Box::new(follower), |mut follower| async move {
            loop {
                if follower.events.shutdown.is_cancelled() {
                    return None;
                }
                if let Some(delivery) = follower.ready.pop_front() {
                    return Some((delivery, follower));
                }
                if follower.done || !follower.step().await {
                    return None;
                }
            }
        })
    }
}

/// One follower of the event streams: where it is, and the events ready for it.
struct Follower {
    events: Events,
    follow: Follow,
    live: broadcast::Receiver<Arc<StoredEvent>>,
    /// Its place in each stream: what it was sent (or passed over).
    sent: Cursor,
    /// It is to catch up from Redis: after a `Last-Event-ID`, a snapshot, or falling behind.
    resume: bool,
    /// The streams of a catch-up under way, the first one being read.
    catching_up: Option<VecDeque<Arc<str>>>,
    /// How many entries its next catch-up read asks for.
    catch_up_entries: usize,
    recheck: Option<tokio::time::Interval>,
    /// What is ready to send, in order.
    ready: VecDeque<Delivery>,
    /// Nothing more is to be sent once `ready` is.
    done: bool,
    _admission: Admission,
}

impl Follower {
    /// Makes ready what comes next: a live event, or a catch-up's next read. `false` once the
    /// stream is to end (the process stops, the reader may read no longer, or Redis failed a
    /// catch-up read too many times in a row).
    async fn step(&mut self) -> bool {
        if std::mem::take(&mut self.resume) {
            let channels: BTreeSet<Arc<str>> = match &self.follow.task_keys {
                Some(keys) => BTreeSet::from([Arc::from(keys.queue())]),
                None => self.events.cursor().channels().chain(self.sent.channels()).cloned().collect(),
            };
            let channels = channels.into_iter().filter(|channel| self.follow.reads(channel)).collect();
            self.catching_up = Some(channels);
        }
        if self.catching_up.is_some() {
            // Boxed: every follower would carry its size even though catching up is rare.
            return Box::pin(self.catch_up()).await;
        }
        let event = tokio::select! {
            event = self.live.recv() => event,
            () = self.events.shutdown.cancelled() => return false,
            () = next_check(&mut self.recheck) => {
                return self.follow.allowed.as_ref().is_none_or(|allowed| (allowed.0)());
            }
        };
        match event {
            Ok(event) => {
                if self.follow.reads(&event.channel) && event.position > self.sent.get(&event.channel) {
                    self.sent.set(&event.channel, event.position);
                    self.deliver(event);
                }
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.resume = true;
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// Makes `event` ready (the follower now at `sent`) if the follower wants it; after the
    /// terminal event a follower waited for, nothing more.
    fn deliver(&mut self, event: Arc<StoredEvent>) {
        let task = event.task();
        if self.follow.task.is_some_and(|id| task.is_none_or(|t| t.task_id != id)) {
            return;
        }
        if let Some(within) = &self.follow.within
            && !event.queues().iter().all(|queue| within.allows(queue))
        {
            return;
        }
        self.done = task.is_some_and(|t| t.status.is_terminal()) && self.follow.until_terminal;
        self.ready.push_back(Delivery::Event(event, self.sent.id()));
    }

    /// One read of a catch-up: what came after `sent` in the first stream left to read, or a
    /// reset for a stream that no longer holds it. Everything newer than what the catch-up
    /// reads was published after the follower subscribed, so the live events carry on from
    /// there.
    async fn catch_up(&mut self) -> bool {
        let Some(channel) = self.catching_up.as_ref().and_then(|channels| channels.front().cloned()) else {
            self.catching_up = None;
            return true;
        };
        let (after, named) = (self.sent.get(&channel), self.sent.names(&channel));
        let (events, asked) = (self.events.clone(), self.catch_up_entries);
        let Some(replay) = events.patiently(|| events.replay(&channel, after, named, asked)).await else {
            return false;
        };
        let mut more = false;
        match replay {
            Replay::Entries(entries, read) => {
                if read > 0 {
                    self.catch_up_entries = catch_up_entries(read, entries.len());
                }
                for (position, event) in entries {
                    self.sent.set(&channel, position);
                    if let Some(event) = event {
                        self.deliver(Arc::new(event));
                        if self.done {
                            return true;
                        }
                    }
                }
                more = read == asked;
            }
            Replay::Gone(reset, last) => {
                self.sent.set(&channel, last);
                self.ready.push_back(Delivery::Reset(reset, self.sent.id()));
                if let (Some(id), Some(keys), true) =
                    (self.follow.task, &self.follow.task_keys, self.follow.until_terminal)
                {
                    // A task's own stream promises its current state and to end with its last
                    // event: after a gap, its state again (and the end if it is gone).
                    let Some(state) = events.patiently(|| events.snapshot(keys, id)).await else {
                        return false;
                    };
                    let Some(state) = state else {
                        self.done = true;
                        return true;
                    };
                    self.sent.advance(&channel, state.position);
                    self.deliver(Arc::new(state));
                }
            }
        }
        if !more && let Some(channels) = &mut self.catching_up {
            channels.pop_front();
        }
        true
    }
}

/// How many entries a follower's next catch-up read asks for, after one that brought `events`
/// in `entries`: as many as held some [`CATCH_UP_EVENTS`] in that one, between as few as hold
/// them when every entry is full and one an event. A read of entries like the last one's brings
/// about [`CATCH_UP_EVENTS`]; none brings more than [`EVENTS_PER_ENTRY`] times that (a stream
/// whose entries grew full all at once), whatever the stream holds.
fn catch_up_entries(entries: usize, events: usize) -> usize {
    let fewest = CATCH_UP_EVENTS / EVENTS_PER_ENTRY;
    (CATCH_UP_EVENTS * entries).checked_div(events).unwrap_or(CATCH_UP_EVENTS).clamp(fewest, CATCH_UP_EVENTS)
}

impl Events {
    /// Runs `call` for a follower, retrying a failed Redis call after a pause that doubles each
    /// time; `None` once the process stops, or Redis failed [`FOLLOW_ATTEMPTS`] times in a row
    /// (the stream then ends and its client reconnects). A follower whose client leaves is
    /// dropped, and its call with it.
    async fn patiently<T, F>(&self, call: impl Fn() -> F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                outcome = Box::pin(call()) => outcome,
                () = self.shutdown.cancelled() => return None,
            };
            let e = match outcome {
                Ok(value) => return Some(value),
                Err(e) => e,
            };
            failures += 1;
            if failures >= FOLLOW_ATTEMPTS {
                warn!(error = %e, attempts = failures, "replaying task events failed: closing the stream");
                return None;
            }
            let pause = Duration::from_millis(100 << failures).min(Duration::from_secs(5));
            debug!(error = %e, retry_in_ms = pause.as_millis() as u64, "replaying task events failed");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_read_asks_for_as_many_entries_as_held_some_catch_up_events_in_the_last() {
        let full = CATCH_UP_EVENTS / EVENTS_PER_ENTRY;
        assert_eq!(catch_up_entries(full, full * EVENTS_PER_ENTRY), full, "full entries");
        assert_eq!(catch_up_entries(10, 10), CATCH_UP_EVENTS, "an event an entry");
        assert_eq!(catch_up_entries(100, 400), CATCH_UP_EVENTS / 4);
        assert_eq!(catch_up_entries(1000, 1000), CATCH_UP_EVENTS, "never more entries than that");
        assert_eq!(catch_up_entries(1, 10_000), full, "never fewer than full entries hold");
        assert_eq!(catch_up_entries(3, 0), CATCH_UP_EVENTS, "no events: as if one an entry");
    }

    #[test]
    fn a_task_events_sse_lines_hold_its_json() {
        let event = TaskEvent {
            task_id: Uuid::now_v7(),
            kind: "echo".into(),
            queue: "default".into(),
            status: Status::Failed,
            attempt: 3,
            progress: Some(40),
            error: Some("boom \"x\"".into()),
            at: "2026-12-07T17:58:20.973Z".into(),
            workflow_id: None,
        };
        let stored = StoredEvent::new(
            "default".into(),
            Position(5, 0, 0),
            "failed".into(),
            Pushed::Task(event.clone()),
        );
        let expected = format!("event: failed\ndata: {}\n", serde_json::to_string(&event).unwrap());
        assert_eq!(lines_of(&stored), expected);
    }

    /// An event's `event` and `data` lines, as a frame holds them after its id.
    fn lines_of(event: &StoredEvent) -> String {
        let frame = event.frame_for("5-0");
        let lines = std::str::from_utf8(split_frame(&frame).1).unwrap();
        lines.strip_suffix('\n').expect("a blank line ends the frame").to_string()
    }

    #[test]
    fn the_lua_that_writes_events_writes_the_parts_the_server_reads() {
        let lua = include_str!("queue/events.lua");
        // The one event: its parts joined by the unit separator, in order.
        let start = "written[#written + 1] = ";
        let value = &lua[lua.find(&format!("{start}name")).unwrap() + start.len()..];
        let value = &value[..value.find("\nend").unwrap()];
        let parts: Vec<String> = value
            .split("'\\31'")
            .map(|part| part.replace("..", "").replace(['(', ')', '\n'], ""))
            .map(|part| part.split(" or ").next().unwrap().trim().to_string())
            .collect();
        // The Lua names of TASK_EVENT_PARTS.
        let lua_names = ["name", "id", "kind", "status", "attempt", "progress", "at", "workflow", "err"];
        assert_eq!(parts, lua_names, "events.lua's parts in TASK_EVENT_PARTS's order");
        assert_eq!(lua_names.len(), TASK_EVENT_PARTS.len());
        // An entry's events: one field, separated by the record separator.
        assert!(lua.contains(&format!(
            "'*', '{TASK_EVENTS_FIELD}',\n        table.concat(written, '\\30', first, last))"
        )));
        assert_eq!(EVENT_SEPARATOR, 30);
    }

    #[test]
    fn events_are_split_into_entries_as_the_lua_splits_them() {
        let lua = include_str!("queue/events.lua");
        assert!(lua.contains(&format!("local EVENTS_PER_ENTRY = {EVENTS_PER_ENTRY}\n")));
        // Each entry's first event and its count.
        let split = |count| event_entries(count).map(|e| (e.start, e.len())).collect::<Vec<_>>();
        assert_eq!(split(1), [(0, 1)]);
        assert_eq!(split(32), [(0, 32)]);
        // 33 events: two entries of 17 and 16, as math.ceil splits them.
        assert_eq!(split(33), [(0, 17), (17, 16)]);
        assert_eq!(split(100), [(0, 25), (25, 25), (50, 25), (75, 25)]);
        assert!(split(0).is_empty());
    }

    #[test]
    fn a_task_event_written_in_rust_reads_back_as_the_lua_one() {
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        let value = task_event_value(["queued", id, "echo", "queued", "0", "", "1700000000000", "", ""]);
        let event = only_event(&[bulk(TASK_EVENTS_FIELD), bulk(&task_events_value(&[value]))]).unwrap();
        assert_eq!(event.name, "queued");
        let Pushed::Task(task) = event.event else { panic!("a task event") };
        assert_eq!(task.task_id.to_string(), id);
        assert_eq!((task.kind.as_str(), task.status, task.attempt), ("echo", Status::Queued, 0));
        assert_eq!((task.progress, task.error, task.workflow_id), (None, None, None));
        // An error holding the record separator keeps to its event, a space there.
        let value = task_event_value(["failed", id, "echo", "failed", "1", "", "5", "", "a\u{1e}b\u{1f}c"]);
        let event = only_event(&[bulk(TASK_EVENTS_FIELD), bulk(&task_events_value(&[value]))]).unwrap();
        assert_eq!(event.task().unwrap().error.as_deref(), Some("a b\u{1f}c"));
    }

    #[test]
    fn a_task_entry_of_one_event_field_as_older_versions_wrote_it_becomes_its_event() {
        let value = "failed\u{1f}01890a5d-ac96-774b-bcce-b302099a8057\u{1f}sleep\u{1f}failed\u{1f}3\u{1f}\u{1f}0\u{1f}01890a5d-ac96-774b-bcce-b302099a8058\u{1f}boom\u{1f}with a separator";
        let event = only_event(&[bulk("t"), bulk(value)]).unwrap();
        assert_eq!(event.name, "failed");
        let task = event.task().unwrap();
        assert_eq!(
            (task.kind.as_str(), task.queue.as_str(), task.status),
            ("sleep", "reports", Status::Failed)
        );
        assert_eq!((task.attempt, task.progress), (3, None));
        assert_eq!(task.error.as_deref(), Some("boom\u{1f}with a separator"));
        assert_eq!(task.workflow_id, "01890a5d-ac96-774b-bcce-b302099a8058".parse().ok());
        assert_eq!(task.at, "1970-01-01T00:00:00.000Z");
        // A part missing, or a task that is no id: no event.
        for broken in [
            "failed\u{1f}01890a5d-ac96-774b-bcce-b302099a8057",
            "failed\u{1f}nope\u{1f}k\u{1f}failed\u{1f}1\u{1f}\u{1f}0\u{1f}\u{1f}",
        ] {
            assert!(only_event(&[bulk("t"), bulk(broken)]).is_none());
        }
    }

    /// The one event of an entry at 5-1 of the `reports` stream.
    fn only_event(fields: &[Value]) -> Option<StoredEvent> {
        let mut events = Vec::new();
        events_of_entry(&"reports".into(), Position::entry(5, 1), fields, &mut events);
        assert_eq!(events.len(), 1, "{events:?}");
        let (position, event) = events.pop().unwrap();
        assert_eq!(position, Position::entry(5, 1), "the only event of an entry is at the entry");
        event
    }

    #[test]
    fn an_entry_of_a_scripts_events_places_each_at_its_index_and_the_last_at_the_entry() {
        let task = |n: u8| {
            format!(
                "queued\u{1f}01890a5d-ac96-774b-bcce-b302099a805{n}\u{1f}echo\u{1f}queued\u{1f}0\u{1f}\u{1f}5\u{1f}\u{1f}"
            )
        };
        // As written now (one field), and as older versions wrote it (a field per event).
        let joined = [bulk(TASK_EVENTS_FIELD), bulk(&format!("{}\u{1e}broken\u{1e}{}", task(1), task(3)))];
        let older = [bulk("t"), bulk(&task(1)), bulk("t"), bulk("broken"), bulk("t"), bulk(&task(3))];
        for fields in [&joined[..], &older[..]] {
            read_an_entry_of_three(fields, task(1), task(3));
        }
    }

    /// Reads `fields`, an entry of three events (`first`, a broken one, `third`).
    fn read_an_entry_of_three(fields: &[Value], first: String, third: String) {
        assert!(first.contains("8051") && third.contains("8053"));
        let mut events = Vec::new();
        let entry = Position::entry(9, 2);
        events_of_entry(&"default".into(), entry, fields, &mut events);
        let positions: Vec<Position> = events.iter().map(|(position, _)| *position).collect();
        assert_eq!(positions, [entry.event(0), entry.event(1), entry]);
        let ids: Vec<Option<String>> =
            events.iter().map(|(_, e)| e.as_ref().map(|e| e.task().unwrap().task_id.to_string())).collect();
        assert_eq!(
            ids,
            [
                Some("01890a5d-ac96-774b-bcce-b302099a8051".to_string()),
                None,
                Some("01890a5d-ac96-774b-bcce-b302099a8053".to_string())
            ],
            "a broken event keeps its place and spoils none of the others"
        );
        assert_eq!(events[2].1.as_ref().unwrap().position, entry);
    }

    #[test]
    fn a_place_inside_the_oldest_kept_entry_lost_nothing() {
        let trimmed =
            Bounds { first: Some(Position::entry(10, 0)), last: Position::entry(20, 0), trimmed: true };
        assert_eq!(trimmed.gap_after(Position::entry(10, 0).event(2)), None);
        assert_eq!(trimmed.gap_after(Position::entry(9, 5).event(0)), Some(ResetReason::TooOld));
        assert_eq!(trimmed.gap_after(Position::entry(20, 0).event(0)), None);
        let emptied = Bounds { first: None, last: Position::entry(20, 0), trimmed: true };
        assert_eq!(emptied.gap_after(Position::entry(20, 0).event(0)), Some(ResetReason::TooOld));
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    /// Appends the events of one entry at `entry` of `channel`'s stream, holding `fields`, to
    /// `events`, as a reply of that one entry reads.
    fn events_of_entry(
        channel: &Arc<str>,
        entry: Position,
        fields: &[Value],
        events: &mut Vec<(Position, Option<StoredEvent>)>,
    ) {
        let reply = Value::Array(vec![Value::Array(vec![bulk(&entry.id()), Value::Array(fields.to_vec())])]);
        events.extend(entries_of(channel, &reply));
    }

    #[test]
    fn a_task_events_parts_are_split_as_splitn_splits_them() {
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        let whole =
            format!("failed\u{1f}{id}\u{1f}échec\u{1f}failed\u{1f}3\u{1f}\u{1f}0\u{1f}\u{1f}boom\u{1f}with…");
        let samples = [
            "",
            "a",
            "\u{1f}",
            "\u{1f}\u{1f}",
            "a\u{1f}",
            "\u{1f}a",
            "a\u{1f}\u{1f}b",
            "ü\u{1f}…\u{1f}",
            &whole,
        ];
        for sample in samples {
            for n in 0..=TASK_EVENT_PARTS.len() + 1 {
                let ours: Vec<&str> = Parts { rest: Some(sample), left: n }.collect();
                let theirs: Vec<&str> = sample.splitn(n, '\u{1f}').collect();
                assert_eq!(ours, theirs, "{sample:?} in {n} parts");
            }
        }
        // The error, the last part, keeps the separator it holds.
        let parts = TaskParts::read(whole.as_bytes()).expect("a well-formed task event");
        assert_eq!((parts.kind, parts.attempt, parts.error), ("échec", 3, Some("boom\u{1f}with…")));
    }

    #[test]
    fn what_the_tail_sees_of_an_event_unmade_is_what_it_sees_of_the_event() {
        let task = |name: &str, status: &str, workflow: &str| {
            task_event_value([
                name,
                "01890a5d-ac96-774b-bcce-b302099a8057",
                "echo",
                status,
                "1",
                "",
                "5",
                workflow,
                "",
            ])
        };
        let workflow = "01890a5d-ac96-774b-bcce-b302099a8058";
        let events = [
            task("queued", "queued", ""),
            task("running", "running", workflow),
            task("progress", "succeeded", ""),
            task("succeeded", "succeeded", workflow),
            task("cancelled", "cancelled", ""),
            "broken".to_string(),
        ];
        let entries = [
            vec![bulk(TASK_EVENTS_FIELD), bulk(&task_events_value(&events))],
            vec![bulk("t"), bulk(&events[3]), bulk("t"), Value::Int(1)],
            [("event", "kind"), ("kind", "echo"), ("status", "declared"), ("at", "5")]
                .into_iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
            [
                ("event", "failed"),
                ("task", workflow),
                ("status", "failed"),
                ("at", "5"),
                ("workflow", workflow),
            ]
            .into_iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect(),
        ];
        let reply = Value::Array(
            entries
                .iter()
                .enumerate()
                .map(|(n, fields)| {
                    Value::Array(vec![bulk(&format!("{}-0", n + 1)), Value::Array(fields.clone())])
                })
                .collect(),
        );
        let channel: Arc<str> = "default".into();
        let mut seen = Vec::new();
        each_written(&reply, |position, written| {
            let made = written.event(&channel, position).map(|event| Seen::of(&event)).unwrap_or_default();
            assert_eq!(written.seen(&channel, position), made, "at {position:?}");
            seen.push(made);
        });
        let workflow = workflow.parse().ok();
        let (none, ended) = (Seen::default(), Seen { ended: true, ..Seen::default() });
        let of_workflow = Seen { workflow, ..Seen::default() };
        assert_eq!(
            seen,
            [
                none,
                of_workflow,
                none,
                Seen { ended: true, workflow, kind: false },
                ended,
                none,
                Seen { ended: true, workflow, kind: false },
                none,
                Seen { kind: true, ..Seen::default() },
                Seen { ended: true, workflow, kind: false },
            ],
            "a progress event ends nothing; broken ones are nothing"
        );
    }

    #[test]
    fn throughput_counts_the_last_thirty_seconds() {
        let t = Throughput::default();
        t.record_at(100, 30);
        t.record_at(100, 30);
        t.record_at(110, 30);
        assert_eq!(t.per_second_at(110), 3.0);
        assert_eq!(t.per_second_at(135), 1.0);
        assert_eq!(t.per_second_at(200), 0.0);
    }

    #[test]
    fn a_place_before_the_oldest_kept_entry_of_a_trimmed_stream_is_too_old() {
        let trimmed =
            Bounds { first: Some(Position::entry(10, 0)), last: Position::entry(20, 0), trimmed: true };
        assert_eq!(trimmed.gap_after(Position::entry(9, 5)), Some(ResetReason::TooOld));
        assert_eq!(trimmed.gap_after(Position::ZERO), Some(ResetReason::TooOld));
        assert_eq!(trimmed.gap_after(Position::entry(10, 0)), None);
        assert_eq!(trimmed.gap_after(Position::entry(15, 0)), None);
        assert_eq!(trimmed.gap_after(Position::entry(20, 0)), None);
        assert_eq!(trimmed.gap_after(Position::entry(20, 1)), Some(ResetReason::Unknown));

        let whole = Bounds { trimmed: false, ..trimmed };
        assert_eq!(whole.gap_after(Position::ZERO), None);
        assert_eq!(whole.gap_after(Position::entry(9, 5)), None);

        let emptied = Bounds { first: None, last: Position::entry(20, 0), trimmed: true };
        assert_eq!(emptied.gap_after(Position::entry(19, 0)), Some(ResetReason::TooOld));
        assert_eq!(emptied.gap_after(Position::entry(20, 0)), None);

        assert_eq!(Bounds::NONE.gap_after(Position::ZERO), None);
        assert_eq!(Bounds::NONE.gap_after(Position::entry(1, 0)), Some(ResetReason::Unknown));
    }

    #[test]
    fn stream_bounds_are_read_from_xinfo_stream() {
        let entry = Value::Array(vec![bulk("10-0"), Value::Array(vec![bulk("event"), bulk("queued")])]);
        let reply = |length: i64, added: Option<i64>, first: Value| {
            let mut fields =
                vec![bulk("length"), Value::Int(length), bulk("last-generated-id"), bulk("20-3")];
            if let Some(added) = added {
                fields.extend([bulk("entries-added"), Value::Int(added)]);
            }
            fields.extend([bulk("first-entry"), first]);
            Value::Array(fields)
        };
        let read = |value| Bounds::from_info(value).unwrap();
        assert_eq!(
            read(reply(5, Some(5), entry.clone())),
            Bounds { first: Some(Position::entry(10, 0)), last: Position::entry(20, 3), trimmed: false }
        );
        assert!(read(reply(5, Some(9), entry.clone())).trimmed);
        assert!(read(reply(5, None, entry)).trimmed, "Redis 6 does not say: assume trimmed");
        assert_eq!(read(reply(0, Some(9), Value::Nil)).first, None);
        assert_eq!(Bounds::from_info(Value::Nil), None);
    }

    #[test]
    fn an_entry_becomes_an_event() {
        let fields: Vec<Value> = [
            ("event", "progress"),
            ("task", "01890a5d-ac96-774b-bcce-b302099a8057"),
            ("kind", "sleep"),
            ("queue", "reports"),
            ("status", "running"),
            ("attempt", "2"),
            ("progress", "40"),
            ("error", ""),
            ("at", "0"),
        ]
        .into_iter()
        .flat_map(|(k, v)| [bulk(k), bulk(v)])
        .collect();
        let event = StoredEvent::from_fields(&"reports".into(), Position::entry(5, 1), &fields).unwrap();
        assert_eq!(event.name, "progress");
        let task = event.task().unwrap();
        assert_eq!(task.progress, Some(40));
        assert_eq!(task.attempt, 2);
        assert_eq!(task.error, None);
        assert_eq!(task.at, "1970-01-01T00:00:00.000Z");
        assert_eq!(task.kind, "sleep");
        assert_eq!(task.queue, "reports");
        assert_eq!(
            data_of(&event),
            r#"{"task_id":"01890a5d-ac96-774b-bcce-b302099a8057","kind":"sleep","queue":"reports","status":"running","attempt":2,"progress":40,"error":null,"at":"1970-01-01T00:00:00.000Z"}"#
        );
    }

    /// The event's JSON, as its SSE `data` line holds it.
    fn data_of(event: &StoredEvent) -> String {
        let lines = lines_of(event);
        let data = lines.strip_prefix(&format!("event: {}\ndata: ", event.name)).unwrap();
        data.strip_suffix('\n').unwrap().to_string()
    }

    #[test]
    fn a_delivery_is_one_sse_event_its_json_on_one_data_line() {
        // An error with line breaks of both kinds: the JSON escapes them, so one `data` line
        // carries it and the blank line after it is the event's end, not the error's.
        let fields: Vec<Value> = [
            ("event", "failed"),
            ("task", "01890a5d-ac96-774b-bcce-b302099a8057"),
            ("kind", "sleep"),
            ("queue", "reports"),
            ("status", "failed"),
            ("attempt", "3"),
            ("error", "first line\n\nthird\r\nfourth"),
            ("at", "0"),
        ]
        .into_iter()
        .flat_map(|(k, v)| [bulk(k), bulk(v)])
        .collect();
        let event =
            Arc::new(StoredEvent::from_fields(&"reports".into(), Position::entry(5, 1), &fields).unwrap());
        let frame = Delivery::Event(event.clone(), "reports=5-1".into()).frame();
        let text = std::str::from_utf8(&frame).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 5, "{text:?}");
        assert_eq!(&lines[..2], ["id: reports=5-1", "event: failed"]);
        let data = lines[2].strip_prefix("data: ").unwrap();
        assert_eq!(data, data_of(&event));
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["error"], "first line\n\nthird\r\nfourth");
        assert_eq!(json["attempt"], 3);
        assert_eq!(&lines[3..], ["", ""], "a blank line ends the event");
        assert!(!text.contains('\r'));
        // A follower with the same id is sent the very same frame, not a copy of it.
        let same = Delivery::Event(event.clone(), "reports=5-1".into()).frame();
        assert_eq!(same.as_ptr(), frame.as_ptr(), "one frame for the followers with one id");
        // Another follower's frame: the same lines, with its own id; then the first's again.
        let other = Delivery::Event(event.clone(), "reports=5-1,_kinds=4-0".into()).frame();
        assert_eq!(
            &other[..],
            format!("id: reports=5-1,_kinds=4-0\n{}", &text["id: reports=5-1\n".len()..]).as_bytes()
        );
        let shorter = Delivery::Event(event.clone(), "reports=5-".into()).frame();
        assert!(
            shorter.starts_with(b"id: reports=5-\nevent: failed\n"),
            "an id the first starts with is not the first's"
        );
        let again = Delivery::Event(event.clone(), "reports=5-1".into()).frame();
        assert_eq!(again.as_ptr(), frame.as_ptr());

        let reset = StreamReset { reason: ResetReason::TooOld, oldest: Some("reports=7-0".into()) };
        let frame = Delivery::Reset(reset.clone(), "reports=7-0".into()).frame();
        let text = std::str::from_utf8(&frame).unwrap();
        let data =
            text.strip_prefix("id: reports=7-0\nevent: reset\ndata: ").unwrap().strip_suffix("\n\n").unwrap();
        assert_eq!(serde_json::from_str::<StreamReset>(data).unwrap(), reset);
    }

    #[test]
    fn a_queue_entry_becomes_a_queue_event() {
        let fields: Vec<Value> =
            [("event", "queue"), ("queue", "reports"), ("status", "paused"), ("at", "0")]
                .into_iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect();
        let event = StoredEvent::from_fields(&"reports".into(), Position::entry(5, 2), &fields).unwrap();
        assert_eq!(event.name, "queue");
        assert_eq!(
            event.event,
            Pushed::Queue(QueueEvent {
                queue: "reports".into(),
                paused: true,
                at: "1970-01-01T00:00:00.000Z".into()
            })
        );
    }

    #[test]
    fn a_kind_entry_becomes_a_kind_event() {
        let fields: Vec<Value> = [("event", "kind"), ("kind", "resize"), ("status", "deleted"), ("at", "0")]
            .into_iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        let event = StoredEvent::from_fields(&KINDS_CHANNEL.into(), Position::entry(5, 3), &fields).unwrap();
        assert_eq!(event.name, "kind");
        assert_eq!(
            event.event,
            Pushed::Kind(KindEvent {
                kind: "resize".into(),
                declared: false,
                at: "1970-01-01T00:00:00.000Z".into()
            })
        );
        assert_eq!(event.task(), None);
    }

    #[test]
    fn xread_replies_are_read_in_place_and_bad_entries_keep_their_place() {
        let entry = |id: &str, task: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(
                    [("event", "queued"), ("task", task), ("status", "queued"), ("at", "5")]
                        .into_iter()
                        .flat_map(|(k, v)| [bulk(k), bulk(v)])
                        .collect(),
                ),
            ])
        };
        let task = "01890a5d-ac96-774b-bcce-b302099a8057";
        let entries = Value::Array(vec![entry("1-0", task), entry("2-0", "not-a-uuid"), entry("3-0", task)]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("events"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("events"), entries)]);
        let channel: Arc<str> = "default".into();
        for reply in [resp2, resp3] {
            let mut streams = read_streams(reply);
            assert_eq!(streams.len(), 1);
            let (key, entries) = streams.pop().unwrap();
            assert_eq!(key, b"events");
            let read = entries_of(&channel, &entries);
            let positions: Vec<Position> = read.iter().map(|(position, _)| *position).collect();
            assert_eq!(positions, [Position::entry(1, 0), Position::entry(2, 0), Position::entry(3, 0)]);
            let valid: Vec<bool> = read.iter().map(|(_, e)| e.is_some()).collect();
            assert_eq!(valid, [true, false, true]);
            let event = read[2].1.as_ref().unwrap();
            assert_eq!((event.task().unwrap().status, &*event.channel), (Status::Queued, "default"));
        }
        assert!(read_streams(Value::Nil).is_empty());
    }
}
