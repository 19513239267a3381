"""The machine monitor: GPUs through NVML (a fake NVML module here; the real GPU check needs
an H200 and was not run in this suite), CPU and RAM without one; the child process sees only
the GPUs chosen; the log book and the event stream's backlog rules."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flopnet.node.events import EventBus
from flopnet.node.logbook import LogBook, select
from flopnet.node.model import child
from flopnet.node.model.calls import LoadSpec
from flopnet.node.monitor import Monitor

FAKE = Path(__file__).parent / "data" / "fake_nvml" / "pynvml.py"


def fake_nvml() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpus_through_nvml_with_history() -> None:
    monitor = Monitor(fake_nvml(), keep=5)
    assert monitor.gpu_count == 2 and monitor.driver.endswith("fake")
    for _ in range(7):
        sample = monitor.sample()
    assert [g.index for g in sample.gpus] == [0, 1]
    assert sample.gpus[0].name == "NVIDIA H200 (fake)" and sample.gpus[1].power_w == 501.0
    snap = monitor.snapshot()
    assert snap["source"] == "nvml" and len(snap["series"]["gpu1_util_pct"]) == 5
    assert 0 < snap["series"]["gpu0_mem_pct"][-1] < 100
    monitor.close()


def test_without_a_driver_the_node_has_cpu_and_ram_only() -> None:
    broken = fake_nvml()

    def no_driver() -> None:
        raise broken.NVMLError("Driver Not Loaded")

    broken.nvmlInit = no_driver
    monitor = Monitor(broken)
    assert monitor.gpu_count is None and "Driver Not Loaded" in monitor.nvml_error
    sample = monitor.sample()
    assert sample.gpus == () and sample.ram_total > 0
    assert Monitor(None).snapshot()["source"] == "cpu"


def test_a_gpu_that_fails_mid_read_is_left_out() -> None:
    nvml = fake_nvml()
    original = nvml.nvmlDeviceGetUtilizationRates

    def flaky(handle: int) -> Any:
        if handle == 1:
            raise nvml.NVMLError("GPU is lost")
        return original(handle)

    nvml.nvmlDeviceGetUtilizationRates = flaky
    assert [g.index for g in Monitor(nvml).sample().gpus] == [0]


def test_the_model_child_sees_only_the_chosen_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    class Loaded:
        info = "info"

        def serve(self, conn: Any) -> None:
            pass

        def close(self) -> None:
            pass

    def load(spec: LoadSpec) -> Loaded:
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return Loaded()

    class Pipe:
        def send(self, item: Any) -> None:
            pass

    monkeypatch.setattr(child.ModelChild, "load", staticmethod(load))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    child.child_main(Pipe(), LoadSpec("tiny", 1, "float32", devices=(1, 3)))  # type: ignore[arg-type]
    child.child_main(Pipe(), LoadSpec("tiny", 1, "float32"))  # type: ignore[arg-type]
    assert seen == ["1,3", "1,3"]  # the second child inherits: None changes nothing


def test_the_log_book_filters_by_level_and_text() -> None:
    book = LogBook(keep=3)
    logger = logging.getLogger("flopnet.test.logbook")
    logger.addHandler(book)
    logger.setLevel(logging.DEBUG)
    try:
        for level, text in ((logging.DEBUG, "a"), (logging.INFO, "b"), (logging.WARNING, "c x")):
            logger.log(level, text)
        logger.error("d %s", "X")
    finally:
        logger.removeHandler(book)
    lines = book.lines()
    assert [line.message for line in lines] == ["b", "c x", "d X"]
    assert [line.message for line in select(lines, level="WARNING")] == ["c x", "d X"]
    assert [line.message for line in select(lines, text="x")] == ["c x", "d X"]
    assert [line.seq for line in book.since(lines[1].seq)] == [lines[2].seq]


def test_a_slow_subscriber_is_told_to_resync_and_a_late_one_gets_what_is_kept() -> None:
    bus = EventBus(keep=4, backlog=2)
    slow = bus.subscribe()
    for i in range(3):
        bus.publish("task", {"i": i})
    events, lagged = slow.take()
    assert lagged and [e.data["i"] for e in events] == [2]
    late = bus.subscribe(after=1)  # 2 and 3 are kept
    assert [e.seq for e in late.take()[0]] == [2, 3] and not late.lagged
    for i in range(4):
        bus.publish("log", {"i": i})
    gone = bus.subscribe(after=1)
    assert gone.take()[1]  # some of what it missed is no longer kept
    assert b"event: log" in bus.recent()[-1].sse()
