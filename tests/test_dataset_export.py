"""From checked traces to datasets: which traces enter SFT and preference sets, and why.

A real validator (real SQLite inbox and ledger, the fake model, an answer verifier whose scores
the test sets) checks an honest contributor's two samples per task and a cheater's results; the
cheater's forged result fails its audit, which voids its pending credit, unaudited results
included. ``flopnet export`` then writes each kind, and the real ``datasets`` library loads them:
SFT holds the honest correct responses only (one per prompt), preference pairs put each honest
correct response against the wrong one for the same prompt, and none of the cheater's outputs
reach either, however well they scored.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from flopnet.ledger.policy import AuditPolicy
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, NodeConfig, create_network
from flopnet.node.dataset.export import export
from flopnet.node.dataset.select import split_reasoning
from flopnet.node.model.calls import GenerateRequest
from flopnet.node.model.fake import FakeModel
from flopnet.node.model.prompt import response_for_verifier
from flopnet.node.tasks import builtin_tasks
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.validator import Validator
from flopnet.protocol.envelope import message_id, seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.manifest import MANIFEST_FILE
from flopnet.protocol.messages import Lease, Submission
from flopnet.verifiers.result import Result

FOUNDER = Identity(b"\x30" * 32)
VALIDATOR = Identity(b"\x31" * 32)
HONEST = Identity(b"\x32" * 32)
CHEATER = Identity(b"\x33" * 32)
TASKS = builtin_tasks(5)  # the honest contributor works on 0-2, the cheater on 3-4
ALL_RULES_PASS = (("format", True), ("repetition", True), ("truncation", True))


class ScoreBook:
    """The answer verifier of this test: a score the test chose for each response text."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def verify(self, task: Any, response: str, *, response_tokens: int | None = None) -> Result:
        score = self.scores.get(response, 0.0)
        return Result(score, score >= 1.0, (f"scored {score}",), rules=ALL_RULES_PASS)


def test_sft_and_preference_sets_take_final_credit_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = create_network(
        FOUNDER,
        "dataset",
        NetworkParams(
            network_id="pending",
            publishers=(VALIDATOR.public_key.hex(),),
            validators=(VALIDATOR.public_key.hex(),),
            max_new_tokens=40,
            samples_per_task=2,
        ),
        tmp_path / MANIFEST_FILE,
    )
    scores = ScoreBook()
    draws: dict[bytes, float] = {}

    def lease(index: int, task: int, sample: int, worker: Identity) -> tuple[bytes, Lease]:
        record = Lease(
            version=1,
            lease_id=bytes([index]) * 16,
            task_id=TASKS[task].task_id,
            task_type="math",
            sample_index=sample,
            worker=worker.public_key,
            validator=VALIDATOR.public_key,
            seed=500 + index,
            prompt_ids=tuple(range(1 + task, 20 + task)),
            max_new_tokens=net.max_new_tokens,
            temperature=net.temperature,
            top_p=net.top_p,
            issued_at=time.time(),
            expires_at=time.time() + 600,
        )
        return seal(record, VALIDATOR, net.network_id), record

    async def main() -> None:
        model = FakeModel()
        info = await model.start()
        store = LedgerStore(tmp_path / "ledger.sqlite")
        inbox = Inbox(tmp_path / "inbox.sqlite")
        validator = Validator(
            NodeConfig(roles=("validator",), data_dir=tmp_path, network=net),
            VALIDATOR,
            None,  # type: ignore[arg-type]
            model,
            scores,
            store,
            inbox,
            {t.task_id: t for t in TASKS},
            info.config or {},
            on_verdict=lambda _lease_id, _ok: None,
            audit_policy=AuditPolicy(floor=0.0, warmup=1),
            draw=lambda submission_id: draws.get(submission_id, 0.0),
        )

        async def submit(
            index: int, task: int, sample: int, worker: Identity, score: float, forge: bool = False
        ) -> bytes:
            lease_bytes, record = lease(index, task, sample, worker)
            out = await model.generate(GenerateRequest.of_lease(record))
            proofs = out.proofs
            if forge:  # another generation's proofs: the audit catches it
                proofs = tuple(bytes(len(p)) for p in proofs)
            scores.scores[response_for_verifier(model.decode(out.token_ids))] = score
            sub = Submission(
                1, lease_bytes, out.token_ids, out.text, out.finish_reason, proofs, 0.1
            )
            data = seal(sub, worker, net.network_id)
            inbox.add(message_id(data), record.lease_id, worker.peer_id, data)
            return data

        async def judged(data: bytes) -> None:
            with trio.fail_after(30):
                while inbox.verdict(message_id(data)) is None:
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(validator.run)
            # The honest contributor: each task twice, the first sample right, the second wrong.
            for task in range(3):
                for sample in (0, 1):
                    data = await submit(task * 2 + sample, task, sample, HONEST, 1.0 - sample)
                    validator._wakeup.set()
                    await judged(data)
            # The cheater: two audited results, one unaudited that scored well, then a forgery
            # that is audited and fails: its pending credit, the unaudited one included, is void.
            for index, task, sample in ((10, 3, 0), (11, 3, 1), (12, 4, 0)):
                data = await submit(index, task, sample, CHEATER, 1.0)
                if index == 12:
                    draws[message_id(data)] = 0.99  # not audited
                validator._wakeup.set()
                await judged(data)
            data = await submit(13, 4, 1, CHEATER, 1.0, forge=True)
            validator._wakeup.set()
            await judged(data)
            nursery.cancel_scope.cancel()
        assert validator.stats.invalidations == 1
        model.close()
        inbox.close()
        store.close()

    trio.run(main)

    later = time.time() + 10 * 86400  # every credit's lock window has passed
    import datasets

    summary = export(tmp_path, "raw", "parquet", tmp_path / "raw", now=later)
    assert summary["rows"] == 10
    raw = datasets.load_dataset("parquet", data_dir=str(tmp_path / "raw"))["train"]
    state = {(row["contributor"], row["task_id"], row["sample_index"]): row["state"] for row in raw}
    honest, cheater = HONEST.public_key.hex(), CHEATER.public_key.hex()
    assert {s for (c, *_), s in state.items() if c == honest} == {"final"}
    # The cheater's credit is void: the audited ones, the unaudited one, and the forgery.
    assert [s for (c, *_), s in state.items() if c == cheater] == ["void"] * 4
    assert {row["audited"] for row in raw if row["contributor"] == cheater} == {True, False}

    # Split between processes (what a large export does on its own): the same rows, a file per
    # process, and the one file of the export before it removed from the directory.
    split = export(tmp_path, "raw", "parquet", tmp_path / "raw", now=later, jobs=3)
    files = sorted(p.name for p in (tmp_path / "raw" / "data").iterdir())
    assert files == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert split["rows"] == 10 and split["by_task_type"] == summary["by_task_type"]
    again = datasets.load_dataset("parquet", data_dir=str(tmp_path / "raw"))["train"]
    assert sorted(again.to_list(), key=lambda r: r["submission_id"]) == sorted(
        raw.to_list(), key=lambda r: r["submission_id"]
    )
    assert "10 rows, selected from 10 checked traces (6 final, 4 void)" in " ".join(
        (tmp_path / "raw" / "README.md").read_text().split()
    )

    export(tmp_path, "sft", "parquet", tmp_path / "sft", now=later)
    sft = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sft"))["train"]
    assert sft.num_rows == 3  # one per prompt: the honest correct samples
    assert set(sft["contributor"]) == {honest} and set(sft["score"]) == {1.0}
    for row in sft:
        assert row["messages"][0] == {"role": "user", "content": row["prompt"]}
        reasoning, answer = split_reasoning(row["messages"][1]["content"])
        assert (reasoning, answer) == (row["reasoning"], row["answer"])

    export(tmp_path, "preference", "jsonl", tmp_path / "pref", now=later)
    pairs = [json.loads(line) for line in (tmp_path / "pref" / "data" / "train.jsonl").open()]
    assert len(pairs) == 3
    for pair in pairs:
        assert (pair["chosen_score"], pair["rejected_score"]) == (1.0, 0.0)
        assert pair["chosen"] != pair["rejected"]
    card = (tmp_path / "pref" / "README.md").read_text()
    assert "3 rows" in card and "final and was never voided" in card

    # The same store, queried: flopnet traces.
    from flopnet.node.cli.main import main

    def traces(*args: str) -> str:
        capsys.readouterr()
        assert main(["traces", "--data-dir", str(tmp_path), "--as-of", str(later), *args]) == 0
        return capsys.readouterr().out

    assert traces("--counts") == "arith\tfinal\t6\narith\tvoid\t4\n"
    mine = [
        json.loads(line) for line in traces("--json", "--contributor", CHEATER.peer_id).splitlines()
    ]
    assert len(mine) == 4 and {row["state"] for row in mine} == {"void"}
    good = traces("--json", "--state", "final", "--min-score", "1").splitlines()
    assert len(good) == 3 and all(json.loads(line)["answer_score"] == 1.0 for line in good)
    table = traces("--task", TASKS[0].task_id).splitlines()
    assert len(table) == 3 and table[0].startswith("task") and "final" in table[1]
    assert traces("--audited", "--rejected", "--limit", "0").count("rejected") == 1


def test_pending_credit_is_not_yet_trustworthy(tmp_path: Path) -> None:
    """Exported before the lock window ends, nothing qualifies for SFT: an unaudited result might
    still be voided by a later failed audit of its contributor."""
    from flopnet.ledger.policy import CreditState
    from flopnet.node.dataset.select import Marked, preference_pairs, sft_rows
    from flopnet.node.validator.traces import Trace

    fields = {f.name: f for f in dataclasses.fields(Trace)}
    base: dict[str, Any] = {
        name: (0 if f.type in ("int", "float") else False if f.type == "bool" else "")
        for name, f in fields.items()
    }
    base.update(
        task_type="math", rules=json.dumps(dict(ALL_RULES_PASS)), proof_reasons="[]",
        answer_reasons="[]", accepted=True, response="<think>\nwork\n</think>\n\\boxed{1}",
    )  # fmt: skip
    good = Trace(**{**base, "submission_id": "a", "prompt": "p", "answer_score": 1.0})
    bad = Trace(**{**base, "submission_id": "b", "prompt": "p", "answer_score": 0.0})
    pending = [Marked(good, CreditState.PENDING), Marked(bad, CreditState.PENDING)]
    assert sft_rows(pending) == [] and preference_pairs(pending) == []
    final = [Marked(good, CreditState.FINAL), Marked(bad, CreditState.FINAL)]
    assert len(sft_rows(final)) == 1 and len(preference_pairs(final)) == 1
    voided = [Marked(good, CreditState.VOID), Marked(bad, CreditState.FINAL)]
    assert sft_rows(voided) == [] and preference_pairs(voided) == []
    assert split_reasoning("<think>\nno end") == ("no end", "")
