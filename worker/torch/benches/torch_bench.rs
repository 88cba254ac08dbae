//! CPU benchmark of the engine against transformers and sentence-transformers, measured on the
//! same machine in the same run (see benches/README.md for the numbers).
//!
//! ```text
//! cd /work/main && CARGO_TARGET_DIR=target/torch cargo bench -p switchyard-torch --bench torch_bench
//! ```
//!
//! * Decode, batch 1: a randomly initialised ~135M-parameter Llama shaped like SmolLM-135M
//!   (`make_bench_model.py`, written into `target/bench-models/` when missing), a 32-token
//!   prompt, 128 greedy tokens with EOS ignored. Time to first token: from the `generate` call
//!   to the first `Delta`; decode tokens/s: the tokens after the first over the time from the
//!   first `Delta` to the last.
//! * Embeddings: all-MiniLM-L6-v2, 1,000 deterministic ~20-word sentences in one
//!   `Engine::embed` call (it runs them 32 at a time, sorted by length, as
//!   sentence-transformers does); sentences/s over the wall time of the call.
//!
//! The reference (`reference.py --serve`) runs in a Python child process driven over a pipe,
//! so the two sides alternate run by run (which side goes first alternates by round too) and
//! share whatever load the machine has at the time; figures are medians over the rounds.
//! Both sides use the same number of intra-op threads.
//!
//! Environment: `SWITCHYARD_BENCH_PYTHON` (default `/tmp/stvenv/bin/python`),
//! `SWITCHYARD_BENCH_THREADS` (default 2), `SWITCHYARD_BENCH_ROUNDS` (default 7). Arguments
//! after `--`: `decode` and/or `embed` to run only those. Without a working Python reference
//! the benchmark prints Switchyard's figures alone and says so.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_torch::{Engine, EngineOptions, GenerateEvent, GenerateRequest, Prompt, SamplingParams};
use tokio_util::sync::CancellationToken;

const NEW_TOKENS: u32 = 128;
const PROMPT_TOKENS: usize = 32;
const SENTENCES: usize = 1000;
const BATCH: usize = 32;
const DECODER_DIR: &str = "llama-135m-random";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| args.is_empty() || args.iter().any(|a| name.contains(a.as_str()));
    let env_num = |name: &str, default: usize| {
        std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or(default)
    };
    let threads = env_num("SWITCHYARD_BENCH_THREADS", 2);
    let rounds = env_num("SWITCHYARD_BENCH_ROUNDS", 7);
    let python = std::env::var("SWITCHYARD_BENCH_PYTHON").unwrap_or_else(|_| "/tmp/stvenv/bin/python".into());

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root");
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
                 (set SWITCHYARD_BENCH_PYTHON)"
            ));
            false
        }
        Err(e) => {
            notes.push(format!("reference missing: cannot run {python}: {e} (set SWITCHYARD_BENCH_PYTHON)"));
            false
        }
    };

    // The decoder: made once, kept under target/.
    let mut run_decode = wants("decode");
    if run_decode && !is_decoder_ready(&decoder_dir) {
        if python_ok {
            eprintln!("writing the benchmark model into {} …", decoder_dir.display());
            let status = Command::new(&python)
                .arg(benches.join("make_bench_model.py"))
                .arg(&decoder_dir)
                .status()
                .expect("run make_bench_model.py");
            if !status.success() || !is_decoder_ready(&decoder_dir) {
                notes.push("decode skipped: make_bench_model.py failed".into());
                run_decode = false;
            }
        } else {
            notes.push(format!("decode skipped: {} is missing and no Python can make it", decoder_dir.display()));
            run_decode = false;
        }
    }
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
    if python_ok && (run_decode || run_embed) {
        match Reference::start(
            &python,
            &benches,
            run_decode.then_some(&*decoder_dir),
            run_embed.then_some((&*minilm_dir, &*sentences_path)),
            threads,
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
    let mut decode_check = None;
    let mut embed_check = None;

    // One engine at a time, as a torch worker process serves one model. Two engines alive in
    // one process are two OpenMP thread teams; once libgomp manages more threads than there
    // are CPUs it stops spinning between parallel regions, and every one of a decoding step's
    // ~150 matrix products then waits for a sleeping thread to wake (on 2 cores: ~35 → ~23
    // tokens/s). See README.md.
    if run_decode {
        let d = DecodeBench::new(&decoder_dir);
        // Warm-up, and a check that both sides compute the same thing.
        let warm = rt.block_on(d.run(true));
        if let Some(r) = reference.as_mut() {
            match r.call("decode") {
                Ok(v) => {
                    let ids: Vec<u32> = v["ids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                        .unwrap_or_default();
                    let same = warm.ids.iter().zip(&ids).take_while(|(a, b)| a == b).count();
                    decode_check = Some(format!(
                        "greedy ids: the first {same} of {NEW_TOKENS} agree with transformers (random f32 \
                         weights: near-ties may split the two later)"
                    ));
                }
                Err(e) => drop_reference(&mut reference, &mut notes, e),
            }
        }
        for round in 0..rounds {
            // Alternate who goes first, so neither always follows the other.
            let mut pair = (None, None);
            for side in order(round % 2 == 1) {
                if side == Side::Ours {
                    let run = rt.block_on(d.run(false));
                    let ttft = run.ttft.as_secs_f64();
                    eprintln!(
                        "round {round} switchyard decode: ttft {:.1} ms, {:.1} tok/s",
                        ttft * 1e3,
                        run.decode_tok_s
                    );
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
                        Err(e) => drop_reference(&mut reference, &mut notes, e),
                    }
                }
            }
            if let (Some((o_ttft, o_tok)), Some((t_ttft, t_tok))) = pair {
                paired.decode.push(o_tok / t_tok);
                paired.ttft.push(t_ttft / o_ttft);
            }
        }
        drop(d);
        // Let the engine's thread, and with it its OpenMP team, end before the next engine.
        std::thread::sleep(Duration::from_millis(500));
    }

    if run_embed {
        let e = EmbedBench::new(&minilm_dir, &sentences_path);
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
                    embed_check = Some(format!(
                        "embeddings: max |Δ| over the first 4 vectors vs sentence-transformers = {max_diff:.2e}"
                    ));
                }
                Err(e) => drop_reference(&mut reference, &mut notes, e),
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
                        Err(e) => drop_reference(&mut reference, &mut notes, e),
                    }
                }
            }
            if let (Some(o), Some(t)) = pair {
                paired.embed.push(o / t);
            }
        }
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
            "reference: torch {}, transformers {}, sentence-transformers {} (threads {})",
            info["torch"].as_str().unwrap_or("?"),
            info["transformers"].as_str().unwrap_or("?"),
            info["sentence_transformers"].as_str().unwrap_or("?"),
            info["threads"],
        );
    }
    println!("switchyard: libtorch {} (tch 0.26)", libtorch_version(&root));
    println!();
    println!("| figure | Switchyard | transformers / sentence-transformers | ratio | target |");
    println!("|---|---|---|---|---|");
    if run_decode {
        row(
            &format!("decode tokens/s (batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new, greedy)"),
            &ours.decode,
            &theirs.decode,
            |x| format!("{x:.1}"),
            false,
            "≥ 1.0×",
        );
        row(
            "time to first token, ms (same)",
            &ours.ttft.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            &theirs.ttft.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            |x| format!("{x:.1}"),
            true,
            "— (ratio: reference ÷ ours)",
        );
    }
    if run_embed {
        row(
            &format!("MiniLM-L6 sentences/s ({SENTENCES} × ~20 words, batch {BATCH})"),
            &ours.embed,
            &theirs.embed,
            |x| format!("{x:.1}"),
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
    ratios("embedding ratio", &paired.embed);
    for line in decode_check.iter().chain(&embed_check).chain(&notes) {
        println!("{line}");
    }
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
}

struct DecodeRun {
    ttft: Duration,
    decode_tok_s: f64,
    ids: Vec<u32>,
}

impl DecodeBench {
    fn new(dir: &Path) -> DecodeBench {
        let engine =
            Engine::load(EngineOptions { model_path: dir.into(), device: "cpu".into(), dtype: Some("f32".into()) })
                .expect("load the benchmark decoder");
        let prompt: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("bench_prompt.json")).unwrap()).unwrap();
        let text = prompt["text"].as_str().expect("bench_prompt.json text").to_owned();
        let ids: Vec<u32> = prompt["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ours = engine.tokenize(&text, true).expect("tokenize the prompt");
        assert_eq!(ours, ids, "the engine tokenizes the prompt differently from bench_prompt.json");
        assert_eq!(ids.len(), PROMPT_TOKENS);
        DecodeBench { engine, prompt: text }
    }

    /// One generation; `with_ids` also asks for logprobs, to learn the ids (not timed).
    async fn run(&self, with_ids: bool) -> DecodeRun {
        let params = SamplingParams {
            max_tokens: Some(NEW_TOKENS),
            temperature: Some(0.0),
            ignore_eos: true,
            logprobs: with_ids,
            ..Default::default()
        };
        let req = GenerateRequest::new(Prompt::Text(self.prompt.clone()), params);
        let start = Instant::now();
        let mut rx = self.engine.generate(req, CancellationToken::new());
        let mut first: Option<(Duration, u32)> = None;
        let mut last = Duration::ZERO;
        let mut tokens = 0u32;
        let mut ids = Vec::new();
        let mut completion = 0;
        while let Some(event) = rx.recv().await {
            match event {
                GenerateEvent::Started { .. } => {}
                GenerateEvent::Delta { tokens: n, logprobs, .. } => {
                    let now = start.elapsed();
                    first.get_or_insert((now, n));
                    last = now;
                    tokens += n;
                    ids.extend(logprobs.iter().map(|l| l.token_id));
                }
                GenerateEvent::Finished { completion_tokens, .. } => completion = completion_tokens,
                GenerateEvent::Error(e) => panic!("generation failed: {e}"),
            }
        }
        assert_eq!(completion, NEW_TOKENS, "the engine stopped early");
        assert_eq!(tokens, NEW_TOKENS);
        let (ttft, first_tokens) = first.expect("no text came back");
        if first_tokens != 1 {
            eprintln!("note: the first delta held {first_tokens} tokens (text held back), ttft includes them");
        }
        let decode_tok_s = f64::from(tokens - first_tokens) / (last - ttft).as_secs_f64();
        DecodeRun { ttft, decode_tok_s, ids }
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
        let engine =
            Engine::load(EngineOptions { model_path: dir.into(), device: "cpu".into(), dtype: Some("f32".into()) })
                .expect("load MiniLM");
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
}

impl Reference {
    fn start(
        python: &str,
        benches: &Path,
        decoder: Option<&Path>,
        encoder: Option<(&Path, &Path)>,
        threads: usize,
        models: &Path,
    ) -> Result<Reference, String> {
        let log = models.join("reference-stderr.log");
        let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(python);
        cmd.arg(benches.join("reference.py")).arg("--serve").args(["--threads", &threads.to_string()]);
        cmd.args(["--new-tokens", &NEW_TOKENS.to_string(), "--batch-size", &BATCH.to_string()]);
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
        let mut r = Reference { child, stdin, stdout, info: Value::Null, log };
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
