#!/usr/bin/env bash
# Create ./.venv and install eofm with its test extra. Re-running is cheap: it reinstalls
# only when pyproject.toml changed. Needs only python3 (>= 3.10) with venv, and a C++
# compiler for DeepSpeed's one-time CPU communication op (g++ on Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.eofm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing eofm and dependencies into .venv (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # DeepSpeed ships as a source package; DS_BUILD_OPS=0 compiles nothing now (ops are built
  # on first use, only the ones used).
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, deepspeed; print("torch", torch.__version__, "| deepspeed", deepspeed.__version__)' 2>/dev/null)"
