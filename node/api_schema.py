"""The local API's contract: each endpoint's parameters and body, checked against untrusted
requests, and the OpenAPI document made from the same declarations (pure, no I/O).

A request that breaks a declaration gets a :class:`ApiError` whose message names the field and
what it must be; the API answers it as ``{"error": ..., "field": ...}`` with a 4xx status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 16 * 1024
MAX_STR = 256
MAX_LIST = 64


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, a sentence, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class Param:
    """One query parameter or body field.

    ``kind`` is ``int``, ``str``, ``bool``, ``enum`` (one of ``choices``) or ``int_list``;
    ``nullable`` lets a body field be JSON null.
    """

    name: str
    kind: str
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    max_len: int = MAX_STR


@dataclass(frozen=True)
class Call:
    """A validated request as a handler sees it."""

    query: Mapping[str, Any] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)
    path: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Call], Any | Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One route: method, path (``{name}`` segments are path parameters), what it does, its
    parameters and body, and the handler. ``stream`` marks server-sent events, ``text`` a
    plain-text answer (Prometheus)."""

    method: str
    path: str
    summary: str
    handler: Handler
    query: tuple[Param, ...] = ()
    body: tuple[Param, ...] | None = None
    tag: str = "node"
    stream: bool = False
    text: bool = False


def _check_value(p: Param, value: Any, where: str) -> Any:
    name = f"{where}.{p.name}" if where else p.name
    if value is None:
        if p.nullable:
            return None
        raise ApiError(400, f"{name} must not be null", p.name)
    if p.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"{name} must be an integer", p.name)
        _range(p, value, name)
        return value
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false", p.name)
        return value
    if p.kind in ("str", "enum"):
        if not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string", p.name)
        if len(value) > p.max_len:
            raise ApiError(400, f"{name} is longer than {p.max_len} characters", p.name)
        if p.kind == "enum" and value not in p.choices:
            raise ApiError(400, f"{name} must be one of {', '.join(p.choices)}", p.name)
        return value
    if p.kind == "int_list":
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise ApiError(400, f"{name} must be a list of at most {MAX_LIST} integers", p.name)
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool):
                raise ApiError(400, f"{name} must hold integers only", p.name)
            _range(p, item, name)
        return list(value)
    raise AssertionError(f"unknown parameter kind {p.kind}")


def _range(p: Param, value: int, name: str) -> None:
    if p.minimum is not None and value < p.minimum:
        raise ApiError(400, f"{name} must be >= {p.minimum}", p.name)
    if p.maximum is not None and value > p.maximum:
        raise ApiError(400, f"{name} must be <= {p.maximum}", p.name)


def check_query(params: Sequence[Param], given: Mapping[str, str]) -> dict[str, Any]:
    """Query parameters from their text; unknown ones are refused (a typo must not pass)."""
    known = {p.name: p for p in params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r}", unknown[0])
    out: dict[str, Any] = {}
    for p in params:
        text = given.get(p.name)
        if text is None:
            if p.required:
                raise ApiError(400, f"query parameter {p.name} is required", p.name)
            out[p.name] = p.default
            continue
        value: Any = text
        if p.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise ApiError(400, f"{p.name} must be an integer", p.name) from None
        elif p.kind == "bool":
            if text not in ("true", "false"):
                raise ApiError(400, f"{p.name} must be true or false", p.name)
            value = text == "true"
        out[p.name] = _check_value(p, value, "")
    return out


def check_body(params: Sequence[Param], body: Any) -> dict[str, Any]:
    """A JSON body: an object with the declared fields only, each valid."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    known = {p.name: p for p in params}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}", unknown[0])
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in body:
            if p.required:
                raise ApiError(400, f"field {p.name} is required", p.name)
            out[p.name] = p.default
            continue
        out[p.name] = _check_value(p, body[p.name], "")
    return out


# -- OpenAPI ----------------------------------------------------------------------------------


def _schema(p: Param) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "int": {"type": "integer"},
        "str": {"type": "string", "maxLength": p.max_len},
        "bool": {"type": "boolean"},
        "enum": {"type": "string", "enum": list(p.choices)},
        "int_list": {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_LIST},
    }
    schema = dict(kinds[p.kind])
    target = schema["items"] if p.kind == "int_list" else schema
    if p.minimum is not None:
        target["minimum"] = p.minimum
    if p.maximum is not None:
        target["maximum"] = p.maximum
    if p.nullable:
        schema = {"oneOf": [schema, {"type": "null"}]}
    if p.description:
        schema["description"] = p.description
    return schema


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error"],
}


def openapi(endpoints: Sequence[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for e in endpoints:
        op: dict[str, Any] = {
            "summary": e.summary,
            "tags": [e.tag],
            "operationId": f"{e.method.lower()}_{e.path.strip('/').replace('/', '_')}".replace(
                "{", ""
            )
            .replace("}", "")
            .replace("-", "_")
            or "root",
            "security": [{"token": []}],
        }
        parameters = [
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "schema": _schema(p),
                **({"description": p.description} if p.description else {}),
            }
            for p in e.query
        ]
        for segment in e.path.split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                parameters.append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
        if parameters:
            op["parameters"] = parameters
        if e.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {p.name: _schema(p) for p in e.body},
                            "required": [p.name for p in e.body if p.required],
                        }
                    }
                },
            }
        if e.stream:
            ok = {"description": "server-sent events", "content": {"text/event-stream": {}}}
        elif e.text:
            ok = {"description": "Prometheus text format", "content": {"text/plain": {}}}
        else:
            ok = {"description": "OK", "content": {"application/json": {}}}
        op["responses"] = {
            "200": ok,
            "400": {"description": "invalid request", "content": error},
            "401": {"description": "missing or wrong token", "content": error},
        }
        if e.body is not None:
            op["responses"]["409"] = {"description": "not possible now", "content": error}
            op["responses"]["413"] = {"description": "body too large", "content": error}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "A flopnet node's local API (127.0.0.1 only). Every request carries "
            "Authorization: Bearer <token>, the token being <data dir>/api.token (mode 0600).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    }
