//! `switchyard-bench tools`: a trivial hosted function (the demo tool model's `custom_method`,
//! a + b) called over REST, beside echo chat on the same stack in the same run: latency at
//! concurrency 1 and calls/s at 64 clients. The job path is the same (a job on NATS, a worker,
//! events back); the figures say what a tool call adds to it.

use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use hyper::Method;

use crate::client::Target;
use crate::stack::{self, Stack, StackOptions};
use crate::{LoadResult, Stats, chat_body, check_completion, load, ms, sequential, thousands, wait_for_model};

const TOOL_MODEL: &str = "demo-tools";
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
        worker
            .args(["-m", "switchyard.worker"])
            .arg(format!("{}:SampleTools", sample.display()))
            .args(["--name", PY_MODEL, "--slots", &options.python_slots.to_string()]);
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

struct Side {
    latency: Vec<Duration>,
    loads: Vec<LoadResult>,
}

async fn bench(options: &ToolsOptions, stack: &mut Stack, with_python: bool) -> anyhow::Result<()> {
    let target = Target::parse(&stack.api_url, stack.api_key.as_deref())?;
    wait_for_model(&target, Some(&mut *stack), "echo", false, Duration::from_secs(60)).await?;
    wait_for_model(&target, Some(&mut *stack), TOOL_MODEL, false, Duration::from_secs(60)).await?;
    if with_python {
        wait_for_model(&target, Some(&mut *stack), PY_MODEL, false, Duration::from_secs(60)).await?;
    }

    let chat = chat_body("hello world", false);
    let chat_path = "/v1/chat/completions";
    let call = Bytes::from_static(br#"{"a": 20, "b": 22}"#);
    let call_path = format!("/v1/tools/{TOOL_MODEL}/custom_method");
    let check_sum = |body: &[u8]| {
        if body.trim_ascii() != b"42" {
            bail!("custom_method answered {:?}, not 42", String::from_utf8_lossy(body));
        }
        Ok(())
    };
    let mut echo = Side { latency: Vec::new(), loads: Vec::new() };
    let mut tool = Side { latency: Vec::new(), loads: Vec::new() };
    let rounds = options.rounds.max(1);
    let per_round = options.requests.div_ceil(rounds);
    for round in 0..rounds {
        eprintln!("· round {round}: {per_round} × echo chat, {per_round} × custom_method at concurrency 1");
        echo.latency.extend(sequential(&target, Method::POST, chat_path, &chat, options.warmup, per_round, |b| check_completion(b, "hello world")).await?);
        tool.latency.extend(sequential(&target, Method::POST, &call_path, &call, options.warmup, per_round, check_sum).await?);
        eprintln!("· round {round}: {} clients × echo chat, then × custom_method, {:?} each", options.concurrency, options.duration);
        let c = options.concurrency;
        echo.loads.push(load(&target, c, options.warmup_duration, options.duration, Method::POST, chat_path, &chat).await?);
        tool.loads.push(load(&target, c, options.warmup_duration, options.duration, Method::POST, &call_path, &call).await?);
        stack.check_alive()?;
    }
    let python = if with_python {
        let py_path = format!("/v1/tools/{PY_MODEL}/add");
        eprintln!("· the Python worker: {} × add at concurrency 1, then {} clients for {:?}", per_round, options.concurrency, options.duration);
        let latency = sequential(&target, Method::POST, &py_path, &call, options.warmup, per_round, check_sum).await?;
        let load = load(&target, options.concurrency, options.warmup_duration, options.duration, Method::POST, &py_path, &call).await?;
        Some((Stats::of(latency), load))
    } else {
        None
    };
    let (echo_stats, tool_stats) = (Stats::of(echo.latency), Stats::of(tool.latency));
    let rate = |loads: &[LoadResult]| {
        let mut rates: Vec<f64> = loads.iter().map(LoadResult::rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let errors = |loads: &[LoadResult]| loads.iter().map(|l| l.errors + l.non_200).sum::<u64>();
    let (echo_rate, tool_rate) = (rate(&echo.loads), rate(&tool.loads));
    let ratio = |ours: Duration, base: Duration| ours.as_secs_f64() / base.as_secs_f64().max(1e-12);
    let verdict = |ok: bool| if ok { "✔" } else { "✘" };

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("## Hosted functions over REST beside echo chat ({rounds} interleaved rounds, {cores} cores, every part on this machine)");
    println!();
    println!("| figure | tool call (`custom_method`) | echo chat | tool ÷ echo | target |");
    println!("|---|---|---|---|---|");
    let p50_ok = tool_stats.p50 <= Duration::from_micros(500) && ratio(tool_stats.p50, echo_stats.p50) <= 1.2;
    println!(
        "| p50 at concurrency 1 | {} | {} | {:.2}× | ≤ 0.5 ms and ≤ 1.2× echo {} |",
        ms(tool_stats.p50),
        ms(echo_stats.p50),
        ratio(tool_stats.p50, echo_stats.p50),
        verdict(p50_ok)
    );
    println!("| p99 at concurrency 1 | {} | {} | {:.2}× | ≤ 1.2× echo {} |", ms(tool_stats.p99), ms(echo_stats.p99), ratio(tool_stats.p99, echo_stats.p99), verdict(ratio(tool_stats.p99, echo_stats.p99) <= 1.2));
    let rate_ok = tool_rate >= 15_000.0 && tool_rate * 1.2 >= echo_rate;
    println!(
        "| calls/s at {} clients (median of rounds) | {} | {} | {:.2}× | ≥ 15,000 and ≥ echo ÷ 1.2 {} |",
        options.concurrency,
        thousands(tool_rate),
        thousands(echo_rate),
        tool_rate / echo_rate.max(1e-9),
        verdict(rate_ok)
    );
    println!("| errors under load | {} | {} | | 0 |", errors(&tool.loads), errors(&echo.loads));
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
