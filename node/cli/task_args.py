"""Command-line options shared by ``flopnet node`` and ``flopnet devnet``: task sources (a
repeatable ``--tasks-file``, each with an optional ``--map``), languages, and the validator's
LLM judge. Kept free of heavy imports (``flopnet --help`` stays instant)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flopnet.node.tasks.base import LANGUAGES
from flopnet.node.tasks.sources import TaskSourceSpec, parse_languages, parse_source

if TYPE_CHECKING:
    from flopnet.node.config import EnvSettings, JudgeSettings

SOURCES_DEST = "task_sources"


class _SourcesAction(argparse.Action):
    """``--tasks-file`` (``const="file"``: append a new source) and ``--map`` (``const="map"``:
    the field mapping of the ``--tasks-file`` just before it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        sources = list(getattr(namespace, SOURCES_DEST, None) or [])
        if self.const == "file":
            sources.append([values, None])
        elif not sources:
            parser.error("--map must follow the --tasks-file it applies to")
        elif sources[-1][1] is not None:
            parser.error(f"--tasks-file {sources[-1][0]} has two --map options")
        else:
            sources[-1][1] = values
        setattr(namespace, SOURCES_DEST, sources)


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """``--tasks``, ``--tasks-file`` (repeatable), ``--map`` and ``--languages``."""
    p.add_argument(
        "--tasks", type=int, default=6, help="tasks to load from each task source (default 6)"
    )
    p.add_argument(
        "--tasks-file",
        action=_SourcesAction,
        const="file",
        dest=SOURCES_DEST,
        metavar="[output-prediction:]PATH",
        help="a task file (DeepScaleR, MATH-500, HumanEval, MBPP, LeetCode, Codeforces, "
        "CodeContests, or any JSON/JSONL with --map); output-prediction:PATH generates code "
        "output prediction tasks from the code file PATH; repeat for a mixed set",
    )
    p.add_argument(
        "--map",
        action=_SourcesAction,
        const="map",
        dest="_map",  # stored on the source before it
        metavar="ROLE=FIELD,...",
        help="field mapping of the preceding --tasks-file, e.g. problem=question,answer=gt; "
        "type=math|code|code_output_prediction|llm_judge, language=..., id=, tests=",
    )
    p.add_argument(
        "--languages",
        default=",".join(LANGUAGES),
        help="languages LeetCode and stdin/stdout code problems are posed in (default: all)",
    )


def add_judge_arguments(p: argparse.ArgumentParser) -> None:
    """The validator's LLM judge for ``llm_judge`` tasks (environment: FLOPNET_JUDGE_*)."""
    p.add_argument("--judge-url", help="validator: OpenAI-compatible base URL of the LLM judge")
    p.add_argument("--judge-model", help="validator: model name sent to the judge")
    p.add_argument(
        "--judge-key-file", type=Path, help="validator: file holding the judge's API key (0600)"
    )


def task_sources(args: argparse.Namespace) -> tuple[TaskSourceSpec, ...]:
    """The ``--tasks-file`` sources, each with its ``--map``; ConfigError when malformed."""
    raw = getattr(args, SOURCES_DEST, None) or []
    return tuple(parse_source(path, mapping) for path, mapping in raw)


def languages(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--languages`` value, checked."""
    return parse_languages(args.languages)


def judge_settings(args: argparse.Namespace, env: EnvSettings) -> JudgeSettings:
    """The judge from flags, falling back to FLOPNET_JUDGE_URL/_MODEL/_API_KEY."""
    from flopnet.node.config import JudgeSettings, read_key_file

    key = read_key_file(args.judge_key_file) if args.judge_key_file else env.judge_api_key
    return JudgeSettings(
        url=args.judge_url or env.judge_url,
        model=args.judge_model or env.judge_model or "judge",
        api_key=key,
    )
