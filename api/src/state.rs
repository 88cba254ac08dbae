//! What every handler shares: the job queue, the model directory, the policy gate, the
//! operator's limits and the broker connections.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use switchyard_openai::Limits;

use crate::directory::{Directory, ModelEntry};
use crate::error::ApiError;
use crate::policy::{Caller, Gate};
use switchyard_client::Jobs;

/// Behind one `Arc`, so that handing it to a request is one count.
pub type AppState = Arc<ApiState>;

pub struct ApiState {
    pub jobs: Arc<Jobs>,
    pub directory: Directory,
    pub gate: Arc<Gate>,
    pub limits: Limits,
    /// Most rounds of hosted function calls in one chat request.
    pub max_tool_rounds: u32,
    pub files: switchyard_broker::files::FileStore,
    pub files_limits: FilesLimits,
    pub batches: switchyard_scheduler::batches::store::BatchStore,
    /// The `completion_window`s a batch may ask for, as written and as durations.
    pub batch_windows: Vec<(String, std::time::Duration)>,
    pub async_jobs: crate::job_store::AsyncJobs,
    pub nats: async_nats::Client,
    pub redis: switchyard_broker::Redis,
}

/// How large the files and batches this api takes may be.
#[derive(Debug, Clone, Copy)]
pub struct FilesLimits {
    pub max_file_bytes: u64,
    pub max_batch_requests: u64,
}

impl ApiState {
    /// The card of a model the registry knows, whoever asks (for a job already accepted).
    pub async fn card_of(&self, name: &str) -> Option<switchyard_schemas::ModelCard> {
        self.directory.lookup(name).await.ok().map(|entry| entry.card)
    }

    /// The model a request names, if the caller may use it (otherwise it does not exist, as far
    /// as this caller can tell). Whether it serves the endpoint is the request's validation.
    pub async fn model_for(&self, caller: &Caller, name: &str) -> Result<ModelEntry, ApiError> {
        let entry = self.directory.lookup(name).await?;
        if !caller.may_use(&entry.card) {
            return Err(ApiError::ModelNotFound(name.to_string()));
        }
        Ok(entry)
    }
}

/// A handler's caller, authenticated by the gate from the `Authorization` header.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.gate.authenticate(parts.headers.get(header::AUTHORIZATION)).await
    }
}
