"""The web leaderboard over HTTP: ``flopnet leaderboard serve`` and the daemon's ``/web/`` mount.

Every file is built from a snapshot of the ledger and cached with its ETag. A page is rebuilt
when a chain grows (the validators' heads are the cache key, read with one indexed query per
chain) or when it is older than :data:`PAGE_MAX_AGE_S` (credit turns final with time); a
request that names the ETag it holds gets ``304 Not Modified``. A full chain file never changes
again and is served as immutable; the dumps are built once per UTC day. Builds run in a worker
thread, one at a time, each on its own read-only snapshot.

The pages are public (the ledger is), so this app asks for no token.
"""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from flopnet.protocol.manifest import open_manifest
from flopnet.web import paths
from flopnet.web.pages import CSP
from flopnet.web.site import Ledger, content_type, render

PAGE_MAX_AGE_S = 60.0
CACHE_ENTRIES = 512
_COMPRESSIBLE = (".html", ".css", ".js", ".bin")


@dataclass
class Cached:
    """A built file and what it was built from."""

    key: tuple[Any, ...]
    built: float
    body: bytes
    etag: str
    gz: bytes | None = None


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class WebCache:
    """Built files by path, each valid for the ledger state it was built from."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.validators = list(open_manifest(ledger.manifest).validators)
        self.entries: OrderedDict[str, Cached] = OrderedDict()
        self.builds = 0  # files built, not served from the cache (tests and figures)

    def heads(self) -> tuple[int, ...]:
        """The last seq of each validator's chain (-1: none), one indexed lookup each."""
        uri = f"file:{self.ledger.path}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0)
        except sqlite3.Error:
            return ()
        try:
            return tuple(
                conn.execute(
                    "SELECT COALESCE(MAX(seq), -1) FROM entries WHERE signer = ?", (v,)
                ).fetchone()[0]
                for v in self.validators
            )
        except sqlite3.Error:
            return ()  # not a ledger yet (a node that has just started)
        finally:
            conn.close()

    def key(self, path: str, heads: tuple[int, ...], now: float) -> tuple[Any, ...]:
        if path.startswith("assets/") or path == paths.MANIFEST:
            return ("fixed",)
        if path.startswith("dumps/"):
            return ("day", int(now // 86400))
        return ("heads", heads)  # pages and chain files

    def fresh(self, cached: Cached, key: tuple[Any, ...], path: str, now: float) -> bool:
        if cached.key != key:
            return False
        pages = path.endswith(".html")
        return not pages or now - cached.built < PAGE_MAX_AGE_S

    def get(self, path: str) -> Cached | None:
        """The file at ``path``, from the cache or built now (blocking: run in a thread)."""
        now = time.time()
        key = self.key(path, self.heads(), now)
        cached = self.entries.get(path)
        if cached is not None and self.fresh(cached, key, path, now):
            self.entries.move_to_end(path)
            return cached
        with self.ledger.snapshot(now) as snap:
            body = render(snap, path)
        self.builds += 1
        if body is None:
            return None
        cached = Cached(key, now, body, etag_of(body))
        self.entries[path] = cached
        self.entries.move_to_end(path)
        while len(self.entries) > CACHE_ENTRIES:
            self.entries.popitem(last=False)
        return cached


def cache_control(path: str, body: bytes) -> str:
    """Full chain files never change (a chain only grows): cache them for good."""
    if path.startswith("ledger/") and path.endswith(".bin"):
        count, offset = 0, 0
        while offset + 4 <= len(body):
            offset += 4 + int.from_bytes(body[offset : offset + 4], "big")
            count += 1
        if count == paths.CHUNK:
            return "public, max-age=31536000, immutable"
    if path.startswith("assets/"):
        return "public, max-age=300"
    return "no-cache"


def make_app(ledger: Ledger) -> Starlette:
    """The web leaderboard as an ASGI app (mount it anywhere: every link is relative)."""
    cache = WebCache(ledger)
    limiter = anyio.CapacityLimiter(1)

    async def endpoint(request: Request) -> Response:
        path = request.path_params.get("path", "")
        if path == "":
            if not request.url.path.endswith("/"):
                return RedirectResponse(request.url.path + "/", status_code=308)
            path = "index.html"
        if ".." in path.split("/"):
            return Response("not found\n", status_code=404, media_type="text/plain")
        cached = await anyio.to_thread.run_sync(cache.get, path, limiter=limiter)
        if cached is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        headers = {
            "ETag": cached.etag,
            "Cache-Control": cache_control(path, cached.body),
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Vary": "Accept-Encoding",
        }
        body = cached.body
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
        if gzip_ok and path.endswith(_COMPRESSIBLE):
            if cached.gz is None:
                cached.gz = gzip.compress(cached.body, compresslevel=6, mtime=0)
            body = cached.gz
            headers["Content-Encoding"] = "gzip"
            headers["ETag"] = cached.etag[:-1] + '-gz"'
        if headers["ETag"] in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=content_type(path))

    app = Starlette(
        routes=[Route("/", endpoint), Route("/{path:path}", endpoint)],
    )
    app.state.web_cache = cache
    return app


def web_mount(
    ledger_path: Path, manifest_path: Path | None, data_dir: Path
) -> tuple[str, ASGIApp, bool] | None:
    """The web leaderboard as a public mount at ``/web`` for a daemon's API (see
    :func:`flopnet.node.api.build_api`); None without a manifest (given, in the data dir or
    beside it)."""
    from flopnet.node.local import find_manifest

    manifest_path = manifest_path or find_manifest(data_dir)
    if manifest_path is None:
        return None
    return ("/web", make_app(Ledger.load(ledger_path, manifest_path)), True)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


async def serve(app: Starlette, host: str, port: int, on_ready: Any = None) -> None:
    """Serve ``app`` with Hypercorn on trio until cancelled; ``on_ready(url)`` once bound."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, app, config)
        if on_ready is not None:
            on_ready(binds[0])


def ledger_for(data_dir: Path, manifest: Path | None, ledgers: list[Path]) -> Ledger:
    """The ledger a data dir's site is built from: the copy holding most of the chains."""
    from flopnet.ledger.store import LedgerStore
    from flopnet.node.local import best_ledger, find_manifest
    from flopnet.protocol.errors import ConfigError

    manifest_path = manifest or find_manifest(data_dir)
    if manifest_path is None:
        raise ConfigError(f"no network manifest in {data_dir}: give --manifest")
    validators = set(open_manifest(manifest_path.read_bytes()).validators)

    def coverage(path: Path) -> int:
        with LedgerStore(path) as store:
            return sum(s + 1 for k, (s, _) in store.heads().items() if k in validators)

    return Ledger.load(best_ledger(ledgers, coverage), manifest_path)
