#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then run a demo edit headless (tools/demo.py).
# Arguments go to tools/demo.py (--help lists them); they are checked before the setup starts.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
python3 "$ROOT/tools/demo.py" --check-args "$@"
case " $* " in *" --help "*|*" -h "*) exit 0 ;; esac
echo "setting up the environment (first run: a few minutes; log: ${VE_VENV:-$ROOT/.venv}/setup.log)"
bash "$ROOT/tools/setup/setup_env.sh" > /dev/null
exec "${VE_VENV:-$ROOT/.venv}/bin/python" "$ROOT/tools/demo.py" "$@"
