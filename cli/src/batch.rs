//! `switchyard batch`: submit, follow, list, cancel and download batches through any
//! OpenAI-compatible api — Switchyard's or api.openai.com — using the Files and Batch API shapes
//! exactly: `POST /files` (multipart, `purpose=batch`), `POST /batches`, `GET /batches/{id}`,
//! `GET /batches`, `POST /batches/{id}/cancel`, `GET /files/{id}/content`.
//!
//! Files are streamed both ways (never read into memory). Progress goes to stderr through
//! `indicatif` (drawn only on a terminal; plain lines otherwise); ids and summaries go to stdout.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::local_key::{DEV_KEY_FILE, resolve_key};

/// The file `switchyard dev` writes its dev user's key to; read when no key is given.
/// How often `--wait` polls the batch.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long `--wait` keeps retrying an api that is unreachable or answers 5xx before giving up.
const POLL_GIVE_UP: Duration = Duration::from_secs(60);
/// The window over which the progress bar's rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(30);
/// The endpoints a batch may target (`--endpoint`).
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
/// Statuses after which a batch never changes again.
const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

#[derive(Args, Debug)]
pub struct BatchCommand {
    /// Base URL of the OpenAI-compatible api, with its `/v1` (e.g. `https://api.openai.com/v1`).
    #[arg(long, env = "SWITCHYARD_API_URL", default_value = "http://127.0.0.1:8080/v1", global = true)]
    api_url: String,
    /// API key (sent as `Authorization: Bearer`); without one, and only when --api-url is on this
    /// machine (localhost, 127.0.0.0/8, ::1), `.switchyard/dev-api-key` is read if it exists (what
    /// `switchyard dev` writes); else no key is sent.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    action: BatchAction,
}

#[derive(Subcommand, Debug)]
enum BatchAction {
    /// Upload a JSONL file of requests and create a batch of it; prints the batch id.
    Submit(SubmitArgs),
    /// Show a batch: status, request counts, timestamps, file ids.
    Status {
        /// The batch id (`batch_…`).
        id: String,
        /// Print the api's batch object as JSON instead.
        #[arg(long)]
        json: bool,
        /// Follow the batch with a progress bar until it ends (exits non-zero unless it completed).
        #[arg(long)]
        wait: bool,
    },
    /// List batches, newest first.
    List {
        /// How many to list (the api's page size, 1–100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// List those after this batch id (the last id of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Cancel a batch (its status goes to `cancelling`, then `cancelled`).
    Cancel {
        /// The batch id (`batch_…`).
        id: String,
    },
    /// Download a batch's output file and error file.
    Download {
        /// The batch id (`batch_…`).
        id: String,
        /// Where to write the output file (default: `<ID>.output.jsonl`).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Where to write the error file (default: `<ID>.errors.jsonl`).
        #[arg(long)]
        errors: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The JSONL file of requests: one `{"custom_id", "method": "POST", "url", "body"}` per line.
    file: PathBuf,
    /// The endpoint every request of the file goes to.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ENDPOINTS))]
    endpoint: String,
    /// How long the batch may take (OpenAI accepts only `24h`).
    #[arg(long, default_value = "24h")]
    completion_window: String,
    /// Metadata attached to the batch, `KEY=VALUE` (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
    metadata: Vec<(String, String)>,
    /// Follow the batch with a progress bar until it ends, then download its results.
    #[arg(long)]
    wait: bool,
    /// With --wait: where to write the output file (default: `<FILE stem>.output.jsonl` beside FILE).
    #[arg(long, short, requires = "wait")]
    output: Option<PathBuf>,
    /// With --wait: where to write the error file (default: `<FILE stem>.errors.jsonl` beside FILE).
    #[arg(long, requires = "wait")]
    errors: Option<PathBuf>,
}

/// `KEY=VALUE` → (key, value); the value may hold `=`, the key may not be empty.
fn parse_metadata(pair: &str) -> Result<(String, String), String> {
    let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("`{pair}` has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Where `submit --wait` writes the results of `input` by default: `<stem>.output.jsonl` and
/// `<stem>.errors.jsonl` in the input's folder.
fn default_result_paths(input: &Path) -> (PathBuf, PathBuf) {
    let stem = input.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("batch");
    (input.with_file_name(format!("{stem}.output.jsonl")), input.with_file_name(format!("{stem}.errors.jsonl")))
}

/// Where `download ID` writes by default: `<ID>.output.jsonl` and `<ID>.errors.jsonl` here.
fn default_download_paths(id: &str) -> (PathBuf, PathBuf) {
    (PathBuf::from(format!("{id}.output.jsonl")), PathBuf::from(format!("{id}.errors.jsonl")))
}

// ---------------------------------------------------------------------------------------------
// The api's objects: only the fields read here, every one tolerant of absence, null or a type
// other than expected (it reads as its default), and unknown fields ignored.

/// Any value that does not deserialize as `T` (null, a wrong type) reads as `T::default()`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(deserializer: D) -> Result<T, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).unwrap_or_default())
}

/// A File object (`POST /files`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FileObject {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(deserialize_with = "lenient")]
    pub bytes: Option<u64>,
}

/// A Batch object (`/batches`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Batch {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(deserialize_with = "lenient")]
    pub status: String,
    #[serde(deserialize_with = "lenient")]
    pub endpoint: String,
    #[serde(deserialize_with = "lenient")]
    pub completion_window: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub input_file_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub output_file_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub error_file_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub request_counts: RequestCounts,
    #[serde(deserialize_with = "lenient")]
    pub errors: BatchErrors,
    #[serde(deserialize_with = "lenient")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(deserialize_with = "lenient")]
    pub created_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub in_progress_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub expires_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub finalizing_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub completed_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub failed_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub expired_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub cancelling_at: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub cancelled_at: Option<i64>,
}

impl Batch {
    fn is_terminal(&self) -> bool {
        TERMINAL.contains(&self.status.as_str())
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    #[serde(deserialize_with = "lenient")]
    pub total: u64,
    #[serde(deserialize_with = "lenient")]
    pub completed: u64,
    #[serde(deserialize_with = "lenient")]
    pub failed: u64,
}

impl RequestCounts {
    fn done(&self) -> u64 {
        self.completed + self.failed
    }
}

/// `errors` of a batch that failed validation: `{"object": "list", "data": [...]}`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BatchErrors {
    #[serde(deserialize_with = "lenient")]
    pub data: Vec<BatchError>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BatchError {
    #[serde(deserialize_with = "lenient")]
    pub code: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub message: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub param: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub line: Option<u64>,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: ")?,
            None => write!(f, "file: ")?,
        }
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        write!(f, "{}", self.message.as_deref().unwrap_or("(no message)"))?;
        if let Some(param) = &self.param {
            write!(f, " (param: {param})")?;
        }
        Ok(())
    }
}

/// A page of `GET /batches`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchPage {
    #[serde(deserialize_with = "lenient")]
    data: Vec<Batch>,
    #[serde(deserialize_with = "lenient")]
    has_more: bool,
    #[serde(deserialize_with = "lenient")]
    last_id: Option<String>,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    #[serde(deserialize_with = "lenient")]
    error: Option<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorDetail {
    #[serde(deserialize_with = "lenient")]
    message: Option<String>,
    #[serde(rename = "type", deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(deserialize_with = "lenient")]
    param: Option<serde_json::Value>,
    #[serde(deserialize_with = "lenient")]
    code: Option<serde_json::Value>,
}

/// The message of an error response: OpenAI's `error.message` with its type, param and code,
/// or the body itself (shortened) when it is not OpenAI's shape.
fn error_message(body: &str) -> String {
    let detail = serde_json::from_str::<ErrorBody>(body).ok().and_then(|b| b.error);
    let Some(detail) = detail.filter(|d| d.message.is_some()) else {
        let body = body.trim();
        return if body.is_empty() { "(empty body)".to_string() } else { body.chars().take(500).collect() };
    };
    let mut message = detail.message.unwrap_or_default();
    let scalar = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let extras: Vec<String> = [("type", detail.kind.clone()), ("param", scalar(&detail.param)), ("code", scalar(&detail.code))]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}: {v}")))
        .collect();
    if !extras.is_empty() {
        let _ = write!(message, " ({})", extras.join(", "));
    }
    message
}

// ---------------------------------------------------------------------------------------------
// The HTTP client.

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "could not connect to {url}: {detail}\n(is the api running there? `switchyard dev` starts one; set --api-url or SWITCHYARD_API_URL)"
    )]
    Connect { url: String, detail: String },
    #[error("{method} {url} failed: HTTP {status}: {message}")]
    Http { method: Method, url: String, status: StatusCode, message: String },
    #[error("{method} {url} failed: {detail}")]
    Transport { method: Method, url: String, detail: String },
}

impl ApiError {
    /// Worth retrying while polling: the api is unreachable, overloaded or broke the connection.
    fn is_transient(&self) -> bool {
        match self {
            ApiError::Connect { .. } | ApiError::Transport { .. } => true,
            ApiError::Http { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn from_reqwest(method: &Method, url: &str, error: reqwest::Error) -> Self {
        // reqwest's own message is generic ("error sending request"); the cause says what happened.
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail = cause.to_string();
            source = cause.source();
        }
        if error.is_connect() {
            ApiError::Connect { url: url.to_string(), detail }
        } else {
            let detail = if error.is_timeout() { format!("timed out ({detail})") } else { detail };
            ApiError::Transport { method: method.clone(), url: url.to_string(), detail }
        }
    }
}

/// Ctrl-C: what was interrupted and how to go on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Interrupted(String);

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        // reqwest is built with rustls but no provider: use ring, which async-nats already links.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base: base.trim_end_matches('/').to_string(), key })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; an HTTP error status becomes [`ApiError::Http`] with OpenAI's message.
    async fn send(&self, method: Method, path: &str, build: impl FnOnce(RequestBuilder) -> RequestBuilder) -> Result<Response, ApiError> {
        let url = self.url(path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = build(request).send().await.map_err(|e| ApiError::from_reqwest(&method, &url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let mut message = error_message(&body);
        if status == StatusCode::NOT_FOUND && !self.base.ends_with("/v1") {
            message.push_str(" (does --api-url end with /v1?)");
        }
        Err(ApiError::Http { method, url, status, message })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, ApiError> {
        let url = self.url(path);
        let response = self.send(method.clone(), path, |r| build(r).timeout(Duration::from_secs(60))).await?;
        let body = response.bytes().await.map_err(|e| ApiError::from_reqwest(&method, &url, e))?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Transport {
            method,
            url,
            detail: format!("the answer is not the expected JSON ({e}): {}", String::from_utf8_lossy(&body[..body.len().min(300)])),
        })
    }

    async fn batch(&self, id: &str) -> Result<Batch, ApiError> {
        self.json(Method::GET, &format!("/batches/{id}"), |r| r).await
    }

    /// `POST /files`, `purpose=batch`, the file streamed from disk (a byte progress bar on a
    /// terminal). Returns the File object and the size sent.
    async fn upload(&self, path: &Path) -> anyhow::Result<(FileObject, u64)> {
        let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
        let length = file.metadata().await.with_context(|| format!("reading {}", path.display()))?.len();
        if length == 0 {
            bail!("{} is empty: a batch file holds one JSON request per line", path.display());
        }
        let progress = byte_bar(length, "uploading");
        let counter = progress.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(move |chunk| counter.inc(chunk.len() as u64));
        let filename = path.file_name().and_then(|n| n.to_str()).unwrap_or("batch.jsonl").to_string();
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), length)
            .file_name(filename)
            .mime_str("application/octet-stream")?;
        // `purpose` first, so a server reading the form as a stream knows it before the file.
        let form = reqwest::multipart::Form::new().text("purpose", "batch").part("file", part);
        let url = self.url("/files");
        let response = self.send(Method::POST, "/files", |r| r.multipart(form)).await;
        progress.finish_and_clear();
        let body = response?.bytes().await.map_err(|e| ApiError::from_reqwest(&Method::POST, &url, e))?;
        let file: FileObject = serde_json::from_slice(&body).with_context(|| format!("POST {url}: the answer is not a File object"))?;
        if file.id.is_empty() {
            bail!("POST {url}: the answer has no file id: {}", String::from_utf8_lossy(&body));
        }
        Ok((file, length))
    }

    /// `GET /files/{id}/content` streamed into `dest` (through `dest.part`, renamed when complete).
    async fn download(&self, file_id: &str, dest: &Path) -> anyhow::Result<u64> {
        let path = format!("/files/{file_id}/content");
        let url = self.url(&path);
        let response = self.send(Method::GET, &path, |r| r).await?;
        let partial = partial_path(dest);
        let result = async {
            if let Some(folder) = dest.parent().filter(|f| !f.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(folder).await.with_context(|| format!("creating {}", folder.display()))?;
            }
            let file = tokio::fs::File::create(&partial).await.with_context(|| format!("creating {}", partial.display()))?;
            let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
            let progress = byte_bar(response.content_length().unwrap_or(0), "downloading");
            let mut stream = response.bytes_stream();
            let mut written = 0u64;
            while let Some(chunk) = stream.try_next().await.map_err(|e| ApiError::from_reqwest(&Method::GET, &url, e))? {
                out.write_all(&chunk).await.with_context(|| format!("writing {}", partial.display()))?;
                written += chunk.len() as u64;
                progress.set_position(written);
            }
            progress.finish_and_clear();
            out.flush().await.with_context(|| format!("writing {}", partial.display()))?;
            drop(out);
            tokio::fs::rename(&partial, dest).await.with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
            anyhow::Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "download".into());
    name.push(".part");
    dest.with_file_name(name)
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal, or the size unknown).
fn byte_bar(length: u64, what: &'static str) -> ProgressBar {
    if length == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// Runs `fut` unless Ctrl-C comes first; then fails with [`Interrupted`] carrying `hint`.
async fn interruptible<T>(
    shutdown: &CancellationToken,
    hint: impl FnOnce() -> String,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(Interrupted(hint()).into()),
        result = fut => result,
    }
}

// ---------------------------------------------------------------------------------------------
// The commands.

pub async fn run(command: BatchCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api = Api::new(&command.api_url, resolve_key(command.api_key, &command.api_url, Path::new(DEV_KEY_FILE), "OPENAI_API_KEY"))?;
    let work = async {
        match command.action {
            BatchAction::Submit(args) => submit(&api, args, &shutdown).await,
            BatchAction::Status { id, json, wait } => status(&api, &id, json, wait, &shutdown).await,
            BatchAction::List { limit, after } => list(&api, limit, after.as_deref()).await,
            BatchAction::Cancel { id } => cancel(&api, &id).await,
            BatchAction::Download { id, output, errors } => download(&api, &id, output, errors, &shutdown).await,
        }
    };
    // Ctrl-C: the steps that know what to say about it (waiting, uploading, downloading) see it
    // first, being polled first; any other request is just abandoned.
    let result = tokio::select! {
        biased;
        result = work => result,
        _ = shutdown.cancelled() => Err(Interrupted("interrupted".to_string()).into()),
    };
    // The error alone, with its causes on one line (never a backtrace): this is a user's tool.
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.is::<Interrupted>() => {
            eprintln!("{error}");
            std::process::exit(130);
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

async fn submit(api: &Api, args: SubmitArgs, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let upload_hint = || "upload interrupted; no batch was created".to_string();
    let (file, length) = interruptible(shutdown, upload_hint, api.upload(&args.file)).await?;
    eprintln!("uploaded {} ({}) as {}", args.file.display(), HumanBytes(file.bytes.unwrap_or(length)), file.id);
    let mut body = serde_json::json!({
        "input_file_id": file.id,
        "endpoint": args.endpoint,
        "completion_window": args.completion_window,
    });
    if !args.metadata.is_empty() {
        body["metadata"] = args.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect();
    }
    let create_hint = || format!("interrupted while creating the batch of {}; see `switchyard batch list`", file.id);
    let batch: Batch =
        interruptible(shutdown, create_hint, async { Ok(api.json(Method::POST, "/batches", |r| r.json(&body)).await?) }).await?;
    if batch.id.is_empty() {
        bail!("POST {}: the answer has no batch id", api.url("/batches"));
    }
    println!("{}", batch.id);
    if !args.wait {
        eprintln!("batch {} is {}; follow it with `switchyard batch status {} --wait`", batch.id, batch.status, batch.id);
        return Ok(());
    }
    let batch = wait(api, batch, shutdown).await?;
    let (default_output, default_errors) = default_result_paths(&args.file);
    let output = args.output.unwrap_or(default_output);
    let errors = args.errors.unwrap_or(default_errors);
    finish(api, &batch, &output, &errors, shutdown).await
}

async fn cancel(api: &Api, id: &str) -> anyhow::Result<()> {
    let batch: Batch = api.json(Method::POST, &format!("/batches/{id}/cancel"), |r| r).await?;
    println!("{} {}", batch.id, batch.status);
    Ok(())
}

async fn download(
    api: &Api,
    id: &str,
    output: Option<PathBuf>,
    errors: Option<PathBuf>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let batch = api.batch(id).await?;
    let (default_output, default_errors) = default_download_paths(id);
    let (output, errors) = (output.unwrap_or(default_output), errors.unwrap_or(default_errors));
    if batch.output_file_id.is_none() && batch.error_file_id.is_none() {
        bail!("batch {id} has no output or error file yet (status: {})", batch.status);
    }
    let hint = || format!("download interrupted; run `switchyard batch download {id}` again");
    let files = interruptible(shutdown, hint, download_results(api, &batch, &output, &errors)).await?;
    println!("{}", files.join(", "));
    Ok(())
}

/// After `--wait`: print a failed batch's errors, or download the results and print the summary.
async fn finish(api: &Api, batch: &Batch, output: &Path, errors: &Path, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if batch.status == "failed" {
        print_errors(batch);
        bail!("batch {} failed", batch.id);
    }
    let hint = || format!("download interrupted; run `switchyard batch download {}`", batch.id);
    let files = interruptible(shutdown, hint, download_results(api, batch, output, errors)).await?;
    println!("{}", summary(batch, &files));
    if batch.status != "completed" {
        bail!("batch {} ended {}", batch.id, batch.status);
    }
    Ok(())
}

/// Downloads the output and error files a batch has; returns `what → path (size)` for each.
async fn download_results(api: &Api, batch: &Batch, output: &Path, errors: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for (what, file_id, path) in [("output", &batch.output_file_id, output), ("errors", &batch.error_file_id, errors)] {
        if let Some(file_id) = file_id.as_deref().filter(|id| !id.is_empty()) {
            let bytes = api.download(file_id, path).await?;
            files.push(format!("{what} → {} ({})", path.display(), HumanBytes(bytes)));
        }
    }
    Ok(files)
}

fn print_errors(batch: &Batch) {
    if batch.errors.data.is_empty() {
        eprintln!("batch {} failed (the api gave no error details)", batch.id);
    }
    for error in &batch.errors.data {
        eprintln!("{error}");
    }
}

/// `batch_… completed: 998 done, 2 failed of 1000 in 3m12s; output → a.output.jsonl (1.2 MiB)`.
fn summary(batch: &Batch, files: &[String]) -> String {
    let counts = batch.request_counts;
    let mut line = format!("{} {}: {} done, {} failed of {}", batch.id, batch.status, counts.completed, counts.failed, counts.total);
    let ended = batch.completed_at.or(batch.expired_at).or(batch.cancelled_at).or(batch.failed_at);
    if let (Some(start), Some(end)) = (batch.created_at, ended)
        && end >= start
    {
        let _ = write!(line, " in {}", short_duration(Duration::from_secs((end - start) as u64)));
    }
    if files.is_empty() {
        line.push_str("; no result files");
    } else {
        let _ = write!(line, "; {}", files.join(", "));
    }
    line
}

async fn status(api: &Api, id: &str, json: bool, wait_for_end: bool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut batch = api.batch(id).await?;
    if wait_for_end && !batch.is_terminal() {
        batch = wait(api, batch, shutdown).await?;
    }
    if json {
        let raw: serde_json::Value = api.json(Method::GET, &format!("/batches/{id}"), |r| r).await?;
        println!("{}", serde_json::to_string_pretty(&raw)?);
    } else {
        print!("{}", describe(&batch));
    }
    if wait_for_end && batch.status != "completed" {
        bail!("batch {id} ended {}", batch.status);
    }
    Ok(())
}

/// The human-readable view of `status`.
fn describe(batch: &Batch) -> String {
    let mut out = String::new();
    let counts = batch.request_counts;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "{:<13} {value}", format!("{name}:"));
    };
    row("id", batch.id.clone());
    row("status", batch.status.clone());
    row("endpoint", batch.endpoint.clone());
    row("window", dash(&batch.completion_window));
    row("requests", format!("{} completed, {} failed, {} total", counts.completed, counts.failed, counts.total));
    row("input file", dash(&batch.input_file_id));
    row("output file", dash(&batch.output_file_id));
    row("error file", dash(&batch.error_file_id));
    for (name, at) in [
        ("created", batch.created_at),
        ("in progress", batch.in_progress_at),
        ("finalizing", batch.finalizing_at),
        ("completed", batch.completed_at),
        ("failed", batch.failed_at),
        ("cancelling", batch.cancelling_at),
        ("cancelled", batch.cancelled_at),
        ("expired", batch.expired_at),
        ("expires", batch.expires_at),
    ] {
        if let Some(at) = at {
            row(name, utc_time(at));
        }
    }
    if let Some(metadata) = batch.metadata.as_ref().filter(|m| !m.is_empty()) {
        let pairs: Vec<String> =
            metadata.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
        row("metadata", pairs.join(", "));
    }
    for error in &batch.errors.data {
        row("error", error.to_string());
    }
    out
}

async fn list(api: &Api, limit: u32, after: Option<&str>) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(&api.url("/batches")).with_context(|| format!("--api-url {} is not a URL", api.base))?;
    url.query_pairs_mut().append_pair("limit", &limit.to_string());
    if let Some(after) = after {
        url.query_pairs_mut().append_pair("after", after);
    }
    let path = format!("/batches?{}", url.query().unwrap_or_default());
    let page: BatchPage = api.json(Method::GET, &path, |r| r).await?;
    print!("{}", table(&page.data));
    if page.has_more
        && let Some(last) = page.last_id.or_else(|| page.data.last().map(|b| b.id.clone()))
    {
        eprintln!("more: switchyard batch list --after {last}");
    }
    Ok(())
}

/// The table of `list`: id, status, endpoint, counts (completed/failed/total), created.
fn table(batches: &[Batch]) -> String {
    let rows: Vec<[String; 5]> = batches
        .iter()
        .map(|b| {
            let c = b.request_counts;
            let created = b.created_at.map_or_else(|| "-".to_string(), utc_time);
            [b.id.clone(), b.status.clone(), b.endpoint.clone(), format!("{}/{}/{}", c.completed, c.failed, c.total), created]
        })
        .collect();
    let head = ["ID", "STATUS", "ENDPOINT", "DONE/FAILED/TOTAL", "CREATED"].map(str::to_string);
    let mut widths = head.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Following a batch.

/// Polls the batch every [`POLL_INTERVAL`] until it ends, showing a progress bar; Ctrl-C stops
/// waiting (the batch goes on) with [`Interrupted`].
async fn wait(api: &Api, mut batch: Batch, shutdown: &CancellationToken) -> anyhow::Result<Batch> {
    let id = batch.id.clone();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner:.green} [{bar:20.cyan/blue}] {wide_msg}").expect("a valid template").progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut throughput = Throughput::new(RATE_WINDOW);
    let mut last_line: Option<(String, Instant)> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let counts = batch.request_counts;
        throughput.record(now, counts.done());
        let message =
            progress_message(&batch.status, counts, throughput.rate(), throughput.eta(counts.total.saturating_sub(counts.done())));
        // An empty bar, not a full one, while the total is unknown (0 while validating).
        bar.set_length(counts.total.max(1));
        bar.set_position(counts.done().min(counts.total));
        bar.set_message(message.clone());
        if bar.is_hidden() {
            // Not a terminal: a line when the status changes, and every 10 s.
            let due = last_line.as_ref().is_none_or(|(status, at)| *status != batch.status || at.elapsed() >= Duration::from_secs(10));
            if due {
                eprintln!("{id}: {message}");
                last_line = Some((batch.status.clone(), now));
            }
        }
        if batch.is_terminal() {
            bar.finish_and_clear();
            return Ok(batch);
        }
        let sleep = tokio::time::sleep(POLL_INTERVAL);
        let polled = async {
            sleep.await;
            api.batch(&id).await
        };
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            polled = polled => Some(polled),
        };
        match outcome {
            None => {
                bar.abandon();
                return Err(Interrupted(format!(
                    "stopped waiting; batch {id} goes on ({}, not cancelled). Follow it: `switchyard batch status {id} --wait`, \
                     then `switchyard batch download {id}`",
                    batch.status
                ))
                .into());
            }
            Some(Ok(polled)) => {
                failing_since = None;
                batch = polled;
            }
            Some(Err(error)) if error.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= POLL_GIVE_UP {
                    bar.abandon();
                    return Err(anyhow::Error::new(error).context(format!("gave up following batch {id} (it may still be running)")));
                }
                bar.set_message(format!("{message} · retrying: {}", error.to_string().lines().next().unwrap_or_default()));
            }
            Some(Err(error)) => {
                bar.abandon();
                return Err(error.into());
            }
        }
    }
}

/// The progress bar's message: `in_progress 120 done, 3 failed of 1000 · 42/s · ETA 21s`
/// (done = completed; the bar's position is completed + failed).
fn progress_message(status: &str, counts: RequestCounts, rate: Option<f64>, eta: Option<Duration>) -> String {
    let rate = match rate {
        Some(rate) if rate >= 10.0 => format!("{rate:.0}/s"),
        Some(rate) => format!("{rate:.1}/s"),
        None => "-/s".to_string(),
    };
    let eta = eta.map_or_else(|| "-".to_string(), short_duration);
    format!("{status} {} done, {} failed of {} · {rate} · ETA {eta}", counts.completed, counts.failed, counts.total)
}

/// Requests finished per second over a sliding window of samples.
struct Throughput {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Throughput {
    fn new(window: Duration) -> Self {
        Throughput { window, samples: VecDeque::new() }
    }

    fn record(&mut self, at: Instant, done: u64) {
        self.samples.push_back((at, done));
        // Keep the newest sample older than the window too, so the rate spans the whole window.
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
    }

    /// None until the samples span a second.
    fn rate(&self) -> Option<f64> {
        let (&(first_at, first), &(last_at, last)) = (self.samples.front()?, self.samples.back()?);
        let span = last_at.duration_since(first_at).as_secs_f64();
        (span >= 1.0).then(|| last.saturating_sub(first) as f64 / span)
    }

    fn eta(&self, remaining: u64) -> Option<Duration> {
        let rate = self.rate()?;
        if remaining == 0 {
            return Some(Duration::ZERO);
        }
        (rate > 0.0).then(|| Duration::from_secs_f64(remaining as f64 / rate))
    }
}

/// `45s`, `3m05s`, `2h07m`.
fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Unix seconds as `2024-05-01 12:34:56 UTC`.
fn utc_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        batch: BatchCommand,
    }

    fn parse(args: &[&str]) -> Result<BatchCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("batch").chain(args.iter().copied())).map(|c| c.batch)
    }

    #[test]
    fn submit_parses_every_flag() {
        let command = parse(&[
            "--api-url",
            "https://api.openai.com/v1",
            "--api-key",
            "sk-x",
            "submit",
            "data/requests.jsonl",
            "--endpoint",
            "/v1/embeddings",
            "--metadata",
            "team=search",
            "--metadata",
            "note=a=b",
            "--wait",
            "--output",
            "out.jsonl",
        ])
        .unwrap();
        assert_eq!(command.api_url, "https://api.openai.com/v1");
        assert_eq!(command.api_key.as_deref(), Some("sk-x"));
        let BatchAction::Submit(args) = command.action else { panic!("not submit") };
        assert_eq!(args.file, PathBuf::from("data/requests.jsonl"));
        assert_eq!(args.endpoint, "/v1/embeddings");
        assert_eq!(args.completion_window, "24h");
        assert_eq!(args.metadata, vec![("team".into(), "search".into()), ("note".into(), "a=b".into())]);
        assert!(args.wait);
        assert_eq!(args.output, Some(PathBuf::from("out.jsonl")));
        assert_eq!(args.errors, None);
    }

    #[test]
    fn global_options_go_after_the_action_too() {
        let command = parse(&["status", "batch_1", "--json", "--api-url", "http://h:1/v1"]).unwrap();
        assert_eq!(command.api_url, "http://h:1/v1");
        assert!(matches!(command.action, BatchAction::Status { ref id, json: true, wait: false } if id == "batch_1"));
    }

    #[test]
    fn submit_refuses_bad_arguments() {
        assert!(parse(&["submit", "f.jsonl"]).is_err(), "--endpoint is required");
        assert!(parse(&["submit", "f.jsonl", "--endpoint", "/v1/responses-typo"]).is_err());
        assert!(parse(&["submit", "f.jsonl", "--endpoint", "/v1/completions", "--metadata", "novalue"]).is_err());
        assert!(parse(&["submit", "f.jsonl", "--endpoint", "/v1/completions", "--output", "o.jsonl"]).is_err(), "--output needs --wait");
        for endpoint in ENDPOINTS {
            assert!(parse(&["submit", "f.jsonl", "--endpoint", endpoint]).is_ok());
        }
    }

    #[test]
    fn list_download_and_cancel_parse() {
        let command = parse(&["list", "--limit", "5", "--after", "batch_9"]).unwrap();
        assert!(matches!(command.action, BatchAction::List { limit: 5, after: Some(ref a) } if a == "batch_9"));
        assert!(matches!(parse(&["list"]).unwrap().action, BatchAction::List { limit: 20, after: None }));
        assert!(parse(&["list", "--limit", "0"]).is_err());
        assert!(parse(&["list", "--limit", "101"]).is_err());
        let command = parse(&["download", "batch_2", "-o", "x.jsonl"]).unwrap();
        assert!(
            matches!(command.action, BatchAction::Download { ref output, errors: None, .. } if output.as_deref() == Some(Path::new("x.jsonl")))
        );
        assert!(matches!(parse(&["cancel", "batch_3"]).unwrap().action, BatchAction::Cancel { ref id } if id == "batch_3"));
    }

    #[test]
    fn metadata_pairs() {
        assert_eq!(parse_metadata("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(parse_metadata("k="), Ok(("k".into(), String::new())));
        assert_eq!(parse_metadata(" k =v=w"), Ok(("k".into(), "v=w".into())));
        assert!(parse_metadata("=v").is_err());
        assert!(parse_metadata("kv").is_err());
    }

    #[test]
    fn result_paths_sit_beside_the_input() {
        let (output, errors) = default_result_paths(Path::new("data/run.jsonl"));
        assert_eq!(output, PathBuf::from("data/run.output.jsonl"));
        assert_eq!(errors, PathBuf::from("data/run.errors.jsonl"));
        assert_eq!(default_result_paths(Path::new("reqs")).0, PathBuf::from("reqs.output.jsonl"));
        assert_eq!(default_result_paths(Path::new("/tmp/a.b.jsonl")).1, PathBuf::from("/tmp/a.b.errors.jsonl"));
        assert_eq!(default_download_paths("batch_7"), (PathBuf::from("batch_7.output.jsonl"), PathBuf::from("batch_7.errors.jsonl")));
        assert_eq!(partial_path(Path::new("d/o.jsonl")), PathBuf::from("d/o.jsonl.part"));
    }

    #[test]
    fn progress_message_formats() {
        let counts = RequestCounts { total: 1000, completed: 120, failed: 3 };
        assert_eq!(progress_message("in_progress", counts, None, None), "in_progress 120 done, 3 failed of 1000 · -/s · ETA -");
        assert_eq!(
            progress_message("in_progress", counts, Some(42.4), Some(Duration::from_secs(21))),
            "in_progress 120 done, 3 failed of 1000 · 42/s · ETA 21s"
        );
        assert_eq!(
            progress_message("finalizing", counts, Some(2.24), Some(Duration::from_secs(185))),
            "finalizing 120 done, 3 failed of 1000 · 2.2/s · ETA 3m05s"
        );
        assert_eq!(short_duration(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn throughput_over_a_window() {
        let start = Instant::now();
        let mut t = Throughput::new(Duration::from_secs(10));
        t.record(start, 0);
        assert_eq!(t.rate(), None);
        assert_eq!(t.eta(100), None);
        t.record(start + Duration::from_secs(2), 20);
        assert_eq!(t.rate(), Some(10.0));
        assert_eq!(t.eta(100), Some(Duration::from_secs(10)));
        assert_eq!(t.eta(0), Some(Duration::ZERO));
        // Samples older than the window stop counting: 20 s later, 40 more in the last 10 s.
        for s in 3..=22 {
            t.record(start + Duration::from_secs(s), 20 + if s > 12 { 4 * (s - 12) } else { 0 });
        }
        assert_eq!(t.rate(), Some(4.0));
        let mut stalled = Throughput::new(Duration::from_secs(10));
        stalled.record(start, 5);
        stalled.record(start + Duration::from_secs(3), 5);
        assert_eq!(stalled.rate(), Some(0.0));
        assert_eq!(stalled.eta(10), None);
    }

    #[test]
    fn objects_tolerate_missing_null_and_odd_fields() {
        let batch: Batch = serde_json::from_str(
            r#"{"id": "batch_1", "object": "batch", "status": "failed", "endpoint": null, "output_file_id": null,
                "request_counts": {"total": 3, "completed": 1}, "created_at": 1714567890, "expires_at": "soon",
                "errors": {"object": "list", "data": [{"code": "invalid_json", "line": 2, "message": "bad line", "param": null}]},
                "something_new": [1, 2]}"#,
        )
        .unwrap();
        assert_eq!((batch.id.as_str(), batch.status.as_str(), batch.endpoint.as_str()), ("batch_1", "failed", ""));
        assert_eq!(batch.request_counts, RequestCounts { total: 3, completed: 1, failed: 0 });
        assert_eq!((batch.created_at, batch.expires_at, batch.output_file_id.as_deref()), (Some(1714567890), None, None));
        assert_eq!(batch.errors.data[0].to_string(), "line 2: invalid_json: bad line");
        assert!(batch.is_terminal());
        let bare: Batch = serde_json::from_str(r#"{"errors": null, "request_counts": null, "metadata": null}"#).unwrap();
        assert_eq!((bare.request_counts.total, bare.errors.data.len(), bare.is_terminal()), (0, 0, false));
        let file: FileObject = serde_json::from_str(r#"{"id": "file-1", "bytes": 12, "status": "processed"}"#).unwrap();
        assert_eq!((file.id.as_str(), file.bytes), ("file-1", Some(12)));
    }

    #[test]
    fn error_bodies() {
        let openai = r#"{"error": {"message": "Invalid file format.", "type": "invalid_request_error", "param": "file", "code": null}}"#;
        assert_eq!(error_message(openai), "Invalid file format. (type: invalid_request_error, param: file)");
        assert_eq!(error_message(r#"{"error": {"message": "no", "code": 42}}"#), "no (code: 42)");
        assert_eq!(error_message("upstream exploded"), "upstream exploded");
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(error_message(r#"{"detail": "x"}"#), r#"{"detail": "x"}"#);
    }

    #[test]
    fn failed_line_error_without_line() {
        let error = BatchError { code: None, message: Some("file too large".into()), param: Some("file".into()), line: None };
        assert_eq!(error.to_string(), "file: file too large (param: file)");
    }

    #[test]
    fn times_and_tables() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(1_714_567_890), "2024-05-01 12:51:30 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        let batch = Batch {
            id: "batch_abc".into(),
            status: "in_progress".into(),
            endpoint: "/v1/embeddings".into(),
            request_counts: RequestCounts { total: 10, completed: 4, failed: 1 },
            created_at: Some(0),
            ..Default::default()
        };
        let table = table(std::slice::from_ref(&batch));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID         STATUS       ENDPOINT        DONE/FAILED/TOTAL  CREATED");
        assert_eq!(lines[1], "batch_abc  in_progress  /v1/embeddings  4/1/10             1970-01-01 00:00:00 UTC");
        let described = describe(&batch);
        assert!(described.contains("requests:     4 completed, 1 failed, 10 total\n"), "{described}");
        assert!(described.contains("output file:  -\n"), "{described}");
        let done = Batch { status: "completed".into(), completed_at: Some(192), ..batch };
        assert_eq!(
            summary(&done, &["output → o.jsonl (1.00 KiB)".into()]),
            "batch_abc completed: 4 done, 1 failed of 10 in 3m12s; output → o.jsonl (1.00 KiB)"
        );
    }
}
