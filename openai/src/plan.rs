//! What a request becomes once validated — a [`Plan`]: the jobs to run, the tokens to charge
//! before they run, and the [`Reply`] that turns their outputs into the response body.
//!
//! ```text
//! let plan = plan_chat(request, &limits, &card)?;      // or plan_completion, plan_embeddings
//! // run plan.jobs; feed each job's events to its JobOutput::push
//! let body = plan.reply.assemble(outputs)?;            // the non-streamed body, byte for byte
//! ```

use serde::Serialize;
use switchyard_schemas::{EventBody, FinishReason, JobRequest, ModelCard, ModelKind, SamplingParams, TokenLogprob, ToolCall, Usage};

use crate::error::{Invalid, JobFailure};
use crate::request::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, EncodingFormat};
use crate::response::{
    AssistantMessage, ChatChoice, ChatLogprobs, Chunk, Completion, CompletionLogprobs, EmbeddingList, EmbeddingObject, EmbeddingUsage,
    EmbeddingVector, TextChoice, UsageOut,
};
use crate::validate::{self, Limits};

/// Completion tokens charged up front when a request sets no `max_tokens` (corrected to the
/// real count when the job ends).
pub const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

/// Token estimate for rate limiting before the real count is known: about four characters a
/// token, as OpenAI's guidance has it, plus what the completion may add.
pub fn estimate_tokens(prompt_chars: usize, completion_tokens: u32) -> u32 {
    (prompt_chars.div_ceil(4) as u32).saturating_add(completion_tokens)
}

/// A validated request: its jobs, in the order [`Reply::assemble`] expects their outputs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub jobs: Vec<JobRequest>,
    /// Tokens charged against rate limits before the jobs run.
    pub estimate: u32,
    pub reply: Reply,
}

/// Everything of the response that does not come from the jobs.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Chat or legacy completions: one job per choice.
    Generation(Generation),
    /// Embeddings: one job for every input.
    Embeddings(Embeddings),
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    pub flavor: Flavor,
    /// Choices per prompt: the jobs are prompt by prompt, `n` each.
    pub n: usize,
    /// Whether choices carry `logprobs`.
    pub logprobs: bool,
}

#[derive(Debug, Clone)]
pub enum Flavor {
    Chat,
    /// Legacy completions; `echo` holds each prompt when the client asked for it back.
    Completion {
        echo: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    pub model: String,
    /// How many inputs, hence vectors.
    pub inputs: usize,
    pub format: EncodingFormat,
}

/// `/v1/chat/completions`: one job per choice of `n`.
pub fn plan_chat(request: ChatCompletionRequest, limits: &Limits, card: &ModelCard) -> Result<Plan, Invalid> {
    validate::serves(&request.model, card, ModelKind::Chat)?;
    let model = request.model.clone();
    let validate::Chat { messages, params, n, tools, response_format } = validate::chat(request, limits, card)?;
    let prompt_chars: usize =
        messages.iter().map(|m| m.content.len() + m.tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>()).sum::<usize>()
            + tools.iter().flat_map(|t| &t.tools).map(|t| t.parameters.as_ref().map_or(0, |p| p.to_string().len())).sum::<usize>();
    let estimate = estimate_tokens(prompt_chars, params.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE)).saturating_mul(n);
    let jobs = (0..n)
        .map(|i| JobRequest::Chat {
            messages: messages.clone(),
            params: choice_params(&params, i),
            tools: tools.clone(),
            response_format: response_format.clone(),
        })
        .collect();
    let reply = Generation::new(format!("chatcmpl-{}", ulid::Ulid::new()), model, Flavor::Chat, n, params.logprobs);
    Ok(Plan { jobs, estimate, reply: Reply::Generation(reply) })
}

/// `/v1/completions`: one job per choice of `n` of every prompt.
pub fn plan_completion(request: CompletionRequest, limits: &Limits, card: &ModelCard) -> Result<Plan, Invalid> {
    validate::serves(&request.model, card, ModelKind::Chat)?;
    let model = request.model.clone();
    let echo = request.echo.unwrap_or(false);
    let (prompts, params, n) = validate::completion(request, limits, card)?;
    let completion_estimate = params.max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
    let estimate =
        prompts.iter().map(|prompt| estimate_tokens(prompt.len(), completion_estimate).saturating_mul(n)).fold(0u32, u32::saturating_add);
    let jobs = prompts
        .iter()
        .flat_map(|prompt| (0..n).map(|i| JobRequest::Completion { prompt: prompt.clone(), params: choice_params(&params, i) }))
        .collect();
    let flavor = Flavor::Completion { echo: echo.then_some(prompts) };
    let reply = Generation::new(format!("cmpl-{}", ulid::Ulid::new()), model, flavor, n, params.logprobs);
    Ok(Plan { jobs, estimate, reply: Reply::Generation(reply) })
}

/// `/v1/embeddings`: one job for all inputs.
pub fn plan_embeddings(request: EmbeddingRequest, limits: &Limits, card: &ModelCard) -> Result<Plan, Invalid> {
    validate::serves(&request.model, card, ModelKind::Embedding)?;
    let EmbeddingRequest { model, input, encoding_format, dimensions, .. } = request;
    let input = validate::embedding(input, dimensions, limits)?;
    let estimate = estimate_tokens(input.iter().map(String::len).sum(), 0);
    let reply = Embeddings { model, inputs: input.len(), format: encoding_format.unwrap_or(EncodingFormat::Float) };
    Ok(Plan { jobs: vec![JobRequest::Embedding { input }], estimate, reply: Reply::Embeddings(reply) })
}

/// Choice `i` of `n` gets its own seed, so `n` seeded choices differ from each other but are
/// reproducible.
fn choice_params(params: &SamplingParams, i: u32) -> SamplingParams {
    let mut params = params.clone();
    params.seed = params.seed.map(|seed| seed.wrapping_add(i as u64));
    params
}

/// One job's output, gathered from its events by [`JobOutput::push`].
#[derive(Debug, Clone, Default)]
pub struct JobOutput {
    pub text: String,
    /// The calls the model made, their arguments as complete as the events were.
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    /// Embedding vectors as they came: the index of the batch's first input, and its vectors.
    pub vectors: Vec<(u32, Vec<Vec<f32>>)>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Usage,
}

impl JobOutput {
    /// Adds one of the job's events: `Ok(true)` when it was the last, its `error` event as a
    /// [`JobFailure`] naming `prompt_param` ([`Reply::prompt_param`]) where the prompt is at fault.
    pub fn push(&mut self, event: EventBody, prompt_param: &str) -> Result<bool, JobFailure> {
        match event {
            EventBody::Delta { text, logprobs, .. } => {
                self.text.push_str(&text);
                self.logprobs.extend(logprobs);
            }
            EventBody::ToolCallStart { index, id, name } => {
                if index as usize != self.tool_calls.len() {
                    return Err(JobFailure::stream(format!("tool call {index} began after {} calls", self.tool_calls.len())));
                }
                self.tool_calls.push(ToolCall { id, name, arguments: String::new() });
            }
            EventBody::ToolCallArguments { index, delta, .. } => match self.tool_calls.get_mut(index as usize) {
                Some(call) => call.arguments.push_str(&delta),
                None => return Err(JobFailure::stream(format!("arguments of tool call {index}, which never began"))),
            },
            EventBody::Embeddings { first_index, vectors } => self.vectors.push((first_index, vectors)),
            EventBody::Done { finish_reason, usage } => {
                self.finish_reason = Some(finish_reason);
                self.usage = usage;
                return Ok(true);
            }
            EventBody::Error { code, message, upstream } => return Err(JobFailure::new(code, message, upstream, prompt_param)),
            // Tool calls are not planned here: their events never reach an OpenAI answer.
            EventBody::Started { .. } | EventBody::ToolResult { .. } | EventBody::ToolChunk { .. } => {}
        }
        Ok(false)
    }
}

/// A non-streamed response body.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Chat(Completion<ChatChoice>),
    Text(Completion<TextChoice>),
    Embeddings(EmbeddingList),
}

impl Answer {
    /// The tokens the request really used, what its rate-limit charge is corrected to.
    pub fn total_tokens(&self) -> u32 {
        match self {
            Answer::Chat(completion) => completion.usage.total_tokens,
            Answer::Text(completion) => completion.usage.total_tokens,
            Answer::Embeddings(list) => list.usage.total_tokens,
        }
    }
}

/// An embeddings job that ended without a vector for every input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the worker returned no vector for input {0}")]
pub struct MissingVector(pub usize);

impl Reply {
    /// The model the request named.
    pub fn model(&self) -> &str {
        match self {
            Reply::Generation(generation) => &generation.model,
            Reply::Embeddings(embeddings) => &embeddings.model,
        }
    }

    /// The request parameter that holds the prompt: what a job's "prompt too long" names.
    pub fn prompt_param(&self) -> &'static str {
        match self {
            Reply::Generation(generation) => generation.prompt_param(),
            Reply::Embeddings(_) => "input",
        }
    }

    /// The response body from every job's output, in the order of [`Plan::jobs`].
    pub fn assemble(self, outputs: Vec<JobOutput>) -> Result<Answer, MissingVector> {
        match self {
            Reply::Generation(generation) => Ok(generation.assemble(outputs)),
            Reply::Embeddings(embeddings) => embeddings.assemble(outputs.into_iter().next().unwrap_or_default()),
        }
    }
}

impl Generation {
    fn new(id: String, model: String, flavor: Flavor, n: u32, logprobs: bool) -> Self {
        Generation { id, model, created: switchyard_schemas::now_ms() / 1000, flavor, n: n as usize, logprobs }
    }

    pub fn prompt_param(&self) -> &'static str {
        match self.flavor {
            Flavor::Chat => "messages",
            Flavor::Completion { .. } => "prompt",
        }
    }

    /// The prompt choice `index` starts with: its own, with `echo`; otherwise none.
    pub fn echo(&self, index: usize) -> Option<&str> {
        match &self.flavor {
            Flavor::Completion { echo: Some(prompts) } => Some(prompts[index / self.n].as_str()),
            _ => None,
        }
    }

    /// Prompt tokens once per prompt (not once per choice), completion tokens of every choice.
    pub fn usage(&self, usages: impl IntoIterator<Item = Usage>) -> UsageOut {
        let (mut prompt, mut completion) = (0, 0);
        for (i, usage) in usages.into_iter().enumerate() {
            if i % self.n == 0 {
                prompt += usage.prompt_tokens;
            }
            completion += usage.completion_tokens;
        }
        UsageOut::new(prompt, completion)
    }

    /// One streamed chunk of this response holding `choices`; `usage` is `None` unless the
    /// client asked for `stream_options.include_usage`.
    pub fn chunk<'a, C>(&'a self, choices: &'a [C], usage: Option<Option<UsageOut>>) -> Chunk<'a, C> {
        let object = match self.flavor {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Completion { .. } => "text_completion",
        };
        Chunk { id: &self.id, object, created: self.created, model: &self.model, system_fingerprint: None, choices, usage }
    }

    fn assemble(self, outputs: Vec<JobOutput>) -> Answer {
        let usage = self.usage(outputs.iter().map(|output| output.usage));
        match &self.flavor {
            Flavor::Chat => {
                let choices = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(index, output)| ChatChoice {
                        index,
                        logprobs: self.logprobs.then(|| ChatLogprobs::new(&output.logprobs)),
                        finish_reason: output.finish_reason.map(FinishReason::as_str),
                        message: AssistantMessage::new(output.text, output.tool_calls),
                    })
                    .collect();
                Answer::Chat(self.completion("chat.completion", choices, usage))
            }
            Flavor::Completion { .. } => {
                let choices = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(index, output)| {
                        let prefix = self.echo(index).unwrap_or("");
                        TextChoice {
                            text: if prefix.is_empty() { output.text } else { format!("{prefix}{}", output.text) },
                            index,
                            logprobs: self.logprobs.then(|| CompletionLogprobs::new(&output.logprobs, prefix.len())),
                            finish_reason: output.finish_reason.map(FinishReason::as_str),
                        }
                    })
                    .collect();
                Answer::Text(self.completion("text_completion", choices, usage))
            }
        }
    }

    fn completion<C>(&self, object: &'static str, choices: Vec<C>, usage: UsageOut) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

impl Embeddings {
    fn assemble(self, output: JobOutput) -> Result<Answer, MissingVector> {
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; self.inputs];
        for (first_index, batch) in output.vectors {
            for (offset, vector) in batch.into_iter().enumerate() {
                if let Some(slot) = vectors.get_mut(first_index as usize + offset) {
                    *slot = Some(vector);
                }
            }
        }
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| {
                let vector = vector.ok_or(MissingVector(index))?;
                let embedding = match self.format {
                    EncodingFormat::Float => EmbeddingVector::Float(vector),
                    EncodingFormat::Base64 => EmbeddingVector::base64(&vector),
                };
                Ok(EmbeddingObject { object: "embedding", index, embedding })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = output.usage.prompt_tokens;
        let usage = EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens };
        Ok(Answer::Embeddings(EmbeddingList { object: "list", data, model: self.model, usage }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use switchyard_schemas::{ErrorCode, Permissions, RateLimits, TopLogprob};

    use super::*;

    const LIMITS: Limits = Limits { max_n: 16, max_embedding_inputs: 2048 };

    fn card(kind: ModelKind) -> ModelCard {
        ModelCard {
            v: switchyard_schemas::WIRE_VERSION,
            name: "m".into(),
            kind,
            context_length: Some(1024),
            backend: "echo".into(),
            owned_by: String::new(),
            permissions: Permissions::default(),
            limits: RateLimits::default(),
            created: 0,
            last_seen_ms: 0,
            supports: Default::default(),
            functions: Vec::new(),
            prompt_settings: Default::default(),
        }
    }

    fn done(output: &mut JobOutput, prompt_tokens: u32, completion_tokens: u32) {
        let usage = Usage { prompt_tokens, completion_tokens };
        assert!(output.push(EventBody::Done { finish_reason: FinishReason::Stop, usage }, "messages").unwrap());
    }

    fn delta(text: &str, logprobs: Vec<TokenLogprob>) -> EventBody {
        EventBody::Delta { text: text.into(), tokens: 1, logprobs }
    }

    fn body(answer: &Answer) -> Value {
        serde_json::to_value(answer).unwrap()
    }

    #[test]
    fn chat_fans_n_out_with_seeds_and_counts_the_prompt_once() {
        let request = crate::parse(br#"{"model": "m", "messages": [{"role": "user", "content": "12345678"}], "n": 2, "seed": 7, "max_tokens": 10, "logprobs": true}"#).unwrap();
        let plan = plan_chat(request, &LIMITS, &card(ModelKind::Chat)).unwrap();
        assert_eq!(plan.estimate, 2 * (2 + 10));
        let seeds: Vec<_> = plan.jobs.iter().map(|job| job.params().unwrap().seed).collect();
        assert_eq!(seeds, [Some(7), Some(8)]);
        let mut outputs = vec![JobOutput::default(), JobOutput::default()];
        let lp = TokenLogprob {
            token: "hi".into(),
            logprob: -0.1,
            bytes: b"hi".to_vec(),
            top: vec![TopLogprob { token: "hi".into(), logprob: -0.1, bytes: vec![] }],
        };
        assert!(!outputs[0].push(delta("hi", vec![lp.clone()]), "messages").unwrap());
        assert!(!outputs[1].push(delta("ho", vec![lp]), "messages").unwrap());
        done(&mut outputs[0], 5, 1);
        done(&mut outputs[1], 5, 1);
        let Reply::Generation(generation) = &plan.reply else { panic!("chat is generation") };
        let id = generation.id.clone();
        let answer = plan.reply.assemble(outputs).unwrap();
        assert_eq!(answer.total_tokens(), 7);
        let body = body(&answer);
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["system_fingerprint"], Value::Null);
        assert_eq!(body["usage"], json!({ "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7 }));
        assert_eq!(body["choices"][1]["message"], json!({ "role": "assistant", "content": "ho", "refusal": null }));
        assert_eq!(body["choices"][1]["finish_reason"], "stop");
        let widened = f64::from(-0.1f32);
        assert_eq!(
            body["choices"][0]["logprobs"],
            json!({ "content": [{ "token": "hi", "logprob": widened, "bytes": [104, 105], "top_logprobs": [{ "token": "hi", "logprob": widened, "bytes": [] }] }], "refusal": null })
        );
    }

    #[test]
    fn completions_echo_each_prompt_and_offset_logprobs_after_it() {
        let request = crate::parse(br#"{"model": "m", "prompt": ["ab", "cd"], "echo": true, "logprobs": 1}"#).unwrap();
        let plan = plan_completion(request, &LIMITS, &card(ModelKind::Chat)).unwrap();
        assert_eq!(plan.jobs.len(), 2);
        assert_eq!(plan.estimate, 2 * (1 + 16), "legacy completions default to 16 tokens");
        let outputs = ["x", "y"]
            .map(|text| {
                let mut output = JobOutput::default();
                let lp = TokenLogprob {
                    token: text.into(),
                    logprob: -1.0,
                    bytes: vec![],
                    top: vec![TopLogprob { token: "z".into(), logprob: -2.0, bytes: vec![] }],
                };
                output.push(delta(text, vec![lp]), "prompt").unwrap();
                done(&mut output, 1, 1);
                output
            })
            .to_vec();
        let body = body(&plan.reply.assemble(outputs).unwrap());
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][1]["text"], "cdy");
        assert_eq!(
            body["choices"][1]["logprobs"],
            json!({ "tokens": ["y"], "token_logprobs": [-1.0], "top_logprobs": [{ "z": -2.0 }], "text_offset": [2] })
        );
        assert_eq!(body["usage"]["prompt_tokens"], 2, "one prompt count per prompt");
    }

    #[test]
    fn embeddings_come_back_in_order_as_floats_or_base64() {
        for (format, first) in [("float", json!([1.0, 0.5])), ("base64", json!("AACAPwAAAD8="))] {
            let request =
                crate::parse(format!(r#"{{"model": "m", "input": ["a", "b"], "encoding_format": "{format}"}}"#).as_bytes()).unwrap();
            let plan = plan_embeddings(request, &LIMITS, &card(ModelKind::Embedding)).unwrap();
            assert_eq!(plan.reply.prompt_param(), "input");
            let mut output = JobOutput::default();
            output.push(EventBody::Embeddings { first_index: 1, vectors: vec![vec![0.0, 0.0]] }, "input").unwrap();
            output.push(EventBody::Embeddings { first_index: 0, vectors: vec![vec![1.0, 0.5]] }, "input").unwrap();
            output
                .push(
                    EventBody::Done { finish_reason: FinishReason::Stop, usage: Usage { prompt_tokens: 2, completion_tokens: 0 } },
                    "input",
                )
                .unwrap();
            let answer = plan.reply.assemble(vec![output]).unwrap();
            assert_eq!(answer.total_tokens(), 2);
            let body = body(&answer);
            assert_eq!(body["object"], "list");
            assert_eq!(body["data"][0], json!({ "object": "embedding", "index": 0, "embedding": first }));
            assert_eq!(body["usage"], json!({ "prompt_tokens": 2, "total_tokens": 2 }));
        }
    }

    #[test]
    fn a_missing_vector_is_an_error() {
        let request = crate::parse(br#"{"model": "m", "input": ["a", "b"]}"#).unwrap();
        let plan = plan_embeddings(request, &LIMITS, &card(ModelKind::Embedding)).unwrap();
        let mut output = JobOutput::default();
        output.push(EventBody::Embeddings { first_index: 0, vectors: vec![vec![1.0]] }, "input").unwrap();
        assert_eq!(plan.reply.assemble(vec![output]).unwrap_err(), MissingVector(1));
    }

    #[test]
    fn a_model_of_another_kind_is_refused_by_name() {
        let request = crate::parse(br#"{"model": "m", "input": "a"}"#).unwrap();
        let refused = plan_embeddings(request, &LIMITS, &card(ModelKind::Chat)).unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("model"));
        assert!(refused.message.contains("text generation"), "{}", refused.message);
    }

    #[test]
    fn a_job_error_names_the_prompt_when_it_is_too_long() {
        let mut output = JobOutput::default();
        let failure = output.push(EventBody::error(ErrorCode::ContextLengthExceeded, "long"), "prompt").unwrap_err();
        assert_eq!(failure.param.as_deref(), Some("prompt"));
    }
}
