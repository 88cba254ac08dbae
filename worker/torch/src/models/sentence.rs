//! The sentence-transformers packaging around an encoder: `modules.json` lists the pipeline
//! (Transformer → Pooling → optional Normalize), `1_Pooling/config.json` picks the pooling,
//! `sentence_bert_config.json` the truncation length.

use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::config::{read_json, read_json_opt};
use crate::error::{Result, TorchError};

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Default, Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
    LastToken,
}

/// How token states become one sentence vector.
#[derive(Debug, Clone)]
pub(crate) struct SentencePipeline {
    pub pooling: Pooling,
    pub normalize: bool,
    /// Inputs are truncated to this many tokens, special tokens included.
    pub max_seq_length: Option<usize>,
}

impl SentencePipeline {
    /// Reads the sentence-transformers files; a bare encoder folder gets what
    /// sentence-transformers would build for it: mean pooling, no normalisation.
    pub fn load(dir: &Path) -> Result<SentencePipeline> {
        let max_seq_length =
            read_json_opt::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?.and_then(|c| c.max_seq_length);
        let Some(modules) = read_json_opt::<Vec<Module>>(&dir.join("modules.json"))? else {
            return Ok(SentencePipeline { pooling: Pooling::Mean, normalize: false, max_seq_length });
        };
        let mut pooling = None;
        let mut normalize = false;
        for m in &modules {
            match m.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Pooling" => {
                    let path = dir.join(&m.path).join("config.json");
                    let cfg: PoolingConfig = read_json(&path, "pooling config")?;
                    pooling = Some(Self::pooling_mode(&cfg, &path)?);
                }
                "Normalize" => normalize = true,
                other => {
                    return Err(TorchError::Unsupported(format!(
                        "sentence-transformers module {other:?} ({})",
                        m.kind
                    )));
                }
            }
        }
        Ok(SentencePipeline { pooling: pooling.unwrap_or(Pooling::Mean), normalize, max_seq_length })
    }

    fn pooling_mode(cfg: &PoolingConfig, path: &Path) -> Result<Pooling> {
        let modes = [
            (cfg.pooling_mode_mean_tokens, Some(Pooling::Mean)),
            (cfg.pooling_mode_cls_token, Some(Pooling::Cls)),
            (cfg.pooling_mode_max_tokens, Some(Pooling::Max)),
            (cfg.pooling_mode_mean_sqrt_len_tokens, Some(Pooling::MeanSqrtLen)),
            (cfg.pooling_mode_lasttoken, Some(Pooling::LastToken)),
            (cfg.pooling_mode_weightedmean_tokens, None),
        ];
        let on: Vec<_> = modes.iter().filter(|(on, _)| *on).map(|(_, m)| *m).collect();
        match on.as_slice() {
            [Some(mode)] => Ok(*mode),
            [] => Err(TorchError::invalid(path, "no pooling mode is enabled")),
            [None] => Err(TorchError::Unsupported("weighted-mean pooling".into())),
            _ => Err(TorchError::Unsupported(format!(
                "several pooling modes at once (concatenated): {}",
                path.display()
            ))),
        }
    }

    /// `hidden` `[batch, len, dim]`, `mask` `[batch, len]` (1 = token) → `[batch, dim]` f32.
    pub fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        let hidden = hidden.to_kind(Kind::Float);
        let mask_f = mask.to_kind(Kind::Float).unsqueeze(-1);
        let counts = mask_f.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
        let pooled = match self.pooling {
            Pooling::Mean => (&hidden * &mask_f).sum_dim_intlist(1, false, Kind::Float) / counts,
            Pooling::MeanSqrtLen => (&hidden * &mask_f).sum_dim_intlist(1, false, Kind::Float) / counts.sqrt(),
            Pooling::Cls => hidden.select(1, 0),
            Pooling::Max => {
                let masked = hidden.masked_fill(&mask_f.eq(0.0), -1e9);
                masked.amax(1, false)
            }
            Pooling::LastToken => {
                // Right padding: the last real token is at count - 1.
                let last = mask.to_kind(Kind::Int64).sum_dim_intlist(1, false, Kind::Int64) - 1;
                let dim = hidden.size()[2];
                let index = last.view([-1, 1, 1]).expand([-1, 1, dim], false);
                hidden.gather(1, &index, false).squeeze_dim(1)
            }
        };
        if self.normalize {
            let norm = pooled.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        }
    }
}
