"""The loaders' tasks judged by the validator's real verifiers: reference solutions pass in the
bubblewrap sandbox (LeetCode's own Python references; Codeforces and CodeContests references
written here in Python, JavaScript, C++ and Rust) and wrong answers fail; generated output
prediction tasks have a gold answer the sandbox reproduces; a judge task is scored through an
OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from conftest import SHARED_DATA
from test_verifiers_judge import JudgeServer

from flopnet.node.tasks import Task, load_tasks_file, parse_map
from flopnet.node.tasks.files import read_records
from flopnet.node.tasks.output_prediction import generate_output_prediction, harvest
from flopnet.verifiers.registry import Verifiers, VerifyOptions

DATA = SHARED_DATA
pytestmark = [
    pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]
TOOLS = {"python": "python3", "javascript": "node", "cpp": "g++", "rust": "rustc"}


def spec(task: Task, max_tokens: int = 512) -> dict[str, Any]:
    """The verifier spec exactly as the validator builds it (``Validator._check_answer``)."""
    return {
        **task.verifier,
        "task_type": task.task_type,
        "gold": task.answer,
        "max_tokens": max_tokens,
    }


def answer(code: str, language: str) -> str:
    return f"<think>\nI will write it.\n</think>\n```{language}\n{code}\n```"


@pytest.fixture(scope="module")
def verifiers() -> Iterator[Verifiers]:
    with Verifiers(VerifyOptions(sandbox="bwrap", code_budget_s=60), workers=2) as v:
        yield v


def _by_language(tasks: list[Task]) -> Mapping[str, Task]:
    return {t.verifier["language"]: t for t in tasks}


# Codeforces 0: print min and max of each pair.
MIN_MAX = {
    "python": "t = int(input())\nfor _ in range(t):\n    x, y = map(int, input().split())\n"
    "    print(min(x, y), max(x, y))",
    "javascript": "const v = require('fs').readFileSync(0, 'utf8').trim()"
    ".split(/\\s+/).map(Number);\nconst out = [];\nfor (let i = 0; i < v[0]; i++) {\n"
    "  const x = v[1 + 2 * i], y = v[2 + 2 * i];\n"
    "  out.push(Math.min(x, y) + ' ' + Math.max(x, y));\n}\nconsole.log(out.join('\\n'));",
    "cpp": "#include <bits/stdc++.h>\nint main() { int t, x, y; std::cin >> t;\n"
    "  while (t--) { std::cin >> x >> y; std::cout << std::min(x, y) << ' ' << std::max(x, y)"
    " << '\\n'; } }",
    "rust": "use std::io::Read;\nfn main() { let mut s = String::new();\n"
    "  std::io::stdin().read_to_string(&mut s).unwrap();\n"
    "  let v: Vec<i64> = s.split_whitespace().map(|w| w.parse().unwrap()).collect();\n"
    "  for i in 0..v[0] as usize { let (x, y) = (v[1 + 2 * i], v[2 + 2 * i]);\n"
    '    println!("{} {}", x.min(y), x.max(y)); } }',
}
# Codeforces 5: lattice points with r <= distance < r + 1 (an O(r) count per test).
LATTICE = {
    "python": "import sys\nfrom math import isqrt\n\n"
    "def inside(n2):\n    r = isqrt(n2 - 1)\n"
    "    return sum(2 * isqrt(n2 - 1 - x * x) + 1 for x in range(-r, r + 1))\n\n"
    "data = sys.stdin.read().split()\n"
    "print('\\n'.join(str(inside((r + 1) ** 2) - inside(r * r)) "
    "for r in map(int, data[1:1 + int(data[0])])))",
    "cpp": "#include <bits/stdc++.h>\ntypedef long long ll;\n"
    "ll isq(ll n) { ll r = sqrtl((long double)n); while (r * r > n) r--;"
    " while ((r + 1) * (r + 1) <= n) r++; return r; }\n"
    "ll inside(ll n2) { ll r = isq(n2 - 1), s = 0;"
    " for (ll x = -r; x <= r; x++) s += 2 * isq(n2 - 1 - x * x) + 1; return s; }\n"
    "int main() { int t; std::cin >> t; while (t--) { ll r; std::cin >> r;"
    " std::cout << inside((r + 1) * (r + 1)) - inside(r * r) << '\\n'; } }",
}
# CodeContests 0: sort titles ascending on odd positions, descending on even ones.
ASC_DESC = {
    "python": "import sys\ndata = sys.stdin.read().split()\nn = int(data[0])\n"
    "words = data[2:2 + n]\n\ndef key(s):\n"
    "    return ''.join(c if j % 2 == 0 else chr(155 - ord(c)) for j, c in enumerate(s))\n\n"
    "print(' '.join(str(i + 1) for i in sorted(range(n), key=lambda i: key(words[i]))))",
    "rust": "use std::io::Read;\nfn main() { let mut s = String::new();\n"
    "  std::io::stdin().read_to_string(&mut s).unwrap(); let mut it = s.split_whitespace();\n"
    "  let n: usize = it.next().unwrap().parse().unwrap(); it.next();\n"
    "  let keys: Vec<Vec<u8>> = (0..n).map(|_| it.next().unwrap().bytes().enumerate()\n"
    "    .map(|(j, c)| if j % 2 == 0 { c } else { 155 - c }).collect()).collect();\n"
    "  let mut idx: Vec<usize> = (0..n).collect(); idx.sort_by(|&a, &b| keys[a].cmp(&keys[b]));\n"
    "  let out: Vec<String> = idx.iter().map(|i| (i + 1).to_string()).collect();\n"
    '  println!("{}", out.join(" ")); }',
}


@pytest.mark.timeout(300)
def test_stdio_references_pass_in_every_language_and_wrong_answers_fail(
    verifiers: Verifiers,
) -> None:
    missing = [tool for tool in TOOLS.values() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"toolchains missing: {missing}")
    forces = load_tasks_file(DATA / "rllm_test_codeforces.json", limit=24)
    first, lattice = _by_language(forces[:4]), _by_language(forces[20:24])
    assert first["python"].problem.lstrip().startswith("You are given two integers $x$ and $y$")
    assert "lattice points" in lattice["cpp"].problem
    contests = _by_language(load_tasks_file(DATA / "rllm_test_code_contests.json", limit=4))
    cases = [(first[lang], code, lang) for lang, code in MIN_MAX.items()]
    cases += [(lattice[lang], code, lang) for lang, code in LATTICE.items()]
    cases += [(contests[lang], code, lang) for lang, code in ASC_DESC.items()]
    items = [(spec(task), answer(code, lang), None) for task, code, lang in cases]
    for (task, _code, lang), result in zip(cases, verifiers.verify_many(items), strict=True):
        assert result.error is None, (task.task_id, result.error)
        assert result.passed and result.score == 1.0, (task.task_id, lang, result.reasons)
    # Wrong answers: max before min; C++ code for the task posed in Rust.
    swapped = MIN_MAX["python"].replace("min(x, y), max(x, y)", "max(x, y), min(x, y)")
    wrong = verifiers.verify(spec(first["python"]), answer(swapped, "python"))
    assert not wrong.passed and wrong.score < 1.0
    other = verifiers.verify(spec(first["rust"]), answer(MIN_MAX["cpp"], "cpp"))
    assert not other.passed and "no code block in rust" in " ".join(other.reasons)


@pytest.mark.timeout(180)
def test_leetcode_references_pass_and_a_wrong_solution_fails(verifiers: Verifiers) -> None:
    raw = json.loads((DATA / "rllm_test_leetcode.json").read_text())
    tasks = load_tasks_file(DATA / "rllm_test_leetcode.json", limit=6, languages=("python",))
    items = [(spec(t), answer(raw[i]["solutions"], "python"), None) for i, t in enumerate(tasks)]
    items.append((spec(tasks[0]), answer(raw[1]["solutions"], "python"), None))  # the wrong one
    results = list(verifiers.verify_many(items))
    for task, result in zip(tasks, results[:-1], strict=False):
        assert result.error is None and result.passed, (task.task_id, result.reasons)
    assert not results[-1].passed and results[-1].score == 0.0


@pytest.mark.timeout(180)
def test_output_prediction_gold_is_reproduced_by_the_sandbox(verifiers: Verifiers) -> None:
    functions, strings = harvest(read_records(DATA / "mbpp.jsonl"), "mbpp")
    assert len(functions) > 50 and len(strings) > 100  # MBPP's string-processing functions
    source = generate_output_prediction(DATA / "mbpp.jsonl", count=6, seed=7)
    tasks = source.tasks
    assert len(tasks) == 6 and {t.task_type for t in tasks} == {"code_output_prediction"}
    again = generate_output_prediction(DATA / "mbpp.jsonl", count=6, seed=7).tasks
    assert again == tasks  # deterministic for a seed
    other = generate_output_prediction(DATA / "mbpp.jsonl", count=6, seed=8).tasks
    assert {t.task_id for t in other}.isdisjoint(t.task_id for t in tasks)
    runs = []
    for task in tasks:
        code = task.problem.split("```python\n", 1)[1].split("```", 1)[0]
        literal = task.problem.rsplit("Here is the input string:\n", 1)[1]
        program = f"{code}\nprint(stuff({literal}), end='')\n"
        # The sandbox runs the shown program on the shown input: it prints the gold.
        stdio = {"task_type": "code", "language": "python"}
        stdio["tests"] = [{"input": "", "output": task.answer}]  # type: ignore[assignment]
        runs.append((stdio, answer(program, "python"), None))
        right = '<think>\nTracing it.\n</think>\n{"output": ' + json.dumps(task.answer) + "}"
        wrong = '<think>\nGuessing.\n</think>\n{"output": ' + json.dumps(task.answer + "x") + "}"
        runs += [(spec(task), right, None), (spec(task), wrong, None)]
    results = list(verifiers.verify_many(runs))
    for i, task in enumerate(tasks):
        reproduced, right, wrong = results[3 * i : 3 * i + 3]
        assert reproduced.passed, (task.task_id, reproduced.reasons)
        assert right.passed and right.score == 1.0, right.reasons
        assert not wrong.passed, wrong.reasons


@pytest.mark.timeout(120)
def test_output_prediction_from_stdio_data_and_a_file_without_material(tmp_path: Any) -> None:
    source = generate_output_prediction(DATA / "rllm_test_codeforces.json", count=3, seed=1)
    assert len(source.tasks) == 3  # helpers only, inputs from the tests' strings
    assert all("def stuff(a: str) -> str:" in t.problem for t in source.tasks)
    from flopnet.protocol.errors import ConfigError

    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps([{"problem": "1+1", "answer": "2"}]))
    with pytest.raises(ConfigError, match="no string-processing functions"):
        generate_output_prediction(numbers, count=2)


@pytest.mark.timeout(120)
def test_a_judge_task_is_scored_by_an_openai_compatible_server() -> None:
    server = JudgeServer()
    try:
        task = load_tasks_file(
            DATA / "deepscaler_test_minerva.json", limit=1, field_map=parse_map("type=llm_judge")
        )[0]
        options = VerifyOptions(judge_url=server.url, judge_model="grader", judge_api_key="sk-1")
        with Verifiers(options, workers=1) as verifiers:
            server.reply = '{"score": 90}'
            good = verifiers.verify(
                spec(task), "<think>\nSecret draft 4242.\n</think>\nThe answer is 7."
            )
            server.reply = "I would give it a score: 20"
            poor = verifiers.verify(spec(task), "<think>\nHmm.\n</think>\nNo idea.")
    finally:
        server.close()
    assert good.error is None and good.passed and good.score == pytest.approx(0.9)
    assert poor.error is None and not poor.passed and poor.score == pytest.approx(0.2)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["model"] == "grader"
    sent = request["messages"][-1]["content"]
    assert task.problem in sent and task.answer in sent and "The answer is 7." in sent
    assert "Secret draft 4242" not in sent  # the judge sees the final answer, not the reasoning
    assert server.headers[0]["Authorization"] == "Bearer sk-1"
