//! Named queues: the registry of their names in Redis, a handle on each, and finding the queue a
//! task lives in from its id alone.
//!
//! A queue comes into being when something first names it (a submit, a subscription, a limit, a
//! pause) and is listed from then on, with a number for life (the default queue's is 0). Its
//! name is the hash tag of its keys, so a task's record is found only under its queue: a task's
//! id carries its queue's number in the 12 bits UUIDv7 leaves to the implementation (`rand_a`),
//! so finding a task by its id alone costs one lookup whatever the number of queues, with no
//! index of ids to keep in step. Ids made before queues had numbers are all the default queue's.

use crate::queue::Queue;
use crate::redis_client::Conn;
use app::model::{DEFAULT_QUEUE, is_queue_name};
use redis::{AsyncCommands, Script};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};
use uuid::Uuid;

/// The most queues there may be: each costs every listing and worker a little, and their numbers
/// must fit the 12 bits a task id has for them.
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

/// The Redis keys of the queue registry, all tagged `{_queues}` (`layout.rs`): its script
/// touches them together.
#[derive(Clone, Debug)]
pub(crate) struct RegistryKeys {
    /// The set of queue names.
    names: String,
    /// Queue numbers by name.
    numbers: String,
    /// Queue names by number.
    by_number: String,
    /// When queues began to have numbers (ms since the epoch).
    since: String,
}

impl RegistryKeys {
    /// The registry's keys under `prefix`.
    pub(crate) fn new(prefix: &str) -> RegistryKeys {
        RegistryKeys::under(&crate::layout::QUEUES.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> RegistryKeys {
        RegistryKeys {
            names: format!("{base}:queues"),
            numbers: format!("{base}:queue-numbers"),
            by_number: format!("{base}:queue-names"),
            since: format!("{base}:queue-numbers-since"),
        }
    }

    /// Every key of the registry.
    pub(crate) fn all(&self) -> [&str; 4] {
        [&self.names, &self.numbers, &self.by_number, &self.since]
    }
}

/// Every named queue; cheap to clone.
#[derive(Clone)]
pub struct Queues {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    keys: RegistryKeys,
    /// The default queue: the others are its siblings, sharing its connection and scripts.
    default: Queue,
    conn: Conn,
    register: Script,
    /// Queues known to be registered, by name.
    open: RwLock<BTreeMap<String, Queue>>,
    /// Queue names by number, as the registry gave them (numbers never change).
    numbered: RwLock<HashMap<u16, String>>,
    /// When queues began to have numbers (ms since the epoch): older ids are the default queue's.
    numbered_since: u64,
    /// Told whenever this process registers a queue (the events tail then reads its stream).
    opened: Arc<tokio::sync::Notify>,
    /// The queue of recently seen task ids; emptied when full (ids are found again by asking).
    located: Mutex<HashMap<Uuid, Arc<str>>>,
}

impl Queues {
    /// The queues under `prefix`, starting from the default one; notes when queues began to have
    /// numbers, the first time.
    pub async fn open_registry(default: Queue, conn: Conn, prefix: &str) -> redis::RedisResult<Queues> {
        let keys = RegistryKeys::new(prefix);
        let mut c = conn.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(&keys.since)
            .arg(crate::store::now_ms())
            .arg("NX")
            .query_async(&mut c)
            .await?;
        let since: u64 = c.get(&keys.since).await?;
        let open = BTreeMap::from([(DEFAULT_QUEUE.to_string(), default.clone())]);
        Ok(Queues {
            inner: Arc::new(Inner {
                prefix: prefix.to_string(),
                keys,
                default,
                conn,
                register: Script::new(include_str!("queues/register.lua")),
                open: RwLock::new(open),
                numbered: RwLock::new(HashMap::from([(0, DEFAULT_QUEUE.to_string())])),
                numbered_since: since,
                opened: Default::default(),
                located: Mutex::default(),
            }),
        })
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
        let number: u16 = self
            .inner
            .register
            .key(&self.inner.keys.names)
            .key(&self.inner.keys.numbers)
            .key(&self.inner.keys.by_number)
            .arg(name)
            .arg(MAX_QUEUES)
            .invoke_async(&mut self.inner.conn.clone())
            .await?;
        if number == 0 {
            return Err(QueueError::TooMany);
        }
        let queue = self.handle(name).numbered(number);
        self.inner.numbered.write().expect("never poisoned").insert(number, name.to_string());
        queue.open_lanes(&[]).await?;
        self.inner.open.write().expect("never poisoned").insert(name.to_string(), queue.clone());
        self.inner.opened.notify_one();
        Ok(queue)
    }

    /// Told whenever this process registers a queue (or first uses one another registered).
    pub fn opened(&self) -> Arc<tokio::sync::Notify> {
        self.inner.opened.clone()
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
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
            .arg(&self.inner.keys.names)
            .arg(name)
            .query_async(&mut self.inner.conn.clone())
            .await?;
        Ok(known.then(|| self.handle(name)))
    }

    /// A handle on queue `name`, registered or not (for reading what is stored under it): this
    /// process's own when it has the queue open, so that what its handles share (the group
    /// commits of submissions and of pulled ends) is shared with it.
    pub fn handle(&self, name: &str) -> Queue {
        if let Some(queue) = self.inner.open.read().expect("never poisoned").get(name) {
            return queue.clone();
        }
        self.inner.default.sibling(&self.inner.prefix, name)
    }

    /// Every queue there is, by name, the default one included.
    pub async fn all(&self) -> redis::RedisResult<Vec<Queue>> {
        Ok(self.names().await?.iter().map(|n| self.handle(n)).collect())
    }

    /// The name of every queue there is, the default one included, sorted.
    pub async fn names(&self) -> redis::RedisResult<Vec<String>> {
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.inner.keys.names)
            .query_async(&mut self.inner.conn.clone())
            .await?;
        names.push(DEFAULT_QUEUE.to_string());
        names.retain(|n| is_queue_name(n));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Remembers that task `id` lives in `queue`.
    pub fn remember(&self, id: Uuid, queue: &Queue) {
        let mut located = self.inner.located.lock().expect("never poisoned");
        if located.len() >= REMEMBERED_IDS {
            located.clear();
        }
        located.insert(id, queue.name().into());
    }

    /// The queue task `id` lives in, or `None` if no queue holds it (never existed, or expired):
    /// the queue its id names, or for an id from before queues had numbers (or from a server of
    /// that version still running beside this one), the default queue.
    pub async fn locate(&self, id: &Uuid) -> redis::RedisResult<Option<Queue>> {
        let remembered = self.inner.located.lock().expect("never poisoned").get(id).cloned();
        if let Some(name) = remembered {
            return Ok(Some(self.handle(&name)));
        }
        let mut candidates = vec![self.inner.default.clone()];
        if created_ms(id) >= self.inner.numbered_since
            && let Some(name) = self.name_of(queue_number(id)).await?
            && name != DEFAULT_QUEUE
        {
            candidates.insert(0, self.handle(&name));
        }
        let mut pipe = redis::pipe();
        for queue in &candidates {
            pipe.exists(queue.keys().task(id));
        }
        let found: Vec<bool> = self.inner.conn.query_spread(&pipe).await?;
        let queue = candidates.into_iter().zip(found).find_map(|(queue, found)| found.then_some(queue));
        if let Some(queue) = &queue {
            self.remember(*id, queue);
        }
        Ok(queue)
    }

    /// The name of queue number `number`, if a queue has it.
    async fn name_of(&self, number: u16) -> redis::RedisResult<Option<String>> {
        if let Some(name) = self.inner.numbered.read().expect("never poisoned").get(&number) {
            return Ok(Some(name.clone()));
        }
        let name: Option<String> = self.inner.conn.clone().hget(&self.inner.keys.by_number, number).await?;
        if let Some(name) = &name {
            self.inner.numbered.write().expect("never poisoned").insert(number, name.clone());
        }
        Ok(name)
    }
}

/// Task id `id` for a task of the queue numbered `number`: the same UUIDv7 with the number in
/// its `rand_a` bits (RFC 9562 leaves their use to the implementation).
pub fn stamp(id: Uuid, number: u16) -> Uuid {
    let mut bytes = *id.as_bytes();
    bytes[6] = 0x70 | ((number >> 8) as u8 & 0x0f);
    bytes[7] = number as u8;
    Uuid::from_bytes(bytes)
}

/// The queue number a task id carries (see [`stamp`]).
fn queue_number(id: &Uuid) -> u16 {
    let bytes = id.as_bytes();
    (u16::from(bytes[6] & 0x0f) << 8) | u16::from(bytes[7])
}

/// When a UUIDv7 was made, in ms since the epoch (its first 48 bits).
fn created_ms(id: &Uuid) -> u64 {
    let bytes = id.as_bytes();
    bytes[..6].iter().fold(0, |ms, &b| (ms << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_queue_number_and_stays_a_uuid_v7_of_its_time() {
        let id = Uuid::now_v7();
        for number in [0, 1, 255, 256, 1000, 4095] {
            let stamped = stamp(id, number);
            assert_eq!(queue_number(&stamped), number);
            assert_eq!(stamped.get_version_num(), 7);
            assert_eq!(stamped.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(created_ms(&stamped), created_ms(&id));
            assert_eq!(stamped.as_bytes()[8..], id.as_bytes()[8..]);
        }
        let ms = id.get_timestamp().map(|t| t.to_unix()).map(|(s, n)| s * 1000 + u64::from(n) / 1_000_000);
        assert_eq!(Some(created_ms(&id)), ms);
    }
}
