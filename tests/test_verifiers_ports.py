"""LeetCode problems ported to JavaScript, C++ and Rust: the calls travel as data, the verifier
builds the answer with a harness in the bubblewrap sandbox and compares each printed value
outside the answer's process. Correct answers written here pass; wrong ones, crashes and tricks
fail; the pure parts (types, literals, comparison, the port of all 200 records) are checked
without a sandbox."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SHARED_DATA
from hypothesis import given
from hypothesis import strategies as st
from test_task_verification import answer, spec

from flopnet.node.tasks import load_tasks_file
from flopnet.node.tasks.base import UnusableRecord
from flopnet.node.tasks.leetcode import port_spec
from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.ports import (
    MARKER,
    Call,
    Signature,
    compare,
    fits,
    parse_spec,
    same,
    skeleton,
    snake,
)
from flopnet.verifiers.registry import Verifiers, VerifyOptions

LEETCODE = SHARED_DATA / "rllm_test_leetcode.json"

# LeetCode 0 (minOperations), 163 (isArraySpecial with queries) and 180 (getEncryptedString),
# solved here in each language.
SOLUTIONS: dict[int, dict[str, str]] = {
    0: {
        "javascript": "var minOperations = function(nums, k) {\n  const s = new Set();\n"
        "  for (let i = nums.length - 1; i >= 0; i--) {\n    if (nums[i] <= k) s.add(nums[i]);\n"
        "    if (s.size === k) return nums.length - i;\n  }\n  return nums.length;\n};",
        "cpp": "class Solution {\npublic:\n    int minOperations(vector<int>& nums, int k) {\n"
        "        set<int> s; int n = nums.size();\n        for (int i = n - 1; i >= 0; --i) {\n"
        "            if (nums[i] <= k) s.insert(nums[i]);\n"
        "            if ((int)s.size() == k) return n - i;\n        }\n        return n;\n"
        "    }\n};",
        "rust": "use std::collections::HashSet;\nimpl Solution {\n"
        "    pub fn min_operations(nums: Vec<i32>, k: i32) -> i32 {\n"
        "        let mut s = HashSet::new();\n        let n = nums.len();\n"
        "        for i in (0..n).rev() {\n            if nums[i] <= k { s.insert(nums[i]); }\n"
        "            if s.len() as i32 == k { return (n - i) as i32; }\n        }\n"
        "        n as i32\n    }\n}",
    },
    163: {
        "javascript": "var isArraySpecial = function(nums, queries) {\n  const bad = [0];\n"
        "  for (let i = 1; i < nums.length; i++)\n"
        "    bad.push(bad[i - 1] + ((nums[i] % 2) === (nums[i - 1] % 2) ? 1 : 0));\n"
        "  return queries.map(([a, b]) => bad[b] - bad[a] === 0);\n};",
        "cpp": "class Solution {\npublic:\n"
        "    vector<bool> isArraySpecial(vector<int>& nums, vector<vector<int>>& queries) {\n"
        "        vector<int> bad(nums.size(), 0);\n"
        "        for (size_t i = 1; i < nums.size(); ++i)\n"
        "            bad[i] = bad[i - 1] + (nums[i] % 2 == nums[i - 1] % 2);\n"
        "        vector<bool> out;\n"
        "        for (auto& q : queries) out.push_back(bad[q[1]] - bad[q[0]] == 0);\n"
        "        return out;\n    }\n};",
        "rust": "impl Solution {\n"
        "    pub fn is_array_special(nums: Vec<i32>, queries: Vec<Vec<i32>>) -> Vec<bool> {\n"
        "        let mut bad = vec![0; nums.len()];\n"
        "        for i in 1..nums.len() {\n"
        "            bad[i] = bad[i - 1] + if nums[i] % 2 == nums[i - 1] % 2 { 1 } else { 0 };\n"
        "        }\n"
        "        queries.iter().map(|q| bad[q[1] as usize] == bad[q[0] as usize]).collect()\n"
        "    }\n}",
    },
    180: {
        "javascript": "var getEncryptedString = function(s, k) {\n  let out = '';\n"
        "  for (let i = 0; i < s.length; i++) out += s[(i + k) % s.length];\n  return out;\n};",
        "cpp": "class Solution {\npublic:\n    string getEncryptedString(string& s, int k) {\n"
        "        string out = s; int n = s.size();\n"
        "        for (int i = 0; i < n; ++i) out[i] = s[(i + k) % n];\n        return out;\n"
        "    }\n};",
        "rust": "impl Solution {\n    pub fn get_encrypted_string(s: String, k: i32) -> String {\n"
        "        let b = s.as_bytes(); let n = b.len();\n"
        "        (0..n).map(|i| b[(i + k as usize) % n] as char).collect()\n    }\n}",
    },
}
LANGUAGES = ("javascript", "cpp", "rust")


@pytest.fixture(scope="module")
def tasks() -> dict[tuple[int, str], Any]:
    loaded = load_tasks_file(LEETCODE, languages=LANGUAGES)
    by_key = {}
    for task in loaded:
        index = int(task.task_id.split("-")[1])
        by_key[(index, task.verifier["language"])] = task
    return by_key


# -- pure -----------------------------------------------------------------------------------------


def test_every_leetcode_record_but_the_float_one_ports() -> None:
    records = json.loads(LEETCODE.read_text())
    ported, refused = 0, []
    for record in records:
        statement = record["problem"].partition("\n")[2]
        try:
            parse_spec(port_spec(statement, record["tests"]["functional"]))
            ported += 1
        except UnusableRecord as exc:
            refused.append(str(exc))
    assert ported == 199 and refused == ["no port of the type float"]


def test_skeletons_are_leetcodes_starters_in_each_language() -> None:
    sig = Signature("getWords", (("n", "int"), ("words", "list<str>")), "list<list<int>>")
    assert skeleton(sig, "cpp") == (
        "class Solution {\npublic:\n    vector<vector<int>> getWords(int n, "
        "vector<string>& words) {\n        \n    }\n};"
    )
    assert "pub fn get_words(n: i32, words: Vec<String>) -> Vec<Vec<i32>>" in skeleton(sig, "rust")
    js = skeleton(sig, "javascript")
    assert "@param {string[]} words" in js and "var getWords = function(n, words)" in js
    assert snake("isArraySpecial") == "is_array_special" and snake("k") == "k"


def test_big_values_widen_the_type_and_unportable_values_are_refused() -> None:
    statement = (
        "Sum them.\nPlease complete the following python code precisely:\n```python\n"
        "class Solution:\n    def total(self, nums: List[int]) -> int:\n```"
    )
    spec_ = port_spec(
        statement,
        "def check(candidate):\n    assert candidate([1099511627776, 1]) == 1099511627777\n",
    )
    assert spec_["signature"] == {
        "name": "total",
        "params": [["nums", "list<long>"]],
        "returns": "long",
    }
    with pytest.raises(UnusableRecord, match="fit"):  # beyond a JavaScript number's exact range
        port_spec(
            statement,
            "def check(candidate):\n"
            "    assert candidate([1152921504606846976]) == 1152921504606846976\n",
        )
    with pytest.raises(UnusableRecord, match="not `assert candidate"):
        port_spec(statement, "def check(candidate):\n    assert candidate([1]) > 0\n")
    with pytest.raises(VerifierError, match="unsupported port type"):
        parse_spec(
            {
                "signature": {"name": "f", "params": [["x", "float"]], "returns": "int"},
                "calls": [{"args": [1.5], "expected": 1}],
            }
        )


@given(
    st.recursive(
        st.one_of(st.booleans(), st.integers(-(2**31), 2**31 - 1), st.text('ab"\\ ~', max_size=5)),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=12,
    )
)
def test_plain_values_compare_equal_only_to_themselves(value: Any) -> None:
    assert same(json.loads(json.dumps(value)), value)
    if isinstance(value, bool):
        assert not same(int(value), value)  # true is not 1
    if isinstance(value, int) and not isinstance(value, bool):
        assert not same(float(value) + 0.5, value)


def test_only_the_first_marked_line_per_call_counts() -> None:
    calls = [Call((1,), 2), Call((2,), 3)]
    out = f"debug 1 2\n{MARKER} 0 2\n{MARKER} 0 99\n{MARKER} 1 4\n{MARKER} 7 3\n"
    assert compare(out, calls) == {0: (True, ""), 1: (False, "wrong answer")}
    assert compare(f"{MARKER} 0 {{bad", calls)[0] == (False, "the result is not a plain value")
    assert not fits("é", "str") and fits(["a"], "list<str>") and not fits(True, "int")


# -- in the sandbox -------------------------------------------------------------------------------

pytestmark_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")


@pytest.fixture(scope="module")
def verifiers() -> Iterator[Verifiers]:
    with Verifiers(VerifyOptions(sandbox="bwrap", code_budget_s=60), workers=2) as v:
        yield v


@pytestmark_sandbox
@pytest.mark.timeout(600)
def test_correct_answers_pass_in_each_language_and_wrong_ones_fail(
    tasks: dict[tuple[int, str], Any], verifiers: Verifiers
) -> None:
    items, names = [], []
    for index, by_language in SOLUTIONS.items():
        for language, code in by_language.items():
            items.append((spec(tasks[(index, language)]), answer(code, language), None))
            names.append((index, language, "right"))
    # Wrong: another problem's answer (no such method: the build fails, or JS throws), and a
    # right answer off by one.
    items.append((spec(tasks[(0, "cpp")]), answer(SOLUTIONS[180]["cpp"], "cpp"), None))
    names.append((0, "cpp", "another problem's"))
    off = SOLUTIONS[0]["javascript"].replace(
        "return nums.length - i;", "return nums.length - i + 1;"
    )
    items.append((spec(tasks[(0, "javascript")]), answer(off, "javascript"), None))
    names.append((0, "javascript", "off by one"))
    results = list(verifiers.verify_many(items))
    for (index, language, kind), result in zip(names, results, strict=True):
        assert result.error is None, (index, language, result.error)
        if kind == "right":
            assert result.passed and result.score == 1.0, (index, language, result.reasons)
        else:
            assert not result.passed and result.score == 0.0, (index, language, result.reasons)


@pytestmark_sandbox
@pytest.mark.timeout(600)
def test_tricks_score_nothing(tasks: dict[tuple[int, str], Any], verifiers: Verifiers) -> None:
    task = tasks[(0, "cpp")]
    calls = task.verifier["tests"]["calls"]
    marker = "\\036flopnet-result"
    # Print a "result" for every call ahead of the harness (values the answer cannot know).
    forge = "\n".join(f'        cout << "{marker} {i} 0" << endl;' for i in range(len(calls)))
    tricks = {
        "forged result lines": SOLUTIONS[0]["cpp"]
        .replace("set<int> s;", "{\n" + forge + "\n        }\n        set<int> s;")
        .replace("return n - i;", "return -1;"),
        "exit before the harness prints": SOLUTIONS[0]["cpp"].replace(
            "set<int> s;", "exit(0); set<int> s;"
        ),
        "its own main": SOLUTIONS[0]["cpp"] + "\nint main() { return 0; }",
        "an abort": SOLUTIONS[0]["cpp"].replace("set<int> s;", "abort(); set<int> s;"),
    }
    items = [(spec(task), answer(code, "cpp"), None) for code in tricks.values()]
    # JavaScript: replace the console and JSON, throw, never return.
    js = {
        "JSON.stringify replaced": "JSON.stringify = () => '4';\n"
        + SOLUTIONS[0]["javascript"].replace("return nums.length - i;", "return -1;"),
        "an endless loop": "var minOperations = function(nums, k) { for (;;) {} };",
    }
    items += [
        (spec(tasks[(0, "javascript")]), answer(code, "javascript"), None) for code in js.values()
    ]
    results = list(verifiers.verify_many(items))
    for name, result in zip([*tricks, *js], results, strict=True):
        assert result.error is None, (name, result.error)
        assert result.score < 1.0 and not result.passed, (name, result.reasons)
