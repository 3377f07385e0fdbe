//! Named queues: the registry of their names in Redis, a handle on each, and finding the queue a
//! task lives in from its id alone.
//!
//! A queue comes into being when something first names it (a submit, a subscription, a limit, a
//! pause) and is listed from then on. Its name is the hash tag of its keys, so a task's record
//! is found only under its queue: an id is looked up in this process's memory of recent ids,
//! then by asking every queue at once (one pipelined `EXISTS` each), the default queue first.
//! That keeps the submit one script in one slot, with no index of ids to keep in step.

use crate::queue::Queue;
use app::model::{DEFAULT_QUEUE, is_queue_name};
use redis::{Script, aio::ConnectionManager};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};
use uuid::Uuid;

/// The most queues there may be: each costs every listing, lookup and worker a little.
pub const MAX_QUEUES: usize = 1_000;
/// How many task ids this process remembers the queue of.
const REMEMBERED_IDS: usize = 100_000;

/// Why a queue name cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "`{0}` is not a queue name: use 1 to 64 of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("there are {MAX_QUEUES} queues already, the most there may be")]
    TooMany,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Every named queue; cheap to clone.
#[derive(Clone)]
pub struct Queues {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    /// The default queue: the others are its siblings, sharing its connection and scripts.
    default: Queue,
    conn: ConnectionManager,
    register: Script,
    /// Queues known to be registered, by name.
    open: RwLock<BTreeMap<String, Queue>>,
    /// The queue of recently seen task ids; emptied when full (ids are found again by asking).
    located: Mutex<HashMap<Uuid, Arc<str>>>,
}

impl Queues {
    /// The queues under `prefix`, starting from the default one.
    pub fn new(default: Queue, conn: ConnectionManager, prefix: &str) -> Queues {
        let open = BTreeMap::from([(DEFAULT_QUEUE.to_string(), default.clone())]);
        Queues {
            inner: Arc::new(Inner {
                prefix: prefix.to_string(),
                default,
                conn,
                register: Script::new(include_str!("queues/register.lua")),
                open: RwLock::new(open),
                located: Mutex::default(),
            }),
        }
    }

    /// The registry of queue names.
    fn registry_key(&self) -> String {
        format!("{}:queues", self.inner.prefix)
    }

    /// The default queue.
    pub fn default_queue(&self) -> &Queue {
        &self.inner.default
    }

    /// A handle on queue `name`, registering it (and making its consumer group) on first use.
    pub async fn open(&self, name: &str) -> Result<Queue, QueueError> {
        if let Some(queue) = self.inner.open.read().expect("never poisoned").get(name) {
            return Ok(queue.clone());
        }
        if !is_queue_name(name) {
            return Err(QueueError::InvalidName(name.to_string()));
        }
        let registered: i64 = self
            .inner
            .register
            .key(self.registry_key())
            .arg(name)
            .arg(MAX_QUEUES)
            .invoke_async(&mut self.inner.conn.clone())
            .await?;
        if registered == 0 {
            return Err(QueueError::TooMany);
        }
        let queue = self.handle(name);
        queue.ensure_group().await?;
        self.inner.open.write().expect("never poisoned").insert(name.to_string(), queue.clone());
        Ok(queue)
    }

    /// A handle on queue `name` if it exists (registered, here or by another process).
    pub async fn existing(&self, name: &str) -> redis::RedisResult<Option<Queue>> {
        if let Some(queue) = self.inner.open.read().expect("never poisoned").get(name) {
            return Ok(Some(queue.clone()));
        }
        if !is_queue_name(name) {
            return Ok(None);
        }
        let known: bool = redis::cmd("SISMEMBER")
            .arg(self.registry_key())
            .arg(name)
            .query_async(&mut self.inner.conn.clone())
            .await?;
        Ok(known.then(|| self.handle(name)))
    }

    /// A handle on queue `name`, registered or not (for reading what is stored under it).
    pub fn handle(&self, name: &str) -> Queue {
        if name == DEFAULT_QUEUE {
            return self.inner.default.clone();
        }
        self.inner.default.sibling(&self.inner.prefix, name)
    }

    /// Every queue there is, by name, the default one included.
    pub async fn all(&self) -> redis::RedisResult<Vec<Queue>> {
        let mut names: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.registry_key()).query_async(&mut self.inner.conn.clone()).await?;
        names.push(DEFAULT_QUEUE.to_string());
        names.retain(|n| is_queue_name(n));
        names.sort();
        names.dedup();
        Ok(names.iter().map(|n| self.handle(n)).collect())
    }

    /// Remembers that task `id` lives in `queue`.
    pub fn remember(&self, id: Uuid, queue: &Queue) {
        let mut located = self.inner.located.lock().expect("never poisoned");
        if located.len() >= REMEMBERED_IDS {
            located.clear();
        }
        located.insert(id, queue.name().into());
    }

    /// The queue task `id` lives in, or `None` if no queue holds it (never existed, or expired).
    pub async fn locate(&self, id: &Uuid) -> redis::RedisResult<Option<Queue>> {
        let remembered = self.inner.located.lock().expect("never poisoned").get(id).cloned();
        if let Some(name) = remembered {
            return Ok(Some(self.handle(&name)));
        }
        let queues = self.all().await?;
        // The default queue first: most tasks of most deployments live there.
        let mut order: Vec<&Queue> = queues.iter().filter(|q| q.name() == DEFAULT_QUEUE).collect();
        order.extend(queues.iter().filter(|q| q.name() != DEFAULT_QUEUE));
        let mut pipe = redis::pipe();
        for queue in &order {
            pipe.exists(queue.keys().task(id));
        }
        let found: Vec<bool> = pipe.query_async(&mut self.inner.conn.clone()).await?;
        let queue = order.into_iter().zip(found).find_map(|(queue, found)| found.then(|| queue.clone()));
        if let Some(queue) = &queue {
            self.remember(*id, queue);
        }
        Ok(queue)
    }
}
