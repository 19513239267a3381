"""TOPLOC activation proofs, the seeded sampler and its replay, and the proof decision (pure)."""
