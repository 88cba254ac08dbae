//! Local Hugging Face models on libtorch (through `tch`): decoder LLMs for text generation
//! and sentence encoders for embeddings — the `torch` worker backend of Switchyard.
//!
//! This crate owns everything between a model folder and a stream of text: reading
//! `config.json`, the safetensors weights (one file or shards; f32, bf16 or f16), the
//! tokenizer, chat template and generation defaults; the forward passes (one file per
//! architecture in [`models`]: Llama/Mistral, Qwen2, BERT); decoding (greedy and seeded
//! sampling, penalties, stop strings and ids, logprobs, incremental UTF-8-safe text); and an
//! engine thread that owns the model. It does not speak NATS: [`TorchBackend`] adapts the
//! [`Engine`] to the worker runtime's `Backend` trait.
//!
//! # Using it
//!
//! ```no_run
//! use switchyard_torch::*;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), TorchError> {
//! // Blocking: loads the weights and starts the model thread.
//! let engine = Engine::load(EngineOptions {
//!     model_path: "models/tiny-llama".into(),
//!     device: "cpu".into(),      // or "cuda", "cuda:1"
//!     dtype: None,               // or Some("bf16".into())
//!     batch: BatchOptions::for_device("cpu"), // how many sequences share a forward pass
//!     prompt: PromptSettings::default(), // or a system prompt, chat template, defaults
//! })?;
//! assert_eq!(engine.info().kind, ModelKind::Decoder);
//!
//! let req = GenerateRequest::new(
//!     Prompt::Chat(vec![ChatMessage::new("user", "Hello!")]),
//!     SamplingParams { max_tokens: Some(32), temperature: Some(0.0), ..Default::default() },
//! );
//! // Any number of generations may run at once: they share the model's forward passes.
//! let cancel = CancellationToken::new(); // cancel() stops decoding before the next step
//! let mut events = engine.generate(req, cancel.clone());
//! while let Some(event) = events.recv().await {
//!     match event {
//!         GenerateEvent::Started { prompt_tokens, .. } => {}
//!         GenerateEvent::Delta { text, .. } => print!("{text}"),
//!         GenerateEvent::Finished { reason, prompt_tokens, completion_tokens } => break,
//!         GenerateEvent::Error(e) => eprintln!("{} ({})", e.message, e.code),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! An encoder folder (sentence-transformers layout) loads the same way and answers
//! [`Engine::embed`]: `engine.embed(vec!["a sentence".into()]).await?` gives one vector per
//! text (L2-normalised when the model's `modules.json` says so) and the prompt token count.
//!
//! # Threads and devices
//!
//! One `std::thread` per [`Engine`] owns the model and its key/value cache. Callers tokenize
//! and validate their own requests; the thread batches continuously: sequences join and
//! leave between decoding steps under [`BatchOptions`]' token budget, every step decodes
//! all running sequences in one forward pass, and each sequence's output is what it would
//! be alone (up to floating-point rounding). Embedding requests waiting at the same time are
//! encoded together. `generate` and `embed` never block the async runtime
//! (except `Engine::load`, which should run in `spawn_blocking`). On CPUs each engine thread
//! drives its own OpenMP team of `tch::get_num_threads()` threads; with several engines in one
//! process the teams add up, and once libgomp manages more threads than there are CPUs it
//! stops spinning between parallel regions, which slows batch-1 decoding by about a third
//! (benches/README.md). A worker serves one model per process, which avoids this. For CUDA,
//! `libtorch_cuda.so` is `dlopen`ed when a CUDA device is asked for, because rustc's
//! `--as-needed` drops it from the binary (the `cuda-link` feature keeps it linked instead, for
//! this crate's own test binaries). Neither path has been exercised on a GPU yet. Binaries
//! find libtorch through an rpath that `build.rs` adds for this crate's own tests; a binary
//! crate depending on this one adds the same from `DEP_SWITCHYARD_TORCH_LIBTORCH_LIB` (see
//! `build.rs`).

mod backend;
mod chat;
mod cli;
mod config;
mod engine;
mod error;
pub mod models;
mod prompt;
mod sampling;
mod tokenizer;
mod weights;

pub use backend::TorchBackend;
pub use chat::{ChatMessage, ToolCall};
pub use cli::{GenerateArgs, TorchWorkerArgs, run_generate};
pub use config::{DType, parse_device};
pub use engine::{
    BatchOptions, EMBED_BATCH, Embeddings, Engine, EngineOptions, FinishReason, GenerateError, GenerateEvent,
    GenerateEvents, GenerateRequest, Matcher, ModelInfo, ModelKind, Prompt,
};
pub use error::TorchError;
pub use prompt::{check_generation_defaults, parse_generation_defaults, read_chat_template, read_system_prompt};
pub use sampling::{SamplingParams, TokenLogprob, TopLogprob};
pub use switchyard_schemas::{GenerationDefaults, PromptSettings};

/// Test-only access to the forward pass (first-step logits) without going through sampling.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use crate::config::DType;
    use crate::error::{Result, TorchError};
    use crate::models::{self, Model};

    /// `template` (a chat template's text) rendered for `messages` and `tools` with the special
    /// tokens of `dir`'s `tokenizer_config.json`, as the engine renders the model's own
    /// template: for checking other models' templates against transformers without their
    /// weights.
    pub fn render_chat_template(
        dir: &Path,
        template: &str,
        messages: &[crate::ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let cfg: crate::config::TokenizerConfig =
            crate::config::read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let special_tokens = crate::chat::ChatTemplate::special_tokens(&cfg);
        crate::chat::ChatTemplate::new(template.to_owned(), special_tokens)?.render(
            messages,
            tools,
            add_generation_prompt,
        )
    }

    /// The f32 logits at the last position of `ids`, from a fresh cache, run alone.
    pub fn last_logits(dir: &Path, dtype: DType, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(prefill_logits(dir, dtype, &[ids.to_vec()])?.remove(0))
    }

    /// The f32 logits at the last position of each prompt, all prompts prefilled in one
    /// forward pass (left-padded to the longest), as the engine's scheduler runs them.
    pub fn prefill_logits(dir: &Path, dtype: DType, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let _no_grad = tch::no_grad_guard();
        let loaded = models::load(dir, tch::Device::Cpu, Some(dtype))?;
        let Model::Decoder(d) = loaded.model else {
            return Err(TorchError::WrongModelKind("generate text: it is a sentence encoder"));
        };
        let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (logits, _cache) = d.prefill(&rows);
        Ok(Vec::<Vec<f32>>::try_from(&logits)?)
    }
}
