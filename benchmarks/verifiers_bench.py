"""Benchmarks of the answer verifiers (issue 6): accuracy on the shared data and throughput.

    python benchmarks/verifiers_bench.py [--workers 2] [--out benchmarks/results/verifiers.json]
    python benchmarks/verifiers_bench.py --code-ab REV [--rounds 3]
            [--out benchmarks/results/code_ab.json]

Everything runs through ``verifiers.registry.Verifiers`` (a pool of killable children; code in
the bubblewrap sandbox), the way a validator runs it:

* math: MATH-500 reference solutions against their answers (goal ≥ 99.5 %), DeepScaleR golds in
  every format against a boxed correct answer and a wrong one, and verifications/s (goal ≥ 150);
* code: every HumanEval (164), MBPP (974) and LeetCode (200) reference solution, programs/s
  (goal ≥ 15), mutants (an operator flipped, a return dropped) with each verdict compared to a
  plain, unsandboxed run of the same asserts, and one Codeforces problem in four languages.

``--code-ab REV`` compares the code verifier of this checkout with the one of git revision REV
(exported with ``git archive`` and put first on PYTHONPATH of its runs): HumanEval reference
solutions through the pool with 1 and 2 workers, each variant in its own process, the two variants
alternating A B A B so that a drifting machine load hits both alike. Each run reports programs/s
and the CPU seconds per program of the pool children and their sandboxes (``/proc`` accounting).

Data comes from ``../shared/data`` beside the checkout and is never copied into the repository.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the sample programs and reference runs of the tests
sys.path.insert(0, str(REPO / "benchmarks"))

from conftest import SHARED_DATA as DATA  # noqa: E402
from run import machine as base_machine  # noqa: E402
from test_verifiers_code import (  # noqa: E402
    MIN_MAX,
    TOOLS,
    _direct_verdict,
    _humaneval_task,
    _mbpp_task,
)
from test_verifiers_text import _as_boxed  # noqa: E402

from flopnet.verifiers.mutants import drop_return, flip_operator  # noqa: E402
from flopnet.verifiers.registry import Verifiers, VerifyOptions  # noqa: E402

GOALS = {
    "math_per_s": 150.0,
    "math500_solution_rate": 0.995,
    "code_programs_per_s": 15.0,
    "humaneval_pass": 164,
    "mbpp_pass": 974,
}
Item = tuple[dict[str, Any], str, None]


def fenced(code: str, lang: str = "python") -> str:
    return f"<think>Thinking.</think>\n```{lang}\n{code}\n```\n"


def timed(v: Verifiers, items: list[Item]) -> tuple[list[Any], float]:
    started = time.perf_counter()
    results = list(v.verify_many(items))
    return results, time.perf_counter() - started


def bench_math(v: Verifiers, log: Callable[[str], None]) -> dict[str, Any]:
    rows = [json.loads(line) for line in (DATA / "math500_test.jsonl").open(encoding="utf-8")]
    items: list[Item] = [
        ({"task_type": "math", "gold": r["answer"]}, f"<think>...</think>{r['solution']}", None)
        for r in rows
    ]
    results, seconds = timed(v, items)
    failed = [r["unique_id"] for r, res in zip(rows, results, strict=True) if not res.passed]
    out: dict[str, Any] = {
        "math500_solutions": len(rows),
        "math500_solution_accepted": len(rows) - len(failed),
        "math500_solution_rate": round((len(rows) - len(failed)) / len(rows), 4),
        "math500_rejected_ids": failed,
        "math500_per_s": round(len(rows) / seconds, 1),
    }
    log(f"MATH-500 solutions: {out['math500_solution_accepted']}/{len(rows)}")
    formats: dict[str, Any] = {}
    total_items, total_seconds = 0, 0.0
    for path in sorted(DATA.glob("deepscaler_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        golds = [r["answer"] for r in data]
        right = [
            ({"task_type": "math", "gold": g}, f"</think> So $\\boxed{{{_as_boxed(g)}}}$.", None)
            for g in golds
        ]
        wrong = [
            ({"task_type": "math", "gold": g}, "</think> So $\\boxed{987654321}$.", None)
            for g in golds
        ]
        # Each gold is checked twice (right, then wrong answer), as a validator checks several
        # samples of one problem; every verification here is a first run of its pair.
        ok, t_right = timed(v, right)
        bad, t_wrong = timed(v, wrong)
        unusable = sum(1 for r in ok if r.error and "gold" in r.error)
        formats[path.name] = {
            "golds": len(golds),
            "unusable_golds": unusable,
            "accepted": sum(r.passed for r in ok),
            "false_accepts": sum(r.passed for r in bad),
            "per_s": round(2 * len(golds) / (t_right + t_wrong), 1),
        }
        total_items += 2 * len(golds)
        total_seconds += t_right + t_wrong
        log(f"{path.name}: {formats[path.name]}")
    out["deepscaler"] = formats
    out["math_verifications"] = total_items
    out["math_per_s"] = round(total_items / total_seconds, 1)
    log(f"math throughput: {out['math_per_s']}/s over {total_items} verifications")
    return out


def _he_direct(code: str, row: dict[str, Any]) -> bool:
    """HumanEval's check() run by plain Python on the code: the reference verdict."""
    return _direct_verdict(code, [row["test"], f"check({row['entry_point']})"], "")


def bench_code(v: Verifiers, log: Callable[[str], None], mutants: bool) -> dict[str, Any]:
    with gzip.open(DATA / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        he = [json.loads(line) for line in fh]
    mbpp = [json.loads(line) for line in (DATA / "mbpp.jsonl").open(encoding="utf-8")]
    lc = json.loads((DATA / "rllm_test_leetcode.json").read_text(encoding="utf-8"))

    out: dict[str, Any] = {}
    he_items: list[Item] = [
        (_humaneval_task(r), fenced(r["prompt"] + r["canonical_solution"]), None) for r in he
    ]
    mbpp_items: list[Item] = [(_mbpp_task(r), fenced(r["code"]), None) for r in mbpp]
    lc_items: list[Item] = [
        ({"task_type": "code", "tests": r["tests"]}, fenced(r["solutions"]), None) for r in lc
    ]
    for name, items, rows in (
        ("humaneval", he_items, he),
        ("mbpp", mbpp_items, mbpp),
        ("leetcode", lc_items, lc),
    ):
        results, seconds = timed(v, items)
        passed = sum(r.passed for r in results)
        ids = [
            row.get("task_id", i)
            for i, (row, r) in enumerate(zip(rows, results, strict=True))
            if not r.passed
        ]
        out[name] = {
            "references": len(items),
            "passed": passed,
            "failed_ids": ids,
            "programs_per_s": round(len(items) / seconds, 1),
        }
        rate = len(items) / seconds
        log(f"{name}: {passed}/{len(items)} reference solutions pass, {rate:.1f} programs/s")
        if ids:
            log(f"  failed: {[r.reasons for r in results if not r.passed][:3]}")
    n = out["humaneval"]["references"] + out["mbpp"]["references"]
    secs = sum(out[k]["references"] / out[k]["programs_per_s"] for k in ("humaneval", "mbpp"))
    out["code_programs_per_s"] = round(n / secs, 1)
    if mutants:
        out["mutants"] = bench_mutants(v, he, mbpp, log)
    out["languages"] = bench_languages(v, log)
    return out


def _mutant(dataset: str, row: dict[str, Any], mutate: Any) -> tuple[str, Item, bool] | None:
    """(task id, item, verdict of a plain run) for one mutant, or None when none can be made."""
    if dataset == "humaneval":
        code = mutate(row["prompt"] + row["canonical_solution"], row["entry_point"])
        if code is None:
            return None
        return row["task_id"], (_humaneval_task(row), fenced(code), None), _he_direct(code, row)
    code = mutate(row["code"])
    if code is None:
        return None
    plain = _direct_verdict(code, row["test_list"], row["test_setup_code"])
    return f"mbpp/{row['task_id']}", (_mbpp_task(row), fenced(code), None), plain


def bench_mutants(
    v: Verifiers, he: list[Any], mbpp: list[Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """Mutants must fail; each verdict is compared with a plain (unsandboxed) run."""
    stats: dict[str, Any] = {}
    for dataset, rows in (("humaneval", he), ("mbpp", mbpp)):
        for kind, mutate in (("operator_flipped", flip_operator), ("return_dropped", drop_return)):
            made = [m for r in rows if (m := _mutant(dataset, r, mutate)) is not None]
            results, _ = timed(v, [item for _, item, _ in made])
            verdicts = [r.passed for r in results]
            disagree = [
                {"id": tid, "verifier_passed": got, "plain_run_passed": plain, "why": r.reasons[:4]}
                for (tid, _, plain), got, r in zip(made, verdicts, results, strict=True)
                if got != plain
            ]
            key = f"{dataset}_{kind}"
            stats[key] = {
                "mutants": len(made),
                "rejected": len(made) - sum(verdicts),
                "survivors": sum(verdicts),
                "survivors_also_passing_a_plain_run": sum(
                    got and plain for (_, _, plain), got in zip(made, verdicts, strict=True)
                ),
                "disagreements_with_plain_run": disagree,
            }
            log(f"mutants {key}: {len(made)} made, {sum(verdicts)} survive, {len(disagree)} differ")
    return stats


def bench_languages(v: Verifiers, log: Callable[[str], None]) -> dict[str, Any]:
    problem = json.loads((DATA / "rllm_test_codeforces.json").read_text(encoding="utf-8"))[0]
    out: dict[str, Any] = {}
    for lang, code in MIN_MAX.items():
        if shutil.which(TOOLS[lang]) is None:
            out[lang] = "toolchain missing"
            continue
        started = time.perf_counter()
        r = v.verify({"task_type": "code", "tests": problem["tests"]}, fenced(code, lang))
        out[lang] = {"passed": r.passed, "seconds": round(time.perf_counter() - started, 2)}
        log(f"codeforces in {lang}: {out[lang]}")
    return out


def sandbox_latency() -> dict[str, Any]:
    """Median wall time of one bare bwrap run of ``python3 -c pass`` (in this process)."""
    from flopnet.verifiers.sandbox import Limits, SandboxConfig, open_sandbox

    sandbox = open_sandbox(SandboxConfig("bwrap"))
    times = []
    with sandbox.open_box() as box:
        for _ in range(30):
            r = box.run(["python3", "-I", "-S", "-c", "pass"], limits=Limits())
            times.append(r.wall_s)
    times.sort()
    return {"bwrap_python_run_median_ms": round(1000 * times[len(times) // 2], 1)}


# -- the code verifier, this checkout against another revision ----------------------------------


def _children_cpu_s() -> float:
    """CPU seconds of this process's children so far, with what they have reaped (sandboxes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():  # fields: state, ppid, ... utime at 11
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def throughput_run(workers: int) -> dict[str, Any]:
    """HumanEval references through a warm pool of ``workers`` children (one variant, one run)."""
    import flopnet.verifiers.code as code_module

    with gzip.open(DATA / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    items: list[Item] = [
        (_humaneval_task(r), fenced(r["prompt"] + r["canonical_solution"]), None) for r in rows
    ]
    with Verifiers(VerifyOptions(sandbox="bwrap"), workers=workers) as v:
        v.pool.wait_ready()
        list(v.verify_many(items[:4]))  # sandbox probe, first imports
        cpu0, t0 = _children_cpu_s() + time.process_time(), time.perf_counter()
        results = list(v.verify_many(items))
        seconds = time.perf_counter() - t0
        cpu = _children_cpu_s() + time.process_time() - cpu0
    return {
        "code_module": code_module.__file__,
        "workers": workers,
        "passed": sum(r.passed for r in results),
        "programs": len(items),
        "programs_per_s": round(len(items) / seconds, 2),
        "cpu_ms_per_program": round(1000 * cpu / len(items), 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def code_ab(rev: str, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """This checkout ("after") against revision ``rev`` ("before"), alternating."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flopnet-baseline-") as tmp:
        tree = Path(tmp) / "flopnet"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        for round_ in range(rounds):
            for workers in (1, 2):
                order = [("after", None), ("before", tmp)]
                for label, path in order if round_ % 2 == 0 else order[::-1]:
                    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                    if path is not None:
                        env["PYTHONPATH"] = path
                    done = subprocess.run(
                        [sys.executable, __file__, "--throughput-run", str(workers)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    run = {"variant": label, **json.loads(done.stdout.splitlines()[-1])}
                    if (path is not None) != run["code_module"].startswith(tmp):
                        raise SystemExit(f"{label} ran the wrong code: {run['code_module']}")
                    runs.append(run)
                    log(f"round {round_}: {label} x{workers}: {run['programs_per_s']} programs/s")
    summary = {}
    for label in ("before", "after"):
        for workers in (1, 2):
            mine = [r for r in runs if r["variant"] == label and r["workers"] == workers]
            summary[f"{label}_{workers}_workers"] = {
                "programs_per_s_median": statistics.median(r["programs_per_s"] for r in mine),
                "cpu_ms_per_program_median": statistics.median(
                    r["cpu_ms_per_program"] for r in mine
                ),
                "all_passed": all(r["passed"] == r["programs"] for r in mine),
            }
    return {"baseline_rev": rev, "rounds": rounds, "summary": summary, "runs": runs}


def machine() -> dict[str, Any]:
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False)
    # The machine is shared: the load average says how busy it was.
    load = [round(x, 2) for x in os.getloadavg()]
    return {**base_machine(), "bwrap": bwrap.stdout.strip(), "load_average_at_start": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "verifiers.json"
    )
    parser.add_argument("--no-mutants", action="store_true", help="skip the (slow) mutant runs")
    parser.add_argument("--code-ab", metavar="REV", help="compare the code verifier with REV")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throughput-run", type=int, metavar="WORKERS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"shared data not found at {DATA}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.throughput_run:
        print(json.dumps(throughput_run(args.throughput_run)))
        return
    if args.code_ab:
        out = args.out if "--out" in sys.argv else args.out.with_name("code_ab.json")
        report = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
        report.update(code_ab(args.code_ab, args.rounds, log))
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {out}: {json.dumps(report['summary'])}")
        return

    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "workers": args.workers,
        "goals": GOALS,
    }
    with Verifiers(VerifyOptions(sandbox="bwrap"), workers=args.workers) as v:
        v.pool.wait_ready()
        report["math"] = bench_math(v, log)
        report["code"] = bench_code(v, log, mutants=not args.no_mutants)
    report["sandbox"] = sandbox_latency()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["met"] = {
        "math_per_s": report["math"]["math_per_s"] >= GOALS["math_per_s"],
        "math500_solution_rate": report["math"]["math500_solution_rate"]
        >= GOALS["math500_solution_rate"],
        "code_programs_per_s": report["code"]["code_programs_per_s"]
        >= GOALS["code_programs_per_s"],
        "humaneval_pass": report["code"]["humaneval"]["passed"] == GOALS["humaneval_pass"],
        "mbpp_pass": report["code"]["mbpp"]["passed"] == GOALS["mbpp_pass"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out} in {report['seconds']} s; goals met: {report['met']}")


if __name__ == "__main__":
    main()
