//! Transactions of plain commands, watched: how tasks are started and ended without Lua
//! (queue/lease/plain.rs, queue/finish/plain.rs). Each is sent as one pipeline built by hand,
//! `MULTI`, the commands, `EXEC`, on a connection of its own that nothing reconnects (a watch
//! belongs to the connection), after a read of what it decides on, watched.

use super::Queue;
use crate::redis_client::Conn;
use redis::{RedisResult, Value};
use std::time::Duration;

/// How long a queue's starts go through the claim script once the plain way found it should
/// (limits, or new entries on several streams at once: those read beyond what fits go back to
/// the end of their streams, where the script reads the most urgent first) before the plain way
/// is tried again: by a worker's finish rounds, and by pulled lease requests, each keeping its
/// own time.
pub(super) const SCRIPTED_FOR: Duration = Duration::from_secs(1);

/// Whether Redis lets this user watch and run a transaction on `conn` (an error if not): asked
/// before a connection's first plain commands, since a user refused `MULTI` alone would see a
/// transaction's commands run one by one.
pub(super) async fn allows_transactions(conn: &mut Conn, queue: &Queue) -> RedisResult<()> {
    let mut probe = redis::pipe();
    probe.cmd("WATCH").arg(queue.keys.settings()).cmd("UNWATCH").cmd("MULTI").cmd("EXEC").cmd("TIME");
    let _: (String, String, String, Vec<Value>, Vec<String>) = probe.query_async(conn).await?;
    Ok(())
}

/// The answers of a transaction's commands, from the replies of a pipeline built by hand as
/// `MULTI`, the commands, `EXEC`: None when a watched key changed and nothing was applied, an
/// error when Redis refused `MULTI` (the commands then ran one by one) or the whole transaction
/// (EXECABORT: a command refused as it was queued). The replies between the first and the last,
/// each command's `QUEUED`, are passed over here rather than marked `ignore()` as the commands
/// are added: redis-rs hashes the index of each command ignored, and of each reply then.
pub(super) fn applied(replies: Vec<Value>) -> RedisResult<Option<Vec<Value>>> {
    let mut replies = replies.into_iter();
    match (replies.next(), replies.next_back().unwrap_or(Value::Nil)) {
        (Some(Value::Okay), Value::Array(applied)) => Ok(Some(applied)),
        (Some(Value::Okay), Value::Nil) => Ok(None),
        (multi, exec) => {
            let answers = format!("MULTI answered {multi:?}; EXEC answered {exec:?}");
            Err(redis::RedisError::from((redis::ErrorKind::Client, "a transaction was refused", answers)))
        }
    }
}

/// Takes `WATCH`'s answer, the first of a watched read's replies (not marked `ignore()`, for the
/// reason `applied` gives), from `replies`.
pub(super) fn watched(replies: &mut impl Iterator<Item = Value>) -> RedisResult<()> {
    match replies.next() {
        Some(Value::Okay) => Ok(()),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "a watch was refused",
            format!("{other:?}"),
        ))),
    }
}
