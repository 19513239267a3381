"""The daemon's local HTTP API (Starlette on Hypercorn's trio worker), bound to 127.0.0.1.

Every request must carry ``Authorization: Bearer <token>``; the token lives in
``<data dir>/api.token`` (mode 0600), so only local users who can read the node's files can use it.
The TUI and the devnet talk to nodes through this API only.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flopnet.node.local import TOKEN_FILE
from flopnet.protocol.errors import ConfigError

TOKEN_CHARS = 32  # hex digits: 128 random bits


def load_or_create_token(data_dir: Path) -> str:
    """The API token of a node, created with mode 0600 on first use.

    A token file that others can read, or that is empty or not a token, is refused: an empty
    token would open the API to ``Authorization: Bearer `` (delete the file to make a new one).
    """
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} has mode {mode:o}; it must be readable by its owner only (chmod 600)"
            ) from None
        token = path.read_text().strip()
        if len(token) != TOKEN_CHARS or any(c not in "0123456789abcdef" for c in token):
            raise ConfigError(
                f"{path} holds no valid API token; delete it to make a new one"
            ) from None
        return token
    token = secrets.token_hex(TOKEN_CHARS // 2)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


def build_app(token: str, routes: dict[str, Callable[[], Any]]) -> Starlette:
    """A Starlette app serving each ``routes`` entry (path -> JSON snapshot) behind the token."""
    if len(token) < TOKEN_CHARS:
        raise ConfigError("the API token is too short to guard anything")
    expected = f"Bearer {token}".encode()

    def endpoint(snapshot: Callable[[], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> JSONResponse:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong API token"}, status_code=401)
            return JSONResponse(snapshot())

        return handler

    return Starlette(routes=[Route(path, endpoint(fn)) for path, fn in routes.items()])


async def serve_api(
    app: Starlette, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on 127.0.0.1:port; report the base URL once listening."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(binds[0])
