//! The api's one error type, and the single place it becomes an HTTP status and OpenAI's
//! error body `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_schemas::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String>, code: Option<&'static str> },
    /// Missing, unknown, revoked or expired API key.
    #[error("{0}")]
    Unauthorized(String),
    /// A rate limit refused the request; `headers` carry `retry-after` and `x-ratelimit-*`.
    #[error("{message}")]
    RateLimited { message: String, kind: &'static str, headers: axum::http::HeaderMap },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("Unknown request URL: {method} {path}. Please check the URL for typos.")]
    RouteNotFound { method: String, path: String },
    #[error("Method {0} is not allowed on this route.")]
    MethodNotAllowed(String),
    #[error("Request body is larger than the limit of {0} bytes.")]
    PayloadTooLarge(usize),
    /// Nobody took the job in time: the model has no live worker, or all are busy.
    #[error("{0}")]
    NoCapacity(String),
    /// NATS or Redis is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The worker reported a failure.
    #[error("{message}")]
    Job { code: ErrorCode, message: String },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: Some(param.into()), code: None }
    }

    /// A worker's error, with `prompt_param` (`messages` or `prompt`) named where the prompt
    /// itself is at fault.
    pub fn from_job(code: ErrorCode, message: String, prompt_param: &str) -> Self {
        match code {
            ErrorCode::ContextLengthExceeded => ApiError::InvalidRequest {
                message,
                param: Some(prompt_param.into()),
                code: Some("context_length_exceeded"),
            },
            code => ApiError::Job { code, message },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoCapacity(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Job { code, .. } => match code {
                ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded => StatusCode::BAD_REQUEST,
                ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::StreamGap | ErrorCode::MaxDeliveriesExceeded => StatusCode::BAD_GATEWAY,
                ErrorCode::Cancelled | ErrorCode::BackendError => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error` object for this error.
    pub fn body(&self) -> serde_json::Value {
        let (kind, param, code): (&str, Option<&str>, Option<&str>) = match self {
            ApiError::InvalidRequest { param, code, .. } => ("invalid_request_error", param.as_deref(), *code),
            ApiError::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::RateLimited { kind, .. } => (kind, None, Some("rate_limit_exceeded")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model"), Some("model_not_found")),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", None, Some("unknown_url")),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", None, Some("method_not_allowed")),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", None, Some("request_too_large")),
            ApiError::NoCapacity(_) => ("server_error", None, Some("model_unavailable")),
            ApiError::Unavailable(_) => ("server_error", None, Some("service_unavailable")),
            ApiError::Job { code, .. } => match code {
                ErrorCode::InvalidRequest => ("invalid_request_error", None, Some(code.as_str())),
                ErrorCode::ContextLengthExceeded => ("invalid_request_error", None, Some(code.as_str())),
                _ => ("server_error", None, Some(code.as_str())),
            },
            ApiError::Internal(_) => ("server_error", None, None),
        };
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let body = Json(self.body());
        match self {
            ApiError::RateLimited { headers, .. } => (status, headers, body).into_response(),
            _ => (status, body).into_response(),
        }
    }
}

impl From<switchyard_broker::BrokerError> for ApiError {
    fn from(error: switchyard_broker::BrokerError) -> Self {
        ApiError::Unavailable(format!("The job queue is unavailable: {error}"))
    }
}
