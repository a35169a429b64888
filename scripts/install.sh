#!/usr/bin/env bash
# Install assay into ./.venv (or $ASSAY_VENV) with every extra.
# torch==2.13.0 goes in first: it is the CPU build, and installing it before the extras stops pip from
# pulling a multi-GB CUDA build of torch as a dependency. Pass --dev to add the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ASSAY_VENV:-.venv}"
PY="${PYTHON:-python3}"
extras="all"
[[ "${1:-}" == "--dev" ]] && extras="all,dev"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[${extras}]"
echo "assay installed in $VENV ($("$VENV/bin/python" -c 'import assay; print(assay.__version__)'))"
