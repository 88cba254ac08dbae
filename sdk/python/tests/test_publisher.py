"""`switchyard.publisher` against a real nats-server and redis-server (started here on free
ports, from PATH or `.switchyard/bin`; a missing one fails, never skips). A scripted worker
stands in for the real ones, so the tests can send what real workers never do: duplicates,
gaps, out-of-band errors, a second worker resuming. (tests/tests/direct_publish.rs runs the
publisher against real Switchyard workers.)"""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from switchyard import wire
from switchyard.publisher import (
    JobFailed,
    JobNotStarted,
    Progress,
    PublishFailed,
    Publisher,
    chat_request,
    new_job_id,
)

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = json.loads((ROOT / "schemas/json/switchyard.schema.json").read_text())


# -- real servers --------------------------------------------------------------------------


def _binary(name: str) -> str:
    found = shutil.which(name) or (str(ROOT / ".switchyard/bin" / name) if (ROOT / ".switchyard/bin" / name).is_file() else None)
    if found is None:
        pytest.fail(f"{name} is neither on PATH nor in .switchyard/bin: run scripts/setup.sh")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command_for_port, directory: Path, name: str):
    """Starts a server on a free port (retrying when the port was taken in between)."""
    for attempt in range(5):
        port = _free_port()
        log = open(directory / f"{name}-{attempt}.log", "wb")
        proc = subprocess.Popen(command_for_port(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc, port
            except OSError:
                time.sleep(0.02)
        proc.kill()
        proc.wait()
    pytest.fail(f"{name} did not start; see {directory}")


class Servers:
    def __init__(self, directory: Path, jetstream: bool = True):
        nats_bin, redis_bin = _binary("nats-server"), _binary("redis-server")
        store = directory / "nats"
        js = ["-js", "-sd", str(store)] if jetstream else []
        self.nats, nats_port = _start(lambda port: [nats_bin, "-a", "127.0.0.1", "-p", str(port), *js], directory, "nats-server")
        self.redis, redis_port = _start(
            lambda port: [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
            directory,
            "redis-server",
        )
        self.nats_url = f"nats://127.0.0.1:{nats_port}"
        self.redis_url = f"redis://127.0.0.1:{redis_port}"

    def stop(self) -> None:
        for proc in (self.nats, self.redis):
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    servers = Servers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.stop()


def run(coroutine, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def jobs_stream(nc) -> Dict[str, Any]:
    """Creates `SY_JOBS` as the workers do (an identical create is a no-op); its info."""
    answer = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{wire.JOBS_STREAM}", json.dumps(wire.jobs_stream_config()).encode(), timeout=5)).data)
    assert "error" not in answer, answer
    return json.loads((await nc.request(f"$JS.API.STREAM.INFO.{wire.JOBS_STREAM}", b"", timeout=5)).data)


class ScriptedWorker:
    """Hears every job published on `sy.job.>` (a core subscription beside the stream) and
    sends whatever messages the test tells it to, on the job's reply subject."""

    def __init__(self, nats_url: str):
        self.nats_url = nats_url
        self.jobs: "asyncio.Queue" = asyncio.Queue()

    async def __aenter__(self) -> "ScriptedWorker":
        import nats

        self.nc = await nats.connect(self.nats_url)
        await jobs_stream(self.nc)
        self.cancels: "asyncio.Queue" = asyncio.Queue()

        async def on_job(msg):
            await self.jobs.put((msg.subject, wire.decode(msg.data), msg.headers or {}))

        async def on_cancel(msg):
            await self.cancels.put((msg.subject, msg.data))

        await self.nc.subscribe(wire.JOBS_SUBJECTS, cb=on_job)
        await self.nc.subscribe(wire.CANCEL_ALL, cb=on_cancel)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def next_job(self, timeout: float = 5):
        return await asyncio.wait_for(self.jobs.get(), timeout)

    async def send(self, envelope: Dict[str, Any], seq: int, events: List[Dict[str, Any]]) -> None:
        await self.nc.publish(envelope["reply_to"], wire.encode(wire.stream_event(envelope["id"], seq, events)))
        await self.nc.flush()

    async def cancelled(self, job_id: str, timeout: float = 5) -> bytes:
        """The payload of the cancellation announced for `job_id`."""
        while True:
            subject, payload = await asyncio.wait_for(self.cancels.get(), timeout)
            if subject == wire.cancel_subject(job_id):
                return payload

    async def resume(self, envelope: Dict[str, Any]) -> Dict[str, Any]:
        """Asks the publisher where to continue, as a worker given a redelivered job does."""
        reply = await self.nc.request(envelope["resume_to"], b"", timeout=2)
        return wire.decode(reply.data)


def delta(text: str, tokens: int = 1) -> Dict[str, Any]:
    return {"type": "delta", "data": {"text": text, "tokens": tokens}}


def done(finish_reason: str = "stop", prompt_tokens: int = 2, completion_tokens: int = 3) -> Dict[str, Any]:
    return {"type": "done", "data": {"finish_reason": finish_reason, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}}


async def redis_client(servers: Servers):
    import redis.asyncio as aioredis

    return aioredis.from_url(servers.redis_url)


HELLO = [{"role": "user", "content": "hi"}]


# -- the tests ---------------------------------------------------------------------------------


def test_events_arrive_in_order_and_duplicates_are_dropped(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, redis_url=servers.redis_url) as publisher:
            job = await publisher.chat("m/x", HELLO, max_tokens=5)
            _, envelope, _ = await worker.next_job()
            await worker.send(envelope, 0, [wire.started("w1", 1)])
            await worker.send(envelope, 1, [delta("Hel")])
            await worker.send(envelope, 1, [delta("Hel")])  # the same message again
            await worker.send(envelope, 0, [wire.started("w1", 1)])  # an older one
            await worker.send(envelope, 2, [delta("lo"), done()])
            events = [event async for event in job]
            assert [e["type"] for e in events] == ["started", "delta", "delta", "done"]
            assert job.content == "Hello"
            assert (job.finish_reason, job.usage) == ("stop", {"prompt_tokens": 2, "completion_tokens": 3})
            assert (job.worker_id, job.attempt) == ("w1", 1)
            # Read past the end: refused, not a hang.
            with pytest.raises(Exception, match="read past"):
                await job.next()

    run(scenario())


def test_a_gap_fails_the_job_with_stream_gap_and_cancels_it(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, redis_url=servers.redis_url) as publisher:
            job = await publisher.chat("m", HELLO)
            _, envelope, _ = await worker.next_job()
            await worker.send(envelope, 0, [wire.started("w1", 1), delta("a")])
            await worker.send(envelope, 2, [delta("c")])  # message 1 was lost
            await worker.send(envelope, 1, [delta("b")])  # too late: the job has failed
            texts = []
            with pytest.raises(JobFailed) as failed:
                async for text in job.text():
                    texts.append(text)
            assert failed.value.code == "stream_gap" and "1..2" in failed.value.message
            assert texts == ["a"], "nothing after the gap"
            # The worker is told to stop, and the flag is set for a redelivery.
            assert await worker.cancelled(job.id) == b""
            redis = await redis_client(servers)
            for _ in range(100):
                if await redis.get(wire.cancel_key(job.id)) == b"1":
                    break
                await asyncio.sleep(0.02)
            assert await redis.get(wire.cancel_key(job.id)) == b"1"
            await redis.aclose()
            # A worker that picks it up again is told nobody wants it.
            assert (await worker.resume(envelope))["wanted"] is False

    run(scenario())


def test_out_of_band_and_upstream_errors_end_the_job(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url) as publisher:
            dead = await publisher.chat("m", HELLO)
            _, envelope, _ = await worker.next_job()
            await worker.send(envelope, 0, [wire.started("w1", 1), delta("a")])
            # The scheduler's dead-letter error: whatever sequence comes next.
            await worker.send(envelope, wire.OUT_OF_BAND_SEQ, [wire.error("max_deliveries_exceeded", "gave up")])
            with pytest.raises(JobFailed) as failed:
                await dead.result()
            assert (failed.value.code, failed.value.message) == ("max_deliveries_exceeded", "gave up")

            refused = await publisher.chat("m", HELLO)
            _, envelope, _ = await worker.next_job()
            upstream = {"status": 429, "type": "rate_limit_error", "code": None, "param": None}
            await worker.send(envelope, 0, [wire.started("w1", 1), {"type": "error", "data": {"code": "upstream", "message": "slow down", "upstream": upstream}}])
            with pytest.raises(JobFailed) as failed:
                await refused.result()
            assert (failed.value.code, failed.value.upstream) == ("upstream", upstream)

    run(scenario())


def test_resume_requests_are_answered_from_what_was_delivered(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, redis_url=servers.redis_url) as publisher:
            job = await publisher.chat("m", HELLO)
            _, envelope, _ = await worker.next_job()
            await worker.send(envelope, 0, [wire.started("w1", 1)])
            await worker.send(envelope, 1, [delta("ab", 2)])
            await worker.send(envelope, 2, [delta("cd", 1)])
            assert [(await job.next())["type"] for _ in range(3)] == ["started", "delta", "delta"]
            # w1 died; JetStream hands the job to w2, which asks where the client stands.
            state = await worker.resume(envelope)
            assert state == {"v": wire.WIRE_VERSION, "wanted": True, "text": "abcd", "tool_calls": [], "chunks": 0, "completion_tokens": 3, "next_seq": 3}
            import jsonschema

            jsonschema.validate(state, SCHEMAS["ResumeState"])
            await worker.send(envelope, 3, [wire.started("w2", 2)])
            await worker.send(envelope, 4, [delta("ef"), done(completion_tokens=4)])
            # Its end has arrived (not yet read): nobody wants it run again.
            for _ in range(100):
                if job.progress.ended:
                    break
                await asyncio.sleep(0.01)
            assert (await worker.resume(envelope))["wanted"] is False
            result = await job.result()
            assert result.text == "abcdef" and result.usage["completion_tokens"] == 4
            assert (job.worker_id, job.attempt) == ("w2", 2)
            # Ended and read: forgotten. Unknown: never wanted.
            assert (await worker.resume(envelope))["wanted"] is False
            unknown = await worker.resume({"resume_to": wire.resume_subject(publisher.instance, "01UNKNOWN")})
            assert unknown == {"v": wire.WIRE_VERSION, "wanted": False, "text": "", "tool_calls": [], "chunks": 0, "completion_tokens": 0, "next_seq": 0}

    run(scenario())


def test_progress_counts_what_resume_state_record_counts():
    progress = Progress()
    events = [
        wire.started("w", 1),
        delta("Let me ", 2),
        {"type": "tool_call_start", "data": {"index": 0, "id": "call_1", "name": "f"}},
        {"type": "tool_call_arguments", "data": {"index": 0, "delta": '{"a": ', "tokens": 2}},
        {"type": "tool_call_arguments", "data": {"index": 0, "delta": "1}", "tokens": 1}},
        {"type": "tool_call_arguments", "data": {"index": 5, "delta": "?", "tokens": 1}},
        wire.tool_chunk(1),
        wire.tool_chunk(2),
        {"type": "embeddings", "data": {"first_index": 0, "vectors": [[0.5]]}},
    ]
    for event in events:
        progress.record(event)
    assert progress.resume_state(wanted=True) == {
        "v": wire.WIRE_VERSION,
        "wanted": True,
        "text": "Let me ",
        "tool_calls": [{"id": "call_1", "name": "f", "arguments": '{"a": 1}'}],
        "chunks": 2,
        "completion_tokens": 6,
        "next_seq": 0,
    }
    assert not progress.ended
    progress.record(done())
    assert progress.ended


def test_cancel_sets_the_flag_and_announces_it(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, redis_url=servers.redis_url) as publisher:
            redis = await redis_client(servers)
            job = await publisher.chat("m", HELLO)
            _, envelope, _ = await worker.next_job()
            await worker.send(envelope, 0, [wire.started("w1", 1), delta("a")])
            assert (await job.next())["type"] == "started"
            await job.cancel()
            # Both halves are in place when cancel returns.
            assert await redis.get(wire.cancel_key(job.id)) == b"1"
            assert 86000 < await redis.ttl(wire.cancel_key(job.id)) <= wire.CANCEL_FLAG_TTL_S
            assert await worker.cancelled(job.id) == b""
            # The running job ends as its worker ends it.
            await worker.send(envelope, 1, [done("cancelled", completion_tokens=1)])
            result = await job.result()
            assert (result.text, result.finish_reason) == ("a", "cancelled")

            # Cancelled before any worker had it: it ends here at once.
            queued = await publisher.chat("m", HELLO)
            await queued.cancel()
            with pytest.raises(JobFailed) as failed:
                await queued.result()
            assert failed.value.code == "cancelled"
            assert await redis.get(wire.cancel_key(queued.id)) == b"1"
            await redis.aclose()

    run(scenario())


def test_a_job_no_worker_starts_times_out_and_is_cancelled(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, redis_url=servers.redis_url, queue_timeout=0.3) as publisher:
            job = await publisher.chat("nobody-serves-this", HELLO)
            started = time.monotonic()
            with pytest.raises(JobNotStarted, match="No worker took job"):
                await job.result()
            assert 0.25 < time.monotonic() - started < 3
            assert await worker.cancelled(job.id) == b""
            redis = await redis_client(servers)
            assert await redis.exists(wire.cancel_key(job.id))
            await redis.aclose()

    run(scenario())


def test_envelopes_follow_the_protocol(servers):
    import jsonschema

    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url, queue_timeout=2, idle_timeout=3) as publisher:
            tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
            fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
            cases = [
                (publisher.chat("m/x", HELLO + [{"role": "assistant", "content": [{"type": "text", "text": "yo"}]}], max_tokens=5, stop="\n", temperature=0.5),
                 "sy.job.interactive.chat.m~2Fx", "chat"),
                (publisher.chat("m/x", HELLO, tools=tools, tool_choice="required", response_format=fmt, lane="batch"), "sy.job.batch.chat.m~2Fx", "chat"),
                (publisher.completion("m/x", "once upon", lane="batch", seed=7), "sy.job.batch.chat.m~2Fx", "completion"),
                (publisher.embedding("m/x", ["a", "b"]), "sy.job.interactive.embedding.m~2Fx", "embedding"),
                (publisher.call_tool("m/x", "add", {"a": 1}), "sy.job.interactive.tool.m~2Fx", "tool"),
            ]
            for submit, subject, request_type in cases:
                before = wire.now_ms()
                job = await submit
                got_subject, envelope, headers = await worker.next_job()
                assert got_subject == subject == job.subject
                jsonschema.validate(envelope, SCHEMAS["JobEnvelope"])
                assert envelope["request"]["type"] == request_type
                assert envelope["id"] == job.id and headers.get("Nats-Msg-Id") == job.id
                assert len(job.id) == 26 and set(job.id) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
                assert envelope["reply_to"] == wire.reply_subject(publisher.instance, job.id)
                assert envelope["resume_to"] == wire.resume_subject(publisher.instance, job.id)
                assert envelope["lane"] == subject.split(".")[2] and envelope["kind"] == subject.split(".")[3]
                assert before + 5000 <= envelope["deadline_ms"] <= wire.now_ms() + 5000
                await job.close()
            first = chat_request(HELLO + [{"role": "assistant", "content": [{"type": "text", "text": "yo"}]}], max_tokens=5, stop="\n")
            assert first["data"]["messages"][1] == {"role": "assistant", "content": "yo"}
            assert first["data"]["params"] == {"max_tokens": 5, "stop": ["\n"]}
            with pytest.raises(TypeError, match="unknown sampling parameters"):
                chat_request(HELLO, n=2)
            with pytest.raises(ValueError, match="lane"):
                await publisher.submit("m", first, lane="fast")

    run(scenario())


def test_a_retried_publish_is_stored_once(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url) as publisher:
            before = (await jobs_stream(worker.nc))["state"]["messages"]
            job_id = new_job_id()
            # As a publish retried after a lost acknowledgement: the same id twice.
            for _ in range(2):
                job = await publisher.submit("m", chat_request(HELLO), job_id=job_id)
            after = (await jobs_stream(worker.nc))["state"]["messages"]
            assert after == before + 1, "Nats-Msg-Id made the stream keep one copy"
            await job.close()

    run(scenario())


def test_an_envelope_over_max_payload_is_refused_before_publishing(servers):
    async def scenario():
        async with ScriptedWorker(servers.nats_url) as worker, Publisher.connect(servers.nats_url) as publisher:
            before = (await jobs_stream(worker.nc))["state"]["messages"]
            with pytest.raises(PublishFailed, match="max_payload"):
                await publisher.completion("m", "x" * (publisher.nc.max_payload + 1))
            assert (await jobs_stream(worker.nc))["state"]["messages"] == before
            assert not publisher._jobs

    run(scenario())


def test_publishing_where_no_stream_listens_fails_clearly(tmp_path):
    servers = Servers(tmp_path)  # a fresh server: nothing created SY_JOBS
    try:

        async def scenario():
            async with Publisher.connect(servers.nats_url) as publisher:
                started = time.monotonic()
                with pytest.raises(PublishFailed, match="no stream takes sy.job.interactive.chat.m"):
                    await publisher.chat("m", HELLO)
                assert time.monotonic() - started < 3, "no responders is answered at once"

        run(scenario())
    finally:
        servers.stop()
