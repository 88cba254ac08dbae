"""Hosted functions in HepAI's form: methods decorated with `@remote_callable`, their parameter
JSON Schemas derived from type hints and defaults, their arguments validated before they run.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple

import jsonschema

_MARK = "__switchyard_remote_callable__"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def remote_callable(func: Optional[Callable] = None, *, name: Optional[str] = None, description: Optional[str] = None):
    """Marks a method (or function) as hosted: `@remote_callable`, or
    `@remote_callable(name="other_name", description="…")`. Plain functions, generators (which
    stream), async functions and async generators all work."""

    def mark(f: Callable) -> Callable:
        setattr(f, _MARK, {"name": name or f.__name__, "description": description})
        return f

    return mark(func) if func is not None else mark


class ToolError(Exception):
    """A hosted call that did not run: `code` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- JSON Schema from type hints ------------------------------------------------------------

_UNION_TYPES: Tuple[Any, ...] = (typing.Union,)
if hasattr(types, "UnionType"):
    _UNION_TYPES += (types.UnionType,)  # type: ignore[attr-defined]


def schema_of(tp: Any) -> Dict[str, Any]:
    """The JSON Schema of a type hint: int/float/str/bool/None, list/tuple/set[X], dict[str, X],
    Optional/Union, Literal, Enum, dataclasses; anything else is unconstrained (`{}`)."""
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return schema_of(args[0])
    if origin in _UNION_TYPES:
        members = [a for a in args if a is not type(None)]
        nullable = len(members) < len(args)
        schemas = [schema_of(a) for a in members]
        if len(schemas) == 1:
            schema = schemas[0]
        elif all(set(s) == {"type"} and isinstance(s["type"], str) for s in schemas):
            schema = {"type": [s["type"] for s in schemas]}
        else:
            schema = {"anyOf": schemas}
        if not nullable or schema == {}:
            return schema
        if set(schema) <= {"type", "items", "additionalProperties", "format"} and isinstance(schema.get("type"), str):
            return {**schema, "type": [schema["type"], "null"]}
        if set(schema) == {"type"} and isinstance(schema["type"], list):
            return {"type": schema["type"] + ["null"]}
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        properties, required = {}, []
        for field in dataclasses.fields(tp):
            properties[field.name] = schema_of(hints.get(field.name, Any))
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                required.append(field.name)
        schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return schema
    container = origin or tp
    if container in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set, collections.abc.Iterable, collections.abc.MutableSequence):
        schema = {"type": "array"}
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            schema["prefixItems"] = [schema_of(a) for a in args]
            schema["minItems"] = schema["maxItems"] = len(args)
        elif args:
            schema["items"] = schema_of(args[0])
        return schema
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = schema_of(args[1])
        return schema
    return {}


_ITEM_ORIGINS = (
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


def _json_default(value: Any) -> Optional[Any]:
    """A parameter default as JSON, or None when it has no JSON form."""
    try:
        return json.loads(json.dumps(to_json(value), allow_nan=False))
    except (TypeError, ValueError):
        return None


def _param_docs(doc: str) -> Tuple[str, Dict[str, str]]:
    """The summary of a docstring and its `Args:` entries (Google style: `name (type): text`,
    or `:param name: text`)."""
    doc = inspect.cleandoc(doc or "")
    summary_lines, params = [], {}
    in_args, current = False, None
    for line in doc.splitlines():
        stripped = line.strip()
        m = re.match(r"^:param\s+(?:\S+\s+)?(\w+):\s*(.*)$", stripped)
        if m:
            params[m.group(1)] = m.group(2)
            current = m.group(1)
            continue
        if stripped.lower() in ("args:", "arguments:", "parameters:", "params:"):
            in_args, current = True, None
            continue
        if in_args:
            m = re.match(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and not line.startswith(" " * 8):
                current = m.group(1).lstrip("*")
                params[current] = m.group(2)
            elif stripped and current:
                params[current] = (params[current] + " " + stripped).strip()
            elif not stripped:
                current = None
            if re.match(r"^(returns?|yields?|raises?|examples?):$", stripped.lower()):
                in_args, current = False, None
            continue
        if re.match(r"^(returns?|yields?|raises?|examples?):$", stripped.lower()):
            break
        if stripped.startswith(":"):
            continue
        summary_lines.append(stripped)
    summary = " ".join(" ".join(summary_lines).split())
    return summary, params


class Function:
    """One hosted function: its spec as the model card lists it, and how to run it."""

    def __init__(self, name: str, func: Callable, description: Optional[str] = None):
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid tool name (^[a-zA-Z0-9_-]{{1,64}}$)")
        self.name = name
        self.func = func
        raw = inspect.unwrap(func)
        self.is_async_gen = inspect.isasyncgenfunction(raw)
        self.is_gen = inspect.isgeneratorfunction(raw)
        self.is_async = inspect.iscoroutinefunction(raw)
        self.streams = self.is_gen or self.is_async_gen
        summary, param_docs = _param_docs(raw.__doc__ or "")
        self.description = description if description is not None else summary
        try:
            hints = typing.get_type_hints(raw)
        except Exception:
            hints = getattr(raw, "__annotations__", {})
        signature = inspect.signature(func)
        properties: Dict[str, Any] = {}
        required: List[str] = []
        extra = False
        self.positional_only: List[str] = []
        for p in signature.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                extra = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.POSITIONAL_ONLY:
                self.positional_only.append(p.name)
            schema = dict(schema_of(hints.get(p.name, p.annotation)))
            if p.name in param_docs and param_docs[p.name]:
                schema["description"] = param_docs[p.name]
            if p.default is p.empty:
                required.append(p.name)
            else:
                default = _json_default(p.default)
                if default is not None or p.default is None:
                    schema["default"] = default
            properties[p.name] = schema
        self.parameters: Dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            self.parameters["required"] = required
        if not extra:
            self.parameters["additionalProperties"] = False
        returns = hints.get("return", signature.return_annotation)
        self.result: Optional[Dict[str, Any]] = None
        if returns is not inspect.Signature.empty:
            if self.streams:
                origin = typing.get_origin(returns)
                args = typing.get_args(returns)
                if origin in _ITEM_ORIGINS and args:
                    self.result = schema_of(args[0])
            else:
                self.result = schema_of(returns)
        self.validator = jsonschema.Draft202012Validator(self.parameters)

    def spec(self) -> Dict[str, Any]:
        from .wire import function_spec

        return function_spec(self.name, self.description, self.parameters, self.result, self.streams)

    def check(self, arguments: Any) -> None:
        """Raises `ToolError("invalid_arguments")` naming the first argument that fails."""
        errors = list(self.validator.iter_errors(arguments))
        if not errors:
            return
        e = jsonschema.exceptions.best_match(errors)
        path = ".".join(str(p) for p in e.absolute_path)
        if path:
            raise ToolError("invalid_arguments", f"invalid argument `{path}`: {e.message}")
        name = None
        if e.validator == "required":
            m = re.match(r"^'([^']+)' is a required property", e.message)
            name = m.group(1) if m else None
        elif e.validator == "additionalProperties":
            m = re.search(r"\('([^']+)'", e.message)
            name = m.group(1) if m else None
        what = f"invalid argument `{name}`" if name else "invalid arguments"
        raise ToolError("invalid_arguments", f"{what}: {e.message}")

    def bind(self, arguments: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
        args = [arguments[n] for n in self.positional_only if n in arguments]
        kwargs = {k: v for k, v in arguments.items() if k not in self.positional_only}
        return args, kwargs


def functions_of(obj: Any) -> Dict[str, Function]:
    """The `@remote_callable` functions of an instance (its methods, bound), a class (made
    with no arguments), a module, or a list of functions."""
    if isinstance(obj, type):
        obj = obj()
    if isinstance(obj, (list, tuple)):
        candidates = [(getattr(f, "__name__", "?"), f) for f in obj]
        marked_only = False
    else:
        candidates = []
        for attr in dir(obj):
            if attr.startswith("__"):
                continue
            try:
                value = getattr(obj, attr)
            except Exception:
                continue
            candidates.append((attr, value))
        marked_only = True
    found: Dict[str, Function] = {}
    for attr, value in candidates:
        if not callable(value):
            continue
        mark = getattr(value, _MARK, None)
        if mark is None and marked_only:
            continue
        mark = mark or {"name": attr, "description": None}
        function = Function(mark["name"], value, mark["description"])
        if function.name in found:
            raise ValueError(f"two functions are named {function.name!r}")
        found[function.name] = function
    return dict(sorted(found.items()))


def to_json(value: Any) -> Any:
    """A function's result as JSON: dicts, lists, tuples, sets, numbers, strings, None,
    dataclasses, enums, objects with `model_dump()` (pydantic) or `to_dict()`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    for method in ("model_dump", "to_dict", "tolist"):
        if callable(getattr(value, method, None)):
            return to_json(getattr(value, method)())
    raise TypeError(f"a {type(value).__name__} is not JSON")


def result_json(value: Any) -> Any:
    """`to_json`, checked (no NaN, no infinity), or `ToolError("function_failed")`."""
    try:
        converted = to_json(value)
        json.dumps(converted, allow_nan=False)
        return converted
    except (TypeError, ValueError) as e:
        raise ToolError("function_failed", f"the result is not JSON: {e}") from e
