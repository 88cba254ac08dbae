//! What the torch benches through the api (`torch-mixed`, `embed`) share: the Python reference
//! (`worker/torch/benches/reference.py --serve`, the same script `cargo bench -p
//! switchyard-torch` drives) in a child process, the inputs both sides get (the bench decoder,
//! MiniLM, the sentences), and a stack whose one worker is `switchyard worker torch`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::client::Target;
use crate::stack::{self, Stack, StackOptions, WorkerBackend};

/// The repository's root, resolved (for paths in reports).
pub fn root() -> PathBuf {
    stack::repo_root().canonicalize().unwrap_or_else(|_| stack::repo_root())
}

/// The Python that runs the reference: `given`, else `.switchyard/bench-venv/bin/python`
/// (`scripts/setup.sh --bench-tools`).
pub fn python(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| root().join(".switchyard/bench-venv/bin/python"))
}

/// Whether `python` imports what the reference needs; why not, if it does not.
pub fn python_works(python: &Path) -> Result<(), String> {
    match Command::new(python)
        .args(["-c", "import torch, transformers, sentence_transformers"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(format!(
            "{} cannot import torch, transformers and sentence_transformers (run scripts/setup.sh --bench-tools, or \
             pass --python / set SWITCHYARD_BENCH_PYTHON)",
            python.display()
        )),
        Err(e) => Err(format!(
            "cannot run {}: {e} (run scripts/setup.sh --bench-tools, or pass --python / set SWITCHYARD_BENCH_PYTHON)",
            python.display()
        )),
    }
}

/// `target/bench-models` of the repository, where the torch benches keep their inputs.
pub fn models_dir() -> PathBuf {
    root().join("target/bench-models")
}

/// The bench decoder (`make_bench_model.py`'s random ~135M Llama): `given`, else
/// `target/bench-models/llama-135m-random`, written by `make_bench_model.py` when missing.
pub fn bench_decoder(given: Option<&Path>, python: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let dir = models_dir().join("llama-135m-random");
    let ready = |d: &Path| ["config.json", "model.safetensors", "tokenizer.json"].iter().all(|f| d.join(f).exists());
    if !ready(&dir) {
        python_works(python).map_err(|e| anyhow::anyhow!("{} is missing and no Python can make it: {e}", dir.display()))?;
        eprintln!("writing the benchmark model into {} …", dir.display());
        std::fs::create_dir_all(models_dir())?;
        let status = Command::new(python)
            .arg(root().join("worker/torch/benches/make_bench_model.py"))
            .arg(&dir)
            .status()
            .context("running make_bench_model.py")?;
        if !status.success() || !ready(&dir) {
            bail!("make_bench_model.py failed ({status})");
        }
    }
    Ok(dir)
}

/// 1,000 sentences of 16–24 words from a fixed word list, the same on every run: the same
/// generator as `worker/torch/benches/torch_bench.rs` (keep the two alike), so both benches
/// embed the same text.
pub fn sentences(n: usize) -> Vec<String> {
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
    let mut rng = SplitMix64(0x5eed_1234_abcd_0001);
    (0..n)
        .map(|_| {
            let count = 16 + (rng.next() % 9) as usize;
            let mut sentence: Vec<String> = (0..count).map(|_| words[(rng.next() % words.len() as u64) as usize].to_owned()).collect();
            let first = &mut sentence[0];
            *first = first[..1].to_uppercase() + &first[1..];
            sentence.join(" ") + "."
        })
        .collect()
}

/// splitmix64: small, fast, and the same everywhere.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What the torch stack runs with.
pub struct TorchStack<'a> {
    pub binaries: &'a crate::stack::Binaries,
    pub model_path: &'a Path,
    /// `--slots` of the worker; 0: the worker's own default.
    pub worker_slots: u32,
    pub worker_args: &'a [String],
    /// Intra-op threads of the worker's libtorch (OMP_NUM_THREADS / MKL_NUM_THREADS).
    pub threads: usize,
    pub env: &'a [(String, String, String)],
}

/// nats-server, redis-server, an api and ONE `switchyard worker torch`, once the api lists the
/// model (named after its folder). The api waits up to an hour for a worker to take a job and
/// for a job's next event (its defaults, 30 s and 120 s, are for people, not for a queue of
/// 64 requests on a 2-core CPU).
pub async fn start_torch_stack(options: &TorchStack<'_>, embedding: bool) -> anyhow::Result<(Stack, PathBuf, String, Target)> {
    let switchyard = options.binaries.switchyard()?;
    let list = Command::new(&switchyard).args(["worker", "--list"]).output().context("running switchyard worker --list")?;
    if !String::from_utf8_lossy(&list.stdout).lines().any(|l| l.starts_with("torch")) {
        bail!(
            "{} has no torch backend: build it with its default features (CARGO_TARGET_DIR=target/bench cargo build \
             --release -p switchyard -p switchyard-bench)",
            switchyard.display()
        );
    }
    let name = options.model_path.file_name().and_then(|n| n.to_str()).context("the model folder has no name")?.to_string();
    let mut env: Vec<(String, String, String)> = vec![
        ("api".into(), "SWITCHYARD_QUEUE_TIMEOUT".into(), "1h".into()),
        ("api".into(), "SWITCHYARD_IDLE_TIMEOUT".into(), "1h".into()),
        ("worker".into(), "OMP_NUM_THREADS".into(), options.threads.to_string()),
        ("worker".into(), "MKL_NUM_THREADS".into(), options.threads.to_string()),
    ];
    env.extend(options.env.iter().cloned());
    eprintln!("starting a stack on free ports with {} and one torch worker for {}", switchyard.display(), options.model_path.display());
    let mut stack = Stack::start(&StackOptions {
        switchyard: switchyard.clone(),
        nats_server: options.binaries.nats_server.clone(),
        redis_server: options.binaries.redis_server.clone(),
        scheduler: false,
        scheduler_args: Vec::new(),
        worker_backend: WorkerBackend::Torch { model_path: options.model_path.to_path_buf() },
        worker_slots: options.worker_slots,
        worker_delay: String::new(),
        worker_args: options.worker_args.to_vec(),
        no_auth: false,
        key_args: Vec::new(),
        env,
        thread_per_core: false,
        nats_store: None,
    })?;
    let target = Target::parse(&stack.api_url, stack.api_key.as_deref())?;
    if let Err(e) = crate::wait_for_model(&target, Some(&mut stack), &name, embedding, Duration::from_secs(600)).await {
        stack.keep_logs();
        return Err(e);
    }
    eprintln!("api at {} serves {name}", stack.api_url);
    Ok((stack, switchyard, name, target))
}

/// `reference.py --serve` in a child process: one command line in, one JSON line out.
pub struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub info: Value,
    log: PathBuf,
}

impl Reference {
    /// The reference serving `args`, or `None` with why in `notes` (no working Python, or
    /// the reference failed to start): the bench then prints Switchyard's side alone.
    pub fn start_or_note(python: &Path, threads: usize, args: &[&std::ffi::OsStr], notes: &mut Vec<String>) -> Option<Reference> {
        if let Err(e) = python_works(python) {
            notes.push(format!("reference missing: {e}"));
            return None;
        }
        Reference::start(python, threads, args).map_err(|e| notes.push(format!("reference missing: {e:#}"))).ok()
    }

    /// `args`: reference.py's arguments beyond `--serve` and `--threads` (`--decoder DIR`, …).
    pub fn start(python: &Path, threads: usize, args: &[&std::ffi::OsStr]) -> anyhow::Result<Reference> {
        std::fs::create_dir_all(models_dir())?;
        let log = models_dir().join("reference-stderr.log");
        let stderr = std::fs::File::create(&log)?;
        let mut cmd = Command::new(python);
        cmd.arg(root().join("worker/torch/benches/reference.py")).arg("--serve").args(["--threads", &threads.to_string()]).args(args);
        cmd.env("OMP_NUM_THREADS", threads.to_string()).env("MKL_NUM_THREADS", threads.to_string());
        cmd.env("TOKENIZERS_PARALLELISM", "false").env("HF_HUB_OFFLINE", "1").env("TRANSFORMERS_OFFLINE", "1");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        switchyard_broker::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut r = Reference { child, stdin, stdout, info: Value::Null, log };
        let ready = r.read_reply()?;
        r.info = ready.get("ready").cloned().with_context(|| format!("unexpected first line from reference.py: {ready}"))?;
        Ok(r)
    }

    fn read_reply(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(8).collect();
                bail!(
                    "reference.py ended ({}); its stderr ends with:\n  {}",
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                );
            }
            // Libraries may print to stdout; replies are the JSON lines.
            if line.trim_start().starts_with('{') {
                let v: Value = serde_json::from_str(line.trim()).with_context(|| format!("bad reply {line:?}"))?;
                if let Some(err) = v.get("error") {
                    bail!("reference.py: {err}");
                }
                return Ok(v);
            }
        }
    }

    /// One command (`static`, `embed`, …) with a JSON object of arguments; its JSON reply.
    /// Blocking: the reference is the only thing running while it works.
    pub fn call(&mut self, cmd: &str, args: &Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{cmd} {args}")?;
        self.stdin.flush()?;
        self.read_reply()
    }

    /// A line for the report: the versions the reference runs.
    pub fn versions(&self) -> String {
        let i = &self.info;
        format!(
            "torch {}, transformers {} (attention: {}), sentence-transformers {}, {} threads",
            i["torch"].as_str().unwrap_or("?"),
            i["transformers"].as_str().unwrap_or("?"),
            i["attn_implementation"].as_str().unwrap_or("?"),
            i["sentence_transformers"].as_str().unwrap_or("?"),
            i["threads"]
        )
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Median of `v` (NaN for none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// `median (min–max)` of `v` with `fmt`, or the one value, or `—`.
pub fn spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match v.len() {
        0 => "—".into(),
        1 => fmt(v[0]),
        _ => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}–{})", fmt(median(v)), fmt(lo), fmt(hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_fixed_and_16_to_24_words() {
        let a = sentences(50);
        assert_eq!(a, sentences(50));
        for s in &a {
            let words = s.split(' ').count();
            assert!((16..=24).contains(&words), "{s}");
            assert!(s.ends_with('.') && s.chars().next().unwrap().is_uppercase(), "{s}");
        }
    }

    #[test]
    fn between_stays_in_range() {
        let mut rng = SplitMix64(7);
        for _ in 0..1000 {
            assert!((16..=256).contains(&rng.between(16, 256)));
        }
    }

    #[test]
    fn spread_and_median() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[], |x| format!("{x}")), "—");
        assert_eq!(spread(&[1.0, 3.0, 2.0], |x| format!("{x:.0}")), "2 (1–3)");
    }
}
