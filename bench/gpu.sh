#!/usr/bin/env bash
# One GPU check for a lent H100/H200 (8 minutes at most): align, tokenize, train and synthesize with
# real-size random weights, printed as one table. `bash bench/gpu.sh --smoke` runs tiny sizes, on CPU too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then PYTHON=${PYTHON:-.venv/bin/python}; fi
exec "${PYTHON:-python}" bench/gpu.py "$@"
