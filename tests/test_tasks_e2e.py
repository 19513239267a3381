"""One real devnet over a mixed set of the task sources, two samples each: every sample reaches a
verdict, and the checked traces export as raw, SFT and preference datasets.

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
                "--model", "tiny",
                "--workers", "2", "--tasks", "2", "--samples", "2", "--max-new-tokens", "24",
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
    assert summary["tasks"] == 12 and summary["samples"] == 24, summary
    assert summary["tasks_validated"] == 24, summary
    assert summary["tasks_rejected"] == 0

    # The nodes loaded exactly the set this process loads from the same sources (the generated
    # output-prediction tasks included: deterministic across processes).
    specs = [parse_source(s[1], s[3] if len(s) > 2 else None) for s in sources]
    expected = load_task_sources(specs, limit=2, languages=("python", "cpp"))
    types = {t.task_id: t.task_type for t in expected}
    credits = _credits(tmp_path / "net" / "validator" / "ledger.sqlite")
    # Every sample of every task, once: leases per sample index.
    assert sorted((c.task_id, c.sample_index) for c in credits) == sorted(
        (task_id, index) for task_id in types for index in (0, 1)
    )
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

    _check_exports(tmp_path, types)


def _export(tmp_path: Path, kind: str, fmt: str) -> Path:
    out = tmp_path / f"{kind}-{fmt}"
    args = ["--data-dir", str(tmp_path / "net"), "--kind", kind, "--format", fmt]
    done = subprocess.run(
        [sys.executable, "-m", "flopnet", "export", *args, "--out", str(out), "--as-of", "4e9"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _check_exports(tmp_path: Path, types: dict[str, str]) -> None:
    """Raw holds every trace, final (read far in the future) and split at the reasoning block;
    SFT and preference rows keep to their thresholds; the real datasets library loads each."""
    import datasets
    import pyarrow.parquet as pq

    from flopnet.node.dataset.select import REJECTED_BELOW, SFT_THRESHOLDS

    raw = datasets.load_dataset("parquet", data_dir=str(_export(tmp_path, "raw", "parquet")))
    rows = raw["train"]
    assert rows.num_rows == 24
    assert sorted(set(rows["task_id"])) == sorted(types)
    assert set(rows["state"]) == {"final"} and all(rows["accepted"])
    assert all(r.startswith("<think>") for r in rows["response"])
    card = (tmp_path / "raw-parquet" / "README.md").read_text()
    assert "24 rows" in card and "| code | 12 |" in card
    # JSON Lines read as lines, Parquet with pyarrow: an empty set (a random-weight model's
    # answers are wrong) has no rows, and the datasets loader cannot read an empty file.
    sft = _export(tmp_path, "sft", "jsonl") / "data" / "train.jsonl"
    for row in map(json.loads, sft.read_text().splitlines()):
        assert row["score"] >= SFT_THRESHOLDS[row["task_type"]]
    preference = _export(tmp_path, "preference", "parquet") / "data"
    for row in pq.read_table(next(preference.glob("*.parquet"))).to_pylist():
        assert row["chosen_score"] >= SFT_THRESHOLDS[row["task_type"]]
        assert row["rejected_score"] < REJECTED_BELOW
