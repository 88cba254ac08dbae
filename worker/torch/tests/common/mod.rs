//! Shared helpers of the integration tests: fixture paths and running a generation to its end.

#![allow(dead_code)]

use std::path::PathBuf;

use switchyard_torch::*;
use tokio_util::sync::CancellationToken;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The committed tiny Llama fixture (a copy of shared/fixtures/tiny-llama).
pub fn tiny_llama() -> PathBuf {
    repo_root().join("models/tiny-llama")
}

/// all-MiniLM-L6-v2 as scripts/setup.sh installs it.
pub fn minilm() -> PathBuf {
    let dir = repo_root().join(".switchyard/models/all-minilm-l6-v2");
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run scripts/setup.sh", dir.display());
    dir
}

pub fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(tiny_llama().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn load(dir: PathBuf, dtype: Option<&str>) -> Engine {
    Engine::load(EngineOptions { dtype: dtype.map(Into::into), ..EngineOptions::new(dir) }).expect("model loads")
}

/// Everything one generation sent, gathered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub started: Option<u32>,
    pub text: String,
    pub deltas: Vec<String>,
    pub logprobs: Vec<TokenLogprob>,
    /// Sum of the deltas' token counts.
    pub tokens: u32,
    /// Each delta's token count.
    pub delta_tokens: Vec<u32>,
    pub resumed_tokens: u32,
    pub finish: Option<(FinishReason, u32, u32)>,
    pub error: Option<GenerateError>,
}

impl Outcome {
    pub fn ids(&self) -> Vec<u32> {
        self.logprobs.iter().map(|l| l.token_id).collect()
    }

    pub fn reason(&self) -> FinishReason {
        self.finish.expect("finished").0
    }

    /// Takes the next event of a generation, checking the stream's order and counts.
    /// Returns true when it ended the stream (`Finished` or `Error`).
    pub fn push(&mut self, event: GenerateEvent) -> bool {
        assert!(!self.ended(), "event after the end: {event:?}");
        match event {
            GenerateEvent::Started { prompt_tokens, resumed_tokens } => {
                assert!(self.started.is_none(), "two Started events");
                self.started = Some(prompt_tokens);
                self.resumed_tokens = resumed_tokens;
            }
            GenerateEvent::Delta { text, tokens, logprobs } => {
                assert!(self.started.is_some(), "Delta before Started");
                assert!(logprobs.is_empty() || logprobs.len() as u32 == tokens, "one logprob per token");
                self.tokens += tokens;
                self.text.push_str(&text);
                self.deltas.push(text);
                self.delta_tokens.push(tokens);
                self.logprobs.extend(logprobs);
            }
            GenerateEvent::Finished { reason, prompt_tokens, completion_tokens } => {
                assert_eq!(Some(prompt_tokens), self.started, "prompt_tokens changed");
                // Every generated token is in a delta, except one that stopped generation.
                let in_deltas = self.tokens + self.resumed_tokens;
                assert!(
                    completion_tokens == in_deltas
                        || (reason == FinishReason::Stop && completion_tokens == in_deltas + 1),
                    "deltas hold {in_deltas} tokens, Finished says {completion_tokens} ({reason:?})"
                );
                self.finish = Some((reason, prompt_tokens, completion_tokens));
            }
            GenerateEvent::Error(e) => self.error = Some(e),
        }
        self.ended()
    }

    /// `Finished` or `Error` has arrived.
    pub fn ended(&self) -> bool {
        self.finish.is_some() || self.error.is_some()
    }
}

pub fn collect(mut rx: GenerateEvents) -> Outcome {
    let mut out = Outcome::default();
    while let Some(event) = rx.blocking_recv() {
        out.push(event);
    }
    assert!(out.ended(), "stream ended without Finished or Error");
    out
}

pub fn run(engine: &Engine, req: GenerateRequest) -> Outcome {
    collect(engine.generate(req, CancellationToken::new()))
}

pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), temperature: Some(0.0), logprobs: true, ..Default::default() }
}

pub fn text_prompt(text: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest::new(Prompt::Text(text.into()), params)
}
