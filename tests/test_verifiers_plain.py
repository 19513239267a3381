"""The plain-data codec and the relay's checks, without sandboxes (pure functions).

What crosses between the answer's process and the tests' process is decided here: exact builtin
types survive with their type, anything else (a subclass with a lying ``__eq__`` included) is
refused or becomes a reference, and malformed or oversized data is an error, never a crash.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopnet.verifiers import plain
from flopnet.verifiers.code_tests import bindings, parse_tests
from flopnet.verifiers.pyrelay import ID_SPAN, Outcomes, check_reply, check_request, note_report
from flopnet.verifiers.sandbox import seccomp

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.complex_numbers(allow_nan=False)
)
hashables = scalars | st.tuples(scalars, scalars) | st.frozensets(scalars, max_size=3)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner)
        | st.sets(hashables)
        | st.frozensets(hashables)
    ),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal with every type equal too (``1 == 1.0 == True`` does not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _roundtrip(value: Any) -> Any:
    line = plain.dumps(plain.encode(value))
    light = plain.dump_light(plain.encode(value))
    # The sandbox's writer and the relay's writer say the same thing.
    assert plain.dumps(plain.loads(light)) == line
    return plain.decode(plain.load_light(line.decode()))


@settings(max_examples=150, deadline=None)
@given(values)
def test_plain_values_cross_with_their_types(value: Any) -> None:
    assert _same(_roundtrip(value), value)


def test_edge_values() -> None:
    for value in (2**200, -(2**70), math.inf, -0.0, "\ud800", b"\x00\xff", 1j, int, ValueError):
        assert _same(_roundtrip(value), value)
    assert math.isnan(_roundtrip(math.nan))
    assert _same(_roundtrip([True, 1, 1.0]), [True, 1, 1.0])  # no bool/int/float confusion


class LyingInt(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class LyingList(list[int]):
    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.parametrize(
    "value",
    [LyingInt(3), LyingList(), [1, LyingInt(2)], {"k": LyingList()}, object(), len, range(3)],
)
def test_anything_else_is_refused(value: Any) -> None:
    with pytest.raises(plain.PlainError):
        plain.encode(value)
    # ... also in loose mode, which only unwraps the exact collections classes.
    with pytest.raises(plain.PlainError):
        plain.encode(value, loose=True)


def test_loose_mode_sends_collections_dicts_as_dicts() -> None:
    counter = collections.Counter("abca")
    with pytest.raises(plain.PlainError):
        plain.encode(counter)
    assert _same(plain.decode(plain.encode(counter, loose=True)), {"a": 2, "b": 1, "c": 1})

    class MyCounter(collections.Counter[str]):
        pass

    with pytest.raises(plain.PlainError):
        plain.encode(MyCounter("ab"), loose=True)


def test_caps_and_malformed_data_are_errors() -> None:
    deep: list[Any] = []
    for _ in range(plain.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(plain.PlainError):
        plain.encode(deep)
    with pytest.raises(plain.PlainError):
        plain.decode(json.loads(json.dumps(deep)))
    for bad in (
        {"x": 1},
        {"t": 1},
        {"d": [[1]]},
        {"s": [[1, 2]]},  # a list in a set: unhashable
        {"d": [[[1], 2]]},  # a list as a key
        {"b": "???"},
        {"n": "zz"},
        {"c": [1, 2]},  # ints, not floats
        {"y": "open"},  # a builtin, but not a class
        {"h": -1},
        {"g": "not a name"},
        {"t": [1], "s": [2]},
    ):
        with pytest.raises(plain.PlainError):
            plain.decode(bad)
    with pytest.raises(plain.PlainError):
        plain.decode({"h": 1})  # references need a maker
    for line in (b"[1,", b"\xff", b'{"a": NaN2}', b"9" * 5000, b"[" * 100_000):
        with pytest.raises(plain.PlainError):
            plain.loads(line)
    with pytest.raises(plain.PlainError):
        plain.loads(b"x" * (plain.MAX_BYTES + 10))


def test_references() -> None:
    made: list[plain.Ref] = []
    data = plain.encode([plain.Ref(7), plain.Ref("Solution")])
    assert data == [{"h": 7}, {"g": "Solution"}]
    assert plain.decode(data, lambda r: made.append(r) or r.key) == [7, "Solution"]
    assert made == [plain.Ref(7), plain.Ref("Solution")]


# -- the relay's checks --------------------------------------------------------------------------


def test_requests_are_rebuilt_and_stale_references_refused() -> None:
    call = ["call", 3, {"g": "add"}, [1, {"t": [2, 3]}], [["k", {"s": [1]}]]]
    assert check_request(call, floor=0) == call
    assert check_request(["resolve", 1, ["add", "Pair"]], 0) == ["resolve", 1, ["add", "Pair"]]
    fresh = ID_SPAN
    assert check_request(["getattr", 2, {"h": fresh}, "val"], floor=fresh)[2] == {"h": fresh}
    for request in (["iter", 5, {"h": fresh}], ["getitem", 6, {"h": fresh}, {"t": [1, 2]}]):
        assert check_request(request, floor=fresh) == request
    for bad in (
        ["getattr", 2, {"h": 5}, "val"],  # from before a restart
        ["call", 1, 5, [], []],  # a target that is not a reference
        ["call", 1, {"g": "f"}, {"t": []}, []],  # arguments not a list
        ["call", 1, {"g": "f"}, [], [["not a name", 1]]],
        ["exec", 1, "import os"],
        ["len", 1, {"h": fresh}, "extra"],
        ["resolve", 1, ["os.system"]],
        "garbage",
    ):
        with pytest.raises(plain.PlainError):
            check_request(bad, floor=fresh)


def test_replies_are_rebuilt() -> None:
    assert check_reply(["ok", 4, {"d": [[1, [2]]]}], 4, 0) == ["ok", 4, {"d": [[1, [2]]]}]
    assert check_reply(["raise", 4, "ValueError", "x" * 9999], 4, 0)[3] == "x" * 500
    assert check_reply(["raise", 4, "no such name!", "x"], 4, 0)[2] == "AnswerError"
    for bad in (["ok", 5, 1], ["ok", 4, {"h": ID_SPAN}], ["ok", 4], ["pass", 4, True], [1]):
        with pytest.raises(plain.PlainError):
            check_reply(bad, 4, 0)


def test_reports_count_once_and_in_range() -> None:
    out = Outcomes()
    assert not note_report(["call", 1], out)
    for msg in (["test", 0, True, ""], ["total", 2], ["total", 9], ["test", 0, False, "no"]):
        assert note_report(msg, out)
    for msg in (["test", 0, True, ""], ["test", 5, True, ""], ["test", 1, 1, ""]):
        note_report(msg, out)
    assert out.total == 2 and out.tests == {0: (False, "no")}


def test_bindings_take_builtins_and_stdlib_modules_locally() -> None:
    task = {"tests": ["assert set(common([1], [1])) == {1}", "assert math.isclose(area(1), 3.14)"]}
    b = bindings(parse_tests(task))
    # The tests' own set() and math, never the answer's; the answer's functions by reference.
    assert b.remote == ("area", "common") and b.modules == ("math",)
    # MBPP 126: every assert calls a function the task itself names like a builtin.
    b = bindings(parse_tests({"tests": ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"]}))
    assert b.remote == ("sum",)
    check = "def check(candidate):\n    assert candidate(1) == helper(1)\n"
    b = bindings(parse_tests({"tests": check, "entry_point": "f"}))
    assert b.remote == ("f", "helper")


def test_the_seccomp_filter_is_well_formed() -> None:
    if not seccomp.supported():
        pytest.skip("no filter for this machine")
    prog = seccomp.one_process()
    assert len(prog) % 8 == 0 and len(prog) // 8 < 64
