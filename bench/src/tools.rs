//! `switchyard-bench tools`: a trivial hosted function (the demo tool model's `custom_method`,
//! a + b) called over REST and through `/mcp` (`tools/call` on an MCP session, see `mcp.rs`),
//! beside echo chat on the same stack in the same run: latency at concurrency 1 and calls/s at
//! 64 clients, and the api's CPU per call. The job path is the same (a job on NATS, a worker,
//! events back); the figures say what a tool call, and MCP's framing of it, add to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode};

use crate::client::Target;
use crate::stack::{self, Stack, StackOptions};
use crate::{
    Exchange, LoadResult, Rest, Stats, chat_body, check_completion, load, load_calls, mcp, ms, sequential, sequential_calls, thousands,
    wait_for_model,
};

const TOOL_MODEL: &str = "demo-tools";
/// The function measured: a + b.
const FUNCTION: &str = "custom_method";
/// The Python worker's model: `sdk/python/tests/sample_tools.py`'s `SampleTools`.
const PY_MODEL: &str = "py-tools";

#[derive(Debug, Args, Clone)]
pub struct ToolsOptions {
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// Sequential requests measured per figure at concurrency 1.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Unmeasured requests before each.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// How long the concurrent clients run, measured.
    #[arg(long, default_value = "8s", value_parser = switchyard_broker::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = switchyard_broker::parse_duration)]
    warmup_duration: Duration,
    /// Concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds: echo and the tool take turns, so a change in the machine's load hits both.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Python for the Python SDK's worker (`add` of sdk/python/tests/sample_tools.py); default:
    /// .switchyard/py-venv/bin/python (scripts/setup.sh --test-tools). Without one, that row
    /// is left out.
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    /// Slots of the Python worker (its calls run on a thread each).
    #[arg(long, default_value_t = 64)]
    python_slots: u32,
}

pub async fn run(options: ToolsOptions) -> anyhow::Result<()> {
    let switchyard = options.binaries.switchyard()?;
    eprintln!("starting a stack on free ports with {}: an echo worker and a tools-demo worker", switchyard.display());
    let mut stack = Stack::start(&StackOptions {
        switchyard: switchyard.clone(),
        nats_server: options.binaries.nats_server.clone(),
        redis_server: options.binaries.redis_server.clone(),
        scheduler: false,
        scheduler_args: Vec::new(),
        worker_backend: stack::WorkerBackend::Echo,
        worker_slots: 256,
        worker_delay: "0ms".into(),
        worker_args: Vec::new(),
        no_auth: false,
        key_args: Vec::new(),
        env: Vec::new(),
        thread_per_core: false,
        nats_store: None,
    })?;
    stack.add_worker("worker-tools", &["tools-demo", "--slots", "256"])?;
    let python = options.python.clone().unwrap_or_else(|| stack::repo_root().join(".switchyard/py-venv/bin/python"));
    let python = python.exists().then_some(python);
    if let Some(python) = &python {
        let mut worker = std::process::Command::new(python);
        let sample = stack::repo_root().join("sdk/python/tests/sample_tools.py");
        worker.args(["-m", "switchyard.worker"]).arg(format!("{}:SampleTools", sample.display())).args([
            "--name",
            PY_MODEL,
            "--slots",
            &options.python_slots.to_string(),
        ]);
        stack.add_worker_command("worker-python", worker)?;
    } else {
        eprintln!("no .switchyard/py-venv (scripts/setup.sh --test-tools): the Python worker's row is left out");
    }
    let result = bench(&options, &mut stack, python.is_some()).await;
    if result.is_err() {
        stack.keep_logs();
    }
    result
}

/// One kind of call, measured round after round.
struct Side {
    latency: Vec<Duration>,
    loads: Vec<LoadResult>,
    /// CPU time of the api and of this process during the load phases, and the calls they
    /// sent (warm-up included, as the CPU is).
    api_cpu: Duration,
    client_cpu: Duration,
    sent: u64,
}

impl Side {
    fn new() -> Side {
        Side { latency: Vec::new(), loads: Vec::new(), api_cpu: Duration::ZERO, client_cpu: Duration::ZERO, sent: 0 }
    }

    /// `per_round` calls at concurrency 1 after the warm-up.
    async fn sequential<E: Exchange>(
        &mut self,
        target: &Target,
        exchange: &E,
        options: &ToolsOptions,
        per_round: usize,
        check: impl Fn(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.latency.extend(sequential_calls(target, exchange, options.warmup, per_round, StatusCode::OK, check).await?);
        Ok(())
    }

    /// `--concurrency` clients for the warm-up and `--duration`, with the api's and the
    /// client's CPU time around it.
    async fn load<E: Exchange>(
        &mut self,
        target: &Target,
        exchange: &E,
        options: &ToolsOptions,
        api_pid: Option<u32>,
        check: impl Fn(&[u8]) -> anyhow::Result<()> + Clone + Send + 'static,
    ) -> anyhow::Result<()> {
        let cpu = |pid: Option<u32>| pid.and_then(stack::cpu_time).unwrap_or_default();
        let (api, client) = (cpu(api_pid), cpu(Some(std::process::id())));
        let load = load_calls(target, options.concurrency, options.warmup_duration, options.duration, exchange, check).await?;
        self.api_cpu += cpu(api_pid).saturating_sub(api);
        self.client_cpu += cpu(Some(std::process::id())).saturating_sub(client);
        self.sent += load.sent;
        self.loads.push(load);
        Ok(())
    }

    /// calls/s: the median of the rounds.
    fn rate(&self) -> f64 {
        let mut rates: Vec<f64> = self.loads.iter().map(LoadResult::rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }

    fn errors(&self) -> u64 {
        self.loads.iter().map(|l| l.errors + l.non_200).sum()
    }

    /// CPU per call under load, in µs.
    fn per_call(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.sent.max(1) as f64
    }
}

/// MCP's `tools/call` of one function with `{"a": 1, "b": 2}`, on an MCP session per
/// connection (the handshake in `open`, not timed).
#[derive(Clone)]
struct McpCall {
    /// The request's `params`, as JSON text.
    params: Arc<str>,
}

impl McpCall {
    fn new(name: &str) -> McpCall {
        let name = serde_json::Value::from(name);
        McpCall { params: format!(r#"{{"name":{name},"arguments":{{"a":1,"b":2}}}}"#).into() }
    }
}

impl Exchange for McpCall {
    type Client = mcp::Session;

    async fn open(&self, target: &Target) -> anyhow::Result<mcp::Session> {
        mcp::Session::open(target).await
    }

    async fn call(&self, session: &mut mcp::Session) -> anyhow::Result<(StatusCode, Bytes)> {
        session.request("tools/call", &self.params).await
    }

    async fn close(&self, session: mcp::Session) {
        session.close().await;
    }

    fn describe(&self) -> String {
        format!("POST {} tools/call {}", mcp::PATH, self.params)
    }
}

/// REST's answer to `{"a": 20, "b": 22}`.
fn check_sum(body: &[u8]) -> anyhow::Result<()> {
    if body.trim_ascii() != b"42" {
        bail!("custom_method answered {:?}, not 42", String::from_utf8_lossy(body));
    }
    Ok(())
}

/// MCP's answer to `{"a": 1, "b": 2}`: a tool result, not an error, whose one text is `3`.
fn check_mcp_sum(message: &[u8]) -> anyhow::Result<()> {
    let reply: serde_json::Value = serde_json::from_slice(message).context("the tools/call response is not JSON")?;
    if let Some(error) = reply.get("error") {
        bail!("tools/call answered a JSON-RPC error: {error}");
    }
    let result = &reply["result"];
    if result["isError"] == true || result["content"][0]["text"] != "3" {
        bail!("tools/call answered {result}, not the text 3");
    }
    Ok(())
}

async fn bench(options: &ToolsOptions, stack: &mut Stack, with_python: bool) -> anyhow::Result<()> {
    let target = Target::parse(&stack.api_url, stack.api_key.as_deref())?;
    wait_for_model(&target, Some(&mut *stack), "echo", false, Duration::from_secs(60)).await?;
    wait_for_model(&target, Some(&mut *stack), TOOL_MODEL, false, Duration::from_secs(60)).await?;
    if with_python {
        wait_for_model(&target, Some(&mut *stack), PY_MODEL, false, Duration::from_secs(60)).await?;
    }

    let chat = Rest::new(Method::POST, "/v1/chat/completions", &chat_body("hello world", false));
    let call = Bytes::from_static(br#"{"a": 20, "b": 22}"#);
    let rest_call = Rest::new(Method::POST, &format!("/v1/tools/{TOOL_MODEL}/{FUNCTION}"), &call);
    // The function's MCP name: its own unless another visible tool model has one of that name.
    let mut probe = mcp::Session::open(&target).await?;
    let names = probe.tool_names().await?;
    let Some(name) = [FUNCTION.to_owned(), format!("{TOOL_MODEL}.{FUNCTION}")].into_iter().find(|n| names.contains(n)) else {
        bail!("MCP tools/list does not name {FUNCTION}: {names:?}");
    };
    let mode = format!(
        "Streamable HTTP, a session per connection (revision {}), answers as {}",
        probe.protocol_version,
        if probe.sse { "SSE" } else { "JSON" }
    );
    eprintln!("· MCP: {mode}; tools/list names the function {name:?}");
    probe.close().await;
    let mcp_call = McpCall::new(&name);

    let api_pid = stack.pid_of("api");
    let (mut echo, mut rest, mut mcp) = (Side::new(), Side::new(), Side::new());
    let rounds = options.rounds.max(1);
    let per_round = options.requests.div_ceil(rounds);
    for round in 0..rounds {
        eprintln!("· round {round}: {per_round} × echo chat, custom_method over REST, over MCP at concurrency 1");
        echo.sequential(&target, &chat, options, per_round, |b| check_completion(b, "hello world")).await?;
        rest.sequential(&target, &rest_call, options, per_round, check_sum).await?;
        mcp.sequential(&target, &mcp_call, options, per_round, check_mcp_sum).await?;
        eprintln!("· round {round}: {} clients × echo chat, then × REST, then × MCP, {:?} each", options.concurrency, options.duration);
        echo.load(&target, &chat, options, api_pid, |_| Ok(())).await?;
        rest.load(&target, &rest_call, options, api_pid, check_sum).await?;
        mcp.load(&target, &mcp_call, options, api_pid, check_mcp_sum).await?;
        stack.check_alive()?;
    }
    let python = if with_python {
        let py_path = format!("/v1/tools/{PY_MODEL}/add");
        eprintln!(
            "· the Python worker: {} × add at concurrency 1, then {} clients for {:?}",
            per_round, options.concurrency, options.duration
        );
        let latency = sequential(&target, Method::POST, &py_path, &call, options.warmup, per_round, check_sum).await?;
        let load = load(&target, options.concurrency, options.warmup_duration, options.duration, Method::POST, &py_path, &call).await?;
        Some((Stats::of(latency), load))
    } else {
        None
    };

    let echo_stats = Stats::of(std::mem::take(&mut echo.latency));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## Hosted functions over REST and MCP beside echo chat ({rounds} interleaved rounds, {cores} cores, every part on this machine)"
    );
    println!();
    println!("MCP: {mode}; the handshake is not timed, each call is one POST read to the end of its answer.");
    println!();
    println!("| figure | tool call (`{FUNCTION}`) | echo chat | tool ÷ echo | target |");
    println!("|---|---|---|---|---|");
    let rest_stats = Stats::of(std::mem::take(&mut rest.latency));
    let mcp_stats = Stats::of(std::mem::take(&mut mcp.latency));
    rows("REST", &rest_stats, &rest, &echo_stats, &echo, options.concurrency);
    rows("MCP", &mcp_stats, &mcp, &echo_stats, &echo, options.concurrency);
    println!();
    println!("| CPU per call at {} clients (user + system, warm-up included) | echo chat | REST | MCP | MCP − REST |", options.concurrency);
    println!("|---|---|---|---|---|");
    let cpu_row = |part: &str, cpu: fn(&Side) -> Duration| {
        let [e, r, m] = [&echo, &rest, &mcp].map(|s| s.per_call(cpu(s)));
        println!("| {part} | {e:.1} µs | {r:.1} µs | {m:.1} µs | {:+.1} µs |", m - r);
    };
    cpu_row("api", |s| s.api_cpu);
    cpu_row("bench client", |s| s.client_cpu);
    println!();
    println!(
        "MCP beside REST: p50 {:+.3} ms ({:.2}×), p99 {:+.3} ms, calls/s {:.2}×.",
        (mcp_stats.p50.as_secs_f64() - rest_stats.p50.as_secs_f64()) * 1e3,
        ratio(mcp_stats.p50, rest_stats.p50),
        (mcp_stats.p99.as_secs_f64() - rest_stats.p99.as_secs_f64()) * 1e3,
        mcp.rate() / rest.rate().max(1e-9)
    );
    if let Some((latency, load)) = python {
        println!();
        println!("| the Python SDK's worker (`add`, {} slots) | | | | target |", options.python_slots);
        println!("|---|---|---|---|---|");
        println!("| p50 / p99 at concurrency 1 | {} / {} | | | — (reported) |", ms(latency.p50), ms(latency.p99));
        println!(
            "| calls/s at {} clients | {} ({} errors) | | | — (reported) |",
            options.concurrency,
            thousands(load.rate()),
            load.errors + load.non_200
        );
    }
    Ok(())
}

fn ratio(ours: Duration, base: Duration) -> f64 {
    ours.as_secs_f64() / base.as_secs_f64().max(1e-12)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "✔" } else { "✘" }
}

/// The table's rows for one way of calling the function, beside echo chat, with the
/// issue's targets: p50 ≤ 0.5 ms and within 1.2× of echo; ≥ 15,000 calls/s and ≥ echo ÷ 1.2.
fn rows(how: &str, stats: &Stats, side: &Side, echo_stats: &Stats, echo: &Side, concurrency: usize) {
    let p50_ok = stats.p50 <= Duration::from_micros(500) && ratio(stats.p50, echo_stats.p50) <= 1.2;
    println!(
        "| {how}: p50 at concurrency 1 | {} | {} | {:.2}× | ≤ 0.5 ms and ≤ 1.2× echo {} |",
        ms(stats.p50),
        ms(echo_stats.p50),
        ratio(stats.p50, echo_stats.p50),
        verdict(p50_ok)
    );
    let p99 = ratio(stats.p99, echo_stats.p99);
    println!(
        "| {how}: p99 at concurrency 1 | {} | {} | {p99:.2}× | ≤ 1.2× echo {} |",
        ms(stats.p99),
        ms(echo_stats.p99),
        verdict(p99 <= 1.2)
    );
    let (rate, echo_rate) = (side.rate(), echo.rate());
    let rate_ok = rate >= 15_000.0 && rate * 1.2 >= echo_rate;
    println!(
        "| {how}: calls/s at {concurrency} clients (median of rounds) | {} | {} | {:.2}× | ≥ 15,000 and ≥ echo ÷ 1.2 {} |",
        thousands(rate),
        thousands(echo_rate),
        rate / echo_rate.max(1e-9),
        verdict(rate_ok)
    );
    println!("| {how}: errors under load | {} | {} | | 0 |", side.errors(), echo.errors());
}
