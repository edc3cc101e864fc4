#!/usr/bin/env bash
# Install everything the tests need (torch first, pinned to the local CPU wheel), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install torch==2.13.0
pip install -e '.[dev]'
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)  # browser tests
python -m pytest -q "$@"
