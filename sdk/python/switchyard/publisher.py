"""Publishing jobs straight to NATS, without the HTTP api (`docs/protocol.md`): the Python
counterpart of the Rust crate `switchyard-client`.

    from switchyard.publisher import Publisher

    async with Publisher.connect("nats://127.0.0.1:4222", redis_url="redis://127.0.0.1:6379") as publisher:
        job = await publisher.chat("echo", [{"role": "user", "content": "Hello"}], max_tokens=64)
        async for text in job.text():
            print(text, end="", flush=True)
        print(job.finish_reason, job.usage)

A `Publisher` subscribes once to its reply subjects (`sy.reply.<instance>.*`) and its resume
subjects (`sy.resume.<instance>.*`), then each `submit` (or `chat`, `completion`, `embedding`,
`call_tool`) publishes one job with a JetStream publish and waits for the stream's
acknowledgement. Events reach the job's `Job` in order: a duplicate message is dropped, a lost
one (a gap in the sequence numbers) ends the job with a `stream_gap` error and cancels it. When
a worker dies and JetStream hands the job to another, that worker asks where to continue; the
publisher answers from what it has received, so no text arrives twice. A job no worker starts
within the queue timeout fails with `JobNotStarted` (and is cancelled); one that goes silent
for the idle timeout, with `JobSilent`.

On a secured broker (`broker-config/secure/`) the publisher logs in as its own user: the URL
carries user and password (`nats://orders:secret@nats:4222`, percent-encoded), or `nats_creds`
names a `.creds` file or an nkey seed file, and `instance` and `inbox_prefix` are the ones its
permissions name (`instance="orders"`, `inbox_prefix="_INBOX_orders"`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, Iterable, List, Optional, Union

import nats
import nats.errors
import nats.js.errors

from . import wire
from .worker import nats_connect_options

log = logging.getLogger("switchyard.publisher")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
#: How long a job waits for a worker to start it (the api's `--queue-timeout` default).
QUEUE_TIMEOUT = 30.0
#: How long a started job may go without an event (the api's `--idle-timeout` default).
IDLE_TIMEOUT = 120.0
#: How long one publish waits for the stream's acknowledgement.
ACK_TIMEOUT = 5.0

LANES = wire.LANES
#: The fields of `SamplingParams` (schemas/src/job.rs).
SAMPLING_PARAMS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_token_ids",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
)
#: The job kind of each request type (`JobRequest::kind`).
KIND_OF_REQUEST = {"chat": "chat", "completion": "chat", "embedding": "embedding", "tool": "tool"}
#: Where a job's sequence stands after a gap: every later message counts as a duplicate.
_AFTER_GAP = wire.OUT_OF_BAND_SEQ - 1


class PublisherError(Exception):
    """Something a publisher could not do."""


class PublishFailed(PublisherError):
    """The job queue did not take the job (nothing was queued)."""


class JobNotStarted(PublisherError, TimeoutError):
    """No worker started the job in time: the model has no live worker, or all are busy."""

    def __init__(self, job_id: str, seconds: float):
        super().__init__(
            f"No worker took job {job_id} within {seconds:.1f}s: the model has no live worker, or all of its workers are busy. Try again later."
        )
        self.job_id, self.seconds = job_id, seconds


class JobSilent(PublisherError, TimeoutError):
    """The worker running the job sent nothing for too long."""

    def __init__(self, job_id: str, seconds: float):
        super().__init__(f"The worker running job {job_id} went silent for {seconds:.0f}s.")
        self.job_id, self.seconds = job_id, seconds


class JobFailed(PublisherError):
    """The job ended with an `error` event: `code` (an `ErrorCode`), `message`, and, for
    `code == "upstream"`, `upstream` (the upstream server's `status`, `type`, `code`, `param`)."""

    def __init__(self, code: str, message: str, upstream: Optional[Dict[str, Any]] = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.upstream = code, message, upstream


# -- ids and names ---------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id() -> str:
    """A ULID: 48 bits of Unix ms and 80 random bits, 26 characters of Crockford base32."""
    value = (wire.now_ms() & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


# -- requests --------------------------------------------------------------------------------


def sampling_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """`SamplingParams` from keyword arguments (OpenAI's names); `stop` may be one string."""
    unknown = sorted(set(params) - set(SAMPLING_PARAMS))
    if unknown:
        raise TypeError(f"unknown sampling parameters {unknown}; known: {', '.join(SAMPLING_PARAMS)}")
    out = {key: value for key, value in params.items() if value is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


def _content(content: Any) -> str:
    """OpenAI's content, a string or a list of parts, as the wire's plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") in (None, "text"))


def chat_message(message: Dict[str, Any]) -> Dict[str, Any]:
    """A `ChatMessage` from an OpenAI message (tool calls and tool answers included)."""
    out: Dict[str, Any] = {"role": message["role"], "content": _content(message.get("content"))}
    if message.get("name"):
        out["name"] = message["name"]
    calls = message.get("tool_calls") or []
    if calls:
        out["tool_calls"] = [
            {"id": call["id"], "name": call["function"]["name"], "arguments": call["function"].get("arguments") or ""} for call in calls
        ]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def tool_use(tools: List[Dict[str, Any]], tool_choice: Any = None, parallel_tool_calls: bool = True) -> Dict[str, Any]:
    """A `ToolUse` from OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`."""
    definitions = []
    for tool in tools:
        function = tool.get("function", tool)
        definition = {"name": function["name"]}
        for key in ("description", "parameters", "strict"):
            if function.get(key) is not None:
                definition[key] = function[key]
        definitions.append(definition)
    if tool_choice is None or tool_choice == "auto":
        choice: Dict[str, Any] = {"type": "auto"}
    elif tool_choice in ("none", "required"):
        choice = {"type": tool_choice}
    elif isinstance(tool_choice, dict) and "function" in tool_choice:
        choice = {"type": "function", "name": tool_choice["function"]["name"]}
    else:
        raise ValueError(f"tool_choice {tool_choice!r}: expected 'none', 'auto', 'required' or {{'type': 'function', 'function': {{'name': …}}}}")
    return {"tools": definitions, "choice": choice, "parallel": bool(parallel_tool_calls)}


def response_format(value: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The wire's `ResponseFormat` from OpenAI's `response_format` (`None` for text)."""
    if value is None or value.get("type") == "text":
        return None
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    if value.get("type") == "json_schema":
        schema = value.get("json_schema", value)
        return {"type": "json_schema", "name": schema["name"], "schema": schema.get("schema", {}), "strict": bool(schema.get("strict", False))}
    raise ValueError(f"response_format {value!r}: expected text, json_object or json_schema")


def chat_request(
    messages: Iterable[Dict[str, Any]],
    tools: Optional[List[Dict[str, Any]]] = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    format: Optional[Dict[str, Any]] = None,
    **params: Any,
) -> Dict[str, Any]:
    data: Dict[str, Any] = {"messages": [chat_message(m) for m in messages], "params": sampling_params(params)}
    if tools:
        data["tools"] = tool_use(tools, tool_choice, parallel_tool_calls)
    wire_format = response_format(format)
    if wire_format is not None:
        data["response_format"] = wire_format
    return {"type": "chat", "data": data}


def completion_request(prompt: str, **params: Any) -> Dict[str, Any]:
    return {"type": "completion", "data": {"prompt": prompt, "params": sampling_params(params)}}


def embedding_request(input: Union[str, List[str]]) -> Dict[str, Any]:
    return {"type": "embedding", "data": {"input": [input] if isinstance(input, str) else list(input)}}


def tool_request(function: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
    return {"type": "tool", "data": {"function": function, "arguments": arguments}}


# -- what a job delivered ----------------------------------------------------------------------


class Progress:
    """What a job has delivered, counted as `ResumeState::record` counts it, and the next
    sequence number: what a resuming worker continues after."""

    def __init__(self) -> None:
        self.text = ""
        self.tool_calls: List[Dict[str, str]] = []
        self.chunks = 0
        self.completion_tokens = 0
        self.next_seq = 0
        self.ended = False

    def record(self, event: Dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "delta":
            self.text += data.get("text", "")
            self.completion_tokens += int(data.get("tokens") or 0)
        elif kind == "tool_call_start":
            self.tool_calls.append({"id": data.get("id", ""), "name": data.get("name", ""), "arguments": ""})
        elif kind == "tool_call_arguments":
            index = int(data.get("index", -1))
            if 0 <= index < len(self.tool_calls):
                self.tool_calls[index]["arguments"] += data.get("delta", "")
            self.completion_tokens += int(data.get("tokens") or 0)
        elif kind == "tool_chunk":
            self.chunks += 1
        elif kind in ("done", "error"):
            self.ended = True

    def resume_state(self, wanted: bool) -> Dict[str, Any]:
        """The `ResumeState` a worker that picks the job up again gets."""
        return {
            "v": wire.WIRE_VERSION,
            "wanted": wanted,
            "text": self.text,
            "tool_calls": [dict(call) for call in self.tool_calls],
            "chunks": self.chunks,
            "completion_tokens": self.completion_tokens,
            "next_seq": self.next_seq,
        }


@dataclass
class JobResult:
    """Everything a job produced, once it is done."""

    text: str
    finish_reason: str
    usage: Dict[str, int]
    tool_calls: List[Dict[str, str]] = field(default_factory=list)
    embeddings: List[List[float]] = field(default_factory=list)
    tool_result: Any = None
    chunks: List[Any] = field(default_factory=list)


class Job:
    """One submitted job. Iterate it (`async for event in job`) for every event, in order, as
    `{"type": …, "data": {…}}` maps, ending after `done` or `error`; or `job.text()` for the
    text alone; or `await job.result()` for all of it. `async with job:` cancels it if it is
    left before its end."""

    def __init__(self, publisher: "Publisher", job_id: str, model: str, kind: str, lane: str, subject: str, queue_timeout: float, idle_timeout: float):
        self.publisher = publisher
        self.id, self.model, self.kind, self.lane, self.subject = job_id, model, kind, lane, subject
        self.queue_timeout, self.idle_timeout = queue_timeout, idle_timeout
        self.progress = Progress()
        self._events: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self._queue_deadline = time.monotonic() + queue_timeout
        #: The last `started` event's worker and attempt (2 or more after a redelivery).
        self.worker_id: Optional[str] = None
        self.attempt = 0
        self.started = False
        #: Set once the terminal event (or a timeout) was handed out.
        self.finished = False
        self.finish_reason: Optional[str] = None
        self.usage: Optional[Dict[str, int]] = None
        self.error: Optional[JobFailed] = None
        self._vectors: Dict[int, List[float]] = {}
        self.tool_result: Any = None
        self.chunks: List[Any] = []

    @property
    def content(self) -> str:
        """The text delivered so far."""
        return self.progress.text

    @property
    def tool_calls(self) -> List[Dict[str, str]]:
        """Tool calls delivered so far (`id`, `name`, `arguments` text)."""
        return self.progress.tool_calls

    @property
    def embeddings(self) -> List[List[float]]:
        """Embedding vectors received so far, in input order."""
        return [self._vectors[i] for i in sorted(self._vectors)]

    def _deliver(self, event: Dict[str, Any]) -> None:
        self._events.put_nowait(event)

    async def next(self) -> Dict[str, Any]:
        """The next event. Raises `JobNotStarted` when no worker starts the job within the queue
        timeout (counted from the submit), `JobSilent` when a started job sends nothing for the
        idle timeout; either way the job is cancelled."""
        if self.finished:
            raise PublisherError(f"job {self.id} has ended: read past its last event")
        try:
            event = self._events.get_nowait()
        except asyncio.QueueEmpty:
            wait = self.idle_timeout if self.started else max(0.0, self._queue_deadline - time.monotonic())
            try:
                event = await asyncio.wait_for(self._events.get(), wait)
            except asyncio.TimeoutError:
                self._end()
                self.publisher._cancel_soon(self.id)
                if self.started:
                    raise JobSilent(self.id, self.idle_timeout) from None
                raise JobNotStarted(self.id, self.queue_timeout) from None
        self._take(event)
        return event

    def _take(self, event: Dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "started":
            self.started, self.worker_id, self.attempt = True, data.get("worker_id"), int(data.get("attempt") or 0)
        elif kind == "embeddings":
            first = int(data.get("first_index") or 0)
            for i, vector in enumerate(data.get("vectors") or []):
                self._vectors[first + i] = vector
        elif kind == "tool_result":
            self.tool_result = data.get("value")
        elif kind == "tool_chunk":
            self.chunks.append(data.get("value"))
        elif kind == "done":
            self.finish_reason, self.usage = data.get("finish_reason"), data.get("usage")
            self._end()
        elif kind == "error":
            self.error = JobFailed(data.get("code", "backend_error"), data.get("message", ""), data.get("upstream"))
            self._end()

    def _end(self) -> None:
        self.finished = True
        self.publisher._forget(self.id)

    def __aiter__(self) -> AsyncIterator[Dict[str, Any]]:
        return self.events()

    async def events(self) -> AsyncIterator[Dict[str, Any]]:
        """Every event, `started` included, ending after `done` or `error`."""
        while not self.finished:
            yield await self.next()

    async def text(self) -> AsyncIterator[str]:
        """The text of each `delta`, as it arrives; raises `JobFailed` if the job fails."""
        async for event in self.events():
            if event.get("type") == "delta":
                yield event["data"].get("text", "")
        if self.error is not None:
            raise self.error

    async def result(self) -> JobResult:
        """Waits for the end of the job; raises `JobFailed` if it failed."""
        async for _ in self.events():
            pass
        if self.error is not None:
            raise self.error
        return JobResult(
            text=self.content,
            finish_reason=self.finish_reason or "stop",
            usage=dict(self.usage or {}),
            tool_calls=[dict(call) for call in self.tool_calls],
            embeddings=self.embeddings,
            tool_result=self.tool_result,
            chunks=list(self.chunks),
        )

    async def cancel(self) -> None:
        """Cancels the job. A running job then ends with `done` (`finish_reason: cancelled`)
        from its worker; one no worker has started yet ends here at once, with an `error` of
        code `cancelled` (its worker will skip it)."""
        await self.publisher.cancel(self.id)
        # Nothing arrived yet (no worker has it, or its first message is on its way and will
        # be dropped): end here.
        if self.progress.next_seq == 0 and not self.progress.ended:
            self.progress.ended = True
            self._deliver(wire.error("cancelled", "The job was cancelled before a worker started it."))

    async def close(self) -> None:
        """Stops following the job, cancelling it if it has not ended."""
        if not self.finished:
            self._end()
            if not self.progress.ended:
                await self.publisher.cancel(self.id)

    async def __aenter__(self) -> "Job":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# -- the publisher -----------------------------------------------------------------------------


class Publisher:
    """Submits jobs and routes their events. Make one with `await Publisher.connect(…)` (or
    `async with Publisher.connect(…) as publisher`), or from your own connections:
    `Publisher(nc, instance, redis)` then `await publisher.start()`.

    `instance` names its reply and resume subjects and must be unique among live publishers;
    on a secured broker it is the one the publisher's permissions name. `redis` (a
    `redis.asyncio.Redis`) is optional: without it a cancellation is only announced."""

    def __init__(
        self,
        nc: Any,
        instance: Optional[str] = None,
        redis: Any = None,
        *,
        queue_timeout: float = QUEUE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        ack_timeout: float = ACK_TIMEOUT,
        publish_attempts: int = 2,
        owns_connections: bool = False,
    ):
        self.nc = nc
        self.js = nc.jetstream()
        self.instance = instance or f"publisher-{new_job_id().lower()}"
        self.redis = redis
        self.queue_timeout, self.idle_timeout, self.ack_timeout = queue_timeout, idle_timeout, ack_timeout
        self.publish_attempts = max(1, publish_attempts)
        self._owns_connections = owns_connections
        self._jobs: Dict[str, Job] = {}
        self._subscriptions: List[Any] = []
        self._tasks: "set[asyncio.Task[Any]]" = set()

    @classmethod
    def connect(
        cls,
        nats_url: Optional[str] = None,
        redis_url: Optional[str] = None,
        *,
        instance: Optional[str] = None,
        nats_creds: Optional[str] = None,
        inbox_prefix: Optional[str] = None,
        queue_timeout: float = QUEUE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        **nats_options: Any,
    ) -> "_Connecting":
        """Connects to NATS (`nats_url`, else `$SWITCHYARD_NATS_URL`, else localhost) and, if
        `redis_url` is given, to Redis, and starts the publisher. `nats_creds` and
        `inbox_prefix` default to `$SWITCHYARD_NATS_CREDS` and `$SWITCHYARD_NATS_INBOX_PREFIX`.
        Await it, or use it with `async with` (which closes the publisher at the end)."""
        return _Connecting(cls._connect(nats_url, redis_url, instance, nats_creds, inbox_prefix, queue_timeout, idle_timeout, nats_options))

    @classmethod
    async def _connect(cls, nats_url, redis_url, instance, nats_creds, inbox_prefix, queue_timeout, idle_timeout, nats_options) -> "Publisher":
        url = nats_url or os.environ.get("SWITCHYARD_NATS_URL") or DEFAULT_NATS_URL
        creds = nats_creds or os.environ.get("SWITCHYARD_NATS_CREDS") or None
        prefix = inbox_prefix or os.environ.get("SWITCHYARD_NATS_INBOX_PREFIX") or None
        servers, options = nats_connect_options(url, creds, prefix)
        instance = instance or f"publisher-{new_job_id().lower()}"
        options.setdefault("name", f"switchyard-publisher {instance}")
        options.update(nats_options)
        nc = await nats.connect(servers, **options)
        redis = None
        if redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(redis_url)
            try:
                await redis.ping()
            except Exception:
                await nc.close()
                await redis.aclose()
                raise
        publisher = cls(nc, instance, redis, queue_timeout=queue_timeout, idle_timeout=idle_timeout, owns_connections=True)
        await publisher.start()
        return publisher

    async def start(self) -> "Publisher":
        """Subscribes to this instance's reply and resume subjects."""
        self._subscriptions.append(await self.nc.subscribe(wire.replies_of(self.instance), cb=self._on_reply))
        self._subscriptions.append(await self.nc.subscribe(wire.resumes_of(self.instance), cb=self._on_resume))
        # The server has the subscriptions before the first job is published.
        await self.nc.flush()
        return self

    async def close(self) -> None:
        """Cancels every job still followed, stops listening, and closes the connections this
        publisher opened."""
        for job in list(self._jobs.values()):
            try:
                await job.close()
            except Exception as e:
                log.warning("cancelling job %s: %s", job.id, e)
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:
                pass
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_connections:
            await self.nc.drain()
            if self.redis is not None:
                await self.redis.aclose()

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- submitting ------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        request: Dict[str, Any],
        *,
        lane: str = "interactive",
        job_id: Optional[str] = None,
        deadline_ms: Optional[int] = None,
        traceparent: Optional[str] = None,
        queue_timeout: Optional[float] = None,
        idle_timeout: Optional[float] = None,
    ) -> Job:
        """Publishes `request` (a `JobRequest`: `{"type": "chat", "data": {…}}`) for `model`
        in `lane` and returns its `Job`. The job is in JetStream (acknowledged) when this
        returns; raises `PublishFailed` when it is not."""
        if lane not in LANES:
            raise ValueError(f"lane {lane!r}: expected one of {LANES}")
        kind = KIND_OF_REQUEST.get(request.get("type"))
        if kind is None:
            raise ValueError(f"request type {request.get('type')!r}: expected one of {sorted(KIND_OF_REQUEST)}")
        job_id = job_id or new_job_id()
        queue_timeout = self.queue_timeout if queue_timeout is None else queue_timeout
        idle_timeout = self.idle_timeout if idle_timeout is None else idle_timeout
        if deadline_ms is None:
            deadline_ms = wire.now_ms() + int((queue_timeout + idle_timeout) * 1000)
        subject = wire.job_subject(lane, kind, model)
        envelope = {
            "v": wire.WIRE_VERSION,
            "id": job_id,
            "kind": kind,
            "model": model,
            "request": request,
            "lane": lane,
            "deadline_ms": deadline_ms,
            "reply_to": wire.reply_subject(self.instance, job_id),
            "resume_to": wire.resume_subject(self.instance, job_id),
            "traceparent": traceparent,
            "created_ms": wire.now_ms(),
        }
        payload = wire.encode(envelope)
        limit = getattr(self.nc, "max_payload", 0) or 0
        if limit and len(payload) > limit:
            raise PublishFailed(f"the job is {len(payload)} bytes, more than the NATS server's max_payload of {limit} bytes")
        job = Job(self, job_id, model, kind, lane, subject, queue_timeout, idle_timeout)
        # Listen before publishing: a fast worker may answer before the acknowledgement.
        self._jobs[job_id] = job
        try:
            await self._publish(subject, payload, job_id)
        except BaseException:
            self._jobs.pop(job_id, None)
            raise
        log.debug("job %s queued on %s", job_id, subject)
        return job

    async def _publish(self, subject: str, payload: bytes, job_id: str) -> None:
        # The job id is the message id: the stream stores a retried publish once (its
        # duplicate window is two minutes), so a lost acknowledgement is safe to retry.
        headers = {"Nats-Msg-Id": job_id}
        for attempt in range(1, self.publish_attempts + 1):
            try:
                await self.js.publish(subject, payload, timeout=self.ack_timeout, headers=headers)
                return
            except nats.js.errors.NoStreamResponseError:
                raise PublishFailed(f"no stream takes {subject}; the api, scheduler and workers create {wire.JOBS_STREAM} when they start") from None
            except nats.js.errors.APIError as e:
                raise PublishFailed(f"JetStream refused the job on {subject}: {e}") from None
            except nats.errors.TimeoutError:
                if attempt == self.publish_attempts:
                    raise PublishFailed(
                        f"no acknowledgement for {subject} after {attempt} attempts of {self.ack_timeout:.1f}s. JetStream may be unavailable, "
                        "or this connection may not publish there (on a secured broker: the model is not granted to this publisher, "
                        "or its inbox prefix is not its own)"
                    ) from None
                log.warning("job %s: no acknowledgement within %.1fs; publishing again", job_id, self.ack_timeout)

    async def chat(
        self,
        model: str,
        messages: Iterable[Dict[str, Any]],
        *,
        lane: str = "interactive",
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        response_format: Optional[Dict[str, Any]] = None,
        **params: Any,
    ) -> Job:
        """A chat job from OpenAI-style `messages` (and `tools`, `tool_choice`,
        `response_format`); `params` are `SamplingParams` (`max_tokens=…`, `temperature=…`)."""
        request = chat_request(messages, tools, tool_choice, parallel_tool_calls, response_format, **params)
        return await self.submit(model, request, lane=lane)

    async def completion(self, model: str, prompt: str, *, lane: str = "interactive", **params: Any) -> Job:
        return await self.submit(model, completion_request(prompt, **params), lane=lane)

    async def embedding(self, model: str, input: Union[str, List[str]], *, lane: str = "interactive") -> Job:
        return await self.submit(model, embedding_request(input), lane=lane)

    async def call_tool(self, model: str, function: str, arguments: Dict[str, Any], *, lane: str = "interactive") -> Job:
        return await self.submit(model, tool_request(function, arguments), lane=lane)

    # -- cancelling --------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> None:
        """Cancels a job (queued or running) by id, whoever submitted it: the Redis flag (if
        this publisher has Redis) and the announcement on NATS, each tried even if the other
        fails."""

        async def flag() -> None:
            await self.redis.set(wire.cancel_key(job_id), 1, ex=wire.CANCEL_FLAG_TTL_S)

        async def announce() -> None:
            await self.nc.publish(wire.cancel_subject(job_id), b"")
            await self.nc.flush()

        halves = [announce()] + ([flag()] if self.redis is not None else [])
        errors = [r for r in await asyncio.gather(*halves, return_exceptions=True) if isinstance(r, BaseException)]
        if errors:
            raise PublisherError(f"cancelling job {job_id}: {errors[0]}") from errors[0]

    def _cancel_soon(self, job_id: str) -> None:
        async def cancel() -> None:
            try:
                await self.cancel(job_id)
            except Exception as e:
                log.warning("cancelling job %s failed: %s", job_id, e)

        task = asyncio.ensure_future(cancel())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    # -- what arrives ------------------------------------------------------------------------

    async def _on_reply(self, msg: Any) -> None:
        try:
            message = wire.decode(msg.data)
        except wire.WireError as e:
            log.warning("undecodable event on %s dropped: %s", msg.subject, e)
            return
        job = self._jobs.get(message.get("job_id"))
        if job is None:
            return
        seq = message.get("seq")
        progress = job.progress
        if seq != wire.OUT_OF_BAND_SEQ:
            expected = progress.next_seq
            if not isinstance(seq, int) or seq < expected:
                log.debug("job %s: duplicate message %s dropped", job.id, seq)
                return
            if seq > expected:
                text = f"Lost messages {expected}..{seq} of this job between worker and publisher; the output would be incomplete."
                log.warning("job %s: %s", job.id, text)
                progress.next_seq, progress.ended = _AFTER_GAP, True
                job._deliver(wire.error("stream_gap", text))
                # The worker is still running it: stop it.
                self._cancel_soon(job.id)
                return
            progress.next_seq += 1
        for event in message.get("events") or []:
            progress.record(event)
            job._deliver(event)

    async def _on_resume(self, msg: Any) -> None:
        if not msg.reply:
            return
        job_id = wire.job_id_of(msg.subject)
        job = self._jobs.get(job_id) if job_id is not None else None
        # Still followed and not ended: wanted, with whatever it streamed so far.
        state = job.progress.resume_state(wanted=not job.progress.ended) if job is not None else Progress().resume_state(wanted=False)
        await self.nc.publish(msg.reply, wire.encode(state))


class _Connecting:
    """What `Publisher.connect` returns: await it for the publisher, or `async with` it."""

    def __init__(self, coroutine: Any):
        self._coroutine = coroutine
        self._publisher: Optional[Publisher] = None

    def __await__(self):
        return self._coroutine.__await__()

    async def __aenter__(self) -> Publisher:
        self._publisher = await self._coroutine
        return self._publisher

    async def __aexit__(self, *exc: Any) -> None:
        if self._publisher is not None:
            await self._publisher.close()
