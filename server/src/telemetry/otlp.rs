//! The OTLP/HTTP span exporter: spans batched on the SDK's own thread and sent, as protobuf, by
//! the workspace's reqwest client on the process's tokio runtime.

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use std::time::Duration;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer read (it is a short protobuf message).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A tracer provider exporting to `endpoint` (an OTLP/HTTP traces URL) in batches. The service
/// is `courier` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) names it.
pub(super) fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .user_agent(concat!("courier/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow::anyhow!("the span exporter starts inside the tokio runtime"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { client, runtime })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let resource = match named {
        true => Resource::builder().build(),
        false => Resource::builder().with_service_name("courier").build(),
    };
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Sends the exporter's requests with reqwest on the tokio runtime: the batch processor runs
/// exports on a thread of its own, where no runtime is.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let mut response = client.execute(reqwest::Request::try_from(request)?).await?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(HttpError::from("the collector's answer is larger than 1 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::new(Bytes::from(body));
            *answer.status_mut() = response.status();
            *answer.headers_mut() = std::mem::take(response.headers_mut());
            Ok(answer)
        });
        sent.await.map_err(HttpError::from)?
    }
}
