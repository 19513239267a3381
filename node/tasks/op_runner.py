"""Runs generated output-prediction programs inside the sandbox (stdlib only, no flopnet).

Usage: ``python3 op_runner.py JOB.json START`` with a nonce on stdin. The job is a JSON list of
``{"code", "input"}``; from index START on, each program is executed in a fresh namespace and
``stuff(input)`` called under a CPU-time alarm, with its own prints discarded. One line per
program goes to the original stdout: ``NONCE INDEX {"output": ...}`` or ``{"error": ...}``,
flushed at once, so a run that dies part-way still reports what it finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from typing import Any

PER_PROGRAM_S = 1.0


class _Alarm(BaseException):
    """The per-program time limit (a BaseException, so ``except Exception`` cannot eat it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Alarm


def _run_one(code: str, value: str) -> dict[str, str]:
    namespace: dict[str, Any] = {"__name__": "__stuff__"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            signal.setitimer(signal.ITIMER_REAL, PER_PROGRAM_S)
            try:
                exec(compile(code, "<program>", "exec"), namespace)
                result = namespace["stuff"](value)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _Alarm:
        return {"error": "time limit"}
    except BaseException as exc:  # the program's own failure, SystemExit included
        return {"error": type(exc).__name__}
    if not isinstance(result, str):
        return {"error": f"returned {type(result).__name__}"}
    return {"output": result}


def main() -> None:
    nonce = sys.stdin.readline().strip()
    # A program may replace sys.stdout or close fd 1: report through a copy of it.
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.setrecursionlimit(3000)
    for index in range(int(sys.argv[2]), len(job)):
        outcome = _run_one(job[index]["code"], job[index]["input"])
        report.write(f"{nonce} {index} {json.dumps(outcome)}\n")
        report.flush()


if __name__ == "__main__":
    main()
