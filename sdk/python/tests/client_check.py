"""Drives the Python client against a real api serving `sample_tools.SampleTools` (run by
tests/tests/python_sdk.rs): prints one JSON line per check, which the Rust test compares.

    python client_check.py BASE_URL MODEL [API_KEY]
"""

import asyncio
import inspect
import json
import sys

from switchyard import SwitchyardError, get_worker_async_functions, get_worker_sync_functions

base_url, model = sys.argv[1], sys.argv[2]
api_key = sys.argv[3] if len(sys.argv) > 3 else None


def out(check, value):
    print(json.dumps({"check": check, "value": value}, sort_keys=True), flush=True)


def error_of(call):
    try:
        call()
    except SwitchyardError as e:
        return {"status": e.status, "code": e.code, "message": e.message}
    return None


funcs = get_worker_sync_functions(model, api_key=api_key, base_url=base_url)
out("names", sorted(funcs.names()))
out("signature", str(inspect.signature(funcs.add)))
out("doc", funcs.add.__doc__)
out("sync add", funcs.add(5, b=7))
out("sync add default", funcs["add"](a=1))
out("sync describe", {k: v for k, v in funcs.describe(tag="t", items=[1, 2]).items() if k != "pid"})
out("sync count", list(funcs["count"](n=4)))
out("sync acount", list(funcs.acount(n=2)))
out("sync invalid", error_of(lambda: funcs.add(a="five")))
out("sync boom", error_of(lambda: funcs.boom(message="it broke")))
chunks = []
out("sync breaks", {"error": error_of(lambda: chunks.extend(funcs.breaks(n=2))), "chunks": chunks})
# A stream left early: closing it disconnects, which cancels the call.
stream = funcs["count"](n=100000, interval=0.02)
first = [next(stream), next(stream)]
stream.close()
out("sync count closed early", first)


async def main():
    afuncs = get_worker_async_functions(model, api_key=api_key, base_url=base_url)
    out("async is coroutine", inspect.iscoroutinefunction(afuncs.add))
    out("async add", await afuncs.add(a=2, b=3))
    out("async gather", await asyncio.gather(*(afuncs.add(a=i) for i in range(5))))
    out("async count", [x async for x in afuncs["count"](n=3)])
    stream = await afuncs.acount(n=2)
    out("async acount awaited", [x async for x in stream])
    try:
        await afuncs.add(a="five")
        out("async invalid", None)
    except SwitchyardError as e:
        out("async invalid", {"status": e.status, "code": e.code, "message": e.message})
    try:
        await afuncs.boom(message="async broke")
        out("async boom", None)
    except SwitchyardError as e:
        out("async boom", {"status": e.status, "code": e.code, "message": e.message})
    try:
        [x async for x in afuncs["count"](n="many")]
        out("async stream invalid", None)
    except SwitchyardError as e:
        out("async stream invalid", {"status": e.status, "code": e.code})


asyncio.run(main())
out("done", True)
