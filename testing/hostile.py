"""Hostile peers that speak flopnet's protocol, for tests and benchmarks (as trio ships
``trio.testing``): the attacks of the threat model (``docs/security.md``) as reusable code.

Each attack is an async function that runs real libp2p hosts with throwaway identities against a
network and returns what it saw (leases it got, refusals, receipts, notices that it was banned),
so a test can check that the attack failed and that its cost fell on the attacker. The same
attacks run as a separate OS process::

    python -m flopnet.testing.hostile hoard --manifest M --bootstrap ADDR --identities 20 \\
        --seconds 20 --out result.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from flopnet.proof.params import PROOF_BYTES
from flopnet.protocol.catalog import ANNOUNCEMENTS, CLAIM, SUBMIT, heartbeat_topic, ledger_topic
from flopnet.protocol.envelope import open_envelope, seal
from flopnet.protocol.errors import FlopnetError
from flopnet.protocol.host import Notice, P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.manifest import load_manifest
from flopnet.protocol.messages import (
    AnnouncementRange,
    AnnouncementRangeRequest,
    Claim,
    Heartbeat,
    Lease,
    Refusal,
    Submission,
    SubmissionReceipt,
    TaskAnnouncement,
)


@dataclass(frozen=True)
class Target:
    """The network under attack: its id, where to connect, and who publishes and validates.

    ``on_ready`` is called once the attack's identities are up and connected (a benchmark
    starts its clock there).
    """

    network_id: str
    bootstrap: str
    publishers: tuple[bytes, ...]
    validators: tuple[bytes, ...]
    on_ready: Callable[[], None] | None = field(default=None, compare=False)

    @classmethod
    def from_manifest(
        cls, manifest: Path, bootstrap: str, on_ready: Callable[[], None] | None = None
    ) -> Target:
        """A target from a network manifest file and one peer's multiaddr."""
        m = load_manifest(manifest)
        return cls(m.network_id, bootstrap, tuple(m.publishers), tuple(m.validators), on_ready)

    @property
    def publisher_peer(self) -> str:
        return peer_id_from_public_key(self.publishers[0])

    @property
    def validator_peer(self) -> str:
        return peer_id_from_public_key(self.validators[0])


@dataclass
class Outcome:
    """What an attack saw."""

    attack: str
    identities: int = 0
    requests: int = 0
    leases: int = 0
    max_leases_held: int = 0
    receipts: int = 0
    published: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    banned_identities: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0  # when the identities were up (monotonic clock)

    def elapsed(self) -> float:
        """Seconds since the attack started (0 before)."""
        return time.monotonic() - self.started if self.started else 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("started")
        out["refusals"], out["errors"] = dict(self.refusals), dict(self.errors)
        return out


@contextlib.asynccontextmanager
async def hostile_peers(
    target: Target, count: int, outcome: Outcome
) -> AsyncIterator[list[P2PHost]]:
    """``count`` fresh identities, each its own running host connected to the target; every
    notice they get (a ban) is recorded in ``outcome``."""
    hosts = [P2PHost(Identity.generate(), network_id=target.network_id) for _ in range(count)]
    outcome.identities = count
    banned: set[str] = set()

    def recorder(host: P2PHost) -> Callable[[Notice], None]:
        def on_notice(notice: Notice) -> None:
            outcome.notices.append(
                {"peer": notice.peer, "code": notice.code, "reason": notice.reason}
            )
            if notice.code == "banned":
                banned.add(host.peer_id)
                outcome.banned_identities = len(banned)

        return on_notice

    async with contextlib.AsyncExitStack() as stack:
        for host in hosts:
            host.on_notice.append(recorder(host))
            await stack.enter_async_context(host.running())
            with contextlib.suppress(FlopnetError):
                await host.connect(target.bootstrap)
        outcome.started = time.monotonic()
        if target.on_ready is not None:
            target.on_ready()
        yield hosts


async def announced_tasks(host: P2PHost, target: Target) -> list[str]:
    """Every task the publisher has announced, read from its announcement log."""
    request = AnnouncementRangeRequest(version=1, from_seq=1, limit=512)
    reply = await host.call(target.publisher_peer, ANNOUNCEMENTS, request)
    tasks: list[str] = []
    for item in reply.expect(AnnouncementRange).items:
        task = open_envelope(item, target.network_id, expected=TaskAnnouncement)
        task_id = task.expect(TaskAnnouncement).task_id
        if task_id not in tasks:
            tasks.append(task_id)
    return tasks


async def _claim(host: P2PHost, target: Target, task_id: str, outcome: Outcome) -> bytes | None:
    claim = Claim(version=1, task_id=task_id, nonce=os.urandom(16), claimed_at=time.time())
    outcome.requests += 1
    try:
        opened = await host.call(target.publisher_peer, CLAIM, claim)
    except FlopnetError as exc:
        outcome.errors[type(exc).__name__] += 1
        return None
    if isinstance(opened.message, Refusal):
        outcome.refusals[opened.message.code] += 1
        return None
    outcome.leases += 1
    return opened.raw


async def _swarm(
    target: Target,
    identities: int,
    outcome: Outcome,
    run: Callable[[P2PHost, list[str]], Awaitable[None]],
) -> Outcome:
    """Run ``run(host, tasks)`` for each of ``identities`` fresh peers, over the announced tasks."""
    async with hostile_peers(target, identities, outcome) as hosts:
        tasks = await announced_tasks(hosts[0], target)
        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(run, host, tasks)
    outcome.seconds = outcome.elapsed()
    return outcome


async def _claim_rounds(
    target: Target,
    identities: int,
    outcome: Outcome,
    seconds: float,
    on_lease: Callable[[P2PHost, bytes], Awaitable[None]],
    pause: float,
) -> Outcome:
    """Each identity claims round after round over the announced tasks (in its own order) until
    ``seconds`` are up, handing every lease it gets to ``on_lease``."""

    async def run(host: P2PHost, tasks: list[str]) -> None:
        tasks = random.sample(tasks, len(tasks))  # the identities spread over the tasks
        while outcome.elapsed() < seconds:
            for task_id in tasks:
                if outcome.elapsed() >= seconds:
                    return
                lease_bytes = await _claim(host, target, task_id, outcome)
                if lease_bytes is not None:
                    await on_lease(host, lease_bytes)
            await trio.sleep(pause)

    return await _swarm(target, identities, outcome, run)


async def hoard(target: Target, identities: int, seconds: float) -> Outcome:
    """Sybil lease hoarding: fresh identities claim every task they can, as fast as they can,
    and never submit (the attack that once took every open task and got honest workers banned)."""
    outcome = Outcome("hoard")
    held: list[tuple[float, bytes]] = []  # (expires_at, lease) of every lease we hold

    async def hold(host: P2PHost, lease_bytes: bytes) -> None:
        lease = open_envelope(lease_bytes, target.network_id, expected=Lease)
        held.append((lease.expect(Lease).expires_at, lease_bytes))
        now = time.time()
        live = sum(1 for expires, _ in held if expires > now)
        outcome.max_leases_held = max(outcome.max_leases_held, live)

    return await _claim_rounds(target, identities, outcome, seconds, hold, pause=0.0)


def forged_lease(attacker: Identity, target: Target, task_id: str = "forged") -> bytes:
    """A lease for ``task_id`` that the attacker signed itself (no publisher granted it)."""
    now = time.time()
    lease = Lease(
        version=1,
        lease_id=os.urandom(16),
        task_id=task_id,
        task_type="math",
        sample_index=0,
        worker=attacker.public_key,
        validator=target.validators[0],
        seed=1,
        prompt_ids=(1, 2, 3),
        max_new_tokens=64,
        temperature=0.6,
        top_p=0.95,
        issued_at=now,
        expires_at=now + 600,
    )
    return seal(lease, attacker, target.network_id)


def garbage_submission(worker: Identity, lease_bytes: bytes, network_id: str) -> bytes:
    """A well-formed submission of random tokens with proofs of the right size (of nothing):
    it passes every cheap check, so judging it costs a validator a prefill."""
    lease = open_envelope(lease_bytes, network_id, expected=Lease).expect(Lease)
    tokens = lease.max_new_tokens
    rng = os.urandom(tokens)
    submission = Submission(
        version=1,
        lease=lease_bytes,
        token_ids=tuple(1 + b % 200 for b in rng),
        text="garbage",
        finish_reason="length",
        proofs=tuple(os.urandom(PROOF_BYTES) for _ in range(-(-tokens // 32))),
        generation_seconds=0.0,
    )
    return seal(submission, worker, network_id)


async def _submit(host: P2PHost, target: Target, data: bytes, outcome: Outcome) -> None:
    outcome.requests += 1
    try:
        opened = await host.call(target.validator_peer, SUBMIT, data)
    except FlopnetError as exc:
        outcome.errors[type(exc).__name__] += 1
        return
    if isinstance(opened.message, Refusal):
        outcome.refusals[opened.message.code] += 1
    elif isinstance(opened.message, SubmissionReceipt):
        outcome.receipts += 1


async def forged_submissions(target: Target, count: int, rate: float) -> Outcome:
    """Submissions that carry leases the attacker signed itself (they once got receipts, ledger
    entries and inbox space for nothing)."""
    outcome = Outcome("forged_submissions")
    async with hostile_peers(target, 1, outcome) as (host,):
        for _ in range(count):
            data = garbage_submission(
                host.identity, forged_lease(host.identity, target), target.network_id
            )
            await _submit(host, target, data, outcome)
            await trio.sleep(1.0 / rate)
    outcome.seconds = outcome.elapsed()
    return outcome


async def garbage(target: Target, identities: int, seconds: float) -> Outcome:
    """Sybils claim real leases and submit garbage with well-formed proofs: each one costs the
    validator an audit prefill, and the attacker nothing but an identity."""
    outcome = Outcome("garbage")

    async def submit(host: P2PHost, lease_bytes: bytes) -> None:
        data = garbage_submission(host.identity, lease_bytes, target.network_id)
        await _submit(host, target, data, outcome)

    return await _claim_rounds(target, identities, outcome, seconds, submit, pause=0.05)


async def replay_gossip(target: Target, seconds: float, rate: float) -> Outcome:
    """Re-publish other nodes' valid ledger entries and heartbeats as one's own, at ``rate``
    per second (every node used to verify each copy in full)."""
    outcome = Outcome("replay_gossip")
    captured: list[tuple[str, bytes]] = []
    async with hostile_peers(target, 1, outcome) as (host,):
        topics = [ledger_topic(target.network_id), heartbeat_topic(target.network_id)]
        for topic in topics:

            async def keep(_author: str, data: bytes, topic: str = topic) -> None:
                if len(captured) < 256:
                    captured.append((topic, data))

            # Our own host would refuse to hand us copies relayed as someone else's: we collect
            # what its authors publish (they are honest), to replay it as ours.
            await host.subscribe(topic, keep)
        with trio.move_on_after(min(10.0, seconds)):
            while not captured:
                await trio.sleep(0.1)
        while captured and outcome.elapsed() < seconds:
            topic, data = captured[outcome.published % len(captured)]
            with contextlib.suppress(Exception):
                await host.publish(topic, data)
                outcome.published += 1
            await trio.sleep(1.0 / rate)
    outcome.seconds = outcome.elapsed()
    return outcome


async def heartbeat_flood(target: Target, seconds: float, rate: float) -> Outcome:
    """Fresh, validly signed heartbeats of one's own at ``rate`` per second."""
    outcome = Outcome("heartbeat_flood")
    async with hostile_peers(target, 1, outcome) as (host,):
        topic = heartbeat_topic(target.network_id)
        while outcome.elapsed() < seconds:
            beat = Heartbeat(
                version=1,
                roles=("worker",),
                software="hostile",
                gpus=0,
                gpu_names=(),
                load=0.0,
                free_slots=1,
                announce_seq=0,
                sent_at=time.time(),
            )
            with contextlib.suppress(Exception):
                await host.publish(topic, seal(beat, host.identity, target.network_id))
                outcome.published += 1
            await trio.sleep(1.0 / rate)
    outcome.seconds = outcome.elapsed()
    return outcome


ATTACKS = ("hoard", "forged", "garbage", "replay", "heartbeats")


async def run_attack(name: str, target: Target, args: argparse.Namespace) -> Outcome:
    """Run one attack by name (see :data:`ATTACKS`)."""
    if name == "hoard":
        return await hoard(target, args.identities, args.seconds)
    if name == "forged":
        return await forged_submissions(target, int(args.seconds * args.rate), args.rate)
    if name == "garbage":
        return await garbage(target, args.identities, args.seconds)
    if name == "replay":
        return await replay_gossip(target, args.seconds, args.rate)
    if name == "heartbeats":
        return await heartbeat_flood(target, args.seconds, args.rate)
    raise ValueError(f"unknown attack {name!r}; one of {', '.join(ATTACKS)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m flopnet.testing.hostile ATTACK ...``: one attack, its outcome as JSON."""
    parser = argparse.ArgumentParser(prog="python -m flopnet.testing.hostile")
    parser.add_argument("attack", choices=ATTACKS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True, help="multiaddr of the publisher/validator")
    parser.add_argument("--identities", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--out", type=Path, help="write the outcome here (JSON)")
    args = parser.parse_args(argv)
    # One line on stderr when the attack really starts (its identities are up): a benchmark's clock.
    target = Target.from_manifest(
        args.manifest, args.bootstrap, lambda: print("attacking", file=sys.stderr, flush=True)
    )
    outcome = trio.run(run_attack, args.attack, target, args)
    text = json.dumps(outcome.as_json(), indent=1)
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
