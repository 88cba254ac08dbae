//! A model's prompt settings, as its operator gives them (`switchyard worker torch
//! --system-prompt/--chat-template/--generation-defaults`): reading and checking the flags'
//! values, and applying them to a request — the system prompt to a conversation without a
//! system message, the generation defaults to the parameters a request leaves out.
//!
//! The settings themselves are the wire's [`PromptSettings`], which the model card carries.

use std::borrow::Cow;
use std::path::Path;

use switchyard_schemas::{GenerationDefaults, PromptSettings};

use crate::chat::ChatMessage;
use crate::error::{Result, TorchError};
use crate::sampling::SamplingParams;

/// Roles that make a request's own system message: OpenAI's `developer` replaces `system`
/// for newer models, and a client that sends either has said what it wants.
const SYSTEM_ROLES: [&str; 2] = ["system", "developer"];

/// `--system-prompt`: the text itself, or `@FILE` for a file's contents (its trailing line
/// break dropped); `@@…` is text that begins with `@`.
pub fn read_system_prompt(arg: &str) -> Result<String> {
    let text = match arg.strip_prefix('@') {
        Some(rest) if rest.starts_with('@') => rest.to_owned(),
        Some(path) => {
            let text = read_file("--system-prompt", Path::new(path))?;
            text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(&text).to_owned()
        }
        None => arg.to_owned(),
    };
    if text.trim().is_empty() {
        return Err(TorchError::InvalidSetting("--system-prompt is empty".into()));
    }
    Ok(text)
}

/// `--chat-template FILE`: a Jinja template's text (checked when the model loads).
pub fn read_chat_template(path: &Path) -> Result<String> {
    let text = read_file("--chat-template", path)?;
    if text.trim().is_empty() {
        return Err(TorchError::InvalidSetting(format!("--chat-template {} is empty", path.display())));
    }
    Ok(text)
}

/// `--generation-defaults`: a JSON object (text starting with `{`; `[` is taken for JSON too,
/// and refused) or a file holding one, with
/// any of `temperature`, `top_p`, `top_k`, `max_tokens`, `stop` (a string or a list of them),
/// `presence_penalty`, `frequency_penalty`. Unknown keys and values out of range are errors.
pub fn parse_generation_defaults(arg: &str) -> Result<GenerationDefaults> {
    let (text, origin) = if arg.trim_start().starts_with(['{', '[']) {
        (arg.to_owned(), "--generation-defaults".to_owned())
    } else {
        let path = Path::new(arg);
        (read_file("--generation-defaults", path)?, format!("--generation-defaults {}", path.display()))
    };
    let invalid = |message: String| TorchError::InvalidSetting(format!("{origin}: {message}"));
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
    if !value.is_object() {
        return Err(invalid("not a JSON object".into()));
    }
    // OpenAI's `stop` may be one string.
    if let Some(stop) = value.get_mut("stop")
        && stop.is_string()
    {
        *stop = serde_json::Value::Array(vec![stop.take()]);
    }
    let defaults: GenerationDefaults = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { invalid(e.into_inner().to_string()) } else { invalid(format!("{path}: {}", e.into_inner())) }
    })?;
    check_generation_defaults(&defaults).map_err(invalid)?;
    Ok(defaults)
}

/// The ranges a request's own parameters must be in (the api's checks), for defaults given
/// any other way than [`parse_generation_defaults`].
pub fn check_generation_defaults(d: &GenerationDefaults) -> std::result::Result<(), String> {
    if let Some(t) = d.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(format!("temperature must be in [0, 2], got {t}"));
    }
    if let Some(p) = d.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(format!("top_p must be in (0, 1], got {p}"));
    }
    if d.max_tokens == Some(0) {
        return Err("max_tokens must be at least 1".into());
    }
    if let Some(stop) = &d.stop {
        if stop.len() > 4 {
            return Err(format!("stop holds at most 4 strings, got {}", stop.len()));
        }
        if stop.iter().any(String::is_empty) {
            return Err("stop strings must not be empty".into());
        }
    }
    for (name, value) in [("presence_penalty", d.presence_penalty), ("frequency_penalty", d.frequency_penalty)] {
        if let Some(v) = value
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(format!("{name} must be in [-2, 2], got {v}"));
        }
    }
    Ok(())
}

/// `messages` with the operator's system prompt first when none of them is a system (or
/// developer) message.
pub(crate) fn with_system_prompt<'m>(settings: &PromptSettings, messages: &'m [ChatMessage]) -> Cow<'m, [ChatMessage]> {
    match &settings.system_prompt {
        Some(prompt) if !messages.iter().any(|m| SYSTEM_ROLES.contains(&m.role.as_str())) => {
            let mut all = Vec::with_capacity(messages.len() + 1);
            all.push(ChatMessage::new("system", prompt.clone()));
            all.extend_from_slice(messages);
            Cow::Owned(all)
        }
        _ => Cow::Borrowed(messages),
    }
}

/// A request's parameters with the operator's defaults for those it leaves out: `None`s, an
/// empty `stop`, a penalty of 0 (the wire's "unset"). `max_tokens` is not filled in here: a
/// default is capped at the room the prompt leaves, where a request's own is refused.
pub(crate) fn with_defaults(params: &SamplingParams, d: &GenerationDefaults) -> SamplingParams {
    let mut p = params.clone();
    p.temperature = p.temperature.or(d.temperature);
    p.top_p = p.top_p.or(d.top_p);
    p.top_k = p.top_k.or(d.top_k);
    if p.stop.is_empty()
        && let Some(stop) = &d.stop
    {
        p.stop = stop.clone();
    }
    if p.presence_penalty == 0.0 {
        p.presence_penalty = d.presence_penalty.unwrap_or(0.0);
    }
    if p.frequency_penalty == 0.0 {
        p.frequency_penalty = d.frequency_penalty.unwrap_or(0.0);
    }
    p
}

fn read_file(flag: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| TorchError::InvalidSetting(format!("{flag}: cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(arg: &str) -> String {
        parse_generation_defaults(arg).unwrap_err().to_string()
    }

    #[test]
    fn generation_defaults_parse_from_json_text() {
        let d =
            parse_generation_defaults(r#"{"temperature": 0.5, "top_k": 7, "max_tokens": 3, "stop": "\n"}"#).unwrap();
        assert_eq!(d.temperature, Some(0.5));
        assert_eq!(d.top_k, Some(7));
        assert_eq!(d.max_tokens, Some(3));
        assert_eq!(d.stop, Some(vec!["\n".to_owned()]));
        assert_eq!(d.top_p, None);
        assert!(parse_generation_defaults("{}").unwrap().is_empty());
    }

    #[test]
    fn generation_defaults_parse_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defaults.json");
        std::fs::write(&path, r#"{"top_p": 0.9, "stop": ["a", "b"], "frequency_penalty": 0.5}"#).unwrap();
        let d = parse_generation_defaults(path.to_str().unwrap()).unwrap();
        assert_eq!(d.top_p, Some(0.9));
        assert_eq!(d.stop, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(d.frequency_penalty, Some(0.5));

        let missing = dir.path().join("nope.json");
        let e = err(missing.to_str().unwrap());
        assert!(e.contains("--generation-defaults") && e.contains("nope.json"), "{e}");
    }

    #[test]
    fn bad_generation_defaults_are_named() {
        for (arg, words) in [
            (r#"{"temprature": 0.5}"#, &["--generation-defaults", "unknown field `temprature`"][..]),
            (r#"{"temperature": "hot"}"#, &["temperature", "invalid type"]),
            (r#"{"temperature": -1}"#, &["temperature must be in [0, 2], got -1"]),
            (r#"{"temperature": 2.5}"#, &["temperature"]),
            (r#"{"top_p": 0}"#, &["top_p must be in (0, 1], got 0"]),
            (r#"{"top_p": 1.5}"#, &["top_p"]),
            (r#"{"top_k": -3}"#, &["top_k"]),
            (r#"{"max_tokens": 0}"#, &["max_tokens must be at least 1"]),
            (r#"{"stop": ["a", "b", "c", "d", "e"]}"#, &["at most 4"]),
            (r#"{"stop": [""]}"#, &["must not be empty"]),
            (r#"{"presence_penalty": 3}"#, &["presence_penalty must be in [-2, 2], got 3"]),
            (r#"{"frequency_penalty": -2.5}"#, &["frequency_penalty"]),
            (r#"{"temperature": 0.5"#, &["not a JSON object"]),
            ("[1, 2]", &["not a JSON object"]),
        ] {
            let e = err(arg);
            for w in words {
                assert!(e.contains(w), "{arg}: {e:?} should contain {w:?}");
            }
        }
    }

    #[test]
    fn system_prompt_text_or_file() {
        assert_eq!(read_system_prompt("Be brief.").unwrap(), "Be brief.");
        assert_eq!(read_system_prompt("@@home").unwrap(), "@home");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("system.txt");
        std::fs::write(&path, "Line one.\nLine two.\n").unwrap();
        assert_eq!(read_system_prompt(&format!("@{}", path.display())).unwrap(), "Line one.\nLine two.");
        let e = read_system_prompt(&format!("@{}", dir.path().join("nope.txt").display())).unwrap_err().to_string();
        assert!(e.contains("--system-prompt") && e.contains("nope.txt"), "{e}");
        assert!(read_system_prompt("  ").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn the_system_prompt_goes_first_only_without_a_system_message() {
        let settings = PromptSettings { system_prompt: Some("S".into()), ..Default::default() };
        let user = [ChatMessage::new("user", "hi")];
        let out = with_system_prompt(&settings, &user);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].role.as_str(), out[0].content.as_str()), ("system", "S"));
        assert_eq!(out[1], user[0]);
        for role in ["system", "developer"] {
            let own = [ChatMessage::new(role, "mine"), ChatMessage::new("user", "hi")];
            assert_eq!(&*with_system_prompt(&settings, &own), &own[..], "{role}");
        }
        assert_eq!(&*with_system_prompt(&PromptSettings::default(), &user), &user[..]);
    }

    #[test]
    fn a_request_s_own_values_win_over_the_defaults() {
        let d = GenerationDefaults {
            temperature: Some(0.5),
            top_p: Some(0.8),
            top_k: Some(4),
            max_tokens: Some(3),
            stop: Some(vec!["x".into()]),
            presence_penalty: Some(0.25),
            frequency_penalty: Some(0.75),
        };
        let unset = with_defaults(&SamplingParams::default(), &d);
        assert_eq!(
            (unset.temperature, unset.top_p, unset.top_k, unset.stop.clone()),
            (Some(0.5), Some(0.8), Some(4), vec!["x".to_owned()])
        );
        assert_eq!((unset.presence_penalty, unset.frequency_penalty), (0.25, 0.75));
        assert_eq!(unset.max_tokens, None, "max_tokens is settled against the prompt's room");

        let own = SamplingParams {
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(0),
            stop: vec!["y".into()],
            presence_penalty: -1.0,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        assert_eq!(with_defaults(&own, &d), own);
    }
}
