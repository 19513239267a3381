"""LeetCode problems in JavaScript, C++ and Rust, as SYNTHETIC-1 posed its problems in several
languages.

rllm's LeetCode records hold a Python starter (``class Solution`` with one typed method) and
Python tests (``assert candidate(nums=[3, 1], k=2) == 4``). A problem is ported when its types
are the port's (ints, bools, strings and lists of them; no floats, trees or linked lists) and
every test is a call with literal arguments compared with ``==`` to a literal: the starter is
rendered in the other language (:func:`flopnet.verifiers.ports.skeleton`) in place of the
Python one, and the calls travel as data in the task's verifier spec, which the code verifier
runs through its harness (:mod:`flopnet.verifiers.ports`). Pure.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from flopnet.node.tasks.base import UnusableRecord
from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.ports import INT32, fits, parse_spec, skeleton

# How rllm's statements show the starter, and what ours says instead.
_STARTER = re.compile(
    r"Please complete the following python code precisely:\s*```python\n(?P<code>.*?)```", re.S
)
NAMES = {"javascript": "JavaScript", "cpp": "C++", "rust": "Rust"}
_SIMPLE = {"int": "int", "bool": "bool", "str": "str"}


def _port_type(annotation: ast.expr | None) -> str:
    """A Python annotation in the port's types (``int`` before widths are known)."""
    if isinstance(annotation, ast.Name) and annotation.id in _SIMPLE:
        return _SIMPLE[annotation.id]
    if (
        isinstance(annotation, ast.Subscript)
        and isinstance(annotation.value, ast.Name)
        and annotation.value.id == "List"
    ):
        return f"list<{_port_type(annotation.slice)}>"
    shown = ast.unparse(annotation) if annotation is not None else "no annotation"
    raise UnusableRecord(f"no port of the type {shown}")


def _ints(value: Any) -> list[int]:
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def _widened(kind: str, values: list[Any]) -> str:
    """``kind`` with ``long`` for ``int`` where a value needs 64 bits."""
    if any(not INT32[0] <= i <= INT32[1] for v in values for i in _ints(v)):
        return kind.replace("int", "long")
    return kind


def _method(code: str) -> ast.FunctionDef:
    try:
        tree = ast.parse(code.rstrip() + "\n        pass\n")
    except SyntaxError as exc:
        raise UnusableRecord(f"the starter does not parse: {exc.msg}") from None
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Solution"]
    methods = [f for f in classes[0].body if isinstance(f, ast.FunctionDef)] if classes else []
    if len(methods) != 1:
        raise UnusableRecord("the starter is not one method of class Solution")
    return methods[0]


def _calls(check_source: str, names: list[str]) -> list[tuple[list[Any], Any]]:
    """(arguments by position, expected) of every ``assert candidate(...) == value``."""
    try:
        tree = ast.parse(check_source)
    except SyntaxError as exc:
        raise UnusableRecord(f"the tests do not parse: {exc.msg}") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise UnusableRecord("no check function in the tests")
    out = []
    for stmt in checks[0].body:
        test = stmt.test if isinstance(stmt, ast.Assert) else None
        if not (
            isinstance(test, ast.Compare)
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.left, ast.Call)
            and isinstance(test.left.func, ast.Name)
            and test.left.func.id == "candidate"
        ):
            raise UnusableRecord("a test is not `assert candidate(...) == value`")
        call = test.left
        try:
            args = [ast.literal_eval(a) for a in call.args]
            named = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            expected = ast.literal_eval(test.comparators[0])
        except (ValueError, TypeError, SyntaxError):
            raise UnusableRecord("a test's arguments are not plain values") from None
        for name in names[len(args) :]:
            if name not in named:
                raise UnusableRecord(f"a test does not pass {name}")
            args.append(named.pop(name))
        if named or len(args) != len(names):
            raise UnusableRecord("a test's arguments do not match the method")
        out.append((args, expected))
    if not out:
        raise UnusableRecord("no tests")
    return out


def port_spec(statement: str, check_source: str) -> dict[str, Any]:
    """The ported tests (``{"signature", "calls"}``) of a LeetCode record; UnusableRecord when
    the problem cannot be posed outside Python."""
    starter = _STARTER.search(statement)
    if starter is None:
        raise UnusableRecord("no Python starter in the statement")
    method = _method(starter.group("code"))
    params = method.args.args[1:]  # after self
    names = [a.arg for a in params]
    calls = _calls(check_source, names)
    kinds = [
        _widened(_port_type(a.annotation), [args[i] for args, _ in calls])
        for i, a in enumerate(params)
    ]
    returns = _widened(_port_type(method.returns), [expected for _, expected in calls])
    spec = {
        "signature": {
            "name": method.name,
            "params": [[n, k] for n, k in zip(names, kinds, strict=True)],
            "returns": returns,
        },
        "calls": [{"args": args, "expected": expected} for args, expected in calls],
    }
    for args, expected in calls:
        if not fits(expected, returns) or not all(
            fits(a, k) for a, k in zip(args, kinds, strict=True)
        ):
            raise UnusableRecord("a test's values do not fit the ported types")
    try:
        parse_spec(spec)  # the verifier's own check
    except VerifierError as exc:
        raise UnusableRecord(f"ported tests unusable: {exc}") from None
    return spec


def ported_statement(statement: str, spec: dict[str, Any], language: str) -> str:
    """The statement with its Python starter replaced by ``language``'s."""
    signature, _ = parse_spec(spec)
    code = skeleton(signature, language)
    text = f"Please complete the following {NAMES[language]} code precisely:\n```{language}\n"
    return _STARTER.sub(lambda _: text + code + "\n```", statement, count=1)
