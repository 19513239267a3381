"""How the TUI reaches a node: its local API over HTTP (never libp2p, never torch).

A :class:`NodeTarget` names a node: its data directory (``node.json`` holds the API's URL,
``api.token`` the token), or a URL and a token file for a node reached through an SSH-forwarded
port. :class:`NodeClient` reads documents, sends commands, and follows the server-sent events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MAX_EVENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class NodeTarget:
    """A node to show: a display name, and where its API is."""

    name: str
    data_dir: Path | None = None
    url: str | None = None
    token_file: Path | None = None

    def endpoint(self) -> tuple[str, str] | None:
        """(API base URL, token) once the node is up, else None."""
        try:
            if self.url is not None and self.token_file is not None:
                return self.url.rstrip("/"), self.token_file.read_text().strip()
            if self.data_dir is None:
                return None
            info = json.loads((self.data_dir / "node.json").read_text())
            token = (self.data_dir / "api.token").read_text().strip()
        except (OSError, ValueError, KeyError):
            return None
        return str(info["api_url"]), token


def attach_targets(data_dir: Path) -> list[NodeTarget]:
    """The node in ``data_dir``, or every node one level below it (a devnet's directory)."""
    if (data_dir / "node.json").exists():
        return [NodeTarget(data_dir.name, data_dir)]
    targets = [NodeTarget(p.parent.name, p.parent) for p in sorted(data_dir.glob("*/node.json"))]
    if not targets:
        raise SystemExit(f"flopnet: error: no running node found under {data_dir}")
    return targets


class ApiFailure(Exception):
    """A command the node refused (its reason) or could not be reached for."""


class NodeClient:
    """One node's API: documents, commands and the event stream."""

    def __init__(self, target: NodeTarget, timeout: float = 3.0) -> None:
        self.target = target
        self._http = httpx.AsyncClient(timeout=timeout)
        self.last_error = ""

    async def aclose(self) -> None:
        await self._http.aclose()

    def _endpoint(self) -> tuple[str, dict[str, str]] | None:
        found = self.target.endpoint()
        if found is None:
            self.last_error = "the node is starting or its files are not readable"
            return None
        url, token = found
        return url, {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, **params: Any) -> Any:
        """A JSON document, or None when the node cannot answer (``last_error`` says why)."""
        found = self._endpoint()
        if found is None:
            return None
        url, headers = found
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = await self._http.get(url + path, headers=headers, params=query)
            response.raise_for_status()
            self.last_error = ""
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.last_error = f"{path}: {exc}"
            return None

    async def send(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """A command; raises ApiFailure with the node's own reason when it is refused."""
        found = self._endpoint()
        if found is None:
            raise ApiFailure(self.last_error)
        url, headers = found
        try:
            response = await self._http.request(method, url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiFailure(f"the node did not answer: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if response.status_code >= 400:
            raise ApiFailure(str(answer.get("error", response.status_code)))
        return answer

    async def events(self, last_id: int | None = None) -> AsyncIterator[tuple[int, str, Any]]:
        """(id, kind, data) of each server-sent event until the stream ends; the first is
        ``open`` (with the last id), once the node has answered."""
        found = self._endpoint()
        if found is None:
            return
        url, headers = found
        if last_id is not None:
            headers = {**headers, "Last-Event-ID": str(last_id)}
        timeout = httpx.Timeout(5.0, read=60.0)  # the node sends a keep-alive every 15 s
        async with self._http.stream("GET", url + "/events", headers=headers, timeout=timeout) as r:
            r.raise_for_status()
            yield last_id or 0, "open", {}  # the stream is up (events follow as they happen)
            event_id, kind, data = 0, "message", ""
            async for line in r.aiter_lines():
                if len(line) > MAX_EVENT_BYTES:
                    continue
                if line == "":
                    body = _json_or_none(data)
                    if body is not None:
                        yield event_id, kind, body
                    kind, data = "message", ""
                elif line.startswith("id:"):
                    value = line[3:].strip()
                    event_id = int(value) if value.isdigit() else event_id
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()


def _json_or_none(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
