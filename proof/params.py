"""The proof format's sizes and the proof policy's parameter names, free of torch.

The daemon (which never imports torch), the validator's static checks, the backends and the
proof code all take these from here, so there is one definition of each.
"""

from __future__ import annotations

# Rows of final-norm states per TOPLOC proof, and points per proof (the reference format).
CHUNK = 32
TOPK = 128
# A proof's bytes: a 2-byte modulus and TOPK 2-byte coefficients.
PROOF_BYTES = 2 + 2 * TOPK

# The network parameters (manifest fields) that make up a ProofPolicy, with their types. The
# manifest has no null: a ``mant_err_mean_baseline`` of 0 there means no pooled check.
POLICY_PARAMS: dict[str, type] = {
    "max_exp_mismatches": int,
    "max_mant_err_mean": float,
    "max_mant_err_median": float,
    "max_sign_mismatches": int,
    "mant_err_mean_baseline": float,
    "replay_tolerance": float,
    "max_replay_mismatch_fraction": float,
    # Impossible tokens per token that honest work stays below (proof.tally); 0: no tally.
    "honest_replay_rate": float,
}
