"""Pure program synthesis for code output prediction (SYNTHETIC-1's fully synthetic task).

SYNTHETIC-1 had an LLM write string-processing functions ``stuff(a: str) -> str`` and inputs
for them. Here a seeded generator composes them instead: a seed function taken from the shared
code data (an MBPP, HumanEval or LeetCode reference solution whose tests call it on strings)
wrapped in a chain of string transformations written as helper functions inside ``stuff``, and
an input derived from the strings of that data. Everything here is a pure function of the seed
and the harvested material; running the programs happens in the sandbox
(``node.tasks.output_prediction``).
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_INPUT_CHARS = 40
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class SeedFunction:
    """A function from the code data: its source, how to call it, and string arguments its tests
    used (the first argument is the one ``stuff`` feeds)."""

    source: str
    call: str  # the callable expression, e.g. "remove_Occ" or "Solution().reverseWords"
    arg_sets: tuple[tuple[str, ...], ...]
    origin: str  # e.g. "mbpp record 17", for the log and the tests


@dataclass(frozen=True)
class Program:
    """A generated program and the input it is called with."""

    code: str
    input: str
    origin: str


Step = Callable[[random.Random], tuple[str, str]]  # rng -> (helper name, helper source)


def _shift(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(1, 25)
    return (
        "shift_letters",
        f"""
def shift_letters(s: str) -> str:
    out = []
    for c in s:
        if "a" <= c <= "z":
            out.append(chr((ord(c) - 97 + {k}) % 26 + 97))
        elif "A" <= c <= "Z":
            out.append(chr((ord(c) - 65 + {k}) % 26 + 65))
        else:
            out.append(c)
    return "".join(out)
""",
    )


def _reverse(rng: random.Random) -> tuple[str, str]:
    return (
        "reverse_halves",
        """
def reverse_halves(s: str) -> str:
    if len(s) <= 1:
        return s
    mid = len(s) // 2
    return reverse_halves(s[mid:]) + reverse_halves(s[:mid])
""",
    )


def _drop_vowels(rng: random.Random) -> tuple[str, str]:
    vowels = rng.choice(("aeiou", "aeiouy", "eiou"))
    return (
        "drop_vowels",
        f'''
def drop_vowels(s: str) -> str:
    return "".join(c for c in s if c.lower() not in "{vowels}")
''',
    )


def _alternate(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(0, 1)
    return (
        "alternate_case",
        f"""
def alternate_case(s: str) -> str:
    return "".join(c.upper() if (i + {start}) % 2 == 0 else c.lower() for i, c in enumerate(s))
""",
    )


def _double(rng: random.Random) -> tuple[str, str]:
    return (
        "double_consonants",
        """
def double_consonants(s: str) -> str:
    result = ""
    for c in s:
        result += c * 2 if c.isalpha() and c.lower() not in "aeiou" else c
    return result
""",
    )


def _rotate(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(1, 7)
    return (
        "rotate",
        f"""
def rotate(s: str) -> str:
    if not s:
        return s
    k = {k} % len(s)
    return s[k:] + s[:k]
""",
    )


def _replace(rng: random.Random) -> tuple[str, str]:
    targets = rng.sample(_LETTERS[-10:] + "0123456789", 5)
    table = dict(zip("aeiou", targets, strict=True))
    return (
        "replace_vowels",
        f"""
def replace_vowels(s: str) -> str:
    table = {table!r}
    return "".join(table.get(c, c) for c in s)
""",
    )


def _runs(rng: random.Random) -> tuple[str, str]:
    return (
        "encode_runs",
        """
def encode_runs(s: str) -> str:
    out = []
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] + (str(j - i) if j - i > 1 else ""))
        i = j
    return "".join(out)
""",
    )


def _chunks(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(2, 4)
    return (
        "reverse_chunks",
        f"""
def reverse_chunks(s: str) -> str:
    return "".join(s[i:i + {k}][::-1] for i in range(0, len(s), {k}))
""",
    )


def _index_shift(rng: random.Random) -> tuple[str, str]:
    return (
        "shift_by_index",
        """
def shift_by_index(s: str) -> str:
    out = []
    for i, c in enumerate(s):
        if c.islower() and c.isascii():
            out.append(chr((ord(c) - 97 + i) % 26 + 97))
        elif c.isupper() and c.isascii():
            out.append(chr((ord(c) - 65 + i) % 26 + 65))
        else:
            out.append(c)
    return "".join(out)
""",
    )


def _swap_pairs(rng: random.Random) -> tuple[str, str]:
    return (
        "swap_pairs",
        """
def swap_pairs(s: str) -> str:
    chars = list(s)
    for i in range(0, len(chars) - 1, 2):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)
""",
    )


def _interleave(rng: random.Random) -> tuple[str, str]:
    return (
        "interleave_reversed",
        """
def interleave_reversed(s: str) -> str:
    return "".join(a + b for a, b in zip(s, s[::-1]))
""",
    )


def _drop_every(rng: random.Random) -> tuple[str, str]:
    k = rng.randint(2, 4)
    return (
        "drop_every",
        f"""
def drop_every(s: str) -> str:
    return "".join(c for i, c in enumerate(s) if i % {k} != 0)
""",
    )


def _words(rng: random.Random) -> tuple[str, str]:
    return (
        "reverse_words",
        """
def reverse_words(s: str) -> str:
    return " ".join(reversed(s.split(" ")))
""",
    )


def _checksum(rng: random.Random) -> tuple[str, str]:
    mod = rng.choice((7, 10, 13, 97))
    return (
        "append_checksum",
        f"""
def append_checksum(s: str) -> str:
    return s + str(sum(ord(c) for c in s) % {mod})
""",
    )


def _memo(rng: random.Random) -> tuple[str, str]:
    return (
        "mirror_from",
        """
def mirror_from(s: str) -> str:
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def build(i: int) -> str:
        if i >= len(s):
            return ""
        return s[i] + build(i + 1) + (s[i] if i % 2 == 0 else "")

    return build(0)
""",
    )


STEPS: tuple[Step, ...] = (
    _shift, _reverse, _drop_vowels, _alternate, _double, _rotate, _replace, _runs, _chunks,
    _index_shift, _swap_pairs, _interleave, _drop_every, _words, _checksum, _memo,
)  # fmt: skip
#: The helper name each step defines (a seed function of the same name must not be shadowed).
STEP_NAMES = {make: make(random.Random(0))[0] for make in STEPS}


def mutate(base: str, rng: random.Random, pool: Sequence[str]) -> str:
    """A new input near ``base``: letters changed, a word from ``pool`` spliced in, or reversed."""
    s = base[:MAX_INPUT_CHARS]
    choice = rng.randrange(4)
    if choice == 0 and s:
        chars = list(s)
        for _ in range(rng.randint(1, max(1, len(chars) // 3))):
            chars[rng.randrange(len(chars))] = rng.choice(_LETTERS + _LETTERS.upper() + " ")
        s = "".join(chars)
    elif choice == 1 and pool:
        word = rng.choice(pool)[:12]
        cut = rng.randint(0, len(s))
        s = s[:cut] + word + s[cut:]
    elif choice == 2:
        s = s[::-1]
    s = s[:MAX_INPUT_CHARS]
    return s if s.strip() else rng.choice(pool)[:MAX_INPUT_CHARS] if pool else "flopnet"


def _call_line(seed: SeedFunction, args: tuple[str, ...]) -> str:
    rest = "".join(f", {a!r}" for a in args[1:])
    return f"    x = {seed.call}(x{rest})"


def build_program(
    rng: random.Random, functions: Sequence[SeedFunction], strings: Sequence[str]
) -> Program:
    """One program: a seed function (when there are any) inside a chain of 2-4 helpers."""
    seed = rng.choice(functions) if functions else None
    taken = set() if seed is None else {seed.call.split("(")[0].split(".")[0]}
    usable = [make for make in STEPS if STEP_NAMES[make] not in taken]
    steps = [make(rng) for make in rng.sample(usable, rng.randint(2, 4))]
    lines = ["def stuff(a: str) -> str:"]
    for _name, source in steps:
        lines.append(textwrap.indent(source.strip("\n"), "    "))
        lines.append("")
    lines.append("    x = a")
    names = [name for name, _ in steps]
    if seed is not None:
        args = rng.choice(seed.arg_sets)
        where = rng.randint(0, len(names))
        calls = [f"    x = {n}(x)" for n in names]
        calls.insert(where, _call_line(seed, args))
        lines += calls
        base = args[0]
        header = seed.source.strip("\n") + "\n\n\n"
        origin = seed.origin
    else:
        lines += [f"    x = {n}(x)" for n in names]
        base = rng.choice(strings)
        header = ""
        origin = "strings"
    lines.append("    return x")
    code = header + "\n".join(lines) + "\n"
    return Program(code, mutate(base, rng, strings), origin)


def problem_text(program: Program) -> str:
    """The problem shown to the model: the code and the input (the instruction is separate)."""
    return (
        "Here is a Python function `stuff` and the helpers it uses. Predict the string it "
        "returns for the input below.\n\n"
        f"Here is the code:\n```python\n{program.code}```\n\n"
        f"Here is the input string:\n{program.input!r}"
    )
