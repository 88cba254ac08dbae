#!/usr/bin/env bash
# Checks the Kubernetes chart (deploy/helm/switchyard) without a cluster: renders it with Helm's
# own engine (PyPI helm-python-sdk) for its default values, autoscaling off and each
# ci/*-values.yaml, validates every object against the Kubernetes schemas (PyPI
# kubernetes-validate, offline), checks the KEDA ScaledObjects' stream and consumer names against
# ci/consumers.json and Switchyard's own rules (deploy/check_chart.py says which).
# Installs both into .switchyard/deploy-venv once (idempotent, like scripts/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.switchyard/deploy-venv"
# Bump when the pins change.
marker="$venv/.switchyard-ready-1"
if [ ! -f "$marker" ]; then
  printf '\033[1;34m[check-deploy]\033[0m %s\n' "installing kubernetes-validate and helm-python-sdk (PyPI) into .switchyard/deploy-venv"
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 helm-python-sdk==0.2.2
  "$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml'
  touch "$marker"
fi
exec "$venv/bin/python" "$root/deploy/check_chart.py"
