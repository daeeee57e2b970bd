#!/usr/bin/env bash
# Experiment v2 on a lent GPU machine, in one call (docs/results.md, "Pre-registered design (v2)").
#
#   bash scripts/gpu/experiment.sh GGUF_OR_STAGE_DIR [BUNDLE] [DEADLINE_S] [PRIOR_RESULTS]
#
# GGUF_OR_STAGE_DIR: the SmolLM2 .gguf file, or a folder holding part-00, part-01, ... and SHA256
# from scripts/gpu/stage_gguf.sh (joined and checked here). BUNDLE: from
# 'compass experiment prepare' (default runs/bundle-v2, carried). DEADLINE_S (default 450): no
# job starts that would end later, so the call finishes within 8 minutes with whole draws done.
# Needs python3 with torch, transformers, peft (the machine's image) and the gguf wheel in the
# carried .whl/ folder (installed with pip --no-index). Results and the log go to $OUT (the
# device tool's folder) or runs/gpu-out. $OUT starts empty on every call: to resume a cut run,
# carry its results.jsonl and pass it as PRIOR_RESULTS (copied in first; done jobs are skipped).
# EXTRA_ARGS (optional) is passed to train_eval.py, e.g. "--methods v0,compass --mc-items 50".
# DEVICE=cpu (optional) runs the same path on a CPU, for a smoke test of this script.
set -euo pipefail
SRC=${1:?usage: experiment.sh GGUF_OR_STAGE_DIR [BUNDLE] [DEADLINE_S]}
BUNDLE=${2:-runs/bundle-v2}
DEADLINE=${3:-450}
DEST=${OUT:-runs/gpu-out}
mkdir -p "$DEST"
if [ -n "${4:-}" ] && [ -f "$4" ]; then cp "$4" "$DEST/results.jsonl"; fi
STARTED=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/gguf-*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if [ -d "$SRC" ]; then
  GGUF=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  mkdir -p /tmp/smollm2
  cat "$SRC"/part-* > "$GGUF"
  if [ -f "$SRC/SHA256" ]; then
    echo "$(cat "$SRC/SHA256")  $GGUF" | sha256sum -c -
  fi
else
  GGUF=$SRC
fi
nvidia-smi -L || true
PYTHONUNBUFFERED=1 python3 compass/lab/experiment/train_eval.py \
  --bundle "$BUNDLE" --gguf "$GGUF" --results "$DEST/results.jsonl" \
  --device "${DEVICE:-cuda}" --deadline-s "$DEADLINE" ${EXTRA_ARGS:-} 2>&1 | tee "$DEST/train_eval.log"
echo "wall time: $(( $(date +%s) - STARTED )) s" | tee -a "$DEST/train_eval.log"
