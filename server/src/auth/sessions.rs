//! Browser sessions: a random id in a cookie that stands for the token a person signed in with.
//!
//! A session is one Redis key, `{prefix}:web-session:{hex sha256(id)}`, holding the digest of the
//! token it was opened with (never the token) and expiring with the session. Each request reads
//! it once and asks [`Tokens::by_digest`] for the grant, so a session ends the moment its token is
//! revoked or expires, on every process, without anyone finding and deleting its key. The id is
//! stored only as its digest: a copy of Redis opens no browser's session.

use super::{Access, Tokens, hex};
use crate::redis_client::Conn;
use base64::Engine as _;
use redis::AsyncCommands;
use sha2::{Digest as _, Sha256};
use std::{fmt, time::Duration};

/// The longest a session lasts; its token's expiry may end it sooner.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How many characters a session id has: 32 random bytes in unpadded base64url.
const ID_LEN: usize = 43;

/// A session just opened: its id, for the cookie and nowhere else, and how long it lasts.
pub struct Opened {
    pub id: String,
    pub lifetime: Duration,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened").field("id", &"…").field("lifetime", &self.lifetime).finish()
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("this access has no token to open a session with (access control is off)")]
    NoToken,
    #[error("the token has expired")]
    Expired,
    #[error("the OS gave no random bytes: {0}")]
    Random(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The browser sessions under one prefix; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    conn: Conn,
    /// `{prefix}:web-session:`, to which a session id's digest is appended. Each session's key is
    /// used alone, so it needs no hash tag (`layout.rs`).
    key_start: String,
    tokens: Tokens,
}

impl Sessions {
    /// The sessions under `prefix`, honoured while `tokens` holds their token.
    pub fn new(conn: Conn, prefix: &str, tokens: Tokens) -> Sessions {
        Sessions { conn, key_start: format!("{prefix}:web-session:"), tokens }
    }

    /// Opens a session for `access` (a token just presented): for [`SESSION_TTL`], or until the
    /// token expires if that comes first.
    pub async fn open(&self, access: &Access) -> Result<Opened, SessionError> {
        let digest = access.digest().ok_or(SessionError::NoToken)?;
        let mut lifetime = SESSION_TTL;
        if let Some(expires_ms) = access.expires_ms() {
            let left = expires_ms.saturating_sub(crate::store::now_ms());
            if left == 0 {
                return Err(SessionError::Expired);
            }
            lifetime = lifetime.min(Duration::from_millis(left));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SessionError::Random(e.to_string()))?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let millis = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        self.conn.clone().pset_ex::<_, _, ()>(self.key(&id), digest, millis).await?;
        Ok(Opened { id, lifetime })
    }

    /// The access of session `id`: `None` when there is no such session (never opened, signed
    /// out, expired) or its token is revoked or expired.
    pub async fn access(&self, id: &str) -> redis::RedisResult<Option<Access>> {
        if !is_session_id(id) {
            return Ok(None);
        }
        let digest: Option<String> = self.conn.clone().get(self.key(id)).await?;
        // The key is left to expire rather than deleted when its token is unknown: a token made on
        // another process moments ago may not be in this one's table yet.
        Ok(digest.and_then(|digest| self.tokens.by_digest(&digest)))
    }

    /// Ends session `id` (signing out); ending one that does not exist is no error.
    pub async fn close(&self, id: &str) -> redis::RedisResult<()> {
        if is_session_id(id) {
            self.conn.clone().del::<_, ()>(self.key(id)).await?;
        }
        Ok(())
    }

    /// The key of session `id`: named by the id's digest, so Redis never holds the id itself.
    fn key(&self, id: &str) -> String {
        format!("{}{}", self.key_start, hex(&Sha256::digest(id.as_bytes())))
    }
}

/// Whether `id` could be a session id; anything else is refused before Redis is asked.
fn is_session_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_of_the_minted_shape_are_looked_up() {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(is_session_id(&id));
        assert!(!is_session_id(&id[1..]));
        assert!(!is_session_id(&format!("{}=", &id[1..])));
        assert!(!is_session_id(""));
        assert!(!is_session_id(&"a".repeat(44)));
    }
}
