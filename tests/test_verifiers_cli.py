"""``flopnet verify FILE.jsonl``: registration, output per line in input order, exit codes."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from flopnet.node.cli.verify import EXIT_MALFORMED, EXIT_OK, EXIT_UNUSABLE, register

REPO = Path(__file__).resolve().parents[1]
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]


def _parse(argv: list[str]) -> tuple[argparse.Namespace, Any]:
    parser = argparse.ArgumentParser(prog="flopnet")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = register(sub)
    assert set(handlers) == {"verify"}
    args = parser.parse_args(argv)
    return args, handlers[args.command]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_module_top_is_cheap() -> None:
    code = "import sys, flopnet.node.cli.verify; print(sorted(m for m in ('math_verify', 'torch', "
    code += "'docker', 'httpx', 'flopnet.verifiers.registry') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_verify_file(tmp_path: Path) -> None:
    has_bwrap = shutil.which("bwrap") is not None
    rows: list[Any] = [
        {"task_type": "math", "gold": "27.0", "response": "<think>x</think>\\boxed{27}", "id": "a"},
        {"task_type": "math", "gold": "$\\frac12$", "response": "</think> \\boxed{2}", "id": "b"},
        "{not json",
        {
            "task_type": "code_output_prediction",
            "gold": "7",
            "response": '</think> {"output": "7"}',
            "id": "c",
        },
        {"task_type": "math", "response": "</think> \\boxed{1}", "id": "d"},  # no gold
    ]
    if has_bwrap:
        rows.append(
            {
                "task_type": "code",
                "tests": ADD_TESTS,
                "response": "</think>```python\ndef add(a, b):\n    return a + b\n```",
                "id": "e",
                "response_tokens": 12,
            }
        )
    src = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args, handler = _parse(["verify", str(src), "--out", str(out), "--no-progress"])
    assert handler(args) == EXIT_MALFORMED
    got = _rows(out)
    assert [r.get("id") for r in got] == ["a", "b", None, "c", "d", *(["e"] if has_bwrap else [])]
    assert [r["passed"] for r in got] == [True, False, False, True, False, *([True] * has_bwrap)]
    assert got[0]["score"] == 1.0 and got[0]["gold"] == "27.0"  # fields carried through
    assert got[2]["line"] == 3 and "malformed JSON" in got[2]["error"]
    assert "no 'gold'" in got[4]["error"]
    assert all(set(r) >= {"score", "passed", "reasons", "rules"} for r in got)
    assert got[0]["rules"] == {"format": True, "repetition": True, "truncation": True}


def test_refuses_code_without_a_sandbox(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "in.jsonl",
        [{"task_type": "code", "tests": ADD_TESTS, "response": "```python\nx\n```"}],
    )
    args, handler = _parse(["verify", str(src), "--sandbox", "unsafe", "--no-progress"])
    assert handler(args) == EXIT_UNUSABLE  # unsafe needs --unsafe-no-sandbox as well
    args, handler = _parse(["verify", str(tmp_path / "missing.jsonl")])
    assert handler(args) == EXIT_UNUSABLE


def test_command_line_with_progress_bar(tmp_path: Path) -> None:
    rows = [
        {"task_type": "math", "gold": str(i), "response": f"</think> \\boxed{{{i}}}"}
        for i in range(5)
    ]
    src = _write(tmp_path / "in.jsonl", rows)
    script = (
        "import argparse, sys\nfrom flopnet.node.cli.verify import register\n"
        "p = argparse.ArgumentParser(); h = register(p.add_subparsers(dest='command'))\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(h[a.command](a))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "verify", str(src), "--workers", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert [json.loads(line)["passed"] for line in done.stdout.splitlines()] == [True] * 5
    assert "5/5" in done.stderr  # the progress bar
