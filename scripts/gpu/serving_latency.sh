#!/usr/bin/env bash
# On a lent GPU machine, after `. scripts/gpu/setup.sh STAGE`: message → first completion with the
# peft engine on CUDA, for the adapters prepared here by
# `benchmarks/gpu_serving_latency.py prepare --out .gpu/serving` (carry .gpu/serving).
set -uo pipefail
python3 benchmarks/gpu_serving_latency.py run --bundle .gpu/serving --device cuda \
  --out "${OUT:-/tmp}/gpu_serving_latency.json"
