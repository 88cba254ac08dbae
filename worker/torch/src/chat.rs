//! Chat templates: the Jinja template a model ships in `tokenizer_config.json` (or
//! `chat_template.jinja`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it.
//!
//! transformers uses a sandboxed Jinja2 environment with `trim_blocks` and `lstrip_blocks`,
//! the loop-controls extension, Python string methods (`.strip()`, `.startswith()`, …, here
//! from minijinja-contrib's pycompat), a `tojson` filter that is `json.dumps` with
//! `ensure_ascii=False`, and the globals `raise_exception` and `strftime_now`.
//!
//! # What the template sees
//!
//! The same context `apply_chat_template(messages, tools=tools, add_generation_prompt=…)`
//! builds for an OpenAI-style conversation: `messages`, `tools` (the request's tool
//! definitions as the client sent them, or none — transformers passes `tools=None`, so
//! `tools is defined` holds and `tools is none` too), `documents` (none),
//! `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, …). Each message
//! is a map with, in this order:
//!
//! - `role`;
//! - `content`, except for an assistant message with tool calls and no text: OpenAI clients
//!   send `content: null` there, and transformers drops every key whose value is None before
//!   rendering, so the template finds no `content` at all;
//! - `name`, when set;
//! - `tool_calls`, when there are any: `[{"id", "type": "function", "function": {"name",
//!   "arguments"}}]` with `arguments` parsed from OpenAI's JSON string (see [`ToolCall`]);
//! - `tool_call_id`, when set (a `tool` message).

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::{ChatTemplateSpec, TokenizerConfig};
use crate::error::{Result, TorchError};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// Text content; empty for an assistant message that only calls tools.
    #[serde(default)]
    pub content: String,
    /// The calls an assistant message made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// OpenAI's optional participant name (or, in older `function` messages, the function's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// An assistant message that calls tools (`content` may be empty).
    pub fn assistant_tool_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage { tool_calls, ..ChatMessage::new("assistant", content) }
    }

    /// A `tool` message: the result of the call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { tool_call_id: Some(tool_call_id.into()), ..ChatMessage::new("tool", content) }
    }

    /// The map the chat template sees for this message (see the module docs).
    fn template_view(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), self.role.clone().into());
        // OpenAI's `content: null` beside tool calls, which transformers drops with the other
        // None-valued keys.
        let null_content = self.content.is_empty() && !self.tool_calls.is_empty();
        if !null_content {
            m.insert("content".into(), self.content.clone().into());
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), name.clone().into());
        }
        if !self.tool_calls.is_empty() {
            let calls = self.tool_calls.iter().map(ToolCall::template_view).collect();
            m.insert("tool_calls".into(), serde_json::Value::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), id.clone().into());
        }
        serde_json::Value::Object(m)
    }
}

/// One function call an assistant message made (OpenAI's `tool_calls[]`, flattened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as OpenAI carries them: the text of a JSON object.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> ToolCall {
        ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }
    }

    /// `{"id", "type": "function", "function": {"name", "arguments"}}`, with the arguments
    /// parsed. Templates are written for arguments as a mapping: Qwen2.5's writes
    /// `tool_call.arguments | tojson` (a string there would come out quoted and escaped),
    /// Llama 3.1's iterates `tool_call.arguments | items`. vLLM parses OpenAI's string the same
    /// way before rendering (`_postprocess_messages`: `json.loads`, and `{}` for an empty
    /// string). Text that is not JSON stays the string it is.
    fn template_view(&self) -> serde_json::Value {
        let arguments = if self.arguments.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(&self.arguments).unwrap_or_else(|_| self.arguments.clone().into())
        };
        let mut function = serde_json::Map::new();
        function.insert("name".into(), self.name.clone().into());
        function.insert("arguments".into(), arguments);
        let mut call = serde_json::Map::new();
        call.insert("id".into(), self.id.clone().into());
        call.insert("type".into(), "function".into());
        call.insert("function".into(), serde_json::Value::Object(function));
        serde_json::Value::Object(call)
    }
}

pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// The template's text, as the model ships it.
    source: String,
    /// The model's separate template for requests with tools (a named `tool_use` template).
    tool_use_source: Option<String>,
    /// `bos_token`, `eos_token`, … as the template sees them.
    special_tokens: BTreeMap<&'static str, String>,
}

impl ChatTemplate {
    /// The model's template, if it has one: `tokenizer_config.json`'s `chat_template`, else a
    /// `chat_template.jinja` file (transformers 5 saves it there). A list of named templates
    /// may name one `tool_use`: transformers renders requests with tools through it.
    pub fn load(dir: &Path, cfg: &TokenizerConfig) -> Result<Option<ChatTemplate>> {
        let source = match cfg.template() {
            Some(t) => t,
            None => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(TorchError::io(dir.join("chat_template.jinja"), e)),
            },
        };
        let mut template = ChatTemplate::new(source, ChatTemplate::special_tokens(cfg))?;
        if let Some(ChatTemplateSpec::Named(list)) = &cfg.chat_template
            && let Some(t) = list.iter().find(|t| t.name == "tool_use")
        {
            template.add_tool_use(t.template.clone())?;
        }
        Ok(Some(template))
    }

    /// The special tokens the template sees, from `tokenizer_config.json`.
    pub fn special_tokens(cfg: &TokenizerConfig) -> BTreeMap<&'static str, String> {
        let mut special_tokens = BTreeMap::new();
        for (name, token) in [
            ("bos_token", &cfg.bos_token),
            ("eos_token", &cfg.eos_token),
            ("unk_token", &cfg.unk_token),
            ("pad_token", &cfg.pad_token),
            ("sep_token", &cfg.sep_token),
            ("cls_token", &cfg.cls_token),
            ("mask_token", &cfg.mask_token),
        ] {
            if let Some(t) = token {
                special_tokens.insert(name, t.content().to_owned());
            }
        }
        special_tokens
    }

    pub fn new(source: String, special_tokens: BTreeMap<&'static str, String>) -> Result<ChatTemplate> {
        ChatTemplate::named(source, special_tokens, "the model's template")
    }

    /// [`ChatTemplate::new`], a parse error naming the template as `what`.
    pub fn named(source: String, special_tokens: BTreeMap<&'static str, String>, what: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", strip_generation_tags(&source))
            .map_err(|e| TorchError::ChatTemplate(format!("{what} does not parse: {e:#}")))?;
        Ok(ChatTemplate { env, source, tool_use_source: None, special_tokens })
    }

    fn add_tool_use(&mut self, source: String) -> Result<()> {
        self.env
            .add_template_owned("tool_use", strip_generation_tags(&source))
            .map_err(|e| TorchError::ChatTemplate(format!("the model's tool_use template does not parse: {e:#}")))?;
        self.tool_use_source = Some(source);
        Ok(())
    }

    /// The template's text as the model ships it (the default one, when it names several).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of the template a request with tools renders with: the model's `tool_use`
    /// template if it has one, else [`ChatTemplate::source`]. For telling which tool-call
    /// format the model writes.
    pub fn tools_source(&self) -> &str {
        self.tool_use_source.as_deref().unwrap_or(self.source())
    }

    /// Whether the template does anything with a request's tools — a cheap heuristic (there
    /// is no flag for this in a model folder, and transformers has no check of its own): the
    /// template a request with tools renders with mentions `tools` (`{% if tools %}`,
    /// `tools is not none`, `custom_tools`, …). A template without it ignores the tools
    /// entirely: transformers renders the same text with or without them.
    pub fn supports_tools(&self) -> bool {
        self.tools_source().contains("tools")
    }

    /// The text for `messages` (with the request's `tools`: OpenAI tool definitions,
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`, passed to
    /// the template as they are, key order kept), as transformers'
    /// `apply_chat_template(messages, tools=tools, add_generation_prompt=…)`. `None` is
    /// `tools=None`; `Some(&[])` is `tools=[]`, which some templates render differently
    /// (Llama 3.1's checks `tools is not none`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> =
            self.special_tokens.iter().map(|(k, v)| (*k, Value::from(v.as_str()))).collect();
        let views: Vec<serde_json::Value> = messages.iter().map(ChatMessage::template_view).collect();
        ctx.insert("messages", Value::from_serialize(&views));
        ctx.insert("tools", tools.map_or(Value::from(()), Value::from_serialize));
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // transformers picks a model's `tool_use` template whenever tools is not None.
        let name = if tools.is_some() && self.tool_use_source.is_some() { "tool_use" } else { "chat" };
        let template = self.env.get_template(name).expect("added in new()");
        template.render(ctx).map_err(|e| {
            // raise_exception's message is what the template author wants the user to read.
            if let (ErrorKind::InvalidOperation, Some(detail)) = (e.kind(), e.detail()) {
                return TorchError::ChatTemplate(detail.to_owned());
            }
            TorchError::ChatTemplate(format!("{e:#}"))
        })
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `AssistantTracker` adds `{% generation %}…{% endgeneration %}` to mark the
/// assistant's text for training masks; for rendering the tags are no-ops.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = tag[2..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(&tag[..end + 2]);
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `json.dumps(value, ensure_ascii=…, indent=…, separators=…, sort_keys=…)` (transformers'
/// `tojson`, `ensure_ascii=False` by default): the exact text a Python template would produce
/// (minijinja's own `tojson` escapes `<`, `>`, `&`, `'` for HTML, which changes the prompt).
/// Maps keep their order, integers print as integers and floats as Python's `repr` does
/// (`2.0`, `1e-05`, `1e+16`).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "separators must be a pair"));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        indent,
        item_sep: &item_sep,
        key_sep: &key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOptions<'a> {
    indent: Option<usize>,
    item_sep: &'a str,
    key_sep: &'a str,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(v: &Value, opts: &JsonOptions, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = opts.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&i128::try_from(v.clone())?.to_string()),
        ValueKind::Number => out.push_str(&python_float_repr(f64::try_from(v.clone())?)),
        ValueKind::String => write_json_string(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(opts.item_sep);
                }
                newline(out, depth + 1);
                write_json(item, opts, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<(String, Value)> = v
                .try_iter()?
                .map(|key| (key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string()), key))
                .collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (name, key)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(opts.item_sep);
                }
                newline(out, depth + 1);
                write_json_string(name, opts.ensure_ascii, out);
                out.push_str(opts.key_sep);
                write_json(&v.get_item(key)?, opts, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_string(&v.to_string(), opts.ensure_ascii, out),
    }
    Ok(())
}

/// A JSON string as Python's `json.dumps` writes it: `"`, `\` and control characters escaped
/// (`\n`, `\t`, … or `\u00XX`), and with `ensure_ascii` every non-ASCII character as `\uXXXX`
/// (surrogate pairs above U+FFFF).
fn write_json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (what `json.dumps` writes for a float): the shortest digits that
/// round-trip, positional for decimal exponents -4 to 15 (always with a `.`), scientific
/// otherwise with a signed exponent of at least two digits. `NaN`/`Infinity` as `json.dumps`.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` is also the shortest round-trip form: "1.2345e-7", "-1e16", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e}'s exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits = mantissa.replace('.', "");
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        format!("{first}{rest}e{exp_sign}{:02}", exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// `strftime_now(format)`, used by Llama 3.x templates for "Today Date". UTC, with the
/// directives those templates use.
fn strftime_now(format: String) -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(secs, &format)
}

fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let tokens = [("bos_token", "<s>".to_owned()), ("eos_token", "</s>".to_owned())];
        ChatTemplate::new(source.to_owned(), tokens.into_iter().collect()).unwrap()
    }

    #[test]
    fn python_methods_and_blocks() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}[U]{{ m.content.strip() }}{% else %}[A]{{ m['content'] }}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}[A]{% endif %}",
        );
        let msgs = [ChatMessage::new("user", "  hi  "), ChatMessage::new("assistant", "yo")];
        assert_eq!(t.render(&msgs, None, true).unwrap(), "<s>[U]hi[A]yo</s>[A]");
    }

    #[test]
    fn raise_exception_message_surfaces() {
        let t = template(
            "{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
        );
        let err = t.render(&[ChatMessage::new("user", "x")], None, false).unwrap_err();
        assert!(err.to_string().contains("first message must be system"), "{err}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = template("{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': '<é>'} | tojson(indent=2) }}");
        let out = t.render(&[ChatMessage::new("user", "x<y")], None, false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"x<y\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": \"<é>\"\n}"
        );
    }

    #[test]
    fn generation_tags_are_ignored() {
        let t = template("{% for m in messages %}{% generation %}{{ m.content }}{%- endgeneration %}{% endfor %}");
        assert_eq!(t.render(&[ChatMessage::new("assistant", "ok")], None, false).unwrap(), "ok");
    }

    #[test]
    fn tools_none_and_empty_are_what_jinja2_sees() {
        let t = template(
            "{{ tools is defined }} {{ tools is none }} {% if tools %}some{% else %}falsy{% endif %} {{ tools | length if tools is not none else '-' }}",
        );
        let msgs = [ChatMessage::new("user", "x")];
        assert_eq!(t.render(&msgs, None, false).unwrap(), "True True falsy -");
        assert_eq!(t.render(&msgs, Some(&[]), false).unwrap(), "True False falsy 0");
        let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
        assert_eq!(t.render(&msgs, Some(&tools), false).unwrap(), "True False some 1");
    }

    #[test]
    fn tools_keep_the_clients_key_order() {
        let t = template("{% for tool in tools %}{{ tool | tojson }}{% endfor %}");
        let tools: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"z":{"type":"string"},"a":{"type":"number"}},"required":["z"]}}}]"#,
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], Some(&tools), false).unwrap(),
            r#"{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "number"}}, "required": ["z"]}}}"#
        );
    }

    #[test]
    fn messages_as_the_template_sees_them() {
        let t = template("{% for m in messages %}{{ m | tojson }}\n{% endfor %}");
        let msgs = [
            ChatMessage { name: Some("ann".into()), ..ChatMessage::new("user", "hi") },
            ChatMessage::assistant_tool_calls(
                "",
                vec![
                    ToolCall::new("call_1", "get", r#"{"z": 1, "a": [true, 2.0]}"#),
                    ToolCall::new("call_2", "raw", "not json"),
                    ToolCall::new("call_3", "none", ""),
                ],
            ),
            ChatMessage::tool_result("call_1", "ok"),
            ChatMessage::assistant_tool_calls("text", vec![ToolCall::new("c", "f", "{}")]),
        ];
        assert_eq!(
            t.render(&msgs, None, false).unwrap(),
            concat!(
                r#"{"role": "user", "content": "hi", "name": "ann"}"#,
                "\n",
                r#"{"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": {"z": 1, "a": [true, 2.0]}}}, "#,
                r#"{"id": "call_2", "type": "function", "function": {"name": "raw", "arguments": "not json"}}, "#,
                r#"{"id": "call_3", "type": "function", "function": {"name": "none", "arguments": {}}}]}"#,
                "\n",
                r#"{"role": "tool", "content": "ok", "tool_call_id": "call_1"}"#,
                "\n",
                r#"{"role": "assistant", "content": "text", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}"#,
                "\n",
            )
        );
        // A message without tool calls has no `tool_calls` key: Llama 3.1 tests `'tool_calls' in message`.
        let t = template("{% for m in messages %}{{ 'tool_calls' in m }} {{ m.content is defined }};{% endfor %}");
        assert_eq!(t.render(&msgs, None, false).unwrap(), "False True;True False;False True;True True;");
    }

    #[test]
    fn chat_messages_deserialize_without_the_tool_fields() {
        let m: ChatMessage = serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::new("user", "hi"));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"role":"user","content":"hi"}"#);
        let m: ChatMessage = serde_json::from_str(
            r#"{"role": "assistant", "tool_calls": [{"id": "c", "name": "f", "arguments": "{}"}]}"#,
        )
        .unwrap();
        assert_eq!(m, ChatMessage::assistant_tool_calls("", vec![ToolCall::new("c", "f", "{}")]));
    }

    #[test]
    fn tojson_numbers_are_python_repr() {
        let t = template("{{ tools[0] | tojson }}");
        let tools: Vec<serde_json::Value> = vec![
            serde_json::from_str(
                "[2.0, 0.1, 1e-4, 1e-5, 1.5e16, 1e15, -0.0, 123.456, 1e100, 12345678901234567890, -7, 3.0e-300]",
            )
            .unwrap(),
        ];
        assert_eq!(
            t.render(&[], Some(&tools), false).unwrap(),
            "[2.0, 0.1, 0.0001, 1e-05, 1.5e+16, 1000000000000000.0, -0.0, 123.456, 1e+100, 12345678901234567890, -7, 3e-300]"
        );
        let t = template("{{ {'a': 2.0 * 3, 'b': 7 // 2} | tojson }}");
        assert_eq!(t.render(&[], None, false).unwrap(), r#"{"a": 6.0, "b": 3}"#);
    }

    #[test]
    fn tojson_sort_keys_ensure_ascii_separators() {
        let t = template(
            "{{ {'b': 'é😀\u{1}', 'a': 1} | tojson(sort_keys=true, ensure_ascii=true) }}|{{ {'b': 1, 'a': [1, 2]} | tojson(separators=(',', ':')) }}",
        );
        assert_eq!(
            t.render(&[], None, false).unwrap(),
            r#"{"a": 1, "b": "\u00e9\ud83d\ude00\u0001"}|{"b":1,"a":[1,2]}"#
        );
    }

    #[test]
    fn tool_use_template_renders_requests_with_tools() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: TokenizerConfig = serde_json::from_str(
            r#"{"chat_template": [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools: {{ tools | length }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::load(dir.path(), &cfg).unwrap().unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "plain");
        assert_eq!(t.render(&[], Some(&[]), false).unwrap(), "tools: 0");
        assert_eq!(t.source(), "plain");
        assert!(t.supports_tools());
        assert!(!template("{{ messages[0].content }}").supports_tools());
        assert!(template("{% if tools %}x{% endif %}").supports_tools());
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-23 13:05:09 UTC was a Tuesday.
        assert_eq!(strftime(1_721_739_909, "%d %b %Y %H:%M:%S %A"), "23 Jul 2024 13:05:09 Tuesday");
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }
}
