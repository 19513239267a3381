"""A validator on a real libp2p host: bad submissions get clear verdicts, and it keeps serving.

These submissions fail before the model is needed, so no model process is started; the checks
that need the model (TOPLOC, replay) run in the end-to-end tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.tasks import builtin_tasks
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.validator import Validator
from flopnet.protocol.catalog import SUBMIT, VERDICT
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.guard import PeerGuard
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import (
    Lease,
    Refusal,
    Submission,
    SubmissionReceipt,
    Verdict,
    VerdictRequest,
)

VALIDATOR = Identity(b"\x44" * 32)
WORKER = Identity(b"\x55" * 32)
OTHER = Identity(b"\x66" * 32)
NET = NetworkParams(
    network_id="vfaults",
    publishers=(VALIDATOR.public_key.hex(),),
    validators=(VALIDATOR.public_key.hex(),),
)
TASKS = builtin_tasks(2)


def lease(worker: Identity = WORKER, validator: Identity = VALIDATOR, **changes: object) -> bytes:
    fields: dict[str, object] = dict(
        version=1,
        lease_id=bytes(range(16)),
        task_id=TASKS[0].task_id,
        task_type="math",
        sample_index=0,
        worker=worker.public_key,
        validator=validator.public_key,
        seed=7,
        prompt_ids=(1, 2, 3),
        max_new_tokens=48,
        temperature=0.6,
        top_p=0.95,
        issued_at=time.time(),
        expires_at=time.time() + 60,
    )
    fields.update(changes)
    return seal(Lease(**fields), VALIDATOR, NET.network_id)  # type: ignore[arg-type]


def submission(
    lease_bytes: bytes, tokens: int = 40, proof_len: int = 258, proofs: int = 2
) -> bytes:
    sub = Submission(
        version=1,
        lease=lease_bytes,
        token_ids=tuple(range(tokens)),
        text="x",
        finish_reason="length",
        proofs=tuple(bytes(proof_len) for _ in range(proofs)),
        generation_seconds=0.1,
    )
    return seal(sub, WORKER, NET.network_id)


@pytest.mark.timeout(120)
def test_validator_rejects_bad_submissions_and_keeps_serving(tmp_path: Path) -> None:
    verdicts: list[tuple[bytes, bool]] = []

    async def main() -> None:
        # Charges are counted here, not enforced: this test sends many bad requests.
        host = P2PHost(VALIDATOR, network_id=NET.network_id, guard=PeerGuard(ban_threshold=-1e9))
        config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)
        store = LedgerStore(tmp_path / "ledger.sqlite")
        inbox = Inbox(tmp_path / "inbox.sqlite")
        validator = Validator(
            config,
            VALIDATOR,
            host,
            None,  # type: ignore[arg-type]  # never reached: every case fails a static check
            None,  # type: ignore[arg-type]
            store,
            inbox,
            {t.task_id: t for t in TASKS},
            model_config={"model_type": "llama"},  # never used: nothing here is accepted
            on_verdict=lambda lease_id, ok: verdicts.append((lease_id, ok)),
        )
        host.serve(SUBMIT, validator.handle_submission)
        host.serve(VERDICT, validator.handle_verdict_request)
        client = P2PHost(WORKER)
        async with host.running() as srv, client.running() as cli, trio.open_nursery() as bg:
            bg.start_soon(validator.run)
            await cli.connect(srv.addrs()[0])

            async def submit(data: bytes) -> Verdict:
                reply = await cli.request(srv.peer_id, SUBMIT.protocol_id, data, SUBMIT.limits)
                receipt = open_envelope(reply, NET.network_id, expected=SubmissionReceipt)
                assert receipt.signer == VALIDATOR.public_key
                submission_id = receipt.expect(SubmissionReceipt).submission_id
                assert submission_id == message_id(data)
                ask = VerdictRequest(version=1, submission_id=submission_id, wait_seconds=10.0)
                reply = await cli.request(
                    srv.peer_id,
                    VERDICT.protocol_id,
                    seal(ask, WORKER, NET.network_id),
                    VERDICT.limits,
                )
                opened = open_envelope(reply, NET.network_id, expected=Verdict)
                assert opened.signer == VALIDATOR.public_key
                return opened.expect(Verdict)

            # Malformed bytes and a submission signed by another key than the stream's peer are
            # refused with the reason: neither is stored, no verdict is owed, both are charged.
            reply = await cli.request(srv.peer_id, SUBMIT.protocol_id, b"\x93junk", SUBMIT.limits)
            refused = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refused.code == "malformed"
            forged = seal(
                open_envelope(submission(lease()), NET.network_id).message, OTHER, "vfaults"
            )
            reply = await cli.request(srv.peer_id, SUBMIT.protocol_id, forged, SUBMIT.limits)
            refused = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refused.code == "wrong_signer"
            assert inbox.queue_length() == 0
            (charged,) = srv.guard.snapshot(time.time())
            assert charged["peer_id"] == WORKER.peer_id
            assert set(charged["violations"]) == {"malformed", "wrong_signer"}

            # Cheap checks come before storage: a bad submission is refused with its code and
            # nothing is stored; those no honest worker could send are charged to the sender.
            refused_cases = [
                (submission(lease(), proof_len=100), "proof_size", True),
                (submission(lease(lease_id=b"b" * 16), proofs=1), "proof_count", True),
                (submission(lease(lease_id=b"c" * 16), tokens=49), "too_many_tokens", True),
                (submission(lease(lease_id=b"d" * 16, validator=OTHER)), "other_validator", True),
                (submission(lease(lease_id=b"e" * 16, worker=OTHER)), "not_your_lease", True),
                (
                    submission(lease(lease_id=b"f" * 16, expires_at=time.time() - 100)),
                    "lease_expired",
                    False,  # a slow honest worker sends this too: refused, not charged
                ),
            ]
            charges = srv.guard.snapshot(time.time())[0]["violations"]["malformed"]
            for data, code, charged_for in refused_cases:
                reply = await cli.request(srv.peer_id, SUBMIT.protocol_id, data, SUBMIT.limits)
                refused = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
                assert refused.code == code, (code, refused.reason)
                now_charged = srv.guard.snapshot(time.time())[0]["violations"]["malformed"]
                assert now_charged == charges + charged_for
                charges = now_charged
            assert inbox.queue_length() == 0 and store.head(VALIDATOR.public_key) is None

            # A task the validator cannot know is stored (its spec might have to be fetched)
            # and judged: rejected, on the ledger, with the reason.
            unknown_task = submission(lease(lease_id=b"g" * 16, task_id="nope"))
            verdict = await submit(unknown_task)
            assert not verdict.accepted and verdict.flops == 0
            assert any("unknown task" in r for r in verdict.reasons), verdict.reasons
            # Asked again, the same submission gets its receipt and the same signed verdict; a
            # second, different submission for the same lease is refused.
            assert await submit(unknown_task) == verdict
            again = submission(lease(lease_id=b"g" * 16, task_id="nope"), tokens=32, proofs=1)
            reply = await cli.request(srv.peer_id, SUBMIT.protocol_id, again, SUBMIT.limits)
            refused = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refused.code == "duplicate"

            assert store.head(VALIDATOR.public_key)[0] == 0  # type: ignore[index]
            assert store.verify_all(NET.network_id) == []
            # The two bad envelopes never reached the validator: the host refused them first.
            assert validator.stats.received == len(refused_cases) + 3
            assert validator.stats.refused == len(refused_cases) + 1
            assert validator.stats.malformed == 0 and validator.stats.rejected == 1

            # Asking again returns the same signed verdict; an unknown id gets a refusal.
            unknown = VerdictRequest(version=1, submission_id=bytes(32), wait_seconds=0.0)
            reply = await cli.request(
                srv.peer_id,
                VERDICT.protocol_id,
                seal(unknown, WORKER, NET.network_id),
                VERDICT.limits,
            )
            refusal = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refusal.code == "unknown_submission"
            bg.cancel_scope.cancel()
        store.close()
        inbox.close()

    trio.run(main)
    assert all(not ok for _, ok in verdicts)
