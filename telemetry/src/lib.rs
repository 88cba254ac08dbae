//! What every Switchyard part tells its operator about itself.
//!
//! * [`init`]: the process's log and trace subscriber: `tracing` lines on stderr (filtered by
//!   `SWITCHYARD_LOG`), and with `--otlp-endpoint` its spans exported over OTLP/HTTP.
//! * [`trace_context`]: the W3C `traceparent` a job envelope carries from the span that
//!   submitted the job into the worker's span, so one trace follows a job through the queue.
//!   Free when no exporter is configured: nothing is read, made or sent.
//! * [`prometheus`]: the process's metrics recorder (the `metrics` facade,
//!   `metrics-exporter-prometheus`) and its `/metrics` text.
//! * [`jobs`]: per-model request metrics of a job's life as its submitter (the api, the
//!   scheduler, a direct publisher) sees it, and the last minute of them for the status page.
//! * [`names`]: every metric name, with its help text.

pub mod jobs;
pub mod names;
pub mod prometheus;
pub mod trace_context;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Flags every part takes for its telemetry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryOptions {
    /// Export spans over OTLP/HTTP (protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added to a URL without a path). Off by default: no trace context is made.
    #[arg(long, global = true, env = "SWITCHYARD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

static TRACING_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: only then is trace context made and carried.
pub fn traces_exported() -> bool {
    TRACING_EXPORTED.load(Ordering::Relaxed)
}

/// Flushes exported spans when the process ends.
#[must_use = "dropping the guard flushes and stops the span exporter"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing the last spans to the OTLP collector failed: {e}");
        }
    }
}

/// Installs the log subscriber, and the OTLP span exporter when `options` names a collector.
/// `service` is the `service.name` spans are exported under (`switchyard-api`, …). Call it once,
/// before any runtime starts (the exporter runs on a thread of its own).
pub fn init(service: &str, options: &TelemetryOptions) -> anyhow::Result<Telemetry> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let Some(endpoint) = options.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(filter).with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    use opentelemetry_otlp::WithExportConfig as _;
    // reqwest is built without a TLS crypto provider of its own (see cli/Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = traces_url(endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build())
        .build();
    let tracer = provider.tracer("switchyard");
    // Spans only: the exporter's own log lines stay in the fmt layer's filter.
    let spans = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(filter).with(logs).with(spans).init();
    TRACING_EXPORTED.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, service, "exporting spans over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The collector's traces URL: OTLP/HTTP's `/v1/traces` unless the URL names a path.
fn traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(slash) if after_scheme.len() > slash + 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

use tracing_subscriber::Layer as _;

#[cfg(test)]
mod tests {
    #[test]
    fn traces_url_adds_the_signal_path_only_when_missing() {
        assert_eq!(super::traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(super::traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(super::traces_url("http://c:4318/otlp/v1/traces"), "http://c:4318/otlp/v1/traces");
    }
}
