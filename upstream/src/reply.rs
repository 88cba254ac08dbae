//! The upstream's answer as the job's events: its streamed chunks (chat or completions) read
//! one by one into text deltas, tool-call events, the finish reason and the usage, or its
//! embeddings answer into vectors.
//!
//! [`ChunkReader`] is the pure part (a chunk in, events out) so it can be tested without a
//! server; [`relay`] feeds it from the response and writes the events to the job's sink.

use futures::StreamExt;
use serde_json::Value;
use sse_stream::SseStream;
use switchyard_schemas::{EventBody, FinishReason, TokenLogprob, TopLogprob, UpstreamError, Usage};
use switchyard_worker::{EventSink, Finish};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::body::Endpoint;
use crate::failure::Failure;

/// Why a relay stopped short, and whether the client had been sent any output by then (if
/// not, the request may be tried again).
#[derive(Debug)]
pub struct Stopped {
    pub failure: Failure,
    pub sent_output: bool,
}

/// Relays a streamed chat or completions answer to `sink` until its end, a failure, or
/// `cancel` (which drops the response, closing the upstream request).
pub async fn relay(
    response: reqwest::Response,
    endpoint: Endpoint,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<Finish, Stopped> {
    let mut reader = ChunkReader::new(endpoint);
    let mut events = SseStream::from_bytes_stream(response.bytes_stream());
    let stop = |failure, reader: &ChunkReader| Err(Stopped { failure, sent_output: reader.sent_output });
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = cancel.cancelled() => return Ok(reader.finish(FinishReason::Cancelled)),
        };
        let event = match next {
            None => return stop(Failure::Broken("the stream ended before its last chunk ([DONE])".into()), &reader),
            Some(Err(e)) => return stop(Failure::Broken(format!("reading the stream: {e}")), &reader),
            Some(Ok(event)) => event,
        };
        let Some(data) = event.data else { continue };
        if data.trim() == "[DONE]" {
            return match reader.finish_reason {
                Some(reason) => Ok(reader.finish(reason)),
                None => stop(Failure::Broken("the stream ended without a finish reason".into()), &reader),
            };
        }
        let chunk: Value = match serde_json::from_str(&data) {
            Ok(chunk) => chunk,
            Err(e) => return stop(Failure::Broken(format!("a chunk is not JSON ({e}): {}", clip(&data))), &reader),
        };
        // An error mid-stream: OpenAI's `data: {"error": …}`, or Switchyard's `event: error`.
        if chunk.get("error").is_some() || event.event.as_deref() == Some("error") {
            return stop(in_stream_error(&chunk), &reader);
        }
        match reader.chunk(&chunk) {
            Ok(outputs) => outputs.into_iter().for_each(|body| emit(sink, body)),
            Err(failure) => return stop(failure, &reader),
        }
    }
}

/// Reads an embeddings answer: vectors in input order, and the upstream's usage.
pub fn embeddings(answer: &Value, inputs: usize) -> Result<(Vec<Vec<f32>>, Usage), Failure> {
    let broken = |why: &str| Failure::Broken(format!("the embeddings answer {why}"));
    let data = answer.get("data").and_then(Value::as_array).ok_or_else(|| broken("has no data"))?;
    let mut vectors = vec![None; inputs];
    for (position, item) in data.iter().enumerate() {
        let index = item.get("index").and_then(Value::as_u64).map_or(position, |i| i as usize);
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .and_then(|values| values.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>())
            .ok_or_else(|| broken("holds an embedding that is not a list of numbers (was encoding_format ignored?)"))?;
        *vectors.get_mut(index).ok_or_else(|| broken("has more vectors than inputs"))? = Some(vector);
    }
    let vectors = vectors.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| broken("misses some inputs' vectors"))?;
    let usage = Usage { prompt_tokens: count(answer, "prompt_tokens"), completion_tokens: 0 };
    Ok((vectors, usage))
}

/// Reads streamed chunks into events, keeping what the end needs: the finish reason, the
/// usage the upstream reported, the tokens seen (in case it reports none).
#[derive(Debug)]
pub struct ChunkReader {
    endpoint: Endpoint,
    /// Our index of each upstream tool call index, in the order calls began.
    calls: Vec<u64>,
    pub sent_output: bool,
    tokens_seen: u32,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ChunkReader {
    pub fn new(endpoint: Endpoint) -> Self {
        ChunkReader { endpoint, calls: Vec::new(), sent_output: false, tokens_seen: 0, finish_reason: None, usage: None }
    }

    /// The events one chunk holds.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<EventBody>, Failure> {
        let mut out = Vec::new();
        if chunk.get("usage").is_some_and(Value::is_object) {
            self.usage = Some(Usage { prompt_tokens: count(chunk, "prompt_tokens"), completion_tokens: count(chunk, "completion_tokens") });
        }
        let choices = chunk.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        // A job is one choice (the api runs `n` jobs for `n` choices).
        for choice in choices.iter().filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) {
            match self.endpoint {
                Endpoint::Chat => {
                    let delta = choice.get("delta").unwrap_or(&Value::Null);
                    if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                        out.push(self.text(text, chat_logprobs(choice)));
                    }
                    for call in delta.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                        self.tool_call(call, &mut out)?;
                    }
                }
                _ => {
                    if let Some(text) = choice.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                        out.push(self.text(text, completion_logprobs(choice)));
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(match reason {
                    "length" => FinishReason::Length,
                    "tool_calls" | "function_call" => FinishReason::ToolCalls,
                    // `stop`, and `content_filter`, which the wire cannot tell apart from it.
                    _ => FinishReason::Stop,
                });
            }
        }
        Ok(out)
    }

    fn text(&mut self, text: &str, logprobs: Vec<TokenLogprob>) -> EventBody {
        self.sent_output = true;
        // A chunk is one token on every server we know of, unless its logprobs say otherwise.
        let tokens = (logprobs.len() as u32).max(1);
        self.tokens_seen += tokens;
        EventBody::Delta { text: text.into(), tokens, logprobs }
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<EventBody>) -> Result<(), Failure> {
        let upstream_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let function = call.get("function").unwrap_or(&Value::Null);
        let index = match self.calls.iter().position(|i| *i == upstream_index) {
            Some(index) => index,
            None => {
                let name = function.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
                let Some(name) = name else {
                    return Err(Failure::Broken(format!("tool call {upstream_index} began without a function name")));
                };
                let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{}", ulid::Ulid::new()), str::to_owned);
                self.calls.push(upstream_index);
                self.sent_output = true;
                out.push(EventBody::ToolCallStart { index: (self.calls.len() - 1) as u32, id, name: name.into() });
                self.calls.len() - 1
            }
        };
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
            self.tokens_seen += 1;
            out.push(EventBody::ToolCallArguments { index: index as u32, delta: arguments.into(), tokens: 1 });
        }
        Ok(())
    }

    /// How the job ended: the upstream's usage, or the tokens seen when it sent none.
    pub fn finish(&self, reason: FinishReason) -> Finish {
        let usage = self.usage.unwrap_or_else(|| {
            if reason != FinishReason::Cancelled {
                warn!("the upstream sent no usage (stream_options.include_usage unsupported?): counting its chunks, prompt tokens unknown");
            }
            Usage { prompt_tokens: 0, completion_tokens: self.tokens_seen }
        });
        Finish { reason, usage }
    }
}

fn emit(sink: &EventSink, body: EventBody) {
    match body {
        EventBody::Delta { text, tokens, logprobs } if logprobs.is_empty() => sink.delta(text, tokens),
        EventBody::Delta { text, logprobs, .. } => sink.delta_with_logprobs(text, logprobs),
        EventBody::ToolCallStart { index, id, name } => sink.tool_call_start(index, id, name),
        EventBody::ToolCallArguments { index, delta, tokens } => sink.tool_call_arguments(index, delta, tokens),
        other => unreachable!("the chunk reader makes no {other:?}"),
    }
}

/// A `usage` count of an answer or chunk.
fn count(answer: &Value, field: &str) -> u32 {
    answer.get("usage").and_then(|u| u.get(field)).and_then(Value::as_u64).map_or(0, |n| n as u32)
}

/// An error the upstream sent inside a stream it had begun with 200.
fn in_stream_error(chunk: &Value) -> Failure {
    let error = chunk.get("error").unwrap_or(chunk);
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    let message = text("message").or_else(|| error.as_str().map(str::to_owned)).unwrap_or_else(|| clip(&chunk.to_string()));
    let code = text("code").filter(|code| code.parse::<u16>().is_err());
    Failure::InStream { error: Box::new(UpstreamError { status: 502, r#type: text("type"), code, param: text("param") }), message }
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

fn bytes_of(entry: &Value) -> Vec<u8> {
    entry
        .get("bytes")
        .and_then(Value::as_array)
        .map(|bytes| bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect())
        .unwrap_or_else(|| entry.get("token").and_then(Value::as_str).unwrap_or_default().as_bytes().to_vec())
}

/// Chat's `logprobs.content`: one entry per token, with its `top_logprobs`.
fn chat_logprobs(choice: &Value) -> Vec<TokenLogprob> {
    let entries = choice.get("logprobs").and_then(|l| l.get("content")).and_then(Value::as_array);
    let logprob = |entry: &Value| entry.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY) as f32;
    let token = |entry: &Value| entry.get("token").and_then(Value::as_str).unwrap_or_default().to_owned();
    entries
        .map(|entries| {
            entries
                .iter()
                .map(|entry| TokenLogprob {
                    token: token(entry),
                    logprob: logprob(entry),
                    bytes: bytes_of(entry),
                    top: entry
                        .get("top_logprobs")
                        .and_then(Value::as_array)
                        .map(|top| top.iter().map(|t| TopLogprob { token: token(t), logprob: logprob(t), bytes: bytes_of(t) }).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The completions endpoint's `logprobs`: parallel `tokens` and `token_logprobs` lists, and a
/// map of alternatives per position.
fn completion_logprobs(choice: &Value) -> Vec<TokenLogprob> {
    let Some(logprobs) = choice.get("logprobs").filter(|l| l.is_object()) else { return Vec::new() };
    let list = |key: &str| logprobs.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let (tokens, values, tops) = (list("tokens"), list("token_logprobs"), list("top_logprobs"));
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let token = token.as_str().unwrap_or_default().to_owned();
            let top = tops.get(i).and_then(Value::as_object).map_or_else(Vec::new, |alternatives| {
                alternatives
                    .iter()
                    .map(|(t, lp)| TopLogprob {
                        token: t.clone(),
                        logprob: lp.as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                        bytes: t.as_bytes().to_vec(),
                    })
                    .collect()
            });
            let logprob = values.get(i).and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY) as f32;
            TokenLogprob { bytes: token.as_bytes().to_vec(), token, logprob, top }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(endpoint: Endpoint, chunks: &[Value]) -> (Vec<EventBody>, ChunkReader) {
        let mut reader = ChunkReader::new(endpoint);
        let events = chunks.iter().flat_map(|c| reader.chunk(c).unwrap()).collect();
        (events, reader)
    }

    #[test]
    fn chat_chunks_become_deltas_and_the_usage_is_the_upstreams() {
        let (events, reader) = read(
            Endpoint::Chat,
            &[
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
                json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}),
            ],
        );
        let text: Vec<_> = events
            .iter()
            .map(|e| match e {
                EventBody::Delta { text, tokens: 1, .. } => text.as_str(),
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(text, ["Hel", "lo"]);
        let finish = reader.finish(reader.finish_reason.unwrap());
        assert_eq!((finish.reason, finish.usage), (FinishReason::Length, Usage { prompt_tokens: 7, completion_tokens: 2 }));
    }

    #[test]
    fn tool_call_pieces_become_starts_and_arguments_in_the_order_calls_began() {
        let (events, reader) = read(
            Endpoint::Chat,
            &[
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 3, "id": "call_a", "type": "function", "function": {"name": "add", "arguments": ""}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 3, "function": {"arguments": "{\"a\":"}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 5, "id": "call_b", "function": {"name": "mul", "arguments": "{}"}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 3, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
            ],
        );
        assert_eq!(
            events,
            [
                EventBody::ToolCallStart { index: 0, id: "call_a".into(), name: "add".into() },
                EventBody::ToolCallArguments { index: 0, delta: "{\"a\":".into(), tokens: 1 },
                EventBody::ToolCallStart { index: 1, id: "call_b".into(), name: "mul".into() },
                EventBody::ToolCallArguments { index: 1, delta: "{}".into(), tokens: 1 },
                EventBody::ToolCallArguments { index: 0, delta: "1}".into(), tokens: 1 },
            ]
        );
        assert_eq!(reader.finish_reason, Some(FinishReason::ToolCalls));
        let unnamed = ChunkReader::new(Endpoint::Chat)
            .chunk(&json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}));
        assert!(matches!(unnamed, Err(Failure::Broken(_))));
    }

    #[test]
    fn logprobs_of_both_endpoints_are_read() {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [
            {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5, "bytes": [98]}]}
        ]}}]});
        let (events, _) = read(Endpoint::Chat, &[chunk]);
        let EventBody::Delta { logprobs, tokens: 1, .. } = &events[0] else { panic!() };
        assert_eq!((logprobs[0].logprob, logprobs[0].top.len(), logprobs[0].top[1].bytes.as_slice()), (-0.5, 2, &b"b"[..]));
        let chunk = json!({"choices": [{"index": 0, "text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"a": -0.1}, {"b": -0.2}]}}]});
        let (events, reader) = read(Endpoint::Completions, &[chunk]);
        let EventBody::Delta { logprobs, tokens: 2, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!((logprobs[1].token.as_str(), logprobs[1].top[0].logprob), ("b", -0.2));
        assert_eq!(
            reader.finish(FinishReason::Stop).usage,
            Usage { prompt_tokens: 0, completion_tokens: 2 },
            "no usage sent: the tokens seen"
        );
    }

    #[test]
    fn embeddings_come_back_in_input_order() {
        let answer = json!({"data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}], "usage": {"prompt_tokens": 4}});
        let (vectors, usage) = embeddings(&answer, 2).unwrap();
        assert_eq!((vectors, usage.prompt_tokens), (vec![vec![0.25], vec![0.5]], 4));
        assert!(embeddings(&json!({"data": [{"index": 0, "embedding": "AAAA"}]}), 1).is_err());
        assert!(embeddings(&json!({"data": [{"index": 0, "embedding": [1.0]}]}), 2).is_err());
    }
}
