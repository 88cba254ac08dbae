use serde_json::{Value, json};

use crate::{Matcher, Rejected, Unsupported, Vocabulary};

/// xorshift64*: a seeded pseudo-random source.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// Every single byte, then multi-byte pieces (partial UTF-8, escapes, JSON fragments), then an
/// empty special token.
fn test_vocab() -> Vocabulary {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let pieces: &[&[u8]] = &[
        b"{\"",
        b"\"}",
        b"\":",
        b"\": ",
        b"\", \"",
        b", \"",
        b",\"",
        b"},",
        b"}, ",
        b"],",
        b"[{",
        b"[[",
        b"]]",
        b"[]",
        b"{}",
        b"true",
        b"false",
        b"null",
        b"nul",
        b"tr",
        b"12",
        b"00",
        b"0.5",
        b"-1",
        b"e+",
        b"1e",
        b".0",
        b"\"a\"",
        b"\"a\": ",
        b"\"b\": 1",
        b" \"",
        b"  ",
        b"hello",
        b" world",
        "é".as_bytes(),
        "日本".as_bytes(),
        b"\xe6\x97",
        b"\xa5",
        b"\xf0\x9f\x98",
        b"\x80",
        b"\\n",
        b"\\\"",
        b"\\u00e9",
        b"\\ud83d",
        b"\\ude00",
        b"\\u",
        b"\"red\"",
        b"\"gr",
        b"een\"",
        b"{\"a\": ",
        b", \"b\": ",
        b"\"a\":",
        b",\"b\":",
        b"\"\"",
        b"\r\n",
        b"\":\"",
        b"\"]",
        b"[\"",
        b"\"name\": \"",
        b"\"tags\": [",
        b"\"kind\": ",
        b"\"x\"",
        b"\"y\": ",
        b"\"next\": ",
        b"\"value\": ",
        b"\"value\":",
        b"\"children\": [",
        b"\"left\"",
        b"\"right\"",
        b"\"up\"",
        b"\\\\",
        b"\\/",
        b"\\t",
        b"Ab",
        b"\"1\"",
        b"\"\\u",
        b"ab\"",
        "日\"".as_bytes(),
        b"\xa5\"",
        b"\x97\xa5\", ",
        b"x\\n",
        "é\",".as_bytes(),
        b"ok\"}",
    ];
    tokens.extend(pieces.iter().map(|p| p.to_vec()));
    tokens.push(Vec::new());
    Vocabulary::new(tokens)
}

fn mask(m: &Matcher, vocab: &Vocabulary) -> Vec<bool> {
    let mut out = vec![false; vocab.len()];
    m.allowed(vocab, &mut out);
    out
}

/// A random walk: uniform among the allowed tokens; stops at random once complete, and must
/// stop when nothing is allowed. Returns the text and the token count, `None` past `cap`.
fn generate(
    mut m: Matcher,
    vocab: &Vocabulary,
    rng: &mut Rng,
    cap: usize,
    check_agreement: bool,
) -> Option<(Vec<u8>, usize)> {
    let mut text = Vec::new();
    for steps in 0..cap {
        let allowed = mask(&m, vocab);
        if check_agreement {
            for (t, &ok) in allowed.iter().enumerate() {
                let advanced = m.clone().advance(vocab.bytes(t as u32)).is_ok();
                assert_eq!(
                    ok,
                    advanced,
                    "token {:?} after {:?}",
                    String::from_utf8_lossy(vocab.bytes(t as u32)),
                    String::from_utf8_lossy(&text)
                );
            }
        }
        let ids: Vec<u32> = (0..vocab.len() as u32).filter(|&t| allowed[t as usize]).collect();
        if ids.is_empty() {
            assert!(m.is_complete(), "stuck after {:?}", String::from_utf8_lossy(&text));
            return Some((text, steps));
        }
        if m.is_complete() && rng.below(4) == 0 {
            return Some((text, steps));
        }
        let t = ids[rng.below(ids.len())];
        m.advance(vocab.bytes(t)).expect("an allowed token advances");
        text.extend_from_slice(vocab.bytes(t));
    }
    None
}

/// A checker for the subset this crate implements (what a generated value must satisfy).
/// `closed`: with `properties`, only declared keys (what the matcher generates); off inside
/// `allOf`, whose members each see only part of the properties.
fn check(schema: &Value, v: &Value, root: &Value) -> Result<(), String> {
    check_in(schema, v, root, true)
}

fn check_in(schema: &Value, v: &Value, root: &Value, closed: bool) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{v} fails {what} of {schema}"));
    let m = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return fail("false"),
        Value::Object(m) => m,
        _ => panic!("bad schema"),
    };
    if let Some(Value::String(r)) = m.get("$ref") {
        check_in(root.pointer(&r[1..]).expect("ref resolves"), v, root, closed)?;
    }
    if let Some(Value::Array(all)) = m.get("allOf") {
        for s in all {
            check_in(s, v, root, false)?;
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(any)) = m.get(key)
            && !any.iter().any(|s| check(s, v, root).is_ok())
        {
            return fail(key);
        }
    }
    if let Some(t) = m.get("type") {
        let names: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!(),
        };
        let ok = names.iter().any(|&n| match n {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            // Integers past u64 parse as f64 (the text has no `.` or exponent: see the tests).
            "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => panic!(),
        });
        if !ok {
            return fail("type");
        }
    }
    if let Some(Value::Array(e)) = m.get("enum")
        && !e.contains(v)
    {
        return fail("enum");
    }
    if let Some(c) = m.get("const")
        && c != v
    {
        return fail("const");
    }
    match v {
        Value::String(s) => {
            let n = s.chars().count() as u64;
            if m.get("minLength").and_then(Value::as_u64).is_some_and(|min| n < min) {
                return fail("minLength");
            }
            if m.get("maxLength").and_then(Value::as_u64).is_some_and(|max| n > max) {
                return fail("maxLength");
            }
        }
        Value::Array(a) => {
            let n = a.len() as u64;
            if m.get("minItems").and_then(Value::as_u64).is_some_and(|min| n < min) {
                return fail("minItems");
            }
            if m.get("maxItems").and_then(Value::as_u64).is_some_and(|max| n > max) {
                return fail("maxItems");
            }
            let prefix = m.get("prefixItems").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            for (i, x) in a.iter().enumerate() {
                match prefix.get(i) {
                    Some(s) => check(s, x, root)?,
                    None => {
                        if let Some(s) = m.get("items") {
                            check(s, x, root)?;
                        }
                    }
                }
            }
        }
        Value::Object(o) => {
            let props = m.get("properties").and_then(Value::as_object);
            for r in m.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return fail("required");
                }
            }
            for (k, x) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => check(s, x, root)?,
                    None => match m.get("additionalProperties") {
                        Some(s) => check(s, x, root)?,
                        None if closed && props.is_some_and(|p| !p.is_empty()) => {
                            return fail("declared properties only");
                        }
                        None => {}
                    },
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 3},
                "kind": {"enum": ["red", "green", 3, null, {"a": [1, 2]}]},
                "score": {"type": ["number", "null"]},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "kind"]
        }),
        json!({
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "integer"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}
                    },
                    "required": ["value"]
                },
                "Dir": {"type": "string", "enum": ["left", "right", "up"]}
            },
            "type": "object",
            "properties": {
                "root": {"$ref": "#/$defs/Node"},
                "dir": {"anyOf": [{"$ref": "#/$defs/Dir"}, {"type": "null"}]},
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}
            },
            "required": ["root", "dir"]
        }),
        json!({"type": "array", "items": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "boolean"}}}, "minItems": 1}),
        json!({"oneOf": [{"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]}, {"type": "object", "properties": {"y": {"type": "string"}}, "required": ["y"]}]}),
        json!({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}),
        json!({"type": "number"}),
        json!({"type": "string", "minLength": 2, "maxLength": 5}),
        json!({}),
    ]
}

#[test]
fn generated_values_parse_and_match() {
    let vocab = test_vocab();
    for schema in schemas().into_iter().chain([Value::Null]) {
        let matcher = Matcher::new(if schema.is_null() { None } else { Some(&schema) }).unwrap();
        let mut rng = Rng::new(7);
        let mut finished = 0;
        for _ in 0..200 {
            let Some((text, _)) = generate(matcher.clone(), &vocab, &mut rng, 3000, false) else { continue };
            finished += 1;
            let text = String::from_utf8(text).expect("UTF-8");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
            if schema.is_null() {
                assert!(v.is_object(), "{text}");
            } else {
                check(&schema, &v, &schema).unwrap_or_else(|e| panic!("{text}: {e}"));
            }
            // The layout: no whitespace but single spaces after `:` and `,`.
            assert!(!text.contains('\n') && !text.starts_with(' ') && !text.ends_with(' '), "{text:?}");
        }
        assert!(finished >= 180, "only {finished} of 200 finished for {schema}");
    }
}

#[test]
fn allowed_agrees_with_advance() {
    let vocab = test_vocab();
    for schema in schemas() {
        let matcher = Matcher::new(Some(&schema)).unwrap();
        let mut rng = Rng::new(11);
        for _ in 0..15 {
            generate(matcher.clone(), &vocab, &mut rng, 150, true);
        }
    }
}

#[test]
fn object_of_integers_terminates() {
    let vocab = test_vocab();
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
    let matcher = Matcher::new(Some(&schema)).unwrap();
    let mut rng = Rng::new(1);
    let (mut total, mut longest) = (0, 0);
    let runs = 1000;
    for _ in 0..runs {
        let (text, tokens) = generate(matcher.clone(), &vocab, &mut rng, 1000, false).expect("terminates");
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert!(v["a"].is_number() && v["b"].is_number() && v.as_object().unwrap().len() == 2);
        assert!(!text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')));
        // Everything but the digits is bounded: `{"a": ` … `, "b": ` … `}` is 16 bytes at most.
        let structure = text.iter().filter(|b| !b.is_ascii_digit()).count();
        assert!(structure <= 16, "{}", String::from_utf8_lossy(&text));
        total += tokens;
        longest = longest.max(tokens);
    }
    let mean = total as f64 / runs as f64;
    eprintln!("object of integers: mean {mean:.1} tokens, longest {longest}");
    assert!(mean <= 40.0, "mean {mean}");
}

fn walk(m: &mut Matcher, text: &str) -> Result<(), Rejected> {
    m.advance(text.as_bytes())
}

fn accepts(schema: Option<Value>, text: &str) -> bool {
    let mut m = Matcher::new(schema.as_ref()).unwrap();
    walk(&mut m, text).is_ok() && m.is_complete()
}

#[test]
fn enums_are_forced_exactly() {
    let schema = json!({"enum": ["red", "green", 3, 3.5, null, {"a": [1, 2]}, [true]]});
    for ok in [r#""red""#, r#""green""#, "3", "3.5", "null", r#"{"a": [1, 2]}"#, "[true]"] {
        assert!(accepts(Some(schema.clone()), ok), "{ok}");
    }
    for bad in [r#""gree""#, r#""blue""#, "4", "3.50", r#"{"a":[1,2]}"#, "[ true]", "nul"] {
        assert!(!accepts(Some(schema.clone()), bad), "{bad}");
    }
    // `3` is complete and may go on to `3.5`.
    let mut m = Matcher::new(Some(&schema)).unwrap();
    walk(&mut m, "3").unwrap();
    assert!(m.is_complete());
    walk(&mut m, ".").unwrap();
    assert!(!m.is_complete());
    // After `"g` only `reen"` can follow.
    let vocab = test_vocab();
    let mut m = Matcher::new(Some(&schema)).unwrap();
    walk(&mut m, "\"g").unwrap();
    let allowed = mask(&m, &vocab);
    let ids: Vec<&[u8]> = (0..vocab.len() as u32).filter(|&t| allowed[t as usize]).map(|t| vocab.bytes(t)).collect();
    assert_eq!(ids, vec![b"r".as_slice()]);
    // const, and enum filtered by type.
    assert!(accepts(Some(json!({"const": {"k": "v"}})), r#"{"k": "v"}"#));
    assert!(!accepts(Some(json!({"type": "string", "enum": ["a", 1]})), "1"));
}

#[test]
fn refs_and_defs() {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Args",
        "type": "object",
        "properties": {
            "point": {"$ref": "#/$defs/Point", "description": "where"},
            "old": {"$ref": "#/definitions/Old"},
            "list": {"$ref": "#/$defs/List"}
        },
        "required": ["point"],
        "$defs": {
            "Point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
            "List": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"head": {"type": "integer"}, "tail": {"$ref": "#/$defs/List"}}, "required": ["head", "tail"]}]}
        },
        "definitions": {"Old": {"type": "boolean"}}
    });
    let s = Some(schema);
    assert!(accepts(s.clone(), r#"{"point": {"x": 1.5, "y": -2e3}}"#));
    assert!(accepts(
        s.clone(),
        r#"{"point": {"x": 0, "y": 0}, "old": true, "list": {"head": 1, "tail": {"head": 2, "tail": null}}}"#
    ));
    assert!(!accepts(s.clone(), r#"{"point": {"x": 0}}"#));
    assert!(!accepts(s.clone(), r#"{"old": true}"#));
    assert!(!accepts(s.clone(), r#"{"point": {"x": 0, "y": 0}, "list": {"head": 1}}"#));
    // Declared order only.
    assert!(!accepts(s, r#"{"point": {"y": 0, "x": 0}}"#));
    assert!(matches!(Matcher::new(Some(&json!({"$ref": "#/$defs/Missing"}))), Err(Unsupported(_))));
    assert!(matches!(Matcher::new(Some(&json!({"$ref": "other.json#/x"}))), Err(Unsupported(_))));
    assert!(matches!(Matcher::new(Some(&json!(false))), Err(Unsupported(_))));
    assert!(matches!(Matcher::new(Some(&json!({"type": "strin"}))), Err(Unsupported(_))));
    // A required property that can have no value makes the object impossible.
    assert!(Matcher::new(Some(&json!({"type": "object", "properties": {"a": false}, "required": ["a"]}))).is_err());
    // An optional one is dropped.
    assert!(accepts(
        Some(json!({"type": "object", "properties": {"a": false, "b": {"type": "null"}}})),
        r#"{"b": null}"#
    ));
}

#[test]
fn nested_arrays_and_objects() {
    let schema = json!({"type": "array", "items": {"type": "object", "properties": {"m": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}}});
    let s = Some(schema);
    assert!(accepts(s.clone(), "[]"));
    assert!(accepts(s.clone(), r#"[{}, {"m": []}, {"m": [[1, 2], [], [3]]}]"#));
    assert!(accepts(s.clone(), r#"[{"m":[[1,2]]}]"#));
    assert!(!accepts(s.clone(), r#"[{"m": [[1.5]]}]"#));
    assert!(!accepts(s.clone(), r#"[{"m": [[1, 2],]}]"#));
    assert!(!accepts(s, r#"[{"n": 1}]"#));
    let bounded = Some(json!({"type": "array", "minItems": 2, "maxItems": 3}));
    assert!(!accepts(bounded.clone(), "[1]"));
    assert!(accepts(bounded.clone(), r#"[1, "a"]"#));
    assert!(accepts(bounded.clone(), "[1, [2], {}]"));
    assert!(!accepts(bounded, "[1, 2, 3, 4]"));
    // json_object: any object, free-form keys and values.
    assert!(accepts(None, r#"{"k": [1, {"z": null}], "k": "dup", "": -0.0e+1}"#));
    assert!(!accepts(None, "[1]"));
    assert!(!accepts(None, r#""s""#));
}

#[test]
fn whitespace_rule() {
    let s = Some(json!({"type": "object", "additionalProperties": {"type": "array"}}));
    assert!(accepts(s.clone(), r#"{"a": [1, 2], "b": []}"#));
    assert!(accepts(s.clone(), r#"{"a":[1,2],"b":[]}"#));
    for bad in [
        r#"{"a":  [1]}"#,
        r#"{ "a": [1]}"#,
        r#"{"a" : [1]}"#,
        r#"{"a": [1] }"#,
        r#"{"a": [ 1]}"#,
        "{\"a\":\n[1]}",
        r#" {"a": [1]}"#,
        r#"{"a": [1],  "b": []}"#,
    ] {
        assert!(!accepts(s.clone(), bad), "{bad}");
    }
    let mut m = Matcher::new(s.as_ref()).unwrap();
    walk(&mut m, "{}").unwrap();
    assert!(walk(&mut m, " ").is_err());
}

#[test]
fn escapes_and_utf8() {
    let s = Some(json!({"type": "string"}));
    assert!(accepts(s.clone(), r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD83D\uDE00 é 日本 😀""#));
    for bad in [
        r#""\x""#,
        r#""\u12g4""#,
        r#""\udc00""#,
        r#""\ud83d""#,
        r#""\ud83dx""#,
        r#""\ud83d\u0041""#,
        "\"a\nb\"",
        "\"\t\"",
    ] {
        assert!(!accepts(s.clone(), bad), "{bad}");
    }
    // Partial UTF-8 across tokens.
    let mut m = Matcher::new(s.as_ref()).unwrap();
    m.advance(b"\"\xe6").unwrap();
    assert!(m.advance(b"\"").is_err());
    assert!(m.advance(b"\x41").is_err());
    m.advance(b"\x97").unwrap();
    m.advance(b"\xa5\"").unwrap();
    assert!(m.is_complete());
    // Invalid UTF-8: overlongs, surrogates, past U+10FFFF, stray continuation bytes.
    for bad in [b"\"\xc0\x80\"".as_slice(), b"\"\xed\xa0\x80\"", b"\"\xf4\x90\x80\x80\"", b"\"\x80\"", b"\"\xff\""] {
        let mut m = Matcher::new(s.as_ref()).unwrap();
        assert!(m.advance(bad).is_err(), "{bad:?}");
    }
    // Every accepted escape parses with serde_json to the same string.
    let text = r#""\u00e9\ud83d\ude00\n""#;
    assert_eq!(serde_json::from_str::<String>(text).unwrap(), "é😀\n");
    // Lone surrogates are rejected by serde_json too, so forbidding them is not stricter.
    assert!(serde_json::from_str::<String>(r#""\ud83d""#).is_err());
}

#[test]
fn string_lengths_count_characters() {
    let s = Some(json!({"type": "string", "minLength": 2, "maxLength": 3}));
    assert!(!accepts(s.clone(), r#""a""#));
    assert!(accepts(s.clone(), r#""ab""#));
    assert!(accepts(s.clone(), r#""日本語""#));
    assert!(accepts(s.clone(), r#""\n\uD83D\uDE00x""#));
    assert!(!accepts(s.clone(), r#""abcd""#));
    let vocab = test_vocab();
    let mut m = Matcher::new(s.as_ref()).unwrap();
    walk(&mut m, "\"ab").unwrap();
    let allowed = mask(&m, &vocab);
    let b = |t: &[u8]| allowed[(0..vocab.len() as u32).find(|&i| vocab.bytes(i) == t).unwrap() as usize];
    assert!(b(b"c") && b("é".as_bytes()) && b(b"\"") && b(b"\\n"));
    assert!(!b(b"hello") && !b("日本".as_bytes()) && !b(b"Ab"));
}

#[test]
fn is_complete_semantics() {
    let n = Some(json!({"type": "number"}));
    let mut m = Matcher::new(n.as_ref()).unwrap();
    assert!(!m.is_complete());
    walk(&mut m, "-").unwrap();
    assert!(!m.is_complete());
    walk(&mut m, "12").unwrap();
    assert!(m.is_complete());
    let vocab = test_vocab();
    let allowed = mask(&m, &vocab);
    assert!(allowed[b'3' as usize] && allowed[b'.' as usize] && allowed[b'e' as usize] && !allowed[b',' as usize]);
    walk(&mut m, ".").unwrap();
    assert!(!m.is_complete());
    walk(&mut m, "5e+7").unwrap();
    assert!(m.is_complete());
    let i = Some(json!({"type": "integer"}));
    assert!(accepts(i.clone(), "0") && accepts(i.clone(), "-10") && !accepts(i.clone(), "01"));
    assert!(!accepts(i.clone(), "1.0") && !accepts(i.clone(), "1e3") && !accepts(i, "-"));
    // A finished object allows nothing more.
    let mut m = Matcher::new(None).unwrap();
    walk(&mut m, r#"{"a": 1}"#).unwrap();
    assert!(m.is_complete());
    assert!(mask(&m, &vocab).iter().all(|&a| !a));
    // Empty tokens are never allowed or accepted.
    assert!(m.clone().advance(b"").is_err());
    let fresh = Matcher::new(None).unwrap();
    assert!(!mask(&fresh, &vocab)[vocab.len() - 1]);
    // A rejected token leaves the matcher as it was.
    let mut m = Matcher::new(None).unwrap();
    assert_eq!(m.advance(b"{\"a\"x"), Err(Rejected { offset: 4 }));
    m.advance(b"{}").unwrap();
    assert!(m.is_complete());
}

#[test]
fn optional_properties_and_unions() {
    let s = Some(json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}, "ab": {"type": "string"}, "b": {"type": "boolean"}, "c": {"type": "null"}},
        "required": ["b"]
    }));
    for ok in [
        r#"{"b": true}"#,
        r#"{"a": 1, "b": true}"#,
        r#"{"ab": "x", "b": false, "c": null}"#,
        r#"{"a": 1, "ab": "", "b": true}"#,
    ] {
        assert!(accepts(s.clone(), ok), "{ok}");
    }
    for bad in [r#"{}"#, r#"{"c": null}"#, r#"{"b": true, "a": 1}"#, r#"{"b": true,}"#, r#"{"b": true, "b": true}"#] {
        assert!(!accepts(s.clone(), bad), "{bad}");
    }
    // Unions of objects keep both branches alive until the bytes decide.
    let u = Some(json!({"anyOf": [
        {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]},
        {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]},
        {"type": "string", "maxLength": 1},
        {"type": "string", "minLength": 3}
    ]}));
    for ok in [r#"{"k": 1}"#, r#"{"k": "1"}"#, r#""a""#, r#""abc""#] {
        assert!(accepts(u.clone(), ok), "{ok}");
    }
    assert!(!accepts(u.clone(), r#""ab""#));
    assert!(!accepts(u, r#"{"k": null}"#));
    // Siblings of anyOf apply to every branch.
    let d = Some(
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "anyOf": [{"required": ["a"]}, {"properties": {"b": {"type": "null"}}, "required": ["b"]}]}),
    );
    assert!(accepts(d.clone(), r#"{"a": 1}"#));
    assert!(accepts(d.clone(), r#"{"a": 1, "b": null}"#));
    assert!(!accepts(d, r#"{}"#));
    // Type arrays.
    let t = Some(json!({"type": ["string", "null"]}));
    assert!(accepts(t.clone(), "null") && accepts(t.clone(), r#""x""#) && !accepts(t, "1"));
}

#[test]
fn numbers_stay_finite_f64() {
    let n = Some(json!({"type": "number"}));
    let i = Some(json!({"type": "integer"}));
    let nines = |k: usize| "9".repeat(k);
    for ok in
        ["9.99e307", "0.5e308", "1e-99999999", "-12e306", "1E+0000307", &nines(308), &format!("{}.5e0", nines(308))]
    {
        assert!(accepts(n.clone(), ok), "{ok}");
        serde_json::from_str::<Value>(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["1e308", "1e309", "12e307", "1e0000309", &nines(309)] {
        assert!(!accepts(n.clone(), bad), "{bad}");
    }
    assert!(accepts(i.clone(), &nines(308)) && !accepts(i, &format!("1{}", "0".repeat(308))));
    // What the limit guards against: serde_json refuses these.
    assert!(serde_json::from_str::<Value>("1e309").is_err());
    assert!(serde_json::from_str::<Value>(&format!("2{}", "0".repeat(308))).is_err());
}

#[test]
fn shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Matcher>();
    send_sync::<Vocabulary>();
}

#[test]
fn refs_with_constraining_siblings_merge() {
    let s = Some(json!({"$defs": {"S": {"type": "string", "minLength": 1}}, "$ref": "#/$defs/S", "maxLength": 2}));
    assert!(accepts(s.clone(), r#""ab""#));
    assert!(!accepts(s.clone(), r#""""#));
    assert!(!accepts(s, r#""abc""#));
    // allOf of objects: the properties of both, in order.
    let a = Some(json!({"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"$ref": "#/$defs/B"}
    ], "$defs": {"B": {"properties": {"b": {"type": ["string", "integer"]}, "a": {"minimum": 3}}, "required": ["b"]}}}));
    assert!(accepts(a.clone(), r#"{"a": 1, "b": "x"}"#));
    assert!(!accepts(a.clone(), r#"{"a": 1}"#));
    assert!(!accepts(a, r#"{"a": "1", "b": 2}"#));
    // Conflicting types under allOf admit nothing.
    assert!(Matcher::new(Some(&json!({"allOf": [{"type": "string"}, {"type": "integer"}]}))).is_err());
    assert!(accepts(Some(json!({"allOf": [{"type": "number"}, {"type": "integer"}]})), "12"));
    assert!(!accepts(Some(json!({"allOf": [{"type": "number"}, {"type": "integer"}]})), "1.5"));
}
