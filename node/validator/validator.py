"""The validator role: check a submission end to end, credit FLOPs on the ledger, answer a verdict.

Submissions are acknowledged with a signed receipt once stored in the durable inbox; a background
loop validates them in arrival order (including any left queued by a crash), and workers fetch
verdicts over the verdict stream, which waits for a pending one. A task the validator does not
hold is fetched once from the publisher that signed the lease (``node.validator.task_source``).

This module does the I/O; every decision is a pure function in
:mod:`flopnet.node.validator.judgement`. Order of checks (cheap and certain first): envelope
signatures and the stream's peer; the lease (publisher, validator, worker, expiry, first use,
token and proof counts); the task's spec; then, per the audit policy, one prefill in the model
process (an audit) or only a decode (unaudited); then the answer verifier.

Adaptive auditing (``ledger.policy``): the prefill is the expensive part, so it runs for every
submission of a new contributor and then for a falling share of them, down to the manifest's
floor. An audit writes an ``audit`` entry beside the credit, in the same durable commit; a failed
audit is first checked again with the weights in float32 (a second opinion: one check's noise
must not cost an honest worker its pending credit); only when that fails too does it write a
``hard`` invalidation, which voids all of the contributor's pending credit, unaudited credit
included, and the evidence of both checks is kept (``node.validator.evidence``). An unaudited
submission's credit is pending like every credit, so a later failed audit can still void it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from flopnet.ledger.chain import decode_body
from flopnet.ledger.policy import AuditBook, AuditDecision, AuditPolicy, audit_draw
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NodeConfig
from flopnet.node.counters import Timings, counters
from flopnet.node.explain import explain_verdict
from flopnet.node.model.calls import (
    AuditMeasures,
    AuditRequest,
    GenerateRequest,
    Inspection,
    InspectRequest,
    ModelClient,
    ModelError,
    ModelInputError,
    ModelUnavailable,
)
from flopnet.node.model.prompt import response_for_verifier
from flopnet.node.tasks import Task
from flopnet.node.validator.evidence import (
    CheckRecord,
    Evidence,
    EvidenceError,
    ModelRecord,
    write_evidence,
)
from flopnet.node.validator.inbox import Inbox, Queued, TallyUpdate
from flopnet.node.validator.judgement import (
    SECOND_OPINION_PRECISION,
    Problem,
    ProofOutcome,
    audit_outcome,
    judge,
    lease_problem,
    proof_outcome,
    wants_second_opinion,
    with_second_opinion,
)
from flopnet.node.validator.schedule import next_index
from flopnet.node.validator.task_source import TaskSource
from flopnet.node.validator.traces import Trace, build_trace
from flopnet.proof.tally import ReplayBook, ReplayTally
from flopnet.protocol.envelope import Opened, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage, PeerError, ProtocolTimeout, VerifierError
from flopnet.protocol.guard import Violation
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
from flopnet.protocol.rpc import refusal
from flopnet.verifiers.result import Result

log = logging.getLogger(__name__)
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
# Submissions one worker may have waiting for a verdict (a publisher lets it hold at most 8
# leases by default; the margin covers resends and several publishers).
MAX_QUEUED_PER_PEER = 32
SCHEDULE_WINDOW = 256  # the oldest queued submissions the next one is chosen from


class AnswerVerifier(Protocol):
    """What judges an answer (:class:`flopnet.verifiers.registry.Verifiers` in a node)."""

    def verify(
        self, task: Mapping[str, Any], response: str, *, response_tokens: int | None = None
    ) -> Result: ...


@dataclass
class ValidatorStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    malformed: int = 0
    refused: int = 0  # refused at receipt, before anything was stored
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
    # Failed audits checked again in float32 before anyone is punished, by what came of it.
    second_opinions: dict[str, int] = field(default_factory=dict)
    # Verdicts by the plain-words category of their first failing reason (node.explain).
    verdicts_by_reason: dict[str, int] = field(default_factory=dict)


def audit_request(sub: Submission, lease: Lease) -> AuditRequest:
    """What the model process needs to audit one submission."""
    return AuditRequest(GenerateRequest.of_lease(lease), tuple(sub.token_ids), tuple(sub.proofs))


@dataclass(frozen=True)
class _Queued:
    """A queued submission, opened: its envelope, its lease, and the records inside."""

    opened: Opened
    lease_opened: Opened

    @property
    def submission_id(self) -> bytes:
        return self.opened.message_id

    @property
    def submission(self) -> Submission:
        return self.opened.expect(Submission)

    @property
    def lease(self) -> Lease:
        return self.lease_opened.expect(Lease)


class Validator:
    """Validates submissions addressed to this node and appends credits to its ledger."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        host: P2PHost,
        model: ModelClient,
        verifiers: AnswerVerifier,
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
        self.policy = self.net.proof_policy()
        self.stats = ValidatorStats()
        self.timings = Timings()  # audit (prefill), batched audit and answer-check seconds
        # Told every verdict once it is durable (the daemon publishes it as an event).
        self.on_judged: list[Callable[[dict[str, Any]], None]] = []
        self._used_leases: set[bytes] = store.credited_leases(identity.public_key)
        # One credit per sample: every lease of a sample comes to us (the publisher's choice).
        self._credited_samples = store.credited_samples(identity.public_key)
        # Rebuilt from our own chain's audit entries, so a restart keeps every record.
        self.audits = AuditBook(
            audit_policy or AuditPolicy(floor=self.net.audit_rate_floor),
            store.audit_results(identity.public_key),
        )
        # Each contributor's recent replay counts (proof.tally), kept beside our verdicts.
        self.replays = ReplayBook(self.policy.honest_replay_rate, inbox.replay_windows())
        # Only we can compute the draws in advance: a worker cannot tell which results we check.
        secret = hashlib.sha256(b"flopnet-audit-secret\0" + identity.seed).digest()
        self._draw = draw or (lambda submission_id: audit_draw(secret, submission_id))
        self._wakeup = trio.Event()
        self._verdict_ready: dict[bytes, trio.Event] = {}
        self._attempts: dict[bytes, int] = {}  # submission -> checks cut short by our model
        self._task_attempts: dict[bytes, int] = {}  # submission -> failed task-spec fetches
        # Audit results made ahead, several in one prefill (_prefetch_audits), by submission.
        self._prechecked: dict[bytes, AuditMeasures | ModelError] = {}
        self._batching_paused_until = 0.0
        self._peer_keys: dict[str, bytes] = {}  # stream peer id -> contributor key
        self._turn = 0  # submissions taken from the queue (for the newcomers' share)

    # -- the streams ---------------------------------------------------------------------------

    def _open(self, opened: Opened) -> _Queued:
        """The lease inside a submission (raises MalformedMessage when it is not one)."""
        lease = open_envelope(opened.expect(Submission).lease, self.net.network_id, expected=Lease)
        return _Queued(opened, lease)

    def _reopen(self, envelope: bytes) -> _Queued:
        return self._open(open_envelope(envelope, self.net.network_id, expected=Submission))

    async def handle_submission(self, peer_id: str, opened: Opened) -> SubmissionReceipt | Refusal:
        """Store a submission durably and answer a signed receipt (``protocol.catalog.SUBMIT``;
        the host has checked that the stream's peer signed it).

        Nothing is stored before the cheap checks pass: a lease that is not this worker's, not
        for us, expired, used or forged, wrong counts, a second submission for a lease, or more
        queued submissions than a worker may hold leases is refused at once (and charged when no
        honest worker could have sent it), so storage costs the sender a real lease.
        """
        self.stats.received += 1
        try:
            queued = self._open(opened)
        except MalformedMessage:
            self.stats.malformed += 1
            raise  # the host resets the stream, logs the reason and charges the peer
        lease = queued.lease
        self._peer_keys[peer_id] = opened.signer
        if self.inbox.received_at(opened.message_id) is None:  # a resend is answered again
            refused = await self._refuse_at_receipt(peer_id, queued)
            if refused is not None:
                return refused
        await self.inbox.add_durable(opened.message_id, lease.lease_id, peer_id, opened.raw)
        self._wakeup.set()
        return SubmissionReceipt(
            version=1,
            submission_id=opened.message_id,
            lease_id=lease.lease_id,
            received_at=self.inbox.received_at(opened.message_id) or time.time(),
            queue_position=self.inbox.position(opened.message_id),
        )

    async def _refuse_at_receipt(self, peer_id: str, queued: _Queued) -> Refusal | None:
        problem = self._problem(queued, time.time(), task_known=False)
        if problem is None and self.inbox.has_lease(queued.lease.lease_id):
            problem = Problem("duplicate", "another submission for this lease is queued")
        if problem is None and self.inbox.queued_from(peer_id) >= MAX_QUEUED_PER_PEER:
            problem = Problem("queue_full", f"{MAX_QUEUED_PER_PEER} of yours are queued; wait")
        if problem is None:
            return None
        self.stats.refused += 1
        log.info("refused a submission from %s: %s", peer_id, problem.reason)
        if problem.dishonest:
            await self.host.penalize(peer_id, Violation.MALFORMED)
        return refusal(problem.code, problem.reason)

    async def handle_verdict_request(self, peer_id: str, opened: Opened) -> Verdict | Refusal:
        """Answer the verdict on a submission, waiting up to the requested time if pending
        (``protocol.catalog.VERDICT``)."""
        submission_id = opened.expect(VerdictRequest).submission_id
        if self.inbox.received_at(submission_id) is None:
            return refusal("unknown_submission", "no submission with that id was received")
        verdict = self.inbox.verdict(submission_id)
        if verdict is None:
            event = self._verdict_ready.setdefault(submission_id, trio.Event())
            with trio.move_on_after(opened.expect(VerdictRequest).wait_seconds):
                await event.wait()
            verdict = self.inbox.verdict(submission_id)
        if verdict is None:
            position = self.inbox.position(submission_id)
            return refusal("pending", f"queued at position {position}")
        # Stored sealed (a worker asking again gets the same signed bytes): hand back the record.
        return open_envelope(verdict, self.net.network_id, expected=Verdict).expect(Verdict)

    # -- the queue -----------------------------------------------------------------------------

    def _next_queued(self) -> Queued | None:
        """The queued submission to check next (``schedule``: trusted contributors first, a
        share of turns for newcomers, suspects last; each contributor's in arrival order)."""
        rows = self.inbox.next_queued_many(SCHEDULE_WINDOW)
        if not rows:
            return None
        keys = [self._contributor(row) for row in rows]
        index = next_index(keys, self.audits.states, self._turn)
        return rows[index]

    def _contributor(self, row: Queued) -> bytes:
        """The public key behind a queued row's peer id (read from its envelope once)."""
        key = self._peer_keys.get(row.peer)
        if key is None:
            try:
                key = self._reopen(row.envelope).opened.signer
            except MalformedMessage:
                key = b""
            self._peer_keys[row.peer] = key
        return key

    async def run(self) -> None:
        """Validate queued submissions, forever (resuming after a restart)."""
        while True:
            row = self._next_queued()
            if row is None:
                self._wakeup = trio.Event()
                if self.inbox.next_queued() is None:
                    await self._wakeup.wait()
                continue
            self._turn += 1
            verdict = self._verdict_from_ledger(row.submission_id)
            if verdict is not None:
                # Credited before a crash; the publisher may not have heard the outcome.
                rebuilt = open_envelope(verdict, self.net.network_id, expected=Verdict)
                self.on_verdict(rebuilt.expect(Verdict).lease_id, rebuilt.expect(Verdict).accepted)
                trace = await self._trace_from_ledger(row)
                tally = None  # its counts were lost with the crash (see _record_replay)
            else:
                queued = self._reopen(row.envelope)
                if not await self._fetch_task(row.submission_id, queued.lease_opened):
                    continue  # its publisher could not answer: asked again after a pause
                attempt = self._attempts.get(row.submission_id, 0) + 1
                if self._batching_allowed(queued):
                    await self._prefetch_or_pause()
                try:
                    verdict, trace, tally = await self._validate(queued, attempt)
                except ModelError as exc:
                    # Nothing was written: the submission stays queued, first in line.
                    self._attempts[row.submission_id] = attempt
                    log.warning("model check failed (%s, attempt %d); retrying", exc, attempt)
                    await trio.sleep(MODEL_RESTART_BACKOFF_S)
                    if isinstance(exc, ModelUnavailable):
                        await self._restart_model()  # counted as an attempt
                    continue
                self._attempts.pop(row.submission_id, None)
            self.inbox.set_verdict(row.submission_id, verdict, trace, tally)
            event = self._verdict_ready.pop(row.submission_id, None)
            if event is not None:
                event.set()

    async def _restart_model(self) -> None:
        self.stats.model_restarts += 1
        with contextlib.suppress(ModelError):
            await self.model.restart()

    async def _prefetch_or_pause(self) -> None:
        try:
            await self._prefetch_audits()
        except ModelError as exc:
            # One padded prefill failed (too big, a poison item, our model): audit one by one
            # for a while; each submission then has its own attempts.
            log.warning("batched audit failed (%s); auditing one by one", exc)
            self._batching_paused_until = time.monotonic() + BATCH_PAUSE_S
            if isinstance(exc, ModelUnavailable):
                await self._restart_model()

    async def _fetch_task(self, submission_id: bytes, lease_opened: Opened) -> bool:
        """Make sure the leased task's spec is here; False to try again later (after a pause).

        A publisher that has no such task, or too many failed attempts, leaves the task unknown:
        the checks then reject the submission, saying why.
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
        found = self.store.credit_entry(self.identity.public_key, submission_id)
        if found is None:
            return None
        seq, envelope = found
        entry = open_envelope(envelope, self.net.network_id, expected=LedgerEntry)
        body = decode_body("credit", entry.expect(LedgerEntry).body)
        assert isinstance(body, CreditBody)
        return self._seal_verdict(body, seq)

    async def _trace_from_ledger(self, row: Queued) -> Trace | None:
        """The trace of a submission credited just before a crash, rebuilt from its credit entry
        (the verdict's reasons) and a fresh decode of its tokens; None if that cannot be had."""
        found = self.store.credit_entry(self.identity.public_key, row.submission_id)
        queued = self._reopen(row.envelope)
        task = self.tasks.get(queued.lease.task_id)
        if found is None or task is None:
            return None
        seq, envelope = found
        entry = open_envelope(envelope, self.net.network_id, expected=LedgerEntry)
        credit = decode_body("credit", entry.expect(LedgerEntry).body)
        assert isinstance(credit, CreditBody)
        sub = queued.submission
        try:
            decoded = await self.model.inspect(
                InspectRequest(tuple(sub.token_ids), queued.lease.max_new_tokens)
            )
        except ModelError:
            return None
        audited = any(
            r.submission_id == row.submission_id
            for r in self.store.audit_records(self.identity.public_key)
        )
        return build_trace(
            submission_id=row.submission_id,
            task=task,
            lease=queued.lease,
            submission=sub,
            proof=ProofOutcome(credit.accepted, credit.reasons, audited, decoded.text),
            answer=Result(score=credit.answer_score, passed=credit.answer_score > 0, reasons=()),
            credit=credit,
            audited=audited,
            ledger_seq=seq,
            ledger_hash=self.store.entry_hash(self.identity.public_key, seq) or b"",
            net=self.net,
            validator=self.identity.public_key,
            received_at=row.received_at,
            checked_at=time.time(),
        )

    def _seal_verdict(self, credit: CreditBody, seq: int) -> bytes:
        verdict = Verdict(
            version=1,
            submission_id=credit.submission_id,
            lease_id=credit.lease_id,
            accepted=credit.accepted,
            reasons=credit.reasons,
            answer_score=credit.answer_score,
            flops=credit.flops,
            ledger_seq=seq,
        )
        return seal(verdict, self.identity, self.net.network_id)

    # -- one submission ------------------------------------------------------------------------

    def _problem(
        self, queued: _Queued, received_at: float, *, task_known: bool = True
    ) -> Problem | None:
        """What the cheap checks find (pure but for our own state): at receipt, before a
        submission is stored (``task_known`` False: a spec may still have to be fetched), and
        again before it is judged, the leased task's spec included."""
        lease = queued.lease
        unknown = None
        if task_known and self.tasks.get(lease.task_id) is None:
            why = self.tasks.why_unknown(lease.task_id)
            unknown = f"unknown task {lease.task_id!r}" + (f": {why}" if why else "")
        return lease_problem(
            lease=lease,
            lease_signer=queued.lease_opened.signer,
            submitter=queued.opened.signer,
            submission=queued.submission,
            validator=self.identity.public_key,
            publishers=self.net.publisher_keys,
            received_at=received_at,
            already_used=lease.lease_id in self._used_leases,
            sample_credited=(lease.task_id, lease.sample_index) in self._credited_samples,
            unknown_task=unknown,
        )

    def _decide_audit(self, queued: _Queued) -> AuditDecision:
        return self.audits.decide(queued.opened.signer, self._draw(queued.submission_id))

    async def _measure(
        self, queued: _Queued, decision: AuditDecision, attempt: int
    ) -> AuditMeasures | Inspection | ModelError:
        """Ask the model to measure (an audit) or decode (unaudited). Our model's own failures
        are raised for a retry while attempts remain; afterwards, and for input it cannot
        evaluate, the failure itself is what :func:`proof_outcome` judges."""
        sub, lease = queued.submission, queued.lease
        prechecked = self._prechecked.pop(queued.submission_id, None)
        try:
            if not decision.audit:
                inspection = await self.model.inspect(
                    InspectRequest(tuple(sub.token_ids), lease.max_new_tokens)
                )
                self.stats.unaudited += 1
                return inspection
            if isinstance(prechecked, ModelError):
                raise prechecked
            return prechecked or await self._audit(sub, lease)
        except ModelError as exc:
            if not isinstance(exc, ModelInputError) and attempt < MODEL_ATTEMPTS:
                raise  # our model process died, hung or failed: no verdict; run() retries
            return exc

    async def _validate(
        self, queued: _Queued, attempt: int = 1
    ) -> tuple[bytes, Trace | None, TallyUpdate | None]:
        """Judge one submission and write its ledger entries; its sealed verdict, its trace
        (None when it failed the cheap checks: nothing was generated to keep) and, for an audit
        under a policy that keeps a replay tally, the tally's change to store with them."""
        sub, lease = queued.submission, queued.lease
        received_at = self.inbox.received_at(queued.submission_id) or time.time()
        problem = self._problem(queued, received_at)
        decision = proof = answer = None
        measured: AuditMeasures | Inspection | ModelError | None = None
        verify_started = verify_s = 0.0
        if problem is None:
            decision = self._decide_audit(queued)
            measured = await self._measure(queued, decision, attempt)
            history = self.replays.history(queued.opened.signer)
            proof = proof_outcome(measured, decision, self.policy, history)
            if wants_second_opinion(measured, proof):
                assert isinstance(measured, AuditMeasures)
                proof = await self._second_opinion(queued, decision, measured, proof, history)
            if proof.passed:
                task = self.tasks.get(lease.task_id)
                assert task is not None  # the checks made sure
                # The validator decodes the tokens itself; the worker's text is never trusted.
                text = response_for_verifier(proof.text, self.net.model)
                verify_started = time.perf_counter()
                answer = await self._check_answer(text, task, lease, len(sub.token_ids))
                verify_s = time.perf_counter() - verify_started
        head = self.store.head(self.identity.public_key)
        judgement = judge(
            submission_id=queued.submission_id,
            contributor=queued.opened.signer,
            lease=lease,
            generated=len(sub.token_ids),
            problem=problem,
            decision=decision,
            proof=proof,
            answer=answer,
            model_config=self.model_config,
            validator=self.identity.public_key,
            credit_seq=0 if head is None else head[0] + 1,
        )
        # Credit, audit result and invalidation are one durable commit: all or none.
        appended = self.store.append_local_batch(
            self.identity, self.net.network_id, list(judgement.entries)
        )
        credit = judgement.credit
        tally = None
        if judgement.audited:
            self.audits.record(queued.opened.signer, credit.accepted)  # after it is durable
            assert proof is not None
            tally = self._record_replay(queued, proof, credit.accepted)
            self.stats.audits += 1
            if not credit.accepted:
                self.stats.audits_failed += 1
                self.stats.invalidations += 1
        self._used_leases.add(lease.lease_id)
        if credit.accepted:
            self._credited_samples.add((lease.task_id, lease.sample_index))
        if credit.accepted:
            self.stats.accepted += 1
            self.stats.flops_credited += credit.flops
        else:
            self.stats.rejected += 1
        category = explain_verdict(credit.accepted, credit.reasons).category
        self.stats.verdicts_by_reason[category] = self.stats.verdicts_by_reason.get(category, 0) + 1
        judged = {
            "peer_id": peer_id_from_public_key(queued.opened.signer),
            "task_id": lease.task_id,
            "sample_index": lease.sample_index,
            "accepted": credit.accepted,
            "audited": judgement.audited,
            "category": category,
            "flops": credit.flops,
            "ledger_seq": appended[0][0],
        }
        for hook in self.on_judged:
            hook(judged)
        log.info(
            "%s %s from %s%s: %s",
            "ACCEPT" if credit.accepted else "REJECT",
            lease.task_id,
            peer_id_from_public_key(queued.opened.signer),
            "" if judgement.audited else " (not audited)",
            "; ".join(credit.reasons),
        )
        self.on_verdict(lease.lease_id, credit.accepted)
        if self.publish_entry is not None:
            for entry_seq, _hash, entry in appended:
                try:
                    await self.publish_entry(entry)
                except Exception as exc:  # gossip is best effort; replicas also sync ranges
                    log.warning("publishing ledger entry %d failed: %s", entry_seq, exc)
        trace = None
        task = self.tasks.get(lease.task_id)
        if proof is not None and task is not None:
            trace = build_trace(
                submission_id=queued.submission_id,
                task=task,
                lease=lease,
                submission=sub,
                proof=proof,
                answer=answer,
                credit=credit,
                audited=judgement.audited,
                ledger_seq=appended[0][0],
                ledger_hash=appended[0][1],
                net=self.net,
                validator=self.identity.public_key,
                received_at=received_at,
                checked_at=time.time(),
                prefill_s=measured.prefill_s if isinstance(measured, AuditMeasures) else 0.0,
                verify_s=verify_s,
            )
        return self._seal_verdict(credit, appended[0][0]), trace, tally

    def _record_replay(
        self, queued: _Queued, proof: ProofOutcome, passed: bool
    ) -> TallyUpdate | None:
        """Keep an audit's replay counts in its contributor's window (cleared by a failure) and
        return the change, which is stored with the verdict. A crash between the ledger commit
        and that row loses one audit's counts, which can only make the tally more lenient."""
        if self.replays.honest_rate <= 0.0:
            return None
        tokens, mismatches = proof.replay_counts
        self.replays.record(queued.opened.signer, tokens, mismatches, passed)
        return TallyUpdate(queued.opened.signer, tokens, mismatches, passed, self.replays.window)

    async def _second_opinion(
        self,
        queued: _Queued,
        decision: AuditDecision,
        first: AuditMeasures,
        failed: ProofOutcome,
        history: ReplayTally | None,
    ) -> ProofOutcome:
        """Check a failed audit again with the weights in float32, and when that fails too,
        keep the evidence (``node.validator.evidence``) before the punishment is written."""
        request = replace(
            audit_request(queued.submission, queued.lease), precision=SECOND_OPINION_PRECISION
        )
        second: AuditMeasures | ModelError
        try:
            second = await self._audit_request(queued.submission, request)
        except ModelError as exc:
            second = exc
        proof = with_second_opinion(failed, second, decision, self.policy, history)
        if proof.second_opinion == "confirmed":
            assert isinstance(second, AuditMeasures)
            checks = [
                CheckRecord("", first, False, failed.reasons),
                CheckRecord(
                    SECOND_OPINION_PRECISION,
                    second,
                    False,
                    audit_outcome(second, self.policy, history).reasons,
                ),
            ]
            try:
                evidence = self._evidence(queued, checks, history)
                path = write_evidence(self.config.data_dir, evidence, self.identity)
                log.info("evidence of the failed audit kept in %s", path)
            except EvidenceError as exc:  # no punishment that cannot be shown
                log.error("%s: the submission is rejected without punishment", exc)
                proof = replace(
                    proof,
                    reasons=(*proof.reasons, f"evidence not kept ({exc}): not punished"),
                    audited=False,
                    second_opinion="unavailable",
                )
        outcome = proof.second_opinion
        self.stats.second_opinions[outcome] = self.stats.second_opinions.get(outcome, 0) + 1
        return proof

    def _evidence(
        self, queued: _Queued, checks: Sequence[CheckRecord], history: ReplayTally | None
    ) -> Evidence:
        info = self.model.info
        assert info is not None  # the model answered the checks
        return Evidence(
            network_id=self.net.network_id,
            validator=self.identity.public_key,
            submission_id=queued.submission_id,
            submission=queued.opened.raw,
            model=ModelRecord(
                info.name, info.seed, info.dtype, self.net.model_revision, info.weights_sha256
            ),
            policy=self.policy,
            checks=tuple(checks),
            written_at=time.time(),
            replay_history=history,
        )

    def _count_check(self, sub: Submission) -> None:
        self.stats.proof_checks += 1
        self.stats.tokens_checked += len(sub.token_ids)
        self.stats.proof_bytes += sum(len(p) for p in sub.proofs)

    async def _audit(self, sub: Submission, lease: Lease) -> AuditMeasures:
        return await self._audit_request(sub, audit_request(sub, lease))

    async def _audit_request(self, sub: Submission, request: AuditRequest) -> AuditMeasures:
        started = time.perf_counter()
        measured = await self.model.audit(request)
        elapsed = time.perf_counter() - started
        self.stats.prefill_seconds += elapsed
        self.timings.observe("audit", elapsed)
        self._count_check(sub)
        return measured

    # -- batched audits ------------------------------------------------------------------------

    def _batching_allowed(self, head: _Queued) -> bool:
        """Prefetch batched audits only when the head of the queue will be audited itself (an
        unaudited head needs no prefill) and batching is not paused after a failure."""
        if self.config.audit_batch < 2 or head.submission_id in self._prechecked:
            return False
        if time.monotonic() < self._batching_paused_until:
            return False
        return self._decide_audit(head).audit

    async def _prefetch_audits(self) -> None:
        """Audit the next queued submissions together, in one padded prefill.

        Only the first queued submission of each contributor is taken: its audit decision is
        then the one :meth:`_validate` will make (no earlier result of that contributor comes
        between), so the results are used exactly as a check made on its own would be. Anything
        else (a later submission of the same contributor, an unaudited one) is checked alone.
        """
        seen: set[bytes] = set()
        batch: list[_Queued] = []
        fetch_until = trio.current_time() + PREFETCH_TASK_FETCH_S
        for row in self.inbox.next_queued_many(self.config.audit_batch * 4):
            if len(batch) == self.config.audit_batch:
                break
            try:
                queued = self._reopen(row.envelope)
            except MalformedMessage:
                continue
            first = queued.opened.signer not in seen
            seen.add(queued.opened.signer)  # only a contributor's first queued one is taken
            if not first or row.submission_id in self._prechecked:
                continue
            if self.store.has_credit(self.identity.public_key, row.submission_id):
                continue
            lease = queued.lease
            # Specs of tasks not seen yet, within a small budget: a publisher that hangs must
            # not hold the batch up (a failed fetch is retried when the submission's turn comes).
            left = fetch_until - trio.current_time()
            if self.tasks.get(lease.task_id) is None and left > 0:
                with trio.move_on_after(left), contextlib.suppress(PeerError, ProtocolTimeout):
                    await self.tasks.ensure(lease.task_id, queued.lease_opened.signer)
            received_at = self.inbox.received_at(row.submission_id) or time.time()
            if self._problem(queued, received_at) is None and self._decide_audit(queued).audit:
                batch.append(queued)
        if len(batch) < 2:
            return  # one audit is made where it is needed, as always
        started = time.perf_counter()
        results = await self.model.audit_batch(
            [audit_request(q.submission, q.lease) for q in batch]
        )
        elapsed = time.perf_counter() - started
        self.stats.prefill_seconds += elapsed
        self.timings.observe("audit_batch", elapsed)
        self.stats.batched_audits += len(batch)
        for queued, result in zip(batch, results, strict=True):
            self._count_check(queued.submission)
            self._prechecked[queued.submission_id] = result

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
            elapsed = time.perf_counter() - started
            self.stats.verify_seconds += elapsed
            self.timings.observe("answer_check", elapsed)

    def snapshot(self) -> dict[str, object]:
        """Counters for the API."""
        return counters(
            self.stats,
            queued=self.inbox.queue_length(),
            tasks_held=len(self.tasks),
            task_specs_fetched=self.tasks.fetches,
        )
