//! MessagePack with named fields (so other languages can read it as maps), plus the
//! wire-version check every receiver runs.

use serde::{Serialize, de::DeserializeOwned};

use crate::WIRE_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message has wire version {found}, this build understands up to {WIRE_VERSION}")]
    NewerVersion { found: u16 },
}

/// Messages that carry a wire version.
pub trait Versioned {
    fn version(&self) -> u16;
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(message)?)
}

pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let message: T = rmp_serde::from_slice(bytes)?;
    if message.version() > WIRE_VERSION {
        return Err(CodecError::NewerVersion { found: message.version() });
    }
    Ok(message)
}
