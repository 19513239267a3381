"""The Docker runner, through the ``docker`` SDK, for machines where a Docker daemon answers.

Tested against a real engine (Debian's docker.io 20.10, ``make test-images``:
tests/test_docker_images.py runs the bubblewrap attack set through it) and, in the ordinary
suite, against a fake Engine API on a unix socket (tests/test_verifiers_docker.py). The image is
``docker/sandbox.Dockerfile``, built by scripts/images.sh (or here, offline, when missing).

A box is a Docker volume; the image's ``/box`` belongs to the sandbox user, so a new volume
mounted there does too. Files are copied in with ``put_archive`` through a created (never
started) helper container that mounts the volume read-write; runs mount it read-only (build runs:
read-write) in a new container each, always as the unprivileged sandbox user: no network,
read-only root, every capability dropped, no-new-privileges, a size-capped ``/tmp`` tmpfs and
``/dev/shm``, memory (swap included: the same limit), pids and CPU limits, and ``prlimit``
inside for CPU time, address space and file size. The program's output goes to files on the
tmpfs, capped by ``prlimit --fsize``, and only ``head -c`` of them reaches the container log.
Removing the container ends every process it held (a left-over daemon included).
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
#: The local base image with the tools, made by scripts/images.sh (debootstrap, no registry).
BASE_IMAGE = "flopnet/sandbox-base:bookworm"
BUILD_HINT = "build it with scripts/images.sh (needs no registry)"
#: The uid of the image's ``sandbox`` user (see docker/sandbox.Dockerfile). Not the node
#: image's uid (10000): a containerised node's threads must not count against its limits.
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
        requests: Any = importlib.import_module("requests")  # the SDK's transport
        self.request_errors: tuple[type[Exception], ...] = (requests.RequestException,)
        self.transport_errors = (docker.errors.DockerException, requests.RequestException)
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
        if not self.dockerfile.is_file():
            raise SandboxUnavailable(f"Docker image {self.image} is missing: {BUILD_HINT}")
        try:
            # No network in the build: the base image already holds the tools.
            self.client.images.build(
                path=str(self.dockerfile.parent),
                dockerfile=self.dockerfile.name,
                tag=self.image,
                rm=True,
                network_mode="none",
                buildargs={"BASE_IMAGE": BASE_IMAGE},
            )
        except Exception as exc:
            raise SandboxUnavailable(
                f"cannot build the sandbox image from {self.dockerfile} ({exc}): {BUILD_HINT}"
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
            # Compilers too: the box belongs to this user, and root without capabilities
            # could not write it anyway.
            "user": SANDBOX_USER,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777"},
            "ipc_mode": "private",
            "shm_size": f"{limits.tmpfs_mb}m",
            "mem_limit": memory,
            "memswap_limit": memory,  # no swap beyond the memory limit
            "pids_limit": limits.processes,
            "nano_cpus": 1_000_000_000,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "hostname": "sandbox",
            "labels": _LABEL,
        }

    def _command(self, argv: Sequence[str], limits: Limits, stdin_path: str) -> list[str]:
        # No --nproc: RLIMIT_NPROC counts every process of the uid on the host, so parallel
        # runs (all uid 10001) would starve each other; the pids cgroup caps each container.
        prlimits = [a for a in limits.prlimit_args() if not a.startswith("--nproc=")]
        return [
            "sh",
            "-c",
            _WRAPPER,
            "sh",
            stdin_path,
            str(limits.output_bytes + 1),
            str(limits.stderr_bytes),
            "prlimit",
            *prlimits,
            "--",
            *argv,
        ]

    def run(
        self, argv: Sequence[str], *, limits: Limits, stdin: bytes = b"", build: bool = False
    ) -> RunResult:
        stdin_path = "/dev/null"
        if stdin:  # most runs have none: no helper container (and its cost) for them
            self._runs += 1
            name = f".stdin-{self._runs}"
            self._pending[name] = stdin
            stdin_path = f"{BOX}/{name}"
        try:
            self._upload()
            return self._run_container(self._command(argv, limits, stdin_path), limits, build)
        except self._sb.transport_errors as exc:
            raise SandboxError(f"docker: {exc}") from None

    def _run_container(self, command: list[str], limits: Limits, build: bool) -> RunResult:
        container = self._sb.client.containers.create(
            self._sb.image, command, **self._create_kwargs(limits, build)
        )
        started = time.monotonic()
        timed_out = False
        try:
            container.start()
            try:
                status = container.wait(timeout=limits.wall_s)
                code = int(status.get("StatusCode", -1))
            except self._sb.request_errors:
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
