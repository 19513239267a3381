"""The user message of each task: its problem and the instruction for its type and language.

DeepSeek's usage recommendations for R1 are followed: no system prompt (every instruction is in
the user message) and, for math, "Please reason step by step, and put your final answer within
\\boxed{}." Code tasks are worded as SYNTHETIC-1 posed its verifiable coding problems ("Solve the
following coding problem using the programming language ..."), with a last line naming the
fence the code verifier reads (it takes the last fenced block in the task's language). The task
decides this message; the model's chat template wraps it (``node.model.prompt``).
"""

from __future__ import annotations

from flopnet.node.tasks.base import Task

# DeepSeek's recommended directive for math problems (DeepSeek-R1 model card, usage notes).
MATH_DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."
# Judge-scored STEM answers: the judge reads the final answer after the reasoning.
JUDGE_DIRECTIVE = MATH_DIRECTIVE
# What the output-prediction verifier reads: the "output" field of the last JSON object.
OUTPUT_DIRECTIVE = (
    "Return your response as a json with a field 'output' that contains the predicted output "
    "string."
)
#: Instructions by task type (code depends on the language and the kind of tests: see
#: :func:`code_message`).
DIRECTIVES = {
    "math": MATH_DIRECTIVE,
    "llm_judge": JUDGE_DIRECTIVE,
    "code_output_prediction": OUTPUT_DIRECTIVE,
}

CODE_INTRO = "Solve the following coding problem using the programming language {language}:\n\n"
STDIO_NOTE = "\n\nThe input will be stdin and you should print your solution to stdout\n\n"
CODE_END = "\nNow solve the problem and return the code."
FENCE_NOTE = "\nPut your complete solution in a single ```{language} code block."


def code_message(problem: str, language: str, *, stdio: bool) -> str:
    """The user message of a code task in ``language`` (stdin/stdout or function tests)."""
    body = CODE_INTRO.format(language=language) + problem.strip()
    body += STDIO_NOTE if stdio else "\n\n"
    return body + CODE_END + FENCE_NOTE.format(language=language)


def _is_stdio(task: Task) -> bool:
    from flopnet.protocol.errors import VerifierError
    from flopnet.verifiers.code_tests import parse_tests

    try:
        return parse_tests(task.verifier).kind == "stdio"
    except VerifierError:
        return False  # the validator will say what is wrong with the tests


def user_message(task: Task) -> str:
    """The whole user message the model sees for ``task`` (problem and instruction)."""
    if task.task_type == "code":
        language = task.verifier.get("language", "python")
        return code_message(task.problem, str(language), stdio=_is_stdio(task))
    directive = DIRECTIVES.get(task.task_type, MATH_DIRECTIVE)
    return f"{task.problem}\n{directive}"
