//! Recurring schedules: each a timing (a cron pattern in a time zone, or an interval) and what a
//! tick starts (a task), stored in Redis and ticked by every `courier` process at once, with no
//! leader, exactly once per tick (see [`ticker`]).
//!
//! A schedule is one hash, `{prefix}:schedule:{name}` ([`field`]s: its spec, its generation, the
//! latest tick dealt with, the latest run), named in the set `{prefix}:schedules`; every change
//! bumps `{prefix}:schedules-version`, which idle processes read once a second to notice it.
//! Putting a changed schedule starts a new generation whose ticks count from then on: a tick of
//! the old definition is never submitted after the change (unlike BullMQ's repeatable jobs,
//! bull#1005, where the old repeat lives on beside the new one).

mod ticker;
mod timing;

pub use ticker::GRACE_MS;
pub use timing::{Ticks, Timing};

use crate::redis_client::Conn;
use crate::workflows::{CreateError, Workflows};
use crate::{
    store::{TaskRecord, now_ms, rfc3339},
    tasks::{Options, Payload, Submission, SubmitError, Tasks},
};
use app::model::schedules::{
    CatchUp, Overlap, ScheduleRun, ScheduleSpec, ScheduleView, ScheduledTask, is_schedule_name,
};
use app::model::workflow::{WorkflowRequest, WorkflowView};
use redis::{AsyncCommands, Script};
use std::{collections::HashMap, sync::Arc};
use tokio::sync::Notify;
use uuid::Uuid;

/// The fields of a schedule's hash, as the Lua scripts (`schedules/*.lua`) name them too.
mod field {
    /// The schedule as put (JSON).
    pub const SPEC: &str = "spec";
    /// `1` while paused.
    pub const PAUSED: &str = "paused";
    /// Bumped by each change: a tick claims `(generation, tick)`.
    pub const GENERATION: &str = "generation";
    /// The latest tick dealt with (run or skipped), ms.
    pub const LAST_TICK: &str = "last_tick";
    /// The latest run: its tick (ms), its task, and `1` if started by hand.
    pub const RUN_TICK: &str = "run_tick";
    pub const RUN_TASK: &str = "run_task";
    pub const RUN_MANUAL: &str = "run_manual";
}

/// How many upcoming ticks a schedule's view lists.
const UPCOMING: usize = 5;

/// Why a schedule request was refused; nothing was stored for it.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "`name`: a schedule name is 1 to 100 of A-Z, a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit"
    )]
    InvalidName,
    /// A field is wrong: the text starts with its name.
    #[error("{0}")]
    Invalid(String),
    /// The task is one a submission would be refused for.
    #[error("`task`: {0}")]
    Task(SubmitError),
    #[error("no schedule named `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The refusal of field `field`, saying why.
fn invalid(field: &str, detail: impl std::fmt::Display) -> ScheduleError {
    ScheduleError::Invalid(format!("`{field}`: {detail}"))
}

/// What a schedule starts at each tick.
#[derive(Clone, Debug)]
pub enum Target {
    Task(ScheduledTask),
    Workflow(WorkflowRequest),
}

/// What a run of a schedule started.
pub enum Started {
    Task(Box<TaskRecord>),
    Workflow(WorkflowView),
}

impl Started {
    pub fn id(&self) -> Uuid {
        match self {
            Started::Task(record) => record.id,
            Started::Workflow(view) => view.id,
        }
    }
}

/// A schedule checked and ready to tick.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ticks: Ticks,
    pub target: Target,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

/// The ticks an evaluation deals with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The ticks to run, in order.
    pub run: Vec<u64>,
    /// The latest tick due, run or not: recorded as dealt with, so that none is looked at again.
    pub latest: Option<u64>,
}

impl Plan {
    /// The ticks due after `last` (the latest dealt with) up to `now`: those at most
    /// [`GRACE_MS`] late run; of older ones, missed, only the latest runs, and only with
    /// `catch_up: latest`.
    pub fn due(&self, last: u64, now: u64) -> Due {
        let latest = self.ticks.latest_at_or_before(now).filter(|t| *t > last);
        if latest.is_none() {
            return Due { run: Vec::new(), latest };
        }
        let on_time_after = last.max(now.saturating_sub(GRACE_MS));
        let missed = self.ticks.latest_at_or_before(on_time_after).filter(|t| *t > last);
        let mut run: Vec<u64> = missed.filter(|_| self.catch_up == CatchUp::Latest).into_iter().collect();
        run.extend(
            std::iter::successors(self.ticks.next_after(on_time_after), |t| self.ticks.next_after(*t))
                .take_while(|t| *t <= now),
        );
        Due { run, latest }
    }
}

/// A schedule as stored: its spec and where it stands.
#[derive(Clone, Debug)]
struct Stored {
    spec: ScheduleSpec,
    paused: bool,
    generation: u64,
    last_tick: u64,
    run: Option<(u64, Uuid, bool)>,
}

impl Stored {
    /// Reads a schedule's hash; `None` if there is none (or it was written by a newer version).
    fn from_fields(fields: &HashMap<String, String>) -> Option<Stored> {
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        let run = match (number(field::RUN_TICK), fields.get(field::RUN_TASK).and_then(|v| v.parse().ok())) {
            (Some(tick), Some(task)) => {
                Some((tick, task, fields.get(field::RUN_MANUAL).is_some_and(|m| m == "1")))
            }
            _ => None,
        };
        Some(Stored {
            spec: serde_json::from_str(fields.get(field::SPEC)?).ok()?,
            paused: fields.get(field::PAUSED).is_some_and(|p| p == "1"),
            generation: number(field::GENERATION)?,
            last_tick: number(field::LAST_TICK).unwrap_or(0),
            run,
        })
    }
}

/// The schedules service; cheap to clone.
#[derive(Clone)]
pub struct Schedules {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    prefix: String,
    tasks: Tasks,
    workflows: Workflows,
    put: Script,
    pause: Script,
    advance: Script,
    /// Wakes this process's ticker when a schedule changes here.
    changed: Notify,
}

impl Schedules {
    /// The schedules under `prefix`, submitting through `tasks` (and `workflows`).
    pub fn new(conn: Conn, prefix: &str, tasks: Tasks, workflows: Workflows) -> Schedules {
        Schedules {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_string(),
                tasks,
                workflows,
                put: Script::new(include_str!("schedules/put.lua")),
                pause: Script::new(include_str!("schedules/pause.lua")),
                advance: Script::new(include_str!("schedules/advance.lua")),
                changed: Notify::new(),
            }),
        }
    }

    // A schedule's keys are used one at a time (no script, MULTI or pipeline touches two), so
    // they need no hash tag to stay in one Cluster slot (`layout.rs`).
    fn key(&self, name: &str) -> String {
        format!("{}:schedule:{name}", self.inner.prefix)
    }

    fn names_key(&self) -> String {
        format!("{}:schedules", self.inner.prefix)
    }

    fn version_key(&self) -> String {
        format!("{}:schedules-version", self.inner.prefix)
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// Checks a spec into the plan it ticks by, or the refusal naming the field.
    pub fn plan(&self, spec: &ScheduleSpec) -> Result<Plan, ScheduleError> {
        let ticks = ticks(spec)?;
        let target = match (&spec.task, &spec.workflow) {
            (Some(task), None) => {
                self.inner.tasks.check(submission(task, None)).map_err(ScheduleError::Task)?;
                Target::Task(task.clone())
            }
            (None, Some(workflow)) => {
                self.inner.workflows.check(workflow.clone()).map_err(|e| invalid("workflow", e))?;
                Target::Workflow(workflow.clone())
            }
            (Some(_), Some(_)) => return Err(invalid("task", "give `task` or `workflow`, not both")),
            (None, None) => return Err(invalid("task", "give the `task` (or `workflow`) each tick starts")),
        };
        Ok(Plan { ticks, target, overlap: spec.overlap, catch_up: spec.catch_up })
    }

    /// Creates or replaces schedule `name`; `true` if it was new. Putting it unchanged changes
    /// nothing (so the configuration file can be applied at every start).
    pub async fn put(&self, name: &str, spec: &ScheduleSpec) -> Result<(bool, ScheduleView), ScheduleError> {
        if !is_schedule_name(name) {
            return Err(ScheduleError::InvalidName);
        }
        self.plan(spec)?;
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let outcome: i64 = self
            .inner
            .put
            .key(self.key(name))
            .arg(json)
            .arg(if spec.paused { "1" } else { "0" })
            .arg(now_ms())
            .invoke_async(&mut self.conn())
            .await?;
        if outcome != 0 {
            let _: () = self.conn().sadd(self.names_key(), name).await?;
            self.changed().await?;
        }
        let view = self.get(name).await?.ok_or_else(|| ScheduleError::NotFound(name.to_string()))?;
        Ok((outcome == 1, view))
    }

    /// Tells every process (and this one at once) that the schedules changed.
    async fn changed(&self) -> redis::RedisResult<()> {
        let _: u64 = self.conn().incr(self.version_key(), 1).await?;
        self.inner.changed.notify_one();
        Ok(())
    }

    async fn stored(&self, name: &str) -> redis::RedisResult<Option<Stored>> {
        if !is_schedule_name(name) {
            return Ok(None);
        }
        let fields: HashMap<String, String> = self.conn().hgetall(self.key(name)).await?;
        Ok(Stored::from_fields(&fields))
    }

    /// Schedule `name` with its next ticks and latest run, if there is one.
    pub async fn get(&self, name: &str) -> redis::RedisResult<Option<ScheduleView>> {
        match self.stored(name).await? {
            Some(stored) => Ok(Some(self.view(name, stored).await?)),
            None => Ok(None),
        }
    }

    /// The names of every schedule, sorted.
    async fn names(&self) -> redis::RedisResult<Vec<String>> {
        let mut names: Vec<String> = self.conn().smembers(self.names_key()).await?;
        names.sort();
        Ok(names)
    }

    /// Every schedule, by name.
    pub async fn list(&self) -> redis::RedisResult<Vec<ScheduleView>> {
        let mut views = Vec::new();
        for name in self.names().await? {
            views.extend(self.get(&name).await?);
        }
        Ok(views)
    }

    async fn view(&self, name: &str, stored: Stored) -> redis::RedisResult<ScheduleView> {
        let next_runs = match ticks(&stored.spec) {
            Ok(ticks) if !stored.paused => {
                ticks.upcoming(now_ms(), UPCOMING).into_iter().map(rfc3339).collect()
            }
            _ => Vec::new(),
        };
        let last_run = match stored.run {
            Some((tick, id, manual)) if stored.spec.workflow.is_some() => {
                let workflow_status = self.inner.workflows.view(&id).await?.map(|view| view.status);
                let tick = rfc3339(tick);
                Some(ScheduleRun {
                    tick,
                    task_id: None,
                    status: None,
                    workflow_id: Some(id),
                    workflow_status,
                    manual,
                })
            }
            Some((tick, id, manual)) => {
                let status = self.inner.tasks.get(&id).await?.map(|record| record.status);
                let tick = rfc3339(tick);
                Some(ScheduleRun {
                    tick,
                    task_id: Some(id),
                    status,
                    workflow_id: None,
                    workflow_status: None,
                    manual,
                })
            }
            None => None,
        };
        Ok(ScheduleView {
            name: name.to_string(),
            schedule: stored.spec,
            paused: stored.paused,
            next_runs,
            last_run,
        })
    }

    /// Deletes schedule `name`; `false` if there was none. No tick of it starts afterwards.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        if !is_schedule_name(name) {
            return Ok(false);
        }
        let removed: u64 = self.conn().del(self.key(name)).await?;
        let _: () = self.conn().srem(self.names_key(), name).await?;
        if removed > 0 {
            self.changed().await?;
        }
        Ok(removed > 0)
    }

    /// Pauses or resumes schedule `name`; `None` if there is none. Ticks that fall while it is
    /// paused never run, whatever its `catch_up`.
    pub async fn set_paused(&self, name: &str, paused: bool) -> redis::RedisResult<Option<ScheduleView>> {
        if !is_schedule_name(name) {
            return Ok(None);
        }
        let found: i64 = self
            .inner
            .pause
            .key(self.key(name))
            .arg(if paused { "1" } else { "0" })
            .arg(now_ms())
            .invoke_async(&mut self.conn())
            .await?;
        if found == 0 {
            return Ok(None);
        }
        self.changed().await?;
        self.get(name).await
    }

    /// Starts schedule `name`'s task now, outside its ticks (paused or not), and records it as
    /// its latest run.
    pub async fn run_now(&self, name: &str) -> Result<Started, ScheduleError> {
        let stored = self.stored(name).await?.ok_or_else(|| ScheduleError::NotFound(name.to_string()))?;
        let plan = self.plan(&stored.spec)?;
        let started = self.start(&plan.target, None).await?;
        self.record(name, None, now_ms(), Some(started.id())).await?;
        Ok(started)
    }

    /// Starts what `target` names: submits its task, or creates its workflow; under `key`, so
    /// that every process starting the same tick starts one thing.
    async fn start(&self, target: &Target, key: Option<String>) -> Result<Started, ScheduleError> {
        Ok(match target {
            Target::Task(task) => Started::Task(Box::new(
                self.inner.tasks.submit(submission(task, key)).await.map_err(ScheduleError::Task)?.record,
            )),
            Target::Workflow(workflow) => {
                let workflows = &self.inner.workflows;
                let refused = |e: CreateError| match e {
                    CreateError::Redis(e) => ScheduleError::Redis(e),
                    other => invalid("workflow", other),
                };
                let checked = workflows.check(workflow.clone()).map_err(refused)?;
                Started::Workflow(workflows.create(checked, key.as_deref()).await.map_err(refused)?.0)
            }
        })
    }

    /// Whether the run `id` a schedule started (a task, or a workflow) has ended; a run no
    /// longer retained has.
    async fn has_ended(&self, target: &Target, id: &Uuid) -> redis::RedisResult<bool> {
        Ok(match target {
            Target::Task(_) => self.inner.tasks.get(id).await?.is_none_or(|r| r.status.is_terminal()),
            Target::Workflow(_) => {
                self.inner.workflows.view(id).await?.is_none_or(|v| v.status.is_terminal())
            }
        })
    }

    /// Records `tick` as dealt with by `generation` (none: a run started by hand), with the task
    /// it started if any; `false` if the schedule changed or went meanwhile.
    async fn record(
        &self,
        name: &str,
        generation: Option<u64>,
        tick: u64,
        task: Option<Uuid>,
    ) -> redis::RedisResult<bool> {
        let recorded: i64 = self
            .inner
            .advance
            .key(self.key(name))
            .arg(generation.map(|g| g.to_string()).unwrap_or_default())
            .arg(tick)
            .arg(task.map(|t| t.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(recorded == 1)
    }

    /// The queues schedule `name`'s tasks go to (for access checks); `None` if it does not exist.
    pub async fn queues_of(&self, name: &str) -> redis::RedisResult<Option<Vec<String>>> {
        Ok(self.stored(name).await?.map(|stored| self.queues_of_spec(&stored.spec)))
    }

    /// The queues a spec's tasks go to: its task's, or every queue of its workflow's steps.
    pub fn queues_of_spec(&self, spec: &ScheduleSpec) -> Vec<String> {
        let tasks = &self.inner.tasks;
        match (&spec.task, &spec.workflow) {
            (Some(task), _) => tasks.queue_for(&task.kind, task.queue.as_deref()).into_iter().collect(),
            (None, Some(workflow)) => {
                workflow.steps.iter().filter_map(|s| tasks.queue_for(&s.kind, s.queue.as_deref())).collect()
            }
            (None, None) => Vec::new(),
        }
    }

    /// Puts the schedules a configuration file declares (`[[schedules]]`, each with a `name`
    /// and the fields of `PUT /api/v1/schedules/{name}`).
    pub async fn declare_from_file(
        &self,
        path: &std::path::Path,
        tables: &[toml::Table],
    ) -> anyhow::Result<()> {
        for table in tables {
            let mut table = table.clone();
            let name = match table.remove("name") {
                Some(toml::Value::String(name)) => name,
                _ => anyhow::bail!("{}: a [[schedules]] entry needs a `name` (a string)", path.display()),
            };
            let declared = serde_json::to_value(&table)
                .and_then(serde_json::from_value::<ScheduleSpec>)
                .map_err(|e| anyhow::anyhow!("{}: schedule `{name}`: {e}", path.display()))?;
            self.put(&name, &declared)
                .await
                .map_err(|e| anyhow::anyhow!("{}: schedule `{name}`: {e}", path.display()))?;
        }
        if !tables.is_empty() {
            tracing::info!(count = tables.len(), file = %path.display(), "declared schedules");
        }
        Ok(())
    }
}

/// When a spec ticks, or the refusal naming the field.
fn ticks(spec: &ScheduleSpec) -> Result<Ticks, ScheduleError> {
    let zone: chrono_tz::Tz = spec.timezone.parse().map_err(|_| {
        invalid("timezone", format!("`{}` is not an IANA time zone, e.g. Europe/Paris", spec.timezone))
    })?;
    let start_ms = spec.start_at.as_deref().map(|at| time_ms("start_at", at)).transpose()?;
    let end_ms = spec.end_at.as_deref().map(|at| time_ms("end_at", at)).transpose()?;
    if let (Some(start), Some(end)) = (start_ms, end_ms)
        && end <= start
    {
        return Err(invalid("end_at", "must come after `start_at`"));
    }
    let timing = match (&spec.cron, &spec.every) {
        (Some(cron), None) => Timing::cron(cron, zone).map_err(|e| invalid("cron", e))?,
        (None, Some(every)) => {
            Timing::every(every, start_ms.unwrap_or(0)).map_err(|e| invalid("every", e))?
        }
        (Some(_), Some(_)) => return Err(invalid("every", "give `cron` or `every`, not both")),
        (None, None) => {
            return Err(invalid(
                "cron",
                "give `cron` (a cron pattern) or `every` (an interval such as `30s`)",
            ));
        }
    };
    Ok(Ticks { timing, start_ms, end_ms })
}

/// An RFC 3339 time in field `field`, in ms since the epoch.
fn time_ms(field: &str, at: &str) -> Result<u64, ScheduleError> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| invalid(field, format!("`{at}` is not an RFC 3339 time, e.g. 2026-01-31T17:00:00Z")))
}

/// The submission of a schedule's task, under `idempotency_key` if any.
fn submission(task: &ScheduledTask, idempotency_key: Option<String>) -> Submission {
    let payload = serde_json::to_vec(&task.payload).expect("a JSON value always serializes");
    Submission {
        kind: task.kind.clone(),
        payload: Payload::Json(payload.into()),
        options: Options {
            priority: task.priority,
            max_attempts: task.max_attempts,
            timeout_ms: task.timeout_ms,
            ttl_ms: task.ttl_ms,
            queue: task.queue.clone(),
            ..Options::default()
        },
        idempotency_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(every: &str, catch_up: CatchUp) -> Plan {
        Plan {
            ticks: Ticks { timing: Timing::every(every, 0).unwrap(), start_ms: None, end_ms: None },
            target: Target::Task(ScheduledTask {
                kind: "echo".into(),
                payload: serde_json::Value::Null,
                queue: None,
                priority: None,
                max_attempts: None,
                timeout_ms: None,
                ttl_ms: None,
            }),
            overlap: Overlap::Allow,
            catch_up,
        }
    }

    #[test]
    fn ticks_on_time_run_and_of_missed_ones_only_the_latest_with_catch_up_latest() {
        for catch_up in [CatchUp::Nothing, CatchUp::Latest] {
            let plan = plan("1s", catch_up);
            // On time: the tick just due runs.
            assert_eq!(plan.due(9_000, 10_020), Due { run: vec![10_000], latest: Some(10_000) });
            // Nothing due since the last tick dealt with.
            assert_eq!(plan.due(10_000, 10_900), Due { run: vec![], latest: None });
        }
        // Down from 10 s to 15.3 s: 11 to 14 were missed; 15 is on time.
        let none = plan("1s", CatchUp::Nothing).due(10_000, 15_300);
        assert_eq!(none, Due { run: vec![15_000], latest: Some(15_000) });
        let latest = plan("4s", CatchUp::Latest).due(8_000, 14_000);
        assert_eq!(latest, Due { run: vec![12_000], latest: Some(12_000) });
        let none = plan("4s", CatchUp::Nothing).due(8_000, 14_000);
        assert_eq!(none, Due { run: vec![], latest: Some(12_000) });
    }

    #[test]
    fn the_lua_scripts_name_the_fields_as_the_rust_side_does() {
        let scripts = [
            include_str!("schedules/put.lua"),
            include_str!("schedules/pause.lua"),
            include_str!("schedules/advance.lua"),
        ];
        let all = scripts.concat();
        for name in [
            field::SPEC,
            field::PAUSED,
            field::GENERATION,
            field::LAST_TICK,
            field::RUN_TICK,
            field::RUN_TASK,
            field::RUN_MANUAL,
        ] {
            assert!(all.contains(&format!("'{name}'")), "no script names field `{name}`");
        }
        let quoted: Vec<&str> = all.split('\'').skip(1).step_by(2).collect();
        for name in
            quoted.iter().filter(|q| q.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !q.is_empty())
        {
            let known = [
                field::SPEC,
                field::PAUSED,
                field::GENERATION,
                field::LAST_TICK,
                field::RUN_TICK,
                field::RUN_TASK,
                field::RUN_MANUAL,
            ];
            assert!(known.contains(name), "a script names field `{name}`, which the Rust side does not know");
        }
    }
}
