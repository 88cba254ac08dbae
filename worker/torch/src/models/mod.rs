//! Model architectures, one file each, and the dispatch from `config.json`'s
//! `architectures` to them.

pub(crate) mod bert;
pub(crate) mod layers;
pub(crate) mod llama;
pub(crate) mod qwen2;
pub(crate) mod sentence;

use std::path::Path;

use tch::{Device, Tensor};

use crate::config::{ConfigHeader, DType, parse_json};
use crate::error::{Result, TorchError};
use crate::weights::Weights;
pub(crate) use layers::BatchCache;

/// The architectures this crate runs, as `config.json` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "BertModel"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Llama,
    Qwen2,
    Bert,
}

fn arch_of(header: &ConfigHeader) -> Result<(Arch, String)> {
    let by_name = |name: &str| match name {
        "LlamaForCausalLM" | "MistralForCausalLM" => Some(Arch::Llama),
        "Qwen2ForCausalLM" => Some(Arch::Qwen2),
        "BertModel" | "BertForMaskedLM" | "BertForPreTraining" => Some(Arch::Bert),
        _ => None,
    };
    if let Some(name) = header.architectures.first() {
        return by_name(name).map(|a| (a, name.clone())).ok_or_else(|| unsupported(name));
    }
    // Some encoder exports omit `architectures`; fall back on `model_type`.
    let model_type = header.model_type.as_deref().unwrap_or("(none)");
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "bert" => Arch::Bert,
        other => return Err(unsupported(&format!("model_type {other}"))),
    };
    Ok((arch, model_type.to_owned()))
}

fn unsupported(name: &str) -> TorchError {
    TorchError::UnsupportedArchitecture { name: name.to_owned(), supported: SUPPORTED_ARCHITECTURES.join(", ") }
}

/// A decoder-only language model.
pub(crate) struct Decoder {
    net: llama::Llama,
    pub context_length: usize,
    /// Bytes of key/value cache one position takes, all layers.
    pub kv_bytes_per_token: usize,
}

impl Decoder {
    /// Prefills each row from an empty cache in one forward pass; the f32 logits of each
    /// row's last position (`[rows, vocab]`) and the rows' cache.
    pub fn prefill(&self, rows: &[&[u32]]) -> (Tensor, BatchCache) {
        self.net.prefill(rows)
    }

    /// One decoding step of every row of `cache`; f32 logits `[rows, vocab]`.
    pub fn decode(&self, ids: &[u32], cache: &mut BatchCache) -> Tensor {
        self.net.decode(ids, cache)
    }
}

/// A sentence encoder with its pooling.
pub(crate) struct Encoder {
    pub net: bert::Bert,
    pub pipeline: sentence::SentencePipeline,
    pub context_length: usize,
}

pub(crate) enum Model {
    Decoder(Decoder),
    Encoder(Encoder),
}

pub(crate) struct Loaded {
    pub model: Model,
    pub architecture: String,
    pub dtype: DType,
    pub header: ConfigHeader,
}

/// Loads the network of the model folder `dir` (config.json and safetensors).
pub(crate) fn load(dir: &Path, device: Device, dtype: Option<DType>) -> Result<Loaded> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TorchError::MissingFile { what: "config.json", path: config_path.clone() },
        _ => TorchError::Io { path: config_path.clone(), source: e },
    })?;
    let header: ConfigHeader = parse_json(&config_path, &text)?;
    let (arch, architecture) = arch_of(&header)?;

    // Parse the architecture's config before touching the weights so a bad config is reported
    // as such, not as a missing tensor.
    enum Parsed {
        Decoder(layers::DecoderSpec),
        Bert(bert::BertConfig),
    }
    let parsed = match arch {
        Arch::Llama => Parsed::Decoder(parse_json::<llama::LlamaConfig>(&config_path, &text)?.spec()?),
        Arch::Qwen2 => Parsed::Decoder(parse_json::<qwen2::Qwen2Config>(&config_path, &text)?.spec()?),
        Arch::Bert => Parsed::Bert(parse_json(&config_path, &text)?),
    };

    // Resolve `auto` only once the weights are open: config.json may not state a dtype.
    let mut weights = Weights::open(dir, device, dtype.unwrap_or(DType::F32))?;
    let dtype = dtype.unwrap_or_else(|| {
        let stated = header.dtype.clone().or_else(|| weights.disk_dtype().map(|d| d.name().to_owned()));
        DType::auto(device, stated.as_deref())
    });
    weights.set_dtype(dtype);

    let model = match parsed {
        Parsed::Decoder(spec) => {
            let net = llama::Llama::load(&spec, &weights, device)?;
            let elem = dtype.kind().elt_size_in_bytes();
            let kv_bytes_per_token = (spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim) as usize * elem;
            Model::Decoder(Decoder { net, context_length: spec.max_position_embeddings as usize, kv_bytes_per_token })
        }
        Parsed::Bert(cfg) => {
            let net = bert::Bert::load(&cfg, &weights)?;
            let pipeline = sentence::SentencePipeline::load(dir)?;
            let max_positions = net.max_position_embeddings as usize;
            let context_length = pipeline.max_seq_length.unwrap_or(max_positions).min(max_positions);
            Model::Encoder(Encoder { net, pipeline, context_length })
        }
    };
    Ok(Loaded { model, architecture, dtype, header })
}
