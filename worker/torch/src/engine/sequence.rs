//! One request's generation state, apart from the model: its tokens, sampler (with its own
//! seed), incremental detokenizer, stop-string gate, counters, cancellation and event
//! channel. The scheduler feeds it one row of logits per step; it decides what text may be
//! sent, sends it, and says when it has ended.
//!
//! A `Sequence` is built (tokenized, chat template rendered, checked against the context
//! length) on the caller's thread, before it reaches the model thread.

use std::sync::Arc;

use switchyard_constrain::Vocabulary;
use tch::Tensor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{FinishReason, GenerateError, GenerateEvent, GenerateRequest, Matcher, Prompt, Shared, render_chat};
use crate::error::{Result, TorchError};
use crate::sampling::{Choice, Sampler, TokenLogprob, TopLogprob};
use crate::tokenizer::{Codec, Detokenizer, Gate, StopGate};

pub(super) struct Sequence {
    tx: mpsc::UnboundedSender<GenerateEvent>,
    cancel: CancellationToken,
    /// The prompt's ids and those of the resumed text: what prefill runs.
    context: Vec<u32>,
    prompt_tokens: u32,
    /// Completion tokens allowed, the resumed ones included.
    max_tokens: u32,
    /// Generated so far, the resumed ones and the token that stopped generation included.
    completion_tokens: u32,
    stop_ids: Vec<u32>,
    sampler: Sampler,
    detok: Detokenizer,
    gate: StopGate,
    want_logprobs: bool,
    /// Logprobs of tokens whose text is held back; they go out with that text.
    logprobs: Vec<TokenLogprob>,
    /// Tokens generated since the last delta.
    unsent_tokens: u32,
    /// The last token chosen: the next step's input.
    next: u32,
    /// Constrained decoding: the JSON the answer must be.
    constraint: Option<Constrained>,
}

/// A sequence's JSON constraint, with the vocabulary it masks and a mask buffer.
struct Constrained {
    matcher: Matcher,
    vocabulary: Arc<Vocabulary>,
    allowed: Vec<bool>,
}

impl Sequence {
    /// Validates and tokenizes `req`, and sends its `Started` event.
    pub fn new(
        shared: &Shared,
        req: GenerateRequest,
        cancel: CancellationToken,
        tx: mpsc::UnboundedSender<GenerateEvent>,
    ) -> Result<Sequence> {
        let codec = &shared.codec;
        let defaults = &shared.prompt.generation_defaults;
        let params = &crate::prompt::with_defaults(&req.params, defaults);
        let prompt_ids = match &req.prompt {
            Prompt::Text(text) if req.answer_prefix.is_empty() => codec.encode(text, true)?,
            Prompt::Text(text) => codec.encode(&format!("{text}{}", req.answer_prefix), true)?,
            Prompt::Chat(messages) => {
                let mut text = render_chat(shared, messages, req.tools.as_deref(), true)?;
                text.push_str(&req.answer_prefix);
                codec.encode(&text, false)?
            }
        };
        if prompt_ids.is_empty() {
            return Err(TorchError::InvalidRequest("the prompt has no tokens".into()));
        }
        let resume_ids = match req.resume_text.as_deref() {
            Some(text) if !text.is_empty() => codec.encode(text, false)?,
            _ => Vec::new(),
        };

        let context_length = shared.info.context_length;
        let prompt_tokens = prompt_ids.len() as u32;
        let room = context_length.saturating_sub(prompt_tokens);
        // The operator's default is capped at the room left; a request's own is refused past it.
        let max_tokens = match (params.max_tokens, defaults.max_tokens) {
            (Some(n), _) if n <= room => n,
            (None, Some(n)) if room > 0 => n.min(room),
            (None, None) if room > 0 => room,
            (asked, _) => {
                let max_tokens = asked.unwrap_or(1);
                return Err(TorchError::ContextLengthExceeded {
                    context_length,
                    prompt_tokens,
                    max_tokens,
                    requested: prompt_tokens + max_tokens,
                });
            }
        };

        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&shared.info.eos_token_ids);
        }
        let mut sampler = Sampler::new(params, shared.defaults);
        for &id in &resume_ids {
            sampler.observe(id);
        }
        let resumed_tokens = resume_ids.len() as u32;
        let mut context = prompt_ids;
        context.extend(&resume_ids);
        let seq = Sequence {
            detok: Detokenizer::new(&context),
            gate: StopGate::new(&params.stop),
            want_logprobs: params.logprobs || params.top_logprobs > 0,
            next: *context.last().expect("a prompt has tokens"),
            context,
            tx,
            cancel,
            prompt_tokens,
            max_tokens,
            completion_tokens: resumed_tokens,
            stop_ids,
            sampler,
            logprobs: Vec::new(),
            unsent_tokens: 0,
            constraint: req.constraint.map(|matcher| {
                let vocabulary = shared.vocabulary();
                Constrained { matcher, allowed: vec![false; vocabulary.len()], vocabulary }
            }),
        };
        seq.send(GenerateEvent::Started { prompt_tokens, resumed_tokens });
        Ok(seq)
    }

    /// The ids prefill runs: prompt and resumed text.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// The next step's input token.
    pub fn next_token(&self) -> u32 {
        self.next
    }

    /// Cache columns this sequence may come to hold: its context and every token it may
    /// still generate.
    pub fn budget(&self) -> usize {
        self.context.len() + (self.max_tokens - self.completion_tokens) as usize
    }

    /// Cancelled, or nobody is listening any more.
    pub fn is_abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }

    /// The resumed text already used the whole budget: nothing to generate.
    pub fn is_exhausted(&self) -> bool {
        self.completion_tokens >= self.max_tokens
    }

    /// Its choice is the row's argmax and nothing else (no penalties, no logprobs), so the
    /// scheduler may take it from one argmax over the whole batch.
    pub fn wants_argmax_only(&self) -> bool {
        self.constraint.is_none() && self.sampler.is_plain_greedy()
    }

    /// Chooses the next token from row `row` of `logits` (`[rows, vocab]`, f32), or takes
    /// `argmax` when [`Self::wants_argmax_only`]. Under a constraint, only the tokens it
    /// allows (and a stop token once the value is complete) can be chosen; when the value is
    /// complete and nothing may follow it, the choice is a stop token.
    pub fn choose(&mut self, logits: &Tensor, row: usize, argmax: Option<u32>) -> Choice {
        if let Some(c) = &mut self.constraint {
            c.matcher.allowed(&c.vocabulary, &mut c.allowed);
            // Stop tokens have no bytes, so the matcher never allows them: this is "anything
            // but a stop".
            let more = c.allowed.iter().any(|&ok| ok);
            if c.matcher.is_complete() {
                if !more && let Some(&id) = self.stop_ids.first() {
                    self.sampler.observe(id);
                    return Choice { id, logprob: None, top: Vec::new() };
                }
                for &id in &self.stop_ids {
                    if let Some(slot) = c.allowed.get_mut(id as usize) {
                        *slot = true;
                    }
                }
            }
            let row = logits.get(row as i64);
            let width = row.size()[0] as usize;
            // The logits may be wider than the tokenizer's vocabulary (padded embeddings).
            let mask = if width == c.allowed.len() {
                Tensor::from_slice(&c.allowed)
            } else {
                let mut padded = c.allowed.clone();
                padded.resize(width, false);
                Tensor::from_slice(&padded)
            }
            .to_device(row.device());
            return self.sampler.choose(&row.masked_fill(&mask.logical_not(), f64::NEG_INFINITY));
        }
        match argmax.filter(|_| self.wants_argmax_only()) {
            Some(id) => {
                self.sampler.observe(id);
                Choice { id, logprob: None, top: Vec::new() }
            }
            None => self.sampler.choose(&logits.get(row as i64)),
        }
    }

    /// Takes the chosen token and sends what text it releases. Returns true once the
    /// sequence has ended (its last events sent); it is not stepped again.
    pub fn accept(&mut self, codec: &Codec, choice: Choice) -> Result<bool> {
        self.completion_tokens += 1;
        if self.stop_ids.contains(&choice.id) {
            self.end(codec, FinishReason::Stop)?;
            return Ok(true);
        }
        if let Some(c) = &mut self.constraint
            && c.matcher.advance(c.vocabulary.bytes(choice.id)).is_err()
        {
            // Only allowed tokens are chosen; a rejection is a bug, never silent output.
            return Err(TorchError::InvalidRequest(format!("token {} broke the JSON constraint", choice.id)));
        }
        self.next = choice.id;
        self.unsent_tokens += 1;
        if self.want_logprobs {
            self.logprobs.push(token_logprob(codec, choice.id, choice.logprob.unwrap_or(f32::NAN), &choice.top));
        }
        let piece = self.detok.push(codec, choice.id)?;
        match self.gate.push(&piece) {
            Gate::Pass(text) => {
                // Logprobs of tokens whose text is held back wait for that text.
                if !text.is_empty() && !self.send_delta(text) {
                    self.end(codec, FinishReason::Cancelled)?;
                    return Ok(true);
                }
            }
            Gate::Stop(text) => {
                self.stop_with(text);
                return Ok(true);
            }
        }
        if self.is_exhausted() {
            self.end(codec, FinishReason::Length)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Ends the sequence: releases held text (an unfinished character only when no more
    /// tokens can come, i.e. unless cancelled) and sends `Finished`.
    pub fn end(&mut self, codec: &Codec, reason: FinishReason) -> Result<()> {
        let mut tail = String::new();
        if reason != FinishReason::Cancelled {
            match self.gate.push(&self.detok.finish(codec)?) {
                Gate::Pass(text) => tail.push_str(&text),
                Gate::Stop(text) => {
                    self.stop_with(text);
                    return Ok(());
                }
            }
        }
        tail.push_str(&self.gate.flush());
        if !tail.is_empty() || self.unsent_tokens > 0 {
            self.send_delta(tail);
        }
        self.finished(reason);
        Ok(())
    }

    /// Ends the sequence with an error.
    pub fn fail(&self, error: GenerateError) {
        self.send(GenerateEvent::Error(error));
    }

    fn stop_with(&mut self, text: String) {
        if !text.is_empty() || self.unsent_tokens > 0 {
            self.send_delta(text);
        }
        self.finished(FinishReason::Stop);
    }

    fn finished(&self, reason: FinishReason) {
        self.send(GenerateEvent::Finished {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        });
    }

    fn send_delta(&mut self, text: String) -> bool {
        let tokens = std::mem::take(&mut self.unsent_tokens);
        let logprobs = std::mem::take(&mut self.logprobs);
        self.send(GenerateEvent::Delta { text, tokens, logprobs })
    }

    /// Never blocks: the channel is unbounded, so a slow reader holds its own events and
    /// stalls no other sequence of the batch.
    fn send(&self, event: GenerateEvent) -> bool {
        self.tx.send(event).is_ok()
    }
}

fn token_logprob(codec: &Codec, id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
    let describe = |id: u32| {
        let bytes = codec.token_bytes(id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (token, bytes) = describe(id);
    let top_logprobs = top
        .iter()
        .map(|&(token_id, logprob)| {
            let (token, bytes) = describe(token_id);
            TopLogprob { token_id, token, bytes, logprob }
        })
        .collect();
    TokenLogprob { token_id: id, token, bytes, logprob, top_logprobs }
}
