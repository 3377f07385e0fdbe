//! The ticker: every `courier` process runs one, and there is no leader. Each sleeps until the
//! next tick of any schedule, then submits that tick's task under a key every process derives
//! alike, `schedule:{name}:{generation}:{tick}` (the task service's idempotency key): whichever
//! process comes first creates the task, the others get the same one back, so a tick makes one
//! task however many processes run, and a process that dies mid-tick loses nothing (the others
//! submit the same tick). The tick is then recorded as dealt with, which stops late comers from
//! trying again.
//!
//! Idle, a process reads one key a second (the schedules' version) to notice changes made
//! elsewhere; a change made through its own API wakes it at once.

use super::{Plan, Schedules, field};
use crate::store::now_ms;
use app::model::schedules::Overlap;
use redis::AsyncCommands;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// How late a tick may be submitted and still count as on time; an older one was missed (no
/// process ran, or none could reach Redis), and the schedule's `catch_up` decides.
pub const GRACE_MS: u64 = 1_000;
/// How often an idle process looks whether schedules changed elsewhere.
const CHANGES_EVERY_MS: u64 = 1_000;

/// One schedule as this process ticks it.
struct Entry {
    name: String,
    generation: u64,
    plan: Plan,
    paused: bool,
    /// Ticks up to here were looked at by this process.
    cursor: u64,
}

/// What a schedule's hash says now, read at each tick.
struct Now {
    generation: u64,
    last_tick: u64,
    paused: bool,
    run_task: Option<Uuid>,
}

struct Ticker {
    schedules: Schedules,
    /// The version of what `entries` holds; `None`: read them again.
    version: Option<u64>,
    entries: Vec<Entry>,
}

impl Schedules {
    /// Ticks every schedule until `shutdown`.
    pub async fn tick(self, shutdown: CancellationToken) {
        let mut ticker = Ticker { schedules: self.clone(), version: None, entries: Vec::new() };
        let mut failing = false;
        loop {
            let wake = match ticker.step().await {
                Ok(wake) => {
                    failing = false;
                    wake
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "schedules: Redis failed; trying again every second");
                    }
                    failing = true;
                    ticker.version = None;
                    now_ms() + 1_000
                }
            };
            let wait = Duration::from_millis(wake.saturating_sub(now_ms()));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.changed.notified() => ticker.version = None,
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl Ticker {
    /// Reads changes, deals with every tick due; returns when to step again (ms).
    async fn step(&mut self) -> redis::RedisResult<u64> {
        let version: Option<u64> = self.schedules.conn().get(self.schedules.version_key()).await?;
        let version = version.unwrap_or(0);
        if self.version != Some(version) {
            self.reload(version).await?;
        }
        let now = now_ms();
        for index in 0..self.entries.len() {
            let entry = &self.entries[index];
            if !entry.paused && entry.plan.ticks.next_after(entry.cursor).is_some_and(|t| t <= now) {
                self.evaluate(index, now).await?;
            }
        }
        if self.version.is_none() {
            return Ok(now);
        }
        let next = self
            .entries
            .iter()
            .filter(|e| !e.paused)
            .filter_map(|e| e.plan.ticks.next_after(e.cursor))
            .min()
            .unwrap_or(u64::MAX);
        // The next look for changes is on a tick of the wall clock, with the process's others.
        let changes_every = Duration::from_millis(CHANGES_EVERY_MS);
        Ok(next.min(now_ms() + crate::store::until_next_tick(changes_every).as_millis() as u64))
    }

    /// Reads every schedule again, keeping how far this process got with those unchanged.
    async fn reload(&mut self, version: u64) -> redis::RedisResult<()> {
        let mut entries = Vec::new();
        for name in self.schedules.names().await? {
            let Some(stored) = self.schedules.stored(&name).await? else { continue };
            let plan = match self.schedules.plan(&stored.spec) {
                Ok(plan) => plan,
                Err(e) => {
                    warn!(schedule = %name, error = %e, "schedule not ticking: it no longer checks");
                    continue;
                }
            };
            let seen = self
                .entries
                .iter()
                .find(|e| e.name == name && e.generation == stored.generation)
                .map_or(0, |e| e.cursor);
            entries.push(Entry {
                name,
                generation: stored.generation,
                plan,
                paused: stored.paused,
                cursor: seen.max(stored.last_tick),
            });
        }
        self.entries = entries;
        self.version = Some(version);
        Ok(())
    }

    /// What schedule `name`'s hash says now; `None` if it is gone.
    async fn now_of(&self, name: &str) -> redis::RedisResult<Option<Now>> {
        let fields = [field::GENERATION, field::LAST_TICK, field::PAUSED, field::RUN_TASK];
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.schedules.key(name))
            .arg(&fields)
            .query_async(&mut self.schedules.conn())
            .await?;
        let [generation, last_tick, paused, run_task] =
            <[Option<String>; 4]>::try_from(values).unwrap_or_default();
        let Some(generation) = generation.and_then(|g| g.parse().ok()) else { return Ok(None) };
        Ok(Some(Now {
            generation,
            last_tick: last_tick.and_then(|t| t.parse().ok()).unwrap_or(0),
            paused: paused.is_some_and(|p| p == "1"),
            run_task: run_task.and_then(|t| t.parse().ok()),
        }))
    }

    /// Deals with the ticks of entry `index` due by `now`, as its hash says now.
    async fn evaluate(&mut self, index: usize, now: u64) -> redis::RedisResult<()> {
        let name = self.entries[index].name.clone();
        let state = match self.now_of(&name).await? {
            Some(state) if state.generation == self.entries[index].generation => state,
            // Changed or deleted elsewhere: read again before ticking it.
            _ => {
                self.version = None;
                return Ok(());
            }
        };
        if state.paused {
            self.entries[index].paused = true;
            return Ok(());
        }
        let entry = &self.entries[index];
        let due = entry.plan.due(state.last_tick, now);
        let mut running = state.run_task;
        for &tick in &due.run {
            running = self.fire(entry, tick, running).await?;
        }
        if let Some(latest) = due.latest.filter(|latest| due.run.last() != Some(latest)) {
            self.schedules.record(&entry.name, Some(entry.generation), latest, None).await?;
        }
        self.entries[index].cursor = now;
        Ok(())
    }

    /// Submits `tick`'s task (unless its previous run, `running`, has not ended and it does not
    /// overlap), records the tick, and returns the schedule's latest run.
    async fn fire(
        &self,
        entry: &Entry,
        tick: u64,
        running: Option<Uuid>,
    ) -> redis::RedisResult<Option<Uuid>> {
        if entry.plan.overlap == Overlap::Skip
            && let Some(previous) = running
            && !self.schedules.has_ended(&entry.plan.target, &previous).await?
        {
            info!(schedule = %entry.name, tick_ms = tick, task.id = %previous, "tick skipped: the previous run has not ended");
            self.schedules.record(&entry.name, Some(entry.generation), tick, None).await?;
            return Ok(running);
        }
        let key = format!("schedule:{}:{}:{tick}", entry.name, entry.generation);
        match self.schedules.start(&entry.plan.target, Some(key)).await {
            Ok(started) => {
                let id = started.id();
                self.schedules.record(&entry.name, Some(entry.generation), tick, Some(id)).await?;
                Ok(Some(id))
            }
            Err(super::ScheduleError::Redis(e)) => Err(e),
            Err(e) => {
                warn!(schedule = %entry.name, tick_ms = tick, error = %e, "tick refused: no task for it");
                self.schedules.record(&entry.name, Some(entry.generation), tick, None).await?;
                Ok(running)
            }
        }
    }
}
