//! models/tiny-llama against what transformers produced for it (expected.json).

mod common;

use common::*;
use switchyard_torch::*;

#[test]
fn prompt_tokens_match_the_reference_tokenizer() {
    let engine = load(tiny_llama(), None);
    let expected = expected();
    for p in expected["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        assert_eq!(engine.tokenize(p["text"].as_str().unwrap(), true).unwrap(), ids, "{}", p["text"]);
    }
}

#[test]
fn greedy_ids_reproduce_transformers_exactly() {
    let engine = load(tiny_llama(), None);
    let expected = expected();
    let prompts = expected["prompts"].as_array().unwrap();
    assert!(!prompts.is_empty());
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(p["greedy_new_ids"].clone()).unwrap();
        let out = run(&engine, text_prompt(text, greedy(24)));
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!(out.ids(), want, "greedy ids for {text:?}");
        let (reason, prompt_tokens, completion_tokens) = out.finish.unwrap();
        let input_ids = p["input_ids"].as_array().unwrap().len() as u32;
        assert_eq!(prompt_tokens, input_ids);
        assert_eq!(completion_tokens, 24);
        assert_eq!(
            reason,
            if p["stopped_on_eos"].as_bool().unwrap() { FinishReason::Stop } else { FinishReason::Length }
        );
        // The streamed text is the text of the ids, decoded at once.
        assert_eq!(out.text, engine.detokenize(&want).unwrap(), "streamed text for {text:?}");
        assert_eq!(out.text, p["greedy_new_text"].as_str().unwrap());
    }
}

#[test]
fn first_step_logits_within_tolerance() {
    let expected = expected();
    let tol = expected["suggested_tolerance"]["logits_abs"].as_f64().unwrap() as f32;
    for p in expected["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        let logits = switchyard_torch::testing::last_logits(&tiny_llama(), DType::F32, &ids).unwrap();
        let want: Vec<f32> = serde_json::from_value(p["first_step_logits"].clone()).unwrap();
        assert_eq!(logits.len(), want.len());
        let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("max |Δlogit| {worst:e} for {}", p["text"]);
        assert!(worst <= tol, "max |Δlogit| {worst} > {tol} for {}", p["text"]);

        let top_ids: Vec<usize> = serde_json::from_value(p["first_step_top5"]["ids"].clone()).unwrap();
        let top_logits: Vec<f32> = serde_json::from_value(p["first_step_top5"]["logits"].clone()).unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        assert_eq!(&order[..5], &top_ids[..], "top-5 ids for {}", p["text"]);
        for (id, want) in top_ids.iter().zip(top_logits) {
            assert!((logits[*id] - want).abs() <= tol, "logit of {id}: {} vs {want}", logits[*id]);
        }
    }
}

#[test]
fn chat_template_text_and_ids_match() {
    let engine = load(tiny_llama(), None);
    assert!(engine.info().has_chat_template);
    let expected = expected();
    let chats = expected["chat"].as_array().unwrap();
    assert!(!chats.is_empty());
    for c in chats {
        let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
        let add = c["add_generation_prompt"].as_bool().unwrap();
        let rendered = engine.render_chat(&messages, None, add).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap());
        let ids: Vec<u32> = serde_json::from_value(c["input_ids_add_special_tokens_false"].clone()).unwrap();
        assert_eq!(engine.tokenize(&rendered, false).unwrap(), ids);
    }
}

#[test]
fn chat_prompt_is_not_given_a_second_bos() {
    let engine = load(tiny_llama(), None);
    let expected = expected();
    let c = &expected["chat"][0];
    assert!(c["add_generation_prompt"].as_bool().unwrap());
    let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
    let ids = c["input_ids_add_special_tokens_false"].as_array().unwrap();
    let out = run(&engine, GenerateRequest::new(Prompt::Chat(messages), greedy(4)));
    assert_eq!(out.started, Some(ids.len() as u32));
    assert_eq!(out.ids().len(), 4);
}

#[test]
fn model_info_is_real() {
    let engine = load(tiny_llama(), None);
    let info = engine.info();
    assert_eq!(info.kind, ModelKind::Decoder);
    assert_eq!(info.name, "tiny-llama");
    assert_eq!(info.architecture, "LlamaForCausalLM");
    assert_eq!(info.context_length, 256);
    assert_eq!(info.eos_token_ids, vec![2]);
    assert_eq!(info.dtype, DType::F32);
    assert_eq!(info.device, "cpu");
}
