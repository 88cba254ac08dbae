//! `switchyard`: the one operator binary. Each subcommand runs one part (`api`, `worker`,
//! `scheduler`), or the whole stack on this machine (`dev`).

mod batch;
mod dev;
mod keys;
mod local_key;
mod status;
mod worker;

use clap::{Parser, Subcommand};

// A fifth of the api's and a third of the worker's CPU went to malloc/free under load
// (bench/README.md); mimalloc is faster at this many small, short-lived allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Serve models to many clients through a message queue.")]
struct Cli {
    /// Runtime threads for this process (default: one per core). `switchyard dev` sets it for
    /// the parts it starts when they share a small machine.
    #[arg(long, global = true, env = "SWITCHYARD_THREADS")]
    threads: Option<usize>,
    #[command(flatten)]
    telemetry: switchyard_telemetry::TelemetryOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything on this machine: nats-server, redis-server, api, scheduler, default workers.
    Dev(dev::DevOptions),
    /// Serve the OpenAI-compatible HTTP API.
    Api(switchyard_api::ApiOptions),
    /// Run a worker with one backend (`switchyard worker --list` shows them).
    Worker(Box<worker::WorkerCommand>),
    /// Create, list and revoke API keys.
    Keys(keys::KeysCommand),
    /// Submit, follow, list, cancel and download batches on any OpenAI-compatible api.
    Batch(batch::BatchCommand),
    /// Show every model, worker, queue and batch, as the api's status page does (admin key).
    Status(status::StatusCommand),
    /// Run the scheduler (dead letters, registry reaping).
    Scheduler(switchyard_scheduler::SchedulerOptions),
    /// Load a local model folder and print the completion of one prompt (no NATS or Redis).
    #[cfg(feature = "torch")]
    Generate(switchyard_torch::GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = switchyard_telemetry::init(cli.command.service(), &cli.telemetry)?;
    #[cfg(feature = "torch")]
    if let Command::Generate(args) = cli.command {
        return switchyard_torch::run_generate(args);
    }
    // One thread means one: the current-thread scheduler, without the work-stealing machinery.
    let runtime = match cli.threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(threads) => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?,
        None => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(async move {
        let shutdown = shutdown_on_signal();
        match cli.command {
            Command::Dev(options) => dev::run(options, shutdown).await,
            Command::Api(options) => switchyard_api::serve(options, shutdown).await,
            Command::Worker(command) => worker::run(*command, shutdown).await,
            Command::Scheduler(options) => switchyard_scheduler::run_scheduler(options, shutdown).await,
            Command::Keys(command) => keys::run(command).await,
            Command::Batch(command) => batch::run(command, shutdown).await,
            Command::Status(command) => status::run(command, shutdown).await,
            #[cfg(feature = "torch")]
            Command::Generate(_) => unreachable!("handled before the runtime starts"),
        }
    })
}

impl Command {
    /// The `service.name` this process's spans are exported under.
    fn service(&self) -> &'static str {
        match self {
            Command::Dev(_) => "switchyard-dev",
            Command::Api(_) => "switchyard-api",
            Command::Worker(_) => "switchyard-worker",
            Command::Keys(_) | Command::Batch(_) | Command::Status(_) => "switchyard-cli",
            Command::Scheduler(_) => "switchyard-scheduler",
            #[cfg(feature = "torch")]
            Command::Generate(_) => "switchyard-generate",
        }
    }
}

/// A token cancelled by the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        for round in 0.. {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            if round > 0 {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            cancel.cancel();
        }
    });
    token
}
