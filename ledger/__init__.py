"""The signed hash-chained ledger: store, FLOP formula, credit and audit policy, leaderboard."""
