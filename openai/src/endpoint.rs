//! The endpoints a request can be queued for without a client waiting on the connection
//! (batch lines, `/v1/jobs`), and their bodies, read and planned alike.

use switchyard_schemas::ModelCard;

use crate::request::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};
use crate::{Invalid, Limits, Plan};

/// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum Endpoint {
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    #[serde(rename = "/v1/completions")]
    Completions,
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    pub fn parse(text: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|endpoint| endpoint.as_str() == text)
    }

    /// The 400 for an endpoint that is none of these, naming `param`.
    pub fn unsupported(param: &str, text: &str) -> Invalid {
        let all: Vec<_> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
        Invalid::new(param, format!("Unsupported endpoint {text:?}: expected one of {}.", all.join(", ")))
    }

    /// Reads a request body for this endpoint. Such a request is answered whole later, so
    /// `stream: true` is refused.
    pub fn read(self, body: &[u8]) -> Result<QueuedRequest, Invalid> {
        let request = match self {
            Endpoint::ChatCompletions => QueuedRequest::Chat(Box::new(crate::parse(body)?)),
            Endpoint::Completions => QueuedRequest::Completion(crate::parse(body)?),
            Endpoint::Embeddings => QueuedRequest::Embedding(crate::parse(body)?),
        };
        if request.streamed() {
            return Err(Invalid::new(
                "stream",
                "This request is answered whole later, so it cannot be streamed: remove `stream` or set it to false.",
            ));
        }
        Ok(request)
    }
}

/// A request body read for one of the [`Endpoint`]s.
#[derive(Debug)]
pub enum QueuedRequest {
    /// Boxed: a chat request is several times the size of the others.
    Chat(Box<ChatCompletionRequest>),
    Completion(CompletionRequest),
    Embedding(EmbeddingRequest),
}

impl QueuedRequest {
    pub fn model(&self) -> &str {
        match self {
            QueuedRequest::Chat(request) => &request.model,
            QueuedRequest::Completion(request) => &request.model,
            QueuedRequest::Embedding(request) => &request.model,
        }
    }

    fn streamed(&self) -> bool {
        match self {
            QueuedRequest::Chat(request) => request.stream == Some(true),
            QueuedRequest::Completion(request) => request.stream == Some(true),
            QueuedRequest::Embedding(_) => false,
        }
    }

    /// Validates the request against its model and plans its jobs, as the synchronous endpoint does.
    pub fn plan(self, limits: &Limits, card: &ModelCard) -> Result<Plan, Invalid> {
        match self {
            QueuedRequest::Chat(request) => crate::plan_chat(*request, limits, card),
            QueuedRequest::Completion(request) => crate::plan_completion(request, limits, card),
            QueuedRequest::Embedding(request) => crate::plan_embeddings(request, limits, card),
        }
    }
}
