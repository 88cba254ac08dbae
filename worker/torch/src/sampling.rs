//! Choosing the next token: penalties, greedy or temperature/top-k/top-p sampling with a
//! seeded generator of our own, and log-probabilities.

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tch::{Kind, Tensor};

/// Decoding parameters of one request. `None` means "the model's default" (its
/// `generation_config.json`), then the OpenAI default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate; `None`: up to the context length.
    pub max_tokens: Option<u32>,
    /// 0 is greedy decoding.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 turns top-k off.
    pub top_k: Option<u32>,
    /// Same seed, same prompt, same parameters, same device → same text.
    pub seed: Option<u64>,
    /// Generation ends before any of these strings; they never appear in the text.
    pub stop: Vec<String>,
    /// Token ids that end generation, in addition to the model's end-of-sequence ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-sequence ids (request `stop_token_ids` still stop).
    pub ignore_eos: bool,
    /// OpenAI semantics: subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// OpenAI semantics: subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Report the chosen token's log-probability.
    pub logprobs: bool,
    /// Also report this many most likely alternatives at each position (implies `logprobs`).
    pub top_logprobs: u32,
}

/// Log-probability of a generated token, from the model's raw distribution (before
/// temperature, top-k/top-p and penalties).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    /// The token's text; a token that holds part of a UTF-8 character shows U+FFFD here and
    /// its real content in `bytes`.
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The model's defaults from `generation_config.json`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SamplingDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
}

/// A chosen token and, when asked for, its log-probabilities as ids.
pub(crate) struct Choice {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

pub(crate) struct Sampler {
    temperature: f64,
    top_p: f64,
    top_k: i64,
    presence: f64,
    frequency: f64,
    logprobs: bool,
    top_logprobs: i64,
    rng: ChaCha8Rng,
    /// How often each token has been generated (for the penalties).
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(p: &SamplingParams, defaults: SamplingDefaults) -> Sampler {
        let seed = p.seed.unwrap_or_else(random_seed);
        Sampler {
            temperature: p.temperature.map(f64::from).or(defaults.temperature).unwrap_or(1.0),
            top_p: p.top_p.map(f64::from).or(defaults.top_p).unwrap_or(1.0),
            top_k: p.top_k.map(i64::from).or(defaults.top_k).unwrap_or(0),
            presence: p.presence_penalty.into(),
            frequency: p.frequency_penalty.into(),
            logprobs: p.logprobs || p.top_logprobs > 0,
            top_logprobs: p.top_logprobs.into(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: HashMap::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Greedy with no penalties and no logprobs: the choice is the argmax of the raw logits.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy() && self.presence == 0.0 && self.frequency == 0.0 && !self.logprobs
    }

    /// Tokens already in the completion (resumed text) count for the penalties.
    pub fn observe(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
    }

    /// Picks the next token from `logits` (`[vocab]`, f32) and records it.
    pub fn choose(&mut self, logits: &Tensor) -> Choice {
        let (logprob_of, top) = if self.logprobs {
            let lp = logits.log_softmax(0, Kind::Float);
            let top = if self.top_logprobs > 0 {
                let (values, indices) = lp.topk(self.top_logprobs.min(lp.size()[0]), 0, true, true);
                let values = Vec::<f32>::try_from(&values.to_device(tch::Device::Cpu)).unwrap_or_default();
                let indices = Vec::<i64>::try_from(&indices.to_device(tch::Device::Cpu)).unwrap_or_default();
                indices.into_iter().map(|i| i as u32).zip(values).collect()
            } else {
                Vec::new()
            };
            (Some(lp), top)
        } else {
            (None, Vec::new())
        };

        let logits = self.penalized(logits);
        let id = if self.is_greedy() { logits.argmax(0, false).int64_value(&[]) as u32 } else { self.sample(&logits) };
        self.observe(id);
        let logprob = logprob_of.map(|lp| lp.double_value(&[id as i64]) as f32);
        Choice { id, logprob, top }
    }

    fn penalized(&self, logits: &Tensor) -> Tensor {
        if (self.presence == 0.0 && self.frequency == 0.0) || self.counts.is_empty() {
            return logits.shallow_clone();
        }
        let (ids, penalties): (Vec<i64>, Vec<f32>) = self
            .counts
            .iter()
            .map(|(&id, &n)| (id as i64, (self.presence + self.frequency * f64::from(n)) as f32))
            .unzip();
        let device = logits.device();
        let ids = Tensor::from_slice(&ids).to_device(device);
        let penalties = Tensor::from_slice(&penalties).to_device(device);
        logits.index_add(0, &ids, &penalties.neg())
    }

    /// Temperature, then top-k, then top-p (the order of transformers and vLLM), then one
    /// draw from our own generator over the surviving tokens, most likely first.
    fn sample(&mut self, logits: &Tensor) -> u32 {
        let scaled = logits / self.temperature;
        let vocab = scaled.size()[0];
        let (values, indices) = if self.top_k > 0 && self.top_k < vocab {
            scaled.topk(self.top_k, 0, true, true)
        } else {
            // Stable, so tied logits keep a fixed order and a seed stays reproducible.
            scaled.sort_stable(true, 0, true)
        };
        let mut probs = values.softmax(0, Kind::Float);
        let mut indices = indices;
        if self.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p: a token stays while the mass
            // before it is still below top_p (so the most likely one always stays).
            let before = probs.cumsum(0, Kind::Float) - &probs;
            let keep = before.lt(self.top_p).sum(Kind::Int64).int64_value(&[]).max(1);
            probs = probs.narrow(0, 0, keep);
            indices = indices.narrow(0, 0, keep);
        }
        let probs = Vec::<f32>::try_from(&probs.to_device(tch::Device::Cpu)).expect("f32 probs");
        let indices = Vec::<i64>::try_from(&indices.to_device(tch::Device::Cpu)).expect("i64 ids");
        let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        let mut target = self.uniform() * total;
        for (p, id) in probs.iter().zip(&indices) {
            target -= f64::from(*p);
            if target < 0.0 {
                return *id as u32;
            }
        }
        // Rounding left a sliver past the last token: it is the last one.
        *indices.last().expect("at least one candidate") as u32
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn greedy_takes_argmax_and_penalties_shift_it() {
        let p = SamplingParams { temperature: Some(0.0), ..Default::default() };
        let mut s = Sampler::new(&p, SamplingDefaults::default());
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 1);
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 1);

        let p = SamplingParams { temperature: Some(0.0), frequency_penalty: 0.4, ..Default::default() };
        let mut s = Sampler::new(&p, SamplingDefaults::default());
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 1);
        // 3.0 - 0.4 = 2.6 still wins; after two, 3.0 - 0.8 = 2.2 loses to 2.5.
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 1);
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 2);

        let p = SamplingParams { temperature: Some(0.0), presence_penalty: 1.0, ..Default::default() };
        let mut s = Sampler::new(&p, SamplingDefaults::default());
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 1);
        assert_eq!(s.choose(&logits(&[0.0, 3.0, 2.5])).id, 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for p in [
            SamplingParams { temperature: Some(1.0), top_k: Some(1), seed: Some(1), ..Default::default() },
            SamplingParams { temperature: Some(1.0), top_p: Some(0.01), seed: Some(2), ..Default::default() },
        ] {
            let mut s = Sampler::new(&p, SamplingDefaults::default());
            for _ in 0..20 {
                assert_eq!(s.choose(&logits(&[1.0, 2.0, 1.5, -1.0])).id, 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let p = SamplingParams { temperature: Some(1.0), seed: Some(7), ..Default::default() };
        let l = logits(&[0.0, (3.0f32).ln(), f32::NEG_INFINITY]);
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p, SamplingDefaults::default());
            (0..4000).map(|_| s.choose(&l).id).collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p), "same seed, same draws");
        assert!(!a.contains(&2), "a token with zero probability was drawn");
        let ones = a.iter().filter(|&&i| i == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "P(1) = {ones}, expected 0.75");
    }

    #[test]
    fn logprobs_are_of_the_raw_distribution() {
        let p = SamplingParams { temperature: Some(0.0), logprobs: true, top_logprobs: 2, ..Default::default() };
        let mut s = Sampler::new(&p, SamplingDefaults::default());
        let c = s.choose(&logits(&[0.0, 0.0, (2.0f32).ln()]));
        assert_eq!(c.id, 2);
        assert!((c.logprob.unwrap() - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(c.top.len(), 2);
        assert_eq!(c.top[0].0, 2);
        assert!((c.top[1].1 - 0.25f32.ln()).abs() < 1e-6);
    }
}
