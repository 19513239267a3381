"""A discrete-event simulation of a flopnet network far larger than one machine.

It drives the project's own decision code (the lease book, the claim pacer, the validator's
schedule, audit book and proof judgement, the credit policy, FLOP formula and hardware plan)
with SimPy processes standing in for the I/O; nothing here re-decides what those modules decide.
``flopnet simulate`` runs it; ``docs/scale.md`` holds what it answered.
"""
