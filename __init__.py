"""flopnet: donated GPU time turned into verified reasoning traces and signed FLOP credit.

The repository's rooms are this package's subpackages (the build maps each folder at the
repository root into the ``flopnet`` namespace, see ``pyproject.toml``):

* :mod:`flopnet.protocol` - wire records, canonical encoding, signatures, the libp2p host
* :mod:`flopnet.proof` - TOPLOC proofs, the seeded sampler and its replay, the proof decision
* :mod:`flopnet.verifiers` - answer verifiers (math, code in a sandbox, output prediction, judge)
* :mod:`flopnet.ledger` - the signed hash chain, FLOP formula, credit policy, leaderboard
* :mod:`flopnet.node` - the daemon, its roles, the model process, the command line
* :mod:`flopnet.tui` - the terminal UI, talking to a node over HTTP only
"""

__version__ = "0.1.0"
