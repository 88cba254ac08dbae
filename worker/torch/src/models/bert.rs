//! BERT (Devlin et al. 2019) — `BertModel` and the checkpoints that share its encoder
//! (MiniLM, BGE, E5, …) — as used for sentence embeddings.
//!
//! Embeddings are the sum of token, absolute position and token-type embeddings, layer-normed;
//! each block is post-norm: `h = LN(x + Attn(x))`, `y = LN(h + FFN(h))` with a GELU
//! feed-forward. The pooler head is not loaded: sentence-transformers pools the hidden states
//! itself (see `sentence.rs`).

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::layers::{Activation, Linear};
use crate::error::{Result, TorchError};
use crate::weights::Weights;

/// `config.json` of a BERT checkpoint, field for field.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}
fn default_type_vocab_size() -> i64 {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, names: &Names, prefix: &str, dim: i64, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: w.get_first(&names.of(&format!("{prefix}.weight")), &[dim])?,
            bias: w.get_first(&names.of(&format!("{prefix}.bias")), &[dim])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().unwrap();
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Checkpoints store the encoder with or without a `bert.` prefix (sentence-transformers saves
/// the bare `BertModel`, a `BertForMaskedLM` has the prefix).
struct Names {
    prefix: &'static str,
}

impl Names {
    fn of(&self, name: &str) -> Vec<String> {
        vec![format!("{}{name}", self.prefix), name.to_owned(), format!("bert.{name}")]
    }

    fn linear(&self, w: &Weights, prefix: &str, in_dim: i64, out_dim: i64) -> Result<Linear> {
        let (weight, bias) = self.weight_and_bias(w, prefix, in_dim, out_dim)?;
        Ok(Linear::with_bias(weight, bias))
    }

    fn weight_and_bias(&self, w: &Weights, prefix: &str, in_dim: i64, out_dim: i64) -> Result<(Tensor, Tensor)> {
        let weight = w.get_first(&self.of(&format!("{prefix}.weight")), &[out_dim, in_dim])?;
        let bias = w.get_first(&self.of(&format!("{prefix}.bias")), &[out_dim])?;
        Ok((weight, bias))
    }

    /// Query, key and value as one projection (outputs concatenated in that order): one
    /// matrix product per layer instead of three.
    fn qkv(&self, w: &Weights, prefix: &str, hidden: i64) -> Result<Linear> {
        let parts = ["query", "key", "value"]
            .map(|n| self.weight_and_bias(w, &format!("{prefix}.{n}"), hidden, hidden))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let weight = Tensor::cat(&parts.iter().map(|(w, _)| w).collect::<Vec<_>>(), 0);
        let bias = Tensor::cat(&parts.iter().map(|(_, b)| b).collect::<Vec<_>>(), 0);
        Ok(Linear::with_bias(weight, bias))
    }
}

struct Layer {
    /// `query`, `key` and `value` fused, `[3 * hidden, hidden]`.
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The BERT encoder without its pooler.
pub(crate) struct Bert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    num_heads: i64,
    head_dim: i64,
    act: Activation,
    pub hidden_size: i64,
    pub max_position_embeddings: i64,
}

impl Bert {
    pub fn load(cfg: &BertConfig, w: &Weights) -> Result<Bert> {
        if let Some(kind) = cfg.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(TorchError::Unsupported(format!("BERT position_embedding_type {kind:?}")));
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(TorchError::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let prefix = if w.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let n = Names { prefix };
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                qkv: n.qkv(w, &format!("{p}.attention.self"), h)?,
                attention_output: n.linear(w, &format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: LayerNorm::load(w, &n, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: n.linear(w, &format!("{p}.intermediate.dense"), h, i)?,
                output: n.linear(w, &format!("{p}.output.dense"), i, h)?,
                output_norm: LayerNorm::load(w, &n, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Bert {
            word_embeddings: w.get_first(&n.of("embeddings.word_embeddings.weight"), &[cfg.vocab_size, h])?,
            position_embeddings: w
                .get_first(&n.of("embeddings.position_embeddings.weight"), &[cfg.max_position_embeddings, h])?,
            token_type_embeddings: w
                .get_first(&n.of("embeddings.token_type_embeddings.weight"), &[cfg.type_vocab_size, h])?,
            embeddings_norm: LayerNorm::load(w, &n, "embeddings.LayerNorm", h, eps)?,
            layers,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            act: Activation::parse(&cfg.hidden_act)?,
            hidden_size: h,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }

    /// `ids` and `mask` are `[batch, len]` (mask 1 for real tokens, 0 for padding); returns the
    /// last hidden states, `[batch, len, hidden]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("[batch, len]");
        let device = ids.device();
        let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
        let token_types = Tensor::zeros([b, t], (Kind::Int64, device));
        let x = Tensor::embedding(&self.word_embeddings, ids, -1, false, false)
            + Tensor::embedding(&self.position_embeddings, &positions, -1, false, false)
            + Tensor::embedding(&self.token_type_embeddings, &token_types, -1, false, false);
        let mut x = self.embeddings_norm.forward(&x);

        // Padding is excluded as a key; padded queries still compute something, which pooling
        // then ignores.
        let key_mask = mask.to_kind(Kind::Bool).view([b, 1, 1, t]);
        for layer in &self.layers {
            // [b, t, 3 * heads, head_dim] → [b, 3 * heads, t, head_dim]: q, k, v as views.
            let nh = self.num_heads;
            let qkv = layer.qkv.forward(&x).view([b, t, 3 * nh, self.head_dim]).transpose(1, 2);
            let (q, k, v) = (qkv.narrow(1, 0, nh), qkv.narrow(1, nh, nh), qkv.narrow(1, 2 * nh, nh));
            let attn = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&key_mask), 0.0, false, None, false);
            let attn = attn.transpose(1, 2).contiguous().view([b, t, self.num_heads * self.head_dim]);
            let h = layer.attention_norm.forward(&(layer.attention_output.forward(&attn) + &x));
            let ffn = layer.output.forward(&self.act.forward(&layer.intermediate.forward(&h)));
            x = layer.output_norm.forward(&(ffn + &h));
        }
        x
    }
}
