"""A sample's output streams while it is generated: text deltas cut only where the text is
complete (they join to the decoded sample), sent a few times a second, through the real model
process's pipe, onto the worker's task board."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import trio
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.node.model.calls import GenerateRequest
from flopnet.node.model.streaming import IncrementalText, OutputDelta, OutputStream
from flopnet.node.model.tokenizer import ByteTokenizer, tokenizer_for_model
from flopnet.node.worker.board import MAX_TEXT_KEPT, TaskBoard, TaskEntry

BYTES = ByteTokenizer()


def _stream_text(ids: Sequence[int], cuts: set[int], decode: object) -> list[str]:
    text = IncrementalText(decode)  # type: ignore[arg-type]
    pieces = []
    for i, token in enumerate(ids):
        text.add(token)
        if i in cuts:
            pieces.append(text.take())
    pieces.append(text.flush())
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sets(st.integers(0, 400)))
def test_byte_deltas_join_to_the_whole_text_and_never_cut_a_character(
    text: str, cuts: set[int]
) -> None:
    ids = BYTES.encode(text)
    pieces = _stream_text(ids, cuts, BYTES.decode)
    assert "".join(pieces) == BYTES.decode(ids) == text
    if "\ufffd" not in text:  # (a text may hold the replacement character itself)
        assert all("\ufffd" not in p for p in pieces)  # a character is never split


@pytest.fixture(scope="module")
def problems() -> list[str]:
    with (SHARED_DATA / "math500_test.jsonl").open() as f:
        return [json.loads(line)["problem"] for line, _ in zip(f, range(40), strict=False)]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_bpe_deltas_of_real_problems_join_to_the_decoded_text(
    problems: list[str], data: st.DataObject
) -> None:
    tokenizer = tokenizer_for_model("smollm2-135m")
    text = data.draw(st.sampled_from(problems))
    ids = tokenizer.encode(text)
    cuts = data.draw(st.sets(st.integers(0, len(ids))))
    assert "".join(_stream_text(ids, cuts, tokenizer.decode)) == tokenizer.decode(ids)


def test_the_stream_sends_at_most_every_interval_and_everything_at_the_end() -> None:
    now = [0.0]
    sent: list[list[OutputDelta]] = []
    stream = OutputStream(
        2,
        BYTES.decode,
        lambda d: sent.append(list(d)),
        skip=frozenset({BYTES.eos_id}),
        every_s=0.25,
        clock=lambda: now[0],
    )
    row0 = BYTES.encode("héllo wörld, " * 8)
    row1 = BYTES.encode("short")
    for i, token in enumerate(row0):
        now[0] = i * 0.01  # 100 tokens a second a row
        stream.on_token(0, token)
        if i < len(row1):
            stream.on_token(1, row1[i])
        elif i == len(row1):
            stream.on_token(1, BYTES.eos_id)  # counted, no text
    stream.close()
    # About one message per 0.25 s of decoding, and one at the end.
    assert 4 <= len(sent) <= len(row0) * 0.01 / 0.25 + 2
    joined = ["".join(d.text for m in sent for d in m if d.row == r) for r in (0, 1)]
    assert joined == ["héllo wörld, " * 8, "short"]
    last = {d.row: d.tokens for m in sent for d in m}
    assert last == {0: len(row0), 1: len(row1) + 1}
    assert not any(d.row == 1 for d in sent[-1])  # row 1 had said everything already


def test_the_board_appends_streamed_text_to_a_generating_lease_only() -> None:
    changes: list[str] = []
    board = TaskBoard(on_change=lambda e: changes.append(e.output))
    board.claimed(TaskEntry("aa", "t", "math", 0, "p", "v", 0.0, 100.0))
    assert board.streamed("aa", 3, "abc") is None  # still claimed: nothing is generated yet
    board.move("aa", "generating", 1.0)
    board.streamed("aa", 3, "abc")
    board.streamed("aa", 5, "de")
    entry = board.get("aa")
    assert entry is not None and (entry.output, entry.tokens) == ("abcde", 5)
    assert [h[0] for h in entry.history] == ["claimed", "generating"]  # no stage per delta
    board.streamed("aa", 9, "x" * MAX_TEXT_KEPT)
    assert len(entry.output) == MAX_TEXT_KEPT and entry.tokens == 9
    board.generated(
        "aa",
        2.0,
        output="final",
        tokens=9,
        proofs=1,
        finish_reason="eos",
        decode_s=1.0,
        proof_s=0.1,
    )
    assert board.streamed("aa", 10, "late") is None and entry.output == "final"
    assert changes[-1] == "final"


@pytest.mark.timeout(300)
def test_the_model_process_streams_each_rows_text_through_its_pipe() -> None:
    """The real child process (the seeded tiny model) and the daemon's service: every row's
    deltas, received in trio, join to the text it finally returns."""
    from flopnet.node.model.service import ModelService

    async def main() -> None:
        service = ModelService("tiny", 7, "bfloat16", threads=1)
        await service.start()
        try:
            got: list[OutputDelta] = []
            requests = [
                GenerateRequest(tuple(BYTES.encode(p)), seed, 1.0, 1.0, 48)
                for seed, p in enumerate(("2+2=", "Name a prime."))
            ]
            gens = await service.generate_batch(requests, got.extend)
            for row, gen in enumerate(gens):
                mine = [d for d in got if d.row == row]
                assert mine and mine[-1].tokens == len(gen.token_ids)
                assert "".join(d.text for d in mine) == gen.text
            one: list[OutputDelta] = []
            alone = await service.generate(requests[0], one.extend)
            assert "".join(d.text for d in one) == alone.text
            # Without a callback the deltas are read and dropped: the answer is unchanged.
            assert (await service.generate(requests[0])).token_ids == alone.token_ids
        finally:
            service.close()

    trio.run(main)


def test_the_tiny_model_is_a_byte_model() -> None:
    """The process test above encodes prompts with the byte tokenizer: true of ``tiny``."""
    assert tokenizer_for_model("tiny").vocab_size == BYTES.vocab_size
