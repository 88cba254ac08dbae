//! An operator's prompt settings on models/tiny-llama (`--system-prompt`, `--chat-template`,
//! `--generation-defaults`): each is compared with the same model without it, asked for the
//! same thing explicitly — the system prompt with a request's own system message, the
//! defaults with a request's own parameters.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;
use common::*;
use switchyard_schemas as wire;
use switchyard_torch::*;
use switchyard_worker::Backend;

const FOX: &str = "The quick brown fox";
const SYSTEM: &str = "You answer in one short sentence.";

fn load_with(prompt: PromptSettings) -> Engine {
    Engine::load(EngineOptions { prompt, ..EngineOptions::new(tiny_llama()) }).expect("model loads")
}

fn with_system_prompt(system: &str) -> PromptSettings {
    PromptSettings { system_prompt: Some(system.into()), ..Default::default() }
}

fn with_defaults(defaults: GenerationDefaults) -> PromptSettings {
    PromptSettings { generation_defaults: defaults, ..Default::default() }
}

fn chat(messages: &[(&str, &str)], params: SamplingParams) -> GenerateRequest {
    GenerateRequest::new(Prompt::Chat(messages.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()), params)
}

fn messages(list: &[(&str, &str)]) -> Vec<ChatMessage> {
    list.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

/// `switchyard worker torch` flags, parsed as the binary parses them.
fn worker_args(extra: &[&str]) -> TorchWorkerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        torch: TorchWorkerArgs,
    }
    let path = tiny_llama();
    let mut argv = vec!["x", "--model-path", path.to_str().unwrap()];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("flags parse").torch
}

fn load_error(extra: &[&str]) -> String {
    match TorchBackend::load(&worker_args(extra)) {
        Ok(_) => panic!("{extra:?} should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_system_prompt_is_rendered_only_when_the_request_has_no_system_message() {
    let plain = load(tiny_llama(), None);
    let engine = load_with(with_system_prompt(SYSTEM));
    let user = messages(&[("user", "Hello!")]);

    // Without a system message: as if the client had sent the system prompt itself.
    let rendered = engine.render_chat(&user, None, true).unwrap();
    let explicit = plain.render_chat(&messages(&[("system", SYSTEM), ("user", "Hello!")]), None, true).unwrap();
    assert_eq!(rendered, explicit);
    assert!(rendered.contains(SYSTEM), "{rendered:?}");
    assert_ne!(rendered, plain.render_chat(&user, None, true).unwrap());

    // A request's own system or developer message: the system prompt stays out.
    for role in ["system", "developer"] {
        let own = messages(&[(role, "Mine."), ("user", "Hello!")]);
        let rendered = engine.render_chat(&own, None, true).unwrap();
        assert_eq!(rendered, plain.render_chat(&own, None, true).unwrap(), "{role}");
        assert!(!rendered.contains(SYSTEM), "{role}: {rendered:?}");
    }

    // The generation sees the same prompt: prompt_tokens and greedy text as the explicit one.
    let alone = run(&engine, chat(&[("user", "Hello!")], greedy(8)));
    let explicit = run(&plain, chat(&[("system", SYSTEM), ("user", "Hello!")], greedy(8)));
    let bare = run(&plain, chat(&[("user", "Hello!")], greedy(8)));
    assert_eq!(alone.started, explicit.started);
    assert!(alone.started.unwrap() > bare.started.unwrap(), "{alone:?} vs {bare:?}");
    assert_eq!(alone.ids(), explicit.ids());
    let own = run(&engine, chat(&[("system", "Mine."), ("user", "Hello!")], greedy(8)));
    let own_plain = run(&plain, chat(&[("system", "Mine."), ("user", "Hello!")], greedy(8)));
    assert_eq!(own.started, own_plain.started);
    assert_eq!(own.ids(), own_plain.ids());

    // A completion prompt is used as it is.
    let text = run(&engine, text_prompt(FOX, greedy(8)));
    let text_plain = run(&plain, text_prompt(FOX, greedy(8)));
    assert_eq!(text.started, text_plain.started);
    assert_eq!(text.ids(), text_plain.ids());
}

/// A template no model ships, so its text shows it was used.
const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}[ANSWER]{% endif %}";

#[test]
fn a_chat_template_file_replaces_the_folder_s() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("template.jinja");
    std::fs::write(&file, TEMPLATE).unwrap();
    let backend =
        TorchBackend::load(&worker_args(&["--chat-template", file.to_str().unwrap(), "--system-prompt", SYSTEM]))
            .unwrap();
    let engine = backend.engine();
    assert_eq!(engine.chat_template_source(), Some(TEMPLATE));
    assert_eq!(
        engine.render_chat(&messages(&[("user", "Hi")]), None, true).unwrap(),
        format!("<s>[SYSTEM] {SYSTEM}\n[USER] Hi\n[ANSWER]")
    );
    assert_eq!(
        engine.render_chat(&messages(&[("system", "Own."), ("user", "Hi")]), None, false).unwrap(),
        "<s>[SYSTEM] Own.\n[USER] Hi\n"
    );
    // The template's prompt is what the model reads: the same tokens as that text completed.
    let plain = load(tiny_llama(), None);
    let chatted = run(engine, chat(&[("user", "Hi")], greedy(8)));
    let completed = run(&plain, text_prompt(&format!("[SYSTEM] {SYSTEM}\n[USER] Hi\n[ANSWER]"), greedy(8)));
    assert_eq!(chatted.started, completed.started);
    assert_eq!(chatted.ids(), completed.ids());
    // It does nothing with tools: the card says so.
    assert!(!backend.models()[0].supports.tools);
}

#[test]
fn a_tools_template_given_as_a_file_serves_tools_with_the_system_prompt() {
    let tools_dir = repo_root().join("worker/torch/tests/data/tiny-qwen2-tools");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tools_dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let qwen_template = cfg["chat_template"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qwen.jinja");
    std::fs::write(&file, qwen_template).unwrap();

    let backend =
        TorchBackend::load(&worker_args(&["--chat-template", file.to_str().unwrap(), "--system-prompt", SYSTEM]))
            .unwrap();
    assert!(!load(tiny_llama(), None).info().chat_template_supports_tools, "the folder's own template has no tools");
    assert!(backend.engine().info().chat_template_supports_tools);
    assert!(backend.models()[0].supports.tools, "the card announces tools");

    let tools = vec![serde_json::json!({"type": "function", "function": {"name": "add", "description": "Adds.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}})];
    let rendered = backend.engine().render_chat(&messages(&[("user", "Add 1.")]), Some(&tools), true).unwrap();
    let reference = switchyard_torch::testing::render_chat_template(
        &tiny_llama(),
        qwen_template,
        &messages(&[("system", SYSTEM), ("user", "Add 1.")]),
        Some(&tools),
        true,
    )
    .unwrap();
    assert_eq!(rendered, reference);
    assert!(rendered.contains(SYSTEM) && rendered.contains("<tools>"), "{rendered}");
    assert!(!rendered.contains("You are Qwen"), "the template's own default system text is replaced: {rendered}");
}

fn fox(engine: &Engine, params: SamplingParams) -> Outcome {
    run(engine, text_prompt(FOX, params))
}

#[test]
fn a_default_max_tokens_applies_and_a_request_s_own_wins() {
    let engine = load_with(with_defaults(GenerationDefaults { max_tokens: Some(3), ..Default::default() }));
    let plain = load(tiny_llama(), None);
    let greedy_unbounded = SamplingParams { max_tokens: None, ..greedy(0) };

    let out = fox(&engine, greedy_unbounded.clone());
    assert_eq!(out.finish.map(|f| (f.0, f.2)), Some((FinishReason::Length, 3)), "{out:?}");
    assert_eq!(out.ids(), fox(&plain, greedy(3)).ids());
    // In chat too.
    let out = run(&engine, chat(&[("user", "Hello!")], greedy_unbounded.clone()));
    assert_eq!(out.finish.map(|f| f.2), Some(3), "{out:?}");

    let own = fox(&engine, greedy(7));
    assert_eq!(own.finish.map(|f| (f.0, f.2)), Some((FinishReason::Length, 7)), "{own:?}");
    assert_eq!(own.ids(), fox(&plain, greedy(7)).ids());
}

#[test]
fn a_default_max_tokens_is_capped_at_the_room_the_prompt_leaves() {
    let engine = load_with(with_defaults(GenerationDefaults { max_tokens: Some(200), ..Default::default() }));
    let long = "The quick brown fox. ".repeat(10);
    let prompt_tokens = engine.tokenize(&long, true).unwrap().len() as u32;
    assert!(prompt_tokens + 200 > 256 && prompt_tokens < 256, "{prompt_tokens}");
    let out = run(&engine, text_prompt(&long, SamplingParams { max_tokens: None, ignore_eos: true, ..greedy(0) }));
    assert_eq!(out.finish, Some((FinishReason::Length, prompt_tokens, 256 - prompt_tokens)), "{:?}", out.error);
    // A request that asks for as many itself is refused.
    let asked = run(&engine, text_prompt(&long, greedy(200)));
    assert_eq!(asked.error.expect("refused").code, "context_length_exceeded");
}

#[test]
fn a_default_stop_applies_and_a_request_s_own_wins() {
    let plain = load(tiny_llama(), None);
    let full = fox(&plain, greedy(24)).text;
    // Four letters in the middle of the greedy text, where they first occur.
    let start = full
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i > 0 && full[i..].chars().take(4).filter(char::is_ascii_alphabetic).count() == 4)
        .expect("a word in the greedy text");
    let word = &full[start..start + 4];
    let start = full.find(word).unwrap();
    assert!(start > 0, "{full:?}");
    let engine = load_with(with_defaults(GenerationDefaults { stop: Some(vec![word.into()]), ..Default::default() }));

    let out = fox(&engine, greedy(24));
    assert_eq!(out.text, full[..start]);
    assert_eq!(out.reason(), FinishReason::Stop);
    let own = fox(&engine, SamplingParams { stop: vec!["no such text".into()], ..greedy(24) });
    assert_eq!(own.text, full);
    assert_eq!(own.reason(), FinishReason::Length);
}

#[test]
fn default_sampling_parameters_apply_and_a_request_s_own_win() {
    let plain = load(tiny_llama(), None);
    let engine = load_with(with_defaults(GenerationDefaults { temperature: Some(0.0), ..Default::default() }));
    let unset = |seed| SamplingParams { max_tokens: Some(24), seed: Some(seed), logprobs: true, ..Default::default() };
    let greedy_ids = fox(&plain, greedy(24)).ids();
    // Temperature 0 by default: greedy whatever the seed; without the default, sampled.
    for seed in 1..=3 {
        assert_eq!(fox(&engine, unset(seed)).ids(), greedy_ids, "seed {seed}");
    }
    assert!((1..=3).any(|seed| fox(&plain, unset(seed)).ids() != greedy_ids), "the plain model samples");
    // A request's own temperature samples as it would on the plain model.
    let sampled = SamplingParams { temperature: Some(1.0), ..unset(5) };
    assert_eq!(fox(&engine, sampled.clone()).ids(), fox(&plain, sampled).ids());

    // top_k 1 by default is greedy; a request's top_k of 0 (off) samples as on the plain model.
    let engine =
        load_with(with_defaults(GenerationDefaults { top_k: Some(1), top_p: Some(0.9), ..Default::default() }));
    let hot = |seed| SamplingParams { temperature: Some(1.0), ..unset(seed) };
    assert_eq!(fox(&engine, hot(2)).ids(), greedy_ids);
    let own = SamplingParams { top_k: Some(0), ..hot(2) };
    assert_eq!(fox(&engine, own.clone()).ids(), fox(&plain, SamplingParams { top_p: Some(0.9), ..own }).ids());
}

#[test]
fn default_penalties_apply_and_a_request_s_own_win() {
    let plain = load(tiny_llama(), None);
    let engine = load_with(with_defaults(GenerationDefaults {
        presence_penalty: Some(1.5),
        frequency_penalty: Some(2.0),
        ..Default::default()
    }));
    let penalized = fox(&engine, greedy(24)).ids();
    assert_eq!(
        penalized,
        fox(&plain, SamplingParams { presence_penalty: 1.5, frequency_penalty: 2.0, ..greedy(24) }).ids()
    );
    assert_ne!(penalized, fox(&plain, greedy(24)).ids(), "the penalties change the greedy text");
    let own = SamplingParams { presence_penalty: -1.0, ..greedy(24) };
    assert_eq!(fox(&engine, own.clone()).ids(), fox(&plain, SamplingParams { frequency_penalty: 2.0, ..own }).ids());
}

#[test]
fn the_card_carries_the_settings_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.jinja");
    std::fs::write(&template, TEMPLATE).unwrap();
    let system = dir.path().join("system.txt");
    std::fs::write(&system, format!("{SYSTEM}\nSecond line.\n")).unwrap();
    let defaults = dir.path().join("defaults.json");
    std::fs::write(&defaults, r#"{"temperature": 0.7, "max_tokens": 3, "stop": "\n", "frequency_penalty": 0.5}"#)
        .unwrap();

    let backend = TorchBackend::load(&worker_args(&[
        "--system-prompt",
        &format!("@{}", system.display()),
        "--chat-template",
        template.to_str().unwrap(),
        "--generation-defaults",
        defaults.to_str().unwrap(),
    ]))
    .unwrap();
    let card = &backend.models()[0];
    assert_eq!(
        card.prompt_settings,
        wire::PromptSettings {
            system_prompt: Some(format!("{SYSTEM}\nSecond line.")),
            chat_template: Some(TEMPLATE.into()),
            generation_defaults: wire::GenerationDefaults {
                temperature: Some(0.7),
                max_tokens: Some(3),
                stop: Some(vec!["\n".into()]),
                frequency_penalty: Some(0.5),
                ..Default::default()
            },
        }
    );
    assert_eq!(backend.engine().prompt_settings(), &card.prompt_settings);
    // JSON text works as well as a file; without flags the card has no settings.
    let backend = TorchBackend::load(&worker_args(&["--generation-defaults", r#"{"top_k": 5}"#])).unwrap();
    assert_eq!(backend.models()[0].prompt_settings.generation_defaults.top_k, Some(5));
    assert!(TorchBackend::load(&worker_args(&[])).unwrap().models()[0].prompt_settings.is_empty());
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_settings_are_refused_at_startup_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.jinja", "{% for m in messages %}{{ m.content }");
    let raising = write(
        dir.path(),
        "no_system.jinja",
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System roles are not supported') }}{% endif %}{{ m.content }}{% endfor %}",
    );
    let missing = dir.path().join("missing.jinja");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["--generation-defaults".into(), r#"{"temprature": 0.5}"#.into()],
            vec!["--generation-defaults", "unknown field `temprature`"],
        ),
        (
            vec!["--generation-defaults".into(), r#"{"top_p": 2}"#.into()],
            vec!["--generation-defaults", "top_p must be in (0, 1]"],
        ),
        (
            vec!["--generation-defaults".into(), r#"{"max_tokens": 256}"#.into()],
            vec!["--generation-defaults", "max_tokens 256", "256 tokens"],
        ),
        (
            vec!["--generation-defaults".into(), "/no/such/defaults.json".into()],
            vec!["--generation-defaults", "/no/such/defaults.json"],
        ),
        (vec!["--chat-template".into(), missing.display().to_string()], vec!["--chat-template", "missing.jinja"]),
        (vec!["--chat-template".into(), broken.display().to_string()], vec!["--chat-template", "does not parse"]),
        (
            vec!["--chat-template".into(), raising.display().to_string(), "--system-prompt".into(), SYSTEM.into()],
            vec!["--chat-template with --system-prompt", "System roles are not supported"],
        ),
        (vec!["--system-prompt".into(), "@/no/such/system.txt".into()], vec!["--system-prompt", "/no/such/system.txt"]),
        (vec!["--system-prompt".into(), " ".into()], vec!["--system-prompt is empty"]),
    ];
    for (flags, words) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let e = load_error(&flags);
        for w in words {
            assert!(e.contains(w), "{flags:?}: {e:?} should contain {w:?}");
        }
    }
    // That template is fine without a system prompt.
    TorchBackend::load(&worker_args(&["--chat-template", raising.to_str().unwrap()])).unwrap();
}

#[test]
fn a_system_prompt_needs_a_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_llama()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();

    let e = Engine::load(EngineOptions { prompt: with_system_prompt(SYSTEM), ..EngineOptions::new(dir.path()) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("--system-prompt needs a chat template") && e.contains("--chat-template"), "{e}");
    // With one given, the folder serves chat.
    let engine = Engine::load(EngineOptions {
        prompt: PromptSettings { chat_template: Some(TEMPLATE.into()), ..with_system_prompt(SYSTEM) },
        ..EngineOptions::new(dir.path())
    })
    .unwrap();
    assert!(engine.info().has_chat_template);
    assert!(engine.render_chat(&messages(&[("user", "Hi")]), None, true).unwrap().contains(SYSTEM));
}

#[test]
fn an_embedding_model_refuses_the_chat_settings() {
    let path = minilm();
    for (flag, settings) in [
        ("--system-prompt", with_system_prompt(SYSTEM)),
        ("--chat-template", PromptSettings { chat_template: Some(TEMPLATE.into()), ..Default::default() }),
        ("--generation-defaults", with_defaults(GenerationDefaults { max_tokens: Some(3), ..Default::default() })),
    ] {
        let e = Engine::load(EngineOptions { prompt: settings, ..EngineOptions::new(&path) }).unwrap_err().to_string();
        assert!(e.contains(flag) && e.contains("sentence encoder"), "{flag}: {e}");
    }
    // Without them it loads.
    Engine::load(EngineOptions::new(&path)).unwrap();
}
