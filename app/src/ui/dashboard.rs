//! The dashboard: every queue's counts, oldest wait and last minute's throughput, a throughput
//! chart (per second over 15 minutes, live; or per minute over 24 hours, per hour over 30 days)
//! and the wait and run time percentiles, all drawn here as SVG and kept live by the server's
//! `stats` events (`/api/v1/stats/events`, one a second).

use super::{api, live, queues::human_duration};
use crate::model::{Percentiles, QueueStats, STATS_EVENT, Stats, ThroughputPoint};
use leptos::{prelude::*, task::spawn_local};

/// The spans the throughput chart can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    Seconds,
    Minutes,
    Hours,
}

impl Span {
    const ALL: [Span; 3] = [Span::Seconds, Span::Minutes, Span::Hours];

    fn label(self) -> &'static str {
        match self {
            Span::Seconds => "15 minutes",
            Span::Minutes => "24 hours",
            Span::Hours => "30 days",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Span::Seconds => "per second",
            Span::Minutes => "per minute",
            Span::Hours => "per hour",
        }
    }
}

/// `/dashboard`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    // The live stats (seconds' series) and, once asked for, the longer series.
    let live_stats = RwSignal::new(None::<Stats>);
    let longer = RwSignal::new(None::<Stats>);
    let span = RwSignal::new(Span::Seconds);
    let error = RwSignal::new(None::<String>);
    // The minute the longer series were last read in: read again when a new one starts.
    let longer_read_at = StoredValue::new(String::new());
    let load_longer = move || {
        spawn_local(async move {
            match api::get_json::<Stats>("/api/v1/stats?spans=minute,hour").await {
                Ok(stats) => longer.set(Some(stats)),
                Err(e) => error.set(Some(e)),
            }
        });
    };
    Effect::new(move |_| {
        live::subscribe("/api/v1/stats/events", move |name, data| {
            if name == STATS_EVENT
                && let Ok(stats) = serde_json::from_str::<Stats>(data)
            {
                // The minute and hour series move once a minute: read them again then.
                let minute =
                    stats.throughput.second.last().map(|p| p.at[..16].to_string()).unwrap_or_default();
                if span.get_untracked() != Span::Seconds && longer_read_at.get_value() != minute {
                    longer_read_at.set_value(minute);
                    load_longer();
                }
                error.set(None);
                live_stats.set(Some(stats));
            }
            true
        });
    });
    let choose = move |chosen: Span| {
        span.set(chosen);
        if chosen != Span::Seconds && longer.get_untracked().is_none() {
            load_longer();
        }
    };
    let series = move || -> Option<Vec<ThroughputPoint>> {
        match span.get() {
            Span::Seconds => live_stats.with(|s| s.as_ref().map(|s| s.throughput.second.clone())),
            Span::Minutes => longer.with(|s| s.as_ref().map(|s| s.throughput.minute.clone())),
            Span::Hours => longer.with(|s| s.as_ref().map(|s| s.throughput.hour.clone())),
        }
    };

    view! {
        <section class="dashboard">
            <div class="heading">
                <h1>"Dashboard"</h1>
                <span class="notice live-dot" title="updated every second by the server">"live"</span>
            </div>
            {move || error.get().map(|e| view! { <p class="submit-error" role="alert">{e}</p> })}
            {move || match live_stats.get() {
                None => view! { <p class="pending">"waiting for the first numbers…"</p> }.into_any(),
                Some(stats) => view! { <QueueSummary queues=stats.queues.clone()/> }.into_any(),
            }}
            <div class="chart-card">
                <div class="chart-heading">
                    <h2>"Throughput"</h2>
                    <div class="span-switch" role="group" aria-label="span">
                        {Span::ALL
                            .into_iter()
                            .map(|choice| {
                                view! {
                                    <button
                                        class=move || if span.get() == choice { "chosen" } else { "secondary" }
                                        aria-pressed=move || (span.get() == choice).to_string()
                                        on:click=move |_| choose(choice)
                                    >
                                        {choice.label()}
                                    </button>
                                }
                            })
                            .collect_view()}
                    </div>
                </div>
                {move || match series() {
                    None => view! { <p class="pending">"loading…"</p> }.into_any(),
                    Some(points) => view! { <ThroughputChart points unit=span.get().unit()/> }.into_any(),
                }}
            </div>
            <div class="chart-card">
                <h2>"Wait and run time, last 15 minutes"</h2>
                {move || {
                    live_stats
                        .get()
                        .map(|stats| {
                            view! {
                                <LatencyChart wait=stats.latency_ms.wait.clone() run=stats.latency_ms.run.clone()/>
                            }
                        })
                }}
            </div>
        </section>
    }
}

/// One row per queue: its state, counts, oldest wait and what ended in the last minute.
#[component]
fn QueueSummary(queues: Vec<QueueStats>) -> impl IntoView {
    if queues.is_empty() {
        return view! { <p class="empty">"No queues yet: a queue appears when a task is first sent to it."</p> }
            .into_any();
    }
    let count = |q: &QueueStats, state: &str| q.counts.get(state).copied().unwrap_or(0);
    view! {
        <table class="queue-table dashboard-queues">
            <thead>
                <tr>
                    <th>"Queue"</th>
                    <th></th>
                    <th class="num">"Queued"</th>
                    <th class="num">"Scheduled"</th>
                    <th class="num">"Running"</th>
                    <th class="num">"Retrying"</th>
                    <th class="num">"Dead"</th>
                    <th class="num" title="how long the oldest queued task has waited">"Oldest wait"</th>
                    <th class="num" title="tasks that ended in the last minute">"Done / min"</th>
                </tr>
            </thead>
            <tbody>
                {queues
                    .into_iter()
                    .map(|q| {
                        view! {
                            <tr data-queue=q.queue.clone()>
                                <td class="name"><code>{q.queue.clone()}</code></td>
                                <td class="state">
                                    {if q.paused {
                                        view! { <span class="badge queue-paused">"paused"</span> }.into_any()
                                    } else {
                                        view! { <span class="badge queue-active">"active"</span> }.into_any()
                                    }}
                                </td>
                                <td class="num queued">{count(&q, "queued")}</td>
                                <td class="num scheduled">{count(&q, "scheduled")}</td>
                                <td class="num running">{count(&q, "running")}</td>
                                <td class="num retrying">{count(&q, "retrying")}</td>
                                <td class="num dead">{count(&q, "dead")}</td>
                                <td class="num oldest">
                                    {q.oldest_waiting_ms.map_or_else(|| "—".to_string(), human_duration)}
                                </td>
                                <td class="num finished">{q.finished_last_minute}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

/// The chart's drawing area, in SVG user units.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 220.0;
/// Room for the axis labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;

/// Succeeded and failed tasks per bucket as two lines over a shared scale, newest on the right.
#[component]
fn ThroughputChart(points: Vec<ThroughputPoint>, unit: &'static str) -> impl IntoView {
    let succeeded: u64 = points.iter().map(|p| p.succeeded).sum();
    let failed: u64 = points.iter().map(|p| p.failed).sum();
    let top = nice_top(points.iter().map(|p| p.succeeded.max(p.failed)).max().unwrap_or(0));
    let line = |value: fn(&ThroughputPoint) -> u64| polyline(&points, top, value);
    let first = points.first().map(|p| short_time(&p.at)).unwrap_or_default();
    let last = points.last().map(|p| short_time(&p.at)).unwrap_or_default();
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - BOTTOM;
    view! {
        <svg
            class="chart throughput"
            viewBox=format!("0 0 {WIDTH} {HEIGHT}")
            role="img"
            aria-label=format!("{succeeded} succeeded and {failed} failed, {unit}")
            data-succeeded=succeeded
            data-failed=failed
        >
            // Gridlines at the top, the middle and zero, labelled with their values.
            {[0.0, 0.5, 1.0]
                .into_iter()
                .map(|f| {
                    let y = plot_h - f * (plot_h - 8.0);
                    let label = format_count((top as f64 * f).round() as u64);
                    view! {
                        <line class="grid" x1=LEFT y1=y x2=WIDTH y2=y></line>
                        <text class="axis" x=LEFT - 6.0 y=y + 4.0 text-anchor="end">{label}</text>
                    }
                })
                .collect_view()}
            <polyline class="line succeeded" points=line(|p| p.succeeded)></polyline>
            <polyline class="line failed" points=line(|p| p.failed)></polyline>
            <text class="axis" x=LEFT y=HEIGHT - 4.0>{first}</text>
            <text class="axis" x=LEFT + plot_w y=HEIGHT - 4.0 text-anchor="end">{last}</text>
        </svg>
        <p class="legend">
            <span class="key succeeded"></span>
            {format!("succeeded ({succeeded})")}
            <span class="key failed"></span>
            {format!("failed ({failed}), {unit}")}
        </p>
    }
}

/// The SVG points of one series scaled to `top`.
fn polyline(points: &[ThroughputPoint], top: u64, value: fn(&ThroughputPoint) -> u64) -> String {
    let n = points.len().max(2) as f64 - 1.0;
    let plot_h = HEIGHT - BOTTOM;
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let x = LEFT + (WIDTH - LEFT) * i as f64 / n;
            let y = plot_h - (value(p) as f64 / top.max(1) as f64) * (plot_h - 8.0);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A round number at or above `max`, for the top of a scale (at least 1).
fn nice_top(max: u64) -> u64 {
    let mut step = 1;
    loop {
        for factor in [1, 2, 5] {
            if step * factor >= max.max(1) {
                return step * factor;
            }
        }
        step *= 10;
    }
}

/// `12,345` as `12.3k`.
fn format_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// `2026-11-30T23:04:38.000Z` as `11-30 23:04:38`.
pub(super) fn short_time(at: &str) -> String {
    at.get(5..19).map(|t| t.replace('T', " ")).unwrap_or_default()
}

/// p50, p95 and p99 of wait and run time as horizontal bars on one log scale.
#[component]
fn LatencyChart(wait: Percentiles, run: Percentiles) -> impl IntoView {
    let rows = [("wait", &wait), ("run", &run)]
        .into_iter()
        .flat_map(|(measure, p)| {
            [("p50", p.p50), ("p95", p.p95), ("p99", p.p99)].map(move |(name, value)| (measure, name, value))
        })
        .collect::<Vec<_>>();
    let highest = rows.iter().filter_map(|(_, _, v)| *v).max().unwrap_or(1).max(1);
    // Log scale: 1 ms at the left edge, the highest value at the right.
    let scale = |ms: u64| ((ms.max(1) as f64).ln() / (highest as f64).ln().max(1.0)).clamp(0.02, 1.0);
    let row_h = 22.0;
    let height = row_h * rows.len() as f64 + 6.0;
    if wait.count == 0 && run.count == 0 {
        return view! { <p class="empty">"No task ended in the last 15 minutes."</p> }.into_any();
    }
    view! {
        <svg
            class="chart latency"
            viewBox=format!("0 0 {WIDTH} {height}")
            role="img"
            aria-label="wait and run time percentiles"
            data-wait-count=wait.count
            data-run-count=run.count
        >
            {rows
                .into_iter()
                .enumerate()
                .map(|(i, (measure, name, value))| {
                    let y = 4.0 + i as f64 * row_h;
                    let width = value.map_or(0.0, |v| scale(v) * (WIDTH - 260.0));
                    let label = value.map_or_else(|| "—".to_string(), human_duration);
                    view! {
                        <text class="axis" x="0" y=y + 14.0>{format!("{measure} {name}")}</text>
                        <rect class=format!("bar {measure}") x="90" y=y width=width height=row_h - 6.0 rx="3"></rect>
                        <text class="value" x=96.0 + width y=y + 14.0>{label}</text>
                    }
                })
                .collect_view()}
        </svg>
        <p class="legend">
            {format!("from {} waits and {} runs; ", wait.count, run.count)}
            "each value is the upper bound of its histogram bucket (within a fifth)"
        </p>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_end_on_round_numbers() {
        assert_eq!([0, 1, 3, 7, 10, 11, 480, 999_999].map(nice_top), [1, 1, 5, 10, 10, 20, 500, 1_000_000]);
    }

    #[test]
    fn lines_span_the_plot_from_left_to_right() {
        let points: Vec<ThroughputPoint> =
            (0..3).map(|i| ThroughputPoint { at: String::new(), succeeded: i * 5, failed: 0 }).collect();
        let line = polyline(&points, 10, |p| p.succeeded);
        assert_eq!(
            line,
            format!(
                "{LEFT:.1},{:.1} {:.1},{:.1} {WIDTH:.1},8.0",
                HEIGHT - BOTTOM,
                (LEFT + WIDTH) / 2.0,
                (HEIGHT - BOTTOM + 8.0) / 2.0
            )
        );
    }
}
