//! Chat templates: the Jinja template a model ships in `tokenizer_config.json` (or
//! `chat_template.jinja`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it.
//!
//! transformers uses a sandboxed Jinja2 environment with `trim_blocks` and `lstrip_blocks`,
//! the loop-controls extension, Python string methods (`.strip()`, `.startswith()`, …, here
//! from minijinja-contrib's pycompat), a `tojson` filter that is `json.dumps` with
//! `ensure_ascii=False`, and the globals `raise_exception` and `strftime_now`.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::TokenizerConfig;
use crate::error::{Result, TorchError};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, … as the template sees them.
    special_tokens: BTreeMap<&'static str, String>,
}

impl ChatTemplate {
    /// The model's template, if it has one: `tokenizer_config.json`'s `chat_template`, else a
    /// `chat_template.jinja` file (transformers 5 saves it there).
    pub fn load(dir: &Path, cfg: &TokenizerConfig) -> Result<Option<ChatTemplate>> {
        let source = match cfg.template() {
            Some(t) => t,
            None => match std::fs::read_to_string(dir.join("chat_template.jinja")) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(TorchError::io(dir.join("chat_template.jinja"), e)),
            },
        };
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
        ChatTemplate::new(source, special_tokens).map(Some)
    }

    pub fn new(source: String, special_tokens: BTreeMap<&'static str, String>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", strip_generation_tags(&source))
            .map_err(|e| TorchError::ChatTemplate(format!("the model's template does not parse: {e:#}")))?;
        Ok(ChatTemplate { env, special_tokens })
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> =
            self.special_tokens.iter().map(|(k, v)| (*k, Value::from(v.as_str()))).collect();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let template = self.env.get_template("chat").expect("added in new()");
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

/// `json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)`: the exact
/// text a Python template would produce (minijinja's own `tojson` escapes `<`, `>`, `&`, `'`
/// for HTML, which changes the prompt).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "separators must be a pair"));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut out = String::new();
    write_json(&value, indent, &item_sep, &key_sep, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    item_sep: &str,
    key_sep: &str,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                // Python writes floats with repr(): always a '.' or an exponent.
                let s = serde_json::to_string(&f).unwrap_or_else(|_| "NaN".into());
                out.push_str(&s);
            }
        }
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, item_sep, key_sep, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let name = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&name).unwrap());
                out.push_str(key_sep);
                write_json(&v.get_item(key)?, indent, item_sep, key_sep, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap()),
    }
    Ok(())
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
        assert_eq!(t.render(&msgs, true).unwrap(), "<s>[U]hi[A]yo</s>[A]");
    }

    #[test]
    fn raise_exception_message_surfaces() {
        let t = template(
            "{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
        );
        let err = t.render(&[ChatMessage::new("user", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first message must be system"), "{err}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = template("{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': '<é>'} | tojson(indent=2) }}");
        let out = t.render(&[ChatMessage::new("user", "x<y")], false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"x<y\"}]|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": \"<é>\"\n}"
        );
    }

    #[test]
    fn generation_tags_are_ignored() {
        let t = template("{% for m in messages %}{% generation %}{{ m.content }}{%- endgeneration %}{% endfor %}");
        assert_eq!(t.render(&[ChatMessage::new("assistant", "ok")], false).unwrap(), "ok");
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-23 13:05:09 UTC was a Tuesday.
        assert_eq!(strftime(1_721_739_909, "%d %b %Y %H:%M:%S %A"), "23 Jul 2024 13:05:09 Tuesday");
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }
}
