//! Constrained decoding (JSON `response_format`, forced tool-call arguments) on real weights:
//! whatever a random-weight model would write, the answer is JSON of the schema, and the
//! forced answer opening and the tools reach the prompt.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};
use switchyard_torch::*;

fn tools_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-qwen2-tools")
}

fn constrained(schema: Option<&Value>, prompt: &str, params: SamplingParams) -> GenerateRequest {
    let mut req = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new("user", prompt)]), params);
    req.constraint = Some(Matcher::new(schema).expect("schema compiles"));
    req
}

#[test]
fn constrained_answers_are_json_of_the_schema() {
    let engine = load(tools_model(), None);
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
    for (i, prompt) in ["add two numbers", "what is 1 + 2?", "numbers please", "hello"].iter().enumerate() {
        // Greedy, and sampled with a seed: both end as an object of two integers.
        let sampled = SamplingParams {
            max_tokens: Some(200),
            temperature: Some(1.0),
            seed: Some(i as u64),
            ..Default::default()
        };
        for params in [greedy(200), sampled] {
            let out = run(&engine, constrained(Some(&schema), prompt, params));
            assert!(out.error.is_none(), "{:?}", out.error);
            assert_eq!(out.reason(), FinishReason::Stop, "{prompt}: {:?}", out.text);
            // Keys `a` and `b`, each an integer however long (a random model writes long ones).
            let object: serde_json::Map<String, Value> =
                serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{prompt}: {e}: {:?}", out.text));
            assert!(object.keys().eq(["a", "b"]), "{prompt}: {:?}", out.text);
            let numbers = out.text.split([':', ',', '}']).skip(1).step_by(2);
            assert!(numbers.clone().count() == 2, "{:?}", out.text);
            for n in numbers {
                let digits = n.trim().strip_prefix('-').unwrap_or(n.trim());
                assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{prompt}: {:?}", out.text);
            }
        }
    }
    // json_object: any object.
    let out = run(&engine, constrained(None, "an object", greedy(200)));
    if out.reason() == FinishReason::Stop {
        assert!(serde_json::from_str::<Value>(&out.text).unwrap().is_object(), "{:?}", out.text);
    } else {
        // A free-form object may run to max_tokens: what came is still a JSON prefix.
        assert_eq!(out.reason(), FinishReason::Length);
        assert!(out.text.starts_with('{'), "{:?}", out.text);
    }
    // An enum is written exactly.
    let choice =
        json!({"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["unit"]});
    let out = run(&engine, constrained(Some(&choice), "unit?", greedy(50)));
    let value: Value = serde_json::from_str(&out.text).unwrap();
    assert!(["celsius", "fahrenheit"].contains(&value["unit"].as_str().unwrap()), "{value}");
}

#[test]
fn the_answer_prefix_and_tools_reach_the_prompt() {
    let engine = load(tools_model(), None);
    let messages = vec![ChatMessage::new("user", "hi")];
    let tools = vec![json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}})];
    let rendered = engine.render_chat(&messages, Some(&tools), true).unwrap();
    assert!(rendered.contains("\"name\": \"add\""), "{rendered}");
    let prefix = "<tool_call>\n{\"name\": \"add\", \"arguments\": ";
    let mut req = GenerateRequest::new(Prompt::Chat(messages), greedy(4));
    req.tools = Some(tools);
    req.answer_prefix = prefix.into();
    let out = run(&engine, req);
    let prompt_ids = engine.tokenize(&format!("{rendered}{prefix}"), false).unwrap();
    assert_eq!(out.started, Some(prompt_ids.len() as u32), "the prompt is the rendered tools and the prefix");
}
