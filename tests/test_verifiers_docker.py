"""The Docker runner's real ``docker`` SDK client path, against a fake Engine API.

No Docker engine runs here, so the test serves the part of the Engine API the runner uses on a
unix socket and "runs containers" with bubblewrap: the create body's command, environment,
working dir, binds, tmpfs and user are honoured, so the runner's wrapper script, limits, output
caps, timeouts and clean-up all really execute. What this cannot show is that a real engine
enforces the requested HostConfig (network none, read-only root, pids, memory): the tests check
that those limits are requested, and the docs say the runner is untested against a real engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socketserver
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from flopnet.verifiers.registry import Verifiers, VerifyOptions
from flopnet.verifiers.sandbox import Limits, SandboxConfig, SandboxUnavailable, select_sandbox
from flopnet.verifiers.sandbox.base import MiB
from flopnet.verifiers.sandbox.docker_runner import DockerSandbox

pytest.importorskip("docker")
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+")


class FakeEngine:
    """State of the fake daemon: images, volumes (temp dirs), containers (bwrap processes)."""

    def __init__(self, image_present: bool = True) -> None:
        self.image_present = image_present
        self.root = Path(tempfile.mkdtemp(prefix="fake-docker-"))
        self.root.chmod(0o755)
        self.volumes: dict[str, Path] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.built: list[int] = []
        self.lock = threading.Lock()

    def bind_dir(self, container: dict[str, Any], target: str) -> tuple[Path, bool] | None:
        for bind in container["body"]["HostConfig"].get("Binds") or []:
            name, dest, mode = bind.split(":")
            if dest == target:
                return self.volumes[name], mode == "rw"
        return None

    def start(self, cid: str) -> None:
        c = self.containers[cid]
        body = c["body"]
        host = body["HostConfig"]
        args = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
        for path in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
        args += ["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for path, opts in (host.get("Tmpfs") or {}).items():
            size = re.search(r"size=(\d+)m", opts)
            if size:
                args += ["--size", str(int(size.group(1)) * MiB)]
            args += ["--tmpfs", path]
        for bind in host.get("Binds") or []:
            name, dest, mode = bind.split(":")
            args += ["--bind" if mode == "rw" else "--ro-bind", str(self.volumes[name]), dest]
        if host.get("ReadonlyRootfs"):
            args += ["--remount-ro", "/"]
        args += ["--chdir", body.get("WorkingDir") or "/", "--clearenv"]
        for item in body.get("Env") or []:
            key, _, value = item.partition("=")
            args += ["--setenv", key, value]
        c["out"], c["err"] = self.root / f"{cid}.out", self.root / f"{cid}.err"
        # Like the engine: the image's unprivileged user unless the create body asks for root.
        as_root = body.get("User") == "0"
        drop = {"user": 65534, "group": 65534, "extra_groups": []}
        extra: dict[str, Any] = {} if as_root else drop
        with c["out"].open("wb") as out, c["err"].open("wb") as err:
            # The engine's pids cgroup, as well as a fake can: RLIMIT_NPROC of the fake's uid.
            pids = host.get("PidsLimit")
            limit = ["/usr/bin/prlimit", f"--nproc={pids}", "--"] if pids else []
            argv = [*args, "--", *limit, *body["Cmd"]]
            c["proc"] = subprocess.Popen(argv, stdout=out, stderr=err, **extra)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: FakeEngine

    def log_message(self, *args: Any) -> None:  # a unix-socket peer has no address to log
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: Any = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        e = self.engine
        path, _, query = self.path.partition("?")
        path = _VERSION_PREFIX.sub("", path)
        body = self._body()
        with e.lock:
            e.calls.append(f"{method} {path}")
        m = re.fullmatch(r"/containers/([0-9a-f]+)(/\w+)?", path)
        cid, action = (m.group(1), m.group(2) or "") if m else ("", "")
        c = e.containers.get(cid)
        if path == "/_ping":
            self._send(200, raw=b"OK")
        elif path == "/version":
            self._send(200, {"ApiVersion": "1.43", "Version": "fake", "MinAPIVersion": "1.24"})
        elif path.startswith("/images/") and path.endswith("/json"):
            if e.image_present:
                self._send(200, {"Id": "sha256:" + "ab" * 32, "RepoTags": ["flopnet-sandbox:1"]})
            else:
                self._send(404, {"message": "No such image"})
        elif path == "/build":
            e.built.append(len(body))
            e.image_present = True
            lines = [{"stream": "Step 1/1 : FROM x\n"}, {"stream": "Successfully built abab\n"}]
            self._send(200, raw=b"".join(json.dumps(x).encode() + b"\r\n" for x in lines))
        elif path == "/volumes/create":
            spec = json.loads(body)
            directory = e.root / spec["Name"]
            directory.mkdir()
            directory.chmod(0o755)
            # Like the engine's copy-up: the image's /box belongs to the sandbox user.
            os.chown(directory, 65534, 65534)
            e.volumes[spec["Name"]] = directory
            self._send(201, {"Name": spec["Name"], "Driver": "local", "Labels": spec["Labels"]})
        elif path.startswith("/volumes/"):
            name = path.split("/")[2]
            if method == "DELETE":
                shutil.rmtree(e.volumes.pop(name), ignore_errors=True)
                self._send(204)
            else:
                self._send(200, {"Name": name, "Driver": "local"})
        elif path == "/containers/create":
            spec = json.loads(body)
            new = uuid.uuid4().hex
            e.created.append(spec)
            e.containers[new] = {"body": spec, "proc": None}
            self._send(201, {"Id": new, "Warnings": []})
        elif c is None:
            self._send(404, {"message": "No such container"})
        elif action == "/json":
            config = {"Tty": False, "Cmd": c["body"]["Cmd"], "Image": c["body"]["Image"]}
            self._send(200, {"Id": cid, "Name": "/" + cid, "Config": config, "State": {}})
        elif action == "/archive" and method == "PUT":
            target = re.search(r"path=([^&]+)", query)
            found = e.bind_dir(c, target.group(1).replace("%2F", "/")) if target else None
            if found is None:
                self._send(400, {"message": "path is not a volume"})
                return
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(found[0], filter="data")
            self._send(200)
        elif action == "/start":
            e.start(cid)
            self._send(204)
        elif action == "/wait":
            code = c["proc"].wait()
            # The client may have given up waiting (its wall-time limit): then sending fails.
            with contextlib.suppress(OSError):
                self._send(200, {"StatusCode": code if code >= 0 else 128 - code})
        elif action == "/logs":
            stream = 1 if "stdout=1" in query else 2
            data = (c["out"] if stream == 1 else c["err"]).read_bytes()
            frame = bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
            self._send(200, raw=frame if data else b"")
        elif action == "/kill":
            c["proc"].kill()
            self._send(204)
        elif method == "DELETE" and action == "":
            if c["proc"] is not None and c["proc"].poll() is None:
                c["proc"].kill()
                c["proc"].wait()
            del e.containers[cid]
            self._send(204)
        else:
            self._send(404, {"message": f"fake engine: no {method} {path}"})


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(engine: FakeEngine) -> tuple[_Server, str]:
    sock = engine.root / "docker.sock"
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = _Server(str(sock), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"unix://{sock}"


@pytest.fixture
def engine() -> Iterator[tuple[FakeEngine, str]]:
    fake = FakeEngine()
    server, url = _serve(fake)
    yield fake, url
    server.shutdown()
    server.server_close()
    for c in fake.containers.values():
        if c["proc"] is not None and c["proc"].poll() is None:
            c["proc"].kill()
    shutil.rmtree(fake.root, ignore_errors=True)


def _run(url: str, source: str, **limits: Any) -> Any:
    sandbox = DockerSandbox(base_url=url)
    with sandbox.open_box() as box:
        box.write("main.py", source.encode())
        return box.run(["python3", "-I", "-S", "/box/main.py"], limits=Limits(**limits))


# -- tests -------------------------------------------------------------------------------------


def test_requested_isolation(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    r = _run(url, "import sys; print('hi', sys.stdin.read())", wall_s=10, memory_mb=256)
    assert r.exit_code == 0 and r.stdout.startswith(b"hi")
    helper, run = fake.created
    # The helper that copies files in is created, never started; only the run container is.
    assert helper["Cmd"] == ["true"] and sum(c.endswith("/start") for c in fake.calls) == 1
    host = run["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 64 and host["Memory"] == 256 * MiB == host["MemorySwap"]
    assert [b.split(":")[1:] for b in host["Binds"]] == [["/box", "ro"]]  # nothing else mounted
    assert run["User"] == "10001" and "size=64m" in host["Tmpfs"]["/tmp"]
    assert host["IpcMode"] == "private" and host["ShmSize"] == 64 * MiB
    assert any(a.startswith("--as=") for a in run["Cmd"])
    assert not any(a.startswith("--nproc") for a in run["Cmd"])  # the pids cgroup caps it
    assert not any(e.startswith(("FLOPNET", "DOCKER")) for e in run["Env"])
    assert fake.volumes == {} and fake.containers == {}  # everything removed afterwards


def test_code_verification_through_docker(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    options = VerifyOptions(sandbox="docker", docker_url=url)
    task = {"task_type": "code", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    with Verifiers(options, workers=1) as v:
        assert v.sandbox().kind == "docker"
        good = v.verify(task, "</think>```python\ndef add(a, b):\n    return a + b\n```")
        bad = v.verify(task, "</think>```python\ndef add(a, b):\n    return a - b\n```")
        stdio = {"task_type": "code", "tests": [{"input": "2 3\n", "output": "5\n"}]}
        cpp = "#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}"
        compiled = v.verify(stdio, f"</think>```cpp\n{cpp}\n```") if shutil.which("g++") else None
    assert good.passed and "sandbox: docker" in good.reasons
    assert bad.score == 0.5
    assert compiled is None or compiled.passed, compiled
    # Every run, the compiler's included, is the unprivileged sandbox user's.
    assert {c["User"] for c in fake.created if c["Cmd"] != ["true"]} == {"10001"}


def test_wall_time_kill_and_output_cap(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    r = _run(url, "import time; time.sleep(60)", wall_s=1)
    assert r.timed_out
    assert any(c.endswith("/kill") for c in fake.calls) and fake.containers == {}
    r = _run(url, "import sys\nwhile True: sys.stdout.write('x' * 65536)\n", output_bytes=MiB)
    assert r.output_exceeded and len(r.stdout) == MiB


@pytest.mark.parametrize(
    ("attack", "check"),
    [
        ("while True: pass", lambda r: r.exit_code != 0 and r.wall_s < 8),
        (
            "import os\nn = 0\ntry:\n    while True:\n        os.fork() or os._exit(0)\n"
            "        n += 1\nexcept OSError:\n    pass\nprint('done')",
            lambda r: r.wall_s < 8,
        ),
        ("x = bytearray(8 * 1024**3)", lambda r: r.exit_code != 0),
        (
            "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 53))",
            lambda r: r.exit_code != 0,
        ),
        ("open('/usr/x', 'w')", lambda r: r.exit_code != 0),
        ("open('/box/x', 'w')", lambda r: r.exit_code != 0),
    ],
)
def test_attacks_through_the_docker_client(
    engine: tuple[FakeEngine, str], attack: str, check: Any
) -> None:
    _, url = engine
    r = _run(url, attack, wall_s=8, cpu_s=1, memory_mb=256, processes=32)
    assert check(r), r


def test_image_built_when_missing() -> None:
    fake = FakeEngine(image_present=False)
    server, url = _serve(fake)
    try:
        DockerSandbox(base_url=url).probe()
        assert fake.built and fake.built[0] > 0 and fake.image_present
        assert "POST /build" in fake.calls
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(fake.root, ignore_errors=True)


def test_no_daemon(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/missing.sock"
    with pytest.raises(SandboxUnavailable):
        DockerSandbox(base_url=url)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        select_sandbox("docker", docker_url=url)
    assert SandboxConfig(kind="docker").docker_image == "flopnet-sandbox:1"
