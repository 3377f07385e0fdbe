//! The numbers behind `GET /api/v1/stats` and the dashboard: every queue's tasks by state and
//! kind, tasks ended per second, minute and hour, and wait and run time percentiles.
//!
//! Ended tasks are counted in time buckets, in the queue's own keys: `stats:s:{minute}` holds
//! that minute's seconds (`{second}s` succeeded, `{second}f` failed) and the wait and run time
//! histograms (`w{bin}`, `r{bin}`), kept 17 minutes; `stats:m:{hour}` its minutes, kept 25 hours;
//! `stats:h:{day}` its hours, kept 31 days. Memory is bounded by those lifetimes, and every
//! instance reads the same buckets. The finish script, which ends nearly every task, returns what
//! it counted, and the process adds the counts of its finishes up and writes them together a
//! quarter second later ([`Tally`]: no round trip per task, nor a bucket's writes per call); the
//! rarer ends (a task that expired waiting) write their counts as they go (ends.lua's
//! `record_stats`). The queue view's tasks finished in the last minute come from the queue's tally
//! of ends per second (`ended`: Unix second -> tasks that ended then), which the finishes'
//! [`Tally`] writes the same way and the rarer ends as they go (ends.lua's `count_ends`).

use crate::redis_client::Conn;
use crate::{
    queue::{Queue, QueueState},
    store::{Keys, now_ms, rfc3339},
};
use app::model::{KindStats, Latency, Percentiles, QueueStats, Stats, Throughput, ThroughputPoint};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// One span of the throughput series: its key name, how much time one key holds, one bucket
/// (field) holds, how many buckets the series shows, and how long a key is kept (ends.lua's
/// `STATS_SPANS`, which writes the same keys).
struct Span {
    name: &'static str,
    key_ms: u64,
    bucket_ms: u64,
    buckets: u64,
    keep_ms: u64,
}

/// Per second over the last 15 minutes.
const SECONDS: Span = Span { name: "s", key_ms: 60_000, bucket_ms: 1_000, buckets: 900, keep_ms: 1_020_000 };
/// Per minute over the last 24 hours.
const MINUTES: Span =
    Span { name: "m", key_ms: 3_600_000, bucket_ms: 60_000, buckets: 1_440, keep_ms: 90_000_000 };
/// Per hour over the last 30 days.
const HOURS: Span =
    Span { name: "h", key_ms: 86_400_000, bucket_ms: 3_600_000, buckets: 720, keep_ms: 2_678_400_000 };

/// How long a process holds the counts of its finishes before it writes them.
pub const FLUSH_AFTER: Duration = Duration::from_millis(250);

/// How many seconds a queue's tally of ends per second keeps (ends.lua's `count_ends` keeps as
/// many): the queue view reads the last minute of it.
pub const TALLY_SECONDS: u64 = 120;

/// What one finish script counted as it ended attempts (finish.lua): at Redis's time `at_ms`, the
/// tasks that succeeded and that failed for good, the tasks that ended (those and the cancelled:
/// not the ones that wait for a retry), and the wait and run samples per histogram bin
/// (`w{bin}`, `r{bin}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counted {
    pub at_ms: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub ended: u64,
    pub bins: Vec<(String, u64)>,
}

/// One queue's counts that this process has not written yet. Each `HINCRBY` a script makes is a
/// call from Lua into Redis, and a finish made several (a second's, a minute's and an hour's
/// count, a field per histogram bin): more than anything else it did once per call
/// (docs/benchmark-notes.md, "Eighth step"). So a finish returns its counts, the process adds
/// them up here, and [`FLUSH_AFTER`] later writes them in one transaction (a queue's keys share
/// a slot), with the tasks that ended in each second, for the queue's tally of ends (its
/// `HINCRBY` was likewise one a call: docs/benchmark-notes.md, "Twelfth step"). A process that
/// stops writes what is left ([`Tallies::flush_all`]); one killed loses at most that quarter
/// second's counts, and so does a write that fails (it is not tried again: a transaction whose
/// answer was lost may have been applied, and counting twice is worse).
#[derive(Debug)]
pub struct Tally {
    /// The queue's keys.
    keys: Keys,
    pending: Mutex<Pending>,
}

/// Every queue's [`Tally`] in a process, one per queue however many handles on it there are
/// (the handles of one Redis share this), made by the queue's first finish.
pub struct Tallies {
    conn: Conn,
    by_queue: Mutex<HashMap<String, Arc<Tally>>>,
}

impl Tallies {
    pub fn new(conn: Conn) -> Tallies {
        Tallies { conn, by_queue: Mutex::default() }
    }

    /// The tally of the queue whose keys are `keys` (looked up on every finish).
    pub fn of(&self, keys: &Keys) -> Arc<Tally> {
        let mut by_queue = self.by_queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tally) = by_queue.get(keys.base()) {
            return tally.clone();
        }
        by_queue.entry(keys.base().to_string()).or_insert_with(|| Arc::new(Tally::new(keys.clone()))).clone()
    }

    /// Writes what every queue's finishes counted and no flusher wrote yet: as the process stops.
    pub async fn flush_all(&self) {
        let tallies: Vec<Arc<Tally>> =
            self.by_queue.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for tally in tallies {
            if let Err(e) = tally.flush(&self.conn).await {
                tracing::warn!(queue = %tally.keys.queue(), error = %e, "writing the last stats failed; their counts are lost");
            }
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// Bucket key -> its span's keep (ms), and field -> count.
    buckets: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    /// Unix second (Redis's clock) -> tasks that ended then.
    ends: BTreeMap<u64, u64>,
    /// Whether a flusher is on its way (`Tally::add` said so, `Tally::done` ends it).
    flushing: bool,
}

impl Tally {
    /// The tally of the queue whose keys are `keys`, with nothing counted.
    pub fn new(keys: Keys) -> Tally {
        Tally { keys, pending: Mutex::default() }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `counted`. True when the counts were the first since the last flush and no flusher is
    /// on its way: the caller starts one.
    pub fn add(&self, counted: &Counted) -> bool {
        if counted.succeeded == 0 && counted.failed == 0 && counted.ended == 0 && counted.bins.is_empty() {
            return false;
        }
        let mut pending = self.pending();
        if counted.ended > 0 {
            *pending.ends.entry(counted.at_ms / 1000).or_default() += counted.ended;
        }
        for span in [&SECONDS, &MINUTES, &HOURS] {
            let key = format!("{}:stats:{}:{}", self.keys.base(), span.name, counted.at_ms / span.key_ms);
            let bucket = (counted.at_ms % span.key_ms) / span.bucket_ms;
            let (_, fields) = pending.buckets.entry(key).or_insert_with(|| (span.keep_ms, BTreeMap::new()));
            for (outcome, n) in [("s", counted.succeeded), ("f", counted.failed)] {
                if n > 0 {
                    *fields.entry(format!("{bucket}{outcome}")).or_default() += n;
                }
            }
            // The histograms live in the seconds' keys only.
            if span.name == SECONDS.name {
                for (bin, n) in &counted.bins {
                    *fields.entry(bin.clone()).or_default() += n;
                }
            }
        }
        !std::mem::replace(&mut pending.flushing, true)
    }

    /// Writes what was added since the last flush: each field's count and each key's time to live
    /// (from now), and each second's ends in the tally of ends, in one transaction; then, when the
    /// tally holds more than [`TALLY_SECONDS`] seconds, drops the older ones. What it could not
    /// write is dropped (see [`Tally`]).
    pub async fn flush(&self, conn: &Conn) -> redis::RedisResult<()> {
        let (buckets, ends) = {
            let mut pending = self.pending();
            (std::mem::take(&mut pending.buckets), std::mem::take(&mut pending.ends))
        };
        if buckets.is_empty() && ends.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, (keep_ms, fields)) in &buckets {
            for (field, n) in fields {
                pipe.hincr(key, field, *n).ignore();
            }
            pipe.pexpire(key, *keep_ms as i64).ignore();
        }
        let tally = self.keys.ended();
        for (second, n) in &ends {
            pipe.hincr(&tally, second, *n).ignore();
        }
        let newest = ends.keys().next_back().copied();
        if newest.is_some() {
            pipe.hlen(&tally);
        }
        // The tally's size, when this flush wrote to it.
        let size: Vec<u64> = pipe.query_async(&mut conn.clone()).await?;
        // A prune keeps the seconds from `newest - TALLY_SECONDS` to `newest`.
        if let (Some(newest), Some(&seconds)) = (newest, size.first())
            && seconds > TALLY_SECONDS + 1
            && let Err(e) = prune_tally(conn, &tally, newest).await
        {
            // The counts are written; the next flush of a new second tries again.
            tracing::debug!(queue = %self.keys.queue(), error = %e, "pruning the tally of ends failed");
        }
        Ok(())
    }

    /// Ends the flusher's turn when nothing waits to be written (under the lock `add` takes, so
    /// counts added meanwhile start a new one); false when something does.
    pub fn done(&self) -> bool {
        let mut pending = self.pending();
        if pending.buckets.is_empty() && pending.ends.is_empty() {
            pending.flushing = false;
        }
        !pending.flushing
    }
}

/// Drops the seconds of the tally of ends `tally` older than [`TALLY_SECONDS`] before `second`.
async fn prune_tally(conn: &Conn, tally: &str, second: u64) -> redis::RedisResult<()> {
    let mut conn = conn.clone();
    let seconds: Vec<String> = redis::cmd("HKEYS").arg(tally).query_async(&mut conn).await?;
    let old: Vec<String> = seconds
        .into_iter()
        .filter(|field| field.parse::<u64>().unwrap_or(0) < second.saturating_sub(TALLY_SECONDS))
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    redis::cmd("HDEL").arg(tally).arg(&old).exec_async(&mut conn).await
}

/// Which throughput series to read (the dashboard's live feed needs only the seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spans {
    pub second: bool,
    pub minute: bool,
    pub hour: bool,
}

impl Spans {
    pub const ALL: Spans = Spans { second: true, minute: true, hour: true };
    pub const LIVE: Spans = Spans { second: true, minute: false, hour: false };

    /// The spans a comma-separated list names (`second,minute,hour`).
    pub fn parse(list: &str) -> Result<Spans, String> {
        let mut spans = Spans { second: false, minute: false, hour: false };
        for name in list.split(',') {
            match name.trim() {
                "second" => spans.second = true,
                "minute" => spans.minute = true,
                "hour" => spans.hour = true,
                other => return Err(format!("`{other}` is not a span (second, minute or hour)")),
            }
        }
        Ok(spans)
    }
}

/// The stats of `queues` (each with its state, read just before), the series of `spans`.
pub async fn read(conn: &Conn, queues: &[(Queue, QueueState)], spans: Spans) -> redis::RedisResult<Stats> {
    let now = now_ms();
    let wanted: Vec<&Span> = [(spans.second, &SECONDS), (spans.minute, &MINUTES), (spans.hour, &HOURS)]
        .into_iter()
        .filter_map(|(on, span)| on.then_some(span))
        .collect();
    // The seconds' keys are read for the latency histograms even when their series is not wanted.
    let mut read: Vec<&Span> = wanted.clone();
    if !spans.second {
        read.push(&SECONDS);
    }
    let mut pipe = redis::pipe();
    let mut asked = Vec::new();
    for (queue, _) in queues {
        for span in &read {
            for key_start in key_starts(span, now) {
                pipe.cmd("HGETALL").arg(format!(
                    "{}:stats:{}:{}",
                    queue.keys().base(),
                    span.name,
                    key_start / span.key_ms
                ));
                asked.push((span.name, key_start));
            }
        }
    }
    let replies: Vec<HashMap<String, u64>> =
        if asked.is_empty() { Vec::new() } else { conn.query_spread(&pipe).await? };
    // Bucket start (ms) -> (succeeded, failed), per span; histogram bin -> count, per measure.
    let mut buckets: HashMap<&str, BTreeMap<u64, (u64, u64)>> = HashMap::new();
    let (mut waits, mut runs) = (BTreeMap::<u32, u64>::new(), BTreeMap::<u32, u64>::new());
    let latency_since = now.saturating_sub(SECONDS.buckets * SECONDS.bucket_ms);
    for ((span_name, key_start), fields) in asked.into_iter().zip(replies) {
        let span =
            [&SECONDS, &MINUTES, &HOURS].into_iter().find(|s| s.name == span_name).expect("asked of a span");
        for (field, count) in fields {
            if let Some(bin) = field.strip_prefix('w').and_then(|b| b.parse().ok()) {
                if key_start + span.key_ms > latency_since {
                    *waits.entry(bin).or_default() += count;
                }
            } else if let Some(bin) = field.strip_prefix('r').and_then(|b| b.parse().ok()) {
                if key_start + span.key_ms > latency_since {
                    *runs.entry(bin).or_default() += count;
                }
            } else if let Some((index, outcome)) = field.split_at_checked(field.len().saturating_sub(1))
                && let Ok(index) = index.parse::<u64>()
            {
                let bucket = buckets
                    .entry(span.name)
                    .or_default()
                    .entry(key_start + index * span.bucket_ms)
                    .or_default();
                match outcome {
                    "s" => bucket.0 += count,
                    "f" => bucket.1 += count,
                    _ => {}
                }
            }
        }
    }
    let series = |span: &Span, on: bool| -> Vec<ThroughputPoint> {
        if !on {
            return Vec::new();
        }
        let counted = buckets.get(span.name);
        let last = now / span.bucket_ms * span.bucket_ms;
        (0..span.buckets)
            .rev()
            .map(|back| {
                let at = last - back * span.bucket_ms;
                let (succeeded, failed) = counted.and_then(|b| b.get(&at)).copied().unwrap_or_default();
                ThroughputPoint { at: rfc3339(at), succeeded, failed }
            })
            .collect()
    };
    Ok(Stats {
        queues: queues.iter().map(|(queue, state)| queue_stats(queue, state)).collect(),
        throughput: Throughput {
            second: series(&SECONDS, spans.second),
            minute: series(&MINUTES, spans.minute),
            hour: series(&HOURS, spans.hour),
        },
        latency_ms: Latency { wait: percentiles(&waits), run: percentiles(&runs) },
    })
}

/// The starts (ms) of the keys that hold `span`'s buckets up to `now`, oldest first.
fn key_starts(span: &Span, now: u64) -> Vec<u64> {
    let first = now.saturating_sub((span.buckets - 1) * span.bucket_ms) / span.key_ms * span.key_ms;
    let last = now / span.key_ms * span.key_ms;
    (first..=last).step_by(span.key_ms as usize).collect()
}

/// Counts by state, every state named (zeros included), as the wire carries them.
fn by_state(queued: u64, scheduled: u64, retrying: u64, running: u64, dead: u64) -> BTreeMap<String, u64> {
    [
        ("queued", queued),
        ("scheduled", scheduled),
        ("retrying", retrying),
        ("running", running),
        ("dead", dead),
    ]
    .into_iter()
    .map(|(name, n)| (name.to_string(), n))
    .collect()
}

/// A queue's counts by state, and each of its kinds'.
fn queue_stats(queue: &Queue, state: &QueueState) -> QueueStats {
    let c = &state.counts;
    let counts = by_state(c.queued.total(), c.scheduled, c.retrying, c.running, c.dead);
    QueueStats {
        queue: queue.name().to_string(),
        paused: state.paused,
        counts,
        oldest_waiting_ms: state.oldest_waiting_ms,
        finished_last_minute: state.finished_last_minute,
        kinds: state
            .kinds
            .iter()
            .map(|(kind, k)| KindStats {
                kind: kind.clone(),
                counts: by_state(k.queued, k.scheduled, k.retrying, k.running, k.dead),
            })
            .collect(),
    }
}

/// The histogram bin of a duration of `ms`, as ends.lua's `latency_bin` computes it (the same
/// operations on the same doubles: a unit test runs both): for the ends written without Lua
/// (queue/finish/plain.rs).
pub(crate) fn latency_bin(ms: u64) -> u32 {
    (4.0 * ((ms + 1) as f64).ln() / std::f64::consts::LN_2).floor() as u32
}

/// The upper bound, in ms, of histogram bin `bin` (ends.lua's `latency_bin`: a quarter of a
/// doubling wide).
fn bin_upper_ms(bin: u32) -> u64 {
    (2f64.powf(f64::from(bin + 1) / 4.0) - 1.0).ceil() as u64
}

/// p50, p95 and p99 of a histogram (bin -> count), each its bin's upper bound.
fn percentiles(bins: &BTreeMap<u32, u64>) -> Percentiles {
    let count: u64 = bins.values().sum();
    let at = |q: f64| -> Option<u64> {
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        bins.iter().find_map(|(bin, n)| {
            seen += n;
            (seen >= rank).then(|| bin_upper_ms(*bin))
        })
    };
    Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99), count }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_is_at_most_its_bins_upper_bound_and_within_a_fifth_of_it() {
        for ms in [0, 1, 2, 3, 7, 10, 99, 100, 1_000, 12_345, 3_600_000] {
            let upper = bin_upper_ms(latency_bin(ms));
            assert!(upper >= ms, "{ms} ms: bin bound {upper}");
            assert!(upper as f64 <= (ms as f64 + 1.0) * 1.19 + 1.0, "{ms} ms: bin bound {upper}");
        }
    }

    #[test]
    fn percentiles_come_from_the_cumulative_counts() {
        // 90 samples of 10 ms, 9 of 100 ms, 1 of 1000 ms.
        let bins: BTreeMap<u32, u64> =
            [(latency_bin(10), 90), (latency_bin(100), 9), (latency_bin(1000), 1)].into();
        let p = percentiles(&bins);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Some(bin_upper_ms(latency_bin(10))));
        assert_eq!(p.p95, Some(bin_upper_ms(latency_bin(100))));
        assert_eq!(p.p99, Some(bin_upper_ms(latency_bin(100))));
        assert_eq!(percentiles(&BTreeMap::new()), Percentiles::default());
    }

    #[test]
    fn the_keys_of_a_span_cover_its_buckets() {
        let now = 1_700_000_123_456;
        let starts = key_starts(&SECONDS, now);
        assert_eq!(starts.len(), 16);
        assert!(starts[0] <= now - 899_000 && *starts.last().unwrap() <= now);
        assert_eq!(key_starts(&MINUTES, now).len(), 25);
        assert!((30..=31).contains(&key_starts(&HOURS, now).len()));
    }

    #[test]
    fn the_spans_are_the_ones_the_scripts_write() {
        let lua = format!(
            "local STATS_SPANS = {{{{'s', {}, {}, {}}}, {{'m', {}, {}, {}}},\n  {{'h', {}, {}, {}}}}}",
            SECONDS.key_ms,
            SECONDS.bucket_ms,
            SECONDS.keep_ms,
            MINUTES.key_ms,
            MINUTES.bucket_ms,
            MINUTES.keep_ms,
            HOURS.key_ms,
            HOURS.bucket_ms,
            HOURS.keep_ms
        );
        assert!(include_str!("queue/ends.lua").contains(&lua), "{lua}");
    }

    #[test]
    fn a_tally_adds_counts_up_per_bucket_and_the_histograms_per_minute_key() {
        let keys = Keys::new("p", "q");
        let tally = Tally::new(keys.clone());
        // 12:00:01.5 and 12:00:01.9 of one day share every bucket; 12:01:00 has a second and a
        // minute of its own, in the same hour.
        let noon = 1_700_000_000_000 / 86_400_000 * 86_400_000 + 12 * 3_600_000;
        let bins = |pairs: &[(&str, u64)]| pairs.iter().map(|(b, n)| (b.to_string(), *n)).collect();
        let first = Counted {
            at_ms: noon + 1_500,
            succeeded: 2,
            failed: 1,
            ended: 3,
            bins: bins(&[("w3", 2), ("r5", 3)]),
        };
        assert!(tally.add(&first), "the first counts start a flusher");
        // One succeeded and one cancelled.
        let second =
            Counted { at_ms: noon + 1_900, succeeded: 1, failed: 0, ended: 2, bins: bins(&[("w3", 1)]) };
        assert!(!tally.add(&second), "one flusher at a time");
        assert!(!tally.add(&Counted { at_ms: noon + 60_000, ..Counted::default() }), "nothing counted");
        tally.add(&Counted { at_ms: noon + 60_000, succeeded: 4, failed: 0, ended: 4, bins: Vec::new() });

        let pending = tally.pending();
        let fields = |key: String| -> Vec<(String, u64)> {
            let (_, fields) = &pending.buckets[&key];
            fields.iter().map(|(f, n)| (f.clone(), *n)).collect()
        };
        let pairs =
            |pairs: &[(&str, u64)]| pairs.iter().map(|(f, n)| (f.to_string(), *n)).collect::<Vec<_>>();
        let (minute, hour, day) = (noon / 60_000, noon / 3_600_000, noon / 86_400_000);
        assert_eq!(
            fields(format!("{}:stats:s:{minute}", keys.base())),
            pairs(&[("1f", 1), ("1s", 3), ("r5", 3), ("w3", 3)])
        );
        assert_eq!(fields(format!("{}:stats:s:{}", keys.base(), minute + 1)), pairs(&[("0s", 4)]));
        assert_eq!(
            fields(format!("{}:stats:m:{hour}", keys.base())),
            pairs(&[("0f", 1), ("0s", 3), ("1s", 4)])
        );
        assert_eq!(fields(format!("{}:stats:h:{day}", keys.base())), pairs(&[("12f", 1), ("12s", 7)]));
        assert_eq!(pending.buckets.len(), 4);
        assert_eq!(pending.buckets[&format!("{}:stats:h:{day}", keys.base())].0, HOURS.keep_ms);
        let second = noon / 1000;
        assert_eq!(pending.ends, [(second + 1, 5), (second + 60, 4)].into(), "ends per second");
    }

    #[test]
    fn spans_parse_by_name() {
        assert_eq!(Spans::parse("second,hour"), Ok(Spans { second: true, minute: false, hour: true }));
        assert!(Spans::parse("week").is_err());
    }
}
