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

use super::layers::{Activation, Attention, DecoderSpec, GatedMlp, KvCache, Linear, RmsNorm, Rope};
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
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, cache: &mut super::layers::LayerCache) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), cos, sin, cache);
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

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs `ids` (`[1, len]`) after the positions already in `cache`, and returns the f32
    /// logits of the last position, `[vocab]`.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Tensor {
        let len = ids.size()[1];
        let start = cache.len();
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        let (cos, sin) = self.rope.cos_sin(start, len, x.kind());
        debug_assert_eq!(cos.size()[1], self.head_dim);
        for (block, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, &cos, &sin, layer_cache);
        }
        // Only the last position's logits are needed to choose the next token.
        let last = self.norm.forward(&x.narrow(1, len - 1, 1));
        self.lm_head.forward(&last).to_kind(Kind::Float).view([-1])
    }
}
