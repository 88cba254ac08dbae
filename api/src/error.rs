//! The api's one error type, and the single place it becomes an HTTP status and OpenAI's
//! error body `{"error": {"message", "type", "param", "code"}}` ([`ErrorResponse`]). A refused
//! request and a failed job take their status and body from `switchyard-openai`, as the
//! scheduler's batch lines do. [`ErrorResponses`] documents the statuses in the OpenAPI document.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchyard_openai::response::ErrorResponse;
use switchyard_openai::{Invalid, JobFailure};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range.
    #[error(transparent)]
    InvalidRequest(#[from] Invalid),
    /// Missing, unknown, revoked or expired API key.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key that may not do this (the status page without the admin flag).
    #[error("{0}")]
    Forbidden(String),
    /// A rate limit refused the request; `headers` carry `retry-after` and `x-ratelimit-*`
    /// (boxed: a header map is 96 bytes, and inline it would make every `Result<_, ApiError>` large).
    #[error("{message}")]
    RateLimited { message: String, kind: &'static str, headers: Box<axum::http::HeaderMap> },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("The tool model `{model}` has no function `{function}`.")]
    ToolNotFound { model: String, function: String },
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
    #[error(transparent)]
    Job(#[from] JobFailure),
    /// A file, batch or job that does not exist, or is not the caller's.
    #[error("No such {kind} object: {id}")]
    NoSuchObject { kind: &'static str, id: String },
    /// The object is in a state that does not allow this (cancelling a finished batch).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid::new(param, message).into()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(invalid) => status(invalid.status()),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotFound(_) | ApiError::ToolNotFound { .. } | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoCapacity(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Job(failure) => status(failure.status()),
            ApiError::NoSuchObject { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error body for this error.
    pub fn body(&self) -> ErrorResponse {
        let (kind, param, code): (&'static str, Option<&str>, Option<&'static str>) = match self {
            ApiError::InvalidRequest(invalid) => return invalid.body(),
            ApiError::Job(failure) => return failure.body(),
            ApiError::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::Forbidden(_) => ("invalid_request_error", None, Some("insufficient_permissions")),
            ApiError::RateLimited { kind, .. } => (*kind, None, Some("rate_limit_exceeded")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model"), Some("model_not_found")),
            ApiError::ToolNotFound { .. } => ("invalid_request_error", Some("function"), Some("unknown_function")),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", None, Some("unknown_url")),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", None, Some("method_not_allowed")),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", None, Some("request_too_large")),
            ApiError::NoCapacity(_) => ("server_error", None, Some("model_unavailable")),
            ApiError::Unavailable(_) => ("server_error", None, Some("service_unavailable")),
            ApiError::NoSuchObject { .. } => ("invalid_request_error", Some("id"), None),
            ApiError::Conflict(_) => ("invalid_request_error", None, None),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        ErrorResponse::new(self.to_string(), kind, param.map(str::to_string), code)
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let body = Json(self.body());
        match self {
            ApiError::RateLimited { headers, .. } => (status, *headers, body).into_response(),
            _ => (status, body).into_response(),
        }
    }
}

impl From<switchyard_client::JobError> for ApiError {
    fn from(error: switchyard_client::JobError) -> Self {
        use switchyard_client::JobError;
        match error {
            JobError::NotStarted(_) => ApiError::NoCapacity(error.to_string()),
            JobError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
            JobError::Silent(_) | JobError::Internal(_) => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<switchyard_broker::BrokerError> for ApiError {
    fn from(error: switchyard_broker::BrokerError) -> Self {
        ApiError::Unavailable(format!("The job queue is unavailable: {error}"))
    }
}

/// The error statuses every `/v1` route may answer with, each in OpenAI's error body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorResponses {
    /// Malformed JSON, a wrong field type, or a parameter out of range (`param` names it).
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// Missing, unknown, revoked or expired API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Unknown model, or one this key may not use.
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// Body over the configured limit.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// A rate limit refused the request (`Retry-After`, `x-ratelimit-*` headers).
    #[response(status = 429)]
    RateLimited(ErrorResponse),
    /// No worker took the job in time, or NATS/Redis is unreachable.
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}
