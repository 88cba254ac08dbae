//! Llama (Touvron et al. 2023) — `LlamaForCausalLM` — and Mistral (`MistralForCausalLM`),
//! which is the same network.
//!
//! Each block is pre-norm: `h = x + Attn(RMSNorm(x))`, `y = h + MLP(RMSNorm(h))`, with rotary
//! position embeddings on queries and keys, grouped-query attention and a SwiGLU MLP; a
//! final RMSNorm and the LM head turn the last hidden state into logits. Qwen2 reuses this
//! stack with q/k/v biases (see `qwen2.rs`).
//!
//! Mistral's sliding-window attention is not implemented: every position attends to the whole
//! context. That is exact while the context is no longer than `sliding_window` (4096 for
//! Mistral 7B v0.1; v0.2 and later set it to null) and an approximation beyond.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::layers::{Activation, Attention, BatchCache, DecoderSpec, GatedMlp, LayerCache, Linear, RmsNorm, Rope};
use crate::config::RopeFields;
use crate::error::Result;
use crate::weights::Weights;

/// `config.json` of a Llama or Mistral checkpoint, field for field.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(flatten)]
    pub rope: RopeFields,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub sliding_window: Option<i64>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> i64 {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_owned()
}

impl LlamaConfig {
    pub fn spec(&self) -> Result<DecoderSpec> {
        if let Some(window) = self.sliding_window.filter(|&w| w < self.max_position_embeddings) {
            tracing::warn!(
                window,
                "sliding-window attention is not implemented: contexts longer than the window \
                 attend to all positions, unlike the reference"
            );
        }
        let spec = DecoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            rms_norm_eps: self.rms_norm_eps,
            rope: self.rope.resolve(10000.0)?,
            activation: Activation::parse(&self.hidden_act)?,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings,
            max_position_embeddings: self.max_position_embeddings,
        };
        spec.validate()?;
        Ok(spec)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl Block {
    /// Returns the block's output and the layer's keys and values.
    fn prefill(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> (Tensor, Tensor, Tensor) {
        let (attn, k, v) = self.self_attn.prefill(&self.input_layernorm.forward(x), cos, sin, mask);
        let h = x + attn;
        (&h + self.mlp.forward(&self.post_attention_layernorm.forward(&h)), k, v)
    }

    fn decode(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &LayerCache,
        width: i64,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let h = x + self.self_attn.decode(&self.input_layernorm.forward(x), cos, sin, cache, width, mask);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }
}

/// A Llama-style decoder-only transformer with its LM head.
pub(crate) struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    head_dim: i64,
}

impl Llama {
    pub fn load(spec: &DecoderSpec, w: &Weights, device: Device) -> Result<Llama> {
        let (h, v) = (spec.hidden_size, spec.vocab_size);
        let embed_tokens = w.get("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(spec.num_layers as usize);
        for i in 0..spec.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), h, spec.rms_norm_eps)?,
                self_attn: Attention::load(w, &format!("{p}.self_attn"), spec)?,
                post_attention_layernorm: RmsNorm::load(
                    w,
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    spec.rms_norm_eps,
                )?,
                mlp: GatedMlp::load(w, &format!("{p}.mlp"), spec)?,
            });
        }
        let norm = RmsNorm::load(w, "model.norm", h, spec.rms_norm_eps)?;
        // Tied checkpoints often still ship an `lm_head.weight`; transformers ignores it.
        let lm_head = if spec.tie_word_embeddings {
            Linear::from_weight(embed_tokens.shallow_clone())
        } else {
            Linear::load(w, "lm_head", h, v, false)?
        };
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(&spec.rope, spec.head_dim, device),
            head_dim: spec.head_dim,
        })
    }

    fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// Runs each row's tokens from an empty cache, all rows in one forward pass (left-padded
    /// to the longest, the padding masked out), and returns the f32 logits of each row's
    /// last position, `[rows, vocab]`, and the rows' cache.
    pub fn prefill(&self, rows: &[&[u32]]) -> (Tensor, BatchCache) {
        let device = self.device();
        let lens: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
        let (b, t) = (rows.len() as i64, lens.iter().copied().max().unwrap_or(0));
        let mut ids = vec![0i64; (b * t) as usize];
        let mut positions = vec![0f32; (b * t) as usize];
        for (row, tokens) in rows.iter().enumerate() {
            let pad = t as usize - tokens.len();
            let at = row * t as usize + pad;
            for (j, &id) in tokens.iter().enumerate() {
                ids[at + j] = i64::from(id);
                positions[at + j] = j as f32;
            }
        }
        let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
        let positions = Tensor::from_slice(&positions).view([b, t]).to_device(device);
        // Row i's padding is its first `t - len` columns: a query attends to the keys at or
        // before it that are not padding; a padding query to itself alone (so no row of the
        // softmax is empty, and padding never turns into NaN).
        let mask = lens.iter().any(|&l| l < t).then(|| {
            let pads: Vec<i64> = lens.iter().map(|&l| t - l).collect();
            let pads = Tensor::from_slice(&pads).to_device(device).view([b, 1, 1]);
            let keys = Tensor::arange(t, (Kind::Int64, device)).view([1, 1, t]);
            let queries = Tensor::arange(t, (Kind::Int64, device)).view([1, t, 1]);
            let causal = keys.le_tensor(&queries).logical_and(&keys.ge_tensor(&pads));
            causal.logical_or(&keys.eq_tensor(&queries)).unsqueeze(1)
        });
        let mut x = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false);
        let (cos, sin) = self.rope.cos_sin(&positions, x.kind());
        debug_assert_eq!(cos.size()[3], self.head_dim);
        let mut kv = Vec::with_capacity(self.layers.len());
        for block in &self.layers {
            let (y, k, v) = block.prefill(&x, &cos, &sin, mask.as_ref());
            x = y;
            kv.push((k, v));
        }
        (self.logits(&x.narrow(1, t - 1, 1)), BatchCache::from_prefill(kv, lens, t))
    }

    /// One decoding step: `ids[i]` follows what row `i` of `cache` holds. Returns the f32
    /// logits, `[rows, vocab]`.
    pub fn decode(&self, ids: &[u32], cache: &mut BatchCache) -> Tensor {
        let device = self.device();
        let b = ids.len() as i64;
        debug_assert_eq!(ids.len(), cache.rows());
        cache.reserve_step();
        let width = cache.width();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::from_slice(&ids).view([b, 1]).to_device(device);
        let positions: Vec<f32> = cache.lens().iter().map(|&l| l as f32).collect();
        let positions = Tensor::from_slice(&positions).view([b, 1]).to_device(device);
        let mask = cache.lens().iter().any(|&l| l < width).then(|| {
            let pads: Vec<i64> = cache.lens().iter().map(|&l| width - l).collect();
            let pads = Tensor::from_slice(&pads).to_device(device).view([b, 1]);
            Tensor::arange(width + 1, (Kind::Int64, device)).view([1, width + 1]).ge_tensor(&pads).view([
                b,
                1,
                1,
                width + 1,
            ])
        });
        let mut x = Tensor::embedding(&self.embed_tokens, &ids, -1, false, false);
        let (cos, sin) = self.rope.cos_sin(&positions, x.kind());
        for (i, block) in self.layers.iter().enumerate() {
            x = block.decode(&x, &cos, &sin, cache.layer(i), width, mask.as_ref());
        }
        cache.advance();
        self.logits(&x)
    }

    /// `[rows, 1, hidden]` → f32 `[rows, vocab]`.
    fn logits(&self, last: &Tensor) -> Tensor {
        let rows = last.size()[0];
        self.lm_head.forward(&self.norm.forward(last)).to_kind(Kind::Float).view([rows, -1])
    }
}
