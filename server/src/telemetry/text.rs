//! `--log-format text`: tracing-subscriber's own format, less the `otel.*` fields, which tell
//! the span exporter how to name and classify a span and say nothing to a reader.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{RecordFields, VisitOutput as _},
    fmt::{
        FormatFields, FormattedFields,
        format::{DefaultVisitor, Writer},
    },
};

/// Formats fields as tracing-subscriber's default does, skipping `otel.*` ones.
pub(super) struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = WithoutOtel(Plain::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let empty = current.fields.is_empty();
        let mut visitor = WithoutOtel(Plain::new(current.as_writer(), empty));
        fields.record(&mut visitor);
        visitor.0.result
    }
}

/// The default format's fields (`name=value`, the value as `Debug` shows it, a space between
/// two), a plain field written straight to an uncoloured writer. The default visitor styles each
/// name and `=` even with no colours to write, through `core::fmt` each time: a worker at `info`
/// spent some 3,300 instructions a task more that way, on the span each attempt makes
/// (docs/benchmark-notes.md, "Forty-third step"). What the default treats apart (the message, a
/// raw identifier's name, tracing-log's `log.*` fields, an error and its sources) and every field
/// on a coloured writer still go through it. A test holds the two formats together.
struct Plain<'w> {
    writer: Writer<'w>,
    /// Whether nothing was written yet: no space before the next field.
    is_empty: bool,
    result: fmt::Result,
}

impl<'w> Plain<'w> {
    fn new(writer: Writer<'w>, is_empty: bool) -> Plain<'w> {
        Plain { writer, is_empty, result: Ok(()) }
    }

    /// Whether the field named `name` is written here rather than by the default visitor.
    fn writes(&self, name: &str) -> bool {
        !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// Has the default visitor write the field named `name` (`record`), after what is written.
    fn by_default(&mut self, name: &str, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It skips tracing-log's fields, and pads before any other.
        if !name.starts_with("log.") {
            self.is_empty = false;
        }
    }
}

impl Visit for Plain<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.by_default("message", |visitor| visitor.record_str(field, value)),
            // Quoted, as the default shows a text field.
            _ => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(field.name(), |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() {
            return;
        }
        if !self.writes(name) {
            return self.by_default(name, |visitor| visitor.record_debug(field, value));
        }
        let padded = match std::mem::take(&mut self.is_empty) {
            true => Ok(()),
            false => self.writer.write_char(' '),
        };
        self.result = padded
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| write!(self.writer, "{value:?}"));
    }
}

/// Passes every field but the `otel.*` ones on to the visitor it wraps.
pub(super) struct WithoutOtel<V>(pub(super) V);

/// Whether a field is an instruction to the span exporter (`otel.name`, `otel.kind`, …).
pub(super) fn is_otel(name: &str) -> bool {
    name.starts_with("otel.")
}

impl<V: Visit> Visit for WithoutOtel<V> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if !is_otel(field.name()) {
            self.0.record_f64(field, value)
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !is_otel(field.name()) {
            self.0.record_i64(field, value)
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !is_otel(field.name()) {
            self.0.record_u64(field, value)
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !is_otel(field.name()) {
            self.0.record_bool(field, value)
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_otel(field.name()) {
            self.0.record_str(field, value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !is_otel(field.name()) {
            self.0.record_error(field, value)
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !is_otel(field.name()) {
            self.0.record_debug(field, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn a_text_line_shows_its_spans_fields_but_not_the_exporter_s() {
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!(
                "attempt",
                otel.kind = "consumer",
                task_id = "t-1",
                trace_id = tracing::field::Empty,
                otel.status_code = tracing::field::Empty
            );
            span.record("trace_id", "aa");
            span.record("otel.status_code", "ERROR");
            let _entered = span.enter();
            tracing::info!(otel.name = "x", duration_ms = 3, "done");
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("attempt{task_id=\"t-1\" trace_id=\"aa\"}:"), "{text}");
        assert!(text.trim_end().ends_with("done duration_ms=3"), "{text}");
        assert!(!text.contains("otel"), "{text}");
    }

    /// Every kind of field the default format treats apart, in a span (some recorded after it
    /// is made) and in events, comes out of `TextFields` as the default writes it, with colours
    /// and without.
    #[test]
    fn text_fields_are_the_default_format() {
        for ansi in [false, true] {
            let ours = written_with(TextFields, ansi);
            assert_eq!(ours.lines().count(), 3, "{ours}");
            assert_eq!(ours, written_with(tracing_subscriber::fmt::format::DefaultFields::new(), ansi));
        }
    }

    /// An error with a source, as the default format lists them.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the outer error")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// What a text layer whose fields `fields` formats writes for a span and a few events.
    fn written_with<F>(fields: F, ansi: bool) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(fields)
            .with_ansi(ansi)
            .without_time()
            .with_writer(move || Sink(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let id: uuid::Uuid = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
            let span = tracing::info_span!(
                "attempt",
                task_id = %id,
                task.kind = "echo",
                task.attempt = 3_u32,
                retried = false,
                share = 0.5,
                r#type = "raw",
                trace_id = tracing::field::Empty,
                later = tracing::field::Empty
            );
            span.record("trace_id", tracing::field::display("4bf92f3577b34da6a3ce929d0e0e4736"));
            span.record("later", -7_i64);
            let _entered = span.enter();
            let error = Outer(std::io::Error::other("the inner error"));
            tracing::info!(
                n = 1_u64,
                text = "with \"quotes\" and \u{1b}[1m",
                list = ?vec![1, 2],
                error = &error as &(dyn std::error::Error + 'static),
                "the message, {}",
                5
            );
            let alone = std::io::Error::other("no source");
            tracing::warn!(error = &alone as &(dyn std::error::Error + 'static), "only an error");
            tracing::info!(log.target = "skipped", empty = "", message = "a message as a field");
        });
        String::from_utf8(written.lock().unwrap().clone()).unwrap()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
