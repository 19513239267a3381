"""The worker side: claim leases, generate with proofs, submit, keep the verdicts."""
