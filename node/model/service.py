"""The model runs in a child process; the trio daemon talks to it over a pipe.

Keeping torch out of the daemon keeps the event loop responsive (a forward pass never blocks
libp2p), lets a crashed or hung model be killed without losing the node, and keeps the daemon's
own start fast. :class:`ModelService` is the daemon's side of :class:`ModelClient`: each call
sends one record of :mod:`flopnet.node.model.calls` and waits (off the event loop) for the
child's answer; the child (:mod:`flopnet.node.model.child`) serves one request at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import trio

from flopnet.node.model.calls import (
    AuditMeasures,
    AuditRequest,
    Generated,
    GenerateRequest,
    Inspection,
    InspectRequest,
    LoadSpec,
    ModelError,
    ModelInfo,
    ModelUnavailable,
)
from flopnet.node.model.streaming import OutputCallback, OutputDelta

log = logging.getLogger(__name__)
START_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 600.0
# The trio-typing stubs that libp2p pulls in predate trio's ``abandon_on_cancel`` keyword.
_run_sync: Any = trio.to_thread.run_sync


class ModelService:
    """Owns the model child process; every operation is an ``await`` from trio."""

    def __init__(
        self,
        model: str,
        seed: int,
        dtype: str,
        threads: int = 0,
        max_seq_tokens: int = 0,
        backend: str = "hf",
        revision: str = "",
        devices: tuple[int, ...] | None = None,
    ) -> None:
        # max_seq_tokens > 0: check first that the model and one such sequence fit here.
        # backend: "hf", "vllm", or "auto" (the hardware plan's choice).
        self._spec = LoadSpec(model, seed, dtype, threads, max_seq_tokens, backend, revision)
        # The GPUs the child may use (None: all); applied when a child starts.
        self.devices = devices
        self.restarts = 0
        self._op: str | None = None  # the call in progress, if any
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo | None:
        """What the running child reported once its model was loaded."""
        return self._info

    async def start(self) -> ModelInfo:
        """Spawn the child and wait until its model is loaded."""
        info: ModelInfo = await _run_sync(self._start_blocking, abandon_on_cancel=True)
        return info

    async def restart(self) -> ModelInfo:
        """Stop the child (if it is still there) and start a fresh one, off the event loop and
        under the call lock, so a call of another role never meets a half-replaced process."""
        log.warning("restarting the model process")

        def restart_blocking() -> ModelInfo:
            with self._lock:
                self.close()
                self.restarts += 1
                return self._start_blocking()

        info: ModelInfo = await _run_sync(restart_blocking, abandon_on_cancel=True)
        return info

    def _start_blocking(self) -> ModelInfo:
        from flopnet.node.model.child import child_main

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=child_main,
            args=(child, dataclasses.replace(self._spec, devices=self.devices)),
            name="flopnet-model",
            # vLLM starts processes of its own, which a daemonic process may not; the child
            # still ends with us: it exits when its pipe closes, and close() kills it.
            daemon=not self._may_run_vllm(),
        )
        self._process.start()
        child.close()
        self._conn = parent
        reply: ModelInfo = self._recv(START_TIMEOUT_S)
        self._info = reply
        return reply

    def _may_run_vllm(self) -> bool:
        backend = self._spec.backend
        return backend == "vllm" or (
            backend == "auto" and importlib.util.find_spec("vllm") is not None
        )

    def _recv(self, timeout: float, on_output: OutputCallback | None = None) -> Any:
        conn = self._conn  # read once: a restart may replace it
        if conn is None:
            raise ModelUnavailable("the model process is not running")
        deadline = time.monotonic() + timeout
        while True:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                # Its answer may still come and would be read as the next one's: restart it.
                raise ModelUnavailable(f"the model process did not answer within {timeout}s")
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                raise ModelUnavailable("the model process died") from None
            if status == "progress":  # a generation's text so far; the answer comes later
                if on_output is not None:
                    _hand_to_trio(on_output, value)
                continue
            if status != "ok":
                assert isinstance(value, ModelError)
                raise value
            return value

    def _call(
        self, op: str, payload: Any, timeout: float, on_output: OutputCallback | None = None
    ) -> Any:
        with self._lock:
            if self._conn is None or self._process is None or not self._process.is_alive():
                raise ModelUnavailable("the model process is not running")
            self._op = op
            try:
                self._conn.send((op, payload))
                return self._recv(timeout, on_output)
            finally:
                self._op = None

    def interrupt(self) -> bool:
        """Kill the child if it is generating (it serves one request at a time, so a sample
        cannot be stopped any other way); the waiting call then fails with ModelUnavailable.
        Returns True if a generation was stopped: restart the model before the next call."""
        process = self._process
        if self._op not in ("generate", "generate_batch") or process is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            process.kill()
        return True

    @property
    def alive(self) -> bool:
        """Whether the model process is running."""
        return self._process is not None and self._process.is_alive()

    async def _ask(
        self,
        op: str,
        payload: Any,
        timeout: float = CALL_TIMEOUT_S,
        on_output: OutputCallback | None = None,
    ) -> Any:
        return await _run_sync(self._call, op, payload, timeout, on_output, abandon_on_cancel=True)

    async def generate(
        self, request: GenerateRequest, on_output: OutputCallback | None = None
    ) -> Generated:
        """One sample with its proofs; ``on_output`` (called in trio) gets its text as it grows."""
        result: Generated = await self._ask("generate", request, on_output=on_output)
        return result

    async def generate_batch(
        self, requests: Sequence[GenerateRequest], on_output: OutputCallback | None = None
    ) -> list[Generated]:
        """Several samples decoded together (``on_output``: their texts as they grow)."""
        result: list[Generated] = await self._ask(
            "generate_batch", list(requests), on_output=on_output
        )
        return result

    async def audit(self, request: AuditRequest) -> AuditMeasures:
        """One prefill over prompt + output: proofs compared, sampling replayed, measured."""
        result: AuditMeasures = await self._ask("audit", request)
        return result

    async def audit_batch(
        self, requests: Sequence[AuditRequest]
    ) -> list[AuditMeasures | ModelError]:
        """Several audits in one padded prefill; each item's outcome is its own."""
        result: list[AuditMeasures | ModelError] = await self._ask("audit_batch", list(requests))
        return result

    async def inspect(self, request: InspectRequest) -> Inspection:
        """Decode an unaudited submission and check how it ends."""
        result: Inspection = await self._ask("inspect", request)
        return result

    @property
    def busy(self) -> str | None:
        """The request the model process is serving now, if any."""
        return self._op

    @property
    def pid(self) -> int | None:
        """The model process's pid while it runs."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
        if self._process is not None and self._process.pid is not None:  # started
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._conn = self._process = None


def _hand_to_trio(on_output: OutputCallback, deltas: list[OutputDelta]) -> None:
    """Run the caller's callback in trio (it touches the daemon's state), from the thread that
    waits on the pipe. A caller that went away (cancelled, its thread abandoned) misses it."""
    try:
        trio.from_thread.run_sync(on_output, deltas)
    except (trio.Cancelled, trio.RunFinishedError):
        pass
    except Exception:
        log.exception("the output callback failed (the generation goes on)")
