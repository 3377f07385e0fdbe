//! Workflows: steps that run as tasks once the steps they come after have ended, their payloads
//! built from those steps' results.
//!
//! A workflow is one Redis hash: its definition, its status, and for each step only what was
//! decided once and for all: the ids of the tasks started for it (`t:{step}`), or why its
//! payload was refused (`r:{step}`). Everything else is worked out again from the tasks
//! (`plan.rs`) whenever a step's task ends: the end's event names the workflow (the task record
//! carries it, `events.lua`), and every server that sees it looks at the workflow, one at a
//! time under a short lock. A step's tasks are submitted under claims of their own
//! (`Tasks::submit_step`), so a step started twice — two servers, a crash between submitting
//! and recording — still has one task; and a success reported twice is one end of one task.
//! Events missed while no server ran are caught by a sweep of the running workflows, which
//! every server makes every few seconds over those not looked at for a while.
//!
//! Keys (see `store.rs` for the queues'), all tagged `{_workflows}` (`layout.rs`), as a workflow
//! is stored, listed and claimed together with the listings and its `Idempotency-Key`:
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:{_workflows}:wf:{id}` | hash | the definition (`spec`), `status`, times, `t:`/`r:`/`s:` per step, `idem` (the name of its idempotency key) |
//! | `{prefix}:{_workflows}:wf:{id}:lock` | string | who is looking at the workflow now (15 s at most) |
//! | `{prefix}:{_workflows}:workflows` | zset | every workflow by creation time (the listing) |
//! | `{prefix}:{_workflows}:workflows:running` | zset | running workflows by when to look at them again |
//! | `{prefix}:{_workflows}:wf-idem:{sha1}` | string | `{id} {digest}` of a creation's `Idempotency-Key` |

mod plan;
mod spec;

pub use spec::Refusal;

use crate::redis_client::Conn;
use crate::{
    events::{Cursor, Events, StepEvent},
    queue::WorkflowStep,
    store::{TaskRecord, now_ms, rfc3339},
    tasks::{Options, Payload, Submission, SubmitError, Tasks},
};
use app::model::{
    Status,
    workflow::{StepRequest, StepState, StepView, WorkflowRequest, WorkflowStatus, WorkflowView},
};
use futures::{StreamExt, TryStreamExt};
use plan::{Fact, Plan};
use redis::AsyncCommands;
use serde_json::{Value, json};
use spec::Spec;
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// How long one server may hold a workflow's lock (a crashed holder's lapses after it).
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a running workflow is looked at without an event asking for it.
const RECHECK: Duration = Duration::from_secs(10);
/// How often each server sweeps the running workflows for those due a look.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// The most workflows one sweep takes.
const SWEEP_BATCH: usize = 200;
/// How many workflows one server looks at at once.
const LOOKERS: usize = 8;
/// The largest workflow definition: it is read again at every look, so large payloads belong in
/// tasks of their own (a step's result passes on by reference), not in the definition.
pub const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;
/// How many tasks of a map step are submitted at once.
const SUBMIT_AT_ONCE: usize = 16;

/// Why a workflow was not created; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A step's task would be refused (its kind, its options, its payload).
    #[error("step `{step}`: {error}")]
    Step { step: String, error: SubmitError },
    #[error("this Idempotency-Key was used for a different workflow")]
    IdempotencyKeyReused,
    /// `--durable-submit`: stored on the primary, not confirmed by a replica in time.
    #[error(
        "no replica of Redis confirmed workflow {0} in time: it is stored on the primary, not yet \
         on a replica, so a failover now could lose it; retry with the same Idempotency-Key to have \
         it confirmed"
    )]
    Unconfirmed(Uuid),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// A definition that passed every check, with each step's queue settled.
pub struct Checked {
    spec: Spec,
}

impl Checked {
    /// The queues its steps run in, each once.
    pub fn queues(&self) -> Vec<String> {
        queues_of(&self.spec)
    }
}

/// The Redis keys of the workflows, all tagged `{_workflows}` (`layout.rs`).
#[derive(Clone, Debug)]
pub struct WorkflowKeys {
    base: String,
}

impl WorkflowKeys {
    /// The keys under `prefix`.
    pub fn new(prefix: &str) -> WorkflowKeys {
        WorkflowKeys::under(&crate::layout::WORKFLOWS.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> WorkflowKeys {
        WorkflowKeys { base: base.to_string() }
    }

    /// Workflow `id`'s hash.
    pub fn workflow(&self, id: &impl std::fmt::Display) -> String {
        format!("{}:wf:{id}", self.base)
    }

    /// Who is looking at workflow `id` now.
    pub fn lock(&self, id: &impl std::fmt::Display) -> String {
        format!("{}:wf:{id}:lock", self.base)
    }

    /// Every workflow by creation time.
    pub fn list(&self) -> String {
        format!("{}:workflows", self.base)
    }

    /// Running workflows by when to look at them again.
    pub fn running(&self) -> String {
        format!("{}:workflows:running", self.base)
    }

    /// The workflow an `Idempotency-Key` (by its SHA-1, hex) created.
    pub fn idempotency(&self, digest: &str) -> String {
        format!("{}:wf-idem:{digest}", self.base)
    }
}

/// How many of a queued step's tasks a view reads to see whether the step has started (a map
/// step's first tasks start first).
const STARTED_PROBE: usize = 8;

/// The workflow service; cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    inner: Arc<Inner>,
}

struct Inner {
    tasks: Tasks,
    conn: Conn,
    keys: WorkflowKeys,
    events_key: String,
    events_maxlen: usize,
    retention: Duration,
    /// Where this server is in the events stream (set once the loops start).
    events: std::sync::OnceLock<Events>,
    /// Workflows to look at, each with the latest event that asked (`None`: look regardless).
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    asked: HashMap<Uuid, Option<Cursor>>,
    /// Being looked at by this server now.
    busy: HashSet<Uuid>,
}

impl Workflows {
    pub fn new(
        tasks: Tasks,
        conn: Conn,
        prefix: &str,
        events_maxlen: usize,
        retention: Duration,
    ) -> Workflows {
        Workflows {
            inner: Arc::new(Inner {
                tasks,
                conn,
                keys: WorkflowKeys::new(prefix),
                events_key: crate::store::stream_key(prefix, crate::events::WORKFLOWS_CHANNEL),
                events_maxlen,
                retention,
                events: Default::default(),
                pending: Default::default(),
                wake: Notify::new(),
            }),
        }
    }

    fn key(&self, id: &Uuid) -> String {
        self.inner.keys.workflow(id)
    }

    fn list_key(&self) -> String {
        self.inner.keys.list()
    }

    fn running_key(&self) -> String {
        self.inner.keys.running()
    }

    /// Checks a definition whole: its shape (`Spec::check`), then each step's kind, options and,
    /// when it names no parent's result, its payload against the kind's schema.
    pub fn check(&self, mut request: WorkflowRequest) -> Result<Checked, CreateError> {
        let tasks = &self.inner.tasks;
        for step in &mut request.steps {
            // Settled now: a kind's default queue changing later does not move a running step.
            if step.queue.is_none() {
                step.queue = tasks.queue_for(&step.kind, None);
            }
        }
        let spec = Spec::check(request)?;
        for (i, step) in spec.steps().iter().enumerate() {
            tasks
                .check_step(&step.kind, &options_of(step), spec.fixed_payload(i).as_ref())
                .map_err(|error| CreateError::Step { step: step.id.clone(), error })?;
        }
        Ok(Checked { spec })
    }

    /// Stores a checked workflow and starts its first steps. With an `Idempotency-Key`, the
    /// same definition sent again gives the workflow the first request created (`true`).
    pub async fn create(
        &self,
        checked: Checked,
        idempotency_key: Option<&str>,
    ) -> Result<(WorkflowView, bool), CreateError> {
        let spec_json = serde_json::to_string(&checked.spec.request).expect("a request serializes");
        let id = Uuid::now_v7();
        let mut conn = self.inner.conn.clone();
        let idem = idempotency_key.map(|key| {
            let digest = sha1_smol::Sha1::from(key.as_bytes()).digest().to_string();
            (self.inner.keys.idempotency(&digest), sha1_smol::Sha1::from(&spec_json).digest().to_string())
        });
        if let Some((idem_key, digest)) = &idem {
            let claimed: bool = redis::cmd("SET")
                .arg(idem_key)
                .arg(format!("{id} {digest}"))
                .arg("NX")
                .query_async::<Option<String>>(&mut conn)
                .await?
                .is_some();
            if !claimed {
                let held: String = conn.get(idem_key).await.unwrap_or_default();
                let (held_id, held_digest) = held.split_once(' ').unwrap_or(("", ""));
                let held_id: Uuid = held_id.parse().map_err(|_| CreateError::IdempotencyKeyReused)?;
                if held_digest != digest {
                    return Err(CreateError::IdempotencyKeyReused);
                }
                // The first request may be storing it still.
                for _ in 0..50 {
                    if let Some(view) = self.view(&held_id).await? {
                        let mut touch = redis::cmd("SET");
                        touch.arg(idem_key).arg(&held).arg("XX").arg("KEEPTTL");
                        self.confirm(held_id, touch).await?;
                        return Ok((view, true));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the workflow of this key was not stored",
                ))
                .into());
            }
        }
        let now = now_ms();
        let mut fields = vec![
            ("spec", spec_json),
            ("status", WorkflowStatus::Running.as_str().to_string()),
            ("created", now.to_string()),
            ("updated", now.to_string()),
            ("queues", checked.queues().join(",")),
        ];
        if let Some((idem_key, _)) = &idem {
            fields.push(("idem", idem_key.clone()));
        }
        redis::pipe()
            .atomic()
            .hset_multiple(self.key(&id), &fields)
            .ignore()
            .zadd(self.list_key(), id.to_string(), now)
            .ignore()
            .zadd(self.running_key(), id.to_string(), now + RECHECK.as_millis() as u64)
            .ignore()
            .exec_async(&mut conn)
            .await?;
        let mut touch = redis::cmd("HSET");
        touch.arg(self.key(&id)).arg("created").arg(now);
        self.confirm(id, touch).await?;
        // Its first steps start now; should that fail, the sweep starts them.
        if let Err(e) = self.look(id, None).await {
            warn!(workflow = %id, error = %e, "starting a workflow's first steps failed; the sweep retries");
        }
        let view = self
            .view(&id)
            .await?
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "the workflow was not stored")))?;
        Ok((view, false))
    }

    /// With `--durable-submit`, waits until a replica holds the workflow (`touch` rewrites a part
    /// of it unchanged); an error if none does in time.
    async fn confirm(&self, id: Uuid, touch: redis::Cmd) -> Result<(), CreateError> {
        let queues = self.inner.tasks.queues();
        match &queues.default_queue().settings().durable {
            Some(durable) if !durable.confirm(touch).await? => Err(CreateError::Unconfirmed(id)),
            _ => Ok(()),
        }
    }

    /// Asks for the workflow to be cancelled: its running tasks are cancelled, nothing more
    /// starts. `None` if there is no such workflow; its status otherwise (an ended one stays).
    pub async fn cancel(&self, id: &Uuid) -> redis::RedisResult<Option<WorkflowStatus>> {
        let Some(view) = self.view(id).await? else { return Ok(None) };
        if view.status.is_terminal() {
            return Ok(Some(view.status));
        }
        let _: () = self.inner.conn.clone().hset(self.key(id), "cancelled", "1").await?;
        self.look(*id, None).await?;
        Ok(self.view(id).await?.map(|v| v.status))
    }

    /// The workflow's view, `None` if unknown or past its retention.
    ///
    /// Looks follow the ends of tasks, not their starts, so a step recorded `queued` is shown
    /// `running` once one of its first [`STARTED_PROBE`] tasks has started (read now).
    pub async fn view(&self, id: &Uuid) -> redis::RedisResult<Option<WorkflowView>> {
        let fields: HashMap<String, String> = self.inner.conn.clone().hgetall(self.key(id)).await?;
        let Some(mut view) = Stored::read(&fields).map(|stored| stored.view(*id)) else {
            return Ok(None);
        };
        if view.status.is_terminal() {
            return Ok(Some(view));
        }
        for step in view.steps.iter_mut().filter(|s| s.state == StepState::Queued) {
            let probed = step.tasks.iter().take(STARTED_PROBE).map(|t| self.inner.tasks.get(t));
            let records = futures::future::try_join_all(probed).await?;
            if records.iter().flatten().any(|r| {
                matches!(r.status, Status::Running | Status::Retrying | Status::Succeeded | Status::Failed)
            }) {
                step.state = StepState::Running;
            }
        }
        Ok(Some(view))
    }

    /// The newest workflows, at most `limit`, those the `reaches` predicate allows.
    pub async fn list(
        &self,
        limit: usize,
        reaches: impl Fn(&str) -> bool,
    ) -> redis::RedisResult<Vec<WorkflowView>> {
        let ids: Vec<String> =
            self.inner.conn.clone().zrevrange(self.list_key(), 0, (limit * 2) as isize - 1).await?;
        let mut views = Vec::new();
        let mut gone = Vec::new();
        for id in ids.iter().filter_map(|id| id.parse::<Uuid>().ok()) {
            match self.view(&id).await? {
                Some(view) if views.len() < limit => {
                    if queues_of_view(&view).iter().all(|q| reaches(q)) {
                        views.push(view);
                    }
                }
                Some(_) => {}
                None => gone.push(id.to_string()),
            }
        }
        if !gone.is_empty() {
            let _: () = self.inner.conn.clone().zrem(self.list_key(), gone).await?;
        }
        Ok(views)
    }

    /// The workflow's result: each step nothing comes after, by id, with its result (an array for
    /// a map; `null` for a skipped one). `None` unless it succeeded.
    pub async fn result(&self, view: &WorkflowView) -> redis::RedisResult<Option<Value>> {
        if view.status != WorkflowStatus::Succeeded {
            return Ok(None);
        }
        let mut result = serde_json::Map::new();
        let has_children: HashSet<&str> =
            view.steps.iter().flat_map(|s| s.after.iter().map(String::as_str)).collect();
        for step in view.steps.iter().filter(|s| !has_children.contains(s.id.as_str())) {
            let value = match step.state {
                StepState::Succeeded => self.value_of(&step.tasks, step.map).await?,
                _ => Value::Null,
            };
            result.insert(step.id.clone(), value);
        }
        Ok(Some(Value::Object(result)))
    }

    /// What a step's tasks gave: the one task's result, or a map's array of them, in order.
    async fn value_of(&self, tasks: &[Uuid], map: bool) -> redis::RedisResult<Value> {
        let values: Vec<Value> =
            futures::stream::iter(tasks).then(|id| self.task_value(id)).try_collect().await?;
        Ok(if map { Value::Array(values) } else { values.into_iter().next().unwrap_or(Value::Null) })
    }

    /// A task's result as JSON: as it is when it is JSON, as a string when it is other text,
    /// else its content type and size.
    async fn task_value(&self, id: &Uuid) -> redis::RedisResult<Value> {
        let tasks = &self.inner.tasks;
        let Some(record) = tasks.get(id).await? else { return Ok(Value::Null) };
        let Some(result) = tasks.result(&record).await? else { return Ok(Value::Null) };
        if crate::tasks::is_json(&result.content_type)
            && let Ok(value) = serde_json::from_slice(&result.bytes)
        {
            return Ok(value);
        }
        Ok(match String::from_utf8(result.bytes) {
            Ok(text) => Value::String(text),
            Err(e) => json!({"content_type": result.content_type, "bytes": e.as_bytes().len()}),
        })
    }

    /// Starts the loops that move workflows on: following the end events of their tasks, and
    /// sweeping the running workflows; until `shutdown`.
    pub fn start(&self, events: &Events, shutdown: CancellationToken) {
        let _ = self.inner.events.set(events.clone());
        let mut ends = events.step_events();
        let follower = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = ends.recv() => event,
                    () = stop.cancelled() => return,
                };
                match event {
                    Ok(StepEvent { workflow, channel, position }) => {
                        let mut asked = Cursor::default();
                        asked.set(&channel, position);
                        follower.ask(workflow, Some(asked));
                    }
                    // Fell behind: the sweep looks at every running workflow instead.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = follower.sweep(true).await {
                            warn!(error = %e, "sweeping the workflows failed");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let sweeper = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            let mut first = true;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = stop.cancelled() => return,
                }
                // On start, every running workflow: some may have ended steps while no server ran.
                if let Err(e) = sweeper.sweep(std::mem::take(&mut first)).await {
                    warn!(error = %e, "sweeping the workflows failed");
                }
            }
        });
        for _ in 0..LOOKERS {
            let looker = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let wake = looker.inner.wake.notified();
                    if let Some((id, after)) = looker.next() {
                        if let Err(e) = looker.look(id, after).await {
                            warn!(workflow = %id, error = %e, "moving a workflow on failed; the sweep retries");
                        }
                        looker.done(id);
                        continue;
                    }
                    tokio::select! {
                        () = wake => {}
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
    }

    /// Asks for workflow `id` to be looked at, for the event at `after` (`None`: regardless).
    fn ask(&self, id: Uuid, after: Option<Cursor>) {
        let mut pending = self.inner.pending.lock().expect("never poisoned");
        let asked = pending.asked.entry(id).or_insert_with(|| after.clone());
        *asked = match (asked.take(), after) {
            (Some(mut a), Some(b)) => {
                a.merge(&b);
                Some(a)
            }
            _ => None,
        };
        drop(pending);
        self.inner.wake.notify_one();
    }

    fn next(&self) -> Option<(Uuid, Option<Cursor>)> {
        let mut pending = self.inner.pending.lock().expect("never poisoned");
        let id = *pending.asked.keys().find(|id| !pending.busy.contains(id))?;
        let after = pending.asked.remove(&id).flatten();
        pending.busy.insert(id);
        Some((id, after))
    }

    fn done(&self, id: Uuid) {
        self.inner.pending.lock().expect("never poisoned").busy.remove(&id);
        self.inner.wake.notify_one();
    }

    /// Takes the running workflows due a look (`all`: every one) and asks for each: claimed by
    /// pushing their next look back, so that one server takes each.
    /// Also drops from the listing a batch of the workflows created before the retention that are
    /// gone (those that ended and expired), so that it does not grow for ever.
    async fn sweep(&self, all: bool) -> redis::RedisResult<()> {
        static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
            redis::Script::new(
                r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due",
            )
        });
        let now = now_ms();
        let until = if all { u64::MAX / 2 } else { now };
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = CLAIM
            .key(self.running_key())
            .arg(until)
            .arg(now + RECHECK.as_millis() as u64)
            .arg(SWEEP_BATCH)
            .invoke_async(&mut conn)
            .await?;
        for id in ids.iter().filter_map(|id| id.parse().ok()) {
            self.ask(id, None);
        }
        // A workflow created before the retention that is gone never comes back: those found gone
        // are dropped, whatever happens between the look and the drop.
        let created_before = now.saturating_sub(self.inner.retention.as_millis() as u64);
        let old: Vec<String> = conn
            .zrangebyscore_limit(self.list_key(), "-inf", created_before, 0, SWEEP_BATCH as isize)
            .await?;
        if old.is_empty() {
            return Ok(());
        }
        let mut exists = redis::pipe();
        for id in &old {
            exists.exists(self.inner.keys.workflow(id));
        }
        let found: Vec<bool> = exists.query_async(&mut conn).await?;
        let gone: Vec<&String> =
            old.iter().zip(found).filter(|(_, found)| !found).map(|(id, _)| id).collect();
        if gone.is_empty() {
            return Ok(());
        }
        conn.zrem(self.list_key(), gone).await
    }

    /// Looks at workflow `id` under its lock: starts the steps that are ready, cancels what a
    /// cancellation asks, and records the new states with their events. `after`: the event that
    /// asked; nothing to do if a look that began after it has been made.
    async fn look(&self, id: Uuid, after: Option<Cursor>) -> redis::RedisResult<()> {
        let lock = self.inner.keys.lock(&id);
        let token = Uuid::now_v7().to_string();
        let mut conn = self.inner.conn.clone();
        let deadline = tokio::time::Instant::now() + LOCK_TTL;
        loop {
            if crate::store::take_lock(&mut conn, &lock, &token, LOCK_TTL).await? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                // Its holder is stuck or gone; the sweep comes back once the lock lapses.
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let looked = self.look_locked(id, after).await;
        let _ = crate::store::release_lock(&mut conn, &lock, &token).await;
        looked
    }

    async fn look_locked(&self, id: Uuid, after: Option<Cursor>) -> redis::RedisResult<()> {
        let key = self.key(&id);
        let mut conn = self.inner.conn.clone();
        let fields: HashMap<String, String> = conn.hgetall(&key).await?;
        let Some(mut stored) = Stored::read(&fields) else {
            let _: () = conn.zrem(self.running_key(), id.to_string()).await?;
            return Ok(());
        };
        let seen = fields.get("seen").and_then(|s| Cursor::parse(s).ok());
        if let (Some(after), Some(seen)) = (&after, seen)
            && seen.covers(after)
        {
            return Ok(());
        }
        // Every event before this point is one this look sees the effect of (in the streams of
        // its steps' queues, where the events that ask for a look are).
        let seen_now = self.inner.events.get().map(|events| {
            let queues = queues_of(&stored.spec);
            let mut cursor = events.cursor();
            cursor.retain(|channel| queues.iter().any(|queue| queue == channel));
            cursor
        });
        let mut plan;
        // Each round starts at least one step, whose refusal may make others ready: at most one
        // round per step, and one more to see that nothing is left.
        loop {
            let facts = self.facts(&stored).await?;
            plan = plan::plan(&stored.spec, &facts, stored.cancelled);
            if plan.start.is_empty() {
                break;
            }
            for &i in &plan.start {
                self.start_step(id, &mut stored, &plan, i).await?;
            }
        }
        if plan.status == WorkflowStatus::Cancelled {
            self.cancel_tasks(&stored, &plan).await;
        }
        self.record(id, &stored, &plan, seen_now).await
    }

    /// What is known of each step: for a started one, its tasks' statuses (a step that
    /// succeeded is not read again: it cannot change).
    async fn facts(&self, stored: &Stored) -> redis::RedisResult<Vec<Fact>> {
        let mut facts = Vec::with_capacity(stored.spec.steps().len());
        for step in stored.spec.steps() {
            let fact = if let Some(error) = stored.refused.get(&step.id) {
                Fact::Refused(error.clone())
            } else if let Some(tasks) = stored.tasks.get(&step.id) {
                let (state, error) =
                    stored.states.get(&step.id).cloned().unwrap_or((StepState::Queued, None));
                if state == StepState::Succeeded {
                    Fact::Tasks(vec![(Status::Succeeded, None); tasks.len()])
                } else {
                    let records: Vec<Option<TaskRecord>> =
                        futures::future::try_join_all(tasks.iter().map(|t| self.inner.tasks.get(t))).await?;
                    Fact::Tasks(
                        records
                            .into_iter()
                            .map(|record| match record {
                                Some(r) => (r.status, r.error),
                                // Gone (past its retention, or deleted): as it was last seen.
                                None if state == StepState::Failed => (Status::Failed, error.clone()),
                                None => (
                                    Status::Failed,
                                    Some("the step's task is gone (expired or deleted)".into()),
                                ),
                            })
                            .collect(),
                    )
                }
            } else {
                Fact::NotStarted
            };
            facts.push(fact);
        }
        Ok(facts)
    }

    /// Starts step `i`: builds its payloads from its parents' results and submits its tasks,
    /// then records them (or records why its payloads were refused).
    async fn start_step(
        &self,
        id: Uuid,
        stored: &mut Stored,
        plan: &Plan,
        i: usize,
    ) -> redis::RedisResult<()> {
        let step = stored.spec.steps()[i].clone();
        let started = match self.payloads(stored, plan, i).await? {
            Err(refusal) => Err(refusal),
            Ok(payloads) => self.submit(id, &step, payloads).await?,
        };
        let mut conn = self.inner.conn.clone();
        match started {
            Ok(ids) => {
                let joined: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                let _: () = conn.hset(self.key(&id), format!("t:{}", step.id), joined.join(",")).await?;
                stored.tasks.insert(step.id, ids);
            }
            Err(refusal) => {
                let _: () = conn.hset(self.key(&id), format!("r:{}", step.id), &refusal).await?;
                stored.refused.insert(step.id, refusal);
            }
        }
        Ok(())
    }

    /// The payloads of step `i`, from what its parents gave (a result, or a failure as an
    /// object), each checked against its kind's schema; or why they were refused.
    async fn payloads(
        &self,
        stored: &Stored,
        plan: &Plan,
        i: usize,
    ) -> redis::RedisResult<Result<Vec<Value>, String>> {
        let spec = &stored.spec;
        let step = &spec.steps()[i];
        let mut given: HashMap<&str, Value> = HashMap::new();
        for &p in &spec.parents[i] {
            let parent = &spec.steps()[p];
            let (state, error) = &plan.states[p];
            let value = match state {
                StepState::Succeeded => {
                    let tasks = stored.tasks.get(&parent.id).cloned().unwrap_or_default();
                    self.value_of(&tasks, parent.map.is_some()).await?
                }
                StepState::Skipped => json!({"step": parent.id, "state": "skipped"}),
                other => json!({"step": parent.id, "state": other.as_str(), "error": error}),
            };
            given.insert(parent.id.as_str(), value);
        }
        let payloads = match spec::payloads(spec, i, &given) {
            Ok(payloads) => payloads,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let options = options_of(step);
        let refused =
            payloads.iter().find_map(|p| self.inner.tasks.check_step(&step.kind, &options, Some(p)).err());
        Ok(match refused {
            Some(e) => Err(e.to_string()),
            None => Ok(payloads),
        })
    }

    /// Submits a task per payload of `step` (each once, however often this runs); their ids,
    /// or why one was refused.
    async fn submit(
        &self,
        id: Uuid,
        step: &StepRequest,
        payloads: Vec<Value>,
    ) -> redis::RedisResult<Result<Vec<Uuid>, String>> {
        let options = options_of(step);
        let map = step.map.is_some();
        let submissions = payloads.into_iter().enumerate().map(|(n, payload)| {
            let submission = Submission {
                kind: step.kind.clone(),
                payload: Payload::Json(payload.to_string().into()),
                options: options.clone(),
                idempotency_key: None,
            };
            let label = if map { format!("{}[{n}]", step.id) } else { step.id.clone() };
            self.inner.tasks.submit_step(submission, WorkflowStep { workflow: id, step: label })
        });
        let submitted: Vec<Result<TaskRecord, SubmitError>> =
            futures::stream::iter(submissions).buffered(SUBMIT_AT_ONCE).collect().await;
        let mut ids = Vec::with_capacity(submitted.len());
        for outcome in submitted {
            match outcome {
                Ok(record) => ids.push(record.id),
                // Worth another try later (the sweep): Redis is away, the queue is full, no
                // replica confirmed the task yet (the next try, under the step's key, does).
                Err(SubmitError::Redis(e)) => return Err(e),
                Err(
                    e @ (SubmitError::QueueFull { .. }
                    | SubmitError::TooManyQueues(_)
                    | SubmitError::Unconfirmed(_)),
                ) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "a step could not be queued",
                        e.to_string(),
                    )));
                }
                Err(refused) => return Ok(Err(refused.to_string())),
            }
        }
        Ok(Ok(ids))
    }

    /// Cancels the tasks of a cancelled workflow's steps that have not ended.
    async fn cancel_tasks(&self, stored: &Stored, plan: &Plan) {
        for (step, (state, _)) in stored.spec.steps().iter().zip(&plan.states) {
            if state.has_ended() {
                continue;
            }
            for task in stored.tasks.get(&step.id).into_iter().flatten() {
                // One already ended, or gone, is no matter.
                let _ = self.inner.tasks.cancel(task).await;
            }
        }
    }

    /// Records what changed since the last look, each change with its event, in one transaction;
    /// an ended workflow gets its retention, a running one its next look.
    async fn record(
        &self,
        id: Uuid,
        stored: &Stored,
        plan: &Plan,
        seen: Option<Cursor>,
    ) -> redis::RedisResult<()> {
        let key = self.key(&id);
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (step, (state, error)) in stored.spec.steps().iter().zip(&plan.states) {
            let was = stored.states.get(&step.id);
            if was != Some(&(*state, error.clone())) {
                let snapshot = format!("{}\u{1f}{}", state.as_str(), error.as_deref().unwrap_or(""));
                pipe.hset(&key, format!("s:{}", step.id), snapshot).ignore();
                self.event(&mut pipe, id, stored, Some(&step.id), state.as_str(), error.as_deref(), now);
            }
        }
        let error = plan.failed_step.map(|i| {
            let step = &stored.spec.steps()[i];
            let cause = plan.states[i].1.as_deref().unwrap_or("it failed");
            (step.id.clone(), format!("step `{}` failed: {cause}", step.id))
        });
        if plan.status != stored.status {
            pipe.hset(&key, "status", plan.status.as_str()).ignore();
            pipe.hset(&key, "updated", now).ignore();
            let message = error.as_ref().map(|(_, m)| m.as_str());
            self.event(&mut pipe, id, stored, None, plan.status.as_str(), message, now);
            if plan.status.is_terminal() {
                pipe.hset(&key, "finished", now).ignore();
                if let Some((step, message)) = &error {
                    pipe.hset(&key, "failed_step", step).ignore().hset(&key, "error", message).ignore();
                }
            } else {
                pipe.hdel(&key, &["finished", "failed_step", "error"]).ignore();
            }
        }
        let keep = self.inner.retention.as_millis() as u64;
        if plan.status.is_terminal() {
            pipe.pexpire(&key, keep as i64).ignore().zrem(self.running_key(), id.to_string()).ignore();
            if let Some(idem) = &stored.idem {
                pipe.pexpire(idem, keep as i64).ignore();
            }
        } else {
            pipe.persist(&key)
                .ignore()
                .zadd(self.running_key(), id.to_string(), now + RECHECK.as_millis() as u64)
                .ignore();
            if let Some(idem) = &stored.idem {
                pipe.persist(idem).ignore();
            }
        }
        if let Some(seen) = seen {
            pipe.hset(&key, "seen", seen.to_string()).ignore();
        }
        pipe.exec_async(&mut self.inner.conn.clone()).await
    }

    /// Appends a workflow event (a step's with `step`) to the events stream.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        pipe: &mut redis::Pipeline,
        id: Uuid,
        stored: &Stored,
        step: Option<&str>,
        status: &str,
        error: Option<&str>,
        at: u64,
    ) {
        pipe.cmd("XADD")
            .arg(&self.inner.events_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.events_maxlen)
            .arg("*")
            .arg("event")
            .arg(app::model::workflow::WORKFLOW_EVENT)
            .arg("workflow")
            .arg(id.to_string())
            .arg("step")
            .arg(step.unwrap_or(""))
            .arg("queue")
            .arg(queues_of(&stored.spec).join(","))
            .arg("status")
            .arg(status)
            .arg("error")
            .arg(error.unwrap_or(""))
            .arg("at")
            .arg(at)
            .ignore();
    }
}

/// A workflow as its hash holds it.
struct Stored {
    spec: Spec,
    status: WorkflowStatus,
    cancelled: bool,
    created_ms: u64,
    updated_ms: u64,
    finished_ms: Option<u64>,
    error: Option<String>,
    failed_step: Option<String>,
    idem: Option<String>,
    /// Per step id: its tasks, its refusal, its state when last looked at.
    tasks: HashMap<String, Vec<Uuid>>,
    refused: HashMap<String, String>,
    states: HashMap<String, (StepState, Option<String>)>,
}

impl Stored {
    /// Reads a workflow's hash; `None` if it is empty (no such workflow).
    fn read(fields: &HashMap<String, String>) -> Option<Stored> {
        let request: WorkflowRequest = serde_json::from_str(fields.get("spec")?).ok()?;
        let spec = Spec::check(request).ok()?;
        let number = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
        let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        let mut stored = Stored {
            spec,
            status: fields
                .get("status")
                .and_then(|s| WorkflowStatus::parse(s))
                .unwrap_or(WorkflowStatus::Running),
            cancelled: fields.get("cancelled").is_some_and(|c| c == "1"),
            created_ms: number("created").unwrap_or(0),
            updated_ms: number("updated").unwrap_or(0),
            finished_ms: number("finished"),
            error: text("error"),
            failed_step: text("failed_step"),
            idem: text("idem"),
            tasks: HashMap::new(),
            refused: HashMap::new(),
            states: HashMap::new(),
        };
        for (field, value) in fields {
            if let Some(step) = field.strip_prefix("t:") {
                let ids = value.split(',').filter_map(|id| id.parse().ok()).collect();
                stored.tasks.insert(step.to_string(), ids);
            } else if let Some(step) = field.strip_prefix("r:") {
                stored.refused.insert(step.to_string(), value.clone());
            } else if let Some(step) = field.strip_prefix("s:") {
                let (state, error) = value.split_once('\u{1f}').unwrap_or((value, ""));
                if let Some(state) = StepState::parse(state) {
                    let error = Some(error.to_string()).filter(|e| !e.is_empty());
                    stored.states.insert(step.to_string(), (state, error));
                }
            }
        }
        Some(stored)
    }

    fn view(&self, id: Uuid) -> WorkflowView {
        let steps = self
            .spec
            .steps()
            .iter()
            .map(|step| {
                let (state, error) = self.states.get(&step.id).cloned().unwrap_or((StepState::Waiting, None));
                StepView {
                    id: step.id.clone(),
                    kind: step.kind.clone(),
                    queue: step.queue.clone().unwrap_or_default(),
                    after: step.after.clone(),
                    on_failure: step.on_failure,
                    map: step.map.is_some(),
                    state,
                    tasks: self.tasks.get(&step.id).cloned().unwrap_or_default(),
                    error,
                }
            })
            .collect();
        WorkflowView {
            id,
            name: self.spec.request.name.clone(),
            status: self.status,
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
            finished_at: self.finished_ms.filter(|_| self.status.is_terminal()).map(rfc3339),
            error: self.error.clone(),
            failed_step: self.failed_step.clone(),
            steps,
        }
    }
}

/// The task options of a step.
fn options_of(step: &StepRequest) -> Options {
    Options {
        delay_ms: step.delay_ms,
        priority: step.priority,
        max_attempts: step.max_attempts,
        timeout_ms: step.timeout_ms,
        queue: step.queue.clone(),
        ..Options::default()
    }
}

fn queues_of(spec: &Spec) -> Vec<String> {
    let mut queues: Vec<String> = spec.steps().iter().filter_map(|s| s.queue.clone()).collect();
    queues.sort();
    queues.dedup();
    queues
}

fn queues_of_view(view: &WorkflowView) -> Vec<&str> {
    view.steps.iter().map(|s| s.queue.as_str()).collect()
}
