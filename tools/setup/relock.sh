#!/usr/bin/env bash
# Re-resolve the pinned environment deliberately: set up a fresh venv from the ranges (newest versions the registry
# serves, torch still pinned), run the whole test suite in it, and only if it passes write its exact versions to
# tools/setup/requirements-lock.txt (review the diff and commit it). The venv is left in .cache/relock-venv.
#
#   tools/setup/relock.sh [pytest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/.cache/relock-venv"
LOCK="$ROOT/tools/setup/requirements-lock.txt"
rm -rf "$VENV"
VE_VENV="$VENV" VE_UNLOCKED=1 bash "$ROOT/tools/setup/setup_env.sh" --test
(cd "$ROOT" && "$VENV/bin/pytest" -q -ra "$@")
{
  echo "# Exact versions for the tests and the demo (tools/setup/setup_env.sh installs these); written by"
  echo "# tools/setup/relock.sh after the suite passed with them on $(date -u +%Y-%m-%d). Do not edit by hand."
  # the pack itself is editable and unpinned; the CPU torch's local version label (+cpu) is not part of the pin
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^#' | sed -E 's/\+[A-Za-z0-9.]+$//'
} > "$LOCK.tmp"
mv "$LOCK.tmp" "$LOCK"
echo "wrote $LOCK"
