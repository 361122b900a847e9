#!/usr/bin/env bash
# Install torch into the given interpreter's environment without ever pulling a CUDA build
# onto a machine that has no GPU.
#   - torch already importable: leave it alone (a user's CUDA build stays as it is).
#   - no torch and no CUDA (no nvidia-smi): pin the CPU wheel, torch==2.13.0.
#   - no torch but CUDA present: let pip resolve torch normally (CUDA build from the index).
set -euo pipefail
PY="${1:-python3}"
if "$PY" -c "import torch" 2>/dev/null; then
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed: leaving it alone"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "CUDA GPU found: installing torch from the index"
    "$PY" -m pip install -q torch
else
    echo "no CUDA GPU: installing the CPU wheel torch==2.13.0"
    "$PY" -m pip install -q torch==2.13.0
fi
