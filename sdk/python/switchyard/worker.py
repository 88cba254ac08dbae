"""A Python tool worker: serves the `@remote_callable` functions of an object as a `kind: tool`
model, speaking exactly the protocol of the Rust worker runtime (`worker/src/runtime.rs`):

* registry: its `WorkerRecord` (with the model card and its `FunctionSpec`s) under
  `sy:{reg}:worker:<id>` with a TTL of three heartbeats, its expiry in `sy:{reg}:workers`, the
  card in `sy:{reg}:models`; removed on a clean stop;
* queue: the shared durable pull consumers `sy-interactive-tool-<model>` and
  `sy-batch-tool-<model>`, created with the same config the Rust workers use; never more
  jobs pulled than free slots, interactive first, `batch_reserve` slots kept from batch jobs;
* each job: the cancel check (announcements on `sy.cancel.*`, the Redis flag when they cannot
  be trusted), the deadline, `ResumeState` from `resume_to` on a redelivery (numbering goes on
  from `next_seq`), `Started`, then `ToolResult` or `ToolChunk`s, then `Done` or `Error`, on
  `reply_to`, in-progress acks every third of the ack wait, the ack;
* SIGTERM: no new jobs, running ones get `drain_timeout` to finish, then go back to the queue.

    python -m switchyard.worker mymodule:MyTools --name my-tools --nats-url nats://… --redis-url redis://…

On a secured broker (`broker-config/secure/`) it logs in as the worker role, as the Rust
workers do: `--nats-url nats://worker:<password>@host:4222` (or `--nats-creds FILE`, a `.creds`
file or an nkey seed; both need the `nkeys` package), `--nats-inbox-prefix _INBOX_worker`, and
`--redis-url redis://worker:<password>@host:6379`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
import redis.asyncio as aioredis

from . import wire
from .tools import Function, ToolError, functions_of, result_json

log = logging.getLogger("switchyard.worker")

#: How long an announcement for a job not running here is remembered (running.rs HEARD_FOR).
HEARD_FOR = 600.0
HEARD_MAX = 100_000
#: A job created longer ago than this is checked in Redis (running.rs TRUST_AGE_MS).
TRUST_AGE_MS = 60_000


def redact_url(url: str) -> str:
    """`url` with its password (or token) replaced by `***`, for logs and errors."""
    out = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        if parts.password is not None:
            part = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")))
        elif parts.username:
            part = urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
        out.append(part)
    return ",".join(out)


def nats_connect_options(url: str, creds: Optional[str], inbox_prefix: Optional[str]) -> Tuple[List[str], Dict[str, Any]]:
    """The servers and `nats.connect` keywords for `url` (`nats://user:password@host`, the
    credentials percent-decoded, as the Rust parts read them), a credentials file (a `.creds`
    file, or an nkey seed `SU…`) and an inbox prefix, as `switchyard_broker::auth` does."""
    servers: List[str] = []
    options: Dict[str, Any] = {}
    for part in (p.strip() for p in url.split(",") if p.strip()):
        parts = urlsplit(part if "://" in part else f"nats://{part}")
        if parts.username:
            if parts.password is not None:
                options.update(user=unquote(parts.username), password=unquote(parts.password))
            else:
                options.update(token=unquote(parts.username))
        host = parts.netloc.rsplit("@", 1)[-1]
        servers.append(urlunsplit(parts._replace(netloc=host)))
    if creds:
        if options:
            raise ValueError(f"the NATS URL {redact_url(url)} carries credentials and --nats-creds {creds} too; give one or the other")
        with open(creds) as f:
            text = f.read()
        if "BEGIN NATS USER JWT" in text:
            options["user_credentials"] = creds
        else:
            seed = next((line.strip() for line in text.splitlines() if line.strip().startswith("SU")), None)
            if seed is None:
                raise ValueError(f"NATS credentials file {creds}: neither a NATS user JWT (a .creds file) nor an nkey user seed (a line starting with SU)")
            options["nkeys_seed_str"] = seed
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    return servers, options


def parse_duration(text: str) -> float:
    """`250ms`, `2s`, `1m`, `1h`, `1.5s` (as the Rust workers' flags) → seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 250ms, 2s, 1m, …)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class Slots:
    """A worker's slots shared by its two lanes (worker/src/slots.rs): an interactive job takes
    any free slot; a batch job only one beyond `reserve`, and none while an interactive job
    waits for a slot."""

    def __init__(self, total: int, reserve: int):
        self.total, self.free, self.reserve = total, total, reserve
        self.interactive_waiting = 0
        self.changed = asyncio.Condition()

    def open_to(self, lane: str) -> int:
        if lane == "interactive":
            return self.free
        if self.interactive_waiting > 0:
            return 0
        return max(0, self.free - self.reserve)

    async def wait_open(self, lane: str) -> int:
        async with self.changed:
            while self.open_to(lane) == 0:
                await self.changed.wait()
            return self.open_to(lane)

    async def take(self, lane: str) -> None:
        async with self.changed:
            if lane == "interactive":
                self.interactive_waiting += 1
            try:
                while self.open_to(lane) == 0:
                    await self.changed.wait()
                self.free -= 1
            finally:
                if lane == "interactive":
                    self.interactive_waiting -= 1
                    self.changed.notify_all()

    async def give_back(self) -> None:
        async with self.changed:
            self.free += 1
            self.changed.notify_all()


class Running:
    def __init__(self, msg: Any):
        self.cancel = asyncio.Event()
        self.msg = msg


class Worker:
    """Serves `obj`'s `@remote_callable` functions as the tool model `name`."""

    def __init__(
        self,
        obj: Any,
        name: str,
        nats_url: Optional[str] = None,
        redis_url: Optional[str] = None,
        slots: int = 4,
        batch_reserve: Optional[int] = None,
        heartbeat: float = 2.0,
        drain_timeout: float = 30.0,
        ack_wait: float = 10.0,
        max_deliver: int = 3,
        permissions: Optional[str] = None,
        model_rpm: Optional[int] = None,
        model_tpm: Optional[int] = None,
        nats_creds: Optional[str] = None,
        nats_inbox_prefix: Optional[str] = None,
    ):
        self.functions: Dict[str, Function] = functions_of(obj)
        if not self.functions:
            raise ValueError(f"{type(obj).__name__} has no @remote_callable function")
        self.model = name
        # Unset options fall back to the environment the Rust workers read, then their defaults.
        self.nats_url = nats_url or os.environ.get("SWITCHYARD_NATS_URL") or "nats://127.0.0.1:4222"
        self.redis_url = redis_url or os.environ.get("SWITCHYARD_REDIS_URL") or "redis://127.0.0.1:6379"
        self.nats_creds = nats_creds or os.environ.get("SWITCHYARD_NATS_CREDS") or None
        self.nats_inbox_prefix = nats_inbox_prefix or os.environ.get("SWITCHYARD_NATS_INBOX_PREFIX") or None
        if permissions is None:
            permissions = os.environ.get("SWITCHYARD_PERMISSIONS") or "groups: default"
        self.slots_total = max(1, int(slots))
        self.batch_reserve = batch_reserve if batch_reserve is not None else (1 if self.slots_total > 1 else 0)
        self.heartbeat, self.drain_timeout = heartbeat, drain_timeout
        self.ack_wait, self.max_deliver = ack_wait, max_deliver
        self.card = wire.model_card(
            name, [f.spec() for f in self.functions.values()], wire.parse_permissions(permissions), model_rpm, model_tpm
        )
        self.id = f"python-{os.getpid()}-{secrets.token_hex(8)}"
        self.running: Dict[str, Running] = {}
        self.heard: "OrderedDict[str, float]" = OrderedDict()
        self.forgetful_until = 0.0
        self.listening_after_seq: Optional[int] = None
        self.connects = 0
        self.connects_at_baseline = -1
        self.busy = 0
        self.handing_back = False
        self.stop_requested = False
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.slots_total + 2, thread_name_prefix="switchyard-call")
        self.started_ms = wire.now_ms()

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Starts the drain (what SIGTERM does); thread-safe once `run` has started."""
        self.stop_requested = True
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.stopping.set)

    async def run(self, install_signal_handlers: bool = True) -> None:
        loop = self.loop = asyncio.get_running_loop()
        # Made here, on the loop that runs the worker (asyncio objects bind to one on 3.9).
        self.stopping = asyncio.Event()
        if self.stop_requested:
            self.stopping.set()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop)
                except (NotImplementedError, RuntimeError):
                    pass

        async def reconnected() -> None:
            self.connects += 1

        async def nats_error(e: Exception) -> None:
            log.warning("nats (%s): %s", redact_url(self.nats_url), e or type(e).__name__)

        servers, auth = nats_connect_options(self.nats_url, self.nats_creds, self.nats_inbox_prefix)
        self.nc = await nats.connect(
            servers,
            **auth,
            name=self.id,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            reconnected_cb=reconnected,
            error_cb=nats_error,
        )
        self.connects = 1
        self.redis = aioredis.from_url(self.redis_url)
        self.js = self.nc.jetstream()
        await self.ensure_streams()
        subs = {}
        for lane in wire.LANES:
            name = await self.ensure_consumer(lane)
            subs[lane] = await self.js.pull_subscribe_bind(name, stream=wire.JOBS_STREAM)
        await self.beat()
        log.info("worker ready: worker_id=%s model=%s slots=%d functions=%s", self.id, self.model, self.slots_total, list(self.functions))

        await self.nc.subscribe(wire.CANCEL_ALL, cb=self.on_cancel)
        await self.nc.flush()
        await self.read_cancel_baseline()
        tasks = [asyncio.create_task(self.heartbeats()), asyncio.create_task(self.housekeeping())]
        self.slots = Slots(self.slots_total, self.batch_reserve)
        self.jobs: "set[asyncio.Task]" = set()
        share = self.slots_total
        pullers = [asyncio.create_task(self.pull(lane, sub, share)) for lane, sub in subs.items()]

        await self.stopping.wait()
        log.info("draining: no new jobs; waiting up to %.1fs for %d running", self.drain_timeout, self.busy)
        await asyncio.gather(*pullers, return_exceptions=True)
        if self.jobs:
            _, pending = await asyncio.wait(set(self.jobs), timeout=self.drain_timeout)
            if pending:
                log.warning("drain timed out: handing %d running jobs back to the queue", len(pending))
                self.handing_back = True
                for job in self.running.values():
                    job.cancel.set()
                await asyncio.wait(pending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.redis.delete(wire.worker_key(self.id))
        await self.redis.zrem(wire.WORKERS_KEY, self.id)
        await self.nc.flush()
        await self.nc.close()
        await self.redis.aclose() if hasattr(self.redis, "aclose") else await self.redis.close()
        self.pool.shutdown(wait=False)
        log.info("worker stopped")

    async def jsapi(self, subject: str, body: Dict[str, Any]) -> Dict[str, Any]:
        reply = await self.nc.request(f"$JS.API.{subject}", json.dumps(body).encode(), timeout=5)
        return json.loads(reply.data or b"{}")

    async def ensure_streams(self) -> None:
        """`jobs::ensure_streams`: create-or-update `SY_JOBS` and `SY_DEAD` with the same config."""
        account = await self.jsapi("INFO", {})
        if "error" in account:
            raise RuntimeError(f"JetStream is off on {redact_url(self.nats_url)}: {account['error']}")
        for config in (wire.jobs_stream_config(), wire.dead_letter_stream_config()):
            answer = await self.jsapi(f"STREAM.UPDATE.{config['name']}", config)
            if answer.get("error", {}).get("err_code") == 10059:  # stream not found
                answer = await self.jsapi(f"STREAM.CREATE.{config['name']}", config)
            if "error" in answer:
                raise RuntimeError(f"creating stream {config['name']}: {answer['error']}")

    async def ensure_consumer(self, lane: str) -> str:
        """`jobs::ensure_consumer`: the same `CONSUMER.CREATE` request async-nats sends."""
        config = wire.consumer_config(lane, "tool", self.model, self.ack_wait, self.max_deliver)
        name = config["durable_name"]
        answer = await self.jsapi(
            f"CONSUMER.CREATE.{wire.JOBS_STREAM}.{name}.{config['filter_subject']}",
            {"stream_name": wire.JOBS_STREAM, "config": config, "action": ""},
        )
        if "error" in answer:
            raise RuntimeError(f"creating consumer {name}: {answer['error']}")
        return name

    def record(self) -> Dict[str, Any]:
        return {
            "v": wire.WIRE_VERSION,
            "worker_id": self.id,
            "backend": "python",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slots": self.slots_total,
            "busy": self.busy,
            "models": [self.card],
            "started_ms": self.started_ms,
            "heartbeat_ms": wire.now_ms(),
        }

    async def beat(self) -> None:
        """`Registry::heartbeat`, valid for three heartbeats."""
        ttl_ms = int(self.heartbeat * 3 * 1000)
        now = wire.now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(wire.worker_key(self.id), wire.encode(self.record()), ex=max(1, ttl_ms // 1000))
        pipe.zadd(wire.WORKERS_KEY, {self.id: now + ttl_ms})
        pipe.hset(wire.MODELS_KEY, self.model, wire.encode({**self.card, "last_seen_ms": now}))
        await pipe.execute()

    async def heartbeats(self) -> None:
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=self.heartbeat)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.beat()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)

    async def housekeeping(self) -> None:
        """In-progress acks for every running job, and the cancel baseline across reconnects."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            for job in list(self.running.values()):
                try:
                    await job.msg.in_progress()
                except Exception:
                    pass
            if self.connects_at_baseline != self.connects:
                await self.read_cancel_baseline()

    # -- cancellation (worker/src/running.rs) --------------------------------------------

    async def read_cancel_baseline(self) -> None:
        connects = self.connects
        try:
            info = await self.jsapi(f"STREAM.INFO.{wire.JOBS_STREAM}", {})
            self.listening_after_seq = int(info["state"]["last_seq"])
            self.connects_at_baseline = connects
        except Exception as e:
            log.warning("cannot read the job stream's state (%s); cancel flags are read from Redis until it can", e)

    async def on_cancel(self, msg: Any) -> None:
        job_id = wire.job_id_of(msg.subject)
        if job_id is None:
            return
        job = self.running.get(job_id)
        if job is not None:
            log.info("cancel announced: job_id=%s", job_id)
            job.cancel.set()
            return
        now = time.monotonic()
        while self.heard:
            oldest_id, at = next(iter(self.heard.items()))
            too_many = len(self.heard) >= HEARD_MAX
            if now - at < HEARD_FOR and not too_many:
                break
            if too_many:
                self.forgetful_until = now + HEARD_FOR
            self.heard.popitem(last=False)
        self.heard[job_id] = now

    def heard_cancelled(self, job_id: str, attempt: int, stream_seq: int, created_ms: int) -> Optional[bool]:
        """True / False when the announcements answer it, None when Redis must."""
        if job_id in self.heard:
            return True
        young = abs(wire.now_ms() - created_ms) < TRUST_AGE_MS
        listened = (
            self.listening_after_seq is not None
            and stream_seq > self.listening_after_seq
            and self.connects_at_baseline == self.connects
        )
        remembers_all = time.monotonic() >= self.forgetful_until
        return False if attempt == 1 and young and listened and remembers_all else None

    # -- pulling ---------------------------------------------------------------------------

    async def pull(self, lane: str, sub: Any, share: int) -> None:
        while not self.stopping.is_set():
            waiting = asyncio.create_task(self.slots.wait_open(lane))
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not waiting.done():
                waiting.cancel()
                return
            open_ = waiting.result()
            wanted = max(1, min(open_, share)) if lane == "interactive" else max(1, open_)
            try:
                msgs = await sub.fetch(wanted, timeout=2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except Exception as e:
                if self.stopping.is_set():
                    return
                log.warning("pull request failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                if not await self.slot_for(lane, msg):
                    for rest in msgs[i + 1 :]:
                        await self._nak(rest)
                    return
                task = asyncio.create_task(self.handle(msg))
                self.jobs.add(task)
                task.add_done_callback(self.jobs.discard)

    async def slot_for(self, lane: str, msg: Any) -> bool:
        """A slot for a pulled job, kept alive while every slot is busy; on a drain the job goes
        back to the queue (False)."""
        if self.stopping.is_set():
            await self._nak(msg)
            return False
        take = asyncio.create_task(self.slots.take(lane))
        stop = asyncio.create_task(self.stopping.wait())
        try:
            while True:
                done, _ = await asyncio.wait({take, stop}, timeout=self.ack_wait / 3, return_when=asyncio.FIRST_COMPLETED)
                if take in done:
                    return True
                if stop in done:
                    take.cancel()
                    try:
                        await take
                    except asyncio.CancelledError:
                        pass
                    else:
                        await self.slots.give_back()
                    await self._nak(msg)
                    return False
                try:
                    await msg.in_progress()
                except Exception:
                    pass
        finally:
            stop.cancel()

    @staticmethod
    async def _nak(msg: Any) -> None:
        try:
            await msg.nak()
        except Exception:
            pass

    # -- one job ---------------------------------------------------------------------------

    async def handle(self, msg: Any) -> None:
        try:
            try:
                envelope = wire.decode(msg.data)
                job_id, reply_to = envelope["id"], envelope["reply_to"]
            except (wire.WireError, KeyError, TypeError) as e:
                log.warning("malformed job dropped (%s): %s", msg.subject, e)
                try:
                    await msg.term()
                except Exception:
                    pass
                return
            try:
                meta = msg.metadata
                attempt, stream_seq = int(meta.num_delivered), int(meta.sequence.stream)
            except Exception:
                attempt, stream_seq = 1, 0
            self.busy += 1
            try:
                handed_back = await self.run_job(envelope, attempt, stream_seq, msg)
            except Exception:
                log.exception("job %s: the runtime failed", job_id)
                handed_back = False
            finally:
                self.busy -= 1
            try:
                await (msg.nak() if handed_back else msg.ack())
            except Exception as e:
                log.warning("acknowledging job %s failed: %s", job_id, e)
        finally:
            await self.slots.give_back()

    async def run_job(self, envelope: Dict[str, Any], attempt: int, stream_seq: int, msg: Any) -> bool:
        """Runs one job; True when a drain handed it back to the queue."""
        job_id = envelope["id"]
        job = Running(msg)
        self.running[job_id] = job
        try:
            heard = self.heard_cancelled(job_id, attempt, stream_seq, int(envelope.get("created_ms") or 0))
            if heard is None:
                try:
                    heard = bool(await self.redis.exists(wire.cancel_key(job_id)))
                except Exception as e:
                    log.warning("cannot read the cancel flag (%s); running the job", e)
                    heard = False
            if heard:
                log.info("job %s: cancelled while queued; skipped", job_id)
                return False
            deadline = envelope.get("deadline_ms")
            if deadline is not None and deadline < wire.now_ms():
                log.info("job %s: deadline passed before the job started; skipped", job_id)
                await self.publish_alone(envelope, wire.error("deadline_exceeded", "the job's deadline passed before a worker could start it"))
                return False
            first_seq, skip_chunks = 0, 0
            if attempt > 1:
                resume = await self.ask_resume(envelope)
                if resume is None or not resume.get("wanted"):
                    log.info("job %s: redelivered job nobody waits for any more; skipped", job_id)
                    return False
                first_seq = int(resume.get("next_seq") or 0)
                skip_chunks = int(resume.get("chunks") or 0)
            events = Events(self.nc, job_id, envelope["reply_to"], first_seq, skip_chunks)
            await events.send(wire.started(self.id, attempt))
            try:
                finish = await self.call(envelope, job, events)
                if self.handing_back and job.cancel.is_set():
                    log.info("job %s: handed back to the queue", job_id)
                    return True
                await events.send(wire.done(finish))
                if finish == "cancelled":
                    log.info("job %s: cancelled while running", job_id)
            except ToolError as e:
                if self.handing_back and job.cancel.is_set():
                    return True
                log.warning("job %s failed: %s: %s", job_id, e.code, e.message)
                await events.send(wire.error(e.code, e.message))
            return False
        finally:
            self.running.pop(job_id, None)

    async def publish_alone(self, envelope: Dict[str, Any], body: Dict[str, Any]) -> None:
        await self.nc.publish(envelope["reply_to"], wire.encode(wire.stream_event(envelope["id"], 0, [body])))

    async def ask_resume(self, envelope: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            reply = await self.nc.request(envelope["resume_to"], b"", timeout=2)
            return wire.decode(reply.data)
        except Exception:
            return None

    async def call(self, envelope: Dict[str, Any], job: Running, events: "Events") -> str:
        """Runs the function the job names; returns the finish reason, raises `ToolError`."""
        request = envelope.get("request") or {}
        if request.get("type") != "tool":
            raise ToolError("invalid_request", f"{self.model} is a tool model: it only runs function calls")
        data = request.get("data") or {}
        name = data.get("function")
        function = self.functions.get(name)
        if function is None:
            raise ToolError("unknown_function", f"{self.model} has no function {json.dumps(name)}")
        arguments = data.get("arguments")
        if arguments is None:
            arguments = {}
        function.check(arguments)
        args, kwargs = function.bind(arguments)
        runner = Call(self, function, job, events)
        try:
            return await runner.run(args, kwargs)
        except ToolError:
            raise
        except Exception as e:
            log.warning("job %s: %s raised %s", envelope["id"], name, "".join(type(e).__name__ + ": " + str(e)))
            raise ToolError("function_failed", str(e) or type(e).__name__) from e


class Events:
    """A job's messages on its reply subject, numbered from `first_seq`. A redelivered
    streaming call runs again from the start: its first `skip_chunks` chunks, which the client
    already has, are not sent again."""

    def __init__(self, nc: Any, job_id: str, reply_to: str, first_seq: int, skip_chunks: int = 0):
        self.nc, self.job_id, self.reply_to, self.seq = nc, job_id, reply_to, first_seq
        self.skip_chunks = skip_chunks

    async def send(self, *bodies: Dict[str, Any]) -> None:
        if self.skip_chunks and len(bodies) == 1 and bodies[0]["type"] == "tool_chunk":
            self.skip_chunks -= 1
            return
        payload = wire.encode(wire.stream_event(self.job_id, self.seq, list(bodies)))
        limit = getattr(self.nc, "max_payload", 0) or 0
        if limit and len(payload) > limit:
            raise ToolError("function_failed", f"the result is {len(payload)} bytes as MessagePack, over the NATS server's max payload ({limit} bytes)")
        self.seq += 1
        await self.nc.publish(self.reply_to, payload)


_END = object()


class Call:
    """One running function, raced against its job's cancellation."""

    def __init__(self, worker: Worker, function: Function, job: Running, events: Events):
        self.worker, self.function, self.job, self.events = worker, function, job, events
        self.loop = asyncio.get_running_loop()

    def submit(self, fn: Any, *args: Any) -> "concurrent.futures.Future":
        return self.worker.pool.submit(contextvars.copy_context().run, fn, *args)

    def in_thread(self, fn: Any, *args: Any) -> "asyncio.Future":
        return asyncio.wrap_future(self.submit(fn, *args))

    async def race(self, awaitable: Any) -> Any:
        """The awaitable's value, or `_CANCELLED` when the job is cancelled first (the
        awaitable is then cancelled too)."""
        task = asyncio.ensure_future(awaitable)
        cancelled = asyncio.ensure_future(self.job.cancel.wait())
        try:
            await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        return _CANCELLED

    async def run(self, args: List[Any], kwargs: Dict[str, Any]) -> str:
        f = self.function
        if f.is_async_gen:
            return await self.stream_async(f.func(*args, **kwargs))
        if f.is_gen:
            return await self.stream_sync(f.func(*args, **kwargs))
        if f.is_async:
            value = await self.race(f.func(*args, **kwargs))
        else:
            value = await self.race(self.in_thread(functools.partial(f.func, *args, **kwargs)))
        if value is _CANCELLED:
            return "cancelled"
        if inspect.isasyncgen(value):
            return await self.stream_async(value)
        if inspect.isgenerator(value):
            return await self.stream_sync(value)
        await self.events.send(wire.tool_result(result_json(value)))
        return "stop"

    async def stream_sync(self, gen: Any) -> str:
        """A generator, one item at a time on a pool thread; closed when the call is cancelled
        (after the item it is producing)."""
        try:
            while True:
                pending = self.submit(next, gen, _END)
                item = await self.race(asyncio.wrap_future(pending))
                if item is _CANCELLED:
                    # The item being produced finishes on its thread first; then the generator
                    # is closed there (GeneratorExit at its `yield`, so its `finally` runs).
                    pending.add_done_callback(lambda _: self.worker.pool.submit(_close, gen))
                    return "cancelled"
                if item is _END:
                    return "stop"
                await self.events.send(wire.tool_chunk(result_json(item)))
        except BaseException:
            _close(gen)
            raise

    async def stream_async(self, agen: Any) -> str:
        try:
            while True:
                item = await self.race(agen.__anext__())
                if item is _CANCELLED:
                    return "cancelled"
                await self.events.send(wire.tool_chunk(result_json(item)))
        except StopAsyncIteration:
            return "stop"
        finally:
            try:
                await agen.aclose()
            except BaseException:
                pass


_CANCELLED = object()


def _close(gen: Any) -> None:
    try:
        gen.close()
    except Exception:
        pass


# -- command line ----------------------------------------------------------------------------


def load(target: str) -> Any:
    """`module:Attr` (or `path/to/file.py:Attr`) → the object to serve (a class is instantiated)."""
    if ":" not in target:
        raise SystemExit(f"expected module:Class, got {target!r}")
    module_name, attr = target.rsplit(":", 1)
    if module_name.endswith(".py") or os.sep in module_name:
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0], module_name)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[spec.name] = module  # type: ignore[union-attr]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj


def _env(name: str, default: Any) -> Any:
    return os.environ.get(name, default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m switchyard.worker", description="Serve @remote_callable functions as a Switchyard tool model.")
    p.add_argument("target", help="module:Class (or file.py:Class) whose @remote_callable methods to serve")
    p.add_argument("--name", default=_env("SWITCHYARD_MODEL_NAME", None), help="the tool model's name (default: the class's `name` attribute, else its name)")
    p.add_argument("--nats-url", default=_env("SWITCHYARD_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--redis-url", default=_env("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379"))
    p.add_argument("--nats-creds", default=_env("SWITCHYARD_NATS_CREDS", None), help="a .creds file or an nkey seed file (needs the nkeys package)")
    p.add_argument("--nats-inbox-prefix", default=_env("SWITCHYARD_NATS_INBOX_PREFIX", None), help="the secured broker's worker role: _INBOX_worker")
    p.add_argument("--slots", type=int, default=int(_env("SWITCHYARD_SLOTS", 4)), help="calls run at once (default 4)")
    p.add_argument("--batch-reserve", type=int, default=_env("SWITCHYARD_BATCH_RESERVE", None))
    p.add_argument("--heartbeat", type=parse_duration, default=_env("SWITCHYARD_HEARTBEAT", "2s"))
    p.add_argument("--drain-timeout", type=parse_duration, default=_env("SWITCHYARD_DRAIN_TIMEOUT", "30s"))
    p.add_argument("--ack-wait", type=parse_duration, default=_env("SWITCHYARD_ACK_WAIT", "10s"), help="must match every worker of the model")
    p.add_argument("--max-deliver", type=int, default=int(_env("SWITCHYARD_MAX_DELIVER", 3)), help="must match every worker of the model")
    p.add_argument("--permissions", default=_env("SWITCHYARD_PERMISSIONS", "groups: default"), help="HepAI's form: 'groups: default; users: a, b; owner: c'")
    p.add_argument("--model-rpm", type=int, default=_env("SWITCHYARD_MODEL_RPM", None))
    p.add_argument("--model-tpm", type=int, default=_env("SWITCHYARD_MODEL_TPM", None))
    return p


def options_from(args: argparse.Namespace) -> Dict[str, Any]:
    def as_duration(v: Any) -> float:
        return v if isinstance(v, float) else parse_duration(v)

    return dict(
        nats_url=args.nats_url,
        redis_url=args.redis_url,
        slots=args.slots,
        batch_reserve=None if args.batch_reserve is None else int(args.batch_reserve),
        heartbeat=as_duration(args.heartbeat),
        drain_timeout=as_duration(args.drain_timeout),
        ack_wait=as_duration(args.ack_wait),
        max_deliver=args.max_deliver,
        permissions=args.permissions,
        model_rpm=None if args.model_rpm is None else int(args.model_rpm),
        model_tpm=None if args.model_tpm is None else int(args.model_tpm),
        nats_creds=args.nats_creds,
        nats_inbox_prefix=args.nats_inbox_prefix,
    )


def model_name_of(obj: Any) -> str:
    return getattr(obj, "name", None) if isinstance(getattr(obj, "name", None), str) else type(obj).__name__


def serve(obj: Any, name: Optional[str] = None, **options: Any) -> None:
    """Serves `obj`'s `@remote_callable` functions until SIGTERM / SIGINT (then drains).
    `options` are `Worker`'s (nats_url, redis_url, slots, permissions, …); unset ones come
    from the Rust workers' environment variables (`SWITCHYARD_NATS_URL`, …)."""
    if not logging.getLogger().handlers:
        _log_to_stderr()
    asyncio.run(Worker(obj, name or model_name_of(obj), **options).run())


def _log_to_stderr() -> None:
    logging.basicConfig(level=os.environ.get("SWITCHYARD_PY_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[List[str]] = None) -> None:
    _log_to_stderr()
    args = parser().parse_args(argv)
    obj = load(args.target)
    worker = Worker(obj, args.name or model_name_of(obj), **options_from(args))
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
