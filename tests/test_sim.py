"""The simulation (flopnet.sim): small seeded runs of the real decision code, reproducible, and
its inputs checked against their sources."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flopnet.ledger.flops import inference_flops
from flopnet.ledger.policy import AuditBook, AuditPolicy, after_audit, after_passes
from flopnet.node.publisher.leases import Grant, LeaseBook
from flopnet.protocol.errors import ConfigError
from flopnet.sim.auditing import AuditStream
from flopnet.sim.config import SimConfig
from flopnet.sim.engine import Simulation, fits
from flopnet.sim.inputs import CHEAT_KINDS, GPU_CLASSES, R1_CONFIG
from flopnet.sim.proofs import Outcomes, ProofTable, measurements
from flopnet.sim.report import report

REPO = Path(__file__).resolve().parents[1]
SMALL = SimConfig(workers=40, days=1.0, sample_budget=2000, lock_window_s=6 * 3600.0, seed=3)


def _run(cfg: SimConfig) -> dict:  # type: ignore[type-arg]
    doc = report(Simulation(cfg).run())
    doc["run"].pop("wall_seconds")
    doc["run"].pop("cpu_seconds")
    doc["run"].pop("load_average_at_end")
    doc["run"].pop("simulated_samples_per_wall_second")
    return doc


def test_a_run_is_reproducible_from_its_seed() -> None:
    one, two = _run(SMALL), _run(SMALL)
    assert one == two
    assert one["run"]["simulated_samples"] > 300
    other = _run(SimConfig(**{**SMALL.__dict__, "seed": 4}))
    assert other["run"]["simulated_samples"] != one["run"]["simulated_samples"]


def test_cheats_the_proof_catches_lose_everything_and_honest_work_keeps_its_credit() -> None:
    cfg = SimConfig(
        **{
            **SMALL.__dict__,
            "cheaters": (("other-weights", 0.1), ("int4", 0.1), ("fp32", 0.1)),
        }
    )
    doc = _run(cfg)
    credit = doc["credit"]
    assert credit["honest"]["against_honest"] == 1.0 and credit["honest"]["final"] > 0
    assert credit["honest"]["failed_audits"] == 0  # no stored honest sample fails
    for caught in ("other-weights", "int4"):
        assert credit[caught]["final"] == 0 and credit[caught]["failed_audits"] > 0
    # fp32 generation is not detected (docs/proof.md) and costs twice the GPU time: half pay.
    assert credit["fp32"]["failed_audits"] == 0
    assert 0 < credit["fp32"]["against_honest"] < 0.9


def test_sybil_hoarders_earn_nothing_and_cool_down() -> None:
    cfg = SimConfig(**{**SMALL.__dict__, "sybil_swarms": 1, "sybil_size": 40})
    doc = _run(cfg)
    assert doc["credit"]["sybil"]["final"] == 0 and doc["leases"]["sybil_credit_flops"] == 0
    assert doc["leases"]["refusals"].get("cooling_down", 0) > 0


def test_the_audit_stream_draws_as_the_book_does_submission_by_submission() -> None:
    """Audits counted in bulk (geometric gaps, a binomial at the floor) against the audit book
    deciding every submission with its own uniform draws."""
    policy = AuditPolicy(floor=0.05)
    honest = ProofTable("small").row("honest")
    bulk, single = [], []
    for trial in range(40):
        stream = AuditStream(
            AuditBook(policy), random.Random(trial), __import__("numpy").random.default_rng(trial)
        )
        bulk.append(sum(stream.check(b"w" * 32, 100, honest)[0] for _ in range(30)))
        book, rng, audits = AuditBook(policy), random.Random(1000 + trial), 0
        for _ in range(3000):
            decision = book.decide(b"w" * 32, rng.random())
            if decision.audit:
                audits += 1
                book.record(b"w" * 32, True)
        single.append(audits)
    mean_bulk, mean_single = sum(bulk) / len(bulk), sum(single) / len(single)
    assert mean_bulk == pytest.approx(mean_single, rel=0.08)


def test_after_passes_is_repeated_after_audit() -> None:
    state = None
    for n in range(25):
        assert after_passes(None, n) == state or n == 0
        state = after_audit(state, True)
    failed = after_audit(after_passes(None, 7), False)
    assert after_passes(failed, 3) == after_audit(
        after_audit(after_audit(failed, True), True), True
    )


def test_the_proof_table_gives_the_benchmarks_detection_rates() -> None:
    bench = json.loads((REPO / "benchmarks/results/proof_detection.json").read_text())
    for model in ("tiny", "small"):
        table = ProofTable(model)
        for row in bench["rows"]:
            if row["model"] == model and row["manifest_dtype"] == "bfloat16":
                expected = row["rates"]["recommended"]["decision_rate"]
                assert table.row(row["name"]).detection == pytest.approx(expected, abs=1e-3)
    for kind in CHEAT_KINDS.values():
        ProofTable("small").row(kind.row)  # every cheat kind names a measured row


def test_a_failed_honest_audit_gets_the_validators_second_opinion() -> None:
    # Every stored float32 re-check of a bf16 worker's tokens passes under the bf16 policy, put
    # through the validator's own with_second_opinion: a first failure is overturned.
    table = ProofTable("tiny")
    second = measurements()["rows"]["tiny/float32"]["bf16 generation, fp32 check"]
    assert len(table.second_opinions) == len(second["measurements"]) == 12
    assert all(table.second_opinions)
    assert ProofTable("tiny", "float32").second_opinions == ()  # no second opinion there
    # An honest row whose first check failed (not in the data: built here) passes after it.
    failing = Outcomes("honest", ((False, True),), overturned=1.0)
    assert failing.draw(random.Random(1)) == (True, True) and failing.detection == 0.0
    cheat = table.row("other weights")
    assert cheat.overturned == 0.0 and cheat.detection == 1.0  # a cheat's failure stands
    fp = _run(SMALL)["false_positives"]
    assert fp["second_opinion_samples"] == fp["second_opinion_overturned"] == 6  # small
    bound, first = (
        fp["per_audit_loss_bound_with_second_opinion"],
        fp["per_audit_rate_95pct_upper_bound"],
    )
    assert 0 < bound < first


def test_the_packaged_measurements_are_the_benchmarks() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    from sim_proof_data import SOURCE, packaged

    assert measurements() == json.loads(json.dumps(packaged(json.loads(SOURCE.read_text()))))


def test_r1_config_is_deepseek_v3s_and_the_hardware_plan_decides_the_gpu_classes() -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.DeepseekV3Config().to_dict()
    for key, value in R1_CONFIG.items():
        # moe_layer_freq (1, every layer from first_k_dense_replace on) is R1's config.json's;
        # transformers' class has no such field and means the same.
        assert reference.get(key, 1 if key == "moe_layer_freq" else None) == value, key
    assert inference_flops(R1_CONFIG, 180, 5000) == inference_flops(reference, 180, 5000)
    assert fits(GPU_CLASSES["h200x8"]) and fits(GPU_CLASSES["b200x8"])
    assert not fits(GPU_CLASSES["h100x8"])  # 671 GB of fp8 weights do not fit in 8 x 80 GB


def test_a_retired_task_leaves_the_lease_book() -> None:
    book = LeaseBook(lease_seconds=10)
    book.add_task("t", 2)
    for i, worker in enumerate((b"a" * 32, b"b" * 32)):
        grant = book.claim("t", worker, 0.0)
        assert isinstance(grant, Grant)
        book.record_lease(grant, bytes([i]) * 16, worker)
    assert not book.retire("t")  # samples still leased
    book.settle(b"\x00" * 16, True, 1.0)
    book.settle(b"\x01" * 16, True, 1.0)
    assert book.retire("t") and book.counts() == {"open": 0, "leased": 0, "done": 0}
    assert book.settle(b"\x00" * 16, True, 2.0) is None
    assert book.claim("t", b"c" * 32, 3.0).code == "unknown_task"  # type: ignore[union-attr]


def test_bad_configs_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="unknown cheat"):
        SimConfig(cheaters=(("nope", 0.1),))
    with pytest.raises(ConfigError, match="unknown GPU class"):
        SimConfig(gpu_mix=(("tpu", 1.0),))
    with pytest.raises(ConfigError, match="no GPU class of the mix can run R1"):
        Simulation(SimConfig(gpu_mix=(("h100x8", 1.0),), workers=5, days=0.1))


def test_flopnet_simulate_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flopnet", "simulate", "--workers", "20", "--days", "0.3",
         "--sample-budget", "1000", "--cheaters", "int4=0.1", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["config"]["workers"] == 20 and doc["run"]["simulated_samples"] > 0
    assert set(doc) >= {"leases", "validators", "credit", "false_positives", "ledger", "join"}
