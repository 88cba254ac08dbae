"""Calling hosted functions over Switchyard's REST api, in HepAI's form:

    funcs = get_worker_sync_functions("demo-tools", api_key=…, base_url="http://127.0.0.1:8080/v1")
    add = funcs["custom_method"]          # or funcs.custom_method, or iterate the list
    add(a=5, b=7)                         # → 12
    for n in funcs.get_stream(count=3):   # a streaming function: an iterator over its chunks
        print(n)

`get_worker_async_functions` gives the same as coroutines (`await add(a=5, b=7)`) and async
iterators (`async for n in funcs.get_stream(count=3)`). Errors raise `SwitchyardError`, carrying
the OpenAI error body's `code`, `message`, `param`, `type` and the HTTP `status`.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


class SwitchyardError(Exception):
    """An error answer of the api: `status` (HTTP), and the OpenAI error body's fields."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, type: Optional[str] = None, param: Optional[str] = None, body: Any = None):
        super().__init__(f"{status} {code or type or 'error'}: {message}")
        self.status, self.message, self.code, self.type, self.param, self.body = status, message, code, type, param, body


def _error_from(status: int, text: str) -> SwitchyardError:
    try:
        body = json.loads(text)
        error = body["error"]
        return SwitchyardError(status, error.get("message") or text, error.get("code"), error.get("type"), error.get("param"), body)
    except Exception:
        return SwitchyardError(status, text or f"HTTP {status}")


class _Frames:
    """Reads SSE lines into frames. A stream that fails after its first chunk ends with a frame
    named `event: error` holding an OpenAI error body; every other frame is a chunk's JSON."""

    def __init__(self) -> None:
        self.event = ""

    def feed(self, line: str) -> Optional[Tuple[str, str]]:
        """The (event, data) of the frame `line` completes, if it is a data line."""
        if line.startswith("event:"):
            self.event = line[6:].strip()
            return None
        if not line.startswith("data:"):
            if not line.strip():
                self.event = ""
            return None
        event, self.event = self.event, ""
        return event, line[5:].strip()


def _base_url(base_url: Optional[str]) -> str:
    url = (base_url or os.environ.get("SWITCHYARD_API_URL") or DEFAULT_BASE_URL).rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _api_key(api_key: Optional[str]) -> Optional[str]:
    return api_key or os.environ.get("SWITCHYARD_API_KEY") or os.environ.get("OPENAI_API_KEY")


def _headers(api_key: Optional[str]) -> Dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _timeout(timeout: Optional[float]) -> httpx.Timeout:
    # A call may run as long as its function does: no read timeout unless asked for.
    return httpx.Timeout(timeout, connect=10.0)


class RemoteFunction:
    """What a hosted function looks like here: name, description, JSON Schemas, and a
    signature built from its parameters (keyword arguments with their defaults)."""

    def __init__(self, model: str, tool: Dict[str, Any]):
        definition = tool["function"]
        self.model = model
        self.name: str = definition["name"]
        self.description: str = definition.get("description") or ""
        self.parameters: Dict[str, Any] = definition.get("parameters") or {}
        self.result: Optional[Dict[str, Any]] = tool.get("result")
        self.streams: bool = bool(tool.get("streams"))
        self.tool = tool
        properties = self.parameters.get("properties") or {}
        required = set(self.parameters.get("required") or [])
        params = []
        for pname, schema in properties.items():
            if not pname.isidentifier():
                continue
            default = inspect.Parameter.empty if pname in required else schema.get("default")
            params.append(inspect.Parameter(pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        # Parameters without defaults first, as Python requires.
        params.sort(key=lambda p: p.default is not inspect.Parameter.empty)
        self.signature = inspect.Signature(params)
        self.order = [p.name for p in params]

    def arguments(self, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The arguments object: positional arguments by the signature's order, then keywords;
        defaults are left to the worker."""
        if len(args) > len(self.order):
            raise TypeError(f"{self.name}() takes {len(self.order)} positional arguments but {len(args)} were given")
        arguments = dict(zip(self.order, args))
        for key, value in kwargs.items():
            if key in arguments:
                raise TypeError(f"{self.name}() got multiple values for argument {key!r}")
            arguments[key] = value
        return arguments

    def path(self) -> str:
        return f"/tools/{quote(self.model, safe='/')}/{quote(self.name, safe='')}"

    def decorate(self, f: Callable) -> Callable:
        f.__name__ = self.name
        f.__qualname__ = self.name
        f.__doc__ = self.description
        f.__signature__ = self.signature  # type: ignore[attr-defined]
        f.remote = self  # type: ignore[attr-defined]
        return f


class FunctionList(list):
    """A list of callables, also reachable by name (`funcs["add"]`, `funcs.add`)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for f in self:
                if f.__name__ == key:
                    return f
            raise KeyError(key)
        return super().__getitem__(key)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def names(self) -> List[str]:
        return [f.__name__ for f in self]


def list_tools(name: str, api_key: Optional[str] = None, base_url: Optional[str] = None, timeout: Optional[float] = 30.0) -> List[Dict[str, Any]]:
    """`GET /v1/tools/{name}`: the tool model's functions as OpenAI tool definitions."""
    url = _base_url(base_url) + f"/tools/{quote(name, safe='/')}"
    response = httpx.get(url, headers=_headers(_api_key(api_key)), timeout=timeout)
    if response.status_code != 200:
        raise _error_from(response.status_code, response.text)
    return response.json()["data"]


# -- sync ----------------------------------------------------------------------------------


class SyncStream:
    """The chunks of a streamed call, as they arrive. Closing it (or leaving a `with` block,
    or dropping it) disconnects, which cancels the call."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.lines = response.iter_lines()
        self.frames = _Frames()
        self.closed = False

    def __iter__(self) -> "SyncStream":
        return self

    def __next__(self) -> Any:
        if self.closed:
            raise StopIteration
        for line in self.lines:
            frame = self.frames.feed(line)
            if frame is None:
                continue
            event, data = frame
            if event == "error":
                self.close()
                raise _error_from(500, data)
            if data == "[DONE]":
                self.close()
                raise StopIteration
            return json.loads(data)
        self.close()
        raise SwitchyardError(502, "the stream ended before [DONE]")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.response.close()

    def __enter__(self) -> "SyncStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def get_worker_sync_functions(name: str, api_key: Optional[str] = None, base_url: Optional[str] = None, timeout: Optional[float] = None) -> FunctionList:
    """The functions of tool model `name` as plain Python callables over REST
    (`POST /v1/tools/{name}/{function}`). A streaming function's callable returns an iterator
    over its chunks (SSE); the others return the result. Errors raise `SwitchyardError`."""
    api_key = _api_key(api_key)
    base = _base_url(base_url)
    client = httpx.Client(base_url=base, headers=_headers(api_key), timeout=_timeout(timeout))
    funcs = FunctionList()
    for tool in list_tools(name, api_key, base):
        funcs.append(_sync_callable(client, RemoteFunction(name, tool)))
    return funcs


def _sync_callable(client: httpx.Client, remote: RemoteFunction) -> Callable:
    if remote.streams:

        def call(*args: Any, **kwargs: Any) -> SyncStream:
            request = client.build_request("POST", remote.path(), json=remote.arguments(args, kwargs), headers={"Accept": "text/event-stream"})
            response = client.send(request, stream=True)
            if response.status_code != 200:
                text = response.read().decode("utf-8", "replace")
                response.close()
                raise _error_from(response.status_code, text)
            return SyncStream(response)

    else:

        def call(*args: Any, **kwargs: Any) -> Any:
            response = client.post(remote.path(), json=remote.arguments(args, kwargs))
            if response.status_code != 200:
                raise _error_from(response.status_code, response.text)
            return response.json()

    return remote.decorate(call)


# -- async ---------------------------------------------------------------------------------


class AsyncStream:
    """The chunks of a streamed call as an async iterator: `async for x in f(...)`, or
    `stream = await f(...)` to have the request sent (and its errors raised) first. `aclose()`
    disconnects, which cancels the call."""

    def __init__(self, opener: Callable[[], Any]):
        self.opener = opener
        self.client: Optional[httpx.AsyncClient] = None
        self.response: Optional[httpx.Response] = None
        self.lines: Optional[AsyncIterator[str]] = None
        self.frames = _Frames()
        self.closed = False

    async def open(self) -> "AsyncStream":
        if self.response is None:
            self.client, self.response = await self.opener()
            self.lines = self.response.aiter_lines()
        return self

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.open().__await__()

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Any:
        if self.closed:
            raise StopAsyncIteration
        await self.open()
        assert self.lines is not None
        async for line in self.lines:
            frame = self.frames.feed(line)
            if frame is None:
                continue
            event, data = frame
            if event == "error":
                await self.aclose()
                raise _error_from(500, data)
            if data == "[DONE]":
                await self.aclose()
                raise StopAsyncIteration
            return json.loads(data)
        await self.aclose()
        raise SwitchyardError(502, "the stream ended before [DONE]")

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            if self.response is not None:
                await self.response.aclose()
            if self.client is not None:
                await self.client.aclose()

    async def __aenter__(self) -> "AsyncStream":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def get_worker_async_functions(name: str, api_key: Optional[str] = None, base_url: Optional[str] = None, timeout: Optional[float] = None) -> FunctionList:
    """Like `get_worker_sync_functions`, as coroutine functions (`await f(a=1)`); a streaming
    function's callable returns an `AsyncStream` (`async for chunk in f(count=3)`)."""
    api_key = _api_key(api_key)
    base = _base_url(base_url)
    funcs = FunctionList()
    for tool in list_tools(name, api_key, base):
        funcs.append(_async_callable(base, api_key, timeout, RemoteFunction(name, tool)))
    return funcs


def _async_callable(base: str, api_key: Optional[str], timeout: Optional[float], remote: RemoteFunction) -> Callable:
    def client() -> httpx.AsyncClient:
        # One client per call: an AsyncClient belongs to the event loop it first ran on.
        return httpx.AsyncClient(base_url=base, headers=_headers(api_key), timeout=_timeout(timeout))

    if remote.streams:

        def call(*args: Any, **kwargs: Any) -> AsyncStream:
            arguments = remote.arguments(args, kwargs)

            async def opener() -> Any:
                http = client()
                try:
                    request = http.build_request("POST", remote.path(), json=arguments, headers={"Accept": "text/event-stream"})
                    response = await http.send(request, stream=True)
                except BaseException:
                    await http.aclose()
                    raise
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    await response.aclose()
                    await http.aclose()
                    raise _error_from(response.status_code, text)
                return http, response

            return AsyncStream(opener)

    else:

        async def call(*args: Any, **kwargs: Any) -> Any:
            arguments = remote.arguments(args, kwargs)
            async with client() as http:
                response = await http.post(remote.path(), json=arguments)
            if response.status_code != 200:
                raise _error_from(response.status_code, response.text)
            return response.json()

    return remote.decorate(call)
