//! The W3C trace context (`traceparent`) a task keeps from its submission: read from a request,
//! stored with the task, continued by its attempts and handed on to push endpoints and pulling
//! workers.
//!
//! Spans are `tracing` spans. When they are exported (`--otlp-endpoint`), the OpenTelemetry layer
//! gives them their ids and links them to their parents; otherwise Courier makes the ids itself,
//! so that a trace id is kept, logged and propagated all the same, with no exporter to pay for.

use opentelemetry::{
    Context,
    context::FutureExt as _,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator},
};
use std::fmt::Write as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and task record field) that carries a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The trace context of a `traceparent` value; `None` when it is not a valid one.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let traceparent = traceparent.trim();
    if !shaped(traceparent) {
        return None;
    }
    let span = as_written(traceparent).unwrap_or_else(|| by_propagator(traceparent));
    span.is_valid().then_some(span)
}

/// Whether `traceparent` has the W3C format's dashes where its parts end (the propagator takes
/// ids of fewer digits than the 32 and 16 the format has).
fn shaped(traceparent: &str) -> bool {
    let bytes = traceparent.as_bytes();
    bytes.len() >= 55
        && [2, 35, 52].iter().all(|&at| bytes[at] == b'-')
        && (bytes.len() == 55 || bytes[55] == b'-')
}

/// The trace context of a `traceparent` as the propagator reads it (invalid when it reads none).
fn by_propagator(traceparent: &str) -> SpanContext {
    let context = TraceContextPropagator::new().extract(&Carrier(traceparent));
    context.span().span_context().clone()
}

/// Whether `digits` are hex digits in lower case, as W3C writes them.
fn lower_hex(digits: &[u8]) -> bool {
    digits.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `traceparent` in the shape `format` writes (version 00, its ids and flags in lower-case hex,
/// nothing after), read straight into a span context: the propagator would read it the same (a
/// test compares the two), through a `Context` made and dropped for it, which a worker paid once
/// an attempt (2.8 % of its instructions: docs/benchmark-notes.md, "Twenty-third step"). None for
/// any other shape, which the propagator reads.
fn as_written(traceparent: &str) -> Option<SpanContext> {
    let bytes = traceparent.as_bytes();
    let written = bytes.len() == 55
        && bytes.starts_with(b"00-")
        && bytes[35] == b'-'
        && bytes[52] == b'-'
        && lower_hex(&bytes[3..35])
        && lower_hex(&bytes[36..52])
        && lower_hex(&bytes[53..55]);
    if !written {
        return None;
    }
    let trace_id = TraceId::from_hex(&traceparent[3..35]).ok()?;
    let span_id = SpanId::from_hex(&traceparent[36..52]).ok()?;
    let flags = u8::from_str_radix(&traceparent[53..55], 16).ok()?;
    // Only the sampled flag is kept, as the propagator keeps it.
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The trace context of a request's `traceparent` header; `None` when it has none, or not a
/// valid one (a new trace is started then: a bad header never fails a request).
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<SpanContext> {
    headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()).and_then(parse)
}

/// `span` as a `traceparent` value (`00-{trace id}-{span id}-{flags}`), empty for an invalid
/// one: what the propagator writes (a test compares the two), without the `Context`, the carrier
/// and the `tracestate` it would make for it. Every submission writes one: 2,750 instructions
/// through the propagator (docs/benchmark-notes.md, "Thirty-ninth step").
pub fn format(span: &SpanContext) -> String {
    if !span.is_valid() {
        return String::new();
    }
    let mut traceparent = String::with_capacity(55);
    let flags = span.trace_flags() & TraceFlags::SAMPLED;
    write!(traceparent, "00-{}-{}-{flags:02x}", span.trace_id(), span.span_id())
        .expect("a String takes any text");
    traceparent
}

/// The one header the propagator reads a trace context from here, `traceparent`: its carrier
/// without a map to fill and search (for the shapes [`as_written`] does not read).
struct Carrier<'a>(&'a str);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The trace id of a `traceparent` value, 32 lower-case hex digits; `None` when it is not valid.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let span = parse(traceparent)?;
    // The 32 digits `parse` read the id from: as they stand when they are lower-case hex (what
    // W3C allows, and what Courier writes), with no number to format again.
    match traceparent.trim().get(3..35) {
        Some(digits) if lower_hex(digits.as_bytes()) => Some(digits.into()),
        _ => Some(span.trace_id().to_string()),
    }
}

/// The trace context of the code running now (the request or attempt it serves), or a new trace
/// when there is none.
pub fn current() -> SpanContext {
    current_span().unwrap_or_else(|| new_span(None))
}

/// The span context in force now, if any: the current `tracing` span's when spans are
/// exported, else the one [`within`] attached.
fn current_span() -> Option<SpanContext> {
    let span = tracing::Span::current().context().span().span_context().clone();
    if span.is_valid() {
        return Some(span);
    }
    let attached = Context::current().span().span_context().clone();
    attached.is_valid().then_some(attached)
}

/// A new span id in `parent`'s trace (sampled as it is), or in a new sampled trace.
fn new_span(parent: Option<&SpanContext>) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let (trace_id, flags, state) = match parent {
        Some(parent) => (parent.trace_id(), parent.trace_flags(), parent.trace_state().clone()),
        None => (ids.new_trace_id(), TraceFlags::SAMPLED, TraceState::default()),
    };
    SpanContext::new(trace_id, ids.new_span_id(), flags, false, state)
}

/// Starts `span` as a child of `parent` (a remote context: a request's header, a task's stored
/// one), or else of the span in force now; records its `trace_id` field; and returns its
/// context, which [`within`] keeps current while the span's work runs.
pub fn start(span: &tracing::Span, parent: Option<&SpanContext>) -> SpanContext {
    if let Some(parent) = parent {
        // Fails only where no span is exported (no OpenTelemetry layer): ids are made below.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
    }
    let exported = span.context().span().span_context().clone();
    let context =
        if exported.is_valid() { exported } else { new_span(parent.cloned().or_else(current_span).as_ref()) };
    span.record("trace_id", tracing::field::display(context.trace_id()));
    context
}

/// `work` inside `span` whose context is `context` (from [`start`]): its log lines carry the
/// span's fields, and [`current`] answers `context` inside it.
pub fn within<F: Future>(
    work: F,
    span: tracing::Span,
    context: &SpanContext,
) -> impl Future<Output = F::Output> + use<F> {
    use tracing::Instrument as _;
    work.instrument(span).with_context(Context::new().with_remote_span_context(context.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let span = parse(GIVEN).expect("the W3C example is valid");
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled());
        assert_eq!(format(&span), GIVEN);
        assert_eq!(trace_id_of(GIVEN).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    /// The propagator's `traceparent`, the reference [`format`] is checked against.
    fn by_propagator_written(span: &SpanContext) -> String {
        struct Written(String);
        impl opentelemetry::propagation::Injector for Written {
            fn set(&mut self, key: &str, value: String) {
                if key == TRACEPARENT {
                    self.0 = value;
                }
            }
        }
        let mut written = Written(String::new());
        TraceContextPropagator::new()
            .inject_context(&Context::new().with_remote_span_context(span.clone()), &mut written);
        written.0
    }

    #[test]
    fn a_traceparent_is_written_as_the_propagator_writes_it() {
        let given = parse(GIVEN).unwrap();
        let mut spans =
            vec![given.clone(), SpanContext::empty_context(), new_span(None), new_span(Some(&given))];
        for flags in [0x00, 0x01, 0x02, 0x03, 0xff] {
            for (trace, span) in [
                (1u128, 1u64),
                (u128::MAX, u64::MAX),
                (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331),
            ] {
                spans.push(SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(span),
                    TraceFlags::new(flags),
                    true,
                    TraceState::default(),
                ));
            }
        }
        for span in &spans {
            assert_eq!(format(span), by_propagator_written(span), "{span:?}");
        }
        assert_eq!(format(&SpanContext::empty_context()), "", "an invalid context writes nothing");
    }

    #[test]
    fn what_is_not_a_traceparent_is_none() {
        for bad in [
            "",
            "hello",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        let mut headers = axum::http::HeaderMap::new();
        assert!(from_headers(&headers).is_none());
        headers.insert(TRACEPARENT, "nonsense".parse().unwrap());
        assert!(from_headers(&headers).is_none());
        headers.insert(TRACEPARENT, GIVEN.parse().unwrap());
        assert_eq!(from_headers(&headers).map(|s| s.trace_id().to_string()), trace_id_of(GIVEN));
    }

    /// `parse` reads what the propagator reads (of the values shaped as the W3C format is), on the
    /// shape Courier writes and on every string one character away from it (each place set to a
    /// digit, a letter of either case, a sign, a space, a dash), and on the flags' every value.
    #[test]
    fn a_traceparent_reads_as_the_propagator_reads_it() {
        let expected = |traceparent: &str| {
            let traceparent = traceparent.trim();
            let span = by_propagator(traceparent);
            (shaped(traceparent) && span.is_valid()).then_some(span)
        };
        let mut inputs: Vec<String> = Vec::new();
        for at in 0..GIVEN.len() {
            for c in ['0', '7', 'a', 'f', 'g', 'A', 'F', '+', ' ', '-'] {
                let mut input = GIVEN.to_string();
                input.replace_range(at..at + 1, &c.to_string());
                inputs.push(input);
            }
        }
        inputs.extend((0..=255u8).map(|flags| format!("{}{flags:02x}", &GIVEN[..53])));
        inputs.extend([format!("{GIVEN}-extra"), format!("01{}", &GIVEN[2..]), format!(" {GIVEN} ")]);
        for input in &inputs {
            assert_eq!(parse(input), expected(input), "{input:?}");
        }
        assert!(as_written(GIVEN).is_some(), "the shape Courier writes takes the short way");
    }

    #[test]
    fn a_trace_id_is_the_one_the_propagator_reads() {
        for traceparent in [
            GIVEN,
            "  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "00-0000000000000000000000000000000a-00f067aa0ba902b7-00",
            // Digits the propagator parses but W3C does not write: read as a number, written back.
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "nonsense",
        ] {
            let expected = parse(traceparent).map(|span| span.trace_id().to_string());
            assert_eq!(trace_id_of(traceparent), expected, "{traceparent:?}");
        }
        let plus = parse("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            plus.map(|span| span.trace_id().to_string()).as_deref(),
            Some("0bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn a_span_started_without_an_exporter_continues_its_parent_s_trace_with_an_id_of_its_own() {
        let parent = parse(GIVEN).unwrap();
        let child = start(&tracing::Span::none(), Some(&parent));
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert!(child.is_valid() && child.is_sampled());
        // Without a parent nor a context in force: a new trace.
        let root = start(&tracing::Span::none(), None);
        assert!(root.is_valid());
        assert_ne!(root.trace_id(), parent.trace_id());
    }

    #[tokio::test]
    async fn within_a_span_s_work_the_current_context_is_the_span_s() {
        let parent = parse(GIVEN).unwrap();
        let context = start(&tracing::Span::none(), Some(&parent));
        let inside = within(async { current() }, tracing::Span::none(), &context).await;
        assert_eq!(inside, context);
        // A span started inside continues the trace.
        let nested =
            within(async { start(&tracing::Span::none(), None) }, tracing::Span::none(), &context).await;
        assert_eq!(nested.trace_id(), parent.trace_id());
        assert_ne!(nested.span_id(), context.span_id());
        // Outside, a new trace each time.
        assert_ne!(current().trace_id(), parent.trace_id());
    }
}
