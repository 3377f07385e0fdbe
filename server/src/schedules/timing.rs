//! When a schedule ticks: a cron pattern read in an IANA time zone (croner does the calendar and
//! daylight saving), or a fixed interval; bounded by `start_at` and `end_at`. Times are ms since
//! the Unix epoch.

use chrono::TimeZone;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

/// The shortest interval of `every`.
pub const MIN_EVERY_MS: u64 = 1_000;
/// The longest interval of `every`: a year.
const MAX_EVERY_MS: u64 = 366 * 86_400_000;

/// The rule a schedule's ticks follow.
#[derive(Clone, Debug)]
pub enum Timing {
    /// A cron pattern's occurrences in a time zone.
    Cron { cron: Box<Cron>, zone: chrono_tz::Tz },
    /// Every `period_ms`, on its multiples counted from `anchor_ms`.
    Every { period_ms: u64, anchor_ms: u64 },
}

/// A [`Timing`] between two optional bounds (both inclusive).
#[derive(Clone, Debug)]
pub struct Ticks {
    pub timing: Timing,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
}

impl Ticks {
    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        let from = match self.start_ms {
            Some(start) => ms.max(start.saturating_sub(1)),
            None => ms,
        };
        self.timing.next_after(from).filter(|t| self.end_ms.is_none_or(|end| *t <= end))
    }

    /// The latest tick at or before `ms`.
    pub fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        let until = match self.end_ms {
            Some(end) => ms.min(end),
            None => ms,
        };
        self.timing.latest_at_or_before(until).filter(|t| self.start_ms.is_none_or(|start| *t >= start))
    }

    /// The next `count` ticks after `ms`.
    pub fn upcoming(&self, ms: u64, count: usize) -> Vec<u64> {
        std::iter::successors(self.next_after(ms), |t| self.next_after(*t)).take(count).collect()
    }
}

impl Timing {
    /// Reads a cron pattern (5 fields, or 6 with seconds first) in time zone `zone`.
    pub fn cron(pattern: &str, zone: chrono_tz::Tz) -> Result<Timing, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("`{pattern}` is not a cron pattern of 5 fields (or 6 with seconds): {e}"))?;
        Ok(Timing::Cron { cron: Box::new(cron), zone })
    }

    /// Reads an interval such as `30s` (see [`parse_every`]), its ticks counted from `anchor_ms`.
    pub fn every(text: &str, anchor_ms: u64) -> Result<Timing, String> {
        Ok(Timing::Every { period_ms: parse_every(text)?, anchor_ms })
    }

    fn next_after(&self, ms: u64) -> Option<u64> {
        match self {
            Timing::Every { period_ms, anchor_ms } => match ms.checked_sub(*anchor_ms) {
                None => Some(*anchor_ms),
                Some(since) => Some(anchor_ms + (since / period_ms + 1) * period_ms),
            },
            // croner counts in whole seconds: the next occurrence after the second `ms` falls in.
            Timing::Cron { cron, zone } => {
                let at = zone.timestamp_millis_opt(whole_second(ms)?).single()?;
                cron.find_next_occurrence(&at, false)
                    .ok()
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            }
        }
    }

    fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        match self {
            Timing::Every { period_ms, anchor_ms } => {
                ms.checked_sub(*anchor_ms).map(|since| anchor_ms + since / period_ms * period_ms)
            }
            Timing::Cron { cron, zone } => {
                let at = zone.timestamp_millis_opt(whole_second(ms)?).single()?;
                cron.find_previous_occurrence(&at, true)
                    .ok()
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            }
        }
    }
}

/// `ms` rounded down to its second, as chrono takes it.
fn whole_second(ms: u64) -> Option<i64> {
    i64::try_from(ms - ms % 1_000).ok()
}

/// An interval: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`), from `1s` to `366d`.
pub fn parse_every(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "`{text}` is not an interval: a whole number and a unit (ms, s, m, h, d), e.g. `30s`, from 1s to 366d"
        )
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let number: u64 = text[..digits].parse().map_err(|_| invalid())?;
    let unit_ms = match &text[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let ms = number.checked_mul(unit_ms).ok_or_else(invalid)?;
    if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&ms) {
        return Err(invalid());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis() as u64
    }

    fn at(ms: u64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap().to_rfc3339()
    }

    fn paris(pattern: &str) -> Ticks {
        Ticks {
            timing: Timing::cron(pattern, chrono_tz::Europe::Paris).unwrap(),
            start_ms: None,
            end_ms: None,
        }
    }

    #[test]
    fn a_daily_tick_inside_the_spring_forward_gap_runs_once_right_after_it() {
        // 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 never happens.
        let ticks = paris("30 2 * * *");
        let runs = ticks.upcoming(ms("2026-03-28T00:00:00+01:00"), 3);
        assert_eq!(
            runs.iter().map(|t| at(*t)).collect::<Vec<_>>(),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET, the day before
                "2026-03-29T01:00:00+00:00", // 03:00 CEST: the first instant after the gap, once
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_daily_tick_inside_the_fall_back_hour_runs_once() {
        // 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let ticks = paris("30 2 * * *");
        let runs = ticks.upcoming(ms("2026-10-24T12:00:00+02:00"), 3);
        assert_eq!(
            runs.iter().map(|t| at(*t)).collect::<Vec<_>>(),
            [
                "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first of the two
                "2026-10-26T01:30:00+00:00", // 02:30 CET, the next day
                "2026-10-27T01:30:00+00:00",
            ]
        );
        // Evaluated from inside the repeated hour, the second 02:30 is not a tick of its own.
        assert_eq!(ticks.next_after(ms("2026-10-25T02:45:00+02:00")), Some(ms("2026-10-26T02:30:00+01:00")));
    }

    #[test]
    fn cron_patterns_take_five_fields_or_six_with_seconds() {
        let utc = chrono_tz::UTC;
        let every_5_min =
            Ticks { timing: Timing::cron("*/5 * * * *", utc).unwrap(), start_ms: None, end_ms: None };
        assert_eq!(every_5_min.next_after(ms("2026-01-01T00:02:10Z")), Some(ms("2026-01-01T00:05:00Z")));
        let every_2_s =
            Ticks { timing: Timing::cron("*/2 * * * * *", utc).unwrap(), start_ms: None, end_ms: None };
        assert_eq!(every_2_s.next_after(ms("2026-01-01T00:00:00.500Z")), Some(ms("2026-01-01T00:00:02Z")));
        assert_eq!(
            every_2_s.latest_at_or_before(ms("2026-01-01T00:00:03.900Z")),
            Some(ms("2026-01-01T00:00:02Z"))
        );
        for bad in ["", "* * * *", "61 * * * *", "* * * * * * *", "every day"] {
            assert!(Timing::cron(bad, utc).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_tick_on_multiples_of_their_anchor_within_the_bounds() {
        let ticks = Ticks {
            timing: Timing::every("30s", 5_000).unwrap(),
            start_ms: Some(5_000),
            end_ms: Some(95_000),
        };
        assert_eq!(ticks.next_after(0), Some(5_000));
        assert_eq!(ticks.next_after(5_000), Some(35_000));
        assert_eq!(ticks.next_after(34_999), Some(35_000));
        assert_eq!(ticks.latest_at_or_before(64_999), Some(35_000));
        assert_eq!(ticks.latest_at_or_before(4_999), None);
        assert_eq!(ticks.upcoming(0, 5), [5_000, 35_000, 65_000, 95_000]);
        assert_eq!(ticks.next_after(95_000), None);
        assert_eq!(parse_every("1s"), Ok(1_000));
        assert_eq!(parse_every("1500ms"), Ok(1_500));
        assert_eq!(parse_every("2h"), Ok(7_200_000));
        for bad in ["", "s", "30", "999ms", "0s", "1.5s", "-1s", "1 s", "367d", "99999999999999999999d"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }
}
