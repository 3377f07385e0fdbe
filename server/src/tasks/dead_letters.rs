//! Dead letters picked by a filter (queue, kind, reason, when they failed): listed, counted, and
//! requeued or deleted in bulk, one queue and one page at a time.

use super::Tasks;
use crate::{
    auth::QueuePatterns,
    queue::Queue,
    store::{self, DeadEntry, FailedBetween, TaskRecord},
};
use uuid::Uuid;

/// How many dead letters a bulk action or a count reads at once.
const BATCH: usize = 500;

/// Which dead letters a listing, a count or a bulk action takes; each unset field takes all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// One of [`app::model::DEAD_REASONS`].
    pub reason: Option<String>,
    /// When they failed.
    pub failed: FailedBetween,
    /// Only the queues these patterns reach (an access token's); every queue if unset.
    pub within: Option<QueuePatterns>,
}

impl DeadLetterFilter {
    /// Whether the entry is a dead letter (its record is still there) of the kind and reason
    /// asked for; its queue and time were chosen by where and how it was read.
    fn takes(&self, entry: &DeadEntry) -> bool {
        entry.kind.is_some()
            && self.kind.as_ref().is_none_or(|k| entry.kind.as_ref() == Some(k))
            && self.reason.as_ref().is_none_or(|r| entry.reason.as_ref() == Some(r))
    }

    /// [`DeadLetterFilter::takes`] for a whole record.
    fn keeps(&self, record: &TaskRecord) -> bool {
        self.kind.as_ref().is_none_or(|k| &record.kind == k)
            && self.reason.as_ref().is_none_or(|r| record.dead_reason.as_ref() == Some(r))
    }

    /// The filter with its `failed.before_ms` no later than `ms`.
    pub fn failed_before(mut self, ms: u64) -> DeadLetterFilter {
        self.failed.before_ms = Some(self.failed.before_ms.map_or(ms, |before| before.min(ms)));
        self
    }
}

/// What a bulk action does to each dead letter it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// Queue it again, its attempts reset.
    Requeue,
    /// Delete it with its payload and result.
    Delete,
}

/// A bulk action stopped by a Redis error: `done` dead letters were acted on before it (each
/// whole: a dead letter is requeued or deleted by one script, or not at all), the rest are
/// still dead letters.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {done} dead letters)")]
pub struct BulkError {
    pub done: u64,
    #[source]
    pub error: redis::RedisError,
}

impl Tasks {
    /// Dead letters that pass `filter`, most recent failure first, one page at a time (see
    /// [`store::dead_letters`]); `extra` narrows them further.
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<(u64, Uuid)>,
        limit: usize,
        extra: impl Fn(&TaskRecord) -> bool,
    ) -> redis::RedisResult<(Vec<(TaskRecord, u64)>, Option<(u64, Uuid)>)> {
        let queues = self.queues_named(filter.queue.as_deref(), filter.within.as_ref()).await?;
        let stores: Vec<_> = queues.iter().map(Queue::store).collect();
        store::dead_letters(&stores, filter.failed, cursor, limit, |r| filter.keeps(r) && extra(r)).await
    }

    /// How many dead letters pass `filter`. Reads each dead letter of the queues and times it
    /// names once (its kind and reason, not its record), a page at a time.
    pub async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> redis::RedisResult<u64> {
        let mut count = 0;
        for queue in self.queues_named(filter.queue.as_deref(), filter.within.as_ref()).await? {
            count += each_dead_letter(&queue, filter, None).await.map_err(|e| e.error)?;
        }
        Ok(count)
    }

    /// Requeues or deletes every dead letter that passes `filter` and failed before this call;
    /// returns how many. Pages through each queue's dead letters by rank, stepping over the ones
    /// the filter does not take, so the work grows with the dead letters of the queues and times
    /// it names, each read once, and memory with one page. Those that fail again while it runs
    /// fail after it began, so none is taken twice.
    pub async fn act_on_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        action: BulkAction,
    ) -> Result<u64, BulkError> {
        let filter = filter.clone().failed_before(store::now_ms());
        let queues = self
            .queues_named(filter.queue.as_deref(), filter.within.as_ref())
            .await
            .map_err(|error| BulkError { done: 0, error })?;
        let mut done = 0;
        for queue in queues {
            done += each_dead_letter(&queue, &filter, Some(action))
                .await
                .map_err(|e| BulkError { done: done + e.done, error: e.error })?;
        }
        Ok(done)
    }
}

/// Counts the dead letters of `queue` that pass `filter` (which names no queue here), or does
/// `action` to each; returns how many.
async fn each_dead_letter(
    queue: &Queue,
    filter: &DeadLetterFilter,
    action: Option<BulkAction>,
) -> Result<u64, BulkError> {
    let store = queue.store();
    let before = filter.failed.before_ms.unwrap_or(u64::MAX);
    let mut done = 0;
    let fail = |done: u64| move |error: redis::RedisError| BulkError { done, error };
    // Where the dead letters of the filter's times begin, in the set's order (oldest first).
    let start = || async {
        match filter.failed.from_ms {
            Some(ms) => store.dead_before(ms).await,
            None => Ok(0),
        }
    };
    let mut from = start().await.map_err(fail(done))?;
    // Each entry there is now is read once: those failing again meanwhile (requeued ones) fail
    // after `before`, so this only guards against a clock that runs behind.
    let mut left = store.dead_between(filter.failed.from_ms, before).await.map_err(fail(done))?;
    // The last entry stepped over: the next page begins after it. Entries acted on leave the
    // set, and others may leave meanwhile (requeued one by one, expired), so ranks shift; the
    // rank of the last one kept says where to go on from, whatever left before it.
    let mut last_kept: Option<Uuid> = None;
    while left > 0 {
        let page = store.dead_letter_page(from, BATCH.min(left), before).await.map_err(fail(done))?;
        if page.is_empty() {
            break;
        }
        left -= page.len();
        let mut kept = 0;
        for entry in &page {
            let taken = filter.takes(entry);
            match action {
                None => done += u64::from(taken),
                Some(action) if taken => {
                    done += u64::from(act(queue, action, &entry.id).await.map_err(fail(done))?);
                    // Acted on or not (someone else took it first), it has left the set.
                    continue;
                }
                // A stale id (its record expired) is no dead letter: an action takes it out of
                // the set (the requeue script does, finding no record), and does not count it.
                Some(_) if entry.kind.is_none() => {
                    queue.requeue(&entry.id).await.map_err(fail(done))?;
                    continue;
                }
                Some(_) => {}
            }
            kept += 1;
            last_kept = Some(entry.id);
        }
        from = match last_kept {
            Some(id) => match store.dead_rank(&id).await.map_err(fail(done))? {
                Some(rank) => rank + 1,
                // It left the set meanwhile: go on as if only the ones acted on had.
                None => from + kept,
            },
            None => start().await.map_err(fail(done))?,
        };
    }
    Ok(done)
}

/// Does `action` to dead letter `id` of `queue`; `false` if it was not one any more.
async fn act(queue: &Queue, action: BulkAction, id: &Uuid) -> redis::RedisResult<bool> {
    match action {
        BulkAction::Requeue => queue.requeue(id).await,
        BulkAction::Delete => queue.purge(id).await,
    }
}
