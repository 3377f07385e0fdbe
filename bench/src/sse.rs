//! Server-sent-event clients for the benchmark: one that notes when each task finished, and many
//! that only count what they receive.

use anyhow::{Context, bail};
use futures::StreamExt;
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Follows `/api/v1/events` and notes the moment each task's terminal event arrived.
pub struct EventTap {
    finished: mpsc::UnboundedReceiver<(String, Instant)>,
    seen: HashMap<String, Instant>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventTap {
    /// Connects; events from the moment this returns are seen.
    pub async fn open(http: &reqwest::Client, base: &str) -> anyhow::Result<EventTap> {
        let response = http.get(format!("{base}/api/v1/events")).send().await?;
        if !response.status().is_success() {
            bail!("GET /api/v1/events answered {}", response.status());
        }
        let (tx, finished) = mpsc::unbounded_channel();
        // The tap shares the machine with what it measures: each chunk's blocks are read in
        // place, and only a terminal event's task id is parsed out of its data.
        let reader = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.extend_from_slice(&chunk);
                take_blocks(&mut buffer, |block| {
                    if let Some(id) = finished_task(block) {
                        let _ = tx.send((id, Instant::now()));
                    }
                });
            }
        });
        Ok(EventTap { finished, seen: HashMap::new(), reader })
    }

    /// Waits until every task of `ids` has finished (others may finish meanwhile); returns when
    /// each task that finished did.
    pub async fn until_all(
        &mut self,
        ids: &std::collections::HashSet<String>,
        limit: Duration,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = ids.iter().filter(|id| !self.seen.contains_key(*id)).count();
        while left > 0 {
            let next = tokio::time::timeout_at(deadline, self.finished.recv()).await;
            let (id, at) = next
                .with_context(|| format!("{left} of {} tasks did not finish within {limit:?}", ids.len()))?
                .context("the event stream ended")?;
            if ids.contains(&id) && !self.seen.contains_key(&id) {
                left -= 1;
            }
            self.seen.entry(id).or_insert(at);
        }
        Ok(std::mem::take(&mut self.seen))
    }

    /// Waits until `count` tasks have finished; returns when each did.
    pub async fn until_finished(
        &mut self,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.seen.len() < count {
            let next = tokio::time::timeout_at(deadline, self.finished.recv()).await;
            let (id, at) = next
                .with_context(|| {
                    format!("only {} of {count} tasks finished within {limit:?}", self.seen.len())
                })?
                .context("the event stream ended")?;
            self.seen.entry(id).or_insert(at);
        }
        Ok(std::mem::take(&mut self.seen))
    }
}

/// Hands each whole event block of `buffer` (its lines, without the blank line that ends it) to
/// `block`, in order, and keeps only what follows the last one: the start of a block still to
/// come.
fn take_blocks(buffer: &mut Vec<u8>, mut block: impl FnMut(&[u8])) {
    let mut start = 0;
    while let Some(end) = buffer[start..].windows(2).position(|pair| pair == b"\n\n") {
        block(&buffer[start..start + end]);
        start += end + 2;
    }
    buffer.drain(..start);
}

/// The task id of a `succeeded` or `failed` event block, else `None`.
fn finished_task(block: &[u8]) -> Option<String> {
    /// What the tap reads of a terminal event's data (serde skips the rest).
    #[derive(serde::Deserialize)]
    struct Terminal {
        task_id: String,
    }
    let (mut name, mut data): (&[u8], &[u8]) = (b"", b"");
    for line in block.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"event:") {
            name = v.trim_ascii();
        } else if let Some(v) = line.strip_prefix(b"data:") {
            data = v.trim_ascii();
        }
    }
    if name != b"succeeded" && name != b"failed" {
        return None;
    }
    serde_json::from_slice::<Terminal>(data).ok().map(|event| event.task_id)
}

/// Many SSE clients that count the events they receive.
pub struct FanoutClient {
    counts: Vec<Arc<AtomicU64>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FanoutClient {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl FanoutClient {
    /// Opens `clients` connections to `/api/v1/events`, returning once all are subscribed.
    pub async fn connect_many(base: &str, clients: usize) -> anyhow::Result<FanoutClient> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let url = format!("{base}/api/v1/events");
        let opened: Vec<anyhow::Result<(Arc<AtomicU64>, tokio::task::JoinHandle<()>)>> =
            futures::stream::iter(0..clients)
                .map(|_| {
                    let request = http.get(&url);
                    async move {
                        let response = request.send().await?;
                        if !response.status().is_success() {
                            bail!("GET /api/v1/events answered {}", response.status());
                        }
                        let count = Arc::new(AtomicU64::new(0));
                        let counter = count.clone();
                        let reader = tokio::spawn(async move {
                            let mut body = response.bytes_stream();
                            let mut carry: Vec<u8> = Vec::new();
                            while let Some(Ok(chunk)) = body.next().await {
                                carry.extend_from_slice(&chunk);
                                counter.fetch_add(count_events(&carry), Ordering::Relaxed);
                                // Keep a tail shorter than the marker, so none is counted twice.
                                let keep = carry.len().min(MARKER.len() - 1);
                                carry.drain(..carry.len() - keep);
                            }
                        });
                        Ok((count, reader))
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
        let mut counts = Vec::new();
        let mut readers = Vec::new();
        for client in opened {
            let (count, reader) = client?;
            counts.push(count);
            readers.push(reader);
        }
        Ok(FanoutClient { counts, readers })
    }

    /// Waits until every client has received `expected` events (or the limit passes); returns
    /// the fewest any client received and the total.
    pub async fn until_each_has(&self, expected: u64, limit: Duration) -> (u64, u64) {
        let deadline = Instant::now() + limit;
        loop {
            let values: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let min = values.iter().copied().min().unwrap_or(0);
            if min >= expected || Instant::now() > deadline {
                return (min, values.iter().sum());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every event carries an `event:` line right after its `id:` line.
const MARKER: &[u8] = b"\nevent:";

fn count_events(bytes: &[u8]) -> u64 {
    bytes.windows(MARKER.len()).filter(|w| *w == MARKER).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_events_name_their_task() {
        let block =
            b"id: 1-0\nevent: succeeded\ndata: {\"status\":\"succeeded\",\"task_id\":\"abc\",\"n\":[1]}";
        assert_eq!(finished_task(block), Some("abc".to_string()));
        assert_eq!(finished_task(b"id: 1-0\nevent:failed\ndata:{\"task_id\":\"d\"}"), Some("d".to_string()));
        assert_eq!(finished_task(b"id: 1-0\nevent: running\ndata: {\"task_id\":\"abc\"}"), None);
        assert_eq!(finished_task(b"event: succeeded\ndata: {\"status\":\"succeeded\"}"), None);
        assert_eq!(finished_task(b":"), None);
    }

    #[test]
    fn blocks_are_taken_whole_however_the_chunks_cut_them() {
        let mut buffer = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let feed = |buffer: &mut Vec<u8>, chunk: &[u8], seen: &mut Vec<String>| {
            buffer.extend_from_slice(chunk);
            take_blocks(buffer, |block| seen.push(String::from_utf8(block.to_vec()).unwrap()));
        };
        // Two blocks in one chunk, and the start of a third.
        feed(&mut buffer, b"id: 1\nevent: a\n\nid: 2\nevent: b\n\nid: 3\nev", &mut seen);
        assert_eq!(seen, ["id: 1\nevent: a", "id: 2\nevent: b"]);
        assert_eq!(buffer, b"id: 3\nev");
        // The third, cut between the two newlines that end it.
        feed(&mut buffer, b"ent: c\n", &mut seen);
        assert_eq!(seen.len(), 2);
        feed(&mut buffer, b"\n", &mut seen);
        assert_eq!(seen, ["id: 1\nevent: a", "id: 2\nevent: b", "id: 3\nevent: c"]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn events_are_counted_by_their_event_line() {
        assert_eq!(count_events(b"id: 1\nevent: queued\ndata: {}\n\nid: 2\nevent: running\ndata: {}\n\n"), 2);
        assert_eq!(count_events(b":\n\n"), 0);
    }
}
