"""Tests for verifiers.math_verifier (answer extraction, gold formats, MATH-500 agreement) and
verifiers.pool (timeouts, crashes, concurrency).

The module-level ``_job_*`` functions run inside spawned pool children: spawn gives the child the
parent's sys.path, which holds this directory under pytest, so the child can import this module.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import SHARED_DATA

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.math_verifier import (
    check_math,
    final_answer_region,
    find_boxes,
    normalize_gold,
)
from flopnet.verifiers.pool import (
    MATH_WARMUP,
    JobTimeout,
    VerifierPool,
    WorkerCrashed,
    job_name,
    verify_math,
)
from flopnet.verifiers.result import Result

MATH500 = SHARED_DATA / "math500_test.jsonl"

# -- job functions for the pool tests (module level so children can import them) ---------------


def _job_echo(value: object) -> object:
    return value


def _job_sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _job_hang() -> Result:
    time.sleep(3600)
    return Result(1.0, True)


def _job_spin() -> Result:
    while True:  # a busy loop in Python: no blocking call to interrupt
        pass


def _job_exit() -> Result:
    os._exit(3)


def _job_segfault() -> Result:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return Result(1.0, True)


def _job_raise() -> Result:
    raise ValueError("boom")


def _job_result(score: float) -> Result:
    return Result(score, score >= 1.0, ("fixed",))


# -- Result ----------------------------------------------------------------------------------


def test_result_roundtrip_and_validation() -> None:
    r = Result(1.0, True, ("ok",))
    assert Result.from_dict(r.to_dict()) == r
    f = Result.failure("timeout: x")
    assert (f.score, f.passed, f.error) == (0.0, False, "timeout: x")
    assert Result.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(VerifierError):
            Result(bad, False)
    with pytest.raises(VerifierError):
        Result.from_dict({"passed": True})


# -- extraction helpers ----------------------------------------------------------------------


def test_find_boxes_and_region() -> None:
    boxes, unfinished = find_boxes(r"a \boxed{\frac{1}{2}} b \boxed{x\}} c")
    assert [c for _, _, c in boxes] == [r"\frac{1}{2}", r"x\}"]
    assert not unfinished
    boxes, unfinished = find_boxes(r"\boxed{8} then \boxed{9")
    assert [c for _, _, c in boxes] == ["8"] and unfinished
    assert final_answer_region("<think>a</think>b</think>c") == "c"
    assert final_answer_region("<think>never closed") is None
    assert final_answer_region("plain") == "plain"


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("27.0", r"\boxed{27.0}"),
        (27.0, r"\boxed{27.0}"),
        ("$\\frac{1}{2}$", r"\boxed{\frac{1}{2}}"),
        ("9.6\n", r"\boxed{9.6}"),
        ("$69$,$84$", r"\boxed{69,84}"),
        ("\\$18.90", r"\boxed{\$18.90}"),
        (r"\boxed{5}", r"\boxed{5}"),
    ],
)
def test_normalize_gold(gold: str | float, expected: str) -> None:
    assert normalize_gold(gold) == expected


# -- check_math ------------------------------------------------------------------------------


def test_correct_and_incorrect() -> None:
    r = check_math(r"<think>work</think> The answer is $\boxed{\dfrac{14}{3}}$.", r"\frac{14}{3}")
    assert r.passed and r.score == 1.0 and r.error is None
    r = check_math(r"<think>work</think> The answer is $\boxed{\frac{13}{3}}$.", r"\frac{14}{3}")
    assert not r.passed and r.score == 0.0 and "does not match" in r.reasons[0]


def test_missing_boxed() -> None:
    r = check_math("<think>...</think> The answer is 42.", "42")
    assert not r.passed and r.reasons == ("no \\boxed answer",)
    # Opting out of the box requirement lets math-verify find the answer in plain text.
    assert check_math("<think>...</think> The answer is 42.", "42", require_boxed=False).passed


def test_answer_only_inside_think_block() -> None:
    r = check_math(r"<think>so it is \boxed{42}</think> I am not sure.", "42")
    assert not r.passed and r.reasons == ("no \\boxed answer",)
    r = check_math(r"<think>so it is \boxed{42} and then the output was cut", "42")
    assert not r.passed and "unfinished <think>" in r.reasons[0]
    # A draft in the think block never outvotes the final answer.
    assert not check_math(r"<think>\boxed{42}</think> \boxed{41}", "42").passed


def test_unfinished_last_box_does_not_fall_back() -> None:
    r = check_math(r"</think> First \boxed{8}, no wait: \boxed{9", "8")
    assert not r.passed and "unfinished" in r.reasons[0]


def test_several_boxes() -> None:
    # The last box is the answer...
    assert check_math(r"</think> Maybe \boxed{8}. Checking again, it is \boxed{9}.", "9").passed
    assert not check_math(r"</think> Maybe \boxed{8}. Checking again, it is \boxed{9}.", "8").passed
    # ...unless boxes are listed together, which math-verify reads as a set.
    assert check_math(r"</think> The roots are \boxed{1} and \boxed{-2}.", "1,-2").passed
    assert not check_math(r"</think> The roots are \boxed{1} and \boxed{-2}.", "1").passed


def test_gold_formats() -> None:
    assert check_math(r"</think> \boxed{27}", "27.0").passed
    assert check_math(r"</think> \boxed{27}", 27.0).passed
    assert not check_math(r"</think> \boxed{28}", 27.0).passed
    assert check_math(r"</think> \boxed{0.5}", r"$\frac{1}{2}$").passed
    assert check_math(r"</think> \boxed{\sqrt{2}}", r"\sqrt{2}").passed  # bare gold gets boxed
    assert check_math(r"</think> \boxed{9.6}", "9.6\n").passed
    # Minerva lists alternatives: any one matching passes.
    assert check_math(r"</think> \boxed{6630}", ["6630.65\n", "6630\n"]).passed
    empties: list[object] = ["", "  \n", "$$", None, []]
    for empty in empties:
        with pytest.raises(VerifierError):
            check_math(r"\boxed{1}", empty)  # type: ignore[arg-type]
    with pytest.raises(VerifierError):
        check_math(r"\boxed{1}", r"\boxed{3")


def test_multiple_choice_letter() -> None:
    assert check_math(r"</think> \boxed{C}", "C").passed
    assert check_math(r"</think> \boxed{\textbf{(C)}}", "C").passed
    assert check_math(r"</think> \boxed{(C)}", "C").passed
    assert not check_math(r"</think> \boxed{D}", "C").passed


def test_refuses_to_run_in_a_thread() -> None:
    caught: list[BaseException] = []

    def job() -> None:
        try:
            check_math(r"\boxed{1}", "1")
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=job)
    t.start()
    t.join(30)
    assert caught and isinstance(caught[0], VerifierError)


def _math500(n: int) -> list[dict[str, str]]:
    if not MATH500.exists():
        pytest.skip(f"{MATH500} not available")
    with MATH500.open(encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def test_math500_agreement() -> None:
    rows = _math500(100)
    passed = false_accepts = wrong_checks = 0
    for row in rows:
        gold = row["answer"]
        passed += check_math(f"Let me think.</think> The answer is \\boxed{{{gold}}}", gold).passed
        wrong = ["987654321"]
        if gold.strip().lstrip("-").isdigit():
            wrong.append(str(int(gold) + 1))
        for w in wrong:
            wrong_checks += 1
            false_accepts += check_math(f"</think> The answer is \\boxed{{{w}}}", gold).passed
    rate = passed / len(rows)
    print(f"MATH-500 first {len(rows)}: gold accepted {rate:.1%}, {false_accepts}/{wrong_checks}")
    assert rate >= 0.98
    assert false_accepts == 0


def test_math500_reference_solutions_pass() -> None:
    # Real solution texts (prose, several formulas, one \boxed at the end) as the final answer.
    rows = _math500(100)
    passed = sum(check_math(f"<think>...</think>{r['solution']}", r["answer"]).passed for r in rows)
    print(f"MATH-500 first {len(rows)} reference solutions accepted: {passed}")
    assert passed >= 0.98 * len(rows)


# -- pool ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(2) as p:
        p.wait_ready(60)
        yield p


def test_pool_math(pool: VerifierPool) -> None:
    r = verify_math(pool, r"</think> \boxed{27}", "27.0")
    assert r.passed
    assert not verify_math(pool, r"</think> \boxed{26}", "27.0").passed
    with pytest.raises(VerifierError, match="empty gold"):
        verify_math(pool, r"\boxed{1}", "")


def test_pool_hang_is_killed_and_pool_recovers(pool: VerifierPool) -> None:
    before = pool.stats()["timeouts"]
    for job in (_job_hang, _job_spin):
        t0 = time.monotonic()
        r = pool.run(job, timeout=1.0)
        assert r.error is not None and r.error.startswith("timeout")
        assert not r.passed and r.score == 0.0
        assert time.monotonic() - t0 < 10
        assert pool.run(_job_result, 1.0, timeout=30).passed
    with pytest.raises(JobTimeout):
        pool.call(_job_hang, timeout=0.5)
    assert pool.stats()["timeouts"] == before + 3


def test_pool_crash_is_reported_and_pool_recovers(pool: VerifierPool) -> None:
    r = pool.run(_job_exit, timeout=30)
    assert r.error is not None and r.error.startswith("crash") and "exit code 3" in r.error
    r = pool.run(_job_segfault, timeout=30)
    assert r.error is not None and "SIGSEGV" in r.error
    with pytest.raises(WorkerCrashed):
        pool.call(_job_exit, timeout=30)
    assert pool.call(_job_echo, {"a": [1, 2]}, timeout=30) == {"a": [1, 2]}


def test_pool_job_errors(pool: VerifierPool) -> None:
    with pytest.raises(VerifierError, match="ValueError: boom"):
        pool.run(_job_raise, timeout=30)
    with pytest.raises(VerifierError, match="not Result"):
        pool.run(_job_echo, 5, timeout=30)
    with pytest.raises(VerifierError, match="picklable"):
        pool.run(lambda: None, timeout=30)
    with pytest.raises(VerifierError):
        pool.run("no.such.module:fn", timeout=30)
    assert pool.run(_job_result, 0.0, timeout=30).score == 0.0  # still usable


def test_pool_concurrent_threads(pool: VerifierPool) -> None:
    results: list[object] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                results.append(pool.call(_job_sleep_pid, 0.05, timeout=30))
        except BaseException as exc:
            errors.append(exc)

    # One thread's job hangs and is killed meanwhile; the others keep being served.
    hung: list[Result] = []
    hanger = threading.Thread(target=lambda: hung.append(pool.run(_job_hang, timeout=1.5)))
    threads = [threading.Thread(target=worker) for _ in range(5)]
    hanger.start()
    for t in threads:
        t.start()
    for t in (*threads, hanger):
        t.join(60)
    assert not errors
    assert len(results) == 15 and all(isinstance(p, int) for p in results)
    assert hung and hung[0].error is not None and hung[0].error.startswith("timeout")


def test_pool_from_trio_threads(pool: VerifierPool) -> None:
    trio = pytest.importorskip("trio")
    got: list[object] = []

    async def main() -> None:
        async def one(i: int) -> None:
            job = functools.partial(pool.call, _job_echo, i, timeout=30)
            got.append(await trio.to_thread.run_sync(job))

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)

    trio.run(main)
    assert sorted(got) == list(range(6))  # type: ignore[type-var]


def test_pool_close() -> None:
    p = VerifierPool(1)
    caught: list[BaseException] = []

    def busy() -> None:
        try:
            p.call(_job_hang, timeout=60)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=busy)
    t.start()
    time.sleep(1.0)
    p.close()
    t.join(20)
    assert caught and isinstance(caught[0], VerifierError)
    with pytest.raises(VerifierError, match="closed"):
        p.run(_job_result, 1.0, timeout=5)
    p.close()  # idempotent


def test_pool_submit_and_warmup() -> None:
    with VerifierPool(1, warmup=(MATH_WARMUP,)) as p:
        fut = p.submit(job_name(check_math), r"\boxed{1/2}", "0.5", timeout=30)
        assert fut.result(60).passed
        assert p.warm_errors() == []


def test_pool_recycles_worker_after_max_jobs() -> None:
    with VerifierPool(1, max_jobs_per_worker=2, context="forkserver") as p:
        pids = [p.call(_job_sleep_pid, 0.0, timeout=30) for _ in range(4)]
        assert pids[0] == pids[1] != pids[2] == pids[3]
        assert p.stats()["replaced"] == 2  # the second child also reached its limit
