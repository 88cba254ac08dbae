//! The torch backend through the whole system: `switchyard worker torch` serving
//! `models/tiny-llama` (a tiny random Llama with reference outputs from transformers in
//! `expected.json`) and all-MiniLM-L6-v2 (`.switchyard/models/all-minilm-l6-v2`, reference
//! vectors from sentence-transformers in `worker/torch/tests/data/minilm_reference.json`),
//! asked through the OpenAI-compatible api as any client would.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use switchyard_tests::openai::{Endpoint, check_completion, check_stream};
use switchyard_tests::{Proc, Stack, assert_openai_error, workspace_root};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const LLAMA: &str = "tiny-llama";
const MINILM: &str = "all-minilm-l6-v2";

fn tiny_llama_dir() -> PathBuf {
    workspace_root().join("models/tiny-llama")
}

fn minilm_dir() -> PathBuf {
    let dir = workspace_root().join(".switchyard/models/all-minilm-l6-v2");
    assert!(dir.join("model.safetensors").is_file(), "{} is missing: run scripts/setup.sh", dir.display());
    dir
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `models/tiny-llama/expected.json`.
fn expected() -> Value {
    read_json(tiny_llama_dir().join("expected.json"))
}

/// A stack with a torch worker serving `dir`, ready to take requests for `model`.
async fn torch_stack(dir: PathBuf, model: &str) -> (Stack, Proc) {
    let stack = Stack::start().await;
    let path = dir.to_str().expect("UTF-8 path").to_string();
    let (worker, _) = stack.ready_worker(&["torch", "--model-path", &path], model).await;
    (stack, worker)
}

/// The reference prompts: (text, input_ids length, greedy text, stopped on EOS).
fn reference_prompts() -> Vec<(String, u64, String, bool)> {
    let expected = expected();
    let prompts = expected["prompts"].as_array().expect("prompts in expected.json");
    assert!(!prompts.is_empty());
    prompts
        .iter()
        .map(|p| {
            (
                p["text"].as_str().unwrap().to_string(),
                p["input_ids"].as_array().unwrap().len() as u64,
                p["greedy_new_text"].as_str().unwrap().to_string(),
                p["stopped_on_eos"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn greedy_completions_reproduce_the_transformers_reference() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    let listed = stack.http().get(stack.api_url(&format!("/v1/models/{LLAMA}"))).send().await.unwrap();
    let card: Value = listed.json().await.unwrap();
    assert_eq!(card["context_length"], 256, "the card carries max_position_embeddings: {card}");
    assert_eq!(card["kind"], "chat", "{card}");

    for (text, prompt_tokens, greedy, stopped_on_eos) in reference_prompts() {
        let finish = if stopped_on_eos { "stop" } else { "length" };
        let request = json!({ "model": LLAMA, "prompt": text, "max_tokens": 24, "temperature": 0 });
        let (status, body) = stack.post_json(COMPLETIONS, &request).await;
        assert_eq!(status, 200, "{text:?}: {body}");
        let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, LLAMA);
        assert_eq!(texts, std::slice::from_ref(&greedy), "greedy text for {text:?}");
        assert_eq!(finishes, [finish], "finish_reason for {text:?}");
        assert_eq!(usage["prompt_tokens"], prompt_tokens, "prompt_tokens = reference input_ids length for {text:?}: {usage}");
        if !stopped_on_eos {
            assert_eq!(usage["completion_tokens"], 24, "{text:?}: {usage}");
        }
        assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap());

        // Streamed, the same text arrives in pieces.
        let mut streamed = request.clone();
        streamed["stream"] = true.into();
        streamed["stream_options"] = json!({ "include_usage": true });
        let chunks = stack.post_stream_all(COMPLETIONS, &streamed).await;
        let summary = check_stream(Endpoint::Completions, &chunks, LLAMA, true);
        assert_eq!(summary.text(), greedy, "streamed greedy text for {text:?}");
        assert_eq!(summary.finish(), finish, "streamed finish_reason for {text:?}");
        assert_eq!(summary.usage.as_ref().unwrap()["prompt_tokens"], prompt_tokens, "streamed usage for {text:?}");
    }
}

/// Every integer in `text`.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

#[tokio::test]
async fn prompts_past_the_context_length_are_400_context_length_exceeded() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    // ~9 tokens per repetition: well over 256 with max_tokens 100, well under on its own.
    let long = "The quick brown fox. ".repeat(20);
    let cases = [
        (COMPLETIONS, json!({ "model": LLAMA, "prompt": long, "max_tokens": 100 }), "prompt"),
        (CHAT, json!({ "model": LLAMA, "messages": [{ "role": "user", "content": long }], "max_tokens": 100 }), "messages"),
    ];
    for (path, request, param) in cases {
        for stream in [false, true] {
            let mut request = request.clone();
            request["stream"] = stream.into();
            let (status, body) = stack.post_json(path, &request).await;
            assert_eq!(status, 400, "{path} stream={stream}: {body}");
            let error = assert_openai_error(&body);
            assert_eq!(error["code"], "context_length_exceeded", "{path} stream={stream}: {body}");
            assert_eq!(error["param"], param, "{path} stream={stream}: {body}");
            assert_eq!(error["type"], "invalid_request_error", "{path} stream={stream}: {body}");
            let numbers = numbers_in(error["message"].as_str().unwrap());
            assert!(numbers.contains(&256), "the message names the context length 256: {body}");
            assert!(numbers.iter().any(|&n| n > 256), "the message names the tokens requested (over 256): {body}");
        }
        // The same prompt with room to answer is served.
        let mut fits = request.clone();
        fits["max_tokens"] = 4.into();
        let (status, body) = stack.post_json(path, &fits).await;
        assert_eq!(status, 200, "{path} with max_tokens 4: {body}");
    }
    // max_tokens alone above the context: refused by the api before queueing.
    let (status, body) = stack.post_json(COMPLETIONS, &json!({ "model": LLAMA, "prompt": "hi", "max_tokens": 300 })).await;
    assert_eq!(status, 400, "{body}");
    let error = assert_openai_error(&body);
    assert_eq!(error["code"], "context_length_exceeded", "{body}");
    assert_eq!(error["param"], "max_tokens", "{body}");
}

#[tokio::test]
async fn chat_uses_the_model_chat_template() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    let expected = expected();
    // The reference conversation that ends with a generation prompt: its rendered template has
    // a known token count, which must be the request's prompt_tokens.
    let chat = expected["chat"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["add_generation_prompt"] == true)
        .expect("a chat reference with add_generation_prompt")
        .clone();
    let prompt_tokens = chat["input_ids_add_special_tokens_false"].as_array().unwrap().len() as u64;
    let request = json!({ "model": LLAMA, "messages": chat["messages"], "max_tokens": 20, "temperature": 0 });
    let (status, body) = stack.post_json(CHAT, &request).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Chat, &body, LLAMA);
    assert!(!texts[0].is_empty(), "the chat answer has text: {body}");
    assert!(finishes[0] == "stop" || finishes[0] == "length", "finish_reason: {body}");
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "prompt_tokens of the rendered chat template: {usage}");

    // Greedy chat is deterministic, streamed or not.
    let mut streamed = request.clone();
    streamed["stream"] = true.into();
    let chunks = stack.post_stream_all(CHAT, &streamed).await;
    let summary = check_stream(Endpoint::Chat, &chunks, LLAMA, false);
    assert_eq!(summary.text(), texts[0], "streamed greedy chat = non-streamed");
    assert_eq!(summary.finish(), finishes[0]);

    // A plain one-message chat works too.
    let (status, body) =
        stack.post_json(CHAT, &json!({ "model": LLAMA, "messages": [{ "role": "user", "content": "Hello!" }], "max_tokens": 16 })).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, _) = check_completion(Endpoint::Chat, &body, LLAMA);
    assert!(!texts[0].is_empty(), "{body}");
    assert!(finishes[0] == "stop" || finishes[0] == "length", "{body}");
}

#[tokio::test]
async fn streams_never_contain_their_stop_string() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    let mut tested = 0;
    for (text, _, greedy, _) in reference_prompts() {
        // A stop string from the middle of the greedy continuation: a few ASCII characters
        // that first occur after at least a few characters of output.
        let chars: Vec<(usize, char)> = greedy.char_indices().collect();
        let Some(stop) = (3..chars.len().saturating_sub(4)).find_map(|i| {
            let start = chars[i].0;
            let candidate: String = greedy[start..].chars().take(3).collect();
            (candidate.chars().all(|c| c.is_ascii_alphanumeric()) && greedy.find(&candidate) == Some(start)).then_some(candidate)
        }) else {
            continue;
        };
        let cut = greedy.find(&stop).unwrap();
        let request = json!({ "model": LLAMA, "prompt": text, "max_tokens": 24, "temperature": 0, "stop": [stop], "stream": true });
        let chunks = stack.post_stream_all(COMPLETIONS, &request).await;
        let summary = check_stream(Endpoint::Completions, &chunks, LLAMA, false);
        for chunk in &chunks {
            let piece = chunk["choices"][0]["text"].as_str().unwrap_or("");
            assert!(!piece.contains(&stop), "a chunk contains the stop string {stop:?}: {chunk}");
        }
        assert!(!summary.text().contains(&stop), "the stream contains the stop string {stop:?}: {:?}", summary.text());
        assert_eq!(summary.text(), &greedy[..cut], "the text ends where the stop string {stop:?} began (prompt {text:?})");
        assert_eq!(summary.finish(), "stop", "finish_reason with a stop string (prompt {text:?})");

        // Not streamed: the same cut.
        let mut whole = request.clone();
        whole["stream"] = false.into();
        let (status, body) = stack.post_json(COMPLETIONS, &whole).await;
        assert_eq!(status, 200, "{body}");
        let (texts, finishes, _) = check_completion(Endpoint::Completions, &body, LLAMA);
        assert_eq!((texts[0].as_str(), finishes[0].as_str()), (&greedy[..cut], "stop"), "non-streamed stop for {text:?}");
        tested += 1;
    }
    assert!(tested >= 2, "only {tested} reference continuations had a usable stop string");
}

#[tokio::test]
async fn seeded_choices_are_reproducible() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    let request = json!({ "model": LLAMA, "prompt": "Once upon a time", "max_tokens": 12, "n": 2, "seed": 1234, "temperature": 1.0 });
    let mut answers = Vec::new();
    for attempt in 0..2 {
        let (status, body) = stack.post_json(COMPLETIONS, &request).await;
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        let (texts, _, usage) = check_completion(Endpoint::Completions, &body, LLAMA);
        assert_eq!(texts.len(), 2, "n: 2 gives two choices: {body}");
        assert!(texts.iter().all(|t| !t.is_empty()), "{body}");
        let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
        assert!(completion_tokens > 0 && completion_tokens <= 24, "completion tokens of both choices: {usage}");
        answers.push(texts);
    }
    assert_eq!(answers[0], answers[1], "the same seed gives the same choices");
    assert_ne!(answers[0][0], answers[0][1], "the two choices of one request are sampled with different seeds");

    // Streamed with the same seed: the same choices.
    let mut streamed = request.clone();
    streamed["stream"] = true.into();
    let chunks = stack.post_stream_all(COMPLETIONS, &streamed).await;
    let summary = check_stream(Endpoint::Completions, &chunks, LLAMA, false);
    let texts: Vec<&str> = summary.texts.values().map(String::as_str).collect();
    assert_eq!(texts, answers[0], "streamed seeded choices = non-streamed ones");
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap_or_else(|| panic!("not an array of floats: {value}")).iter().map(|x| x.as_f64().expect("a float")).collect()
}

#[tokio::test]
async fn minilm_embeddings_match_sentence_transformers() {
    let (stack, _worker) = torch_stack(minilm_dir(), MINILM).await;
    let reference = read_json(workspace_root().join("worker/torch/tests/data/minilm_reference.json"));
    let sentences = reference["sentences"].as_array().unwrap();
    let counts = reference["token_counts"].as_array().unwrap();
    let vectors = reference["embeddings"].as_array().unwrap();
    // The api refuses empty strings (as OpenAI does), so the reference's "" is left out.
    let cases: Vec<(String, u64, Vec<f64>)> = sentences
        .iter()
        .zip(counts)
        .zip(vectors)
        .filter(|((s, _), _)| !s.as_str().unwrap().is_empty())
        .map(|((s, c), v)| (s.as_str().unwrap().to_string(), c.as_u64().unwrap(), floats(v)))
        .collect();
    assert!(cases.len() >= 5, "reference sentences");

    let input: Vec<&str> = cases.iter().map(|(s, _, _)| s.as_str()).collect();
    let (status, body) = stack.post_json(EMBEDDINGS, &json!({ "model": MINILM, "input": input })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MINILM);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), cases.len());
    for (i, ((text, _, want), item)) in cases.iter().zip(data).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let got = floats(&item["embedding"]);
        assert_eq!(got.len(), 384, "all-MiniLM-L6-v2 has 384 dimensions");
        let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit vectors: norm {norm} for {:?}", &text[..text.len().min(30)]);
        let c = cosine(&got, want);
        assert!(c >= 0.9999, "cosine {c} with sentence-transformers for {:?}", &text[..text.len().min(40)]);
    }
    let tokens: u64 = cases.iter().map(|(_, n, _)| n).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens, "real token counts (after truncation to 256): {}", body["usage"]);
    assert_eq!(body["usage"]["total_tokens"], tokens, "{}", body["usage"]);

    // One string, base64-encoded: the same vector.
    let (text, count, want) = &cases[0];
    let (status, body) = stack.post_json(EMBEDDINGS, &json!({ "model": MINILM, "input": text, "encoding_format": "base64" })).await;
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD.decode(body["data"][0]["embedding"].as_str().expect("base64 string")).unwrap();
    let got: Vec<f64> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect();
    assert_eq!(got.len(), 384);
    assert!(cosine(&got, want) >= 0.9999);
    assert_eq!(body["usage"]["prompt_tokens"], *count);

    // The embedding model does not generate text.
    let (status, body) = stack.post_json(CHAT, &json!({ "model": MINILM, "messages": [{ "role": "user", "content": "hi" }] })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(assert_openai_error(&body)["param"], "model");
}

/// Sixteen different prompts, of 1 to ~40 tokens.
const PROMPTS: [&str; 16] = [
    "The quick brown fox",
    "Once upon a time, in a small village by the sea,",
    "Café crème: 3.50 + 12.75 = ?",
    "Hello world!\nHow are you today?",
    "A",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "The lighthouse keeper counted the ships every night",
    "Why is the sky blue?",
    "def fibonacci(n):",
    "Roses are red, violets are blue,",
    "In 1492, Columbus sailed",
    "SELECT * FROM users WHERE",
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper who counted the ships every night and wrote their names in a book.",
    "¿Dónde está la biblioteca?",
    "Zebra",
];

/// What must not change when a completion is batched with others: text, finish reason,
/// usage, tokens, and the chosen tokens' logprobs (returned separately, compared within 1e-4).
/// (Not the alternatives: `top_logprobs` maps are keyed by token text, and two near-tied
/// alternatives may trade places.)
fn completion_outcome(body: &Value) -> (Value, Vec<f64>) {
    let choice = &body["choices"][0];
    let logprobs = &choice["logprobs"];
    let values = floats(&logprobs["token_logprobs"]);
    let kept = json!({
        "text": choice["text"],
        "finish_reason": choice["finish_reason"],
        "usage": body["usage"],
        "tokens": logprobs["tokens"],
    });
    (kept, values)
}

#[tokio::test]
async fn concurrent_completions_on_one_worker_match_each_alone() {
    let stack = Stack::start().await;
    let path = tiny_llama_dir().to_str().expect("UTF-8 path").to_string();
    // The worker's default slots (its engine's batch size, 32) take all sixteen at once.
    let metrics_listen = format!("127.0.0.1:{}", switchyard_tests::free_port());
    let (_worker, _) = stack.ready_worker(&["torch", "--model-path", &path, "--metrics-listen", &metrics_listen], LLAMA).await;
    let requests: Vec<Value> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, prompt)| json!({ "model": LLAMA, "prompt": prompt, "max_tokens": 4 + (i * 13) % 45, "temperature": 0, "logprobs": 2 }))
        .collect();

    // Each one alone first: the reference.
    let started = std::time::Instant::now();
    let mut alone = Vec::new();
    for request in &requests {
        let (status, body) = stack.post_json(COMPLETIONS, request).await;
        assert_eq!(status, 200, "{request}: {body}");
        check_completion(Endpoint::Completions, &body, LLAMA);
        alone.push(completion_outcome(&body));
    }
    let one_by_one = started.elapsed();
    // The greedy texts are not all alike (so a mix-up between rows would show).
    let texts: std::collections::BTreeSet<String> = alone.iter().map(|(o, _)| o["text"].to_string()).collect();
    assert!(texts.len() >= 12, "only {} different completions of 16 prompts", texts.len());

    // Then all at once.
    let started = std::time::Instant::now();
    let replies = futures::future::join_all(requests.iter().map(|r| stack.post_json(COMPLETIONS, r))).await;
    eprintln!("16 completions: {one_by_one:?} one by one, {:?} at once", started.elapsed());
    for (i, ((status, body), (want, want_logprobs))) in replies.iter().zip(&alone).enumerate() {
        assert_eq!(*status, 200, "prompt {i}: {body}");
        check_completion(Endpoint::Completions, body, LLAMA);
        let (got, got_logprobs) = completion_outcome(body);
        assert_eq!(&got, want, "prompt {i} ({:?}) batched differs from alone", PROMPTS[i]);
        assert_eq!(got_logprobs.len(), want_logprobs.len());
        for (step, (a, b)) in got_logprobs.iter().zip(want_logprobs).enumerate() {
            assert!((a - b).abs() <= 1e-4, "prompt {i} step {step}: logprob {a} batched, {b} alone");
        }
    }

    // The engine's metrics: every token it generated (each prompt ran twice), steps of many rows.
    use switchyard_telemetry::names;
    let metrics = switchyard_tests::prometheus::Metrics::scrape(stack.http(), &format!("http://{metrics_listen}/metrics")).await;
    let completion: f64 = replies.iter().map(|(_, body)| body["usage"]["completion_tokens"].as_f64().unwrap()).sum();
    let generated = metrics.value(names::ENGINE_GENERATED_TOKENS, &[("model", LLAMA)]).expect("generated tokens");
    // A sequence that ends on its end-of-sequence token generated one token it does not return.
    assert!(generated >= 2.0 * completion && generated <= 2.0 * (completion + 16.0), "{generated} generated for 2 × {completion}");
    let steps = metrics.count(names::ENGINE_DECODE_ROWS, &[("model", LLAMA)]);
    let single_row_steps = metrics.bucket(names::ENGINE_DECODE_ROWS, &[("model", LLAMA)], 1.0);
    assert!(single_row_steps < steps, "some decoding steps ran several rows: {}", metrics.text());
    assert_eq!(metrics.value(names::ENGINE_BATCH_SIZE, &[("model", LLAMA)]), Some(0.0), "idle again");
    assert_eq!(metrics.value(names::ENGINE_WAITING, &[("model", LLAMA)]), Some(0.0));
}

#[tokio::test]
async fn concurrent_embeddings_on_one_worker_match_each_alone() {
    let stack = Stack::start().await;
    let path = minilm_dir().to_str().expect("UTF-8 path").to_string();
    let (_worker, _) = stack.ready_worker(&["torch", "--model-path", &path], MINILM).await;
    let reference = read_json(workspace_root().join("worker/torch/tests/data/minilm_reference.json"));
    // The reference sentences (the truncated 256-token one among them) and more, of many lengths.
    let mut sentences: Vec<String> =
        reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).filter(|s| !s.is_empty()).collect();
    let words = ["river", "mountains", "weather", "guitar", "stage", "lighthouse", "ships", "night", "book", "village"];
    let mut i = 0;
    while sentences.len() < 32 {
        let body: Vec<&str> = (0..1 + (i * 7) % 23).map(|j| words[(i + j * 3) % words.len()]).collect();
        sentences.push(format!("{i}: {}.", body.join(" ")));
        i += 1;
    }
    let requests: Vec<Value> = sentences.iter().map(|s| json!({ "model": MINILM, "input": s })).collect();
    let vector = |body: &Value| {
        assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
        floats(&body["data"][0]["embedding"])
    };

    let mut alone = Vec::new();
    for request in &requests {
        let (status, body) = stack.post_json(EMBEDDINGS, request).await;
        assert_eq!(status, 200, "{body}");
        alone.push((vector(&body), body["usage"].clone()));
    }
    assert!(cosine(&alone[0].0, &alone[1].0) < 0.99, "two different sentences gave the same vector");

    let replies = futures::future::join_all(requests.iter().map(|r| stack.post_json(EMBEDDINGS, r))).await;
    let mut worst = 1.0f64;
    for (i, ((status, body), (want, usage))) in replies.iter().zip(&alone).enumerate() {
        assert_eq!(*status, 200, "sentence {i}: {body}");
        let got = vector(body);
        assert_eq!(got.len(), 384);
        let c = cosine(&got, want);
        worst = worst.min(c);
        assert!(c >= 0.99999, "sentence {i}: cosine {c} between its vector alone and among 32 concurrent requests");
        assert_eq!(&body["usage"], usage, "sentence {i}: usage");
    }
    eprintln!("32 concurrent embeddings: worst cosine with each alone {worst:.9}");
}

/// `worker/torch/tests/data/tiny-qwen2-tools`: a tiny random Qwen2 with Qwen2.5-Instruct's chat
/// template, which teaches the Hermes `<tool_call>` format.
fn tools_model_dir() -> PathBuf {
    workspace_root().join("worker/torch/tests/data/tiny-qwen2-tools")
}

fn add_tool() -> Value {
    json!({"type": "function", "function": {"name": "add", "description": "a + b",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}})
}

#[tokio::test]
async fn a_tool_capable_model_calls_a_forced_tool_streamed_or_not() {
    let (stack, _worker) = torch_stack(tools_model_dir(), "tiny-qwen2-tools").await;
    let card = stack.http().get(stack.api_url("/v1/models/tiny-qwen2-tools")).send().await.unwrap();
    assert_eq!(card.status(), 200);

    // A named tool_choice: the worker opens and names the call, and constrains the arguments
    // to the function's schema, so even random weights make a valid call.
    let body = json!({"model": "tiny-qwen2-tools", "messages": [{"role": "user", "content": "add 2 and 3"}],
        "tools": [add_tool()], "tool_choice": {"type": "function", "function": {"name": "add"}}, "temperature": 0, "max_tokens": 120});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
    assert_eq!(choice["message"]["content"], Value::Null, "{answer}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "add");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).expect("arguments are JSON");
    assert!(arguments["a"].is_number() && arguments["b"].is_number(), "{arguments}");
    let usage = &answer["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0 && usage["prompt_tokens"].as_u64().unwrap() > 100, "{usage}");

    // Streamed (greedy, so the same call): the name first, then the arguments in pieces that
    // put together are the non-streamed arguments byte for byte.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = stack.post_stream_all(CHAT, &streamed).await;
    let mut name = None;
    let mut pieces = String::new();
    for chunk in &chunks {
        for c in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            if let Some(n) = c["function"]["name"].as_str() {
                assert!(name.is_none(), "one call");
                name = Some(n.to_string());
            }
            pieces.push_str(c["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(name.as_deref(), Some("add"));
    assert_eq!(pieces, call["function"]["arguments"].as_str().unwrap());
    assert_eq!(chunks.iter().rev().find_map(|c| c["choices"][0]["finish_reason"].as_str()), Some("tool_calls"));

    // `required`: the call's tag is opened and the whole call constrained to one of the tools,
    // so the model picks a function and writes valid arguments for it.
    let unit = json!({"type": "function", "function": {"name": "set_unit",
        "parameters": {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["unit"]}}});
    let body = json!({"model": "tiny-qwen2-tools", "messages": [{"role": "user", "content": "do something"}],
        "tools": [add_tool(), unit], "tool_choice": "required", "temperature": 0, "max_tokens": 120});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls", "{answer}");
    let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).expect("arguments are JSON");
    match call["name"].as_str().unwrap() {
        "add" => assert!(arguments["a"].is_number() && arguments["b"].is_number(), "{arguments}"),
        "set_unit" => assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap()), "{arguments}"),
        other => panic!("called {other}"),
    }

    // response_format json_schema: the content is JSON of the schema.
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]});
    let body = json!({"model": "tiny-qwen2-tools", "messages": [{"role": "user", "content": "a number"}], "temperature": 0, "max_tokens": 80,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 200, "{answer}");
    let content: Value = serde_json::from_str(answer["choices"][0]["message"]["content"].as_str().unwrap()).expect("JSON content");
    assert!(content["answer"].is_number(), "{content}");

    // `auto`: whatever the random model writes is either text or a checked call — never a
    // call left in the text.
    let body = json!({"model": "tiny-qwen2-tools", "messages": [{"role": "user", "content": "hi"}], "tools": [add_tool()], "temperature": 0, "max_tokens": 30});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    if status == 200 {
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert!(!content.contains("<tool_call>"), "{answer}");
    } else {
        assert_eq!(assert_openai_error(&answer)["code"], "malformed_tool_call", "{answer}");
    }
}

#[tokio::test]
async fn a_model_without_a_tools_template_refuses_tools() {
    let (stack, _worker) = torch_stack(tiny_llama_dir(), LLAMA).await;
    let body = json!({"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "tools": [add_tool()]});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(assert_openai_error(&answer)["param"], "tools");
    // Its JSON output works all the same: constrained decoding needs no template support.
    let body = json!({"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "flag", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}});
    let (status, answer) = stack.post_json(CHAT, &body).await;
    assert_eq!(status, 200, "{answer}");
    let content: Value = serde_json::from_str(answer["choices"][0]["message"]["content"].as_str().unwrap()).expect("JSON content");
    assert!(content["ok"].is_boolean(), "{content}");
}

/// A template no model ships (`--chat-template`): what it renders is plain text that a
/// completion request can send as its prompt.
const ROLE_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}[ANSWER]{% endif %}";
const SYSTEM_PROMPT: &str = "You answer in one short sentence.";

/// `ROLE_TEMPLATE`'s text for `messages`, without the `<s>` a completion prompt gets anyway.
fn role_template_text(messages: &[(&str, &str)]) -> String {
    let mut text: String = messages.iter().map(|(role, content)| format!("[{}] {content}\n", role.to_uppercase())).collect();
    text.push_str("[ANSWER]");
    text
}

/// Four letters in the middle of `text`, and where they first occur.
fn a_word_inside(text: &str) -> (String, usize) {
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i > 0 && text[i..].chars().take(4).filter(char::is_ascii_alphabetic).count() == 4)
        .unwrap_or_else(|| panic!("no word inside {text:?}"));
    let word = text[start..start + 4].to_string();
    let first = text.find(&word).unwrap();
    assert!(first > 0, "{text:?}");
    (word, first)
}

#[tokio::test]
async fn prompt_settings_shape_chat_and_completions_and_show_on_the_card() {
    let (text, prompt_tokens, greedy, _) = reference_prompts().into_iter().find(|p| !p.3).expect("a reference that runs 24 tokens");
    let (stop, stop_at) = a_word_inside(&greedy);
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.jinja");
    std::fs::write(&template, ROLE_TEMPLATE).unwrap();
    let system = dir.path().join("system.txt");
    std::fs::write(&system, format!("{SYSTEM_PROMPT}\n")).unwrap();
    // The defaults through the environment, the others as flags.
    let defaults = json!({ "temperature": 0.0, "max_tokens": 3, "stop": [stop] });
    let stack = Stack::builder().env("SWITCHYARD_GENERATION_DEFAULTS", defaults.to_string()).start().await;
    let path = tiny_llama_dir().to_str().unwrap().to_string();
    let system_arg = format!("@{}", system.display());
    let args = ["torch", "--model-path", &path, "--system-prompt", &system_arg, "--chat-template", template.to_str().unwrap()];
    let (_worker, _) = stack.ready_worker(&args, LLAMA).await;

    // The card shows them, in GET /v1/models/{model} and in the list.
    let settings = json!({ "system_prompt": SYSTEM_PROMPT, "chat_template": ROLE_TEMPLATE, "generation_defaults": defaults });
    let card: Value = stack.http().get(stack.api_url(&format!("/v1/models/{LLAMA}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(card["prompt_settings"], settings, "{card}");
    let list: Value = stack.http().get(stack.api_url("/v1/models")).send().await.unwrap().json().await.unwrap();
    let listed = list["data"].as_array().unwrap().iter().find(|m| m["id"] == LLAMA).expect("listed").clone();
    assert_eq!(listed["prompt_settings"], settings, "{list}");

    // A chat is rendered by the template file, with the system prompt only when it has no
    // system message of its own: the same prompt and answer as that text completed.
    for (messages, rendered) in [
        (vec![("user", "Hello!")], vec![("system", SYSTEM_PROMPT), ("user", "Hello!")]),
        (vec![("system", "Mine."), ("user", "Hello!")], vec![("system", "Mine."), ("user", "Hello!")]),
        (vec![("developer", "Mine."), ("user", "Hello!")], vec![("developer", "Mine."), ("user", "Hello!")]),
    ] {
        let messages: Vec<Value> = messages.iter().map(|(role, content)| json!({ "role": role, "content": content })).collect();
        for max_tokens in [None, Some(8u32)] {
            let mut chat = json!({ "model": LLAMA, "messages": messages });
            let mut completion = json!({ "model": LLAMA, "prompt": role_template_text(&rendered) });
            if let Some(n) = max_tokens {
                chat["max_tokens"] = n.into();
                completion["max_tokens"] = n.into();
            }
            let (status, chat_body) = stack.post_json(CHAT, &chat).await;
            assert_eq!(status, 200, "{chat_body}");
            let (status, completion_body) = stack.post_json(COMPLETIONS, &completion).await;
            assert_eq!(status, 200, "{completion_body}");
            let (chat_text, chat_finish, chat_usage) = check_completion(Endpoint::Chat, &chat_body, LLAMA);
            let (text, finish, usage) = check_completion(Endpoint::Completions, &completion_body, LLAMA);
            assert_eq!(chat_usage, usage, "{messages:?} max_tokens {max_tokens:?}: {chat_body} vs {completion_body}");
            assert_eq!((chat_text, chat_finish), (text, finish), "{messages:?} max_tokens {max_tokens:?}");
            assert!(usage["completion_tokens"].as_u64().unwrap() <= u64::from(max_tokens.unwrap_or(3)), "{usage}");
        }
    }

    // A completion gets no system prompt, but the defaults: greedy (temperature 0), 3 tokens.
    let (status, body) = stack.post_json(COMPLETIONS, &json!({ "model": LLAMA, "prompt": text })).await;
    assert_eq!(status, 200, "{body}");
    let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, LLAMA);
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "{usage}");
    assert_eq!((usage["completion_tokens"].as_u64(), finishes[0].as_str()), (Some(3), "length"), "{body}");
    assert!(greedy.starts_with(&texts[0]) && !texts[0].is_empty(), "{:?} begins {greedy:?}", texts[0]);
    // The default stop string ends it; a request's own max_tokens and stop win.
    let (_, body) = stack.post_json(COMPLETIONS, &json!({ "model": LLAMA, "prompt": text, "max_tokens": 24 })).await;
    let (texts, finishes, _) = check_completion(Endpoint::Completions, &body, LLAMA);
    assert_eq!((texts[0].as_str(), finishes[0].as_str()), (&greedy[..stop_at], "stop"), "stop {stop:?}: {body}");
    let own = json!({ "model": LLAMA, "prompt": text, "max_tokens": 24, "stop": ["no such text"] });
    let (_, body) = stack.post_json(COMPLETIONS, &own).await;
    let (texts, finishes, usage) = check_completion(Endpoint::Completions, &body, LLAMA);
    assert_eq!((texts[0].as_str(), finishes[0].as_str()), (greedy.as_str(), "length"), "{body}");
    assert_eq!(usage["completion_tokens"], 24, "{usage}");
}

#[tokio::test]
async fn bad_prompt_settings_stop_the_worker_at_startup() {
    let stack = Stack::start().await;
    let llama = tiny_llama_dir().to_str().unwrap().to_string();
    let minilm = minilm_dir().to_str().unwrap().to_string();
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (&llama, &["--generation-defaults", r#"{"temprature": 0.5}"#], &["--generation-defaults", "unknown field `temprature`"]),
        (&llama, &["--generation-defaults", r#"{"top_p": 1.5}"#], &["top_p must be in (0, 1], got 1.5"]),
        (&llama, &["--chat-template", "/no/such/template.jinja"], &["--chat-template", "/no/such/template.jinja"]),
        (&minilm, &["--system-prompt", SYSTEM_PROMPT], &["--system-prompt", "sentence encoder"]),
    ];
    for (path, flags, words) in cases {
        let mut args = vec!["torch", "--model-path", path];
        args.extend_from_slice(flags);
        let worker = stack.worker(&args);
        let status =
            worker.wait_exit(std::time::Duration::from_secs(60)).await.unwrap_or_else(|| panic!("{flags:?}: the worker kept running"));
        assert!(!status.success(), "{flags:?}: {status:?}");
        let log = worker.log();
        for w in words {
            assert!(log.contains(w), "{flags:?}: the log should say {w:?}:\n{log}");
        }
    }
}
