//! `echo`: reflects the last user message (or the completion prompt) token by token, and
//! answers embedding requests with a deterministic debug vector. For testing transport.
//!
//! With `--tools-name NAME` it also serves a chat model `NAME` that takes `tools`: the reflected text is read as a model's
//! output in the Hermes format (`<tool_call>{"name": …, "arguments": …}</tool_call>`), through
//! the same [`crate::tool_calls`] stream the torch backend uses, so a client can test tool
//! calling end to end by sending the calls it wants back. A debugging backend: nothing here
//! decides to call a tool. For several rounds of one conversation (a call, then an answer once
//! the call's result is in), the last user message is a script: segments split on lines holding
//! only `---`, segment k answered after k assistant messages ([`script_segment`]).

use std::time::Duration;

use async_trait::async_trait;
use switchyard_schemas::{JobRequest, ModelCard, ModelKind, ToolChoice};
use tokio_util::sync::CancellationToken;

use super::{debug_card, debug_tokens, plain_text_only, stream_text, stream_tokens};
use crate::runtime::parse_duration;
use crate::tool_calls::{ToolCallStream, ToolFormat};
use crate::{Backend, BackendError, EventSink, Finish, Job};

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Chat/completions model name to serve.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Embedding model name to serve.
    #[arg(long, default_value = "echo-embedding")]
    pub embedding_name: String,
    /// Pause between tokens (e.g. 20ms), to watch streaming and test cancellation.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub delay: Duration,
    /// Dimensions of the debug embedding vectors.
    #[arg(long, default_value_t = 16)]
    pub dimensions: usize,
    /// Also serve a chat model of this name that accepts `tools`, reading the reflected text
    /// as Hermes-format tool calls (after the forced opening of a named or `required`
    /// `tool_choice`).
    #[arg(long)]
    pub tools_name: Option<String>,
}

pub struct Echo {
    args: EchoArgs,
}

impl Echo {
    pub fn new(args: EchoArgs) -> Self {
        Self { args }
    }
}

#[async_trait]
impl Backend for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn models(&self) -> Vec<ModelCard> {
        let mut cards =
            vec![debug_card(&self.args.name, ModelKind::Chat, "echo"), debug_card(&self.args.embedding_name, ModelKind::Embedding, "echo")];
        if let Some(name) = &self.args.tools_name {
            let mut tools = debug_card(name, ModelKind::Chat, "echo");
            tools.supports.tools = true;
            cards.push(tools);
        }
        cards
    }

    async fn run(&self, job: Job, sink: &EventSink, cancel: CancellationToken) -> Result<Finish, BackendError> {
        let (text, params, prompt_tokens) = match &job.envelope.request {
            JobRequest::Chat { messages, params, tools, response_format } => {
                let mut last_user = messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
                if self.args.tools_name.as_ref() == Some(&job.envelope.model) {
                    last_user = script_segment(messages);
                }
                let prompt_tokens = messages.iter().map(|m| debug_tokens(&m.content).len()).sum::<usize>() as u32;
                match tools {
                    Some(tools)
                        if self.args.tools_name.as_ref() == Some(&job.envelope.model)
                            && tools.choice != ToolChoice::None
                            && response_format.is_text() =>
                    {
                        return self.call_tools(last_user, params, tools, &job, prompt_tokens, sink, &cancel).await;
                    }
                    _ => plain_text_only(tools.as_ref(), response_format)?,
                }
                (last_user, params, prompt_tokens as usize)
            }
            JobRequest::Completion { prompt, params } => (prompt.as_str(), params, debug_tokens(prompt).len()),
            JobRequest::Embedding { input } => {
                let vectors: Vec<Vec<f32>> = input.iter().map(|text| debug_vector(text, self.args.dimensions)).collect();
                let prompt_tokens = input.iter().map(|text| debug_tokens(text).len()).sum::<usize>() as u32;
                sink.embeddings(0, vectors);
                return Ok(Finish {
                    reason: switchyard_schemas::FinishReason::Stop,
                    usage: switchyard_schemas::Usage { prompt_tokens, completion_tokens: 0 },
                });
            }
            JobRequest::Tool { .. } => return Err(BackendError::invalid("the echo backend hosts no functions")),
        };
        Ok(stream_text(text, params, job.resume.as_ref(), prompt_tokens as u32, self.args.delay, sink, &cancel).await)
    }
}

impl Echo {
    /// Tool-call mode: the reflected text, after any forced opening, parsed as a model's.
    #[allow(clippy::too_many_arguments)]
    async fn call_tools(
        &self,
        text: &str,
        params: &switchyard_schemas::SamplingParams,
        tools: &switchyard_schemas::ToolUse,
        job: &Job,
        prompt_tokens: u32,
        sink: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Finish, BackendError> {
        let mut calls = ToolCallStream::new(ToolFormat::Hermes, tools, sink, job.resume.as_ref())?;
        let each = |token: &str| {
            calls.push(token, 1)?;
            Ok(calls.wants_more())
        };
        let (reason, produced) = stream_tokens(text, params, self.args.delay, cancel, each).await?;
        let reason = calls.finish(reason)?;
        Ok(Finish { reason, usage: switchyard_schemas::Usage { prompt_tokens, completion_tokens: produced } })
    }
}

/// The tool-call mode's multi-round script: the last user message split on lines holding only
/// `---`, segment k being the answer after k assistant messages that follow it (the last
/// segment once k passes the end). So one user message can script a conversation: a call in
/// the first round, plain text once the call's answer is in. A message without such a line is
/// one segment, reflected whole.
fn script_segment(messages: &[switchyard_schemas::ChatMessage]) -> &str {
    let Some(last) = messages.iter().rposition(|m| m.role == "user") else { return "" };
    let answered = messages[last + 1..].iter().filter(|m| m.role == "assistant").count();
    let text = messages[last].content.as_str();
    let mut segments = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        if line.trim() == "---" {
            segments.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    if segments.is_empty() {
        return text;
    }
    segments.push(&text[start..]);
    let segment = segments[answered.min(segments.len() - 1)];
    // The line break before a separator belongs to it, not to the segment.
    segment.strip_suffix('\n').map_or(segment, |s| s.strip_suffix('\r').unwrap_or(s))
}

/// A unit vector that depends only on the text (FNV-1a seeded xorshift), so tests can
/// recompute it. It carries no meaning.
pub fn debug_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)) | 1;
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

#[cfg(test)]
mod tests {
    use switchyard_schemas::ChatMessage;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), name: None, tool_calls: Vec::new(), tool_call_id: None }
    }

    #[test]
    fn a_script_answers_segment_k_after_k_assistant_messages() {
        let script = "<tool_call>{}</tool_call>\n---\nsecond\n  ---  \r\nthird";
        let mut messages = vec![message("system", "s"), message("user", script)];
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(super::script_segment(&messages).to_owned());
            messages.push(message("assistant", ""));
            messages.push(message("tool", "5"));
        }
        assert_eq!(answers, ["<tool_call>{}</tool_call>", "second", "third", "third"]);
        assert_eq!(super::script_segment(&[message("user", "a\n--- b\n")]), "a\n--- b\n", "no separator line: the whole message");
    }
}
