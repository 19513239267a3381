"""Plain data across the sandbox wall: strict, type-preserving JSON for Python values.

The code verifier runs the task's tests and the untrusted answer in two sandboxed processes and
relays every call between them (:mod:`verifiers.pyrelay`). What crosses is *plain data* only:
``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``,
``dict``, ``set``, ``frozenset`` and builtin classes (``int`` itself, as in ``isinstance(x, t)``),
checked by exact type (a subclass of ``int`` with a lying ``__eq__`` is not an ``int`` here), plus
*references* to objects that stay in the answer's process. Decoding builds fresh builtin values,
so the tests compare only values built by trusted code.

One value is one JSON document: ``null``, booleans, strings, numbers (a JSON number with a ``.``
or exponent is a float, else an int; ints beyond 2**53 travel as ``{"n": hex}``) and arrays (lists)
map to themselves; every other type is a one-key object: ``{"t": [...]}`` tuple, ``{"b": base64}``
bytes, ``{"d": [[k, v], ...]}`` dict, ``{"s": [...]}`` set, ``{"f": [...]}`` frozenset, ``{"c":
[re, im]}`` complex, ``{"y": name}`` a builtin class, ``{"h": id}`` a reference to an object by
id, ``{"g": name}`` a reference to a global by name.

``encode(..., loose=True)`` (the answer's side only) also sends the standard library's
``Counter``, ``OrderedDict`` and ``defaultdict`` (exactly those classes) as the dicts they hold,
and numpy's scalars as the Python numbers they hold: reference solutions return them where tests
compare with a dict or a number. Loose or not, what arrives is plain data; the receiving side
never runs code of the sender's.

This file is also copied into the sandbox and imported there by the harnesses, so it uses the
standard library only and must run on the sandbox's system Python. Start-up time counts there
(two interpreters per answer), so the sandbox side avoids every module that pulls in ``re`` or
``enum`` (``json``, ``typing``, ``collections``): it writes JSON with :func:`dump_light` and reads
the relay's with :func:`load_light` (the C scanner behind ``json``). The relay itself reads the
sandboxes' untrusted lines with :func:`loads` (``json``, with its clean errors).
"""

from __future__ import annotations

import _json
import binascii
import builtins
import sys

# ``typing`` costs a sandboxed interpreter ~10 ms of CPU to import, paid twice per answer: the
# annotations are strings (``from __future__``), so only type checkers need these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Deepest nesting accepted (the harnesses' own recursion stays far below Python's limit).
MAX_DEPTH = 100
#: Most elements (containers and scalars together) in one value.
MAX_NODES = 1_000_000
#: Longest encoded message, in bytes.
MAX_BYTES = 8 * 1024 * 1024
_SAFE_INT = 2**53
_TAGS = frozenset("tbdsfhgncy")
_LOOSE_DICTS = ("Counter", "OrderedDict", "defaultdict")


def _loose_dict(t: type) -> bool:
    """``t`` is exactly collections.Counter, OrderedDict or defaultdict (nothing to import: an
    answer that has those objects has imported collections)."""
    cols = sys.modules.get("collections")
    return cols is not None and any(t is getattr(cols, n, None) for n in _LOOSE_DICTS)


class PlainError(ValueError):
    """A value is not plain data, or encoded data is malformed or over a cap."""


class Ref:
    """A reference to an object living in the answer's process (by id or by global name)."""

    __slots__ = ("key",)

    def __init__(self, key: int | str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and type(other.key) is type(self.key) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("ref", self.key))

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


def _numpy_scalar(v: Any) -> bool:
    numpy = sys.modules.get("numpy")  # never imported here: only an answer that has it uses it
    return numpy is not None and isinstance(v, numpy.generic) and type(v).__module__ == "numpy"


def _caps() -> Callable[[int], None]:
    """A check to call at each element of one value: the element and depth caps."""
    left = [MAX_NODES]

    def step(depth: int) -> None:
        left[0] -= 1
        if left[0] < 0:
            raise PlainError("value has too many elements")
        if depth > MAX_DEPTH:
            raise PlainError("value is nested too deeply")

    return step


def encode(
    value: Any, ref_of: Callable[[Any], Ref | None] | None = None, loose: bool = False
) -> Any:
    """The JSON-ready form of ``value``; PlainError for anything that is not plain data.

    ``ref_of`` may map a non-plain object to a :class:`Ref` (the harnesses' own proxies do that);
    without it, or when it returns None, such an object is an error.
    """
    step = _caps()

    def enc(v: Any, depth: int) -> Any:
        step(depth)
        t = type(v)
        if v is None or t is bool or t is str:
            return v
        if t is int:
            return v if -_SAFE_INT < v < _SAFE_INT else {"n": hex(v)}
        if t is float:
            return v
        if t is list:
            return [enc(x, depth + 1) for x in v]
        if t is tuple:
            return {"t": [enc(x, depth + 1) for x in v]}
        if t is bytes:
            return {"b": binascii.b2a_base64(v, newline=False).decode("ascii")}
        if loose and _numpy_scalar(v):
            return enc(v.item(), depth)
        if t is dict or (loose and _loose_dict(t)):
            return {"d": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in dict.items(v)]}
        if t is set:
            return {"s": [enc(x, depth + 1) for x in v]}
        if t is frozenset:
            return {"f": [enc(x, depth + 1) for x in v]}
        if t is complex:
            return {"c": [v.real, v.imag]}
        if t is type:
            name = type.__getattribute__(v, "__name__")
            if getattr(builtins, name, None) is v:
                return {"y": name}
        if t is Ref:
            return {"h": v.key} if type(v.key) is int else {"g": v.key}
        ref = ref_of(v) if ref_of is not None else None
        if ref is None:
            raise PlainError(f"not plain data: {t.__name__}")
        return enc(ref, depth)

    return enc(value, 0)


def decode(data: Any, make_ref: Callable[[Ref], Any] | None = None) -> Any:
    """A fresh Python value from :func:`encode`'s form; PlainError when malformed.

    References become ``make_ref(Ref)`` (an error without ``make_ref``).
    """
    step = _caps()

    def dec(d: Any, depth: int) -> Any:
        step(depth)
        t = type(d)
        if d is None or t is bool or t is str or t is float:
            return d
        if t is int:
            return d
        if t is list:
            return [dec(x, depth + 1) for x in d]
        if t is not dict or len(d) != 1:
            raise PlainError(f"malformed plain data ({t.__name__})")
        ((tag, body),) = d.items()
        if tag not in _TAGS:
            raise PlainError(f"unknown tag {tag!r}")
        if tag in "tsf":
            items = [dec(x, depth + 1) for x in _list(body)]
            if tag == "t":
                return tuple(items)
            try:
                return set(items) if tag == "s" else frozenset(items)
            except TypeError as exc:  # an unhashable element of a set
                raise PlainError(str(exc)) from None
        if tag == "d":
            out = {}
            for pair in _list(body):
                if type(pair) is not list or len(pair) != 2:
                    raise PlainError("malformed dict item")
                key = dec(pair[0], depth + 1)
                try:
                    out[key] = dec(pair[1], depth + 1)
                except TypeError as exc:
                    raise PlainError(str(exc)) from None
            return out
        if tag == "b":
            if type(body) is not str:
                raise PlainError("malformed bytes")
            try:
                return binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
            except (ValueError, UnicodeEncodeError):
                raise PlainError("malformed bytes") from None
        if tag == "c":
            if type(body) is not list or len(body) != 2 or {type(x) for x in body} != {float}:
                raise PlainError("malformed complex")
            return complex(body[0], body[1])
        if tag == "y":
            cls = getattr(builtins, body, None) if type(body) is str else None
            if not isinstance(cls, type):
                raise PlainError("malformed builtin class")
            return cls
        if tag == "n":
            if type(body) is not str or len(body) > MAX_BYTES:
                raise PlainError("malformed big int")
            try:
                return int(body, 16)
            except ValueError:
                raise PlainError("malformed big int") from None
        ref = _ref(tag, body)
        if make_ref is None:
            raise PlainError("unexpected reference")
        return make_ref(ref)

    return dec(data, 0)


def _list(body: Any) -> list[Any]:
    if type(body) is not list:
        raise PlainError("malformed container")
    return body


def _ref(tag: str, body: Any) -> Ref:
    if tag == "h" and type(body) is int and 0 <= body < 2**62:
        return Ref(body)
    if tag == "g" and type(body) is str and body.isidentifier() and len(body) <= 200:
        return Ref(body)
    raise PlainError("malformed reference")


def dumps(message: Any) -> bytes:
    """One message (already in encoded form) as a JSON line (the relay's side)."""
    import json

    try:
        line = json.dumps(message, separators=(",", ":"), allow_nan=True).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise PlainError(f"cannot serialise: {exc}") from None
    if len(line) > MAX_BYTES:
        raise PlainError("message too large")
    return line + b"\n"


def loads(line: bytes) -> Any:
    """A message from one JSON line; PlainError for anything malformed or too large."""
    import json

    if len(line) > MAX_BYTES + 1:
        raise PlainError("message too large")
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__)
    except (ValueError, RecursionError, UnicodeDecodeError, KeyError) as exc:
        raise PlainError(f"malformed message: {str(exc)[:100]}") from None


# JSON's NaN/Infinity extension: floats keep every value Python has.
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_FLOAT_WORDS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def dump_light(message: Any) -> bytes:
    """:func:`dumps` without importing ``json`` (the sandbox's side); PlainError if too large."""
    parts: list[str] = []

    def write(v: Any) -> None:
        t = type(v)
        if v is None:
            parts.append("null")
        elif t is bool:
            parts.append("true" if v else "false")
        elif t is int:
            parts.append(int.__repr__(v))
        elif t is float:
            text = float.__repr__(v)
            parts.append(_FLOAT_WORDS.get(text, text))
        elif t is str:
            parts.append(_json.encode_basestring_ascii(v))
        elif t is list:
            parts.append("[")
            for i, x in enumerate(v):
                if i:
                    parts.append(",")
                write(x)
            parts.append("]")
        elif t is dict:
            parts.append("{")
            for i, (k, x) in enumerate(v.items()):
                if type(k) is not str:
                    raise PlainError("message keys must be strings")
                parts.append(("," if i else "") + _json.encode_basestring_ascii(k) + ":")
                write(x)
            parts.append("}")
        else:
            raise PlainError(f"cannot serialise {t.__name__}")

    try:
        write(message)
    except RecursionError:
        raise PlainError("message nested too deeply") from None
    line = "".join(parts).encode("ascii")
    if len(line) > MAX_BYTES:
        raise PlainError("message too large")
    return line + b"\n"


class _ScanContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder."""

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = _CONSTANTS.__getitem__
        self.memo: dict[str, str] = {}


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]


def load_light(text: str) -> Any:
    """:func:`loads` without importing ``json``, for text the relay wrote (the sandbox's side)."""
    text = text.strip()
    try:
        value, end = _scan(text, 0)
    except Exception as exc:  # the C scanner's errors differ by version: StopIteration, ...
        raise PlainError(f"malformed message: {type(exc).__name__}") from None
    if end != len(text):
        raise PlainError("malformed message: trailing data")
    return value
