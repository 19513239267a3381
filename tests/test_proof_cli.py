"""``flopnet proof calibrate``: registration, cheap import, and one tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from flopnet.node.cli import proof as proof_cli
from flopnet.protocol.errors import ConfigError


def _parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="flopnet")
    sub = parser.add_subparsers(dest="command", required=True)
    return parser, dict(proof_cli.register(sub))


def test_register_adds_proof_calibrate() -> None:
    parser, handlers = _parser()
    assert set(handlers) == {"proof"}
    args = parser.parse_args(["proof", "calibrate", "--model", "small", "--dtype", "float32"])
    assert (args.model, args.dtype, args.samples, args.max_new_tokens, args.json) == (
        "small",
        "float32",
        16,
        96,
        False,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["proof"])
    # Any seeded or trained model is accepted; an unknown name is a clear error, not a traceback.
    with pytest.raises(ConfigError, match="seeded or trained model"):
        handlers["proof"](parser.parse_args(["proof", "calibrate", "--model", "huge"]))


def test_module_import_stays_cheap() -> None:
    code = (
        "import sys, flopnet.node.cli.proof, flopnet.node.model.calibration; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_calibrate_runs_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser, handlers = _parser()
    args = parser.parse_args(
        ["proof", "calibrate", "--samples", "1", "--max-new-tokens", "6", "--json"]
    )
    handler = handlers["proof"]
    assert callable(handler)
    assert handler(args) == 0
    doc = json.loads(capsys.readouterr().out)
    # batch 1/4/16/8, eager attention, validator threads, a padded audit of 8 (no MoE kernels)
    assert doc["model"] == "tiny" and doc["samples"] == 7 and doc["chunks"] == 7
    assert len(doc["variations"]) == 7 and "padded audit of 8 (validator)" in doc["variations"]
    measures = {m["measure"]: m for m in doc["measures"]}
    assert measures["max_exp_mismatches"]["suggested"] >= 4
    assert set(doc["suggested"]) >= {"max_exp_mismatches", "replay_tolerance"}
    bad = parser.parse_args(["proof", "calibrate", "--samples", "0"])
    with pytest.raises(ConfigError):
        handler(bad)
