//! The small JSON files of a Hugging Face model folder, device and dtype choice.
//!
//! Architecture configs (`config.json`) live next to their forward pass in `models/`; what is
//! here is shared by every architecture: the generic header of `config.json`, RoPE settings in
//! both the transformers-4 and transformers-5 layouts, `generation_config.json` and
//! `tokenizer_config.json`.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tch::{Device, Kind};

use crate::error::{Result, TorchError};

/// Reads and parses a JSON file; a missing file is [`TorchError::MissingFile`] naming `what`,
/// a malformed one names the JSON path of the bad field.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TorchError::MissingFile { what, path: path.to_owned() },
        _ => TorchError::Io { path: path.to_owned(), source: e },
    })?;
    parse_json(path, &text)
}

pub(crate) fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at == "." { TorchError::invalid(path, inner) } else { TorchError::invalid(path, format!("{at}: {inner}")) }
    })
}

/// Reads an optional JSON file: `Ok(None)` when it is absent.
pub(crate) fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_json(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TorchError::Io { path: path.to_owned(), source: e }),
    }
}

/// The part of `config.json` every architecture shares; used to pick the architecture.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigHeader {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    /// transformers 5 writes `dtype`, transformers 4 `torch_dtype`.
    #[serde(default, alias = "torch_dtype")]
    pub dtype: Option<String>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// `eos_token_id` may be one id, a list or null.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `generation_config.json`: stop ids and the sampling defaults the model's authors chose.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
}

/// A special token in `tokenizer_config.json`: a plain string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenSpec {
    Text(String),
    Added { content: String },
}

impl TokenSpec {
    pub fn content(&self) -> &str {
        match self {
            TokenSpec::Text(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

/// `chat_template` is a string, or (older files) a list of named templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ChatTemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedTemplate {
    pub name: String,
    pub template: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AddedTokenEntry {
    pub content: String,
    #[serde(default)]
    pub special: bool,
}

/// `tokenizer_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TokenizerConfig {
    #[serde(default)]
    pub chat_template: Option<ChatTemplateSpec>,
    #[serde(default)]
    pub bos_token: Option<TokenSpec>,
    #[serde(default)]
    pub eos_token: Option<TokenSpec>,
    #[serde(default)]
    pub unk_token: Option<TokenSpec>,
    #[serde(default)]
    pub pad_token: Option<TokenSpec>,
    #[serde(default)]
    pub sep_token: Option<TokenSpec>,
    #[serde(default)]
    pub cls_token: Option<TokenSpec>,
    #[serde(default)]
    pub mask_token: Option<TokenSpec>,
    #[serde(default)]
    pub added_tokens_decoder: std::collections::BTreeMap<String, AddedTokenEntry>,
}

impl TokenizerConfig {
    /// The template transformers would use: the string, or the one named "default".
    pub fn template(&self) -> Option<String> {
        match self.chat_template.as_ref()? {
            ChatTemplateSpec::One(t) => Some(t.clone()),
            ChatTemplateSpec::Named(list) => {
                list.iter().find(|t| t.name == "default").or(list.first()).map(|t| t.template.clone())
            }
        }
    }
}

/// Rotary position embedding settings, normalised from either config layout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The RoPE fields of `config.json`, to be `#[serde(flatten)]`ed into an architecture config.
///
/// transformers 4 writes `rope_theta` and `rope_scaling` (`type` or `rope_type`); transformers 5
/// writes one `rope_parameters` object holding `rope_type`, `rope_theta` and the scaling fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RopeFields {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

impl RopeFields {
    pub fn resolve(&self, default_theta: f64) -> Result<RopeConfig> {
        // transformers 5 keys per-layer-type parameters by layer type in some models.
        let params = self.rope_parameters.as_ref().map(|p| p.get("full_attention").unwrap_or(p));
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(default_theta);
        let scaling = params.or(self.rope_scaling.as_ref()).filter(|v| !v.is_null());
        let Some(scaling) = scaling else {
            return Ok(RopeConfig { theta, scaling: RopeScaling::None });
        };
        let kind =
            scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        let num = |key: &str| -> Result<f64> {
            scaling
                .get(key)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| TorchError::Unsupported(format!("rope scaling {kind:?} without a numeric {key:?}")))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(TorchError::Unsupported(format!(
                    "rope scaling type {other:?} (supported: default, linear, llama3)"
                )));
            }
        };
        Ok(RopeConfig { theta, scaling })
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`, and for CUDA makes sure libtorch can actually use it.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let device = match spec.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(TorchError::InvalidDevice(spec)),
        },
    };
    load_cuda_library();
    let count = tch::Cuda::device_count();
    if !tch::Cuda::is_available() || device as i64 >= count {
        return Err(TorchError::DeviceUnavailable {
            device: spec,
            reason: format!("libtorch sees {count} CUDA device(s)"),
        });
    }
    Ok(Device::Cuda(device))
}

/// rustc links with `--as-needed` and nothing in Rust calls into `libtorch_cuda.so`, so it is
/// usually not loaded and libtorch reports no CUDA. Loading it at run time registers the CUDA
/// backend (its static initialisers do), and keeps CPU-only machines, whose libtorch lacks
/// the CUDA libraries it needs, able to start the same binary.
fn load_cuda_library() {
    use std::ffi::CString;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut candidates = Vec::new();
        if let Some(dir) = option_env!("SWITCHYARD_LIBTORCH_LIB") {
            candidates.push(format!("{dir}/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".to_owned());
        for name in candidates {
            let Ok(c) = CString::new(name.clone()) else { continue };
            // SAFETY: dlopen with a valid C string; the handle is intentionally kept for the
            // life of the process.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                tracing::debug!(library = %name, "loaded libtorch CUDA backend");
                return;
            }
        }
        // SAFETY: dlerror returns a thread-local C string or null.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() { String::new() } else { std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned() }
        };
        tracing::warn!(error = %why, "could not load libtorch_cuda.so");
    });
}

/// Weight dtype: f32, bf16 or f16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::BF16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }

    /// Accepts the names people and config files use. `None` for `auto`.
    pub fn parse(spec: &str) -> Result<Option<DType>> {
        match spec.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(None),
            "f32" | "float32" | "float" | "fp32" => Ok(Some(DType::F32)),
            "bf16" | "bfloat16" => Ok(Some(DType::BF16)),
            "f16" | "float16" | "half" | "fp16" => Ok(Some(DType::F16)),
            _ => Err(TorchError::InvalidDtype(spec.to_owned())),
        }
    }

    /// The compute dtype when none was asked for: the checkpoint's own on GPUs, but f32 on
    /// CPUs, where half-precision matmuls are slow and lose accuracy for no memory win that
    /// matters at the sizes one runs there.
    pub(crate) fn auto(device: Device, config_dtype: Option<&str>) -> DType {
        if device == Device::Cpu {
            return DType::F32;
        }
        config_dtype.and_then(|d| DType::parse(d).ok().flatten()).unwrap_or(DType::F32)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(json: &str) -> Result<RopeConfig> {
        let f: RopeFields = serde_json::from_str(json).unwrap();
        f.resolve(10000.0)
    }

    #[test]
    fn rope_layouts() {
        assert_eq!(
            rope(r#"{"rope_theta": 500000.0, "rope_scaling": null}"#).unwrap(),
            RopeConfig { theta: 500000.0, scaling: RopeScaling::None }
        );
        let v4 = rope(
            r#"{"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        let v5 = rope(
            r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        assert_eq!(v4, v5);
        assert_eq!(v4.theta, 500000.0);
        assert!(matches!(v4.scaling, RopeScaling::Llama3 { factor: 32.0, .. }));
        assert_eq!(
            rope(r#"{"rope_scaling": {"type": "linear", "factor": 2.0}}"#).unwrap().scaling,
            RopeScaling::Linear { factor: 2.0 }
        );
        assert_eq!(
            rope(r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}"#).unwrap(),
            RopeConfig { theta: 1e6, scaling: RopeScaling::None }
        );
        let err = rope(r#"{"rope_scaling": {"type": "yarn", "factor": 4.0}}"#).unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }

    #[test]
    fn devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("tpu"), Err(TorchError::InvalidDevice(_))));
        assert!(matches!(parse_device("cuda:x"), Err(TorchError::InvalidDevice(_))));
        assert_eq!(DType::parse("bfloat16").unwrap(), Some(DType::BF16));
        assert_eq!(DType::parse("auto").unwrap(), None);
        assert!(DType::parse("int4").is_err());
        assert_eq!(DType::auto(Device::Cpu, Some("bfloat16")), DType::F32);
        assert_eq!(DType::auto(Device::Cuda(0), Some("bfloat16")), DType::BF16);
    }

    #[test]
    fn token_ids_forms() {
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [128001, 128009], "temperature": 0.6}"#).unwrap();
        assert_eq!(g.eos_token_id.unwrap().to_vec(), vec![128001, 128009]);
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(g.eos_token_id.unwrap().to_vec(), vec![2]);
    }
}
