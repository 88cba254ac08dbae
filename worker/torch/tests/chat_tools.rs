//! Tools and tool-call history through the model's own chat template, against transformers'
//! `apply_chat_template(messages, tools=tools, add_generation_prompt=…)`: text and token ids of
//! every case in tests/data/tiny-qwen2-tools/tools_expected.json (Qwen2.5-Instruct's template,
//! the folder's own, and Llama 3.1 Instruct's beside it). Made by
//! tests/data/make_tools_reference.py.

mod common;

use std::path::PathBuf;

use common::*;
use switchyard_torch::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-qwen2-tools")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("tools_expected.json")).unwrap()).unwrap()
}

/// An OpenAI message as the api flattens it for the wire and the torch backend maps it:
/// `content: null` becomes "", each `tool_calls[]` keeps its id, function name and arguments
/// string.
fn from_openai(m: &serde_json::Value) -> ChatMessage {
    let tool_calls = m["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let f = &c["function"];
                    ToolCall::new(
                        c["id"].as_str().unwrap(),
                        f["name"].as_str().unwrap(),
                        f["arguments"].as_str().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ChatMessage {
        tool_calls,
        tool_call_id: m["tool_call_id"].as_str().map(Into::into),
        name: m["name"].as_str().map(Into::into),
        ..ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap_or(""))
    }
}

struct Case {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<serde_json::Value>>,
    add_generation_prompt: bool,
    rendered: String,
    input_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let expected = expected();
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_owned(),
            template: c["template"].as_str().unwrap().to_owned(),
            messages: c["messages"].as_array().unwrap().iter().map(from_openai).collect(),
            tools: c["tools"].as_array().cloned(),
            add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
            rendered: c["rendered"].as_str().unwrap().to_owned(),
            input_ids: serde_json::from_value(c["input_ids"].clone()).unwrap(),
        })
        .collect()
}

/// Equal texts, or a panic naming the case and the first place they part.
fn assert_same_text(case: &str, got: &str, want: &str) {
    if got == want {
        return;
    }
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map_or(got.len().min(want.len()), |((i, _), _)| i);
    let start = got[..at].char_indices().rev().nth(60).map_or(0, |(i, _)| i);
    panic!(
        "{case}: rendered text differs from transformers' at byte {at}\n  got:  {:?}\n  want: {:?}",
        &got[start..got.len().min(at + 80)],
        &want[start..want.len().min(at + 80)]
    );
}

#[test]
fn qwen25_template_renders_tools_and_tool_calls_as_transformers() {
    let engine = load(fixture(), None);
    let info = engine.info();
    assert!(info.has_chat_template);
    assert!(info.chat_template_supports_tools);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(engine.chat_template_source(), config["chat_template"].as_str());

    let cases: Vec<Case> = cases().into_iter().filter(|c| c.template == "qwen2.5").collect();
    assert_eq!(cases.len(), 11);
    for c in &cases {
        let rendered = engine.render_chat(&c.messages, c.tools.as_deref(), c.add_generation_prompt).unwrap();
        assert_same_text(&c.name, &rendered, &c.rendered);
        assert_eq!(engine.tokenize(&rendered, false).unwrap(), c.input_ids, "{}: token ids", c.name);
    }
}

#[test]
fn llama31_template_renders_tools_and_tool_calls_as_transformers() {
    let engine = load(fixture(), None);
    let template = std::fs::read_to_string(fixture().join("llama31_chat_template.jinja")).unwrap();
    let cases: Vec<Case> = cases().into_iter().filter(|c| c.template == "llama3.1").collect();
    assert_eq!(cases.len(), 4);
    for c in &cases {
        let rendered = switchyard_torch::testing::render_chat_template(
            &fixture(),
            &template,
            &c.messages,
            c.tools.as_deref(),
            c.add_generation_prompt,
        )
        .unwrap();
        assert_same_text(&c.name, &rendered, &c.rendered);
        assert_eq!(engine.tokenize(&rendered, false).unwrap(), c.input_ids, "{}: token ids", c.name);
    }
}

#[test]
fn tools_none_and_tools_empty_are_told_apart_where_the_template_does() {
    let by_name = |name: &str| cases().into_iter().find(|c| c.name == name).unwrap().rendered;
    // Qwen2.5 tests `{% if tools %}`; Llama 3.1 `tools is not none`.
    assert_eq!(by_name("no_tools_no_system"), by_name("tools_empty_list"));
    assert_ne!(by_name("llama31_tools_none"), by_name("llama31_tools_empty_list"));
    let engine = load(fixture(), None);
    let user = [ChatMessage::new("user", "hi")];
    assert_eq!(engine.render_chat(&user, None, true).unwrap(), engine.render_chat(&user, Some(&[]), true).unwrap());
}

#[test]
fn a_template_without_tools_does_not_claim_them() {
    let engine = load(tiny_llama(), None);
    assert!(engine.info().has_chat_template);
    assert!(!engine.info().chat_template_supports_tools);
    let source = engine.chat_template_source().unwrap();
    assert!(source.contains("messages") && !source.contains("tools"));
    // Its tools are ignored, as transformers ignores them.
    let user = [ChatMessage::new("user", "hi")];
    let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
    assert_eq!(engine.render_chat(&user, Some(&tools), true).unwrap(), engine.render_chat(&user, None, true).unwrap());
}

#[test]
fn the_tools_model_generates_after_a_prompt_with_tools() {
    let engine = load(fixture(), None);
    let case = cases().into_iter().find(|c| c.name == "text_and_call_then_answer").unwrap();
    let rendered = engine.render_chat(&case.messages, case.tools.as_deref(), true).unwrap();
    let prompt_tokens = engine.tokenize(&rendered, false).unwrap().len() as u32;
    assert!(prompt_tokens > 256, "longer than tiny-qwen2's own context: {prompt_tokens}");
    let out = run(&engine, GenerateRequest::new(Prompt::Chat(case.messages.clone()), greedy(4)));
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.ids().len(), 4);
    let out = run(&engine, text_prompt(&rendered, greedy(4)));
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.ids().len(), 4);
}
