"""Why a result earned no credit, in plain words: pure functions of verdict data.

A verdict's reasons (written by :mod:`flopnet.node.validator.judgement` and
:mod:`flopnet.proof.policy`) name every measured value beside its threshold. Here they are read
back into :class:`Measure` rows (value, threshold, pass or fail) and the first failing reason
picks the :class:`Explanation`: what happened, the evidence, and what the contributor can do.
A voided credit is explained by the invalidation that voided it. Nothing here does I/O; the
API serves these explanations and the TUI shows them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

_NUM = r"(-?[0-9.]+(?:e[+-]?[0-9]+)?|inf)"


@dataclass(frozen=True)
class Measure:
    """One measured value beside its limit; ``passed`` says which side it fell."""

    check: str  # "toploc chunk 3", "toploc", "sampling replay", "completion"
    name: str
    value: float
    limit: float
    passed: bool
    relation: str = "<="  # passing values are <= the limit (completion lengths: ==)


@dataclass(frozen=True)
class Explanation:
    """A verdict or credit in plain words."""

    status: str  # credited, pending, final, rejected, voided, not_audited
    category: str  # a stable code: proof_mismatch, sampling, completion, lease_expired, ...
    headline: str
    advice: str
    evidence: tuple[str, ...]
    measures: tuple[Measure, ...]
    your_fault: bool | None  # None: cannot tell

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["measures"] = [asdict(m) for m in self.measures]
        out["evidence"] = list(self.evidence)
        return out


# -- the measured values ----------------------------------------------------------------------

_FAIL_VALUE = re.compile(
    rf"(exp_mismatches|mant_err_mean|mant_err_median|sign_mismatches) {_NUM} > {_NUM}"
)
_PASS_TOPLOC = re.compile(
    rf"worst {_NUM} exponent mismatches \(threshold {_NUM}\), mant_err_mean {_NUM} "
    rf"\(threshold {_NUM}\), mant_err_median {_NUM} \(threshold {_NUM}\), sign_mismatches "
    rf"{_NUM} \(threshold {_NUM}\)"
)
_REPLAY_FAIL = re.compile(rf"{_NUM}/{_NUM} tokens could not have been sampled \({_NUM} > {_NUM}\)")
_REPLAY_PASS = re.compile(
    rf"{_NUM}/{_NUM} mismatches \(threshold fraction {_NUM}\), worst shortfall {_NUM} "
    rf"\(tolerance {_NUM}\)"
)
_POOLED_FAIL = re.compile(rf"average mant_err_mean {_NUM} over {_NUM} chunks > {_NUM}")
_POOLED_PASS = re.compile(rf"average mant_err_mean {_NUM} over {_NUM} chunks \(limit {_NUM}\)")
_TOO_LONG = re.compile(rf"{_NUM} tokens > max_new_tokens {_NUM}")


def measures(reasons: Sequence[str]) -> list[Measure]:
    """Every value-beside-threshold in a verdict's reasons."""
    out: list[Measure] = []
    for reason in reasons:
        check, _, text = reason.removeprefix("first check: ").partition(": ")
        if check.startswith("toploc chunk"):
            for name, value, limit in _FAIL_VALUE.findall(text):
                out.append(Measure(check, name, float(value), float(limit), False))
        elif check == "toploc" and (m := _PASS_TOPLOC.search(text)):
            v = [float(x) for x in m.groups()]
            names = ("exp_mismatches", "mant_err_mean", "mant_err_median", "sign_mismatches")
            for i, name in enumerate(names):
                out.append(Measure("toploc (worst chunk)", name, v[2 * i], v[2 * i + 1], True))
        elif check == "toploc pooled":
            if m := _POOLED_FAIL.search(text):
                out.append(_m("toploc pooled", "average mant_err_mean", m[1], m[3], False))
            elif m := _POOLED_PASS.search(text):
                out.append(_m("toploc pooled", "average mant_err_mean", m[1], m[3], True))
        elif check == "sampling replay":
            if m := _REPLAY_FAIL.search(text):
                out.append(_m(check, "mismatch fraction", m[3], m[4], False))
            elif m := _REPLAY_PASS.search(text):
                fraction = float(m[1]) / float(m[2]) if float(m[2]) else 0.0
                out.append(Measure(check, "mismatch fraction", fraction, float(m[3]), True))
                out.append(_m(check, "worst shortfall", m[4], m[5], True))
        elif check == "completion" and (m := _TOO_LONG.search(text)):
            out.append(_m(check, "tokens", m[1], m[2], False))
    return out


def _m(check: str, name: str, value: str, limit: str, passed: bool) -> Measure:
    return Measure(check, name, float(value), float(limit), passed)


# -- the categories ---------------------------------------------------------------------------

# (category, how a reason starts or what it holds, headline, advice, the contributor's fault)
_RULES: tuple[tuple[str, str, str, str, bool | None], ...] = (
    (
        "proof_mismatch",
        "toploc",
        "The activation proof does not match what the validator's model computed.",
        "Run the network's model exactly as its manifest says: the same weights (no other "
        "checkpoint, revision or quantisation) and dtype. Compare the weights hash on the Setup "
        "screen with the manifest's (flopnet network show).",
        True,
    ),
    (
        "sampling",
        "sampling replay",
        "Some tokens could not have come from the network's seeded sampler.",
        "Run an unmodified flopnet: tokens must be drawn with the lease's seed, temperature and "
        "top-p. Another backend build can also differ; use the manifest's.",
        True,
    ),
    (
        "sampling_tally",
        "replay tally",
        "Over your recent audits, more tokens could not have come from the network's seeded "
        "sampler than honest work ever produces.",
        "Each audit allows a few such tokens for numerical noise; yours add up beyond it. Run an "
        "unmodified flopnet: tokens must be drawn with the lease's seed, temperature and top-p, "
        "and an output must not be cut or edited.",
        True,
    ),
    (
        "completion",
        "completion",
        "The output does not end the way an honest generation ends.",
        "Do not cut or edit outputs: a sample ends at end-of-sequence or at max_new_tokens.",
        True,
    ),
    (
        "model_failure",
        "proof check failed",
        "The validator could not check the proof.",
        "If it says the input could not be evaluated, the submission was malformed (run an "
        "unmodified flopnet); if the validator's own model failed, it is not your fault.",
        None,
    ),
    (
        "lease_expired",
        "the lease expired",
        "The result arrived after the lease's deadline.",
        "Keep generations within the lease time: lower the batch size, or check that the "
        "node was not paused or offline while it held leases.",
        True,
    ),
    (
        "sample_done",
        "sample ",
        "Another worker's result for this sample was credited first.",
        "Your lease had lapsed and the sample was leased again. Avoid lapses: a smaller batch "
        "size, or pause with 'pause now' so leases are handed back.",
        True,
    ),
    (
        "duplicate",
        "duplicate",
        "This lease was already submitted and checked once.",
        "Nothing to do: only the first result of a lease counts.",
        False,
    ),
    (
        "unknown_task",
        "unknown task",
        "The validator could not get the task from its publisher.",
        "Not your fault; nothing to do.",
        False,
    ),
    (
        "malformed",
        "",
        "The submission broke the protocol's rules (lease, token or proof counts).",
        "Run an unmodified flopnet of the network's version.",
        True,
    ),
)


def explain_verdict(accepted: bool, reasons: Sequence[str], flops: int = 0) -> Explanation:
    """A verdict (or a credit entry) in plain words."""
    found = measures(reasons)
    if accepted:
        unaudited = any(r.startswith("not audited") for r in reasons)
        headline = (
            f"Credited {flops:,} FLOPs"
            + (" (not audited this time; pending like every credit)" if unaudited else "")
            + "."
        )
        return Explanation(
            "not_audited" if unaudited else "credited",
            "accepted",
            headline,
            "Nothing to do. Credit is pending for the network's lock window, then final.",
            tuple(reasons),
            tuple(found),
            None,
        )
    failing = [r for r in reasons if not r.startswith(("answer:", "rules:", "not audited"))]
    first = failing[0] if failing else (reasons[0] if reasons else "")
    # A failure confirmed by a second opinion names the first check's reasons after this prefix.
    first = first.removeprefix("first check: ")
    for category, marker, headline, advice, fault in _RULES:
        if first.startswith(marker):
            return Explanation(
                "rejected", category, headline, advice, tuple(reasons), tuple(found), fault
            )
    raise AssertionError("the last rule matches every reason")  # pragma: no cover


def explain_credit(credit: dict[str, Any]) -> Explanation:
    """A credit record as ``/credits`` serves it (``ledger.credits.CreditRecord.to_json``)."""
    state = credit["state"]
    base = explain_verdict(bool(credit["accepted"]), credit["reasons"], int(credit["flops"]))
    if state == "void":
        voided = credit.get("voided_by") or {}
        reason = str(voided.get("reason", ""))
        return Explanation(
            "voided",
            "voided",
            "This credit was voided: an audit of your work failed while it was still pending.",
            "A failed audit voids all of a contributor's pending credit. Find the rejection "
            "that failed the audit (Why no credit) and fix its cause; final credit is never "
            "voided.",
            (f"invalidation: {reason}", *base.evidence),
            tuple(measures([reason.removeprefix("audit failed: ")])) or base.measures,
            True,
        )
    if state in ("pending", "final") and base.status in ("credited", "not_audited"):
        when = "final" if state == "final" else "pending until its lock window ends"
        return Explanation(
            state,
            base.category,
            base.headline.rstrip(".") + f"; {when}.",
            base.advice,
            base.evidence,
            base.measures,
            None,
        )
    return base


def why_no_credit(credits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rejected or voided credit, newest first, with its explanation."""
    out = []
    for credit in credits:
        if credit["state"] in ("rejected", "void"):
            out.append({**credit, "explanation": explain_credit(credit).to_json()})
    return sorted(out, key=lambda c: c["timestamp"], reverse=True)
