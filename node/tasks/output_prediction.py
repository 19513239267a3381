"""Code output prediction tasks generated from a code file, their ground truth run in the sandbox.

``output-prediction:PATH`` harvests PATH's string-processing functions (MBPP, HumanEval and
LeetCode reference solutions whose tests call them on strings, with those strings) and the
strings of its stdin/stdout tests, composes programs from them (:mod:`.op_programs`), and runs
every program in the code sandbox to get the output that is the task's gold answer. Each program
runs twice, under two hash seeds, and is kept only when both runs agree, so no gold depends on
set ordering; a program that fails, times out or returns an unprintable or over-long string is
dropped. The same file and seed always give the same tasks.

The sandbox runs happen in a spawned child process that adopts the sandbox's orphans (see
``verifiers.sandbox.process``), never in the node's own process.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flopnet.node.tasks.base import Task, UnusableRecord, check_task, file_stem, make_task_id
from flopnet.node.tasks.files import LoadedSource, detect_format, read_records
from flopnet.node.tasks.op_programs import SeedFunction, build_program, problem_text
from flopnet.protocol.errors import ConfigError, FlopnetError

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("op_runner.py")
MAX_SOURCE_CHARS = 8_000
MAX_ARG_CHARS = 200
MAX_OUTPUT_CHARS = 300
MAX_STRINGS = 2_000
#: Rounds of generation before giving up on reaching the requested count.
MAX_ROUNDS = 4
_METHOD_RE = re.compile(r"check\(\s*Solution\(\)\.([A-Za-z_]\w*)\s*\)")
# A seed function importing these is unpredictable (a hash, the clock) or not a pure function.
_BANNED_IMPORTS = frozenset(
    {"hashlib", "random", "secrets", "time", "datetime", "os", "sys", "subprocess", "socket",
     "uuid", "threading", "multiprocessing", "signal", "io", "pathlib", "shutil"}
)  # fmt: skip


# -- harvesting -------------------------------------------------------------------------------


def _string_calls(tests: str) -> list[tuple[str, tuple[str, ...], str]]:
    """``assert f("a", ...) == "b"`` lines of a test source: (callee, string args, expected)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
            continue
        test = node.test
        if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
            continue
        call, expected = test.left, test.comparators[0]
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            continue
        values = [*call.args, *(k.value for k in call.keywords)]
        if not values or not all(_is_str(v) for v in [*values, expected]):
            continue
        args = tuple(v.value for v in values)  # type: ignore[attr-defined]
        if all(len(a) <= MAX_ARG_CHARS for a in args):
            calls.append((call.func.id, args, expected.value))  # type: ignore[attr-defined]
    return calls


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _top_level_defs(source: str) -> set[str] | None:
    """Names a seed source defines at top level; None when it does not compile or imports a
    module that would make its output unpredictable."""
    try:
        tree = ast.parse(source)
        compile(tree, "<seed>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        if any(name.split(".")[0] in _BANNED_IMPORTS for name in names):
            return None
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def _seed(
    source: object, tests: object, callee: str | None, call: str, origin: str
) -> SeedFunction | None:
    """A seed function when the tests call ``callee`` (or the named function) on strings only."""
    if not isinstance(source, str) or not isinstance(tests, str):
        return None
    if len(source) > MAX_SOURCE_CHARS or len(tests) > 4 * MAX_SOURCE_CHARS:
        return None
    source = source.replace("\r\n", "\n")
    defined = _top_level_defs(source)
    calls = _string_calls(tests)
    if defined is None or not calls:
        return None
    name = calls[0][0]
    if callee is not None and name != callee:
        return None
    if callee is None and name not in defined:
        return None
    if call.split("(")[0] not in defined:
        return None
    arg_sets = tuple(dict.fromkeys(args for n, args, _ in calls if n == name))
    return SeedFunction(source, call, arg_sets, origin)


def harvest(records: Sequence[Any], name: str) -> tuple[list[SeedFunction], list[str]]:
    """Seed functions and seed strings of a code file's records."""
    functions: list[SeedFunction] = []
    strings: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        fmt, origin = detect_format(record), f"{name} record {index}"
        seed: SeedFunction | None = None
        if fmt == "MBPP" and isinstance(record["test_list"], list):
            tests = "\n".join(t for t in record["test_list"] if isinstance(t, str))
            calls = _string_calls(tests)
            if calls:
                seed = _seed(record.get("code"), tests, None, calls[0][0], origin)
        elif fmt == "HumanEval":
            entry = record["entry_point"]
            source = f"{record['prompt']}{record.get('canonical_solution', '')}"
            if isinstance(entry, str) and entry.isidentifier():
                seed = _seed(source, record["test"], "candidate", entry, origin)
        elif fmt == "rllm code":
            seed = _rllm_seed(record, origin, strings)
        if seed is not None:
            functions.append(seed)
            for args in seed.arg_sets:
                strings.update(dict.fromkeys(a for a in args if a.strip()))
    pool = [s[:40] for s in strings if s.isprintable()][:MAX_STRINGS]
    return functions, pool


def _rllm_seed(
    record: Mapping[str, Any], origin: str, strings: dict[str, None]
) -> SeedFunction | None:
    tests = record["tests"]
    if isinstance(tests, str) and tests.lstrip()[:1] in ("{", "["):
        try:
            tests = json.loads(tests)
        except (ValueError, RecursionError):
            return None
    if isinstance(tests, Mapping) and isinstance(tests.get("functional"), str):
        method = _METHOD_RE.search(tests["functional"])
        solutions = record.get("solutions")
        if method is None or not isinstance(solutions, str):
            return None
        call = f"Solution().{method.group(1)}"
        return _seed(solutions, tests["functional"], "candidate", call, origin)
    # stdin/stdout tests: their short lines with letters are strings to seed inputs from.
    inputs = tests.get("inputs") if isinstance(tests, Mapping) else None
    if inputs is None and isinstance(tests, list):
        inputs = [t.get("input") for t in tests if isinstance(t, Mapping)]
    for value in inputs if isinstance(inputs, list) else []:
        if isinstance(value, str) and len(strings) < MAX_STRINGS:
            for line in value.splitlines()[:50]:
                if 3 <= len(line) <= 40 and any(c.isalpha() for c in line):
                    strings[line] = None
    return None


# -- running in the sandbox -------------------------------------------------------------------


def compute_outputs(kind: str, programs: list[tuple[str, str]]) -> list[str | None]:
    """Pool-child entry: each (code, input)'s ``stuff(input)`` where two hash seeds agree."""
    from flopnet.verifiers.sandbox import open_sandbox, select_sandbox
    from flopnet.verifiers.sandbox.process import become_subreaper

    become_subreaper()
    runner = open_sandbox(select_sandbox(kind))
    job = json.dumps([{"code": c, "input": i} for c, i in programs]).encode("utf-8")
    with runner.open_box() as box:
        box.write(RUNNER.name, RUNNER.read_bytes())
        box.write("job.json", job)
        first = _run_all(box, len(programs), 0)
        second = _run_all(box, len(programs), 1)
    return [a if a is not None and a == b else None for a, b in zip(first, second, strict=True)]


def _run_all(box: Any, count: int, hash_seed: int) -> list[str | None]:
    from flopnet.verifiers.sandbox import BOX, Limits, SandboxError
    from flopnet.verifiers.sandbox.base import MiB

    results: list[str | None] = [None] * count
    start, silent_runs = 0, 0
    while start < count:
        nonce = secrets.token_hex(16)
        wall = min(120.0, (count - start) * 1.0 + 10.0)
        limits = Limits(wall_s=wall, cpu_s=math.ceil(wall), memory_mb=1024, output_bytes=8 * MiB)
        argv = ["env", f"PYTHONHASHSEED={hash_seed}", "python3", "-B", "-s"]
        argv += [f"{BOX}/{RUNNER.name}", f"{BOX}/job.json", str(start)]
        run = box.run(argv, limits=limits, stdin=(nonce + "\n").encode())
        last = start - 1
        for line in run.stdout.decode("utf-8", "replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) != 3 or parts[0] != nonce or not parts[1].isdigit():
                continue
            index = int(parts[1])
            if start <= index < count:
                try:
                    outcome = json.loads(parts[2])
                except ValueError:
                    continue
                value = outcome.get("output") if isinstance(outcome, dict) else None
                results[index] = value if isinstance(value, str) else None
                last = max(last, index)
        if last >= count - 1:
            break
        silent_runs = silent_runs + 1 if last < start else 0
        if silent_runs >= 3:
            raise SandboxError(f"the output-prediction runner does not run: {run.describe()}")
        start = last + 2  # the program after the last one reported ended the run: skip it
    return results


def _outputs_in_child(programs: list[tuple[str, str]]) -> list[str | None]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(compute_outputs, "auto", programs).result(timeout=900)
    except FlopnetError as exc:
        raise ConfigError(
            f"output prediction needs the code sandbox for its answers: {exc}"
        ) from None
    except (BrokenProcessPool, TimeoutError) as exc:
        raise ConfigError(f"the output-prediction sandbox run failed: {exc!r}") from None


# -- the source -------------------------------------------------------------------------------


def _usable(output: str | None, program_input: str) -> str | None:
    """Why an output makes no task, or None when it is a good gold answer."""
    if output is None:
        return "the program failed, timed out or depends on hash order"
    if not output or len(output) > MAX_OUTPUT_CHARS or not output.isprintable():
        return "empty, over-long or unprintable output"
    if output == program_input:
        return "output equals input"
    return None


def generate_output_prediction(path: Path, *, count: int, seed: int = 0) -> LoadedSource:
    """``count`` output-prediction tasks seeded from the code file ``path`` (fewer only when the
    file's material runs out); the same file and seed give the same tasks."""
    if count < 1:
        raise ConfigError("the output-prediction task count must be at least 1")
    records = read_records(path)
    stem = file_stem(path.name)
    functions, strings = harvest(records, stem)
    if not strings:
        raise ConfigError(
            f"{path}: no string-processing functions or strings to seed output prediction "
            "(give a code file: MBPP, HumanEval, LeetCode, Codeforces or CodeContests)"
        )
    loaded = LoadedSource(f"output-prediction:{path}", [], records=len(records))
    seen: set[str] = set()
    candidate = 0
    for _round in range(MAX_ROUNDS):
        batch_size = 2 * (count - len(loaded.tasks)) + 8
        batch = []
        for i in range(candidate, candidate + batch_size):
            rng = random.Random(f"flopnet-output-prediction:{seed}:{stem}:{i}")
            batch.append((i, build_program(rng, functions, strings)))
        candidate += batch_size
        outputs = _outputs_in_child([(p.code, p.input) for _, p in batch])
        for (i, program), output in zip(batch, outputs, strict=True):
            why = _usable(output, program.input)
            problem = problem_text(program)
            if why is None and problem in seen:
                why = "a duplicate program"
            if why is not None:
                loaded.skipped[why] += 1
                continue
            assert output is not None
            task_id = make_task_id(stem, i, problem, "op", f"s{seed}")
            try:
                task = check_task(Task(task_id, "code_output_prediction", problem, output, {}))
            except UnusableRecord as exc:
                loaded.skipped[str(exc)] += 1
                continue
            seen.add(problem)
            loaded.tasks.append(task)
            if len(loaded.tasks) >= count:
                return loaded
    if not loaded.tasks:
        raise ConfigError(f"{path}: no output-prediction program ran ({loaded.describe()})")
    log.warning("output prediction from %s: only %d of %d tasks", path, len(loaded.tasks), count)
    return loaded
