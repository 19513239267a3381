"""Adaptive auditing in a real validator: real model process, real SQLite ledger and inbox.

A new contributor is audited until its record earns a lower rate; an unaudited result is credited
as pending without a prefill; a failed audit writes an audit entry and a hard invalidation in the
same commit as the credit, voiding the contributor's pending credit (the unaudited one included);
a restarted validator rebuilds its audit records from its chain.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
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
from flopnet.node.model.service import ModelInfo, ModelService, ModelServiceError
from flopnet.node.tasks import builtin_tasks
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.validator import Validator
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import Lease, LedgerEntry, Submission, Verdict
from flopnet.verifiers.registry import Verifiers, VerifyOptions

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


@asynccontextmanager
async def validator_parts(
    tmp_path: Path,
) -> AsyncIterator[tuple[ModelService, ModelInfo, LedgerStore, Inbox]]:
    """A real tiny-model process, ledger and inbox for a validator; all closed afterwards."""
    model = ModelService("tiny", NET.model_seed, NET.dtype, threads=1)
    info = await model.start()
    store = LedgerStore(tmp_path / "ledger.sqlite")
    inbox = Inbox(tmp_path / "inbox.sqlite")
    try:
        yield model, info, store, inbox
    finally:
        model.close()
        inbox.close()
        store.close()


def make_validator(
    config: NodeConfig,
    model: ModelService,
    store: LedgerStore,
    inbox: Inbox,
    model_config: dict[str, Any],
    **options: Any,
) -> Validator:
    """A validator whose submissions go straight into its inbox (no host needed)."""
    return Validator(
        config,
        VALIDATOR,
        None,  # type: ignore[arg-type]
        model,
        Verifiers(VerifyOptions(max_tokens=NET.max_new_tokens)),
        store,
        inbox,
        {t.task_id: t for t in TASKS},
        model_config,
        on_verdict=lambda lease_id, ok: None,
        **options,
    )


def _lease(index: int, prompt: tuple[int, ...]) -> bytes:
    lease = Lease(
        version=1,
        lease_id=bytes([index]) * 16,
        task_id=TASKS[index % len(TASKS)].task_id,
        task_type="math",
        sample_index=0,
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


async def _honest(model: ModelService, index: int) -> tuple[bytes, dict[str, Any]]:
    prompt = tuple(range(1 + index, 20 + index))
    lease_bytes = _lease(index, prompt)
    out = await model.call(
        "generate",
        prompt_ids=list(prompt),
        seed=1000 + index,
        temperature=NET.temperature,
        top_p=NET.top_p,
        max_new_tokens=NET.max_new_tokens,
    )
    return lease_bytes, out


def _submission(
    lease_bytes: bytes, out: dict[str, Any], proofs: list[bytes], worker: Identity = WORKER
) -> bytes:
    sub = Submission(
        version=1,
        lease=lease_bytes,
        token_ids=tuple(out["token_ids"]),
        text=out["text"],
        finish_reason=out["finish_reason"],
        proofs=tuple(proofs),
        generation_seconds=0.1,
    )
    return seal(sub, worker, NET.network_id)


def _entries(store: LedgerStore) -> list[tuple[str, Any]]:
    out = []
    for raw in store.entries(VALIDATOR.public_key, 0, 1000):
        entry = open_envelope(raw, NET.network_id, expected=LedgerEntry).expect(LedgerEntry)
        out.append((entry.kind, decode_body(entry.kind, entry.body)))
    return out


@pytest.mark.timeout(300)
def test_audits_fall_with_valid_results_and_a_failed_audit_voids_pending_credit(
    tmp_path: Path,
) -> None:
    draws: dict[bytes, float] = {}
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)

    async def main() -> None:
        async with validator_parts(tmp_path) as (model, info, store, inbox):
            validator = make_validator(
                config,
                model,
                store,
                inbox,
                info.config or {},
                audit_policy=POLICY,
                draw=lambda submission_id: draws.get(submission_id, 0.0),
            )
            generations = [await _honest(model, i) for i in range(4)]
            subs = [_submission(lb, out, list(out["proofs"])) for lb, out in generations[:3]]
            # The cheat: real tokens of its own lease, with another generation's proofs.
            lease_c, out_c = generations[3]
            other = generations[0][1]["proofs"]
            assert len(other) == len(out_c["proofs"])  # both one 32-token chunk or less
            subs.append(_submission(lease_c, out_c, list(other)))
            # Submissions 0 and 1 are audited (new contributor, then rate 1/1); submission 2
            # draws 0.99 against a rate of 1/2 and is not; the cheat draws 0.0 and is caught.
            draws[message_id(subs[2])] = 0.99

            verdicts = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(validator.run)
                for data in subs:
                    lease_id = open_envelope(data, NET.network_id).expect(Submission).lease
                    lease_id = open_envelope(lease_id, NET.network_id).expect(Lease).lease_id
                    inbox.add(message_id(data), lease_id, WORKER.peer_id, data)
                    validator._wakeup.set()
                    with trio.fail_after(120):
                        while (raw := inbox.verdict(message_id(data))) is None:
                            await trio.sleep(0.05)
                    verdicts.append(
                        open_envelope(raw, NET.network_id, expected=Verdict).expect(Verdict)
                    )
                nursery.cancel_scope.cancel()

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
            again = make_validator(
                config, model, store, inbox, info.config or {}, audit_policy=POLICY
            )
            state = again.audits.states[WORKER.public_key]
            assert (state.consecutive_valid, state.audits, state.failures) == (0, 3, 1)
            assert again.audits.decide(WORKER.public_key, 0.999).audit

    trio.run(main)


@pytest.mark.timeout(300)
def test_a_model_process_that_dies_mid_check_is_restarted_and_the_work_still_counts(
    tmp_path: Path,
) -> None:
    """The validator's own model dying is not the worker's fault: no verdict is written for the
    cut-short check, the process is restarted, and the same submission is checked again."""
    import os
    import signal

    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)

    async def main() -> None:
        async with validator_parts(tmp_path) as (model, info, store, inbox):
            validator = make_validator(
                config,
                model,
                store,
                inbox,
                info.config or {},
            )
            lease_bytes, out = await _honest(model, 0)
            data = _submission(lease_bytes, out, list(out["proofs"]))
            first_pid = model.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)  # dies before (or while) the check runs
            lease_id = open_envelope(lease_bytes, NET.network_id).expect(Lease).lease_id
            inbox.add(message_id(data), lease_id, WORKER.peer_id, data)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(validator.run)
                with trio.fail_after(180):
                    while (raw := inbox.verdict(message_id(data))) is None:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            verdict = open_envelope(raw, NET.network_id, expected=Verdict).expect(Verdict)
            assert verdict.accepted, verdict.reasons
            assert validator.stats.model_restarts >= 1 and model.pid != first_pid
            # One credit and its audit: nothing was written for the check that was cut short.
            assert [kind for kind, _ in _entries(store)] == ["credit", "audit"]

    trio.run(main)


class FailingBatches:
    """The real model process, except that every batched audit fails the way an out-of-memory
    prefill would (fault injection: the validator must fall back to one-by-one audits)."""

    def __init__(self, model: ModelService) -> None:
        self._model = model
        self.batch_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    async def call(self, op: str, **kwargs: Any) -> Any:
        if op == "check_batch":
            self.batch_calls += 1
            raise ModelServiceError("injected: CUDA out of memory", "internal")
        return await self._model.call(op, **kwargs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("batches_fail", [False, True])
def test_queued_audits_of_different_contributors_share_one_prefill(
    tmp_path: Path, batches_fail: bool
) -> None:
    """Five submissions wait in the inbox: the first of each of four contributors is audited in
    one padded prefill (check_batch), the fifth (a second one of the first contributor) alone
    after it, as one by one would: the forged one fails, every chain entry is consistent. When
    the batched prefill fails, the validator audits one by one instead of retrying forever."""
    from flopnet.ledger.policy import audit_problems

    workers = [Identity(bytes([0xC0 + i]) * 32) for i in range(4)]
    config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET, audit_batch=8)

    def sealed_lease(index: int, worker: Identity, prompt: tuple[int, ...]) -> bytes:
        lease = open_envelope(_lease(index, prompt), NET.network_id).expect(Lease)
        return seal(dataclasses.replace(lease, worker=worker.public_key), VALIDATOR, NET.network_id)

    async def main() -> None:
        async with validator_parts(tmp_path) as (model, info, store, inbox):
            serving: Any = FailingBatches(model) if batches_fail else model
            validator = make_validator(
                config,
                serving,
                store,
                inbox,
                info.config or {},
            )
            subs: list[tuple[bytes, bool]] = []  # (envelope, honest)
            owners = [workers[0], workers[1], workers[2], workers[3], workers[0]]
            outs = []
            for index, worker in enumerate(owners):
                _lb, out = await _honest(model, index)
                prompt = tuple(range(1 + index, 20 + index))
                outs.append((sealed_lease(index, worker, prompt), out, worker))
            for index, (lease_bytes, out, worker) in enumerate(outs):
                proofs = list(out["proofs"])
                honest = index != 2
                if not honest:  # another generation's proofs, same count
                    proofs = next(
                        list(o["proofs"]) for _, o, _ in outs
                        if o is not out and len(o["proofs"]) == len(proofs)
                    )  # fmt: skip
                data = _submission(lease_bytes, out, proofs, worker)
                lease_id = open_envelope(lease_bytes, NET.network_id).expect(Lease).lease_id
                inbox.add(message_id(data), lease_id, worker.peer_id, data)
                subs.append((data, honest))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(validator.run)
                with trio.fail_after(180):
                    while any(inbox.verdict(message_id(d)) is None for d, _ in subs):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            for data, honest in subs:
                raw = inbox.verdict(message_id(data))
                assert raw is not None
                verdict = open_envelope(raw, NET.network_id, expected=Verdict).expect(Verdict)
                assert verdict.accepted == honest, verdict.reasons
            if batches_fail:
                assert serving.batch_calls == 1  # then paused: no retry loop
                assert validator.stats.batched_audits == 0
            else:
                assert validator.stats.batched_audits == 4  # the fifth waited for the first
            assert validator.stats.audits == 5 and validator.stats.proof_checks == 5
            assert store.verify_all(NET.network_id) == []
            credits, hard = store.audit_context(VALIDATOR.public_key)
            records = store.audit_records(VALIDATOR.public_key)
            assert (
                audit_problems(records, AuditPolicy(floor=NET.audit_rate_floor), credits, hard)
                == []
            )

    trio.run(main)
