"""The validator's durable inbox: group commit, resends, failures, and a SIGKILLed process.

Real SQLite files throughout; the crash test runs the inbox in a real child process.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest
import trio
from test_ledger_crash import kill_after_lines

from flopnet.node.validator.inbox import Inbox, InboxError


def sid(i: int) -> bytes:
    return i.to_bytes(32, "big")


def stored_ids(path: Path) -> set[bytes]:
    """Submission ids in the file, read through a connection of its own (what a restart sees)."""
    conn = sqlite3.connect(path)
    try:
        return {bytes(r[0]) for r in conn.execute("SELECT submission_id FROM inbox")}
    finally:
        conn.close()


def test_concurrent_adds_share_commits_and_are_durable_on_return(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    n = 50
    results: dict[int, bool] = {}
    seen_on_return: dict[int, bool] = {}

    async def submit(i: int) -> None:
        results[i] = await inbox.add_durable(sid(i), b"L" * 16, f"peer-{i}", b"e" * 1000)
        # The receipt is built from the trio thread's connection right after the return.
        seen_on_return[i] = inbox.received_at(sid(i)) is not None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(submit, i)

    trio.run(main)
    assert results == {i: True for i in range(n)}
    assert seen_on_return == {i: True for i in range(n)}
    # The first caller commits alone; the 49 that queued while its commit was in the worker
    # thread share the next transaction.
    assert inbox.commits == 2
    assert inbox.rows_committed == n
    assert inbox.queue_length() == n
    inbox.close()
    assert stored_ids(path) == {sid(i) for i in range(n)}


def test_resends_are_reported_as_before(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    inbox.add(sid(1), b"L" * 16, "p", b"one")  # the synchronous path still works beside it
    first_at = inbox.received_at(sid(1))
    outcomes: list[tuple[int, bool]] = []

    async def submit(i: int) -> None:
        outcomes.append((i, await inbox.add_durable(sid(i), b"L" * 16, "p", b"again")))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in (1, 2, 2, 3, 3):  # a resend of a stored row, and two resends in one batch
                nursery.start_soon(submit, i)

    trio.run(main)
    assert sorted(outcomes) == [(1, False), (2, False), (2, True), (3, False), (3, True)]
    assert inbox.received_at(sid(1)) == first_at  # a resend changes nothing stored
    assert inbox.add(sid(2), b"L" * 16, "p", b"x") is False
    assert inbox.next_queued() is not None and inbox.next_queued().envelope == b"one"  # type: ignore[union-attr]
    assert inbox.queue_length() == 3
    inbox.close()


def test_a_failed_commit_fails_its_whole_batch_and_the_next_batch_still_commits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON inbox WHEN NEW.peer = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    conn.commit()
    conn.close()
    outcomes: dict[int, str] = {}

    async def submit(i: int, peer: str) -> None:
        try:
            await inbox.add_durable(sid(i), b"L" * 16, peer, b"e")
            outcomes[i] = "stored"
        except InboxError as exc:
            outcomes[i] = f"error: {exc}"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, 0, "ok")  # commits alone, first
            await trio.sleep(0)  # so that it leads
            for i, peer in ((1, "ok"), (2, "boom"), (3, "ok")):
                nursery.start_soon(submit, i, peer)  # one batch with a refused row
        await submit(4, "ok")  # the lead was not stranded by the failure

    trio.run(main)
    assert outcomes[0] == "stored" and outcomes[4] == "stored"
    for i in (1, 2, 3):
        assert outcomes[i].startswith("error: inbox commit of 3 rows failed"), outcomes[i]
    assert stored_ids(path) == {sid(0), sid(4)}  # all or nothing per transaction
    inbox.close()


def test_a_cancelled_caller_neither_strands_the_queue_nor_loses_its_row(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    cancelled: list[bool] = []
    release = threading.Event()

    async def impatient(queued: trio.Event, holder: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            holder.append(scope)
            queued.set()
            await inbox.add_durable(sid(2), b"L" * 16, "p", b"e")
        cancelled.append(scope.cancelled_caught)

    async def main() -> None:
        # One worker thread in all, held busy: the leader's commit waits for it.
        trio.to_thread.current_default_thread_limiter().total_tokens = 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, release.wait)
            await trio.sleep(0)
            nursery.start_soon(inbox.add_durable, sid(1), b"L" * 16, "p", b"e")
            await trio.sleep(0)  # the first caller leads
            queued = trio.Event()
            holder: list[trio.CancelScope] = []
            nursery.start_soon(impatient, queued, holder)
            await queued.wait()
            await trio.sleep(0)  # the impatient caller is queued behind the leader
            holder[0].cancel()
            await trio.sleep(0)
            release.set()  # the leader's commit proceeds
        with trio.fail_after(30):  # a stranded lead would hang here
            assert await inbox.add_durable(sid(3), b"L" * 16, "p", b"e") is True

    trio.run(main)
    assert cancelled == [True]  # it got no answer...
    assert stored_ids(path) == {sid(1), sid(2), sid(3)}  # ...but its row was committed anyway
    # Its row went in its own commit after the leader's, made by the same leader.
    assert inbox.commits == 3
    inbox.close()


# ---------------------------------------------------------------------------------------------
# A real process SIGKILLed while many concurrent submitters are being acknowledged

CRASH_CHILD = """
import sys
from pathlib import Path
import trio
from flopnet.node.validator.inbox import Inbox

inbox = Inbox(Path(sys.argv[1]))
start = int(sys.argv[2])

async def submitter(k: int) -> None:
    i = start + k
    while True:
        sid = i.to_bytes(32, "big")
        await inbox.add_durable(sid, b"L" * 16, f"peer-{k}", bytes([k]) * 50_000)
        # Printed only once add_durable returned: this is the acknowledgement.
        print(sid.hex(), inbox.commits, inbox.rows_committed, flush=True)
        i += 16

async def main() -> None:
    async with trio.open_nursery() as nursery:
        for k in range(16):
            nursery.start_soon(submitter, k)

trio.run(main)
"""


@pytest.mark.timeout(180)
def test_sigkill_loses_no_acknowledged_submission(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite"
    rng = random.Random(3)
    acked: set[bytes] = set()
    shared_commits = False
    for run, wanted in enumerate((30, 120, 300)):
        lines = kill_after_lines([CRASH_CHILD, str(path), str(run * 10_000_000)], wanted, rng)
        # A line cut short by the kill is an acknowledgement that was never completed.
        for line in (x for x in lines if x.endswith("\n")):
            hex_id, commits, rows = line.split()
            acked.add(bytes.fromhex(hex_id))
            shared_commits = shared_commits or int(rows) > int(commits)
        stored = stored_ids(path)
        lost = acked - stored
        assert not lost, f"{len(lost)} acknowledged submissions lost after kill {run}"
    assert shared_commits  # the child really grouped rows into shared commits
    # The file is whole: it opens, every row reads back, and a new add still commits.
    inbox = Inbox(path)
    assert inbox.queue_length() == len(stored_ids(path)) >= len(acked)
    assert inbox.add(sid(2**200), b"L" * 16, "p", b"e") is True
    inbox.close()


def test_the_trio_threads_writes_go_on_while_batches_commit(tmp_path: Path) -> None:
    """Verdicts and plain adds on the trio thread's connection interleave with group commits.

    (The lock of a batch must never be held across a checkpoint of the loop: a write on the
    trio thread would then wait out the busy timeout and fail.)
    """
    path = tmp_path / "inbox.sqlite"
    inbox = Inbox(path)
    inbox.add(sid(0), b"L" * 16, "p", b"first")

    async def submitter(k: int) -> None:
        for j in range(5):
            await inbox.add_durable(sid(100 + 10 * k + j), b"L" * 16, "p", b"e" * 10_000)

    async def verdicts() -> None:
        for j in range(40):
            inbox.set_verdict(sid(0), f"verdict {j}".encode())
            inbox.add(sid(1000 + j), b"L" * 16, "p", b"sync")
            await trio.sleep(0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(submitter, k)
            nursery.start_soon(verdicts)

    trio.run(main)
    assert inbox.verdict(sid(0)) == b"verdict 39"
    assert inbox.commits >= 2
    inbox.close()
    assert len(stored_ids(path)) == 1 + 40 + 40
