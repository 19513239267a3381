"""The daemon's local HTTP API (Starlette on Hypercorn's trio worker), bound to 127.0.0.1.

Every request must carry ``Authorization: Bearer <token>``; the token lives in
``<data dir>/api.token`` (mode 0600), so only local users who can read the node's files can use it.
The TUI, ``flopnet status`` and the devnet talk to nodes through this API only.

The app is assembled from declared endpoints (:mod:`flopnet.node.api_schema`: parameters and
bodies are checked before a handler runs, and the OpenAPI document is made from the same
declarations), plus mounted ASGI apps, so other parts (web pages, say) add routes without
touching the ones here. The daemon's own endpoints are in :mod:`flopnet.node.endpoints`.
"""

from __future__ import annotations

import hmac
import inspect
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flopnet.node.api_schema import (
    MAX_BODY_BYTES,
    ApiError,
    Call,
    Endpoint,
    Handler,
    check_body,
    check_query,
    openapi,
)
from flopnet.node.local import TOKEN_FILE
from flopnet.protocol.errors import ConfigError, FlopnetError
from flopnet.protocol.identity import load_or_create_private

TOKEN_CHARS = 32  # hex digits: 128 random bits


class StateError(FlopnetError):
    """A command that the node cannot carry out in its present state (answered 409)."""


def load_or_create_token(data_dir: Path) -> str:
    """The API token of a node, created with mode 0600 on first use.

    A token file that others can read, or that is empty or not a token, is refused: an empty
    token would open the API to ``Authorization: Bearer `` (delete the file to make a new one).
    """
    path = data_dir / TOKEN_FILE
    raw = load_or_create_private(path, lambda: secrets.token_hex(TOKEN_CHARS // 2).encode())
    token = raw.decode("ascii", "replace").strip()
    if len(token) != TOKEN_CHARS or any(c not in "0123456789abcdef" for c in token):
        raise ConfigError(f"{path} holds no valid API token; delete it to make a new one")
    return token


def build_app(token: str, routes: dict[str, Callable[[], Any]]) -> Starlette:
    """A Starlette app serving each ``routes`` entry (path -> JSON snapshot) behind the token
    (the simple form of :func:`build_api`)."""
    return build_api(
        token,
        [Endpoint("GET", path, path, _snapshot_handler(fn)) for path, fn in routes.items()],
    )


def _snapshot_handler(fn: Callable[[], Any]) -> Handler:
    def handler(call: Call) -> Any:
        return fn()

    return handler


def build_api(
    token: str,
    endpoints: Sequence[Endpoint],
    *,
    mounts: Sequence[tuple[str, ASGIApp, bool]] = (),
    title: str = "flopnet node",
    version: str = "1",
) -> Starlette:
    """The local API: ``endpoints`` behind the token, ``/openapi.json`` describing them, and
    ``mounts`` (path, ASGI app, public) for other apps such as web pages; a public mount is
    served without the token (it must show only what anyone may see).

    Every answer is JSON (errors too: ``{"error", "field"}``), except server-sent events and
    plain-text endpoints; bodies over 16 KiB are refused before they are read in full.
    """
    if len(token) < TOKEN_CHARS:
        raise ConfigError("the API token is too short to guard anything")
    endpoints = list(endpoints)
    document = openapi(endpoints, title=title, version=version)
    routes: list[BaseRoute] = [Route(e.path, _endpoint(e), methods=[e.method]) for e in endpoints]
    routes.append(Route("/openapi.json", lambda request: JSONResponse(document)))
    routes += [Mount(path, app=app) for path, app, _public in mounts]
    public = tuple(path for path, _app, is_public in mounts if is_public)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return JSONResponse({"error": f"{request.method} is not allowed here"}, 405)
        return JSONResponse({"error": f"no such endpoint: {request.url.path}"}, status)

    return Starlette(
        routes=routes,
        middleware=[Middleware(_TokenGate, token=token, public=public)],
        exception_handlers={404: not_found, 405: not_found},
    )


class _TokenGate:
    """ASGI middleware: every HTTP request but a public mount's needs the bearer token."""

    def __init__(self, app: ASGIApp, token: str, public: tuple[str, ...]) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in self._public):
                given = dict(scope.get("headers") or []).get(b"authorization", b"")
                if not hmac.compare_digest(given, self._expected):
                    response = JSONResponse({"error": "missing or wrong API token"}, 401)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _endpoint(e: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        try:
            query = check_query(e.query, dict(request.query_params))
            body: dict[str, Any] = {}
            if e.body is not None:
                body = check_body(e.body, await _read_json(request))
            call = Call(query, body, dict(request.path_params), dict(request.headers))
            result = e.handler(call)
            if inspect.isawaitable(result):
                result = await result
        except ApiError as exc:
            return JSONResponse(exc.to_json(), exc.status)
        except ConfigError as exc:  # a command refused for what it asked
            return JSONResponse({"error": str(exc)}, 400)
        except StateError as exc:  # a command not possible in the node's present state
            return JSONResponse({"error": str(exc)}, 409)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return handler


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    if not data:
        return {}
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None


async def serve_api(
    app: ASGIApp,
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on host:port (127.0.0.1 unless told); report the base URL once listening."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        task_status.started(binds[0])
