//! The engine: one thread owns the model and its caches; requests reach it through a channel,
//! and results stream back through tokio channels.
//!
//! One sequence runs at a time. The request queue, the per-request cancellation check between
//! decoding steps and the event stream are what continuous batching will keep; it will replace
//! the inner loop of [`Worker::generate`] with a scheduler over several sequences.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use tch::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::{self, DType, GenerationConfig, TokenizerConfig, read_json_opt};
use crate::error::{Result, TorchError};
use crate::models::{self, Decoder, Encoder, Model};
use crate::sampling::{Sampler, SamplingDefaults, SamplingParams, TokenLogprob, TopLogprob};
use crate::tokenizer::{Codec, Detokenizer, Gate, StopGate};

/// How many texts an encoder runs through the network at once.
pub const EMBED_BATCH: usize = 32;

/// Capacity of a request's event channel: generation pauses when the receiver falls this far
/// behind.
pub const EVENT_BUFFER: usize = 64;

/// What to load and where to run it.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// A Hugging Face model folder.
    pub model_path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `bf16`, `f16` or `auto`/`None`: the checkpoint's dtype on GPUs, f32 on CPUs.
    pub dtype: Option<String>,
}

impl EngineOptions {
    pub fn new(model_path: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions { model_path: model_path.into(), device: "cpu".into(), dtype: None }
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

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Completion text an earlier worker already produced (and sent): it is appended after
    /// the prompt and generation continues from there, without sending it again. Its tokens
    /// count towards `max_tokens`, the penalties and `completion_tokens`.
    pub resume_text: Option<String>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> GenerateRequest {
        GenerateRequest { prompt, params, resume_text: None }
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
    Generate { req: GenerateRequest, cancel: CancellationToken, tx: mpsc::Sender<GenerateEvent> },
    Embed { texts: Vec<String>, reply: oneshot::Sender<Result<Embeddings>> },
}

/// What callers share with the model thread: everything read-only.
struct Shared {
    info: ModelInfo,
    codec: Codec,
    template: Option<ChatTemplate>,
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

    /// Starts generating; events arrive on the returned receiver. Cancelling `cancel` (or
    /// dropping the receiver) stops decoding before the next step.
    pub fn generate(&self, req: GenerateRequest, cancel: CancellationToken) -> mpsc::Receiver<GenerateEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        if let Err(std::sync::mpsc::SendError(Job::Generate { tx, .. })) =
            self.jobs.send(Job::Generate { req, cancel, tx })
        {
            let _ = tx.try_send(GenerateEvent::Error(TorchError::EngineStopped.into()));
        }
        rx
    }

    /// Sentence embeddings of `texts`, in order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Embed { texts, reply }).map_err(|_| TorchError::EngineStopped)?;
        rx.await.map_err(|_| TorchError::EngineStopped)?
    }

    /// The chat template's text for `messages`, as transformers' `apply_chat_template`.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        render_chat(&self.shared, messages, add_generation_prompt)
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

fn render_chat(shared: &Shared, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    let template = shared
        .template
        .as_ref()
        .ok_or_else(|| TorchError::InvalidRequest(format!("model {} has no chat template", shared.info.name)))?;
    template.render(messages, add_generation_prompt)
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
    defaults: SamplingDefaults,
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

        let (kind, context_length, embedding_dim, template) = match &loaded.model {
            Model::Decoder(d) => (ModelKind::Decoder, d.context_length, None, ChatTemplate::load(dir, &tok_cfg)?),
            Model::Encoder(e) => {
                codec.set_truncation(e.context_length)?;
                (ModelKind::Encoder, e.context_length, Some(e.net.hidden_size as u32), None)
            }
        };

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
            embedding_dim,
            dtype: loaded.dtype,
            device: device_name,
        };
        tracing::info!(model = %info.name, arch = %info.architecture, dtype = info.dtype.name(),
            device = %info.device, context = info.context_length, "model loaded");
        Ok(Worker { shared: Arc::new(Shared { info, codec, template }), model: loaded.model, device, defaults })
    }

    fn run(self, jobs: std::sync::mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Generate { req, cancel, tx } => {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.generate(req, &cancel, &tx)));
                    let error = match outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(GenerateError::from(e)),
                        Err(p) => Some(GenerateError { code: "internal", message: panic_message(&p) }),
                    };
                    if let Some(e) = error {
                        let _ = tx.blocking_send(GenerateEvent::Error(e));
                    }
                }
                Job::Embed { texts, reply } => {
                    let out = std::panic::catch_unwind(AssertUnwindSafe(|| self.embed(&texts)))
                        .unwrap_or_else(|p| Err(TorchError::Internal(panic_message(&p))));
                    let _ = reply.send(out);
                }
            }
        }
    }

    fn decoder(&self) -> Result<&Decoder> {
        match &self.model {
            Model::Decoder(d) => Ok(d),
            Model::Encoder(_) => Err(TorchError::WrongModelKind("generate text: it is a sentence encoder")),
        }
    }

    fn encoder(&self) -> Result<&Encoder> {
        match &self.model {
            Model::Encoder(e) => Ok(e),
            Model::Decoder(_) => Err(TorchError::WrongModelKind("embed: it is a text generator")),
        }
    }

    /// Runs one request to its end; `Err` becomes the request's `Error` event.
    fn generate(
        &self,
        req: GenerateRequest,
        cancel: &CancellationToken,
        tx: &mpsc::Sender<GenerateEvent>,
    ) -> Result<()> {
        let decoder = self.decoder()?;
        let shared = &*self.shared;
        let codec = &shared.codec;
        let params = &req.params;

        let prompt_ids = match &req.prompt {
            Prompt::Text(text) => codec.encode(text, true)?,
            Prompt::Chat(messages) => codec.encode(&render_chat(shared, messages, true)?, false)?,
        };
        if prompt_ids.is_empty() {
            return Err(TorchError::InvalidRequest("the prompt has no tokens".into()));
        }
        let resume_ids = match req.resume_text.as_deref() {
            Some(text) if !text.is_empty() => codec.encode(text, false)?,
            _ => Vec::new(),
        };

        let context = shared.info.context_length;
        let prompt_tokens = prompt_ids.len() as u32;
        let room = context.saturating_sub(prompt_tokens);
        let max_tokens = match params.max_tokens {
            Some(n) if n > room => {
                return Err(TorchError::ContextLengthExceeded {
                    context_length: context,
                    prompt_tokens,
                    max_tokens: n,
                    requested: prompt_tokens + n,
                });
            }
            Some(n) => n,
            None if room == 0 => {
                return Err(TorchError::ContextLengthExceeded {
                    context_length: context,
                    prompt_tokens,
                    max_tokens: 1,
                    requested: prompt_tokens + 1,
                });
            }
            None => room,
        };

        let send = |event: GenerateEvent| tx.blocking_send(event).is_ok();
        if !send(GenerateEvent::Started { prompt_tokens, resumed_tokens: resume_ids.len() as u32 }) {
            return Ok(());
        }

        let mut stop_ids: Vec<u32> = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&shared.info.eos_token_ids);
        }
        let mut sampler = Sampler::new(params, self.defaults);
        let mut completion_tokens = resume_ids.len() as u32;
        for &id in &resume_ids {
            sampler.observe(id);
        }
        let mut context_ids = prompt_ids.clone();
        context_ids.extend(&resume_ids);
        let mut detok = Detokenizer::new(&context_ids);
        let mut gate = StopGate::new(&params.stop);
        let mut logprobs: Vec<TokenLogprob> = Vec::new();
        // Tokens generated since the last delta (whose text may still be held).
        let mut unsent_tokens = 0u32;
        let want_logprobs = params.logprobs || params.top_logprobs > 0;

        let finish = |reason, completion_tokens| {
            send(GenerateEvent::Finished { reason, prompt_tokens, completion_tokens });
            Ok(())
        };

        let mut cache = decoder.new_cache();
        if cancel.is_cancelled() {
            return finish(FinishReason::Cancelled, completion_tokens);
        }
        if completion_tokens >= max_tokens {
            // The resumed text already used the whole budget.
            return finish(FinishReason::Length, completion_tokens);
        }
        let mut logits = decoder.forward(&context_ids, &mut cache, self.device);

        let reason = loop {
            if cancel.is_cancelled() || tx.is_closed() {
                break FinishReason::Cancelled;
            }
            if completion_tokens >= max_tokens {
                break FinishReason::Length;
            }
            let choice = sampler.choose(&logits);
            completion_tokens += 1;
            if stop_ids.contains(&choice.id) {
                break FinishReason::Stop;
            }
            unsent_tokens += 1;
            if want_logprobs {
                logprobs.push(self.token_logprob(choice.id, choice.logprob.unwrap_or(f32::NAN), &choice.top));
            }
            let piece = detok.push(codec, choice.id)?;
            match gate.push(&piece) {
                Gate::Pass(text) => {
                    // Logprobs of tokens whose text is held back wait for that text.
                    if !text.is_empty()
                        && !send(GenerateEvent::Delta {
                            text,
                            tokens: std::mem::take(&mut unsent_tokens),
                            logprobs: std::mem::take(&mut logprobs),
                        })
                    {
                        break FinishReason::Cancelled;
                    }
                }
                Gate::Stop(text) => {
                    if !text.is_empty() || unsent_tokens > 0 {
                        send(GenerateEvent::Delta { text, tokens: unsent_tokens, logprobs });
                    }
                    return finish(FinishReason::Stop, completion_tokens);
                }
            }
            if completion_tokens >= max_tokens {
                break FinishReason::Length;
            }
            logits = decoder.forward(&[choice.id], &mut cache, self.device);
        };

        // Release what was held: an unfinished character only if no more tokens can come.
        let mut tail = String::new();
        if reason != FinishReason::Cancelled {
            match gate.push(&detok.finish(codec)?) {
                Gate::Pass(text) => tail.push_str(&text),
                Gate::Stop(text) => {
                    if !text.is_empty() || unsent_tokens > 0 {
                        send(GenerateEvent::Delta { text, tokens: unsent_tokens, logprobs });
                    }
                    return finish(FinishReason::Stop, completion_tokens);
                }
            }
        }
        tail.push_str(&gate.flush());
        if !tail.is_empty() || unsent_tokens > 0 {
            send(GenerateEvent::Delta { text: tail, tokens: unsent_tokens, logprobs });
        }
        finish(reason, completion_tokens)
    }

    fn token_logprob(&self, id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
        let codec = &self.shared.codec;
        let describe = |id: u32| {
            let bytes = codec.token_bytes(id);
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (token, bytes) = describe(id);
        let top_logprobs = top
            .iter()
            .map(|&(token_id, logprob)| {
                let (token, bytes) = describe(token_id);
                TopLogprob { token_id, token, bytes, logprob }
            })
            .collect();
        TokenLogprob { token_id: id, token, bytes, logprob, top_logprobs }
    }

    fn embed(&self, texts: &[String]) -> Result<Embeddings> {
        let encoder = self.encoder()?;
        let codec = &self.shared.codec;
        let encoded: Vec<Vec<u32>> = texts.iter().map(|t| codec.encode(t, true)).collect::<Result<_>>()?;
        let prompt_tokens = encoded.iter().map(Vec::len).sum::<usize>() as u32;

        // Batch texts of similar length together so little of each batch is padding.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        let mut vectors = vec![Vec::new(); encoded.len()];
        for batch in order.chunks(EMBED_BATCH) {
            let width = batch.iter().map(|&i| encoded[i].len()).max().unwrap_or(0).max(1);
            let mut ids = vec![0i64; batch.len() * width];
            let mut mask = vec![0i64; batch.len() * width];
            for (row, &i) in batch.iter().enumerate() {
                for (col, &id) in encoded[i].iter().enumerate() {
                    ids[row * width + col] = id as i64;
                    mask[row * width + col] = 1;
                }
            }
            let shape = [batch.len() as i64, width as i64];
            let ids = Tensor::from_slice(&ids).view(shape).to_device(self.device);
            let mask = Tensor::from_slice(&mask).view(shape).to_device(self.device);
            let hidden = encoder.net.forward(&ids, &mask);
            let pooled = encoder.pipeline.pool(&hidden, &mask).to_device(Device::Cpu);
            let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&pooled)?;
            for (row, &i) in rows.into_iter().zip(batch) {
                vectors[i] = row;
            }
        }
        Ok(Embeddings { vectors, prompt_tokens })
    }
}
