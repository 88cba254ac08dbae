//! Extractors that answer like OpenAI (axum's own answer with 422 or plain text): a JSON body
//! ([`OpenAiJson`]: 400 naming the offending field, 413 past the body limit; the parsing itself
//! is [`switchyard_openai::parse`], shared with the scheduler's batch lines), a query string
//! ([`OpenAiQuery`]) and a multipart form ([`OpenAiMultipart`]), each refused with a 400 in
//! OpenAI's error body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
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

/// A query string; a refused one names the parameter it could not read.
pub struct OpenAiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for OpenAiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<T>::from_request_parts(parts, state).await.map_err(|rejection| {
            let message = rejection.body_text();
            // "Failed to deserialize query string: limit: invalid digit found in string"
            let param = message.split(": ").nth(1).filter(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            let invalid = match param {
                Some(param) => Invalid::new(param, message.clone()),
                None => Invalid::unnamed(message.clone()),
            };
            ApiError::from(invalid)
        })?;
        Ok(OpenAiQuery(query))
    }
}

/// A `multipart/form-data` body; anything else is a 400 naming `file`.
pub struct OpenAiMultipart(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for OpenAiMultipart {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let form = Multipart::from_request(request, state).await.map_err(|rejection| {
            ApiError::invalid("file", format!("Expected a multipart/form-data body with `purpose` and `file`: {}", rejection.body_text()))
        })?;
        Ok(OpenAiMultipart(form))
    }
}

/// The configured body limit, put into request extensions so errors can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);
