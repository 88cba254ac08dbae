//! The process's metrics recorder and its Prometheus text. Until [`install`] runs, every
//! `metrics` call in the process is a no-op costing one atomic load.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from the job path's fraction of a millisecond to a long
/// generation's minutes.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0, 300.0];

/// Row-count buckets of [`crate::names::ENGINE_DECODE_ROWS`].
pub const ROW_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process; later calls return the same handle) and starts
/// the thread that folds recorded histogram samples in every few seconds.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the latency buckets are not empty")
            .set_buckets_for_metric(Matcher::Full(crate::names::ENGINE_DECODE_ROWS.into()), ROW_BUCKETS)
            .expect("the row buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        crate::names::describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("starting the metrics upkeep thread");
        handle
    })
}

/// The Prometheus text exposition of every metric, or `None` before [`install`].
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// `GET /metrics`, for any router: the exposition text, with Prometheus's content type.
pub async fn metrics_handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    match render() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "metrics are off in this process\n").into_response(),
    }
}
