//! `switchyard-bench torch-mixed`: figure (c) of the torch benchmarks. A mixed workload through
//! the api — 64 `/v1/completions` requests with prompts of 16–256 tokens and `max_tokens`
//! 16–256 (a fixed seed: the same set every run and for both sides), all sent at once to ONE
//! `switchyard worker torch` serving the bench decoder (the random ~135M Llama of
//! `make_bench_model.py`) — against `transformers` running the same requests as static batches
//! of 16, in order (each left-padded and generating until its longest `max_tokens`, EOS
//! ignored: what a static-batching server does). Figure: total wall time, first request sent
//! to last answer, against the sum of the batches' `generate` calls. Target ≥ 1.5× faster.
//!
//! The api has no `ignore_eos`, so a completion may stop early at the model's EOS; the report
//! gives the completion tokens of both sides beside the times.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Conn, Target};
use crate::reference::{self, Reference, SplitMix64, TorchStack, median, spread};
use crate::{Stats, machine, ms};

#[derive(Debug, Args, Clone)]
pub struct MixedOptions {
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// The decoder (default: target/bench-models/llama-135m-random, written by
    /// make_bench_model.py when missing).
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Python with torch, transformers and sentence-transformers (default:
    /// .switchyard/bench-venv/bin/python, from scripts/setup.sh --bench-tools).
    #[arg(long, env = "SWITCHYARD_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Run Switchyard's side alone.
    #[arg(long)]
    no_reference: bool,
    /// Intra-op threads on both sides (the worker's OMP_NUM_THREADS, torch.set_num_threads).
    #[arg(long, env = "SWITCHYARD_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// transformers' attention implementation.
    #[arg(long, env = "SWITCHYARD_BENCH_ATTN", default_value = "eager")]
    attn: String,
    /// Timed rounds after the warm-up; the sides alternate which goes first.
    #[arg(long, env = "SWITCHYARD_BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Requests in the workload.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Seed of the workload's prompt lengths, max_tokens and words.
    #[arg(long, default_value_t = 20240135)]
    seed: u64,
    /// Prompt length range in tokens (BOS included), `MIN-MAX`.
    #[arg(long, default_value = "16-256", value_parser = parse_range)]
    prompt_tokens: (u32, u32),
    /// `max_tokens` range, `MIN-MAX`.
    #[arg(long, default_value = "16-256", value_parser = parse_range)]
    max_tokens: (u32, u32),
    /// Rows of the reference's static batches.
    #[arg(long, default_value_t = 16)]
    static_batch: usize,
    /// `--slots` of the torch worker (default: the worker's own, its engine's batch size).
    #[arg(long)]
    worker_slots: Option<u32>,
    /// More flags for `switchyard worker torch`, e.g. `--worker-arg=--max-batch-size=64`.
    #[arg(long, allow_hyphen_values = true)]
    worker_arg: Vec<String>,
    /// Environment for a part, `PART:NAME=VALUE` (PART: api, worker, nats, redis, all).
    #[arg(long, value_parser = crate::parse_env)]
    env: Vec<(String, String, String)>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the stack's logs folder.
    #[arg(long)]
    keep_logs: bool,
}

fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let (lo, hi) = text.split_once('-').ok_or("expected MIN-MAX, e.g. 16-256")?;
    let lo: u32 = lo.trim().parse().map_err(|_| format!("not a number: {lo:?}"))?;
    let hi: u32 = hi.trim().parse().map_err(|_| format!("not a number: {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{text}: expected 1 ≤ MIN ≤ MAX"));
    }
    Ok((lo, hi))
}

/// One request of the workload.
struct Request {
    prompt: String,
    ids: Vec<u32>,
    max_tokens: u32,
}

/// The workload: `n` prompts of exact token lengths (BOS included, as the worker's tokenizer
/// encodes a completion prompt), built from the model's own vocabulary so that every word is
/// one token, and their `max_tokens`.
fn workload(tokenizer: &tokenizers::Tokenizer, options: &MixedOptions) -> anyhow::Result<Vec<Request>> {
    let mut vocab: Vec<String> = tokenizer
        .get_vocab(false)
        .into_keys()
        .filter_map(|t| t.strip_prefix('\u{120}').map(str::to_owned))
        .filter(|w| w.len() > 3 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .collect();
    vocab.sort();
    if vocab.len() < 100 {
        bail!("the tokenizer has only {} word tokens to build prompts from", vocab.len());
    }
    let count = |text: &str| -> anyhow::Result<usize> {
        Ok(tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?.get_ids().len())
    };
    let mut rng = SplitMix64(options.seed);
    let mut out = Vec::with_capacity(options.requests);
    for _ in 0..options.requests {
        let target = rng.between(options.prompt_tokens.0 as u64, options.prompt_tokens.1 as u64) as usize;
        let max_tokens = rng.between(options.max_tokens.0 as u64, options.max_tokens.1 as u64) as u32;
        let mut words: Vec<String> = Vec::new();
        let mut text = String::new();
        let mut len = count(&text)?;
        let mut misses = 0;
        while len < target {
            let word = &vocab[(rng.next() % vocab.len() as u64) as usize];
            let candidate = if text.is_empty() { word.clone() } else { format!("{text} {word}") };
            let n = count(&candidate)?;
            if n <= target {
                words.push(word.clone());
                (text, len) = (candidate, n);
            } else {
                misses += 1;
                if misses > 1000 {
                    bail!("could not build a prompt of exactly {target} tokens");
                }
            }
        }
        let ids = tokenizer.encode(text.as_str(), true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?.get_ids().to_vec();
        assert_eq!(ids.len(), target);
        out.push(Request { prompt: text, ids, max_tokens });
    }
    Ok(out)
}

/// What the api answered to one request.
struct Answer {
    latency: Duration,
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: String,
}

/// Every request at once, one connection each (connected first, then sent together); the
/// wall time from the first send to the last answer.
async fn send_all(target: &Target, bodies: &[Bytes]) -> anyhow::Result<(Duration, Vec<Answer>)> {
    let mut conns = Vec::with_capacity(bodies.len());
    for _ in bodies {
        conns.push(Conn::open(target).await?);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut conn, body)) in conns.into_iter().zip(bodies.iter().cloned()).enumerate() {
        tasks.spawn(async move {
            let t0 = Instant::now();
            let (status, response) = conn.call(Method::POST, "/v1/completions", &body).await?;
            let latency = t0.elapsed();
            if status != StatusCode::OK {
                bail!("request {i} answered {status}: {}", String::from_utf8_lossy(&response[..response.len().min(500)]));
            }
            let v: Value = serde_json::from_slice(&response).context("a completion that is not JSON")?;
            let answer = Answer {
                latency,
                text: v["choices"][0]["text"].as_str().context("no choices[0].text")?.to_string(),
                prompt_tokens: v["usage"]["prompt_tokens"].as_u64().context("no usage.prompt_tokens")?,
                completion_tokens: v["usage"]["completion_tokens"].as_u64().context("no usage.completion_tokens")?,
                finish_reason: v["choices"][0]["finish_reason"].as_str().unwrap_or("?").to_string(),
            };
            Ok::<_, anyhow::Error>((i, answer, Instant::now()))
        });
    }
    let mut answers: Vec<Option<Answer>> = (0..bodies.len()).map(|_| None).collect();
    let mut last = start;
    while let Some(joined) = tasks.join_next().await {
        let (i, answer, done) = joined??;
        last = last.max(done);
        answers[i] = Some(answer);
    }
    Ok((last - start, answers.into_iter().map(|a| a.expect("every request answered")).collect()))
}

fn bodies(model: &str, requests: &[Request], max_tokens: Option<u32>) -> Vec<Bytes> {
    requests
        .iter()
        .map(|r| {
            let body = json!({
                "model": model,
                "prompt": r.prompt,
                "max_tokens": max_tokens.unwrap_or(r.max_tokens),
                "temperature": 0,
            });
            Bytes::from(serde_json::to_vec(&body).expect("JSON of a JSON value"))
        })
        .collect()
}

/// One run of our side.
struct OurRun {
    wall: f64,
    completion_tokens: u64,
    stopped_early: usize,
    latencies: Vec<Duration>,
}

/// One run of the reference.
struct TheirRun {
    wall: f64,
    computed_tokens: u64,
    requested_tokens: u64,
    /// Each request's latency had it been served this way: the end of its batch.
    latencies: Vec<Duration>,
}

pub async fn run(options: MixedOptions) -> anyhow::Result<()> {
    let python = reference::python(options.python.as_deref());
    let model = reference::bench_decoder(options.model_path.as_deref(), &python)?;
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", model.join("tokenizer.json").display()))?;
    let requests = workload(&tokenizer, &options)?;
    let n = requests.len();
    let requested: u64 = requests.iter().map(|r| u64::from(r.max_tokens)).sum();
    let prompt_total: usize = requests.iter().map(|r| r.ids.len()).sum();
    eprintln!("workload: {n} requests, {prompt_total} prompt tokens, {requested} max_tokens in all (seed {})", options.seed);

    let mut notes = Vec::new();
    let mut reference = None;
    if !options.no_reference {
        let args = ["--decoder".as_ref(), model.as_os_str(), "--attn-implementation".as_ref(), options.attn.as_ref()];
        reference = Reference::start_or_note(&python, options.threads, &args, &mut notes);
    }

    let (mut stack, switchyard, name, target) = reference::start_torch_stack(
        &TorchStack {
            binaries: &options.binaries,
            model_path: &model,
            worker_slots: options.worker_slots.unwrap_or(0),
            worker_args: &options.worker_arg,
            threads: options.threads,
            env: &options.env,
        },
        false,
    )
    .await?;
    let result = tokio::select! {
        r = bench(&options, &target, &name, &requests, reference.as_mut(), &mut notes) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() || options.keep_logs {
        stack.keep_logs();
    }
    stack.check_alive()?;
    let (ours, theirs, check) = result?;
    drop(stack);

    let fmt_s = |x: f64| format!("{x:.1}");
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(String::new());
    line(format!("## switchyard-torch mixed workload through the api ({} rounds after a warm-up; median (min–max))", options.rounds));
    line(String::new());
    line(format!("- machine: {}; load average at the end: {}", machine(), loadavg()));
    line(format!(
        "- switchyard: {}; ONE `worker torch --model-path {}`{}{}; {} intra-op threads",
        switchyard.display(),
        model.display(),
        options.worker_slots.map_or(String::new(), |s| format!(" --slots {s}")),
        if options.worker_arg.is_empty() { String::new() } else { format!(" {}", options.worker_arg.join(" ")) },
        options.threads
    ));
    if let Some(r) = &reference {
        line(format!(
            "- reference: {}; static batches of {} in request order, left-padded, EOS ignored",
            r.versions(),
            options.static_batch
        ));
    }
    line(format!(
        "- workload: {n} `/v1/completions`, temperature 0, all sent at once; prompts {}–{} tokens ({prompt_total} in all), \
         max_tokens {}–{} ({requested} in all), seed {}",
        options.prompt_tokens.0, options.prompt_tokens.1, options.max_tokens.0, options.max_tokens.1, options.seed
    ));
    line(String::new());
    line("| figure | Switchyard | transformers | ratio | target |".into());
    line("|---|---|---|---|---|".into());
    let walls: Vec<f64> = ours.iter().map(|r| r.wall).collect();
    let their_walls: Vec<f64> = theirs.iter().map(|r| r.wall).collect();
    let ratio = if theirs.is_empty() {
        "— (reference missing)".to_string()
    } else {
        format!("{:.2}× (time: theirs ÷ ours)", median(&their_walls) / median(&walls))
    };
    line(format!(
        "| (c) wall time, s: {n} mixed requests (ours: first sent → last answered; transformers: its static batches) | {} | {} | {ratio} | ≥ 1.5× faster |",
        spread(&walls, fmt_s),
        spread(&their_walls, fmt_s)
    ));
    let tokens: Vec<f64> = ours.iter().map(|r| r.completion_tokens as f64).collect();
    let early: Vec<f64> = ours.iter().map(|r| r.stopped_early as f64).collect();
    line(format!(
        "| (c) completion tokens (ours: usage, {} of {n} stopped at EOS; transformers: each request's max_tokens) | {} | {} | | |",
        spread(&early, |x| format!("{x:.0}")),
        spread(&tokens, |x| format!("{x:.0}")),
        theirs.first().map_or("—".into(), |t| t.requested_tokens.to_string())
    ));
    if let Some(t) = theirs.first() {
        line(format!("| (c) tokens transformers computed (rows × each batch's longest max_tokens) | | {} | | |", t.computed_tokens));
    }
    let rate: Vec<f64> = ours.iter().map(|r| r.completion_tokens as f64 / r.wall).collect();
    let their_rate: Vec<f64> = theirs.iter().map(|r| r.requested_tokens as f64 / r.wall).collect();
    line(format!(
        "| (c) completion tokens/s (the tokens above over the wall time) | {} | {} | {} | |",
        spread(&rate, fmt_s),
        spread(&their_rate, fmt_s),
        if theirs.is_empty() { "—".to_string() } else { format!("{:.2}×", median(&rate) / median(&their_rate)) }
    ));
    let lat = |runs: &[Vec<Duration>]| {
        let all: Vec<Duration> = runs.iter().flatten().copied().collect();
        if all.is_empty() {
            return "—".to_string();
        }
        let s = Stats::of(all);
        format!("{} / {} / {}", ms(s.p50), ms(s.p90), ms(s.max))
    };
    line(format!(
        "| (c) request latency p50 / p90 / max, all rounds (transformers: the end of the request's batch) | {} | {} | | |",
        lat(&ours.iter().map(|r| r.latencies.clone()).collect::<Vec<_>>()),
        lat(&theirs.iter().map(|r| r.latencies.clone()).collect::<Vec<_>>())
    ));
    let pairs: Vec<String> = ours.iter().zip(&theirs).map(|(o, t)| format!("{:.2}", t.wall / o.wall)).collect();
    if !pairs.is_empty() {
        line(format!("\nsame-round pairs (transformers ÷ ours, wall time): [{}]", pairs.join(", ")));
    }
    if let Some(check) = check {
        line(check);
    }
    for note in &notes {
        line(note.clone());
    }
    println!("{out}");
    if let Some(path) = &options.json {
        let figures = json!({
            "machine": machine(),
            "requests": n,
            "seed": options.seed,
            "prompt_tokens": prompt_total,
            "max_tokens": requested,
            "ours": ours.iter().map(|r| json!({"wall_s": r.wall, "completion_tokens": r.completion_tokens, "stopped_early": r.stopped_early})).collect::<Vec<_>>(),
            "transformers": theirs.iter().map(|r| json!({"wall_s": r.wall, "computed_tokens": r.computed_tokens, "requested_tokens": r.requested_tokens})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

async fn bench(
    options: &MixedOptions,
    target: &Target,
    name: &str,
    requests: &[Request],
    mut reference: Option<&mut Reference>,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Vec<OurRun>, Vec<TheirRun>, Option<String>)> {
    let n = requests.len();
    let static_args = |max_new: Option<u32>, texts: bool| {
        json!({
            "prompts": requests.iter().map(|r| r.ids.clone()).collect::<Vec<_>>(),
            "max_new_tokens": requests.iter().map(|r| max_new.unwrap_or(r.max_tokens)).collect::<Vec<_>>(),
            "batch_size": options.static_batch,
            "texts": texts,
        })
    };
    // Warm-up: every request with 8 new tokens, on both sides.
    eprintln!("· warm-up: {n} requests × 8 tokens on each side");
    let (_, warm) = send_all(target, &bodies(name, requests, Some(8))).await?;
    for (i, (a, r)) in warm.iter().zip(requests).enumerate() {
        if a.prompt_tokens != r.ids.len() as u64 {
            bail!("request {i}: the worker counted {} prompt tokens, the workload has {}", a.prompt_tokens, r.ids.len());
        }
    }
    if let Some(r) = reference.as_deref_mut()
        && let Err(e) = r.call("static", &static_args(Some(8), false))
    {
        notes.push(format!("reference lost: {e:#}"));
        reference = None;
    }

    let full = bodies(name, requests, None);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let (mut our_texts, mut their_texts) = (None, None);
    for round in 0..options.rounds {
        let reference_first = round % 2 == 1;
        for side in if reference_first { [1, 0] } else { [0, 1] } {
            if side == 0 {
                let (wall, answers) = send_all(target, &full).await?;
                let run = OurRun {
                    wall: wall.as_secs_f64(),
                    completion_tokens: answers.iter().map(|a| a.completion_tokens).sum(),
                    stopped_early: answers.iter().filter(|a| a.finish_reason == "stop").count(),
                    latencies: answers.iter().map(|a| a.latency).collect(),
                };
                eprintln!(
                    "round {round} switchyard: {:.1} s, {} completion tokens ({} stopped at EOS)",
                    run.wall, run.completion_tokens, run.stopped_early
                );
                if our_texts.is_none() {
                    our_texts = Some(answers.iter().map(|a| a.text.clone()).collect::<Vec<_>>());
                }
                ours.push(run);
            } else if let Some(r) = reference.as_deref_mut() {
                match r.call("static", &static_args(None, round == 0)) {
                    Ok(v) => {
                        let mut latencies = Vec::new();
                        let mut at = 0.0;
                        for b in v["batches"].as_array().into_iter().flatten() {
                            at += b["seconds"].as_f64().unwrap_or(f64::NAN);
                            let rows = b["rows"].as_u64().unwrap_or(0) as usize;
                            latencies.extend(std::iter::repeat_n(Duration::from_secs_f64(at.max(0.0)), rows));
                        }
                        let run = TheirRun {
                            wall: v["seconds"].as_f64().unwrap_or(f64::NAN),
                            computed_tokens: v["computed_tokens"].as_u64().unwrap_or(0),
                            requested_tokens: v["requested_tokens"].as_u64().unwrap_or(0),
                            latencies,
                        };
                        eprintln!(
                            "round {round} transformers: {:.1} s, {} tokens computed for {} requested",
                            run.wall, run.computed_tokens, run.requested_tokens
                        );
                        if let Some(texts) = v["texts"].as_array() {
                            their_texts = Some(texts.iter().map(|t| t.as_str().unwrap_or("").to_string()).collect::<Vec<_>>());
                        }
                        theirs.push(run);
                    }
                    Err(e) => {
                        notes.push(format!("reference lost: {e:#}"));
                        reference = None;
                    }
                }
            }
        }
    }
    let check = match (our_texts, their_texts) {
        (Some(a), Some(b)) => Some(compare_texts(&a, &b)),
        _ => None,
    };
    Ok((ours, theirs, check))
}

/// How the api's completion texts compare with transformers' for the same requests.
fn compare_texts(ours: &[String], theirs: &[String]) -> String {
    let n = ours.len().min(theirs.len());
    let same = (0..n).filter(|&i| ours[i] == theirs[i]).count();
    let prefix = (0..n).filter(|&i| ours[i] != theirs[i] && theirs[i].starts_with(&ours[i])).count();
    format!(
        "texts: {same} of {n} completions identical to transformers' (greedy, the same ids); {prefix} more are a prefix \
         of it (the api stopped at EOS); {} differ (left padding and batched kernels change the numerics slightly: \
         near-ties of the random weights may split the two)",
        n - same - prefix
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("16-256"), Ok((16, 256)));
        assert_eq!(parse_range("8-8"), Ok((8, 8)));
        assert!(parse_range("0-8").is_err());
        assert!(parse_range("9-8").is_err());
        assert!(parse_range("8").is_err());
    }
}
