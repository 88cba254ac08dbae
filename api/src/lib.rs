//! Switchyard's HTTP surface: the OpenAI-compatible routes, SSE, and the submission of jobs to
//! NATS. It never runs a model. The OpenAI shapes, the validation of requests and the assembly
//! of answers are `switchyard-openai`'s, shared with the scheduler.
//!
//! * [`routes`]: the router and handlers.
//! * [`openapi`]: the OpenAPI document of the routes.
//! * [`state`]: what every handler shares.
//! * [`extract`]: the JSON body extractor that answers like OpenAI.
//! * [`policy`]: API keys, per-model permissions, distributed rate limits (with [`lease`]).
//! * [`job_store`]: the records of `/v1/jobs` jobs.
//! * [`directory`]: the api's copy of the model registry.
//! * [`error`]: the one error type, mapped to HTTP status and OpenAI's error body in one place.
//!
//! Dependencies run one way: each module uses only modules after it in `openapi`, `routes`,
//! `state`, `job_store`, `policy` (with `lease`), `directory`, `extract`, `error`. Jobs are published and
//! followed with `switchyard-client`; batches are stored for the scheduler with its
//! `batches::store`.

pub mod directory;
pub mod error;
pub mod extract;
pub mod job_store;
pub mod lease;
pub mod openapi;
pub mod policy;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use switchyard_broker::parse_duration;
use switchyard_broker::registry::Registry;
use switchyard_openai::Limits;
use switchyard_schemas::subject;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::directory::Directory;
use crate::policy::Gate;
use crate::state::{ApiState, FilesLimits};
use switchyard_client::{JobTimeouts, Jobs};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiOptions {
    /// Address to serve HTTP on.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// NATS server URL.
    #[arg(long, env = "SWITCHYARD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Redis URL: `redis://` (one server), `redis+cluster://h1:6379,h2:6379,…` (a Redis Cluster) or
    /// `redis+sentinel://s1:26379,…/<master name>` (the master Sentinel names).
    #[arg(long, env = "SWITCHYARD_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(flatten)]
    pub auth: switchyard_broker::BrokerAuth,
    /// How long a job waits for a worker to start it before the request fails with 503.
    #[arg(long, env = "SWITCHYARD_QUEUE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub queue_timeout: Duration,
    /// How long a started job may go without an event before the request fails.
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Largest request body, in bytes.
    #[arg(long, env = "SWITCHYARD_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub body_limit: usize,
    /// Largest `n` a request may ask for.
    #[arg(long, env = "SWITCHYARD_MAX_N", default_value_t = 16)]
    pub max_n: u32,
    /// Largest number of inputs in one embeddings request.
    #[arg(long, env = "SWITCHYARD_MAX_EMBEDDING_INPUTS", default_value_t = 2048)]
    pub max_embedding_inputs: usize,
    /// Serve without API keys, permissions or rate limits: for local experiments only.
    #[arg(long, env = "SWITCHYARD_NO_AUTH")]
    pub no_auth: bool,
    /// How often the api refreshes its copy of the model registry.
    #[arg(long, env = "SWITCHYARD_REGISTRY_REFRESH", default_value = "1s", value_parser = parse_duration)]
    pub registry_refresh: Duration,
    /// Largest file `POST /v1/files` takes, in bytes (OpenAI's limit: 200 MB).
    #[arg(long, env = "SWITCHYARD_MAX_FILE_BYTES", default_value_t = 200 * 1000 * 1000)]
    pub max_file_bytes: u64,
    /// Most requests one batch may have.
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_REQUESTS", default_value_t = 50_000)]
    pub max_batch_requests: u64,
    /// The `completion_window`s a batch may ask for (OpenAI accepts `24h` only).
    #[arg(long, env = "SWITCHYARD_BATCH_COMPLETION_WINDOWS", default_value = "24h", value_delimiter = ',')]
    pub batch_completion_windows: Vec<String>,
    /// Most rounds of hosted function calls (`tools` of type `hosted`) one chat request may
    /// run; the answer after the last round is returned as it is, calls included.
    #[arg(long, env = "SWITCHYARD_MAX_TOOL_ROUNDS", default_value_t = 8)]
    pub max_tool_rounds: u32,
    /// How long `/v1/jobs` jobs, their events and results are kept.
    #[arg(long, env = "SWITCHYARD_JOB_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub job_retention: Duration,
}

/// Serves the api until `shutdown` fires.
pub async fn serve(options: ApiOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let instance = format!("api-{}", ulid::Ulid::new().to_string().to_lowercase());
    let nats = switchyard_broker::connect_nats(&options.nats_url, &instance, &options.auth).await?;
    let redis = switchyard_broker::connect_redis(&options.redis_url).await?;
    let timeouts = JobTimeouts { queue: options.queue_timeout, idle: options.idle_timeout };
    let jobs = Jobs::start(instance.clone(), nats.clone(), redis.clone(), timeouts).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let batch_windows = options
        .batch_completion_windows
        .iter()
        .map(|text| {
            parse_duration(text).map(|window| (text.clone(), window)).map_err(|e| anyhow::anyhow!("--batch-completion-windows {text}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let directory = Directory::new(Registry::new(redis.clone()));
    if let Err(e) = directory.refresh().await {
        tracing::warn!(error = %e, "initial registry read failed");
    }
    directory.spawn_refresher(options.registry_refresh);
    if options.no_auth {
        tracing::warn!("!!! --no-auth: every caller may use every model, with no key and no rate limit. Never expose this api. !!!");
    }
    let gate = Gate::new(redis.clone(), options.no_auth, options.queue_timeout + options.idle_timeout);
    gate.watch_revocations(&nats).await?;
    let state = Arc::new(ApiState {
        jobs,
        directory,
        gate,
        limits: Limits { max_n: options.max_n, max_embedding_inputs: options.max_embedding_inputs },
        max_tool_rounds: options.max_tool_rounds,
        files: switchyard_broker::files::FileStore::open(&js).await?,
        files_limits: FilesLimits { max_file_bytes: options.max_file_bytes, max_batch_requests: options.max_batch_requests },
        batches: switchyard_scheduler::batches::store::BatchStore::open(&js).await?,
        batch_windows,
        async_jobs: job_store::AsyncJobs::open(&js, options.job_retention).await?,
        nats,
        redis,
    });
    let gate = state.gate.clone();
    switchyard_telemetry::prometheus::install();
    let app = routes::router(state, options.body_limit, &routes::mcp::described(openapi::ApiDoc::openapi()))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?
        // Short SSE events would otherwise wait ~40 ms each for Nagle's algorithm.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    tracing::info!(listen = %options.listen, instance, replies = %subject::replies_of(&instance), "api ready");
    // Open MCP sessions (their SSE streams) end with the server, not after it.
    let shutdown = async move {
        shutdown.cancelled().await;
        routes::mcp::end_sessions();
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    // Rate-limit corrections still waiting for a next admission that will not come.
    if let Err(e) = gate.flush_settlements().await {
        tracing::warn!(error = %e, "sending the last rate-limit corrections failed; concurrency slots free themselves when they expire");
    }
    Ok(())
}

/// The span of one HTTP request; its jobs record their id in it. With spans exported it is an
/// info span continuing the caller's `traceparent` header (its jobs carry it on into the
/// workers); without, the debug span tower-http makes by default, off unless logged.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    if !switchyard_telemetry::traces_exported() {
        return tracing::debug_span!("request", method = %request.method(), uri = %request.uri(), job_id = tracing::field::Empty);
    }
    let span = tracing::info_span!("request", method = %request.method(), path = request.uri().path(), job_id = tracing::field::Empty);
    let traceparent = request.headers().get("traceparent").and_then(|value| value.to_str().ok());
    switchyard_telemetry::trace_context::continue_trace(&span, traceparent);
    span
}
