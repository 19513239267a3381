"""A node's own files: private to their owner, and every failure to write them said plainly.

The API token guards the local API; an empty or readable one would open it to any local user.
The inbox, publisher store, ledger and log hold other people's submissions and the node's work.
A read-only or full data directory must end in one ``flopnet: error:`` line, never a traceback.
"""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flopnet.ledger.store import LedgerStore
from flopnet.node.api import build_app, load_or_create_token
from flopnet.node.config import NetworkParams, create_network
from flopnet.node.local import flopnet_argv
from flopnet.node.publisher.store import PublisherStore
from flopnet.node.validator.inbox import Inbox
from flopnet.protocol.errors import ConfigError
from flopnet.protocol.identity import Identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_api_token_is_private_and_an_empty_or_readable_one_is_refused(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert len(token) == 32 and _mode(tmp_path / "api.token") == 0o600
    assert load_or_create_token(tmp_path) == token
    (tmp_path / "api.token").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_token(tmp_path)
    (tmp_path / "api.token").chmod(0o600)
    (tmp_path / "api.token").write_text("")  # an empty token would open the API to "Bearer "
    with pytest.raises(ConfigError, match="no valid API token"):
        load_or_create_token(tmp_path)
    with pytest.raises(ConfigError, match="too short"):
        build_app("", {})


def test_databases_and_the_log_are_private(tmp_path: Path) -> None:
    from flopnet.node.daemon import setup_logging

    with LedgerStore(tmp_path / "ledger.sqlite"):
        pass
    inbox = Inbox(tmp_path / "inbox.sqlite")
    inbox.add(b"s" * 32, b"l" * 16, "peer", b"envelope")
    publisher = PublisherStore(tmp_path / "publisher.sqlite")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        setup_logging(tmp_path / "node", "INFO")
        logging.getLogger("flopnet.test").warning("written to the log")
    finally:
        for handler in root.handlers[len(handlers) :]:
            handler.close()
        root.handlers[:] = handlers
    inbox.close()
    publisher.close()
    private = [
        tmp_path / "ledger.sqlite",
        tmp_path / "inbox.sqlite",
        tmp_path / "publisher.sqlite",
        tmp_path / "node" / "node.log",
    ]
    for path in private:
        assert _mode(path) == 0o600, path
    assert _mode(tmp_path / "node") == 0o700
    # A file left readable by an older version is tightened when opened.
    (tmp_path / "inbox.sqlite").chmod(0o644)
    Inbox(tmp_path / "inbox.sqlite").close()
    assert _mode(tmp_path / "inbox.sqlite") == 0o600


def _node(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    founder = Identity(b"\x0d" * 32)
    manifest = tmp_path / "network.manifest"
    if not manifest.exists():
        create_network(founder, "files", NetworkParams(network_id="pending"), manifest)
    args = ["node", "--role", "relay", "--manifest", str(manifest), "--data-dir", str(data_dir)]
    return subprocess.run(
        [*flopnet_argv(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_data_directory_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    # sysfs refuses new directories even to root: a stand-in for a read-only data directory.
    done = _node(tmp_path, Path("/sys/flopnet-test-data"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("flopnet: error: cannot create the data directory")
    assert "Traceback" not in done.stderr


def test_errors_reach_stderr_as_well_as_the_log(tmp_path: Path) -> None:
    """When the data directory's disk is full the log is not written: errors go to stderr too."""
    code = (
        "import logging, sys; from pathlib import Path\n"
        "from flopnet.node.daemon import setup_logging\n"
        f"setup_logging(Path({str(tmp_path)!r}), 'INFO')\n"
        "logging.getLogger('flopnet.validator').error('database or disk is full')\n"
        "logging.getLogger('flopnet.validator').info('routine')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "database or disk is full" in done.stderr and "routine" not in done.stderr
    assert "routine" in (tmp_path / "node.log").read_text()
