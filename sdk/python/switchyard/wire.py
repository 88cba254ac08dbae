"""The wire contract, as `schemas/src` defines it: MessagePack with named fields (rmp-serde's
`to_vec_named`), the NATS subjects, stream and consumer names, the Redis keys.

Rust's enums appear as serde writes them: unit variants as snake_case strings (`"tool"`),
`JobRequest` and `EventBody` adjacently tagged (`{"type": "tool_result", "data": {...}}`).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import msgpack

#: `switchyard_schemas::WIRE_VERSION`: a message with a higher `v` is refused.
WIRE_VERSION = 6
#: Sequence number of an event sent by someone other than the job's worker.
OUT_OF_BAND_SEQ = 2**64 - 1

JOBS_STREAM = "SY_JOBS"
JOBS_SUBJECTS = "sy.job.>"
DEAD_LETTER_STREAM = "SY_DEAD"
DEAD_LETTER_SUBJECTS = "sy.dead.>"
CANCEL_ALL = "sy.cancel.*"

LANES = ("interactive", "batch")

# Redis keys (schemas/src/keys.rs). The registry's share the hash tag `{reg}`, so that one
# transaction may touch them on a Redis Cluster.
WORKERS_KEY = "sy:{reg}:workers"
MODELS_KEY = "sy:{reg}:models"


def worker_key(worker_id: str) -> str:
    return f"sy:{{reg}}:worker:{worker_id}"


def cancel_key(job_id: str) -> str:
    return f"sy:cancel:{job_id}"


#: How long a cancel flag lives (`broker-config/src/cancel.rs`).
CANCEL_FLAG_TTL_S = 24 * 3600


class WireError(ValueError):
    """A message that does not decode, or comes from a newer wire version."""


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(message: Dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(payload: bytes) -> Dict[str, Any]:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types
        raise WireError(f"malformed message: {e}") from e
    if not isinstance(message, dict):
        raise WireError("malformed message: not a map")
    v = message.get("v")
    if not isinstance(v, int):
        raise WireError("malformed message: no wire version")
    if v > WIRE_VERSION:
        raise WireError(f"message has wire version {v}, this build understands up to {WIRE_VERSION}")
    return message


# -- subjects (schemas/src/subject.rs) ------------------------------------------------------


def encode_token(name: str) -> str:
    """Any string as a subject token / consumer-name fragment: `[A-Za-z0-9_-]` and `~XX`."""
    out = []
    for byte in name.encode("utf-8"):
        c = chr(byte)
        if (c.isascii() and c.isalnum()) or c in "-_":
            out.append(c)
        else:
            out.append(f"~{byte:02X}")
    return "".join(out)


def decode_token(token: str) -> Optional[str]:
    out = bytearray()
    i = 0
    while i < len(token):
        c = token[i]
        if c == "~":
            hexpart = token[i + 1 : i + 3]
            if len(hexpart) != 2:
                return None
            try:
                out.append(int(hexpart, 16))
            except ValueError:
                return None
            i += 3
        elif (c.isascii() and c.isalnum()) or c in "-_":
            out.append(ord(c))
            i += 1
        else:
            return None
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def job_subject(lane: str, kind: str, model: str) -> str:
    return f"sy.job.{lane}.{kind}.{encode_token(model)}"


def job_consumer(lane: str, kind: str, model: str) -> str:
    return f"sy-{lane}-{kind}-{encode_token(model)}"


def job_id_of(subject: str) -> Optional[str]:
    return decode_token(subject.rsplit(".", 1)[-1])


def reply_subject(instance: str, job_id: str) -> str:
    """Reply subject of one job of publisher `instance`: `sy.reply.<instance>.<job>`."""
    return f"sy.reply.{encode_token(instance)}.{encode_token(job_id)}"


def replies_of(instance: str) -> str:
    """Every reply subject of publisher `instance`: subscribe once."""
    return f"sy.reply.{encode_token(instance)}.*"


def resume_subject(instance: str, job_id: str) -> str:
    """Where a redelivered job's worker asks publisher `instance` for its `ResumeState`."""
    return f"sy.resume.{encode_token(instance)}.{encode_token(job_id)}"


def resumes_of(instance: str) -> str:
    return f"sy.resume.{encode_token(instance)}.*"


def cancel_subject(job_id: str) -> str:
    """Where a job's cancellation is announced: `sy.cancel.<job>`."""
    return f"sy.cancel.{encode_token(job_id)}"


# -- messages ---------------------------------------------------------------------------------


def stream_event(job_id: str, seq: int, events: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"v": WIRE_VERSION, "job_id": job_id, "seq": seq, "events": events}


def started(worker_id: str, attempt: int) -> Dict[str, Any]:
    return {"type": "started", "data": {"worker_id": worker_id, "attempt": attempt, "prompt_tokens": None}}


def tool_result(value: Any) -> Dict[str, Any]:
    return {"type": "tool_result", "data": {"value": value}}


def tool_chunk(value: Any) -> Dict[str, Any]:
    return {"type": "tool_chunk", "data": {"value": value}}


def done(finish_reason: str = "stop") -> Dict[str, Any]:
    return {"type": "done", "data": {"finish_reason": finish_reason, "usage": {"prompt_tokens": 0, "completion_tokens": 0}}}


def error(code: str, message: str) -> Dict[str, Any]:
    return {"type": "error", "data": {"code": code, "message": message}}


def parse_permissions(text: str) -> Dict[str, Any]:
    """HepAI's `groups: default; users: a, b; owner: c`, as `Permissions::from_str` reads it."""
    permissions: Dict[str, Any] = {"groups": [], "users": [], "owner": None}
    for clause in (c.strip() for c in text.split(";")):
        if not clause:
            continue
        if ":" not in clause:
            raise ValueError(f"expected `key: values` in {clause!r}")
        key, values = clause.split(":", 1)
        names = [v.strip() for v in values.split(",") if v.strip()]
        key = key.strip()
        if key in ("groups", "group"):
            permissions["groups"].extend(names)
        elif key in ("users", "user"):
            permissions["users"].extend(names)
        elif key == "owner":
            if len(names) != 1:
                raise ValueError(f"`owner` takes exactly one name, got {names!r}")
            permissions["owner"] = names[0]
        else:
            raise ValueError(f"unknown permission key {key!r} (use groups, users, owner)")
    return permissions


def model_card(name: str, functions: List[Dict[str, Any]], permissions: Dict[str, Any], rpm: Optional[int] = None, tpm: Optional[int] = None, backend: str = "python") -> Dict[str, Any]:
    """A `kind: tool` `ModelCard` (schemas/src/model.rs)."""
    return {
        "v": WIRE_VERSION,
        "name": name,
        "kind": "tool",
        "context_length": None,
        "backend": backend,
        "owned_by": "switchyard",
        "permissions": permissions,
        "limits": {"rpm": rpm, "tpm": tpm},
        "created": now_ms() // 1000,
        "last_seen_ms": 0,
        "functions": functions,
    }


def function_spec(name: str, description: str, parameters: Dict[str, Any], result: Optional[Dict[str, Any]], streams: bool) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if result is not None:
        spec["result"] = result
    spec["streams"] = streams
    return spec


# -- JetStream layout (broker-config/src/jobs.rs), as async-nats 0.51 serializes it ----------

NANOS = 1_000_000_000


def jobs_stream_config() -> Dict[str, Any]:
    """`SY_JOBS` exactly as `jobs::ensure_streams` sends it (`create_or_update_stream`)."""
    return {
        "name": JOBS_STREAM,
        "max_bytes": 0,
        "max_msgs": 0,
        "max_msgs_per_subject": 0,
        "discard": "old",
        "subjects": [JOBS_SUBJECTS],
        "retention": "workqueue",
        "max_consumers": 0,
        "max_age": 24 * 3600 * NANOS,
        "storage": "file",
        "num_replicas": 0,
        "duplicate_window": 120 * NANOS,
        "consumer_limits": None,
    }


def dead_letter_stream_config() -> Dict[str, Any]:
    return {
        "name": DEAD_LETTER_STREAM,
        "max_bytes": 0,
        "max_msgs": 0,
        "max_msgs_per_subject": 0,
        "discard": "old",
        "subjects": [DEAD_LETTER_SUBJECTS],
        "retention": "limits",
        "max_consumers": 0,
        "max_age": 7 * 24 * 3600 * NANOS,
        "storage": "file",
        "num_replicas": 0,
        "consumer_limits": None,
    }


def consumer_config(lane: str, kind: str, model: str, ack_wait_s: float, max_deliver: int) -> Dict[str, Any]:
    """The shared durable pull consumer of a lane, exactly as `jobs::ensure_consumer` sends it."""
    return {
        "durable_name": job_consumer(lane, kind, model),
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": int(round(ack_wait_s * NANOS)),
        "max_deliver": max_deliver,
        "filter_subject": job_subject(lane, kind, model),
        "replay_policy": "instant",
        "max_waiting": 4096,
        "max_ack_pending": 100_000,
        "inactive_threshold": 24 * 3600 * NANOS,
    }
