"""Adaptive auditing in a validator, in two tiers over the same tests.

``fake``: :class:`FakeModel` (no torch, no process) and an in-process answer verifier, so the
validator's decision, retry and batching logic runs in milliseconds. ``real``: the real tiny-model
process and the real verifier pool. Both use a real SQLite ledger and inbox.

A new contributor is audited until its record earns a lower rate; an unaudited result is credited
as pending without a prefill; a failed audit writes an audit entry and a hard invalidation in the
same commit as the credit, voiding the contributor's pending credit (the unaudited one included);
a restarted validator rebuilds its audit records from its chain.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from flopnet.ledger.chain import decode_body
from flopnet.ledger.kinds import HARD, AuditBody, InvalidationBody
from flopnet.ledger.leaderboard import leaderboard
from flopnet.ledger.policy import AuditPolicy
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.calls import (
    AuditMeasures,
    AuditRequest,
    Generated,
    GenerateRequest,
    ModelClient,
    ModelError,
    ModelInfo,
    ModelInternalError,
    ModelUnavailable,
)
from flopnet.node.model.fake import FakeModel
from flopnet.node.model.service import ModelService
from flopnet.node.tasks import builtin_tasks
from flopnet.node.validator import validator as validator_module
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.validator import Validator
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import Lease, LedgerEntry, Submission, Verdict
from flopnet.verifiers.registry import Verifiers, VerifyOptions
from flopnet.verifiers.result import Result

VALIDATOR = Identity(b"\x91" * 32)
WORKER = Identity(b"\x92" * 32)
NET = NetworkParams(
    network_id="audit",
    publishers=(VALIDATOR.public_key.hex(),),
    validators=(VALIDATOR.public_key.hex(),),
    max_new_tokens=24,
)
TASKS = builtin_tasks(4)
# Two valid audits in a row halve the rate (warmup 1: rate = 1 / consecutive valid audits).
POLICY = AuditPolicy(floor=0.0, warmup=1)
TIERS = ["fake", pytest.param("real", marks=pytest.mark.slow)]


class LabelOnly:
    """The answer verifier of the fast tier: answers are labels, never what decides credit."""

    def verify(
        self, task: Mapping[str, Any], response: str, *, response_tokens: int | None = None
    ) -> Result:
        return Result(score=0.0, passed=False, reasons=("not judged (fast tier)",))


@dataclasses.dataclass
class Parts:
    model: ModelClient
    info: ModelInfo
    store: LedgerStore
    inbox: Inbox
    verifiers: Any


@asynccontextmanager
async def validator_parts(tmp_path: Path, tier: str) -> AsyncIterator[Parts]:
    """A model (fake, or the real tiny-model process), ledger, inbox and answer verifier."""
    model: ModelClient = (
        FakeModel() if tier == "fake" else ModelService("tiny", NET.model_seed, NET.dtype, 1)
    )
    info = await model.start()
    store = LedgerStore(tmp_path / "ledger.sqlite")
    inbox = Inbox(tmp_path / "inbox.sqlite")
    verifiers = (
        LabelOnly() if tier == "fake" else Verifiers(VerifyOptions(max_tokens=NET.max_new_tokens))
    )
    try:
        yield Parts(model, info, store, inbox, verifiers)
    finally:
        model.close()
        inbox.close()
        store.close()
        if isinstance(verifiers, Verifiers):
            verifiers.close()


def make_validator(config: NodeConfig, parts: Parts, **options: Any) -> Validator:
    """A validator whose submissions go straight into its inbox (no host needed)."""
    return Validator(
        config,
        VALIDATOR,
        None,  # type: ignore[arg-type]
        parts.model,
        parts.verifiers,
        parts.store,
        parts.inbox,
        {t.task_id: t for t in TASKS},
        parts.info.config or {},
        on_verdict=lambda lease_id, ok: None,
        **options,
    )


def _lease(index: int, prompt: tuple[int, ...]) -> bytes:
    lease = Lease(
        version=1,
        lease_id=bytes([index]) * 16,
        task_id=TASKS[index % len(TASKS)].task_id,
        task_type="math",
        sample_index=index // len(TASKS),  # every submission its own sample
        worker=WORKER.public_key,
        validator=VALIDATOR.public_key,
        seed=1000 + index,
        prompt_ids=prompt,
        max_new_tokens=NET.max_new_tokens,
        temperature=NET.temperature,
        top_p=NET.top_p,
        issued_at=time.time(),
        expires_at=time.time() + 600,
    )
    return seal(lease, VALIDATOR, NET.network_id)


async def _honest(model: ModelClient, index: int) -> tuple[bytes, Generated]:
    prompt = tuple(range(1 + index, 20 + index))
    request = GenerateRequest(prompt, 1000 + index, NET.temperature, NET.top_p, NET.max_new_tokens)
    return _lease(index, prompt), await model.generate(request)


def _submission(
    lease_bytes: bytes, out: Generated, proofs: Sequence[bytes], worker: Identity = WORKER
) -> bytes:
    sub = Submission(
        version=1,
        lease=lease_bytes,
        token_ids=out.token_ids,
        text=out.text,
        finish_reason=out.finish_reason,
        proofs=tuple(proofs),
        generation_seconds=0.1,
    )
    return seal(sub, worker, NET.network_id)


def _queue(inbox: Inbox, data: bytes, worker: Identity = WORKER) -> None:
    lease_bytes = open_envelope(data, NET.network_id).expect(Submission).lease
    lease_id = open_envelope(lease_bytes, NET.network_id).expect(Lease).lease_id
    inbox.add(message_id(data), lease_id, worker.peer_id, data)


async def _verdicts(validator: Validator, subs: Sequence[bytes], limit: float) -> list[Verdict]:
    """Run the validator until every submission has its verdict."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(validator.run)
        with trio.fail_after(limit):
            while any(validator.inbox.verdict(message_id(d)) is None for d in subs):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    out = []
    for data in subs:
        raw = validator.inbox.verdict(message_id(data))
        assert raw is not None
        out.append(open_envelope(raw, NET.network_id, expected=Verdict).expect(Verdict))
    return out


def _entries(store: LedgerStore) -> list[tuple[str, Any]]:
    out = []
    for raw in store.entries(VALIDATOR.public_key, 0, 1000):
        entry = open_envelope(raw, NET.network_id, expected=LedgerEntry).expect(LedgerEntry)
        out.append((entry.kind, decode_body(entry.kind, entry.body)))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tier", TIERS)
def test_audits_fall_with_valid_results_and_a_failed_audit_voids_pending_credit(
    tmp_path: Path, tier: str
) -> None:
    draws: dict[bytes, float] = {}
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)

    async def main() -> None:
        async with validator_parts(tmp_path, tier) as parts:
            store = parts.store
            validator = make_validator(
                config,
                parts,
                audit_policy=POLICY,
                draw=lambda submission_id: draws.get(submission_id, 0.0),
            )
            generations = [await _honest(parts.model, i) for i in range(4)]
            subs = [_submission(lb, out, out.proofs) for lb, out in generations[:3]]
            # The cheat: real tokens of its own lease, with another generation's proofs.
            lease_c, out_c = generations[3]
            other = generations[0][1].proofs
            assert len(other) == len(out_c.proofs)  # both one 32-token chunk or less
            subs.append(_submission(lease_c, out_c, other))
            # Submissions 0 and 1 are audited (new contributor, then rate 1/1); submission 2
            # draws 0.99 against a rate of 1/2 and is not; the cheat draws 0.0 and is caught.
            draws[message_id(subs[2])] = 0.99

            verdicts = []
            for data in subs:
                _queue(parts.inbox, data)
                (verdict,) = await _verdicts(validator, [data], 120)
                verdicts.append(verdict)

            assert [v.accepted for v in verdicts] == [True, True, True, False], [
                v.reasons for v in verdicts
            ]
            assert any(r.startswith("not audited (audit rate 0.500") for r in verdicts[2].reasons)
            assert not any(r.startswith("not audited") for r in verdicts[1].reasons)
            assert any("toploc" in r for r in verdicts[3].reasons)
            assert verdicts[2].flops > 0
            stats = validator.stats
            assert (stats.audits, stats.audits_failed, stats.unaudited) == (3, 1, 1)
            assert stats.invalidations == 1

            kinds = [kind for kind, _ in _entries(store)]
            assert kinds == [
                "credit", "audit", "credit", "audit", "credit",
                "credit", "audit", "invalidation",
            ]  # fmt: skip
            entries = _entries(store)
            audit = entries[6][1]
            assert isinstance(audit, AuditBody)
            assert not audit.passed and audit.rate == 0.5 and audit.consecutive_valid == 2
            invalidation = entries[7][1]
            assert isinstance(invalidation, InvalidationBody)
            assert invalidation.severity == HARD and invalidation.credit_seq == 5
            assert invalidation.contributor == WORKER.public_key
            assert invalidation.reason.startswith("audit failed: ")
            assert store.verify_all(NET.network_id) == []

            # Every pending credit of the contributor is void, the unaudited one included.
            (row,) = leaderboard(store, {VALIDATOR.public_key}, lock_window=86400.0)
            assert row.contributor == WORKER.public_key
            assert row.flops == 0 and row.tasks_voided == 3
            # Had the window closed before the failure, the credit would have stayed final.
            (later,) = leaderboard(
                store, {VALIDATOR.public_key}, lock_window=1e-9, now=time.time() + 1
            )
            assert later.flops == sum(v.flops for v in verdicts)

            # A restarted validator rebuilds the records from its chain: audited again at once.
            again = make_validator(config, parts, audit_policy=POLICY)
            state = again.audits.states[WORKER.public_key]
            assert (state.consecutive_valid, state.audits, state.failures) == (0, 3, 1)
            assert again.audits.decide(WORKER.public_key, 0.999).audit

    trio.run(main)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tier", TIERS)
def test_a_model_process_that_dies_mid_check_is_restarted_and_the_work_still_counts(
    tmp_path: Path, tier: str
) -> None:
    """The validator's own model dying is not the worker's fault: no verdict is written for the
    cut-short check, the process is restarted, and the same submission is checked again. The
    real tier SIGKILLs the model process; the fake one fails its first audit as a dead one."""
    import os
    import signal

    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)

    async def main() -> None:
        async with validator_parts(tmp_path, tier) as parts:
            validator = make_validator(config, parts)
            lease_bytes, out = await _honest(parts.model, 0)
            data = _submission(lease_bytes, out, out.proofs)
            if isinstance(parts.model, ModelService):
                first_pid = parts.model.pid
                assert first_pid is not None
                os.kill(first_pid, signal.SIGKILL)  # dies before (or while) the check runs
            else:
                assert isinstance(parts.model, FakeModel)
                parts.model.fail("audit", ModelUnavailable("the model process died"))
            _queue(parts.inbox, data)
            (verdict,) = await _verdicts(validator, [data], 180)
            assert verdict.accepted, verdict.reasons
            assert validator.stats.model_restarts >= 1
            if isinstance(parts.model, ModelService):
                assert parts.model.pid != first_pid
            else:
                assert (
                    parts.model.restarts == 1 and parts.model.calls == ["generate"] + ["audit"] * 2
                )
            # One credit and its audit: nothing was written for the check that was cut short.
            assert [kind for kind, _ in _entries(parts.store)] == ["credit", "audit"]

    trio.run(main)


def test_our_model_failing_every_attempt_rejects_without_an_audit_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After MODEL_ATTEMPTS failures of our own model, the submission is rejected as
    unverifiable: no audit entry and no invalidation, so nobody loses credit to our fault."""
    monkeypatch.setattr(validator_module, "MODEL_RESTART_BACKOFF_S", 0.0)
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)

    async def main() -> None:
        async with validator_parts(tmp_path, "fake") as parts:
            assert isinstance(parts.model, FakeModel)
            validator = make_validator(config, parts)
            lease_bytes, out = await _honest(parts.model, 0)
            data = _submission(lease_bytes, out, out.proofs)
            parts.model.fail("audit", *(ModelInternalError("CUDA out of memory"),) * 3)
            _queue(parts.inbox, data)
            (verdict,) = await _verdicts(validator, [data], 30)
            assert not verdict.accepted
            assert any("proof check failed: CUDA out of memory" in r for r in verdict.reasons)
            assert [kind for kind, _ in _entries(parts.store)] == ["credit"]
            assert validator.stats.audits == 0 and validator.stats.invalidations == 0

    trio.run(main)


class FailingBatches:
    """A model whose every batched audit fails the way an out-of-memory prefill would (fault
    injection: the validator must fall back to one-by-one audits)."""

    def __init__(self, model: ModelClient) -> None:
        self._model = model
        self.batch_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    async def audit_batch(
        self, requests: Sequence[AuditRequest]
    ) -> list[AuditMeasures | ModelError]:
        self.batch_calls += 1
        raise ModelInternalError("injected: CUDA out of memory")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("tier", "batches_fail"),
    [("fake", False), ("fake", True), pytest.param("real", False, marks=pytest.mark.slow)],
)
def test_queued_audits_of_different_contributors_share_one_prefill(
    tmp_path: Path, tier: str, batches_fail: bool
) -> None:
    """Five submissions wait in the inbox: the first of each of four contributors is audited in
    one padded prefill (audit_batch), the fifth (a second one of the first contributor) alone
    after it, as one by one would: the forged one fails, every chain entry is consistent. When
    the batched prefill fails, the validator audits one by one instead of retrying forever."""
    from flopnet.ledger.policy import audit_problems

    workers = [Identity(bytes([0xC0 + i]) * 32) for i in range(4)]
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET, audit_batch=8)

    def sealed_lease(index: int, worker: Identity, prompt: tuple[int, ...]) -> bytes:
        lease = open_envelope(_lease(index, prompt), NET.network_id).expect(Lease)
        return seal(dataclasses.replace(lease, worker=worker.public_key), VALIDATOR, NET.network_id)

    async def main() -> None:
        async with validator_parts(tmp_path, tier) as parts:
            serving: Any = FailingBatches(parts.model) if batches_fail else parts.model
            validator = make_validator(config, dataclasses.replace(parts, model=serving))
            owners = [workers[0], workers[1], workers[2], workers[3], workers[0]]
            outs = []
            for index, worker in enumerate(owners):
                _lb, out = await _honest(parts.model, index)
                prompt = tuple(range(1 + index, 20 + index))
                outs.append((sealed_lease(index, worker, prompt), out, worker))
            subs, honesty = [], []
            for index, (lease_bytes, out, worker) in enumerate(outs):
                proofs = out.proofs
                honest = index != 2
                if not honest:  # another generation's proofs, same count
                    proofs = next(
                        o.proofs
                        for _, o, _ in outs
                        if o is not out and len(o.proofs) == len(proofs)
                    )
                data = _submission(lease_bytes, out, proofs, worker)
                _queue(parts.inbox, data, worker)
                subs.append(data)
                honesty.append(honest)
            verdicts = await _verdicts(validator, subs, 180)
            for verdict, honest in zip(verdicts, honesty, strict=True):
                assert verdict.accepted == honest, verdict.reasons
            if batches_fail:
                assert serving.batch_calls == 1  # then paused: no retry loop
                assert validator.stats.batched_audits == 0
            else:
                assert validator.stats.batched_audits == 4  # the fifth waited for the first
            assert validator.stats.audits == 5 and validator.stats.proof_checks == 5
            store = parts.store
            assert store.verify_all(NET.network_id) == []
            credits, hard = store.audit_context(VALIDATOR.public_key)
            records = store.audit_records(VALIDATOR.public_key)
            assert (
                audit_problems(records, AuditPolicy(floor=NET.audit_rate_floor), credits, hard)
                == []
            )

    trio.run(main)
