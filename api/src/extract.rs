//! A JSON body extractor that answers like OpenAI: 400 naming the offending field (axum's
//! default is 422 without one), 413 past the body limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct OpenAiJson<T>(pub T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = request.extensions().get::<BodyLimit>().map_or(usize::MAX, |limit| limit.0);
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidRequest { message: rejection.body_text(), param: None, code: None }
            }
        })?;
        parse(&bytes).map(OpenAiJson)
    }
}

/// The configured body limit, put into request extensions so errors can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let reason = inner.to_string();
        if let Some(field) = reason.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            let field = if path == "." { field.to_string() } else { format!("{path}.{field}") };
            return ApiError::invalid(field.clone(), format!("Missing required parameter: '{field}'."));
        }
        // A value of the wrong kind for an enum field is reported as a syntax error at that
        // field's path; only errors without a path, or at the end of input, are broken JSON.
        if inner.is_eof() || path == "." {
            let detail = if path == "." { inner.to_string() } else { format!("{inner} (at {path})") };
            ApiError::InvalidRequest {
                message: format!("We could not parse the JSON body of your request: {detail}"),
                param: None,
                code: None,
            }
        } else {
            // serde's messages carry a line/column suffix that means nothing to a client.
            let reason = reason.split(" at line ").next().unwrap_or(&reason).to_string();
            ApiError::invalid(path.clone(), format!("Invalid value for '{path}': {reason}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        messages: Vec<Message>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Message {
        content: String,
    }

    fn param_of(json: &str) -> Option<String> {
        match parse::<Body>(json.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(param_of(r#"{"model": 5, "messages": []}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model": "m", "messages": [{"content": 1}]}"#).as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn missing_fields_and_syntax_errors_are_400s() {
        assert_eq!(param_of(r#"{"model": "m"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"model": "#), None);
    }
}
