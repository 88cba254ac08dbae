//! Direct NATS publishers (docs/protocol.md) against a real stack and real echo workers: the
//! Rust example (`client/examples/publish.rs`, built here with cargo) and the Python example
//! (`sdk/python/examples/publish.py`, run from `.switchyard/py-venv`) stream the same text and
//! usage as the api answers for the same request, in chat, completions and embeddings; they cancel
//! a running job (it stops on the worker, the Redis flag is set) and give up on a job nobody
//! starts; the Rust library and the Python publisher continue a job whose worker was killed
//! without losing or repeating text (they answer the next worker's resume request); and both
//! examples run under the secured broker's example publisher role.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_client::{BrokerAuth, JobTimeouts, Jobs};
use switchyard_schemas::{ChatMessage, EventBody, FinishReason, JobRequest, Lane, keys};
use switchyard_tests::openai::words;
use switchyard_tests::{Proc, Role, Stack, cargo_build, eventually, tail, workspace_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Example {
    Rust,
    Python,
}

const EXAMPLES: [Example; 2] = [Example::Rust, Example::Python];

/// `client/examples/publish.rs`, built once per test binary into the tests' target directory
/// (so the tests never run a stale build of it).
fn rust_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = cargo_build(&["-p", "switchyard-client", "--example", "publish"], "");
        let bin = profile_dir.join("examples/publish");
        assert!(bin.is_file(), "cargo built the example but {} does not exist", bin.display());
        bin
    })
    .clone()
}

/// The SDK's venv; a missing one fails the test (never a silent skip).
fn python() -> PathBuf {
    let python = workspace_root().join(".switchyard/py-venv/bin/python");
    assert!(python.is_file(), "{} does not exist: run scripts/setup.sh --test-tools", python.display());
    python
}

/// A command with none of the test's own Switchyard or proxy settings (the examples read
/// `SWITCHYARD_NATS_URL` and friends).
fn clean_command(program: impl Into<PathBuf>) -> Command {
    let mut command = Command::new(program.into());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        if key.starts_with("SWITCHYARD_") || key.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(key);
        }
    }
    command.env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1").env("NO_COLOR", "1");
    command
}

fn example_command(example: Example) -> Command {
    match example {
        Example::Rust => clean_command(rust_example()),
        Example::Python => {
            let mut command = clean_command(python());
            command.arg(workspace_root().join("sdk/python/examples/publish.py"));
            command
        }
    }
}

/// How an example run ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The fields of the summary line (`finish_reason=stop prompt_tokens=5 …`).
    fn summary(&self) -> HashMap<String, String> {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|line| line.starts_with("finish_reason="))
            .unwrap_or_else(|| panic!("no summary line: {self:?}"));
        line.split_whitespace().filter_map(|field| field.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn number(&self, field: &str) -> u64 {
        self.summary()[field].parse().unwrap_or_else(|e| panic!("{field}: {e}: {self:?}"))
    }
}

/// Runs an example to its end (at most 60 s) with `args`.
async fn run_example(example: Example, args: &[String]) -> Run {
    let mut command = example_command(example);
    command.args(args);
    let output = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || command.output()))
        .await
        .unwrap_or_else(|_| panic!("the {example:?} example did not finish within 60 s"))
        .unwrap()
        .expect("running the example");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// An example's arguments for `stack`'s open servers.
fn on(stack: &Stack, rest: &[&str]) -> Vec<String> {
    let mut all = args(&["--nats-url", &stack.nats_url(), "--redis-url", &stack.redis_url()]);
    all.extend(args(rest));
    all
}

fn assert_succeeded(example: Example, run: &Run) {
    assert_eq!(run.code, Some(0), "the {example:?} example failed: {run:?}");
}

#[tokio::test]
async fn the_examples_stream_what_the_api_answers_for_the_same_request() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "5ms"], "echo").await;
    let prompt = "the quick brown fox jumps over the lazy dog";
    let (status, chat) =
        stack.post_json("/v1/chat/completions", &json!({"model": "echo", "messages": [{"role": "user", "content": prompt}]})).await;
    assert_eq!(status, 200, "{chat}");
    let (status, completion) = stack.post_json("/v1/completions", &json!({"model": "echo", "prompt": prompt, "max_tokens": 3})).await;
    assert_eq!(status, 200, "{completion}");
    let inputs = ["a b", "c"];
    let (status, embeddings) = stack.post_json("/v1/embeddings", &json!({"model": "echo-embedding", "input": inputs})).await;
    assert_eq!(status, 200, "{embeddings}");

    for example in EXAMPLES {
        // Chat: the text streamed delta by delta, the usage the worker counted.
        let run = run_example(example, &on(&stack, &["--model", "echo", prompt])).await;
        assert_succeeded(example, &run);
        assert_eq!(run.stdout, format!("{}\n", chat["choices"][0]["message"]["content"].as_str().unwrap()), "{example:?}");
        assert_eq!(run.stdout.trim_end(), prompt);
        assert_eq!(run.summary()["finish_reason"], "stop");
        assert_eq!(run.number("prompt_tokens"), chat["usage"]["prompt_tokens"].as_u64().unwrap(), "{example:?}: {run:?}");
        assert_eq!(run.number("completion_tokens"), chat["usage"]["completion_tokens"].as_u64().unwrap(), "{example:?}: {run:?}");
        assert!(run.number("deltas") > 1, "{example:?}: the text came in several deltas: {run:?}");

        // Completions, cut by max_tokens, on the batch lane.
        let run =
            run_example(example, &on(&stack, &["--model", "echo", "--kind", "completion", "--lane", "batch", "--max-tokens", "3", prompt]))
                .await;
        assert_succeeded(example, &run);
        assert_eq!(run.stdout.trim_end(), completion["choices"][0]["text"].as_str().unwrap(), "{example:?}");
        assert_eq!(run.summary()["finish_reason"], "length");
        assert_eq!(run.number("completion_tokens"), 3);
        assert_eq!(run.number("prompt_tokens"), completion["usage"]["prompt_tokens"].as_u64().unwrap(), "{example:?}");

        // Embeddings: one vector per input, in order, equal to the api's.
        let mut embedding_args = on(&stack, &["--model", "echo-embedding", "--kind", "embedding"]);
        embedding_args.extend(args(&inputs));
        let run = run_example(example, &embedding_args).await;
        assert_succeeded(example, &run);
        let vectors: Vec<Vec<f64>> =
            run.stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))).collect();
        assert_eq!(vectors.len(), inputs.len(), "{example:?}: {run:?}");
        for (i, vector) in vectors.iter().enumerate() {
            let expected: Vec<f64> = embeddings["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(vector.len(), expected.len());
            assert!(vector.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6), "{example:?} vector {i}: {vector:?} vs {expected:?}");
        }
        assert_eq!(run.number("prompt_tokens"), embeddings["usage"]["prompt_tokens"].as_u64().unwrap(), "{example:?}");
    }
}

#[tokio::test]
async fn the_examples_cancel_a_running_job_on_the_worker() {
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--delay", "50ms"], "echo").await;
    let prompt = words("cancel", 60); // 3 s of tokens if nobody stops it
    let mut redis = stack.redis_conn().await;
    for example in EXAMPLES {
        let run = run_example(example, &on(&stack, &["--model", "echo", "--cancel-after", "2", &prompt])).await;
        assert_succeeded(example, &run);
        assert_eq!(run.summary()["finish_reason"], "cancelled", "{example:?}: {run:?}");
        let produced = run.number("completion_tokens");
        assert!(produced < 20, "{example:?}: generation went on after the cancel: {produced} of 60 tokens");
        assert!(prompt.starts_with(run.stdout.trim_end()), "{example:?}: {run:?}");
        let job = run.summary()["job"].clone();
        let flag: Option<String> = redis::cmd("GET").arg(keys::cancel(&job)).query_async(&mut redis).await.unwrap();
        assert_eq!(flag.as_deref(), Some("1"), "{example:?}: the cancel flag of {job}");
    }
}

#[tokio::test]
async fn the_examples_give_up_on_a_job_no_worker_starts_and_cancel_it() {
    let stack = Stack::start().await;
    let mut redis = stack.redis_conn().await;
    rust_example(); // built before the clock starts
    for example in EXAMPLES {
        let before: Vec<String> = redis::cmd("KEYS").arg(keys::CANCEL_FLAGS).query_async(&mut redis).await.unwrap();
        let started = std::time::Instant::now();
        let run = run_example(example, &on(&stack, &["--model", "nobody-serves-this", "--queue-timeout", "1", "hello"])).await;
        assert_eq!(run.code, Some(2), "{example:?}: {run:?}");
        assert!(run.stderr.contains("No worker took"), "{example:?}: {run:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "{example:?} took {:?}", started.elapsed());
        let after: Vec<String> = redis::cmd("KEYS").arg(keys::CANCEL_FLAGS).query_async(&mut redis).await.unwrap();
        assert_eq!(after.len(), before.len() + 1, "{example:?} cancelled the job it gave up on: {after:?}");
    }
}

/// Echo workers slow enough to be killed mid-stream, whose jobs are redelivered 1 s after.
const RESUME_ARGS: [&str; 5] = ["echo", "--delay", "100ms", "--ack-wait", "1s"];

#[tokio::test]
async fn the_rust_publisher_continues_a_job_whose_worker_died() {
    let stack = Stack::start().await;
    let a = stack.worker(&RESUME_ARGS);
    stack.worker_id(&a).await;
    stack.wait_for_model("echo").await;
    let nats = switchyard_client::connect_nats(&stack.nats_url(), "rust-publisher", &BrokerAuth::default()).await.unwrap();
    let redis = switchyard_client::connect_redis(&stack.redis_url()).await.unwrap();
    let timeouts = JobTimeouts { queue: Duration::from_secs(30), idle: Duration::from_secs(30) };
    let jobs = Jobs::start_publisher("rust-publisher".into(), nats, Some(redis), timeouts).await.unwrap();
    let prompt = words("resume", 40);
    let request = JobRequest::Chat {
        messages: vec![ChatMessage::new("user", prompt.clone())],
        params: Default::default(),
        tools: None,
        response_format: Default::default(),
    };
    let mut job = jobs.submit(Lane::Interactive, "echo", request).await.unwrap();
    let (mut text, mut attempts, mut deltas) = (String::new(), Vec::new(), 0);
    let mut b = None;
    let usage = loop {
        match tokio::time::timeout(Duration::from_secs(60), job.next()).await.expect("the job ends within 60 s").unwrap() {
            EventBody::Started { attempt, .. } => attempts.push(attempt),
            EventBody::Delta { text: piece, .. } => {
                text.push_str(&piece);
                deltas += 1;
                if deltas == 3 {
                    // A dies mid-stream; B gets the job once its ack wait lapses.
                    let worker = stack.worker(&RESUME_ARGS);
                    stack.worker_id(&worker).await;
                    a.sigkill();
                    b = Some(worker);
                }
            }
            EventBody::Done { finish_reason, usage } => {
                assert_eq!(finish_reason, FinishReason::Stop);
                break usage;
            }
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert!(b.is_some());
    assert_eq!(text, prompt, "nothing lost, nothing repeated");
    assert_eq!(attempts.first(), Some(&1));
    assert!(attempts.last().is_some_and(|a| *a >= 2), "B continued it as a redelivery: {attempts:?}");
    assert_eq!(usage.completion_tokens, 40);
}

const PYTHON_FOLLOWER: &str = r#"
import asyncio, json, sys
from switchyard.publisher import Publisher

nats_url, redis_url, model, prompt = sys.argv[1:5]

async def main():
    async with Publisher.connect(nats_url, redis_url=redis_url, idle_timeout=30) as publisher:
        job = await publisher.chat(model, [{"role": "user", "content": prompt}])
        text, attempts = "", []
        async for event in job:
            if event["type"] == "started":
                attempts.append(event["data"]["attempt"])
            elif event["type"] == "delta":
                text += event["data"]["text"]
                print(json.dumps({"delta": event["data"]["text"]}), flush=True)
        error = None if job.error is None else job.error.code
        print(json.dumps({"text": text, "attempts": attempts, "finish_reason": job.finish_reason, "usage": job.usage, "error": error}), flush=True)

asyncio.run(main())
"#;

#[tokio::test]
async fn the_python_publisher_continues_a_job_whose_worker_died() {
    let stack = Stack::start().await;
    let a = stack.worker(&RESUME_ARGS);
    stack.worker_id(&a).await;
    stack.wait_for_model("echo").await;
    let prompt = words("resume", 40);
    let mut command = clean_command(python());
    command.arg("-c").arg(PYTHON_FOLLOWER).args([stack.nats_url(), stack.redis_url(), "echo".into(), prompt.clone()]);
    let follower: Proc = stack.servers().spawn("python-publisher", command);
    let deltas = |log: &str| log.lines().filter(|line| line.starts_with("{\"delta\"")).count();
    eventually(Duration::from_secs(30), "three deltas in the Python publisher", || async {
        assert!(follower.is_running() || deltas(&follower.log()) >= 3, "the publisher exited early:\n{}", tail(&follower.log(), 20));
        (deltas(&follower.log()) >= 3).then_some(())
    })
    .await;
    let b = stack.worker(&RESUME_ARGS);
    stack.worker_id(&b).await;
    a.sigkill();
    let exit = follower.wait_exit(Duration::from_secs(60)).await.expect("the Python publisher finishes within 60 s");
    let log = follower.log();
    assert!(exit.success(), "{}", tail(&log, 30));
    let last = log.lines().rev().find(|line| line.starts_with("{\"text\"")).unwrap_or_else(|| panic!("no summary:\n{}", tail(&log, 30)));
    let summary: Value = serde_json::from_str(last).unwrap();
    assert_eq!(summary["text"], prompt, "nothing lost, nothing repeated: {summary}");
    assert_eq!((summary["finish_reason"].clone(), summary["error"].clone()), (json!("stop"), Value::Null));
    let attempts: Vec<u64> = summary["attempts"].as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect();
    assert_eq!(attempts.first(), Some(&1), "{summary}");
    assert!(attempts.last().is_some_and(|a| *a >= 2), "B continued it as a redelivery: {summary}");
    assert_eq!(summary["usage"]["completion_tokens"], 40);
}

#[tokio::test]
async fn the_examples_run_as_the_secured_brokers_example_publisher() {
    let stack = Stack::builder().secured().start().await;
    let (_worker, _) = stack.ready_worker(&["echo"], "echo").await;
    let publisher = stack.servers().connection(Role::Publisher);
    let instance = Role::Publisher.nats_user();
    let prefix = Role::Publisher.inbox_prefix().unwrap();
    let prompt = "hello from the publisher role";
    for example in EXAMPLES {
        let run = run_example(
            example,
            &args(&[
                "--nats-url",
                &publisher.nats_url,
                "--redis-url",
                &publisher.redis_url,
                "--instance",
                instance,
                "--nats-inbox-prefix",
                prefix,
                "--model",
                "echo",
                prompt,
            ]),
        )
        .await;
        assert_succeeded(example, &run);
        assert_eq!(run.stdout.trim_end(), prompt, "{example:?}");
        assert_eq!(run.summary()["finish_reason"], "stop");
    }
}
