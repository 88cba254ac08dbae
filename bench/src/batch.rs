//! `switchyard-bench batch`: OpenAI's Files + Batch API on the echo backend, every part on this
//! machine — (a) lines/s of a chat batch from the start of the upload to the output file
//! downloaded, with the phase split; (b) interactive latency while a batch runs on the same
//! worker, and how much of the worker the batch keeps; (c) peak memory of the api and the
//! scheduler while a ~100 MB, 50,000-line file is uploaded and run. Each phase starts its own
//! stack (nats-server, redis-server, api, scheduler, one echo worker) and stops it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::Args;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Conn, Target};
use crate::stack::{self, Stack, StackOptions};
use crate::{Stats, machine, ms, profile_of, table_head, thousands, verdict};

const CHAT: &str = "/v1/chat/completions";

#[derive(Debug, Args, Clone)]
pub struct BatchOptions {
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// Environment for a part, `PART:NAME=VALUE` (PART: api, worker, nats, redis, scheduler, all).
    #[arg(long, value_parser = crate::parse_env)]
    env: Vec<(String, String, String)>,
    /// Start every part with a thread per core instead of the share `switchyard dev` gives it.
    #[arg(long)]
    thread_per_core: bool,
    /// Folder for nats-server's JetStream data (e.g. /dev/shm); default: the bench's temp folder.
    #[arg(long)]
    nats_store: Option<PathBuf>,
    /// Phases to run: a (throughput), b (interactive latency beside a batch), c (memory with a
    /// ~100 MB file).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    only: Vec<String>,
    /// Measured runs of each figure (the best and the spread are reported).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// (a), (b): lines of the chat batch (`line <i> says hello`, 4 word tokens each).
    #[arg(long, default_value_t = 10_000)]
    lines: usize,
    /// (a): slots of the echo worker (zero delay); one stack per count, its runs side by side.
    #[arg(long = "a-slots", value_delimiter = ',', default_value = "16,128")]
    a_slots: Vec<u32>,
    /// (a): an unmeasured batch of this many lines before the measured ones (0: none).
    #[arg(long, default_value_t = 1000)]
    warmup_lines: usize,
    /// (b): slots of the echo worker.
    #[arg(long = "b-slots", default_value_t = 16)]
    b_slots: u32,
    /// (b): the echo worker's delay per streamed token.
    #[arg(long = "b-delay", default_value = "2ms")]
    b_delay: String,
    /// (b): the interactive request's user message (its words are the tokens streamed back).
    #[arg(long = "b-message", default_value = "hello world")]
    b_message: String,
    /// (b): how long each measurement window lasts (interactive latency; batch lines/s).
    #[arg(long = "b-window", default_value = "3s", value_parser = switchyard_broker::parse_duration)]
    b_window: Duration,
    /// (c): lines of the large file.
    #[arg(long = "c-lines", default_value_t = 50_000)]
    c_lines: usize,
    /// (c): bytes of the large file (its lines padded to reach it).
    #[arg(long = "c-bytes", default_value_t = 100_000_000)]
    c_bytes: usize,
    /// (c): `max_tokens` of each line of the large file (the echo would otherwise send the
    /// whole ~2 kB prompt back).
    #[arg(long = "c-max-tokens", default_value_t = 16)]
    c_max_tokens: u32,
    /// (c): slots of the echo worker (zero delay).
    #[arg(long = "c-slots", default_value_t = 16)]
    c_slots: u32,
    /// Extra arguments of `switchyard scheduler`, e.g. `--scheduler-args=--batch-window=4096`.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    scheduler_args: Vec<String>,
    /// Extra arguments of the echo worker, e.g. `--worker-args=--batch-reserve=0`.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// How often the bench asks `GET /v1/batches/{id}` while a batch runs (the phase split's
    /// resolution).
    #[arg(long, default_value = "20ms", value_parser = switchyard_broker::parse_duration)]
    poll: Duration,
    /// Longest any one batch may take before the bench gives up.
    #[arg(long, default_value = "180s", value_parser = switchyard_broker::parse_duration)]
    batch_timeout: Duration,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the stacks' logs folders.
    #[arg(long)]
    keep_logs: bool,
}

pub async fn run(options: BatchOptions) -> anyhow::Result<()> {
    let switchyard = options.binaries.switchyard()?;
    let result = tokio::select! {
        result = bench(&options, &switchyard) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    result
}

async fn bench(options: &BatchOptions, switchyard: &std::path::Path) -> anyhow::Result<()> {
    let wants = |phase: &str| options.only.iter().any(|p| p == phase);
    let repeats = options.repeats.max(1);
    let mut report = Report::default();

    if wants("a") {
        let input = multipart(&chat_input(options.lines, None));
        let warmup = (options.warmup_lines > 0).then(|| multipart(&chat_input(options.warmup_lines, None)));
        for &slots in &options.a_slots {
            eprintln!("· (a) {} lines, echo worker --slots {slots} --delay 0ms: {repeats} runs", options.lines);
            let stack = Running::start(options, switchyard, slots, "0ms").await?;
            let result = async {
                let pulls = Pulls::start(&stack.stack.nats_url).await?;
                if let Some(warmup) = &warmup {
                    let run = run_batch(&stack, warmup, options.warmup_lines, options).await?;
                    eprintln!("  warm-up: {} lines in {:.2} s", options.warmup_lines, run.total().as_secs_f64());
                }
                let mut runs = Vec::new();
                for i in 0..repeats {
                    pulls.take();
                    let mut run = run_batch(&stack, &input, options.lines, options).await?;
                    run.pulls = pulls.take();
                    check_echo_output(&run.output, options.lines, None)?;
                    eprintln!("  run {}: {:.0} lines/s ({:.2} s)", i + 1, run.rate(), run.total().as_secs_f64());
                    runs.push(run);
                }
                anyhow::Ok(runs)
            }
            .await;
            let runs = stack.finish(result, options.keep_logs)?;
            report.throughput.push(Throughput { slots, runs });
        }
    }

    if wants("b") {
        eprintln!(
            "· (b) interactive latency beside a {}-line batch, echo worker --slots {} --delay {}: {repeats} rounds",
            options.lines, options.b_slots, options.b_delay
        );
        let stack = Running::start(options, switchyard, options.b_slots, &options.b_delay).await?;
        let result = async {
            let input = multipart(&chat_input(options.lines, None));
            let chat = crate::chat_body(&options.b_message, false);
            // Warm up the interactive path and the batch path once.
            interactive(&stack.api, &chat, &options.b_message, 50, Duration::ZERO).await?;
            let mut rounds = Vec::new();
            for i in 0..repeats {
                let idle = interactive(&stack.api, &chat, &options.b_message, 20, options.b_window).await?;
                let alone = beside_batch(&stack, &input, options, None).await?;
                let with = beside_batch(&stack, &input, options, Some(&chat)).await?;
                let busy = with.latencies.clone().unwrap_or_default();
                let round = Round { idle: Stats::of(idle), busy: Stats::of(busy), alone, with };
                eprintln!(
                    "  round {}: p50 idle {} / with batch {} (×{:.2}); batch {:.0} lines/s alone, {:.0} beside interactive ({:.0}%)",
                    i + 1,
                    ms(round.idle.p50),
                    ms(round.busy.p50),
                    round.p50_ratio(),
                    round.alone.rate,
                    round.with.rate,
                    round.capacity() * 100.0
                );
                rounds.push(round);
            }
            anyhow::Ok(rounds)
        }
        .await;
        report.beside = stack.finish(result, options.keep_logs)?;
    }

    if wants("c") {
        let text = large_input(options.c_lines, options.c_bytes, options.c_max_tokens);
        let input = multipart(&text);
        eprintln!(
            "· (c) a {} byte, {}-line file, echo worker --slots {} --delay 0ms: {repeats} runs, each on a fresh stack",
            text.len(),
            options.c_lines,
            options.c_slots
        );
        for i in 0..repeats {
            let stack = Running::start(options, switchyard, options.c_slots, "0ms").await?;
            let result = async {
                let watched = ["api", "scheduler", "nats-server", "worker-echo"];
                let pids: Vec<(String, u32)> =
                    watched.iter().filter_map(|name| stack.stack.pid_of(name).map(|pid| (name.to_string(), pid))).collect();
                let at_start: Vec<u64> = pids.iter().map(|(_, pid)| status_kb(*pid, "VmRSS:").unwrap_or(0)).collect();
                let sampler = Sampler::start(pids.iter().map(|(_, pid)| *pid).collect(), Duration::from_millis(10));
                let run = run_batch(&stack, &input, options.c_lines, options).await;
                let samples = sampler.finish();
                let run = run?;
                let hwm: Vec<u64> = pids.iter().map(|(_, pid)| status_kb(*pid, "VmHWM:").unwrap_or(0)).collect();
                check_echo_output(&run.output, options.c_lines, Some(options.c_max_tokens))?;
                let per_phase = run
                    .phases
                    .iter()
                    .map(|phase| {
                        let peak = (0..pids.len())
                            .map(|p| {
                                samples.iter().filter(|(t, _)| *t >= phase.start && *t <= phase.end).map(|(_, kb)| kb[p]).max().unwrap_or(0)
                            })
                            .collect();
                        (phase.name, peak)
                    })
                    .collect();
                let memory =
                    Memory { names: pids.into_iter().map(|(n, _)| n).collect(), at_start, hwm, per_phase, file_bytes: text.len(), run };
                eprintln!(
                    "  run {}: api VmHWM {:.0} MB, scheduler VmHWM {:.0} MB; {:.0} lines/s",
                    i + 1,
                    mb(memory.hwm_of("api")),
                    mb(memory.hwm_of("scheduler")),
                    memory.run.rate()
                );
                anyhow::Ok(memory)
            }
            .await;
            report.memory.push(stack.finish(result, options.keep_logs)?);
        }
    }

    let text = report.render(options, switchyard);
    println!("{text}");
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// One stack with a scheduler and one echo worker, and the clients the phases use.
struct Running {
    stack: Stack,
    api: Target,
    scheduler: Target,
    /// Every process of the stack and the bench itself, for CPU accounting.
    procs: Vec<(String, u32)>,
}

impl Running {
    async fn start(options: &BatchOptions, switchyard: &std::path::Path, slots: u32, delay: &str) -> anyhow::Result<Running> {
        let mut stack = Stack::start(&StackOptions {
            switchyard: switchyard.to_path_buf(),
            nats_server: options.binaries.nats_server.clone(),
            redis_server: options.binaries.redis_server.clone(),
            scheduler: true,
            scheduler_args: options.scheduler_args.clone(),
            worker_backend: stack::WorkerBackend::Echo,
            worker_slots: slots,
            worker_delay: delay.to_string(),
            worker_args: options.worker_args.clone(),
            no_auth: false,
            key_args: Vec::new(),
            env: options.env.clone(),
            thread_per_core: options.thread_per_core,
            nats_store: options.nats_store.clone(),
        })?;
        let api = Target::parse(&stack.api_url, stack.api_key.as_deref())?;
        let scheduler = Target::parse(stack.scheduler_url.as_deref().context("the stack has no scheduler")?, None)?;
        if let Err(e) = crate::wait_until_serving(&api, Some(&mut stack)).await {
            stack.keep_logs();
            return Err(e);
        }
        let mut procs = vec![("bench client".to_string(), std::process::id())];
        procs.extend(stack.procs().map(|p| (p.name.clone(), p.pid())));
        Ok(Running { stack, api, scheduler, procs })
    }

    /// Stops the stack, keeping its logs when `result` failed (or when asked to).
    fn finish<T>(mut self, result: anyhow::Result<T>, keep_logs: bool) -> anyhow::Result<T> {
        let alive = self.stack.check_alive();
        if result.is_err() || alive.is_err() || keep_logs {
            self.stack.keep_logs();
        }
        let value = result?;
        alive?;
        Ok(value)
    }

    fn cpu(&self) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            cpu: self.procs.iter().map(|(_, pid)| stack::cpu_time(*pid).unwrap_or_default()).collect(),
            machine: stack::machine_busy().unwrap_or_default(),
        }
    }

    /// Lines the scheduler has recorded since it started (`batch_lines_recorded` of its `/health`).
    async fn lines_recorded(&self, conn: &mut Conn) -> anyhow::Result<u64> {
        let (status, body) = conn.call(Method::GET, "/health", &Bytes::new()).await?;
        if status != StatusCode::OK {
            bail!("scheduler /health answered {status}");
        }
        let health: Value = serde_json::from_slice(&body)?;
        health["batch_lines_recorded"].as_u64().context("no batch_lines_recorded in the scheduler's /health")
    }
}

/// CPU each process had used at one moment.
struct CpuMark {
    at: Instant,
    cpu: Vec<Duration>,
    machine: Duration,
}

/// One phase of a batch's life as the bench saw it.
struct Phase {
    name: &'static str,
    start: Instant,
    end: Instant,
    /// CPU each process used during it (same order as `Running::procs`).
    cpu: Vec<Duration>,
    /// CPU the whole machine was busy for (others' work included).
    machine: Duration,
}

impl Phase {
    fn wall(&self) -> Duration {
        self.end - self.start
    }
}

/// One batch, from the start of its upload to its output downloaded.
struct BatchRun {
    lines: usize,
    input_bytes: usize,
    phases: Vec<Phase>,
    /// Names of the processes in `Phase::cpu`.
    procs: Vec<String>,
    output: Bytes,
    batch: Value,
    /// Pull requests and messages asked for, per consumer, during the run (phase (a) only).
    pulls: std::collections::BTreeMap<String, (u64, u64)>,
}

impl BatchRun {
    fn total(&self) -> Duration {
        match (self.phases.first(), self.phases.last()) {
            (Some(first), Some(last)) => last.end - first.start,
            _ => Duration::ZERO,
        }
    }

    fn rate(&self) -> f64 {
        self.lines as f64 / self.total().as_secs_f64().max(1e-9)
    }

    fn phase(&self, name: &str) -> Duration {
        self.phases.iter().filter(|p| p.name == name).map(Phase::wall).sum()
    }
}

/// A multipart/form-data body for `POST /v1/files`: `purpose=batch`, then `file`.
struct Upload {
    boundary: String,
    body: Bytes,
    file_bytes: usize,
}

fn multipart(file: &[u8]) -> Upload {
    let boundary = "switchyard-bench-7d1f0c5a9e3b".to_string();
    let mut body = BytesMut::with_capacity(file.len() + 512);
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n").as_bytes());
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"input.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Upload { boundary, body: body.freeze(), file_bytes: file.len() }
}

/// `n` chat lines to model `echo`: custom_id `req-<i>`, user message `line <i> says hello`.
fn chat_input(n: usize, max_tokens: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 150);
    for i in 0..n {
        let mut body = json!({ "model": "echo", "messages": [{ "role": "user", "content": format!("line {i} says hello") }] });
        if let Some(max) = max_tokens {
            body["max_tokens"] = json!(max);
        }
        let line = json!({ "custom_id": format!("req-{i}"), "method": "POST", "url": CHAT, "body": body });
        serde_json::to_writer(&mut out, &line).expect("JSON into a Vec");
        out.push(b'\n');
    }
    out
}

/// `n` chat lines of `bytes` bytes in all (newlines included), each a long prompt of words
/// `line <i> w1 w2 …` padded to its share, with `max_tokens`.
fn large_input(n: usize, bytes: usize, max_tokens: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + n);
    let per_line = bytes / n.max(1);
    for i in 0..n {
        // The last line takes what rounding left over.
        let target = if i + 1 == n { bytes - out.len() } else { per_line };
        let head = format!(
            "{{\"custom_id\":\"req-{i}\",\"method\":\"POST\",\"url\":\"{CHAT}\",\"body\":{{\"model\":\"echo\",\"max_tokens\":{max_tokens},\"messages\":[{{\"role\":\"user\",\"content\":\"line {i}"
        );
        let tail = "\"}]}}\n";
        let mut content_room = target.saturating_sub(head.len() + tail.len());
        out.extend_from_slice(head.as_bytes());
        let mut w = 0usize;
        while content_room > 0 {
            let word = format!(" w{}", w % 1000);
            if word.len() <= content_room {
                out.extend_from_slice(word.as_bytes());
                content_room -= word.len();
            } else {
                out.extend(std::iter::repeat_n(b'x', content_room));
                content_room = 0;
            }
            w += 1;
        }
        out.extend_from_slice(tail.as_bytes());
    }
    out
}

async fn json_call(conn: &mut Conn, method: Method, path: &str, body: &Bytes) -> anyhow::Result<Value> {
    let (status, bytes) = conn.call(method.clone(), path, body).await?;
    if status != StatusCode::OK {
        bail!("{method} {path} answered {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(500)]));
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: the answer is not JSON"))
}

/// Uploads `input`, creates its batch, follows it to `completed` and downloads its output,
/// marking each phase as the polls see it change.
async fn run_batch(running: &Running, input: &Upload, lines: usize, options: &BatchOptions) -> anyhow::Result<BatchRun> {
    let (batch, mut phases) = submit_and_follow(running, input, options).await?;
    // The output file, streamed to the end.
    let mut conn = Conn::open(&running.api).await?;
    let output_id =
        batch["output_file_id"].as_str().with_context(|| format!("the completed batch has no output file: {batch}"))?.to_string();
    let response = conn.send(Method::GET, &format!("/v1/files/{output_id}/content"), &Bytes::new()).await?;
    if response.status() != StatusCode::OK {
        bail!("downloading the output answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut output = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            output.extend_from_slice(&data);
        }
    }
    phases.mark("download", running);
    Ok(BatchRun {
        lines,
        input_bytes: input.file_bytes,
        phases: phases.done,
        procs: running.procs.iter().map(|(n, _)| n.clone()).collect(),
        output: output.freeze(),
        batch,
        pulls: Default::default(),
    })
}

/// Phase boundaries as they are seen.
struct Marks {
    last: CpuMark,
    done: Vec<Phase>,
}

impl Marks {
    fn new(running: &Running) -> Marks {
        Marks { last: running.cpu(), done: Vec::new() }
    }

    /// Ends phase `name` now.
    fn mark(&mut self, name: &'static str, running: &Running) {
        let now = running.cpu();
        let cpu = now.cpu.iter().zip(&self.last.cpu).map(|(a, b)| a.saturating_sub(*b)).collect();
        let machine = now.machine.saturating_sub(self.last.machine);
        self.done.push(Phase { name, start: self.last.at, end: now.at, cpu, machine });
        self.last = now;
    }
}

/// Uploads, creates the batch and polls it to `completed`; the phases up to finalizing.
async fn submit_and_follow(running: &Running, input: &Upload, options: &BatchOptions) -> anyhow::Result<(Value, Marks)> {
    let mut conn = Conn::open(&running.api).await?;
    let mut marks = Marks::new(running);
    let started = marks.last.at;
    let content_type = format!("multipart/form-data; boundary={}", input.boundary);
    let response = conn.send_as(Method::POST, "/v1/files", Some(&content_type), &input.body).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!("POST /v1/files answered {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(500)]));
    }
    let file: Value = serde_json::from_slice(&bytes)?;
    marks.mark("upload", running);
    let file_id = file["id"].as_str().context("the uploaded file has no id")?;
    let create = Bytes::from(serde_json::to_vec(&json!({ "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h" }))?);
    let batch = json_call(&mut conn, Method::POST, "/v1/batches", &create).await?;
    let id = batch["id"].as_str().context("the batch has no id")?.to_string();
    let path = format!("/v1/batches/{id}");
    let empty = Bytes::new();
    let mut seen = "validating".to_string();
    loop {
        tokio::time::sleep(options.poll).await;
        if started.elapsed() > options.batch_timeout {
            bail!("batch {id} still {seen} after {:?}", options.batch_timeout);
        }
        let batch = json_call(&mut conn, Method::GET, &path, &empty).await?;
        let status = batch["status"].as_str().unwrap_or("").to_string();
        if status == seen {
            continue;
        }
        // A poll may skip a status (a short finalizing): each phase ends when a later one shows.
        let order = ["validating", "in_progress", "finalizing", "completed"];
        let Some(now_at) = order.iter().position(|s| *s == status) else {
            bail!("batch {id} ended {status}: {batch}");
        };
        let was_at = order.iter().position(|s| *s == seen).unwrap_or(0);
        for name in &order[was_at..now_at] {
            marks.mark(name, running);
        }
        if status == "completed" {
            return Ok((batch, marks));
        }
        seen = status;
    }
}

/// Checks the echo's output file: one answer per line, every `custom_id` once, each the line's
/// own message (cut to `max_tokens` word tokens when given).
fn check_echo_output(output: &[u8], lines: usize, max_tokens: Option<u32>) -> anyhow::Result<()> {
    let mut seen = vec![false; lines];
    let mut count = 0;
    for text in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        count += 1;
        let line: Value = serde_json::from_slice(text).context("an output line is not JSON")?;
        let id = line["custom_id"].as_str().context("an output line has no custom_id")?;
        let i: usize = id.strip_prefix("req-").and_then(|n| n.parse().ok()).with_context(|| format!("unexpected custom_id {id}"))?;
        if i >= lines || std::mem::replace(&mut seen[i], true) {
            bail!("custom_id {id} answered twice or out of range");
        }
        if line["response"]["status_code"] != 200 {
            bail!("line {id} did not succeed: {line}");
        }
        let content = line["response"]["body"]["choices"][0]["message"]["content"].as_str().unwrap_or("");
        let ok = match max_tokens {
            None => content == format!("line {i} says hello"),
            Some(max) => content.starts_with(&format!("line {i}")) && content.split(' ').count() <= max as usize,
        };
        if !ok {
            bail!("line {id} answered {content:?}");
        }
    }
    if count != lines {
        bail!("the output file has {count} lines, expected {lines}");
    }
    Ok(())
}

/// Non-stream chat requests one after another: `warmup` unmeasured, then for `window`; the
/// latency of each measured one.
async fn interactive(api: &Target, chat: &Bytes, message: &str, warmup: usize, window: Duration) -> anyhow::Result<Vec<Duration>> {
    let mut conn = Conn::open(api).await?;
    for _ in 0..warmup {
        let (status, body) = conn.call(Method::POST, CHAT, chat).await?;
        if status != StatusCode::OK {
            bail!("chat answered {status}: {}", String::from_utf8_lossy(&body));
        }
    }
    let mut latencies = Vec::new();
    let until = Instant::now() + window;
    while Instant::now() < until {
        let start = Instant::now();
        let (status, body) = conn.call(Method::POST, CHAT, chat).await?;
        let elapsed = start.elapsed();
        if status != StatusCode::OK {
            bail!("chat answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        }
        crate::check_completion(&body, message)?;
        latencies.push(elapsed);
    }
    Ok(latencies)
}

/// A batch's lines/s over a window in the middle of its run, with or without interactive
/// requests during that window.
struct Beside {
    /// Lines recorded per second in the window.
    rate: f64,
    window: Duration,
    lines_in_window: u64,
    /// The interactive requests' latencies, when `chat` was given.
    latencies: Option<Vec<Duration>>,
    cpu: Vec<(String, Duration)>,
    machine: Duration,
}

/// Submits a batch, waits until 5% of its lines are recorded, then measures its lines/s (from
/// the scheduler's count of recorded lines) over `b_window` or until 95% are recorded — with
/// interactive requests during that window when `chat` is given — and waits for it to end.
async fn beside_batch(running: &Running, input: &Upload, options: &BatchOptions, chat: Option<&Bytes>) -> anyhow::Result<Beside> {
    let lines = options.lines as u64;
    let mut sched = Conn::open(&running.scheduler).await?;
    let base = running.lines_recorded(&mut sched).await?;
    let mut conn = Conn::open(&running.api).await?;
    let content_type = format!("multipart/form-data; boundary={}", input.boundary);
    let response = conn.send_as(Method::POST, "/v1/files", Some(&content_type), &input.body).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!("POST /v1/files answered {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(500)]));
    }
    let file: Value = serde_json::from_slice(&bytes)?;
    let create = Bytes::from(serde_json::to_vec(&json!({ "input_file_id": file["id"], "endpoint": CHAT, "completion_window": "24h" }))?);
    let batch = json_call(&mut conn, Method::POST, "/v1/batches", &create).await?;
    let id = batch["id"].as_str().context("the batch has no id")?.to_string();
    let started = Instant::now();
    // Wait for 5% of the lines.
    let from = lines / 20;
    let to = lines - lines / 20;
    loop {
        if started.elapsed() > options.batch_timeout {
            bail!("batch {id}: fewer than {from} lines recorded after {:?}", options.batch_timeout);
        }
        if running.lines_recorded(&mut sched).await? - base >= from {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = running.cpu();
    let c0 = running.lines_recorded(&mut sched).await? - base;
    let t0 = Instant::now();
    let until = t0 + options.b_window;
    // The window ends at `until` or when 95% are recorded, whichever comes first.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = running.lines_recorded(&mut sched).await? - base;
            if Instant::now() >= until || done >= to {
                stop.store(true, Ordering::Relaxed);
                return anyhow::Ok((done, Instant::now()));
            }
        }
    };
    let requests = async {
        let Some(chat) = chat else { return anyhow::Ok(None) };
        let mut conn = Conn::open(&running.api).await?;
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let (status, body) = conn.call(Method::POST, CHAT, chat).await?;
            let elapsed = start.elapsed();
            if status != StatusCode::OK {
                bail!("chat answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
            }
            crate::check_completion(&body, &options.b_message)?;
            latencies.push(elapsed);
        }
        Ok(Some(latencies))
    };
    let (watched, latencies) = tokio::join!(watch, requests);
    let ((c1, t1), latencies) = (watched?, latencies?);
    let after = running.cpu();
    // The rest of the batch runs to its end before anything else starts.
    let path = format!("/v1/batches/{id}");
    loop {
        let batch = json_call(&mut conn, Method::GET, &path, &Bytes::new()).await?;
        match batch["status"].as_str() {
            Some("completed") => break,
            Some("validating" | "in_progress" | "finalizing") => {}
            _ => bail!("batch {id} ended: {batch}"),
        }
        if started.elapsed() > options.batch_timeout {
            bail!("batch {id} did not complete within {:?}", options.batch_timeout);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let window = t1 - t0;
    let cpu =
        running.procs.iter().zip(after.cpu.iter().zip(&before.cpu)).map(|((n, _), (a, b))| (n.clone(), a.saturating_sub(*b))).collect();
    Ok(Beside {
        rate: (c1 - c0) as f64 / window.as_secs_f64().max(1e-9),
        window,
        lines_in_window: c1 - c0,
        latencies,
        cpu,
        machine: after.machine.saturating_sub(before.machine),
    })
}

/// Counts the pull requests workers send to JetStream consumers (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`,
/// whose body says how many messages each asks for), seen by a passive subscriber.
#[derive(Clone)]
struct Pulls {
    seen: Arc<std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>>,
}

impl Pulls {
    async fn start(nats_url: &str) -> anyhow::Result<Pulls> {
        let client = async_nats::connect(nats_url).await.with_context(|| format!("connecting the pull monitor to {nats_url}"))?;
        let mut pulls = client.subscribe("$JS.API.CONSUMER.MSG.NEXT.>").await?;
        client.flush().await?;
        let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let counts = seen.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = futures::StreamExt::next(&mut pulls).await {
                let consumer = message.subject.rsplit('.').next().unwrap_or("").to_string();
                let asked = serde_json::from_slice::<Value>(&message.payload).ok().and_then(|v| v["batch"].as_u64()).unwrap_or(1);
                let mut counts = counts.lock().unwrap();
                let entry = counts.entry(consumer).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += asked;
            }
        });
        Ok(Pulls { seen })
    }

    /// (pull requests, messages asked for) per consumer since the last call.
    fn take(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Samples the resident memory (VmRSS) of some processes on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Vec<u64>)>>,
}

impl Sampler {
    fn start(pids: Vec<u32>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push((Instant::now(), pids.iter().map(|pid| status_kb(*pid, "VmRSS:").unwrap_or(0)).collect()));
                std::thread::sleep(every);
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Vec<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)).and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// kB (KiB, as /proc counts) in MB (10^6 bytes).
fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

struct Throughput {
    slots: u32,
    runs: Vec<BatchRun>,
}

impl Throughput {
    fn best(&self) -> &BatchRun {
        self.runs.iter().max_by(|a, b| a.rate().total_cmp(&b.rate())).expect("at least one run")
    }
}

struct Round {
    idle: Stats,
    busy: Stats,
    alone: Beside,
    with: Beside,
}

impl Round {
    fn p50_ratio(&self) -> f64 {
        self.busy.p50.as_secs_f64() / self.idle.p50.as_secs_f64().max(1e-9)
    }

    fn p99_ratio(&self) -> f64 {
        self.busy.p99.as_secs_f64() / self.idle.p99.as_secs_f64().max(1e-9)
    }

    fn capacity(&self) -> f64 {
        self.with.rate / self.alone.rate.max(1e-9)
    }
}

struct Memory {
    names: Vec<String>,
    /// VmRSS after startup, kB.
    at_start: Vec<u64>,
    /// VmHWM at the end, kB.
    hwm: Vec<u64>,
    /// Highest sampled VmRSS during each phase, kB.
    per_phase: Vec<(&'static str, Vec<u64>)>,
    file_bytes: usize,
    run: BatchRun,
}

impl Memory {
    fn hwm_of(&self, name: &str) -> u64 {
        self.names.iter().position(|n| n == name).map_or(0, |i| self.hwm[i])
    }
}

#[derive(Default)]
struct Report {
    throughput: Vec<Throughput>,
    beside: Vec<Round>,
    memory: Vec<Memory>,
}

/// `best (lo–hi)` of some figures.
fn spread(values: &[f64], best_is_max: bool, fmt: impl Fn(f64) -> String) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let best = if best_is_max { hi } else { lo };
    if values.len() < 2 { fmt(best) } else { format!("{} ({}–{})", fmt(best), fmt(lo), fmt(hi)) }
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{:.0} ms", d.as_secs_f64() * 1000.0) } else { format!("{:.2} s", d.as_secs_f64()) }
}

const PHASES: [&str; 5] = ["upload", "validating", "in_progress", "finalizing", "download"];

impl Report {
    fn render(&self, options: &BatchOptions, switchyard: &std::path::Path) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(String::new());
        line("## Switchyard batch benchmark".into());
        line(String::new());
        line(format!("- machine: {}; every part on it", machine()));
        line(format!(
            "- switchyard: {}; bench client: {} build",
            profile_of(Some(switchyard)),
            if cfg!(debug_assertions) { "debug" } else { "release" }
        ));
        let shared = switchyard_broker::SharedMachine::this_machine();
        line(if options.thread_per_core {
            "- threads: every part a thread per core (--thread-per-core)".to_string()
        } else {
            format!(
                "- threads: as `switchyard dev` shares this machine: {} per part, {} for nats-server",
                shared.part_threads, shared.nats_threads
            )
        });
        line(format!(
            "- stack per phase: nats-server, redis-server, api (API key, no limits), scheduler{}, one echo worker{}; polls of `GET /v1/batches/{{id}}` every {:?}",
            if options.scheduler_args.is_empty() { String::new() } else { format!(" `{}`", options.scheduler_args.join(" ")) },
            if options.worker_args.is_empty() { String::new() } else { format!(" `{}`", options.worker_args.join(" ")) },
            options.poll
        ));
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
        line("| figure | Switchyard: best (range) | target |".into());
        line("|---|---|---|".into());
        for t in &self.throughput {
            let rates: Vec<f64> = t.runs.iter().map(BatchRun::rate).collect();
            let best = t.best();
            line(format!(
                "| (a) batch throughput, {} chat lines, echo `--slots {}` at zero delay, upload start → output downloaded ({} runs) | **{} lines/s** | ≥ 5,000 {} |",
                thousands(best.lines as f64),
                t.slots,
                t.runs.len(),
                spread(&rates, true, thousands),
                verdict(best.rate() >= 5000.0)
            ));
            let split: Vec<String> = PHASES.iter().map(|p| secs(best.phase(p))).collect();
            line(format!(
                "| (a) its phases: upload / validating / in_progress / finalizing / download (total {}) | {} | |",
                secs(best.total()),
                split.join(" / ")
            ));
            line(format!(
                "| (a) in_progress alone: lines/s while the lines run | {} | |",
                thousands(best.lines as f64 / best.phase("in_progress").as_secs_f64().max(1e-9))
            ));
            if let Some((pulls, asked)) = best.pulls.get("sy-batch-chat-echo") {
                line(format!(
                    "| (a) the worker's pull requests to its batch consumer: count / messages asked per pull / lines per pull | {} / {:.1} / {:.1} | |",
                    thousands(*pulls as f64),
                    *asked as f64 / (*pulls).max(1) as f64,
                    best.lines as f64 / (*pulls).max(1) as f64
                ));
            }
        }
        if !self.beside.is_empty() {
            let r = &self.beside;
            let p50_idle: Vec<f64> = r.iter().map(|r| r.idle.p50.as_secs_f64() * 1e3).collect();
            let p50_busy: Vec<f64> = r.iter().map(|r| r.busy.p50.as_secs_f64() * 1e3).collect();
            let p99_idle: Vec<f64> = r.iter().map(|r| r.idle.p99.as_secs_f64() * 1e3).collect();
            let p99_busy: Vec<f64> = r.iter().map(|r| r.busy.p99.as_secs_f64() * 1e3).collect();
            let ratio: Vec<f64> = r.iter().map(Round::p50_ratio).collect();
            let p99_ratio: Vec<f64> = r.iter().map(Round::p99_ratio).collect();
            let alone: Vec<f64> = r.iter().map(|r| r.alone.rate).collect();
            let with: Vec<f64> = r.iter().map(|r| r.with.rate).collect();
            let capacity: Vec<f64> = r.iter().map(|r| r.capacity() * 100.0).collect();
            let msf = |x: f64| format!("{x:.2} ms");
            let times = |x: f64| format!("{x:.2}×");
            let n_idle = r.iter().map(|r| r.idle.n).sum::<usize>();
            let n_busy = r.iter().map(|r| r.busy.n).sum::<usize>();
            let what = format!(
                "echo `--slots {} --delay {}`, message {:?}, concurrency 1, {} rounds",
                options.b_slots,
                options.b_delay,
                options.b_message,
                r.len()
            );
            line(format!("| (b) interactive chat p50, idle ({what}; n={n_idle}) | {} | |", spread(&p50_idle, false, msf)));
            line(format!(
                "| (b) interactive chat p50 while a {}-line batch runs (n={n_busy}) | {} | |",
                thousands(options.lines as f64),
                spread(&p50_busy, false, msf)
            ));
            let best_ratio = ratio.iter().copied().fold(f64::INFINITY, f64::min);
            line(format!(
                "| (b) p50 with the batch ÷ p50 idle | **{}** | ≤ 1.25× {} |",
                spread(&ratio, false, times),
                verdict(best_ratio <= 1.25)
            ));
            line(format!(
                "| (b) interactive p99 idle / with the batch (ratio) | {} / {} ({}) | |",
                spread(&p99_idle, false, msf),
                spread(&p99_busy, false, msf),
                spread(&p99_ratio, false, times)
            ));
            let n = |x: f64| thousands(x);
            line(format!(
                "| (b) batch lines/s alone / beside the interactive requests ({:?} windows in the batch's middle) | {} / {} | |",
                options.b_window,
                spread(&alone, true, n),
                spread(&with, true, n)
            ));
            let best_capacity = capacity.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            line(format!(
                "| (b) capacity the batch keeps (beside ÷ alone) | **{}** | ≥ 80% {} |",
                spread(&capacity, true, |x| format!("{x:.0}%")),
                verdict(best_capacity >= 80.0)
            ));
        }
        if !self.memory.is_empty() {
            let m = &self.memory;
            let api: Vec<f64> = m.iter().map(|m| mb(m.hwm_of("api"))).collect();
            let sched: Vec<f64> = m.iter().map(|m| mb(m.hwm_of("scheduler"))).collect();
            let mbf = |x: f64| format!("{x:.0} MB");
            let first = &m[0];
            let what = format!(
                "{} MB, {} lines, `max_tokens` {}",
                thousands(first.file_bytes as f64 / 1e6),
                thousands(first.run.lines as f64),
                options.c_max_tokens
            );
            let best_api = api.iter().copied().fold(f64::INFINITY, f64::min);
            let best_sched = sched.iter().copied().fold(f64::INFINITY, f64::min);
            line(format!(
                "| (c) api peak resident memory (VmHWM), upload + run + download of a {what} file ({} fresh stacks) | **{}** | ≤ 200 MB {} |",
                m.len(),
                spread(&api, false, mbf),
                verdict(best_api <= 200.0)
            ));
            line(format!(
                "| (c) scheduler peak resident memory (VmHWM) | **{}** | ≤ 200 MB {} |",
                spread(&sched, false, mbf),
                verdict(best_sched <= 200.0)
            ));
            let rates: Vec<f64> = m.iter().map(|m| m.run.rate()).collect();
            line(format!(
                "| (c) that batch's throughput, upload start → output downloaded | {} lines/s | |",
                spread(&rates, true, thousands)
            ));
            let best = m.iter().max_by(|a, b| a.run.rate().total_cmp(&b.run.rate())).expect("a run");
            let split: Vec<String> = PHASES.iter().map(|p| secs(best.run.phase(p))).collect();
            line(format!(
                "| (c) its phases: upload / validating / in_progress / finalizing / download (total {}) | {} | |",
                secs(best.run.total()),
                split.join(" / ")
            ));
        }

        // Where the time and CPU of each batch phase went.
        let mut runs: Vec<(String, &BatchRun)> = Vec::new();
        for t in &self.throughput {
            runs.push((format!("(a) `--slots {}`, best run", t.slots), t.best()));
        }
        if let Some(best) = self.memory.iter().max_by(|a, b| a.run.rate().total_cmp(&b.run.rate())) {
            runs.push(("(c) best run".into(), &best.run));
        }
        for (title, run) in runs {
            let names: Vec<&str> = run.procs.iter().map(String::as_str).collect();
            let columns: Vec<&str> =
                ["phase", "wall"].into_iter().chain(names.iter().copied()).chain(["cores busy (ours / whole machine)"]).collect();
            line(table_head(
                &format!(
                    "{title}: CPU per phase (user+system from /proc/PID/stat, 10 ms resolution; {} lines, {} MB input)",
                    thousands(run.lines as f64),
                    format_args!("{:.1}", run.input_bytes as f64 / 1e6)
                ),
                &columns,
            ));
            for phase in &run.phases {
                let ours: Duration = phase.cpu.iter().sum();
                let cells: Vec<String> = phase.cpu.iter().map(|d| format!("{:.2} s", d.as_secs_f64())).collect();
                let wall = phase.wall().as_secs_f64().max(1e-9);
                line(format!(
                    "| {} | {} | {} | {:.2} / {:.2} |",
                    phase.name,
                    secs(phase.wall()),
                    cells.join(" | "),
                    ours.as_secs_f64() / wall,
                    phase.machine.as_secs_f64() / wall
                ));
            }
            let total: Vec<Duration> = (0..names.len()).map(|i| run.phases.iter().map(|p| p.cpu[i]).sum()).collect();
            let cells: Vec<String> =
                total.iter().map(|d| format!("{:.0} µs/line", d.as_secs_f64() * 1e6 / run.lines.max(1) as f64)).collect();
            line(format!("| all, per line | {} | {} | |", secs(run.total()), cells.join(" | ")));
        }

        if !self.beside.is_empty() {
            let names: Vec<&str> = self.beside[0].alone.cpu.iter().map(|(n, _)| n.as_str()).collect();
            let columns: Vec<&str> = ["(b) window", "lines", "lines/s", "interactive p50 / p99"]
                .into_iter()
                .chain(names.iter().copied())
                .chain(["cores busy (ours / whole machine)"])
                .collect();
            line(table_head("(b) each round's windows: CPU per process (cores)", &columns));
            for (i, round) in self.beside.iter().enumerate() {
                for (what, b, stats) in [("batch alone", &round.alone, None), ("batch + interactive", &round.with, Some(&round.busy))] {
                    let wall = b.window.as_secs_f64().max(1e-9);
                    let ours: Duration = b.cpu.iter().map(|(_, d)| *d).sum();
                    let cells: Vec<String> = b.cpu.iter().map(|(_, d)| format!("{:.2}", d.as_secs_f64() / wall)).collect();
                    line(format!(
                        "| {} {what} ({}) | {} | {} | {} | {} | {:.2} / {:.2} |",
                        i + 1,
                        secs(b.window),
                        b.lines_in_window,
                        thousands(b.rate),
                        stats.map_or("—".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99))),
                        cells.join(" | "),
                        ours.as_secs_f64() / wall,
                        b.machine.as_secs_f64() / wall
                    ));
                }
                line(format!(
                    "| {} idle interactive | | | | {} / {} | {} | |",
                    i + 1,
                    ms(round.idle.p50),
                    ms(round.idle.p99),
                    vec![""; names.len()].join(" | ")
                ));
            }
        }

        if !self.memory.is_empty() {
            let names = &self.memory[0].names;
            let columns: Vec<String> = ["(c) run", "moment"].into_iter().map(String::from).chain(names.iter().cloned()).collect();
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            line(table_head(
                "(c) resident memory, MB: after startup, highest sampled VmRSS per phase (every 10 ms), VmHWM at the end",
                &columns,
            ));
            for (i, m) in self.memory.iter().enumerate() {
                let row = |kb: &[u64]| kb.iter().map(|k| format!("{:.0}", mb(*k))).collect::<Vec<_>>().join(" | ");
                line(format!("| {} | after startup | {} |", i + 1, row(&m.at_start)));
                for (phase, kb) in &m.per_phase {
                    line(format!("| {} | {phase} | {} |", i + 1, row(kb)));
                }
                line(format!("| {} | **VmHWM** | {} |", i + 1, row(&m.hwm)));
            }
        }
        out
    }

    fn json(&self) -> Value {
        let run = |r: &BatchRun| {
            json!({
                "lines": r.lines, "input_bytes": r.input_bytes, "lines_per_s": r.rate(), "total_s": r.total().as_secs_f64(),
                "output_bytes": r.output.len(),
                "phases": r.phases.iter().map(|p| json!({
                    "phase": p.name, "wall_s": p.wall().as_secs_f64(),
                    "cpu_s": r.procs.iter().zip(&p.cpu).map(|(n, d)| (n.clone(), json!(d.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
                    "machine_busy_s": p.machine.as_secs_f64(),
                })).collect::<Vec<_>>(),
                "batch": r.batch,
                "pull_requests": r.pulls.iter().map(|(c, (n, asked))| (c.clone(), json!({ "pulls": n, "asked": asked }))).collect::<serde_json::Map<_, _>>(),
            })
        };
        let stats = |s: &Stats| json!({ "n": s.n, "p50_ms": s.p50.as_secs_f64() * 1e3, "p90_ms": s.p90.as_secs_f64() * 1e3, "p99_ms": s.p99.as_secs_f64() * 1e3, "max_ms": s.max.as_secs_f64() * 1e3 });
        let beside = |b: &Beside| json!({ "lines_per_s": b.rate, "window_s": b.window.as_secs_f64(), "lines": b.lines_in_window });
        json!({
            "machine": machine(),
            "a_throughput": self.throughput.iter().map(|t| json!({ "slots": t.slots, "runs": t.runs.iter().map(run).collect::<Vec<_>>() })).collect::<Vec<_>>(),
            "b_beside": self.beside.iter().map(|r| json!({
                "idle": stats(&r.idle), "with_batch": stats(&r.busy), "p50_ratio": r.p50_ratio(),
                "batch_alone": beside(&r.alone), "batch_with_interactive": beside(&r.with), "capacity": r.capacity(),
            })).collect::<Vec<_>>(),
            "c_memory": self.memory.iter().map(|m| json!({
                "file_bytes": m.file_bytes,
                "vm_hwm_kb": m.names.iter().zip(&m.hwm).map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<_, _>>(),
                "rss_at_start_kb": m.names.iter().zip(&m.at_start).map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<_, _>>(),
                "run": run(&m.run),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_input_has_its_size_and_lines_and_every_line_is_a_request() {
        let text = large_input(1000, 2_000_000, 16);
        assert_eq!(text.len(), 2_000_000);
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1000);
        for (i, line) in lines.iter().enumerate() {
            let value: Value = serde_json::from_slice(line).unwrap();
            assert_eq!(value["custom_id"], format!("req-{i}"));
            assert_eq!(value["body"]["max_tokens"], 16);
            assert!(value["body"]["messages"][0]["content"].as_str().unwrap().starts_with(&format!("line {i} w0 w1")));
        }
    }

    #[test]
    fn chat_input_lines_parse() {
        let text = chat_input(3, Some(4));
        let lines: Vec<Value> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["body"]["messages"][0]["content"], "line 2 says hello");
    }

    #[test]
    fn multipart_holds_purpose_then_file() {
        let upload = multipart(b"{}\n");
        let text = String::from_utf8(upload.body.to_vec()).unwrap();
        let purpose = text.find("name=\"purpose\"").unwrap();
        let file = text.find("name=\"file\"").unwrap();
        assert!(purpose < file);
        assert!(text.ends_with(&format!("\r\n--{}--\r\n", upload.boundary)));
        assert_eq!(upload.file_bytes, 3);
    }

    #[test]
    fn echo_output_is_checked() {
        let line = |i: usize, content: &str| {
            json!({ "custom_id": format!("req-{i}"), "response": { "status_code": 200, "body": { "choices": [{ "message": { "content": content } }] } } }).to_string()
        };
        let good = format!("{}\n{}\n", line(1, "line 1 says hello"), line(0, "line 0 says hello"));
        assert!(check_echo_output(good.as_bytes(), 2, None).is_ok());
        let twice = format!("{}\n{}\n", line(0, "line 0 says hello"), line(0, "line 0 says hello"));
        assert!(check_echo_output(twice.as_bytes(), 2, None).is_err());
        let wrong = format!("{}\n{}\n", line(0, "line 0 says hello"), line(1, "line 2 says hello"));
        assert!(check_echo_output(wrong.as_bytes(), 2, None).is_err());
    }
}
