//! OpenAI's batch object and the lines of a batch's output and error files, as `/v1/batches`
//! answers and the files hold them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_broker::new_id;

/// Where a batch is in its life. `validating` → `in_progress` → `finalizing` → `completed`;
/// `failed` when its input file does not validate; `expired` when the completion window ends
/// first; `cancelling` → `cancelled` after a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// A batch in a terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, BatchStatus::Failed | BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled)
    }
}

/// The batch object of OpenAI's Batch API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Batch {
    /// `batch_` and a UUID v7.
    pub id: String,
    /// Always `batch`.
    pub object: String,
    pub endpoint: String,
    /// Why validation failed, with the input file's line numbers.
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: String,
    pub data: Vec<BatchError>,
}

/// One reason a batch's input file was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file.
    pub line: Option<u64>,
}

impl BatchError {
    /// An error about the input file as a whole.
    pub fn of_file(code: &str, message: &str) -> Self {
        BatchError { code: code.into(), message: message.into(), param: None, line: None }
    }
}

/// A line of a batch's output file (status 200) or error file (any other status, or a line
/// that never ran: `error` set, `response` null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputLine {
    /// `batch_req_` and a UUID v7.
    pub id: String,
    pub custom_id: String,
    pub response: Option<LineResponse>,
    pub error: Option<LineError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineResponse {
    pub status_code: u16,
    pub request_id: String,
    /// Exactly the body the synchronous endpoint answers with, or its error body.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineError {
    /// `batch_expired` or `batch_cancelled`.
    pub code: String,
    pub message: String,
}

/// Why a line never ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    Expired,
    Cancelled,
}

impl OutputLine {
    pub fn answered(custom_id: String, status_code: u16, body: serde_json::Value) -> Self {
        let response = LineResponse { status_code, request_id: new_id("req_"), body };
        OutputLine { id: new_id("batch_req_"), custom_id, response: Some(response), error: None }
    }

    pub fn not_run(custom_id: String, why: NotRun) -> Self {
        let (code, message) = match why {
            NotRun::Expired => ("batch_expired", "This request could not be executed before the completion window expired."),
            NotRun::Cancelled => ("batch_cancelled", "This request was not executed because the batch was cancelled."),
        };
        let error = LineError { code: code.into(), message: message.into() };
        OutputLine { id: new_id("batch_req_"), custom_id, response: None, error: Some(error) }
    }

    /// Whether the line belongs in the output file (else in the error file).
    pub fn succeeded(&self) -> bool {
        self.response.as_ref().is_some_and(|response| response.status_code == 200)
    }
}
