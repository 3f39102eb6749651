#!/usr/bin/env bash
# The RecTools peer lives in its own virtual environment: RecTools 0.19 needs numpy < 2, which the
# main environment (numpy 2.x) cannot share. torch is pinned to the CPU build on this machine's disk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-rectools"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch==2.13.0 'numpy<2'
  "$venv/bin/pip" install -q 'rectools[torch]==0.19.0' 'numpy<2' torch==2.13.0
  touch "$venv/.installed"
fi
echo "$venv/bin/python"
