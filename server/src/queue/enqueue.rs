//! How tasks get into a queue: one script (enqueue.lua) stores each record and payload, queues its
//! id and appends its event, or refuses the lot when the queue's `max_depth` would be passed.
//!
//! Submissions that arrive while an enqueue of the same queue is on its way to Redis go together
//! in the next one (a group commit), each keeping its own all-or-nothing answer: a busy server
//! pays one script call, and one round trip, per group rather than per request, and an idle one
//! sends each at once. Large payloads and large batches go on their own, their payloads staged
//! with a plain `SET` first (the script renames them), so no large string passes through Lua.

use super::{GROUP, NewTask, Queue, priority_tag};
use redis::{RedisResult, Value};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Payloads up to this size go to the enqueue script as arguments; larger ones are staged.
const INLINE_PAYLOAD_MAX: usize = 16 * 1024;
/// Text payloads up to this size live in the task's record rather than under a key of their own:
/// a task then costs Redis three commands fewer (the payload's SET, GET and PEXPIRE), ~3 µs, and
/// ~550 bytes more memory once the payload passes 64 bytes (the record is then a hash table, not
/// a listpack) — docs/benchmark-notes.md. Text only, as the record is read as text.
const RECORD_PAYLOAD_MAX: usize = 4 * 1024;
/// How long a staged payload waits for its enqueue script (which runs right after it) at most.
const STAGED_TTL: Duration = Duration::from_secs(300);
/// The most tasks one group commit carries; a batch this large goes on its own.
const GROUP_COMMIT_MAX: usize = 256;

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Stored,
    /// Stored, but no replica confirmed it in time (`--durable-submit`): a failover now could
    /// lose it.
    Unconfirmed,
    /// The queue's `max_depth` would be passed: nothing was stored.
    Full {
        waiting: u64,
        max_depth: u64,
    },
}

/// Submissions waiting to be sent together; one per queue handle, started on first use.
pub(super) struct Enqueuer {
    jobs: mpsc::UnboundedSender<Job>,
}

/// Tasks to store together, and who waits for the answer.
struct Job {
    tasks: Vec<NewTask>,
    reply: oneshot::Sender<RedisResult<Enqueued>>,
}

impl NewTask {
    /// Whether this task's enqueue stores its payload (a shared payload is stored by its owner).
    fn owns_payload(&self) -> bool {
        self.shared_payload.is_none_or(|shared| shared.owner == self.id)
    }

    /// Whether its enqueue keeps its payload in its record (a small text payload of its own).
    pub fn payload_in_record(&self) -> bool {
        self.shared_payload.is_none()
            && self.payload.len() <= RECORD_PAYLOAD_MAX
            && std::str::from_utf8(&self.payload).is_ok()
    }

    /// Whether its payload is staged before the script rather than passed to it.
    fn staged(&self) -> bool {
        self.owns_payload() && self.payload.len() > INLINE_PAYLOAD_MAX
    }
}

impl Queue {
    /// Stores the payload and the record and queues the id, atomically.
    pub async fn enqueue(&self, task: &NewTask) -> RedisResult<Enqueued> {
        self.enqueue_many(std::slice::from_ref(task)).await
    }

    /// Enqueues several tasks: all of them, or (on error, or when the queue's `max_depth` would
    /// be passed) none.
    pub async fn enqueue_many(&self, tasks: &[NewTask]) -> RedisResult<Enqueued> {
        if tasks.len() > GROUP_COMMIT_MAX || tasks.iter().any(NewTask::staged) {
            let answers = self.enqueue_groups(&[tasks]).await?;
            return Ok(answers.into_iter().next().unwrap_or(Enqueued::Stored));
        }
        let (reply, answer) = oneshot::channel();
        let gone = || redis::RedisError::from((redis::ErrorKind::Io, "the enqueue loop stopped"));
        let enqueuer = self.enqueuer.get_or_init(|| {
            let (jobs, queued) = mpsc::unbounded_channel();
            tokio::spawn(self.for_loop().group_commits(queued));
            Enqueuer { jobs }
        });
        enqueuer.jobs.send(Job { tasks: tasks.to_vec(), reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Sends the jobs waiting, together, one call at a time: those that arrive during a call go
    /// in the next. Runs as long as a handle that sends it jobs (`for_loop`).
    async fn group_commits(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut count = first.tasks.len();
            let mut batch = vec![first];
            while count < GROUP_COMMIT_MAX {
                match jobs.try_recv() {
                    Ok(job) => {
                        count += job.tasks.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            let groups: Vec<&[NewTask]> = batch.iter().map(|job| job.tasks.as_slice()).collect();
            match self.enqueue_groups(&groups).await {
                Ok(answers) => {
                    for (job, answer) in batch.into_iter().zip(answers) {
                        let _ = job.reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Confirms that a replica holds every write this queue's durable connection made before,
    /// and what `key` (an idempotency key, holding `value`) says, which an earlier request may
    /// have stored through another connection: it is written again, unchanged, and waited for.
    /// Always `true` without `--durable-submit`.
    pub async fn confirm_durable(&self, key: &str, value: &str) -> RedisResult<bool> {
        let Some(durable) = self.settings.durable.as_ref() else { return Ok(true) };
        let mut touch = redis::cmd("SET");
        touch.arg(key).arg(value).arg("XX").arg("KEEPTTL");
        durable.confirm(touch).await
    }

    /// Stores `groups` of tasks in one script call, each all or none; the answer of each. Large
    /// payloads are staged in the same round trip, just before the script.
    async fn enqueue_groups(&self, groups: &[&[NewTask]]) -> RedisResult<Vec<Enqueued>> {
        let mut call = self.scripts.enqueue.prepare_invoke();
        call.key(self.keys.delayed())
            .key(self.keys.retrying())
            .key(self.keys.index())
            .key(self.keys.expiring())
            .key(self.keys.events())
            .key(self.keys.settings())
            .arg(self.keys.base())
            .arg(GROUP)
            .arg(self.settings.events_maxlen);
        for group in groups {
            call.arg(group.len());
            for task in group.iter() {
                add_task_args(&mut call, task);
            }
        }
        let mut pipe = redis::pipe();
        for task in groups.iter().flat_map(|g| g.iter()).filter(|t| t.staged()) {
            pipe.cmd("SET")
                .arg(self.keys.staged_payload(&task.id))
                .arg(task.payload.as_ref())
                .arg("PX")
                .arg(STAGED_TTL.as_millis() as u64)
                .ignore();
        }
        pipe.invoke_script(&call);
        let durable = self.settings.durable.as_ref();
        if let Some(durable) = durable {
            pipe.add_command(wait_for_replica(durable));
        }
        let mut conn = durable.map_or_else(|| self.conn.clone(), |durable| durable.conn.clone());
        let sent: RedisResult<Vec<Value>> = pipe.query_async(&mut conn).await;
        drop(pipe);
        let (replies, replicas): (Vec<Value>, Option<u64>) = match sent {
            // The first call since Redis last lost its scripts (a start, a restart): the payloads
            // are staged already; the script is loaded, and run.
            Err(e) if e.code() == Some("NOSCRIPT") => {
                let replies: Vec<Value> = call.invoke_async(&mut conn).await?;
                let replicas = match durable {
                    // On a cluster, to the node the script ran on.
                    Some(durable) => {
                        Some(conn.query_beside(&self.keys.settings(), &wait_for_replica(durable)).await?)
                    }
                    None => None,
                };
                (replies, replicas)
            }
            other => {
                let mut replies = other?.into_iter();
                let script = replies.next().map(redis::from_redis_value).transpose()?.unwrap_or_default();
                (script, replies.next().map(redis::from_redis_value).transpose()?)
            }
        };
        let confirmed = replicas.is_none_or(|replicas| replicas >= REPLICAS);
        let answers: Vec<Enqueued> = replies
            .into_iter()
            .map(answer_of)
            .map(|answer| match answer {
                Enqueued::Stored if !confirmed => Enqueued::Unconfirmed,
                answer => answer,
            })
            .collect();
        if answers.contains(&Enqueued::Stored) {
            self.prune_index_now_and_then().await;
        }
        Ok(answers)
    }
}

/// The replicas a durable submission waits for.
pub(super) const REPLICAS: u64 = 1;

/// `WAIT`: until a replica holds every write made before on the connection, or the timeout.
pub(super) fn wait_for_replica(durable: &super::Durable) -> redis::Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(REPLICAS).arg(durable.timeout.as_millis().max(1) as u64);
    wait
}

/// One group's answer from the script: `1`, or `{waiting, max_depth}`.
fn answer_of(reply: Value) -> Enqueued {
    match redis::from_redis_value::<(u64, u64)>(reply) {
        Ok((waiting, max_depth)) => Enqueued::Full { waiting, max_depth },
        Err(_) => Enqueued::Stored,
    }
}

/// The 20 arguments of one task in enqueue.lua, in its order.
fn add_task_args(call: &mut redis::ScriptInvocation<'_>, task: &NewTask) {
    let text = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let due = task.delay_ms.map(|delay| task.created_ms + delay);
    let (shared_ref, shared_open) = match task.shared_payload {
        None => (String::new(), String::new()),
        Some(shared) if shared.owner == task.id => (shared.owner.to_string(), shared.tasks.to_string()),
        Some(shared) => (shared.owner.to_string(), String::new()),
    };
    let source = match () {
        _ if !task.owns_payload() => "shared",
        _ if task.staged() => "staged",
        _ if task.payload_in_record() => "record",
        _ => "here",
    };
    call.arg(task.id.to_string())
        .arg(task.created_ms)
        .arg(&task.kind)
        .arg(text(due))
        .arg(priority_tag(task.priority))
        .arg(task.max_attempts)
        .arg(text(task.timeout_ms))
        .arg(&task.payload_type)
        .arg(task.payload.len())
        .arg(task.session.as_deref().unwrap_or(""))
        .arg(task.subscription.as_deref().unwrap_or(""))
        .arg(task.idempotency_key.as_deref().unwrap_or(""))
        .arg(text(task.expires_ms))
        .arg(shared_ref)
        .arg(shared_open)
        .arg(source)
        .arg(task.traceparent.as_deref().unwrap_or(""))
        .arg(task.workflow.as_ref().map(|w| w.workflow.to_string()).unwrap_or_default())
        .arg(task.workflow.as_ref().map(|w| w.step.as_str()).unwrap_or(""));
    if source == "here" || source == "record" {
        call.arg(task.payload.as_ref());
    } else {
        call.arg("");
    }
}
