//! Server-sent events exactly as OpenAI frames them: each event is one `data: <json>` line
//! followed by a blank line, and the stream ends with `data: [DONE]`.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde_json::Value;

/// Splits a complete SSE body into the JSON payloads of its events, asserting OpenAI's framing:
/// every event is a single `data: ` line, events end in `\n\n`, the last one is `data: [DONE]`
/// and nothing follows it. SSE comment lines (`:` keep-alives) are tolerated.
pub fn parse_body(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\n\n"), "SSE body must end with a blank line: {body:?}");
    let mut events = Vec::new();
    let mut done = false;
    for block in body[..body.len() - 2].split("\n\n") {
        let lines: Vec<&str> = block.lines().filter(|line| !line.starts_with(':')).collect();
        if lines.is_empty() {
            continue;
        }
        assert!(!done, "events after data: [DONE]: {body:?}");
        assert_eq!(lines.len(), 1, "each SSE event must be one `data:` line, got {block:?} in {body:?}");
        let data = lines[0].strip_prefix("data: ").unwrap_or_else(|| panic!("SSE line is not `data: …`: {:?}", lines[0]));
        if data == "[DONE]" {
            done = true;
            continue;
        }
        events.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}")));
    }
    assert!(done, "SSE stream did not end with data: [DONE]: {body:?}");
    events
}

/// Reads SSE events from a streaming response as they arrive.
pub struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
    ready: VecDeque<String>,
    /// Everything received so far, for assertion messages.
    pub raw: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        SseReader { body: Box::pin(response.bytes_stream()), buffer: Vec::new(), ready: VecDeque::new(), raw: String::new() }
    }

    /// The `data` of the next event (`[DONE]` included), or `None` when the body ends.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Some(data);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.buffer.extend_from_slice(&chunk);
                    while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                        let block = String::from_utf8(block).expect("SSE events are UTF-8");
                        self.raw.push_str(&block);
                        for line in block.lines() {
                            if let Some(data) = line.strip_prefix("data: ") {
                                self.ready.push_back(data.to_string());
                            } else if !line.starts_with(':') && !line.is_empty() {
                                panic!("unexpected SSE line {line:?}");
                            }
                        }
                    }
                }
                Some(Err(e)) => panic!("reading SSE body: {e} (so far: {:?})", self.raw),
                None => {
                    assert!(self.buffer.is_empty(), "SSE body ended mid-event: {:?}", String::from_utf8_lossy(&self.buffer));
                    return None;
                }
            }
        }
    }

    /// The next event as JSON (`None` at `[DONE]` or the end of the body).
    pub async fn next_json(&mut self) -> Option<Value> {
        let data = self.next_data().await?;
        if data == "[DONE]" {
            return None;
        }
        Some(serde_json::from_str(&data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}")))
    }

    /// Reads chat chunks (into `chunks`) until `pieces` of them carried text, waiting at most 30 s
    /// for each; their text.
    pub async fn read_text_chunks(&mut self, chunks: &mut Vec<Value>, pieces: usize) -> String {
        let mut text = String::new();
        let mut seen = 0;
        while seen < pieces {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), self.next_json())
                .await
                .expect("a chunk within 30 s")
                .unwrap_or_else(|| panic!("stream ended early: {:?}", self.raw));
            if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str()
                && !content.is_empty()
            {
                seen += 1;
                text.push_str(content);
            }
            chunks.push(chunk);
        }
        text
    }

    /// Reads to the end, returning the remaining JSON events; asserts `[DONE]` came last.
    pub async fn rest(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut done = false;
        while let Some(data) = self.next_data().await {
            assert!(!done, "events after [DONE]: {:?}", self.raw);
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(serde_json::from_str(&data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}")));
            }
        }
        assert!(done, "stream ended without data: [DONE]: {:?}", self.raw);
        events
    }
}
