//! The one-time move of the keys under a prefix from the layout before hash tags to the tagged
//! one ([`LAYOUT`]), at a process's start, before anything reads them.
//!
//! Each key of a family is renamed to its tagged name where the old one exists and the new one
//! does not; the dynamic ones are found through their registries (each topic's keys through the
//! set of topics, each workflow's hash, lock and idempotency key through the listing, the hash's
//! `idem` field rewritten to the key's new name). A registry moves after its members, so a move
//! cut short finds them again. Worker entries are not moved but dropped: they expire within two
//! lease periods anyway, and every worker announces itself again. One process moves at a time,
//! under a lock that lapses should it die (a move that outlasts the lock is safe beside another:
//! each rename checks both names in one step); the others wait for the layout marker, which is
//! set once every key has moved, so a Redis in the tagged layout costs each start one `GET`.

use super::marker;
use crate::redis_client::Conn;
use crate::{
    auth::TokenKeys, kinds::KindKeys, queues::RegistryKeys, topics::TopicKeys, workers::WorkerKeys,
    workflows::WorkflowKeys,
};
use redis::{AsyncCommands, Script};
use std::{sync::LazyLock, time::Duration};
use tracing::{info, warn};
use uuid::Uuid;

/// The layout this build reads and writes: every family of keys under its hash tag.
pub const LAYOUT: u64 = 2;
/// How long one process may hold the move before another may take it over (should it die).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How often a process waiting for another's move looks again.
const WAIT_EVERY: Duration = Duration::from_millis(100);
/// How many workflows are read from the listing at a time.
const PAGE: isize = 500;

static RENAME: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("rename.lua")));

/// Moves the keys under `prefix` to the tagged layout unless they are there already; waits
/// while another process moves them.
pub async fn upgrade(conn: &Conn, prefix: &str) -> redis::RedisResult<()> {
    let mut conn = conn.clone();
    let marker = marker(prefix);
    let lock = format!("{marker}:upgrading");
    let token = Uuid::now_v7().to_string();
    let mut waited = false;
    loop {
        if current(&mut conn, &marker).await? {
            return Ok(());
        }
        if crate::store::take_lock(&mut conn, &lock, &token, LOCK_TTL).await? {
            // Another process may have finished between the look and the lock.
            let moved = match current(&mut conn, &marker).await {
                Ok(true) => Ok(()),
                Ok(false) => move_keys(&conn, prefix).await,
                Err(e) => Err(e),
            };
            let marked = match moved {
                Ok(()) => conn.set::<_, _, ()>(&marker, LAYOUT).await,
                Err(e) => Err(e),
            };
            let _ = crate::store::release_lock(&mut conn, &lock, &token).await;
            return marked;
        }
        if !waited {
            info!(prefix, "waiting for another process to move the keys to the tagged layout");
            waited = true;
        }
        tokio::time::sleep(WAIT_EVERY).await;
    }
}

/// Whether the keys under the prefix of `marker` are in this layout (or a later one).
async fn current(conn: &mut Conn, marker: &str) -> redis::RedisResult<bool> {
    let layout: Option<u64> = conn.get(marker).await?;
    Ok(layout.is_some_and(|layout| layout >= LAYOUT))
}

/// Moves every family's keys under `prefix`, and drops the old worker entries.
async fn move_keys(conn: &Conn, prefix: &str) -> redis::RedisResult<()> {
    let mut mover = Mover { conn: conn.clone(), moved: 0 };
    mover.rename_all(&RegistryKeys::under(prefix).all(), &RegistryKeys::new(prefix).all()).await?;
    mover.rename_all(&TokenKeys::under(prefix).all(), &TokenKeys::new(prefix).all()).await?;
    mover.rename_all(&KindKeys::under(prefix).all(), &KindKeys::new(prefix).all()).await?;
    mover.topics(&TopicKeys::under(prefix), &TopicKeys::new(prefix)).await?;
    mover.workflows(&WorkflowKeys::under(prefix), &WorkflowKeys::new(prefix)).await?;
    let dropped = mover.drop_workers(&WorkerKeys::under(prefix)).await?;
    if mover.moved > 0 || dropped > 0 {
        info!(
            prefix,
            keys.moved = mover.moved,
            workers.dropped = dropped,
            "moved the keys to the tagged layout"
        );
    }
    Ok(())
}

/// Renames keys, counting them.
struct Mover {
    conn: Conn,
    moved: usize,
}

impl Mover {
    /// Renames `old` to `new` if `old` exists and `new` does not.
    async fn rename(&mut self, old: &str, new: &str) -> redis::RedisResult<()> {
        // Looked at alone first: where there is nothing to move (a new deployment, a Cluster,
        // where the two names may be in different slots) nothing touches both.
        if !self.conn.exists::<_, bool>(old).await? {
            return Ok(());
        }
        let renamed: i64 = RENAME.key(old).key(new).invoke_async(&mut self.conn).await?;
        match renamed {
            1 => self.moved += 1,
            -1 => {
                warn!(key.old = old, key.new = new, "both names of a key exist: the old one is left as it is")
            }
            _ => {}
        }
        Ok(())
    }

    /// Renames each of `old` to the `new` at its place.
    async fn rename_all(&mut self, old: &[&str], new: &[&str]) -> redis::RedisResult<()> {
        for (old, new) in old.iter().zip(new) {
            self.rename(old, new).await?;
        }
        Ok(())
    }

    /// Moves each topic's subscriptions and counters, then the set of topics.
    async fn topics(&mut self, old: &TopicKeys, new: &TopicKeys) -> redis::RedisResult<()> {
        let topics: Vec<String> = self.conn.smembers(old.topics()).await?;
        for topic in &topics {
            self.rename(&old.topic(topic), &new.topic(topic)).await?;
            self.rename(&old.stats(topic), &new.stats(topic)).await?;
        }
        self.rename(&old.topics(), &new.topics()).await
    }

    /// Moves each listed workflow's hash, lock and idempotency key (and the hash's `idem` field,
    /// which names the key), then the listings.
    async fn workflows(&mut self, old: &WorkflowKeys, new: &WorkflowKeys) -> redis::RedisResult<()> {
        // The hash may expire meanwhile: a field is set only on one that still exists.
        static SET_IF_EXISTS: LazyLock<Script> = LazyLock::new(|| {
            Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end",
            )
        });
        let old_idempotency = old.idempotency("");
        let mut start = 0;
        loop {
            let ids: Vec<String> = self.conn.zrange(old.list(), start, start + PAGE - 1).await?;
            for id in &ids {
                let hash = new.workflow(id);
                self.rename(&old.workflow(id), &hash).await?;
                self.rename(&old.lock(id), &new.lock(id)).await?;
                let idem: Option<String> = self.conn.hget(&hash, "idem").await?;
                let Some(digest) = idem.as_deref().and_then(|name| name.strip_prefix(&old_idempotency))
                else {
                    continue;
                };
                let tagged = new.idempotency(digest);
                self.rename(&old.idempotency(digest), &tagged).await?;
                let _: () =
                    SET_IF_EXISTS.key(&hash).arg("idem").arg(&tagged).invoke_async(&mut self.conn).await?;
            }
            if (ids.len() as isize) < PAGE {
                break;
            }
            start += PAGE;
        }
        self.rename(&old.list(), &new.list()).await?;
        self.rename(&old.running(), &new.running()).await
    }

    /// Deletes the old worker entries and their list; how many entries there were.
    async fn drop_workers(&mut self, old: &WorkerKeys) -> redis::RedisResult<usize> {
        let ids: Vec<String> = self.conn.zrange(old.index(), 0, -1).await?;
        for id in &ids {
            let _: () = self.conn.del(old.worker(id)).await?;
        }
        let _: () = self.conn.del(old.index()).await?;
        Ok(ids.len())
    }
}
