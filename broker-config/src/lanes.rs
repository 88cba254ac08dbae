//! How deep each lane's queue is, read from JetStream itself: every durable job consumer's
//! pending (published, not yet delivered) and ack-pending (delivered, not yet acknowledged)
//! counts, as KEDA's NATS JetStream scaler reads them.

use async_nats::jetstream;
use futures::TryStreamExt;
use switchyard_schemas::{JobKind, Lane, subject};

use crate::BrokerError;

/// One lane of one model, as its durable consumer reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaneDepth {
    pub model: String,
    pub kind: JobKind,
    pub lane: Lane,
    /// Jobs waiting for a worker to pull them.
    pub pending: u64,
    /// Jobs a worker holds and has not acknowledged yet (running, or waiting for a slot).
    pub ack_pending: u64,
    /// Pull requests waiting for jobs: a sign of idle workers.
    pub waiting_pulls: u64,
}

/// Every job consumer of the jobs stream with its depth, sorted by model, kind and lane. One
/// JetStream API request per 256 consumers.
pub async fn lane_depths(js: &jetstream::Context) -> Result<Vec<LaneDepth>, BrokerError> {
    let fail = |e: &dyn std::fmt::Display| BrokerError::JetStream(format!("reading the consumers of {}: {e}", subject::JOBS_STREAM));
    let stream = js.get_stream(subject::JOBS_STREAM).await.map_err(|e| fail(&e))?;
    let mut depths: Vec<LaneDepth> = stream
        .consumers()
        .map_err(|e| fail(&e))
        .try_filter_map(|info| async move {
            Ok(subject::parse_job_consumer(&info.name).map(|(lane, kind, model)| LaneDepth {
                model,
                kind,
                lane,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                waiting_pulls: info.num_waiting as u64,
            }))
        })
        .try_collect()
        .await?;
    depths.sort_by(|a, b| (&a.model, a.kind.as_str(), a.lane.as_str()).cmp(&(&b.model, b.kind.as_str(), b.lane.as_str())));
    Ok(depths)
}
