"""Where a validator finds a task's spec: its own task set, else the publisher that leased it.

A lease names only the task's id; the validator needs the problem, the gold answer and, for
code, the tests. A validator that runs next to its publisher (a devnet) holds them already; any
other fetches each spec once over ``/flopnet/task-spec/1.0.0`` from the publisher that signed
the lease, checks that publisher's signature, and keeps it in a bounded cache.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping

from flopnet.node.tasks import Task, task_from_spec
from flopnet.protocol.catalog import TASK_SPEC
from flopnet.protocol.errors import MalformedMessage, PeerError
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import Refusal, TaskSpec, TaskSpecRequest

log = logging.getLogger(__name__)
MAX_FETCHED_TASKS = 20_000  # fetched specs kept, least recently used dropped first
UNKNOWN_TTL_S = 60.0  # a task no publisher served is not asked for again this long


class TaskSource:
    """Task specs by id: the node's own set, plus specs fetched from publishers."""

    def __init__(
        self,
        local: Mapping[str, Task],
        host: P2PHost | None = None,
        identity: Identity | None = None,
        network_id: str = "",
        publisher_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        self.local = dict(local)
        self.host = host
        self.identity = identity
        self.network_id = network_id
        self.publisher_keys = publisher_keys
        self._fetched: OrderedDict[str, Task] = OrderedDict()
        self._unknown: dict[str, tuple[str, float]] = {}  # task id -> (why, since when)
        self.fetches = 0

    def get(self, task_id: str) -> Task | None:
        """The spec if this node holds it (its own or already fetched), else None."""
        task = self.local.get(task_id)
        if task is None:
            task = self._fetched.get(task_id)
            if task is not None:
                self._fetched.move_to_end(task_id)
        return task

    def why_unknown(self, task_id: str) -> str | None:
        """Why no spec could be had for a task, if that was found out recently."""
        entry = self._unknown.get(task_id)
        if entry is None:
            return None
        if time.monotonic() - entry[1] > UNKNOWN_TTL_S:
            del self._unknown[task_id]
            return None
        return entry[0]

    def mark_unknown(self, task_id: str, why: str) -> None:
        """Record that no spec can be had (for ``UNKNOWN_TTL_S``; then it is asked again)."""
        self._unknown[task_id] = (why, time.monotonic())
        if len(self._unknown) > MAX_FETCHED_TASKS:
            self._unknown.pop(next(iter(self._unknown)))

    async def ensure(self, task_id: str, publisher: bytes) -> Task | None:
        """The spec, fetched from ``publisher`` if needed; None if that publisher has no such
        task (or is not one of the manifest's). Raises PeerError or ProtocolTimeout when the
        publisher cannot answer now (the caller may try again later)."""
        task = self.get(task_id)
        if task is not None or self.host is None or self.identity is None:
            return task
        if self.why_unknown(task_id) is not None:
            return None
        if publisher not in self.publisher_keys:
            self.mark_unknown(task_id, "the lease is not signed by a publisher of this network")
            return None
        request = TaskSpecRequest(version=1, task_id=task_id)
        self.fetches += 1
        try:
            # A TaskSpec or a Refusal, signed by the publisher asked (the host checks both).
            opened = await self.host.call(peer_id_from_public_key(publisher), TASK_SPEC, request)
            if isinstance(opened.message, Refusal):
                refusal = opened.message
                if refusal.code == "unknown_task":
                    self.mark_unknown(task_id, f"its publisher does not know it ({refusal.reason})")
                    return None
                raise PeerError(f"the publisher refused the task spec: {refusal.code}")
            task = task_from_spec(opened.expect(TaskSpec))
            if task.task_id != task_id:
                raise MalformedMessage(f"asked for task {task_id!r}, got {task.task_id!r}")
        except MalformedMessage as exc:
            raise PeerError(f"bad task spec from the publisher: {exc}") from None
        self._fetched[task_id] = task
        if len(self._fetched) > MAX_FETCHED_TASKS:
            self._fetched.popitem(last=False)
        log.info("fetched the spec of task %s from its publisher", task_id)
        return task

    def __len__(self) -> int:
        return len(self.local) + len(self._fetched)
