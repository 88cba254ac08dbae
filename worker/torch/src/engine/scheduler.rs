//! Continuous batching: the model thread's loop over many sequences.
//!
//! Each [`Scheduler::step`] drops the sequences that were cancelled (or whose receiver went
//! away), lets waiting sequences join under the token budget ([`BatchOptions`], TGI's
//! router knobs), prefills them — prompts of similar length together, in one forward pass —
//! then decodes every running sequence in one forward pass and drops the rows that ended.
//! Running sequences are never preempted or re-prefilled to line lengths up: the batch's
//! key/value cache holds rows of any length ([`BatchCache`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use tch::{Device, Tensor};

use super::sequence::Sequence;
use super::{BatchOptions, FinishReason, GenerateError, Job, ModelLoop, panic_message};
use crate::error::TorchError;
use crate::models::{BatchCache, Decoder};
use crate::tokenizer::Codec;

/// Prompts prefilled together may be padded by at most this fraction of their real tokens.
const PREFILL_PADDING: f64 = 0.25;

pub(super) struct Scheduler<'a> {
    decoder: &'a Decoder,
    codec: &'a Codec,
    opts: BatchOptions,
    waiting: VecDeque<Sequence>,
    /// Row `i` of `cache` is `running[i]`.
    running: Vec<Sequence>,
    cache: BatchCache,
    /// Decoding steps since sequences last joined the running batch.
    steps_since_join: usize,
    metrics: EngineMetrics,
}

impl<'a> Scheduler<'a> {
    /// The scheduler of model `model`'s thread (`model` labels its metrics).
    pub fn new(decoder: &'a Decoder, codec: &'a Codec, opts: BatchOptions, model: &str) -> Scheduler<'a> {
        Scheduler {
            decoder,
            codec,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            cache: BatchCache::empty(),
            steps_since_join: 0,
            metrics: EngineMetrics::new(model),
        }
    }

    pub fn add_seq(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    /// Ends the sequences that were cancelled or whose receiver went away.
    fn drop_abandoned(&mut self) {
        let codec = self.codec;
        self.waiting.retain_mut(|seq| {
            let abandoned = seq.is_abandoned();
            if abandoned {
                end(codec, seq, FinishReason::Cancelled);
            }
            !abandoned
        });
        let keep: Vec<bool> = self
            .running
            .iter_mut()
            .map(|seq| {
                let abandoned = seq.is_abandoned();
                if abandoned {
                    end(codec, seq, FinishReason::Cancelled);
                }
                !abandoned
            })
            .collect();
        self.retain(&keep);
    }

    /// The waiting sequences that join now, oldest first (see [`joinable`]).
    fn schedule(&mut self) -> Vec<Sequence> {
        let running: Vec<usize> = self.running.iter().map(Sequence::budget).collect();
        let waiting = self.waiting.iter().map(|s| (s.budget(), s.context().len()));
        let take = joinable(&self.opts, &running, self.steps_since_join, waiting);
        self.waiting.drain(..take).collect()
    }

    /// Prefills `joining` in groups of similar prompt length, chooses each one's first
    /// token, and adds those that go on to the running batch.
    fn prefill(&mut self, joining: Vec<Sequence>) {
        let mut joining: Vec<Sequence> = joining
            .into_iter()
            .filter_map(|mut seq| {
                if !seq.is_exhausted() {
                    return Some(seq);
                }
                end(self.codec, &mut seq, FinishReason::Length);
                None
            })
            .collect();
        joining.sort_by_key(|s| s.context().len());
        let mut groups: Vec<Vec<Sequence>> = Vec::new();
        for seq in joining {
            if let Some(group) = groups.last_mut() {
                // Ascending order: the newcomer is the group's longest.
                let (rows, width) = (group.len() + 1, seq.context().len());
                let tokens = group.iter().map(|s| s.context().len()).sum::<usize>() + width;
                if rows * width <= self.opts.max_batch_prefill_tokens
                    && (rows * width) as f64 <= tokens as f64 * (1.0 + PREFILL_PADDING)
                {
                    group.push(seq);
                    continue;
                }
            }
            groups.push(vec![seq]);
        }
        for mut group in groups {
            let decoder = self.decoder;
            let outcome = {
                let rows: Vec<&[u32]> = group.iter().map(|s| s.context()).collect();
                std::panic::catch_unwind(AssertUnwindSafe(|| decoder.prefill(&rows)))
            };
            let (logits, mut cache) = match outcome {
                Ok(out) => out,
                Err(p) => {
                    fail_all(&group, &panic_message(&p));
                    continue;
                }
            };
            let keep = self.advance(&mut group, &logits);
            cache.retain(&keep);
            self.cache.append(cache);
            self.running.extend(group.into_iter().zip(keep).filter_map(|(s, k)| k.then_some(s)));
        }
    }

    /// One token for every running sequence, in one forward pass.
    fn decode(&mut self) {
        let ids: Vec<u32> = self.running.iter().map(Sequence::next_token).collect();
        let (decoder, cache) = (self.decoder, &mut self.cache);
        let logits = match std::panic::catch_unwind(AssertUnwindSafe(|| decoder.decode(&ids, cache))) {
            Ok(logits) => logits,
            Err(p) => {
                // The cache may be half-written: every running sequence ends.
                fail_all(&self.running, &panic_message(&p));
                self.running.clear();
                self.cache = BatchCache::empty();
                return;
            }
        };
        let mut running = std::mem::take(&mut self.running);
        let keep = self.advance(&mut running, &logits);
        self.running = running;
        self.retain(&keep);
    }

    /// Feeds row `i` of `logits` to `seqs[i]`; which of them go on.
    fn advance(&self, seqs: &mut [Sequence], logits: &Tensor) -> Vec<bool> {
        let argmax = batch_argmax(logits, seqs);
        seqs.iter_mut()
            .enumerate()
            .map(|(row, seq)| {
                let choice = seq.choose(logits, row, argmax.as_ref().map(|a| a[row]));
                match seq.accept(self.codec, choice) {
                    Ok(ended) => !ended,
                    Err(e) => {
                        seq.fail(e.into());
                        false
                    }
                }
            })
            .collect()
    }

    fn retain(&mut self, keep: &[bool]) {
        if keep.iter().all(|&k| k) {
            return;
        }
        self.cache.retain(keep);
        let mut keep = keep.iter();
        self.running.retain(|_| *keep.next().expect("one flag per row"));
    }
}

impl ModelLoop for Scheduler<'_> {
    fn add(&mut self, job: Job) {
        match job {
            Job::Generate(seq) => self.add_seq(*seq),
            Job::Embed(job) => job.refuse(TorchError::WrongModelKind("embed: it is a text generator")),
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// One round: drop the abandoned, admit and prefill, decode one token for every row.
    fn step(&mut self) {
        self.drop_abandoned();
        let joining = self.schedule();
        if !joining.is_empty() {
            // A prefill samples each joining sequence's first token.
            self.metrics.generated(joining.len());
            self.prefill(joining);
            self.steps_since_join = 0;
        }
        if !self.running.is_empty() {
            let rows = self.running.len();
            self.decode();
            self.steps_since_join += 1;
            self.metrics.decoded(rows);
        }
        self.metrics.waiting(self.waiting.len());
        if self.is_idle() {
            self.metrics.idle();
        }
    }
}

/// The engine's gauges and counter (`switchyard_telemetry::names`): rows per decoding step,
/// sequences waiting, tokens generated, and tokens/s over the last second or more.
struct EngineMetrics {
    batch_size: metrics::Gauge,
    decode_rows: metrics::Histogram,
    waiting: metrics::Gauge,
    generated: metrics::Counter,
    tokens_per_second: metrics::Gauge,
    /// Tokens decoded since `since`.
    window: (std::time::Instant, u64),
}

impl EngineMetrics {
    fn new(model: &str) -> Self {
        use switchyard_telemetry::names;
        let model = model.to_string();
        EngineMetrics {
            batch_size: metrics::gauge!(names::ENGINE_BATCH_SIZE, "model" => model.clone()),
            decode_rows: metrics::histogram!(names::ENGINE_DECODE_ROWS, "model" => model.clone()),
            waiting: metrics::gauge!(names::ENGINE_WAITING, "model" => model.clone()),
            generated: metrics::counter!(names::ENGINE_GENERATED_TOKENS, "model" => model.clone()),
            tokens_per_second: metrics::gauge!(names::ENGINE_TOKENS_PER_SECOND, "model" => model),
            window: (std::time::Instant::now(), 0),
        }
    }

    /// A decoding step of `rows` rows: one token each.
    fn decoded(&mut self, rows: usize) {
        self.batch_size.set(rows as f64);
        self.decode_rows.record(rows as f64);
        self.generated(rows);
        let elapsed = self.window.0.elapsed();
        if elapsed >= std::time::Duration::from_secs(1) {
            self.tokens_per_second.set(self.window.1 as f64 / elapsed.as_secs_f64());
            self.window = (std::time::Instant::now(), 0);
        }
    }

    fn generated(&mut self, tokens: usize) {
        self.generated.increment(tokens as u64);
        self.window.1 += tokens as u64;
    }

    fn waiting(&self, sequences: usize) {
        self.waiting.set(sequences as f64);
    }

    /// Nothing left to run: the model thread sleeps until the next job.
    fn idle(&mut self) {
        self.batch_size.set(0.0);
        self.tokens_per_second.set(0.0);
        self.window = (std::time::Instant::now(), 0);
    }
}

/// How many of the waiting sequences — `(budget, prompt tokens)` each, oldest first — join
/// a batch whose rows have the budgets `running`. They join while the batch has rows left,
/// the cache stays within `max_batch_total_tokens` (counted as a padded cache holds them:
/// rows × the widest budget), and the prompts within `max_batch_prefill_tokens` — except
/// that the first always joins an empty batch, whatever its size. A running batch is
/// interrupted for prefill only when enough can join at once (`waiting_served_ratio` of its
/// size) or once it has gone `max_waiting_tokens` steps without anyone joining. Nobody
/// jumps the queue: the first that does not fit stops the rest.
fn joinable(
    opts: &BatchOptions,
    running: &[usize],
    steps_since_join: usize,
    waiting: impl Iterator<Item = (usize, usize)>,
) -> usize {
    let room = opts.max_batch_size.saturating_sub(running.len());
    let min_join = if running.is_empty() || steps_since_join >= opts.max_waiting_tokens {
        1
    } else {
        ((running.len() as f32 * opts.waiting_served_ratio).floor() as usize).max(1)
    };
    let total = opts.max_batch_total_tokens.unwrap_or(usize::MAX);
    let mut widest = running.iter().copied().max().unwrap_or(0);
    let (mut rows, mut prefill, mut take) = (running.len(), 0, 0);
    for (budget, prompt) in waiting.take(room) {
        let width = widest.max(budget);
        if rows > 0 && (rows + 1).saturating_mul(width) > total {
            break;
        }
        if take > 0 && prefill + prompt > opts.max_batch_prefill_tokens {
            break;
        }
        (widest, rows, prefill, take) = (width, rows + 1, prefill + prompt, take + 1);
    }
    if take < min_join { 0 } else { take }
}

/// Every row's argmax in one kernel and one copy, when some row needs nothing more.
fn batch_argmax(logits: &Tensor, seqs: &[Sequence]) -> Option<Vec<u32>> {
    if !seqs.iter().any(Sequence::wants_argmax_only) {
        return None;
    }
    let ids = Vec::<i64>::try_from(&logits.argmax(1, false).to_device(Device::Cpu)).ok()?;
    Some(ids.into_iter().map(|i| i as u32).collect())
}

fn end(codec: &Codec, seq: &mut Sequence, reason: FinishReason) {
    if let Err(e) = seq.end(codec, reason) {
        seq.fail(e.into());
    }
}

fn fail_all(seqs: &[Sequence], message: &str) {
    for seq in seqs {
        seq.fail(GenerateError { code: "internal", message: message.to_owned() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BatchOptions {
        BatchOptions {
            max_batch_size: 4,
            max_batch_total_tokens: Some(1000),
            max_batch_prefill_tokens: 300,
            waiting_served_ratio: 0.5,
            max_waiting_tokens: 10,
        }
    }

    #[test]
    fn an_empty_batch_takes_the_first_whatever_its_size() {
        let huge = [(5000, 4000), (10, 5)];
        assert_eq!(joinable(&opts(), &[], 0, huge.into_iter()), 1);
    }

    #[test]
    fn the_cache_budget_counts_rows_times_the_widest() {
        // 3 rows × 300 = 900 fits; a fourth row would make 4 × 300 = 1200.
        let w = [(100, 10), (300, 10), (50, 10), (50, 10)];
        assert_eq!(joinable(&opts(), &[], 0, w.into_iter()), 3);
        // A running row of 400: 2 × 400 fits, 3 × 400 does not.
        let w = [(100, 10), (100, 10), (100, 10)];
        assert_eq!(joinable(&opts(), &[400], 10, w.into_iter()), 1);
    }

    #[test]
    fn prefill_tokens_and_batch_size_bound_one_round() {
        let w = [(200, 200), (200, 90), (200, 20)];
        assert_eq!(joinable(&opts(), &[], 0, w.into_iter()), 2, "200 + 90 fit in 300, + 20 does not");
        let w = [(10, 1); 6];
        assert_eq!(joinable(&opts(), &[10], 10, w.into_iter()), 3, "4 rows at most");
        assert_eq!(joinable(&opts(), &[10; 4], 10, w.into_iter()), 0);
    }

    #[test]
    fn a_running_batch_waits_for_enough_newcomers_or_long_enough() {
        let running = [10, 10, 10, 10];
        let opts = BatchOptions { max_batch_size: 8, ..opts() };
        // Half of 4 running = 2 must be able to join at once.
        assert_eq!(joinable(&opts, &running, 3, [(10, 1)].into_iter()), 0);
        assert_eq!(joinable(&opts, &running, 3, [(10, 1), (10, 1)].into_iter()), 2);
        // After max_waiting_tokens steps, one is enough.
        assert_eq!(joinable(&opts, &running, 10, [(10, 1)].into_iter()), 1);
    }

    #[test]
    fn nobody_jumps_the_queue() {
        // The second does not fit the prefill budget; the small third waits behind it.
        let w = [(100, 100), (400, 250), (10, 1)];
        assert_eq!(joinable(&opts(), &[], 0, w.into_iter()), 1);
    }
}
