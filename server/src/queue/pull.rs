//! Pull: leases for workers in any language, taken and kept over HTTP (`http/leases.rs`).
//!
//! A pulled lease is a built-in worker's lease: a pending entry of its kind's lane and a token in
//! the task record that every later write checks, so fencing, retries, dead letters, cancel and
//! the queue's limits hold unchanged. What differs: the claim (pull.lua) takes over expired
//! entries itself (no fetch loop does it for kinds no built-in worker runs), a lease may be
//! shorter than the queue's, and the lease travels as a token that says where its entry is.

mod plain;

use super::{
    Outcome, Queue, Renewal,
    fetch::Given,
    finish::{Ended, Ending, Held, Holders, in_rounds, plain::PlainEnds},
    lease::{HeldEntry, LeasedPayload, Started, payload_type_or_default},
    record,
};
use crate::{
    links::Links,
    store::{TaskRecord, now_ms},
};
use app::model::{is_kind_name, is_queue_name};
use bytes::Bytes;
pub(super) use plain::PlainPulls;
use plain::Pulls;
use redis::RedisResult;
use std::time::Duration;
use uuid::Uuid;

/// The longest token a worker may send back: longer ones are refused unread.
const MAX_TOKEN_LEN: usize = 512;
/// The consumer every pulled lease's entry is held by, whichever worker pulled it.
const CONSUMER: &str = "pull";
/// How many ends of pulled leases may wait for a round at most; more wait to join them.
const PULLED_ENDS_WAITING: usize = 4096;

/// A pulled lease, as its token carries it: the queue, the task and where its entry is, the
/// lease's length and the record's token. Written `queue~kind~task~stream~entry~ms~token`, then
/// sealed (`~kid~sig`, [`Links::seal`]): the scripts check the record's token alone, so a worker
/// that could change the rest could end another task's entry with its own lease, or hand its
/// task back onto another kind's lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullToken {
    pub queue: String,
    pub kind: String,
    pub task_id: Uuid,
    stream_index: usize,
    entry_id: String,
    pub lease_ms: u64,
    token: String,
}

impl PullToken {
    /// The token as handed to the worker: sealed by `links`.
    pub fn seal(&self, links: &Links) -> String {
        links.seal(&self.encode())
    }

    /// The lease a token a worker sent back names; `None` when it is not one `seal` made.
    pub async fn open(text: &str, links: &Links) -> Option<PullToken> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        PullToken::decode(links.unseal(text).await?)
    }

    /// The token's text before it is sealed.
    fn encode(&self) -> String {
        let PullToken { queue, kind, task_id, stream_index, entry_id, lease_ms, token } = self;
        format!("{queue}~{kind}~{task_id}~{stream_index}~{entry_id}~{lease_ms}~{token}")
    }

    /// How long its task waited ready before the lease was taken (read at its grant).
    pub fn waited(&self) -> Option<Duration> {
        super::lease::waited_since(&self.entry_id, now_ms())
    }

    /// Reads a token a worker sent back; `None` when it cannot be one. Only a token written
    /// exactly as `encode` writes it reads: two spellings of one lease (`030000` for `30000`)
    /// would pass as two leases, and an entry id Redis refuses (a number past 64 bits) would
    /// fail a script halfway through the ends batched with it.
    pub(super) fn decode(text: &str) -> Option<PullToken> {
        let parts: Vec<&str> = text.split('~').collect();
        let [queue, kind, task, stream, entry, ms, token] = parts[..] else { return None };
        let (entry_ms, entry_seq) = entry.split_once('-')?;
        // `+2` parses too, and is refused below: it is not how `encode` writes 2.
        let number = |n: &str| n.parse::<u64>().ok();
        let entry_id = format!("{}-{}", number(entry_ms)?, number(entry_seq)?);
        let token_ok =
            !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit() || b"-:".contains(&b));
        (is_queue_name(queue) && is_kind_name(kind) && token_ok).then_some(())?;
        let read = PullToken {
            queue: queue.to_string(),
            kind: kind.to_string(),
            task_id: task.parse().ok()?,
            stream_index: stream.parse().ok().filter(|&s: &usize| s < 3)?,
            entry_id,
            lease_ms: number(ms)?,
            token: token.to_string(),
        };
        (read.encode() == text).then_some(read)
    }
}

/// A lease a worker pulled: its token, its task's record as the lease left it (the fields a
/// view shows), and the payload when it came with the claim.
#[derive(Debug)]
pub struct Pulled {
    pub token: PullToken,
    pub record: TaskRecord,
    /// The payload, when small enough to come with the claim; else read it from the store.
    pub payload: Option<Bytes>,
    pub payload_type: String,
    /// When the lease runs out unless renewed (ms since the epoch).
    pub expires_ms: u64,
}

impl Queue {
    /// Takes up to `max` leases of `lease` each for the pulling worker named `worker`, on the
    /// lanes of `kinds` (comma-separated, `*` for every kind): expired ones taken over first, then
    /// new ones. Without Lua where the tasks need no decision (plain.rs), else by pull.lua.
    pub async fn pull(
        &self,
        worker: &str,
        kinds: &str,
        max: usize,
        lease: Duration,
    ) -> RedisResult<Vec<Pulled>> {
        let lease_ms = lease.min(self.settings.lease).as_millis() as u64;
        let (mut pulled, given) = match self.plain_pulls.pull(self, worker, kinds, max, lease_ms).await {
            Pulls::Declined => return self.pull_by_script(worker, kinds, max, lease_ms, &[]).await,
            Pulls::Taken(pulled, given) if given.is_empty() => return Ok(pulled),
            Pulls::Taken(pulled, given) => (pulled, given),
        };
        match self.pull_by_script(worker, kinds, max, lease_ms, &given).await {
            Ok(more) => pulled.extend(more),
            // The leases taken stand; the entries given stay pending until taken over.
            Err(e) if !pulled.is_empty() => {
                tracing::warn!(queue = self.name(), error = %e, "leasing the entries read failed; they are taken over once their lease runs out");
            }
            Err(e) => return Err(e),
        }
        Ok(pulled)
    }

    /// Takes leases by pull.lua: on `given` (entries read for the pulling consumer) alone, or,
    /// given none, as `pull` tells.
    async fn pull_by_script(
        &self,
        worker: &str,
        kinds: &str,
        max: usize,
        lease_ms: u64,
        given: &[Given],
    ) -> RedisResult<Vec<Pulled>> {
        let mut call = self.scripts.pull.prepare_invoke();
        call.key(self.keys.events());
        self.leasing_args(&mut call, CONSUMER, worker, kinds)
            .arg(max)
            .arg(self.settings.lease.as_millis() as u64)
            .arg(lease_ms);
        for (kind, index, entry) in given {
            call.arg(kind).arg(index + 1).arg(&entry.id).arg(entry.task.as_deref().unwrap_or_default());
        }
        // A limit that stops the queue (its reason and retry time, ignored here) only means
        // fewer leases: the worker asks again.
        let (replies, _, _): (Vec<Vec<Vec<u8>>>, Vec<u8>, u64) =
            call.invoke_async(&mut self.conn.clone()).await?;
        let expires_ms = now_ms() + lease_ms;
        let pulled = replies.into_iter().filter_map(|reply| {
            let (started, view) = Started::with_view(reply)?;
            self.pulled_of(started, view, lease_ms, expires_ms)
        });
        Ok(pulled.collect())
    }

    /// The pulled lease a start and its task's view (`field, value, …`) tell of, running out at
    /// `expires_ms`; None for a record that does not read as one.
    fn pulled_of(
        &self,
        started: Started,
        view: Vec<Vec<u8>>,
        lease_ms: u64,
        expires_ms: u64,
    ) -> Option<Pulled> {
        let task_id = started.task_id;
        let Some(mut record) = started.record(self.name(), &view) else {
            tracing::warn!(%task_id, "a leased task's record does not read as one; its lease will expire");
            return None;
        };
        let payload = match started.payload {
            LeasedPayload::Here(payload) => Some(payload),
            LeasedPayload::Stored | LeasedPayload::Gone => None,
        };
        if let Some(payload) = &payload
            && record.payload_bytes == 0
        {
            // A payload kept in the record goes without its size (record.rs, `PAYLOAD_BYTES`),
            // which reads as 0 here; one written as 0 is empty.
            record.payload_bytes = payload.len() as u64;
        }
        Some(Pulled {
            record,
            token: PullToken {
                queue: self.name().to_string(),
                kind: started.kind,
                task_id,
                stream_index: started.stream_index,
                entry_id: started.entry_id,
                lease_ms,
                token: started.token,
            },
            payload,
            payload_type: payload_type_or_default(started.payload_type),
            expires_ms,
        })
    }

    /// Where the pulled lease `token` has its entry.
    fn pulled_entry<'t>(&self, token: &'t PullToken, stream: &'t str) -> HeldEntry<'t> {
        HeldEntry {
            task_id: &token.task_id,
            stream,
            entry_id: &token.entry_id,
            token: &token.token,
            consumer: CONSUMER,
        }
    }

    /// Renews the pulled lease `token` for its length from now, storing `progress` if given.
    pub async fn heartbeat(&self, token: &PullToken, progress: Option<u8>) -> RedisResult<Renewal> {
        let stream = self.keys.lane_stream(&token.kind, token.stream_index);
        let idle = self.settings.lease.saturating_sub(Duration::from_millis(token.lease_ms));
        let renewal = self.renew_entry(&self.pulled_entry(token, &stream), idle).await?;
        if let (Renewal::Held, Some(percent)) = (renewal, progress) {
            self.progress_of(&token.task_id, &token.token, percent).await?;
        }
        Ok(renewal)
    }

    /// When the pulled lease `token`, renewed now, runs out (ms since the epoch): a lease runs
    /// its length, at most the queue's, whatever length a token claims.
    pub fn renewed_until(&self, token: &PullToken) -> u64 {
        now_ms().saturating_add(token.lease_ms.min(self.settings.lease.as_millis() as u64))
    }

    /// Hands the pulled lease's task back to the queue, its attempt not counted; `false` when
    /// the lease was no longer held.
    pub async fn release_pulled(&self, token: &PullToken) -> RedisResult<bool> {
        let stream = self.keys.lane_stream(&token.kind, token.stream_index);
        self.release_entry(&self.pulled_entry(token, &stream)).await
    }

    /// The worker that holds the pulled lease `token` (its name for itself), or `None` once the
    /// lease is no longer held.
    pub async fn pulled_worker(&self, token: &PullToken) -> RedisResult<Option<String>> {
        let [lease, worker]: [Option<String>; 2] = redis::cmd("HMGET")
            .arg(self.keys.task(&token.task_id))
            .arg(&[record::LEASE, record::WORKER])
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((lease.as_deref() == Some(token.token.as_str())).then(|| worker.unwrap_or_default()))
    }

    /// Ends the pulled lease's attempt with `outcome` — or as cancelled, when its task's cancel
    /// was asked for while it ran. Nothing changes when the lease is no longer held.
    pub async fn end_pulled(&self, token: &PullToken, outcome: Outcome) -> RedisResult<Ended> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone =
            || redis::RedisError::from((redis::ErrorKind::Io, "the loop that ends pulled leases stopped"));
        let ends = self.pulled_ends.get_or_init(|| {
            let (ends, endings) = tokio::sync::mpsc::channel(PULLED_ENDS_WAITING);
            tokio::spawn(self.for_loop().end_pulled_together(endings));
            ends
        });
        ends.send(self.pulled_ending(token, outcome, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The ending of the pulled lease `token`'s attempt with `outcome`, answered on `reply`.
    pub(super) fn pulled_ending(
        &self,
        token: &PullToken,
        outcome: Outcome,
        reply: tokio::sync::oneshot::Sender<RedisResult<Ended>>,
    ) -> Ending {
        // Its end reads the session and idempotency key of the task from its record.
        let held = Held {
            queue: self.clone(),
            task_id: token.task_id.to_string(),
            stream_index: token.stream_index,
            entry_id: token.entry_id.clone(),
            token: token.token.clone(),
            session: String::new(),
            idempotency_key: String::new(),
        };
        let stream = self.keys.lane_stream(&token.kind, token.stream_index);
        Ending::held(held, outcome, None, reply).on_stream(stream)
    }

    /// Ends the pulled attempts waiting, together, in rounds (a group commit, as submissions
    /// have: many workers completing at once cost Redis one round per group, not one per task).
    /// Each gets its own answer. Runs as long as a handle that sends it ends (`for_loop`).
    async fn end_pulled_together(self, endings: tokio::sync::mpsc::Receiver<Ending>) {
        let plain = PlainEnds::default();
        in_rounds(endings, |batch| self.end_pulled_batch(&plain, batch)).await;
    }

    /// Ends one batch of pulled attempts, answering each: without Lua where none needs a decision
    /// in Redis (queue/finish/plain.rs), else by the finish script.
    async fn end_pulled_batch(&self, plain: &PlainEnds, batch: Vec<Ending>) {
        if let Some(ended) = plain.end(self, &batch, Holders::Pulled, "").await {
            for (ending, ended) in batch.into_iter().zip(ended) {
                ending.answer(Ok(ended));
            }
            return;
        }
        match self.end_attempts(&batch, Holders::Pulled, 0, CONSUMER, "").await {
            Ok(finished) => {
                plain.settled(&batch);
                for (ending, ended) in batch.into_iter().zip(finished.ended) {
                    ending.answer(Ok(ended));
                }
            }
            Err(e) => {
                for ending in batch {
                    ending.answer(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PullToken {
        PullToken {
            queue: "reports.v2".into(),
            kind: "csv.summary".into(),
            task_id: Uuid::now_v7(),
            stream_index: 2,
            entry_id: "1700000000000-12".into(),
            lease_ms: 3000,
            token: format!("{}:7", Uuid::now_v7()),
        }
    }

    #[test]
    fn a_token_reads_back_as_written_and_nothing_else_reads_as_one() {
        let token = example();
        assert_eq!(PullToken::decode(&token.encode()), Some(token.clone()));
        let good = token.encode();
        for bad in [
            String::new(),
            good.replacen("reports.v2", "Reports", 1),
            good.replacen("~2~", "~3~", 1),
            good.replacen("1700000000000-12", "1700000000000", 1),
            format!("{good}~extra"),
            good.replacen(&token.task_id.to_string(), "not-a-uuid", 1),
            good.replace(&token.token, "x y"),
            "a".repeat(600),
            // Past what Redis takes as an entry id, and spellings other than the token's own.
            good.replacen("1700000000000-12", "18446744073709551616-0", 1),
            good.replacen("1700000000000-12", "01700000000000-12", 1),
            good.replacen("~3000~", "~03000~", 1),
            good.replacen("~2~", "~+2~", 1),
            good.replacen("~3000~", "~+3000~", 1),
            good.replacen(&token.task_id.to_string(), &token.task_id.to_string().to_uppercase(), 1),
        ] {
            assert_eq!(PullToken::decode(&bad), None, "{bad}");
        }
    }

    /// A worker holds its lease's token whole: changed to name another task's entry, another
    /// kind's lane or stream, or a longer lease, it no longer opens, and the scripts (which check
    /// the record's token alone) never see it.
    #[tokio::test]
    async fn only_a_token_sealed_here_opens_and_none_of_its_parts_can_change() {
        let (_redis, queue) = super::super::testing::private_queue().await;
        let links = Links::open(queue.conn.clone(), "unit", Duration::from_secs(60)).await.unwrap();
        let token = example();
        let sealed = token.seal(&links);
        assert_eq!(PullToken::open(&sealed, &links).await, Some(token.clone()));
        let (text, seal) = sealed.split_at(token.encode().len());
        let other = PullToken { entry_id: "1700000000000-13".into(), ..example() }.seal(&links);
        for forged in [
            text.replacen("1700000000000-12", "1700000000000-13", 1) + seal,
            text.replacen("csv.summary", "echo", 1) + seal,
            text.replacen("~2~", "~0~", 1) + seal,
            text.replacen("~3000~", "~30000~", 1) + seal,
            text.replacen("reports.v2", "default", 1) + seal,
            // Unsealed, sealed with another token's seal, or with a key no one made.
            text.to_string(),
            format!("{text}{}", &other[other.len() - seal.len()..]),
            format!("{text}~00000000{}", &seal[9..]),
            format!("{sealed}x"),
            "a~b~c".repeat(200),
        ] {
            assert_eq!(PullToken::open(&forged, &links).await, None, "{forged}");
        }
        // After a rotation the new key seals (made a later millisecond than the first, so that
        // it is the newer), and the one before still opens what it sealed.
        tokio::time::sleep(Duration::from_millis(2)).await;
        links.rotate().await.unwrap();
        assert_ne!(token.seal(&links), sealed);
        assert_eq!(PullToken::open(&token.seal(&links), &links).await, Some(token.clone()));
        assert_eq!(PullToken::open(&sealed, &links).await, Some(token));
    }
}
