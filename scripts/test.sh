#!/usr/bin/env bash
# Install everything the tests need (torch first, pinned to the local CPU wheel), then run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install torch==2.13.0
pip install -e '.[dev]'
python -m pytest -q "$@"
