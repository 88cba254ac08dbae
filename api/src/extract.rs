//! A JSON body extractor that answers like OpenAI: 400 naming the offending field (axum's
//! default is 422 without one), 413 past the body limit. The parsing itself is
//! [`switchyard_openai::parse`], shared with the scheduler's batch lines.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use switchyard_openai::Invalid;

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
                Invalid::unnamed(rejection.body_text()).into()
            }
        })?;
        Ok(OpenAiJson(switchyard_openai::parse(&bytes)?))
    }
}

/// The configured body limit, put into request extensions so errors can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);
