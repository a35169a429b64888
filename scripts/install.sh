#!/usr/bin/env bash
# Install assay into ./.venv (or $ASSAY_VENV) with every extra.
# torch==2.13.0 goes in first, before the extras, so that pip does not pull a multi-GB CUDA build of torch as
# a dependency: it is the CPU build where pip's sources carry one (as on the machines this was built on), or
# set ASSAY_TORCH_INDEX to an index that does. Pass --dev to add the test tools.
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
# ASSAY_TORCH_INDEX: where pip finds a CPU build of torch when its default sources offer only the CUDA one
# (on a plain Linux PyPI setup: ASSAY_TORCH_INDEX=https://download.pytorch.org/whl/cpu).
if [[ -n "${ASSAY_TORCH_INDEX:-}" ]]; then
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" --index-url "$ASSAY_TORCH_INDEX"
else
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[${extras}]"
if [[ "$extras" == "all,dev" ]]; then
  # label-studio-sdk (tests validate the Label Studio export with it) pins opencv-python-headless < 4.13, which
  # would pull numpy back below 2.3 and take assay's own OpenCV back a major version (pip then warns about the
  # pin, harmlessly); its validation code needs neither, so it goes in without its dependencies, and with the
  # ones that code imports.
  "$VENV/bin/python" -m pip install --quiet --no-deps "label-studio-sdk>=2.1"
  "$VENV/bin/python" -m pip install --quiet appdirs "datamodel-code-generator>=0.70" "doclang>=0.7.1" ijson \
    "jsf>=0.11.2,<0.12" "jsonschema>=4.23" "lxml>=6.1" "nltk>=3.10,<=3.11" pandas "pydantic>=1.9.2" \
    "pyjwt>=2.13,<2.14" requests "requests-mock==1.12.1" ujson watchfiles "xmljson==0.2.1"
fi
echo "assay installed in $VENV ($("$VENV/bin/python" -c 'import assay; print(assay.__version__)'))"
