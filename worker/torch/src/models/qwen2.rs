//! Qwen2 (Qwen team 2024) — `Qwen2ForCausalLM`, also used by Qwen2.5.
//!
//! The Llama block (see `llama.rs`) with one change: the query, key and value projections
//! carry biases (the output projection and the MLP do not). Small Qwen2 models tie the LM
//! head to the token embeddings.
//!
//! Qwen2's optional sliding-window attention (`use_sliding_window`, off in every released
//! checkpoint) is not implemented; a config that turns it on is refused.

use serde::Deserialize;

use super::layers::{Activation, DecoderSpec};
use crate::config::RopeFields;
use crate::error::{Result, TorchError};

/// `config.json` of a Qwen2 checkpoint, field for field.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Qwen2Config {
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
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_sliding_window: bool,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> i64 {
    32768
}
fn default_hidden_act() -> String {
    "silu".to_owned()
}

impl Qwen2Config {
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_sliding_window {
            return Err(TorchError::Unsupported("Qwen2 with use_sliding_window: true".into()));
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
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            max_position_embeddings: self.max_position_embeddings,
        };
        spec.validate()?;
        Ok(spec)
    }
}
