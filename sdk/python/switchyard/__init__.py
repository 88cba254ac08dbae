"""Switchyard's Python SDK.

* Worker side (HepAI's form): decorate methods with `@remote_callable` and `serve()` the object
  (or run `python -m switchyard.worker module:Class --name …`): a `kind: tool` worker that
  speaks the Rust worker runtime's protocol (registry, JetStream lanes, events, cancellation).
* Client side: `get_worker_sync_functions` / `get_worker_async_functions` turn a tool model's
  functions into Python callables over the REST api.
* Direct publishers: `switchyard.publisher.Publisher` submits chat, completion, embedding and
  tool jobs straight to NATS and streams their events (docs/protocol.md).
"""

from .client import (
    AsyncStream,
    FunctionList,
    RemoteFunction,
    SwitchyardError,
    SyncStream,
    get_worker_async_functions,
    get_worker_sync_functions,
    list_tools,
)
from .tools import Function, ToolError, functions_of, remote_callable, schema_of


def serve(obj, name=None, **options):
    """Serves `obj`'s `@remote_callable` functions as tool model `name` until SIGTERM."""
    from .worker import serve as _serve

    _serve(obj, name=name, **options)


class HRModel:
    """HepAI's base class, for code written against it: `@HRModel.remote_callable`."""

    remote_callable = staticmethod(remote_callable)


__all__ = [
    "AsyncStream",
    "Function",
    "FunctionList",
    "HRModel",
    "RemoteFunction",
    "SwitchyardError",
    "SyncStream",
    "ToolError",
    "functions_of",
    "get_worker_async_functions",
    "get_worker_sync_functions",
    "list_tools",
    "remote_callable",
    "schema_of",
    "serve",
]
