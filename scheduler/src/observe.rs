//! The scheduler's view of the whole system as Prometheus gauges, refreshed every few seconds:
//! each lane's queue depth read from its durable consumer, each model's live workers and
//! slots from the registry, and the batches not yet ended with their request counts. A series
//! whose subject disappears (a consumer deleted, a model gone) drops to 0 rather than keeping
//! its last value.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use switchyard_broker::registry::Registry;
use switchyard_telemetry::names;
use tracing::warn;

use crate::batches::Batches;

/// Labels of one gauge sample.
type Labels = Vec<(&'static str, String)>;

/// Gauge values of one refresh, by metric name and labels.
#[derive(Default)]
struct Sample {
    values: BTreeMap<(&'static str, Labels), f64>,
}

impl Sample {
    /// Adds `value` to the sample of `name` with `labels` (several workers add to one model's).
    fn add(&mut self, name: &'static str, labels: Labels, value: f64) {
        *self.values.entry((name, labels)).or_default() += value;
    }
}

/// Refreshes the gauges every `every` until the task is aborted.
pub(crate) async fn run(js: jetstream::Context, registry: Registry, batches: Arc<Batches>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    let mut previous: HashSet<(&'static str, Labels)> = HashSet::new();
    loop {
        ticker.tick().await;
        let sample = sample(&js, &registry, &batches).await;
        let current: HashSet<_> = sample.values.keys().cloned().collect();
        for gone in previous.difference(&current) {
            metrics::gauge!(gone.0, &gone.1).set(0.0);
        }
        for ((name, labels), value) in sample.values {
            metrics::gauge!(name, &labels).set(value);
        }
        previous = current;
    }
}

async fn sample(js: &jetstream::Context, registry: &Registry, batches: &Batches) -> Sample {
    let mut sample = Sample::default();
    match switchyard_broker::lanes::lane_depths(js).await {
        Ok(depths) => {
            for depth in depths {
                let labels = vec![("model", depth.model), ("kind", depth.kind.as_str().into()), ("lane", depth.lane.as_str().into())];
                sample.add(names::LANE_PENDING, labels.clone(), depth.pending as f64);
                sample.add(names::LANE_ACK_PENDING, labels, depth.ack_pending as f64);
            }
        }
        Err(e) => warn!(error = %e, "reading the lanes' depths failed"),
    }
    match registry.live_workers().await {
        Ok(workers) => {
            for worker in workers {
                for card in &worker.models {
                    let labels = vec![("model", card.name.clone())];
                    sample.add(names::MODEL_WORKERS, labels.clone(), 1.0);
                    sample.add(names::MODEL_SLOTS, labels.clone(), f64::from(worker.slots));
                    sample.add(names::MODEL_SLOTS_IN_USE, labels, f64::from(worker.busy));
                }
            }
        }
        Err(e) => warn!(error = %e, "reading the registry failed"),
    }
    match batches.unfinished().await {
        Ok(records) => {
            for record in records {
                let status =
                    serde_json::to_value(record.batch.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                sample.add(names::BATCHES, vec![("status", status)], 1.0);
                let counts = record.batch.request_counts;
                for (state, count) in [("total", counts.total), ("completed", counts.completed), ("failed", counts.failed)] {
                    sample.add(names::BATCH_REQUESTS, vec![("state", state.into())], count as f64);
                }
            }
        }
        Err(e) => warn!(error = %e, "reading the batches failed"),
    }
    sample
}
