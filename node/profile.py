"""A contributor's leaderboard profile: display name and team, signed by the contributor.

The profile lives in the node's data dir (``profile.json``); ``flopnet profile set`` writes it and
a worker shares it, signed, with each validator that credits it (validators record only
contributors they have credited, see ``LedgerSync.handle_profile``). ``updated_at`` changes only
when the name or team does, so a restarted worker re-sending the same profile is answered
``stale_profile`` and writes nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flopnet.protocol.catalog import PROFILE
from flopnet.protocol.envelope import seal
from flopnet.protocol.errors import ConfigError, FlopnetError
from flopnet.protocol.identity import Identity, peer_id_from_public_key
from flopnet.protocol.messages import ContributorProfile, LedgerEntry, Refusal

if TYPE_CHECKING:
    from flopnet.protocol.host import P2PHost

log = logging.getLogger(__name__)
PROFILE_FILE = "profile.json"
MAX_FIELD_CHARS = 64
# Refusals after which that validator is asked again (after a later credit); any other answer
# settles it until the profile changes.
RETRY_REFUSALS = ("unknown_contributor",)


@dataclass(frozen=True)
class StoredProfile:
    display_name: str
    team: str
    updated_at: float


def check_field(name: str, value: str) -> str:
    """A display name or team as the wire record accepts it, or a ConfigError saying why not."""
    if len(value) > MAX_FIELD_CHARS:
        raise ConfigError(f"{name} is {len(value)} characters; at most {MAX_FIELD_CHARS}")
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ConfigError(f"{name} holds control characters")
    return value


def load_profile(data_dir: Path) -> StoredProfile | None:
    """The profile stored in ``data_dir``, or None when there is none."""
    path = data_dir / PROFILE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        profile = StoredProfile(
            check_field("display name", str(raw["display_name"])),
            check_field("team", str(raw["team"])),
            float(raw["updated_at"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid profile: {exc}") from None
    return profile


def save_profile(data_dir: Path, display_name: str, team: str) -> StoredProfile:
    """Store a profile (atomically); keeps ``updated_at`` when nothing changed."""
    check_field("display name", display_name)
    check_field("team", team)
    old = load_profile(data_dir)
    if old is not None and (old.display_name, old.team) == (display_name, team):
        return old
    profile = StoredProfile(display_name, team, time.time())
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (PROFILE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(profile.__dict__, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / PROFILE_FILE)
    return profile


def signed_profile(identity: Identity, network_id: str, profile: StoredProfile) -> bytes:
    """The ``contributor_profile`` envelope validators record."""
    message = ContributorProfile(
        version=1,
        display_name=profile.display_name,
        team=profile.team,
        updated_at=profile.updated_at,
    )
    return seal(message, identity, network_id)


class ProfileSharer:
    """Sends our profile once to each validator that has credited us (best effort)."""

    def __init__(
        self,
        host: P2PHost,
        identity: Identity,
        network_id: str,
        load: Callable[[], StoredProfile | None],
    ) -> None:
        self.host = host
        self.identity = identity
        self.network_id = network_id
        self._load = load
        self._settled: dict[bytes, float] = {}  # validator key -> updated_at it has
        self._sending: set[bytes] = set()  # one offer per validator at a time (batched verdicts)

    async def share(self, validator: bytes) -> str | None:
        """Offer the profile to ``validator``; returns the outcome ('recorded', a refusal code),
        or None when there was nothing to send. Network errors are logged, not raised."""
        try:
            profile = self._load()
        except (ConfigError, OSError) as exc:
            log.warning("profile not shared: %s", exc)
            return None
        if profile is None or self._settled.get(validator) == profile.updated_at:
            return None
        if validator in self._sending:
            return None
        self._sending.add(validator)
        try:
            outcome = await self._offer(validator, profile)
        finally:
            self._sending.discard(validator)
        if outcome is not None and outcome not in RETRY_REFUSALS:
            self._settled[validator] = profile.updated_at
        return outcome

    async def _offer(self, validator: bytes, profile: StoredProfile) -> str | None:
        data = signed_profile(self.identity, self.network_id, profile)
        try:
            # A LedgerEntry or a Refusal, signed by the validator asked (the host checks both).
            opened = await self.host.call(peer_id_from_public_key(validator), PROFILE, data)
            if isinstance(opened.message, Refusal):
                return opened.message.code
            opened.expect(LedgerEntry)
        except FlopnetError as exc:
            log.info("profile not shared with %s: %s", validator.hex()[:12], exc)
            return None
        return "recorded"
