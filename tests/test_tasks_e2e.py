"""One real devnet over a mixed set of the new task sources: every task reaches a verdict.

Real processes on 127.0.0.1 with the seeded tiny model: LeetCode (Python function tests),
Codeforces and CodeContests (stdin/stdout, posed in Python and C++), generated output
prediction, judge-scored STEM tasks and a JSONL file read through --map. A random-weight model
answers wrongly, so the run is judged on the proof/credit path: every task validated and
credited, each verdict carrying its answer verifier's reasons.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from test_verifiers_judge import JudgeServer

from flopnet.ledger.chain import decode_body, read_entry_unverified
from flopnet.ledger.store import LedgerStore
from flopnet.node.tasks import load_task_sources, parse_source
from flopnet.protocol.messages import CreditBody

DATA = SHARED_DATA
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]


def _credits(ledger: Path) -> list[CreditBody]:
    out = []
    with LedgerStore(ledger) as store:
        for signer in store.signers():
            for envelope in store.entries(signer, limit=10_000):
                entry = read_entry_unverified(envelope).entry
                if entry.kind == "credit":
                    body = decode_body("credit", entry.body)
                    assert isinstance(body, CreditBody)
                    out.append(body)
    return out


def test_a_devnet_validates_a_mixed_set_of_every_new_source(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"question": "What is 6 times 7?", "gt": 42})
        + "\n"
        + json.dumps({"question": "What is 10 minus 3?", "gt": "7"})
        + "\n"
    )
    sources = [
        ["--tasks-file", str(DATA / "rllm_test_leetcode.json")],
        ["--tasks-file", str(DATA / "rllm_test_codeforces.json")],
        ["--tasks-file", str(DATA / "rllm_test_code_contests.json")],
        ["--tasks-file", f"output-prediction:{DATA / 'mbpp.jsonl'}"],
        ["--tasks-file", str(DATA / "deepscaler_test_minerva.json"), "--map", "type=llm_judge"],
        ["--tasks-file", str(qa), "--map", "problem=question,answer=gt"],
    ]
    judge = JudgeServer()
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "flopnet.node.cli.main", "devnet", "--headless", "--json",
                "--workers", "2", "--tasks", "2", "--max-new-tokens", "24",
                "--languages", "python,cpp", "--judge-url", judge.url,
                "--data-dir", str(tmp_path / "net"), "--timeout", "400",
                *[arg for source in sources for arg in source],
            ],
            capture_output=True, text=True, timeout=540, check=False,
        )  # fmt: skip
    finally:
        judge.close()
    assert result.stdout.strip(), f"no JSON on stdout; stderr:\n{result.stderr}"
    summary = json.loads(result.stdout)
    assert result.returncode == 0, summary
    assert summary["tasks"] == 12 and summary["tasks_validated"] == 12, summary
    assert summary["tasks_rejected"] == 0

    # The nodes loaded exactly the set this process loads from the same sources (the generated
    # output-prediction tasks included: deterministic across processes).
    specs = [parse_source(s[1], s[3] if len(s) > 2 else None) for s in sources]
    expected = load_task_sources(specs, limit=2, languages=("python", "cpp"))
    types = {t.task_id: t.task_type for t in expected}
    credits = _credits(tmp_path / "net" / "validator" / "ledger.sqlite")
    assert sorted(c.task_id for c in credits) == sorted(types)
    assert sorted(types.values()) == sorted(
        ["code"] * 6 + ["code_output_prediction"] * 2 + ["llm_judge"] * 2 + ["math"] * 2
    )
    languages = {t.verifier.get("language") for t in expected if t.task_type == "code"}
    assert languages == {"python", "cpp"}
    for credit in credits:
        assert credit.accepted and credit.flops > 0, credit
        # Each verdict carries what its task type's verifier said about the answer.
        assert any(r.startswith("answer: ") for r in credit.reasons), credit.reasons
        assert not any("unknown task_type" in r for r in credit.reasons), credit.reasons
