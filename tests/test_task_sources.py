"""Task sources: every shared data file loads with the right counts, fields and caps; hostile
and garbled files give a clear ConfigError and nothing else; --map, --tasks-file and
--languages parse as documented; each task's user message says its type and language."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flopnet.node.tasks.files as files_module
from flopnet.node.cli.main import build_parser
from flopnet.node.cli.task_args import judge_settings, languages, task_sources
from flopnet.node.config import EnvSettings, JudgeSettings, NetworkParams, NodeConfig
from flopnet.node.daemon import verify_options
from flopnet.node.model.prompt import format_r1_prompt
from flopnet.node.tasks import (
    LANGUAGES,
    Task,
    TaskSourceSpec,
    load_task_sources,
    load_tasks_file,
    parse_map,
    parse_source,
    task_from_spec,
    task_spec,
    user_message,
)
from flopnet.node.tasks.base import (
    MAX_ANSWER_BYTES,
    MAX_USER_MESSAGE_BYTES,
    MAX_VERIFIER_BYTES,
    file_stem,
)
from flopnet.node.tasks.code_tasks import stated_limits
from flopnet.node.tasks.files import load_file
from flopnet.protocol.codec import decode_record, packb
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.messages import MAX_TASK_SPEC_BYTES, TaskSpec
from flopnet.verifiers.code_tests import parse_tests

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")

# Records per shared file and how many tasks they give with every language (MANIFEST.md counts;
# in DeepScaleR's MATH set two answers are empty and two are null: they cannot label anything).
EXPECTED = {
    "HumanEval.jsonl.gz": (164, 164),
    "deepscaler_test_aime24.json": (30, 30),
    "deepscaler_test_amc.json": (83, 83),
    "deepscaler_test_math500.json": (500, 500),
    "deepscaler_test_minerva.json": (272, 272),
    "deepscaler_test_olympiad_bench.json": (675, 675),
    "deepscaler_train_aime.json": (975, 975),
    "deepscaler_train_math.json": (7474, 7470),
    "math500_test.jsonl": (500, 500),
    "mbpp.jsonl": (974, 974),
    # Python, and 199 of 200 ported to JavaScript, C++ and Rust (one returns a float).
    "rllm_test_leetcode.json": (200, 200 + 199 * 3),
    "rllm_test_codeforces.json": (408, 408 * 4),
    "rllm_test_code_contests.json": (165, 165 * 4),
}


def _fits_the_wire(task: Task) -> None:
    """The spec survives the validator's strict decode unchanged, within every cap."""
    data = task_spec(task).encode()
    assert len(data) < MAX_TASK_SPEC_BYTES
    assert task_from_spec(decode_record(TaskSpec, data, max_bytes=len(data))) == task
    assert len(user_message(task).encode()) <= MAX_USER_MESSAGE_BYTES
    assert len(task.answer.encode()) <= MAX_ANSWER_BYTES
    assert len(packb(dict(task.verifier))) <= MAX_VERIFIER_BYTES


@needs_data
def test_every_shared_file_loads_with_its_counts_and_caps() -> None:
    assert {p.name for p in DATA.glob("*.json*")} == set(EXPECTED)
    for name, (records, count) in EXPECTED.items():
        loaded = load_file(DATA / name)
        assert loaded.records == records, name
        assert len(loaded.tasks) == count, (name, loaded.describe())
        assert len({t.task_id for t in loaded.tasks}) == count, f"{name}: ids not unique"
        for task in loaded.tasks[:: max(1, count // 40)]:  # a spread sample per file
            assert task.task_id.startswith(file_stem(name) + "-")
            _fits_the_wire(task)
    # Empty and null gold answers are skipped and counted, not loaded (nor made "None").
    skipped = load_file(DATA / "deepscaler_train_math.json").skipped
    assert skipped == {"answer is empty": 2, "answer is None, not text": 2}


@needs_data
def test_code_sources_have_a_task_per_language_with_verifier_fields() -> None:
    forces = load_tasks_file(DATA / "rllm_test_codeforces.json", limit=8)
    assert [t.verifier["language"] for t in forces] == list(LANGUAGES) * 2
    first = forces[:4]
    assert len({t.problem for t in first}) == 1 and len({t.task_id for t in first}) == 4
    assert all(t.task_id.split("-")[2] == t.verifier["language"] for t in first)
    for task in forces:
        tests = parse_tests(task.verifier)  # what the validator's code verifier reads
        assert tests.kind == "stdio" and tests.stdio
        assert task.answer == "" and task.task_type == "code"
    # "Time Limit: 1000 ms": 1 s for C++ and Rust, twice that for Python and JavaScript.
    limits = {t.verifier["language"]: t.verifier["time_limit"] for t in first}
    assert limits == {"python": 2.0, "javascript": 2.0, "cpp": 1.0, "rust": 1.0}
    assert {t.verifier["memory_limit_mb"] for t in first} == {1024}

    contests = load_tasks_file(DATA / "rllm_test_code_contests.json", limit=4)
    raw = json.loads((DATA / "rllm_test_code_contests.json").read_text())[0]["tests"]
    assert contests[0].verifier["tests"] == [
        {"input": i, "output": o} for i, o in zip(raw["inputs"], raw["outputs"], strict=True)
    ]
    assert contests[0].verifier["time_limit"] == 4.0  # {'seconds': 2, 'nanos': 0}, Python

    leetcode = load_tasks_file(DATA / "rllm_test_leetcode.json", limit=12)  # tasks
    languages = ["python", "javascript", "cpp", "rust"]
    assert [t.verifier["language"] for t in leetcode] == languages * 3
    assert parse_tests(leetcode[0].verifier).kind == "check"  # Python: its own tests
    assert not leetcode[0].problem.startswith("Please solve the programming task")
    assert "class Solution" in leetcode[0].problem
    cpp = leetcode[2]  # ported: the starter in C++, the calls as data
    assert parse_tests(cpp.verifier).kind == "ported"
    assert "Please complete the following C++ code precisely:\n```cpp\nclass Solution {" in (
        cpp.problem
    )
    assert "```python" not in cpp.problem and "def " not in cpp.problem

    only = load_tasks_file(DATA / "rllm_test_codeforces.json", limit=4, languages=("cpp", "rust"))
    assert [t.verifier["language"] for t in only] == ["cpp", "rust"] * 2
    # --languages chooses LeetCode's languages too.
    kept = load_tasks_file(DATA / "rllm_test_leetcode.json", limit=2, languages=("rust",))
    assert [t.verifier["language"] for t in kept] == ["rust"] * 2
    assert "pub fn " in kept[0].problem


def test_stated_limits_in_both_statement_styles() -> None:
    assert stated_limits("Time Limit: 1000 ms\nMemory Limit: 256 MB\n") == (1.0, 256)
    assert stated_limits("Time Limit: {'seconds': 2, 'nanos': 500000000}\n") == (2.5, None)
    assert stated_limits("Memory Limit: 512000000 Bytes") == (None, 488)
    assert stated_limits("no limits here") == (None, None)


@needs_data
def test_user_messages_follow_r1_and_synthetic1() -> None:
    math = load_tasks_file(DATA / "deepscaler_test_aime24.json", limit=1)[0]
    message = user_message(math)
    assert message == (
        math.problem + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    # No system prompt: the template wraps the user message only.
    assert format_r1_prompt(message, directive="").count(message) == 1
    cpp = load_tasks_file(DATA / "rllm_test_codeforces.json", limit=3)[2]
    text = user_message(cpp)
    assert text.startswith("Solve the following coding problem using the programming language cpp:")
    assert "The input will be stdin and you should print your solution to stdout" in text
    assert text.endswith("in a single ```cpp code block.")
    leetcode = load_tasks_file(DATA / "rllm_test_leetcode.json", limit=1)[0]
    assert "stdin" not in user_message(leetcode) and "```python code block" in user_message(
        leetcode
    )
    judge = load_tasks_file(
        DATA / "deepscaler_test_minerva.json", limit=1, field_map=parse_map("type=stem")
    )[0]
    assert user_message(judge).endswith("\\boxed{}.")
    op = Task("op-1", "code_output_prediction", "code", "out")
    assert user_message(op).endswith("a field 'output' that contains the predicted output string.")


# -- field mappings ----------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_mapped_jsonl_gives_math_judge_and_code_tasks(tmp_path: Path) -> None:
    qa = _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "What is 2+2?", "gt": 4, "meta": {"uid": "q-1"}},
            {"question": "Name the gas plants absorb.", "gt": "carbon dioxide"},
            {"question": "", "gt": "1"},  # unusable: an empty problem
            {"gt": "x"},  # unusable: no question field
        ],
    )
    fm = parse_map("problem=question,answer=gt,id=meta.uid")
    loaded = load_file(qa, field_map=fm)
    assert [t.task_type for t in loaded.tasks] == ["math", "math"]
    assert loaded.tasks[0].answer == "4" and loaded.tasks[0].task_id.startswith("qa-0-q_1-")
    assert sum(loaded.skipped.values()) == 2

    judged = load_tasks_file(qa, field_map=parse_map("problem=question,answer=gt,type=judge"))
    assert {t.task_type for t in judged} == {"llm_judge"}
    assert judged[1].verifier == {"question": judged[1].problem}  # the judge needs it
    assert judged[1].answer == "carbon dioxide"

    code = _write_jsonl(
        tmp_path / "code.jsonl",
        [
            {"prompt": "Read two ints, print the sum.", "cases": [{"input": "1 2", "output": "3"}]},
            {"prompt": "Write add(a, b).", "cases": ["assert add(1, 2) == 3"]},
        ],
    )
    tasks = load_tasks_file(
        code, field_map=parse_map("problem=prompt,tests=cases,type=code"), languages=("rust",)
    )
    assert [(t.verifier["language"], parse_tests(t.verifier).kind) for t in tasks] == [
        ("rust", "stdio"),
        ("python", "asserts"),
    ]
    fixed = load_tasks_file(
        code, field_map=parse_map("problem=prompt,tests=cases,type=code,language=javascript")
    )
    assert fixed[0].verifier["language"] == "javascript"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "role=field"),
        ("problem", "not role=field"),
        ("problem=q,problem=r", "given twice"),
        ("shoe=size", "unknown role"),
        ("type=poetry", "unknown task type"),
        ("type=code", "needs tests"),
        ("language=cobol,type=code,tests=t", "language must be one of"),
        ("language=rust", "type=code only"),
        ("problem=a..b", "not a field name"),
    ],
)
def test_bad_maps_are_config_errors(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_map(text)


# -- hostile and garbled files -----------------------------------------------------------------


def test_garbled_files_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(name: str, data: bytes, why: str) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match=why):
            load_tasks_file(path)

    fails("empty.json", b"  \n", "empty")
    fails("latin1.json", '[{"problem": "caf\xe9"}]'.encode("latin-1"), "not UTF-8")
    fails("deep.json", b"[" * 200_000 + b"]" * 200_000, "nested too deeply")
    fails("nan.json", b'[{"problem": "x", "answer": NaN}]', "NaN is not JSON")
    fails("bigint.json", b'[{"problem": "x", "answer": ' + b"9" * 5000 + b"}]", "not JSON")
    fails("lines.jsonl", b'{"problem": "a", "answer": "1"}\n{"problem": \n', "line 2")
    fails("object.json", b'{"problem": "a"', "not JSON")
    fails("scalars.jsonl", b"1\n2\n", "record 0 is not a JSON object")
    fails("bad.gz", b"\x1f\x8b\x08\x00garbage", "cannot read")
    truncated = gzip.compress(b'[{"problem": "a", "answer": "1"}]')[:-12]
    fails("cut.json.gz", truncated, "cannot read")
    fails(
        "mixed.json",
        json.dumps([{"problem": "a", "answer": "1"}, {"problem": "b", "tests": []}]).encode(),
        "record 1 is not a math record",
    )
    fails(
        "surrogates.json",
        b'[{"problem": "\\ud800", "answer": "1"}, {"problem": "ok", "answer": ""}]',
        r"no usable tasks .*not valid Unicode",
    )
    fails(
        "huge.json",
        json.dumps([{"problem": "x" * 20_000, "answer": "1"}]).encode(),
        r"no usable tasks .*problem is N bytes",
    )
    fails(
        "tests.json",
        json.dumps(
            [
                {"problem": "p", "tests": [{"input": 1, "output": "2"}]},
                {"problem": "p", "tests": {"inputs": ["1"], "outputs": []}},
                {"problem": "p", "tests": "{not json"},
                {"problem": "p", "tests": {"functional": ["not", "text"]}},
            ]
        ).encode(),
        r"no usable tasks \(.*4 skipped",
    )
    monkeypatch.setattr(files_module, "MAX_FILE_BYTES", 64)
    fails("big.json", json.dumps([{"problem": "x" * 100, "answer": "1"}]).encode(), "MiB")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tasks_file(tmp_path)  # a directory


# Arbitrary JSON: the loader either gives tasks that fit every cap or a ConfigError.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(["problem", "answer", "tests", "prompt", "test", "entry_point", "text"])
_record = st.dictionaries(_keys, _json, max_size=5)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(_record | _json, max_size=5), jsonl=st.booleans())
def test_any_json_loads_or_fails_cleanly(tmp_path: Path, records: list[Any], jsonl: bool) -> None:
    path = tmp_path / ("t.jsonl" if jsonl else "t.json")
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    try:
        tasks = load_tasks_file(path)
    except ConfigError:
        return
    for task in tasks:
        _fits_the_wire(task)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_any_bytes_load_or_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_tasks_file(path)


# -- mixed sets and the command line -----------------------------------------------------------


@needs_data
def test_a_mixed_set_takes_the_limit_from_each_source_and_refuses_duplicates(
    tmp_path: Path,
) -> None:
    specs = [
        parse_source(str(DATA / "deepscaler_test_aime24.json")),
        parse_source(str(DATA / "rllm_test_codeforces.json")),
        parse_source(str(DATA / "deepscaler_test_minerva.json"), "type=llm_judge"),
    ]
    tasks = load_task_sources(specs, limit=3, languages=("python", "cpp"))
    assert [t.task_type for t in tasks] == ["math"] * 3 + ["code"] * 3 + ["llm_judge"] * 3
    assert [t.verifier.get("language") for t in tasks[3:6]] == ["python", "cpp", "python"]
    with pytest.raises(ConfigError, match="given twice"):
        load_task_sources([specs[0], specs[0]], limit=2)
    # The same file as math and as judge tasks: different ids, so both may be used.
    math_and_judge = [parse_source(str(specs[2].path)), specs[2]]
    assert len(load_task_sources(math_and_judge, limit=2)) == 4


def _parse(*argv: str) -> argparse.Namespace:
    parser, _ = build_parser()
    return parser.parse_args(["node", "--role", "publisher", "--manifest", "m", *argv])


def test_command_line_sources_maps_languages_and_judge(tmp_path: Path) -> None:
    args = _parse(
        "--tasks-file", "a.jsonl", "--map", "problem=q,answer=a,type=judge",
        "--tasks-file", "output-prediction:mbpp.jsonl",
        "--tasks-file", "b.json",
        "--languages", "rust,cpp,rust",
        "--judge-url", "http://127.0.0.1:9/v1",
    )  # fmt: skip
    sources = task_sources(args)
    assert [s.argument() for s in sources] == ["a.jsonl", "output-prediction:mbpp.jsonl", "b.json"]
    assert sources[0].field_map is not None and sources[0].field_map.task_type == "llm_judge"
    assert sources[1].kind == "output-prediction" and sources[1].field_map is None
    assert sources[0].arguments() == [
        "--tasks-file",
        "a.jsonl",
        "--map",
        "problem=q,answer=a,type=judge",
    ]
    assert languages(args) == ("rust", "cpp")
    key = tmp_path / "judge.key"
    key.write_text("sk-test\n")
    key.chmod(0o600)
    args.judge_key_file = key
    judge = judge_settings(args, EnvSettings(judge_model="grader"))
    assert (judge.url, judge.model, judge.api_key) == ("http://127.0.0.1:9/v1", "grader", "sk-test")
    assert "sk-test" not in repr(judge)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by its owner only"):
        judge_settings(args, EnvSettings())
    with pytest.raises(ConfigError, match="unknown role"):
        task_sources(_parse("--tasks-file", "a.json", "--map", "x=y"))
    with pytest.raises(ConfigError, match="no path"):
        task_sources(_parse("--tasks-file", "output-prediction:"))
    with pytest.raises(ConfigError, match="applies to task files"):
        TaskSourceSpec(Path("x"), "output-prediction", parse_map("problem=q"))
    with pytest.raises(SystemExit):
        _parse("--map", "problem=q")  # a map before any file
    with pytest.raises(SystemExit):
        _parse("--tasks-file", "a.json", "--map", "problem=q", "--map", "answer=a")


def test_the_validator_gets_the_judge_from_the_node_config(tmp_path: Path) -> None:
    config = NodeConfig(
        roles=("validator",),
        data_dir=tmp_path,
        network=NetworkParams(network_id="judge-net", max_new_tokens=64),
        judge=JudgeSettings("http://127.0.0.1:9/v1", "grader", "sk-x"),
    )
    options = verify_options(config)
    assert (options.judge_url, options.judge_model, options.judge_api_key) == (
        "http://127.0.0.1:9/v1",
        "grader",
        "sk-x",
    )
    assert options.max_tokens == 64
    with pytest.raises(ConfigError, match="http"):
        JudgeSettings("ftp://x")
    with pytest.raises(ConfigError, match="--languages"):
        NodeConfig(("worker",), tmp_path, config.network, languages=("cobol",))


def test_importing_the_tasks_package_stays_cheap() -> None:
    """No torch, libp2p or sandbox runner behind ``import flopnet.node.tasks`` (the publisher and
    ``flopnet --help`` import it)."""
    code = (
        "import sys, flopnet.node.tasks\n"
        "heavy = {'torch', 'libp2p', 'transformers', 'flopnet.verifiers.sandbox'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
