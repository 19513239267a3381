"""The Docker runner, through the ``docker`` SDK, for machines where a Docker daemon answers.

Untested against a real engine (none runs where this was written): the tests drive this exact
client code path against a fake Engine API on a unix socket. The image is built from
``docker/sandbox.Dockerfile`` when missing.

A box is a Docker volume. Files are copied in with ``put_archive`` through a created (never
started) helper container that mounts the volume read-write; runs mount it read-only (build runs:
read-write) in a new container each: no network, read-only root, dropped capabilities,
no-new-privileges, a size-capped ``/tmp`` tmpfs, memory, pids and CPU limits, an unprivileged
user, and ``prlimit`` inside for CPU time and file size. The program's output goes to files on the
tmpfs, capped by ``prlimit --fsize``, and only ``head -c`` of them reaches the container log.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import tarfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flopnet.verifiers.sandbox.base import (
    BOX,
    SANDBOX_ENV,
    Limits,
    RunResult,
    SandboxError,
    SandboxUnavailable,
    check_name,
)

DEFAULT_IMAGE = "flopnet-sandbox:1"
DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "sandbox.Dockerfile"
#: The uid of the image's ``sandbox`` user (see docker/sandbox.Dockerfile).
SANDBOX_USER = "10001"
IMAGE_TOOLS = frozenset({"python3", "node", "g++", "rustc"})
_LABEL = {"org.flopnet.sandbox": "1"}
# Runs the program with limits, output to tmpfs files, then copies capped heads to the log.
# "$1" is the stdin file, "$2"/"$3" the stdout/stderr caps, the rest the prlimit command line.
_WRAPPER = (
    'in="$1"; ocap="$2"; ecap="$3"; shift 3; '
    '"$@" <"$in" >/tmp/.flopnet-out 2>/tmp/.flopnet-err; code=$?; '
    'head -c "$ocap" /tmp/.flopnet-out; head -c "$ecap" /tmp/.flopnet-err >&2; exit "$code"'
)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DockerSandbox:
    """Runs programs in Docker containers; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        image: str = DEFAULT_IMAGE,
        dockerfile: Path = DOCKERFILE,
        timeout_s: float = 30.0,
    ) -> None:
        try:
            # Through importlib: to type checkers run from the repo root, "docker" is the repo's
            # docker/ directory (a namespace package), not the SDK.
            docker: Any = importlib.import_module("docker")
        except ImportError:
            raise SandboxUnavailable("the docker SDK is missing: pip install docker") from None
        self._errors = docker.errors
        try:
            if base_url is None:
                self.client = docker.from_env(timeout=int(timeout_s))
            else:
                self.client = docker.DockerClient(base_url=base_url, timeout=int(timeout_s))
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"no Docker daemon answers: {exc}") from None
        self.image = image
        self.dockerfile = dockerfile

    def probe(self, build: bool = True) -> None:
        """Check the daemon answers and the image exists (building it when ``build``)."""
        try:
            self.client.ping()
        except Exception as exc:
            raise SandboxUnavailable(f"the Docker daemon does not answer: {exc}") from None
        try:
            self.client.images.get(self.image)
            return
        except self._errors.ImageNotFound:
            if not build:
                raise SandboxUnavailable(f"Docker image {self.image} is missing") from None
        except self._errors.APIError as exc:
            raise SandboxUnavailable(f"Docker image check failed: {exc}") from None
        try:
            self.client.images.build(
                path=str(self.dockerfile.parent),
                dockerfile=self.dockerfile.name,
                tag=self.image,
                rm=True,
                network_mode="bridge",  # the build itself needs the package mirror
            )
        except Exception as exc:
            raise SandboxUnavailable(
                f"cannot build the sandbox image from {self.dockerfile}: {exc}"
            ) from None

    def has_tool(self, tool: str) -> bool:
        return tool in IMAGE_TOOLS

    def open_box(self) -> DockerBox:
        return DockerBox(self)


class DockerBox:
    """A Docker volume mounted at ``/box``."""

    def __init__(self, sandbox: DockerSandbox) -> None:
        self._sb = sandbox
        self._pending: dict[str, bytes] = {}
        self._runs = 0
        try:
            volume = sandbox.client.volumes.create(
                name=f"flopnet-box-{uuid.uuid4().hex[:16]}", labels=_LABEL
            )
        except Exception as exc:
            raise SandboxError(f"docker: cannot create a volume: {exc}") from None
        self.volume: str = volume.name

    def write(self, name: str, data: bytes) -> None:
        self._pending[check_name(name)] = data

    def _upload(self) -> None:
        if not self._pending:
            return
        helper = self._sb.client.containers.create(
            self._sb.image,
            ["true"],
            volumes={self.volume: {"bind": BOX, "mode": "rw"}},
            network_mode="none",
            labels=_LABEL,
        )
        try:
            if not helper.put_archive(BOX, _tar(self._pending)):
                raise SandboxError("docker: copying files into the box failed")
        finally:
            helper.remove(force=True)
        self._pending.clear()

    def _create_kwargs(self, limits: Limits, build: bool) -> dict[str, Any]:
        memory = f"{limits.memory_mb}m"
        return {
            "volumes": {self.volume: {"bind": BOX, "mode": "rw" if build else "ro"}},
            "working_dir": "/tmp",
            "environment": dict(SANDBOX_ENV),
            # Build runs write the box, which belongs to root; compilers are trusted code.
            "user": "0" if build else SANDBOX_USER,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,exec,size={limits.tmpfs_mb}m,mode=1777"},
            "mem_limit": memory,
            "memswap_limit": memory,
            "pids_limit": limits.processes,
            "nano_cpus": 1_000_000_000,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "ipc_mode": "none",
            "hostname": "sandbox",
            "labels": _LABEL,
        }

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        self._runs += 1
        stdin_name = f".stdin-{self._runs}"
        self._pending[stdin_name] = stdin
        self._upload()
        command = [
            "sh",
            "-c",
            _WRAPPER,
            "sh",
            f"{BOX}/{stdin_name}",
            str(limits.output_bytes + 1),
            str(limits.stderr_bytes),
            "prlimit",
            *limits.prlimit_args(),
            "--",
            *argv,
        ]
        client = self._sb.client
        container = client.containers.create(
            self._sb.image, command, **self._create_kwargs(limits, build)
        )
        started = time.monotonic()
        timed_out = False
        try:
            container.start()
            try:
                status = container.wait(timeout=limits.wall_s)
                code = int(status.get("StatusCode", -1))
            except Exception:
                # requests raises ReadTimeout (or ConnectionError) when the wait times out.
                timed_out = True
                code = -9
                with contextlib.suppress(self._sb._errors.APIError):  # already stopped
                    container.kill()
            wall = time.monotonic() - started
            stdout = container.logs(stdout=True, stderr=False)
            stderr = container.logs(stdout=False, stderr=True)
        finally:
            container.remove(force=True)
        if 128 < code < 128 + 65:
            code = -(code - 128)  # sh reports a program killed by signal N as 128 + N
        return RunResult(
            exit_code=code,
            stdout=stdout[: limits.output_bytes],
            stderr=stderr[: limits.stderr_bytes],
            wall_s=wall,
            timed_out=timed_out,
            output_exceeded=len(stdout) > limits.output_bytes,
        )

    def close(self) -> None:
        # A volume left behind is labelled org.flopnet.sandbox for cleanup.
        with contextlib.suppress(Exception):
            self._sb.client.volumes.get(self.volume).remove(force=True)

    def __enter__(self) -> DockerBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
