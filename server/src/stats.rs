//! The numbers behind `GET /api/v1/stats` and the dashboard: every queue's tasks by state and
//! kind, tasks ended per second, minute and hour, and wait and run time percentiles.
//!
//! The scripts that end tasks count them in time buckets as they go (ends.lua's
//! `record_stats`), in the queue's own keys: `stats:s:{minute}` holds that minute's seconds
//! (`{second}s` succeeded, `{second}f` failed) and the wait and run time histograms (`w{bin}`,
//! `r{bin}`), kept 17 minutes; `stats:m:{hour}` its minutes, kept 25 hours; `stats:h:{day}` its
//! hours, kept 31 days. Memory is bounded by those lifetimes, every instance reads the same
//! buckets, and counting costs no round trip of its own.

use crate::redis_client::Conn;
use crate::{
    queue::{Queue, QueueState},
    store::{now_ms, rfc3339},
};
use app::model::{KindStats, Latency, Percentiles, QueueStats, Stats, Throughput, ThroughputPoint};
use std::collections::{BTreeMap, HashMap};

/// One span of the throughput series: its key name, how much time one key holds, one bucket
/// (field) holds, and how many buckets the series shows.
struct Span {
    name: &'static str,
    key_ms: u64,
    bucket_ms: u64,
    buckets: u64,
}

/// Per second over the last 15 minutes.
const SECONDS: Span = Span { name: "s", key_ms: 60_000, bucket_ms: 1_000, buckets: 900 };
/// Per minute over the last 24 hours.
const MINUTES: Span = Span { name: "m", key_ms: 3_600_000, bucket_ms: 60_000, buckets: 1_440 };
/// Per hour over the last 30 days.
const HOURS: Span = Span { name: "h", key_ms: 86_400_000, bucket_ms: 3_600_000, buckets: 720 };

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

    /// ends.lua's `latency_bin`, as Lua computes it.
    fn lua_bin(ms: u64) -> u32 {
        (4.0 * ((ms + 1) as f64).ln() / 2f64.ln()).floor() as u32
    }

    #[test]
    fn every_duration_is_at_most_its_bins_upper_bound_and_within_a_fifth_of_it() {
        for ms in [0, 1, 2, 3, 7, 10, 99, 100, 1_000, 12_345, 3_600_000] {
            let upper = bin_upper_ms(lua_bin(ms));
            assert!(upper >= ms, "{ms} ms: bin bound {upper}");
            assert!(upper as f64 <= (ms as f64 + 1.0) * 1.19 + 1.0, "{ms} ms: bin bound {upper}");
        }
    }

    #[test]
    fn percentiles_come_from_the_cumulative_counts() {
        // 90 samples of 10 ms, 9 of 100 ms, 1 of 1000 ms.
        let bins: BTreeMap<u32, u64> = [(lua_bin(10), 90), (lua_bin(100), 9), (lua_bin(1000), 1)].into();
        let p = percentiles(&bins);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Some(bin_upper_ms(lua_bin(10))));
        assert_eq!(p.p95, Some(bin_upper_ms(lua_bin(100))));
        assert_eq!(p.p99, Some(bin_upper_ms(lua_bin(100))));
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
    fn spans_parse_by_name() {
        assert_eq!(Spans::parse("second,hour"), Ok(Spans { second: true, minute: false, hour: true }));
        assert!(Spans::parse("week").is_err());
    }
}
