"""benchmarks/gpu_check.py's machinery on the CPU (the H200 run itself needs CUDA): the device
model and its CPU copy hold the same weights, both decode loops run, honest work passes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from flopnet.node.model.models import weights_sha256

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_cpu_validator_holds_the_device_models_weights(gpu_check: ModuleType) -> None:
    worker, validator = gpu_check.build("deepseek-v3-tiny", "cpu")
    assert worker.model is not validator.model
    assert weights_sha256(worker.model) == weights_sha256(validator.model)
    routers = [p.dtype for n, p in validator.model.named_parameters() if n.endswith("gate.weight")]
    assert routers and set(routers) == {torch.float32}
    rows = gpu_check.prompts(2, worker.tokenizer)
    assert gpu_check.decode_plain(worker, rows, 5) > 0
    assert gpu_check.decode_proven(worker, rows, 33) > 0  # one full chunk on the proof thread
    assert worker.eos_id == validator.eos_id  # restored after the eos-free decode
    honest = gpu_check.honest_checks(worker, {"cpu": validator}, "deepseek-v3-tiny", 2, 40)
    assert honest["cpu"]["samples"] == 2
    assert honest["cpu"]["failed_samples"] == {"recommended": 0, "paper": 0}


def test_the_check_loads_without_msgpack() -> None:
    """The device machine has torch and transformers but not our other dependencies: the
    script's flopnet imports must not reach msgpack (through the task package's codec)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    code = (
        "import runpy, sys; sys.modules['msgpack'] = None; "
        f"runpy.run_path({str(script)!r}, run_name='gpu_check'); "
        "print(sorted(m for m in sys.modules if m.startswith('flopnet.node.tasks')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("[]")
