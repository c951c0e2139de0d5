#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu_check.py): GPU tests, fp16/bf16 runs, SDPA backends,
# throughput and MFU, optimizer and evaluation speed; one table; exit code 1 if any row fails.
# Run from anywhere on a CUDA machine with the project's environment active:
#     bash bench/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
# On a borrowed machine without the project's environment, run the line bench/gpu_bundle.sh prints.
# Writes gpu_check_table.txt, gpu_check.json and gpu_check.log (all output) under $OUT (default
# ./gpu_check_out). Pass --smoke to check the script itself on CPU (tiny sizes, no pytest, no MFU).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tree itself first on the path: on a borrowed machine the project is not installed (docs/testing.md#installing).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PYTHONUNBUFFERED=1 "${PYTHON:-$(command -v python3 || command -v python)}" bench/gpu_check.py --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/gpu_check.log"
