//! `switchyard worker <backend>`: the runtime from `switchyard-worker` around one backend.

use std::sync::Arc;

use clap::{Args, Subcommand};
use switchyard_worker::backends::{dummy, echo};
use switchyard_worker::{Backend, RuntimeOptions, run_worker};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCommand {
    /// List the backends, one line each.
    #[arg(long)]
    list: bool,
    #[command(subcommand)]
    backend: Option<BackendCommand>,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Transport debugging: reflects the last user message (or prompt) token by token; debug vectors for embeddings.
    Echo {
        #[command(flatten)]
        runtime: RuntimeOptions,
        #[command(flatten)]
        echo: echo::EchoArgs,
    },
    /// Transport debugging: answers every request with the same fixed reply.
    Dummy {
        #[command(flatten)]
        runtime: RuntimeOptions,
        #[command(flatten)]
        dummy: dummy::DummyArgs,
    },
    /// HepAI's example functions as a tool model: custom_method, get_stream, get_info (and fail, sleep).
    ToolsDemo {
        #[command(flatten)]
        runtime: RuntimeOptions,
        /// The tool model's name.
        #[arg(long, env = "SWITCHYARD_MODEL_NAME", default_value = "demo-tools")]
        name: String,
    },
    /// Proxy to an OpenAI-compatible upstream server (vLLM, a cloud API, another Switchyard).
    Openai {
        #[command(flatten)]
        runtime: RuntimeOptions,
        #[command(flatten)]
        openai: switchyard_upstream::OpenAiArgs,
    },
    /// Local Hugging Face model folders on libtorch: Llama/Qwen2/Mistral decoders, BERT sentence encoders.
    #[cfg(feature = "torch")]
    Torch {
        #[command(flatten)]
        runtime: RuntimeOptions,
        #[command(flatten)]
        torch: switchyard_torch::TorchWorkerArgs,
    },
}

impl BackendCommand {
    fn runtime(&self) -> &RuntimeOptions {
        match self {
            BackendCommand::Echo { runtime, .. }
            | BackendCommand::Dummy { runtime, .. }
            | BackendCommand::ToolsDemo { runtime, .. }
            | BackendCommand::Openai { runtime, .. } => runtime,
            #[cfg(feature = "torch")]
            BackendCommand::Torch { runtime, .. } => runtime,
        }
    }
}

const BACKENDS: &[(&str, &str)] = &[
    ("echo", "transport debugging: reflects the last user message or prompt token by token; debug embedding vectors"),
    ("dummy", "transport debugging: a fixed reply to every request"),
    (
        "openai",
        "an OpenAI-compatible upstream server's models (vLLM, a cloud API, another Switchyard), errors and usage as it reports them",
    ),
    ("tools-demo", "hosted functions: HepAI's example tool model (custom_method, get_stream, get_info)"),
    #[cfg(feature = "torch")]
    ("torch", "local Hugging Face models on libtorch (CPU/CUDA): Llama, Qwen2, Mistral chat; BERT sentence embeddings"),
];

pub async fn run(command: WorkerCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(backend) = command.backend else {
        if command.list {
            for (name, about) in BACKENDS {
                println!("{name:<8} {about}");
            }
            return Ok(());
        }
        anyhow::bail!("name a backend: switchyard worker <BACKEND> (see `switchyard worker --list`)");
    };
    // Before the backend starts: the torch engine makes its metric handles as it loads.
    if backend.runtime().metrics_listen.is_some() {
        switchyard_telemetry::prometheus::install();
    }
    let (runtime, backend, default_slots): (RuntimeOptions, Arc<dyn Backend>, u32) = match backend {
        BackendCommand::Echo { runtime, echo } => (runtime, Arc::new(echo::Echo::new(echo)), 256),
        BackendCommand::Dummy { runtime, dummy } => (runtime, Arc::new(dummy::Dummy::new(dummy)), 256),
        BackendCommand::Openai { runtime, openai } => {
            // Each slot is one upstream request in flight.
            let slots = runtime.slots.unwrap_or(64);
            (runtime, Arc::new(switchyard_upstream::OpenAi::connect(&openai, slots as usize).await?), slots)
        }
        BackendCommand::ToolsDemo { runtime, name } => (runtime, Arc::new(switchyard_tools::demo::toolbox(&name)), 256),
        #[cfg(feature = "torch")]
        BackendCommand::Torch { runtime, torch } => {
            let backend = switchyard_torch::TorchBackend::load(&torch)?;
            let slots = backend.slots();
            (runtime, Arc::new(backend), slots)
        }
    };
    let runtime = RuntimeOptions { slots: Some(runtime.slots.unwrap_or(default_slots)), ..runtime };
    run_worker(backend, runtime, shutdown).await
}
