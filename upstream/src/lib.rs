//! `switchyard worker openai`: any OpenAI-compatible server — vLLM, a cloud API, another
//! Switchyard — as a worker backend (Kuwa's `chatgpt` executor, Langchain-Chatchat's API
//! model workers), so its models sit behind the same gateway, keys and queue as local ones.
//!
//! * [`body`]: a job as the upstream's request; chat and completions always streamed, with
//!   `stream_options.include_usage`, so the usage is the upstream's own count.
//! * [`reply`]: the upstream's chunks as the job's events (text, tool calls, logprobs).
//! * [`failure`]: upstream errors passed on with their status and fields, never as chat text;
//!   which of them another try may cure.
//! * [`health`]: a failing upstream cooled down (LiteLLM's defaults: 3 failures, 5 s).
//!
//! A job is tried again, with backoff (or after the upstream's `Retry-After`), on no answer,
//! a 429 or a 5xx — only while nothing of it has reached the client; once output has gone
//! out, a failure ends the job with an error event. Cancelling a job drops its upstream
//! request, which closes the connection. One HTTP client per worker keeps connections alive.

pub mod body;
pub mod failure;
pub mod health;
pub mod reply;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use serde_json::Value;
use switchyard_schemas::{ErrorCode, FinishReason, JobRequest, ModelCard, ModelKind, Permissions, Supports, Usage, WIRE_VERSION, now_ms};
use switchyard_worker::runtime::parse_duration;
use switchyard_worker::{Backend, BackendError, EventSink, Finish, Job};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::body::Endpoint;
use crate::failure::Failure;
use crate::health::Health;
use crate::reply::Stopped;

/// `switchyard worker openai`: which upstream, which of its models, and how hard to try.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenAiArgs {
    /// The upstream's base URL, up to and including its `/v1` (http://127.0.0.1:8000/v1).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_URL")]
    pub base_url: String,
    /// Name of the environment variable that holds the upstream's API key, sent as
    /// `Authorization: Bearer …` (the key itself never goes on a command line).
    #[arg(long, env = "SWITCHYARD_UPSTREAM_API_KEY_ENV")]
    pub api_key_env: Option<String>,
    /// A chat (and completions) model to serve, under the upstream's name or another:
    /// `NAME` or `NAME=UPSTREAM_NAME`. Repeatable.
    #[arg(long = "model", value_name = "NAME[=UPSTREAM_NAME]")]
    pub models: Vec<ModelRoute>,
    /// An embedding model to serve: `NAME` or `NAME=UPSTREAM_NAME`. Repeatable.
    #[arg(long = "embedding-model", value_name = "NAME[=UPSTREAM_NAME]")]
    pub embedding_models: Vec<ModelRoute>,
    /// Also serve every model the upstream's `/v1/models` lists, under its own name: an
    /// embedding model when the listing says so (Switchyard's `kind`) or its name holds
    /// `embed`, else a chat model.
    #[arg(long)]
    pub all_models: bool,
    /// Tries after the first, on no answer, a 429 or a 5xx, before anything reached the client.
    #[arg(long, env = "SWITCHYARD_UPSTREAM_RETRIES", default_value_t = 2)]
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// Longest `Retry-After` honoured; an upstream asking for longer fails the job with its 429.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_retry_after: Duration,
    /// Failures (no answer, 429, 5xx) within a minute that cool the upstream down; 0: never.
    #[arg(long, env = "SWITCHYARD_UPSTREAM_COOLDOWN_FAILURES", default_value_t = 3)]
    pub cooldown_failures: usize,
    /// How long a cooldown lasts: no jobs are pulled, and held jobs wait before trying again.
    #[arg(long, env = "SWITCHYARD_UPSTREAM_COOLDOWN", default_value = "5s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// How long to wait for a connection to the upstream.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Longest silence of the upstream within an answer before the request counts as failed.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub read_timeout: Duration,
}

/// One model served: the name clients use, and the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub name: String,
    pub upstream: String,
}

impl FromStr for ModelRoute {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, upstream) = text.split_once('=').unwrap_or((text, text));
        let (name, upstream) = (name.trim(), upstream.trim());
        if name.is_empty() || upstream.is_empty() {
            return Err(format!("{text:?}: write NAME or NAME=UPSTREAM_NAME"));
        }
        Ok(ModelRoute { name: name.into(), upstream: upstream.into() })
    }
}

/// The `openai` backend.
pub struct OpenAi {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    /// By the name clients use.
    routes: HashMap<String, ModelRoute>,
    cards: Vec<ModelCard>,
    health: Health,
    retries: u32,
    retry_backoff: Duration,
    max_retry_after: Duration,
}

/// What the upstream's `/v1/models` says of one model.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    kind: ModelKind,
    owned_by: Option<String>,
    context_length: Option<u32>,
}

impl OpenAi {
    /// Builds the backend, reading the upstream's model list (required with `--all-models`;
    /// otherwise only for context lengths, and a warning when a named model is not listed —
    /// an upstream that is down at start is not a reason to stay down).
    pub async fn connect(args: &OpenAiArgs, slots: usize) -> anyhow::Result<OpenAi> {
        // reqwest is built with rustls but no provider: use ring, which async-nats already links.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api_key = match &args.api_key_env {
            Some(var) => Some(std::env::var(var).with_context(|| format!("--api-key-env {var}: that environment variable is not set"))?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(args.connect_timeout)
            .read_timeout(args.read_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(slots.max(1))
            .build()
            .context("building the HTTP client")?;
        let mut backend = OpenAi {
            client,
            base_url: args.base_url.trim_end_matches('/').to_owned(),
            api_key,
            routes: HashMap::new(),
            cards: Vec::new(),
            health: Health::new(args.cooldown_failures, args.cooldown),
            retries: args.retries,
            retry_backoff: args.retry_backoff,
            max_retry_after: args.max_retry_after,
        };
        let listed = match backend.list_models().await {
            Ok(listed) => listed,
            Err(e) if !args.all_models => {
                warn!(error = %e, "cannot list the upstream's models; serving the named ones without their context lengths");
                Vec::new()
            }
            Err(e) => return Err(e.context("--all-models: listing the upstream's models")),
        };
        let mut wanted: Vec<(ModelRoute, ModelKind)> = Vec::new();
        wanted.extend(args.models.iter().map(|route| (route.clone(), ModelKind::Chat)));
        wanted.extend(args.embedding_models.iter().map(|route| (route.clone(), ModelKind::Embedding)));
        if args.all_models {
            for model in &listed {
                if !wanted.iter().any(|(route, _)| route.name == model.id) {
                    wanted.push((ModelRoute { name: model.id.clone(), upstream: model.id.clone() }, model.kind));
                }
            }
        }
        anyhow::ensure!(!wanted.is_empty(), "name the models to serve (--model, --embedding-model) or pass --all-models");
        for (route, kind) in wanted {
            anyhow::ensure!(!backend.routes.contains_key(&route.name), "model {} is named twice", route.name);
            let found = listed.iter().find(|m| m.id == route.upstream);
            if found.is_none() && !listed.is_empty() {
                warn!(model = %route.upstream, "the upstream does not list this model; its requests will fail until it does");
            }
            backend.cards.push(card(&route.name, kind, found));
            backend.routes.insert(route.name.clone(), route);
        }
        info!(upstream = %backend.base_url, models = ?backend.routes.keys().collect::<Vec<_>>(), "serving upstream models");
        Ok(backend)
    }

    async fn list_models(&self) -> anyhow::Result<Vec<Listed>> {
        let mut request = self.client.get(format!("{}/models", self.base_url));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| anyhow::anyhow!("GET /models: {}", failure::describe(e)))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| anyhow::anyhow!("GET /models answered {status} without JSON: {e}"))?;
        anyhow::ensure!(status.is_success(), "GET /models answered {status}: {body}");
        let data = body.get("data").and_then(Value::as_array).context("GET /models: no `data` list")?;
        Ok(data
            .iter()
            .filter_map(|model| {
                let id = model.get("id")?.as_str()?.to_owned();
                let kind = match model.get("kind").and_then(Value::as_str) {
                    Some("embedding") => ModelKind::Embedding,
                    // A Switchyard upstream's tool models are not an OpenAI server's to serve.
                    Some("tool") => return None,
                    Some(_) => ModelKind::Chat,
                    None if id.to_lowercase().contains("embed") => ModelKind::Embedding,
                    None => ModelKind::Chat,
                };
                let context_length = ["context_length", "max_model_len"].iter().find_map(|key| model.get(*key)?.as_u64()).map(|n| n as u32);
                let owned_by = model.get("owned_by").and_then(Value::as_str).map(str::to_owned);
                Some(Listed { id, kind, owned_by, context_length })
            })
            .collect())
    }

    /// One request to the upstream: its successful answer, or why there was none.
    async fn send(&self, endpoint: Endpoint, body: &Value, cancel: &CancellationToken) -> Option<Result<reqwest::Response, Failure>> {
        let mut request = self.client.post(format!("{}{}", self.base_url, endpoint.path())).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = tokio::select! { response = request.send() => response, _ = cancel.cancelled() => return None };
        Some(match response {
            Err(e) => Err(Failure::Unreachable(failure::describe(e))),
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => {
                let (status, headers) = (response.status().as_u16(), response.headers().clone());
                let text = tokio::select! { text = response.text() => text.unwrap_or_default(), _ = cancel.cancelled() => return None };
                Err(Failure::from_status(status, &headers, &text))
            }
        })
    }

    /// Reads a successful answer into the job's events.
    async fn answer(
        &self,
        response: reqwest::Response,
        endpoint: Endpoint,
        request: &JobRequest,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Finish, Stopped> {
        if endpoint != Endpoint::Embeddings {
            return reply::relay(response, endpoint, sink, cancel).await;
        }
        let inputs = match request {
            JobRequest::Embedding { input } => input.len(),
            _ => 0,
        };
        let broken = |e: reqwest::Error| Stopped {
            failure: Failure::Broken(format!("reading the embeddings answer: {}", failure::describe(e))),
            sent_output: false,
        };
        let answer: Value =
            tokio::select! { answer = response.json() => answer.map_err(broken)?, _ = cancel.cancelled() => return Ok(cancelled()) };
        let (vectors, usage) = reply::embeddings(&answer, inputs).map_err(|failure| Stopped { failure, sent_output: false })?;
        sink.embeddings(0, vectors);
        Ok(Finish { reason: FinishReason::Stop, usage })
    }

    /// How long to wait before try `tries + 1` after `failure`; `None`: give up now.
    fn wait_before_retry(&self, failure: &Failure, tries: u32) -> Option<Duration> {
        if !failure.retryable() || tries > self.retries {
            return None;
        }
        match failure.retry_after() {
            Some(after) if after > self.max_retry_after => None,
            Some(after) => Some(after),
            None => Some(self.retry_backoff * 2u32.saturating_pow(tries - 1)),
        }
    }
}

fn card(name: &str, kind: ModelKind, listed: Option<&Listed>) -> ModelCard {
    ModelCard {
        v: WIRE_VERSION,
        name: name.into(),
        kind,
        context_length: listed.and_then(|m| m.context_length),
        backend: "openai".into(),
        owned_by: listed.and_then(|m| m.owned_by.clone()).unwrap_or_else(|| "upstream".into()),
        permissions: Permissions::default(),
        limits: Default::default(),
        created: now_ms() / 1000,
        last_seen_ms: 0,
        // The upstream decides: a request it cannot serve comes back as its own 400.
        supports: Supports { tools: kind == ModelKind::Chat, json_output: kind == ModelKind::Chat },
        functions: Vec::new(),
        prompt_settings: Default::default(),
    }
}

fn cancelled() -> Finish {
    Finish { reason: FinishReason::Cancelled, usage: Usage::default() }
}

#[async_trait]
impl Backend for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn models(&self) -> Vec<ModelCard> {
        self.cards.clone()
    }

    fn paused(&self, _model: &str) -> Option<Duration> {
        self.health.cooling()
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let model = &job.envelope.model;
        let route = self.routes.get(model).ok_or_else(|| BackendError::invalid(format!("this worker does not serve {model}")))?;
        // An upstream's answer cannot be continued where another worker left it.
        if job.resume.as_ref().is_some_and(|resume| !resume.text.is_empty() || !resume.tool_calls.is_empty()) {
            return Err(BackendError::new(
                ErrorCode::Upstream,
                "The worker relaying this answer from the upstream server stopped part-way; an upstream's answer cannot be continued by another worker.",
            ));
        }
        let request = &job.envelope.request;
        let (endpoint, body) = body::build(request, &route.upstream)
            .ok_or_else(|| BackendError::invalid(format!("{model} is an upstream model: it runs no functions")))?;
        let mut tries = 0;
        loop {
            if let Some(left) = self.health.cooling() {
                tokio::select! { _ = tokio::time::sleep(left) => {}, _ = cancel.cancelled() => return Ok(cancelled()) }
            }
            tries += 1;
            let failure = match self.send(endpoint, &body, &cancel).await {
                None => return Ok(cancelled()),
                Some(Ok(response)) => {
                    self.health.succeeded();
                    match self.answer(response, endpoint, request, sink, &cancel).await {
                        Ok(finish) => return Ok(finish),
                        Err(Stopped { failure, sent_output: true }) => {
                            warn!(error = ?failure, "the upstream's answer failed part-way");
                            return Err(failure.into_backend_error());
                        }
                        Err(Stopped { failure, sent_output: false }) => failure,
                    }
                }
                Some(Err(failure)) => {
                    if failure.counts_against_upstream() {
                        if self.health.failed() {
                            warn!("the upstream failed repeatedly: cooling it down");
                        }
                    } else {
                        self.health.succeeded();
                    }
                    failure
                }
            };
            let Some(wait) = self.wait_before_retry(&failure, tries) else {
                let error = failure.clone().into_backend_error();
                // While the upstream cools down, the job may fare better later or elsewhere.
                return Err(match self.health.cooling() {
                    Some(left) if failure.retryable() => error.hand_back(left),
                    _ => error,
                });
            };
            warn!(try_ = tries, error = ?failure, wait = ?wait, "upstream request failed; trying again");
            tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = cancel.cancelled() => return Ok(cancelled()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_route_is_a_name_or_a_name_and_the_upstreams() {
        assert_eq!("gpt".parse::<ModelRoute>().unwrap(), ModelRoute { name: "gpt".into(), upstream: "gpt".into() });
        assert_eq!(
            "mine=Qwen/Qwen2.5-7B=x".parse::<ModelRoute>().unwrap(),
            ModelRoute { name: "mine".into(), upstream: "Qwen/Qwen2.5-7B=x".into() }
        );
        assert!("=up".parse::<ModelRoute>().is_err());
        assert!("name=".parse::<ModelRoute>().is_err());
    }
}
