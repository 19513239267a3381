"""Pure parts of the verifiers: answer extraction, rule checks, output prediction, test-format
parsing and output comparison, math-verify corrections and the DeepScaleR answer formats."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.code_tests import outputs_match, parse_report, parse_tests, score
from flopnet.verifiers.extract import code_blocks, extract_code, predicted_field
from flopnet.verifiers.math_verifier import check_math
from flopnet.verifiers.output_prediction import check_output_prediction
from flopnet.verifiers.registry import REGISTRY
from flopnet.verifiers.result import Result
from flopnet.verifiers.rules import attach_rules, check_repetition, check_truncation, run_rules

# -- extraction --------------------------------------------------------------------------------


def test_code_blocks_and_languages() -> None:
    text = "a\n```py\nx = 1\n```\nb\n````cpp\nint x;\n```\n````\n~~~\nraw\n~~~\n"
    blocks, unclosed = code_blocks(text)
    assert [(b.language, b.code) for b in blocks] == [
        ("python", "x = 1\n"),
        ("cpp", "int x;\n```\n"),
        (None, "raw\n"),
    ]
    assert not unclosed
    assert code_blocks("```python\nprint(1)\n")[1]


def test_extract_code_prefers_the_final_answer() -> None:
    response = "<think>```python\ndraft()\n```</think>"
    response += "```rust\nfn main(){}\n```\n```python\nok()\n```"
    block, _ = extract_code(response)
    assert block is not None and block.code == "ok()\n"
    block, _ = extract_code(response, "rust")
    assert block is not None and block.language == "rust"
    block, why = extract_code(response, "cpp")
    assert block is None and "no code block in cpp" in why
    block, why = extract_code("<think>```python\nx\n```")
    assert block is None and "unfinished <think>" in why


def test_predicted_field() -> None:
    assert predicted_field('</think> {"output": "5"} then {"output": "6"}') == (
        "6",
        "prediction from the last JSON object's 'output' field",
    )
    assert predicted_field('</think> {"output": [1, 2]}')[0] == "[1, 2]"
    assert predicted_field('<think>{"output": "5"}</think> forgot')[0] is None
    assert predicted_field('</think> {"answer": "5"}')[0] is None


# -- output prediction -------------------------------------------------------------------------


def test_output_prediction() -> None:
    task = {"gold": "hello\nworld\n"}
    ok = check_output_prediction(task, '</think>```json\n{"output": "hello\\nworld"}\n```')
    assert ok.passed and "trailing whitespace" in ok.reasons[-1]
    exact = check_output_prediction({"gold": "3"}, '</think>{"output": "3"}')
    assert exact.passed and exact.reasons[-1] == "exact match"
    wrong = check_output_prediction({"gold": "3"}, '<think>{"output": "3"}</think>{"output": "4"}')
    assert not wrong.passed and "expected '3'" in wrong.reasons[-1]
    missing = check_output_prediction({"gold": "3"}, "</think> It prints 3.")
    assert missing.score == 0.0 and missing.error is None and "no JSON object" in missing.reasons[0]
    assert check_output_prediction({"gold": [1, 2]}, '</think>{"output": [1, 2]}').passed
    with pytest.raises(VerifierError):
        check_output_prediction({}, '</think>{"output": "3"}')


# -- rules -------------------------------------------------------------------------------------


def test_format_rule() -> None:
    good, *_ = run_rules("<think>reasoning</think>The answer.")
    assert good.ok
    assert run_rules("reasoning</think>The answer.")[0].ok  # <think> came with the prompt
    for bad in ("no tags", "<think>a</think>b</think>c", "<think>a</think>   ", "</think>x<think>"):
        assert not run_rules(bad)[0].ok, bad


def test_repetition_rule() -> None:
    prose = " ".join(f"word{i}" for i in range(3000))
    assert check_repetition(prose).ok
    looping = prose + " and then I repeat myself again and again" * 400
    assert not check_repetition(looping).ok
    assert check_repetition("short").ok


def test_truncation_rule() -> None:
    assert not check_truncation("</think> x", response_tokens=4096, max_tokens=4096).ok
    assert check_truncation("</think> x", response_tokens=100, max_tokens=4096).ok
    assert not check_truncation("<think> still thinking").ok
    assert not check_truncation("</think> ```python\nprint(").ok
    assert not check_truncation("</think> so \\boxed{12").ok


def test_rules_attach_and_gate() -> None:
    checks = run_rules("no think block, answer \\boxed{1}")
    plain = attach_rules(Result(1.0, True, ("ok",)), checks)
    assert plain.passed and dict(plain.rules) == {
        "format": False,
        "repetition": True,
        "truncation": True,
    }
    assert plain.reasons[-1].startswith("rules: format FAILED")
    gated = attach_rules(Result(1.0, True, ("ok",)), checks, gate=True)
    assert not gated.passed and gated.score == 0.0
    assert Result.from_dict(json.loads(json.dumps(gated.to_dict()))) == gated


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab `{}\\\n<>/thinkboxed$")), max_size=300))
def test_text_helpers_never_crash(text: str) -> None:
    run_rules(text)
    extract_code(text)
    predicted_field(text)
    assert outputs_match(text, text)


# -- test formats and scoring ------------------------------------------------------------------


def test_parse_tests_formats() -> None:
    he = parse_tests({"tests": "def check(candidate):\n    assert 1\n", "entry_point": "f"})
    assert he.kind == "check" and he.entry_point == "f" and not he.prelude
    lc = parse_tests({"tests": {"functional": "def check(c):\n    assert c()\ncheck(f)"}})
    assert lc.kind == "check" and "from typing import *" in lc.prelude
    mbpp = parse_tests({"tests": "assert f(1) == 1\nassert f(2) == (\n  2)\n"})
    assert mbpp.asserts == ("assert f(1) == 1", "assert f(2) == (\n  2)")
    cf = parse_tests({"tests": [{"input": "1", "output": "2"}], "time_limit": 100})
    assert cf.stdio == (("1", "2"),) and cf.time_limit_s == 30.0
    cc = parse_tests({"tests": json.dumps({"inputs": ["a", "b"], "outputs": ["c", "d"]})})
    assert cc.kind == "stdio" and len(cc.stdio) == 2
    for bad in (
        {},
        {"tests": []},
        {"tests": {"inputs": ["a"], "outputs": []}},
        {"tests": "def check(candidate):\n    assert 1\n"},
        {"tests": ["assert 1"], "entry_point": "not an identifier"},
        {"tests": ["assert 1"], "time_limit": "fast"},
    ):
        with pytest.raises(VerifierError):
            parse_tests(bad)


def test_outputs_match() -> None:
    assert outputs_match("1 2\n3\n", "1 2   \r\n3\n\n\n")
    assert outputs_match("0.5000000", "0.50000001")
    assert not outputs_match("0.5", "0.51")
    assert not outputs_match("5", "5.0")
    assert not outputs_match("1 2", "1 2 3")
    assert outputs_match("YES", "YES\n") and not outputs_match("YES", "yes")


def test_parse_report_needs_the_nonce() -> None:
    n = "f" * 32
    text = f"0 pass\n{n} total 3\n{n} 0 pass\nfake {n} 1 pass\n"
    text += f'{n} 2 fail "timeout"\n{n} 0 fail "x"\n'
    report = parse_report(text, n)
    assert report.total == 3 and report.outcomes == {0: (True, ""), 2: (False, "timeout")}
    result = score(report.outcomes, 3)
    assert result.score == pytest.approx(1 / 3) and "1 test(s) not reported" in result.reasons[-1]
    assert parse_report(f'{n} error "bad tests"', n).error == "bad tests"


def test_registry_names_and_aliases() -> None:
    assert REGISTRY.get("verifiable_math").name == "math"
    assert REGISTRY.get("stem").name == "llm_judge"
    with pytest.raises(VerifierError, match="unknown task_type"):
        REGISTRY.get("poetry")


# -- math: math-verify corrections and the DeepScaleR formats -----------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("8.7e8", "870000000", True),  # e-notation, not 8.7·e·8
        ("1.5e-3", "0.0015", True),
        ("8.7e8", "8.7", False),
        (r"8.7\times 10^{8}", "870000000", True),  # math-verify alone says no
        (r"\frac{1}{2004!}", r"\frac{1}{2006!}", False),  # math-verify alone says yes
        ("10^{-20}", r"2\cdot 10^{-20}", False),
        (r"0.333333", r"\frac{1}{3}", True),  # its decimal rounding is kept
        (r"12^{\text{th}}", "12", True),
        (r"1-\frac{1}{e}", r"1+\frac{1}{e}", False),
        ("e", "e", True),
    ],
)
def test_math_verify_corrections(answer: str, gold: str, expected: bool) -> None:
    assert check_math(f"</think> \\boxed{{{answer}}}", gold).passed is expected


DEEPSCALER = [
    "deepscaler_test_aime24.json",
    "deepscaler_test_amc.json",
    "deepscaler_test_minerva.json",
    "deepscaler_test_olympiad_bench.json",
    "deepscaler_train_math.json",
]


def _as_boxed(answer: Any) -> str:
    """What a correct model would box for a DeepScaleR gold."""
    if isinstance(answer, list):
        answer = answer[0]
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return re.sub(r"(?<!\\)\$", "", str(answer)).strip()


def _empty(answer: Any) -> bool:
    return answer is None or answer == [] or (isinstance(answer, str) and not answer.strip())


@pytest.mark.parametrize("name", DEEPSCALER)
def test_deepscaler_answer_formats(name: str) -> None:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    rows = json.loads(path.read_text(encoding="utf-8"))
    rows = rows[:40] + [r for r in rows if _empty(r.get("answer"))][:2]  # the empty golds too
    accepted = unusable = false_accepts = 0
    for row in rows:
        gold = row["answer"]
        try:
            right = check_math(f"<think>...</think> So $\\boxed{{{_as_boxed(gold)}}}$.", gold)
            accepted += right.passed
            false_accepts += check_math("</think> \\boxed{987654321}", gold).passed
        except VerifierError:
            unusable += 1  # an empty gold is the task's fault: reported, never a crash
    usable = len(rows) - unusable
    assert unusable == sum(1 for r in rows if _empty(r.get("answer")))
    assert accepted == usable and false_accepts == 0
