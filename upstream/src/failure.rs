//! What went wrong with an upstream request, whether trying again may help, and what the
//! client is told: the upstream's own status and error fields, never its error as chat text.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use switchyard_schemas::{ErrorCode, UpstreamError};
use switchyard_worker::BackendError;

/// One failed upstream request.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No answer: the connection was refused, reset or timed out before a status came.
    Unreachable(String),
    /// An error status, with the upstream's error body.
    /// The error is boxed here and on: it is rare, and inline it would make every result large.
    Status { error: Box<UpstreamError>, message: String, retry_after: Option<Duration> },
    /// The answer broke off or made no sense after it began.
    Broken(String),
    /// The upstream sent an error inside a stream it had begun (status 200 already sent):
    /// passed on as a 502 with its fields.
    InStream { error: Box<UpstreamError>, message: String },
}

impl Failure {
    /// From an error status's headers and body (OpenAI's `{"error": {…}}`, or the flat
    /// `{"message", "type", "code"}` some servers answer, or plain text).
    pub fn from_status(status: u16, headers: &HeaderMap, body: &str) -> Failure {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let object = parsed.as_ref().and_then(|body| match body.get("error") {
            Some(error @ Value::Object(_)) => Some(error),
            Some(_) | None => body.get("message").is_some().then_some(body),
        });
        let text = |key: &str| object.and_then(|o| o.get(key)).and_then(|v| v.as_str().map(str::to_owned));
        let message = text("message")
            .or_else(|| parsed.as_ref().and_then(|b| b.get("error")).and_then(|e| e.as_str().map(str::to_owned)))
            .or_else(|| parsed.as_ref().and_then(|b| b.get("detail")).map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)))
            .unwrap_or_else(|| {
                let body: String = body.trim().chars().take(500).collect();
                if body.is_empty() {
                    format!("The upstream server answered {status}.")
                } else {
                    format!("The upstream server answered {status}: {body}")
                }
            });
        // Some servers put the status number in `code`; only a word is a code.
        let code = text("code").filter(|code| code.parse::<u16>().is_err());
        let error = Box::new(UpstreamError { status, r#type: text("type"), code, param: text("param") });
        Failure::Status { error, message, retry_after: retry_after(headers) }
    }

    /// Whether another try may succeed: no answer, a 429, or a 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Unreachable(_) => true,
            Failure::Status { error, .. } => error.status == 429 || error.status >= 500,
            Failure::Broken(_) | Failure::InStream { .. } => false,
        }
    }

    /// Whether it counts toward cooling the upstream down (LiteLLM counts the same).
    pub fn counts_against_upstream(&self) -> bool {
        self.retryable()
    }

    /// How long the upstream asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error the client is told.
    pub fn into_backend_error(self) -> BackendError {
        match self {
            Failure::Status { error, message, .. } | Failure::InStream { error, message } => BackendError::upstream(message, error),
            Failure::Unreachable(why) => BackendError::new(ErrorCode::Upstream, format!("The upstream server could not be reached: {why}")),
            Failure::Broken(why) => BackendError::new(ErrorCode::Upstream, format!("The upstream server's answer broke off: {why}")),
        }
    }
}

/// `Retry-After` in seconds (an HTTP date is not honoured: the backoff applies), or OpenAI's
/// `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    header(RETRY_AFTER.as_str()).and_then(|v| v.parse::<f64>().ok()).map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// The text of a transport error and its causes (reqwest's own message says only "error
/// sending request"), without the URL: clients need not learn where the upstream lives.
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() { "timed out".to_string() } else { error.to_string() };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn an_openai_error_body_keeps_its_fields() {
        let body =
            r#"{"error": {"message": "temperature is too high", "type": "invalid_request_error", "param": "temperature", "code": null}}"#;
        let Failure::Status { error, message, retry_after } = Failure::from_status(400, &HeaderMap::new(), body) else { panic!() };
        assert_eq!(message, "temperature is too high");
        assert_eq!(
            *error,
            UpstreamError { status: 400, r#type: Some("invalid_request_error".into()), code: None, param: Some("temperature".into()) }
        );
        assert_eq!(retry_after, None);
        assert!(!Failure::from_status(400, &HeaderMap::new(), body).retryable());
    }

    #[test]
    fn flat_and_plain_bodies_still_say_something() {
        let vllm = r#"{"object": "error", "message": "model x does not exist", "type": "NotFoundError", "code": 404}"#;
        let Failure::Status { error, message, .. } = Failure::from_status(404, &HeaderMap::new(), vllm) else { panic!() };
        assert_eq!((message.as_str(), error.r#type.as_deref(), error.code), ("model x does not exist", Some("NotFoundError"), None));
        let Failure::Status { message, .. } = Failure::from_status(502, &HeaderMap::new(), "Bad Gateway\n") else { panic!() };
        assert_eq!(message, "The upstream server answered 502: Bad Gateway");
        let Failure::Status { message, .. } = Failure::from_status(500, &HeaderMap::new(), "") else { panic!() };
        assert_eq!(message, "The upstream server answered 500.");
    }

    #[test]
    fn rate_limits_and_server_errors_are_retried_after_what_they_ask() {
        let failure = Failure::from_status(429, &headers(&[("retry-after", "2")]), "{}");
        assert!(failure.retryable());
        assert_eq!(failure.retry_after(), Some(Duration::from_secs(2)));
        let failure = Failure::from_status(429, &headers(&[("retry-after", "2"), ("retry-after-ms", "150")]), "{}");
        assert_eq!(failure.retry_after(), Some(Duration::from_millis(150)));
        assert!(Failure::from_status(503, &HeaderMap::new(), "").retryable());
        assert!(Failure::Unreachable("refused".into()).retryable());
        assert!(!Failure::Broken("cut".into()).retryable());
    }
}
