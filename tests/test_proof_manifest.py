"""The proof policy in force: manifest fields → ``NetworkParams`` → ``ProofPolicy`` → the check.

The calibrated policy (``recommended_policy``) is what ``flopnet network init`` and the devnet sign
into a manifest; ``proof.policy.policy_from_params`` is the one place a validator's policy is
built from it; the model process's ``check`` applies it in one decision (TOPLOC, replay with the
manifest's tolerance, completion).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.node.cli.devnet import DevnetOptions, devnet_params
from flopnet.node.config import (
    PROOF_PARAMS,
    NetworkParams,
    create_network,
    recommended_proof_params,
)
from flopnet.node.local import flopnet_argv
from flopnet.node.model.service import ModelService
from flopnet.proof.policy import (
    POLICY_PARAMS,
    ProofPolicy,
    policy_from_params,
    policy_params,
    recommended_policy,
)
from flopnet.proof.toploc import ToplocThresholds
from flopnet.protocol.codec import packb
from flopnet.protocol.envelope import seal
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.identity import Identity
from flopnet.protocol.manifest import create_manifest, open_manifest
from flopnet.protocol.messages import MANIFEST_VERSION, NetworkManifest

FOUNDER = Identity(b"\x17" * 32)
KEY = "cd" * 32
CALIBRATED = [
    ("tiny", "bfloat16"),
    ("small", "bfloat16"),
    ("tiny", "float32"),
    ("small", "float32"),
]

finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def proof_params(draw: st.DrawFn) -> dict[str, Any]:
    mean = draw(finite)
    return {
        "max_exp_mismatches": draw(st.integers(0, 4096)),
        "max_mant_err_mean": mean,
        "max_mant_err_median": draw(finite),
        "max_sign_mismatches": draw(st.integers(0, 4096)),
        "mant_err_mean_baseline": draw(st.floats(0.0, mean)),
        "replay_tolerance": draw(finite),
        "max_replay_mismatch_fraction": draw(st.floats(0.0, 1.0)),
        "honest_replay_rate": draw(st.floats(0.0, 1.0)),
    }


def _through_manifest(params: NetworkParams) -> NetworkParams:
    data = create_manifest(FOUNDER, "pol", **params.manifest_fields())
    return NetworkParams.from_manifest(open_manifest(data))


# --- the pure mapping ------------------------------------------------------------------------


def test_the_names_agree() -> None:
    # node.config names the fields without importing torch; they must be the policy's.
    assert tuple(POLICY_PARAMS) == PROOF_PARAMS
    fields = {f.name: f for f in dataclasses.fields(NetworkManifest)}
    assert set(PROOF_PARAMS) <= set(fields) and set(PROOF_PARAMS) <= set(
        NetworkParams.__dataclass_fields__
    )


def test_default_params_are_the_paper_policy() -> None:
    assert NetworkParams(network_id="n").proof_policy() == ProofPolicy(ToplocThresholds())


@settings(max_examples=200, deadline=None)
@given(proof_params())
def test_policy_from_params_round_trips(params: dict[str, Any]) -> None:
    policy = policy_from_params(params)
    t = policy.toploc
    assert (t.max_exp_mismatches, t.max_sign_mismatches) == (
        params["max_exp_mismatches"],
        params["max_sign_mismatches"],
    )
    assert policy.replay_tolerance == params["replay_tolerance"]
    assert policy.max_replay_mismatch_fraction == params["max_replay_mismatch_fraction"]
    baseline = params["mant_err_mean_baseline"]
    assert t.mant_err_mean_baseline == (baseline if baseline > 0 else None)
    assert policy_params(policy) == params
    assert policy_from_params(policy_params(policy)) == policy


def test_policy_from_params_wants_exactly_its_keys() -> None:
    params = policy_params(recommended_policy("tiny", "bfloat16"))
    with pytest.raises(ConfigError, match="missing \\['replay_tolerance'\\]"):
        policy_from_params({k: v for k, v in params.items() if k != "replay_tolerance"})
    with pytest.raises(ConfigError, match="unknown \\['thresholds'\\]"):
        policy_from_params({**params, "thresholds": {}})


# --- the manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "dtype"), CALIBRATED)
def test_manifest_round_trip_carries_the_calibrated_policy(
    tmp_path: Path, model: str, dtype: str
) -> None:
    params = NetworkParams(
        network_id="assigned-by-manifest",
        model=model,
        dtype=dtype,
        validators=(KEY,),
        **recommended_proof_params(model, dtype),
    )
    net = create_network(FOUNDER, "testnet", params, tmp_path / "network.manifest")
    assert net.proof_policy() == recommended_policy(model, dtype)
    assert net.proof_params() == policy_params(recommended_policy(model, dtype))
    assert NetworkParams.load(tmp_path / "network.manifest") == net


@settings(max_examples=60, deadline=None)
@given(proof_params())
def test_any_valid_policy_survives_the_manifest(params: dict[str, Any]) -> None:
    net = _through_manifest(NetworkParams(network_id="n", **params))
    assert net.proof_params() == params
    assert net.proof_policy() == policy_from_params(params)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_exp_mismatches": -1},
        {"max_exp_mismatches": 4097},
        {"max_exp_mismatches": 10.0},
        {"max_sign_mismatches": True},
        {"max_mant_err_mean": -0.1},
        {"max_mant_err_median": math.nan},
        {"replay_tolerance": math.inf},
        {"replay_tolerance": -0.01},
        {"replay_tolerance": "0.1"},
        {"mant_err_mean_baseline": -1.0},
        {"mant_err_mean_baseline": 10.5},  # above max_mant_err_mean 10
        {"max_replay_mismatch_fraction": 1.01},
        {"max_replay_mismatch_fraction": -0.0001},
        {"honest_replay_rate": 1.5},
        {"honest_replay_rate": math.nan},
    ],
)
def test_bad_policy_values_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        NetworkParams(network_id="n", **bad)


def _sealed(manifest: NetworkManifest) -> bytes:
    return seal(manifest, FOUNDER, manifest.network_id)


def test_manifest_bounds_refuse_a_bad_policy_signed_by_the_founder() -> None:
    good = open_manifest(
        create_manifest(FOUNDER, "pol", **NetworkParams(network_id="n").manifest_fields())
    )
    for field, value in (
        ("replay_tolerance", -0.5),
        ("mant_err_mean_baseline", -1.0),
        ("max_sign_mismatches", -1),
        ("max_replay_mismatch_fraction", 2.0),
    ):
        # NetworkParams would refuse these; a hand-built manifest meets the wire bounds instead.
        with pytest.raises(MalformedMessage, match=field):
            open_manifest(_sealed(dataclasses.replace(good, **{field: value})))
    # Within the wire bounds but inconsistent: refused when the node reads its parameters.
    loose = dataclasses.replace(good, mant_err_mean_baseline=good.max_mant_err_mean + 1)
    with pytest.raises(ConfigError, match="must not exceed"):
        NetworkParams.from_manifest(open_manifest(_sealed(loose)))


def test_an_old_manifest_is_refused_with_a_clear_message() -> None:
    assert MANIFEST_VERSION == 3
    good = open_manifest(
        create_manifest(FOUNDER, "pol", **NetworkParams(network_id="n").manifest_fields())
    )
    # The layout before the proof fields were added, as an old node signed it.
    old = good.to_wire() | {"version": 1}
    for key in ("max_sign_mismatches", "mant_err_mean_baseline", "replay_tolerance"):
        del old[key]
    body = packb(old)
    envelope = {
        "v": 1,
        "type": "network_manifest",
        "body": body,
        "signer": FOUNDER.public_key,
        "sig": FOUNDER.sign(
            b"flopnet/1\0" + good.network_id.encode() + b"\0network_manifest\0" + body
        ),
    }
    with pytest.raises(MalformedMessage, match="manifest version 1; this node reads version 3"):
        open_manifest(packb(envelope))
    # A version 2 manifest must have every field.
    missing = good.to_wire()
    del missing["replay_tolerance"]
    body = packb(missing)
    envelope |= {
        "body": body,
        "sig": FOUNDER.sign(
            b"flopnet/1\0" + good.network_id.encode() + b"\0network_manifest\0" + body
        ),
    }
    with pytest.raises(MalformedMessage, match="missing fields \\['replay_tolerance'\\]"):
        open_manifest(packb(envelope))


# --- where networks are founded --------------------------------------------------------------


@pytest.mark.parametrize(("model", "dtype"), [*CALIBRATED, ("org/some-hf-model", "bfloat16")])
def test_a_devnet_runs_with_the_recommended_policy(model: str, dtype: str) -> None:
    params = devnet_params(DevnetOptions(model=model, dtype=dtype), KEY)
    net = _through_manifest(params)
    assert net.proof_policy() == recommended_policy(model, dtype)
    if model == "tiny" and dtype == "bfloat16":  # the devnet's default: calibrated, not paper
        assert net.proof_policy() != ProofPolicy(ToplocThresholds())
        assert (net.max_exp_mismatches, net.mant_err_mean_baseline, net.replay_tolerance) == (
            10,
            0.5,
            0.02,
        )


def _flopnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*flopnet_argv(), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_network_init_defaults_to_the_recommended_policy_and_flags_override(
    tmp_path: Path,
) -> None:
    made = _flopnet("network", "init", "--out", str(tmp_path / "a"), "--model", "small")
    assert made.returncode == 0, made.stderr
    assert "proof policy recommended_policy('small', 'bfloat16')" in made.stdout
    shown = json.loads(
        _flopnet("network", "show", str(tmp_path / "a/network.manifest"), "--json").stdout
    )
    assert {k: shown[k] for k in PROOF_PARAMS} == policy_params(
        recommended_policy("small", "bfloat16")
    )

    made = _flopnet(
        "network",
        "init",
        "--out",
        str(tmp_path / "b"),
        "--replay-tolerance",
        "0.5",
        "--mant-err-mean-baseline",
        "0",
        "--max-sign-mismatches",
        "2",
    )
    assert made.returncode == 0, made.stderr
    assert "replay_tolerance 0.5" in made.stdout
    net = NetworkParams.load(tmp_path / "b/network.manifest")
    expected = policy_params(recommended_policy("tiny", "bfloat16")) | {
        "replay_tolerance": 0.5,
        "mant_err_mean_baseline": 0.0,
        "max_sign_mismatches": 2,
    }
    assert net.proof_params() == expected
    assert net.proof_policy().toploc.mant_err_mean_baseline is None  # 0: no pooled check

    bad = _flopnet("network", "init", "--out", str(tmp_path / "c"), "--replay-tolerance", "-1")
    assert bad.returncode == 2 and "replay_tolerance" in bad.stderr
    assert not (tmp_path / "c" / "identity.key").exists()  # nothing founded


# --- the check in the model process ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checked:
    """A real model's audit measures with the manifest's policy applied (as a validator does)."""

    passed: bool
    reasons: tuple[str, ...]
    replay_mismatches: int
    exp_mismatches: int


@pytest.mark.timeout(300)
def test_the_model_check_applies_the_manifests_policy() -> None:
    """One real prefill per case through ModelService with the tiny model; the manifest's
    policy is applied to the measures in the daemon (``judgement.proof_outcome``).

    The lease's top-p is 1.0, so every token is in the nucleus and a replaced token has a finite
    replay shortfall: the manifest's replay tolerance alone decides whether it passes.
    """
    from flopnet.ledger.policy import AuditDecision
    from flopnet.node.model.calls import AuditRequest, GenerateRequest
    from flopnet.node.validator.judgement import proof_outcome
    from flopnet.proof.measures import replay_check

    net = NetworkParams(network_id="n", **recommended_proof_params("tiny", "bfloat16"))
    prompt = tuple(range(5, 25))
    audited = AuditDecision(audit=True, rate=1.0, consecutive_valid=0)

    async def main() -> list[Checked]:
        model = ModelService("tiny", net.model_seed, net.dtype, threads=1)
        info = await model.start()
        try:
            gen = await model.generate(GenerateRequest(prompt, 77, 0.6, 1.0, 8))
            other = await model.generate(GenerateRequest(prompt, 78, 0.6, 1.0, 8))
            tokens = gen.token_ids
            assert len(tokens) == 8 and gen.finish_reason == "length"
            forged = (*tokens[:-1], (tokens[-1] + 1) % info.vocab_size)

            async def check(
                token_ids: tuple[int, ...],
                params: NetworkParams,
                proofs: tuple[bytes, ...] = gen.proofs,
                max_new_tokens: int = 8,
            ) -> Checked:
                sample = GenerateRequest(prompt, 77, 0.6, 1.0, max_new_tokens)
                request = AuditRequest(sample, token_ids, proofs)
                measured = await model.audit(request)
                policy = params.proof_policy()
                outcome = proof_outcome(measured, audited, policy)
                replay = replay_check(measured.shortfalls, policy.replay_tolerance)
                worst = max(c.exp_mismatches for c in measured.checks)
                return Checked(outcome.passed, outcome.reasons, replay.mismatches, worst)

            loose = dataclasses.replace(net, replay_tolerance=1e6)
            blind = dataclasses.replace(
                net,
                max_exp_mismatches=4096,
                max_mant_err_mean=1e30,
                max_mant_err_median=1e30,
                max_sign_mismatches=4096,
            )
            return [
                await check(tokens, net),
                await check(forged, net),
                await check(forged, loose),
                await check(tokens, net, max_new_tokens=9),
                await check(tokens, net, proofs=other.proofs),
                await check(tokens, blind, proofs=other.proofs),
            ]
        finally:
            model.close()

    honest, forged, forged_loose, short, swapped, swapped_blind = trio.run(main)
    assert honest.passed, honest.reasons
    assert any(r.startswith("sampling replay: 0/8 mismatches") for r in honest.reasons)
    assert any("tolerance 0.02" in r for r in honest.reasons)
    assert any(r.startswith("completion: 8 tokens") for r in honest.reasons)
    # The last token replaced: its state (and so every TOPLOC chunk) is untouched; only the
    # replay sees it, and the manifest's tolerance decides.
    assert not forged.passed
    assert forged.replay_mismatches == 1
    assert forged.reasons == (
        "sampling replay: 1/8 tokens could not have been sampled (0.125 > 0.0)",
    )
    assert forged_loose.passed and forged_loose.replay_mismatches == 0
    # Completion is part of the one decision, with its reason.
    assert not short.passed
    assert short.reasons == (
        "completion: output stops after 8 tokens without eos, short of max_new_tokens 9",
    )
    # The TOPLOC limits are the manifest's too: another generation's proofs fail the calibrated
    # limits and pass limits that accept anything (the honest tokens still pass the replay).
    assert not swapped.passed and swapped.replay_mismatches == 0
    assert [r.split(":")[0] for r in swapped.reasons] == ["toploc chunk 0"]
    assert swapped.exp_mismatches > 10
    assert swapped_blind.passed, swapped_blind.reasons
