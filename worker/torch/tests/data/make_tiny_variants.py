"""Writes tiny random checkpoints of the other supported layouts, with transformers' outputs.

Each folder under tests/data/ gets config.json, safetensors, the tiny-llama tokenizer (saved
again by this transformers, so chat_template.jinja is exercised) and expected.json in the
format of models/tiny-llama/expected.json (input_ids, first_step_logits, greedy_new_ids,
chat). Run once, offline:

    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python worker/torch/tests/data/make_tiny_variants.py models/tiny-llama
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoTokenizer

tokenizer_src = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
tok = AutoTokenizer.from_pretrained(tokenizer_src)

common = dict(
    vocab_size=768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    max_position_embeddings=256, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5,
)
variants = {
    # Qwen2: q/k/v biases, 4 query heads on 1 key/value head, tied embeddings, bf16 on disk.
    "tiny-qwen2": (transformers.Qwen2Config(
        **common, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        rope_theta=1000000.0), torch.bfloat16),
    # Llama 3.1-style RoPE scaling over a short "original" context, tied, f16 on disk,
    # explicit head_dim different from hidden/heads.
    "tiny-llama3-rope": (transformers.LlamaConfig(
        **common, num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), torch.float16),
    # Mistral, 8 query heads / 2 kv heads, no window, f32.
    "tiny-mistral": (transformers.MistralConfig(
        **common, num_attention_heads=8, num_key_value_heads=2, sliding_window=None,
        tie_word_embeddings=False), torch.float32),
}

prompts = [
    "The quick brown fox",
    # Long enough (~90 tokens) for positions past the scaled RoPE's original context.
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper "
    "who counted the ships every night and wrote their names in a book. " * 2,
]
chats = [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}], True),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], False),
]

for name, (config, dtype) in variants.items():
    torch.manual_seed(11)
    cls = transformers.AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                # Larger than the usual 0.02 so the logits are spread out and argmax is robust.
                p.normal_(0.0, 0.3)
    out = os.path.join(here, name)
    model.to(dtype).save_pretrained(out)
    tok.save_pretrained(out)
    # Reference: the on-disk weights, upcast to float32.
    model = cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    entries = []
    for text in prompts:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
            gen = model.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=16,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        new = gen.sequences[0, ids.shape[1]:].tolist()
        margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in gen.scores]
        entries.append({
            "text": text, "input_ids": ids[0].tolist(),
            "first_step_logits": [round(float(x), 6) for x in logits],
            "greedy_new_ids": new, "min_top1_top2_margin": min(margins),
        })
    chat_entries = []
    for messages, add in chats:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
        chat_entries.append({
            "messages": messages, "add_generation_prompt": add, "rendered": rendered,
            "input_ids_add_special_tokens_false": tok(rendered, add_special_tokens=False).input_ids,
        })
    json.dump({
        "about": f"{name}: random weights (seed 11), saved as {dtype}; reference in float32 from the "
                 "saved weights, eager attention, CPU; greedy with min_new_tokens=16 (no EOS stop)",
        "generator": {"script": "worker/torch/tests/data/make_tiny_variants.py",
                      "transformers": transformers.__version__, "torch": torch.__version__},
        "suggested_tolerance": {"logits_abs": 0.002},
        "prompts": entries, "chat": chat_entries,
    }, open(os.path.join(out, "expected.json"), "w"), indent=1)
    print(name, sorted(os.listdir(out)), [e["min_top1_top2_margin"] for e in entries])
