//! CPU benchmark of the engine against transformers and sentence-transformers, measured on the
//! same machine in the same run (see benches/README.md for the numbers).
//!
//! ```text
//! cd /work/main && CARGO_TARGET_DIR=target/torch cargo bench -p switchyard-torch --bench torch_bench [-- FIGURE…]
//! ```
//!
//! Figures (all by default; name some after `--` to run only those):
//!
//! * `decode` — batch 1: a randomly initialised ~135M-parameter Llama shaped like SmolLM-135M
//!   (`make_bench_model.py`, written into `target/bench-models/` when missing), a 32-token
//!   prompt, 128 greedy tokens with EOS ignored. Time to first token: from the `generate` call
//!   to the first `Delta`; decode tokens/s: the tokens after the first over the time from the
//!   first `Delta` to the last.
//! * `concurrency` (alias `a`) — the same model and request, N sequences at once (N = 1, 4,
//!   16: `Engine::generate` called N times, each receiver read to its end on a thread of its
//!   own), N slightly different 32-token prompts: aggregate tokens/s = all tokens generated /
//!   the wall time from the first `generate` call to the last `Finished`; time to first token
//!   per sequence (median). Target: at 16, ≥ 5× the engine at 1.
//! * `static` (alias `b`) — the engine at 16 concurrent sequences against transformers
//!   `generate` with a static batch of the same 16 prompts (greedy, EOS ignored, 128 new
//!   tokens), tokens/s over the wall time of the call. Target ≥ 1.0×.
//! * `embed` — all-MiniLM-L6-v2, 1,000 deterministic ~20-word sentences in one
//!   `Engine::embed` call (it runs them 32 at a time, sorted by length, as
//!   sentence-transformers does); sentences/s over the wall time of the call.
//!
//! The reference (`reference.py --serve`) runs in a Python child process driven over a pipe,
//! so the two sides alternate run by run (which side goes first alternates by round too) and
//! share whatever load the machine has at the time; figures are medians over the rounds.
//! Both sides use the same number of intra-op threads.
//!
//! Environment: `SWITCHYARD_BENCH_PYTHON` (default `.switchyard/bench-venv/bin/python`, made by
//! `scripts/setup.sh --bench-tools`), `SWITCHYARD_BENCH_THREADS` (default 2),
//! `SWITCHYARD_BENCH_ROUNDS` (default 7), `SWITCHYARD_BENCH_ATTN` (transformers' attention,
//! default `eager`), and for quick checks only `SWITCHYARD_BENCH_NEW_TOKENS` (default 128) and
//! `SWITCHYARD_BENCH_CONCURRENCY` (default `1,4,16`; the largest is the static batch). Without
//! a working Python reference the benchmark prints Switchyard's figures alone and says so.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_torch::{Engine, EngineOptions, GenerateEvent, GenerateRequest, Prompt, SamplingParams};
use tokio_util::sync::CancellationToken;

const NEW_TOKENS: u32 = 128;
const PROMPT_TOKENS: usize = 32;
/// Concurrent sequences of figure (a); the largest is also (b)'s static batch.
const CONCURRENCY: [usize; 3] = [1, 4, 16];
const SENTENCES: usize = 1000;
const BATCH: usize = 32;
const DECODER_DIR: &str = "llama-135m-random";

/// The figures, in the order they run, and the short names that also pick them.
const FIGURES: [(&str, &str); 4] = [("decode", "decode"), ("concurrency", "a"), ("static", "b"), ("embed", "embed")];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = args.iter().find(|a| !FIGURES.iter().any(|(name, alias)| a == name || a == alias)) {
        eprintln!(
            "unknown figure {unknown:?}: pick from {}",
            FIGURES
                .iter()
                .map(|(n, a)| if n == a { n.to_string() } else { format!("{n} ({a})") })
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2);
    }
    let wants = |name: &str| {
        let (_, alias) = FIGURES.iter().find(|(n, _)| *n == name).expect("a known figure");
        args.is_empty() || args.iter().any(|a| a == name || a == alias)
    };
    let env_num = |name: &str, default: usize| {
        std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or(default)
    };
    let threads = env_num("SWITCHYARD_BENCH_THREADS", 2);
    let rounds = env_num("SWITCHYARD_BENCH_ROUNDS", 7);
    let new_tokens = env_num("SWITCHYARD_BENCH_NEW_TOKENS", NEW_TOKENS as usize) as u32;
    let mut levels: Vec<usize> = std::env::var("SWITCHYARD_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).filter(|&n| n > 0).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| CONCURRENCY.to_vec());
    levels.sort_unstable();
    levels.dedup();
    // The static batch: as many rows as the most concurrent sequences.
    let static_rows = *levels.last().unwrap();
    let attn = std::env::var("SWITCHYARD_BENCH_ATTN").unwrap_or_else(|_| "eager".into());

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root");
    let python = std::env::var("SWITCHYARD_BENCH_PYTHON")
        .unwrap_or_else(|_| root.join(".switchyard/bench-venv/bin/python").display().to_string());
    let benches = root.join("worker/torch/benches");
    let models = root.join("target/bench-models");
    std::fs::create_dir_all(&models).expect("create target/bench-models");
    let decoder_dir = models.join(DECODER_DIR);
    let minilm_dir = root.join(".switchyard/models/all-minilm-l6-v2");
    let sentences_path = models.join("sentences.txt");

    // Every libtorch thread of this process (the engine threads included) uses this many.
    tch::set_num_threads(threads as i32);

    let mut notes: Vec<String> = Vec::new();
    let python_ok = match Command::new(&python)
        .args(["-c", "import torch, transformers, sentence_transformers"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => true,
        Ok(_) => {
            notes.push(format!(
                "reference missing: {python} cannot import torch, transformers and sentence_transformers \
                 (run scripts/setup.sh --bench-tools, or set SWITCHYARD_BENCH_PYTHON)"
            ));
            false
        }
        Err(e) => {
            notes.push(format!(
                "reference missing: cannot run {python}: {e} (run scripts/setup.sh --bench-tools, or set \
                 SWITCHYARD_BENCH_PYTHON)"
            ));
            false
        }
    };

    // The decoder: made once, kept under target/.
    let mut run_decode = wants("decode");
    let mut run_concurrency = wants("concurrency");
    let mut run_static = wants("static");
    if (run_decode || run_concurrency || run_static) && !is_decoder_ready(&decoder_dir) {
        let skipped = if python_ok {
            eprintln!("writing the benchmark model into {} …", decoder_dir.display());
            let status = Command::new(&python)
                .arg(benches.join("make_bench_model.py"))
                .arg(&decoder_dir)
                .status()
                .expect("run make_bench_model.py");
            (!status.success() || !is_decoder_ready(&decoder_dir)).then(|| "make_bench_model.py failed".to_string())
        } else {
            Some(format!("{} is missing and no Python can make it", decoder_dir.display()))
        };
        if let Some(why) = skipped {
            notes.push(format!("decode, concurrency and static skipped: {why}"));
            (run_decode, run_concurrency, run_static) = (false, false, false);
        }
    }
    let run_decoder = run_decode || run_concurrency || run_static;
    let mut run_embed = wants("embed");
    if run_embed {
        if minilm_dir.join("model.safetensors").exists() {
            write_sentences(&sentences_path);
        } else {
            notes.push(format!("embed skipped: {} is missing (scripts/setup.sh)", minilm_dir.display()));
            run_embed = false;
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let mut reference = None;
    if python_ok && (run_decode || run_static || run_embed) {
        match Reference::start(
            &python,
            &benches,
            (run_decode || run_static).then_some(&*decoder_dir),
            run_embed.then_some((&*minilm_dir, &*sentences_path)),
            &ReferenceOptions { threads, new_tokens, attn: &attn },
            &models,
        ) {
            Ok(r) => reference = Some(r),
            Err(e) => notes.push(format!("reference missing: {e}")),
        }
    }
    let ref_info = reference.as_ref().map(|r| r.info.clone());

    let mut ours = Samples::default();
    let mut theirs = Samples::default();
    // Ours ÷ reference within each round: the two runs of a pair are seconds apart, so they
    // mostly share the machine's load of the moment.
    let mut paired = Samples::default();
    let mut checks: Vec<String> = Vec::new();

    // One engine at a time, as a torch worker process serves one model. Two engines alive in
    // one process are two OpenMP thread teams; once libgomp manages more threads than there
    // are CPUs it stops spinning between parallel regions, and every one of a decoding step's
    // ~150 matrix products then waits for a sleeping thread to wake (on 2 cores: ~35 → ~23
    // tokens/s). See README.md.
    if run_decoder {
        let d = DecodeBench::new(&decoder_dir, new_tokens);
        if run_decode {
            decode_figure(
                &rt,
                &d,
                &mut reference,
                rounds,
                &mut ours,
                &mut theirs,
                &mut paired,
                &mut checks,
                &mut notes,
            );
        }
        if run_concurrency || run_static {
            let levels: Vec<usize> = if run_concurrency { levels.clone() } else { vec![static_rows] };
            let with_reference = if run_static { reference.as_mut() } else { None };
            batch_figures(&d, &levels, with_reference, rounds, &mut ours, &mut theirs, &mut paired, &mut checks);
            if reference.as_ref().is_some_and(|r| r.lost.is_some()) {
                let e = reference.as_mut().unwrap().lost.take().unwrap();
                drop_reference(&mut reference, &mut notes, e);
            }
        }
        drop(d);
        // Let the engine's thread, and with it its OpenMP team, end before the next engine.
        std::thread::sleep(Duration::from_millis(500));
    }

    if run_embed {
        embed_figure(
            &rt,
            &minilm_dir,
            &sentences_path,
            &mut reference,
            rounds,
            &mut ours,
            &mut theirs,
            &mut paired,
            &mut checks,
            &mut notes,
        );
    }
    if let Some(r) = reference.take() {
        r.stop();
    }

    // The table.
    println!();
    println!(
        "switchyard-torch CPU benchmark: {threads} intra-op threads on both sides, {rounds} interleaved rounds after a \
         warm-up; median (min–max)"
    );
    if let Some(info) = &ref_info {
        println!(
            "reference: torch {}, transformers {} (attention: {}), sentence-transformers {} (threads {})",
            info["torch"].as_str().unwrap_or("?"),
            info["transformers"].as_str().unwrap_or("?"),
            info["attn_implementation"].as_str().unwrap_or("?"),
            info["sentence_transformers"].as_str().unwrap_or("?"),
            info["threads"],
        );
    }
    println!("switchyard: libtorch {} (tch 0.26)", libtorch_version(&root));
    println!();
    println!("| figure | Switchyard | transformers / sentence-transformers | ratio | target |");
    println!("|---|---|---|---|---|");
    let fmt1 = |x: f64| format!("{x:.1}");
    let to_ms = |v: &[f64]| v.iter().map(|s| s * 1e3).collect::<Vec<_>>();
    if run_decode {
        row(
            &format!("decode tokens/s (batch 1, {PROMPT_TOKENS}-token prompt, {new_tokens} new, greedy)"),
            &ours.decode,
            &theirs.decode,
            fmt1,
            false,
            "≥ 1.0×",
        );
        row(
            "time to first token, ms (same)",
            &to_ms(&ours.ttft),
            &to_ms(&theirs.ttft),
            fmt1,
            true,
            "— (ratio: reference ÷ ours)",
        );
    }
    if run_concurrency {
        let one = ours.concurrent.get(&1).and_then(|v| median(v));
        for (&n, v) in &ours.concurrent {
            let ratio = match (median(v), one) {
                (Some(m), Some(o)) if n != 1 => format!("{:.2}× the engine at 1", m / o),
                _ => "—".into(),
            };
            let target = if n == 16 { "≥ 5× the engine at 1" } else { "—" };
            println!(
                "| (a) aggregate tokens/s, {n} concurrent sequence{} ({PROMPT_TOKENS}-token prompts, {new_tokens} new each, \
                 greedy) | {} | — | {ratio} | {target} |",
                if n == 1 { "" } else { "s" },
                cell(v, &fmt1),
            );
        }
        for (&n, v) in &ours.concurrent_ttft {
            println!(
                "| (a) time to first token, ms, median of the {n} sequence{} | {} | — | — | — |",
                if n == 1 { "" } else { "s" },
                cell(&to_ms(v), &fmt1)
            );
        }
    }
    if run_static {
        let n = static_rows;
        row(
            &format!(
                "(b) tokens/s, {n} prompts × {new_tokens} new: engine at {n} concurrent vs transformers static batch of {n}"
            ),
            ours.concurrent.get(&n).map_or(&[][..], |v| v),
            &theirs.static_batch,
            fmt1,
            false,
            "≥ 1.0×",
        );
        row(
            &format!("(b) time to first token, ms (ours: median of the {n}; transformers: the batch's)"),
            &to_ms(ours.concurrent_ttft.get(&n).map_or(&[][..], |v| v)),
            &to_ms(&theirs.static_ttft),
            fmt1,
            true,
            "— (ratio: reference ÷ ours)",
        );
    }
    if run_embed {
        row(
            &format!("MiniLM-L6 sentences/s ({SENTENCES} × ~20 words, batch {BATCH})"),
            &ours.embed,
            &theirs.embed,
            fmt1,
            false,
            "≥ 1.0×",
        );
    }
    println!();
    let ratios = |name: &str, v: &[f64]| {
        if !v.is_empty() {
            let list: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
            println!("{name} per round (same-round pairs): median {:.2}×, [{}]", median(v).unwrap(), list.join(", "));
        }
    };
    ratios("decode ratio", &paired.decode);
    ratios("ttft ratio (reference ÷ ours)", &paired.ttft);
    ratios(&format!("(a) engine at {static_rows} ÷ engine at 1"), &paired.scaling);
    ratios(&format!("(b) engine at {static_rows} ÷ transformers static {static_rows}"), &paired.static_batch);
    ratios("embedding ratio", &paired.embed);
    for line in checks.iter().chain(&notes) {
        println!("{line}");
    }
}

/// Batch-1 decode and time to first token, against transformers' `generate` of one prompt.
#[allow(clippy::too_many_arguments)]
fn decode_figure(
    rt: &tokio::runtime::Runtime,
    d: &DecodeBench,
    reference: &mut Option<Reference>,
    rounds: usize,
    ours: &mut Samples,
    theirs: &mut Samples,
    paired: &mut Samples,
    checks: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    // Warm-up, and a check that both sides compute the same thing.
    let warm = rt.block_on(d.run(true));
    if let Some(r) = reference.as_mut() {
        match r.call("decode") {
            Ok(v) => {
                let ids = ids_of(&v["ids"]);
                let same = warm.ids.iter().zip(&ids).take_while(|(a, b)| a == b).count();
                checks.push(format!(
                    "greedy ids: the first {same} of {} agree with transformers (random f32 weights: near-ties may \
                     split the two later)",
                    d.new_tokens
                ));
            }
            Err(e) => drop_reference(reference, notes, e),
        }
    }
    for round in 0..rounds {
        // Alternate who goes first, so neither always follows the other.
        let mut pair = (None, None);
        for side in order(round % 2 == 1) {
            if side == Side::Ours {
                let run = rt.block_on(d.run(false));
                let ttft = run.ttft.as_secs_f64();
                eprintln!("round {round} switchyard decode: ttft {:.1} ms, {:.1} tok/s", ttft * 1e3, run.decode_tok_s);
                ours.ttft.push(ttft);
                ours.decode.push(run.decode_tok_s);
                pair.0 = Some((ttft, run.decode_tok_s));
            } else if let Some(r) = reference.as_mut() {
                match r.call("decode") {
                    Ok(v) => {
                        let ttft = v["ttft_s"].as_f64().unwrap_or(f64::NAN);
                        let tok_s = v["decode_tok_s"].as_f64().unwrap_or(f64::NAN);
                        eprintln!("round {round} transformers decode: ttft {:.1} ms, {tok_s:.1} tok/s", ttft * 1e3);
                        theirs.ttft.push(ttft);
                        theirs.decode.push(tok_s);
                        pair.1 = Some((ttft, tok_s));
                    }
                    Err(e) => drop_reference(reference, notes, e),
                }
            }
        }
        if let (Some((o_ttft, o_tok)), Some((t_ttft, t_tok))) = pair {
            paired.decode.push(o_tok / t_tok);
            paired.ttft.push(t_ttft / o_ttft);
        }
    }
}

/// (a) the engine at each concurrency level, and (b) transformers' static batch of as many
/// prompts as the largest level, when `reference` is given. A reference that fails is left
/// with `lost` set, for the caller to drop.
#[allow(clippy::too_many_arguments)]
fn batch_figures(
    d: &DecodeBench,
    levels: &[usize],
    mut reference: Option<&mut Reference>,
    rounds: usize,
    ours: &mut Samples,
    theirs: &mut Samples,
    paired: &mut Samples,
    checks: &mut Vec<String>,
) {
    let rows = *levels.last().unwrap();
    let prompts = d.variants(rows);
    let static_args = |with_ids: bool| {
        serde_json::json!({
            "prompts": prompts.iter().map(|(_, ids)| ids.clone()).collect::<Vec<_>>(),
            "max_new_tokens": d.new_tokens,
            "batch_size": rows,
            "ids": with_ids,
        })
    };
    // Warm-up of both sides at the largest level, and a check that they compute the same thing.
    let warm = d.run_concurrent(&prompts, true);
    if let Some(r) = reference.as_deref_mut() {
        match r.call_with("static", &static_args(true)) {
            Ok(v) => {
                let theirs: Vec<Vec<u32>> = v["ids"].as_array().into_iter().flatten().map(ids_of).collect();
                let agree: Vec<usize> = warm
                    .ids
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
                    .collect();
                let whole = agree.iter().filter(|&&n| n == d.new_tokens as usize).count();
                let shown: Vec<String> = agree.iter().take(8).map(|n| n.to_string()).collect();
                checks.push(format!(
                    "greedy ids, {rows}-row static batch vs the engine at {rows}: {whole} of {rows} rows agree on all {} \
                     tokens; leading ids in agreement, rows 0–{}: [{}] (batched kernels and padding change the \
                     numerics slightly: near-ties of the random weights may split the two)",
                    d.new_tokens,
                    shown.len().saturating_sub(1),
                    shown.join(", ")
                ));
            }
            Err(e) => r.lost = Some(e),
        }
    }
    for round in 0..rounds {
        let mut pair = (None, None);
        let mut at_one = None;
        for side in order(round % 2 == 1) {
            if side == Side::Ours {
                for &n in levels {
                    let run = d.run_concurrent(&prompts[..n], false);
                    let tok_s = f64::from(run.tokens) / run.wall.as_secs_f64();
                    let ttft = median(&run.ttfts.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()).unwrap();
                    eprintln!(
                        "round {round} switchyard at {n} concurrent: {tok_s:.1} tok/s over {:.2} s, ttft median {:.1} ms",
                        run.wall.as_secs_f64(),
                        ttft * 1e3
                    );
                    ours.concurrent.entry(n).or_default().push(tok_s);
                    ours.concurrent_ttft.entry(n).or_default().push(ttft);
                    if n == 1 {
                        at_one = Some(tok_s);
                    }
                    if n == rows {
                        pair.0 = Some(tok_s);
                    }
                }
            } else if let Some(r) = reference.as_deref_mut().filter(|r| r.lost.is_none()) {
                match r.call_with("static", &static_args(false)) {
                    Ok(v) => {
                        let tok_s = v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                        let ttft = v["batches"][0]["ttft_s"].as_f64().unwrap_or(f64::NAN);
                        eprintln!(
                            "round {round} transformers static batch of {rows}: {tok_s:.1} tok/s over {:.2} s, ttft {:.1} ms",
                            v["seconds"].as_f64().unwrap_or(f64::NAN),
                            ttft * 1e3
                        );
                        theirs.static_batch.push(tok_s);
                        theirs.static_ttft.push(ttft);
                        pair.1 = Some(tok_s);
                    }
                    Err(e) => r.lost = Some(e),
                }
            }
        }
        if let (Some(o), Some(t)) = pair {
            paired.static_batch.push(o / t);
        }
        if let (Some(o), Some(one)) = (pair.0, at_one)
            && rows != 1
        {
            paired.scaling.push(o / one);
        }
    }
}

/// MiniLM sentences/s, against sentence-transformers' `encode`.
#[allow(clippy::too_many_arguments)]
fn embed_figure(
    rt: &tokio::runtime::Runtime,
    minilm_dir: &Path,
    sentences_path: &Path,
    reference: &mut Option<Reference>,
    rounds: usize,
    ours: &mut Samples,
    theirs: &mut Samples,
    paired: &mut Samples,
    checks: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let e = EmbedBench::new(minilm_dir, sentences_path);
    let warm = rt.block_on(e.run());
    if let Some(r) = reference.as_mut() {
        match r.call("embed") {
            Ok(v) => {
                let max_diff = v["first_vectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(&warm.first_vectors)
                    .flat_map(|(t, o)| {
                        t.as_array()
                            .into_iter()
                            .flatten()
                            .zip(o)
                            .map(|(a, b)| (a.as_f64().unwrap_or(f64::NAN) - *b as f64).abs())
                    })
                    .fold(0.0f64, f64::max);
                checks.push(format!(
                    "embeddings: max |Δ| over the first 4 vectors vs sentence-transformers = {max_diff:.2e}"
                ));
            }
            Err(e) => drop_reference(reference, notes, e),
        }
    }
    for round in 0..rounds {
        let mut pair = (None, None);
        for side in order(round % 2 == 1) {
            if side == Side::Ours {
                let run = rt.block_on(e.run());
                eprintln!("round {round} switchyard embed: {:.1} sentences/s", run.sentences_per_s);
                ours.embed.push(run.sentences_per_s);
                pair.0 = Some(run.sentences_per_s);
            } else if let Some(r) = reference.as_mut() {
                match r.call("embed") {
                    Ok(v) => {
                        let s = v["sentences_per_s"].as_f64().unwrap_or(f64::NAN);
                        eprintln!("round {round} sentence-transformers embed: {s:.1} sentences/s");
                        theirs.embed.push(s);
                        pair.1 = Some(s);
                    }
                    Err(e) => drop_reference(reference, notes, e),
                }
            }
        }
        if let (Some(o), Some(t)) = pair {
            paired.embed.push(o / t);
        }
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect()).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Reference,
}

fn order(reference_first: bool) -> [Side; 2] {
    if reference_first { [Side::Reference, Side::Ours] } else { [Side::Ours, Side::Reference] }
}

#[derive(Default)]
struct Samples {
    ttft: Vec<f64>,
    decode: Vec<f64>,
    embed: Vec<f64>,
    /// (a): aggregate tokens/s at each number of concurrent sequences.
    concurrent: BTreeMap<usize, Vec<f64>>,
    /// (a): the median time to first token of each run's sequences, seconds.
    concurrent_ttft: BTreeMap<usize, Vec<f64>>,
    /// (b): transformers' static batch, tokens/s; paired: ours ÷ theirs.
    static_batch: Vec<f64>,
    static_ttft: Vec<f64>,
    /// Paired only: the engine at the largest level ÷ at 1, same round.
    scaling: Vec<f64>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

fn cell(v: &[f64], fmt: &dyn Fn(f64) -> String) -> String {
    match median(v) {
        None => "—".into(),
        Some(m) if v.len() == 1 => fmt(m),
        Some(m) => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
        }
    }
}

/// One table row; the ratio is ours ÷ reference (reference ÷ ours where lower is better), of
/// the medians.
fn row(name: &str, ours: &[f64], theirs: &[f64], fmt: impl Fn(f64) -> String, lower_is_better: bool, target: &str) {
    let ratio = match (median(ours), median(theirs)) {
        (Some(o), Some(t)) => format!("{:.2}×", if lower_is_better { t / o } else { o / t }),
        _ => "— (reference missing)".into(),
    };
    println!("| {name} | {} | {} | {ratio} | {target} |", cell(ours, &fmt), cell(theirs, &fmt));
}

fn libtorch_version(root: &Path) -> String {
    let path = root.join(".switchyard/libtorch/torch/version.py");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_owned()))
        })
        .unwrap_or_else(|| "?".into())
}

fn is_decoder_ready(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json", "bench_prompt.json"].iter().all(|f| dir.join(f).exists())
}

/// 1,000 sentences of 16–24 words from a fixed word list, the same on every run.
fn write_sentences(path: &Path) {
    const WORDS: &str = "the of and to in is was for on are with as his they be at one have this from or had by \
        hot word but what some we can out other were all there when up use your how said an each she which do their \
        time if will way about many then them write would like so these her long make thing see him two has look \
        more day could go come did number sound no most people my over know water than call first who may down side \
        been now find any new work part take get place made live where after back little only round man year came \
        show every good me give our under name very through just form sentence great think say help low line differ \
        turn cause much mean before move right boy old too same tell does set three want air well also play small \
        end put home read hand port large spell add even land here must big high such follow act why ask men change \
        went light kind off need house picture try us again animal point mother world near build self earth father \
        head stand own page should country found answer school grow study still learn plant cover food sun four \
        between state keep eye never last let thought city tree cross farm hard start might story saw far sea draw \
        left late run while press close night real life few north open seem together next white children begin got \
        walk example ease paper group always music those both mark often letter until mile river car feet care \
        second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure \
        watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird \
        soon body dog family direct pose leave song measure door product black short numeral class wind question \
        happen complete ship area half rock order fire south problem piece told knew pass since top whole king space";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut text = String::new();
    for _ in 0..SENTENCES {
        let n = 16 + (next() % 9) as usize;
        let mut sentence: Vec<String> =
            (0..n).map(|_| words[(next() % words.len() as u64) as usize].to_owned()).collect();
        let first = &mut sentence[0];
        *first = first[..1].to_uppercase() + &first[1..];
        text.push_str(&sentence.join(" "));
        text.push_str(".\n");
    }
    if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(path, text).expect("write sentences.txt");
    }
}

struct DecodeBench {
    engine: Engine,
    prompt: String,
    new_tokens: u32,
}

struct DecodeRun {
    ttft: Duration,
    decode_tok_s: f64,
    ids: Vec<u32>,
}

/// N sequences generated at once.
struct ConcurrentRun {
    /// From the first `generate` call to the last `Finished`.
    wall: Duration,
    /// Tokens generated, all sequences together.
    tokens: u32,
    /// Each sequence's time from its `generate` call to its first `Delta`.
    ttfts: Vec<Duration>,
    /// Each sequence's ids (when asked for).
    ids: Vec<Vec<u32>>,
}

fn load_engine(dir: &Path) -> Engine {
    // Built field by field: EngineOptions gains fields as the engine grows.
    let mut options = EngineOptions::new(dir);
    options.device = "cpu".into();
    options.dtype = Some("f32".into());
    Engine::load(options).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

impl DecodeBench {
    fn new(dir: &Path, new_tokens: u32) -> DecodeBench {
        let engine = load_engine(dir);
        let prompt: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("bench_prompt.json")).unwrap()).unwrap();
        let text = prompt["text"].as_str().expect("bench_prompt.json text").to_owned();
        let ids = ids_of(&prompt["ids"]);
        let ours = engine.tokenize(&text, true).expect("tokenize the prompt");
        assert_eq!(ours, ids, "the engine tokenizes the prompt differently from bench_prompt.json");
        assert_eq!(ids.len(), PROMPT_TOKENS);
        DecodeBench { engine, prompt: text, new_tokens }
    }

    fn params(&self, with_ids: bool) -> SamplingParams {
        SamplingParams {
            max_tokens: Some(self.new_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            logprobs: with_ids,
            ..Default::default()
        }
    }

    /// `n` distinct prompts of exactly PROMPT_TOKENS tokens, with their ids: the bench prompt
    /// first, then copies of it with two neighbouring words swapped (a different pair each), so
    /// that no two sequences of a batch compute the same thing.
    fn variants(&self, n: usize) -> Vec<(String, Vec<u32>)> {
        let words: Vec<&str> = self.prompt.split(' ').collect();
        let mut out = vec![(self.prompt.clone(), self.engine.tokenize(&self.prompt, true).unwrap())];
        let mut seen: HashSet<Vec<u32>> = out.iter().map(|(_, ids)| ids.clone()).collect();
        // Word 0 starts the text without a space, so it tokenizes differently elsewhere: swap
        // from word 1 on, then pairs further apart once the neighbours are used up.
        'gap: for gap in 1..words.len() {
            for i in 1..words.len().saturating_sub(gap) {
                if out.len() >= n {
                    break 'gap;
                }
                let mut w = words.clone();
                w.swap(i, i + gap);
                let text = w.join(" ");
                let ids = self.engine.tokenize(&text, true).unwrap();
                if ids.len() == PROMPT_TOKENS && seen.insert(ids.clone()) {
                    out.push((text, ids));
                }
            }
        }
        assert!(out.len() >= n, "only {} distinct {PROMPT_TOKENS}-token variants of the prompt", out.len());
        out.truncate(n);
        out
    }

    /// One generation; `with_ids` also asks for logprobs, to learn the ids (not timed).
    async fn run(&self, with_ids: bool) -> DecodeRun {
        let req = GenerateRequest::new(Prompt::Text(self.prompt.clone()), self.params(with_ids));
        let start = Instant::now();
        let mut rx = self.engine.generate(req, CancellationToken::new());
        let mut first: Option<(Duration, u32)> = None;
        let mut last = Duration::ZERO;
        let mut tokens = 0u32;
        let mut ids = Vec::new();
        let mut completion = 0;
        while let Some(event) = rx.recv().await {
            match event {
                GenerateEvent::Delta { tokens: n, logprobs, .. } => {
                    let now = start.elapsed();
                    first.get_or_insert((now, n));
                    last = now;
                    tokens += n;
                    ids.extend(logprobs.iter().map(|l| l.token_id));
                }
                GenerateEvent::Finished { completion_tokens, .. } => completion = completion_tokens,
                GenerateEvent::Error(e) => panic!("generation failed: {e}"),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        assert_eq!(completion, self.new_tokens, "the engine stopped early");
        assert_eq!(tokens, self.new_tokens);
        let (ttft, first_tokens) = first.expect("no text came back");
        if first_tokens != 1 {
            eprintln!("note: the first delta held {first_tokens} tokens (text held back), ttft includes them");
        }
        let decode_tok_s = f64::from(tokens - first_tokens) / (last - ttft).as_secs_f64();
        DecodeRun { ttft, decode_tok_s, ids }
    }

    /// All of `prompts` at once: `generate` for each, back to back, then every receiver read
    /// to its end on a thread of its own. `with_ids` also asks for logprobs (not timed).
    fn run_concurrent(&self, prompts: &[(String, Vec<u32>)], with_ids: bool) -> ConcurrentRun {
        let start = Instant::now();
        let readers: Vec<_> = prompts
            .iter()
            .map(|(text, _)| {
                let req = GenerateRequest::new(Prompt::Text(text.clone()), self.params(with_ids));
                let called = Instant::now();
                let mut rx = self.engine.generate(req, CancellationToken::new());
                std::thread::spawn(move || {
                    let mut first = None;
                    let mut finished = None;
                    let mut ids = Vec::new();
                    let mut completion = 0;
                    while let Some(event) = rx.blocking_recv() {
                        match event {
                            GenerateEvent::Delta { logprobs, .. } => {
                                first.get_or_insert_with(|| called.elapsed());
                                ids.extend(logprobs.iter().map(|l| l.token_id));
                            }
                            GenerateEvent::Finished { completion_tokens, .. } => {
                                finished = Some(Instant::now());
                                completion = completion_tokens;
                            }
                            GenerateEvent::Error(e) => panic!("generation failed: {e}"),
                            #[allow(unreachable_patterns)]
                            _ => {}
                        }
                    }
                    (first.expect("no text came back"), finished.expect("no Finished event"), completion, ids)
                })
            })
            .collect();
        let mut run = ConcurrentRun { wall: Duration::ZERO, tokens: 0, ttfts: Vec::new(), ids: Vec::new() };
        for reader in readers {
            let (ttft, finished, completion, ids) = reader.join().expect("a reader thread panicked");
            assert_eq!(completion, self.new_tokens, "the engine stopped early");
            run.wall = run.wall.max(finished - start);
            run.tokens += completion;
            run.ttfts.push(ttft);
            run.ids.push(ids);
        }
        run
    }
}

struct EmbedBench {
    engine: Engine,
    sentences: Vec<String>,
}

struct EmbedRun {
    sentences_per_s: f64,
    first_vectors: Vec<Vec<f32>>,
}

impl EmbedBench {
    fn new(dir: &Path, sentences: &Path) -> EmbedBench {
        let engine = load_engine(dir);
        let sentences: Vec<String> = std::fs::read_to_string(sentences)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(sentences.len(), SENTENCES);
        EmbedBench { engine, sentences }
    }

    async fn run(&self) -> EmbedRun {
        let start = Instant::now();
        let out = self.engine.embed(self.sentences.clone()).await.expect("embed");
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(out.vectors.len(), SENTENCES);
        EmbedRun {
            sentences_per_s: SENTENCES as f64 / seconds,
            first_vectors: out.vectors.into_iter().take(4).collect(),
        }
    }
}

/// `reference.py --serve` in a child process.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    info: Value,
    log: PathBuf,
    /// Why a call failed, when the caller could not drop the reference at once.
    lost: Option<String>,
}

struct ReferenceOptions<'a> {
    threads: usize,
    new_tokens: u32,
    /// transformers' `attn_implementation` for the decoder.
    attn: &'a str,
}

impl Reference {
    fn start(
        python: &str,
        benches: &Path,
        decoder: Option<&Path>,
        encoder: Option<(&Path, &Path)>,
        options: &ReferenceOptions,
        models: &Path,
    ) -> Result<Reference, String> {
        let threads = options.threads;
        let log = models.join("reference-stderr.log");
        let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(python);
        cmd.arg(benches.join("reference.py")).arg("--serve").args(["--threads", &threads.to_string()]);
        cmd.args(["--new-tokens", &options.new_tokens.to_string(), "--batch-size", &BATCH.to_string()]);
        cmd.args(["--attn-implementation", options.attn]);
        if let Some(d) = decoder {
            cmd.arg("--decoder").arg(d);
        }
        if let Some((e, s)) = encoder {
            cmd.arg("--encoder").arg(e).arg("--sentences").arg(s);
        }
        cmd.env("OMP_NUM_THREADS", threads.to_string()).env("MKL_NUM_THREADS", threads.to_string());
        cmd.env("TOKENIZERS_PARALLELISM", "false").env("HF_HUB_OFFLINE", "1").env("TRANSFORMERS_OFFLINE", "1");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {python}: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut r = Reference { child, stdin, stdout, info: Value::Null, log, lost: None };
        let ready = r.read_reply()?;
        r.info =
            ready.get("ready").cloned().ok_or_else(|| format!("unexpected first line from reference.py: {ready}"))?;
        Ok(r)
    }

    fn read_reply(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
            if n == 0 {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(8).collect();
                return Err(format!(
                    "reference.py ended ({}); its stderr ends with:\n  {}",
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                ));
            }
            // Libraries may print to stdout; replies are the JSON lines.
            if line.trim_start().starts_with('{') {
                let v: Value = serde_json::from_str(line.trim()).map_err(|e| format!("bad reply {line:?}: {e}"))?;
                if let Some(err) = v.get("error") {
                    return Err(format!("reference.py: {err}"));
                }
                return Ok(v);
            }
        }
    }

    fn call(&mut self, cmd: &str) -> Result<Value, String> {
        writeln!(self.stdin, "{cmd}").and_then(|_| self.stdin.flush()).map_err(|e| format!("reference.py: {e}"))?;
        self.read_reply()
    }

    /// A command with arguments: one line, the command, a space and a JSON object.
    fn call_with(&mut self, cmd: &str, args: &Value) -> Result<Value, String> {
        self.call(&format!("{cmd} {args}"))
    }

    fn stop(mut self) {
        let _ = writeln!(self.stdin, "quit");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

fn drop_reference(reference: &mut Option<Reference>, notes: &mut Vec<String>, e: String) {
    notes.push(format!("reference lost: {e}"));
    if let Some(mut r) = reference.take() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}
