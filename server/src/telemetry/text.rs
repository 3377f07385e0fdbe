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
        let mut visitor = WithoutOtel(DefaultVisitor::new(writer, true));
        fields.record(&mut visitor);
        visitor.0.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let empty = current.fields.is_empty();
        let mut visitor = WithoutOtel(DefaultVisitor::new(current.as_writer(), empty));
        fields.record(&mut visitor);
        visitor.0.finish()
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
