//! `switchyard-bench echo`: how fast Switchyard's job path is with the echo backend at zero
//! delay — latency at concurrency 1, time to first streamed token, tokens/s through one
//! stream, requests/s at 64 clients — printed as one markdown table beside the targets and
//! what peers measured on the same kind of machine. `switchyard-bench batch`: OpenAI's Files +
//! Batch API on the same backend (see `batch.rs`). `switchyard-bench torch-mixed` and
//! `switchyard-bench embed`: a `switchyard worker torch` through the api against transformers
//! and sentence-transformers (see `mixed.rs`, `embed.rs`).

mod batch;
mod client;
mod cluster;
mod embed;
mod mcp;
mod mixed;
mod probe;
mod reference;
mod stack;
mod tools;
mod trace;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::client::{Conn, Target, stream_chat};
use crate::stack::{Stack, StackOptions};

#[derive(Parser)]
#[command(name = "switchyard-bench", about = "Benchmarks of Switchyard's job path and of its torch worker through the api.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The echo backend at zero delay: latency, time to first token, stream throughput, requests/s.
    Echo(EchoOptions),
    /// OpenAI's Files + Batch API on the echo backend: batch lines/s, interactive latency
    /// beside a batch, and the api's and scheduler's memory with a ~100 MB file.
    Batch(batch::BatchOptions),
    /// (c) of the torch benchmarks: 64 mixed /v1/completions requests at once to ONE torch
    /// worker (the random ~135M Llama) against transformers in static batches of 16.
    TorchMixed(mixed::MixedOptions),
    /// (d) of the torch benchmarks: 1,000 one-sentence /v1/embeddings requests from 64 clients
    /// to ONE torch worker (all-MiniLM-L6-v2) against sentence-transformers at batch 32.
    Embed(embed::EmbedOptions),
    /// A trivial hosted function (`custom_method` of `tools-demo`) over REST and through `/mcp`
    /// beside echo chat: latency at concurrency 1, calls/s at 64 clients.
    Tools(tools::ToolsOptions),
    /// The echo job path ((a), (b), (d) of `echo`) on a three-node NATS cluster with R3 streams
    /// against one nats-server with R1 streams, same run: a table and the ratio.
    NatsCluster(cluster::ClusterOptions),
}

#[derive(Debug, Args, Clone)]
struct EchoOptions {
    /// An api already running (with an echo worker at zero delay). Without it the bench starts
    /// its own stack on free ports and stops it at the end.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// Also run the scheduler in the bench's own stack (it is not on the request path).
    #[arg(long)]
    scheduler: bool,
    /// API key for `--url` (the bench's own stack creates one for itself).
    #[arg(long, env = "SWITCHYARD_API_KEY")]
    api_key: Option<String>,
    /// Start the bench's own api with `--no-auth` (no API keys, no rate limits).
    #[arg(long)]
    no_auth: bool,
    /// Give the bench's own key limits (passed to `switchyard keys create`), so every request
    /// runs the rate-limit script in Redis, e.g. `--key-limits=--rpm=100000000,--tpm=1000000000`.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    key_limits: Vec<String>,
    /// `policy` phase: the limits of its rate-limited key (high enough that nothing is refused).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_value = "--rpm=100000000,--tpm=1000000000")]
    policy_limits: Vec<String>,
    /// `policy` phase: the requests of each setting are sent in this many rounds, the settings
    /// taking turns, so a change in the machine's state affects them alike.
    #[arg(long, default_value_t = 10)]
    policy_rounds: usize,
    /// Environment for a part of the bench's own stack, `PART:NAME=VALUE` (PART: api, worker,
    /// nats, redis, scheduler, all), e.g. `--env api:SWITCHYARD_THREADS=2 --env nats:GOMAXPROCS=2`.
    #[arg(long, value_parser = parse_env)]
    env: Vec<(String, String, String)>,
    /// Start every part with a thread per core (each part's default on a machine of its own)
    /// instead of the share of this machine that `switchyard dev` gives it.
    #[arg(long)]
    thread_per_core: bool,
    /// Folder for nats-server's JetStream data (e.g. /dev/shm); default: the bench's temp folder.
    #[arg(long)]
    nats_store: Option<PathBuf>,
    /// Slots of the bench's echo worker.
    #[arg(long, default_value_t = 256)]
    worker_slots: u32,
    /// (a): sequential non-stream requests measured.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// (b): sequential stream requests measured.
    #[arg(long, default_value_t = 2000)]
    stream_requests: usize,
    /// Unmeasured requests before (a) and (b).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// (d): how long the concurrent clients run, measured.
    #[arg(long, default_value = "10s", value_parser = switchyard_broker::parse_duration)]
    duration: Duration,
    /// (d): how long the concurrent clients run before measuring.
    #[arg(long, default_value = "2s", value_parser = switchyard_broker::parse_duration)]
    warmup_duration: Duration,
    /// (d): concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// (c): word tokens in the one long stream.
    #[arg(long, default_value_t = 200_000)]
    stream_tokens: usize,
    /// (c): how many times the long stream runs (best and median are reported).
    #[arg(long, default_value_t = 3)]
    stream_repeats: usize,
    /// The user message of (a), (b) and (d).
    #[arg(long, default_value = "hello world")]
    message: String,
    /// NATS URL of the stack behind `--url`, for the `trace` phase.
    #[arg(long)]
    nats_url: Option<String>,
    /// Redis URL of the stack behind `--url`, for the `probe` phase.
    #[arg(long)]
    redis_url: Option<String>,
    /// Phases to run: a, b, c, d, floor (GET /health: the HTTP layer alone), and for
    /// investigation: probe (the api's work before a job is queued, and the transport floors
    /// now), sweep (requests/s at several concurrencies), trace (per-hop timing of one
    /// request, from a NATS monitor), policy (what API keys, rate limits and validation add to
    /// (a): `--requests` per setting against a second, `--no-auth` api on the same stack).
    #[arg(long, value_delimiter = ',', default_value = "floor,a,b,c,d")]
    only: Vec<String>,
    /// Concurrency levels of the `sweep` phase (requests/s and latency at each), run for
    /// `--sweep-duration` each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,128,256")]
    sweep: Vec<usize>,
    #[arg(long, default_value = "3s", value_parser = switchyard_broker::parse_duration)]
    sweep_duration: Duration,
    /// Threads of the bench client's runtime (1: a current-thread runtime, the least it can
    /// take from a 2-core machine).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the bench stack's logs folder.
    #[arg(long)]
    keep_logs: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = match cli.command {
        Command::Echo(options) => options,
        Command::Batch(options) => {
            // The bench takes one core at most, as for `echo` (memory is sampled on a thread of its own).
            return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(batch::run(options));
        }
        // One client thread: the worker and the Python reference need the cores.
        Command::TorchMixed(options) => {
            return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(mixed::run(options));
        }
        Command::Embed(options) => {
            return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(embed::run(options));
        }
        Command::Tools(options) => {
            return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(tools::run(options));
        }
        Command::NatsCluster(options) => {
            return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(cluster::run(options));
        }
    };
    let runtime = if options.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(options.client_threads).enable_all().build()?
    };
    runtime.block_on(run(options))
}

/// The processes whose CPU time is accounted per phase.
struct Procs(Vec<(String, u32)>);

struct Snapshot {
    cpu: Vec<Duration>,
    switches: Vec<u64>,
    machine: Duration,
}

impl Procs {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cpu: self.0.iter().map(|(_, pid)| stack::cpu_time(*pid).unwrap_or_default()).collect(),
            switches: self.0.iter().map(|(_, pid)| stack::context_switches(*pid).unwrap_or_default()).collect(),
            machine: stack::machine_busy().unwrap_or_default(),
        }
    }
}

/// CPU used by each process during one phase.
struct CpuUse {
    phase: String,
    wall: Duration,
    requests: u64,
    per_process: Vec<(String, Duration)>,
    /// Context switches of each process's threads during the phase.
    switches: Vec<u64>,
    /// CPU the whole machine was busy for during the phase (others' work included).
    machine: Duration,
}

struct Accounting {
    procs: Procs,
    rows: Vec<CpuUse>,
}

impl Accounting {
    async fn phase<T, F>(&mut self, phase: &str, work: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<(T, u64)>>,
    {
        eprintln!("· {phase}");
        let before = self.procs.snapshot();
        let start = Instant::now();
        let (value, requests) = work.await?;
        let wall = start.elapsed();
        let after = self.procs.snapshot();
        let per_process = self
            .procs
            .0
            .iter()
            .zip(before.cpu.iter().zip(&after.cpu))
            .map(|((name, _), (b, a))| (name.clone(), a.saturating_sub(*b)))
            .collect();
        let switches = before.switches.iter().zip(&after.switches).map(|(b, a)| a.saturating_sub(*b)).collect();
        let machine = after.machine.saturating_sub(before.machine);
        self.rows.push(CpuUse { phase: phase.to_string(), wall, requests, per_process, switches, machine });
        Ok(value)
    }
}

async fn run(options: EchoOptions) -> anyhow::Result<()> {
    let mut own_stack = None;
    let url = match &options.url {
        Some(url) => url.clone(),
        None => {
            let switchyard = options.binaries.switchyard()?;
            eprintln!("starting a stack on free ports with {}", switchyard.display());
            let stack = Stack::start(&StackOptions {
                switchyard: switchyard.clone(),
                nats_server: options.binaries.nats_server.clone(),
                redis_server: options.binaries.redis_server.clone(),
                scheduler: options.scheduler,
                scheduler_args: Vec::new(),
                worker_backend: stack::WorkerBackend::Echo,
                worker_slots: options.worker_slots,
                worker_delay: "0ms".into(),
                worker_args: Vec::new(),
                no_auth: options.no_auth,
                key_args: options.key_limits.clone(),
                env: options.env.clone(),
                thread_per_core: options.thread_per_core,
                nats_store: options.nats_store.clone(),
            })?;
            let url = stack.api_url.clone();
            own_stack = Some((stack, switchyard));
            url
        }
    };
    let result = tokio::select! {
        result = bench(&options, &url, own_stack.as_mut()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The clients of an interrupted phase are aborted now; let the runtime drop them, so their
    // connections close and the api does not wait for them while it shuts down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some((stack, _)) = own_stack.as_mut()
        && (result.is_err() || options.keep_logs)
    {
        stack.keep_logs();
    }
    result
}

async fn bench(options: &EchoOptions, url: &str, mut stack: Option<&mut (Stack, PathBuf)>) -> anyhow::Result<()> {
    let api_key = match stack.as_deref() {
        Some((stack, _)) => stack.api_key.clone(),
        None => options.api_key.clone(),
    };
    let target = Target::parse(url, api_key.as_deref())?;
    wait_until_serving(&target, stack.as_deref_mut().map(|(s, _)| s)).await?;
    eprintln!("api at {url} serves model echo");

    let mut procs = vec![("bench client".to_string(), std::process::id())];
    if let Some((stack, _)) = stack.as_deref() {
        procs.extend(stack.procs().map(|p| (p.name.clone(), p.pid())));
    }
    let mut accounting = Accounting { procs: Procs(procs), rows: Vec::new() };
    let wants = |phase: &str| options.only.iter().any(|p| p == phase);

    let chat = chat_body(&options.message, false);
    let chat_stream = chat_body(&options.message, true);
    let mut report = Report::default();

    if wants("floor") {
        let empty = Bytes::new();
        let n = options.requests.min(2000);
        let latencies = accounting
            .phase(&format!("floor: {n} × GET /health, concurrency 1"), async {
                let l = sequential(&target, Method::GET, "/health", &empty, options.warmup, n, |_| Ok(())).await?;
                Ok((l, (n + options.warmup) as u64))
            })
            .await?;
        report.floor_latency = Some(Stats::of(latencies));
        let window = options.duration.min(Duration::from_secs(3));
        let load_result = accounting
            .phase(&format!("floor: GET /health, {} clients, {:?}", options.concurrency, window), async {
                let r = load(&target, options.concurrency, Duration::from_millis(500), window, Method::GET, "/health", &empty).await?;
                let n = r.sent;
                Ok((r, n))
            })
            .await?;
        report.floor_load = Some(load_result);
    }

    if wants("a") {
        let expected = options.message.clone();
        let n = options.requests;
        let latencies = accounting
            .phase(&format!("(a) {n} × non-stream chat, concurrency 1"), async {
                let l = sequential(&target, Method::POST, "/v1/chat/completions", &chat, options.warmup, n, |body| {
                    check_completion(body, &expected)
                })
                .await?;
                Ok((l, (n + options.warmup) as u64))
            })
            .await?;
        report.latency = Some(Stats::of(latencies));
    }

    if wants("b") {
        let n = options.stream_requests;
        let stats = accounting
            .phase(&format!("(b) {n} × stream chat, concurrency 1"), async {
                let mut conn = Conn::open(&target).await?;
                for _ in 0..options.warmup {
                    stream_once(&mut conn, &chat_stream, &options.message).await?;
                }
                let mut first = Vec::with_capacity(n);
                let mut done = Vec::with_capacity(n);
                for _ in 0..n {
                    let r = stream_once(&mut conn, &chat_stream, &options.message).await?;
                    first.push(r.first_token);
                    done.push(r.done);
                }
                Ok(((Stats::of(first), Stats::of(done)), (n + options.warmup) as u64))
            })
            .await?;
        report.first_token = Some(stats.0);
        report.stream_done = Some(stats.1);
    }

    if wants("c") {
        let message = long_message(options.stream_tokens);
        // The job envelope carries the message through NATS, whose default max_payload is 1 MiB.
        if message.len() > 1_000_000 {
            bail!(
                "{} tokens make a {} byte message, over NATS's default 1 MiB payload limit for the job envelope; use fewer --stream-tokens",
                options.stream_tokens,
                message.len()
            );
        }
        let body = chat_body(&message, true);
        let repeats = options.stream_repeats.max(1);
        let runs = accounting
            .phase(&format!("(c) {repeats} × one stream of {} tokens ({} byte message)", options.stream_tokens, message.len()), async {
                let mut conn = Conn::open(&target).await?;
                // Warm up on a short stream of the same shape.
                let short = long_message(options.stream_tokens.min(10_000));
                let warm = stream_chat(&mut conn, &chat_body(&short, true)).await?;
                verify_content(&warm.content, &short)?;
                let mut runs = Vec::new();
                for _ in 0..repeats {
                    let r = stream_chat(&mut conn, &body).await?;
                    verify_content(&r.content, &message)?;
                    runs.push(r);
                }
                Ok((runs, repeats as u64 + 1))
            })
            .await?;
        report.stream = Some(StreamFigures::of(options.stream_tokens, runs));
    }

    if wants("d") {
        let c = options.concurrency;
        let r = accounting
            .phase(
                &format!("(d) {c} clients × non-stream chat, {:?} after {:?} warm-up", options.duration, options.warmup_duration),
                async {
                    let r =
                        load(&target, c, options.warmup_duration, options.duration, Method::POST, "/v1/chat/completions", &chat).await?;
                    let n = r.sent;
                    Ok((r, n))
                },
            )
            .await?;
        report.load = Some(r);
    }

    if wants("policy") {
        let Some((stack, _)) = stack.as_deref_mut() else {
            bail!("the policy phase starts a second api on the bench's own stack: run it without --url");
        };
        let Some(key) = stack.api_key.clone() else {
            bail!("the policy phase compares API keys with --no-auth: run it without --no-auth");
        };
        let open_url = stack.add_api("api-no-auth", &["--no-auth"])?;
        let limited_key = stack.add_key(&options.policy_limits)?;
        let settings = [
            ("`--no-auth`".to_string(), Target::parse(&open_url, None)?),
            ("API key, no limits".to_string(), Target::parse(url, Some(&key))?),
            (format!("API key with limits `{}`", options.policy_limits.join(" ")), Target::parse(url, Some(&limited_key))?),
        ];
        wait_until_serving(&settings[0].1, Some(stack)).await?;
        let rounds = options.policy_rounds.max(1);
        let per_round = options.requests.div_ceil(rounds);
        let expected = options.message.clone();
        let samples = accounting
            .phase(&format!("policy: {} × 3 settings × {per_round} non-stream chat, concurrency 1", rounds), async {
                let mut samples = vec![Vec::new(); settings.len()];
                for _ in 0..rounds {
                    for ((_, target), samples) in settings.iter().zip(&mut samples) {
                        let l =
                            sequential(target, Method::POST, "/v1/chat/completions", &chat, options.warmup.min(50), per_round, |body| {
                                check_completion(body, &expected)
                            })
                            .await?;
                        samples.extend(l);
                    }
                }
                let n = (rounds * settings.len() * (per_round + options.warmup.min(50))) as u64;
                Ok((samples, n))
            })
            .await?;
        report.policy = settings.into_iter().map(|(name, _)| name).zip(samples.into_iter().map(Stats::of)).collect();
    }

    if wants("sweep") {
        for &c in &options.sweep {
            let r = accounting
                .phase(&format!("sweep: {c} clients × non-stream chat, {:?}", options.sweep_duration), async {
                    let r =
                        load(&target, c, Duration::from_millis(500), options.sweep_duration, Method::POST, "/v1/chat/completions", &chat)
                            .await?;
                    let n = r.sent;
                    Ok((r, n))
                })
                .await?;
            report.sweep.push((c, r));
        }
    }

    if wants("probe") {
        let n = options.requests.min(2000);
        let empty = Bytes::new();
        let invalid = Bytes::from(serde_json::to_vec(
            &json!({ "model": "echo", "messages": [{ "role": "user", "content": options.message }], "temperature": 5 }),
        )?);
        let mut rows = Vec::new();
        let probes: [(&str, Method, &str, &Bytes, StatusCode); 3] = [
            ("GET /health (HTTP only)", Method::GET, "/health", &empty, StatusCode::OK),
            ("GET /v1/models (auth, registry copy)", Method::GET, "/v1/models", &empty, StatusCode::OK),
            (
                "POST chat with temperature 5 → 400 (HTTP, auth, JSON, model lookup, validation; no job)",
                Method::POST,
                "/v1/chat/completions",
                &invalid,
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (name, method, path, body, expect) in probes {
            let l = accounting
                .phase(&format!("probe: {n} × {name}"), async {
                    let l = sequential_expect(&target, method, path, body, options.warmup, n, expect, |_| Ok(())).await?;
                    Ok((l, (n + options.warmup) as u64))
                })
                .await?;
            rows.push((name.to_string(), Stats::of(l)));
        }
        let urls = match stack.as_deref() {
            Some((stack, _)) => Some((stack.nats_url.clone(), Some(stack.redis_url.clone()))),
            None => options.nats_url.clone().map(|n| (n, options.redis_url.clone())),
        };
        if let Some((nats_url, redis_url)) = urls {
            let floors = accounting
                .phase(&format!("probe: {n} rounds of transport floors (1 NATS req/reply, 2 JetStream jobs, 1 Redis EXISTS)"), async {
                    let f = probe::transport(&nats_url, redis_url.as_deref(), options.warmup, n).await?;
                    Ok((f, (n + options.warmup) as u64))
                })
                .await?;
            rows.extend(floors);
        }
        report.probe = rows;
    }

    if wants("trace") {
        let nats_url = match (stack.as_deref(), &options.nats_url) {
            (Some((stack, _)), _) => stack.nats_url.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => bail!("the trace phase needs --nats-url with --url"),
        };
        let n = options.requests.min(2000);
        let t = accounting
            .phase(&format!("trace: {n} × non-stream chat with a NATS monitor"), async {
                let t = trace::trace(&target, &nats_url, &chat, options.warmup, n).await?;
                Ok((t, (n + options.warmup) as u64))
            })
            .await?;
        report.trace = Some(t);
    }

    if let Some((stack, _)) = stack.as_deref_mut() {
        stack.check_alive()?;
    }
    let binary = stack.as_deref().map(|(_, path)| path.clone());
    let text = report.render(options, url, binary.as_deref(), &accounting.rows);
    println!("{text}");
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json(options, &accounting.rows))?)?;
        eprintln!("figures written to {}", path.display());
    }
    let errors = report.load.as_ref().map_or(0, |l| l.errors + l.non_200)
        + report.sweep.iter().map(|(_, l)| l.errors + l.non_200).sum::<u64>()
        + report.floor_load.as_ref().map_or(0, |l| l.errors + l.non_200);
    if errors > 0 {
        bail!("{errors} requests failed under load (see the table)");
    }
    Ok(())
}

fn chat_body(message: &str, stream: bool) -> Bytes {
    let mut body = json!({ "model": "echo", "messages": [{ "role": "user", "content": message }] });
    if stream {
        body["stream"] = json!(true);
    }
    Bytes::from(serde_json::to_vec(&body).expect("JSON of a JSON value"))
}

/// `n` one-letter word tokens, `a b c … z a b …`: short, so 200k of them stay well under
/// NATS's 1 MiB payload, and ordered, so a lost, doubled or swapped token shows.
fn long_message(n: usize) -> String {
    let mut text = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push((b'a' + (i % 26) as u8) as char);
    }
    text
}

fn check_completion(body: &[u8], expected: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_slice(body).context("response body is not JSON")?;
    let content = value["choices"][0]["message"]["content"].as_str().context("no choices[0].message.content")?;
    verify_content(content, expected)
}

fn verify_content(got: &str, expected: &str) -> anyhow::Result<()> {
    if got != expected {
        let at = got.bytes().zip(expected.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        let around = |s: &str| s.get(at.saturating_sub(40)..(at + 40).min(s.len())).unwrap_or("").to_string();
        bail!(
            "CONTENT MISMATCH: got {} bytes, expected {}; first difference at byte {at}: got …{:?}…, expected …{:?}…",
            got.len(),
            expected.len(),
            around(got),
            around(expected)
        );
    }
    Ok(())
}

async fn stream_once(conn: &mut Conn, body: &Bytes, expected: &str) -> anyhow::Result<client::StreamResult> {
    let r = stream_chat(conn, body).await?;
    verify_content(&r.content, expected)?;
    Ok(r)
}

async fn wait_until_serving(target: &Target, stack: Option<&mut Stack>) -> anyhow::Result<()> {
    wait_for_model(target, stack, "echo", false, Duration::from_secs(60)).await
}

/// Waits until the api is ready and lists model `name` (an embedding model when `embedding`,
/// else a text one), failing early if a part of `stack` exits.
async fn wait_for_model(
    target: &Target,
    mut stack: Option<&mut Stack>,
    name: &str,
    embedding: bool,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let empty = Bytes::new();
    let mut last = String::from("no answer");
    loop {
        if let Some(stack) = stack.as_deref_mut() {
            stack.check_alive()?;
        }
        if start.elapsed() > limit {
            bail!("the api at {} did not serve model {name} within {limit:?} (last: {last})", target.addr);
        }
        match Conn::open(target).await {
            Ok(mut conn) => match conn.call(Method::GET, "/ready", &empty).await {
                Ok((StatusCode::OK, _)) => match conn.call(Method::GET, "/v1/models", &empty).await {
                    Ok((StatusCode::OK, body)) => {
                        let models: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let serving = models["data"]
                            .as_array()
                            .is_some_and(|data| data.iter().any(|m| m["id"] == name && (m["kind"] == "embedding") == embedding));
                        if serving {
                            return Ok(());
                        }
                        last = format!("no model {name} in /v1/models yet");
                    }
                    Ok((status, _)) => last = format!("/v1/models answered {status}"),
                    Err(e) => last = e.to_string(),
                },
                Ok((status, _)) => last = format!("/ready answered {status}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request a simulated client repeats: how the client opens its connection (with whatever
/// the protocol wants once per connection, e.g. MCP's handshake — never timed) and one call
/// on it, answer read to its end (timed). [`Rest`] is one HTTP request; `tools.rs` has MCP's
/// `tools/call`.
trait Exchange: Clone + Send + Sync + 'static {
    type Client: Send + 'static;
    fn open(&self, target: &Target) -> impl Future<Output = anyhow::Result<Self::Client>> + Send;
    /// One call: the answer's status and body (what `check`s see). An error is the connection's.
    fn call(&self, client: &mut Self::Client) -> impl Future<Output = anyhow::Result<(StatusCode, Bytes)>> + Send;
    /// Ends the client's session, if it has one (after its last call, not timed).
    fn close(&self, client: Self::Client) -> impl Future<Output = ()> + Send {
        async move { drop(client) }
    }
    /// What is sent, for messages: `POST /v1/chat/completions`.
    fn describe(&self) -> String;
}

/// One HTTP request on a keep-alive connection, its body built once.
#[derive(Clone)]
struct Rest {
    method: Method,
    path: String,
    body: Bytes,
}

impl Rest {
    fn new(method: Method, path: &str, body: &Bytes) -> Rest {
        Rest { method, path: path.to_string(), body: body.clone() }
    }
}

impl Exchange for Rest {
    type Client = Conn;

    async fn open(&self, target: &Target) -> anyhow::Result<Conn> {
        Conn::open(target).await
    }

    async fn call(&self, conn: &mut Conn) -> anyhow::Result<(StatusCode, Bytes)> {
        conn.call(self.method.clone(), &self.path, &self.body).await
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// `warmup` then `n` requests one after another on one connection; the latency of each of
/// the `n`. `check` sees every body (outside the timed span).
async fn sequential(
    target: &Target,
    method: Method,
    path: &str,
    body: &Bytes,
    warmup: usize,
    n: usize,
    check: impl Fn(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    sequential_calls(target, &Rest::new(method, path, body), warmup, n, StatusCode::OK, check).await
}

#[allow(clippy::too_many_arguments)]
async fn sequential_expect(
    target: &Target,
    method: Method,
    path: &str,
    body: &Bytes,
    warmup: usize,
    n: usize,
    expect: StatusCode,
    check: impl Fn(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    sequential_calls(target, &Rest::new(method, path, body), warmup, n, expect, check).await
}

/// `warmup` then `n` calls one after another on one client; the latency of each of the `n`.
/// Every answer must have status `expect`; `check` sees every body (outside the timed span).
async fn sequential_calls<E: Exchange>(
    target: &Target,
    exchange: &E,
    warmup: usize,
    n: usize,
    expect: StatusCode,
    check: impl Fn(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = exchange.open(target).await?;
    let mut latencies = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        let (status, response) = exchange.call(&mut client).await?;
        let elapsed = start.elapsed();
        if status != expect {
            bail!("{} answered {status}: {}", exchange.describe(), String::from_utf8_lossy(&response[..response.len().min(500)]));
        }
        check(&response).with_context(|| format!("{}, call {i}", exchange.describe()))?;
        if i >= warmup {
            latencies.push(elapsed);
        }
    }
    exchange.close(client).await;
    Ok(latencies)
}

/// What `concurrency` clients looping one request each achieved.
struct LoadResult {
    concurrency: usize,
    /// 200 answers to requests started in the measured window.
    ok: u64,
    /// Every request sent, warm-up included (for CPU per request).
    sent: u64,
    non_200: u64,
    errors: u64,
    /// From the window's start to the last measured answer.
    elapsed: Duration,
    latency: Stats,
    first_problem: Option<String>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn load(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    method: Method,
    path: &str,
    body: &Bytes,
) -> anyhow::Result<LoadResult> {
    load_calls(target, concurrency, warmup, duration, &Rest::new(method, path, body), |_| Ok(())).await
}

/// `concurrency` clients, each looping one call of `exchange` on its own connection, for
/// `warmup` then `duration` (measured). `check` sees every 200 answer after its latency is
/// taken; one it rejects fails the run (a wrong answer is not a result to count).
async fn load_calls<E: Exchange>(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    exchange: &E,
    check: impl Fn(&[u8]) -> anyhow::Result<()> + Clone + Send + 'static,
) -> anyhow::Result<LoadResult> {
    // Connect everyone first, so connection setup is not part of the warm-up or window.
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(exchange.open(target).await?);
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (target, exchange, check) = (target.clone(), exchange.clone(), check.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let (mut non_200, mut errors) = (0u64, 0u64);
            let mut first_problem = None;
            let mut last_done = measure_from;
            let mut sent = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                sent += 1;
                let measured = t0 >= measure_from;
                match exchange.call(&mut client).await {
                    Ok((status, response)) => {
                        let t1 = Instant::now();
                        if status == StatusCode::OK {
                            check(&response).with_context(|| format!("{} under load", exchange.describe()))?;
                            if measured {
                                latencies.push(t1 - t0);
                                last_done = last_done.max(t1);
                            }
                        } else {
                            non_200 += u64::from(measured);
                            first_problem.get_or_insert_with(|| {
                                format!("{status}: {}", String::from_utf8_lossy(&response[..response.len().min(300)]))
                            });
                        }
                    }
                    Err(e) => {
                        errors += u64::from(measured);
                        first_problem.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        client = exchange.open(&target).await?;
                    }
                }
            }
            exchange.close(client).await;
            Ok::<_, anyhow::Error>((latencies, non_200, errors, first_problem, last_done, sent))
        });
    }
    let mut all = Vec::new();
    let (mut non_200, mut errors, mut first_problem, mut last_done, mut sent) = (0, 0, None, measure_from, 0);
    while let Some(joined) = tasks.join_next().await {
        let (latencies, n, e, problem, done, s) = joined??;
        sent += s;
        all.extend(latencies);
        non_200 += n;
        errors += e;
        if first_problem.is_none() {
            first_problem = problem;
        }
        last_done = last_done.max(done);
    }
    Ok(LoadResult {
        concurrency,
        ok: all.len() as u64,
        sent,
        non_200,
        errors,
        elapsed: last_done - measure_from,
        latency: Stats::of(all),
        first_problem,
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    mean: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stats {
            n,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[n - 1],
            mean: samples.iter().sum::<Duration>() / n as u32,
        }
    }
}

struct StreamFigures {
    tokens: usize,
    /// tokens/s of each run.
    rates: Vec<f64>,
    best: f64,
    median: f64,
    runs: Vec<client::StreamResult>,
}

impl StreamFigures {
    fn of(tokens: usize, runs: Vec<client::StreamResult>) -> StreamFigures {
        let rates: Vec<f64> = runs.iter().map(|r| tokens as f64 / r.done.as_secs_f64()).collect();
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        StreamFigures { tokens, best: sorted[sorted.len() - 1], median: sorted[sorted.len() / 2], rates, runs }
    }
}

#[derive(Default)]
struct Report {
    floor_latency: Option<Stats>,
    floor_load: Option<LoadResult>,
    latency: Option<Stats>,
    first_token: Option<Stats>,
    stream_done: Option<Stats>,
    stream: Option<StreamFigures>,
    load: Option<LoadResult>,
    sweep: Vec<(usize, LoadResult)>,
    trace: Option<trace::TraceReport>,
    probe: Vec<(String, Stats)>,
    /// `policy`: (a) per api setting, `--no-auth` first.
    policy: Vec<(String, Stats)>,
}

/// A markdown section heading and the head of its table.
fn table_head(title: &str, columns: &[&str]) -> String {
    format!("\n### {title}\n\n| {} |\n|{}", columns.join(" | "), "---|".repeat(columns.len()))
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 { format!("{ms:.3} ms") } else { format!("{ms:.1} ms") }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "✅" } else { "❌ miss" }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores (nproc), {model}")
}

fn profile_of(path: Option<&std::path::Path>) -> String {
    match path {
        None => "external (--url)".into(),
        Some(p) => {
            let s = p.display().to_string();
            let profile = if s.contains("/release/") {
                "release"
            } else if s.contains("/debug/") {
                "debug"
            } else {
                "unknown profile"
            };
            format!("{profile} ({s})")
        }
    }
}

impl Report {
    fn render(&self, options: &EchoOptions, url: &str, binary: Option<&std::path::Path>, cpu: &[CpuUse]) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(String::new());
        line("## Switchyard echo benchmark".into());
        line(String::new());
        line(format!("- machine: {}; every part on it", machine()));
        line(format!(
            "- switchyard: {}; bench client: {} build, {} runtime thread(s)",
            profile_of(binary),
            if cfg!(debug_assertions) { "debug" } else { "release" },
            options.client_threads.max(1)
        ));
        let auth = if options.no_auth {
            "--no-auth".to_string()
        } else if options.key_limits.is_empty() {
            "API key (cached), no rate limits".to_string()
        } else {
            format!("API key with limits {}", options.key_limits.join(" "))
        };
        line(format!("- api: {url}; {auth}; model `echo` at zero delay; message {:?}", options.message));
        if options.url.is_none() {
            let shared = switchyard_broker::SharedMachine::this_machine();
            line(if options.thread_per_core {
                "- threads: every part a thread per core (--thread-per-core)".to_string()
            } else {
                format!(
                    "- threads: as `switchyard dev` shares this machine: {} per part, {} for nats-server",
                    shared.part_threads, shared.nats_threads
                )
            });
        }
        if !options.env.is_empty() || options.nats_store.is_some() {
            let env: Vec<String> = options.env.iter().map(|(p, n, v)| format!("{p}:{n}={v}")).collect();
            line(format!(
                "- stack variations: env [{}]; JetStream store {}",
                env.join(" "),
                options.nats_store.as_ref().map_or("temp folder".into(), |p| p.display().to_string())
            ));
        }
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            line(format!("- load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")));
        }
        line(String::new());
        line("| figure | Switchyard | target | LiteLLM proxy | Ray Serve | transport floor |".into());
        line("|---|---|---|---|---|---|".into());
        if let Some(s) = &self.latency {
            line(format!(
                "| (a) non-stream latency p50, concurrency 1 (n={}) | **{}** | ≤ 0.5 ms {} | 6.2 ms | 6.4 ms | 0.08 ms (axum→NATS req/reply) |",
                s.n,
                ms(s.p50),
                verdict(s.p50 <= Duration::from_micros(500))
            ));
            line(format!(
                "| (a) non-stream latency p99 | **{}** | ≤ 3 ms {} | | | |",
                ms(s.p99),
                verdict(s.p99 <= Duration::from_millis(3))
            ));
            line(format!("| (a) p90 / p99.9 / max / mean | {} / {} / {} / {} | | | | |", ms(s.p90), ms(s.p999), ms(s.max), ms(s.mean)));
        }
        if let Some(s) = &self.first_token {
            line(format!(
                "| (b) time to first token p50 (n={}) | **{}** | ≤ 0.5 ms {} | 12.6 ms | 7.8 ms | 0.145 ms (worker→NATS→api→SSE) |",
                s.n,
                ms(s.p50),
                verdict(s.p50 <= Duration::from_micros(500))
            ));
            line(format!("| (b) time to first token p99 | **{}** | | | | |", ms(s.p99)));
        }
        if let Some(s) = &self.stream_done {
            line(format!("| (b) whole short stream to [DONE] p50 / p99 | {} / {} | | | | |", ms(s.p50), ms(s.p99)));
        }
        if let Some(s) = &self.stream {
            line(format!(
                "| (c) tokens/s through one stream ({} tokens), best of {} | **{}** | ≥ 200,000 {} | 2.8k chunks/s | 113k chunks/s | ~140k events/s to one client |",
                thousands(s.tokens as f64),
                s.rates.len(),
                thousands(s.best),
                verdict(s.best >= 200_000.0)
            ));
            line(format!("| (c) tokens/s, median | {} | | | | |", thousands(s.median)));
            let r = &s.runs[s.rates.iter().position(|&x| x == s.median).unwrap_or(0)];
            line(format!(
                "| (c) median run: to [DONE] / first token / SSE chunks / body bytes / reads | {} / {} / {} / {} / {} | | | | |",
                ms(r.done),
                ms(r.first_token),
                thousands(r.events as f64),
                thousands(r.body_bytes as f64),
                thousands(r.frames as f64)
            ));
        }
        if let Some(l) = &self.load {
            line(format!(
                "| (d) requests/s at {} clients ({:.1} s) | **{}** | ≥ 20,000 {} | 83–189 | 266 | 66k (axum→NATS req/reply) |",
                l.concurrency,
                l.elapsed.as_secs_f64(),
                thousands(l.rate()),
                verdict(l.rate() >= 20_000.0)
            ));
            line(format!(
                "| (d) latency under load p50 / p99 / max | {} / {} / {} | | | | |",
                ms(l.latency.p50),
                ms(l.latency.p99),
                ms(l.latency.max)
            ));
            line(format!("| (d) errors / non-200 | {} / {} | 0 {} | | | |", l.errors, l.non_200, verdict(l.errors + l.non_200 == 0)));
        }
        if let Some(s) = &self.floor_latency {
            line(format!(
                "| floor: GET /health p50 / p99, concurrency 1 (this api, this client) | {} / {} | | | | 0.02 ms (axum JSON handler) |",
                ms(s.p50),
                ms(s.p99)
            ));
        }
        if let Some(l) = &self.floor_load {
            line(format!(
                "| floor: GET /health requests/s at {} clients | {} (p50 {}, errors {}) | | | | ~174k (axum JSON handler) |",
                l.concurrency,
                thousands(l.rate()),
                ms(l.latency.p50),
                l.errors + l.non_200
            ));
        }
        for l in [&self.load, &self.floor_load].into_iter().flatten() {
            if let Some(problem) = &l.first_problem {
                line(format!("\nfirst failure at {} clients: {problem}", l.concurrency));
            }
        }
        if !self.sweep.is_empty() {
            line(table_head("Concurrency sweep (non-stream chat)", &["clients", "requests/s", "p50", "p99", "errors"]));
            for (c, l) in &self.sweep {
                line(format!(
                    "| {c} | {} | {} | {} | {} |",
                    thousands(l.rate()),
                    ms(l.latency.p50),
                    ms(l.latency.p99),
                    l.errors + l.non_200
                ));
            }
        }
        if !self.probe.is_empty() {
            line(table_head(
                "Probes: the api before a job is queued, and the transport alone (concurrency 1)",
                &["probe", "p50", "p90", "p99"],
            ));
            for (name, s) in &self.probe {
                line(format!("| {name} | {} | {} | {} |", ms(s.p50), ms(s.p90), ms(s.p99)));
            }
        }
        if let Some((_, open)) = self.policy.first() {
            line(table_head(
                "What API keys, rate limits and validation add (non-stream chat, concurrency 1, settings taking turns)",
                &["api setting", "p50", "p99", "added p50", "added p99", "target"],
            ));
            let added = |a: Duration, b: Duration| format!("{:+.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0);
            for (i, (name, s)) in self.policy.iter().enumerate() {
                let (added_p50, added_p99, target) = if i == 0 {
                    ("—".to_string(), "—".to_string(), String::new())
                } else {
                    let ok = s.p50.saturating_sub(open.p50) <= Duration::from_micros(100);
                    (added(s.p50, open.p50), added(s.p99, open.p99), format!("≤ +0.1 ms {}", verdict(ok)))
                };
                line(format!("| {name} | {} | {} | {added_p50} | {added_p99} | {target} |", ms(s.p50), ms(s.p99)));
            }
        }
        if let Some(t) = &self.trace {
            line(t.render());
        }
        if !cpu.is_empty() && cpu[0].per_process.len() > 1 {
            let names: Vec<&str> = cpu[0].per_process.iter().map(|(n, _)| n.as_str()).collect();
            let columns: Vec<&str> = ["phase", "wall", "requests"]
                .into_iter()
                .chain(names.iter().copied())
                .chain(["total", "total µs/request", "cores busy (ours / whole machine)"])
                .collect();
            line(table_head("CPU time per phase (user+system, from /proc/PID/stat; 10 ms resolution)", &columns));
            for row in cpu {
                let total: Duration = row.per_process.iter().map(|(_, d)| *d).sum();
                let per = |d: Duration| {
                    if row.requests > 0 { format!("{:.0} µs/req", d.as_secs_f64() * 1e6 / row.requests as f64) } else { ms(d) }
                };
                let cells: Vec<String> = row.per_process.iter().map(|(_, d)| per(*d)).collect();
                line(format!(
                    "| {} | {:.2} s | {} | {} | {:.2} s | {} | {:.2} / {:.2} |",
                    row.phase,
                    row.wall.as_secs_f64(),
                    row.requests,
                    cells.join(" | "),
                    total.as_secs_f64(),
                    per(total),
                    total.as_secs_f64() / row.wall.as_secs_f64().max(1e-9),
                    row.machine.as_secs_f64() / row.wall.as_secs_f64().max(1e-9)
                ));
            }
            let columns: Vec<&str> = ["phase"].into_iter().chain(names.iter().copied()).collect();
            line(table_head("Context switches per request (all threads of each process)", &columns));
            for row in cpu {
                let cells: Vec<String> = row
                    .switches
                    .iter()
                    .map(|s| if row.requests > 0 { format!("{:.1}", *s as f64 / row.requests as f64) } else { s.to_string() })
                    .collect();
                line(format!("| {} | {} |", row.phase, cells.join(" | ")));
            }
        }
        out
    }

    fn json(&self, options: &EchoOptions, cpu: &[CpuUse]) -> serde_json::Value {
        let stats = |s: &Stats| json!({ "n": s.n, "p50_ms": s.p50.as_secs_f64() * 1e3, "p90_ms": s.p90.as_secs_f64() * 1e3, "p99_ms": s.p99.as_secs_f64() * 1e3, "p999_ms": s.p999.as_secs_f64() * 1e3, "max_ms": s.max.as_secs_f64() * 1e3, "mean_ms": s.mean.as_secs_f64() * 1e3 });
        let load = |l: &LoadResult| json!({ "concurrency": l.concurrency, "requests_per_s": l.rate(), "ok": l.ok, "errors": l.errors, "non_200": l.non_200, "seconds": l.elapsed.as_secs_f64(), "latency": stats(&l.latency) });
        json!({
            "machine": machine(),
            "message": options.message,
            "a_latency": self.latency.as_ref().map(stats),
            "b_first_token": self.first_token.as_ref().map(stats),
            "b_stream_done": self.stream_done.as_ref().map(stats),
            "c_stream": self.stream.as_ref().map(|s| json!({
                "tokens": s.tokens, "tokens_per_s": s.rates, "best": s.best, "median": s.median,
                "runs": s.runs.iter().map(|r| json!({ "done_ms": r.done.as_secs_f64() * 1e3, "first_token_ms": r.first_token.as_secs_f64() * 1e3, "events": r.events, "body_bytes": r.body_bytes, "reads": r.frames })).collect::<Vec<_>>(),
            })),
            "d_load": self.load.as_ref().map(load),
            "floor_latency": self.floor_latency.as_ref().map(stats),
            "floor_load": self.floor_load.as_ref().map(load),
            "sweep": self.sweep.iter().map(|(_, l)| load(l)).collect::<Vec<_>>(),
            "cpu": cpu.iter().map(|row| json!({
                "phase": row.phase, "wall_s": row.wall.as_secs_f64(), "requests": row.requests,
                "cpu_s": row.per_process.iter().map(|(n, d)| (n.clone(), json!(d.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
                "context_switches": row.per_process.iter().zip(&row.switches).map(|((n, _), s)| (n.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
                "machine_busy_s": row.machine.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })
    }
}

fn parse_env(text: &str) -> Result<(String, String, String), String> {
    let (part, rest) = text.split_once(':').ok_or("expected PART:NAME=VALUE")?;
    let (name, value) = rest.split_once('=').ok_or("expected PART:NAME=VALUE")?;
    if !["api", "worker", "nats", "redis", "scheduler", "all"].contains(&part) {
        return Err(format!("unknown part {part:?} (api, worker, nats, redis, scheduler, all)"));
    }
    Ok((part.to_string(), name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
    }

    #[test]
    fn long_message_has_n_tokens() {
        let m = long_message(30);
        assert_eq!(m.split(' ').count(), 30);
        assert!(m.starts_with("a b c"));
    }

    #[test]
    fn only_loopback() {
        assert!(Target::parse("http://127.0.0.1:8080", None).is_ok());
        assert!(Target::parse("http://localhost:8080/v1", Some("sk")).is_ok());
        assert!(Target::parse("http://10.0.0.1:8080", None).is_err());
    }
}
