"""What the machine is doing: each GPU's utilisation and memory from NVML when GPUs are there
(``nvidia-ml-py``, imported as ``pynvml``), CPU and RAM otherwise (psutil), sampled about once
a second and kept for a few minutes so the dashboard can draw sparklines.

The NVML module is a parameter: the tests hand in a fake one, and a machine without a driver
(``nvmlInit`` fails) simply has no GPUs here. NVML calls block briefly; the daemon samples in a
thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)
HISTORY = 180  # samples kept (three minutes at one a second)


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util_pct: float
    mem_used: int
    mem_total: int
    temperature_c: float | None = None
    power_w: float | None = None


@dataclass(frozen=True)
class Sample:
    at: float
    gpus: tuple[GpuSample, ...]
    cpu_pct: float
    ram_used: int
    ram_total: int


def load_nvml() -> ModuleType | None:
    """The ``pynvml`` module, or None when it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class Monitor:
    """Samples the machine; ``history`` holds the recent samples, oldest first."""

    def __init__(self, nvml: ModuleType | None = None, *, keep: int = HISTORY) -> None:
        self._nvml = nvml
        self.nvml_error = ""
        self.driver = ""
        self._handles: list[Any] = []
        self.history: deque[Sample] = deque(maxlen=keep)
        if nvml is not None:
            try:
                nvml.nvmlInit()
                count = int(nvml.nvmlDeviceGetCount())
                self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                self.driver = _text(nvml.nvmlSystemGetDriverVersion())
            except Exception as exc:  # no driver, no GPU, a broken install: no GPUs here
                self.nvml_error = f"{type(exc).__name__}: {exc}"
                self._nvml = None
                self._handles = []

    @property
    def gpu_count(self) -> int | None:
        """GPUs NVML sees (None when NVML is not available, so the count is unknown)."""
        return len(self._handles) if self._nvml is not None else None

    def sample(self) -> Sample:
        """Read the GPUs (or CPU and RAM) now, and keep the sample."""
        import psutil

        gpus = tuple(self._gpu(i, h) for i, h in enumerate(self._handles))
        memory = psutil.virtual_memory()
        sample = Sample(
            at=round(time.time(), 3),
            gpus=tuple(g for g in gpus if g is not None),
            cpu_pct=float(psutil.cpu_percent(interval=None)),
            ram_used=int(memory.total - memory.available),
            ram_total=int(memory.total),
        )
        self.history.append(sample)
        return sample

    def _gpu(self, index: int, handle: Any) -> GpuSample | None:
        nvml = self._nvml
        assert nvml is not None
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = _text(nvml.nvmlDeviceGetName(handle))
        except Exception as exc:  # a GPU that fell off the bus must not stop the node
            log.debug("NVML on GPU %d: %s", index, exc)
            return None
        return GpuSample(
            index=index,
            name=name,
            util_pct=float(util.gpu),
            mem_used=int(mem.used),
            mem_total=int(mem.total),
            temperature_c=_optional(lambda: nvml.nvmlDeviceGetTemperature(handle, 0)),
            power_w=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        )

    def snapshot(self) -> dict[str, Any]:
        """The last sample and the recent series, as the API serves them."""
        last = self.history[-1] if self.history else None
        series: dict[str, list[float]] = {
            "cpu_pct": [s.cpu_pct for s in self.history],
            "ram_pct": [
                100.0 * s.ram_used / s.ram_total if s.ram_total else 0.0 for s in self.history
            ],
        }
        for i in range(len(self._handles)):
            series[f"gpu{i}_util_pct"] = [_gpu_value(s, i, "util") for s in self.history]
            series[f"gpu{i}_mem_pct"] = [_gpu_value(s, i, "mem") for s in self.history]
        return {
            "source": "nvml" if self._nvml is not None else "cpu",
            "nvml_error": self.nvml_error,
            "driver": self.driver,
            "gpu_count": self.gpu_count,
            "last": asdict(last) if last is not None else None,
            "series": series,
        }

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown: %s", exc)


def _gpu_value(sample: Sample, index: int, what: str) -> float:
    for gpu in sample.gpus:
        if gpu.index == index:
            if what == "util":
                return gpu.util_pct
            return 100.0 * gpu.mem_used / gpu.mem_total if gpu.mem_total else 0.0
    return 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(read: Any) -> float | None:
    try:
        return float(read())
    except Exception:
        return None
