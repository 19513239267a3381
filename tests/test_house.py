"""The house rules: one import root, every package installed, no bare room imports.

The folders at the repository root are mapped into the ``flopnet`` namespace by the build
(``pyproject.toml``); these tests keep that mapping complete and keep code from importing a
room by its bare folder name, which would work only from inside a checkout.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import flopnet

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("protocol", "proof", "verifiers", "ledger", "node", "tui", "testing", "web", "sim")
PYTHON_TREES = (*ROOMS, "tests", "benchmarks", "scripts")


def _packages_on_disk() -> set[str]:
    found = {"flopnet"}
    for room in ROOMS:
        for init in (REPO / room).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            found.add(".".join(("flopnet", *rel.parts)))
    return found


def test_pyproject_installs_every_package_folder_and_nothing_else() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"flopnet": "."}
    assert set(config["packages"]) == _packages_on_disk()


def test_no_module_imports_a_room_by_its_bare_folder_name() -> None:
    offenders = []
    for tree in PYTHON_TREES:
        for path in (REPO / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(REPO)}:{node.lineno}: {name}"
                    for name in names
                    if name.split(".")[0] in ROOMS
                ]
    assert not offenders, "import through flopnet.<room>:\n" + "\n".join(offenders)


def test_every_module_imports_under_the_flopnet_root() -> None:
    # Cheap modules only: the heavy ones (torch, vllm, libp2p) are imported by their own tests.
    heavy = {"vllm_backend", "hf_backend", "calibration", "loader", "models", "child"}
    for package in sorted(_packages_on_disk()):
        folder = REPO.joinpath(*package.split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            if path.stem in heavy or path.stem == "__main__":
                continue
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            module = importlib.import_module(name)
            assert module.__name__ == name


def test_the_package_is_typed_and_the_root_has_no_stray_modules() -> None:
    assert (Path(flopnet.__file__).parent / "py.typed").exists()
    # Only the package's own files sit at the root; anything else would be installed too.
    stray = {p.name for p in REPO.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert not stray


def test_python_dash_m_flopnet_runs_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flopnet", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "devnet" in done.stdout


@pytest.mark.slow
def test_the_wheel_holds_only_flopnet(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("flopnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"flopnet"}
    assert "flopnet/py.typed" in names
    # Every module of the tree is in the wheel, under its flopnet name.
    for package in _packages_on_disk():
        folder = REPO.joinpath(*package.split(".")[1:])
        for path in folder.glob("*.py"):
            assert "/".join((*package.split("."), path.name)) in names


def test_the_architecture_page_names_every_module_in_its_room() -> None:
    """docs/architecture.md's rooms table has a row per package folder naming each module."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in doc.splitlines()
        if line.startswith("| `") and line.split("|")[1].strip().endswith("/`")
    }
    missing = []
    for package in sorted(_packages_on_disk() - {"flopnet"}):
        folder = "/".join(package.split(".")[1:]) + "/"
        row = rows.get(folder)
        if row is None:
            missing.append(f"no row for {folder}")
            continue
        for path in (REPO / folder).glob("*.py"):
            if path.stem != "__init__" and f"`{path.stem}`" not in row:
                missing.append(f"{folder}{path.name}")
    assert not missing, "docs/architecture.md's rooms table lacks: " + ", ".join(missing)


def test_the_api_page_lists_every_endpoint_and_no_other() -> None:
    from types import SimpleNamespace

    from flopnet.node.endpoints import endpoints

    declared = {
        f"`{e.method} {e.path}`"
        for e in endpoints(SimpleNamespace(p=SimpleNamespace()), None)  # type: ignore[arg-type]
    }
    page = (REPO / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\| (`[A-Z]+ /[^`]*`) \|", page, re.M))
    assert listed == declared, f"missing: {declared - listed}; not served: {listed - declared}"
