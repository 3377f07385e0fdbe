//! A task's attempts as a timeline: when each ran, on which worker, how long, how it ended and
//! with what error.

use crate::model::AttemptView;
use leptos::prelude::*;

/// The attempts, first first.
#[component]
pub fn AttemptTimeline(attempts: Vec<AttemptView>) -> impl IntoView {
    if attempts.is_empty() {
        return view! { <p class="empty">"No attempt has started yet."</p> }.into_any();
    }
    let items = attempts.into_iter().map(|attempt| view! { <Attempt attempt/> }).collect_view();
    view! { <ol class="timeline">{items}</ol> }.into_any()
}

#[component]
fn Attempt(attempt: AttemptView) -> impl IntoView {
    let AttemptView { attempt, worker, started_at, ended_at, outcome, error } = attempt;
    let took = ended_at.as_deref().and_then(|end| Some(ms_of(end)? - ms_of(&started_at)?)).map(duration);
    let ended = match &ended_at {
        Some(end) => view! { " → " <time class="ended">{end.clone()}</time> }.into_any(),
        None => view! { <span class="ended">" → still running"</span> }.into_any(),
    };
    view! {
        <li class=format!("attempt outcome-{outcome}") data-attempt=attempt.to_string()>
            <div class="attempt-head">
                <span class="attempt-number">{format!("Attempt {attempt}")}</span>
                <span class=format!("badge outcome outcome-{outcome}")>{outcome.clone()}</span>
                {took.map(|t| view! { <span class="took">{t}</span> })}
            </div>
            <div class="attempt-when">
                <time class="started">{started_at}</time>
                {ended}
            </div>
            <div class="attempt-worker">
                "on "
                <code class="worker">{worker.unwrap_or_else(|| "an unknown worker".into())}</code>
            </div>
            {error.map(|e| view! { <pre class="attempt-error">{e}</pre> })}
        </li>
    }
}

/// Milliseconds from the epoch of an RFC 3339 UTC time as the API writes them
/// (`2025-01-31T17:00:00.123Z`); `None` for anything else.
pub fn ms_of(text: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let millis = match text.get(19..text.len() - 1)? {
        "" => 0,
        fraction => {
            let digits = fraction.strip_prefix('.')?;
            let padded: String = digits.chars().chain(std::iter::repeat('0')).take(3).collect();
            padded.parse::<i64>().ok()?
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// A span of time for people: `850 ms`, `2.4 s`, `3 min 5 s`.
pub fn duration(ms: i64) -> String {
    match ms {
        ..0 => "—".into(),
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_times_are_read_to_the_millisecond() {
        assert_eq!(ms_of("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(ms_of("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(ms_of("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(ms_of("2023-11-14T22:13:20.5Z"), Some(1_700_000_000_500));
        assert_eq!(ms_of("2023-11-14 22:13:20Z"), None);
        assert_eq!(ms_of("yesterday"), None);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_400), "2.4 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(-1), "—");
    }
}
