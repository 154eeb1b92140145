#!/bin/sh
# Eval on all visible GPUs (or NPROC CPU processes); every flag passes through to <method>/main_multi_gpu.py.
# With no arguments: the demo job on the built-in demo data. See README.md.
ROOT=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec python -m common.launch eval "$@"
