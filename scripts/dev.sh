#!/usr/bin/env bash
# One command from a fresh machine to a running stack: installs what is missing, builds the
# release binary, and runs `switchyard dev` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="$PWD/.switchyard/bin:$PATH"
cargo build --release -p switchyard
exec target/release/switchyard dev "$@"
