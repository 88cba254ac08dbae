//! The two failures this crate decides, in OpenAI's terms: [`Invalid`], a request refused
//! before any job runs, and [`JobFailure`], a job that ended with an `error` event. Each has
//! its HTTP status and OpenAI's error body, so the api and the scheduler's batch output lines
//! report them alike.

use switchyard_schemas::{ErrorCode, UpstreamError};

use crate::response::ErrorResponse;

/// A request that cannot be served as sent: 400, `invalid_request_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub message: String,
    /// The offending parameter (`messages[0].role`), when one is to blame.
    pub param: Option<String>,
    /// A more precise reason than the type, such as `context_length_exceeded`.
    pub code: Option<&'static str>,
}

impl Invalid {
    /// A request refused because of `param`.
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { message: message.into(), param: Some(param.into()), code: None }
    }

    /// A request refused as a whole (broken JSON), naming no parameter.
    pub fn unnamed(message: impl Into<String>) -> Self {
        Invalid { message: message.into(), param: None, code: None }
    }

    /// The same refusal of a request that came as the `body` of a batch line or a job: its
    /// `param` put under `body.`.
    pub fn in_body(self) -> Self {
        let param = self.param.as_deref().map_or_else(|| "body".to_string(), |p| format!("body.{p}"));
        Invalid { param: Some(param), ..self }
    }

    pub fn status(&self) -> u16 {
        400
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse::new(self.message.clone(), "invalid_request_error", self.param.clone(), self.code)
    }
}

/// A job's `error` event, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub code: ErrorCode,
    pub message: String,
    /// The prompt's parameter (`messages`, `prompt`, `input`) when the prompt itself is at
    /// fault (too long for the model's context).
    pub param: Option<String>,
    /// What an upstream server answered, when it is the upstream that failed: its status and
    /// error fields are the client's. Boxed: it is rare, and inline it would make every
    /// `Result<_, JobFailure>` (and the api's `ApiError`) large.
    pub upstream: Option<Box<UpstreamError>>,
}

impl JobFailure {
    /// The failure a job reported; `prompt_param` names the request's prompt (see
    /// [`Reply::prompt_param`](crate::plan::Reply::prompt_param)).
    pub fn new(code: ErrorCode, message: String, upstream: Option<UpstreamError>, prompt_param: &str) -> Self {
        let param = match &upstream {
            Some(upstream) => upstream.param.clone(),
            None => (code == ErrorCode::ContextLengthExceeded).then(|| prompt_param.to_string()),
        };
        JobFailure { code, message, param, upstream: upstream.map(Box::new) }
    }

    /// The worker's events did not make sense (a worker bug, never the client's fault).
    pub fn stream(message: String) -> Self {
        JobFailure { code: ErrorCode::BackendError, message, param: None, upstream: None }
    }

    pub fn status(&self) -> u16 {
        if let Some(upstream) = &self.upstream {
            return upstream.status;
        }
        match self.code {
            ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded | ErrorCode::InvalidArguments => 400,
            ErrorCode::UnknownFunction => 404,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::StreamGap | ErrorCode::MaxDeliveriesExceeded => 502,
            ErrorCode::Cancelled | ErrorCode::BackendError | ErrorCode::FunctionFailed | ErrorCode::MalformedToolCall => 500,
            // An upstream error always says how (above); without it, the upstream is unreachable.
            ErrorCode::Upstream => 502,
        }
    }

    pub fn body(&self) -> ErrorResponse {
        if let Some(upstream) = &self.upstream {
            let kind = upstream
                .r#type
                .clone()
                .unwrap_or_else(|| if upstream.status < 500 { "invalid_request_error" } else { "server_error" }.into());
            let code = upstream.code.clone().unwrap_or_else(|| self.code.as_str().into());
            return ErrorResponse::new(self.message.clone(), kind, self.param.clone(), Some(code));
        }
        let kind = match self.code {
            ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded | ErrorCode::InvalidArguments | ErrorCode::UnknownFunction => {
                "invalid_request_error"
            }
            _ => "server_error",
        };
        ErrorResponse::new(self.message.clone(), kind, self.param.clone(), Some(self.code.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_too_long_names_the_prompt() {
        let failure = JobFailure::new(ErrorCode::ContextLengthExceeded, "too long".into(), None, "messages");
        assert_eq!(failure.status(), 400);
        let body = serde_json::to_value(failure.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": { "message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded" } })
        );
    }

    #[test]
    fn worker_failures_are_server_errors() {
        let failure = JobFailure::new(ErrorCode::MaxDeliveriesExceeded, "gave up".into(), None, "prompt");
        assert_eq!(failure.status(), 502);
        let body = serde_json::to_value(failure.body()).unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
        assert_eq!(body["error"]["code"], "max_deliveries_exceeded");
    }

    #[test]
    fn an_upstream_error_keeps_the_upstreams_status_and_fields() {
        let upstream = UpstreamError { status: 429, r#type: Some("rate_limit_error".into()), code: None, param: None };
        let failure = JobFailure::new(ErrorCode::Upstream, "slow down".into(), Some(upstream), "messages");
        assert_eq!(failure.status(), 429);
        let body = serde_json::to_value(failure.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "error": { "message": "slow down", "type": "rate_limit_error", "param": null, "code": "upstream_error" } })
        );
        let upstream = UpstreamError { status: 400, r#type: None, code: Some("bad_temp".into()), param: Some("temperature".into()) };
        let body = serde_json::to_value(JobFailure::new(ErrorCode::Upstream, "no".into(), Some(upstream), "messages").body()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!((&body["error"]["code"], &body["error"]["param"]), (&serde_json::json!("bad_temp"), &serde_json::json!("temperature")));
    }
}
