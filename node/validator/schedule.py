"""Which queued submission the validator checks next: a pure choice that keeps costs on senders.

An audit is one prefill: the expensive part of validating. Anyone can make a fresh identity and
send outputs with well-formed proofs, so checking strictly in arrival order would let a swarm of
newcomers spend the validator's time. Contributors are ranked by their audit record instead:
*trusted* (their last audit passed) first, *newcomers* (no audit yet) get every
``newcomer_every``-th turn while trusted work waits (so honest newcomers are still served), and
*suspects* (their last audit failed) only when nothing else waits. Within a contributor, arrival
order is kept: its audit decisions depend on the order of its results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flopnet.ledger.policy import AuditState

TRUSTED, NEWCOMER, SUSPECT = 0, 1, 2


def rank(state: AuditState | None) -> int:
    """A contributor's rank from its audit record."""
    if state is None or state.audits == 0:
        return NEWCOMER
    if state.consecutive_valid == 0:
        return SUSPECT  # its last audit failed
    return TRUSTED


def next_index(
    contributors: Sequence[bytes],
    states: Mapping[bytes, AuditState],
    turn: int,
    *,
    newcomer_every: int = 3,
) -> int:
    """The index (into the queue, oldest first) of the submission to check at ``turn``."""
    if not contributors:
        raise ValueError("nothing queued")
    ranks = [rank(states.get(c)) for c in contributors]
    if turn % newcomer_every == 0 and NEWCOMER in ranks:
        return ranks.index(NEWCOMER)
    best = min(ranks)
    return ranks.index(best)
