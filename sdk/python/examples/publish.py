"""Publishes one job straight to NATS (no HTTP api) and prints what comes back as it streams.

    python sdk/python/examples/publish.py --nats-url nats://127.0.0.1:4222 \\
        --redis-url redis://127.0.0.1:6379 --model echo "Hello from a direct publisher"

The text goes to stdout as it arrives; a summary line goes to stderr at the end:
`finish_reason=stop prompt_tokens=5 completion_tokens=5 deltas=5 job=01J…`. With `--kind
embedding` every argument is one input, and each vector is printed as a JSON array. Ctrl-C
cancels the job (the Redis flag, with `--redis-url`, and the NATS announcement).

On a secured broker: `--nats-url nats://<user>:<password>@host:4222 --instance <user>
--nats-inbox-prefix _INBOX_<user>` (see broker-config/secure/nats-server.conf) and
`--redis-url redis://publisher:<password>@host:6379`. The protocol: docs/protocol.md.
"""

import argparse
import asyncio
import json
import os
import sys

from switchyard.publisher import JobFailed, Publisher


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats-url", default=os.environ.get("SWITCHYARD_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--redis-url", default=os.environ.get("SWITCHYARD_REDIS_URL"), help="for cancel flags (optional)")
    p.add_argument("--nats-creds", default=os.environ.get("SWITCHYARD_NATS_CREDS"), help="a .creds file or an nkey seed file")
    p.add_argument("--nats-inbox-prefix", default=os.environ.get("SWITCHYARD_NATS_INBOX_PREFIX"), help="on a secured broker: _INBOX_<instance>")
    p.add_argument("--instance", help="names the reply subjects; on a secured broker, the publisher's user (default: a fresh name)")
    p.add_argument("--model", required=True)
    p.add_argument("--kind", choices=["chat", "completion", "embedding"], default="chat")
    p.add_argument("--lane", choices=["interactive", "batch"], default="interactive")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--queue-timeout", type=float, default=30.0, help="seconds to wait for a worker to start the job")
    p.add_argument("--cancel-after", type=int, help="cancel the job after this many text deltas (to watch cancellation)")
    p.add_argument("prompt", nargs="*", default=["Hello from a direct publisher"])
    return p.parse_args()


async def main(args: argparse.Namespace) -> int:
    publisher = await Publisher.connect(
        args.nats_url,
        redis_url=args.redis_url,
        instance=args.instance,
        nats_creds=args.nats_creds,
        inbox_prefix=args.nats_inbox_prefix,
        queue_timeout=args.queue_timeout,
    )
    try:
        prompt = " ".join(args.prompt)
        if args.kind == "chat":
            job = await publisher.chat(args.model, [{"role": "user", "content": prompt}], lane=args.lane, max_tokens=args.max_tokens)
        elif args.kind == "completion":
            job = await publisher.completion(args.model, prompt, lane=args.lane, max_tokens=args.max_tokens)
        else:
            job = await publisher.embedding(args.model, args.prompt, lane=args.lane)
        deltas = 0
        try:
            async for event in job:
                if event["type"] == "delta":
                    deltas += 1
                    sys.stdout.write(event["data"]["text"])
                    sys.stdout.flush()
                    if args.cancel_after is not None and deltas == args.cancel_after:
                        await job.cancel()
        except asyncio.CancelledError:
            await job.cancel()
            raise
        if args.kind == "embedding":
            for vector in job.embeddings:
                print(json.dumps(vector))
        else:
            print()
        if job.error is not None:
            raise job.error
        usage = job.usage or {}
        print(
            f"finish_reason={job.finish_reason} prompt_tokens={usage.get('prompt_tokens')} "
            f"completion_tokens={usage.get('completion_tokens')} deltas={deltas} job={job.id}",
            file=sys.stderr,
        )
        return 0
    finally:
        await publisher.close()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except JobFailed as e:
        upstream = f" (upstream: {json.dumps(e.upstream)})" if e.upstream else ""
        print(f"error: {e.code}: {e.message}{upstream}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # cannot connect, publish refused, no worker started it, …
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        sys.exit(130)
