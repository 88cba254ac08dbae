//! Every Redis key Switchyard uses. Nobody else formats one.

/// Sorted set of live workers: member = worker id, score = expiry time in ms.
pub const WORKERS: &str = "sy:workers";
/// Hash of every model ever announced: field = model name, value = encoded
/// [`crate::ModelCard`] with the time it was last seen alive.
pub const MODELS: &str = "sy:models";

/// One worker's [`crate::WorkerRecord`], with a TTL refreshed by its heartbeat.
pub fn worker(worker_id: &str) -> String {
    format!("sy:worker:{worker_id}")
}

/// A job's cancellation flag.
pub fn cancel(job_id: &str) -> String {
    format!("sy:cancel:{job_id}")
}
