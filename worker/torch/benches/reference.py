#!/usr/bin/env python3
"""The reference side of the switchyard-torch benchmark: transformers and sentence-transformers
on the CPU, on the same workloads as `benches/torch_bench.rs`.

* Decode: transformers' eager (`attn_implementation="eager"`) greedy `generate` of 128 new
  tokens after the 32-token prompt of `bench_prompt.json`, EOS ignored (`min_new_tokens`).
  A streamer timestamps every token as `generate` emits it: time to first token is from the
  call to the first new token, decode tokens/s is 127 / (last token - first token).
* Embeddings: sentence-transformers `encode` of the sentences file at batch_size 32;
  sentences/s is their count over the wall time of the call.

Both run with `torch.set_num_threads(THREADS)` (2 unless `--threads` says otherwise), as the
Rust side does.

Standalone: one warm-up, then `--runs` timed runs of each; prints one JSON object with every
run and the median and best.

    python reference.py --decoder DIR --encoder DIR --sentences FILE [--threads 2] [--runs 3]

`--serve`: the benchmark drives it over stdin/stdout so both sides can alternate run by run.
It prints `{"ready": ...}` once the models are loaded, then answers each line `decode` or
`embed` with one JSON line (one timed run), until `quit` or end of input.
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

            with open(f"{args.decoder}/bench_prompt.json") as f:
                self.prompt_ids = json.load(f)["ids"]
            self.decoder = AutoModelForCausalLM.from_pretrained(
                args.decoder, attn_implementation="eager", dtype=torch.float32
            ).eval()
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
        }

    def decode(self):
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self):
                self.times = []
                self.ids = []

            def put(self, value):
                self.times.append(time.perf_counter())
                self.ids.append(value.reshape(-1).tolist())

            def end(self):
                pass

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

    def embed(self):
        start = time.perf_counter()
        vectors = self.encoder.encode(self.sentences, batch_size=self.args.batch_size, convert_to_numpy=True)
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "sentences_per_s": len(self.sentences) / seconds,
            "sentences": len(self.sentences),
            # A few vectors, for the benchmark to check both sides compute the same thing.
            "first_vectors": vectors[:4].tolist(),
        }


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
            cmd = line.strip()
            if cmd in ("", "quit"):
                break
            try:
                if cmd == "decode":
                    reply = bench.decode()
                elif cmd == "embed":
                    reply = bench.embed()
                else:
                    reply = {"error": f"unknown command {cmd!r}"}
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
