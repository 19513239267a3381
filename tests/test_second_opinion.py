"""A second opinion before punishment, and the evidence anyone can replay.

A failed audit is checked again with the weights in float32. Noise that the second check does
not see is forgiven (credited, the audit passes); a failure it confirms writes the hard
invalidation and, first, a signed evidence file; a second check our own model cannot run
punishes nobody. ``flopnet audit replay`` re-runs an evidence file on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validator_audit import (
    NET,
    POLICY,
    VALIDATOR,
    WORKER,
    _entries,
    _honest,
    _queue,
    _submission,
    _verdicts,
    make_validator,
    validator_parts,
)

from flopnet.ledger.kinds import HARD, AuditBody, InvalidationBody
from flopnet.node.config import NodeConfig
from flopnet.node.local import flopnet_argv
from flopnet.node.model.calls import AuditMeasures, ModelInternalError
from flopnet.node.model.fake import FakeModel
from flopnet.node.validator import evidence as evidence_module
from flopnet.node.validator.evidence import (
    EVIDENCE_DIR,
    CheckRecord,
    Evidence,
    EvidenceError,
    ModelRecord,
    decode_evidence,
    read_evidence,
    seal_evidence,
)
from flopnet.proof.completion import CompletionCheck
from flopnet.proof.measures import ChunkCheck
from flopnet.proof.tally import ReplayTally
from flopnet.protocol.envelope import message_id

TIERS = ["fake", pytest.param("real", marks=pytest.mark.slow)]


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)


def test_noise_the_second_opinion_does_not_see_is_forgiven(tmp_path: Path) -> None:
    async def main() -> None:
        async with validator_parts(tmp_path, "fake") as parts:
            assert isinstance(parts.model, FakeModel)
            validator = make_validator(_config(tmp_path), parts, audit_policy=POLICY)
            lease_bytes, out = await _honest(parts.model, 0)
            data = _submission(lease_bytes, out, out.proofs)
            parts.model.noisy_audits = 1  # the first check's kernel was noisy
            _queue(parts.inbox, data)
            (verdict,) = await _verdicts(validator, [data], 30)
            assert verdict.accepted, verdict.reasons
            assert verdict.reasons[0].startswith("second opinion (float32 prefill) passed")
            assert any(r.startswith("first check: toploc chunk 0") for r in verdict.reasons)
            kinds = [kind for kind, _ in _entries(parts.store)]
            assert kinds == ["credit", "audit"]  # no invalidation
            audit = _entries(parts.store)[1][1]
            assert isinstance(audit, AuditBody) and audit.passed
            assert validator.stats.second_opinions == {"overturned": 1}
            assert not (tmp_path / EVIDENCE_DIR).exists()

    trio.run(main)


def test_a_second_check_our_model_cannot_run_punishes_nobody(tmp_path: Path) -> None:
    async def main() -> None:
        async with validator_parts(tmp_path, "fake") as parts:
            assert isinstance(parts.model, FakeModel)
            validator = make_validator(_config(tmp_path), parts, audit_policy=POLICY)
            (lease_a, out_a), (_, out_b) = [await _honest(parts.model, i) for i in (0, 1)]
            data = _submission(lease_a, out_a, out_b.proofs)  # another sample's proofs
            _queue(parts.inbox, data)
            # The first audit measures the forgery; the float32 re-check fails inside our model.
            original = parts.model.audit
            calls = 0

            async def audit(request):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                if request.precision:
                    raise ModelInternalError("out of memory for float32 weights")
                return await original(request)

            parts.model.audit = audit  # type: ignore[method-assign]
            (verdict,) = await _verdicts(validator, [data], 30)
            assert not verdict.accepted and calls == 2
            assert any("unavailable" in r and "without punishment" in r for r in verdict.reasons)
            assert [kind for kind, _ in _entries(parts.store)] == ["credit"]  # no audit result
            assert validator.stats.second_opinions == {"unavailable": 1}

    trio.run(main)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("tier", TIERS)
def test_a_confirmed_failure_is_punished_with_evidence_anyone_can_replay(
    tmp_path: Path, tier: str
) -> None:
    async def main() -> bytes:
        async with validator_parts(tmp_path, tier) as parts:
            validator = make_validator(_config(tmp_path), parts, audit_policy=POLICY)
            (lease_a, out_a), (_, out_b) = [await _honest(parts.model, i) for i in (0, 1)]
            assert len(out_a.proofs) == len(out_b.proofs)
            data = _submission(lease_a, out_a, out_b.proofs)  # another sample's proofs
            _queue(parts.inbox, data)
            (verdict,) = await _verdicts(validator, [data], 240)
            assert not verdict.accepted
            assert any(r.startswith("first check: toploc") for r in verdict.reasons)
            assert any(r.startswith("second opinion (float32): toploc") for r in verdict.reasons)
            entries = _entries(parts.store)
            assert [kind for kind, _ in entries] == ["credit", "audit", "invalidation"]
            invalidation = entries[2][1]
            assert isinstance(invalidation, InvalidationBody) and invalidation.severity == HARD
            assert invalidation.contributor == WORKER.public_key
            assert validator.stats.second_opinions == {"confirmed": 1}
            return data

    data = trio.run(main)
    path = tmp_path / EVIDENCE_DIR / f"{message_id(data).hex()}.json"
    evidence = read_evidence(path)
    assert evidence.submission == data and evidence.network_id == NET.network_id
    assert [c.precision for c in evidence.checks] == ["", "float32"]
    assert not any(c.passed for c in evidence.checks)
    assert all(c.measures.checks for c in evidence.checks)
    assert path.stat().st_mode & 0o077 == 0
    listed = subprocess.run(
        [*flopnet_argv(), "audit", "list", "--data-dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (row,) = json.loads(listed.stdout)
    assert row["contributor"] == WORKER.peer_id and row["checks"] == [False, False]

    if tier == "real":
        # Anyone re-runs the checks: the same model, loaded in a fresh process, same verdicts.
        result = subprocess.run(
            [*flopnet_argv(), "audit", "replay", str(path), "--json", "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["reproduced"] is True
        assert [c["replayed"] for c in report["checks"]] == ["failed", "failed"]
        # On the machine that measured them, the numbers are the same to the bit.
        assert all(
            c["chunks_identical"].split("/")[0] == c["chunks_identical"].split("/")[1]
            for c in report["checks"]
        )
        # A forged copy is refused with a clear error, not replayed.
        forged = json.loads(path.read_text())
        forged["body"]["checks"][0]["passed"] = True
        bad = tmp_path / "forged.json"
        bad.write_text(json.dumps(forged))
        result = subprocess.run(
            [*flopnet_argv(), "audit", "replay", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert "signature does not verify" in result.stderr


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_evidence_decoder_raises_only_its_error(data: bytes) -> None:
    with pytest.raises(EvidenceError):
        decode_evidence(data)


def _sample_evidence() -> Evidence:
    submission = b"a sealed submission"
    measures = AuditMeasures(
        checks=(ChunkCheck(3, 0.5, 0.25, 0), ChunkCheck(128, 2.0**64, 2.0**64, 0)),
        shortfalls=(0.0, 0.01, math.inf),
        completion=CompletionCheck(3, 24, False, None, ("cut short",)),
        text="t1 t2 t3",
        prefill_s=0.01,
        verify_s=0.0,
    )
    return Evidence(
        network_id=NET.network_id,
        validator=VALIDATOR.public_key,
        submission_id=hashlib.sha256(submission).digest(),
        submission=submission,
        model=ModelRecord("tiny", 1234, "bfloat16", "", ""),
        policy=NET.proof_policy(),
        checks=(CheckRecord("", measures, False, ("toploc chunk 1: ...",)),),
        written_at=1.0,
        replay_history=ReplayTally(3, 72, 1),
    )


def test_evidence_round_trips() -> None:
    evidence = _sample_evidence()
    assert decode_evidence(seal_evidence(evidence, VALIDATOR)) == evidence


_JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_signed_but_malformed_body_raises_only_its_error(data: st.DataObject) -> None:
    """Even with a valid signature (a buggy or hostile validator), any field of the wrong
    type or value is an EvidenceError, never a crash."""
    body = json.loads(seal_evidence(_sample_evidence(), VALIDATOR))["body"]
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        keys = node.keys() if isinstance(node, dict) else range(len(node))
        for key in keys:
            paths.append((node, key))
            if isinstance(node[key], dict | list):
                walk(node[key])

    walk(body)
    node, key = data.draw(st.sampled_from(paths))
    node[key] = data.draw(_JSON_LEAF | st.lists(_JSON_LEAF, max_size=3))
    signature = VALIDATOR.sign(evidence_module._signed(body)).hex()
    with contextlib.suppress(EvidenceError):  # anything else fails the test
        decode_evidence(json.dumps({"body": body, "signature": signature}).encode())
