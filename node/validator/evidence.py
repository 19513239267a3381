"""The evidence behind a punishment: what a validator measured when it invalidated credit.

A failed audit that is confirmed by its second opinion writes a ``hard`` invalidation, which
voids all of the contributor's pending credit. Before that entry is committed the validator
writes ``evidence/<submission id>.json`` in its data directory: the worker's signed submission
(with the publisher's signed lease inside), the model and the proof policy in force, and each
check's measured numbers (the TOPLOC chunk comparisons, the per-token sampling shortfalls, how
the output ends) with its verdict, signed by the validator. ``flopnet audit replay FILE``
(:mod:`flopnet.node.validator.replay`) re-runs every check on anyone's machine.

The file is JSON for people to read; :func:`read_evidence` treats it as untrusted (a contributor
disputing its punishment hands it around) and raises only :class:`EvidenceError`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopnet.node.model.calls import AuditMeasures
from flopnet.proof.completion import CompletionCheck
from flopnet.proof.measures import ChunkCheck
from flopnet.proof.policy import ProofPolicy, policy_from_params, policy_params
from flopnet.proof.tally import ReplayTally
from flopnet.protocol.errors import ConfigError, FlopnetError
from flopnet.protocol.identity import Identity, verify_signature

EVIDENCE_VERSION = 2  # 2 added the replay tally's history; version 1 files are still read
EVIDENCE_DIR = "evidence"
MAX_EVIDENCE_BYTES = 64 * 1024 * 1024
_DOMAIN = b"flopnet-evidence/1\0"


class EvidenceError(FlopnetError):
    """An evidence file that cannot be read, decoded or whose signature does not verify."""


@dataclass(frozen=True)
class CheckRecord:
    """One check of the submission: its precision ("" for the dtype the model was loaded in),
    what it measured and what the policy made of it."""

    precision: str
    measures: AuditMeasures
    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ModelRecord:
    """The model the checks ran, as anyone loads it again."""

    name: str
    seed: int
    dtype: str
    revision: str
    weights_sha256: str


@dataclass(frozen=True)
class Evidence:
    """A verified evidence file."""

    network_id: str
    validator: bytes
    submission_id: bytes
    submission: bytes  # the sealed Submission envelope, as the worker signed it
    model: ModelRecord
    policy: ProofPolicy
    checks: tuple[CheckRecord, ...]
    written_at: float
    # The contributor's replay tally over its audits before this one, when the policy keeps one
    # (proof.tally): the checks are judged against it, so a replay needs it too.
    replay_history: ReplayTally | None = None


# -- encoding ---------------------------------------------------------------------------------


def _number(x: float) -> float | str:
    """JSON has no infinity: an inf shortfall (a token no tolerance excuses) is the string."""
    return "inf" if math.isinf(x) and x > 0 else x


def _measures_json(m: AuditMeasures) -> dict[str, Any]:
    return {
        "checks": [dataclasses.asdict(c) for c in m.checks],
        "shortfalls": [_number(x) for x in m.shortfalls],
        "completion": dataclasses.asdict(m.completion),
        "text": m.text,
        "prefill_s": m.prefill_s,
    }


def _body(evidence: Evidence) -> dict[str, Any]:
    return {
        "version": EVIDENCE_VERSION,
        "network_id": evidence.network_id,
        "validator": evidence.validator.hex(),
        "submission_id": evidence.submission_id.hex(),
        "submission": base64.b64encode(evidence.submission).decode(),
        "model": dataclasses.asdict(evidence.model),
        "policy": policy_params(evidence.policy),
        "checks": [
            {
                "precision": c.precision,
                "passed": c.passed,
                "reasons": list(c.reasons),
                "measures": _measures_json(c.measures),
            }
            for c in evidence.checks
        ],
        "written_at": evidence.written_at,
        "replay_history": (
            None if evidence.replay_history is None else dataclasses.asdict(evidence.replay_history)
        ),
    }


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _signed(body: Mapping[str, Any]) -> bytes:
    return _DOMAIN + hashlib.sha256(_canonical(body)).digest()


def seal_evidence(evidence: Evidence, identity: Identity) -> bytes:
    """The file's bytes: the body and the validator's signature over its canonical form."""
    if identity.public_key != evidence.validator:
        raise ConfigError("evidence is signed by the validator that measured it")
    body = _body(evidence)
    signature = identity.sign(_signed(body))
    return json.dumps({"body": body, "signature": signature.hex()}, indent=1).encode() + b"\n"


def write_evidence(data_dir: Path, evidence: Evidence, identity: Identity) -> Path:
    """Write the evidence durably (fsynced, then renamed into place) and return its path."""
    folder = data_dir / EVIDENCE_DIR
    path = folder / f"{evidence.submission_id.hex()}.json"
    data = seal_evidence(evidence, identity)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise EvidenceError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


# -- decoding (untrusted) ---------------------------------------------------------------------


def _field(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    # bool is an int to Python, never to us: a count or a seed of ``true`` is refused.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise EvidenceError(f"field {key!r} is missing or not {kind.__name__}")
    return value


def _finite(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise EvidenceError(f"not a number: {x!r}")
    return float(x)


def _float(x: Any) -> float:
    return math.inf if x == "inf" else _finite(x)


def _chunk(raw: Any) -> ChunkCheck:
    if not isinstance(raw, dict) or set(raw) != {f.name for f in dataclasses.fields(ChunkCheck)}:
        raise EvidenceError("a chunk check has the wrong fields")
    return ChunkCheck(
        exp_mismatches=int(_field(raw, "exp_mismatches", int)),
        mant_err_mean=_float(raw["mant_err_mean"]),
        mant_err_median=_float(raw["mant_err_median"]),
        sign_mismatches=int(_field(raw, "sign_mismatches", int)),
    )


def _completion(raw: Any) -> CompletionCheck:
    if not isinstance(raw, dict):
        raise EvidenceError("completion is not an object")
    first = raw.get("first_eos")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int)):
        raise EvidenceError("first_eos is not a whole number")
    return CompletionCheck(
        tokens=_field(raw, "tokens", int),
        max_new_tokens=_field(raw, "max_new_tokens", int),
        ends_with_eos=_field(raw, "ends_with_eos", bool),
        first_eos=first,
        reasons=_strings(_field(raw, "reasons", list)),
    )


def _strings(raw: Sequence[Any]) -> tuple[str, ...]:
    if not all(isinstance(x, str) for x in raw):
        raise EvidenceError("a list of reasons holds something other than text")
    return tuple(raw)


def _measures(raw: Any) -> AuditMeasures:
    if not isinstance(raw, dict):
        raise EvidenceError("measures are not an object")
    return AuditMeasures(
        checks=tuple(_chunk(c) for c in _field(raw, "checks", list)),
        shortfalls=tuple(_float(x) for x in _field(raw, "shortfalls", list)),
        completion=_completion(raw.get("completion")),
        text=_field(raw, "text", str),
        prefill_s=_float(raw.get("prefill_s")),
        verify_s=0.0,
    )


def _check(raw: Any) -> CheckRecord:
    if not isinstance(raw, dict):
        raise EvidenceError("a check is not an object")
    return CheckRecord(
        precision=_field(raw, "precision", str),
        measures=_measures(raw.get("measures")),
        passed=_field(raw, "passed", bool),
        reasons=_strings(_field(raw, "reasons", list)),
    )


def _model(raw: Any) -> ModelRecord:
    if not isinstance(raw, dict):
        raise EvidenceError("model is not an object")
    return ModelRecord(
        name=_field(raw, "name", str),
        seed=_field(raw, "seed", int),
        dtype=_field(raw, "dtype", str),
        revision=_field(raw, "revision", str),
        weights_sha256=_field(raw, "weights_sha256", str),
    )


def _hex(raw: Mapping[str, Any], key: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(_field(raw, key, str))
    except ValueError:
        raise EvidenceError(f"field {key!r} is not hex") from None
    if len(value) != size:
        raise EvidenceError(f"field {key!r} is not {size} bytes")
    return value


def decode_evidence(data: bytes) -> Evidence:
    """Decode and verify evidence bytes from an untrusted source (raises only EvidenceError)."""
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(f"evidence of {len(data)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    try:
        outer = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise EvidenceError(f"not JSON: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"body", "signature"}:
        raise EvidenceError("not an evidence file (expected body and signature)")
    body = outer["body"]
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, bool) or version not in (1, EVIDENCE_VERSION):
        raise EvidenceError(f"unsupported evidence version (this reads 1-{EVIDENCE_VERSION})")
    validator = _hex(body, "validator", 32)
    signature = _hex(outer, "signature", 64)
    try:
        signed = _signed(body)
    except ValueError as exc:  # a NaN or infinity smuggled into the body
        raise EvidenceError(f"body is not canonical JSON: {exc}") from None
    if not verify_signature(validator, signature, signed):
        raise EvidenceError("the validator's signature does not verify")
    try:
        submission = base64.b64decode(_field(body, "submission", str), validate=True)
    except ValueError as exc:
        raise EvidenceError(f"the submission is not base64: {exc}") from None
    params = {k: _finite(v) for k, v in _field(body, "policy", dict).items()}
    if version == 1:  # written before the replay tally existed: it kept none
        params.setdefault("honest_replay_rate", 0.0)
    try:
        policy = policy_from_params(params)
    except ConfigError as exc:
        raise EvidenceError(str(exc)) from None
    submission_id = _hex(body, "submission_id", 32)
    if hashlib.sha256(submission).digest() != submission_id:
        raise EvidenceError("the submission is not the one its id names")
    return Evidence(
        network_id=_field(body, "network_id", str),
        validator=validator,
        submission_id=submission_id,
        submission=submission,
        model=_model(body.get("model")),
        policy=policy,
        checks=tuple(_check(c) for c in _field(body, "checks", list)),
        written_at=_float(body.get("written_at")),
        replay_history=_history(body) if version >= 2 else None,
    )


def _history(body: Mapping[str, Any]) -> ReplayTally | None:
    if "replay_history" not in body:
        raise EvidenceError("field 'replay_history' is missing")
    raw = body["replay_history"]
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"audits", "tokens", "mismatches"}:
        raise EvidenceError("replay_history has the wrong fields")
    try:
        return ReplayTally(
            _field(raw, "audits", int), _field(raw, "tokens", int), _field(raw, "mismatches", int)
        )
    except ValueError as exc:
        raise EvidenceError(str(exc)) from None


def read_evidence(path: Path) -> Evidence:
    """Read and verify an evidence file."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_EVIDENCE_BYTES + 1)
    except OSError as exc:
        raise EvidenceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_evidence(data)
