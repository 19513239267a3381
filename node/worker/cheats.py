"""Forged work, for devnets only: the cheats of the proof detection table, done by a worker.

A devnet's cheater workers (``flopnet devnet --cheat KIND``) run one of these so that the whole
network path (claim, generate, submit, audit, ledger) shows each cheat rejected. They are pure
changes to what the model is asked, or to what it answered; a real worker never runs them
(the option is hidden from ``flopnet node --help``).

* ``wrong_model``: other weights (done at model load: ``--cheat-model-seed``);
* ``injected``: tokens replaced after generating (the proofs are of the honest states);
* ``truncated``: the output cut short, its last proof dropped;
* ``temperature``: sampled hotter than the lease says;
* ``top_p``: sampled from a wider nucleus than the lease says;
* ``prompt_swap``: generated from another prompt than the lease's.
"""

from __future__ import annotations

import dataclasses

from flopnet.node.model.calls import Generated, GenerateRequest
from flopnet.proof.params import CHUNK

CHEATS = ("wrong_model", "injected", "truncated", "temperature", "top_p", "prompt_swap")


def cheat_request(kind: str | None, request: GenerateRequest) -> GenerateRequest:
    """What a cheater asks its model for instead of what the lease says."""
    if kind == "temperature":
        return dataclasses.replace(request, temperature=request.temperature * 2 + 0.5)
    if kind == "top_p":
        return dataclasses.replace(request, top_p=1.0, temperature=request.temperature + 0.3)
    if kind == "prompt_swap":
        swapped = tuple(reversed(request.prompt_ids[1:]))
        return dataclasses.replace(request, prompt_ids=(request.prompt_ids[0], *swapped))
    return request


def cheat_output(kind: str | None, generated: Generated, vocab_size: int) -> Generated:
    """What a cheater submits instead of what its model answered."""
    tokens = generated.token_ids
    if kind == "injected" and tokens:
        # Every fourth token replaced by its neighbour in the vocabulary: a worker "improving"
        # its answer after the fact.
        forged = tuple((t + 1) % vocab_size if i % 4 == 1 else t for i, t in enumerate(tokens))
        return dataclasses.replace(generated, token_ids=forged)
    if kind == "truncated" and len(tokens) > 1:
        # Stop early (a cheaper answer), with as many proofs as the cut output has chunks.
        keep = (len(tokens) - 1) // CHUNK * CHUNK or len(tokens) // 2
        proofs = generated.proofs[: -(-keep // CHUNK)]
        return dataclasses.replace(
            generated, token_ids=tokens[:keep], proofs=proofs, finish_reason="stop"
        )
    return generated
