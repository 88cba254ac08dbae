"""Unit tests of the SDK's pure parts (run by tests/tests/python_sdk.rs under `cargo test`, or
`.switchyard/py-venv/bin/python -m pytest sdk/python/tests`): schemas from type hints,
argument validation, the wire encoding, subjects and consumer configs."""

import asyncio
import dataclasses
from typing import AsyncIterator, Dict, Iterator, List, Literal, Optional, Tuple

import msgpack
import pytest

from switchyard import RemoteFunction, ToolError, functions_of, remote_callable, schema_of, wire
from switchyard.tools import result_json
from switchyard.worker import Slots, parse_duration


class Sample:
    @remote_callable
    def plain(self, a: int, b: float = 1.5, c: str = "x", d: bool = False, e: Optional[int] = None, f: List[str] = [], g: Dict[str, int] = {}) -> int:
        """Does things.

        Args:
            a: The a.
            b (float): The b,
                on two lines.
        """
        return a

    @remote_callable(name="renamed", description="Explicit.")
    def other(self, **extra) -> dict:
        return extra

    @remote_callable
    def gen(self) -> Iterator[int]:
        yield 1

    @remote_callable
    async def agen(self) -> AsyncIterator[str]:
        yield "a"

    @remote_callable
    async def coro(self, x: Literal["a", "b"] = "a"):
        return x

    def hidden(self):
        return None


def test_only_marked_methods_are_hosted_with_their_names():
    functions = functions_of(Sample())
    assert sorted(functions) == ["agen", "coro", "gen", "plain", "renamed"]
    assert functions["renamed"].description == "Explicit."
    assert functions_of(Sample)["plain"].name == "plain", "a class is instantiated"


def test_schemas_come_from_type_hints_and_defaults():
    f = functions_of(Sample())["plain"]
    p = f.parameters
    assert p["type"] == "object" and p["additionalProperties"] is False
    assert p["required"] == ["a"]
    props = p["properties"]
    assert props["a"] == {"type": "integer", "description": "The a."}
    assert props["b"] == {"type": "number", "default": 1.5, "description": "The b, on two lines."}
    assert props["c"] == {"type": "string", "default": "x"}
    assert props["d"] == {"type": "boolean", "default": False}
    assert props["e"] == {"type": ["integer", "null"], "default": None}
    assert props["f"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert props["g"] == {"type": "object", "additionalProperties": {"type": "integer"}, "default": {}}
    assert f.description == "Does things."
    assert f.result == {"type": "integer"} and not f.streams
    spec = f.spec()
    assert set(spec) == {"name", "description", "parameters", "result", "streams"}


def test_kinds_of_functions():
    functions = functions_of(Sample())
    assert functions["gen"].streams and functions["gen"].result == {"type": "integer"}
    assert functions["agen"].streams and functions["agen"].result == {"type": "string"}
    assert functions["coro"].is_async and not functions["coro"].streams and functions["coro"].result is None
    assert functions["coro"].parameters["properties"]["x"] == {"enum": ["a", "b"], "default": "a"}
    assert "additionalProperties" not in functions["renamed"].parameters, "**kwargs takes any argument"


def test_more_type_hints():
    @dataclasses.dataclass
    class Point:
        x: int
        y: int = 0

    assert schema_of(Optional[List[int]]) == {"type": ["array", "null"], "items": {"type": "integer"}}
    assert schema_of(Tuple[int, str])["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert schema_of(Point) == {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x"]}
    assert schema_of(list) == {"type": "array"} and schema_of(dict) == {"type": "object"}
    assert schema_of(object) == {}


def invalid(arguments):
    with pytest.raises(ToolError) as caught:
        functions_of(Sample())["plain"].check(arguments)
    assert caught.value.code == "invalid_arguments"
    return caught.value.message


def test_invalid_arguments_name_the_argument():
    functions_of(Sample())["plain"].check({"a": 1})
    assert invalid({"a": "five"}).startswith("invalid argument `a`:")
    assert invalid({}).startswith("invalid argument `a`:"), "a missing argument is named"
    assert invalid({"a": 1, "zz": 2}).startswith("invalid argument `zz`:"), "an unknown one too"
    assert invalid({"a": 1, "f": ["ok", 3]}).startswith("invalid argument `f.1`:")
    assert invalid({"a": True}).startswith("invalid argument `a`:"), "a bool is no integer"


def test_results_become_json():
    @dataclasses.dataclass
    class R:
        a: int

    assert result_json({"t": (1, 2), 3: R(4)}) == {"t": [1, 2], "3": {"a": 4}}
    with pytest.raises(ToolError) as caught:
        result_json(float("nan"))
    assert caught.value.code == "function_failed"
    with pytest.raises(ToolError):
        result_json(object())


def test_tokens_and_subjects_match_the_rust_ones():
    # schemas/src/subject.rs tests_subjects_have_one_token_per_part
    assert wire.encode_token("Qwen/Qwen2.5-0.5B") == "Qwen~2FQwen2~2E5-0~2E5B"
    assert wire.job_subject("interactive", "tool", "a/b") == "sy.job.interactive.tool.a~2Fb"
    assert wire.job_consumer("batch", "tool", "m") == "sy-batch-tool-m"
    for name in ["Qwen/Qwen2.5-0.5B", "a b*c>d", "~x", "日本語", "plain-name_1", ""]:
        assert wire.decode_token(wire.encode_token(name)) == name
    assert wire.decode_token("a.b") is None and wire.decode_token("~G1") is None
    assert wire.job_id_of("sy.cancel.01J") == "01J"


def test_messages_are_named_maps_and_newer_versions_are_refused():
    payload = wire.encode(wire.stream_event("j", 3, [wire.tool_chunk([1]), wire.done("cancelled")]))
    raw = msgpack.unpackb(payload)
    assert raw["events"][1] == {"type": "done", "data": {"finish_reason": "cancelled", "usage": {"prompt_tokens": 0, "completion_tokens": 0}}}
    assert wire.decode(payload)["seq"] == 3
    with pytest.raises(wire.WireError):
        wire.decode(msgpack.packb({"v": wire.WIRE_VERSION + 1}))
    with pytest.raises(wire.WireError):
        wire.decode(b"\xc1")


def test_permissions_parse_in_hepai_form():
    assert wire.parse_permissions("groups: default; users: a, b; owner: c") == {"groups": ["default"], "users": ["a", "b"], "owner": "c"}
    assert wire.parse_permissions("") == {"groups": [], "users": [], "owner": None}
    for bad in ["owner: a, b", "colour: blue", "groups default"]:
        with pytest.raises(ValueError):
            wire.parse_permissions(bad)


def test_consumer_config_is_the_rust_one():
    config = wire.consumer_config("interactive", "tool", "m", 10.0, 3)
    assert config["durable_name"] == "sy-interactive-tool-m"
    assert config["filter_subject"] == "sy.job.interactive.tool.m"
    assert config["ack_wait"] == 10 * 10**9 and config["max_deliver"] == 3
    assert config["max_waiting"] == 4096 and config["max_ack_pending"] == 100_000
    assert config["inactive_threshold"] == 24 * 3600 * 10**9


def test_durations():
    assert parse_duration("250ms") == 0.25 and parse_duration("2s") == 2 and parse_duration("1m") == 60 and parse_duration("3") == 3


def test_slots_keep_the_reserve_from_batch_jobs():
    async def run():
        slots = Slots(2, 1)
        assert slots.open_to("batch") == 1
        await slots.take("batch")
        assert slots.open_to("batch") == 0 and slots.open_to("interactive") == 1
        await slots.take("interactive")
        assert slots.open_to("interactive") == 0
        await slots.give_back()
        await slots.give_back()
        assert slots.open_to("interactive") == 2

    asyncio.run(run())


def test_remote_function_signatures():
    tool = {"function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"b": {"default": 2}, "a": {}}, "required": ["a"]}}, "streams": False}
    remote = RemoteFunction("m/x", tool)
    assert str(remote.signature) == "(a, b=2)"
    assert remote.arguments((1,), {"b": 3}) == {"a": 1, "b": 3}
    assert remote.path() == "/tools/m/x/f"
    with pytest.raises(TypeError):
        remote.arguments((1, 2, 3), {})


SCHEMA_FILE = __import__("pathlib").Path(__file__).resolve().parents[3] / "schemas/json/switchyard.schema.json"


def test_messages_match_the_published_json_schema():
    """What the worker writes is valid against schemas/json/switchyard.schema.json (the wire
    contract generated from the Rust types)."""
    import json

    import jsonschema

    from switchyard.worker import Worker

    schemas = json.loads(SCHEMA_FILE.read_text())
    worker = Worker(Sample(), "m/x", permissions="groups: a; users: b; owner: c", model_rpm=5)
    # Through msgpack and back, as a reader in another language would see it.
    record = wire.decode(wire.encode(worker.record()))
    jsonschema.validate(record, schemas["WorkerRecord"])
    jsonschema.validate(record["models"][0], schemas["ModelCard"])
    assert record["models"][0]["permissions"] == {"groups": ["a"], "users": ["b"], "owner": "c"}
    bodies = [
        wire.started("w", 2),
        wire.tool_result({"a": [1, 2.5, None, "x"]}),
        wire.tool_chunk(3),
        wire.done("stop"),
        wire.done("cancelled"),
        wire.error("invalid_arguments", "m"),
        wire.error("function_failed", "m"),
        wire.error("unknown_function", "m"),
        wire.error("deadline_exceeded", "m"),
    ]
    event = wire.decode(wire.encode(wire.stream_event("j", 7, bodies)))
    jsonschema.validate(event, schemas["StreamEvent"])
    worker.pool.shutdown()
