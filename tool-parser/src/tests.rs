use super::*;

/// Pushes the pieces, then finishes; all events in order, or the first error.
fn run(format: Format, pieces: &[&str]) -> Result<Vec<Parsed>, ParseError> {
    let mut parser = Parser::new(format);
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(parser.push(piece)?);
    }
    events.extend(parser.finish()?);
    Ok(events)
}

/// Events with adjacent text and adjacent arguments of a call merged, so that outputs pushed
/// in different pieces compare equal.
fn merged(events: Vec<Parsed>) -> Vec<Parsed> {
    let mut out = Out::default();
    for event in events {
        match event {
            Parsed::Text(t) => out.text(&t),
            Parsed::Arguments { index, delta } => out.arguments(index, &delta),
            other => out.push(other),
        }
    }
    out.events
}

/// Every way of streaming `output` — split once at each char boundary, and one char at a
/// time — gives the same merged events (or the same error) as one push.
fn assert_split_invariant(format: Format, output: &str) -> Result<Vec<Parsed>, ParseError> {
    let whole = run(format, &[output]).map(merged);
    for (i, _) in output.char_indices().skip(1) {
        let (a, b) = output.split_at(i);
        assert_eq!(run(format, &[a, b]).map(merged), whole, "split at byte {i} of {output:?}");
    }
    let chars: Vec<String> = output.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(run(format, &chars).map(merged), whole, "one char at a time: {output:?}");
    whole
}

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_owned(), arguments.to_owned())
}

fn collected(format: Format, output: &str) -> (String, Vec<(String, String)>) {
    let events = assert_split_invariant(format, output).expect("parses");
    let answer = collect(&events);
    assert_eq!(parse(format, output).as_ref(), Ok(&answer));
    answer
}

fn error(format: Format, output: &str) -> ParseError {
    assert_split_invariant(format, output).expect_err("a parse error")
}

const QWEN_ONE: &str = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"unit\": \"celsius\"}}\n</tool_call>";

#[test]
fn one_call() {
    let events = run(Format::Hermes, &[QWEN_ONE]).unwrap();
    assert_eq!(
        events,
        [
            Parsed::CallStart { index: 0, name: "get_current_temperature".into() },
            Parsed::Arguments { index: 0, delta: "{\"location\": \"San Francisco, CA, USA\", \"unit\": \"celsius\"}".into() },
            Parsed::CallEnd { index: 0 },
        ]
    );
    assert_split_invariant(Format::Hermes, QWEN_ONE).unwrap();
}

#[test]
fn parallel_calls() {
    let output = "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": \"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", \"arguments\": {\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>";
    assert_eq!(
        collected(Format::Hermes, output),
        (
            String::new(),
            vec![
                call("get_current_temperature", "{\"location\": \"San Francisco, CA, USA\"}"),
                call("get_temperature_date", "{\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}"),
            ]
        )
    );
    let events = run(Format::Hermes, &[output]).unwrap();
    let indices: Vec<_> = events
        .iter()
        .map(|e| match e {
            Parsed::CallStart { index, .. } => ("start", *index),
            Parsed::Arguments { index, .. } => ("args", *index),
            Parsed::CallEnd { index } => ("end", *index),
            Parsed::Text(t) => panic!("text {t:?}"),
        })
        .collect();
    assert_eq!(indices, [("start", 0), ("args", 0), ("end", 0), ("start", 1), ("args", 1), ("end", 1)]);
}

#[test]
fn text_then_call_then_text() {
    let output = format!("I'll look that up for you.\n\n{QWEN_ONE}\nDone  ");
    let (text, calls) = collected(Format::Hermes, &output);
    assert_eq!(text, "I'll look that up for you.\nDone  ");
    assert_eq!(calls.len(), 1);
    let events = run(Format::Hermes, &[&output]).unwrap();
    assert_eq!(events[0], Parsed::Text("I'll look that up for you.".into()));
}

#[test]
fn text_is_passed_on_without_waiting() {
    let mut parser = Parser::new(Format::Hermes);
    assert_eq!(parser.push("Hello").unwrap(), [Parsed::Text("Hello".into())]);
    // A space may be the separator before a tag: it waits for the next character.
    assert_eq!(parser.push(" ").unwrap(), []);
    assert_eq!(parser.push("wor").unwrap(), [Parsed::Text(" wor".into())]);
    // Only the part that could start `<tool_call>` is held back.
    assert_eq!(parser.push("ld <to").unwrap(), [Parsed::Text("ld".into())]);
    assert_eq!(parser.push("p>").unwrap(), [Parsed::Text(" <top>".into())]);
    assert_eq!(parser.push("\n").unwrap(), []);
    assert_eq!(parser.finish().unwrap(), [Parsed::Text("\n".into())]);
}

#[test]
fn plain_text_keeps_every_byte() {
    for output in [
        "",
        "Hello, world!",
        "  leading and trailing \n\n",
        "a <tool is a thing",
        "ends with <tool",
        "ends with <tool_call",
        "<tool_cal> is not a tag, nor is </tool_call> outside a call",
        "<<tool_call",
        "Grüße 🌧 <日本>",
    ] {
        assert_eq!(collected(Format::Hermes, output), (output.to_owned(), vec![]), "{output:?}");
    }
}

#[test]
fn arguments_split_at_every_boundary() {
    let outputs = [
        QWEN_ONE.to_owned(),
        format!("Sure.\n{QWEN_ONE}\n{QWEN_ONE}\nAnything else?"),
        "<tool_call>{\"name\":\"f\",\"arguments\":{\"n\":-1.5e3,\"ok\":true,\"none\":null,\"list\":[1,[2,{}],\"]\"]}}</tool_call>"
            .to_owned(),
        "<tool_call>\n{\"arguments\": {\"x\": 1}, \"name\": \"late_name\"}\n</tool_call>".to_owned(),
        "<tool_call>\n{\"name\": \"f\", \"id\": 7, \"parameters\": {\"q\": \"a\\\\b\"}, \"extra\": [null]}\n</tool_call>".to_owned(),
    ];
    for output in &outputs {
        let (_, calls) = collected(Format::Hermes, output);
        for (_, arguments) in &calls {
            assert!(output.contains(arguments.as_str()), "{arguments:?} is a substring");
        }
    }
}

#[test]
fn tags_split_across_pushes() {
    let pieces = [
        "Let me check.\n<",
        "tool",
        "_ca",
        "ll>",
        "\n{\"na",
        "me\": \"get_",
        "weather\", \"argu",
        "ments\": {\"ci",
        "ty\": \"Paris\"}",
        "}\n</tool",
        "_call",
        ">",
    ];
    let events = run(Format::Hermes, &pieces).unwrap();
    assert_eq!(collect(&events), ("Let me check.".into(), vec![call("get_weather", "{\"city\": \"Paris\"}")]));
    // The name is announced as soon as its string closes, before any argument.
    let mut parser = Parser::new(Format::Hermes);
    parser.push("<tool_call>\n{\"name\": \"get_weather").unwrap();
    assert_eq!(parser.push("\"").unwrap(), [Parsed::CallStart { index: 0, name: "get_weather".into() }]);
    assert_eq!(parser.push(", \"arguments\": {\"ci").unwrap(), [Parsed::Arguments { index: 0, delta: "{\"ci".into() }]);
    assert_eq!(parser.push("ty\": 1}}\n</tool_call").unwrap(), [Parsed::Arguments { index: 0, delta: "ty\": 1}".into() }]);
    assert_eq!(parser.push(">").unwrap(), [Parsed::CallEnd { index: 0 }]);
    assert_eq!(parser.finish().unwrap(), []);
}

#[test]
fn closing_tag_inside_a_string_does_not_end_the_call() {
    let output = "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"content\": \"<tool_call>\\n{}\\n</tool_call>\", \"path\": \"a}b]\"}}\n</tool_call>";
    assert_eq!(
        collected(Format::Hermes, output),
        (String::new(), vec![call("write_file", "{\"content\": \"<tool_call>\\n{}\\n</tool_call>\", \"path\": \"a}b]\"}")])
    );
}

#[test]
fn escaped_quotes() {
    let output =
        "<tool_call>\n{\"name\": \"say\", \"arguments\": {\"text\": \"she said \\\"hi\\\" \\\\\", \"k\\\"ey\": \"\\u0022\"}}\n</tool_call>";
    let (_, calls) = collected(Format::Hermes, output);
    assert_eq!(calls, [call("say", "{\"text\": \"she said \\\"hi\\\" \\\\\", \"k\\\"ey\": \"\\u0022\"}")]);
    // An escaped name is decoded.
    let output = "<tool_call>{\"name\": \"get\\u005fweather\", \"arguments\": {}}</tool_call>";
    assert_eq!(collected(Format::Hermes, output).1, [call("get_weather", "{}")]);
}

#[test]
fn unicode_arguments() {
    let output =
        "Voilà 🌤\n<tool_call>\n{\"name\": \"météo\", \"arguments\": {\"ville\": \"Zürich\", \"note\": \"日本語 🌧\"}}\n</tool_call>";
    assert_eq!(
        collected(Format::Hermes, output),
        ("Voilà 🌤".into(), vec![call("météo", "{\"ville\": \"Zürich\", \"note\": \"日本語 🌧\"}")])
    );
}

#[test]
fn string_arguments_holding_an_object() {
    let output = "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": \\\"é\\\"}\"}\n</tool_call>";
    assert_eq!(collected(Format::Hermes, output).1, [call("f", "{\"a\": \"é\"}")]);
    let output = "<tool_call>\n{\"arguments\": \"{}\", \"name\": \"f\"}\n</tool_call>";
    assert_eq!(collected(Format::Hermes, output).1, [call("f", "{}")]);
}

#[test]
fn missing_arguments_are_an_empty_object() {
    let output = "<tool_call>\n{\"name\": \"get_time\"}\n</tool_call>";
    assert_eq!(collected(Format::Hermes, output).1, [call("get_time", "{}")]);
}

#[test]
fn closing_tag_may_be_missing_at_the_end() {
    for output in ["<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_"] {
        assert_eq!(collected(Format::Hermes, output).1, [call("f", "{}")]);
    }
}

#[test]
fn forced_calls() {
    let format = Format::Hermes;
    assert_eq!(format.forced_call("we\"ird"), "<tool_call>\n{\"name\": \"we\\\"ird\", \"arguments\": ");
    let output = format!("{}{{\"city\": \"Oslo\"}}{}", format.forced_call("get_weather"), format.call_closing());
    assert_eq!(collected(format, &output).1, [call("get_weather", "{\"city\": \"Oslo\"}")]);
    let output = format!("{}lookup\", \"arguments\": {{}}{}", format.forced_opening(), format.call_closing());
    assert_eq!(collected(format, &output).1, [call("lookup", "{}")]);

    let format = Format::Llama3Json;
    let output = format!("{}{{\"q\": 1}}{}", format.forced_call("search"), format.call_closing());
    assert_eq!(collected(format, &output).1, [call("search", "{\"q\": 1}")]);
    let output = format!("{}search\", \"parameters\": {{}}{}", format.forced_opening(), format.call_closing());
    assert_eq!(collected(format, &output).1, [call("search", "{}")]);
}

#[test]
fn malformed_json() {
    for output in [
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1]}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": tru}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\" 1}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\" \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}, }\n</tool_call>",
        "<tool_call>\nget_weather(city=\"Paris\")\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}} trailing\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n<tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"name\": \"g\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}, \"parameters\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": 7, \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"raw\nnewline\"}}\n</tool_call>",
    ] {
        assert!(matches!(error(Format::Hermes, output), ParseError::Malformed { index: 0, .. }), "{output:?}");
    }
    let second = format!("{QWEN_ONE}\n<tool_call>\n{{\"name\": \"f\", \"arguments\": {{]}}\n</tool_call>");
    assert!(matches!(error(Format::Hermes, &second), ParseError::Malformed { index: 1, .. }));
}

#[test]
fn error_comes_after_streamed_events() {
    let mut parser = Parser::new(Format::Hermes);
    let events = parser.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": tru").unwrap();
    assert_eq!(collect(&events), (String::new(), vec![call("f", "{\"a\": tru")]));
    let error = parser.push("}}\n</tool_call>").unwrap_err();
    assert!(matches!(error, ParseError::Malformed { index: 0, .. }));
    assert_eq!(error.index(), 0);
    assert!(error.to_string().starts_with("tool call 0 is malformed: "));
    // The error sticks until finish, which hands it over and leaves a fresh parser.
    assert_eq!(parser.push("more").unwrap_err(), error);
    assert_eq!(parser.finish().unwrap_err(), error);
    assert_eq!(parser.push("hi").unwrap(), [Parsed::Text("hi".into())]);
}

#[test]
fn missing_name() {
    for output in [
        "<tool_call>\n{\"arguments\": {\"a\": 1}}\n</tool_call>",
        "<tool_call>\n{}\n</tool_call>",
        "<tool_call>\n{\"name\": \"\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"function\": \"f\", \"arguments\": {}}\n</tool_call>",
    ] {
        assert_eq!(error(Format::Hermes, output), ParseError::MissingName { index: 0 }, "{output:?}");
    }
    // No call was announced.
    let mut parser = Parser::new(Format::Hermes);
    assert_eq!(parser.push("<tool_call>\n{\"arguments\": {\"a\": 1}").unwrap(), []);
    assert_eq!(parser.push("}").unwrap_err(), ParseError::MissingName { index: 0 });
}

#[test]
fn arguments_not_an_object() {
    for output in [
        "<tool_call>\n{\"name\": \"f\", \"arguments\": [1, 2]}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": 5}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": null}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"Paris\"}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"[1]\"}\n</tool_call>",
    ] {
        assert_eq!(error(Format::Hermes, output), ParseError::ArgumentsNotObject { index: 0 }, "{output:?}");
    }
}

#[test]
fn unterminated() {
    for output in [
        "<tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"n\": 1",
    ] {
        assert_eq!(error(Format::Hermes, output), ParseError::Unterminated { index: 0 }, "{output:?}");
    }
    let output = format!("{QWEN_ONE}\n<tool_call>\n{{\"name\": \"f\"");
    assert_eq!(error(Format::Hermes, &output), ParseError::Unterminated { index: 1 });
}

#[test]
fn parser_is_fresh_after_finish() {
    let mut parser = Parser::new(Format::Hermes);
    parser.push(QWEN_ONE).unwrap();
    parser.finish().unwrap();
    let events = parser.push(QWEN_ONE).unwrap();
    assert_eq!(events[0], Parsed::CallStart { index: 0, name: "get_current_temperature".into() });
}

#[test]
fn detect() {
    let qwen = r#"{%- if tools %}{{- "\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}"#;
    assert_eq!(Format::detect(qwen), Some(Format::Hermes));
    let llama = r#"{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}"#;
    assert_eq!(Format::detect(llama), Some(Format::Llama3Json));
    let llama_escaped =
        r#"{{- "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}." }}"#;
    assert_eq!(Format::detect(llama_escaped), Some(Format::Llama3Json));
    assert_eq!(Format::detect("{%- if builtin_tools is defined or tool_call is not none %}<|python_tag|>"), Some(Format::Llama3Json));
    let plain = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>{% endfor %}";
    assert_eq!(Format::detect(plain), None);
}

#[test]
fn llama_calls() {
    let output = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"São Paulo\"}}";
    assert_eq!(collected(Format::Llama3Json, output), (String::new(), vec![call("get_weather", "{\"city\": \"São Paulo\"}")]));
    let output =
        "<|python_tag|>{\"type\": \"function\", \"name\": \"a\", \"parameters\": {\"x\": [1, 2]}}; {\"name\": \"b\", \"parameters\": {}};";
    assert_eq!(collected(Format::Llama3Json, output), (String::new(), vec![call("a", "{\"x\": [1, 2]}"), call("b", "{}")]));
    // A call ends with its object.
    let mut parser = Parser::new(Format::Llama3Json);
    let events = parser.push("\n{\"name\": \"a\", \"parameters\": {}}").unwrap();
    assert_eq!(events.last(), Some(&Parsed::CallEnd { index: 0 }));
}

#[test]
fn llama_text() {
    for output in ["The capital of France is Paris.", "  \n Indented {braces} later", "<|eot_id|> is not the python tag", "<|python", "   "]
    {
        assert_eq!(collected(Format::Llama3Json, output), (output.to_owned(), vec![]), "{output:?}");
    }
}

#[test]
fn llama_errors() {
    assert!(matches!(
        error(Format::Llama3Json, "{\"name\": \"a\", \"parameters\": {}} and some words"),
        ParseError::Malformed { index: 0, .. }
    ));
    assert!(matches!(error(Format::Llama3Json, "<|python_tag|>brave_search.call(query=\"x\")"), ParseError::Malformed { index: 0, .. }));
    assert_eq!(error(Format::Llama3Json, "<|python_tag|>"), ParseError::Unterminated { index: 0 });
    assert_eq!(error(Format::Llama3Json, "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\""), ParseError::Unterminated { index: 1 });
    assert_eq!(error(Format::Llama3Json, "{\"parameters\": {}}"), ParseError::MissingName { index: 0 });
    assert_eq!(error(Format::Llama3Json, "{\"name\": \"a\", \"parameters\": [1]}"), ParseError::ArgumentsNotObject { index: 0 });
}

#[test]
fn long_output_is_linear() {
    // A call with a long argument pushed three bytes at a time: quadratic work would show.
    let long = "x".repeat(200_000);
    let output = format!("<tool_call>\n{{\"name\": \"f\", \"arguments\": {{\"s\": \"{long}\"}}}}\n</tool_call>");
    let mut parser = Parser::new(Format::Hermes);
    let mut events = Vec::new();
    for chunk in output.as_bytes().chunks(3) {
        events.extend(parser.push(std::str::from_utf8(chunk).unwrap()).unwrap());
    }
    events.extend(parser.finish().unwrap());
    let (_, calls) = collect(&events);
    assert_eq!(calls[0].1.len(), long.len() + 9);
}

#[test]
fn a_call_schema_object_inside_the_tags_parses_as_a_call() {
    let parameters = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let schema = Format::Hermes.call_schema([("add", Some(&parameters)), ("now", None)]);
    let branches = schema["anyOf"].as_array().unwrap();
    assert_eq!(branches.len(), 2);
    assert_eq!(branches[0]["properties"]["name"]["const"], "add");
    assert_eq!(branches[0]["properties"]["arguments"], parameters);
    assert_eq!(branches[1]["properties"]["arguments"]["type"], "object");
    assert_eq!(Format::Llama3Json.call_schema([("now", None)])["anyOf"][0]["required"][1], "parameters");
    // What a constrained decoder writes for it, between the tags, is an ordinary call.
    let (open, close) = Format::Hermes.call_tags();
    let output = format!("{open}{{\"name\": \"add\", \"arguments\": {{\"a\": 2}}}}{close}");
    assert_eq!(collected(Format::Hermes, &output), (String::new(), vec![call("add", r#"{"a": 2}"#)]));
}
