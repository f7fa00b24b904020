#!/usr/bin/env bash
# Set up .venv and run the test suite (unit tests + the end-to-end run on the bundled real data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source .venv/bin/activate
exec python -m pytest -q "$@"
