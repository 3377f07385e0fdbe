//! A task's payload or result shown to a person: the tabular results (`csv.summary`,
//! `text.stats`) as tables, other JSON as a foldable tree, text as text, and anything else (or
//! anything too large to show) as a download link.

use super::{api::Typed, json_tree::JsonTree};
use crate::model::{CsvColumn, CsvSummary, TextStats};
use leptos::prelude::*;
use serde_json::Value;

/// Bodies up to this size are shown in the page; larger ones are a download link.
pub const SHOW_MAX: u64 = 256 * 1024;

/// Whether a body of `content_type` is JSON.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Whether a body of `content_type` is text to show as it is.
fn is_text(content_type: &str) -> bool {
    content_type.trim().to_ascii_lowercase().starts_with("text/")
}

/// A link to download the whole body.
#[component]
pub fn Download(href: String, bytes: u64) -> impl IntoView {
    view! {
        <a class="download" href=href download="">
            {format!("Download ({})", size(bytes))}
        </a>
    }
}

/// `bytes` for people: `812 bytes`, `14.2 KiB`, `3.1 MiB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// A task's result: a table for the kinds whose result is one, else as [`Body`] shows it; the
/// JSON it came as stays at hand, folded.
#[component]
pub fn ResultView(kind: String, body: Typed) -> impl IntoView {
    let value = is_json(&body.content_type).then(|| serde_json::from_str::<Value>(&body.text).ok()).flatten();
    let table = value.as_ref().and_then(|value| match kind.as_str() {
        "csv.summary" => serde_json::from_value::<CsvSummary>(value.clone()).ok().map(csv_summary),
        "text.stats" => serde_json::from_value::<TextStats>(value.clone()).ok().map(text_stats),
        _ => None,
    });
    let raw = body.text.clone();
    match (table, value) {
        (Some(table), _) => view! {
            {table}
            <details class="raw">
                <summary>"The result as JSON"</summary>
                <pre class="result-body">{raw}</pre>
            </details>
        }
        .into_any(),
        (None, Some(value)) => view! {
            <JsonTree value/>
            <details class="raw">
                <summary>"The result as sent"</summary>
                <pre class="result-body">{raw}</pre>
            </details>
        }
        .into_any(),
        (None, None) => view! { <pre class="result-body">{raw}</pre> }.into_any(),
    }
}

/// A payload: JSON as a tree, text as text, anything else as a download link.
#[component]
pub fn PayloadView(body: Typed, href: String) -> impl IntoView {
    let bytes = body.text.len() as u64;
    if is_json(&body.content_type)
        && let Ok(value) = serde_json::from_str::<Value>(&body.text)
    {
        return view! { <JsonTree value/> }.into_any();
    }
    if is_text(&body.content_type) {
        return view! { <pre class="payload-body">{body.text}</pre> }.into_any();
    }
    view! {
        <p class="hint">{format!("{} — not text; ", body.content_type)}<Download href bytes/></p>
    }
    .into_any()
}

/// A `csv.summary` result: a row per column of the file.
fn csv_summary(summary: CsvSummary) -> AnyView {
    let caption = format!(
        "{} {}, {} {}",
        summary.rows,
        if summary.rows == 1 { "row" } else { "rows" },
        summary.columns.len(),
        if summary.columns.len() == 1 { "column" } else { "columns" }
    );
    let rows = summary.columns.into_iter().map(csv_column).collect_view();
    view! {
        <table class="data-table csv-summary">
            <caption>{caption}</caption>
            <thead>
                <tr>
                    <th scope="col">"Column"</th>
                    <th scope="col">"Type"</th>
                    <th scope="col" class="num">"Min"</th>
                    <th scope="col" class="num">"Max"</th>
                    <th scope="col" class="num">"Mean"</th>
                    <th scope="col" class="num">"Distinct"</th>
                    <th scope="col" class="num">"Blanks"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

fn csv_column(column: CsvColumn) -> impl IntoView {
    let value = |v: Option<Value>| match v {
        None | Some(Value::Null) => "—".to_string(),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if !n.is_i64() && !n.is_u64() => n.as_f64().map(decimal).unwrap_or_default(),
        Some(other) => other.to_string(),
    };
    let distinct =
        if column.distinct_capped { format!("≥ {}", column.distinct) } else { column.distinct.to_string() };
    view! {
        <tr>
            <th scope="row">{column.name}</th>
            <td class="column-type">{column.kind}</td>
            <td class="num">{value(column.min)}</td>
            <td class="num">{value(column.max)}</td>
            <td class="num">{column.mean.map(decimal).unwrap_or_else(|| "—".into())}</td>
            <td class="num">{distinct}</td>
            <td class="num">{column.blanks}</td>
        </tr>
    }
}

/// A number to at most four decimals, without trailing zeros.
fn decimal(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".into() } else { text.to_string() }
}

/// A `text.stats` result: the counts, then the top words.
fn text_stats(stats: TextStats) -> AnyView {
    let words = stats
        .top_words
        .into_iter()
        .map(|w| view! { <tr><td>{w.word}</td><td class="num">{w.count}</td></tr> })
        .collect_view();
    view! {
        <table class="data-table text-stats">
            <caption>"Counts"</caption>
            <tbody>
                <tr><th scope="row">"Lines"</th><td class="num">{stats.lines}</td></tr>
                <tr><th scope="row">"Words"</th><td class="num">{stats.words}</td></tr>
                <tr><th scope="row">"Characters"</th><td class="num">{stats.chars}</td></tr>
            </tbody>
        </table>
        <table class="data-table top-words">
            <caption>"Top words"</caption>
            <thead>
                <tr><th scope="col">"Word"</th><th scope="col" class="num">"Count"</th></tr>
            </thead>
            <tbody>{words}</tbody>
        </table>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_and_sizes_read_as_people_write_them() {
        assert_eq!(decimal(11.25), "11.25");
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(1.0 / 3.0), "0.3333");
        assert_eq!(decimal(-0.00001), "0");
        assert_eq!(size(812), "812 bytes");
        assert_eq!(size(14_541), "14.2 KiB");
        assert_eq!(size(3_250_586), "3.1 MiB");
    }

    #[test]
    fn json_and_text_are_told_by_their_content_type() {
        assert!(is_json("application/json"));
        assert!(is_json("application/problem+json; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(is_text("text/csv"));
        assert!(!is_text("application/octet-stream"));
    }
}
