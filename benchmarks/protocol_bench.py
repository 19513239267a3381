"""Protocol benchmarks of issue #3: announcement gossip, the submission stream, connections.

    /tmp/venv/bin/python benchmarks/protocol_bench.py [--quick] [--only gossip,submit,conn]

Everything runs in real OS processes on 127.0.0.1 through our own code paths: ``P2PHost``,
sealed envelopes, the real ``Publisher`` (``announce`` + ``handle_range``) and the real
``Validator.handle_submission`` with a SQLite ``Inbox``. The parent spawns children of this same
file (``protocol_bench.py child KIND SPEC``); they coordinate through files in a temp directory
and each writes its result as JSON. The report goes to ``benchmarks/results/protocol.json``.
Full run about 5 minutes on the shared 2-core VM, ``--quick`` about 3-4.

1. gossip: 10 nodes in 3 processes; the publisher announces at 100/s for 30 s (``--quick`` and
   the extra rows: 10 s); listeners record latency (receive time - ``announced_at``), then
   resync what they missed over ``/flopnet/announcements/1.0.0``. Rows: ``ring`` (the daemon's
   shape: unsubscribed publisher), ``star`` (publisher in the mesh), ``control_3_nodes``.
2. submit: one validator process, one client process with 16 worker identities sending ~100 KB
   sealed submissions over ``/flopnet/submit/1.0.0``: sequential RTT, then concurrent throughput
   (8 and 16 in flight), then one worker identity with 16 in flight (the per-peer token bucket);
   with the inbox on disk (ext4) using group commit (``Inbox.add_durable``, as the validator
   does), on disk with one commit per receipt (the behaviour before group commit, for
   comparison at the same load), and on /dev/shm (tmpfs) with group commit.
3. conn: connect time and listener RSS/trio tasks over 1,000 connect/disconnect cycles (the
   host as shipped, with its ``protocol.libp2p_fixes``); RSS per idle peer with 50 peers
   connected from another process.

The one benchmark-only deviation: the publisher's send path is timed by
:func:`instrument_sends`. ``--profile DIR`` runs every child under cProfile and leaves one
``.prof`` file per child in DIR (for finding CPU, not for the figures: the profiler slows the
children about twofold). Every loop is bounded in count and time, and every child exits on its
own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flopnet.ledger.store import LedgerStore  # noqa: E402
from flopnet.node.config import NetworkParams, NodeConfig  # noqa: E402
from flopnet.node.publisher.announcements import SeqTracker  # noqa: E402
from flopnet.node.publisher.publisher import Publisher  # noqa: E402
from flopnet.node.tasks import builtin_tasks  # noqa: E402
from flopnet.node.validator.inbox import Inbox  # noqa: E402
from flopnet.node.validator.validator import Validator  # noqa: E402
from flopnet.protocol.catalog import (  # noqa: E402
    ANNOUNCEMENTS,
    SUBMIT,
    tasks_topic,
)
from flopnet.protocol.codec import Record  # noqa: E402
from flopnet.protocol.envelope import (  # noqa: E402
    Opened,
    message_id,
    open_envelope,
    seal,
)
from flopnet.protocol.errors import MalformedMessage, PeerError, ProtocolTimeout  # noqa: E402
from flopnet.protocol.host import P2PHost, StreamLimits  # noqa: E402
from flopnet.protocol.identity import Identity  # noqa: E402
from flopnet.protocol.messages import (  # noqa: E402
    AnnouncementRange,
    AnnouncementRangeRequest,
    Lease,
    Submission,
    SubmissionReceipt,
    TaskAnnouncement,
)

RESULTS = REPO / "benchmarks" / "results" / "protocol.json"
NETWORK_ID = "bench-protocol"
STATS_PROTOCOL = "/flopnet-bench/stats/1.0.0"
STATS_LIMITS = StreamLimits(max_request=1024, max_response=65536, timeout=10.0)
LOOPBACK = "127.0.0.1"
PROFILE_DIR: Path | None = None  # set by --profile
BAD_GOSSIP_STREAM = "gossip stream from"  # protocol.libp2p_fixes.guard_pubsub_reads reset one
LOG_PATTERNS = (  # library warnings worth counting in the children's logs
    BAD_GOSSIP_STREAM,
    "Health check failed",
    "fail to deliver message to subscription",
    "Nursery is closed",
    "Error in handle_incoming",
    "Failed to open stream",
)

# --------------------------------------------------------------------------------------------
# helpers shared by parent and children


def identity(name: str) -> Identity:
    """A deterministic identity per role name, so every process derives the same keys."""
    return Identity(hashlib.sha256(f"flopnet-bench/{name}".encode()).digest())


PUBLISHER = identity("publisher")
VALIDATOR = identity("validator")


def network() -> NetworkParams:
    return NetworkParams(
        network_id=NETWORK_ID,
        publishers=(PUBLISHER.public_key.hex(),),
        validators=(VALIDATOR.public_key.hex(),),
    )


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    """Count, p50, p90, p99 and max of durations, in milliseconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    return {
        "n": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p90_ms": ms(percentile(seconds, 90)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), via psutil or /proc."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line") from None


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a polling reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


async def wait_for(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until true; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = trio.current_time() + timeout
    while not check():
        if trio.current_time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await trio.sleep(interval)


async def read_json_when_ready(path: Path, timeout: float) -> Any:
    await wait_for(path.exists, timeout, str(path.name))
    return json.loads(path.read_text())


def count_trio_tasks() -> tuple[int, dict[str, int]]:
    """Every live task of this trio run, and the 8 most common task names."""
    root = trio.lowlevel.current_root_task()
    stack = [root]
    names: Counter[str] = Counter()
    while stack:
        task = stack.pop()
        names[task.name.rsplit(".", 2)[-1] if "<" not in task.name else task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return sum(names.values()), dict(names.most_common(8))


async def stats_handler(_peer: str, _request: bytes) -> bytes:
    """A benchmark-only protocol: the serving process reports its RSS and trio task count."""
    gc.collect()
    tasks, top = count_trio_tasks()
    stats = {"rss": rss_bytes(), "tasks": tasks, "top_tasks": top, "cpu_s": cpu_seconds()}
    return json.dumps(stats).encode()


async def close_quietly(stack: AsyncExitStack, seconds: float = 10.0) -> None:
    """Shut hosts down within a bound; py-libp2p can raise while closing under traffic."""
    with trio.move_on_after(seconds):
        try:
            await stack.aclose()
        except BaseException as exc:
            logging.getLogger("bench").warning("shutdown: %s: %s", type(exc).__name__, exc)


class LagMonitor:
    """Event-loop lag: how late a 50 ms sleep wakes up (CPU starvation shows here first)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            for _ in range(100_000):  # ~80 minutes at most; cancelled long before
                t0 = trio.current_time()
                await trio.sleep(0.05)
                self.lags.append(max(0.0, trio.current_time() - t0 - 0.05))

    def stop(self) -> dict[str, Any]:
        self._scope.cancel()
        return ms_summary(self.lags)


# --------------------------------------------------------------------------------------------
# 1. announcement gossip


def gossip_identity(i: int) -> Identity:
    return PUBLISHER if i == 0 else identity(f"listener-{i}")


@dataclass
class ListenerState:
    node: int
    tracker: SeqTracker = field(default_factory=SeqTracker)
    latencies: list[float] = field(default_factory=list)
    gossip: int = 0
    duplicates: int = 0
    gap_events: int = 0
    late_gossip: int = 0  # first seen by gossip after the resync started
    recovered: int = 0
    resync_requests: int = 0
    resync_seconds: float = 0.0
    resync_started: bool = False
    errors: list[str] = field(default_factory=list)

    def on_message(self) -> Callable[[str, bytes], Awaitable[None]]:
        async def callback(_sender: str, data: bytes) -> None:
            now = time.time()
            opened = open_envelope(data, NETWORK_ID, expected=TaskAnnouncement)
            if opened.signer != PUBLISHER.public_key:
                raise MalformedMessage("announcement not signed by the publisher")
            ann = opened.expect(TaskAnnouncement)
            if ann.seq > self.tracker.contiguous + 1:
                self.gap_events += 1
            if self.tracker.saw(ann.seq):
                self.gossip += 1
                self.latencies.append(now - ann.announced_at)
                if self.resync_started:
                    self.late_gossip += 1
            else:
                self.duplicates += 1

        return callback

    async def resync(self, host: P2PHost, head: int, publisher_addr: str) -> None:
        """Fetch every missing seq from the publisher, as a node does on a gap or a heartbeat.

        A failed request is retried after re-dialling the publisher (at most 3 times), as a node
        re-dials its bootstrap peers.
        """
        self.resync_started = True
        started = time.perf_counter()
        self.tracker.head_is(head)
        failures = 0
        for _ in range(200):  # 200 x 512 covers any run here
            first = self.tracker.missing_from()
            if first is None:
                break
            ask = AnnouncementRangeRequest(version=1, from_seq=first, limit=512)
            try:
                reply = await host.request(
                    PUBLISHER.peer_id,
                    ANNOUNCEMENTS.protocol_id,
                    seal(ask, identity(f"listener-{self.node}"), NETWORK_ID),
                    ANNOUNCEMENTS.limits,
                )
            except (PeerError, ProtocolTimeout) as exc:
                failures += 1
                self.errors.append(f"resync attempt {failures}: {type(exc).__name__}: {exc}")
                if failures > 3:
                    raise
                # connect() is a no-op while a dead connection is still registered (py-libp2p's
                # BasicHost.connect only checks that the peer has an entry), so drop it first.
                await host.disconnect(PUBLISHER.peer_id)
                await trio.sleep(0.5 * failures)
                with contextlib.suppress(PeerError, ProtocolTimeout):
                    await host.connect(publisher_addr)
                continue
            self.resync_requests += 1
            opened = open_envelope(reply, NETWORK_ID, expected=AnnouncementRange)
            if opened.signer != PUBLISHER.public_key:
                raise MalformedMessage("range not signed by the publisher")
            batch = opened.expect(AnnouncementRange)
            self.tracker.head_is(batch.head_seq)
            if not batch.items:
                break
            for item in batch.items:
                ann = open_envelope(item, NETWORK_ID, expected=TaskAnnouncement)
                if ann.signer != PUBLISHER.public_key:
                    raise MalformedMessage("announcement not signed by the publisher")
                if self.tracker.saw(ann.expect(TaskAnnouncement).seq):
                    self.recovered += 1
        self.resync_seconds = time.perf_counter() - started

    def report(self, head: int) -> dict[str, Any]:
        complete = self.tracker.contiguous >= head and self.tracker.gap_count() == 0
        return {
            "node": self.node,
            "delivered_by_gossip": self.gossip,
            "recovered_by_resync": self.recovered,
            "final_contiguous": self.tracker.contiguous,
            "head": head,
            "completeness_pct": round(100.0 * min(self.tracker.contiguous, head) / head, 3)
            if head
            else None,
            "complete": complete,
            "gossip_delivery_pct": round(100.0 * self.gossip / head, 3) if head else None,
            "latency": ms_summary(self.latencies),
            "over_100ms": sum(1 for x in self.latencies if x > 0.1),
            "duplicates": self.duplicates,
            "gap_events": self.gap_events,
            "late_gossip_after_resync_start": self.late_gossip,
            "resync_requests": self.resync_requests,
            "resync_ms": round(self.resync_seconds * 1000.0, 1),
            "errors": self.errors,
        }


def has_topic_peers(host: P2PHost, topic: str, wanted: int) -> bool:
    return host.topic_peers(topic) >= wanted


async def ignore_message(_sender: str, _data: bytes) -> None:
    """The publisher's own subscription (it only joins the mesh)."""


async def gossip_child(spec: dict[str, Any]) -> dict[str, Any]:
    d = Path(spec["dir"])
    proc: int = spec["proc"]
    procs: list[list[int]] = spec["procs"]
    nodes = procs[proc]
    n_nodes = sum(len(p) for p in procs)
    topic = tasks_topic(NETWORK_ID)
    hosts = {
        i: P2PHost(gossip_identity(i), network_id=NETWORK_ID, listen_ip=LOOPBACK) for i in nodes
    }
    publisher: Publisher | None = None
    if 0 in nodes:
        config = NodeConfig(roles=("publisher",), data_dir=d, network=network())
        publisher = Publisher(config, PUBLISHER, hosts[0], None, builtin_tasks(16))  # type: ignore[arg-type]  # the tokenizer is only used for leases
        hosts[0].serve(ANNOUNCEMENTS, publisher.handle_range)
    listeners = {i: ListenerState(i) for i in nodes if i != 0}
    out: dict[str, Any] = {"proc": proc, "nodes": nodes, "pid": os.getpid()}
    stack = AsyncExitStack()
    monitor = await stack.enter_async_context(trio.open_nursery())
    lag = LagMonitor()
    try:
        for i in nodes:
            await stack.enter_async_context(hosts[i].running())
        write_json(d / f"addrs-{proc}.json", {str(i): hosts[i].addrs()[0] for i in nodes})
        addrs: dict[int, str] = {}
        for p in range(len(procs)):
            part = await read_json_when_ready(d / f"addrs-{p}.json", 60)
            addrs.update({int(k): v for k, v in part.items()})
        for i, state in listeners.items():
            await hosts[i].subscribe(topic, state.on_message())
        ring = spec["topology"] == "ring"
        if publisher is not None and not ring:  # the publisher joins the topic mesh
            await hosts[0].subscribe(topic, ignore_message)
        for i in listeners:  # every listener dials the publisher; in a ring also i % 9 + 1
            await hosts[i].connect(addrs[0])
            if ring:
                await hosts[i].connect(addrs[i % (n_nodes - 1) + 1])
        wanted = 2 if ring else 1  # ring: both neighbours' subscriptions; star: the publisher's
        for i in listeners:
            await wait_for(
                functools.partial(has_topic_peers, hosts[i], topic, wanted),
                30,
                f"topic peers of {i}",
            )
        monitor.start_soon(lag.run)
        cpu_ready = cpu_seconds()
        write_json(d / f"ready-{proc}.json", {"at": time.time()})

        if publisher is not None:
            for p in range(len(procs)):
                await read_json_when_ready(d / f"ready-{p}.json", 60)
            await wait_for(
                lambda: hosts[0].topic_peers(topic) >= n_nodes - 1, 30, "publisher topic peers"
            )
            await trio.sleep(3.0)  # a few GossipSub heartbeats (1 s) to build the mesh
            sends = instrument_sends(hosts[0])
            out["publish"] = await publish(publisher, spec["rate"], spec["duration"])
            out["publisher_sends"] = sends.report()
            write_json(d / "done.json", {"head": publisher.log.head, "at": time.time()})

        done = await read_json_when_ready(d / "done.json", spec["duration"] + 120)
        head = int(done["head"])
        out["loop_lag_while_publishing"] = lag.stop()
        cpu_window = cpu_seconds() - cpu_ready
        delivered = sum(s.gossip for s in listeners.values())
        out["cpu_s_ready_to_done"] = round(cpu_window, 2)
        out["gossip_deliveries"] = delivered
        out["cpu_ms_per_delivery"] = round(1000 * cpu_window / delivered, 2) if delivered else None
        out["publisher_connected_at_done"] = {
            i: PUBLISHER.peer_id in hosts[i].connected_peers() for i in listeners
        }
        await trio.sleep(spec["grace"])
        cpu_before_resync = cpu_seconds()
        for i, state in listeners.items():
            try:
                await state.resync(hosts[i], head, addrs[0])
            except Exception as exc:
                state.errors.append(f"resync gave up: {type(exc).__name__}: {exc}")
        out["resync_cpu_s"] = round(cpu_seconds() - cpu_before_resync, 3)
        out["listeners"] = [s.report(head) for s in listeners.values()]
        write_json(d / f"finished-{proc}.json", {"at": time.time()})
        if publisher is not None:  # keep serving ranges until every listener is done
            for p in range(len(procs)):
                await read_json_when_ready(d / f"finished-{p}.json", 120)
    finally:
        out["cpu_s"] = round(cpu_seconds(), 2)
        out["rss_mb"] = round(rss_bytes() / 2**20, 1)
        lag.stop()
        await close_quietly(stack)
    return out


async def publish(publisher: Publisher, rate: float, duration: float) -> dict[str, Any]:
    """Announce ``rate`` x ``duration`` tasks on a fixed schedule (real Publisher.announce)."""
    tasks = list(publisher.tasks.values())
    total = int(rate * duration)
    lags: list[float] = []
    cpu0 = cpu_seconds()
    start = trio.current_time()
    for k in range(total):
        target = start + k / rate
        lag = trio.current_time() - target
        if lag < 0:
            await trio.sleep(-lag)
            lag = 0.0
        lags.append(lag)
        await publisher.announce(tasks[k % len(tasks)])
    elapsed = trio.current_time() - start
    return {
        "announced": publisher.stats.announced,
        "head": publisher.log.head,
        "seconds": round(elapsed, 3),
        "achieved_rate": round(total / elapsed, 1),
        "schedule_lag": ms_summary(lags),
        "publisher_process_cpu_s_while_publishing": round(cpu_seconds() - cpu0, 2),
    }


# --------------------------------------------------------------------------------------------
# 2. submission stream


class SendStats:
    """The publisher's outbound gossip path: time per RPC write, and RPCs its queues dropped."""

    def __init__(self) -> None:
        self.write_times: list[float] = []
        self.enqueued = 0
        self.queue_full = 0

    def report(self) -> dict[str, Any]:
        return {
            "write_msg": ms_summary(self.write_times),
            "rpcs_to_peers": self.enqueued,
            "dropped_queue_full": self.queue_full,
        }


def instrument_sends(host: P2PHost) -> SendStats:
    """Wrap (instrumentation only) py-libp2p's per-peer RPC write and its enqueue.

    Each peer has an outbound queue of 32 RPCs drained by one task that awaits ``write_msg``;
    an RPC that finds its queue full is dropped silently.
    """
    stats = SendStats()
    pubsub = host._pubsub
    write = pubsub.write_msg
    router = pubsub.router
    send_rpc = router.send_rpc

    async def timed_write(stream: Any, rpc: Any) -> bool:
        t0 = time.perf_counter()
        try:
            return bool(await write(stream, rpc))
        finally:
            stats.write_times.append(time.perf_counter() - t0)

    def counted_send(peer_id: Any, rpc: Any, priority: bool = False) -> None:
        queue = pubsub.peer_queues.get(peer_id)
        if rpc.publish:
            stats.enqueued += 1
            if queue is not None and len(queue) >= 32:
                stats.queue_full += 1
        send_rpc(peer_id, rpc, priority)

    pubsub.write_msg = timed_write
    router.send_rpc = counted_send
    return stats


def worker_identity(k: int) -> Identity:
    return identity(f"worker-{k}")


def commit_probe(directory: Path, rows: int = 40) -> dict[str, Any]:
    """Latency of a bare SQLite commit (WAL, synchronous=FULL) of a 100 KB row in ``directory``."""
    path = directory / "probe.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    blob = os.urandom(100_000)
    times = []
    for k in range(rows):
        t0 = time.perf_counter()
        conn.execute("INSERT INTO t VALUES (?, ?)", (k, blob))
        times.append(time.perf_counter() - t0)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return ms_summary(times)


def model_size_argument() -> dict[str, Any]:
    """``model_config`` (current Validator) or ``n_params`` (before commit 40e42a8)."""
    if "model_config" in inspect.signature(Validator.__init__).parameters:
        return {"model_config": {}}
    return {"n_params": 1000}


async def submit_validator_child(spec: dict[str, Any]) -> dict[str, Any]:
    d = Path(spec["dir"])
    inbox_dir = Path(spec["inbox_dir"])
    inbox_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"inbox_dir": str(inbox_dir), "pid": os.getpid()}
    out["bare_commit_100kb"] = commit_probe(inbox_dir)
    host = P2PHost(VALIDATOR, network_id=NETWORK_ID, listen_ip=LOOPBACK)
    config = NodeConfig(roles=("validator",), data_dir=inbox_dir, network=network())
    inbox = Inbox(inbox_dir / "inbox.sqlite")
    validator = Validator(
        config,
        VALIDATOR,
        host,
        None,  # type: ignore[arg-type]  # validator.run is never started: receipts only
        None,  # type: ignore[arg-type]
        LedgerStore(inbox_dir / "ledger.sqlite"),
        inbox,
        {},
        # the model's size only matters for verdicts, never for receipts
        **model_size_argument(),
        on_verdict=lambda _lease, _ok: None,
    )
    add_times: list[float] = []
    handler_times: list[float] = []
    group_commit: bool = spec.get("group_commit", True)
    real_add = inbox.add_durable
    sync_add = inbox.add

    async def timed_add(submission_id: bytes, lease_id: bytes, peer: str, envelope: bytes) -> bool:
        """The validator's awaited durable add, timed (from the call to the durable return)."""
        t0 = time.perf_counter()
        try:
            if group_commit:
                return await real_add(submission_id, lease_id, peer, envelope)
            # the behaviour before group commit: one commit (fsync) per receipt, on the trio thread
            return sync_add(submission_id, lease_id, peer, envelope)
        finally:
            add_times.append(time.perf_counter() - t0)

    inbox.add_durable = timed_add  # type: ignore[method-assign]  # instrumentation only

    async def handler(peer: str, opened: Opened) -> Record:
        t0 = time.perf_counter()
        try:
            return await validator.handle_submission(peer, opened)
        finally:
            handler_times.append(time.perf_counter() - t0)

    host.serve(SUBMIT, handler)
    host.handle(STATS_PROTOCOL, stats_handler, STATS_LIMITS)
    async with host.running() as h:
        write_json(d / "validator-addr.json", {"addr": h.addrs()[0]})
        cpu0 = cpu_seconds()
        await wait_for((d / "stop").exists, spec["max_seconds"], "the stop file", 0.1)
        out["cpu_s_serving"] = round(cpu_seconds() - cpu0, 2)
    out.update(
        received=validator.stats.received,
        malformed=validator.stats.malformed,
        stored=inbox.queue_length(),
        handler=ms_summary(handler_times),
        group_commit=group_commit,
        inbox_add=ms_summary(add_times),
        commits=inbox.commits if group_commit else len(add_times),
        rows_per_commit=round(inbox.rows_committed / inbox.commits, 2)
        if group_commit and inbox.commits
        else 1.0,
        inbox_add_share_of_handler=round(sum(add_times) / sum(handler_times), 3)
        if handler_times
        else None,
        inbox_bytes=sum(p.stat().st_size for p in inbox_dir.glob("inbox.sqlite*")),
    )
    inbox.close()
    return out


def make_submission(worker: Identity, k: int, text_bytes: int) -> bytes:
    """A real sealed Submission: a publisher-signed lease for ``worker`` and ~text_bytes of text."""
    now = time.time()
    lease = Lease(
        version=1,
        lease_id=os.urandom(16),
        task_id=f"bench-{k}",
        task_type="math",
        sample_index=0,
        worker=worker.public_key,
        validator=VALIDATOR.public_key,
        seed=k,
        prompt_ids=tuple(range(64)),
        max_new_tokens=4096,
        temperature=0.6,
        top_p=0.95,
        issued_at=now,
        expires_at=now + 600.0,
    )
    head = f"submission {k} by {worker.peer_id}: "
    text = head + ("the answer is 42. " * (text_bytes // 18 + 1))[: text_bytes - len(head)]
    sub = Submission(
        version=1,
        lease=seal(lease, PUBLISHER, NETWORK_ID),
        token_ids=tuple(range(1000, 1064)),
        text=text,
        finish_reason="stop",
        proofs=(bytes(258), bytes(258)),
        generation_seconds=1.5,
    )
    return seal(sub, worker, NETWORK_ID)


async def submit_client_child(spec: dict[str, Any]) -> dict[str, Any]:
    d = Path(spec["dir"])
    n_workers: int = spec["workers"]
    text_bytes: int = spec["text_bytes"]
    workers = [worker_identity(k) for k in range(n_workers + 1)]  # the last: single-peer row
    # Submissions are sealed before any timing: the client's signing cost is not the protocol's.
    plan = {"seq": spec["sequential"], "single": spec["single_peer_requests"]}
    for c in spec["concurrency"]:
        plan[f"c{c}"] = spec["concurrent_requests"]
    needed = [0] * (n_workers + 1)
    for k in range(n_workers):
        needed[k] = 1 + plan["seq"] // n_workers + 1
        needed[k] += sum(-(-plan[f"c{c}"] // c) for c in spec["concurrency"] if k < c)
    needed[n_workers] = plan["single"]
    pools = [
        [make_submission(workers[k], k * 100_000 + j, text_bytes) for j in range(needed[k])]
        for k in range(n_workers + 1)
    ]
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "envelope_bytes": len(pools[0][0]),
        "workers": n_workers,
    }
    hosts = [P2PHost(w, listen_ip=LOOPBACK) for w in workers]
    validator_addr = (await read_json_when_ready(d / "validator-addr.json", 60))["addr"]
    bad: list[str] = []

    async def submit(k: int) -> float:
        data = pools[k].pop()
        t0 = time.perf_counter()
        reply = await hosts[k].request(VALIDATOR.peer_id, SUBMIT.protocol_id, data, SUBMIT.limits)
        rtt = time.perf_counter() - t0
        receipt = open_envelope(reply, NETWORK_ID, expected=SubmissionReceipt)
        if receipt.signer != VALIDATOR.public_key:
            bad.append("receipt not signed by the validator")
        if receipt.expect(SubmissionReceipt).submission_id != message_id(data):
            bad.append("receipt names another submission")
        return rtt

    async def validator_cpu() -> float:
        return float((await query_stats(hosts[0], VALIDATOR.peer_id))["cpu_s"])

    stack = AsyncExitStack()
    try:
        for h in hosts:
            await stack.enter_async_context(h.running())
        for h in hosts:
            await h.connect(validator_addr)
        for k in range(n_workers):  # warm-up: one stream per connection, not timed
            await submit(k)
        await trio.sleep(0.5)

        # sequential: one request in flight, rotating over the workers (each stays far below
        # the per-peer limit of 50 requests/s)
        rtts = []
        v_cpu0 = await validator_cpu()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for j in range(plan["seq"]):
            rtts.append(await submit(j % n_workers))
        seq_wall = time.perf_counter() - t0
        out["sequential"] = {
            "rtt": ms_summary(rtts),
            "rate_per_s": round(len(rtts) / seq_wall, 1),
            "client_cpu_s": round(cpu_seconds() - cpu0, 2),
            "validator_cpu_ms_per_receipt": round(
                1000 * (await validator_cpu() - v_cpu0) / len(rtts), 2
            ),
            "load": load(),
        }

        out["concurrent"] = []
        for c in spec["concurrency"]:
            await trio.sleep(0.5)
            v_cpu0 = await validator_cpu()
            phase = await concurrent_phase(submit, c, plan[f"c{c}"])
            v_cpu = await validator_cpu() - v_cpu0
            phase["validator_cpu_s"] = round(v_cpu, 2)
            phase["validator_cpu_share_of_wall"] = round(v_cpu / phase["seconds"], 2)
            if phase["receipts"]:
                phase["validator_cpu_ms_per_receipt"] = round(1000 * v_cpu / phase["receipts"], 2)
            out["concurrent"].append(phase)

        # one worker identity pushing 16 at once: the per-peer token bucket (50/s) decides
        single_errors: Counter[str] = Counter()
        single_ok: list[float] = []
        remaining = [plan["single"]]

        async def single_runner() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    single_ok.append(await submit(n_workers))
                except Exception as exc:
                    single_errors[type(exc).__name__] += 1

        await trio.sleep(0.5)
        t0 = time.perf_counter()
        with trio.move_on_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(single_runner)
        wall = time.perf_counter() - t0
        out["single_peer_16_concurrent"] = {
            "requests": plan["single"],
            "receipts": len(single_ok),
            "failed": dict(single_errors),
            "receipts_per_s": round(len(single_ok) / wall, 1),
            "still_connected_after": VALIDATOR.peer_id in hosts[n_workers].connected_peers(),
        }
        out["receipt_problems"] = bad[:10]
    finally:
        write_json(d / "stop", {"at": time.time()})
        await close_quietly(stack)
    return out


async def concurrent_phase(
    submit: Callable[[int], Awaitable[float]], concurrency: int, total: int
) -> dict[str, Any]:
    """``concurrency`` workers, one request in flight each, ``total`` requests in all."""
    per_worker = -(-total // concurrency)
    rtts: list[float] = []
    errors: Counter[str] = Counter()

    async def runner(k: int) -> None:
        for _ in range(per_worker):
            try:
                rtts.append(await submit(k))
            except Exception as exc:
                errors[type(exc).__name__] += 1

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with trio.move_on_after(120):
        async with trio.open_nursery() as nursery:
            for k in range(concurrency):
                nursery.start_soon(runner, k)
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": per_worker * concurrency,
        "receipts": len(rtts),
        "errors": dict(errors),
        "seconds": round(wall, 3),
        "receipts_per_s": round(len(rtts) / wall, 1),
        "rtt": ms_summary(rtts),
        "client_cpu_s": round(cpu_seconds() - cpu0, 2),
        "load": load(),
    }


# --------------------------------------------------------------------------------------------
# 3. connections


async def conn_listener_child(spec: dict[str, Any]) -> dict[str, Any]:
    d = Path(spec["dir"])
    host = P2PHost(identity(f"conn-listener-{spec['name']}"), listen_ip=LOOPBACK)
    host.handle(STATS_PROTOCOL, stats_handler, STATS_LIMITS)
    async with host.running() as h:
        await trio.sleep(0.5)
        tasks, _top = count_trio_tasks()
        write_json(
            d / f"{spec['name']}-addr.json",
            {"addr": h.addrs()[0], "pid": os.getpid(), "tasks": tasks, "rss": rss_bytes()},
        )
        await wait_for((d / f"{spec['name']}-stop").exists, spec["max_seconds"], "stop", 0.1)
        tasks, top = count_trio_tasks()
        return {"final_tasks": tasks, "final_top_tasks": top, "final_rss": rss_bytes()}


async def query_stats(host: P2PHost, peer_id: str) -> dict[str, Any]:
    reply = await host.request(peer_id, STATS_PROTOCOL, b"stats", STATS_LIMITS)
    stats: dict[str, Any] = json.loads(reply)
    return stats


async def conn_cycles_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect and disconnect ``cycles`` times; at checkpoints, the listener's RSS and tasks.

    The first ``sequential`` cycles are strictly one after the other (clean connect times). A
    disconnect costs ~200 ms in py-libp2p 0.8.1 (two fixed 0.1 s sleeps in Yamux and SwarmConn
    close), so later cycles rotate over ``dialers`` identities and let each disconnect finish in
    the background; a dialer is reused only once its previous disconnect has completed.
    """
    d = Path(spec["dir"])
    name = spec["listener"]
    info = await read_json_when_ready(d / f"{name}-addr.json", 60)
    addr: str = info["addr"]
    listener_id = addr.rsplit("/p2p/", 1)[1]
    checkpoints = set(spec["checkpoints"])
    hosts = [
        P2PHost(identity(f"conn-dialer-{k}"), listen_ip=LOOPBACK) for k in range(spec["dialers"])
    ]
    idle: list[trio.Event] = []
    connect_times: list[float] = []
    disconnect_times: list[float] = []
    samples: list[dict[str, Any]] = [
        {"cycle": 0, "rss": info["rss"], "tasks": info["tasks"], "connected": False}
    ]
    errors: Counter[str] = Counter()
    out: dict[str, Any] = {"listener": name}
    started = time.perf_counter()

    async def disconnect(k: int, done: trio.Event) -> None:
        t0 = time.perf_counter()
        try:
            await hosts[k].disconnect(listener_id)
            await wait_for(lambda: listener_id not in hosts[k].connected_peers(), 5, "close")
            disconnect_times.append(time.perf_counter() - t0)
        except Exception as exc:
            errors[f"disconnect: {type(exc).__name__}"] += 1
        finally:
            done.set()

    stack = AsyncExitStack()
    try:
        for h in hosts:
            await stack.enter_async_context(h.running())
        for _ in hosts:
            ready = trio.Event()
            ready.set()
            idle.append(ready)
        consecutive_failures = 0
        async with trio.open_nursery() as nursery:
            for cycle in range(1, spec["cycles"] + 1):
                if time.perf_counter() - started > spec["max_seconds"]:
                    out["stopped_by_time_bound_at_cycle"] = cycle
                    break
                if consecutive_failures >= spec["stop_after_failures"]:
                    out["stopped_after_consecutive_failures_at_cycle"] = cycle
                    break
                k = cycle % len(hosts)
                with trio.fail_after(10):
                    await idle[k].wait()
                if cycle in checkpoints:  # measure with nothing else in flight
                    with trio.fail_after(20):
                        for event in idle:
                            await event.wait()
                try:
                    t0 = time.perf_counter()
                    await hosts[k].connect(addr)
                    connect_times.append(time.perf_counter() - t0)
                    consecutive_failures = 0
                except Exception as exc:
                    errors[f"connect: {type(exc).__name__}"] += 1
                    out.setdefault("first_failed_cycle", cycle)
                    consecutive_failures += 1
                    continue
                if cycle in checkpoints:
                    await trio.sleep(0.3)  # identify, pubsub hello and the ping loop settle
                    stats = await query_stats(hosts[k], listener_id)
                    samples.append({"cycle": cycle, "connected": True, **stats})
                idle[k] = trio.Event()
                if cycle <= spec["sequential"]:
                    await disconnect(k, idle[k])
                else:
                    nursery.start_soon(disconnect, k, idle[k])
    finally:
        await close_quietly(stack, 20.0)
    sequential = connect_times[: spec["sequential"]]
    out.update(
        cycles_attempted=sum(errors.values()) + len(connect_times),
        cycles_connected=len(connect_times),
        connect_sequential=ms_summary(sequential),
        connect_all=ms_summary(connect_times),
        disconnect=ms_summary(disconnect_times),
        samples=samples,
        errors=dict(errors),
        seconds=round(time.perf_counter() - started, 1),
        load=load(),
    )
    return out


async def conn_peers_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect ``peers`` distinct identities to one listener; its RSS before and after."""
    d = Path(spec["dir"])
    info = await read_json_when_ready(d / "peers-addr.json", 60)
    listener_id = info["addr"].rsplit("/p2p/", 1)[1]
    pid = int(info["pid"])
    n: int = spec["peers"]
    hosts = [P2PHost(identity(f"idle-peer-{k}"), listen_ip=LOOPBACK) for k in range(n)]
    out: dict[str, Any] = {"peers": n}
    stack = AsyncExitStack()
    try:
        for h in hosts:
            await stack.enter_async_context(h.running())
        await hosts[0].connect(info["addr"])
        await trio.sleep(1.0)
        one = await query_stats(hosts[0], listener_id)
        out["with_1_peer"] = {"rss": one["rss"], "tasks": one["tasks"]}
        times = []
        for h in hosts[1:]:
            t0 = time.perf_counter()
            await h.connect(info["addr"])
            times.append(time.perf_counter() - t0)
        out["connect_fresh_identities"] = ms_summary(times)
        await trio.sleep(2.0)  # identify, pubsub hello and a few heartbeats
        full = await query_stats(hosts[0], listener_id)
        await trio.sleep(2.0)
        later = await query_stats(hosts[0], listener_id)
        out[f"with_{n}_peers"] = {"rss": full["rss"], "tasks": full["tasks"]}
        out[f"with_{n}_peers_2s_later"] = {"rss": later["rss"], "tasks": later["tasks"]}
        out["top_tasks"] = later["top_tasks"]
        out["rss_per_peer_bytes"] = round((later["rss"] - one["rss"]) / (n - 1))
        out["tasks_per_peer"] = round((later["tasks"] - one["tasks"]) / (n - 1), 2)
        for h in hosts[1:]:
            await h.disconnect(listener_id)
        await trio.sleep(2.0)
        after = await query_stats(hosts[0], listener_id)
        out["after_disconnecting_all_but_1"] = {
            "rss": after["rss"],
            "tasks": after["tasks"],
            "top_tasks": after["top_tasks"],
        }
        out["listener_rss_external"] = rss_bytes(pid)
    finally:
        await close_quietly(stack, 20.0)
    out["load"] = load()
    return out


# --------------------------------------------------------------------------------------------
# child entry point and the parent's orchestration

CHILDREN: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "gossip": gossip_child,
    "submit-validator": submit_validator_child,
    "submit-client": submit_client_child,
    "conn-listener": conn_listener_child,
    "conn-cycles": conn_cycles_child,
    "conn-peers": conn_peers_child,
}


def child_main(kind: str, spec_path: Path) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(spec_path.read_text())

    async def main() -> dict[str, Any]:
        with trio.fail_after(spec["hard_seconds"]):
            return await CHILDREN[kind](spec)

    started = time.time()
    result: dict[str, Any]
    try:
        if spec.get("profile_dir"):
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(trio.run, main)
            profiler.dump_stats(Path(spec["profile_dir"]) / f"{spec_path.stem}.prof")
        else:
            result = trio.run(main)
        result["ok"] = True
    except BaseException as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["child_seconds"] = round(time.time() - started, 2)
    write_json(Path(spec["result"]), result)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    result: Path
    log: Path


def spawn(kind: str, name: str, spec: dict[str, Any], work: Path) -> Child:
    spec = {**spec, "dir": str(work), "result": str(work / f"result-{name}.json")}
    spec.setdefault("hard_seconds", 240)
    if PROFILE_DIR is not None:
        spec["profile_dir"] = str(PROFILE_DIR)
    spec_path = work / f"spec-{name}.json"
    write_json(spec_path, spec)
    log = work / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "child", kind, str(spec_path)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    return Child(name, proc, work / f"result-{name}.json", log)


def collect(child: Child, timeout: float) -> dict[str, Any]:
    try:
        child.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.proc.kill()  # our own child, by its Popen handle
        child.proc.wait(timeout=10)
        return {"ok": False, "error": f"killed after {timeout}s", "log_tail": tail(child.log)}
    if not child.result.exists():
        return {
            "ok": False,
            "error": f"exit {child.proc.returncode} without a result",
            "log_tail": tail(child.log),
        }
    result: dict[str, Any] = json.loads(child.result.read_text())
    result["exit_code"] = child.proc.returncode
    warnings = [ln for ln in child.log.read_text(errors="replace").splitlines() if ln.strip()]
    result["log_lines"] = len(warnings)
    result["log_counts"] = {
        pattern: n for pattern in LOG_PATTERNS if (n := sum(1 for ln in warnings if pattern in ln))
    }
    if warnings:
        result["log_sample"] = warnings[:5]
    if not result.get("ok"):
        result["log_tail"] = tail(child.log)
    return result


def tail(path: Path, lines: int = 30) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


TOPOLOGIES = {
    "ring": "as the daemon does it: the publisher does not subscribe (GossipSub fanout to 6 "
    "peers); all 9 listeners dial it and listener i also dials listener i % 9 + 1",
    "star": "the publisher subscribes to the topic (joins the mesh); all 9 listeners dial it",
}
TEN_NODES = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
GOSSIP_RUNS = {  # name: (topology, processes, seconds of the full run)
    "ring": ("ring", TEN_NODES, 30.0),  # the figure of issue #3
    "star": ("star", TEN_NODES, 10.0),
    "control_3_nodes": ("star", [[0], [1], [2]], 10.0),  # 1 publisher + 2 listeners
}


def run_gossip(quick: bool, work: Path) -> dict[str, Any]:
    work.mkdir()
    out: dict[str, Any] = {}
    for name, (topology, procs, seconds) in GOSSIP_RUNS.items():
        duration = 10.0 if quick else seconds
        sub = work / name
        sub.mkdir()
        spec = {
            "procs": procs,
            "rate": 100.0,
            "duration": duration,
            "grace": 2.0,
            "topology": topology,
        }
        load_before = load()
        children = [
            spawn("gossip", f"gossip-{name}-{p}", {**spec, "proc": p}, sub)
            for p in range(len(procs))
        ]
        results = [collect(c, duration + 200) for c in children]
        listeners = [s for r in results for s in r.get("listeners", [])]
        p99s = [s["latency"]["p99_ms"] for s in listeners if s["latency"]["p99_ms"] is not None]
        p50s = [s["latency"]["p50_ms"] for s in listeners if s["latency"]["p50_ms"] is not None]
        sends: dict[str, Any] = next(
            (r["publisher_sends"] for r in results if "publisher_sends" in r), {}
        )
        n_listeners = sum(len(x) for x in procs) - 1
        out[name] = {
            "setup": {
                "nodes": n_listeners + 1,
                "processes": procs,
                "topology": TOPOLOGIES[topology],
                "rate_per_s": spec["rate"],
                "duration_s": duration,
                "grace_s": spec["grace"],
            },
            "summary": {
                "listeners": len(listeners),
                "all_complete": len(listeners) == n_listeners
                and all(s["complete"] for s in listeners),
                "min_completeness_pct": min(
                    (s["completeness_pct"] for s in listeners), default=None
                ),
                "min_gossip_delivery_pct": min(
                    (s["gossip_delivery_pct"] for s in listeners), default=None
                ),
                "total_delivered_by_gossip": sum(s["delivered_by_gossip"] for s in listeners),
                "total_recovered_by_resync": sum(s["recovered_by_resync"] for s in listeners),
                "median_listener_p50_ms": percentile(p50s, 50),
                "worst_listener_p99_ms": max(p99s, default=None),
                "publisher_rpcs_dropped_queue_full": sends.get("dropped_queue_full"),
                "publisher_write_msg": sends.get("write_msg"),
                "listener_connections_to_publisher_lost": sum(
                    1
                    for r in results
                    for connected in r.get("publisher_connected_at_done", {}).values()
                    if not connected
                ),
                "processes_failed": sum(1 for r in results if not r.get("ok")),
                "gossip_streams_reset_by_guard": sum(
                    r.get("log_counts", {}).get(BAD_GOSSIP_STREAM, 0) for r in results
                ),
            },
            "publish": next((r["publish"] for r in results if "publish" in r), None),
            "listeners": listeners,
            "processes": [{k: v for k, v in r.items() if k != "listeners"} for r in results],
            "load_before": load_before,
            "load_after": load(),
        }
    return out


def run_submit(quick: bool, work: Path) -> dict[str, Any]:
    work.mkdir()
    rows = []
    shm = Path("/dev/shm")
    locations = [
        ("disk (ext4), group commit", work / "inbox-disk", True),
        ("disk (ext4), one commit per receipt (before)", work / "inbox-disk-per-receipt", False),
    ]
    if shm.is_dir():
        locations.append(
            ("tmpfs (/dev/shm), group commit", shm / f"flopnet-bench-{os.getpid()}", True)
        )
    for label, inbox_dir, group_commit in locations:
        sub = work / inbox_dir.name
        sub.mkdir()
        try:
            load_before = load()
            validator = spawn(
                "submit-validator",
                f"validator-{inbox_dir.name}",
                {"inbox_dir": str(inbox_dir), "max_seconds": 200, "group_commit": group_commit},
                sub,
            )
            client = spawn(
                "submit-client",
                f"client-{inbox_dir.name}",
                {
                    "workers": 16,
                    "text_bytes": 100_000,
                    "sequential": 100 if quick else 200,
                    "concurrency": [8, 16],
                    "concurrent_requests": 240 if quick else 400,
                    "single_peer_requests": 200,
                },
                sub,
            )
            client_result = collect(client, 240)
            (sub / "stop").touch()
            rows.append(
                {
                    "inbox": label,
                    "load_before": load_before,
                    "client": client_result,
                    "validator": collect(validator, 60),
                }
            )
        finally:
            if inbox_dir.parent == shm:
                shutil.rmtree(inbox_dir, ignore_errors=True)
    return {"rows": rows}


def growth(samples: list[dict[str, Any]], a: int, b: int) -> dict[str, Any]:
    """RSS and task growth of the listener between checkpoints ``a`` and ``b``."""
    by_cycle = {s["cycle"]: s for s in samples}
    if a not in by_cycle or b not in by_cycle:
        return {"missing": f"no sample at cycle {a} or {b}"}
    x, y = by_cycle[a], by_cycle[b]
    return {
        f"rss_at_{a}_mb": round(x["rss"] / 2**20, 2),
        f"rss_at_{b}_mb": round(y["rss"] / 2**20, 2),
        "rss_growth_mb": round((y["rss"] - x["rss"]) / 2**20, 2),
        "rss_growth_per_cycle_kb": round((y["rss"] - x["rss"]) / (b - a) / 1024, 2),
        f"tasks_at_{a}": x["tasks"],
        f"tasks_at_{b}": y["tasks"],
        "tasks_growth_per_cycle": round((y["tasks"] - x["tasks"]) / (b - a), 3),
    }


def run_conn(quick: bool, work: Path) -> dict[str, Any]:
    work.mkdir()
    cycles = 300 if quick else 1000
    checkpoints = [1, 10, 100, 200, 300] if quick else [1, 10, 100, 250, 500, 750, 1000]
    out: dict[str, Any] = {"load_before": load()}
    name = "cycles"
    listener = spawn("conn-listener", name, {"name": name, "max_seconds": 200}, work)
    dialer = spawn(
        "conn-cycles",
        f"cycles-{name}",
        {
            "listener": name,
            "cycles": cycles,
            "sequential": 100,
            "dialers": 16,
            "checkpoints": checkpoints,
            "stop_after_failures": 30,
            "max_seconds": 150,
        },
        work,
    )
    result = collect(dialer, 220)
    (work / f"{name}-stop").touch()
    result["listener_process"] = collect(listener, 30)
    last = max((x["cycle"] for x in result.get("samples", [])), default=0)
    result["growth"] = growth(result.get("samples", []), 100, last)
    # RSS climbs over the first few hundred cycles (allocator pools, caches) and then levels
    # off; the second half shows whether anything still grows per cycle.
    middle = min(checkpoints, key=lambda c: abs(c - last / 2))
    result["growth_second_half"] = growth(result.get("samples", []), middle, last)
    out["cycles"] = result

    listener = spawn("conn-listener", "peers", {"name": "peers", "max_seconds": 200}, work)
    peers = spawn("conn-peers", "conn-peers", {"peers": 50}, work)
    out["idle_peers"] = collect(peers, 220)
    (work / "peers-stop").touch()
    out["idle_peers"]["listener_process"] = collect(listener, 30)
    out["load_after"] = load()
    return out


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "libp2p": version("libp2p"),
        "trio": version("trio"),
        "note": "2-core VM shared with other developers' work; loopback only; no GPU",
        "code": code_version(),
    }


def code_version() -> dict[str, Any]:
    """Which checkout ran: its path, and its git commit with local changes under protocol/ node/."""
    import flopnet.protocol.host

    out: dict[str, Any] = {"protocol_host": flopnet.protocol.host.__file__}
    try:
        out["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "protocol", "node"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        out["uncommitted_in_protocol_or_node"] = [ln[3:] for ln in status.splitlines()]
    except (OSError, subprocess.SubprocessError):
        out["commit"] = os.environ.get("FLOPNET_BENCH_COMMIT", "not a git checkout")
    return out


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        child_main(sys.argv[2], Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 1.5 minutes)")
    parser.add_argument("--only", default="gossip,submit,conn", help="comma-separated parts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="cProfile every child")
    args = parser.parse_args()
    if args.profile is not None:
        global PROFILE_DIR
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE_DIR = args.profile.resolve()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    runners = {"gossip": run_gossip, "submit": run_submit, "conn": run_conn}
    unknown = set(parts) - set(runners)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {
        "benchmark": "protocol (issue 3)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
        "machine": machine(),
        "load_start": load(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flopnet-protocol-bench-") as tmp:
        for part in parts:
            t0 = time.perf_counter()
            print(f"[{part}] running (load {load()})", file=sys.stderr, flush=True)
            report[part] = runners[part](args.quick, Path(tmp) / part)
            report[part]["part_seconds"] = round(time.perf_counter() - t0, 1)
    report["load_end"] = load()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(headline(report), indent=2))
    print(f"written to {args.out}", file=sys.stderr)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of issue #3 against their goals."""
    out: dict[str, Any] = {"load_start": report["load_start"], "load_end": report["load_end"]}
    if "gossip" in report:
        out["gossip"] = {name: report["gossip"][name]["summary"] for name in GOSSIP_RUNS}
    if "submit" in report:
        out["submit"] = [
            {
                "inbox": r["inbox"],
                "sequential_rtt": r["client"].get("sequential", {}).get("rtt"),
                "concurrent": [
                    {k: c[k] for k in ("concurrency", "receipts_per_s", "errors")}
                    | {"p99_ms": c["rtt"]["p99_ms"]}
                    for c in r["client"].get("concurrent", [])
                ],
                "single_peer": r["client"].get("single_peer_16_concurrent"),
                "inbox_add": r["validator"].get("inbox_add"),
                "rows_per_commit": r["validator"].get("rows_per_commit"),
            }
            for r in report["submit"]["rows"]
        ]
    if "conn" in report:
        c = report["conn"]
        out["conn"] = {
            "connect_sequential": c["cycles"].get("connect_sequential"),
            "connected": c["cycles"].get("cycles_connected"),
            "first_failed_cycle": c["cycles"].get("first_failed_cycle"),
            "growth": c["cycles"].get("growth"),
            "growth_second_half": c["cycles"].get("growth_second_half"),
            "rss_per_idle_peer_kb": round(c["idle_peers"].get("rss_per_peer_bytes", 0) / 1024, 1),
            "tasks_per_idle_peer": c["idle_peers"].get("tasks_per_peer"),
        }
    return out


if __name__ == "__main__":
    main()
