#!/usr/bin/env bash
# Run a benchmark on a GPU machine that has Python with a CUDA PyTorch but no network: nothing to pip install
# from, no ComfyUI. Pack here, copy the repository with .bundle/ there, run there.
#
#   tools/benchmarks/offline_gpu.sh pack [PYTHON_VERSION]
#       here: writes .bundle/ (git ignores it; about 55 MB): wheels, for the GPU machine's Python (default 3.12),
#       of what a PyTorch image lacks (PyAV, diffusers, torchsde, trampoline), and a copy of ComfyUI
#       (COMFYUI_PATH, default the one tools/setup/setup_env.sh made) without its tests, caches, API nodes and
#       other models' tokenizers
#   tools/benchmarks/offline_gpu.sh run SCRIPT [ARGS...]
#       there, in the repository root: installs the wheels into /tmp/ve-site and runs "$PYTHON SCRIPT ARGS"
#       (PYTHON defaults to python3) with that ComfyUI and the pack (as video_edit) importable, e.g.
#       tools/benchmarks/offline_gpu.sh run tools/benchmarks/tune_a_video.py --full-size --frames 24 --size 512
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUNDLE="$ROOT/.bundle"
PACKAGES=(av diffusers torchsde trampoline)

case "${1:-}" in
pack)
  COMFY="${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI-0.3.75}"
  [ -f "$COMFY/comfy/sd.py" ] || { echo "no ComfyUI at $COMFY: run tools/setup/setup_env.sh or set COMFYUI_PATH" >&2; exit 1; }
  rm -rf "$BUNDLE.tmp" && mkdir -p "$BUNDLE.tmp/wheels" "$BUNDLE.tmp/ComfyUI"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${2:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$BUNDLE.tmp/wheels" "${PACKAGES[@]}"
  tar -C "$COMFY" -cf - --exclude=__pycache__ --exclude=.git --exclude=./tests --exclude=./tests-unit \
    --exclude=./temp --exclude=./output --exclude=./input --exclude=./user --exclude=./comfy_api_nodes \
    --exclude='./comfy/text_encoders/*_tokenizer' . | tar -C "$BUNDLE.tmp/ComfyUI" -xf -
  rm -rf "$BUNDLE" && mv "$BUNDLE.tmp" "$BUNDLE"
  du -sh "$BUNDLE"
  ;;
run)
  shift
  [ -d "$BUNDLE/wheels" ] || { echo "no $BUNDLE: run 'tools/benchmarks/offline_gpu.sh pack' where pip works" >&2; exit 1; }
  PYTHON="${PYTHON:-python3}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ve-site "$BUNDLE"/wheels/*.whl
  mkdir -p /tmp/ve-pack && ln -sfn "$ROOT" /tmp/ve-pack/video_edit
  export PYTHONPATH="/tmp/ve-site:/tmp/ve-pack${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$BUNDLE/ComfyUI"
  export PYTHONUNBUFFERED=1
  exec "$PYTHON" "$@"
  ;;
*)
  sed -n '2,13p' "$0" >&2
  exit 2
  ;;
esac
