//! The audit trail: who cancelled, requeued, deleted, paused, resumed, and who changed tokens and
//! kinds, and when, in a capped stream `{prefix}:audit` that every instance writes and reads.

use crate::redis_client::Conn;
use app::model::{AuditEntry, AuditPage};
use redis::Value;
use tracing::warn;

/// About how many actions the trail keeps (older ones are trimmed).
const KEEP: usize = 10_000;

/// The audit trail; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    conn: Conn,
    /// `{prefix}:audit`, used alone, so with no hash tag (`layout.rs`).
    key: String,
}

impl Audit {
    /// The trail under `prefix`.
    pub fn new(conn: Conn, prefix: &str) -> Audit {
        Audit { conn, key: format!("{prefix}:audit") }
    }

    /// Records that `actor` did `action` to `target`. The action has happened: a failure to
    /// record it is logged, not answered.
    pub async fn record(&self, actor: &str, action: &str, target: &str) {
        let at = crate::store::now_ms().to_string();
        let written: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(KEEP)
            .arg("*")
            .arg(&[("at", at.as_str()), ("actor", actor), ("action", action), ("target", target)])
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = written {
            warn!(error = %e, action, actor, "recording an operator action in the audit trail failed");
        }
    }

    /// Up to `limit` actions, newest first, older than `before` (a stream id) if given.
    pub async fn recent(&self, limit: usize, before: Option<&str>) -> redis::RedisResult<AuditPage> {
        // Nothing comes before the first id there can be, and Redis refuses the range `(0-0`.
        if before.and_then(crate::events::Position::parse) == Some(crate::events::Position::ZERO) {
            return Ok(AuditPage { entries: Vec::new(), next: None });
        }
        let end = before.map(|id| format!("({id}")).unwrap_or_else(|| "+".into());
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit + 1)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut entries: Vec<AuditEntry> = match reply {
            Value::Array(items) => items.iter().filter_map(entry).collect(),
            _ => Vec::new(),
        };
        let next = (entries.len() > limit).then(|| {
            entries.truncate(limit);
            entries.last().map(|e| e.id.clone())
        });
        Ok(AuditPage { entries, next: next.flatten() })
    }
}

/// One stream entry read as an action; `None` if it is not one.
fn entry(item: &Value) -> Option<AuditEntry> {
    let Value::Array(parts) = item else { return None };
    let [Value::BulkString(id), Value::Array(fields)] = &parts[..] else { return None };
    let mut entry = AuditEntry {
        id: String::from_utf8(id.clone()).ok()?,
        at: String::new(),
        actor: String::new(),
        action: String::new(),
        target: String::new(),
    };
    for pair in fields.chunks_exact(2) {
        let (Value::BulkString(field), Value::BulkString(value)) = (&pair[0], &pair[1]) else { continue };
        let value = String::from_utf8_lossy(value).into_owned();
        match field.as_slice() {
            b"at" => entry.at = crate::store::rfc3339(value.parse().ok()?),
            b"actor" => entry.actor = value,
            b"action" => entry.action = value,
            b"target" => entry.target = value,
            _ => {}
        }
    }
    Some(entry)
}
