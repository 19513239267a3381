"""A fake NVML (the ``pynvml`` module of nvidia-ml-py) with two GPUs, for tests on machines
without one: put this folder first on PYTHONPATH and a node's monitor sees two H200s whose
utilisation moves with every read. Only the calls flopnet makes exist."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

COUNT = 2
MEM_TOTAL = 143_771 * 1024**2
_reads = itertools.count()


class NVMLError(Exception):
    pass


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return "570.86.15-fake"


def nvmlDeviceGetCount() -> int:
    return COUNT


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < COUNT:
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> bytes:
    return b"NVIDIA H200 (fake)"


def nvmlDeviceGetUtilizationRates(handle: int) -> Any:
    return SimpleNamespace(gpu=(next(_reads) * 17 + 40 * handle) % 100, memory=10)


def nvmlDeviceGetMemoryInfo(handle: int) -> Any:
    used = MEM_TOTAL // (3 + handle)
    return SimpleNamespace(total=MEM_TOTAL, used=used, free=MEM_TOTAL - used)


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return 60 + handle


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return 500_000 + 1000 * handle  # milliwatts
