"""The founder-signed network manifest: creation, verification, and refusal of forgeries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgpack
import pytest

from flopnet.node.config import NetworkParams, create_network
from flopnet.node.local import flopnet_argv
from flopnet.protocol.codec import packb
from flopnet.protocol.envelope import seal
from flopnet.protocol.errors import ConfigError, MalformedMessage
from flopnet.protocol.identity import Identity
from flopnet.protocol.manifest import load_manifest, network_id_for, open_manifest

FOUNDER = Identity(b"\x07" * 32)
MALLORY = Identity(b"\x08" * 32)
KEY = "ab" * 32


def make(tmp_path: Path) -> tuple[NetworkParams, Path]:
    params = NetworkParams(
        network_id="assigned-by-manifest", publishers=(KEY,), validators=(KEY,), model_seed=9
    )
    path = tmp_path / "network.manifest"
    return create_network(FOUNDER, "testnet", params, path), path


def test_round_trip(tmp_path: Path) -> None:
    net, path = make(tmp_path)
    assert net.network_id == network_id_for("testnet", FOUNDER.public_key)
    assert net.network_id.startswith("testnet-") and len(net.network_id) == len("testnet-") + 16
    assert net.founder == FOUNDER.public_key.hex()
    assert net.publisher_keys == {bytes.fromhex(KEY)} and net.model_seed == 9
    assert NetworkParams.load(path) == net
    assert load_manifest(path, expected_network_id=net.network_id).founder == FOUNDER.public_key


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    _, path = make(tmp_path)
    data = bytearray(path.read_bytes())
    index = data.find(b"tiny")
    data[index : index + 4] = b"huge"
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="bad signature"):
        NetworkParams.load(path)


def test_resigned_manifest_cannot_claim_the_network(tmp_path: Path) -> None:
    net, path = make(tmp_path)
    manifest = load_manifest(path)
    # Mallory re-signs the same fields (same network id, same founder field) with her key...
    with pytest.raises(MalformedMessage, match="not signed by its founder"):
        open_manifest(seal(manifest, MALLORY, net.network_id))
    # ...or names herself founder but keeps the id: the fingerprint no longer matches.
    raw = manifest.to_wire() | {"founder": MALLORY.public_key}
    body = packb(raw)
    envelope = {
        "v": 1,
        "type": "network_manifest",
        "body": body,
        "signer": MALLORY.public_key,
        "sig": MALLORY.sign(
            b"flopnet/1\0" + net.network_id.encode() + b"\0network_manifest\0" + body
        ),
    }
    with pytest.raises(MalformedMessage, match="fingerprint"):
        open_manifest(packb(envelope))
    with pytest.raises(MalformedMessage, match="expected"):
        open_manifest(path.read_bytes(), expected_network_id="testnet-0000000000000000")
    assert msgpack.unpackb(path.read_bytes())["type"] == "network_manifest"


def test_bad_names_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="network name"):
        network_id_for("Bad Name!", FOUNDER.public_key)
    with pytest.raises(ConfigError, match="cannot read"):
        load_manifest(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"\x00\x01")
    with pytest.raises(ConfigError, match="refusing manifest"):
        load_manifest(tmp_path / "junk")


def test_network_init_cli(tmp_path: Path) -> None:
    def flopnet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flopnet_argv(), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    out = tmp_path / "net"
    made = flopnet("network", "init", "--out", str(out), "--name", "alpha", "--validator", KEY)
    assert made.returncode == 0, made.stderr
    assert "network alpha-" in made.stdout
    assert oct((out / "identity.key").stat().st_mode & 0o777) == "0o600"
    shown = flopnet("network", "show", str(out / "network.manifest"), "--json")
    assert shown.returncode == 0 and f'"{KEY}"' in shown.stdout
    assert json.loads(shown.stdout)["audit_rate_floor"] == 0.05  # a real network's default
    bad = flopnet("network", "init", "--out", str(tmp_path / "b"), "--audit-rate-floor", "1.5")
    assert bad.returncode == 2 and "audit_rate_floor must be in [0, 1]" in bad.stderr
    again = flopnet("network", "init", "--out", str(out))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    ident = flopnet("identity", "--data-dir", str(tmp_path / "node"))
    assert ident.returncode == 0 and '"public_key"' in ident.stdout
    assert ident.stdout == flopnet("identity", "--data-dir", str(tmp_path / "node")).stdout
