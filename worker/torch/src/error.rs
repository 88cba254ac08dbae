//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
///
/// [`TorchError::code`] gives a stable, machine-readable code (the worker maps it onto the
/// wire error), and the `Display` text is meant for the person reading the log or the API
/// response, so each variant names the file, tensor or number involved.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("{what} not found: {}", path.display())]
    MissingFile { what: &'static str, path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid {}: {message}", path.display())]
    InvalidFile { path: PathBuf, message: String },

    #[error("unsupported architecture {name:?} (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },

    #[error("unsupported model setting: {0}")]
    Unsupported(String),

    #[error("tensor {name:?} not found in the model's safetensors files")]
    MissingTensor { name: String },

    #[error("tensor {name:?} has shape {actual:?}, but config.json implies {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<i64>, actual: Vec<i64> },

    #[error("tensor {name:?} has dtype {dtype}, which is not a supported weight type")]
    UnsupportedDtype { name: String, dtype: String },

    #[error("invalid device {0:?}: expected cpu, cuda or cuda:N")]
    InvalidDevice(String),

    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },

    #[error("invalid dtype {0:?}: expected auto, f32, bf16 or f16")]
    InvalidDtype(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error(
        "this model's context length is {context_length} tokens, but the request needs \
         {requested} ({prompt_tokens} in the prompt + {max_tokens} to generate)"
    )]
    ContextLengthExceeded { context_length: u32, prompt_tokens: u32, max_tokens: u32, requested: u32 },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// An operator's setting (a flag's value) that cannot be used, its message naming the flag.
    #[error("{0}")]
    InvalidSetting(String),

    #[error("this model cannot {0}")]
    WrongModelKind(&'static str),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// libtorch failed inside an operation (it reports errors by panicking through tch),
    /// e.g. out of device memory.
    #[error("libtorch failed: {0}")]
    Internal(String),

    #[error("the model thread has stopped")]
    EngineStopped,
}

impl TorchError {
    /// A short stable code: `context_length_exceeded`, `invalid_request`, `model_load_failed`,
    /// `unsupported`, `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            TorchError::ContextLengthExceeded { .. } => "context_length_exceeded",
            TorchError::InvalidRequest(_) | TorchError::ChatTemplate(_) => "invalid_request",
            TorchError::WrongModelKind(_) => "unsupported",
            TorchError::MissingFile { .. }
            | TorchError::Io { .. }
            | TorchError::InvalidFile { .. }
            | TorchError::UnsupportedArchitecture { .. }
            | TorchError::Unsupported(_)
            | TorchError::MissingTensor { .. }
            | TorchError::ShapeMismatch { .. }
            | TorchError::UnsupportedDtype { .. }
            | TorchError::InvalidDevice(_)
            | TorchError::DeviceUnavailable { .. }
            | TorchError::InvalidDtype(_)
            | TorchError::InvalidSetting(_) => "model_load_failed",
            TorchError::Tokenizer(_) | TorchError::Torch(_) | TorchError::Internal(_) | TorchError::EngineStopped => {
                "internal"
            }
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            TorchError::MissingFile { what: "file", path }
        } else {
            TorchError::Io { path, source }
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        TorchError::InvalidFile { path: path.into(), message: message.to_string() }
    }
}

pub type Result<T, E = TorchError> = std::result::Result<T, E>;
