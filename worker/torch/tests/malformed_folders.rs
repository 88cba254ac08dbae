//! Broken model folders, built from the tiny-llama fixture in temp dirs, give errors that say
//! what is wrong.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use safetensors::tensor::{Dtype, TensorView};
use switchyard_torch::*;

fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> TorchError {
    Engine::load(EngineOptions::new(dir)).expect_err("a broken folder must not load")
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// Rewrites model.safetensors with `edit` applied to the (name → (dtype, shape, bytes)) map.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn missing_config_json() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, TorchError::MissingFile { what: "config.json", .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_eq!(err.code(), "model_load_failed");
}

#[test]
fn missing_folder_weights_and_tokenizer() {
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");

    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, TorchError::MissingFile { what: "tokenizer.json", .. }), "{err:?}");
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = copy_fixture();
    edit_config(dir.path(), |c| c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]));
    let err = load_err(dir.path());
    assert!(matches!(err, TorchError::UnsupportedArchitecture { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("GPTNeoXForCausalLM"), "{msg}");
    assert!(msg.contains("LlamaForCausalLM") && msg.contains("Qwen2ForCausalLM"), "{msg}");
}

#[test]
fn tensor_shape_mismatch_names_tensor_and_shapes() {
    let dir = copy_fixture();
    let name = "model.layers.1.self_attn.k_proj.weight";
    edit_weights(dir.path(), |t| {
        // [32, 64] → [16, 64]: as if the config had the wrong num_key_value_heads.
        let (_, shape, bytes) = t.get_mut(name).unwrap();
        assert_eq!(shape, &vec![32, 64]);
        *shape = vec![16, 64];
        bytes.truncate(16 * 64 * 4);
    });
    let err = load_err(dir.path());
    match &err {
        TorchError::ShapeMismatch { name: n, expected, actual } => {
            assert_eq!(n, name);
            assert_eq!(expected, &vec![32, 64]);
            assert_eq!(actual, &vec![16, 64]);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("[32, 64]") && msg.contains("[16, 64]"), "{msg}");
}

#[test]
fn config_that_disagrees_with_weights() {
    let dir = copy_fixture();
    edit_config(dir.path(), |c| c["intermediate_size"] = serde_json::json!(96));
    let err = load_err(dir.path());
    let msg = err.to_string();
    assert!(matches!(err, TorchError::ShapeMismatch { .. }), "{err:?}");
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[96, 64]"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture();
    edit_weights(dir.path(), |t| {
        t.remove("lm_head.weight");
    });
    let err = load_err(dir.path());
    assert!(matches!(&err, TorchError::MissingTensor { name } if name == "lm_head.weight"), "{err:?}");
}

#[test]
fn malformed_config_names_the_field() {
    let dir = copy_fixture();
    edit_config(dir.path(), |c| c["hidden_size"] = serde_json::json!("sixty-four"));
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains("config.json") && msg.contains("hidden_size"), "{msg}");
}

#[test]
fn bad_device_and_dtype() {
    let err = Engine::load(EngineOptions { device: "tpu:0".into(), ..EngineOptions::new(tiny_llama()) }).unwrap_err();
    assert!(matches!(err, TorchError::InvalidDevice(_)), "{err:?}");
    let err =
        Engine::load(EngineOptions { dtype: Some("int3".into()), ..EngineOptions::new(tiny_llama()) }).unwrap_err();
    assert!(matches!(err, TorchError::InvalidDtype(_)), "{err:?}");
}

/// The same checkpoint split into shards with an index, bf16 on disk, a transformers-5
/// config (`rope_parameters`, `dtype`) and tied embeddings: all load, and the shards give
/// the same logits as the single file.
#[test]
fn sharded_bf16_transformers5_tied_layout() {
    let ids = [1u32, 300, 455, 370, 273];
    let reference = switchyard_torch::testing::last_logits(&tiny_llama(), DType::F32, &ids).unwrap();

    let dir = copy_fixture();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(&file)).unwrap();
        for n in part.iter() {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    edit_config(dir.path(), |c| {
        let obj = c.as_object_mut().unwrap();
        obj.remove("rope_theta");
        obj.remove("rope_scaling");
        obj.remove("torch_dtype");
        obj.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}));
        obj.insert("dtype".into(), "float32".into());
    });
    let sharded = switchyard_torch::testing::last_logits(dir.path(), DType::F32, &ids).unwrap();
    assert_eq!(sharded, reference, "shards + v5 config must equal the single file");

    // A different rope_theta in rope_parameters is honoured (the logits move).
    edit_config(dir.path(), |c| c["rope_parameters"]["rope_theta"] = 500.0.into());
    let moved = switchyard_torch::testing::last_logits(dir.path(), DType::F32, &ids).unwrap();
    assert_ne!(moved, reference);

    // bf16 on disk, loaded as f32: close to the f32 original.
    let dir = copy_fixture();
    edit_weights(dir.path(), |t| {
        for (dtype, _, bytes) in t.values_mut() {
            assert_eq!(*dtype, Dtype::F32);
            *bytes = bytes
                .chunks_exact(4)
                .flat_map(|c| {
                    let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    // Round to nearest even, like torch's .to(bfloat16).
                    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
                    ((rounded >> 16) as u16).to_le_bytes()
                })
                .collect();
            *dtype = Dtype::BF16;
        }
    });
    let from_bf16 = switchyard_torch::testing::last_logits(dir.path(), DType::F32, &ids).unwrap();
    let worst = from_bf16.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.5, "bf16-on-disk logits differ by {worst}");
    let engine = Engine::load(EngineOptions::new(dir.path())).unwrap();
    assert_eq!(engine.info().dtype, DType::F32, "auto on CPU computes in f32");

    // Tied embeddings: lm_head comes from embed_tokens (and a stray lm_head is ignored).
    let dir = copy_fixture();
    edit_config(dir.path(), |c| c["tie_word_embeddings"] = true.into());
    edit_weights(dir.path(), |t| {
        t.remove("lm_head.weight");
    });
    let tied = switchyard_torch::testing::last_logits(dir.path(), DType::F32, &ids).unwrap();
    assert_eq!(tied.len(), reference.len());
    assert_ne!(tied, reference, "tied head must differ from the fixture's untied one");
}
