"""Function-call tests in any language: a LeetCode problem posed in JavaScript, C++ or Rust.

LeetCode's tests are Python (``assert candidate(nums=[3, 1], k=2) == 4``). SYNTHETIC-1 posed its
problems in several languages; for a function problem that means a signature in each language
and the same calls made there. A task carries the calls as plain data: the method's name, its
parameters and return in a small type language (``int``, ``long``, ``bool``, ``str``,
``list<T>``), and per call the arguments and the expected value as JSON. From that this module
renders, per language, the starter code the prompt shows (:func:`skeleton`) and the program the
verifier builds: a prelude, the answer, then a harness that makes each call and prints its
result as one JSON line (:func:`program`). The verifier compares those values outside the
answer's process (:func:`compare`), as plain values: a result is right only if it is equal, of
the same JSON type. Pure (no I/O); the verifier runs the program in its sandbox.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flopnet.protocol.errors import VerifierError

PORT_LANGUAGES = ("javascript", "cpp", "rust")
MAX_CALLS = 200
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
JS_SAFE = 2**53  # JavaScript numbers are doubles: integers beyond this are not exact
# A result line: the marker, the call's index, its value as JSON.
MARKER = "\x1eflopnet-result"
_TYPE = re.compile(r"^(int|long|bool|str|list<.+>)$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Signature:
    """A method: its name, parameters (name, type) and return type, in the port's types."""

    name: str
    params: tuple[tuple[str, str], ...]
    returns: str


@dataclass(frozen=True)
class Call:
    """One test: the arguments (plain JSON values, by position) and the expected value."""

    args: tuple[Any, ...]
    expected: Any


def _element(kind: str) -> str:
    return kind[len("list<") : -1]


def check_type(kind: str) -> str:
    """``kind`` if it is a type of the port's type language; VerifierError otherwise."""
    if not isinstance(kind, str) or not _TYPE.match(kind):
        raise VerifierError(f"unsupported port type {kind!r}")
    if kind.startswith("list<"):
        check_type(_element(kind))
    return kind


def fits(value: Any, kind: str) -> bool:
    """Whether a plain value is of ``kind`` (ints in range; strings printable ASCII, which every
    language's literal syntax takes as it is once quotes and backslashes are escaped)."""
    if kind in ("int", "long"):
        lo, hi = INT32 if kind == "int" else INT64
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return ok and abs(value) <= JS_SAFE
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and all(" " <= c <= "~" for c in value)
    if kind.startswith("list<"):
        return isinstance(value, list) and all(fits(v, _element(kind)) for v in value)
    return False


def parse_spec(spec: Mapping[str, Any]) -> tuple[Signature, tuple[Call, ...]]:
    """A task's ``{"signature": ..., "calls": [...]}``, checked; VerifierError if unusable."""
    sig = spec.get("signature")
    calls = spec.get("calls")
    if not isinstance(sig, Mapping) or not isinstance(calls, list) or not calls:
        raise VerifierError("ported tests need a signature and a non-empty list of calls")
    if len(calls) > MAX_CALLS:
        raise VerifierError(f"more than {MAX_CALLS} calls")
    name, params, returns = sig.get("name"), sig.get("params"), sig.get("returns")
    if not isinstance(name, str) or not _IDENT.match(name):
        raise VerifierError(f"bad method name {name!r}")
    if not isinstance(params, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _IDENT.match(p[0])
        for p in params
    ):
        raise VerifierError("params must be [name, type] pairs")
    signature = Signature(
        name, tuple((p[0], check_type(p[1])) for p in params), check_type(str(returns))
    )
    out = []
    for call in calls:
        if not isinstance(call, Mapping) or not isinstance(call.get("args"), list):
            raise VerifierError("a call needs its args as a list")
        args = tuple(call["args"])
        if len(args) != len(signature.params):
            raise VerifierError("a call's arguments do not match the signature")
        if not all(fits(a, t) for a, (_, t) in zip(args, signature.params, strict=True)):
            raise VerifierError("a call's argument does not fit its type")
        if not fits(call.get("expected"), signature.returns):
            raise VerifierError("a call's expected value does not fit the return type")
        out.append(Call(args, call["expected"]))
    return signature, tuple(out)


def snake(name: str) -> str:
    """camelCase as snake_case (Rust's names for LeetCode's methods and parameters)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


# -- types and literals per language -------------------------------------------------------------


def _cpp_type(kind: str) -> str:
    if kind.startswith("list<"):
        return f"vector<{_cpp_type(_element(kind))}>"
    return {"int": "int", "long": "long long", "bool": "bool", "str": "string"}[kind]


def _rust_type(kind: str) -> str:
    if kind.startswith("list<"):
        return f"Vec<{_rust_type(_element(kind))}>"
    return {"int": "i32", "long": "i64", "bool": "bool", "str": "String"}[kind]


def _js_type(kind: str) -> str:
    if kind.startswith("list<"):
        return _js_type(_element(kind)) + "[]"
    return {"int": "number", "long": "number", "bool": "boolean", "str": "string"}[kind]


def _quoted(text: str) -> str:
    # Printable ASCII only (``fits``): escaping quotes and backslashes is the whole job.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cpp_literal(value: Any, kind: str) -> str:
    if kind.startswith("list<"):
        return "{" + ", ".join(_cpp_literal(v, _element(kind)) for v in value) + "}"
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return f"string({_quoted(value)})"
    return f"{value}LL" if kind == "long" else str(value)


def _rust_literal(value: Any, kind: str) -> str:
    if kind.startswith("list<"):
        return "vec![" + ", ".join(_rust_literal(v, _element(kind)) for v in value) + "]"
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return f"String::from({_quoted(value)})"
    return f"{value}i64" if kind == "long" else f"{value}i32"


# -- the starter code the prompt shows -----------------------------------------------------------


def skeleton(sig: Signature, language: str) -> str:
    """The starter code of ``sig`` in ``language``, as LeetCode shows it."""
    if language == "cpp":
        params = ", ".join(
            f"{_cpp_type(t)}{'&' if t.startswith(('list<', 'str')) else ''} {n}"
            for n, t in sig.params
        )
        return (
            "class Solution {\npublic:\n"
            f"    {_cpp_type(sig.returns)} {sig.name}({params}) {{\n        \n    }}\n}};"
        )
    if language == "rust":
        params = ", ".join(f"{snake(n)}: {_rust_type(t)}" for n, t in sig.params)
        return (
            "impl Solution {\n"
            f"    pub fn {snake(sig.name)}({params}) -> {_rust_type(sig.returns)} {{\n"
            "        \n    }\n}"
        )
    if language == "javascript":
        doc = "".join(f" * @param {{{_js_type(t)}}} {n}\n" for n, t in sig.params)
        names = ", ".join(n for n, _ in sig.params)
        return (
            f"/**\n{doc} * @return {{{_js_type(sig.returns)}}}\n */\n"
            f"var {sig.name} = function({names}) {{\n    \n}};"
        )
    raise VerifierError(f"no port to {language!r}")


# -- the program the verifier builds ----------------------------------------------------------

_CPP_PRELUDE = "#include <bits/stdc++.h>\nusing namespace std;\n"
_CPP_PRINT = r"""
static void flopnet_json(ostream& o, long long v) { o << v; }
static void flopnet_json(ostream& o, int v) { o << v; }
static void flopnet_json(ostream& o, bool v) { o << (v ? "true" : "false"); }
static void flopnet_json(ostream& o, const string& s) {
    o << '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') o << '\\' << c;
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); o << b; }
        else o << c;
    }
    o << '"';
}
template <typename T> static void flopnet_json(ostream& o, const vector<T>& v) {
    o << '[';
    for (size_t i = 0; i < v.size(); ++i) { if (i) o << ','; flopnet_json(o, (T)v[i]); }
    o << ']';
}
"""
_RUST_PRELUDE = "#![allow(unused)]\nuse std::collections::*;\nstruct Solution;\n"
_RUST_HAS_SOLUTION = re.compile(r"\bstruct\s+Solution\b")
_RUST_PRINT = r"""
trait FlopnetJson { fn json(&self) -> String; }
impl FlopnetJson for i32 { fn json(&self) -> String { self.to_string() } }
impl FlopnetJson for i64 { fn json(&self) -> String { self.to_string() } }
impl FlopnetJson for bool { fn json(&self) -> String { self.to_string() } }
impl FlopnetJson for String {
    fn json(&self) -> String {
        let mut o = String::from("\"");
        for c in self.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
}
impl<T: FlopnetJson> FlopnetJson for Vec<T> {
    fn json(&self) -> String {
        let parts: Vec<String> = self.iter().map(|v| v.json()).collect();
        format!("[{}]", parts.join(","))
    }
}
"""


def program(sig: Signature, calls: Sequence[Call], language: str, answer: str) -> str:
    """The source the verifier builds: prelude, the answer, then each call printing its result
    as ``MARKER index json`` on its own line (an exception or panic prints nothing for that
    call, which then fails)."""
    if language == "cpp":
        marker = "\\036flopnet-result"  # octal: a hex escape would run on into the "f"
        lines = [_CPP_PRELUDE, answer, _CPP_PRINT, "int main() {"]
        for i, call in enumerate(calls):
            decls = "".join(
                f"        {_cpp_type(t)} a{j} = {_cpp_literal(v, t)};\n"
                for j, (v, (_, t)) in enumerate(zip(call.args, sig.params, strict=True))
            )
            names = ", ".join(f"a{j}" for j in range(len(call.args)))
            lines.append(
                f"    try {{\n{decls}"
                f"        {_cpp_type(sig.returns)} r = Solution().{sig.name}({names});\n"
                f'        cout << "{marker} {i} "; flopnet_json(cout, r); cout << endl;\n'
                "    } catch (...) {}"
            )
        lines.append("    return 0;\n}\n")
        return "\n".join(lines)
    marker = "\\x1eflopnet-result"
    if language == "rust":
        prelude = _RUST_PRELUDE
        if _RUST_HAS_SOLUTION.search(answer):
            prelude = prelude.replace("struct Solution;\n", "")  # the answer declares it
        lines = [prelude, answer, _RUST_PRINT, "fn main() {"]
        lines.append("    std::panic::set_hook(Box::new(|_| {}));")
        for i, call in enumerate(calls):
            args = ", ".join(
                _rust_literal(v, t) for v, (_, t) in zip(call.args, sig.params, strict=True)
            )
            lines.append(
                "    if let Ok(r) = std::panic::catch_unwind(|| "
                f"Solution::{snake(sig.name)}({args})) {{\n"
                f'        println!("{marker} {i} {{}}", r.json());\n'
                "    }"
            )
        lines.append("}\n")
        return "\n".join(lines)
    if language == "javascript":
        lines = [answer, ";(() => {"]
        for i, call in enumerate(calls):
            args = ", ".join(json.dumps(a) for a in call.args)
            lines.append(
                f"  try {{ const r = {sig.name}({args}); "
                f'process.stdout.write("{marker} {i} " + JSON.stringify(r) + "\\n"); }} '
                "catch (e) {}"
            )
        lines.append("})();\n")
        return "\n".join(lines)
    raise VerifierError(f"no port to {language!r}")


def results(stdout: str, count: int) -> dict[int, str]:
    """Each call's printed JSON, by index: the first line for each (the answer's own prints and
    any line after the first for an index are ignored)."""
    found: dict[int, str] = {}
    for line in stdout.split("\n"):  # not splitlines(): it splits at the marker's \x1e too
        if not line.startswith(MARKER + " "):
            continue
        index, _, value = line[len(MARKER) + 1 :].partition(" ")
        if index.isdigit() and int(index) < count and int(index) not in found:
            found[int(index)] = value
    return found


def same(got: Any, expected: Any) -> bool:
    """Equal as plain JSON values, of the same JSON types (``true`` is not ``1``)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(expected, bool) and got == expected
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(same(g, e) for g, e in zip(got, expected, strict=True))
        )
    if isinstance(expected, int):
        return isinstance(got, int) and got == expected
    return type(got) is type(expected) and got == expected


def compare(stdout: str, calls: Sequence[Call]) -> dict[int, tuple[bool, str]]:
    """Each call's outcome: (passed, why not)."""
    printed = results(stdout, len(calls))
    out: dict[int, tuple[bool, str]] = {}
    for i, call in enumerate(calls):
        if i not in printed:
            out[i] = (False, "no result (an exception, a crash or the time limit)")
            continue
        try:
            got = json.loads(printed[i])
        except ValueError:
            out[i] = (False, "the result is not a plain value")
            continue
        out[i] = (True, "") if same(got, call.expected) else (False, "wrong answer")
    return out
