"""Where tasks come from: a task source named on the command line, and its field mapping.

``--tasks-file`` names a source, and may be repeated for a mixed task set:

* ``PATH``: a task file whose format is recognised from its records (DeepScaleR, MATH-500,
  HumanEval, MBPP, LeetCode, Codeforces, CodeContests), or read through a field mapping;
* ``output-prediction:PATH``: SYNTHETIC-1's code output prediction, generated from the
  string-processing functions and strings of the code file PATH (``node.tasks.output_prediction``).

``--map`` after a ``--tasks-file`` reads that JSON/JSONL file through a field mapping, e.g.
``problem=question,answer=gt,type=llm_judge``. Field roles (a record's field, ``a.b`` or
``a.0`` for nested values): ``problem``, ``answer``, ``id``, ``tests``, ``entry_point``,
``setup``; constants: ``type`` (math, code, code_output_prediction, llm_judge or an alias) and
``language`` (python, javascript, cpp, rust).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flopnet.node.tasks.base import LANGUAGES, canonical_type
from flopnet.protocol.errors import ConfigError

SOURCE_KINDS = ("file", "output-prediction")
FIELD_ROLES = ("problem", "answer", "id", "tests", "entry_point", "setup")
CONSTANT_ROLES = ("type", "language")
_MAX_MAP_TEXT = 1024


@dataclass(frozen=True)
class FieldMap:
    """Which record field plays which role, the task type, and for code a fixed language."""

    fields: dict[str, str] = field(default_factory=dict, hash=False)
    task_type: str = "math"
    language: str | None = None
    text: str = ""  # as given, so a devnet can hand it on to its nodes

    def field_for(self, role: str) -> str | None:
        """The record field mapped to ``role``: the mapping's, else the role's own name for the
        roles every format shares (problem, answer)."""
        if role in self.fields:
            return self.fields[role]
        return role if role in ("problem", "answer") else None


def parse_map(text: str) -> FieldMap:
    """A ``--map`` value: ``role=field`` pairs separated by commas; ConfigError when malformed."""
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_MAP_TEXT:
        raise ConfigError("--map needs role=field pairs, e.g. problem=question,answer=gt")
    fields: dict[str, str] = {}
    constants: dict[str, str] = {}
    for part in text.split(","):
        role, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not role or not value:
            raise ConfigError(f"--map: {part.strip()!r} is not role=field")
        if role in fields or role in constants:
            raise ConfigError(f"--map: {role!r} is given twice")
        if role in FIELD_ROLES:
            if any(not piece for piece in value.split(".")):
                raise ConfigError(f"--map: {value!r} is not a field name (or a.b path)")
            fields[role] = value
        elif role in CONSTANT_ROLES:
            constants[role] = value
        else:
            known = ", ".join(FIELD_ROLES + CONSTANT_ROLES)
            raise ConfigError(f"--map: unknown role {role!r} (known: {known})")
    task_type = canonical_type(constants.get("type", "math"))
    language = constants.get("language")
    if language is not None:
        language = language.lower()
        if language not in LANGUAGES:
            raise ConfigError(f"--map: language must be one of {', '.join(LANGUAGES)}")
        if task_type != "code":
            raise ConfigError("--map: language applies to type=code only")
    if task_type == "code" and "tests" not in fields:
        raise ConfigError("--map: type=code needs tests=FIELD")
    return FieldMap(fields, task_type, language, text.strip())


@dataclass(frozen=True)
class TaskSourceSpec:
    """One ``--tasks-file`` value (and its ``--map``, if any)."""

    path: Path
    kind: str = "file"
    field_map: FieldMap | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"unknown task source kind {self.kind!r}")
        if self.field_map is not None and self.kind != "file":
            raise ConfigError(f"--map applies to task files, not to {self.kind}:{self.path}")

    def argument(self) -> str:
        """The ``--tasks-file`` value that names this source."""
        return str(self.path) if self.kind == "file" else f"{self.kind}:{self.path}"

    def arguments(self) -> list[str]:
        """Command-line arguments that give a node this source (for the devnet)."""
        args = ["--tasks-file", self.argument()]
        if self.field_map is not None:
            args += ["--map", self.field_map.text]
        return args


def parse_source(text: str, field_map: str | None = None) -> TaskSourceSpec:
    """A ``--tasks-file`` value (``PATH`` or ``KIND:PATH``) with its optional ``--map``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("--tasks-file needs a path")
    kind, path = "file", text
    for candidate in SOURCE_KINDS[1:]:
        if text.startswith(candidate + ":"):
            kind, path = candidate, text[len(candidate) + 1 :]
    if not path:
        raise ConfigError(f"--tasks-file {text}: no path after {kind}:")
    mapping = parse_map(field_map) if field_map is not None else None
    return TaskSourceSpec(Path(path), kind, mapping)


def parse_languages(text: str) -> tuple[str, ...]:
    """A ``--languages`` value: comma-separated language names, each known, none twice."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("--languages needs at least one of: " + ", ".join(LANGUAGES))
    unknown = [n for n in names if n not in LANGUAGES]
    if unknown:
        known = ", ".join(LANGUAGES)
        raise ConfigError(f"--languages: unknown {', '.join(unknown)} (known: {known})")
    return names
