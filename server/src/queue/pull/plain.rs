//! Pulled leases without Lua (docs/benchmark-notes.md, "Fifteenth step"). A lease request on a
//! queue without limits takes its new entries as a worker process's finish round does
//! (queue/finish/plain.rs): it reads them for the pulling consumer, then watches and reads their
//! records (and the views a grant shows), then one transaction starts them (the record's running
//! fields, the `running` event, a payload kept under a key of its own read, a shorter lease's
//! idle time set). Three round trips (and a read of the queue's lanes every `RECLAIM_EVERY`) on a
//! connection of the plain way's own, where pull.lua took one: Redis does less, the server more.
//!
//! What needs a decision goes to pull.lua, which takes given entries as the claim script does: the
//! entries whose tasks need one (ended, running, cancelled, expired; the rest start here), all of
//! a read on a queue found with limits, or whose transaction a change voided. Taking over the
//! entries whose holders stopped renewing them is the script's alone: each process's lease
//! requests on a queue go through it at least every `RECLAIM_EVERY`, as often as it looks.

use super::{CONSUMER, Pulled};
use crate::{
    events::append_task_events,
    queue::{
        Queue,
        fetch::{Given, hand_back_unclaimed},
        finish::plain::read_new,
        lease::{
            idle_for,
            plain::{Found, has_limits, queue_read, queue_starts, time_of},
        },
        record,
        transaction::{SCRIPTED_FOR, allows_transactions, applied},
    },
    redis_client::Conn,
    store::now_ms,
};
use redis::{RedisResult, Value};
use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};
use tracing::warn;
use uuid::Uuid;

/// How often a queue's lease requests in this process go through pull.lua at least, which takes
/// over the entries whose holders stopped renewing them (and looks at each lane at most this
/// often); also how long the queue's lanes, as read, are used.
const RECLAIM_EVERY: Duration = Duration::from_millis(250);

/// How long the plain way rests after a failure (a connection refused, an ACL user without the
/// transaction commands, a lane without its group).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a grant shows of a record beyond its run reply (lease.lua's `VIEW_FIELDS` and
/// `VIEW_OPTION_FIELDS`, and the fields it takes from its read: started, payload size, expiry).
/// The start's read has the first three and the options already: the rest are read with it.
const VIEW: [&str; 10] = [
    record::STARTED,
    record::PAYLOAD_BYTES,
    record::EXPIRES,
    record::CREATED,
    record::FINISHED,
    record::ERROR,
    record::NEXT_RUN,
    record::SUBSCRIPTION,
    record::WORKFLOW,
    record::WORKFLOW_STEP,
];

/// How many lease requests of a queue may go the plain way at once in this process, each on a
/// connection of its own (a watch holds from the read to the transaction on its connection); more
/// at once go through the script.
const CONNECTIONS: usize = 4;

/// A queue handle's way of taking pulled leases without Lua.
#[derive(Default)]
pub(in crate::queue) struct PlainPulls {
    state: std::sync::Mutex<State>,
    /// The connections not in use (made as needed, dropped after an error).
    idle: std::sync::Mutex<Vec<Conn>>,
    /// The connections in use.
    busy: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// When the plain way last failed: it rests `RETRY_AFTER`.
    failed_at: Option<Instant>,
    /// When a lease request last went through the script (which takes over expired entries).
    scripted_at: Option<Instant>,
    /// Since when the requests go through the script, for `SCRIPTED_FOR`; after it, the queue's
    /// limits are looked at before anything is read.
    scripted_since: Option<Instant>,
    /// Whether the limits were looked at since the last `scripted_since` (or ever).
    looked: bool,
    /// The queue's lanes as last read, and when.
    lanes: Option<(Instant, Vec<String>)>,
}

/// What a plain lease request did.
pub(super) enum Pulls {
    /// Nothing: the script takes the leases as it would have.
    Declined,
    /// The leases taken, and the entries read that need the script (for it to take them).
    Taken(Vec<Pulled>, Vec<Given>),
}

/// A plain lease request counted busy, until dropped.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    /// Counts one more busy; with how many were busy before it.
    fn count(busy: &'a AtomicUsize) -> (Busy<'a>, usize) {
        let before = busy.fetch_add(1, Ordering::AcqRel);
        (Busy(busy), before)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PlainPulls {
    /// Takes up to `max` leases of `lease_ms` on `queue`'s new entries of `kinds` for `worker`
    /// without Lua, where the queue has no limits and their tasks need no decision.
    pub(super) async fn pull(
        &self,
        queue: &Queue,
        worker: &str,
        kinds: &str,
        max: usize,
        lease_ms: u64,
    ) -> Pulls {
        let looked = {
            let mut state = self.state();
            let resting = state.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER)
                || state.scripted_since.is_some_and(|at| at.elapsed() < SCRIPTED_FOR);
            let reclaim_due = state.scripted_at.is_none_or(|at| at.elapsed() >= RECLAIM_EVERY);
            if queue.conn.is_cluster() || max == 0 || resting || reclaim_due {
                state.scripted_at = Some(Instant::now());
                return Pulls::Declined;
            }
            state.looked
        };
        let Some((mut conn, busy)) = self.checkout(queue).await else { return Pulls::Declined };
        let taken = self.take(&mut conn, queue, looked, worker, kinds, max, lease_ms).await;
        drop(busy);
        match taken {
            Ok(pulls) => {
                self.idle().push(conn);
                pulls
            }
            Err((e, given)) => {
                // The connection goes: its state is unknown. A transaction whose answer was lost
                // may have been applied: the script then finds those tasks running and takes them
                // over (their leases were never handed out), logging those attempts as lost.
                warn!(queue = queue.name(), error = %e, "pulling without Lua failed: the script takes the leases");
                self.state().failed_at = Some(Instant::now());
                match given.is_empty() {
                    true => Pulls::Declined,
                    false => Pulls::Taken(Vec::new(), given),
                }
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection of the plain way's, counted busy until its guard drops (also when the
    /// request that holds it is dropped mid-way): an idle one, or a new one while fewer than
    /// `CONNECTIONS` are; None when that many are busy or none could be made.
    async fn checkout(&self, queue: &Queue) -> Option<(Conn, Busy<'_>)> {
        let (busy, before) = Busy::count(&self.busy);
        if before >= CONNECTIONS {
            return None;
        }
        let idle = self.idle().pop();
        let conn = match idle {
            Some(conn) => Ok(conn),
            None => connect(queue).await,
        };
        conn.map(|conn| (conn, busy)).inspect_err(|e| {
            warn!(queue = queue.name(), error = %e, "no connection for plain pulls: the script takes the leases");
            self.state().failed_at = Some(Instant::now());
        })
        .ok()
    }

    /// The plain lease request's round trips on `conn` (`looked`: the queue's limits were looked
    /// at already); on an error, the entries it read (for the script).
    #[allow(clippy::too_many_arguments)]
    async fn take(
        &self,
        conn: &mut Conn,
        queue: &Queue,
        looked: bool,
        worker: &str,
        kinds: &str,
        max: usize,
        lease_ms: u64,
    ) -> Result<Pulls, (redis::RedisError, Vec<Given>)> {
        let none = |e| (e, Vec::new());
        if !looked {
            if has_limits(conn, queue).await.map_err(none)? {
                self.state().scripted_since = Some(Instant::now());
                return Ok(Pulls::Declined);
            }
            self.state().looked = true;
        }
        let known = self.state().lanes.clone().filter(|(at, _)| at.elapsed() < RECLAIM_EVERY);
        let lanes = match known {
            Some((_, lanes)) => lanes,
            None => {
                let lanes: Vec<String> =
                    redis::cmd("SMEMBERS").arg(queue.keys.lanes()).query_async(conn).await.map_err(none)?;
                self.state().lanes = Some((Instant::now(), lanes.clone()));
                lanes
            }
        };
        let lanes: Vec<(String, [String; 3])> = lanes
            .into_iter()
            .filter(|kind| kinds == "*" || kinds.split(',').any(|k| k == kind))
            .map(|kind| {
                let streams = queue.keys.lane(&kind);
                (kind, streams)
            })
            .collect();
        if lanes.is_empty() {
            return Ok(Pulls::Taken(Vec::new(), Vec::new()));
        }
        let mut given = read_new(conn, CONSUMER, &lanes, max).await.map_err(none)?;
        // Each stream may bring `max`: what does not fit goes back for others to take, and the
        // next requests leave the reading to the script for a while.
        let extra = given.split_off(max.min(given.len()));
        if !extra.is_empty() {
            self.script_for_a_while();
            if let Err(e) = hand_back_unclaimed(queue, &extra).await {
                // Left pending for the pulling consumer, they are taken over once idle a lease's length.
                warn!(queue = queue.name(), error = %e, "handing back the entries a lease request read failed");
            }
        }
        if given.is_empty() {
            return Ok(Pulls::Taken(Vec::new(), Vec::new()));
        }
        match start(conn, queue, worker, &given, lease_ms).await {
            Ok(Granted::Pulled(pulled, rest)) => Ok(Pulls::Taken(pulled, rest)),
            Ok(Granted::Limited) => {
                self.script_for_a_while();
                Ok(Pulls::Taken(Vec::new(), given))
            }
            Ok(Granted::Voided) => Ok(Pulls::Taken(Vec::new(), given)),
            Err(e) => Err((e, given)),
        }
    }

    /// The next requests go through the script for `SCRIPTED_FOR`, then look at the limits.
    fn script_for_a_while(&self) {
        let mut state = self.state();
        (state.scripted_since, state.looked) = (Some(Instant::now()), false);
    }
}

/// A connection for plain pulls: one that nothing reconnects, on which Redis has just let this
/// user watch and run a transaction.
async fn connect(queue: &Queue) -> RedisResult<Conn> {
    let mut conn = queue.client.connect_blocking(Duration::ZERO).await?;
    allows_transactions(&mut conn, queue).await?;
    Ok(conn)
}

/// What the watched read and the transaction made of the entries read.
enum Granted {
    /// The leases taken, and the entries whose tasks need the script.
    Pulled(Vec<Pulled>, Vec<Given>),
    /// The queue has limits (nothing started; the watch let go).
    Limited,
    /// Nothing started here: every task needs the script, or a change voided the transaction.
    Voided,
}

/// Watches and reads the records of `given`'s tasks (and the queue's limits), then starts, in one
/// transaction, those that need no decision, for `worker`, leased `lease_ms`.
async fn start(
    conn: &mut Conn,
    queue: &Queue,
    worker: &str,
    given: &[Given],
    lease_ms: u64,
) -> RedisResult<Granted> {
    let mut pipe = redis::pipe();
    // The view a grant shows is read with the record, in the same command.
    let plan = queue_read(&mut pipe, queue, given, &VIEW);
    pipe.cmd("TIME");
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let mut found = Found::of(&mut replies, &plan)?;
    let mut views: HashMap<Uuid, Vec<Option<Vec<u8>>>> = plan.tasks().zip(found.take_also()).collect();
    let at_ms = time_of(replies.next())?;
    let limited = found.limited();
    let read = found.read(given, plan, at_ms).filter(|read| !read.starts.is_empty());
    let Some(mut read) = read else {
        redis::cmd("UNWATCH").exec_async(conn).await?;
        return Ok(if limited { Granted::Limited } else { Granted::Voided });
    };
    let rest = std::mem::take(&mut read.rest);
    let idle = (queue.settings.lease.as_millis() as u64).saturating_sub(lease_ms);
    let mut pipe = redis::pipe();
    // By hand rather than `atomic()`, as for plain ends: `MULTI`'s own answer is read.
    pipe.ignore_errors().cmd("MULTI");
    let mut events = Vec::with_capacity(read.starts.len());
    let shortened: Vec<(String, String)> = match idle {
        0 => Vec::new(),
        _ => read.starts.iter().map(|start| start.entry(queue)).collect(),
    };
    let starting = queue_starts(&mut pipe, queue, worker, read, &mut events);
    // A shorter lease starts idle the rest of the queue's, so that it is taken over `lease_ms`
    // from now (pull.lua's `XCLAIM … IDLE`).
    for (stream, entry) in &shortened {
        idle_for(&mut pipe, stream, CONSUMER, entry, idle);
    }
    append_task_events(&mut pipe, queue.keys.events(), queue.settings.events_maxlen, &events);
    pipe.cmd("EXEC");
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let Some(mut applied) = applied(replies)? else { return Ok(Granted::Voided) };
    let expires_ms = now_ms() + lease_ms;
    let now = at_ms.to_string();
    let pulled = starting.runs(&mut applied).into_iter().filter_map(|run| {
        let view = view_of(views.remove(&run.task_id).unwrap_or_default(), &now);
        queue.pulled_of(run, view, lease_ms, expires_ms)
    });
    Ok(Granted::Pulled(pulled.collect(), rest))
}

/// A grant's view of a record, `field, value, …`, as lease.lua's `take_lease` gives it, from the
/// `VIEW` fields read before the start at `now`.
fn view_of(read: Vec<Option<Vec<u8>>>, now: &str) -> Vec<Vec<u8>> {
    let mut read = read.into_iter().map(Option::unwrap_or_default);
    let mut view = Vec::with_capacity(2 * VIEW.len() + 2);
    view.push(record::UPDATED.as_bytes().to_vec());
    view.push(now.as_bytes().to_vec());
    for field in VIEW {
        let value = read.next().unwrap_or_default();
        // A first start stamps its record's start now.
        let value = match field == record::STARTED && value.is_empty() {
            true => now.as_bytes().to_vec(),
            false => value,
        };
        view.push(field.as_bytes().to_vec());
        view.push(value);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{
        GROUP, NewTask, WorkflowStep,
        testing::{anonymous, echo_task, fcalls, private_queue, without_multi},
    };
    use app::model::Priority;
    use bytes::Bytes;
    use redis::AsyncCommands;

    /// The pulling worker the tests' leases name.
    const PULLER: &str = "puller-7";

    /// Makes `queue`'s next lease request go through the script (`due`), or none go through it for
    /// the takeovers (an hour from now: the plain way whenever it can).
    fn takeover_due(queue: &Queue, due: bool) {
        let mut state = queue.plain_pulls.state();
        state.scripted_at = (!due).then(|| Instant::now() + Duration::from_secs(3600));
    }

    /// Pulls up to `max` leases of `lease_s` seconds for `PULLER`; with how many functions ran.
    async fn pull(queue: &Queue, max: usize, lease_s: u64) -> (Vec<Pulled>, u64) {
        let before = fcalls(queue).await;
        let pulled = queue.pull(PULLER, "*", max, Duration::from_secs(lease_s)).await.unwrap();
        (pulled, fcalls(queue).await - before)
    }

    /// What a pulled lease shows and leaves in Redis: the grant (but its expiry, by this process's
    /// clock), the record, the entry's holder and how long it counts as idle (whole seconds, from
    /// the queue's 30 s lease), and the task's events.
    async fn written(queue: &Queue, pulled: &Pulled) -> Vec<String> {
        let id = pulled.token.task_id;
        let token = &pulled.token;
        let mut lines = vec![anonymous(
            &format!(
                "{:?} {:?} {:?} {} {} {}",
                pulled.record,
                pulled.payload,
                pulled.payload_type,
                token.kind,
                token.stream_index,
                token.lease_ms
            ),
            id,
        )];
        let mut conn = queue.conn.clone();
        let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&id)).await.unwrap();
        let mut fields: Vec<String> = record
            .iter()
            .map(|(f, v)| anonymous(&format!("{f}={}", v.replace(&token.token, "TOKEN")), id))
            .collect();
        fields.sort();
        lines.extend(fields);
        let stream = &queue.keys.lane_stream(&token.kind, token.stream_index);
        let pending: redis::streams::StreamPendingCountReply =
            conn.xpending_count(stream, GROUP, "-", "+", 100).await.unwrap();
        for entry in pending.ids.iter().filter(|p| p.id == token.entry_id) {
            lines.push(format!("held by {}, idle {} s", entry.consumer, entry.last_delivered_ms / 1000));
        }
        let events: redis::streams::StreamRangeReply = conn.xrange_all(queue.keys.events()).await.unwrap();
        for entry in &events.ids {
            for (field, value) in &entry.map {
                let value: String = redis::from_redis_value(value.clone()).unwrap();
                for event in value.split('\u{1e}').filter(|e| e.contains(&id.to_string())) {
                    lines.push(anonymous(&format!("{field}: {event}"), id));
                }
            }
        }
        lines
    }

    /// A lease request whose tasks need no decision takes them without Lua and leaves what the
    /// script leaves: the grant (view, payload, where its entry is), the record, the entry held by
    /// the pulling consumer (a shorter lease's idle already the rest of the queue's), the events.
    #[tokio::test]
    async fn a_lease_request_takes_new_tasks_without_lua_as_the_script_does() {
        let (_redis, queue) = private_queue().await;
        let with_options = || {
            let mut task = echo_task(Bytes::from(vec![0xff; 100]));
            task.workflow = Some(WorkflowStep { workflow: Uuid::now_v7(), step: "fetch".into() });
            task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
            task.expires_ms = Some(now_ms() + 3_600_000);
            task.max_attempts = 3;
            task.timeout_ms = Some(5000);
            task
        };
        // (a task, the lease's length in s)
        let variants = [(echo_task(Bytes::from_static(b"{\"n\": 1}")), 30), (with_options(), 3)];
        for (variant, lease_s) in variants {
            let (mut by_script, mut by_plain): (NewTask, NewTask) = (variant.clone(), variant);
            by_script.id = Uuid::now_v7();
            by_plain.id = Uuid::now_v7();
            queue.enqueue(&by_script).await.unwrap();
            queue.enqueue(&by_plain).await.unwrap();
            takeover_due(&queue, true);
            let (script_pulled, functions) = pull(&queue, 1, lease_s).await;
            assert_eq!((script_pulled.len(), functions), (1, 1), "the script took the first");
            let (plain_pulled, functions) = pull(&queue, 1, lease_s).await;
            assert_eq!((plain_pulled.len(), functions), (1, 0), "the second went without Lua");
            assert_eq!(plain_pulled[0].token.task_id, by_plain.id);
            let (by_script, by_plain) =
                (written(&queue, &script_pulled[0]).await, written(&queue, &plain_pulled[0]).await);
            assert!(by_script.contains(&format!("worker={PULLER}")), "{by_script:?}");
            assert!(by_script.iter().any(|l| l.starts_with("e: running\u{1f}ID")), "{by_script:?}");
            let idle = format!("held by pull, idle {} s", 30 - lease_s);
            assert!(by_script.contains(&idle), "{by_script:?}");
            assert_eq!(by_plain, by_script);
        }
    }

    /// The entries a plain request reads whose tasks need a decision go to the script, which takes
    /// them as it takes given entries (an ended task's is dropped); the rest start here.
    #[tokio::test]
    async fn entries_that_need_a_decision_go_to_the_script() {
        let (_redis, queue) = private_queue().await;
        let (ended, waiting) = (echo_task(Bytes::from_static(b"1")), echo_task(Bytes::from_static(b"2")));
        queue.enqueue(&ended).await.unwrap();
        queue.enqueue(&waiting).await.unwrap();
        let mut conn = queue.conn.clone();
        let _: () = conn.hset(queue.keys.task(&ended.id), record::STATUS, "cancelled").await.unwrap();
        takeover_due(&queue, false);
        let (pulled, functions) = pull(&queue, 10, 30).await;
        assert_eq!(pulled.iter().map(|p| p.token.task_id).collect::<Vec<_>>(), [waiting.id]);
        assert_eq!(functions, 1, "the script decided the ended task's entry");
        let pending: redis::streams::StreamPendingReply =
            conn.xpending(&queue.keys.lane("echo")[1], GROUP).await.unwrap();
        assert_eq!(pending.count(), 1, "the ended task's entry was dropped");
    }

    /// Limits set on a queue the plain way had looked at are found by the watched read: the
    /// entries read go to the script, which applies them (a paused queue starts nothing, and the
    /// entries go back to their stream), and the next requests go through the script.
    #[tokio::test]
    async fn limits_found_after_the_read_leave_the_entries_to_the_script() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        takeover_due(&queue, false);
        let first = echo_task(Bytes::from_static(b"1"));
        queue.enqueue(&first).await.unwrap();
        assert_eq!(pull(&queue, 10, 30).await.1, 0, "looked, found no limits, went plain");
        let task = echo_task(Bytes::from_static(b"2"));
        queue.enqueue(&task).await.unwrap();
        let _: () = conn.hset(queue.keys.settings(), "paused", "1").await.unwrap();
        let (pulled, functions) = pull(&queue, 10, 30).await;
        assert_eq!((pulled.len(), functions), (0, 1));
        let record: HashMap<String, String> = conn.hgetall(queue.keys.task(&task.id)).await.unwrap();
        assert_eq!(record[record::STATUS], "queued");
        let entries: redis::streams::StreamRangeReply =
            conn.xrange_all(&queue.keys.lane("echo")[1]).await.unwrap();
        let last: Option<String> = entries.ids.last().and_then(|e| e.get("task"));
        assert_eq!(last, Some(task.id.to_string()), "its entry is back at the end of the stream");
        assert_eq!(pull(&queue, 10, 30).await.1, 1, "the next request goes through the script");
    }

    /// New entries on two streams at once: the most urgent start, the others (read beyond `max`)
    /// go back to the end of their stream, and the next requests leave the reading to the script.
    #[tokio::test]
    async fn entries_read_beyond_the_request_go_back() {
        let (_redis, queue) = private_queue().await;
        takeover_due(&queue, false);
        let normal = echo_task(Bytes::from_static(b"normal"));
        let mut high = echo_task(Bytes::from_static(b"high"));
        high.priority = Priority::High;
        queue.enqueue(&normal).await.unwrap();
        queue.enqueue(&high).await.unwrap();
        let (pulled, functions) = pull(&queue, 1, 30).await;
        assert_eq!((pulled.len(), functions), (1, 0));
        assert_eq!(pulled[0].token.task_id, high.id);
        let (pulled, functions) = pull(&queue, 1, 30).await;
        assert_eq!((pulled.len(), functions), (1, 1), "the script reads for a while");
        assert_eq!(pulled[0].token.task_id, normal.id);
    }

    /// A Redis user that may not run a transaction gets its leases from the script: the plain
    /// way's first connection finds it out, and the way rests.
    #[tokio::test]
    async fn a_user_refused_transactions_gets_its_leases_from_the_script() {
        let (redis, queue) = private_queue().await;
        let refused = without_multi(&redis.0, &queue).await;
        takeover_due(&refused, false);
        queue.enqueue(&echo_task(Bytes::from_static(b"p"))).await.unwrap();
        let (pulled, functions) = pull(&refused, 10, 30).await;
        assert_eq!((pulled.len(), functions), (1, 1));
        assert!(refused.plain_pulls.state().failed_at.is_some(), "the plain way rests");
        assert_eq!(refused.plain_pulls.busy.load(Ordering::Acquire), 0, "no connection left counted busy");
    }

    /// A lease request dropped on its way (a timeout, a client gone) leaves no connection counted
    /// busy: else, after `CONNECTIONS` such drops, every request would decline the plain way.
    #[tokio::test]
    async fn a_dropped_request_leaves_no_connection_counted_busy() {
        let (_redis, queue) = private_queue().await;
        takeover_due(&queue, false);
        let mut dropped = 0;
        for _ in 0..=CONNECTIONS {
            // Polled once, to its first wait on Redis (a connection, a reply), then dropped. (A
            // zero timeout was not once: tokio rounds its deadline up to the next millisecond,
            // and meanwhile a request could finish.)
            let pulling = queue.plain_pulls.pull(&queue, PULLER, "*", 10, 30_000);
            dropped += usize::from(futures::FutureExt::now_or_never(pulling).is_none());
        }
        assert!(dropped > 0, "a request was dropped waiting on Redis");
        assert_eq!(queue.plain_pulls.busy.load(Ordering::Acquire), 0, "no connection left counted busy");
    }
}
