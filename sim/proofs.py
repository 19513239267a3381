"""Audit outcomes the simulation draws from: the proof detection benchmark's per-sample
measurements, each judged once by the validator's own code.

Every stored sample (TOPLOC chunk checks, per-token replay shortfalls, how it ended) becomes an
``AuditMeasures`` and an ``Inspection``, and :func:`flopnet.node.validator.judgement.proof_outcome`
gives its verdict under the network's proof policy, audited and unaudited. A simulated audit of a
cheat kind then picks one stored sample of that kind at random, so the simulation's detection and
false-positive rates are the measured ones, through the decision the validator really takes.

The second opinion: a failed audit of a bf16 model is checked again in float32 before anyone is
punished (:func:`~flopnet.node.validator.judgement.with_second_opinion`). For honest work that
second check is the benchmark's float32 row "bf16 generation, fp32 check" (a bf16 worker's
tokens prefilled in float32), each stored sample put through ``with_second_opinion`` after a
failed first check; a failed honest audit is overturned with the share of those that pass. No
cheat was measured under a float32 second check, so a cheat's failed audit stays failed: its
deviations are far outside dtype noise (the detection table's margins), an assumption, said so.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from flopnet.ledger.policy import AuditDecision
from flopnet.node.model.calls import AuditMeasures, Inspection
from flopnet.node.validator.judgement import ProofOutcome, proof_outcome, with_second_opinion
from flopnet.proof.completion import CompletionCheck
from flopnet.proof.measures import ChunkCheck
from flopnet.proof.policy import ProofPolicy, recommended_policy
from flopnet.protocol.errors import ConfigError

HONEST = "honest"
SECOND_OPINION_ROW = "bf16 generation, fp32 check"  # in the model's float32 table
_AUDIT = AuditDecision(audit=True, rate=1.0, consecutive_valid=0)
_SKIP = AuditDecision(audit=False, rate=0.0, consecutive_valid=0)


@cache
def measurements() -> dict[str, Any]:
    """The packaged measurements (``sim/proof_measurements.json``)."""
    text = resources.files("flopnet.sim").joinpath("proof_measurements.json").read_text()
    return dict(json.loads(text))


def _measures(m: dict[str, Any], max_new_tokens: int) -> tuple[AuditMeasures, Inspection]:
    checks = tuple(ChunkCheck(int(c[0]), float(c[1]), float(c[2]), int(c[3])) for c in m["checks"])
    shortfalls = [0.0] * int(m["tokens"])
    for position, value in m["shortfalls"].items():
        shortfalls[int(position)] = float("inf") if value == "inf" else float(value)
    reasons = tuple(str(r) for r in m["completion"])
    completion = CompletionCheck(
        tokens=int(m["tokens"]),
        max_new_tokens=max(max_new_tokens, int(m["tokens"])),
        ends_with_eos=not reasons,
        first_eos=None,
        reasons=reasons,
    )
    audit = AuditMeasures(checks, tuple(shortfalls), completion, "", 0.0, 0.0)
    return audit, Inspection(completion, "")


@dataclass(frozen=True)
class Outcomes:
    """Verdicts of the stored samples of one row: (audited passes, unaudited passes) each."""

    row: str
    verdicts: tuple[tuple[bool, bool], ...]
    _pass_share: float = 0.0
    overturned: float = 0.0  # share of failed audits a second opinion overturns

    def draw(self, rng: random.Random) -> tuple[bool, bool]:
        audited, unaudited = self.verdicts[rng.randrange(len(self.verdicts))]
        if not audited and self.overturned and rng.random() < self.overturned:
            audited = True
        return audited, unaudited

    @property
    def pass_share(self) -> float:
        """Share of the stored samples an audit passes."""
        return self._pass_share

    def __post_init__(self) -> None:
        share = sum(a for a, _ in self.verdicts) / len(self.verdicts)
        share += (1 - share) * self.overturned
        object.__setattr__(self, "_pass_share", share)

    @property
    def detection(self) -> float:
        """Share of the stored samples an audit rejects (after any second opinion)."""
        return 1.0 - self._pass_share


class ProofTable:
    """Verdicts per benchmark row for one model, dtype and policy; honest rows pooled."""

    def __init__(self, model: str, dtype: str = "bfloat16", policy: ProofPolicy | None = None):
        rows = measurements()["rows"].get(f"{model}/{dtype}")
        if rows is None:
            known = sorted(measurements()["rows"])
            raise ConfigError(f"no proof measurements for {model}/{dtype}; known: {known}")
        self.model, self.dtype = model, dtype
        self.policy = policy or recommended_policy(model, dtype)
        self._rows: dict[str, Outcomes] = {}
        honest: list[tuple[bool, bool]] = []
        self.second_opinions = self._second_opinions(model, dtype)
        overturned = (
            sum(self.second_opinions) / len(self.second_opinions) if self.second_opinions else 0.0
        )
        for name, row in sorted(rows.items()):
            verdicts = tuple(self._judge(m) for m in row["measurements"])
            honest_row = row["kind"] == HONEST
            self._rows[name] = Outcomes(name, verdicts, overturned=overturned if honest_row else 0)
            if honest_row:
                honest.extend(verdicts)
        self._rows[HONEST] = Outcomes(HONEST, tuple(honest), overturned=overturned)

    def _second_opinions(self, model: str, dtype: str) -> tuple[bool, ...]:
        """Whether ``with_second_opinion`` overturns a failed audit of honest work, once per
        stored float32 re-check of a bf16 generation (empty: no second opinion measured)."""
        if dtype != "bfloat16":
            return ()
        row = measurements()["rows"].get(f"{model}/float32", {}).get(SECOND_OPINION_ROW)
        if row is None:
            return ()
        failed_first = ProofOutcome(False, ("first check failed",), True, "", "")
        out = []
        for m in row["measurements"]:
            second, _ = _measures(m, max_new_tokens=int(m["tokens"]))
            outcome = with_second_opinion(failed_first, second, _AUDIT, self.policy)
            out.append(outcome.passed)
        return tuple(out)

    def _judge(self, m: dict[str, Any]) -> tuple[bool, bool]:
        audit, inspection = _measures(m, max_new_tokens=int(m["tokens"]))
        audited = proof_outcome(audit, _AUDIT, self.policy).passed
        unaudited = proof_outcome(inspection, _SKIP, self.policy).passed
        return audited, unaudited

    def row(self, name: str) -> Outcomes:
        """The verdicts of one row (``honest``: every honest row of the model)."""
        found = self._rows.get(name)
        if found is None:
            raise ConfigError(f"no row {name!r} for {self.model}/{self.dtype}")
        return found

    def names(self) -> list[str]:
        return sorted(self._rows)
