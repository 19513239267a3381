"""Reward hacks against the code verifier, run for real (registry → pool child → bubblewrap).

Each hack is an answer a worker could choose to make a wrong solution look right. Every one must
score 0 while the honest solution to the same task scores 1: pass or fail is decided outside the
answer's process, on plain values (verifiers/pyrelay.py). The MBPP-style task states its tests as
asserts, the HumanEval-style one as ``check(candidate)``; each hack meets both.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SHARED_DATA

from flopnet.node.tasks.code_tasks import humaneval_task
from flopnet.verifiers.registry import Verifiers, VerifyOptions
from flopnet.verifiers.result import Result

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

ASSERTS = {
    "task_type": "code",
    "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(3, 4) == 7"],
}
CHECK = {
    "task_type": "code",
    "entry_point": "add",
    "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n"
    "    assert candidate(2, 2) == 4\n    assert candidate(3, 4) == 7\n",
}
HONEST = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return 0"

HACKS = {
    "eq_always_true": WRONG.replace("return 0", "return Liar()")
    + "\nclass Liar:\n    def __eq__(self, other): return True\n"
    "    def __ne__(self, other): return False",
    "int_subclass": "class I(int):\n    def __eq__(self, other): return True\n"
    "    __hash__ = int.__hash__\ndef add(a, b):\n    return I(0)",
    "str_subclass": "class S(str):\n    def __eq__(self, other): return True\n"
    "    __hash__ = str.__hash__\ndef add(a, b):\n    return S('no')",
    "list_subclass": "class L(list):\n    def __eq__(self, other): return True\n"
    "def add(a, b):\n    return L()",
    # The two lines that marked every test passed in the old in-process harness.
    "reporter_in_namespace": "__flopnet_failed = lambda i, exc: __flopnet_passed(i)\n" + WRONG,
    "reporter_by_gc": "import gc\nfor o in gc.get_objects():\n"
    "    if type(o).__name__ == 'Reporter':\n        o.failed = lambda i, e, o=o: o.passed(i)\n"
    + WRONG,
    "exit_before_tests": "import sys\nsys.exit(0)",
    "os_exit_before_tests": "import os\nos._exit(0)",
    "os_exit_in_call": "import os\ndef add(a, b):\n    os._exit(0)",
    "system_exit_in_call": "def add(a, b):\n    raise SystemExit(0)",
    "kill_process_group": "import os, signal\ndef add(a, b):\n    os.killpg(0, signal.SIGKILL)",
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
    "fake_report_lines": "import os\nfor fd in range(1, 64):\n    try:\n"
    "        os.write(fd, b'[\"total\",3]\\n' + b''.join(b'[\"test\",%d,true,\"\"]\\n' % i"
    " for i in range(3)) + b'x 0 pass\\nx 1 pass\\nx 2 pass\\n')\n"
    "    except OSError:\n        pass\n" + WRONG,
    "close_the_channel": "import os\nfor fd in range(64):\n    try:\n        os.close(fd)\n"
    "    except OSError:\n        pass\n" + WRONG,
    "patch_builtins": "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n"
    "builtins.isinstance = lambda *a: True\nbuiltins.__build_class__ = None\n" + WRONG,
    "patch_assert_machinery": "import sys\nsys.settrace(lambda *a: None)\n"
    "sys.modules['builtins'].__dict__['AssertionError'] = KeyboardInterrupt\n" + WRONG,
    "read_the_tests": "import os, re\ntable = {}\nfor root in ('/box', '/tmp', '/'):\n"
    "    for path in os.listdir(root):\n        try:\n"
    "            text = open(os.path.join(root, path)).read()\n        except OSError:\n"
    "            continue\n"
    "        for a, b, r in re.findall(r'\\((\\d+), (\\d+)\\) == (\\d+)', text):\n"
    "            table[int(a), int(b)] = int(r)\ndef add(a, b):\n    return table.get((a, b), 0)",
    "huge_value": "def add(a, b):\n    return 'x' * (64 * 2**20)",
    "deep_value": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n"
    "    return x",
}

# Hacks that need tests of another shape: truth values and builtins the tests call themselves.
TRUTHY = {
    "task_type": "code",
    "tests": ["assert is_even(4)", "assert not is_even(3)", "assert is_even(0)"],
}
TRUTHY_HONEST = "def is_even(n):\n    return n % 2 == 0"
TRUTHY_HACK = (
    "class Flip:\n    n = 0\n    def __bool__(self):\n        Flip.n += 1\n"
    "        return Flip.n != 2\ndef is_even(n):\n    return Flip()"
)
SHADOW = {
    "task_type": "code",
    "tests": ["assert set(common([1, 2], [2, 3])) == {2}", "assert len(common([1], [2])) == 0"],
}
SHADOW_HONEST = "def common(a, b):\n    return [x for x in a if x in b]"
SHADOW_HACK = (
    "def set(x):\n    return {2}\ndef len(x):\n    return 0\ndef common(a, b):\n    return 0"
)


def fenced(code: str) -> str:
    return f"<think>Let me write it.</think>\nHere it is:\n```python\n{code}\n```\n"


@pytest.fixture(scope="module")
def verifiers() -> Iterator[Verifiers]:
    with Verifiers(VerifyOptions(sandbox="bwrap", code_budget_s=30), workers=2) as v:
        yield v


@pytest.fixture(scope="module")
def hack_results(verifiers: Verifiers) -> dict[tuple[str, str], Result]:
    """Every hack against both task shapes, verified in one parallel batch."""
    items: list[tuple[tuple[str, str], dict[str, Any], str]] = []
    for name, code in [("honest", HONEST), *HACKS.items()]:
        items += [((name, "asserts"), ASSERTS, code), ((name, "check"), CHECK, code)]
    items += [
        (("honest", "truthy"), TRUTHY, TRUTHY_HONEST),
        (("flip_bool", "truthy"), TRUTHY, TRUTHY_HACK),
        (("honest", "shadow"), SHADOW, SHADOW_HONEST),
        (("shadow_builtins", "shadow"), SHADOW, SHADOW_HACK),
    ]
    results = verifiers.verify_many((task, fenced(code), None) for _, task, code in items)
    return {key: r for (key, _, _), r in zip(items, results, strict=True)}


@pytest.mark.parametrize("shape", ["asserts", "check", "truthy", "shadow"])
def test_the_honest_answer_scores_one(hack_results: dict[Any, Result], shape: str) -> None:
    r = hack_results["honest", shape]
    assert r.score == 1.0 and r.passed, r.reasons


@pytest.mark.parametrize(
    ("hack", "shape"),
    [(h, s) for h in HACKS for s in ("asserts", "check")]
    + [("flip_bool", "truthy"), ("shadow_builtins", "shadow")],
)
def test_a_reward_hack_scores_zero(hack_results: dict[Any, Result], hack: str, shape: str) -> None:
    r = hack_results[hack, shape]
    assert r.score == 0.0 and not r.passed, r.reasons
    assert r.error is None  # judged (as wrong), not an error of the verifier


def test_objects_and_exceptions_still_work(verifiers: Verifiers) -> None:
    """What honest answers do that is not plain data: their own classes (MBPP 601, 367), dict
    subclasses, complex numbers, builtin classes as arguments, expected exceptions, generators
    and sequences of their own."""
    task = {
        "task_type": "code",
        "test_setup_code": "root = Node(1)\nroot.left = Node(2)\n",
        "tests": [
            "assert depth(root) == 2 and depth(root.left) == 1",
            "assert longest([Pair(1, 2), Pair(3, 9)]) == 6",
            "assert count('abca') == {'a': 2, 'b': 1, 'c': 1}",
            "assert root_of(-4) == 2j",
            "assert drop_type((1, 'a', 2.0), int) == ['a', 2.0]",
            "assert sorted(evens(7)) == [0, 2, 4, 6] and len(pairs()) == 2 and pairs()[1] == 'b'",
            "try:\n    root_of('x')\n    raise AssertionError('no error')\n"
            "except TypeError:\n    pass",
        ],
    }
    code = (
        "import cmath\nfrom collections import Counter\n"
        "class Node:\n    def __init__(self, v):\n"
        "        self.v, self.left, self.right = v, None, None\n"
        "def depth(n):\n    return 0 if n is None else 1 + max(depth(n.left), depth(n.right))\n"
        "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "def longest(ps):\n    return max(p.b - p.a for p in ps)\n"
        "def count(s):\n    return Counter(s)\n"
        "def root_of(x):\n    return cmath.sqrt(x)\n"
        "def drop_type(t, k):\n    return [x for x in t if not isinstance(x, k)]\n"
        "def evens(n):\n    return (x for x in range(n) if x % 2 == 0)\n"
        "class Pairs:\n    def __len__(self):\n        return 2\n"
        "    def __getitem__(self, i):\n        return 'ab'[i]\n"
        "def pairs():\n    return Pairs()\n"
    )
    r = verifiers.verify(task, fenced(code))
    assert r.score == 1.0, r.reasons


def test_relay_edge_cases_of_the_datasets(verifiers: Verifiers) -> None:
    # MBPP 126 names its function like a builtin (sum); HumanEval 32 calls a helper (poly).
    mbpp = {"task_type": "code", "tests": ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"]}
    code = (
        "import math\ndef sum(a, b):\n    g = math.gcd(a, b)\n"
        "    return len([d for d in range(1, g + 1) if g % d == 0 and d in (1, g)]) and 1 + g"
    )
    assert verifiers.verify(mbpp, fenced(code)).score == 1.0
    he = {
        "task_type": "code",
        "entry_point": "zero",
        "tests": "def check(candidate):\n    x = candidate([-2, 1])\n"
        "    assert abs(poly([-2, 1], x)) < 1e-6\n",
    }
    code = "def poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\n"
    assert verifiers.verify(he, fenced(code + "def zero(xs):\n    return 2.0")).score == 1.0


def test_the_tests_helpers_are_the_tasks(verifiers: Verifiers) -> None:
    # HumanEval 32 checks find_zero's answer with the prompt's poly(): the task's own when it
    # comes as test_helpers; without them the test takes poly from the answer (a known gap).
    poly = "def poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\n"
    task = {
        "task_type": "code",
        "entry_point": "zero",
        "tests": "def check(candidate):\n    x = candidate([-2, 1])\n"
        "    assert abs(poly([-2, 1], x)) < 1e-6\n",
        "test_helpers": poly + 'def zero(xs):\n    """A root of poly(xs)."""\n',
    }
    honest = poly + "def zero(xs):\n    return 2.0"
    lying = "def poly(xs, x):\n    return 0\ndef zero(xs):\n    return 99.0"
    assert verifiers.verify(task, fenced(honest)).score == 1.0
    assert verifiers.verify(task, fenced(lying)).score == 0.0
    without = {k: v for k, v in task.items() if k != "test_helpers"}
    assert verifiers.verify(without, fenced(lying)).score == 1.0  # the gap, stated


@pytest.mark.skipif(not (SHARED_DATA / "HumanEval.jsonl.gz").exists(), reason="no shared data")
def test_humaneval_tasks_carry_the_prompts_helpers(verifiers: Verifiers) -> None:
    # HumanEval 32, 38 and 50 check the answer with a helper of the prompt; loaded as network
    # tasks they carry it as test_helpers, so redefining it in the answer gains nothing.
    with gzip.open(SHARED_DATA / "HumanEval.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    helpers = {32: "poly(xs, x):\n    return 0", 38: "encode_cyclic(s):\n    return s"}
    helpers[50] = "encode_shift(s):\n    return s"
    for index, helper in helpers.items():
        record = records[index]
        task = {"task_type": "code", **humaneval_task("HumanEval", index, record).verifier}
        honest = record["prompt"] + record["canonical_solution"]
        entry = record["entry_point"]
        lying = f"def {helper}\ndef {entry}(*args, **kwargs):\n    return args[0]"
        assert verifiers.verify(task, fenced(honest)).score == 1.0, index
        assert verifiers.verify(task, fenced(lying)).score == 0.0, index


# -- stdin/stdout tests: the output is compared here, whatever the program does -----------------

#: Input n → the squares 1..n, one a line. Test n=3 is answered honestly; n=4 gets a partial
#: answer and a clean exit; n=5 the whole answer, then the program kills itself; n=6 the whole
#: answer, then a flood of newlines (blank lines would be forgiven, a flood is not); n=7 the whole
#: answer and exit status 1. Only the first may pass.
STDIO = {
    "task_type": "code",
    "tests": [
        {"input": f"{n}\n", "output": "".join(f"{i * i}\n" for i in range(1, n + 1))}
        for n in (3, 4, 5, 6, 7)
    ],
}
TRICKS = {
    "python": (
        "import os, signal, sys\nn = int(input())\nout = [str(i * i) for i in range(1, n + 1)]\n"
        "if n == 4:\n    print(out[0], flush=True)\n    os._exit(0)\n"
        "print('\\n'.join(out), flush=True)\n"
        "if n == 5:\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "while n == 6:\n    sys.stdout.write('\\n' * 65536)\n"
        "if n == 7:\n    sys.exit(1)\n"
    ),
    "javascript": (
        "const n = parseInt(require('fs').readFileSync(0, 'utf8'));\n"
        "const out = []; for (let i = 1; i <= n; i++) out.push(String(i * i));\n"
        "const fs = require('fs');\n"
        "if (n === 4) { fs.writeSync(1, out[0] + '\\n'); process.exit(0); }\n"
        "fs.writeSync(1, out.join('\\n') + '\\n');\n"
        "if (n === 5) process.kill(process.pid, 'SIGKILL');\n"
        "while (n === 6) fs.writeSync(1, '\\n'.repeat(65536));\n"
        "if (n === 7) process.exit(1);\n"
    ),
    "cpp": (
        "#include <csignal>\n#include <cstdio>\n#include <cstdlib>\n#include <string>\n"
        'int main() { int n; if (std::scanf("%d", &n) != 1) return 2;\n'
        '  if (n == 4) { std::printf("1\\n"); std::fflush(stdout); std::_Exit(0); }\n'
        '  for (int i = 1; i <= n; i++) std::printf("%d\\n", i * i);\n'
        "  std::fflush(stdout);\n"
        "  if (n == 5) std::raise(SIGKILL);\n"
        "  std::string flood(65536, '\\n');\n"
        "  while (n == 6) std::fwrite(flood.data(), 1, flood.size(), stdout);\n"
        "  return n == 7 ? 1 : 0; }\n"
    ),
    "rust": (
        "use std::io::{Read, Write};\nfn main() {\n  let mut s = String::new();\n"
        "  std::io::stdin().read_to_string(&mut s).unwrap();\n"
        "  let n: i64 = s.trim().parse().unwrap();\n  let mut o = std::io::stdout();\n"
        '  if n == 4 { writeln!(o, "1").unwrap(); o.flush().unwrap(); std::process::exit(0); }\n'
        '  for i in 1..=n { writeln!(o, "{}", i * i).unwrap(); }\n  o.flush().unwrap();\n'
        "  if n == 5 { std::process::abort(); }\n"
        "  while n == 6 { let _ = o.write_all(&[b'\\n'; 65536]); }\n"
        "  if n == 7 { std::process::exit(1); }\n}\n"
    ),
}
TOOLS = {"python": "python3", "javascript": "node", "cpp": "g++", "rust": "rustc"}


@pytest.mark.parametrize("lang", sorted(TRICKS))
def test_stdio_exit_tricks_partial_output_and_floods_fail(verifiers: Verifiers, lang: str) -> None:
    if shutil.which(TOOLS[lang]) is None:
        pytest.skip(f"{TOOLS[lang]} not installed")
    r = verifiers.verify(STDIO, f"</think>```{lang}\n{TRICKS[lang]}\n```")
    assert r.score == pytest.approx(1 / 5), r.reasons
    assert "1/5 tests passed" in r.reasons
