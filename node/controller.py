"""The node's control, as the API and the worker use it: the contributor's settings
(:mod:`flopnet.node.control`, pure) kept in ``control.json``, applied at the local time, and told
to whoever acts on them.

Commands change the settings, save them (a restart keeps a pause, a schedule, a GPU choice),
publish a ``control`` event and wake the worker. "Pause now" also calls the stop hooks (the
worker stops generating and hands its leases back); a new GPU choice calls the device hooks
(the model process restarts on them). A ticker notices the schedule's transitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from flopnet.node.control import (
    Effective,
    Mode,
    Schedule,
    Settings,
    check_batch_size,
    check_gpus,
    effective,
    local_minute,
)
from flopnet.node.events import EventBus
from flopnet.node.local import CONTROL_FILE, read_json_file, write_private_json

log = logging.getLogger(__name__)
TICK_S = 1.0


class Controller:
    """Holds the settings, applies them, and tells the roles."""

    def __init__(
        self,
        data_dir: Path | None,
        settings: Settings,
        bus: EventBus,
        *,
        clock: Callable[[], Any] = time.localtime,
        gpu_count: Callable[[], int | None] = lambda: None,
        max_batch_size: int = 256,
    ) -> None:
        self._path = data_dir / CONTROL_FILE if data_dir is not None else None
        self.settings = settings
        self.bus = bus
        self._clock = clock
        self._gpu_count = gpu_count
        self.max_batch_size = max_batch_size
        self._holds: list[str] = []
        self._changed = trio.Event()
        self.stop_hooks: list[Callable[[str], None]] = []
        self.device_hooks: list[Callable[[tuple[int, ...] | None], None]] = []
        self._last = self.effective()

    @staticmethod
    def saved(data_dir: Path) -> Settings | None:
        """The settings API commands saved in ``data_dir`` (None: never saved)."""
        data = read_json_file(data_dir / CONTROL_FILE)
        return Settings.from_json(data, Settings()) if data is not None else None

    # -- reading -------------------------------------------------------------------------------

    def effective(self) -> Effective:
        """Where the node stands now (a transient hold, such as a model restart, included)."""
        current = effective(self.settings, local_minute(self._clock()))
        if self._holds and current.may_claim:
            return replace(current, state="holding", may_claim=False, why=self._holds[-1])
        return current

    def may_claim(self) -> bool:
        return self.effective().may_claim

    def changed(self) -> trio.Event:
        """An event set at the next change (settings, hold or a schedule transition)."""
        return self._changed

    def snapshot(self) -> dict[str, Any]:
        return {"settings": self.settings.to_json(), "effective": self.effective().to_json()}

    # -- commands ------------------------------------------------------------------------------

    def pause_now(self) -> dict[str, Any]:
        """Stop generating at once and hand the leases back; claim nothing until resumed."""
        self._set(replace(self.settings, mode=Mode.PAUSED), "pause now")
        for hook in self.stop_hooks:
            hook("paused")
        return self.snapshot()

    def finish_then_pause(self) -> dict[str, Any]:
        """Claim nothing new; pause once the work in hand is done."""
        if self.settings.mode is not Mode.PAUSED:
            self._set(replace(self.settings, mode=Mode.FINISHING), "finish then pause")
        return self.snapshot()

    def finished(self) -> None:
        """The worker has nothing left in hand: a finishing node is now paused."""
        if self.settings.mode is Mode.FINISHING:
            self._set(replace(self.settings, mode=Mode.PAUSED), "finished, now paused")

    def resume(self) -> dict[str, Any]:
        """End a manual pause (the schedule, if any, still applies)."""
        self._set(replace(self.settings, mode=Mode.RUNNING), "resume")
        return self.snapshot()

    def set_schedule(self, text: str | None) -> dict[str, Any]:
        """Work only in these hours (None: always); raises ConfigError for a bad schedule."""
        schedule = Schedule.parse(text) if text is not None else None
        self._set(replace(self.settings, schedule=schedule), f"schedule {text or 'off'}")
        return self.snapshot()

    def set_batch_size(self, value: object) -> dict[str, Any]:
        """Leases generated together from the next batch on; raises ConfigError when out of
        range."""
        size = check_batch_size(value, self.max_batch_size)
        self._set(replace(self.settings, batch_size=size), f"batch size {size}")
        return self.snapshot()

    def set_gpus(self, value: object) -> dict[str, Any]:
        """Run the model on these GPUs (None: all); the model process restarts on them."""
        gpus = None if value is None else check_gpus(value, self._gpu_count())
        self._set(replace(self.settings, gpus=gpus), f"GPUs {gpus or 'all'}")
        for hook in self.device_hooks:
            hook(gpus)
        return self.snapshot()

    @contextmanager
    def hold(self, why: str) -> Any:
        """Claim nothing while the block runs (a model restart, say), then carry on."""
        self._holds.append(why)
        self._notify()
        try:
            yield
        finally:
            self._holds.remove(why)
            self._notify()

    # -- plumbing ------------------------------------------------------------------------------

    def _set(self, settings: Settings, what: str) -> None:
        self.settings = settings
        if self._path is not None:
            try:
                write_private_json(self._path, settings.to_json())
            except OSError as exc:  # the change still applies; it just won't survive a restart
                log.error("cannot save %s: %s", self._path, exc)
        log.info("control: %s -> %s", what, self.effective().badge)
        self._notify()

    def _notify(self) -> None:
        self._last = self.effective()
        self.bus.publish("control", self.snapshot())
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        """Notice the schedule's transitions (and any other change of the effective state)."""
        while True:
            await trio.sleep(TICK_S)
            now = self.effective()
            if (now.state, now.reason) != (self._last.state, self._last.reason):
                log.info("control: %s (%s)", now.badge, now.why)
                self._notify()
