"""Writes tests/data/tiny-qwen2-tools/ and its tools_expected.json: chat templates rendered with
tools and tool-call history by transformers' apply_chat_template, for tests/chat_tools.rs.

The folder is tiny-qwen2 with Qwen2.5-Instruct's chat template as `chat_template` in
tokenizer_config.json (and no chat_template.jinja), so that the worker can load a tool-capable
model in tests: weights and generation config copied as they are (eos/pad conventions
included), config.json with max_position_embeddings raised from 256 to 4096 so that prompts
with tools fit, and tokenizer.json with tiny-qwen2's vocabulary and merges under the normalizer
and pre-tokenizer that transformers' Qwen2Tokenizer applies to a qwen2 folder (see below).
Beside it, llama31_chat_template.jinja holds Llama 3.1 Instruct's template (tools as JSON in the
first user message); the script renders it by passing `chat_template=`, the Rust test through
`switchyard_torch::testing::render_chat_template`.

Template sources (both texts are public, and identical for every size of the family):
- Qwen2.5: the `chat_template` of Qwen/Qwen2.5-0.5B-Instruct's tokenizer_config.json (the same
  text ships with Qwen2.5-{1.5,3,7,14,32,72}B-Instruct), transcribed from two public copies of
  it that agree character for character.
- Llama 3.1: the `chat_template` of meta-llama/Llama-3.1-8B-Instruct's tokenizer_config.json
  (the "26 Jul 2024" date default, no strftime_now), transcribed from a public copy.

Each case is a conversation as an OpenAI client sends it (assistant `tool_calls` with
`function.arguments` as a JSON string, `content: null` beside them), the request's `tools`
(OpenAI tool definitions, or None) and add_generation_prompt. Before rendering, the script
turns the messages into what the Rust side (`ChatMessage::template_view` in src/chat.rs) gives
the template, mirrored by `template_view` below: the api flattens a message into role, content
(null becomes ""), name, tool_calls (id, name, arguments string) and tool_call_id; the worker
then hands the template role, content (left out for an assistant message with tool calls and
no text: transformers drops None-valued keys, so an OpenAI `content: null` never reaches the
template either), name, tool_calls as [{"id", "type": "function", "function": {"name",
"arguments"}}] with the arguments parsed (json.loads, {} for an empty string, as vLLM does
before rendering, because templates such as Qwen2.5's write `arguments | tojson`; text that is
not JSON stays the string it is, where vLLM refuses the request), and tool_call_id. The script checks that rendering the OpenAI messages
with only the arguments parsed gives the same text. `input_ids` is
tokenizer(rendered, add_special_tokens=False), what apply_chat_template(tokenize=True) gives.

Run once, offline (torch is not needed):

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install "transformers==5.24.0" jinja2
    HF_HUB_OFFLINE=1 /tmp/tfvenv/bin/python worker/torch/tests/data/make_tools_reference.py
"""

import copy
import json
import os
import re
import shutil

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "tiny-qwen2")
out = os.path.join(here, "tiny-qwen2-tools")

# The tokenizer_config.json string, JSON-escaped as the file holds it.
QWEN25_TEMPLATE = json.loads(
    r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"'''
)

LLAMA31_TEMPLATE = json.loads(
    r'''"{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"'''
)


def parse_arguments(text):
    # ToolCall::template_view: {} for no arguments, the parsed JSON, else the text as it is.
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


def template_view(m):
    """What the Rust side hands the template for an OpenAI message (ChatMessage::template_view)."""
    content = m.get("content") or ""
    calls = m.get("tool_calls") or []
    view = {"role": m["role"]}
    if not (content == "" and calls):
        view["content"] = content
    if m.get("name") is not None:
        view["name"] = m["name"]
    if calls:
        view["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["function"]["name"], "arguments": parse_arguments(c["function"]["arguments"])},
            }
            for c in calls
        ]
    if m.get("tool_call_id") is not None:
        view["tool_call_id"] = m["tool_call_id"]
    return view


def openai_with_parsed_arguments(messages):
    """The OpenAI messages as a Python caller of apply_chat_template would pass them."""
    messages = copy.deepcopy(messages)
    for m in messages:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = parse_arguments(c["function"]["arguments"])
    return messages


def call(id, name, arguments):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(name, description, parameters):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# Keys deliberately not in alphabetical order (type before properties, location before days):
# the prompt keeps the client's order, as Python dicts do.
weather = tool(
    "get_weather",
    "Get the current weather in a given location",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["location"],
    },
)
search = tool(
    "search_flights",
    "Suche Flüge — 東京 ✈ “quoted” <tags> & \\ backslash",
    {
        "type": "object",
        "properties": {
            "legs": {
                "type": "array",
                "description": "Each leg of the trip, in order",
                "items": {
                    "type": "object",
                    "properties": {
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                        "date": {"type": "string", "format": "date"},
                    },
                    "required": ["from", "to"],
                },
                "minItems": 1,
            },
            "passengers": {
                "type": "object",
                "properties": {"adults": {"type": "integer", "default": 1}, "children": {"type": "integer"}},
            },
            "max_price": {"type": ["number", "null"], "minimum": 0.5, "default": 250.0},
            "cabin": {"enum": ["economy", "business"], "default": None},
            "flexible": {"type": "boolean", "default": False},
        },
        "required": ["legs"],
        "additionalProperties": False,
    },
)
no_params = {"type": "function", "function": {"name": "get_time", "description": "The current time"}}

user = {"role": "user", "content": "What's the weather in Paris for the next 3 days?"}
first_call = {
    "role": "assistant",
    "content": None,
    "tool_calls": [call("call_1", "get_weather", '{"location": "Paris, France", "days": 3}')],
}
first_result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18.5, "sky": "cloudy"}'}

qwen_cases = [
    ("tools_user", [user], [weather], True),
    ("tools_system_user", [{"role": "system", "content": "You are a weather bot."}, user], [weather, no_params], True),
    (
        "nested_unicode_tool",
        [{"role": "user", "content": "Flüge von Berlin nach 東京 am 3. März, bitte."}],
        [search, weather],
        True,
    ),
    ("call_then_result", [user, first_call, first_result], [weather], True),
    (
        "parallel_calls",
        [
            {"role": "user", "content": "Weather in Paris and in Tokyo, in fahrenheit?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("call_a", "get_weather", '{"location":"Paris","unit":"fahrenheit"}'),
                    call("call_b", "get_weather", '{\n  "location": "東京",\n  "unit": "fahrenheit"\n}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "64F, cloudy"},
            {"role": "tool", "tool_call_id": "call_b", "content": "75F, sunny"},
        ],
        [weather],
        True,
    ),
    (
        "text_and_call_then_answer",
        [
            {"role": "system", "content": "Be brief."},
            user,
            {
                "role": "assistant",
                "content": "Let me check that for you.",
                "tool_calls": [call("call_1", "get_weather", '{"location": "Paris, France", "days": 3, "unit": "celsius"}')],
            },
            first_result,
            {"role": "assistant", "content": "18.5°C and cloudy."},
            {"role": "user", "content": "Thanks! And the time?"},
            {"role": "assistant", "content": "", "tool_calls": [call("call_2", "get_time", "")]},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:30"},
        ],
        [weather, no_params],
        False,
    ),
    (
        "unparsable_arguments",
        [user, {"role": "assistant", "content": None, "tool_calls": [call("call_x", "get_weather", "Paris, please")]}],
        [weather],
        False,
    ),
    ("no_tools", [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "Sunny."}], None, False),
    ("no_tools_no_system", [user], None, True),
    ("tools_empty_list", [user], [], True),
    ("name_on_user", [{"role": "user", "content": "Hi", "name": "ann"}], [weather], True),
]

llama_cases = [
    ("llama31_tools_system_user", [{"role": "system", "content": "  You are helpful.  "}, user], [weather], True),
    ("llama31_call_then_result", [user, first_call, first_result], [weather, search], True),
    ("llama31_tools_none", [{"role": "system", "content": "Be brief."}, user], None, True),
    ("llama31_tools_empty_list", [{"role": "system", "content": "Be brief."}, user], [], True),
]

os.makedirs(out, exist_ok=True)
for name in ["generation_config.json", "model.safetensors"]:
    shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
# A prompt with tools takes 600 to 3,300 of this tokenizer's tokens: room for them (RoPE has no
# learned positions, so the weights are unchanged; tiny-qwen2 itself stops at 256).
with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
config["max_position_embeddings"] = 4096
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
with open(os.path.join(src, "tokenizer_config.json")) as f:
    tok_config = json.load(f)
tok_config["chat_template"] = QWEN25_TEMPLATE
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(tok_config, f, indent=2, ensure_ascii=False)
    f.write("\n")
with open(os.path.join(out, "llama31_chat_template.jinja"), "w") as f:
    f.write(LLAMA31_TEMPLATE)

# transformers 5 loads a qwen2 folder's tokenizer as Qwen2Tokenizer, which keeps tokenizer.json's
# vocabulary and merges but sets its own normalizer (NFC) and pre-tokenizer (Qwen2's split: digits
# one by one, no space before a number) over them. Write those into tokenizer.json, so that the
# worker, which reads tokenizer.json as it is, tokenizes as transformers does (as it does for a
# real Qwen2.5 folder, whose tokenizer.json already has them).
tok = AutoTokenizer.from_pretrained(out)
assert type(tok).__name__ == "Qwen2Tokenizer", type(tok)
backend = json.loads(tok.backend_tokenizer.to_str())
with open(os.path.join(src, "tokenizer.json")) as f:
    tokenizer_json = json.load(f)
tokenizer_json["normalizer"] = backend["normalizer"]
tokenizer_json["pre_tokenizer"] = backend["pre_tokenizer"]
with open(os.path.join(out, "tokenizer.json"), "w") as f:
    json.dump(tokenizer_json, f, indent=2, ensure_ascii=False)
    f.write("\n")

tok = AutoTokenizer.from_pretrained(out)
assert tok.chat_template == QWEN25_TEMPLATE, "tokenizer_config.json's chat_template is the one used"
raw_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))


def render(messages, tools, add, template):
    text = tok.apply_chat_template(
        [template_view(m) for m in messages], tools=tools, add_generation_prompt=add, tokenize=False,
        chat_template=template,
    )
    plain = tok.apply_chat_template(
        openai_with_parsed_arguments(messages), tools=tools, add_generation_prompt=add, tokenize=False,
        chat_template=template,
    )
    assert text == plain, "the Rust view renders as the OpenAI messages do"
    return text


cases = []
for template_name, template, group in [("qwen2.5", None, qwen_cases), ("llama3.1", LLAMA31_TEMPLATE, llama_cases)]:
    for name, messages, tools, add in group:
        text = render(messages, tools, add, template)
        ids = tok(text, add_special_tokens=False).input_ids
        assert raw_tokenizer.encode(text, add_special_tokens=False).ids == ids, "tokenizer.json alone agrees"
        assert ids == tok.apply_chat_template(
            [template_view(m) for m in messages], tools=tools, add_generation_prompt=add, chat_template=template,
            return_dict=False,
        )
        cases.append(
            {
                "name": name,
                "template": template_name,
                "messages": messages,
                "tools": tools,
                "add_generation_prompt": add,
                "rendered": text,
                "input_ids": ids,
            }
        )

by_name = {c["name"]: c for c in cases}
qwen_none_vs_empty = render([user], None, True, None) != by_name["tools_empty_list"]["rendered"]
llama_none_vs_empty = by_name["llama31_tools_none"]["rendered"] != by_name["llama31_tools_empty_list"]["rendered"]
assert not qwen_none_vs_empty and llama_none_vs_empty

expected = {
    "about": "tiny-qwen2 with Qwen2.5-Instruct's chat template (and, in llama31_chat_template.jinja, Llama 3.1 "
    "Instruct's): apply_chat_template(messages, tools=tools, add_generation_prompt=...) of OpenAI-style "
    "conversations, messages converted as the Rust side converts them (see the script's docstring). "
    "tools=None and tools=[] render the same with Qwen2.5's template ({% if tools %}) and differently "
    "with Llama 3.1's (tools is not none).",
    "generator": {
        "script": "worker/torch/tests/data/make_tools_reference.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
    },
    "cases": cases,
}
text = json.dumps(expected, indent=1, ensure_ascii=False)
# One line per list of token ids.
text = re.sub(r"\[\s*(\d+(?:,\s*\d+)*)\s*\]", lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)
assert json.loads(text) == expected
with open(os.path.join(out, "tools_expected.json"), "w") as f:
    f.write(text + "\n")
print(f"wrote {len(cases)} cases to {out}")
