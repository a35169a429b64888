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
if [[ "$extras" == "all,dev" ]]; then
  # label-studio-sdk (tests validate the Label Studio export with it) pins opencv-python-headless < 4.13, which
  # would pull numpy back below 2.3; its validation code needs neither, so it goes in without its dependencies,
  # and with the ones that code imports.
  "$VENV/bin/python" -m pip install --quiet --no-deps "label-studio-sdk>=2.1"
  "$VENV/bin/python" -m pip install --quiet appdirs "datamodel-code-generator>=0.70" "doclang>=0.7.1" ijson \
    "jsf>=0.11.2,<0.12" "jsonschema>=4.23" "lxml>=6.1" "nltk>=3.10,<=3.11" pandas "pydantic>=1.9.2" \
    "pyjwt>=2.13,<2.14" requests "requests-mock==1.12.1" ujson watchfiles "xmljson==0.2.1"
fi
echo "assay installed in $VENV ($("$VENV/bin/python" -c 'import assay; print(assay.__version__)'))"
