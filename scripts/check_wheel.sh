#!/usr/bin/env bash
# Proof that flopnet installs as one import root beside Prime Intellect's `verifiers`:
#   1. build the sdist and the wheel; the wheel must hold `flopnet/` and nothing else,
#   2. install the wheel (not editable) into a fresh virtualenv, with `verifiers` from PyPI,
#   3. run `flopnet devnet --headless --json` from outside the checkout: every task validated,
#   4. `import verifiers` still gives Prime's package, and flopnet's verifiers are flopnet's.
# The virtualenv is kept in $WHEEL_VENV (default .wheel-venv) so a second run only reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WHEEL_VENV=${WHEEL_VENV:-.wheel-venv}
DIST=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$DIST" "$WORK"' EXIT

echo "check-wheel: building the sdist and the wheel"
"$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$DIST" . >/dev/null
# The sdist through the standard build hook, then a wheel built from it (what PyPI users get).
"$VENV/bin/python" - "$DIST" <<'PY'
import contextlib, io, sys
from setuptools import build_meta
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    name = build_meta.build_sdist(sys.argv[1])
print("check-wheel: sdist", name)
PY
"$VENV/bin/python" - "$DIST" <<'PY'
import pathlib, sys, tarfile, zipfile
dist = pathlib.Path(sys.argv[1])
wheel = next(dist.glob("flopnet-*.whl"))
names = zipfile.ZipFile(wheel).namelist()
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
assert tops == {"flopnet"}, f"the wheel installs more than flopnet/: {sorted(tops)}"
for needed in ("flopnet/py.typed", "flopnet/__main__.py", "flopnet/node/cli/main.py",
               "flopnet/verifiers/registry.py", "flopnet/protocol/host.py"):
    assert needed in names, f"the wheel lacks {needed}"
sdist = next(dist.glob("flopnet-*.tar.gz"))
members = tarfile.open(sdist).getnames()
for needed in ("pyproject.toml", "__init__.py", "node/cli/main.py", "py.typed"):
    assert any(m.endswith("/" + needed) for m in members), f"the sdist lacks {needed}"
print(f"check-wheel: {wheel.name}: {len(names)} files, all under flopnet/")
PY

if [ ! -x "$WHEEL_VENV/bin/python" ]; then
  echo "check-wheel: creating $WHEEL_VENV"
  python3 -m venv "$WHEEL_VENV"
  "$WHEEL_VENV/bin/python" -m pip install -q --upgrade pip
  "$WHEEL_VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
echo "check-wheel: installing the wheel and Prime Intellect's verifiers (--no-deps)"
"$WHEEL_VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$DIST"/flopnet-*.whl
"$WHEEL_VENV/bin/python" -m pip install -q "$DIST"/flopnet-*.whl
"$WHEEL_VENV/bin/python" -m pip install -q --no-deps verifiers

cd "$WORK"  # nothing of the checkout is importable from here
echo "check-wheel: flopnet devnet --headless --json from the installed wheel"
"$OLDPWD/$WHEEL_VENV/bin/flopnet" devnet --headless --json --model tiny --tasks 3 --workers 1 \
  --max-new-tokens 32 --data-dir "$WORK/devnet" > "$WORK/summary.json"
"$OLDPWD/$WHEEL_VENV/bin/python" - "$WORK/summary.json" <<'PY'
import importlib.metadata, importlib.util, json, pathlib, sys
summary = json.loads(pathlib.Path(sys.argv[1]).read_text())
assert summary["ok"] and summary["tasks_validated"] == 3, summary
import flopnet, flopnet.verifiers.registry, verifiers
site = pathlib.Path(flopnet.__file__).parent.parent
assert pathlib.Path(verifiers.__file__).parent == site / "verifiers", verifiers.__file__
assert verifiers.__version__ == importlib.metadata.version("verifiers"), verifiers.__version__
assert importlib.util.find_spec("verifiers.registry") is None, "flopnet leaked into verifiers"
assert importlib.util.find_spec("verifiers.v1") is not None, "Prime's verifiers.v1 is missing"
for name in ("protocol", "proof", "ledger", "node", "tui"):
    assert importlib.util.find_spec(name) is None, f"a top-level {name!r} is installed"
print(f"check-wheel: ok: {summary['tasks_validated']} tasks validated in "
      f"{summary['wall_seconds']} s; import verifiers -> Prime's {verifiers.__version__}")
PY
