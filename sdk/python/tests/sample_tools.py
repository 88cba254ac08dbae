"""The tool model the integration tests serve (tests/tests/python_sdk.rs): one function of each
kind — plain, dict-returning, sync and async generators, raising, slow.

If SAMPLE_MARKER_DIR is set, `count` writes `<dir>/count-closed-<n>` when its generator is
closed before its end (the worker closes it when the call is cancelled)."""

import asyncio
import os
import time
from typing import AsyncIterator, Dict, Iterator, List, Optional

from switchyard import remote_callable


class SampleTools:
    name = "py-tools"

    @remote_callable
    def add(self, a: int, b: int = 2) -> int:
        """Returns a + b.

        Args:
            a: The first addend.
            b: The second addend.
        """
        return a + b

    @remote_callable
    def describe(self, tag: Optional[str] = None, scale: float = 1.5, flags: Dict[str, bool] = {}, items: List[int] = [], loud: bool = False) -> dict:
        """Answers a dict: which process served the call, and its arguments."""
        return {"pid": os.getpid(), "tag": tag, "scale": scale, "flags": flags, "items": items, "loud": loud}

    @remote_callable
    def count(self, n: int = 3, interval: float = 0.0) -> Iterator[int]:
        """Streams 0 … n − 1, `interval` seconds apart."""
        finished = False
        try:
            for i in range(n):
                if i and interval:
                    time.sleep(interval)
                yield i
            finished = True
        finally:
            marker_dir = os.environ.get("SAMPLE_MARKER_DIR")
            if not finished and marker_dir:
                with open(os.path.join(marker_dir, f"count-closed-{n}"), "w") as f:
                    f.write("closed\n")

    @remote_callable
    async def acount(self, n: int = 3, interval: float = 0.0) -> AsyncIterator[str]:
        """Streams "a0" … as an async generator."""
        for i in range(n):
            if i and interval:
                await asyncio.sleep(interval)
            yield f"a{i}"

    @remote_callable
    def breaks(self, n: int = 2) -> Iterator[dict]:
        """Streams n chunks shaped like an api error body, then raises: a client must tell the
        chunks from the stream's real error."""
        for i in range(n):
            yield {"error": {"message": f"chunk {i}", "type": "not_an_error"}}
        raise ValueError(f"broke after {n} chunks")

    @remote_callable
    def boom(self, message: str) -> None:
        """Always raises ValueError(message)."""
        raise ValueError(message)

    @remote_callable
    async def slow(self, seconds: float) -> dict:
        """Sleeps (async), then says so and which process slept."""
        await asyncio.sleep(seconds)
        return {"slept": seconds, "pid": os.getpid()}

    @remote_callable
    def big(self, size: int) -> str:
        """A string of `size` bytes (over NATS's max payload: a clean function_failed)."""
        return "x" * size

    def not_hosted(self) -> int:
        return 0
