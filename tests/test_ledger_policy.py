"""Credit policy (pending, final, void), adaptive auditing, and the leaderboard applying them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ledger import ALICE, BOB, CAROL, NET, OTHER_VALIDATOR, VALIDATOR, credit

from flopnet.ledger.kinds import HARD, SOFT, AuditBody, InvalidationBody
from flopnet.ledger.leaderboard import leaderboard, window_sums
from flopnet.ledger.policy import (
    MIN_SPOT_RATE,
    AuditPolicy,
    AuditState,
    Credit,
    CreditState,
    Invalidation,
    after_audit,
    audit_draw,
    audit_states,
    credit_state,
    is_final,
    voids,
)
from flopnet.ledger.store import LedgerStore
from flopnet.protocol.errors import LedgerError
from flopnet.protocol.identity import Identity

L = 3600.0  # lock window of these tests
T = 1_700_000_000.0
V1, V2 = VALIDATOR.public_key, OTHER_VALIDATOR.public_key
A, B = ALICE.public_key, BOB.public_key


def inv(
    severity: str, ts: float, who: bytes = A, target: tuple[bytes, int] = (V1, 0)
) -> Invalidation:
    return Invalidation(who, ts, severity, target[0], target[1])


# ---------------------------------------------------------------------------------------------
# Pending, final, void


def test_pending_until_the_lock_window_closes() -> None:
    c = Credit(V1, 0, A, T, flops=10)
    assert credit_state(c, [], T, L) is CreditState.PENDING
    assert credit_state(c, [], T + L - 0.001, L) is CreditState.PENDING
    assert credit_state(c, [], T + L, L) is CreditState.FINAL
    assert is_final(T, T + L, L) and not is_final(T, T + L - 1, L)
    assert credit_state(c, [], T, 0.0) is CreditState.FINAL  # no window: final at once


def test_hard_invalidation_voids_all_pending_credit_of_the_contributor() -> None:
    pending_v1 = Credit(V1, 5, A, T + 100)
    pending_v2 = Credit(V2, 9, A, T + 200)  # another validator's chain: voided too
    old = Credit(V1, 1, A, T - L - 1)  # final by the time of the invalidation
    later = Credit(V1, 6, A, T + 400)  # after the invalidation
    bob = Credit(V1, 7, B, T + 100)
    hard = inv(HARD, T + 300)
    assert voids(hard, pending_v1, L) and voids(hard, pending_v2, L)
    assert not voids(hard, old, L) and not voids(hard, later, L) and not voids(hard, bob, L)
    assert credit_state(pending_v2, [hard], T + 10 * L, L) is CreditState.VOID
    assert credit_state(old, [hard], T + 10 * L, L) is CreditState.FINAL
    # Edges: pending at T_inv means t > T_inv - L, and t <= T_inv.
    assert not voids(hard, Credit(V1, 0, A, T + 300 - L), L)
    assert voids(hard, Credit(V1, 0, A, T + 300 - L + 0.5), L)
    assert voids(hard, Credit(V1, 0, A, T + 300), L)


def test_soft_invalidation_voids_only_that_unit() -> None:
    target = Credit(V1, 5, A, T + 100)
    sibling = Credit(V1, 6, A, T + 101)
    soft = inv(SOFT, T + 200, target=(V1, 5))
    assert voids(soft, target, L) and not voids(soft, sibling, L)
    assert not voids(inv(SOFT, T + 200, who=B, target=(V1, 5)), target, L)  # wrong contributor
    assert not voids(inv(SOFT, T + 100 + L, target=(V1, 5)), target, L)  # already final
    with pytest.raises(LedgerError, match="severity"):
        voids(inv("medium", T), target, L)


def test_invalidation_body_refuses_unknown_severity() -> None:
    with pytest.raises(ValueError, match="severity"):
        InvalidationBody(A, "medium", V1, 0, bytes(32), "")


# ---------------------------------------------------------------------------------------------
# Adaptive auditing


def test_new_contributors_are_audited_every_time() -> None:
    policy = AuditPolicy(floor=0.05)
    assert policy.rate(None) == 1.0
    assert policy.rate(AuditState(consecutive_valid=policy.warmup - 1)) == 1.0
    assert all(policy.should_audit(None, draw) for draw in (0.0, 0.5, 0.999999))


def test_rate_falls_with_consecutive_valid_results_to_the_floor() -> None:
    policy = AuditPolicy(floor=0.05, warmup=10)
    rates = [policy.rate(AuditState(consecutive_valid=n)) for n in range(0, 1000, 5)]
    assert rates == sorted(rates, reverse=True)  # never rises with more valid results
    assert policy.rate(AuditState(consecutive_valid=20)) == 0.5
    assert policy.rate(AuditState(consecutive_valid=100)) == pytest.approx(0.1)
    assert policy.rate(AuditState(consecutive_valid=10_000)) == 0.05


def test_spot_checks_never_stop() -> None:
    trusted = AuditState(consecutive_valid=10**9)
    assert AuditPolicy(floor=0.0).rate(trusted) == MIN_SPOT_RATE > 0
    assert AuditPolicy(floor=1.0).rate(trusted) == 1.0  # a manifest can demand full audits
    with pytest.raises(LedgerError):
        AuditPolicy(floor=1.5)


def test_a_failure_resets_the_rate() -> None:
    policy = AuditPolicy(floor=0.05)
    state = None
    for _ in range(500):
        state = after_audit(state, passed=True)
    assert state is not None and policy.rate(state) == 0.05
    state = after_audit(state, passed=False)
    assert state == AuditState(consecutive_valid=0, audits=501, failures=1)
    assert policy.rate(state) == 1.0


def test_audit_states_rebuild_from_results_in_chain_order() -> None:
    results = [(A, True), (B, True), (A, True), (A, False), (A, True), (B, True)]
    states = audit_states(results)
    assert states[A] == AuditState(1, 4, 1) and states[B] == AuditState(2, 2, 0)


def test_audit_draw_is_secret_deterministic_and_uniform() -> None:
    secret = VALIDATOR.seed
    draws = [audit_draw(secret, i.to_bytes(32, "big")) for i in range(4000)]
    assert draws[:3] == [audit_draw(secret, i.to_bytes(32, "big")) for i in range(3)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(d < 0.05 for d in draws) / len(draws) - 0.05) < 0.015
    other = [audit_draw(MALLORY_SEED, i.to_bytes(32, "big")) for i in range(3)]
    assert other != draws[:3]  # another key: unpredictable without the validator's secret


MALLORY_SEED = bytes([3]) * 32


def test_audit_results_in_the_chain_rebuild_the_policy_state(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.db") as store:
        policy = AuditPolicy(floor=0.05)
        state = None
        for i, passed in enumerate([True] * 12 + [False, True]):
            body = AuditBody(A, i.to_bytes(32, "big"), passed, policy.rate(state), 0, ())
            store.append_local(VALIDATOR, NET, "audit", body, now=T + i)
            state = after_audit(state, passed)
        rebuilt = audit_states(store.audit_results(V1))
        assert rebuilt[A] == state == AuditState(1, 14, 1)
        assert store.verify_all(NET) == []


# ---------------------------------------------------------------------------------------------
# The leaderboard applies the policy: checked against the pure functions on random ledgers


def _reference(credits, invalidations, since, now, lock):  # type: ignore[no-untyped-def]
    out: dict[bytes, list[int]] = {}
    for c in credits:
        if since is not None and c.timestamp < since:
            continue
        row = out.setdefault(c.contributor, [0, 0, 0, 0])  # flops, pending, accepted, rejected
        state = credit_state(c, invalidations, now, lock)
        if not c.accepted:
            row[3] += 1
        elif state is not CreditState.VOID:
            row[0] += c.flops
            row[2] += 1
            if state is CreditState.PENDING:
                row[1] += c.flops
    return out


PEOPLE = [ALICE, BOB, CAROL]
events = st.lists(
    st.tuples(
        st.sampled_from(["credit", "credit", "credit", "hard", "soft"]),
        st.integers(min_value=0, max_value=2),  # who
        st.integers(min_value=0, max_value=1),  # validator
        st.floats(min_value=0, max_value=4 * 86400, allow_nan=False),  # time step
        st.integers(min_value=0, max_value=2**64),  # flops
        st.booleans(),  # accepted
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events,
    st.floats(min_value=0, max_value=2 * 86400),
    st.sampled_from([None, 3600.0, 86400.0, 2.5 * 86400, 5000.0]),
)
def test_leaderboard_matches_the_pure_policy(events, lock, window) -> None:  # type: ignore[no-untyped-def]
    validators = [VALIDATOR, OTHER_VALIDATOR]
    with tempfile.TemporaryDirectory() as tmp, LedgerStore(Path(tmp) / "l.db") as store:
        clock = T
        credits: list[Credit] = []
        invalidations: list[Invalidation] = []
        for n, (kind, who, v, step, flops, accepted) in enumerate(events):
            clock += step / 10
            person, validator = PEOPLE[who], validators[v]
            if kind == "credit":
                body = credit(person, n, accepted=accepted, flops=flops % 2**63 if accepted else 0)
                seq, _, _ = store.append_local(validator, NET, "credit", body, now=clock)
                credits.append(
                    Credit(
                        validator.public_key, seq, person.public_key, clock, body.flops, accepted
                    )
                )
            else:
                target = credits[flops % len(credits)] if credits else None
                body = InvalidationBody(
                    person.public_key,
                    kind,
                    target.signer if target else V1,
                    target.seq if target else 0,
                    bytes(32),
                    "audit failed",
                )
                store.append_local(validator, NET, "invalidation", body, now=clock)
                invalidations.append(
                    Invalidation(
                        person.public_key, clock, kind, body.credit_signer, body.credit_seq
                    )
                )
        # The store clamps timestamps per chain; read back what was signed.
        stamps = dict(
            ((bytes(s), q), ts)
            for s, q, ts in store.connection.execute("SELECT signer, seq, timestamp FROM entries")
        )
        credits = [
            Credit(c.signer, c.seq, c.contributor, stamps[(c.signer, c.seq)], c.flops, c.accepted)
            for c in credits
        ]
        now = clock + 3600.0
        since = None if window is None else now - window
        expected = _reference(credits, invalidations, since, now, lock)
        board = leaderboard(store, since=since, limit=10, now=now, lock_window=lock)
        got = {
            s.contributor: [s.flops, s.pending_flops, s.tasks_accepted, s.tasks_rejected]
            for s in board
        }
        assert got == expected
        ranked = [s.contributor for s in board]
        assert ranked == sorted(expected, key=lambda c: (-expected[c][0], c))
        assert store.verify_all(NET) == []


def test_window_edges_are_exact_across_bucket_boundaries(tmp_path: Path) -> None:
    # Credits just before and at hour, quarter-day and day boundaries: the raw/hour/quarter/day
    # split must count each exactly once for every window start.
    day0 = 19_700 * 86400.0
    times = [day0 - 0.001, day0, day0 + 3599.999, day0 + 3600, day0 + 21599.5, day0 + 21600]
    times += [day0 + 3 * 21600 + 7, day0 + 86399.5, day0 + 86400, day0 + 2 * 86400 + 1]
    with LedgerStore(tmp_path / "l.db") as store:
        for i, ts in enumerate(times):
            store.append_local(VALIDATOR, NET, "credit", credit(ALICE, i, flops=1 << i), now=ts)
        for since in [day0 - 1, *times, day0 + 1800, day0 + 43200.25, day0 + 25000, day0 + 9e4]:
            want = sum(1 << i for i, ts in enumerate(times) if ts >= since)
            sums = window_sums(store, since)
            got = (sums[A][0] << 32) + sums[A][1] if A in sums else 0
            assert got == want, since


def test_profiles_name_contributors_and_teams(tmp_path: Path) -> None:
    from flopnet.ledger.kinds import ProfileBody
    from flopnet.protocol.envelope import seal
    from flopnet.protocol.messages import ContributorProfile

    def profile(who: Identity, name: str, team: str, at: float) -> ProfileBody:
        return ProfileBody(seal(ContributorProfile(1, name, team, at), who, NET))

    with LedgerStore(tmp_path / "l.db") as store:
        store.append_local(VALIDATOR, NET, "credit", credit(ALICE, 0, flops=5), now=T)
        store.append_local(VALIDATOR, NET, "credit", credit(BOB, 1, flops=3), now=T)
        store.append_local(VALIDATOR, NET, "profile", profile(ALICE, "alice", "red", 2.0), now=T)
        store.append_local(OTHER_VALIDATOR, NET, "profile", profile(ALICE, "old", "x", 1.0), now=T)
        store.append_local(VALIDATOR, NET, "profile", profile(BOB, "bob", "", 5.0), now=T)
        board = leaderboard(store, now=T + 10, lock_window=L)
        assert [(s.display_name, s.team) for s in board] == [("alice", "red"), ("bob", "")]
        only_other = leaderboard(store, validators={V2}, now=T + 10)
        assert only_other == []  # V2 credited nobody; its profile row alone ranks no one
        assert store.verify_all(NET) == []


def test_leaderboard_rows_split_pending_final_and_void(tmp_path: Path) -> None:
    day = 86400.0
    now = T + 30 * day
    with LedgerStore(tmp_path / "l.db") as store:

        def add(who: Identity, n: int, flops: int, at: float, accepted: bool = True) -> int:
            body = credit(who, n, accepted=accepted, flops=flops if accepted else 0)
            return store.append_local(VALIDATOR, NET, "credit", body, now=at)[0]

        # In time order: one chain's timestamps never go backwards.
        add(ALICE, 0, 1000, now - 20 * day)  # final, outside 7 d
        add(BOB, 6, 2000, now - 10 * day)  # final before the invalidation: kept
        add(ALICE, 1, 200, now - 3 * day)  # final, inside 7 d
        add(BOB, 4, 500, now - 7200)  # pending, then voided by a hard invalidation
        bob_seq = add(BOB, 5, 5, now - 7100)
        add(ALICE, 2, 30, now - 3600)  # pending, inside 24 h
        add(ALICE, 3, 0, now - 3500, accepted=False)
        store.append_local(
            VALIDATOR,
            NET,
            "invalidation",
            InvalidationBody(B, HARD, V1, bob_seq, bytes(32), "audit failed"),
            now=now - 60,
        )
        board = leaderboard(store, now=now, lock_window=day)
        bob, alice = board
        assert (alice.flops, alice.pending_flops, alice.final_flops) == (1230, 30, 1200)
        assert (alice.flops_24h, alice.flops_7d, alice.flops_all) == (30, 230, 1230)
        assert (alice.tasks_accepted, alice.tasks_rejected, alice.tasks_voided) == (3, 1, 0)
        assert alice.acceptance_rate == 0.75
        assert (bob.flops, bob.pending_flops, bob.final_flops, bob.tasks_voided) == (
            2000,
            0,
            2000,
            2,
        )
        assert bob.acceptance_rate == pytest.approx(1 / 3)
        week = leaderboard(store, since=now - 7 * day, now=now, lock_window=day)
        assert [(s.contributor, s.flops) for s in week] == [(A, 230), (B, 0)]

        from flopnet.ledger.leaderboard import format_table, to_csv, to_json

        rows = to_json(board)
        assert rows[1]["pending_flops"] == 30 and rows[0]["tasks_voided"] == 2
        text = format_table(board, footer=["window: all"])
        assert ALICE.peer_id in text and "75.0%" in text and text.endswith("window: all")
        csv_text = to_csv(board)
        assert csv_text.splitlines()[0].startswith("rank,peer_id,contributor")
        assert f"2,{ALICE.peer_id},{A.hex()}" in csv_text


def test_audit_book_drives_a_validator_from_new_to_spot_checks() -> None:
    from flopnet.ledger.policy import AuditBook

    book = AuditBook(AuditPolicy(floor=0.05, warmup=10))
    audited = 0
    for n in range(3000):
        decision = book.decide(A, audit_draw(VALIDATOR.seed, n.to_bytes(32, "big")))
        if decision.audit:
            audited += 1
            book.record(A, passed=True)
        if n < 10:
            assert decision.audit and decision.rate == 1.0  # new: every submission audited
    assert book.states[A].consecutive_valid == audited
    assert 0.05 * 3000 * 0.6 < audited < 0.05 * 3000 * 2.5  # the floor, after the warm-up
    assert book.decide(A, 0.999).rate == 0.05
    book.record(A, passed=False)
    assert book.decide(A, 0.999) == book.decide(A, 0.0) and book.decide(A, 0.999).audit
    rebuilt = AuditBook(book.policy, [(A, True)] * 40 + [(B, False)])
    assert rebuilt.decide(A, 0.5).rate == 0.25 and rebuilt.decide(B, 0.99).rate == 1.0


def test_audit_entries_are_checked_against_the_chain_and_the_policy() -> None:
    from flopnet.ledger.policy import AuditRecord, audit_problems

    policy = AuditPolicy(floor=0.05, warmup=2)
    alice, bob = b"\xaa" * 32, b"\xbb" * 32

    def rec(seq: int, who: bytes, sub: int, passed: bool, rate: float, n: int) -> AuditRecord:
        return AuditRecord(seq, who, bytes([sub]) * 32, passed, rate, n)

    honest = [
        rec(1, alice, 1, True, 1.0, 0),
        rec(3, alice, 2, True, 1.0, 1),
        rec(5, bob, 3, True, 1.0, 0),
        rec(7, alice, 4, True, 1.0, 2),  # 2 / 2 = 1.0
        rec(9, alice, 5, False, 2 / 3, 3),
        rec(11, alice, 6, True, 1.0, 0),  # reset by the failure
    ]
    credits = {bytes([i]) * 32: i != 5 for i in range(1, 7)}
    hard = {bytes([5]) * 32}
    assert audit_problems(honest, policy, credits, hard) == []

    lying = [*honest[:3], rec(7, alice, 4, True, 0.05, 7)]  # claims a long record, a low rate
    found = [m for seq, m in audit_problems(lying, policy, credits, hard) if seq == 7]
    assert len(found) == 2  # the count and the rate
    assert "records 7 consecutive valid audits; the chain's earlier audits give 2" in found[0]
    assert "records rate 0.0500; the manifest's policy gives 1.0000" in found[1]
    assert audit_problems(honest, policy, credits, set()) == [
        (9, f"entry seq 9: audit of {alice[:6].hex()} failed without a hard invalidation")
    ]
    unknown = audit_problems([rec(1, bob, 9, True, 1.0, 0)], policy, credits, hard)
    assert unknown == [(1, f"entry seq 1: audit of {bob[:6].hex()} names a submission this "
                           "validator never credited")]  # fmt: skip
    mismatch = audit_problems([rec(1, bob, 5, True, 1.0, 0)], policy, credits, hard)
    assert mismatch == [(1, f"entry seq 1: audit of {bob[:6].hex()} passed, but its credit "
                            "was rejected")]  # fmt: skip
