"""``flopnet verify FILE.jsonl [--out OUT.jsonl]``: judge a file of responses offline.

Each input line is a JSON object with ``task_type``, ``response`` and what the type needs (see
:mod:`verifiers.registry`), optionally ``response_tokens``; other fields are carried through.
Each output line is the input plus ``score``, ``passed``, ``reasons``, ``error`` and ``rules``,
in input order. Nothing here needs the network (except an LLM judge, if one is configured), so
validators can audit submissions anywhere. Heavy imports stay inside the handler so that
``flopnet --help`` remains instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from flopnet.node.cli.task_args import add_judge_arguments

#: Exit codes: 0 all lines judged, 1 some lines were malformed, 2 nothing could be judged.
EXIT_OK, EXIT_MALFORMED, EXIT_UNUSABLE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``verify`` subcommand to ``sub``; return its handler."""
    p = sub.add_parser("verify", help="verify a JSONL file of responses (offline audit)")
    p.add_argument("file", type=Path, help="input JSONL ('-' for stdin)")
    p.add_argument("--out", type=Path, help="output JSONL (default: stdout)")
    p.add_argument("--workers", type=int, default=2, help="verifier child processes")
    p.add_argument(
        "--sandbox",
        default="auto",
        choices=("auto", "bwrap", "docker", "unsafe"),
        help="where code runs (auto: bubblewrap, else Docker)",
    )
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="allow --sandbox unsafe: run untrusted code with NO isolation",
    )
    p.add_argument("--docker-url", help="Docker daemon URL (default: DOCKER_HOST or the socket)")
    add_judge_arguments(p)
    p.add_argument(
        "--no-require-boxed", action="store_true", help="math: accept an answer without \\boxed"
    )
    p.add_argument(
        "--no-require-fence", action="store_true", help="code: accept code outside a ``` block"
    )
    p.add_argument("--max-tokens", type=int, help="truncation rule: the generation cap")
    p.add_argument("--rules-gate", action="store_true", help="a failed rule check fails the answer")
    p.add_argument("--code-budget", type=float, default=60.0, help="code: seconds for all tests")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return {"verify": run_verify}


def _lines(path: Path) -> Iterator[str]:
    if str(path) == "-":
        yield from sys.stdin
        return
    with path.open(encoding="utf-8") as fh:
        yield from fh


def parse_line(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable line, (None, why) for a malformed one."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return None, f"malformed JSON: {exc}"
    if not isinstance(record, dict):
        return None, "a line must be a JSON object"
    if not isinstance(record.get("response"), str):
        return None, "the line has no string 'response'"
    tokens = record.get("response_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        return None, "'response_tokens' must be an integer"
    return record, None


def _scan(path: Path) -> tuple[int | None, set[str]]:
    """Line count and task types of a file (None, {} for stdin) for the progress bar and the
    up-front sandbox check."""
    if str(path) == "-":
        return None, set()
    count, types = 0, set()
    for line in _lines(path):
        if not line.strip():
            continue
        count += 1
        record, _ = parse_line(line)
        if record is not None and isinstance(record.get("task_type"), str):
            types.add(record["task_type"])
    return count, types


def _progress(total: int | None, disabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="line", file=sys.stderr, disable=disabled, dynamic_ncols=True)


def run_verify(args: argparse.Namespace) -> int:
    """The ``verify`` handler."""
    from flopnet.node.cli.task_args import judge_settings
    from flopnet.node.config import env_settings
    from flopnet.protocol.errors import VerifierError
    from flopnet.verifiers.registry import Verifiers, VerifyOptions
    from flopnet.verifiers.result import Result

    if str(args.file) != "-" and not args.file.is_file():
        print(f"flopnet verify: no such file: {args.file}", file=sys.stderr)
        return EXIT_UNUSABLE
    total, types = _scan(args.file)
    judge = judge_settings(args, env_settings())
    options = VerifyOptions(
        require_boxed=not args.no_require_boxed,
        sandbox=args.sandbox,
        allow_unsafe=args.unsafe_no_sandbox,
        docker_url=args.docker_url,
        require_fence=not args.no_require_fence,
        code_budget_s=args.code_budget,
        judge_url=judge.url,
        judge_model=judge.model,
        judge_api_key=judge.api_key,
        max_tokens=args.max_tokens,
        rules_gate=args.rules_gate,
    )
    malformed = 0
    with Verifiers(options, workers=max(1, args.workers)) as verifiers:
        code_types = {"code", *verifiers.registry.get("code").aliases}
        if types & code_types:
            try:
                verifiers.sandbox()
            except VerifierError as exc:
                print(f"flopnet verify: {exc}", file=sys.stderr)
                return EXIT_UNUSABLE
        records: list[dict[str, Any] | None] = []
        problems: list[str | None] = []

        def items() -> Iterator[tuple[dict[str, Any], str, int | None]]:
            # Malformed lines still take their place in the output, judged as a failure.
            for line in _lines(args.file):
                if not line.strip():
                    continue
                record, problem = parse_line(line)
                records.append(record)
                problems.append(problem)
                if record is None:
                    yield {}, "", None
                else:
                    yield record, record["response"], record.get("response_tokens")

        out: IO[str] = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
        bar = _progress(total, args.no_progress)
        try:
            for i, result in enumerate(verifiers.verify_many(items())):
                record, problem = records[i], problems[i]
                if problem is not None:
                    malformed += 1
                    result = Result.failure(problem)
                    record = {"line": i + 1}
                row = {**(record or {}), **result.to_dict()}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                records[i] = None  # keep memory flat on big files
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if args.out:
                out.close()
            else:
                out.flush()
    if malformed:
        print(f"flopnet verify: {malformed} malformed line(s)", file=sys.stderr)
        return EXIT_MALFORMED
    return EXIT_OK
