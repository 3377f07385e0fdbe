//! `csv.summary`: rows, and per column its inferred type, min, max, mean and distinct count.
//! Parsing runs on a blocking thread and streams through the rows, so a 50 MB file neither
//! blocks the runtime nor holds more than one row (plus the distinct values) at a time.

use super::{Context, Handler, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::json;
use std::collections::HashSet;

/// Distinct values are counted exactly up to this many per column, then reported as capped.
const DISTINCT_CAP: usize = 100_000;

pub struct CsvSummary;

#[derive(Debug, PartialEq, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub columns: Vec<Column>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Column {
    pub name: String,
    /// `integer`, `number`, `boolean`, `text`, or `empty` when every value is blank.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Numeric min/max for numbers, lexicographic for text.
    pub min: Option<serde_json::Value>,
    pub max: Option<serde_json::Value>,
    /// Only for numeric columns.
    pub mean: Option<f64>,
    pub distinct: usize,
    pub distinct_capped: bool,
    pub blanks: u64,
}

#[derive(Default)]
struct Tally {
    integers: bool,
    numbers: bool,
    booleans: bool,
    seen: u64,
    blanks: u64,
    sum: f64,
    min_num: Option<f64>,
    max_num: Option<f64>,
    min_text: Option<String>,
    max_text: Option<String>,
    distinct: HashSet<String>,
    capped: bool,
}

impl Tally {
    fn new() -> Tally {
        Tally { integers: true, numbers: true, booleans: true, ..Tally::default() }
    }

    fn add(&mut self, raw: &str) {
        let value = raw.trim();
        if value.is_empty() {
            self.blanks += 1;
            return;
        }
        self.seen += 1;
        self.integers &= value.parse::<i64>().is_ok();
        match value.parse::<f64>() {
            Ok(n) if n.is_finite() => {
                self.sum += n;
                self.min_num = Some(self.min_num.map_or(n, |m| m.min(n)));
                self.max_num = Some(self.max_num.map_or(n, |m| m.max(n)));
            }
            _ => self.numbers = false,
        }
        self.booleans &= matches!(value.to_ascii_lowercase().as_str(), "true" | "false");
        if self.min_text.as_deref().is_none_or(|m| value < m) {
            self.min_text = Some(value.to_string());
        }
        if self.max_text.as_deref().is_none_or(|m| value > m) {
            self.max_text = Some(value.to_string());
        }
        if !self.capped && !self.distinct.contains(value) {
            if self.distinct.len() == DISTINCT_CAP {
                self.capped = true;
            } else {
                self.distinct.insert(value.to_string());
            }
        }
    }

    fn finish(self, name: String) -> Column {
        let numeric = self.seen > 0 && self.numbers;
        let kind = match () {
            _ if self.seen == 0 => "empty",
            _ if self.integers => "integer",
            _ if numeric => "number",
            _ if self.booleans => "boolean",
            _ => "text",
        };
        let number = |n: f64| {
            if kind == "integer" { json!(n as i64) } else { json!(n) }
        };
        let (min, max, mean) = if numeric {
            (self.min_num.map(number), self.max_num.map(number), Some(self.sum / self.seen as f64))
        } else {
            (self.min_text.map(|t| json!(t)), self.max_text.map(|t| json!(t)), None)
        };
        Column {
            name,
            kind,
            min,
            max,
            mean,
            distinct: self.distinct.len(),
            distinct_capped: self.capped,
            blanks: self.blanks,
        }
    }
}

/// Summarises CSV text whose first row is the header.
pub fn summarise(data: &[u8]) -> Result<Summary, HandlerError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(data);
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| HandlerError::fatal(format!("not CSV: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut tallies: Vec<Tally> = names.iter().map(|_| Tally::new()).collect();
    let mut rows = 0;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return Err(HandlerError::fatal(format!("not CSV at row {}: {e}", rows + 2)));
            }
        }
        rows += 1;
        for (tally, value) in tallies.iter_mut().zip(record.iter()) {
            tally.add(value);
        }
    }
    let columns = names.into_iter().zip(tallies).map(|(name, tally)| tally.finish(name)).collect();
    Ok(Summary { rows, columns })
}

impl Handler for CsvSummary {
    fn name(&self) -> &str {
        "csv.summary"
    }

    fn description(&self) -> &str {
        "Summarises a CSV file (header row first): rows, and per column type, min, max, mean and distinct values."
    }

    fn schema(&self) -> serde_json::Value {
        json!({"type": "string", "description": "CSV text; or upload a .csv file"})
    }

    fn example(&self) -> serde_json::Value {
        json!("city,temperature,coastal\nOslo,3.5,true\nLima,19,true\nMadrid,12.25,false")
    }

    fn accepts_raw(&self) -> bool {
        true
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        // Minutes for the largest accepted file; anything longer is stuck, not busy.
        Some(std::time::Duration::from_secs(600))
    }

    fn run(&self, input: Input, _ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move {
            let summary = tokio::task::spawn_blocking(move || {
                if input.is_json() {
                    let text = input.text()?;
                    summarise(text.as_bytes())
                } else {
                    summarise(&input.bytes)
                }
            })
            .await
            .map_err(|_| HandlerError::retryable("summarising the CSV was interrupted"))??;
            Ok(Output::json(&summary))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_types_and_ranges_per_column() {
        let s = summarise(b"city,temp,n,flag\nOslo,3.5,1,true\nLima,19,2,false\nOslo,,3,true\n").unwrap();
        assert_eq!(s.rows, 3);
        let [city, temp, n, flag] = &s.columns[..] else { panic!("four columns") };
        assert_eq!((city.kind, city.distinct, city.min.clone()), ("text", 2, Some(json!("Lima"))));
        assert_eq!((temp.kind, temp.blanks, temp.max.clone()), ("number", 1, Some(json!(19.0))));
        assert_eq!(temp.mean, Some(11.25));
        assert_eq!(
            (n.kind, n.min.clone(), n.max.clone(), n.mean),
            ("integer", Some(json!(1)), Some(json!(3)), Some(2.0))
        );
        assert_eq!(flag.kind, "boolean");
    }

    #[test]
    fn the_summary_is_what_the_task_page_reads() {
        let s = summarise(b"city,temp\nOslo,3.5\nLima,\n").unwrap();
        let read: app::model::CsvSummary = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!((read.rows, read.columns.len()), (2, 2));
        assert_eq!((read.columns[1].kind.as_str(), read.columns[1].blanks), ("number", 1));
    }

    #[test]
    fn bytes_that_are_not_text_are_a_clear_error() {
        let err = summarise(b"a,b\n\xff\xfe,1\n").unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.starts_with("not CSV at row 2"), "{}", err.message);
    }
}
