//! Command-line pieces the `switchyard` binary mounts: `switchyard generate` (an offline check
//! of a model folder, no NATS or Redis) and the flags of `switchyard worker torch`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    BatchOptions, ChatMessage, Engine, EngineOptions, GenerateEvent, GenerateRequest, ModelKind, Prompt,
    PromptSettings, SamplingParams, TorchError,
};

/// `switchyard generate`: load a model folder and print the completion of one prompt.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "SWITCHYARD_MODEL_PATH")]
    pub model_path: PathBuf,
    /// The prompt; for an embedding model, the text to embed.
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as one user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// 0 for greedy decoding; default: the model's generation_config, else 1.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "SWITCHYARD_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16 or auto (the checkpoint's dtype on GPUs, f32 on CPUs).
    #[arg(long, env = "SWITCHYARD_DTYPE")]
    pub dtype: Option<String>,
}

/// `switchyard worker torch`: which model this worker serves, on what.
#[derive(Debug, Clone, clap::Args)]
pub struct TorchWorkerArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "SWITCHYARD_MODEL_PATH")]
    pub model_path: PathBuf,
    /// Model name clients ask for; default: the folder's name.
    #[arg(long, env = "SWITCHYARD_MODEL_NAME")]
    pub name: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "SWITCHYARD_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, bf16, f16 or auto (the checkpoint's dtype on GPUs, f32 on CPUs).
    #[arg(long, env = "SWITCHYARD_DTYPE")]
    pub dtype: Option<String>,
    /// Most sequences decoded in one forward pass (an embedding model: texts encoded in one),
    /// and so the worker's default --slots (twice this for an embedding model, so the next
    /// batch gathers while one runs). Default: 32 on CPU, 128 on CUDA.
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: Option<u32>,
    /// Most tokens the running batch's key/value cache may hold, as rows × the widest row's
    /// prompt plus max_tokens. Default: what 4 GiB of cache holds on CPU, 8 GiB on CUDA,
    /// for this model and dtype (never less than its context length).
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_TOTAL_TOKENS")]
    pub max_batch_total_tokens: Option<usize>,
    /// Most prompt tokens prefilled between two decoding steps. Default: 4096 on CPU, 16384
    /// on CUDA.
    #[arg(long, env = "SWITCHYARD_MAX_BATCH_PREFILL_TOKENS")]
    pub max_batch_prefill_tokens: Option<usize>,
    /// Waiting requests interrupt a running batch for prefill only when at least this
    /// fraction of its size can join at once. Default: 0.3.
    #[arg(long, env = "SWITCHYARD_WAITING_SERVED_RATIO")]
    pub waiting_served_ratio: Option<f32>,
    /// … or once the batch has decoded this many steps since requests last joined. Default: 20.
    #[arg(long, env = "SWITCHYARD_MAX_WAITING_TOKENS")]
    pub max_waiting_tokens: Option<usize>,
    /// The system message of a chat request that has none (no system or developer message):
    /// the text, or @FILE for a file's contents. It goes through the chat template like a
    /// client's own. Chat models only; completions get none.
    #[arg(long, env = "SWITCHYARD_SYSTEM_PROMPT", value_name = "TEXT|@FILE")]
    pub system_prompt: Option<String>,
    /// A Jinja chat template file used in place of the model folder's (its tool_use template
    /// too), rendered as the folder's would be. Chat models only.
    #[arg(long, env = "SWITCHYARD_CHAT_TEMPLATE", value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Decoding defaults for requests that leave them out, over generation_config.json's: a
    /// JSON object, or a file holding one, with any of temperature, top_p, top_k, max_tokens,
    /// stop, presence_penalty, frequency_penalty. A request's own values win.
    #[arg(long, env = "SWITCHYARD_GENERATION_DEFAULTS", value_name = "FILE|JSON")]
    pub generation_defaults: Option<String>,
}

impl TorchWorkerArgs {
    /// `--system-prompt`, `--chat-template` and `--generation-defaults`, read and checked
    /// (files read, JSON parsed, ranges checked; whether they suit the model is checked when
    /// it loads).
    pub fn prompt_settings(&self) -> Result<PromptSettings, TorchError> {
        Ok(PromptSettings {
            system_prompt: self.system_prompt.as_deref().map(crate::read_system_prompt).transpose()?,
            chat_template: self.chat_template.as_deref().map(crate::read_chat_template).transpose()?,
            generation_defaults: self
                .generation_defaults
                .as_deref()
                .map(crate::parse_generation_defaults)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    pub fn engine_options(&self) -> Result<EngineOptions, TorchError> {
        let d = BatchOptions::for_device(&self.device);
        let batch = BatchOptions {
            max_batch_size: self.max_batch_size.map_or(d.max_batch_size, |n| n as usize),
            max_batch_total_tokens: self.max_batch_total_tokens.or(d.max_batch_total_tokens),
            max_batch_prefill_tokens: self.max_batch_prefill_tokens.unwrap_or(d.max_batch_prefill_tokens),
            waiting_served_ratio: self.waiting_served_ratio.unwrap_or(d.waiting_served_ratio),
            max_waiting_tokens: self.max_waiting_tokens.unwrap_or(d.max_waiting_tokens),
        };
        Ok(EngineOptions {
            model_path: self.model_path.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            batch,
            prompt: self.prompt_settings()?,
        })
    }
}

/// Loads the folder, prints the completion of `--prompt` to stdout as it is generated, and the
/// token counts and speed to stderr. For an embedding model, prints the vector's length and
/// first values.
pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let engine = Engine::load(EngineOptions {
        model_path: args.model_path.clone(),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        batch: BatchOptions::for_device(&args.device),
        prompt: PromptSettings::default(),
    })
    .with_context(|| format!("loading {}", args.model_path.display()))?;
    let info = engine.info().clone();
    eprintln!(
        "loaded {} ({}, {}, {}) in {:.2}s; context {} tokens",
        info.name,
        info.architecture,
        info.dtype.name(),
        info.device,
        started.elapsed().as_secs_f64(),
        info.context_length
    );

    if info.kind == ModelKind::Encoder {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let out = rt.block_on(engine.embed(vec![args.prompt.clone()]))?;
        let v = &out.vectors[0];
        let head: Vec<String> = v.iter().take(8).map(|x| format!("{x:.5}")).collect();
        println!("[{}, …] ({} dimensions)", head.join(", "), v.len());
        eprintln!("{} prompt tokens", out.prompt_tokens);
        return Ok(());
    }

    let prompt = if args.chat {
        Prompt::Chat(vec![ChatMessage::new("user", args.prompt.clone())])
    } else {
        Prompt::Text(args.prompt.clone())
    };
    let params = SamplingParams {
        max_tokens: Some(args.max_tokens),
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: args.stop.clone(),
        ..Default::default()
    };
    let decode_start = Instant::now();
    let mut first_token = None;
    let mut rx = engine.generate(GenerateRequest::new(prompt, params), CancellationToken::new());
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = rx.blocking_recv() {
        match event {
            GenerateEvent::Started { .. } => {}
            GenerateEvent::Delta { text, .. } => {
                first_token.get_or_insert_with(Instant::now);
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
            }
            GenerateEvent::Finished { reason, prompt_tokens, completion_tokens } => {
                writeln!(stdout)?;
                let total = decode_start.elapsed().as_secs_f64();
                let after_first = first_token.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                let steady = if completion_tokens > 1 && after_first > 0.0 {
                    format!(", {:.1} tokens/s after the first", f64::from(completion_tokens - 1) / after_first)
                } else {
                    String::new()
                };
                eprintln!(
                    "{prompt_tokens} prompt tokens, {completion_tokens} completion tokens in {total:.2}s \
                     ({:.1} tokens/s{steady}); finish: {reason:?}",
                    f64::from(completion_tokens) / total.max(1e-9)
                );
                return Ok(());
            }
            GenerateEvent::Error(e) => anyhow::bail!("{e}"),
        }
    }
    anyhow::bail!("the model thread stopped without finishing")
}
