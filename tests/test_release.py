"""The signed lease release: the lease book's rule (pure), the wire record's bounds, and the
publisher's handler (only the lease's worker may release it; the sample re-opens at once and
is announced again; a restart keeps the release)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.tokenizer import ByteTokenizer
from flopnet.node.publisher.leases import Denied, Grant, LeaseBook
from flopnet.node.publisher.publisher import Publisher
from flopnet.node.publisher.store import PublisherStore
from flopnet.node.tasks import builtin_tasks
from flopnet.protocol.catalog import RELEASE, RPCS
from flopnet.protocol.envelope import Opened, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import MAX_ENVELOPE_BYTES, Claim, Lease, LeaseRelease, Refusal

W1, W2 = b"\x01" * 32, b"\x02" * 32
PUBLISHER = Identity(b"\x11" * 32)
WORKER = Identity(b"\x22" * 32)
MALLORY = Identity(b"\x33" * 32)
NET = "release"


def test_a_released_lease_reopens_at_once_without_a_lapse() -> None:
    book = LeaseBook(lease_seconds=100, release_cooldown_s=5)
    book.add_task("t", samples=1)
    decision = book.claim("t", W1, 0.0)
    assert isinstance(decision, Grant)
    book.record_lease(decision, b"a", W1)
    assert book.release(b"a", W2, 1.0) == Denied(
        "not_your_lease", "only the lease's own worker may release it"
    )
    assert book.release(b"?", W1, 1.0) == Denied(
        "unknown_lease", "this publisher granted no lease with that id"
    )
    assert book.release(b"a", W1, 1.0) == ("t", 0)
    assert book.counts() == {"open": 1, "leased": 0, "done": 0}
    standing = book.standing(W1)
    assert (standing.active, standing.released, standing.lapsed) == (0, 1, 0)
    # Another worker takes it at once; the releaser waits out its short cool-down.
    assert isinstance(book.claim("t", W2, 1.0), Grant)
    cooling = book.claim("t", W1, 2.0)
    assert isinstance(cooling, Denied) and cooling.code == "cooling_down"
    # Releasing twice, or after the sample moved on, changes nothing.
    assert book.release(b"a", W1, 3.0) is None


def test_a_settled_lease_cannot_be_released() -> None:
    book = LeaseBook(lease_seconds=100)
    book.add_task("t", samples=1)
    decision = book.claim("t", W1, 0.0)
    assert isinstance(decision, Grant)
    book.record_lease(decision, b"a", W1)
    book.settle(b"a", accepted=True)
    assert book.release(b"a", W1, 1.0) is None
    assert book.counts()["done"] == 1


def test_the_release_record_is_declared_once_and_bounded() -> None:
    assert RELEASE in RPCS and RELEASE.request is LeaseRelease
    assert RELEASE.limits.max_request == MAX_ENVELOPE_BYTES["lease_release"] == 1024
    good = LeaseRelease(
        version=1,
        lease_id=b"\0" * 16,
        task_id="t",
        sample_index=0,
        reason="paused",
        released_at=1.0,
    )
    assert open_envelope(seal(good, WORKER, NET), NET).message == good
    for bad in (
        {"lease_id": b"\0" * 15},
        {"sample_index": 64},
        {"reason": "x" * 33},
        {"released_at": float("nan")},
        {"task_id": "t" * 129},
    ):
        fields = {**good.__dict__, **bad}
        with pytest.raises((MalformedMessage, ValueError)):
            open_envelope(seal(LeaseRelease(**fields), WORKER, NET), NET)


def _publisher(tmp_path: Path, store: PublisherStore | None = None) -> Publisher:
    net = NetworkParams(
        network_id=NET,
        publishers=(PUBLISHER.public_key.hex(),),
        validators=(PUBLISHER.public_key.hex(),),
    )
    config = NodeConfig(roles=("publisher",), data_dir=tmp_path, network=net, tasks=3)
    host = P2PHost(PUBLISHER, network_id=NET)
    return Publisher(config, PUBLISHER, host, ByteTokenizer(), builtin_tasks(3), store)


def _opened(identity: Identity, record: Claim | LeaseRelease) -> Opened:
    return open_envelope(seal(record, identity, NET), NET)


def _release(lease: Lease, reason: str = "paused", **changes: object) -> LeaseRelease:
    fields: dict[str, object] = {
        "version": 1,
        "lease_id": lease.lease_id,
        "task_id": lease.task_id,
        "sample_index": lease.sample_index,
        "reason": reason,
        "released_at": time.time(),
    }
    fields.update(changes)
    return LeaseRelease(**fields)  # type: ignore[arg-type]


def test_the_publisher_reopens_a_released_lease_and_keeps_it_across_a_restart(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        store = PublisherStore(tmp_path / "publisher.sqlite")
        publisher = _publisher(tmp_path, store)
        task_id = next(iter(publisher.tasks))
        claim = Claim(version=1, task_id=task_id, nonce=b"\1" * 16, claimed_at=time.time())
        lease = await publisher.handle_claim(WORKER.peer_id, _opened(WORKER, claim))
        assert isinstance(lease, Lease)
        penalties: list[str] = []

        async def penalize(peer: str, violation: object) -> None:
            penalties.append(peer)

        publisher.host.penalize = penalize  # type: ignore[method-assign]
        # Another worker may not hand it back: refused and charged.
        theirs = await publisher.handle_release(MALLORY.peer_id, _opened(MALLORY, _release(lease)))
        assert isinstance(theirs, Refusal) and theirs.code == "not_your_lease"
        wrong = _release(lease, sample_index=5)
        refused = await publisher.handle_release(WORKER.peer_id, _opened(WORKER, wrong))
        assert isinstance(refused, Refusal) and refused.code == "wrong_lease"
        odd = await publisher.handle_release(
            WORKER.peer_id, _opened(WORKER, _release(lease, reason="bored"))
        )
        assert isinstance(odd, Refusal) and odd.code == "malformed"
        assert penalties == [MALLORY.peer_id, WORKER.peer_id]
        assert publisher.book.counts()["leased"] == 1
        # Its own worker may: the sample is open again and queued for a new announcement.
        ack = await publisher.handle_release(WORKER.peer_id, _opened(WORKER, _release(lease)))
        assert ack.reopened and ack.lease_id == lease.lease_id  # type: ignore[union-attr]
        assert publisher.book.counts() == {"open": 3, "leased": 0, "done": 0}
        assert task_id in publisher._to_announce
        assert publisher.snapshot()["leases_released"] == 1
        again = await publisher.handle_release(WORKER.peer_id, _opened(WORKER, _release(lease)))
        assert not again.reopened  # type: ignore[union-attr]
        store.close()
        # A restart reads the release back: the lease is not restored as held.
        second = _publisher(tmp_path, PublisherStore(tmp_path / "publisher.sqlite"))
        assert second.book.counts() == {"open": 3, "leased": 0, "done": 0}
        assert second.book.standing(WORKER.public_key).active == 0
        assert second.store is not None
        second.store.close()

    trio.run(main)
