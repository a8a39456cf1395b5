#!/usr/bin/env bash
# Run the whole fedtwin test suite: set up (idempotent), lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

./scripts/setup.sh --dev

# The audit report test renders report.html in headless Chromium (Debian's package).
command -v chromium >/dev/null \
    || { apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; } \
        >/dev/null 2>&1 \
    || echo "fedtwin test: chromium unavailable; the report rendering test will be skipped"

echo "== ruff"
.venv/bin/ruff check fedtwin server client tests bench
.venv/bin/ruff format --check fedtwin server client tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
