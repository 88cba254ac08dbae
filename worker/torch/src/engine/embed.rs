//! Embeddings batched across requests: the model thread of a sentence encoder gathers every
//! request waiting for it, sorts their texts by length, and encodes them in padded batches,
//! so that many concurrent one-sentence requests share forward passes.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use tch::{Device, Tensor};
use tokio::sync::oneshot;

use super::{Embeddings, Job, ModelLoop, panic_message};
use crate::error::{Result, TorchError};
use crate::models::Encoder;

/// Batches one round encodes before it looks for newly arrived requests: enough texts to
/// sort into well-filled batches, few enough that a huge request does not hold up small
/// ones for long.
const ROUND_BATCHES: usize = 8;

/// One request: its texts' token ids (tokenized by the caller), and the vectors so far.
pub(super) struct EmbedJob {
    ids: Vec<Vec<u32>>,
    vectors: Vec<Vec<f32>>,
    /// Texts handed to a round so far; the ones before are encoded.
    started: usize,
    reply: oneshot::Sender<Result<Embeddings>>,
}

impl EmbedJob {
    pub fn new(ids: Vec<Vec<u32>>, reply: oneshot::Sender<Result<Embeddings>>) -> EmbedJob {
        EmbedJob { vectors: vec![Vec::new(); ids.len()], ids, started: 0, reply }
    }

    /// Answers with `error` instead.
    pub fn refuse(self, error: TorchError) {
        let _ = self.reply.send(Err(error));
    }

    fn finish(self) {
        let prompt_tokens = self.ids.iter().map(Vec::len).sum::<usize>() as u32;
        let _ = self.reply.send(Ok(Embeddings { vectors: self.vectors, prompt_tokens }));
    }
}

pub(super) struct EmbedQueue<'a> {
    encoder: &'a Encoder,
    device: Device,
    /// Texts per forward pass.
    batch: usize,
    jobs: VecDeque<EmbedJob>,
}

impl<'a> EmbedQueue<'a> {
    pub fn new(encoder: &'a Encoder, device: Device, batch: usize) -> EmbedQueue<'a> {
        EmbedQueue { encoder, device, batch: batch.max(1), jobs: VecDeque::new() }
    }

}

impl ModelLoop for EmbedQueue<'_> {
    fn add(&mut self, job: Job) {
        match job {
            Job::Embed(job) if job.ids.is_empty() => job.finish(),
            Job::Embed(job) => self.jobs.push_back(job),
            Job::Generate(seq) => seq.fail(TorchError::WrongModelKind("generate text: it is a sentence encoder").into()),
        }
    }

    fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Encodes up to [`ROUND_BATCHES`] batches' worth of texts of the waiting requests, oldest first, longest
    /// texts batched together, and answers the requests that are complete.
    fn step(&mut self) {
        // A request whose caller went away is not worth encoding.
        self.jobs.retain(|j| !j.reply.is_closed());
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
        let mut failed: Option<String> = None;
        for batch in items.chunks(self.batch) {
            let texts: Vec<&[u32]> = batch.iter().map(|&(j, t)| self.jobs[j].ids[t].as_slice()).collect();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| encode(self.encoder, self.device, &texts)))
                .unwrap_or_else(|p| Err(TorchError::Internal(panic_message(&p))));
            match outcome {
                Ok(rows) => {
                    for (row, &(j, t)) in rows.into_iter().zip(batch) {
                        self.jobs[j].vectors[t] = row;
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
            for j in involved.into_iter().rev() {
                let job = self.jobs.remove(j).expect("a job of the round");
                let _ = job.reply.send(Err(TorchError::Internal(message.clone())));
            }
            return;
        }
        // Answer every complete request; a big one that is not does not hold up the rest.
        let mut i = 0;
        while i < self.jobs.len() {
            if self.jobs[i].started == self.jobs[i].ids.len() {
                self.jobs.remove(i).expect("in range").finish();
            } else {
                i += 1;
            }
        }
    }
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
