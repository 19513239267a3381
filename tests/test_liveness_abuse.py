"""Pure protocol decisions: announcement gaps, peer states, backoff, rate limits, scores, bans."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.node.publisher.announcements import MAX_RANGE, AnnouncementLog, SeqTracker
from flopnet.protocol.guard import PeerGuard, Violation
from flopnet.protocol.peers import Backoff, PeerState, PeerTable


def test_log_serves_ranges_and_evicts() -> None:
    log = AnnouncementLog(capacity=5)
    for seq in range(1, 9):
        log.append(seq, f"a{seq}".encode())
    assert log.head == 8
    assert log.range(1, 10) == [b"a4", b"a5", b"a6", b"a7", b"a8"]  # 1-3 were evicted
    assert log.range(6, 2) == [b"a6", b"a7"]
    assert log.range(9, 5) == []
    with pytest.raises(ValueError):
        log.append(10, b"skipped 9")
    assert len(AnnouncementLog().range(1, 10_000)) == 0
    big = AnnouncementLog()
    for seq in range(1, 1001):
        big.append(seq, b"x")
    assert len(big.range(1, 10_000)) == MAX_RANGE


@given(st.lists(st.integers(1, 60), max_size=80), st.integers(0, 60))
@settings(max_examples=200, deadline=None)
def test_tracker_finds_exactly_the_missing(seen: list[int], head: int) -> None:
    tracker = SeqTracker()
    for seq in seen:
        tracker.saw(seq)
    tracker.head_is(head)
    top = max([head, *seen])
    missing = sorted(set(range(1, top + 1)) - set(seen))
    assert tracker.gap_count() == len(missing)
    assert tracker.missing_from() == (missing[0] if missing else None)
    for seq in missing:  # a resync fills every gap
        assert tracker.saw(seq)
    assert tracker.missing_from() is None and tracker.contiguous == top


def test_tracker_reports_duplicates() -> None:
    tracker = SeqTracker()
    assert tracker.saw(1) and not tracker.saw(1)
    assert tracker.saw(3) and not tracker.saw(3)
    assert tracker.missing_from() == 2


def test_peer_states_follow_silence() -> None:
    table = PeerTable(heartbeat_interval=1.0)
    table.heard("p", now=0.0)
    table.connected("p", now=0.0)
    assert table.tick(2.0) == []
    assert table.tick(3.0) == [("p", PeerState.HEALTHY, PeerState.UNHEALTHY)]
    assert table.tick(6.5) == [("p", PeerState.UNHEALTHY, PeerState.GONE)]
    assert table.in_state(PeerState.GONE) == ["p"]
    table.heard("p", now=7.0)  # it came back
    assert table.tick(7.1) == [("p", PeerState.GONE, PeerState.HEALTHY)]
    snap = table.snapshot(7.1)
    assert snap[0]["peer_id"] == "p" and snap[0]["state"] == "healthy"


def test_backoff_grows_to_a_cap_and_resets() -> None:
    rng = random.Random(1)
    backoff = Backoff(base=0.5, factor=2.0, cap=4.0)
    delays = [backoff.next_delay(rng) for _ in range(6)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay(rng) <= 0.5


def test_rate_limit_and_recovery() -> None:
    guard = PeerGuard(rate_per_s=10.0, burst=5.0)
    assert all(guard.allow("p", "/claim", 0.0) for _ in range(5))
    assert not guard.allow("p", "/claim", 0.0)  # bucket empty
    assert guard.allow("q", "/claim", 0.0)  # other peers are unaffected
    assert guard.allow("p", "/submit", 0.0)  # and other protocols
    assert guard.allow("p", "/claim", 0.2)  # refilled at 10 tokens/s


def test_misbehaviour_leads_to_a_ban_that_expires() -> None:
    guard = PeerGuard(ban_threshold=-100.0, ban_seconds=60.0, recovery_per_s=0.0)
    for _ in range(3):
        assert not guard.penalize("bad", Violation.BAD_SIGNATURE, 1.0)
    assert not guard.penalize("bad", Violation.MALFORMED, 1.0)  # -95
    assert guard.penalize("bad", Violation.BAD_SIGNATURE, 1.0)  # -120: banned now
    assert guard.is_banned("bad", 30.0) and not guard.is_banned("good", 30.0)
    assert not guard.is_banned("bad", 61.5)
    snap = guard.snapshot(30.0)
    assert snap[0]["peer_id"] == "bad" and snap[0]["violations"]["bad_signature"] == 4


def test_scores_recover_with_good_behaviour() -> None:
    guard = PeerGuard(ban_threshold=-100.0, recovery_per_s=1.0)
    guard.penalize("p", Violation.MALFORMED, 0.0)  # -20
    guard.penalize("p", Violation.MALFORMED, 100.0)  # recovered to 0 first, then -20
    assert not guard.is_banned("p", 100.0)
    assert guard.snapshot(100.0)[0]["score"] == -20.0


def test_replay_memory_is_bounded() -> None:
    guard = PeerGuard(nonce_memory=3)
    assert not guard.is_replay(b"a")
    assert guard.is_replay(b"a")
    for key in (b"b", b"c", b"d"):
        guard.is_replay(key)
    assert not guard.is_replay(b"a")  # evicted, so it reads as new


def test_violations_of_equal_cost_keep_their_own_names() -> None:
    """Equal costs once made enum aliases: a wrong signer was counted (and a ban logged) as a
    bad signature, an oversized frame as malformed."""
    guard = PeerGuard(recovery_per_s=0.0)
    for violation in Violation:
        guard.penalize("p", violation, 1.0)
    (snap,) = guard.snapshot(1.0)
    assert snap["violations"] == {v.value: 1 for v in Violation}
    assert len({v.value for v in Violation}) == len(list(Violation)) == 7
    assert snap["score"] == -sum(v.cost for v in Violation)
