"""The worker's outbox: what it owes survives closing the file (a crash), judged rows go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flopnet.node.worker.outbox import Outbox
from flopnet.protocol.errors import FlopnetError


def test_outbox_keeps_what_is_owed_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "worker.sqlite"
    box = Outbox(path)
    box.claimed(b"a" * 32, b"lease-a", 100.0)
    box.claimed(b"b" * 32, b"lease-b", 100.0)
    box.claimed(b"c" * 32, b"lease-c", 100.0)
    box.claimed(b"a" * 32, b"other", 5.0)  # a second grant of the same id changes nothing
    box.finished(b"a" * 32, b"sealed-a")
    box.judged(b"c" * 32)
    box.close()

    box = Outbox(path)  # as after a crash: only committed rows are there
    owed = {p.lease_id: p for p in box.pending()}
    assert set(owed) == {b"a" * 32, b"b" * 32}
    assert owed[b"a" * 32].submission == b"sealed-a" and owed[b"a" * 32].lease == b"lease-a"
    assert owed[b"b" * 32].submission is None
    box.abandon(b"a" * 32)  # finished work is never abandoned, only unfinished leases
    box.abandon(b"b" * 32)
    assert [p.lease_id for p in box.pending()] == [b"a" * 32]
    assert box.prune(before=float("inf")) == 2  # the two judged rows
    assert os.stat(path).st_mode & 0o077 == 0  # private, like every node file
    box.close()


def test_an_unwritable_outbox_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "worker.sqlite").mkdir()
    with pytest.raises(FlopnetError, match=r"cannot create .*worker\.sqlite"):
        Outbox(tmp_path / "worker.sqlite")
