//! Job cancellation: a flag in Redis (so a job still queued is skipped when a worker pulls it)
//! and an announcement on NATS (so the worker running it stops within one step).

use crate::Redis;
use redis::AsyncCommands;
use switchyard_schemas::{keys, subject};

use crate::BrokerError;

/// How long a cancel flag outlives the job's request; longer than any job waits in the queue.
const FLAG_TTL_SECS: u64 = 24 * 3600;

/// Marks `job_id` cancelled and tells the workers. Each half is tried even if the other
/// fails: with Redis down, the announcement still stops a running job (and workers remember
/// it for a job they pull later).
pub async fn cancel_job(redis: &Redis, nats: &async_nats::Client, job_id: &str) -> Result<(), BrokerError> {
    let mut redis = redis.clone();
    let flag = redis.set_ex::<_, _, ()>(keys::cancel(job_id), 1u8, FLAG_TTL_SECS);
    let announcement = nats.publish(subject::cancel(job_id), Default::default());
    let (flag, announcement) = tokio::join!(flag, announcement);
    announcement.map_err(|e| BrokerError::Nats(format!("announcing cancellation: {e}")))?;
    Ok(flag?)
}

/// Only announces the cancellation of `job_id` on NATS, for a publisher without Redis access:
/// a running job stops, and workers that heard it skip the job if they pull it later (for ten
/// minutes), but a worker that starts afterwards would still run it.
pub async fn announce_cancel(nats: &async_nats::Client, job_id: &str) -> Result<(), BrokerError> {
    nats.publish(subject::cancel(job_id), Default::default()).await.map_err(|e| BrokerError::Nats(format!("announcing cancellation: {e}")))
}

/// Whether `job_id` was cancelled.
pub async fn is_cancelled(redis: &Redis, job_id: &str) -> Result<bool, BrokerError> {
    Ok(redis.clone().exists(keys::cancel(job_id)).await?)
}
