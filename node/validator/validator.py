"""The validator role: check a submission end to end, credit FLOPs on the ledger, answer a verdict.

Submissions are acknowledged with a signed receipt once stored in the durable inbox; a background
loop validates them in arrival order (including any left queued by a crash), and workers fetch
verdicts over the verdict stream, which waits for a pending one. A task the validator does not
hold is fetched once from the publisher that signed the lease (``node.task_source``).

Order of checks (cheap and certain first): envelope signature and the stream's peer; the
publisher's signature on the lease; the lease names this validator and this worker and has not
expired; the lease was not already used; token and proof counts within limits; then one prefill
in the model process for the TOPLOC check and the sampling replay; then the answer verifier.
FLOPs come from the model's config and the token counts (``ledger.flops.inference_flops``),
never from the worker.

Adaptive auditing (``ledger.policy``): the prefill is the expensive part, so it runs for every
submission of a new contributor and then for a falling share of them, down to the manifest's
floor. An audit writes an ``audit`` entry beside the credit, in the same durable commit; a failed
audit also writes a ``hard`` invalidation, which voids all of the contributor's pending credit,
unaudited credit included. An unaudited submission is decoded and checked for how it ends (no
prefill), and its credit is pending like every credit, so a later failed audit can still void it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from flopnet.ledger.chain import decode_body
from flopnet.ledger.flops import MATMUL_FORMULA, inference_flops
from flopnet.ledger.kinds import (
    HARD,
    KIND_AUDIT,
    KIND_CREDIT,
    KIND_INVALIDATION,
    AuditBody,
    InvalidationBody,
)
from flopnet.ledger.policy import AuditBook, AuditDecision, AuditPolicy, audit_draw
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NodeConfig
from flopnet.node.model.prompt import response_for_verifier
from flopnet.node.model.service import UNAVAILABLE, ModelService, ModelServiceError
from flopnet.node.tasks import Task
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.task_source import TaskSource
from flopnet.proof.params import CHUNK, PROOF_BYTES
from flopnet.protocol.envelope import Opened, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage, PeerError, ProtocolTimeout, VerifierError
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import (
    CreditBody,
    Lease,
    LedgerEntry,
    Refusal,
    Submission,
    SubmissionReceipt,
    Verdict,
    VerdictRequest,
)
from flopnet.verifiers.registry import Verifiers
from flopnet.verifiers.result import Result

log = logging.getLogger(__name__)
LEASE_GRACE_S = 30.0
# A submission whose check our model process cut short (died, hung) is retried after a restart;
# after this many attempts it is rejected as unverifiable, without an audit or invalidation.
MODEL_ATTEMPTS = 3
MODEL_RESTART_BACKOFF_S = 1.0
BATCH_PAUSE_S = 60.0  # after a batched audit failed, audit one by one this long
# A task spec its publisher cannot serve now is asked for again after 1, 2, 4, 8 s; then the
# submission is rejected with the reason (it heads the queue, so it cannot wait for ever).
TASK_FETCH_ATTEMPTS = 5
TASK_FETCH_BACKOFF_S = 1.0
PREFETCH_TASK_FETCH_S = 2.0  # what a batched audit may spend fetching the specs of its items


@dataclass
class ValidatorStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    malformed: int = 0
    flops_credited: int = 0
    prefill_seconds: float = 0.0
    verify_seconds: float = 0.0
    proof_checks: int = 0
    tokens_checked: int = 0
    proof_bytes: int = 0
    audits: int = 0
    audits_failed: int = 0
    unaudited: int = 0
    invalidations: int = 0
    model_restarts: int = 0
    batched_audits: int = 0  # audits made in a batch of several (one padded prefill)


class _Reject(Exception):
    """A submission fails a check before the model is involved."""


class Validator:
    """Validates submissions addressed to this node and appends credits to its ledger."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        host: P2PHost,
        model: ModelService,
        verifiers: Verifiers,
        store: LedgerStore,
        inbox: Inbox,
        tasks: Mapping[str, Task] | TaskSource,
        model_config: dict[str, Any],
        on_verdict: Callable[[bytes, bool], None],
        publish_entry: Callable[[bytes], Awaitable[None]] | None = None,
        *,
        audit_policy: AuditPolicy | None = None,
        draw: Callable[[bytes], float] | None = None,
    ) -> None:
        self.config = config
        self.net = config.network
        self.identity = identity
        self.host = host
        self.model = model
        self.verifiers = verifiers
        self.store = store
        self.inbox = inbox
        self.tasks = tasks if isinstance(tasks, TaskSource) else TaskSource(tasks)
        self.model_config = model_config
        self.on_verdict = on_verdict
        self.publish_entry = publish_entry
        self.stats = ValidatorStats()
        self._used_leases: set[bytes] = store.credited_leases(identity.public_key)
        # Rebuilt from our own chain's audit entries, so a restart keeps every record.
        self.audits = AuditBook(
            audit_policy or AuditPolicy(floor=self.net.audit_rate_floor),
            store.audit_results(identity.public_key),
        )
        # Only we can compute the draws in advance: a worker cannot tell which results we check.
        secret = hashlib.sha256(b"flopnet-audit-secret\0" + identity.seed).digest()
        self._draw = draw or (lambda submission_id: audit_draw(secret, submission_id))
        self._wakeup = trio.Event()
        self._verdict_ready: dict[bytes, trio.Event] = {}
        self._attempts: dict[bytes, int] = {}  # submission -> checks cut short by our model
        self._task_attempts: dict[bytes, int] = {}  # submission -> failed task-spec fetches
        # Audit results made ahead, several in one prefill (_prefetch_audits), by submission.
        self._prechecked: dict[bytes, dict[str, Any] | ModelServiceError] = {}
        self._batching_paused_until = 0.0

    def _open(self, peer_id: str, data: bytes) -> tuple[Opened, Opened]:
        opened = open_envelope(data, self.net.network_id, expected=Submission)
        if peer_id_from_public_key(opened.signer) != peer_id:
            raise MalformedMessage("the submission is not signed by the stream's peer")
        lease_opened = open_envelope(
            opened.expect(Submission).lease, self.net.network_id, expected=Lease
        )
        return opened, lease_opened

    async def handle_submission(self, peer_id: str, data: bytes) -> bytes:
        """Store a submission durably and answer a signed receipt (or raise on malformed bytes)."""
        self.stats.received += 1
        try:
            opened, lease_opened = self._open(peer_id, data)
        except MalformedMessage:
            self.stats.malformed += 1
            raise  # the host resets the stream, logs the reason and charges the peer
        lease = lease_opened.expect(Lease)
        await self.inbox.add_durable(opened.message_id, lease.lease_id, peer_id, data)  # then ack
        self._wakeup.set()
        receipt = SubmissionReceipt(
            version=1,
            submission_id=opened.message_id,
            lease_id=lease.lease_id,
            received_at=self.inbox.received_at(opened.message_id) or time.time(),
            queue_position=self.inbox.position(opened.message_id),
        )
        return seal(receipt, self.identity, self.net.network_id)

    async def handle_verdict_request(self, peer_id: str, data: bytes) -> bytes:
        """Answer the verdict on a submission, waiting up to the requested time if it is pending."""
        request = open_envelope(data, self.net.network_id, expected=VerdictRequest).expect(
            VerdictRequest
        )
        submission_id = request.submission_id
        if self.inbox.received_at(submission_id) is None:
            return self._refuse("unknown_submission", "no submission with that id was received")
        verdict = self.inbox.verdict(submission_id)
        if verdict is None:
            event = self._verdict_ready.setdefault(submission_id, trio.Event())
            with trio.move_on_after(request.wait_seconds):
                await event.wait()
            verdict = self.inbox.verdict(submission_id)
        if verdict is None:
            position = self.inbox.position(submission_id)
            return self._refuse("pending", f"queued at position {position}")
        return verdict

    def _refuse(self, code: str, reason: str) -> bytes:
        refusal = Refusal(version=1, code=code, reason=reason)
        return seal(refusal, self.identity, self.net.network_id)

    async def run(self) -> None:
        """Validate queued submissions in arrival order, forever (resuming after a restart)."""
        while True:
            queued = self.inbox.next_queued()
            if queued is None:
                self._wakeup = trio.Event()
                if self.inbox.next_queued() is None:
                    await self._wakeup.wait()
                continue
            verdict = self._verdict_from_ledger(queued.submission_id)
            if verdict is not None:
                # Credited before a crash; the publisher may not have heard the outcome.
                rebuilt = open_envelope(verdict, self.net.network_id, expected=Verdict)
                self.on_verdict(rebuilt.expect(Verdict).lease_id, rebuilt.expect(Verdict).accepted)
            else:
                opened, lease_opened = self._open(queued.peer, queued.envelope)
                if not await self._fetch_task(queued.submission_id, lease_opened):
                    continue  # its publisher could not answer: asked again after a pause
                attempt = self._attempts.get(queued.submission_id, 0) + 1
                if self._batching_allowed(queued.submission_id, opened):
                    try:
                        await self._prefetch_audits()
                    except ModelServiceError as exc:
                        # One padded prefill failed (too big, a poison item, our model): audit
                        # one by one for a while; each submission then has its own attempts.
                        log.warning("batched audit failed (%s); auditing one by one", exc)
                        self._batching_paused_until = time.monotonic() + BATCH_PAUSE_S
                        if exc.kind == UNAVAILABLE:
                            self.stats.model_restarts += 1
                            with contextlib.suppress(ModelServiceError):
                                await self.model.restart()
                try:
                    verdict = await self._validate(
                        opened,
                        opened.expect(Submission),
                        lease_opened,
                        lease_opened.expect(Lease),
                        attempt,
                    )
                except ModelServiceError as exc:
                    # Nothing was written: the submission stays queued, first in line.
                    self._attempts[queued.submission_id] = attempt
                    log.warning("model check failed (%s, attempt %d); retrying", exc, attempt)
                    await trio.sleep(MODEL_RESTART_BACKOFF_S)
                    if exc.kind == UNAVAILABLE:
                        self.stats.model_restarts += 1
                        with contextlib.suppress(ModelServiceError):  # counted as an attempt
                            await self.model.restart()
                    continue
                self._attempts.pop(queued.submission_id, None)
            self.inbox.set_verdict(queued.submission_id, verdict)
            event = self._verdict_ready.pop(queued.submission_id, None)
            if event is not None:
                event.set()

    async def _fetch_task(self, submission_id: bytes, lease_opened: Opened) -> bool:
        """Make sure the leased task's spec is here; False to try again later (after a pause).

        A publisher that has no such task, or too many failed attempts, leaves the task unknown:
        the static checks then reject the submission, saying why.
        """
        lease = lease_opened.expect(Lease)
        try:
            await self.tasks.ensure(lease.task_id, lease_opened.signer)
        except (PeerError, ProtocolTimeout) as exc:
            failures = self._task_attempts.get(submission_id, 0) + 1
            if failures >= TASK_FETCH_ATTEMPTS:
                self._task_attempts.pop(submission_id, None)
                self.tasks.mark_unknown(lease.task_id, f"its publisher did not serve it: {exc}")
                return True
            self._task_attempts[submission_id] = failures
            log.warning("task %s: spec not fetched (%s); asking again", lease.task_id, exc)
            await trio.sleep(TASK_FETCH_BACKOFF_S * 2.0 ** (failures - 1))
            return False
        self._task_attempts.pop(submission_id, None)
        return True

    def _verdict_from_ledger(self, submission_id: bytes) -> bytes | None:
        """The verdict of a submission already on the ledger (a crash came between the two)."""
        row = self.store.connection.execute(
            "SELECT e.seq, e.envelope FROM credits c JOIN entries e "
            "ON e.signer = c.signer AND e.seq = c.seq WHERE c.signer = ? AND c.submission_id = ?",
            (self.identity.public_key, submission_id),
        ).fetchone()
        if row is None:
            return None
        entry = open_envelope(bytes(row[1]), self.net.network_id, expected=LedgerEntry)
        body = decode_body("credit", entry.expect(LedgerEntry).body)
        assert isinstance(body, CreditBody)
        verdict = Verdict(
            version=1,
            submission_id=submission_id,
            lease_id=body.lease_id,
            accepted=body.accepted,
            reasons=body.reasons,
            answer_score=body.answer_score,
            flops=body.flops,
            ledger_seq=int(row[0]),
        )
        return seal(verdict, self.identity, self.net.network_id)

    def _static_checks(self, opened: Opened, sub: Submission, lease_opened: Opened) -> None:
        lease = lease_opened.expect(Lease)
        if lease_opened.signer not in self.net.publisher_keys:
            raise _Reject("the lease is not signed by a publisher of this network")
        if lease.validator != self.identity.public_key:
            raise _Reject("the lease names another validator")
        if lease.worker != opened.signer:
            raise _Reject("the lease was granted to another worker")
        if time.time() > lease.expires_at + LEASE_GRACE_S:
            raise _Reject("the lease expired before the submission arrived")
        if lease.lease_id in self._used_leases:
            raise _Reject("duplicate: this lease was already validated")
        if self.tasks.get(lease.task_id) is None:
            why = self.tasks.why_unknown(lease.task_id)
            raise _Reject(f"unknown task {lease.task_id!r}" + (f": {why}" if why else ""))
        generated = len(sub.token_ids)
        if generated == 0:
            raise _Reject("no generated tokens")
        if generated > lease.max_new_tokens:
            raise _Reject(f"{generated} tokens exceed the lease's max of {lease.max_new_tokens}")
        expected_proofs = math.ceil(generated / CHUNK)
        if len(sub.proofs) != expected_proofs:
            raise _Reject(
                f"{len(sub.proofs)} proofs for {generated} tokens; expected {expected_proofs}"
            )
        for index, proof in enumerate(sub.proofs):
            if len(proof) != PROOF_BYTES:
                raise _Reject(f"proof {index} has {len(proof)} bytes; expected {PROOF_BYTES}")

    async def _validate(
        self, opened: Opened, sub: Submission, lease_opened: Opened, lease: Lease, attempt: int = 1
    ) -> bytes:
        reasons: list[str] = []
        answer = Result(score=0.0, passed=False, reasons=())
        accepted = False
        audit: AuditDecision | None = None
        prechecked = self._prechecked.pop(opened.message_id, None)
        try:
            self._static_checks(opened, sub, lease_opened)
            decision = self.audits.decide(opened.signer, self._draw(opened.message_id))
            if decision.audit:
                audit = decision
                if isinstance(prechecked, ModelServiceError):
                    raise prechecked
                # prefill, TOPLOC, replay (made with others by _prefetch_audits, or now)
                checked = prechecked or await self._check_proof(sub, lease)
            else:
                checked = await self._inspect(sub, lease, decision)
            reasons.extend(checked["reasons"])
            accepted = bool(checked["passed"])
            if accepted:
                # The validator decodes the tokens itself; the worker's text is never trusted.
                response = response_for_verifier(checked["text"], self.net.model)
                task = self.tasks.get(lease.task_id)
                assert task is not None  # the static checks made sure
                answer = await self._check_answer(response, task, lease, len(sub.token_ids))
                reasons.extend(f"answer: {r}" for r in answer.reasons)
                if answer.error:
                    reasons.append(f"answer: verifier error: {answer.error}")
                failed_rules = [name for name, ok in answer.rules if not ok]
                reasons.append(
                    "rules: " + (", ".join(f"{n} failed" for n in failed_rules) or "all pass")
                )
        except _Reject as exc:
            reasons.append(str(exc))
        except ModelServiceError as exc:
            if exc.kind in (UNAVAILABLE, "internal") and attempt < MODEL_ATTEMPTS:
                # Our model process died, hung or failed (an OOM, a bug): not the worker's
                # fault. No verdict; run() retries (after a restart if the process is gone).
                raise
            # A proof the model cannot even evaluate (wrong count, bad modulus) is a failed proof.
            reasons.append(f"proof check failed: {exc}")
            if exc.kind in ("internal", UNAVAILABLE):
                # Our model process failed, not the worker: no audit result, no invalidation.
                audit = None
        prompt_tokens, generated = len(lease.prompt_ids), len(sub.token_ids)
        # Computed here from the validator's own model config and the counts it checked itself.
        flops = inference_flops(self.model_config, prompt_tokens, generated) if accepted else 0
        body = CreditBody(
            contributor=opened.signer,
            lease_id=lease.lease_id,
            submission_id=opened.message_id,
            task_id=lease.task_id,
            sample_index=lease.sample_index,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            flops=flops,
            flop_formula=MATMUL_FORMULA,
            accepted=accepted,
            answer_score=float(answer.score),
            reasons=tuple(r[:1024] for r in reasons[:64]),
        )
        # Credit, audit result and invalidation are one durable commit: all or none.
        appended = self.store.append_local_batch(
            self.identity, self.net.network_id, self._entries(body, audit)
        )
        seq = appended[0][0]
        if audit is not None:
            self.audits.record(opened.signer, accepted)  # after the audit entry is durable
        self._used_leases.add(lease.lease_id)
        if accepted:
            self.stats.accepted += 1
            self.stats.flops_credited += flops
        else:
            self.stats.rejected += 1
        log.info(
            "%s %s from %s%s: %s",
            "ACCEPT" if accepted else "REJECT",
            lease.task_id,
            peer_id_from_public_key(opened.signer),
            "" if audit is not None else " (not audited)",
            "; ".join(reasons),
        )
        self.on_verdict(lease.lease_id, accepted)
        if self.publish_entry is not None:
            for entry_seq, _hash, entry in appended:
                try:
                    await self.publish_entry(entry)
                except Exception as exc:  # gossip is best effort; replicas also sync ranges
                    log.warning("publishing ledger entry %d failed: %s", entry_seq, exc)
        verdict = Verdict(
            version=1,
            submission_id=opened.message_id,
            lease_id=lease.lease_id,
            accepted=accepted,
            reasons=body.reasons,
            answer_score=float(answer.score),
            flops=flops,
            ledger_seq=seq,
        )
        return seal(verdict, self.identity, self.net.network_id)

    def _entries(self, credit: CreditBody, audit: AuditDecision | None) -> list[tuple[str, Any]]:
        """The ledger entries one validated submission writes: its credit, and for an audited
        one the audit result; a failed audit adds a hard invalidation naming this credit."""
        entries: list[tuple[str, Any]] = [(KIND_CREDIT, credit)]
        if audit is None:
            return entries
        entries.append(
            (
                KIND_AUDIT,
                AuditBody(
                    contributor=credit.contributor,
                    submission_id=credit.submission_id,
                    passed=credit.accepted,
                    rate=audit.rate,
                    consecutive_valid=audit.consecutive_valid,
                    reasons=credit.reasons,
                ),
            )
        )
        self.stats.audits += 1
        if not credit.accepted:
            self.stats.audits_failed += 1
            self.stats.invalidations += 1
            head = self.store.head(self.identity.public_key)
            credit_seq = 0 if head is None else head[0] + 1  # the credit is the batch's first
            entries.append(
                (
                    KIND_INVALIDATION,
                    InvalidationBody(
                        contributor=credit.contributor,
                        severity=HARD,
                        credit_signer=self.identity.public_key,
                        credit_seq=credit_seq,
                        submission_id=credit.submission_id,
                        reason=("audit failed: " + "; ".join(credit.reasons))[:1024],
                    ),
                )
            )
        return entries

    async def _inspect(
        self, sub: Submission, lease: Lease, decision: AuditDecision
    ) -> dict[str, Any]:
        """An unaudited submission: decoded and checked for how it ends, credited as pending."""
        result: dict[str, Any] = await self.model.call(
            "inspect", token_ids=list(sub.token_ids), max_new_tokens=lease.max_new_tokens
        )
        self.stats.unaudited += 1
        note = (
            f"not audited (audit rate {decision.rate:.3f} after "
            f"{decision.consecutive_valid} valid audits): credit pending until its lock window ends"
        )
        return {**result, "passed": result["complete"], "reasons": [note, *result["reasons"]]}

    @staticmethod
    def _check_item(sub: Submission, lease: Lease) -> dict[str, Any]:
        return {
            "prompt_ids": list(lease.prompt_ids),
            "token_ids": list(sub.token_ids),
            "proofs": list(sub.proofs),
            "seed": lease.seed,
            "temperature": lease.temperature,
            "top_p": lease.top_p,
            "max_new_tokens": lease.max_new_tokens,
        }

    def _count_check(self, sub: Submission) -> None:
        self.stats.proof_checks += 1
        self.stats.tokens_checked += len(sub.token_ids)
        self.stats.proof_bytes += sum(len(p) for p in sub.proofs)

    async def _check_proof(self, sub: Submission, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        result: dict[str, Any] = await self.model.call(
            "check",
            **self._check_item(sub, lease),
            policy=self.net.proof_params(),  # the manifest's proof policy, as plain numbers
        )
        self.stats.prefill_seconds += time.perf_counter() - started
        self._count_check(sub)
        return result

    def _batching_allowed(self, submission_id: bytes, head: Opened) -> bool:
        """Prefetch batched audits only when the head of the queue will be audited itself (an
        unaudited head needs no prefill) and batching is not paused after a failure."""
        if self.config.audit_batch < 2 or submission_id in self._prechecked:
            return False
        if time.monotonic() < self._batching_paused_until:
            return False
        return self.audits.decide(head.signer, self._draw(head.message_id)).audit

    def _credited(self, submission_id: bytes) -> bool:
        row = self.store.connection.execute(
            "SELECT 1 FROM credits WHERE signer = ? AND submission_id = ? LIMIT 1",
            (self.identity.public_key, submission_id),
        ).fetchone()
        return row is not None

    async def _prefetch_audits(self) -> None:
        """Audit the next queued submissions together, in one padded prefill.

        Only the first queued submission of each contributor is taken: its audit decision is
        then the one :meth:`_validate` will make (no earlier result of that contributor comes
        between), so the results are used exactly as a check made on its own would be. Anything
        else (a later submission of the same contributor, an unaudited one) is checked alone.
        """
        seen: set[bytes] = set()
        batch: list[tuple[bytes, Submission, Lease]] = []
        fetch_until = trio.current_time() + PREFETCH_TASK_FETCH_S
        for queued in self.inbox.next_queued_many(self.config.audit_batch * 4):
            if len(batch) == self.config.audit_batch:
                break
            try:
                opened, lease_opened = self._open(queued.peer, queued.envelope)
            except MalformedMessage:
                continue
            first = opened.signer not in seen
            seen.add(opened.signer)  # only a contributor's first queued submission is taken
            if not first or queued.submission_id in self._prechecked:
                continue
            if self._credited(queued.submission_id):
                continue
            sub, lease = opened.expect(Submission), lease_opened.expect(Lease)
            # Specs of tasks not seen yet, within a small budget: a publisher that hangs must
            # not hold the batch up (a failed fetch is retried when the submission's turn comes).
            left = fetch_until - trio.current_time()
            if self.tasks.get(lease.task_id) is None and left > 0:
                with trio.move_on_after(left), contextlib.suppress(PeerError, ProtocolTimeout):
                    await self.tasks.ensure(lease.task_id, lease_opened.signer)
            try:
                self._static_checks(opened, sub, lease_opened)
            except _Reject:
                continue
            if self.audits.decide(opened.signer, self._draw(opened.message_id)).audit:
                batch.append((opened.message_id, sub, lease))
        if len(batch) < 2:
            return  # one audit is made where it is needed, as always
        started = time.perf_counter()
        results: list[dict[str, Any]] = await self.model.call(
            "check_batch",
            items=[self._check_item(sub, lease) for _, sub, lease in batch],
            policy=self.net.proof_params(),
        )
        self.stats.prefill_seconds += time.perf_counter() - started
        self.stats.batched_audits += len(batch)
        for (submission_id, sub, _lease), result in zip(batch, results, strict=True):
            self._count_check(sub)
            if "error" in result:
                self._prechecked[submission_id] = ModelServiceError(result["error"], result["kind"])
            else:
                self._prechecked[submission_id] = result

    async def _check_answer(self, text: str, task: Task, lease: Lease, tokens: int) -> Result:
        """The task type's verifier, in a killable child; answer correctness labels the data."""
        started = time.perf_counter()
        spec = {
            **task.verifier,  # code: tests, entry_point, ...
            "task_type": task.task_type,
            "gold": task.answer,
            "max_tokens": lease.max_new_tokens,
        }
        try:
            return await trio.to_thread.run_sync(
                lambda: self.verifiers.verify(spec, text, response_tokens=tokens)
            )
        except VerifierError as exc:
            return Result(score=0.0, passed=False, reasons=(), error=str(exc))
        finally:
            self.stats.verify_seconds += time.perf_counter() - started

    def snapshot(self) -> dict[str, object]:
        """Counters for the API."""
        s = self.stats
        return {
            "received": s.received,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "malformed": s.malformed,
            "queued": self.inbox.queue_length(),
            "flops_credited": s.flops_credited,
            "prefill_seconds": round(s.prefill_seconds, 3),
            "verify_seconds": round(s.verify_seconds, 3),
            "proof_checks": s.proof_checks,
            "tokens_checked": s.tokens_checked,
            "proof_bytes": s.proof_bytes,
            "audits": s.audits,
            "audits_failed": s.audits_failed,
            "unaudited": s.unaudited,
            "invalidations": s.invalidations,
            "model_restarts": s.model_restarts,
            "batched_audits": s.batched_audits,
            "tasks_held": len(self.tasks),
            "task_specs_fetched": self.tasks.fetches,
        }
