//! The one trait every backend implements.

use async_trait::async_trait;
use switchyard_schemas::{ErrorCode, FinishReason, JobEnvelope, ModelCard, ResumeState, UpstreamError, Usage};
use tokio_util::sync::CancellationToken;

use crate::sink::EventSink;

/// A job as a backend sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub envelope: JobEnvelope,
    /// 1 on first delivery; higher when an earlier worker died or handed the job back.
    pub attempt: u32,
    /// On a redelivered job: what the client has already received. The backend continues
    /// after `resume.text` (it must not emit that text again) and counts
    /// `resume.completion_tokens` into its usage.
    pub resume: Option<ResumeState>,
}

/// How a job ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// A job failure, reported to the client as an error event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    pub code: ErrorCode,
    pub message: String,
    /// With [`ErrorCode::Upstream`]: what the upstream server answered.
    /// Boxed: an upstream answer is rare, and inline it would make every `Result<_, BackendError>` large.
    pub upstream: Option<Box<UpstreamError>>,
    /// Give the job back to the queue instead of failing it, to be delivered again (to this
    /// worker or another) after this long — unless this was its last delivery, which reports
    /// the error. Only for a job that has sent nothing yet: see [`BackendError::hand_back`].
    pub hand_back: Option<std::time::Duration>,
}

impl BackendError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), upstream: None, hand_back: None }
    }

    /// An upstream server's error answer, passed on with its status and fields.
    pub fn upstream(message: impl Into<String>, upstream: impl Into<Box<UpstreamError>>) -> Self {
        Self { code: ErrorCode::Upstream, message: message.into(), upstream: Some(upstream.into()), hand_back: None }
    }

    /// This error, but the job goes back to the queue for another try after `after` when it
    /// has deliveries left. A backend returns it only before the job's first output event:
    /// the next worker starts the job from the beginning.
    pub fn hand_back(self, after: std::time::Duration) -> Self {
        Self { hand_back: Some(after), ..self }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for BackendError {}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name shown in the registry and `switchyard worker --list` (`echo`, `torch`, …).
    fn name(&self) -> &'static str;

    /// The models this backend serves; the runtime registers them and pulls jobs for each.
    fn models(&self) -> Vec<ModelCard>;

    /// While this is `Some`, the runtime pulls no jobs of `model` for that long, then asks
    /// again: a backend whose upstream keeps failing cools down, and the model's jobs wait in
    /// the queue or go to its other workers. Called before every pull; keep it cheap.
    fn paused(&self, model: &str) -> Option<std::time::Duration> {
        let _ = model;
        None
    }

    /// Runs one job to its end, writing text (or vectors) to `sink`.
    ///
    /// Contract: return promptly — within one decoding step — once `cancel` fires, with
    /// `FinishReason::Cancelled`; never emit text the job's `resume` says was already sent;
    /// report usage as real token counts. The runtime sends the `started`, `done` and `error`
    /// events itself.
    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError>;
}
