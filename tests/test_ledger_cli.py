"""``flopnet ledger verify|dump`` and the leaderboard options, run on real data directories."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ledger import ALICE, BOB, CAROL, credit, tamper_body

from flopnet.ledger.chain import make_entry, read_entry_unverified
from flopnet.ledger.kinds import HARD, InvalidationBody, ProfileBody
from flopnet.ledger.store import LedgerStore
from flopnet.node.cli.main import main
from flopnet.node.config import NetworkParams, create_network
from flopnet.protocol.envelope import seal
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import ContributorProfile

REPO = Path(__file__).resolve().parent.parent
V1 = Identity(b"\x61" * 32)
V2 = Identity(b"\x62" * 32)
FOUNDER = Identity(b"\x63" * 32)


@pytest.fixture
def network(tmp_path: Path) -> NetworkParams:
    params = NetworkParams(
        network_id="assigned",
        validators=(V1.public_key.hex(), V2.public_key.hex()),
        lock_window_seconds=3600.0,
    )
    return create_network(FOUNDER, "clitest", params, tmp_path / "network.manifest")


def populate(tmp_path: Path, net: NetworkParams) -> Path:
    """A devnet-shaped dir: the manifest at the top, a validator's ledger one level down."""
    now = time.time()
    node = tmp_path / "validator"
    node.mkdir()
    with LedgerStore(node / "ledger.sqlite") as store:
        nid = net.network_id
        for i, who in enumerate([ALICE, BOB, ALICE, CAROL, ALICE]):
            body = credit(who, i, flops=1000 * (i + 1))
            store.append_local(V1, nid, "credit", body, now=now - 10 * 86400 + i)
        store.append_local(V2, nid, "credit", credit(BOB, 50, flops=7), now=now - 600)
        store.append_local(V2, nid, "credit", credit(CAROL, 51, flops=9), now=now - 500)
        store.append_local(
            V2,
            nid,
            "invalidation",
            InvalidationBody(CAROL.public_key, HARD, V2.public_key, 1, bytes(32), "audit failed"),
            now=now - 400,
        )
        for who, name, team in [(ALICE, "alice", "red"), (BOB, "bob", "red")]:
            profile = seal(ContributorProfile(1, name, team, 1.0), who, nid)
            store.append_local(V1, nid, "profile", ProfileBody(profile), now=now - 300)
    return node / "ledger.sqlite"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_clean_then_tampered(
    tmp_path: Path, network: NetworkParams, capsys: pytest.CaptureFixture[str]
) -> None:
    path = populate(tmp_path, network)
    code, out, _ = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path))
    assert code == 0, out
    assert "all chains verify" in out and f"chain of {V1.peer_id}: 7 entries" in out

    with LedgerStore(path) as store:
        conn = store.connection
        envelope = conn.execute("SELECT envelope FROM entries WHERE seq = 2").fetchone()[0]
        conn.execute(
            "UPDATE entries SET envelope = ? WHERE seq = 2 AND signer = ?",
            (tamper_body(envelope, flops=10**18), V1.public_key),
        )
        conn.execute("DELETE FROM entries WHERE seq = 4 AND signer = ?", (V1.public_key,))
        first = read_entry_unverified(store.entries(V2.public_key, 0, 1)[0]).entry
        fork = make_entry(
            V2, network.network_id, 0, first.prev_hash, "credit", credit(BOB, 66), first.timestamp
        )
        assert store.ingest_range([fork], network.network_id).error is not None
    code, out, _ = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path))
    assert code == 1
    assert "entry seq 2 (" in out and "bad signature" in out
    assert "entry seq 5 (" in out and "seq 4 missing before it" in out
    assert f"{V2.peer_id} signed seq 0 twice" in out
    assert "problem(s) found" in out


def test_verify_needs_the_network(
    tmp_path: Path, network: NetworkParams, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(tmp_path, network)
    (tmp_path / "network.manifest").rename(tmp_path / "elsewhere.manifest")
    code, _, err = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path))
    assert code == 2 and "give --manifest or --network-id" in err
    code, out, _ = run(
        capsys, "ledger", "verify", "--data-dir", str(tmp_path), "--network-id", network.network_id
    )
    assert code == 0, out
    code, out, _ = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path), "--network-id", "x")
    assert code == 1 and "bad signature" in out  # every entry was signed for another network
    code, _, err = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no ledger found" in err


def test_dump_is_a_complete_checkable_export(
    tmp_path: Path, network: NetworkParams, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(tmp_path, network)
    out_file = tmp_path / "stats.json.gz"
    code, out, _ = run(
        capsys, "ledger", "dump", "--data-dir", str(tmp_path), "--out", str(out_file)
    )
    assert code == 0 and "3 contributors, 1 teams" in out
    dump = json.loads(gzip.decompress(out_file.read_bytes()))
    assert dump["format"] == "flopnet-stats/1" and dump["network_id"] == network.network_id
    assert dump["lock_window_seconds"] == 3600.0 and dump["flop_formulas"] == ["2NT-v0"]
    assert [c["head_seq"] for c in dump["chains"]] == sorted(c["head_seq"] for c in dump["chains"])
    people = {c["peer_id"]: c for c in dump["contributors"]}
    assert people[ALICE.peer_id]["flops"] == 1000 + 3000 + 5000
    assert people[ALICE.peer_id]["final_flops"] == 9000 and people[ALICE.peer_id]["team"] == "red"
    assert people[BOB.peer_id]["pending_flops"] == 7
    assert people[CAROL.peer_id]["tasks_voided"] == 1  # the hard invalidation, still pending
    (red,) = dump["teams"]
    assert red["members"] == 2 and red["flops"] == 9000 + 2000 + 7
    plain = tmp_path / "stats.json"
    assert main(["ledger", "dump", "--data-dir", str(tmp_path), "--out", str(plain)]) == 0
    assert json.loads(plain.read_text())["contributors"] == dump["contributors"]


def test_leaderboard_formats_and_windows(
    tmp_path: Path, network: NetworkParams, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(tmp_path, network)
    code, out, _ = run(capsys, "leaderboard", "--data-dir", str(tmp_path), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["display_name"] for r in rows] == ["alice", "", "bob"]
    assert rows[0]["flop_formulas"] == ["2NT-v0"] and rows[0]["final_flops"] == 9000
    code, out, _ = run(
        capsys, "leaderboard", "--data-dir", str(tmp_path), "--csv", "--window", "24h"
    )
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["peer_id"], r["flops"]) for r in table] == [
        (BOB.peer_id, "7"),
        (CAROL.peer_id, "0"),
    ]
    assert table[0]["pending_flops"] == "7" and table[1]["tasks_voided"] == "1"
    code, out, _ = run(capsys, "leaderboard", "--data-dir", str(tmp_path), "--window", "7d")
    assert code == 0 and "window: 7d; credit is pending for 1 h" in out
    assert "FLOP formula: 2NT-v0" in out
    with pytest.raises(SystemExit):
        main(["leaderboard", "--json", "--csv"])
    capsys.readouterr()


def test_module_top_is_cheap_to_import() -> None:
    code = (
        "import sys, flopnet.node.cli.ledger; "
        "heavy = {'sqlite3', 'trio', 'libp2p', 'flopnet.ledger.store', 'torch'} "
        "& set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_verify_reports_audit_entries_that_lie(
    tmp_path: Path, network: NetworkParams, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validator's audit entries must agree with its chain and the manifest's policy: here it
    records a long valid streak and a low rate for a contributor it never audited before, and a
    failed audit without the hard invalidation that must come with it."""
    from flopnet.ledger.kinds import AuditBody

    populate(tmp_path, network)
    path = tmp_path / "validator" / "ledger.sqlite"
    nid = network.network_id
    with LedgerStore(path) as store:
        first = credit(ALICE, 0)  # the credit at seq 0 of V1's chain
        store.append_local(
            V1, nid, "audit", AuditBody(ALICE.public_key, first.submission_id, True, 0.01, 40, ())
        )
        second = credit(BOB, 1)
        store.append_local(
            V1, nid, "audit", AuditBody(BOB.public_key, second.submission_id, False, 1.0, 0, ())
        )
    code, out, _ = run(capsys, "ledger", "verify", "--data-dir", str(tmp_path))
    assert code == 1
    alice, bob = ALICE.public_key[:6].hex(), BOB.public_key[:6].hex()
    assert f"audit of {alice} records 40 consecutive valid audits; the chain's earlier" in out
    assert f"audit of {alice} records rate 0.0100; the manifest's policy gives 1.0000" in out
    assert f"audit of {bob} failed, but its credit was accepted" in out
    assert f"audit of {bob} failed without a hard invalidation" in out
    assert "4 problem(s) found" in out
