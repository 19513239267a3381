"""The publisher's lease book (pure) and the task loaders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from flopnet.node.publisher.leases import Denied, Grant, LeaseBook
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


def test_expired_lease_is_reissued_and_late_verdict_ignored() -> None:
    book = LeaseBook(lease_seconds=10)
    book.add_task("t", samples=1)
    grant(book, "t", W1, 0.0, b"old")
    assert isinstance(book.claim("t", W2, 5.0), Denied)
    grant(book, "t", W2, 10.0, b"new")  # W1's lease expired at 10.0
    assert book.settle(b"old", accepted=True) is None  # the re-issued lease decides
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
    book = LeaseBook(lease_seconds=10)
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
