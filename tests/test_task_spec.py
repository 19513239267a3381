"""Task specs: a validator that runs apart from its publisher fetches what a lease leaves out.

Real py-libp2p hosts on 127.0.0.1, the real Publisher handler and the real Validator loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import flopnet.node.validator.validator as validator_module
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, NodeConfig
from flopnet.node.model.fake import FakeModel
from flopnet.node.model.tokenizer import ByteTokenizer
from flopnet.node.publisher.publisher import Publisher
from flopnet.node.tasks import Task, builtin_tasks, task_from_spec, task_spec
from flopnet.node.validator.inbox import Inbox
from flopnet.node.validator.task_source import TaskSource
from flopnet.node.validator.validator import Validator
from flopnet.protocol.catalog import (
    SUBMIT,
    TASK_SPEC,
    VERDICT,
)
from flopnet.protocol.envelope import message_id, open_envelope, seal
from flopnet.protocol.errors import MalformedMessage, PeerError, ProtocolTimeout
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import (
    Lease,
    Refusal,
    Submission,
    SubmissionReceipt,
    TaskSpec,
    TaskSpecRequest,
    Verdict,
    VerdictRequest,
)

PUBLISHER = Identity(b"\x71" * 32)
VALIDATOR = Identity(b"\x72" * 32)
WORKER = Identity(b"\x73" * 32)
STRANGER = Identity(b"\x74" * 32)
NET = NetworkParams(
    network_id="taskspec",
    publishers=(PUBLISHER.public_key.hex(),),
    validators=(VALIDATOR.public_key.hex(),),
)
CODE_TASK = Task(
    "mbpp-7-abc",
    "code",
    "Write a function add(a, b).",
    "",
    {"tests": ["assert add(1, 2) == 3"], "test_setup_code": "", "language": "python"},
)
TASKS = [*builtin_tasks(2), CODE_TASK]

verifier_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    st.builds(
        Task,
        task_id=st.text(min_size=1, max_size=40),
        task_type=st.sampled_from(["math", "code"]),
        problem=st.text(max_size=300),
        answer=st.text(max_size=40),
        verifier=st.dictionaries(st.text(max_size=12), verifier_values, max_size=5),
    )
)
@settings(max_examples=100, deadline=None)
def test_a_task_survives_its_wire_form(task: Task) -> None:
    sealed = seal(task_spec(task), PUBLISHER, NET.network_id)
    back = task_from_spec(open_envelope(sealed, NET.network_id, expected=TaskSpec).expect(TaskSpec))
    assert back == task and dict(back.verifier) == dict(task.verifier)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_hostile_verifier_bytes_raise_only_malformed(blob: bytes) -> None:
    spec = TaskSpec(
        version=1, task_id="t", task_type="math", problem="p", answer="1", verifier=blob
    )
    try:
        task = task_from_spec(spec)
    except MalformedMessage:
        return
    assert isinstance(task.verifier, dict)


def publisher_on(host: P2PHost, tmp_path: Path) -> Publisher:
    config = NodeConfig(roles=("publisher",), data_dir=tmp_path, network=NET)
    publisher = Publisher(config, PUBLISHER, host, ByteTokenizer(), TASKS)
    host.serve(TASK_SPEC, publisher.handle_task_spec)
    return publisher


@pytest.mark.timeout(120)
def test_publisher_serves_specs_to_validators_only(tmp_path: Path) -> None:
    async def main() -> None:
        server = P2PHost(PUBLISHER, network_id=NET.network_id)
        publisher_on(server, tmp_path)
        keys = frozenset({PUBLISHER.public_key})
        async with (
            server.running() as srv,
            P2PHost(VALIDATOR, network_id=NET.network_id).running() as val,
            P2PHost(STRANGER, network_id=NET.network_id).running() as other,
        ):
            await val.connect(srv.addrs()[0])
            await other.connect(srv.addrs()[0])
            source = TaskSource({}, val, VALIDATOR, NET.network_id, keys)
            fetched = await source.ensure(CODE_TASK.task_id, PUBLISHER.public_key)
            assert fetched == CODE_TASK and source.fetches == 1
            assert await source.ensure(CODE_TASK.task_id, PUBLISHER.public_key) == CODE_TASK
            assert source.fetches == 1 and source.get(CODE_TASK.task_id) == CODE_TASK  # cached
            assert await source.ensure("no-such-task", PUBLISHER.public_key) is None
            assert "does not know it" in (source.why_unknown("no-such-task") or "")
            assert await source.ensure("no-such-task", PUBLISHER.public_key) is None
            assert source.fetches == 2  # the answer "unknown" is remembered for a while
            # A lease signed by a key outside the manifest: nothing is asked of anyone.
            assert await source.ensure("x", STRANGER.public_key) is None and source.fetches == 2
            assert "not signed by a publisher" in (source.why_unknown("x") or "")

            # Anyone else is refused: the spec holds the gold answer.
            stranger = TaskSource({}, other, STRANGER, NET.network_id, keys)
            with pytest.raises(PeerError, match="forbidden"):
                await stranger.ensure(TASKS[0].task_id, PUBLISHER.public_key)
            ask = seal(TaskSpecRequest(version=1, task_id=TASKS[0].task_id), VALIDATOR, "taskspec")
            reply = await other.request(srv.peer_id, TASK_SPEC.protocol_id, ask, TASK_SPEC.limits)
            refusal = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refusal.code == "wrong_signer"  # a validator's request replayed by another
            # Garbage is refused with the reason (and charged to the sender).
            reply = await other.request(
                srv.peer_id, TASK_SPEC.protocol_id, b"\x93junk", TASK_SPEC.limits
            )
            refusal = open_envelope(reply, NET.network_id, expected=Refusal).expect(Refusal)
            assert refusal.code == "malformed"

    trio.run(main)


@pytest.mark.timeout(120)
def test_a_publisher_that_is_down_is_a_retryable_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with P2PHost(VALIDATOR, network_id=NET.network_id).running() as val:
            keys = frozenset({PUBLISHER.public_key})
            source = TaskSource({}, val, VALIDATOR, NET.network_id, keys)
            with pytest.raises((PeerError, ProtocolTimeout)):
                await source.ensure(TASKS[0].task_id, PUBLISHER.public_key)
            assert source.get(TASKS[0].task_id) is None
            assert source.why_unknown(TASKS[0].task_id) is None  # may be asked for again

    trio.run(main)


def lease(task_id: str, lease_id: bytes) -> bytes:
    now = time.time()
    grant = Lease(
        version=1,
        lease_id=lease_id,
        task_id=task_id,
        task_type="math",
        sample_index=0,
        worker=WORKER.public_key,
        validator=VALIDATOR.public_key,
        seed=7,
        prompt_ids=(1, 2, 3),
        max_new_tokens=48,
        temperature=0.6,
        top_p=0.95,
        issued_at=now,
        expires_at=now + 60,
    )
    return seal(grant, PUBLISHER, NET.network_id)


def bad_proof_submission(lease_bytes: bytes) -> bytes:
    """Well formed, so it is stored; its proofs are of nothing (the audit fails them)."""
    sub = Submission(
        version=1,
        lease=lease_bytes,
        token_ids=tuple(range(1, 41)),
        text="x",
        finish_reason="length",
        proofs=(bytes(258), bytes(258)),
        generation_seconds=0.1,
    )
    return seal(sub, WORKER, NET.network_id)


@pytest.mark.timeout(180)
def test_a_lone_validator_fetches_the_task_then_checks_the_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validator_module, "TASK_FETCH_BACKOFF_S", 0.02)

    async def main() -> None:
        publisher_host, validator_host = (
            P2PHost(PUBLISHER, network_id=NET.network_id),
            P2PHost(VALIDATOR, network_id=NET.network_id),
        )
        publisher_on(publisher_host, tmp_path / "publisher")
        config = NodeConfig(roles=("validator",), data_dir=tmp_path, network=NET)
        source = TaskSource(
            {}, validator_host, VALIDATOR, NET.network_id, frozenset(NET.publisher_keys)
        )
        model = FakeModel()
        info = await model.start()
        validator = Validator(
            config,
            VALIDATOR,
            validator_host,
            model,
            None,  # type: ignore[arg-type]  # never reached: every proof here fails
            LedgerStore(tmp_path / "ledger.sqlite"),
            Inbox(tmp_path / "inbox.sqlite"),
            source,
            model_config=info.config or {},
            on_verdict=lambda _lease_id, _ok: None,
        )
        validator_host.serve(SUBMIT, validator.handle_submission)
        validator_host.serve(VERDICT, validator.handle_verdict_request)
        async with (
            publisher_host.running() as pub,
            validator_host.running() as val,
            P2PHost(WORKER, network_id=NET.network_id).running() as cli,
            trio.open_nursery() as bg,
        ):
            bg.start_soon(validator.run)
            await val.connect(pub.addrs()[0])
            await cli.connect(val.addrs()[0])

            async def verdict_on(data: bytes) -> Verdict:
                reply = await cli.request(val.peer_id, SUBMIT.protocol_id, data, SUBMIT.limits)
                receipt = open_envelope(reply, NET.network_id, expected=SubmissionReceipt)
                assert receipt.expect(SubmissionReceipt).submission_id == message_id(data)
                ask = VerdictRequest(version=1, submission_id=message_id(data), wait_seconds=20.0)
                reply = await cli.request(
                    val.peer_id, VERDICT.protocol_id, seal(ask, WORKER, "taskspec"), VERDICT.limits
                )
                return open_envelope(reply, NET.network_id, expected=Verdict).expect(Verdict)

            # The task is fetched, so the checks go on to the audit of the (bad) proofs.
            first = await verdict_on(bad_proof_submission(lease(TASKS[1].task_id, b"a" * 16)))
            assert not first.accepted and "toploc chunk 0" in " ".join(first.reasons)
            assert source.fetches == 1 and source.get(TASKS[1].task_id) == TASKS[1]
            unknown = await verdict_on(bad_proof_submission(lease("made-up", b"b" * 16)))
            assert "unknown task 'made-up': its publisher does not know it" in unknown.reasons[0]

            # The publisher stops answering: the validator asks TASK_FETCH_ATTEMPTS times,
            # pausing between, then rejects, saying why.
            async def broken(_peer: str, _data: bytes) -> bytes:
                raise RuntimeError("publisher failing")

            publisher_host.handle(TASK_SPEC.protocol_id, broken, TASK_SPEC.limits)
            gone = await verdict_on(bad_proof_submission(lease(TASKS[0].task_id, b"c" * 16)))
            assert "its publisher did not serve it" in gone.reasons[0]
            assert source.fetches == 2 + validator_module.TASK_FETCH_ATTEMPTS
            bg.cancel_scope.cancel()

    trio.run(main)
