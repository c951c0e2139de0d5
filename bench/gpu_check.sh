#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu_check.py): GPU tests, fp16/bf16 runs, SDPA backends,
# throughput and MFU, optimizer and evaluation speed; one table; exit code 1 if any row fails.
# Run from anywhere on a CUDA machine with the project's environment active:
#     bash bench/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
# Pass --smoke to check the script itself on CPU (tiny sizes, no pytest, no MFU).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
