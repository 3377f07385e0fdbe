//! `text.stats`: counts lines, words and characters, and finds the most frequent words.

use super::{Context, Handler, HandlerError, Input, Output};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;

/// How many of the most frequent words the result lists.
const TOP: usize = 10;
/// Texts larger than this are counted off the async runtime.
const INLINE_LIMIT: usize = 256 * 1024;

pub struct TextStats;

#[derive(Debug, PartialEq, Serialize)]
pub struct Stats {
    pub lines: usize,
    pub words: usize,
    pub chars: usize,
    pub top_words: Vec<WordCount>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct WordCount {
    pub word: String,
    pub count: usize,
}

/// Counts `text`; words are runs of letters, digits and apostrophes, compared case-insensitively.
pub fn stats(text: &str) -> Stats {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut words = 0;
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()) {
        words += 1;
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut top: Vec<WordCount> = counts.into_iter().map(|(word, count)| WordCount { word, count }).collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(TOP);
    Stats { lines: text.lines().count(), words, chars: text.chars().count(), top_words: top }
}

impl Handler for TextStats {
    fn name(&self) -> &str {
        "text.stats"
    }

    fn description(&self) -> &str {
        "Counts lines, words and characters of a text and lists its ten most frequent words."
    }

    fn schema(&self) -> serde_json::Value {
        json!({"type": "string", "description": "the text; or upload a text file"})
    }

    fn example(&self) -> serde_json::Value {
        json!("the quick brown fox jumps over the lazy dog\nthe end")
    }

    fn accepts_raw(&self) -> bool {
        true
    }

    fn run(&self, input: Input, _ctx: Context) -> BoxFuture<'static, Result<Output, HandlerError>> {
        Box::pin(async move {
            // Reading the text copies and checks all of it: a large one is read off the worker's
            // thread too, with its counting.
            let result = if input.bytes.len() <= INLINE_LIMIT {
                stats(&input.text()?)
            } else {
                tokio::task::spawn_blocking(move || input.text().map(|text| stats(&text)))
                    .await
                    .map_err(|_| HandlerError::retryable("counting the text was interrupted"))??
            };
            Ok(Output::json(&result))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{json_of, run_json};

    #[test]
    fn counts_lines_words_chars_and_top_words() {
        let s = stats("The cat and the hat.\nThe end");
        assert_eq!((s.lines, s.words, s.chars), (2, 7, 28));
        assert_eq!(s.top_words[0], WordCount { word: "the".into(), count: 3 });
        assert_eq!(s.top_words[1], WordCount { word: "and".into(), count: 1 });
    }

    #[test]
    fn the_stats_are_what_the_task_page_reads() {
        let read: app::model::TextStats =
            serde_json::from_value(serde_json::to_value(stats("a b a")).unwrap()).unwrap();
        assert_eq!((read.words, read.top_words[0].word.as_str(), read.top_words[0].count), (3, "a", 2));
    }

    #[tokio::test]
    async fn a_text_too_large_to_count_on_the_workers_thread_is_read_and_counted_off_it() {
        let words = INLINE_LIMIT / 4 + 1;
        let out = run_json(&TextStats, json!("abc ".repeat(words)), 1).await.unwrap();
        assert_eq!(json_of(&out)["words"], words);
        let raw = |bytes: Vec<u8>| Input { bytes: bytes.into(), content_type: "text/plain".into() };
        let context = || {
            let (progress, _) = tokio::sync::watch::channel(None);
            Context::new(1, tokio_util::sync::CancellationToken::new(), progress)
        };
        let mut not_text = "abc ".repeat(words).into_bytes();
        not_text.push(0xff);
        let error = TextStats.run(raw(not_text), context()).await.unwrap_err();
        assert_eq!(error.message, "payload is not UTF-8 text");
    }

    #[tokio::test]
    async fn a_json_string_payload_is_the_text() {
        let out = run_json(&TextStats, json!("a b a"), 1).await.unwrap();
        assert_eq!(json_of(&out)["words"], 3);
        assert_eq!(json_of(&out)["top_words"][0], json!({"word": "a", "count": 2}));
    }
}
