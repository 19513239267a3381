"""Sandbox runners for untrusted programs, and the choice between them.

``select_sandbox`` (in the node) probes what works and returns a picklable
:class:`SandboxConfig`; ``open_sandbox`` (in a verifier pool child) turns it into a runner, once
per process. ``auto`` prefers bubblewrap (a run costs ~30 ms, against a container start per run
for Docker), then Docker where a daemon answers; it never falls back to running without a sandbox:
that takes ``kind="unsafe"`` and ``allow_unsafe=True`` both.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from flopnet.verifiers.sandbox.base import (
    BOX,
    Box,
    Limits,
    RunResult,
    Sandbox,
    SandboxError,
    SandboxUnavailable,
)

__all__ = [
    "BOX",
    "KINDS",
    "Box",
    "Limits",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxUnavailable",
    "open_sandbox",
    "select_sandbox",
]

log = logging.getLogger(__name__)
KINDS = ("auto", "bwrap", "docker", "unsafe")


@dataclass(frozen=True)
class SandboxConfig:
    """Which runner, with its settings; plain data so it can travel to pool children."""

    kind: str = "bwrap"
    docker_url: str | None = None
    docker_image: str = "flopnet-sandbox:1"
    sandbox_uid: int = 65534
    #: bubblewrap's total memory cap: "auto" (cgroups where allowed), "cgroup" or "rlimit".
    memory_cap: str = "auto"


@functools.lru_cache(maxsize=8)
def open_sandbox(config: SandboxConfig) -> Sandbox:
    """The runner for ``config`` (cached: one per process and config)."""
    if config.kind == "bwrap":
        from flopnet.verifiers.sandbox.bwrap import BwrapSandbox

        bwrap = BwrapSandbox(sandbox_uid=config.sandbox_uid, memory_cap=config.memory_cap)
        log.info("code sandbox: %s", bwrap.description)  # which memory cap is in force
        return bwrap
    if config.kind == "docker":
        from flopnet.verifiers.sandbox.docker_runner import DockerSandbox

        return DockerSandbox(base_url=config.docker_url, image=config.docker_image)
    if config.kind == "unsafe":
        from flopnet.verifiers.sandbox.unsafe import WARNING, UnsafeSandbox

        log.warning(WARNING)
        return UnsafeSandbox()
    raise SandboxUnavailable(f"unknown sandbox kind {config.kind!r}")


def _probe(config: SandboxConfig) -> None:
    sandbox = open_sandbox(config)
    probe = getattr(sandbox, "probe", None)
    if probe is not None:
        probe()


def select_sandbox(
    kind: str = "auto",
    *,
    allow_unsafe: bool = False,
    docker_url: str | None = None,
    docker_image: str = "flopnet-sandbox:1",
    sandbox_uid: int = 65534,
) -> SandboxConfig:
    """Probe and return a working sandbox config; SandboxUnavailable says what to install."""
    if kind not in KINDS:
        raise SandboxUnavailable(f"unknown sandbox kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "unsafe":
        if not allow_unsafe:
            raise SandboxUnavailable("running code without a sandbox needs the explicit flag")
        return SandboxConfig(kind="unsafe")
    candidates = ["bwrap", "docker"] if kind == "auto" else [kind]
    failures = []
    for name in candidates:
        config = SandboxConfig(
            kind=name, docker_url=docker_url, docker_image=docker_image, sandbox_uid=sandbox_uid
        )
        try:
            _probe(config)
        except SandboxUnavailable as exc:
            open_sandbox.cache_clear()
            failures.append(f"{name}: {exc}")
            continue
        return config
    raise SandboxUnavailable(
        "no sandbox for running code works on this machine ("
        + "; ".join(failures)
        + "). Install bubblewrap (apt-get install bubblewrap) or start Docker; "
        "running without a sandbox needs --unsafe-no-sandbox."
    )
