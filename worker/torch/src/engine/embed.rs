//! Embeddings batched across requests: the model thread of a sentence encoder gathers every
//! request waiting for it, sorts their texts by length, and encodes them in padded batches,
//! so that many concurrent one-sentence requests share forward passes.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};
use tokio::sync::oneshot;

use super::{Embeddings, Job, ModelLoop, panic_message};
use crate::error::{Result, TorchError};
use crate::models::Encoder;

/// Batches one round encodes before it looks for newly arrived requests: enough texts to
/// sort into well-filled batches, few enough that a huge request does not hold up small
/// ones for long.
const ROUND_BATCHES: usize = 8;

/// Under load (a round ended moments ago), a round with less than a full batch waiting waits
/// this long past its oldest request's arrival for more to come: busy clients send their next
/// requests as answers reach them, and a forward pass of a few texts costs almost as much as
/// one of a full batch. Idle, a request is encoded at once.
const GATHER: Duration = Duration::from_millis(5);

/// How recently a round must have ended for the encoder to count as under load.
const BUSY: Duration = Duration::from_millis(50);

/// One request: its texts' token ids (tokenized by the caller), and the vectors so far.
pub(super) struct EmbedJob {
    ids: Vec<Vec<u32>>,
    vectors: Vec<Vec<f32>>,
    /// Texts handed to a round so far.
    started: usize,
    /// Texts encoded so far.
    encoded: usize,
    /// Taken when the request is answered.
    reply: Option<oneshot::Sender<Result<Embeddings>>>,
    arrived: Instant,
}

impl EmbedJob {
    pub fn new(ids: Vec<Vec<u32>>, reply: oneshot::Sender<Result<Embeddings>>) -> EmbedJob {
        EmbedJob {
            vectors: vec![Vec::new(); ids.len()],
            ids,
            started: 0,
            encoded: 0,
            reply: Some(reply),
            arrived: Instant::now(),
        }
    }

    /// Answers with `error` instead.
    pub fn refuse(mut self, error: TorchError) {
        self.answer(Err(error));
    }

    fn answer(&mut self, out: Result<Embeddings>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(out);
        }
    }

    fn finish(&mut self) {
        let prompt_tokens = self.ids.iter().map(Vec::len).sum::<usize>() as u32;
        let vectors = std::mem::take(&mut self.vectors);
        self.answer(Ok(Embeddings { vectors, prompt_tokens }));
    }

    /// Answered, or nobody waits for it any more.
    fn is_over(&self) -> bool {
        self.reply.as_ref().is_none_or(|r| r.is_closed())
    }
}

pub(super) struct EmbedQueue<'a> {
    encoder: &'a Encoder,
    device: Device,
    /// Texts per forward pass.
    batch: usize,
    jobs: VecDeque<EmbedJob>,
    /// When the last round ended.
    last_round: Option<Instant>,
}

impl<'a> EmbedQueue<'a> {
    pub fn new(encoder: &'a Encoder, device: Device, batch: usize) -> EmbedQueue<'a> {
        EmbedQueue { encoder, device, batch: batch.max(1), jobs: VecDeque::new(), last_round: None }
    }
}

impl ModelLoop for EmbedQueue<'_> {
    fn add(&mut self, job: Job) {
        match job {
            Job::Embed(mut job) if job.ids.is_empty() => job.finish(),
            Job::Embed(job) => self.jobs.push_back(job),
            Job::Generate(seq) => {
                seq.fail(TorchError::WrongModelKind("generate text: it is a sentence encoder").into())
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    fn gather_until(&self) -> Option<Instant> {
        let busy = self.last_round.is_some_and(|t| t.elapsed() < BUSY);
        let waiting: usize = self.jobs.iter().map(|j| j.ids.len() - j.started).sum();
        let oldest = self.jobs.iter().filter(|j| j.started < j.ids.len()).map(|j| j.arrived).min()?;
        (busy && waiting < self.batch).then_some(oldest + GATHER)
    }

    /// Encodes up to [`ROUND_BATCHES`] batches' worth of texts of the waiting requests, oldest first, longest
    /// texts batched together, and answers the requests that are complete.
    fn step(&mut self) {
        // A request whose caller went away is not worth encoding.
        self.jobs.retain(|j| !j.is_over());
        let round = ROUND_BATCHES * self.batch;
        let mut items: Vec<(usize, usize)> = Vec::new();
        for (j, job) in self.jobs.iter_mut().enumerate() {
            let take = (job.ids.len() - job.started).min(round - items.len());
            items.extend((job.started..job.started + take).map(|t| (j, t)));
            job.started += take;
            if items.len() == round {
                break;
            }
        }
        // Similar lengths together, so little of each batch is padding.
        items.sort_by_key(|&(j, t)| std::cmp::Reverse(self.jobs[j].ids[t].len()));
        let lens: Vec<usize> = items.iter().map(|&(j, t)| self.jobs[j].ids[t].len()).collect();
        let mut failed: Option<String> = None;
        let mut start = 0;
        for rows in batch_sizes(&lens, self.batch) {
            let batch = &items[start..start + rows];
            start += rows;
            let texts: Vec<&[u32]> = batch.iter().map(|&(j, t)| self.jobs[j].ids[t].as_slice()).collect();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| encode(self.encoder, self.device, &texts)))
                .unwrap_or_else(|p| Err(TorchError::Internal(panic_message(&p))));
            match outcome {
                Ok(rows) => {
                    for (row, &(j, t)) in rows.into_iter().zip(batch) {
                        let job = &mut self.jobs[j];
                        job.vectors[t] = row;
                        job.encoded += 1;
                        // Answered at once, not at the end of the round: replies (and so the
                        // next requests of busy clients) spread out instead of arriving together.
                        if job.encoded == job.ids.len() {
                            job.finish();
                        }
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(message) = failed {
            // Every request of the round fails alike: which batch broke says nothing about them.
            let involved: std::collections::BTreeSet<usize> = items.iter().map(|&(j, _)| j).collect();
            for j in involved {
                self.jobs[j].answer(Err(TorchError::Internal(message.clone())));
            }
        }
        self.jobs.retain(|j| !j.is_over());
        self.last_round = Some(Instant::now());
    }
}

/// What one forward pass costs beyond its tokens, in tokens: on CPUs MKL packs every weight
/// matrix once per call (`sgemm_scopy`, ~8% of a 32-text MiniLM batch in perf), a cost of the
/// weights' size, as a token's compute is of the parameter count; the ratio is about the
/// same for any model. A batch is split only where that saves more padding than this.
const PASS_COST_TOKENS: usize = 64;

/// How to cut texts of `lens` (longest first) into batches of at most `max_rows` at the least
/// cost: padded tokens plus [`PASS_COST_TOKENS`] per pass (dynamic programming over the cut
/// points). Many one-text requests hand a round a few dozen texts of mixed lengths; cutting
/// at a fixed 32 pads them by ~10%, cutting at every length change pays for passes instead.
fn batch_sizes(lens: &[usize], max_rows: usize) -> Vec<usize> {
    let n = lens.len();
    let max_rows = max_rows.max(1);
    // best[i]: the least cost of the first i texts; cut[i]: where their last batch starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0; n + 1];
    best[0] = 0;
    for i in 1..=n {
        for j in i.saturating_sub(max_rows)..i {
            // Texts j..i in one batch: its width is the longest, lens[j].
            let cost = best[j] + (i - j) * lens[j].max(1) + PASS_COST_TOKENS;
            if cost < best[i] {
                (best[i], cut[i]) = (cost, j);
            }
        }
    }
    let mut sizes = Vec::new();
    let mut i = n;
    while i > 0 {
        sizes.push(i - cut[i]);
        i = cut[i];
    }
    sizes.reverse();
    sizes
}

/// Pooled vectors of `texts`, one padded forward pass.
fn encode(encoder: &Encoder, device: Device, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
    let width = texts.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![0i64; texts.len() * width];
    let mut mask = vec![0i64; texts.len() * width];
    for (row, text) in texts.iter().enumerate() {
        for (col, &id) in text.iter().enumerate() {
            ids[row * width + col] = i64::from(id);
            mask[row * width + col] = 1;
        }
    }
    let shape = [texts.len() as i64, width as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
    let hidden = encoder.net.forward(&ids, &mask);
    let pooled = encoder.pipeline.pool(&hidden, &mask).to_device(Device::Cpu);
    Ok(Vec::<Vec<f32>>::try_from(&pooled)?)
}

#[cfg(test)]
mod tests {
    use super::batch_sizes;

    #[test]
    fn batches_are_cut_where_padding_costs_more_than_a_pass() {
        assert_eq!(batch_sizes(&[], 32), Vec::<usize>::new());
        // Equal lengths: as few passes as the batch size allows.
        assert_eq!(batch_sizes(&[10; 70], 32).len(), 3);
        assert!(batch_sizes(&[10; 70], 32).iter().all(|&r| r <= 32));
        // A small length step is not worth a pass: 10 rows padded by 1 = 10 tokens < 64.
        assert_eq!(batch_sizes(&[[27; 10], [26; 10]].concat(), 32), vec![20]);
        // A big one is: 20 rows padded by 200 tokens each.
        assert_eq!(batch_sizes(&[vec![300; 2], vec![100; 20]].concat(), 32), vec![2, 20]);
    }
}
