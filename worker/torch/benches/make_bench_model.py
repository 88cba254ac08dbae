#!/usr/bin/env python3
"""Writes the benchmark's decoder: a randomly initialised ~135M-parameter Llama shaped like
SmolLM-135M, with a byte-level BPE tokenizer of the same vocabulary size.

    python make_bench_model.py OUT_DIR

Sizes: 30 layers, hidden 576, 9 heads, 3 key/value heads, intermediate 1536, vocab 49152,
tied word embeddings, f32. The weights come from transformers' own initialisation under a
fixed seed. The tokenizer is trained here on a deterministic synthetic corpus so that every
one of the 49152 ids decodes to text (the repository's tiny-llama tokenizer has only 768
tokens: ids past it would decode to nothing, and a generation would send no text). The
folder also gets `bench_prompt.json`: a prompt text and its 32 token ids (BOS included), which
both sides of the benchmark feed to their model.

Nothing here is committed: `cargo bench -p switchyard-torch --bench torch_bench` runs this into
target/bench-models/ when the folder is missing.
"""

import json
import random
import sys
from pathlib import Path

SEED = 20240135
VOCAB = 49152
PROMPT_TOKENS = 32


def synthetic_corpus(rng: random.Random) -> list[str]:
    """Lines of pseudo-words; enough distinct byte pairs for 49152 BPE merges."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1]
    words = []
    for _ in range(60000):
        n = rng.randint(2, 11)
        words.append("".join(rng.choices(letters, weights=weights, k=n)))
    lines = []
    for _ in range(40000):
        k = rng.randint(5, 20)
        line = " ".join(rng.choices(words, k=k))
        if rng.random() < 0.3:
            line = line.capitalize() + rng.choice([".", ",", "!", "?", ";"])
        lines.append(line)
    return lines


def make_tokenizer(out: Path, rng: random.Random):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(rng), trainer=trainer)
    if tok.get_vocab_size() != VOCAB:
        raise SystemExit(f"the tokenizer came out with {tok.get_vocab_size()} tokens, not {VOCAB}")
    # A BOS at the start of every prompt, as Llama tokenizers add one.
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.token_to_id("<|im_start|>"))]
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|im_start|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "clean_up_tokenization_spaces": False,
                "model_max_length": 2048,
            },
            indent=2,
        )
    )
    return tok


def make_prompt(tok, rng: random.Random) -> dict:
    """Words from the tokenizer's vocabulary until the prompt is exactly PROMPT_TOKENS long."""
    vocab = sorted(t[1:] for t in tok.get_vocab() if t.startswith("\u0120") and t[1:].isalpha() and len(t) > 3)
    words = []
    count = lambda: len(tok.encode(" ".join(words)).ids)  # noqa: E731
    while count() < PROMPT_TOKENS:
        words.append(rng.choice(vocab))
        if count() > PROMPT_TOKENS:
            words.pop()
            break
    while count() < PROMPT_TOKENS:
        words.append("a")  # one token each
    if count() != PROMPT_TOKENS:
        raise SystemExit(f"could not make a {PROMPT_TOKENS}-token prompt: {words}")
    text = " ".join(words)
    return {"text": text, "ids": tok.encode(text).ids}


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(SEED)
    tok = make_tokenizer(out, rng)
    prompt = make_prompt(tok, rng)
    assert len(prompt["ids"]) == PROMPT_TOKENS, prompt
    (out / "bench_prompt.json").write_text(json.dumps(prompt, indent=2))

    bos = tok.token_to_id("<|im_start|>")
    eos = tok.token_to_id("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False}, indent=2)
    )
    print(json.dumps({"dir": str(out), "parameters": params, "prompt_tokens": len(prompt["ids"])}))


if __name__ == "__main__":
    main()
