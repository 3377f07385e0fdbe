//! Where a process's log lines and spans go: log lines to standard output as text or JSON
//! (`--log-format`, filtered by `RUST_LOG`), spans over OTLP/HTTP when `--otlp-endpoint` is set.

mod json;
mod otlp;
mod text;

use crate::config::LogFormat;
use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal as _;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::Targets,
    fmt::{self, format::JsonFields},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// What was set up for the process: flushed and stopped by [`Telemetry::shutdown`].
#[must_use = "call shutdown() before the process exits, or spans still batched are lost"]
pub struct Telemetry {
    /// The span exporter, when `--otlp-endpoint` is set.
    spans: Option<SdkTracerProvider>,
}

/// Starts logging (to standard output, as `format` says, filtered by `RUST_LOG`, `info` by
/// default) and, given an OTLP/HTTP traces URL, the export of Courier's spans there. Call it once,
/// inside the tokio runtime.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    // Each layer filters for itself: `RUST_LOG=warn` quiets the log, not the exported spans.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = match format {
        LogFormat::Text => {
            fmt::layer().with_ansi(colours()).fmt_fields(text::TextFields).with_filter(filter).boxed()
        }
        LogFormat::Json => fmt::layer()
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson)
            .with_filter(filter)
            .boxed(),
    };
    let spans = otlp_endpoint
        .map(|endpoint| otlp::provider(endpoint).context("starting the OTLP span exporter"))
        .transpose()?;
    // Courier's own spans only (a request, an attempt, a push, a lease), with the log lines
    // inside them as their events; the libraries' spans stay out of the traces.
    let exported = spans.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("courier"))
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target("courier", Level::INFO))
    });
    tracing_subscriber::registry().with(log).with(exported).try_init().context("starting the log")?;
    if let Some(endpoint) = otlp_endpoint {
        // Not at `info`: `courier token create` prints its token alone on standard output.
        tracing::debug!(otlp.endpoint = %endpoint, "exporting spans over OTLP");
    }
    Ok(Telemetry { spans })
}

/// Whether text log lines are coloured: on a terminal, unless `NO_COLOR` is set (no-color.org).
/// Written anywhere else (a pipe, a file, a log collector), escape codes would garble the lines,
/// and colouring each attempt's span fields cost a worker a twentieth of its instructions a task
/// at `info` (docs/benchmark-notes.md, "Forty-third step").
fn colours() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// How long a stopping process waits for its last spans to be sent.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Telemetry {
    /// Exports the spans still batched (waiting up to 5 s: an unreachable collector does not
    /// hold the process up for long) and stops.
    pub async fn shutdown(self) {
        let Some(provider) = self.spans else { return };
        // The exporter's thread sends through this runtime: wait for it off the runtime's threads.
        match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_WAIT)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "exporting the last spans failed"),
            Err(e) => tracing::warn!(error = %e, "stopping the span exporter failed"),
        }
    }
}
