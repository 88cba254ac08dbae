//! The official OpenAI Python SDK against Switchyard: what real clients run. The interpreter
//! comes from `switchyard_tests::python_with_openai` (a venv made once under the target dir,
//! or `$SWITCHYARD_TEST_PYTHON`).

use std::process::Command;
use std::time::Duration;

use switchyard_tests::{Stack, python_with_openai};
use switchyard_worker::backends::echo::debug_vector;

const SCRIPT: &str = r#"
import json, sys
import openai
from openai import OpenAI

base_url, expected_json = sys.argv[1], sys.argv[2]
expected = json.loads(expected_json)
client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)

prompt = "the python sdk says hello"
r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": prompt}])
assert r.choices[0].message.content == prompt, r
assert r.choices[0].finish_reason == "stop", r
assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 5 and r.usage.total_tokens == 10, r.usage

text, finish, usage, roles = "", None, None, []
stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": prompt}],
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
assert text == prompt, text
assert finish == "stop", finish
assert roles and roles[0] == "assistant", roles
assert usage is not None and usage.completion_tokens == 5, usage

r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": prompt}], max_tokens=2)
assert r.choices[0].message.content == "the python" and r.choices[0].finish_reason == "length", r

r = client.completions.create(model="echo", prompt=prompt)
assert r.choices[0].text == prompt and r.choices[0].finish_reason == "stop", r
text = "".join(c.choices[0].text for c in client.completions.create(model="echo", prompt=prompt, stream=True) if c.choices)
assert text == prompt, text

# The SDK asks for base64 by default and decodes it; ask for floats explicitly too.
for fmt in (None, "float"):
    kwargs = {} if fmt is None else {"encoding_format": fmt}
    r = client.embeddings.create(model="echo-embedding", input=["one input", "two inputs"], **kwargs)
    assert [d.index for d in r.data] == [0, 1], r
    for d, want in zip(r.data, expected):
        assert len(d.embedding) == len(want), (fmt, d.embedding)
        assert all(abs(a - b) < 1e-6 for a, b in zip(d.embedding, want)), (fmt, d.embedding, want)
    assert r.usage.prompt_tokens == 4, r.usage

ids = [m.id for m in client.models.list()]
assert "echo" in ids and "echo-embedding" in ids, ids

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", (e.status_code, e.code, e.body)

try:
    client.chat.completions.create(model="echo", messages=5)
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "messages", (e.status_code, e.param, e.body)

# Tool calls (echo-tools: the echo's debugging tool-call mode reads the reflected text as a
# model's Hermes-format calls): the SDK's stream helper accumulates the streamed deltas into
# the same calls as the non-streamed answer.
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
said = ('I will check.<tool_call>{"name": "get_weather", "arguments": {"city": "Kraków"}}</tool_call>'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
messages = [{"role": "user", "content": said}]
r = client.chat.completions.create(model="echo-tools", messages=messages, tools=tools)
c = r.choices[0]
assert c.finish_reason == "tool_calls" and c.message.content == "I will check.", r
plain = [(t.type, t.function.name, t.function.arguments) for t in c.message.tool_calls]
assert plain == [("function", "get_weather", '{"city": "Kraków"}'), ("function", "get_time", "{}")], plain
with client.chat.completions.stream(model="echo-tools", messages=messages, tools=tools) as stream:
    for _ in stream:
        pass
    final = stream.get_final_completion()
fc = final.choices[0]
assert fc.finish_reason == "tool_calls" and fc.message.content == "I will check.", final
streamed = [(t.type, t.function.name, t.function.arguments) for t in fc.message.tool_calls]
assert streamed == plain, (streamed, plain)
assert all(t.id.startswith("call_") for t in fc.message.tool_calls), fc.message.tool_calls

try:
    client.chat.completions.create(model="echo", messages=messages, tools=tools)
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "tools", (e.status_code, e.param, e.body)

print("sdk ok")
"#;

#[tokio::test]
async fn the_openai_python_sdk_works_against_switchyard() {
    let python = tokio::task::spawn_blocking(python_with_openai).await.unwrap();
    let stack = Stack::start().await;
    let (_worker, _) = stack.ready_worker(&["echo", "--tools-name", "echo-tools"], "echo").await;
    stack.wait_for_model("echo-embedding").await;
    stack.wait_for_model("echo-tools").await;
    let expected = serde_json::to_string(&[debug_vector("one input", 16), debug_vector("two inputs", 16)]).unwrap();
    let mut command = Command::new(python);
    command.arg("-c").arg(SCRIPT).arg(stack.api_url("/v1")).arg(expected).env_remove("OPENAI_API_KEY").env_remove("OPENAI_BASE_URL");
    let output = tokio::time::timeout(Duration::from_secs(120), tokio::task::spawn_blocking(move || command.output()))
        .await
        .expect("the SDK script finishes within 120 s")
        .unwrap()
        .expect("running python");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("sdk ok"), "the SDK script failed:\n{stdout}\n{stderr}");
}
