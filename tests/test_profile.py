"""Profiles: kept in the data dir, signed by the contributor, recorded by validators over libp2p."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from flopnet.ledger.leaderboard import leaderboard
from flopnet.ledger.store import LedgerStore
from flopnet.node.cli.main import main as flopnet_main
from flopnet.node.ledger_sync import LedgerSync
from flopnet.node.profile import ProfileSharer, load_profile, save_profile
from flopnet.protocol.catalog import PROFILE
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.host import P2PHost
from flopnet.protocol.identity import Identity
from flopnet.protocol.messages import CreditBody

VALIDATOR = Identity(b"\xa1" * 32)
WORKER = Identity(b"\xa2" * 32)
STRANGER = Identity(b"\xa3" * 32)
NET = "profiles"


def test_saving_the_same_profile_keeps_its_time_and_bad_fields_are_refused(
    tmp_path: Path,
) -> None:
    assert load_profile(tmp_path) is None
    first = save_profile(tmp_path, "ada", "analytical")
    assert save_profile(tmp_path, "ada", "analytical") == first  # a restart resends nothing new
    changed = save_profile(tmp_path, "ada", "engines")
    assert changed.updated_at >= first.updated_at and load_profile(tmp_path) == changed
    with pytest.raises(ConfigError, match="control characters"):
        save_profile(tmp_path, "ada\x1b[2J", "")
    with pytest.raises(ConfigError, match="at most 64"):
        save_profile(tmp_path, "a" * 65, "")
    (tmp_path / "profile.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid profile"):
        load_profile(tmp_path)


def test_profile_cli_sets_and_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flopnet_main(["profile", "show", "--data-dir", str(tmp_path)]) == 2
    assert "no profile" in capsys.readouterr().err
    assert flopnet_main(["profile", "set", "--data-dir", str(tmp_path), "--name", "grace"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["display_name"] == "grace" and shown["team"] == ""
    assert flopnet_main(["profile", "show", "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == shown


def _credit(contributor: bytes) -> CreditBody:
    return CreditBody(
        contributor=contributor,
        lease_id=b"l" * 16,
        submission_id=b"s" * 32,
        task_id="t",
        sample_index=0,
        prompt_tokens=3,
        generated_tokens=5,
        flops=1000,
        flop_formula="matmul-v1",
        accepted=True,
        answer_score=1.0,
        reasons=(),
    )


@pytest.mark.timeout(120)
def test_a_worker_shares_its_profile_once_with_a_validator_that_credited_it(
    tmp_path: Path,
) -> None:
    store = LedgerStore(tmp_path / "ledger.sqlite")
    store.append_local(VALIDATOR, NET, "credit", _credit(WORKER.public_key))
    worker_dir, stranger_dir = tmp_path / "worker", tmp_path / "stranger"
    save_profile(worker_dir, "ada", "analytical")
    save_profile(stranger_dir, "mallory", "")

    async def main() -> None:
        server = P2PHost(VALIDATOR, network_id=NET)
        sync = LedgerSync(server, store, VALIDATOR, NET, {VALIDATOR.public_key})
        server.serve(PROFILE, sync.handle_profile)
        worker = P2PHost(WORKER, network_id=NET)
        stranger = P2PHost(STRANGER, network_id=NET)
        async with server.running() as srv, worker.running() as w, stranger.running() as s:
            await w.connect(srv.addrs()[0])
            await s.connect(srv.addrs()[0])
            sharer = ProfileSharer(w, WORKER, NET, lambda: load_profile(worker_dir))
            assert await sharer.share(VALIDATOR.public_key) == "recorded"
            assert await sharer.share(VALIDATOR.public_key) is None  # settled: nothing sent
            # A restarted worker resends the same signed profile: recorded once only.
            again = ProfileSharer(w, WORKER, NET, lambda: load_profile(worker_dir))
            assert await again.share(VALIDATOR.public_key) == "stale_profile"
            # A changed profile within ten minutes is refused, and not retried on every verdict.
            save_profile(worker_dir, "ada", "engines")
            assert await again.share(VALIDATOR.public_key) == "too_frequent"
            assert await again.share(VALIDATOR.public_key) is None
            # Nobody writes to a validator's chain without having been credited by it.
            outsider = ProfileSharer(s, STRANGER, NET, lambda: load_profile(stranger_dir))
            assert await outsider.share(VALIDATOR.public_key) == "unknown_contributor"

    trio.run(main)
    (row,) = leaderboard(store, {VALIDATOR.public_key})
    assert (row.display_name, row.team) == ("ada", "analytical")
    assert [r[0] for r in store.connection.execute("SELECT kind FROM entries ORDER BY seq")] == [
        "credit",
        "profile",
    ]
    assert store.verify_all(NET) == []
    store.close()
