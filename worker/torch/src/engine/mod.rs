//! The engine: one thread owns the model and its caches; requests reach it through a channel,
//! and results stream back through tokio channels.
//!
//! Callers tokenize and validate their own requests ([`Sequence::new`], on the caller's
//! thread); the model thread only runs the network. For a decoder it batches continuously
//! ([`scheduler`]): sequences join and leave between decoding steps, and every step decodes
//! all running sequences in one forward pass. For a sentence encoder it gathers the texts of
//! every waiting request into shared padded batches ([`embed`]).

mod embed;
mod scheduler;
mod sequence;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

pub use switchyard_constrain::Matcher;
use switchyard_constrain::Vocabulary;
use switchyard_schemas::PromptSettings;
use tch::Device;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::{self, DType, GenerationConfig, TokenizerConfig, read_json_opt};
use crate::error::{Result, TorchError};
use crate::models::{self, Model};
use crate::prompt;
use crate::sampling::{SamplingDefaults, SamplingParams, TokenLogprob};
use crate::tokenizer::Codec;
use embed::{EmbedJob, EmbedQueue};
use scheduler::Scheduler;
use sequence::Sequence;

/// Texts an encoder runs through the network at once by default (`max_batch_size` on CPU).
pub const EMBED_BATCH: usize = 32;

/// A generation's events. Unbounded, so that sending never blocks the model thread: a
/// reader that falls behind holds its own events, and no other sequence of the batch waits
/// for it.
pub type GenerateEvents = mpsc::UnboundedReceiver<GenerateEvent>;

/// The key/value cache a decoder's batch may fill when `max_batch_total_tokens` is not set:
/// on a CPU, and on a CUDA device (where the weights and activations need the rest).
pub const KV_CACHE_BYTES: (usize, usize) = (4 << 30, 8 << 30);

/// How the engine batches sequences: TGI's router knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    /// Most sequences decoded in one forward pass; for an encoder, most texts encoded in one.
    pub max_batch_size: usize,
    /// Most tokens the running batch's key/value cache may hold, counted as a padded cache
    /// holds them: rows × the widest row's prompt plus `max_tokens`. `None`: as many as
    /// [`KV_CACHE_BYTES`] of cache hold for this model (never fewer than its context length).
    pub max_batch_total_tokens: Option<usize>,
    /// Most prompt tokens prefilled between two decoding steps (a longer prompt joins an
    /// empty batch alone).
    pub max_batch_prefill_tokens: usize,
    /// Waiting sequences interrupt a running batch to be prefilled only when at least this
    /// fraction of its size can join at once…
    pub waiting_served_ratio: f32,
    /// …or once it has decoded this many steps since sequences last joined.
    pub max_waiting_tokens: usize,
}

impl BatchOptions {
    /// The defaults for a device: `cpu`, `cuda` or `cuda:N`.
    pub fn for_device(device: &str) -> BatchOptions {
        if device.starts_with("cuda") {
            BatchOptions { max_batch_size: 128, max_batch_prefill_tokens: 16_384, ..Self::default() }
        } else {
            Self::default()
        }
    }
}

impl Default for BatchOptions {
    /// CPU defaults.
    fn default() -> BatchOptions {
        BatchOptions {
            max_batch_size: EMBED_BATCH,
            max_batch_total_tokens: None,
            max_batch_prefill_tokens: 4_096,
            waiting_served_ratio: 0.3,
            max_waiting_tokens: 20,
        }
    }
}

/// What to load and where to run it.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A Hugging Face model folder.
    pub model_path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `bf16`, `f16` or `auto`/`None`: the checkpoint's dtype on GPUs, f32 on CPUs.
    pub dtype: Option<String>,
    pub batch: BatchOptions,
    /// The operator's system prompt, chat template and generation defaults for a decoder
    /// (an encoder refuses any): see [`Engine::prompt_settings`].
    pub prompt: PromptSettings,
}

impl EngineOptions {
    pub fn new(model_path: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            model_path: model_path.into(),
            device: "cpu".into(),
            dtype: None,
            batch: BatchOptions::default(),
            prompt: PromptSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal language model: [`Engine::generate`].
    Decoder,
    /// A sentence encoder: [`Engine::embed`].
    Encoder,
}

/// What a loaded model is, for model cards and request validation.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The folder's name, the default model name.
    pub name: String,
    pub kind: ModelKind,
    /// `config.json`'s architecture, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    /// Most tokens one sequence may hold: prompt plus completion for decoders
    /// (`max_position_embeddings`), input for encoders (`max_seq_length`).
    pub context_length: u32,
    /// Ids that end generation unless a request sets `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    pub has_chat_template: bool,
    /// The chat template does something with a request's `tools` (a heuristic: it mentions
    /// them; see [`Engine::chat_template_source`] for the text itself).
    pub chat_template_supports_tools: bool,
    /// Length of an embedding vector (encoders only).
    pub embedding_dim: Option<u32>,
    pub dtype: DType,
    /// The device as given, normalised: `cpu`, `cuda:0`, …
    pub device: String,
}

/// A prompt to complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text, tokenized with the tokenizer's special tokens (e.g. a leading `<s>`), as a
    /// completion prompt.
    Text(String),
    /// A conversation, rendered with the model's chat template (with the generation prompt);
    /// the template writes every special token itself, so none is added when tokenizing.
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// OpenAI tool definitions a chat prompt's template renders (`tools=` of
    /// `apply_chat_template`); `None` without tools.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Text the answer is made to begin with — a forced tool call's opening — appended to the
    /// rendered prompt: the model writes what follows. Counted as prompt, never sent.
    pub answer_prefix: String,
    /// Only tokens that keep the answer a valid prefix of this JSON constraint are chosen;
    /// once the value is complete and nothing may follow, generation stops (`Stop`).
    pub constraint: Option<Matcher>,
    /// Completion text an earlier worker already produced (and sent): it is appended after
    /// the prompt and generation continues from there, without sending it again. Its tokens
    /// count towards `max_tokens`, the penalties and `completion_tokens`.
    pub resume_text: Option<String>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> GenerateRequest {
        GenerateRequest {
            prompt,
            params,
            tools: None,
            answer_prefix: String::new(),
            constraint: None,
            resume_text: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens`, or the context length.
    Length,
    /// The request's cancellation token fired, or its receiver was dropped.
    Cancelled,
}

/// An error ending a generation, with a stable code (see [`TorchError::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<TorchError> for GenerateError {
    fn from(e: TorchError) -> GenerateError {
        GenerateError { code: e.code(), message: e.to_string() }
    }
}

/// What a generation sends back, in this order: `Started`, any number of `Delta`s, then
/// `Finished` — or `Error` at any point, after which nothing follows.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// The prompt is tokenized and accepted; decoding begins. `resumed_tokens`: how many
    /// tokens `resume_text` became (0 without one); they are part of `completion_tokens`.
    Started {
        prompt_tokens: u32,
        resumed_tokens: u32,
    },
    /// New completion text (never part of a stop string, never a broken UTF-8 character,
    /// never a special token), the number of tokens generated since the previous delta, and
    /// their log-probabilities when requested (one per token). Text held back for a while
    /// (a possible stop string, an unfinished character) comes out with the delta that
    /// releases it. `text` may be empty in the last delta, when only held tokens remain.
    Delta {
        text: String,
        tokens: u32,
        logprobs: Vec<TokenLogprob>,
    },
    /// `completion_tokens` counts every generated token, the one that stopped generation
    /// included, plus `resumed_tokens`.
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Error(GenerateError),
}

/// Sentence vectors, in input order, and the tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

enum Job {
    /// Boxed: a sequence is several hundred bytes, an embedding job a few words.
    Generate(Box<Sequence>),
    Embed(EmbedJob),
}

/// What callers share with the model thread: everything read-only.
struct Shared {
    info: ModelInfo,
    codec: Codec,
    template: Option<ChatTemplate>,
    defaults: SamplingDefaults,
    /// The operator's settings: the system prompt and generation defaults apply to every
    /// request (the chat template is `template`).
    prompt: PromptSettings,
    batch: BatchOptions,
    /// Every token's bytes, for constrained decoding; built on its first use.
    vocabulary: std::sync::OnceLock<Arc<Vocabulary>>,
}

impl Shared {
    fn vocabulary(&self) -> Arc<Vocabulary> {
        self.vocabulary.get_or_init(|| Arc::new(Vocabulary::new(self.codec.constraint_bytes()))).clone()
    }
}

/// A cheap-to-clone handle on a model running in its own thread.
///
/// The thread ends when the last handle is dropped and its queued requests are done.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.shared.info).finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model folder and starts its thread; returns once the weights are in place.
    /// Blocking (seconds to minutes): from async code, call it in `spawn_blocking`.
    pub fn load(opts: EngineOptions) -> Result<Engine> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (jobs, job_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("switchyard-torch".into())
            .spawn(move || {
                let _no_grad = tch::no_grad_guard();
                let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| Worker::load(&opts)))
                    .unwrap_or_else(|p| Err(TorchError::Internal(panic_message(&p))));
                match loaded {
                    Ok(worker) => {
                        let _ = ready_tx.send(Ok(worker.shared.clone()));
                        worker.run(job_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| TorchError::Io { path: PathBuf::from("<thread>"), source: e })?;
        let shared = ready_rx.recv().map_err(|_| TorchError::EngineStopped)??;
        Ok(Engine { shared, jobs })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The operator's prompt settings, as given: a chat request without a system (or
    /// developer) message gets `system_prompt` as its first message; `chat_template` renders
    /// every conversation in place of the folder's (its `tool_use` template too); and
    /// `generation_defaults` fill in the parameters a request leaves out, before the folder's
    /// `generation_config.json` does (a default `max_tokens` is capped at what the prompt
    /// leaves of the context).
    pub fn prompt_settings(&self) -> &PromptSettings {
        &self.shared.prompt
    }

    /// How this engine batches.
    pub fn batch_options(&self) -> &BatchOptions {
        &self.shared.batch
    }

    /// Requests worth handing this engine at once: a decoder's batch size; twice an
    /// encoder's, so that the next batch gathers while one is encoded.
    pub fn concurrency(&self) -> usize {
        match self.shared.info.kind {
            ModelKind::Decoder => self.shared.batch.max_batch_size,
            ModelKind::Encoder => 2 * self.shared.batch.max_batch_size,
        }
    }

    /// Starts generating; events arrive on the returned receiver. Tokenizes and validates on
    /// the calling thread (a bad request's `Error` is waiting on the receiver when this
    /// returns). Cancelling `cancel` (or dropping the receiver) stops decoding before the
    /// next step and frees the sequence's place in the batch.
    pub fn generate(&self, req: GenerateRequest, cancel: CancellationToken) -> GenerateEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = match self.shared.info.kind {
            ModelKind::Decoder => Sequence::new(&self.shared, req, cancel, tx.clone()),
            ModelKind::Encoder => Err(TorchError::WrongModelKind("generate text: it is a sentence encoder")),
        };
        match seq {
            Ok(seq) => {
                if let Err(std::sync::mpsc::SendError(Job::Generate(seq))) =
                    self.jobs.send(Job::Generate(Box::new(seq)))
                {
                    seq.fail(TorchError::EngineStopped.into());
                }
            }
            Err(e) => {
                let _ = tx.send(GenerateEvent::Error(e.into()));
            }
        }
        rx
    }

    /// Sentence embeddings of `texts`, in order. Tokenized on the calling thread; encoded
    /// together with the texts of other requests waiting at the same time.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings> {
        if self.shared.info.kind != ModelKind::Encoder {
            return Err(TorchError::WrongModelKind("embed: it is a text generator"));
        }
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.shared.codec.encode(t, true)).collect::<Result<_>>()?;
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Embed(EmbedJob::new(ids, reply))).map_err(|_| TorchError::EngineStopped)?;
        rx.await.map_err(|_| TorchError::EngineStopped)?
    }

    /// The chat template's text for `messages` and the request's `tools` (OpenAI tool
    /// definitions, passed to the template as they are), as transformers'
    /// `apply_chat_template(messages, tools=tools, add_generation_prompt=…)`. `None` is
    /// `tools=None`. The operator's system prompt comes first when `messages` have no system
    /// message, as it does for [`Engine::generate`].
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        render_chat(&self.shared, messages, tools, add_generation_prompt)
    }

    /// The text of the chat template a request with tools renders with (the model's
    /// `tool_use` template if it names one, else its only one), e.g. to tell which tool-call
    /// format the model writes. `None` without a template.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.shared.template.as_ref().map(|t| t.tools_source())
    }

    /// Token ids of `text` (with the tokenizer's special tokens when `add_special_tokens`).
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.shared.codec.encode(text, add_special_tokens)
    }

    /// Text of `ids`, special tokens left out.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.shared.codec.decode(ids)
    }
}

fn render_chat(
    shared: &Shared,
    messages: &[ChatMessage],
    tools: Option<&[serde_json::Value]>,
    add_generation_prompt: bool,
) -> Result<String> {
    let template = shared
        .template
        .as_ref()
        .ok_or_else(|| TorchError::InvalidRequest(format!("model {} has no chat template", shared.info.name)))?;
    template.render(&prompt::with_system_prompt(&shared.prompt, messages), tools, add_generation_prompt)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "libtorch panicked".to_owned())
}

/// The model thread's state.
struct Worker {
    shared: Arc<Shared>,
    model: Model,
    device: Device,
}

impl Worker {
    fn load(opts: &EngineOptions) -> Result<Worker> {
        let dir = opts.model_path.as_path();
        if !dir.is_dir() {
            return Err(TorchError::MissingFile { what: "model folder", path: dir.to_owned() });
        }
        let device = config::parse_device(&opts.device)?;
        let dtype = opts.dtype.as_deref().map(DType::parse).transpose()?.flatten();

        let tok_cfg: TokenizerConfig = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let gen_cfg: GenerationConfig = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or_default();
        let loaded = models::load(dir, device, dtype)?;
        let mut codec = Codec::load(dir, &tok_cfg)?;

        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let device_name = match device {
            Device::Cpu => "cpu".to_owned(),
            Device::Cuda(n) => format!("cuda:{n}"),
            other => format!("{other:?}"),
        };

        let settings = &opts.prompt;
        let (kind, context_length, embedding_dim, template) = match &loaded.model {
            Model::Decoder(d) => {
                let template = match &settings.chat_template {
                    Some(source) => Some(
                        ChatTemplate::named(
                            source.clone(),
                            ChatTemplate::special_tokens(&tok_cfg),
                            "--chat-template: the template",
                        )
                        .map_err(|e| match e {
                            TorchError::ChatTemplate(message) => TorchError::InvalidSetting(message),
                            e => e,
                        })?,
                    ),
                    None => ChatTemplate::load(dir, &tok_cfg)?,
                };
                (ModelKind::Decoder, d.context_length, None, template)
            }
            Model::Encoder(e) => {
                codec.set_truncation(e.context_length)?;
                (ModelKind::Encoder, e.context_length, Some(e.net.hidden_size as u32), None)
            }
        };
        check_prompt_settings(settings, kind, context_length, template.as_ref())?;

        let mut eos: Vec<u32> = Vec::new();
        for ids in [gen_cfg.eos_token_id.as_ref(), loaded.header.eos_token_id.as_ref()].into_iter().flatten() {
            eos.extend(ids.to_vec());
        }
        if let Some(id) = tok_cfg.eos_token.as_ref().and_then(|t| codec.token_to_id(t.content())) {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();

        // generation_config's sampling values only apply when it samples at all.
        let defaults = if gen_cfg.do_sample == Some(false) {
            SamplingDefaults::default()
        } else {
            SamplingDefaults { temperature: gen_cfg.temperature, top_p: gen_cfg.top_p, top_k: gen_cfg.top_k }
        };

        let info = ModelInfo {
            name,
            kind,
            architecture: loaded.architecture,
            context_length: context_length as u32,
            eos_token_ids: eos,
            has_chat_template: template.is_some(),
            chat_template_supports_tools: template.as_ref().is_some_and(ChatTemplate::supports_tools),
            embedding_dim,
            dtype: loaded.dtype,
            device: device_name,
        };
        tracing::info!(model = %info.name, arch = %info.architecture, dtype = info.dtype.name(),
            device = %info.device, context = info.context_length, "model loaded");
        let mut batch = opts.batch;
        if let (Model::Decoder(d), None) = (&loaded.model, batch.max_batch_total_tokens) {
            let bytes = if device.is_cuda() { KV_CACHE_BYTES.1 } else { KV_CACHE_BYTES.0 };
            batch.max_batch_total_tokens = Some((bytes / d.kv_bytes_per_token.max(1)).max(d.context_length));
        }
        tracing::info!(max_batch_size = batch.max_batch_size, max_batch_total_tokens = ?batch.max_batch_total_tokens,
            max_batch_prefill_tokens = batch.max_batch_prefill_tokens, "batching");
        if !settings.is_empty() {
            tracing::info!(system_prompt = settings.system_prompt.is_some(), chat_template = settings.chat_template.is_some(),
                generation_defaults = ?settings.generation_defaults, "prompt settings");
        }
        let shared =
            Shared { info, codec, template, defaults, prompt: settings.clone(), batch, vocabulary: Default::default() };
        Ok(Worker { shared: Arc::new(shared), model: loaded.model, device })
    }

    fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        match &self.model {
            Model::Decoder(decoder) => serve(
                &jobs,
                &mut Scheduler::new(decoder, &self.shared.codec, self.shared.batch, &self.shared.info.name),
            ),
            Model::Encoder(encoder) => {
                serve(&jobs, &mut EmbedQueue::new(encoder, self.device, self.shared.batch.max_batch_size))
            }
        }
    }
}

/// Refuses prompt settings that cannot apply: any on an encoder, a system prompt without a
/// chat template, generation defaults out of range, a template that fails on a plain
/// conversation (with the system prompt, when there is one).
fn check_prompt_settings(
    settings: &PromptSettings,
    kind: ModelKind,
    context_length: usize,
    template: Option<&ChatTemplate>,
) -> Result<()> {
    if kind == ModelKind::Encoder {
        let given: Vec<&str> = [
            (settings.system_prompt.is_some(), "--system-prompt"),
            (settings.chat_template.is_some(), "--chat-template"),
            (!settings.generation_defaults.is_empty(), "--generation-defaults"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
        if !given.is_empty() {
            let (verb, pronoun) = if given.len() == 1 { ("applies", "it") } else { ("apply", "them") };
            return Err(TorchError::InvalidSetting(format!(
                "{} {verb} to text generation, but this model is a sentence encoder (embeddings only): leave {pronoun} out",
                given.join(", ")
            )));
        }
        return Ok(());
    }
    prompt::check_generation_defaults(&settings.generation_defaults)
        .map_err(|e| TorchError::InvalidSetting(format!("--generation-defaults: {e}")))?;
    if let Some(n) = settings.generation_defaults.max_tokens
        && n as usize >= context_length
    {
        return Err(TorchError::InvalidSetting(format!(
            "--generation-defaults: max_tokens {n} leaves no room for a prompt in this model's context of {context_length} tokens"
        )));
    }
    let Some(template) = template else {
        if settings.system_prompt.is_some() {
            return Err(TorchError::InvalidSetting(
                "--system-prompt needs a chat template, and the model folder has none: give one with --chat-template"
                    .into(),
            ));
        }
        return Ok(());
    };
    if settings.system_prompt.is_none() && settings.chat_template.is_none() {
        return Ok(());
    }
    // A template that cannot render a plain conversation would fail every chat request.
    let probe = [ChatMessage::new("user", "Hello!")];
    let messages = prompt::with_system_prompt(settings, &probe);
    let rendered = template.render(&messages, None, true).map_err(|e| {
        let what = match (settings.chat_template.is_some(), settings.system_prompt.is_some()) {
            (true, true) => "--chat-template with --system-prompt",
            (true, false) => "--chat-template",
            (false, _) => "--system-prompt: the model's chat template",
        };
        TorchError::InvalidSetting(format!(
            "{what} cannot render a conversation of one user message{}: {}",
            if settings.system_prompt.is_some() { " after the system prompt" } else { "" },
            e.to_string().trim_start_matches("chat template: ")
        ))
    })?;
    if let Some(system) = &settings.system_prompt
        && !rendered.contains(system.trim())
    {
        tracing::warn!(
            "the chat template does not write the system prompt into the prompt as given; check --system-prompt"
        );
    }
    Ok(())
}

/// What the model thread runs: a decoder's scheduler or an encoder's queue.
trait ModelLoop {
    fn add(&mut self, job: Job);
    /// Nothing to run until another job arrives.
    fn is_idle(&self) -> bool;
    /// One round of work: a decoding step, a round of embedding batches.
    fn step(&mut self);
    /// Before a step: wait until then for more jobs to join it (`None`: step now).
    fn gather_until(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Runs `work` until every [`Engine`] handle is gone and the queued work is done, taking new
/// jobs between steps and blocking only when idle.
fn serve(jobs: &std::sync::mpsc::Receiver<Job>, work: &mut impl ModelLoop) {
    loop {
        if work.is_idle() {
            match jobs.recv() {
                Ok(job) => work.add(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            work.add(job);
        }
        while let Some(deadline) = work.gather_until() {
            let Some(wait) = deadline.checked_duration_since(std::time::Instant::now()) else { break };
            match jobs.recv_timeout(wait) {
                Ok(job) => work.add(job),
                Err(_) => break,
            }
        }
        work.step();
    }
}
