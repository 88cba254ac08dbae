//! Reading the tool calls a model writes in its own format — Hermes/Qwen2.5 `<tool_call>` tags,
//! Llama 3.1 JSON — as a stream, into OpenAI-shaped calls: each call's name first, then its
//! `arguments` string in pieces, and nothing of a call left in the text.
//!
//! The torch worker (decoded text arriving one or a few tokens at a time) and the echo
//! debugging backend feed generated text to a [`Parser`] and forward its [`Parsed`] events as
//! they come:
//!
//! - [`Parsed::Text`] is content, passed on as soon as it cannot be the start of a call (only a
//!   suffix that could still become an opening tag is held back, and the whitespace the format
//!   puts around its tags is dropped).
//! - [`Parsed::CallStart`] carries the call's name, as soon as its string is complete.
//! - [`Parsed::Arguments`] deltas are exactly the raw text of the arguments object as the
//!   model wrote it, so their concatenation is byte for byte the `arguments` string of the
//!   non-streamed answer ([`collect`] folds events into that answer).
//! - [`Parsed::CallEnd`] closes a call once it is complete and valid.
//!
//! A call that turns out malformed — invalid JSON, no name, arguments that are not an object,
//! unfinished when the output ends — is a [`ParseError`], never a made-up call, and never text:
//! the caller answers with an error even when the call's name and some arguments have already
//! been streamed.
//!
//! ```
//! use switchyard_tool_parser::{Format, Parsed, Parser};
//!
//! let mut parser = Parser::new(Format::Hermes);
//! let mut events = Vec::new();
//! for piece in ["Checking.\n<tool", "_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": ", "\"Paris\"}}\n</tool_call>"] {
//!     events.extend(parser.push(piece)?);
//! }
//! events.extend(parser.finish()?);
//! assert_eq!(events, [
//!     Parsed::Text("Checking.".into()),
//!     Parsed::CallStart { index: 0, name: "get_weather".into() },
//!     Parsed::Arguments { index: 0, delta: "{\"city\": ".into() },
//!     Parsed::Arguments { index: 0, delta: "\"Paris\"}".into() },
//!     Parsed::CallEnd { index: 0 },
//! ]);
//! # Ok::<(), switchyard_tool_parser::ParseError>(())
//! ```
//!
//! The parser looks at each character once (an incremental JSON scanner tracks strings,
//! escapes and nesting), so a long output costs linear time; each complete call is validated
//! once with `serde_json`.

use serde_json::Value;

const HERMES_OPEN: &[u8] = b"<tool_call>";
const HERMES_CLOSE: &[u8] = b"</tool_call>";
const PYTHON_TAG: &[u8] = b"<|python_tag|>";

/// A way of writing tool calls that a chat template teaches its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Hermes 2 Pro, Qwen2.5, Qwen3: each call is
    /// `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, text may come around the
    /// calls. `"parameters"` is accepted for `"arguments"`, in either order with `"name"`.
    Hermes,
    /// Llama 3.1/3.2/3.3 JSON tool calling: the whole output is the calls,
    /// `{"name": "f", "parameters": {...}}`, optionally after `<|python_tag|>`, several separated
    /// by `;`. An output that starts (after whitespace) with anything else is plain text.
    Llama3Json,
}

impl Format {
    /// Which format a chat template teaches the model, from the template source: Hermes/Qwen2.5
    /// if it contains `<tool_call>`; Llama 3.1 JSON if it has `<|python_tag|>` or the Llama 3.1
    /// `Respond in the format {"name": function name, "parameters": ...` wording; else `None`.
    pub fn detect(template_source: &str) -> Option<Format> {
        if template_source.contains("<tool_call>") {
            Some(Format::Hermes)
        } else if template_source.contains("<|python_tag|>")
            || template_source.contains("{\"name\": function name")
            || template_source.contains("{\\\"name\\\": function name")
        {
            Some(Format::Llama3Json)
        } else {
            None
        }
    }

    /// Text that opens a call to `name` so that the model writes only the arguments object (a
    /// named `tool_choice`), the name JSON-escaped: Hermes `<tool_call>\n{"name": "NAME",
    /// "arguments": `, Llama `{"name": "NAME", "parameters": `. Put it at the end of the prompt
    /// and push it to the [`Parser`] before the model's output.
    pub fn forced_call(&self, name: &str) -> String {
        let name = Value::String(name.to_owned());
        match self {
            Format::Hermes => format!("<tool_call>\n{{\"name\": {name}, \"arguments\": "),
            Format::Llama3Json => format!("{{\"name\": {name}, \"parameters\": "),
        }
    }

    /// Text that opens some call, the model choosing the name (`tool_choice: required`):
    /// Hermes `<tool_call>\n{"name": "`, Llama `{"name": "`. Like [`Format::forced_call`], push
    /// it to the [`Parser`] too.
    pub fn forced_opening(&self) -> &'static str {
        match self {
            Format::Hermes => "<tool_call>\n{\"name\": \"",
            Format::Llama3Json => "{\"name\": \"",
        }
    }

    /// What the format writes after the arguments object to close a call: Hermes
    /// `}\n</tool_call>`, Llama `}`.
    pub fn call_closing(&self) -> &'static str {
        match self {
            Format::Hermes => "}\n</tool_call>",
            Format::Llama3Json => "}",
        }
    }

    /// The text around a call's JSON object, `(before, after)`: Hermes
    /// `("<tool_call>\n", "\n</tool_call>")`, Llama nothing. For a caller that has the object
    /// itself written under a constraint ([`Format::call_schema`]).
    pub fn call_tags(&self) -> (&'static str, &'static str) {
        match self {
            Format::Hermes => ("<tool_call>\n", "\n</tool_call>"),
            Format::Llama3Json => ("", ""),
        }
    }

    /// The JSON Schema of one call object of this format calling one of `functions` (name, and
    /// its parameters' schema; `None`: any object), the name first: what a constrained decoder
    /// needs to make a model call one of them.
    pub fn call_schema<'a>(&self, functions: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>) -> Value {
        let key = match self {
            Format::Hermes => "arguments",
            Format::Llama3Json => "parameters",
        };
        let any_object = serde_json::json!({"type": "object"});
        let branches: Vec<Value> = functions
            .into_iter()
            .map(|(name, parameters)| {
                let mut properties = serde_json::Map::new();
                properties.insert("name".into(), serde_json::json!({"const": name}));
                properties.insert(key.into(), parameters.cloned().unwrap_or_else(|| any_object.clone()));
                serde_json::json!({"type": "object", "properties": properties, "required": ["name", key]})
            })
            .collect();
        serde_json::json!({"anyOf": branches})
    }
}

/// What a [`Parser`] can say for sure about the output so far. Calls are numbered from 0 in
/// the order the model writes them; a call's events come in the order `CallStart`,
/// `Arguments`…, `CallEnd`, and calls never interleave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Content: text outside any call.
    Text(String),
    /// A call begins; its name is complete.
    CallStart { index: u32, name: String },
    /// The next piece of the call's `arguments` string (a JSON object when all are joined).
    Arguments { index: u32, delta: String },
    /// The call is complete and valid.
    CallEnd { index: u32 },
}

/// A call the model wrote that cannot be read; `index` is the call's number (for a problem
/// after a Llama call, the number of that call).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not valid JSON, or not the format's shape (a duplicate field, a name that is not a
    /// string, text where the closing tag belongs).
    #[error("tool call {index} is malformed: {detail}")]
    Malformed { index: u32, detail: String },
    /// The call's object has no `"name"`, or an empty one.
    #[error("tool call {index} has no name")]
    MissingName { index: u32 },
    /// The call's `"arguments"` is neither a JSON object nor a string holding one.
    #[error("the arguments of tool call {index} are not a JSON object")]
    ArgumentsNotObject { index: u32 },
    /// The output ended inside the call.
    #[error("tool call {index} is unfinished at the end of the output")]
    Unterminated { index: u32 },
}

impl ParseError {
    /// The number of the call the error is about.
    pub fn index(&self) -> u32 {
        match self {
            ParseError::Malformed { index, .. }
            | ParseError::MissingName { index }
            | ParseError::ArgumentsNotObject { index }
            | ParseError::Unterminated { index } => *index,
        }
    }
}

/// Folds events into the non-streamed answer: the text, and each call's `(name, arguments)`
/// in index order.
pub fn collect<'a>(events: impl IntoIterator<Item = &'a Parsed>) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for event in events {
        match event {
            Parsed::Text(t) => text.push_str(t),
            Parsed::CallStart { name, .. } => calls.push((name.clone(), String::new())),
            Parsed::Arguments { index, delta } => {
                if let Some(call) = calls.get_mut(*index as usize) {
                    call.1.push_str(delta);
                }
            }
            Parsed::CallEnd { .. } => {}
        }
    }
    (text, calls)
}

/// Reads a whole output at once: [`Parser::push`] then [`Parser::finish`], folded by
/// [`collect`].
pub fn parse(format: Format, output: &str) -> Result<(String, Vec<(String, String)>), ParseError> {
    let mut parser = Parser::new(format);
    let mut events = parser.push(output)?;
    events.extend(parser.finish()?);
    Ok(collect(&events))
}

/// Reads one generation's output, piece by piece. One parser per generation; after
/// [`Parser::finish`] it is fresh again.
#[derive(Debug)]
pub struct Parser {
    format: Format,
    mode: Mode,
    /// The number of the current call, or of the next one.
    index: u32,
    /// Text not passed on yet: a run of whitespace, then possibly the start of a tag.
    held: String,
    /// How many bytes of a tag `held` ends with (0: it is only whitespace).
    matched: usize,
    /// `held` directly follows a call (its whitespace is the format's separator).
    after_call: bool,
}

#[derive(Debug)]
enum Mode {
    /// Hermes, outside a call.
    Text,
    /// Inside a call's object.
    Call(Box<Call>),
    /// Hermes: the object is complete; reading `</tool_call>` (`matched` bytes of it so far).
    CloseTag { matched: usize },
    /// Llama: nothing but whitespace (and perhaps part of `<|python_tag|>`) so far.
    LlamaLead,
    /// Llama: the output is plain text.
    LlamaText,
    /// Llama: between calls; `expect_object` once a `;` (or the python tag) came.
    LlamaNext { expect_object: bool },
    /// An error came; it comes again until `finish`.
    Failed(ParseError),
}

impl Parser {
    /// A parser for one output written in `format`.
    pub fn new(format: Format) -> Parser {
        Parser {
            format,
            mode: match format {
                Format::Hermes => Mode::Text,
                Format::Llama3Json => Mode::LlamaLead,
            },
            index: 0,
            held: String::new(),
            matched: 0,
            after_call: false,
        }
    }

    /// Feeds the next piece of generated text; returns what can be said for sure so far.
    /// An error ends the parse: the events of the failing piece are dropped, and every later
    /// `push` returns the same error (the caller ends the answer with it).
    pub fn push(&mut self, text: &str) -> Result<Vec<Parsed>, ParseError> {
        if let Mode::Failed(error) = &self.mode {
            return Err(error.clone());
        }
        let mut out = Out::default();
        for c in text.chars() {
            if let Err(error) = self.step(c, &mut out) {
                self.mode = Mode::Failed(error.clone());
                return Err(error);
            }
        }
        Ok(out.events)
    }

    /// The generation ended: flushes held-back text and ends a call whose object is complete
    /// (a Hermes call may lack its closing tag at the very end, as when a stop sequence cut
    /// it). A call still open is [`ParseError::Unterminated`]. The parser is fresh afterwards.
    pub fn finish(&mut self) -> Result<Vec<Parsed>, ParseError> {
        let fresh = Parser::new(self.format);
        let parser = std::mem::replace(self, fresh);
        let mut out = Out::default();
        match parser.mode {
            Mode::Failed(error) => return Err(error),
            Mode::Call(call) => return Err(ParseError::Unterminated { index: call.index }),
            Mode::Text => {
                if parser.matched > 0 || !parser.after_call {
                    out.text(&parser.held);
                }
            }
            Mode::CloseTag { .. } => out.push(Parsed::CallEnd { index: parser.index }),
            Mode::LlamaLead => out.text(&parser.held),
            Mode::LlamaText => {}
            Mode::LlamaNext { expect_object } => {
                if expect_object && parser.index == 0 {
                    return Err(ParseError::Unterminated { index: 0 });
                }
            }
        }
        Ok(out.events)
    }

    fn step(&mut self, c: char, out: &mut Out) -> Result<(), ParseError> {
        match &mut self.mode {
            Mode::Text => self.hermes_text(c, out),
            Mode::Call(call) => {
                if call.feed(c, out)? {
                    self.mode = match self.format {
                        Format::Hermes => Mode::CloseTag { matched: 0 },
                        Format::Llama3Json => {
                            out.push(Parsed::CallEnd { index: self.index });
                            self.index += 1;
                            Mode::LlamaNext { expect_object: false }
                        }
                    };
                }
            }
            Mode::CloseTag { matched } => {
                if *matched == 0 && is_json_space(c) {
                } else if c.is_ascii() && HERMES_CLOSE.get(*matched) == Some(&(c as u8)) {
                    *matched += 1;
                    if *matched == HERMES_CLOSE.len() {
                        out.push(Parsed::CallEnd { index: self.index });
                        self.index += 1;
                        self.after_call = true;
                        self.mode = Mode::Text;
                    }
                } else {
                    return Err(malformed(self.index, format!("expected `</tool_call>` after the call's object, found {c:?}")));
                }
            }
            Mode::LlamaLead => self.llama_lead(c, out)?,
            Mode::LlamaText => out.text_char(c),
            Mode::LlamaNext { expect_object } => {
                if is_json_space(c) {
                } else if !*expect_object && c == ';' {
                    *expect_object = true;
                } else if *expect_object && c == '{' {
                    self.start_call(c, out)?;
                } else if *expect_object {
                    return Err(malformed(self.index, format!("expected `{{` to open the call, found {c:?}")));
                } else {
                    return Err(malformed(self.index - 1, format!("expected `;` or the end after the call, found {c:?}")));
                }
            }
            Mode::Failed(error) => return Err(error.clone()),
        }
        Ok(())
    }

    fn start_call(&mut self, first: char, out: &mut Out) -> Result<(), ParseError> {
        let mut call = Box::new(Call::new(self.index));
        call.feed(first, out)?;
        self.mode = Mode::Call(call);
        Ok(())
    }

    /// Hermes text: passes on everything but whitespace and a possible start of `<tool_call>`
    /// at the end, which wait for the next character.
    fn hermes_text(&mut self, c: char, out: &mut Out) {
        if self.matched > 0 {
            if c.is_ascii() && HERMES_OPEN[self.matched] == c as u8 {
                self.held.push(c);
                self.matched += 1;
                if self.matched == HERMES_OPEN.len() {
                    // The whitespace before the tag separates it from the text: dropped.
                    self.held.clear();
                    self.matched = 0;
                    self.after_call = false;
                    self.mode = Mode::Call(Box::new(Call::new(self.index)));
                }
                return;
            }
            // Not a tag after all: it was text.
            out.text(&self.held);
            self.held.clear();
            self.matched = 0;
            self.after_call = false;
        }
        if c == '<' {
            self.held.push(c);
            self.matched = 1;
        } else if c.is_whitespace() {
            self.held.push(c);
        } else {
            out.text(&self.held);
            self.held.clear();
            out.text_char(c);
            self.after_call = false;
        }
    }

    /// Llama: the first non-whitespace decides between calls and plain text.
    fn llama_lead(&mut self, c: char, out: &mut Out) -> Result<(), ParseError> {
        if self.matched > 0 {
            if c.is_ascii() && PYTHON_TAG[self.matched] == c as u8 {
                self.held.push(c);
                self.matched += 1;
                if self.matched == PYTHON_TAG.len() {
                    self.held.clear();
                    self.matched = 0;
                    self.mode = Mode::LlamaNext { expect_object: true };
                }
            } else {
                self.held.push(c);
                out.text(&self.held);
                self.held.clear();
                self.matched = 0;
                self.mode = Mode::LlamaText;
            }
        } else if c == '<' {
            self.held.push(c);
            self.matched = 1;
        } else if c.is_whitespace() {
            self.held.push(c);
        } else if c == '{' {
            self.held.clear();
            self.start_call(c, out)?;
        } else {
            self.held.push(c);
            out.text(&self.held);
            self.held.clear();
            self.mode = Mode::LlamaText;
        }
        Ok(())
    }
}

/// The events of one push, adjacent text and adjacent arguments of a call merged.
#[derive(Default)]
struct Out {
    events: Vec<Parsed>,
}

impl Out {
    fn push(&mut self, event: Parsed) {
        self.events.push(event);
    }

    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(Parsed::Text(t)) => t.push_str(s),
            _ => self.events.push(Parsed::Text(s.to_owned())),
        }
    }

    fn text_char(&mut self, c: char) {
        match self.events.last_mut() {
            Some(Parsed::Text(t)) => t.push(c),
            _ => self.events.push(Parsed::Text(c.to_string())),
        }
    }

    fn arguments(&mut self, index: u32, s: &str) {
        if s.is_empty() {
            return;
        }
        match self.events.last_mut() {
            Some(Parsed::Arguments { index: i, delta }) if *i == index => delta.push_str(s),
            _ => self.events.push(Parsed::Arguments { index, delta: s.to_owned() }),
        }
    }

    fn arguments_char(&mut self, index: u32, c: char) {
        match self.events.last_mut() {
            Some(Parsed::Arguments { index: i, delta }) if *i == index => delta.push(c),
            _ => self.events.push(Parsed::Arguments { index, delta: c.to_string() }),
        }
    }
}

/// One call's object, read a character at a time.
#[derive(Debug)]
struct Call {
    index: u32,
    state: Obj,
    /// The object as written, validated once it closes.
    raw: String,
    /// The key being read, as written (quotes included).
    key: String,
    /// What the value being read is.
    field: Field,
    scan: Scan,
    /// The name's string as written.
    name_raw: String,
    name: Option<String>,
    /// Which `"arguments"`/`"parameters"` value came: none yet, an object, a string.
    arguments: Option<ArgumentsKind>,
    /// Arguments that cannot be passed on yet: written before the name, or inside a string.
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    /// Before the `{`.
    Open,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,`: a key.
    NextKey,
    Key,
    Colon,
    ValueStart,
    Value,
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Arguments,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgumentsKind {
    Object,
    String,
}

impl Call {
    fn new(index: u32) -> Call {
        Call {
            index,
            state: Obj::Open,
            raw: String::new(),
            key: String::new(),
            field: Field::Other,
            scan: Scan::default(),
            name_raw: String::new(),
            name: None,
            arguments: None,
            held: String::new(),
        }
    }

    /// Reads one character; true when it closed the object (which is then valid).
    fn feed(&mut self, c: char, out: &mut Out) -> Result<bool, ParseError> {
        self.raw.push(c);
        loop {
            match self.state {
                Obj::Open => {
                    if c == '{' {
                        self.state = Obj::FirstKey;
                    } else if !is_json_space(c) {
                        return Err(self.malformed(format!("expected `{{` to open the call, found {c:?}")));
                    }
                }
                Obj::FirstKey | Obj::NextKey => {
                    if c == '"' {
                        self.key.clear();
                        self.key.push(c);
                        self.scan = Scan { in_string: true, ..Scan::default() };
                        self.state = Obj::Key;
                    } else if c == '}' && self.state == Obj::FirstKey {
                        return self.close(out).map(|()| true);
                    } else if !is_json_space(c) {
                        return Err(self.malformed(format!("expected a key, found {c:?}")));
                    }
                }
                Obj::Key => {
                    self.key.push(c);
                    if self.scan.step(c).map_err(|d| self.malformed(d))? == Step::Ended {
                        self.field = self.key_field()?;
                        self.state = Obj::Colon;
                    }
                }
                Obj::Colon => {
                    if c == ':' {
                        self.state = Obj::ValueStart;
                    } else if !is_json_space(c) {
                        return Err(self.malformed(format!("expected `:`, found {c:?}")));
                    }
                }
                Obj::ValueStart => {
                    if is_json_space(c) {
                        return Ok(false);
                    }
                    match self.field {
                        Field::Name if c != '"' => {
                            return Err(self.malformed("\"name\" is not a string".into()));
                        }
                        Field::Arguments => {
                            self.arguments = Some(match c {
                                '{' => ArgumentsKind::Object,
                                '"' => ArgumentsKind::String,
                                _ => {
                                    return Err(ParseError::ArgumentsNotObject { index: self.index });
                                }
                            });
                        }
                        _ => {}
                    }
                    self.scan = Scan::default();
                    self.scan.start(c).map_err(|d| self.malformed(d))?;
                    self.record(c, out);
                    self.state = Obj::Value;
                }
                Obj::Value => match self.scan.step(c).map_err(|d| self.malformed(d))? {
                    Step::Inside => self.record(c, out),
                    Step::Ended => {
                        self.record(c, out);
                        self.value_done(out)?;
                        self.state = Obj::AfterValue;
                    }
                    Step::EndedBefore => {
                        // A number or literal ended at `c`, which belongs to the object.
                        self.value_done(out)?;
                        self.state = Obj::AfterValue;
                        continue;
                    }
                },
                Obj::AfterValue => {
                    if c == ',' {
                        self.state = Obj::NextKey;
                    } else if c == '}' {
                        return self.close(out).map(|()| true);
                    } else if !is_json_space(c) {
                        return Err(self.malformed(format!("expected `,` or `}}`, found {c:?}")));
                    }
                }
            }
            return Ok(false);
        }
    }

    fn key_field(&self) -> Result<Field, ParseError> {
        let key: String = serde_json::from_str(&self.key).map_err(|e| self.malformed(format!("bad key {}: {e}", self.key)))?;
        let field = match key.as_str() {
            "name" => Field::Name,
            "arguments" | "parameters" => Field::Arguments,
            _ => Field::Other,
        };
        let duplicate = match field {
            Field::Name => self.name.is_some(),
            Field::Arguments => self.arguments.is_some(),
            Field::Other => false,
        };
        if duplicate {
            return Err(self.malformed(format!("a second {}", self.key)));
        }
        Ok(field)
    }

    /// Keeps a character of the value being read.
    fn record(&mut self, c: char, out: &mut Out) {
        match (self.field, self.arguments) {
            (Field::Name, _) => self.name_raw.push(c),
            (Field::Arguments, Some(ArgumentsKind::Object)) if self.name.is_some() => out.arguments_char(self.index, c),
            (Field::Arguments, _) => self.held.push(c),
            (Field::Other, _) => {}
        }
    }

    fn value_done(&mut self, out: &mut Out) -> Result<(), ParseError> {
        match self.field {
            Field::Name => {
                let name: String =
                    serde_json::from_str(&self.name_raw).map_err(|e| self.malformed(format!("bad name {}: {e}", self.name_raw)))?;
                if name.is_empty() {
                    return Err(ParseError::MissingName { index: self.index });
                }
                out.push(Parsed::CallStart { index: self.index, name: name.clone() });
                self.name = Some(name);
                out.arguments(self.index, &self.held);
                self.held.clear();
            }
            Field::Arguments if self.arguments == Some(ArgumentsKind::String) => {
                // Some models write the arguments as a string of JSON, as OpenAI's API carries
                // them: accepted when it holds an object, whose text is then the arguments.
                let text: String = serde_json::from_str(&self.held).map_err(|e| self.malformed(format!("bad arguments string: {e}")))?;
                if !serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()) {
                    return Err(ParseError::ArgumentsNotObject { index: self.index });
                }
                self.held = text;
                if self.name.is_some() {
                    out.arguments(self.index, &self.held);
                    self.held.clear();
                }
            }
            Field::Arguments | Field::Other => {}
        }
        Ok(())
    }

    /// The object closed: it must be valid JSON with a name.
    fn close(&mut self, out: &mut Out) -> Result<(), ParseError> {
        if let Err(e) = serde_json::from_str::<Value>(&self.raw) {
            return Err(self.malformed(e.to_string()));
        }
        if self.name.is_none() {
            return Err(ParseError::MissingName { index: self.index });
        }
        if self.arguments.is_none() {
            // A call of a function without parameters may leave its arguments out.
            out.arguments(self.index, "{}");
        }
        Ok(())
    }

    fn malformed(&self, detail: String) -> ParseError {
        malformed(self.index, detail)
    }
}

fn malformed(index: u32, detail: String) -> ParseError {
    ParseError::Malformed { index, detail }
}

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Finds where one JSON value ends, without checking more than its structure (strings,
/// escapes, bracket nesting); the whole call is checked by `serde_json` once it closes.
#[derive(Debug, Default)]
struct Scan {
    /// Open brackets, innermost last.
    stack: Vec<char>,
    in_string: bool,
    escape: bool,
    /// A number or literal, which ends at the first character that is not part of it.
    scalar: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The character is part of the value, which goes on.
    Inside,
    /// The character ended the value.
    Ended,
    /// The value ended before the character.
    EndedBefore,
}

impl Scan {
    fn start(&mut self, c: char) -> Result<(), String> {
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.stack.push(c),
            '-' | '0'..='9' | 't' | 'f' | 'n' => self.scalar = true,
            _ => return Err(format!("unexpected {c:?} where a value belongs")),
        }
        Ok(())
    }

    fn step(&mut self, c: char) -> Result<Step, String> {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if c == '\\' {
                self.escape = true;
            } else if c == '"' {
                self.in_string = false;
                if self.stack.is_empty() {
                    return Ok(Step::Ended);
                }
            }
            return Ok(Step::Inside);
        }
        if self.scalar {
            return Ok(if matches!(c, ',' | '}' | ']') || is_json_space(c) { Step::EndedBefore } else { Step::Inside });
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.stack.push(c),
            '}' | ']' => {
                let open = if c == '}' { '{' } else { '[' };
                if self.stack.pop() != Some(open) {
                    return Err(format!("unexpected {c:?}"));
                }
                if self.stack.is_empty() {
                    return Ok(Step::Ended);
                }
            }
            _ => {}
        }
        Ok(Step::Inside)
    }
}

#[cfg(test)]
mod tests;
