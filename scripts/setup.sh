#!/usr/bin/env bash
# Install fedtwin into ./.venv from scratch (idempotent).
#   ./scripts/setup.sh         runtime only
#   ./scripts/setup.sh --dev   runtime + test/lint tools (pytest, hypothesis, ruff, mypy, simglucose)
set -euo pipefail
cd "$(dirname "$0")/.."

# Hospitals: no phoning home, no runtime installs (also exported by fedtwin itself).
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

extras=""
stamp_name="runtime"
if [[ "${1:-}" == "--dev" ]]; then
    extras="[dev]"
    stamp_name="dev"
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    echo "fedtwin setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi

# Re-install only when pyproject.toml changed since the last successful install.
stamp=".venv/.fedtwin-${stamp_name}-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ -f "$stamp" ]]; then
    exit 0
fi

# torch first, exactly this version: the local CPU build (any other spec pulls a multi-GB CUDA build).
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".${extras}"
touch "$stamp"
echo "fedtwin setup: installed into .venv (${stamp_name})"
