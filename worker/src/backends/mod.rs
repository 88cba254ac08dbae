//! Transport-debugging backends. They exercise the whole job path without a model; neither
//! pretends to be one.

pub mod dummy;
pub mod echo;

/// Splits text into word-like tokens that keep their leading whitespace, so joining them gives
/// the text back: `"a  b"` → `["a", "  b"]`.
pub fn debug_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                tokens.push(&text[start..i]);
                start = i;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

use std::time::Duration;

use switchyard_schemas::{
    FinishReason, ModelCard, ModelKind, Permissions, ResponseFormat, ResumeState, SamplingParams, ToolChoice, ToolUse, Usage, WIRE_VERSION,
    now_ms,
};
use tokio_util::sync::CancellationToken;

use crate::{BackendError, EventSink, Finish};

/// A model card for a debugging backend (no context limit: it has no model).
pub fn debug_card(name: &str, kind: ModelKind, backend: &str) -> ModelCard {
    ModelCard {
        v: WIRE_VERSION,
        name: name.into(),
        kind,
        context_length: None,
        backend: backend.into(),
        owned_by: "switchyard".into(),
        permissions: Permissions::default(),
        limits: Default::default(),
        created: now_ms() / 1000,
        last_seen_ms: 0,
        supports: Default::default(),
        functions: Vec::new(),
        prompt_settings: Default::default(),
    }
}

/// Streams `text` token by token the way a model would: honouring `max_tokens` and stop
/// strings (cut where they begin, never sent), resuming after what a previous worker sent,
/// pausing `delay` between tokens and stopping at once when cancelled.
pub async fn stream_text(
    text: &str,
    params: &SamplingParams,
    resume: Option<&ResumeState>,
    prompt_tokens: u32,
    delay: Duration,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Finish {
    // Text a previous worker already delivered is skipped, even if it ended mid-token.
    let already_sent = resume.map_or(0, |state| state.text.len());
    let mut offset = 0;
    let each = |token: &str| {
        let end = offset + token.len();
        let unsent = &token[already_sent.clamp(offset, end) - offset..];
        offset = end;
        if !unsent.is_empty() {
            sink.delta(unsent, 1);
        }
        Ok(true)
    };
    let (reason, produced) = stream_tokens(text, params, delay, cancel, each).await.expect("the text sink never fails");
    Finish { reason, usage: Usage { prompt_tokens, completion_tokens: produced } }
}

/// Hands `text` to `each` token by token, as [`stream_text`] streams it: cut at the first
/// stop string, at most `max_tokens`, `delay` apart, until cancelled or `each` says stop
/// (`Ok(false)`). Returns why it ended and how many tokens it handed over.
pub async fn stream_tokens(
    text: &str,
    params: &SamplingParams,
    delay: Duration,
    cancel: &CancellationToken,
    mut each: impl FnMut(&str) -> Result<bool, BackendError>,
) -> Result<(FinishReason, u32), BackendError> {
    let (text, mut reason) = match params.stop.iter().filter_map(|stop| text.find(stop.as_str())).min() {
        Some(cut) => (&text[..cut], FinishReason::Stop),
        None => (text, FinishReason::Stop),
    };
    let max_tokens = params.max_tokens.map_or(usize::MAX, |max| max as usize);
    let mut produced = 0;
    for token in debug_tokens(text) {
        if produced >= max_tokens {
            reason = FinishReason::Length;
            break;
        }
        if cancel.is_cancelled() {
            reason = FinishReason::Cancelled;
            break;
        }
        produced += 1;
        if !delay.is_zero() {
            tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = cancel.cancelled() => { reason = FinishReason::Cancelled; break; } }
        } else if produced % 16 == 0 {
            // Let the publisher run now and then, as a real model's decode steps would; every
            // token would cost a context switch per token and cap throughput.
            tokio::task::yield_now().await;
        }
        if !each(token)? {
            break;
        }
    }
    Ok((reason, produced as u32))
}

/// Refuses what a backend that only makes plain text cannot honour (the api refuses it first,
/// from the model card; this answers direct publishers the same).
pub fn plain_text_only(tools: Option<&ToolUse>, response_format: &ResponseFormat) -> Result<(), BackendError> {
    if tools.is_some_and(|tools| tools.choice != ToolChoice::None) {
        return Err(BackendError::invalid("tools: this model does not support tools (function calling)"));
    }
    if !response_format.is_text() {
        return Err(BackendError::invalid("response_format: this model supports only the 'text' response format"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_tokens_rejoin_to_the_text() {
        for text in ["hello world", "  lead", "trail  ", "a  b\nc", "", "日本 語"] {
            assert_eq!(super::debug_tokens(text).concat(), text);
        }
        assert_eq!(super::debug_tokens("a  b"), vec!["a", "  b"]);
    }
}
