"""The pure proof decision, and configuration validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from flopnet.node.config import NetworkParams, NodeConfig, env_settings
from flopnet.proof.policy import ProofPolicy, decide
from flopnet.proof.sampling import ReplayCheck
from flopnet.proof.toploc import ChunkCheck, ToplocThresholds
from flopnet.protocol.errors import ConfigError

POLICY = ProofPolicy(ToplocThresholds(), max_replay_mismatch_fraction=0.05)
GOOD = ChunkCheck(exp_mismatches=2, mant_err_mean=1.0, mant_err_median=1.0, sign_mismatches=0)
FORGED = ChunkCheck(exp_mismatches=127, mant_err_mean=48.0, mant_err_median=48.0, sign_mismatches=0)
CLEAN_REPLAY = ReplayCheck(checked=48, mismatches=0, mismatch_positions=())


def test_honest_measurements_pass_with_reasons() -> None:
    decision = decide([GOOD, GOOD], CLEAN_REPLAY, POLICY)
    assert decision.passed
    assert any("worst 2 exponent mismatches (threshold 38)" in r for r in decision.reasons)


def test_forged_chunk_fails_naming_value_and_threshold() -> None:
    decision = decide([GOOD, FORGED], CLEAN_REPLAY, POLICY)
    assert not decision.passed
    assert decision.reasons[0].startswith("toploc chunk 1:")
    assert "127 > 38" in decision.reasons[0]


def test_replay_mismatches_fail_above_the_fraction() -> None:
    few = ReplayCheck(checked=100, mismatches=5, mismatch_positions=tuple(range(5)))
    many = ReplayCheck(checked=100, mismatches=6, mismatch_positions=tuple(range(6)))
    assert decide([GOOD], few, POLICY).passed  # 5% is allowed, strictly more is not
    failed = decide([GOOD], many, POLICY)
    assert not failed.passed and "6/100 tokens could not have been sampled" in failed.reasons[0]


def test_sign_flip_is_caught() -> None:
    negated = ChunkCheck(
        exp_mismatches=0, mant_err_mean=0.0, mant_err_median=0.0, sign_mismatches=128
    )
    assert not decide([negated], CLEAN_REPLAY, POLICY).passed


def test_network_params_validation() -> None:
    for bad in (
        {"network_id": ""},
        {"network_id": "n", "dtype": "float16"},
        {"network_id": "n", "max_new_tokens": 0},
        {"network_id": "n", "top_p": 0.0},
        {"network_id": "n", "publishers": ("xyz",)},
    ):
        with pytest.raises(ConfigError):
            NetworkParams(**bad)  # type: ignore[arg-type]


def test_node_config_validation(tmp_path: Path) -> None:
    net = NetworkParams(network_id="n")
    with pytest.raises(ConfigError, match="unknown role"):
        NodeConfig(roles=("miner",), data_dir=tmp_path, network=net)
    with pytest.raises(ConfigError, match="at least one role"):
        NodeConfig(roles=(), data_dir=tmp_path, network=net)
    cheat = NodeConfig(roles=("worker",), data_dir=tmp_path, network=net, model_seed_override=9)
    assert cheat.model_seed == 9
    assert NodeConfig(roles=("worker",), data_dir=tmp_path, network=net).model_seed == 1234


def test_env_settings_are_read_in_one_place() -> None:
    env = env_settings({"FLOPNET_LOG_LEVEL": "debug", "FLOPNET_TORCH_THREADS": "3"})
    assert env.log_level == "DEBUG" and env.torch_threads == 3
    with pytest.raises(ConfigError, match="not an integer"):
        env_settings({"FLOPNET_TORCH_THREADS": "many"})
