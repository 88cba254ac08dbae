//! The records of `/v1/jobs` jobs, in a key-value bucket that keeps them for the configured
//! retention, beside the events stream their workers' events land in.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchyard_openai::endpoint::Endpoint;
use switchyard_schemas::subject;

use crate::error::ApiError;

/// A job as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub owner: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub body: Box<RawValue>,
    /// How many worker jobs it is (choices, or prompts × choices).
    pub parts: usize,
    /// The response id and time the result carries (`chatcmpl-…`), fixed when it was taken.
    pub response_id: Option<String>,
    pub response_created: u64,
    pub created_at: u64,
    pub cancelled_at: Option<u64>,
}

/// The job records and the events stream.
#[derive(Clone)]
pub struct AsyncJobs {
    pub js: jetstream::Context,
    pub records: kv::Store,
    pub retention: Duration,
}

impl AsyncJobs {
    /// Opens (creating where missing) the record bucket and the events stream, both keeping
    /// what they hold for `retention`.
    pub async fn open(js: &jetstream::Context, retention: Duration) -> Result<AsyncJobs, switchyard_broker::BrokerError> {
        switchyard_broker::jobs::ensure_events_stream(js, retention).await?;
        let records =
            switchyard_broker::key_value(js, subject::ASYNC_JOBS_BUCKET, "Switchyard's /v1/jobs: one record per job", retention).await?;
        Ok(AsyncJobs { js: js.clone(), records, retention })
    }

    pub async fn record(&self, id: &str) -> Result<Option<(JobRecord, u64)>, ApiError> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || id.len() > 64 {
            return Ok(None);
        }
        let entry = self.records.entry(id).await.map_err(unavailable)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value).map_err(|e| ApiError::Internal(format!("unreadable job record: {e}")))?;
                Ok(Some((record, entry.revision)))
            }
            _ => Ok(None),
        }
    }
}

pub fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("The job store is unavailable: {error}"))
}

/// The worker job id of part `index` of `job_id`: cancel flags and logs carry it.
pub fn part_id(job_id: &str, index: usize) -> String {
    format!("{job_id}-{index}")
}
