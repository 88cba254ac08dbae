//! The other supported layouts against transformers: tiny random Qwen2 (q/k/v biases, tied
//! embeddings, 4:1 GQA, bf16 on disk), Llama with llama3 RoPE scaling (explicit head_dim,
//! tied, f16 on disk) and Mistral (4:1 GQA, f32), all saved by transformers 5 (config with
//! `rope_parameters` and `dtype`, template in `chat_template.jinja`). Made by
//! tests/data/make_tiny_variants.py.

mod common;

use std::path::PathBuf;

use common::*;
use switchyard_torch::*;

fn variant(name: &str) -> (PathBuf, serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let expected = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn check(name: &str, architecture: &str) {
    let (dir, expected) = variant(name);
    let tol = expected["suggested_tolerance"]["logits_abs"].as_f64().unwrap() as f32;
    let engine = load(dir.clone(), None);
    assert_eq!(engine.info().architecture, architecture);
    assert_eq!(engine.info().dtype, DType::F32, "auto dtype on CPU");
    assert!(engine.info().has_chat_template, "chat_template.jinja");

    let prompts = expected["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        assert_eq!(engine.tokenize(text, true).unwrap(), ids);

        let logits = switchyard_torch::testing::last_logits(&dir, DType::F32, &ids).unwrap();
        let want: Vec<f32> = serde_json::from_value(p["first_step_logits"].clone()).unwrap();
        let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: max |Δlogit| {worst:e} at {} prompt tokens", ids.len());
        assert!(worst <= tol, "{name}: max |Δlogit| {worst} at {} prompt tokens", ids.len());

        let greedy_ids: Vec<u32> = serde_json::from_value(p["greedy_new_ids"].clone()).unwrap();
        let params = SamplingParams { ignore_eos: true, ..greedy(greedy_ids.len() as u32) };
        let out = run(&engine, text_prompt(text, params));
        assert_eq!(out.ids(), greedy_ids, "{name}: greedy ids after {} prompt tokens", ids.len());
    }
    for c in expected["chat"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
        let rendered = engine.render_chat(&messages, None, c["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap());
        let ids: Vec<u32> = serde_json::from_value(c["input_ids_add_special_tokens_false"].clone()).unwrap();
        assert_eq!(engine.tokenize(&rendered, false).unwrap(), ids);
    }
}

#[test]
fn qwen2_biases_tied_bf16_checkpoint() {
    check("tiny-qwen2", "Qwen2ForCausalLM");
}

#[test]
fn llama3_rope_scaling_f16_checkpoint() {
    check("tiny-llama3-rope", "LlamaForCausalLM");
}

#[test]
fn mistral_checkpoint() {
    check("tiny-mistral", "MistralForCausalLM");
}

#[test]
fn rope_scaling_matters_past_the_original_context() {
    // Without the llama3 scaling the long prompt's logits move well past the tolerance,
    // so the test above really checks the scaled frequencies.
    let (dir, expected) = variant("tiny-llama3-rope");
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 500000.0});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let p = &expected["prompts"][1];
    let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(p["first_step_logits"].clone()).unwrap();
    let unscaled = switchyard_torch::testing::last_logits(tmp.path(), DType::F32, &ids).unwrap();
    let worst = unscaled.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst > 0.05, "unscaled RoPE is within {worst} of the scaled reference");
}
