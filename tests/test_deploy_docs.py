"""docs/deploy.md and deploy/systemd stay true: the units pass ``systemd-analyze verify`` and
every node's command line in the guide is accepted by flopnet's own argument parser."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flopnet.node.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deploy.md"
UNITS = REPO / "deploy" / "systemd"
ENV_BLOCK = re.compile(r"```sh\n# /etc/flopnet/(\w+)\.env\n(.*?)```", re.S)


def env_files() -> dict[str, dict[str, str]]:
    """The guide's /etc/flopnet/<name>.env examples, as {name: {key: value}}."""
    found = {}
    for name, body in ENV_BLOCK.findall(GUIDE.read_text()):
        pairs = (line.split("=", 1) for line in body.splitlines() if "=" in line)
        found[name] = {key: value for key, value in pairs}
    return found


def test_every_node_of_the_guide_parses() -> None:
    files = env_files()
    assert set(files) == {"worker", "r1", "validator", "publisher", "relay"}
    parser, _ = build_parser()
    for name, env in files.items():
        args = parser.parse_args(
            ["node", "--data-dir", "/data", *shlex.split(env["FLOPNET_NODE_ARGS"])]
        )
        assert args.manifest == Path("/etc/flopnet/network.manifest"), name
        expected = {"r1": "worker"}.get(name, name)
        assert args.role == [expected], name
        if name in ("validator", "publisher", "relay"):  # dialled by others
            assert args.listen_ip == "0.0.0.0" and args.port > 0, name
        cpu_only = name in ("publisher", "relay")  # no model
        assert env["FLOPNET_IMAGE"] == f"flopnet/node:{'cpu' if cpu_only else 'gpu'}", name


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    docker = shutil.which("docker") or "/bin/true"
    has_docker_unit = any(
        Path(d, "docker.service").exists() for d in ("/lib/systemd/system", "/etc/systemd/system")
    )
    units = []
    for template in sorted(UNITS.glob("*@.service")):
        text = template.read_text()
        # The programs the units start must exist to verify: point them at this machine's.
        text = text.replace(
            "/opt/flopnet/bin/flopnet", str(Path(sys.executable).parent / "flopnet")
        )
        text = text.replace("/usr/bin/docker", docker)
        if not has_docker_unit:
            text = text.replace("docker.service", "basic.target")
        unit = tmp_path / template.name.replace("@", "@worker")
        unit.write_text(text)
        units.append(str(unit))
    assert len(units) == 2
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
