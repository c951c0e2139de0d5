#!/usr/bin/env bash
# Writes .gpu_bundle/ (git-ignored: wheels the GPU machine lacks + the MiniLM demo model as fp16) and
# prints the one command line to run in the repository root there (bench/gpu_bundle.py says why).
#     bash bench/gpu_bundle.sh            (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-$(command -v python3 || command -v python)}" bench/gpu_bundle.py "$@"
