"""The publisher's lease book (pure) and the task loaders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.node.publisher.leases import Denied, Grant, LeaseBook, validator_for
from flopnet.node.tasks import builtin_tasks, load_tasks_file
from flopnet.protocol.errors import ConfigError

W1, W2 = b"\x01" * 32, b"\x02" * 32
DATA = SHARED_DATA


def grant(book: LeaseBook, task: str, worker: bytes, now: float, lease_id: bytes) -> Grant:
    decision = book.claim(task, worker, now)
    assert isinstance(decision, Grant), decision
    book.record_lease(decision, lease_id, worker)
    return decision


def test_claim_lease_accept() -> None:
    book = LeaseBook(lease_seconds=10)
    book.add_task("t", samples=2)
    g1 = grant(book, "t", W1, 0.0, b"a")
    g2 = grant(book, "t", W2, 0.0, b"b")
    assert (g1.sample_index, g2.sample_index) == (0, 1)
    assert book.claim("t", b"\x03" * 32, 0.0) == Denied(
        "task_taken", "every open sample of 't' is leased"
    )
    assert book.settle(b"a", accepted=True) == ("t", 0)
    assert book.settle(b"b", accepted=True) == ("t", 1)
    assert book.all_done()
    decision = book.claim("t", W1, 1.0)
    assert isinstance(decision, Denied) and decision.code == "task_done"


def test_an_expired_lease_reopens_after_the_grace_and_its_late_result_is_the_one_credit() -> None:
    book = LeaseBook(lease_seconds=10, grace_seconds=5)
    book.add_task("t", samples=1)
    grant(book, "t", W1, 0.0, b"old")
    assert isinstance(book.claim("t", W2, 12.0), Denied)  # past the deadline, not the grace
    grant(book, "t", W2, 15.0, b"new")  # W1's lease is dead: deadline 10 + grace 5
    # W1's late result was credited anyway (say, by a validator with a slow clock): it is the
    # sample's one credit, and the re-issued lease's result changes nothing.
    assert book.settle(b"old", accepted=True) == ("t", 0)
    assert book.counts() == {"open": 0, "leased": 0, "done": 1}
    assert book.settle(b"new", accepted=False) is None
    assert book.settle(b"new", accepted=True) is None
    assert book.standing(W2).active == 0 and book.standing(W1).accepted == 1


def test_a_rejection_of_a_superseded_lease_reopens_nothing() -> None:
    book = LeaseBook(lease_seconds=10, lapse_cooldown_s=0)
    book.add_task("t", samples=1)
    grant(book, "t", W1, 0.0, b"old")
    grant(book, "t", W2, 11.0, b"new")
    assert book.settle(b"old", accepted=False) is None  # another validator's late rejection
    assert book.counts() == {"open": 0, "leased": 1, "done": 0}
    assert book.settle(b"new", accepted=True) == ("t", 0)


def test_rejection_reopens_and_bars_the_failed_worker() -> None:
    book = LeaseBook(lease_seconds=10)
    book.add_task("t", samples=1)
    grant(book, "t", W1, 0.0, b"x")
    assert book.settle(b"x", accepted=False) == ("t", 0)
    assert book.open_tasks() == ["t"]
    barred = book.claim("t", W1, 1.0)
    assert isinstance(barred, Denied) and barred.code == "failed_before"
    grant(book, "t", W2, 1.0, b"y")


def test_one_active_lease_per_worker_and_unknown_task() -> None:
    book = LeaseBook(lease_seconds=10, max_active_per_worker=1)
    book.add_task("a", 1)
    book.add_task("b", 1)
    grant(book, "a", W1, 0.0, b"1")
    decision = book.claim("b", W1, 0.0)
    assert isinstance(decision, Denied) and decision.code == "too_many_leases"
    unknown = book.claim("zzz", W1, 0.0)
    assert isinstance(unknown, Denied) and unknown.code == "unknown_task"


def test_builtin_tasks_are_deterministic_and_exact() -> None:
    tasks = builtin_tasks(8, seed=3)
    assert tasks == builtin_tasks(8, seed=3)
    assert tasks != builtin_tasks(8, seed=4)
    assert len({t.task_id for t in tasks}) == 8
    assert all(t.answer.lstrip("-").isdigit() for t in tasks)
    with pytest.raises(ConfigError):
        builtin_tasks(0)


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
def test_load_deepscaler_and_jsonl() -> None:
    aime = load_tasks_file(DATA / "deepscaler_test_aime24.json")
    assert len(aime) == 30 and all(t.answer for t in aime)
    minerva = load_tasks_file(DATA / "deepscaler_test_minerva.json", limit=5)
    assert all(not t.answer.endswith("\n") for t in minerva)  # list answers normalised
    amc = load_tasks_file(DATA / "deepscaler_test_amc.json", limit=3)
    assert all(not t.answer.endswith(".0") for t in amc)  # 27.0 -> 27
    math500 = load_tasks_file(DATA / "math500_test.jsonl", limit=10)
    assert len(math500) == 10


def test_bad_task_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_tasks_file(bad)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(ConfigError, match=r"not a task format flopnet knows .* --map"):
        load_tasks_file(missing)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tasks_file(tmp_path / "nope.json")


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@pytest.mark.timeout(180)
def test_code_tasks_load_and_their_tests_judge_solutions() -> None:
    """HumanEval (gzipped) and MBPP records become code tasks whose verifier fields are what
    the validator hands the sandboxed code verifier: the reference solution passes, a wrong one
    fails."""
    import gzip

    from flopnet.node.model.prompt import format_r1_prompt
    from flopnet.node.tasks import user_message
    from flopnet.verifiers.registry import Verifiers, VerifyOptions

    humaneval = load_tasks_file(DATA / "HumanEval.jsonl.gz", limit=2)
    mbpp = load_tasks_file(DATA / "mbpp.jsonl", limit=2)
    assert [t.task_type for t in humaneval + mbpp] == ["code"] * 4
    assert humaneval[0].task_id.startswith("HumanEval-0-") and mbpp[0].task_id.startswith("mbpp-0-")
    assert "def " in humaneval[0].problem and "entry_point" in humaneval[0].verifier
    prompt = format_r1_prompt(user_message(humaneval[0]), directive="")
    assert "using the programming language python" in prompt and "```python code block" in prompt
    with gzip.open(DATA / "HumanEval.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    solution = first["prompt"] + first["canonical_solution"]
    mbpp_solution = json.loads((DATA / "mbpp.jsonl").read_text().splitlines()[0])["code"]
    cases = [
        (humaneval[0], solution, True),
        (humaneval[0], first["prompt"] + "    return True\n", False),
        (mbpp[0], mbpp_solution, True),
    ]
    with Verifiers(VerifyOptions(sandbox="bwrap", code_budget_s=30), workers=1) as verifiers:
        for task, code, should_pass in cases:
            spec = {**task.verifier, "task_type": task.task_type, "gold": task.answer}
            result = verifiers.verify(spec, f"<think>\nok\n</think>\n```python\n{code}\n```")
            assert result.error is None, result.error
            assert result.passed == should_pass, result.reasons


# -- trust is earned; hoarding costs the hoarder -------------------------------------------------


def test_a_newcomer_holds_one_lease_and_each_accepted_result_earns_one_more() -> None:
    book = LeaseBook(lease_seconds=10, max_active_per_worker=3)
    for task in "abcdef":
        book.add_task(task, 1)
    grant(book, "a", W1, 0.0, b"1")
    denied = book.claim("b", W1, 0.0)
    assert isinstance(denied, Denied) and denied.code == "too_many_leases"
    assert "each accepted result earns one more" in denied.reason
    book.settle(b"1", accepted=True)
    grant(book, "b", W1, 1.0, b"2")
    grant(book, "c", W1, 1.0, b"3")  # one accepted: a quota of 2
    assert isinstance(book.claim("d", W1, 1.0), Denied)
    book.settle(b"2", accepted=True)
    grant(book, "d", W1, 2.0, b"4")  # two accepted: 3, the maximum
    book.settle(b"3", accepted=True)
    assert book.quota(W1) == 3  # capped at max_active_per_worker


def test_a_lapsed_lease_cools_its_worker_down_and_costs_standing() -> None:
    book = LeaseBook(lease_seconds=10, max_active_per_worker=4, lapse_cooldown_s=60)
    for task in "abcd":
        book.add_task(task, 1)
    grant(book, "a", W1, 0.0, b"1")
    book.settle(b"1", accepted=True)
    grant(book, "b", W1, 1.0, b"2")
    assert book.quota(W1) == 2
    assert book.expire(11.0) == [("b", 0)]  # it lapsed
    cooling = book.claim("c", W1, 20.0)
    assert isinstance(cooling, Denied) and cooling.code == "cooling_down"
    assert book.quota(W1) == 1  # the lapse took back what the accepted result earned
    grant(book, "c", W1, 72.0, b"3")


def test_newcomers_together_hold_at_most_their_share() -> None:
    """A swarm of fresh identities cannot take every open sample: workers with a record still
    find work, whatever the number of identities."""
    book = LeaseBook(
        lease_seconds=100, max_active_per_worker=8, newcomer_share=0.25, newcomer_floor=2
    )
    for i in range(40):
        book.add_task(f"t{i}", 1)
    sybils = [bytes([0x80 + i]) * 32 for i in range(30)]
    taken = 0
    for i, sybil in enumerate(sybils):
        decision = book.claim(f"t{i}", sybil, 0.0)
        if isinstance(decision, Grant):
            book.record_lease(decision, bytes([i]) * 16, sybil)
            taken += 1
        else:
            assert decision.code == "newcomers_full"
    assert taken == 10  # a quarter of 40 samples
    # A worker with accepted work is not a newcomer: it is served from the rest.
    veteran = b"\x07" * 32
    book.standing(veteran).accepted = 5
    for i in range(30, 36):
        grant(book, f"t{i}", veteran, 0.0, bytes([100 + i]) * 16)


def test_validator_for_is_deterministic_and_spreads_samples() -> None:
    validators = [b"\x0a" * 32, b"\x0b" * 32, b"\x0c" * 32]
    picks = [validator_for(f"task-{i}", 0, validators) for i in range(300)]
    assert picks == [validator_for(f"task-{i}", 0, list(reversed(validators))) for i in range(300)]
    counts = {v: picks.count(v) for v in validators}
    assert min(counts.values()) > 60  # roughly a third each


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["claim", "settle_ok", "settle_bad", "expire", "release"]),
            st.integers(0, 3),  # task
            st.integers(0, 2),  # worker
            st.integers(0, 7),  # which lease
        ),
        max_size=60,
    )
)
def test_the_book_keeps_one_credit_per_sample_whatever_the_order(
    events: list[tuple[str, int, int, int]],
) -> None:
    book = LeaseBook(lease_seconds=5, grace_seconds=2, max_active_per_worker=3, lapse_cooldown_s=3)
    for task in range(4):
        book.add_task(f"t{task}", 2)
    workers = [bytes([w + 1]) * 32 for w in range(3)]
    leases: list[bytes] = []
    done_by: dict[tuple[str, int], bytes] = {}
    now = 0.0
    for op, task, worker, which in events:
        now += 1.0
        if op == "claim":
            decision = book.claim(f"t{task}", workers[worker], now)
            if isinstance(decision, Grant):
                lease_id = len(leases).to_bytes(16, "big")
                book.record_lease(decision, lease_id, workers[worker])
                leases.append(lease_id)
        elif op == "expire":
            book.expire(now)
        elif op == "release" and leases:
            lease_id = leases[which % len(leases)]
            owner = book._by_worker_lease[lease_id]
            book.release(lease_id, owner, now)  # a worker hands its own lease back
        elif leases:
            lease_id = leases[which % len(leases)]
            key = book.settle(lease_id, accepted=op == "settle_ok")
            if key is not None and op == "settle_ok":
                assert key not in done_by, "a sample was closed twice"
                done_by[key] = lease_id
        # Invariants: each worker's active count is what it really holds.
        held: dict[bytes, int] = {}
        for sample in book._samples.values():
            if sample.state.value == "leased":
                assert sample.worker is not None
                held[sample.worker] = held.get(sample.worker, 0) + 1
        for w in workers:
            assert book.standing(w).active == held.get(w, 0) >= 0
    assert book.counts()["done"] == len(done_by)


def test_a_rejected_worker_cools_down() -> None:
    book = LeaseBook(lease_seconds=10, max_active_per_worker=4, lapse_cooldown_s=30)
    for task in "ab":
        book.add_task(task, 1)
    grant(book, "a", W1, 0.0, b"1")
    book.settle(b"1", accepted=False, now=5.0)  # its forged proof failed the audit
    denied = book.claim("b", W1, 20.0)
    assert isinstance(denied, Denied) and denied.code == "cooling_down"
    grant(book, "b", W1, 36.0, b"2")


def test_progress_per_task_set() -> None:
    from flopnet.node.tasks import task_set_of

    assert task_set_of("arith-0-3") == "arith"
    assert task_set_of("rllm_test_codeforces-12-python-0a1b2c3d4e") == "rllm_test_codeforces"
    assert task_set_of("my-file-7-0a1b2c3d4e") == "my-file"
    assert task_set_of("odd") == "odd"
    book = LeaseBook(lease_seconds=100)
    book.add_task("a-0-x", samples=2)
    book.add_task("b-0-y", samples=1)
    grant = book.claim("a-0-x", b"\x01" * 32, 0.0)
    assert isinstance(grant, Grant)
    book.record_lease(grant, b"l", b"\x01" * 32)
    assert book.counts_by(task_set_of) == {
        "a": {"open": 1, "leased": 1, "done": 0},
        "b": {"open": 1, "leased": 0, "done": 0},
    }
