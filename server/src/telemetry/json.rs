//! `--log-format json`: one JSON object a line, flat: the line's own fields beside those of every
//! span it is in (an attempt's `task_id` and `trace_id`, a request's `request_id`), so that a
//! log pipeline filters on them without knowing which span set them.

use serde_json::{Map, Value};
use std::fmt;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

/// The flat JSON line format. Span fields are kept as JSON text by `JsonFields`; a line's own
/// fields win over its spans', and an inner span's over an outer one's.
pub(super) struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        let mut span = None;
        if let Some(scope) = ctx.event_scope() {
            for entered in scope.from_root() {
                let extensions = entered.extensions();
                let recorded = extensions.get::<FormattedFields<N>>().map(|f| f.fields.as_str());
                if let Some(Ok(Value::Object(own))) =
                    recorded.filter(|f| !f.is_empty()).map(serde_json::from_str)
                {
                    fields.extend(own.into_iter().filter(|(name, _)| !super::text::is_otel(name)));
                }
                span = Some(entered.name());
            }
        }
        let mut own = super::text::WithoutOtel(Fields(Map::new()));
        event.record(&mut own);
        fields.extend(own.0.0);
        let message = fields.remove("message");
        // A field named like a line's own key keeps its value under another name, not a duplicate.
        for key in ["timestamp", "level", "target", "span"] {
            if let Some(value) = fields.remove(key) {
                fields.insert(format!("fields.{key}"), value);
            }
        }
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| fmt::Error)?;
        // The keys every line has come first, always in this order, so that raw lines read alike;
        // then the fields, sorted.
        let first = [
            ("timestamp", Value::from(timestamp)),
            ("level", meta.level().as_str().into()),
            ("target", meta.target().into()),
            ("span", span.map_or(Value::Null, Value::from)),
            ("message", message.unwrap_or_default()),
        ];
        let keys = first.into_iter().filter(|(_, value)| !value.is_null()).map(|(k, v)| (k.to_string(), v));
        let mut text = String::from("{");
        for (name, value) in keys.chain(fields) {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(&name).map_err(|_| fmt::Error)?);
            text.push(':');
            text.push_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?);
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// A line's own fields, as JSON values.
struct Fields(Map<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::{fmt::format::JsonFields, layer::SubscriberExt as _};

    /// What the format wrote, line by line.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_its_own_fields_and_those_of_every_span_it_is_in() {
        let written = Written::default();
        let sink = written.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "r-1", trace_id = "aa");
            let _request = request.enter();
            let attempt = tracing::info_span!(
                "attempt",
                otel.kind = "consumer",
                task_id = "t-1",
                trace_id = tracing::field::Empty,
                task.attempt = 2
            );
            attempt.record("trace_id", "bb");
            let _attempt = attempt.enter();
            tracing::info!(duration_ms = 12u64, error = "said \"no\"", target = "x", "attempt failed");
            drop(_attempt);
            tracing::warn!("outside the attempt");
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let inside = &lines[0];
        assert_eq!(inside["message"], "attempt failed");
        assert_eq!(inside["level"], "INFO");
        assert_eq!(inside["span"], "attempt");
        assert_eq!(inside["task_id"], "t-1");
        assert_eq!(inside["trace_id"], "bb", "the inner span's value wins");
        assert_eq!(inside["request_id"], "r-1");
        assert_eq!(inside["task.attempt"], 2);
        assert_eq!(inside["duration_ms"], 12);
        assert_eq!(inside["error"], "said \"no\"");
        assert!(inside.get("otel.kind").is_none(), "the exporter's fields stay out: {inside}");
        assert_eq!(inside["fields.target"], "x");
        assert_eq!(text.lines().next().unwrap().matches("\"target\":").count(), 1);
        assert!(inside["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{inside}");
        let first_keys =
            ["{\"timestamp\":", ",\"level\":\"INFO\",\"target\":", ",\"span\":\"attempt\",\"message\":"];
        let line = text.lines().next().unwrap();
        let mut at = 0;
        for key in first_keys {
            at += line[at..].find(key).unwrap_or_else(|| panic!("{key} in order in {line}"));
        }
        let outside = &lines[1];
        assert_eq!((outside["span"].as_str(), outside["trace_id"].as_str()), (Some("request"), Some("aa")));
        assert!(outside.get("task_id").is_none(), "{outside}");
    }
}
