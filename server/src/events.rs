//! Task events: every process tails the queue's events stream once (a blocking read) and fans
//! each event out to its server-sent-event clients; the stream id is the SSE id, so a client
//! that reconnects with `Last-Event-ID` resumes on any instance without losing an event.

use crate::store::{Keys, TaskRecord, rfc3339};
use app::model::{Status, TaskEvent};
use redis::{
    AsyncConnectionConfig, Value,
    aio::{ConnectionManager, MultiplexedConnection},
    streams::StreamRangeReply,
};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// How many events a slow SSE client may fall behind before it catches up from Redis.
const FANOUT_BUFFER: usize = 4096;
/// How many events one catch-up read takes.
const CATCH_UP_BATCH: usize = 1000;

/// An event with its position in the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The stream id, e.g. `1700000000000-0`; the SSE `id`.
    pub id: String,
    /// The SSE `event` name: the new status, or `progress`.
    pub name: String,
    pub event: TaskEvent,
    /// `event` as JSON, serialized once however many clients it is sent to.
    pub data: Arc<str>,
}

impl StoredEvent {
    fn position(&self) -> Option<Position> {
        Position::parse(&self.id)
    }

    fn new(id: String, name: String, event: TaskEvent) -> StoredEvent {
        let data = serde_json::to_string(&event).expect("events always serialize").into();
        StoredEvent { id, name, event, data }
    }

    /// Reads an entry of the events stream from its field/value list, as Redis sent it; `None`
    /// if it is not a well-formed event. Reading the values in place, without a map per entry,
    /// is most of what tailing the stream costs a busy server.
    fn from_fields(id: String, fields: &[Value]) -> Option<StoredEvent> {
        let (mut name, mut task, mut kind, mut status, mut attempt, mut progress, mut error, mut at) =
            (None, None, "", None, 0, None, None, None);
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
                b"status" => status = value,
                b"attempt" => attempt = value.and_then(|a| a.parse().ok()).unwrap_or(0),
                b"progress" => progress = value.and_then(|p| p.parse().ok()),
                b"error" => error = value,
                b"at" => at = value,
                _ => {}
            }
        }
        Some(StoredEvent::new(
            id,
            name?.to_string(),
            TaskEvent {
                task_id: task?.parse().ok()?,
                kind: kind.to_string(),
                status: Status::parse(status?)?,
                attempt,
                progress,
                error: error.map(str::to_string),
                at: rfc3339(at?.parse().ok()?),
            },
        ))
    }

    /// The event that stands for a task's current state, at stream position `id`.
    pub fn snapshot(record: &TaskRecord, id: String) -> StoredEvent {
        StoredEvent::new(
            id,
            record.status.as_str().to_string(),
            TaskEvent {
                task_id: record.id,
                kind: record.kind.clone(),
                status: record.status,
                attempt: record.attempts,
                progress: record.progress,
                error: record.error.clone(),
                at: rfc3339(record.updated_ms),
            },
        )
    }
}

/// The entries of an `XRANGE` reply (or of one stream of an `XREAD` reply): each entry's id,
/// with its event when it is a well-formed one.
fn entries_of(reply: Value) -> Vec<(String, Option<StoredEvent>)> {
    let Value::Array(entries) = reply else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else { return None };
            let fields = match parts.pop() {
                Some(Value::Array(fields)) => fields,
                _ => Vec::new(),
            };
            let id = match parts.pop() {
                Some(Value::BulkString(id)) => String::from_utf8(id).ok()?,
                Some(Value::SimpleString(id)) => id,
                _ => return None,
            };
            let event = StoredEvent::from_fields(id.clone(), &fields);
            Some((id, event))
        })
        .collect()
}

/// The entries of an `XREAD` reply over one stream (RESP2 array or RESP3 map); none on a timeout.
fn read_entries(reply: Value) -> Vec<(String, Option<StoredEvent>)> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut key_and_entries) if key_and_entries.len() == 2 => key_and_entries.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(entries_of).collect()
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

/// A stream id as a comparable pair (milliseconds, sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(u64, u64);

impl Position {
    /// Parses `ms-seq` (or a bare `ms`); `None` for anything else.
    pub fn parse(id: &str) -> Option<Position> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(Position(ms.parse().ok()?, seq.parse().ok()?))
    }
}

/// Which events a subscriber wants, from where, and for how long.
#[derive(Clone, Debug, Default)]
pub struct Follow {
    /// Only this task's events.
    pub task: Option<Uuid>,
    /// Replay what came after this stream id first (from `Last-Event-ID`).
    pub after: Option<String>,
    /// Send this first (a task's current state).
    pub first: Option<StoredEvent>,
    /// End after the first terminal event.
    pub until_terminal: bool,
}

/// The process's view of the events stream; cheap to clone.
#[derive(Clone)]
pub struct Events {
    conn: ConnectionManager,
    keys: Keys,
    fanout: broadcast::Sender<Arc<StoredEvent>>,
    finished: Arc<Throughput>,
    shutdown: CancellationToken,
}

impl Events {
    /// Starts tailing the events stream of `keys` from its current end, until `shutdown`.
    pub async fn start(
        client: redis::Client,
        conn: ConnectionManager,
        keys: Keys,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<Events> {
        let (fanout, _) = broadcast::channel(FANOUT_BUFFER);
        let events = Events { conn, keys, fanout, finished: Arc::new(Throughput::default()), shutdown };
        // Fix the starting point now: an event appended before the tail's first read still
        // reaches every subscriber that connected after `start` returned.
        let from = events.latest_id().await?;
        tokio::spawn(events.clone().tail(client, from));
        Ok(events)
    }

    async fn latest_id(&self) -> redis::RedisResult<String> {
        let latest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(latest.ids.first().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into()))
    }

    async fn tail(self, client: redis::Client, from: String) {
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let mut conn: Option<MultiplexedConnection> = None;
        // Never skip an id, even across reconnects, so no subscriber misses an event.
        let mut last = from;
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            let step = async {
                let conn = match &mut conn {
                    Some(conn) => conn,
                    None => conn.insert(client.get_multiplexed_async_connection_with_config(&config).await?),
                };
                let from = last.clone();
                let reply: Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(CATCH_UP_BATCH)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(self.keys.events())
                    .arg(&from)
                    .query_async(conn)
                    .await?;
                redis::RedisResult::Ok((from, read_entries(reply)))
            };
            let step = tokio::select! {
                step = step => step,
                () = self.shutdown.cancelled() => break,
            };
            match step {
                Ok((from, entries)) => {
                    failures = 0;
                    last = entries.last().map(|(id, _)| id.clone()).unwrap_or(from);
                    for (_, event) in entries {
                        if let Some(event) = event {
                            if event.event.status.is_terminal() && event.name != "progress" {
                                self.finished.record(1);
                            }
                            // No receivers is fine: nobody is watching right now.
                            let _ = self.fanout.send(Arc::new(event));
                        }
                    }
                }
                Err(e) => {
                    conn = None;
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

    /// Tasks finished per second over the last half minute, across every worker.
    pub fn throughput(&self) -> f64 {
        self.finished.per_second()
    }

    /// A receiver of every event from now on, for a caller that waits for one task to end.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.fanout.subscribe()
    }

    /// Events after stream id `after`, oldest first, at most `count`.
    pub async fn after(&self, after: &str, count: usize) -> redis::RedisResult<Vec<StoredEvent>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.keys.events())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(entries_of(reply).into_iter().filter_map(|(_, event)| event).collect())
    }

    /// A task's record together with the stream id current when it was read (one MULTI), so that
    /// following from that id misses nothing and repeats nothing.
    pub async fn snapshot(&self, task_key: &str, id: Uuid) -> redis::RedisResult<Option<StoredEvent>> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("HGETALL")
            .arg(task_key);
        let (latest, fields): (StreamRangeReply, HashMap<String, String>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let position = latest.ids.first().map(|e| e.id.clone()).unwrap_or_else(|| "0-0".into());
        Ok(TaskRecord::from_fields(id, &fields).map(|record| StoredEvent::snapshot(&record, position)))
    }

    /// Streams events as `follow` asks, until the receiver is dropped or the process stops.
    pub fn follow(&self, follow: Follow) -> mpsc::Receiver<Arc<StoredEvent>> {
        let (tx, rx) = mpsc::channel(16);
        // Subscribe before reading history, so nothing falls between the two.
        let live = self.fanout.subscribe();
        let pump = self.clone().pump(follow, live, tx);
        tracing::trace!(future_bytes = std::mem::size_of_val(&pump), "following events");
        tokio::spawn(pump);
        rx
    }

    async fn pump(
        self,
        follow: Follow,
        mut live: broadcast::Receiver<Arc<StoredEvent>>,
        tx: mpsc::Sender<Arc<StoredEvent>>,
    ) {
        let wanted = |event: &StoredEvent| follow.task.is_none_or(|id| id == event.event.task_id);
        let mut sent: Option<Position> = None;
        let mut resume_from = follow.after.clone();
        if let Some(first) = follow.first.clone() {
            sent = first.position();
            let done = first.event.status.is_terminal() && follow.until_terminal;
            if tx.send(Arc::new(first.clone())).await.is_err() || done {
                return;
            }
            resume_from = Some(first.id);
        }
        loop {
            // Catch up from Redis: after a Last-Event-ID, a snapshot, or falling behind.
            if let Some(after) = resume_from.take() {
                let mut cursor = after;
                loop {
                    // Boxed: a Redis call's future is large, and every subscriber's task would
                    // carry its size even though catching up is rare.
                    let batch = match Box::pin(self.after(&cursor, CATCH_UP_BATCH)).await {
                        Ok(batch) => batch,
                        Err(e) => {
                            warn!(error = %e, "replaying task events failed");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    for event in &batch {
                        sent = event.position();
                        if wanted(event) {
                            let done = event.event.status.is_terminal() && follow.until_terminal;
                            if tx.send(Arc::new(event.clone())).await.is_err() || done {
                                return;
                            }
                        }
                    }
                    match batch.last() {
                        Some(last) if batch.len() == CATCH_UP_BATCH => cursor = last.id.clone(),
                        _ => break,
                    }
                }
            }
            let event = tokio::select! {
                event = live.recv() => event,
                () = tx.closed() => return,
                () = self.shutdown.cancelled() => return,
            };
            match event {
                Ok(event) => {
                    let position = event.position();
                    if sent.is_some() && position <= sent {
                        continue;
                    }
                    sent = position;
                    if wanted(&event) {
                        let done = event.event.status.is_terminal() && follow.until_terminal;
                        if tx.send(event).await.is_err() || done {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    resume_from = Some(match sent {
                        Some(Position(ms, seq)) => format!("{ms}-{seq}"),
                        None => "0-0".into(),
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
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
    fn stream_positions_compare_numerically() {
        assert!(Position::parse("10-0") > Position::parse("9-5"));
        assert!(Position::parse("10-10") > Position::parse("10-9"));
        assert_eq!(Position::parse("12"), Some(Position(12, 0)));
        assert_eq!(Position::parse("x-1"), None);
    }

    #[test]
    fn an_entry_becomes_an_event() {
        let fields: Vec<Value> = [
            ("event", "progress"),
            ("task", "01890a5d-ac96-774b-bcce-b302099a8057"),
            ("kind", "sleep"),
            ("status", "running"),
            ("attempt", "2"),
            ("progress", "40"),
            ("error", ""),
            ("at", "0"),
        ]
        .into_iter()
        .flat_map(|(k, v)| [bulk(k), bulk(v)])
        .collect();
        let event = StoredEvent::from_fields("5-1".into(), &fields).unwrap();
        assert_eq!(event.name, "progress");
        assert_eq!(event.event.progress, Some(40));
        assert_eq!(event.event.attempt, 2);
        assert_eq!(event.event.error, None);
        assert_eq!(event.event.at, "1970-01-01T00:00:00.000Z");
        assert_eq!(event.event.kind, "sleep");
        assert_eq!(
            event.data.as_ref(),
            r#"{"task_id":"01890a5d-ac96-774b-bcce-b302099a8057","kind":"sleep","status":"running","attempt":2,"progress":40,"error":null,"at":"1970-01-01T00:00:00.000Z"}"#
        );
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
        for reply in [resp2, resp3] {
            let read = read_entries(reply);
            let ids: Vec<&str> = read.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, ["1-0", "2-0", "3-0"]);
            let valid: Vec<bool> = read.iter().map(|(_, e)| e.is_some()).collect();
            assert_eq!(valid, [true, false, true]);
            assert_eq!(read[2].1.as_ref().unwrap().event.status, Status::Queued);
        }
        assert!(read_entries(Value::Nil).is_empty());
    }
}
