"""An MCP client of the Python SDK (`mcp`) against Switchyard's /mcp: lists the tools and calls
a plain and a streaming one with the key in $SWITCHYARD_KEY; prints one JSON line of what it saw.
Run by tests/tests/mcp.rs: python mcp_client.py http://127.0.0.1:PORT/mcp"""

import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def session_calls(url, key):
    report = {}
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with http, streamable_http_client(url, http_client=http) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            report["tools"] = [tool.name for tool in tools.tools]
            add = next(tool for tool in tools.tools if tool.name == "custom_method")
            assert add.input_schema["properties"]["a"]["type"] == "integer", add.input_schema

            result = await session.call_tool("custom_method", {"a": 5, "b": 7})
            report["sum"] = {"text": result.content[0].text, "is_error": result.is_error}

            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            result = await session.call_tool("get_stream", {"count": 3, "interval_ms": 10}, progress_callback=on_progress)
            report["stream"] = {"result": json.loads(result.content[0].text), "progress": progress}

            result = await session.call_tool("fail", {"message": "it broke"})
            report["fail"] = {"text": result.content[0].text, "is_error": result.is_error}
    return report


async def refused_without_key(url):
    try:
        http = create_mcp_http_client()
        async with http, streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await asyncio.wait_for(session.initialize(), 20)
    except BaseException as e:  # an ExceptionGroup of the task group, or the HTTP error
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return "refused"
    return "accepted"


async def main():
    url, key = sys.argv[1], os.environ["SWITCHYARD_KEY"]
    report = await session_calls(url, key)
    report["no_key"] = await refused_without_key(url)
    print(json.dumps(report))


asyncio.run(main())
