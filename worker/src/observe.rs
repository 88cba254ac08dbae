//! What a worker tells its operator: its metrics (named in `switchyard_telemetry::names`) and,
//! with `--metrics-listen`, an HTTP endpoint serving `/metrics`, `/health` (the process is up)
//! and `/ready` (registered and pulling jobs; 503 before, and while draining).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::http::StatusCode;
use metrics::{Counter, Gauge};
use switchyard_schemas::{Lane, ModelCard};
use switchyard_telemetry::names;
use tokio_util::sync::CancellationToken;

/// The worker's metric handles, made once at start for each of its models.
pub(crate) struct WorkerMetrics {
    slots_in_use: Gauge,
    models: HashMap<String, ModelCounters>,
}

struct ModelCounters {
    /// Jobs started, per lane (in [`Lane::ALL`]'s order).
    jobs: [Counter; 2],
    redeliveries: Counter,
    handed_back: Counter,
}

impl WorkerMetrics {
    pub(crate) fn new(slots: u32, models: &[ModelCard]) -> Self {
        metrics::gauge!(names::WORKER_SLOTS).set(f64::from(slots));
        let models = models
            .iter()
            .map(|card| {
                let model = card.name.clone();
                let counters = ModelCounters {
                    jobs: Lane::ALL.map(|lane| metrics::counter!(names::WORKER_JOBS, "model" => model.clone(), "lane" => lane.as_str())),
                    redeliveries: metrics::counter!(names::REDELIVERIES, "model" => model.clone()),
                    handed_back: metrics::counter!(names::HANDED_BACK, "model" => model.clone()),
                };
                (model, counters)
            })
            .collect();
        Self { slots_in_use: metrics::gauge!(names::WORKER_SLOTS_IN_USE), models }
    }

    /// A job of `model` took a slot (delivery `attempt`).
    pub(crate) fn started(&self, model: &str, lane: Lane, attempt: u32) {
        self.slots_in_use.increment(1.0);
        if let Some(counters) = self.models.get(model) {
            counters.jobs[lane as usize].increment(1);
            if attempt > 1 {
                counters.redeliveries.increment(1);
            }
        }
    }

    /// The job left its slot, finished or `handed_back` to the queue.
    pub(crate) fn ended(&self, model: &str, handed_back: bool) {
        self.slots_in_use.decrement(1.0);
        if handed_back && let Some(counters) = self.models.get(model) {
            counters.handed_back.increment(1);
        }
    }
}

/// Serves `/metrics`, `/health` and `/ready` on `listen` until `shutdown`.
pub(crate) async fn serve(listen: SocketAddr, ready: Arc<AtomicBool>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(switchyard_telemetry::prometheus::metrics_handler))
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move { if ready { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") } }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--metrics-listen {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "worker metrics and probes ready");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
