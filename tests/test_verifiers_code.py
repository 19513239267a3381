"""The code verifier end to end (registry → pool child → bubblewrap): accuracy on subsets of the
shared data, mutants, languages, partial scores, and answers that try to fake their results.

The full 164 HumanEval / 974 MBPP runs live in benchmarks/verifiers_bench.py.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SHARED_DATA

from flopnet.verifiers.mutants import drop_return, flip_operator
from flopnet.verifiers.registry import Verifiers, VerifyOptions
from flopnet.verifiers.result import Result

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def _load_jsonl(name: str, n: int) -> list[dict[str, Any]]:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def _load_json(name: str) -> list[dict[str, Any]]:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def fenced(code: str, lang: str = "python") -> str:
    return f"<think>Let me write it.</think>\nHere it is:\n```{lang}\n{code}\n```\n"


@pytest.fixture(scope="module")
def verifiers() -> Iterator[Verifiers]:
    with Verifiers(VerifyOptions(sandbox="bwrap", code_budget_s=30), workers=2) as v:
        yield v


def _many(v: Verifiers, items: list[tuple[dict[str, Any], str]]) -> list[Result]:
    return list(v.verify_many((t, r, None) for t, r in items))


def _humaneval_task(row: dict[str, Any]) -> dict[str, Any]:
    return {"task_type": "code", "tests": row["test"], "entry_point": row["entry_point"]}


def _mbpp_task(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_type": "code",
        "tests": row["test_list"],
        "test_setup_code": row["test_setup_code"],
    }


# -- accuracy on the shared data ---------------------------------------------------------------


def test_humaneval_references_pass_and_mutants_fail(verifiers: Verifiers) -> None:
    rows = _load_jsonl("HumanEval.jsonl.gz", 20)
    items, mutants = [], []
    for row in rows:
        source = row["prompt"] + row["canonical_solution"]
        items.append((_humaneval_task(row), fenced(source)))
        for mutate in (flip_operator, drop_return):
            mutant = mutate(source, row["entry_point"])
            if mutant is not None:
                mutants.append((_humaneval_task(row), fenced(mutant)))
    results = _many(verifiers, items)
    assert [r.score for r in results] == [1.0] * len(rows), [r.reasons for r in results]
    assert len(mutants) >= 35
    mutant_results = _many(verifiers, mutants)
    assert all(not r.passed for r in mutant_results)


def _direct_verdict(code: str, tests: list[str], setup: str) -> bool:
    """The same asserts run by plain Python (no sandbox, no harness): the reference verdict."""
    program = "\n".join([code, setup, *tests])
    try:
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def test_mbpp_references_pass_and_mutants_agree_with_direct_runs(verifiers: Verifiers) -> None:
    rows = _load_jsonl("mbpp.jsonl", 30)
    results = _many(verifiers, [(_mbpp_task(r), fenced(r["code"])) for r in rows])
    assert [r.score for r in results] == [1.0] * len(rows), [r.reasons for r in results]
    items, direct = [], []
    for row in rows:
        for mutate in (flip_operator, drop_return):
            mutant = mutate(row["code"])
            if mutant is not None:
                items.append((_mbpp_task(row), fenced(mutant)))
                direct.append(_direct_verdict(mutant, row["test_list"], row["test_setup_code"]))
    verdicts = [r.passed for r in _many(verifiers, items)]
    # Some mutants are invisible to MBPP's three asserts (a dropped fallback return the tests
    # never reach); the verifier must agree with plain execution on every one.
    assert verdicts == direct
    assert sum(verdicts) <= len(verdicts) // 5


def test_leetcode_references_pass(verifiers: Verifiers) -> None:
    rows = _load_json("rllm_test_leetcode.json")[:15]
    items = [({"task_type": "code", "tests": r["tests"]}, fenced(r["solutions"])) for r in rows]
    results = _many(verifiers, items)
    assert all(r.passed for r in results), [r.reasons for r in results if not r.passed]
    # rllm ships tests as {"functional": ...}; as a JSON string it works the same way.
    as_string = {"task_type": "code", "tests": json.dumps(rows[0]["tests"])}
    assert verifiers.verify(as_string, fenced(rows[0]["solutions"])).passed


MIN_MAX = {
    "python": "t = int(input())\nfor _ in range(t):\n    x, y = map(int, input().split())\n"
    "    print(min(x, y), max(x, y))",
    "javascript": "const l = require('fs').readFileSync(0, 'utf8').trim().split('\\n');\n"
    "for (let i = 1; i <= +l[0]; i++) { const [x, y] = l[i].split(' ').map(Number);\n"
    "  console.log(Math.min(x, y) + ' ' + Math.max(x, y)); }",
    "cpp": "#include <algorithm>\n#include <iostream>\nint main(){int t;std::cin>>t;"
    "while(t--){int x,y;std::cin>>x>>y;std::cout<<std::min(x,y)<<' '<<std::max(x,y)<<'\\n';}}",
    "rust": "use std::io::*;\nfn main(){let mut s=String::new();stdin().read_to_string(&mut s)"
    ".unwrap();let v:Vec<i64>=s.split_whitespace().map(|x|x.parse().unwrap()).collect();"
    'for i in 0..v[0] as usize{let (x,y)=(v[1+2*i],v[2+2*i]);println!("{} {}",x.min(y),'
    "x.max(y));}}",
}
TOOLS = {"python": "python3", "javascript": "node", "cpp": "g++", "rust": "rustc"}


@pytest.mark.parametrize("lang", sorted(MIN_MAX))
def test_codeforces_stdio_in_each_language(verifiers: Verifiers, lang: str) -> None:
    if shutil.which(TOOLS[lang]) is None:
        pytest.skip(f"{TOOLS[lang]} not installed")
    problem = _load_json("rllm_test_codeforces.json")[0]
    task = {"task_type": "code", "tests": problem["tests"]}
    r = verifiers.verify(task, fenced(MIN_MAX[lang], lang))
    assert r.passed and r.score == 1.0, r.reasons
    assert f"language: {lang}" in r.reasons
    wrong = MIN_MAX[lang].replace("min", "MAX_").replace("max", "min").replace("MAX_", "max")
    assert not verifiers.verify(task, fenced(wrong, lang)).passed


def test_code_contests_format_and_partial_score(verifiers: Verifiers) -> None:
    problem = _load_json("rllm_test_code_contests.json")[0]
    assert set(problem["tests"]) == {"inputs", "outputs"}
    task = {"task_type": "code", "tests": problem["tests"]}
    r = verifiers.verify(task, fenced("print('nope')"))
    assert r.score == 0.0 and "wrong answer" in " ".join(r.reasons)
    # Our own four-test task: a program right on two of them scores 0.5.
    tests = [{"input": f"{n}\n", "output": f"{n * n}\n"} for n in (1, 2, 3, 4)]
    program = "n = int(input())\nprint(n * n if n < 3 else 0)"
    r = verifiers.verify({"task_type": "code", "tests": tests}, fenced(program))
    assert r.score == 0.5 and not r.passed and "2/4 tests passed" in r.reasons


def test_output_comparison_tolerances(verifiers: Verifiers) -> None:
    task = {"task_type": "code", "tests": [{"input": "", "output": "0.3333333\n5\n"}]}
    assert verifiers.verify(task, fenced("print(1/3)\nprint(5)   ")).passed  # reals, spaces
    assert not verifiers.verify(task, fenced("print(1/3)\nprint(5.0)")).passed  # ints exact


# -- answers that misbehave --------------------------------------------------------------------

ADD_TASK = {
    "task_type": "code",
    "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 0"],
}


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "def add(a, b):\n    raise SystemExit(0)",
        "print('0 pass')\nprint('total 0')",
        "import os\nos.write(1, b'x 0 pass\\n')\nraise SystemExit",
        "def add(a, b):\n    import os\n    os.kill(os.getpid(), 9)",
    ],
)
def test_faked_results_do_not_pass(verifiers: Verifiers, code: str) -> None:
    r = verifiers.verify(ADD_TASK, fenced(code))
    assert r.score == 0.0 and not r.passed, r.reasons


def test_one_hanging_test_fails_alone(verifiers: Verifiers) -> None:
    code = "def add(a, b):\n    while a == 2:\n        pass\n    return a + b"
    task = {**ADD_TASK, "time_limit": 1}
    r = verifiers.verify(task, fenced(code))
    assert r.score == pytest.approx(2 / 3) and "test 1: timeout" in r.reasons
    # Swallowing the timeout only runs into the wall-clock limit: the rest count as failed.
    code = "def add(a, b):\n    while True:\n        try:\n            while True: pass\n"
    code += "        except BaseException:\n            pass"
    r = verifiers.verify(task, fenced(code))
    assert r.score == 0.0


def test_humaneval_check_counts_each_assert() -> None:
    from flopnet.verifiers.code_tests import instrument

    source = (
        "def check(candidate):\n    import math\n    assert candidate(1) == 1\n"
        "    x = candidate(2)\n    for i in range(3):\n        assert candidate(i) >= 0\n"
        "    assert True, 'placeholder'\n"
    )
    wrapped, count = instrument(source)
    assert count == 2
    assert wrapped.count("__flopnet_passed(") == 2 and "assert True" in wrapped


def test_extraction_rules(verifiers: Verifiers) -> None:
    good = "def add(a, b):\n    return a + b"
    assert verifiers.verify(ADD_TASK, fenced(good)).passed
    # Only the final answer counts: code inside the think block does not.
    r = verifiers.verify(ADD_TASK, f"<think>```python\n{good}\n```</think> I give up.")
    assert not r.passed and "no code block" in r.reasons[0]
    r = verifiers.verify(ADD_TASK, f"</think>```python\n{good}\n")
    assert not r.passed and "unclosed" in r.reasons[0]
    # The solution block wins over sample output shown after it.
    assert verifiers.verify(ADD_TASK, fenced(good) + "Output:\n```\n3\n```").passed
    assert not verifiers.verify(ADD_TASK, f"</think>{good}").passed
    lenient = Verifiers(VerifyOptions(require_fence=False), pool=verifiers.pool)
    assert lenient.verify(ADD_TASK, f"</think>{good}").passed


def test_build_failure_and_wrong_language(verifiers: Verifiers) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    stdio = {"task_type": "code", "tests": [{"input": "", "output": "1"}]}
    r = verifiers.verify(stdio, fenced("int main( { return 0; }", "cpp"))
    assert not r.passed and any("build failed" in x for x in r.reasons)
    r = verifiers.verify(ADD_TASK, fenced("int add(int a, int b) { return a + b; }", "cpp"))
    assert not r.passed and any("need Python" in x or "no code block" in x for x in r.reasons)
    r = verifiers.verify({**stdio, "language": "cpp"}, fenced("print(1)"))
    assert not r.passed


def test_unusable_tasks_are_errors_not_crashes(verifiers: Verifiers) -> None:
    for task in (
        {"task_type": "code"},
        {"task_type": "code", "tests": "def check(candidate):\n    assert candidate(1)\n"},
        {"task_type": "code", "tests": [{"input": "1"}]},
        {"task_type": "code", "tests": "def check(c):\n  assert c(\n", "entry_point": "f"},
        {"task_type": "code", "tests": ["assert 1"], "language": "cobol"},
    ):
        r = verifiers.verify(task, fenced("def f(x):\n    return x"))
        assert r.error is not None and r.score == 0.0, task


# -- the registry's own guarantees -------------------------------------------------------------


def _job_hang(task: dict[str, Any], response: str) -> Result:
    import time

    time.sleep(3600)
    return Result(1.0, True)


def test_stuck_verifier_is_killed_and_reported(verifiers: Verifiers) -> None:
    from flopnet.verifiers.registry import Job, Registry, TaskType

    def prepare(task: Any, response: str, options: Any, v: Any) -> Job:
        return Job("test_verifiers_code:_job_hang", (dict(task), response), {}, 1.0)

    hanging = Verifiers(pool=verifiers.pool, registry=Registry([TaskType("hang", prepare)]))
    r = hanging.verify({"task_type": "hang"}, "</think> 42")
    assert r.error is not None and r.error.startswith("timeout") and r.score == 0.0
    assert dict(r.rules) == {"format": True, "repetition": True, "truncation": True}
    assert verifiers.verify(ADD_TASK, fenced("def add(a, b):\n    return a + b")).passed
