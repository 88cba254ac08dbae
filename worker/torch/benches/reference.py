#!/usr/bin/env python3
"""The reference side of the switchyard-torch benchmark: transformers and sentence-transformers
on the CPU, on the same workloads as `benches/torch_bench.rs`.

* Decode: transformers' eager (`attn_implementation="eager"`) greedy `generate` of 128 new
  tokens after the 32-token prompt of `bench_prompt.json`, EOS ignored (`min_new_tokens`).
  A streamer timestamps every token as `generate` emits it: time to first token is from the
  call to the first new token, decode tokens/s is 127 / (last token - first token).
* Static batches (`static`): the given prompt ids in batches of `batch_size`, in the order
  given; each batch is left-padded to its longest prompt and generates greedily, EOS ignored,
  until the longest `max_new_tokens` of its rows (what a static-batching server does). The
  reply has the wall time of every batch and of all of them, the tokens computed (rows ×
  the batch's longest) and requested (each row's own `max_new_tokens`), and optionally each
  row's first `max_new_tokens` ids and their text.
* Embeddings: sentence-transformers `encode` of the sentences file at batch_size 32;
  sentences/s is their count over the wall time of the call.

Both run with `torch.set_num_threads(THREADS)` (2 unless `--threads` says otherwise), as the
Rust side does.

Standalone: one warm-up, then `--runs` timed runs of each; prints one JSON object with every
run and the median and best.

    python reference.py --decoder DIR --encoder DIR --sentences FILE [--threads 2] [--runs 3]

`--serve`: the benchmark drives it over stdin/stdout so both sides can alternate run by run.
It prints `{"ready": ...}` once the models are loaded, then answers each line with one JSON
line (one timed run), until `quit` or end of input. A line is a command and, after a space,
optionally one JSON object of arguments:

    decode
    embed                      embed {"vectors": [0, 1, 500]}   (which vectors to send back; default the first 4)
    static {"prompts": [[ids…], …], "max_new_tokens": 128 or [n, …], "batch_size": 16,
            "ids": false, "texts": false}
"""

import argparse
import json
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", help="the benchmark decoder folder (make_bench_model.py)")
    p.add_argument("--encoder", help="all-MiniLM-L6-v2 (sentence-transformers folder)")
    p.add_argument("--sentences", help="one sentence per line")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--attn-implementation",
        default="eager",
        help="transformers' attention for the decoder: eager (default), sdpa, …",
    )
    p.add_argument("--serve", action="store_true")
    return p.parse_args()


class Bench:
    def __init__(self, args):
        import torch

        torch.set_num_threads(args.threads)
        self.torch = torch
        self.args = args
        self.decoder = None
        self.encoder = None
        if args.decoder:
            from transformers import AutoModelForCausalLM

            from transformers import AutoTokenizer

            with open(f"{args.decoder}/bench_prompt.json") as f:
                self.prompt_ids = json.load(f)["ids"]
            self.decoder = AutoModelForCausalLM.from_pretrained(
                args.decoder, attn_implementation=args.attn_implementation, dtype=torch.float32
            ).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(args.decoder)
            config = self.decoder.generation_config
            pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
            self.pad_id = pad[0] if isinstance(pad, list) else pad
        if args.encoder:
            from sentence_transformers import SentenceTransformer

            self.encoder = SentenceTransformer(args.encoder, device="cpu")
            with open(args.sentences) as f:
                self.sentences = [line.rstrip("\n") for line in f if line.strip()]

    def info(self):
        import sentence_transformers
        import transformers

        return {
            "torch": self.torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "threads": self.torch.get_num_threads(),
            "attn_implementation": self.args.attn_implementation,
        }

    def decode(self, _args=None):
        torch = self.torch
        n = self.args.new_tokens
        ids = torch.tensor([self.prompt_ids], dtype=torch.long)
        clock = Clock()
        start = time.perf_counter()
        out = self.decoder.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            streamer=clock,
        )
        end = time.perf_counter()
        new = out[0, ids.shape[1] :].tolist()
        assert len(new) == n, f"generated {len(new)} tokens, not {n}"
        # times[0] is the prompt, put before the first forward pass; then one per token.
        token_times = clock.times[1:]
        assert len(token_times) == n, (len(token_times), n)
        first, last = token_times[0], token_times[-1]
        return {
            "ttft_s": first - start,
            "decode_tok_s": (n - 1) / (last - first),
            "total_s": end - start,
            "tokens": len(new),
            "ids": new,
        }

    def static(self, args):
        torch = self.torch
        prompts = args["prompts"]
        max_new = args["max_new_tokens"]
        if isinstance(max_new, int):
            max_new = [max_new] * len(prompts)
        assert len(max_new) == len(prompts), (len(max_new), len(prompts))
        size = args.get("batch_size") or len(prompts)
        want_ids = args.get("ids", False)
        want_texts = args.get("texts", False)
        batches, rows_ids = [], []
        start = time.perf_counter()
        for at in range(0, len(prompts), size):
            rows = prompts[at : at + size]
            news = max_new[at : at + size]
            n = max(news)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row) :] = 1
            clock = Clock()
            t0 = time.perf_counter()
            out = self.decoder.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=self.pad_id,
                streamer=clock,
            )
            t1 = time.perf_counter()
            new = out[:, width:]
            assert new.shape[1] == n, f"generated {new.shape[1]} tokens, not {n}"
            # times[0] is the prompt; times[1] the first new token of every row.
            batches.append(
                {
                    "rows": len(rows),
                    "prompt_width": width,
                    "new_tokens": n,
                    "seconds": t1 - t0,
                    "ttft_s": clock.times[1] - t0,
                }
            )
            if want_ids or want_texts:
                rows_ids.extend(new[i, : news[i]].tolist() for i in range(len(rows)))
        seconds = time.perf_counter() - start
        computed = sum(b["rows"] * b["new_tokens"] for b in batches)
        reply = {
            "seconds": seconds,
            "batches": batches,
            "computed_tokens": computed,
            "requested_tokens": sum(max_new),
            "tokens_per_s": computed / seconds,
        }
        if want_ids:
            reply["ids"] = rows_ids
        if want_texts:
            reply["texts"] = [self.tokenizer.decode(r, skip_special_tokens=True) for r in rows_ids]
        return reply

    def embed(self, args=None):
        which = (args or {}).get("vectors", [0, 1, 2, 3])
        start = time.perf_counter()
        vectors = self.encoder.encode(self.sentences, batch_size=self.args.batch_size, convert_to_numpy=True)
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "sentences_per_s": len(self.sentences) / seconds,
            "sentences": len(self.sentences),
            # A few vectors, for the benchmark to check both sides compute the same thing.
            "first_vectors": vectors[:4].tolist(),
            "vectors": {str(i): vectors[i].tolist() for i in which},
        }


class Clock:
    """A streamer (transformers' `BaseStreamer` interface) that timestamps each `put`: the
    prompt first, then every generated token (all rows of a batch at once)."""

    def __init__(self):
        self.times = []
        self.ids = []

    def put(self, value):
        self.times.append(time.perf_counter())
        self.ids.append(value.reshape(-1).tolist())

    def end(self):
        pass


def summary(runs, key, higher_is_better=True):
    values = [r[key] for r in runs]
    return {
        "median": statistics.median(values),
        "best": max(values) if higher_is_better else min(values),
        "runs": values,
    }


def main():
    args = parse_args()
    bench = Bench(args)
    if args.serve:
        print(json.dumps({"ready": bench.info()}), flush=True)
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd in ("", "quit"):
                break
            try:
                handler = {"decode": bench.decode, "embed": bench.embed, "static": bench.static}.get(cmd)
                if handler is None:
                    reply = {"error": f"unknown command {cmd!r}"}
                else:
                    reply = handler(json.loads(arg) if arg else {})
            except Exception as e:  # reported to the benchmark, which goes on without it
                reply = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(reply), flush=True)
        return

    result = {"info": bench.info()}
    if bench.decoder is not None:
        bench.decode()  # warm-up
        runs = [bench.decode() for _ in range(args.runs)]
        result["decode"] = {
            "ttft_s": summary(runs, "ttft_s", higher_is_better=False),
            "decode_tok_s": summary(runs, "decode_tok_s"),
        }
    if bench.encoder is not None:
        bench.embed()  # warm-up
        runs = [bench.embed() for _ in range(args.runs)]
        result["embed"] = {"sentences_per_s": summary(runs, "sentences_per_s")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
