//! Span export over OTLP/HTTP (protobuf), on when `--otlp-endpoint` (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector. Spans go through the
//! SDK's batch processor, on a thread of its own with a bounded queue: an
//! exporter that is slow or down drops spans, it never slows or fails a
//! request. [`flush`] at the end of the drain sends what is queued, so the
//! spans of the last requests are not lost.

use std::{sync::OnceLock, time::Duration};

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported: the request span is made only then (at
/// info level; otherwise a debug span, free when debug logging is off).
pub(crate) fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// The traces URL for `endpoint`: as given when it ends in `/v1/traces`,
/// else that path added (the standard variable names a base URL).
pub(crate) fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The tracing layer that exports spans to `endpoint`.
pub(crate) fn layer<S>(
    endpoint: &str,
) -> anyhow::Result<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let url = traces_url(endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("cannot export spans to {url:?} (--otlp-endpoint)"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("lameduck").build())
        .build();
    let tracer = provider.tracer("lameduck");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans still queued and stops the exporter; call once the
/// drain is over, outside the async runtime (the exporter's HTTP client
/// blocks).
pub(crate) fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.force_flush() {
            tracing::warn!(error = %e, "otlp.flush_failed");
        }
        let _ = provider.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_base_url() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
