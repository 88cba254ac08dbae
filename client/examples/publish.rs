//! Publishes one job straight to NATS (no HTTP api) and prints what comes back as it streams.
//!
//! ```text
//! cargo run -p switchyard-client --example publish -- --nats-url nats://127.0.0.1:4222 \
//!     --redis-url redis://127.0.0.1:6379 --model echo "Hello from a direct publisher"
//! ```
//!
//! The text goes to stdout as it arrives; a summary line goes to stderr at the end:
//! `finish_reason=stop prompt_tokens=5 completion_tokens=5 deltas=5 job=01J…`. With `--kind
//! embedding` every argument is one input, and each vector is printed as a JSON array. Ctrl-C
//! cancels the job (the Redis flag, with `--redis-url`, and the NATS announcement).
//!
//! On a secured broker: `--nats-url nats://<user>:<password>@host:4222 --instance <user>
//! --nats-inbox-prefix _INBOX_<user>` (see `broker-config/secure/nats-server.conf`) and
//! `--redis-url redis://publisher:<password>@host:6379`. The protocol: `docs/protocol.md`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchyard_client::{BrokerAuth, JobTimeouts, Jobs};
use switchyard_schemas::{ChatMessage, EventBody, JobRequest, Lane, SamplingParams};

#[derive(Parser)]
#[command(about = "Publish one job straight to NATS and print its streamed output")]
struct Args {
    #[arg(long, env = "SWITCHYARD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// For cancel flags (optional: without it a cancellation is only announced).
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    auth: BrokerAuth,
    /// Names the reply subjects; on a secured broker, the one the publisher's permissions name.
    #[arg(long)]
    instance: Option<String>,
    #[arg(long)]
    model: String,
    #[arg(long, value_enum, default_value = "chat")]
    kind: Kind,
    #[arg(long, value_enum, default_value = "interactive")]
    lane: LaneArg,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Seconds to wait for a worker to start the job.
    #[arg(long, default_value_t = 30.0)]
    queue_timeout: f64,
    /// Cancel the job after this many text deltas (to watch cancellation).
    #[arg(long)]
    cancel_after: Option<usize>,
    #[arg(default_value = "Hello from a direct publisher")]
    prompt: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Chat,
    Completion,
    Embedding,
}

#[derive(Clone, Copy, ValueEnum)]
enum LaneArg {
    Interactive,
    Batch,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let instance = args.instance.clone().unwrap_or_else(|| format!("publisher-{}", ulid::Ulid::new().to_string().to_lowercase()));
    let nats = switchyard_client::connect_nats(&args.nats_url, &instance, &args.auth).await?;
    let redis = match &args.redis_url {
        Some(url) => Some(switchyard_client::connect_redis(url).await?),
        None => None,
    };
    let timeouts = JobTimeouts { queue: Duration::from_secs_f64(args.queue_timeout), idle: Duration::from_secs(120) };
    let jobs = Jobs::start_publisher(instance, nats.clone(), redis, timeouts).await?;

    let prompt = args.prompt.join(" ");
    let params = SamplingParams { max_tokens: args.max_tokens, ..Default::default() };
    let request = match args.kind {
        Kind::Chat => {
            JobRequest::Chat { messages: vec![ChatMessage::new("user", prompt)], params, tools: None, response_format: Default::default() }
        }
        Kind::Completion => JobRequest::Completion { prompt, params },
        Kind::Embedding => JobRequest::Embedding { input: args.prompt.clone() },
    };
    let lane = match args.lane {
        LaneArg::Interactive => Lane::Interactive,
        LaneArg::Batch => Lane::Batch,
    };
    let mut job = jobs.submit(lane, &args.model, request).await?;
    let job_id = job.id().to_string();

    let mut deltas = 0;
    let mut vectors: Vec<(u32, Vec<f32>)> = Vec::new();
    let mut stdout = std::io::stdout();
    let outcome = loop {
        let event = tokio::select! {
            event = job.next_output() => event,
            _ = tokio::signal::ctrl_c() => {
                jobs.cancel(&job_id).await?;
                nats.flush().await?;
                eprintln!("\ncancelled");
                return Ok(ExitCode::from(130));
            }
        };
        match event {
            Ok(EventBody::Delta { text, .. }) => {
                deltas += 1;
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
                if args.cancel_after == Some(deltas) {
                    jobs.cancel(&job_id).await?;
                }
            }
            Ok(EventBody::Embeddings { first_index, vectors: batch }) => {
                vectors.extend((first_index..).zip(batch));
            }
            Ok(event @ (EventBody::Done { .. } | EventBody::Error { .. })) => break Ok(event),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    if outcome.is_err() {
        // No worker started it, or it went silent: nobody should run it later.
        let _ = jobs.cancel(&job_id).await;
    }
    // What was published (a cancellation) reaches the server before the process ends.
    nats.flush().await?;
    vectors.sort_by_key(|(index, _)| *index);
    for (_, vector) in &vectors {
        let numbers: Vec<String> = vector.iter().map(f32::to_string).collect();
        println!("[{}]", numbers.join(", "));
    }
    if vectors.is_empty() {
        println!();
    }
    match outcome {
        Ok(EventBody::Done { finish_reason, usage }) => {
            eprintln!(
                "finish_reason={} prompt_tokens={} completion_tokens={} deltas={deltas} job={job_id}",
                finish_reason.as_str(),
                usage.prompt_tokens,
                usage.completion_tokens
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(EventBody::Error { code, message, upstream }) => {
            let upstream =
                upstream.map(|u| format!(" (upstream: status {}, type {:?}, code {:?})", u.status, u.r#type, u.code)).unwrap_or_default();
            eprintln!("error: {}: {message}{upstream}", code.as_str());
            Ok(ExitCode::from(1))
        }
        Ok(_) => unreachable!("the loop ends on a terminal event"),
        // No worker started it (it is cancelled: the handle is dropped unfinished), it went
        // silent, or the queue did not take it.
        Err(e) => Err(e.into()),
    }
}
