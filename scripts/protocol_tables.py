"""Print the generated tables of docs/protocol.md: stream protocols and message fields.

    python scripts/protocol_tables.py          # the message field tables
    python scripts/protocol_tables.py --rpcs   # the stream protocol table

``tests/test_docs.py`` checks that the doc holds exactly this text between its markers.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping
from typing import Any

from flopnet.protocol.catalog import RPCS
from flopnet.protocol.codec import DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEMS, DEFAULT_MAX_STR
from flopnet.protocol.messages import MAX_ENVELOPE_BYTES, MESSAGE_TYPES, CreditBody

_NAMES = {int: "int", float: "float64", str: "str", bytes: "bin", bool: "bool"}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"array of {_type_name(typing.get_args(tp)[0])}"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds(tp: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(tp) is tuple:
        parts = [f"≤ {meta.get('max_items', DEFAULT_MAX_ITEMS)} items"]
        inner = _bounds(typing.get_args(tp)[0], meta.get("item", {}))
        return "; ".join([*parts, f"each {inner}"] if inner else parts)
    if tp is int:
        return f"{meta.get('min', 0)} ≤ v ≤ {meta.get('max', '2^63−1')}"
    if tp is float:
        lo, hi = meta.get("min", "−∞"), meta.get("max", "∞")
        return f"finite, {lo} ≤ v ≤ {hi}"
    if tp in (str, bytes):
        if "len" in meta:
            return f"exactly {meta['len']} bytes"
        default = DEFAULT_MAX_STR if tp is str else DEFAULT_MAX_BYTES
        return f"≤ {meta.get('max_len', default)} {'chars' if tp is str else 'bytes'}"
    return ""


def tables() -> str:
    """Markdown tables of every message type and the credit body."""
    out: list[str] = []
    for name, cls in [*MESSAGE_TYPES.items(), ("credit body", CreditBody)]:
        hints = typing.get_type_hints(cls)
        cap = MAX_ENVELOPE_BYTES.get(name)
        out.append(f"#### `{name}`" + (f" (envelope ≤ {cap:,} bytes)" if cap else ""))
        out += ["", (cls.__doc__ or "").strip().splitlines()[0], ""]
        out += ["| field | type | bounds |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            out.append(f"| `{f.name}` | {_type_name(tp)} | {_bounds(tp, f.metadata)} |")
        out.append("")
    return "\n".join(out)


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def rpc_table() -> str:
    """The stream protocols, as declared in ``flopnet.protocol.catalog``."""
    out = [
        "| protocol id | request | answers | caps (request / response) | deadline |",
        "|---|---|---|---|---|",
    ]
    for rpc in RPCS:
        answers = " or ".join(f"`{r.TYPE}`" for r in rpc.responses)
        caps = f"{_size(rpc.limits.max_request)} / {_size(rpc.limits.max_response)}"
        row = f"| `{rpc.protocol_id}` | `{rpc.request.TYPE}` | {answers} | {caps}"
        out.append(f"{row} | {rpc.timeout:g} s |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(rpc_table() if "--rpcs" in sys.argv else tables())
