"""Task sets: where a publisher's tasks come from, and the user message each one poses.

One module per source family: :mod:`.builtin` (arithmetic word problems, no files needed),
:mod:`.math_tasks` (DeepScaleR, MATH-500; judge-scored STEM tasks), :mod:`.code_tasks`
(HumanEval, MBPP, LeetCode, Codeforces, CodeContests in Python, JavaScript, C++ and Rust),
:mod:`.mapped` (any JSON/JSONL file through ``--map``), :mod:`.output_prediction` (SYNTHETIC-1's
code output prediction, generated and run in the sandbox); :mod:`.files` reads files as
untrusted input and assembles a mixed set, :mod:`.prompts` holds the instructions. Importing this
package stays cheap (no torch, no sandbox).
"""

from flopnet.node.tasks.base import (
    LANGUAGES,
    TASK_TYPES,
    Task,
    UnusableRecord,
    task_from_spec,
    task_set_of,
    task_spec,
)
from flopnet.node.tasks.builtin import builtin_tasks
from flopnet.node.tasks.files import LoadedSource, load_source, load_task_sources, load_tasks_file
from flopnet.node.tasks.prompts import DIRECTIVES, MATH_DIRECTIVE, user_message
from flopnet.node.tasks.sources import (
    FieldMap,
    TaskSourceSpec,
    parse_languages,
    parse_map,
    parse_source,
)

__all__ = [
    "DIRECTIVES",
    "LANGUAGES",
    "MATH_DIRECTIVE",
    "TASK_TYPES",
    "FieldMap",
    "LoadedSource",
    "Task",
    "TaskSourceSpec",
    "UnusableRecord",
    "builtin_tasks",
    "load_source",
    "load_task_sources",
    "load_tasks_file",
    "parse_languages",
    "parse_map",
    "parse_source",
    "task_from_spec",
    "task_set_of",
    "task_spec",
    "user_message",
]
