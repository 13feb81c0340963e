#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then run the Tune-A-Video demo edit headless.
# Extra arguments go to tools/demo.py (e.g. --checkpoint PATH --frames 24 --size 512 --steps 50).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
exec "${VE_VENV:-$ROOT/.venv}/bin/python" "$ROOT/tools/demo.py" "$@"
