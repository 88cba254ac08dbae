#!/usr/bin/env bash
# Runs every test: unit tests, the torch model tests against real weights, and the
# integration tests that start real nats-server and redis-server processes on free ports.
# Installs whatever is missing first (scripts/setup.sh is idempotent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --test-tools
scripts/check-deploy.sh
export PATH="$PWD/.switchyard/bin:$PATH"
# The integration tests drive the real `switchyard` binary.
cargo build -p switchyard
cargo test --workspace "$@"
# The whole gateway-policy matrix again, on a three-master Redis Cluster (see tests/src/redis_servers.rs).
if [ "$#" -eq 0 ]; then
  SWITCHYARD_TEST_REDIS=cluster cargo test -p switchyard-tests --test policy
fi
