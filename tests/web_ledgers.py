"""Ledgers for the web leaderboard's tests, built with the real chain code and a signed manifest.

A devnet-shaped folder: ``network.manifest`` at the top, a validator's ``ledger.sqlite`` one
level down, two validator chains with accepted, rejected and voided credit (hard and soft
invalidations), signed profiles (one of them hostile markup) and credit spread over days.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from flopnet.ledger.kinds import HARD, SOFT, InvalidationBody, ProfileBody
from flopnet.ledger.store import LedgerStore
from flopnet.node.config import NetworkParams, create_network
from flopnet.protocol.envelope import seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import ContributorProfile, CreditBody

V1 = Identity(b"\x61" * 32)
V2 = Identity(b"\x62" * 32)
FOUNDER = Identity(b"\x63" * 32)
IDLE = Identity(b"\x64" * 32)
XSS_NAME = '<script>pwned=1</script><img src=x onerror="pwned=2">'
XSS_TEAM = '"><svg onload=pwned=3>'


@dataclass(frozen=True)
class Built:
    root: Path
    ledger: Path
    net: NetworkParams
    people: list[Identity]


def credit(who: Identity, n: int, flops: int, accepted: bool = True) -> CreditBody:
    return CreditBody(
        contributor=who.public_key,
        lease_id=n.to_bytes(16, "big"),
        submission_id=n.to_bytes(32, "big"),
        task_id=f"task-{n}",
        sample_index=n % 4,
        prompt_tokens=50,
        generated_tokens=100 + n % 50,
        flops=flops if accepted else 0,
        flop_formula="matmul-v1",
        accepted=accepted,
        answer_score=1.0 if accepted else 0.0,
        reasons=() if accepted else ("proof: 61 exponent mismatches > 38", "a <b>bold</b> lie"),
    )


def build_ledger(
    root: Path, *, now: float, credits: int = 120, people: int = 8, seed: int = 5
) -> Built:
    """``credits`` credit entries over 40 days on two chains, with voids and profiles."""
    root.mkdir(parents=True, exist_ok=True)
    params = NetworkParams(
        network_id="assigned",
        validators=(
            V1.public_key.hex(),
            V2.public_key.hex(),
            IDLE.public_key.hex(),  # has written nothing: its chain is absent, not hidden
        ),
        lock_window_seconds=86400.0,
    )
    net = create_network(FOUNDER, "webtest", params, root / "network.manifest")
    nid = net.network_id
    rng = random.Random(seed)
    folks = [Identity(bytes([0x30 + i]) * 32) for i in range(people)]
    node = root / "validator"
    node.mkdir(exist_ok=True)
    times = sorted(now - rng.uniform(0, 40 * 86400) for _ in range(credits))
    with LedgerStore(node / "ledger.sqlite") as store:
        for i, who in enumerate(folks[:6]):
            name, team = (XSS_NAME, XSS_TEAM) if i == 1 else (f"person {i}", f"team {'ab'[i % 2]}")
            if i == 5:
                name, team = "", ""
            profile = seal(ContributorProfile(1, name, team, 100.0 + i), who, nid)
            store.append_local(V1, nid, "profile", ProfileBody(profile), now=times[0] - 10)
        for n, t in enumerate(times):
            who = folks[min(int(rng.paretovariate(1.2)) - 1, people - 1)]
            validator = V1 if n % 3 else V2
            accepted = rng.random() > 0.1
            flops = rng.randrange(10**12, 10**16)
            store.append_local(validator, nid, "credit", credit(who, n, flops, accepted), now=t)
            if n == credits // 2:  # a hard invalidation of someone with pending credit
                body = InvalidationBody(
                    who.public_key,
                    HARD,
                    validator.public_key,
                    0,
                    bytes(32),
                    "audit failed: <i>x</i>",
                )
                store.append_local(V2, nid, "invalidation", body, now=t + 1)
        # A soft invalidation naming the last credit of V1's chain, and a renamed profile.
        head = store.head(V1.public_key)
        assert head is not None
        last = store.connection.execute(
            "SELECT seq, contributor FROM credits WHERE signer = ? AND accepted "
            "ORDER BY seq DESC LIMIT 1",
            (V1.public_key,),
        ).fetchone()
        body = InvalidationBody(
            bytes(last[1]), SOFT, V1.public_key, last[0], bytes(32), "answer copied"
        )
        store.append_local(V1, nid, "invalidation", body, now=now - 60)
        renamed = seal(ContributorProfile(1, "person zero", "team a", 500.0), folks[0], nid)
        store.append_local(V2, nid, "profile", ProfileBody(renamed), now=now - 30)
    return Built(root, node / "ledger.sqlite", net, folks)
