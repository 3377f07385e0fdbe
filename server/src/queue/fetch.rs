//! The fetch loop, which fills a worker process's free slots, and the claims it takes leases with.
//!
//! The finish loop (queue/finish.rs) takes the next leases for the slots that ended attempts free;
//! the *fetch loop* fills the slots that are left: it reads new entries (one script), blocks on
//! the streams when they are empty, and takes over entries whose holder stopped renewing them.

use super::{
    Backoff, GROUP, Queue,
    finish::Ending,
    lease::{Lease, Leasing},
};
use redis::{
    AsyncConnectionConfig, RedisResult,
    aio::MultiplexedConnection,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

/// The most entries one read takes (bounded further by free worker slots).
const FETCH_BATCH: usize = 64;
/// How long one blocking read waits before looking again (and noticing shutdown).
const BLOCK: Duration = Duration::from_secs(1);

impl Leasing {
    /// Fills free slots: new entries if there are any, else a blocking read; now and then it
    /// takes over entries whose lease expired.
    pub(super) async fn fetch_loop(
        self,
        slots: Arc<Semaphore>,
        _leases: mpsc::Sender<Lease>,
        _endings: mpsc::Sender<Ending>,
    ) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        let lease = self.queue.settings.lease;
        let reclaim_every = (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_reclaim: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the worker slots are never closed"),
                () = self.shutdown.cancelled() => break,
            };
            if self.shutdown.is_cancelled() {
                break;
            }
            let mut free = vec![first];
            while free.len() < FETCH_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => free.push(slot),
                    Err(_) => break,
                }
            }
            let reclaim = last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every);
            if reclaim {
                last_reclaim = Some(Instant::now());
            }
            match self.fetch(&mut conn, &mut free, reclaim).await {
                Ok(leases) => {
                    backoff.reset();
                    // Slots left over (fewer tasks than slots) are freed here.
                    drop(free);
                    self.deliver(leases).await;
                }
                Err(_) if self.shutdown.is_cancelled() => break,
                Err(e) => {
                    conn = None;
                    if e.code() == Some("NOGROUP") {
                        // Redis lost the group (a restart without persistence): make it again.
                        let _ = self.queue.ensure_group().await;
                    }
                    let pause = backoff.next();
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "reading the queue failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        debug!("fetching stopped");
    }

    /// Leases for the `free` slots: entries whose lease expired (when `reclaim`), else new
    /// entries, else whatever a blocking read brings. Entries claimed but not runnable are
    /// dropped by the script.
    async fn fetch(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        free: &mut Vec<OwnedSemaphorePermit>,
        reclaim: bool,
    ) -> RedisResult<Vec<Lease>> {
        let queue = &self.queue;
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(queue.blocking_connection().await?),
        };
        let streams = queue.keys.ready_streams();
        if reclaim {
            for (index, stream) in streams.iter().enumerate() {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(self.consumer.as_ref())
                    .arg(queue.settings.lease.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(free.len())
                    .query_async(conn)
                    .await?;
                if !reply.claimed.is_empty() {
                    debug!(count = reply.claimed.len(), "taking over tasks whose lease expired");
                    let given: Vec<_> = reply.claimed.into_iter().map(|e| (index, e)).collect();
                    let replies = queue.claim(&self.consumer, given.len(), &given).await?;
                    return Ok(self.leases_of(replies, free));
                }
            }
        }
        let replies = queue.claim(&self.consumer, free.len(), &[]).await?;
        if !replies.is_empty() {
            return Ok(self.leases_of(replies, free));
        }
        // Nothing anywhere: one blocking read over all, woken by whichever gets a task first.
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(self.consumer.as_ref())
            .arg("COUNT")
            .arg(free.len())
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&[">", ">", ">"][..])
            .query_async(conn)
            .await?;
        // Several streams may answer at once (up to `free` entries each): claim the most urgent
        // first, and give back what does not fit.
        let mut given: Vec<(usize, StreamId)> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| {
                let index = streams.iter().position(|s| *s == k.key).unwrap_or(1);
                k.ids.into_iter().map(move |e| (index, e))
            })
            .collect();
        given.sort_by_key(|(index, _)| *index);
        let extra = given.split_off(given.len().min(free.len()));
        if !extra.is_empty() {
            self.hand_back_unclaimed(conn, &extra).await?;
        }
        if given.is_empty() {
            return Ok(Vec::new());
        }
        let replies = queue.claim(&self.consumer, given.len(), &given).await?;
        Ok(self.leases_of(replies, free))
    }

    /// Returns entries read but not claimed to their stream, as fresh entries, so others take
    /// them.
    async fn hand_back_unclaimed(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &[(usize, StreamId)],
    ) -> RedisResult<()> {
        let streams = self.queue.keys.ready_streams();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (index, entry) in entries {
            let stream = &streams[*index];
            if let Some(task) = entry.get::<String>("task") {
                pipe.cmd("XADD").arg(stream).arg("*").arg("task").arg(task).ignore();
            }
            // Acknowledged only: the finish script trims acknowledged entries in bulk.
            pipe.cmd("XACK").arg(stream).arg(GROUP).arg(&entry.id).ignore();
        }
        pipe.query_async(conn).await
    }
}

impl Queue {
    /// Takes leases on the `given` entries (stream index, entry), or when there are none on up
    /// to `count` new entries, most urgent first; returns the script's replies.
    pub(super) async fn claim(
        &self,
        consumer: &str,
        count: usize,
        given: &[(usize, StreamId)],
    ) -> RedisResult<Vec<Vec<Vec<u8>>>> {
        let mut call = self.scripts.claim.prepare_invoke();
        call.key(&self.keys.ready_streams()).key(self.keys.events());
        self.leasing_args(&mut call, consumer).arg(count);
        for (stream, entry) in given {
            // An entry without a task id is not ours to interpret: the script drops it.
            let task = entry.get::<String>("task").unwrap_or_default();
            call.arg(stream + 1).arg(&entry.id).arg(task);
        }
        call.invoke_async(&mut self.conn.clone()).await
    }

    async fn blocking_connection(&self) -> RedisResult<MultiplexedConnection> {
        // Blocking reads wait longer than any response timeout would allow.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }
}
