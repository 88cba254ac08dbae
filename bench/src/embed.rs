//! `switchyard-bench embed`: figure (d) of the torch benchmarks. 1,000 single-sentence
//! `/v1/embeddings` requests (the torch bench's deterministic ~20-word sentences, one each)
//! from 64 concurrent clients through the api to ONE `switchyard worker torch` serving
//! all-MiniLM-L6-v2: sentences/s = 1000 / the wall time from the first request to the last
//! answer, against `sentence-transformers` encoding the same 1,000 at batch_size 32 (the wall
//! time of `encode`). Target ≥ 1.0×. A check compares a few of the api's vectors with
//! sentence-transformers' (cosine, should be ≥ 0.99999).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Conn, Target};
use crate::reference::{self, Reference, TorchStack, median, spread};
use crate::{Stats, machine, ms};

/// Sentences whose vectors are compared with sentence-transformers'.
const CHECKED: [usize; 6] = [0, 1, 2, 3, 500, 999];

#[derive(Debug, Args, Clone)]
pub struct EmbedOptions {
    #[command(flatten)]
    binaries: crate::stack::Binaries,
    /// The sentence encoder (default: .switchyard/models/all-minilm-l6-v2, from scripts/setup.sh).
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
    /// Timed rounds after the warm-up; the sides alternate which goes first.
    #[arg(long, env = "SWITCHYARD_BENCH_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// Sentences, one request each (at least 1,000 for the check's vectors).
    #[arg(long, default_value_t = 1000)]
    sentences: usize,
    /// Concurrent clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// sentence-transformers' batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// `--slots` of the torch worker (default: the worker's own).
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

/// One run through the api.
struct OurRun {
    wall: Duration,
    latencies: Vec<Duration>,
    /// The vectors of CHECKED (those below the sentence count).
    vectors: Vec<(usize, Vec<f64>)>,
}

/// `sentences` as one-sentence requests from `concurrency` clients, each taking the next
/// sentence until none is left.
async fn run_ours(target: &Target, bodies: Arc<Vec<Bytes>>, concurrency: usize) -> anyhow::Result<OurRun> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.min(bodies.len()) {
        conns.push(Conn::open(target).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut vectors = Vec::new();
            let mut last = Instant::now();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                let t0 = Instant::now();
                let (status, response) = conn.call(Method::POST, "/v1/embeddings", &bodies[i]).await?;
                last = Instant::now();
                latencies.push(last - t0);
                if status != StatusCode::OK {
                    bail!("sentence {i} answered {status}: {}", String::from_utf8_lossy(&response[..response.len().min(500)]));
                }
                if CHECKED.contains(&i) {
                    let v: Value = serde_json::from_slice(&response).context("an embeddings answer that is not JSON")?;
                    let vector: Vec<f64> = v["data"][0]["embedding"]
                        .as_array()
                        .context("no data[0].embedding")?
                        .iter()
                        .map(|x| x.as_f64().unwrap_or(f64::NAN))
                        .collect();
                    vectors.push((i, vector));
                }
            }
            Ok::<_, anyhow::Error>((latencies, vectors, last))
        });
    }
    let mut run = OurRun { wall: Duration::ZERO, latencies: Vec::new(), vectors: Vec::new() };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, vectors, last) = joined??;
        run.wall = run.wall.max(last - start);
        run.latencies.extend(latencies);
        run.vectors.extend(vectors);
    }
    run.vectors.sort_by_key(|(i, _)| *i);
    Ok(run)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub async fn run(options: EmbedOptions) -> anyhow::Result<()> {
    let python = reference::python(options.python.as_deref());
    let model = options.model_path.clone().unwrap_or_else(|| reference::root().join(".switchyard/models/all-minilm-l6-v2"));
    if !model.join("config.json").exists() {
        bail!("{} is missing (scripts/setup.sh installs all-MiniLM-L6-v2)", model.display());
    }
    let sentences = reference::sentences(options.sentences);
    // The same file as the torch bench's, for reference.py.
    std::fs::create_dir_all(reference::models_dir())?;
    let file = reference::models_dir().join(format!("sentences-{}.txt", sentences.len()));
    let text: String = sentences.iter().map(|s| format!("{s}\n")).collect();
    if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&file, &text)?;
    }

    let mut notes = Vec::new();
    let mut reference = None;
    if !options.no_reference {
        let batch = options.batch_size.to_string();
        let args =
            ["--encoder".as_ref(), model.as_os_str(), "--sentences".as_ref(), file.as_os_str(), "--batch-size".as_ref(), batch.as_ref()];
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
        true,
    )
    .await?;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        sentences
            .iter()
            .map(|s| Bytes::from(serde_json::to_vec(&json!({ "model": name, "input": s })).expect("JSON of a JSON value")))
            .collect(),
    );
    let checked: Vec<usize> = CHECKED.iter().copied().filter(|&i| i < sentences.len()).collect();

    let work = async {
        eprintln!("· warm-up: {} sentences through the api, one encode by sentence-transformers", bodies.len().min(256));
        run_ours(&target, Arc::new(bodies[..bodies.len().min(256)].to_vec()), options.concurrency).await?;
        if let Some(r) = reference.as_mut()
            && let Err(e) = r.call("embed", &json!({ "vectors": checked }))
        {
            notes.push(format!("reference lost: {e:#}"));
            reference = None;
        }
        let mut ours: Vec<OurRun> = Vec::new();
        let mut theirs: Vec<f64> = Vec::new();
        let mut their_vectors: Option<Value> = None;
        for round in 0..options.rounds {
            for side in if round % 2 == 1 { [1, 0] } else { [0, 1] } {
                if side == 0 {
                    let run = run_ours(&target, bodies.clone(), options.concurrency).await?;
                    eprintln!(
                        "round {round} switchyard: {:.1} sentences/s ({:.2} s)",
                        bodies.len() as f64 / run.wall.as_secs_f64(),
                        run.wall.as_secs_f64()
                    );
                    ours.push(run);
                } else if let Some(r) = reference.as_mut() {
                    match r.call("embed", &json!({ "vectors": checked })) {
                        Ok(v) => {
                            let s = v["sentences_per_s"].as_f64().unwrap_or(f64::NAN);
                            eprintln!("round {round} sentence-transformers: {s:.1} sentences/s");
                            theirs.push(s);
                            their_vectors.get_or_insert(v["vectors"].clone());
                        }
                        Err(e) => {
                            notes.push(format!("reference lost: {e:#}"));
                            reference = None;
                        }
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>((ours, theirs, their_vectors))
    };
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() || options.keep_logs {
        stack.keep_logs();
    }
    stack.check_alive()?;
    let (ours, theirs, their_vectors) = result?;
    drop(stack);

    let n = sentences.len();
    let rates: Vec<f64> = ours.iter().map(|r| n as f64 / r.wall.as_secs_f64()).collect();
    let fmt1 = |x: f64| format!("{x:.1}");
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(String::new());
    line(format!("## switchyard-torch embeddings through the api ({} rounds after a warm-up; median (min–max))", options.rounds));
    line(String::new());
    line(format!("- machine: {}", machine()));
    line(format!(
        "- switchyard: {}; ONE `worker torch --model-path {}`{}{}; {} intra-op threads",
        switchyard.display(),
        model.display(),
        options.worker_slots.map_or(String::new(), |s| format!(" --slots {s}")),
        if options.worker_arg.is_empty() { String::new() } else { format!(" {}", options.worker_arg.join(" ")) },
        options.threads
    ));
    if let Some(r) = &reference {
        line(format!("- reference: {}; `encode(batch_size={})`", r.versions(), options.batch_size));
    }
    line(format!(
        "- workload: {n} sentences of 16–24 words, one `/v1/embeddings` request each, {} concurrent clients",
        options.concurrency
    ));
    line(String::new());
    line("| figure | Switchyard | sentence-transformers | ratio | target |".into());
    line("|---|---|---|---|---|".into());
    let ratio =
        if theirs.is_empty() { "— (reference missing)".to_string() } else { format!("{:.2}×", median(&rates) / median(&theirs)) };
    line(format!(
        "| (d) MiniLM-L6 sentences/s ({n} one-sentence requests, {} clients; reference: encode at batch {}) | {} | {} | {ratio} | ≥ 1.0× |",
        options.concurrency,
        options.batch_size,
        spread(&rates, fmt1),
        spread(&theirs, fmt1)
    ));
    let all: Vec<Duration> = ours.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    let s = Stats::of(all);
    line(format!("| (d) request latency p50 / p99 / max, all rounds | {} / {} / {} | | | |", ms(s.p50), ms(s.p99), ms(s.max)));
    let pairs: Vec<String> = rates.iter().zip(&theirs).map(|(o, t)| format!("{:.2}", o / t)).collect();
    if !pairs.is_empty() {
        line(format!("\nsame-round pairs (ours ÷ sentence-transformers): [{}]", pairs.join(", ")));
    }
    if let (Some(run), Some(vectors)) = (ours.first(), &their_vectors) {
        let cosines: Vec<(usize, f64)> = run
            .vectors
            .iter()
            .filter_map(|(i, v)| {
                let theirs: Vec<f64> = vectors[i.to_string()].as_array()?.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
                Some((*i, cosine(v, &theirs)))
            })
            .collect();
        let worst = cosines.iter().map(|(_, c)| *c).fold(f64::INFINITY, f64::min);
        let list: Vec<String> = cosines.iter().map(|(i, c)| format!("#{i} {c:.8}")).collect();
        line(format!(
            "vectors: cosine of the api's vs sentence-transformers' for sentences [{}]: min {worst:.8}, 1 − cos ≤ {:.1e} ({})",
            list.join(", "),
            1.0 - worst,
            if worst >= 0.99999 { "≥ 0.99999 ✔" } else { "BELOW 0.99999" }
        ));
    }
    for note in &notes {
        line(note.clone());
    }
    println!("{out}");
    if let Some(path) = &options.json {
        let figures = json!({
            "machine": machine(),
            "sentences": n,
            "concurrency": options.concurrency,
            "ours_sentences_per_s": rates,
            "sentence_transformers_sentences_per_s": theirs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
