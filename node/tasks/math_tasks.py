"""Math tasks (DeepScaleR JSON arrays, MATH-500 JSONL: ``problem`` and ``answer``) and
judge-scored tasks (a STEM question with a reference answer that the validator's LLM judge
scores 0-100 against the response's final answer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flopnet.node.tasks.base import (
    MAX_ANSWER_BYTES,
    MAX_PROBLEM_BYTES,
    Task,
    UnusableRecord,
    check_task,
    make_task_id,
    text,
)


def is_math_record(record: Mapping[str, Any]) -> bool:
    """Whether a record has the fields of a DeepScaleR or MATH-500 problem."""
    return "problem" in record and "answer" in record


def normalise_answer(answer: object) -> object:
    """One gold answer: Minerva stores a list of strings with trailing newlines, AMC floats like
    27.0 (made "27" by :func:`base.text`)."""
    if isinstance(answer, list):
        if not answer:
            raise UnusableRecord("the answer is an empty list")
        answer = answer[0]
    return answer.strip() if isinstance(answer, str) else answer


def math_task(stem: str, index: int, problem: object, answer: object, *parts: str) -> Task:
    """A math task, checked; UnusableRecord for an empty gold answer (it cannot label)."""
    problem_text = text(problem, "problem", MAX_PROBLEM_BYTES)
    gold = text(normalise_answer(answer), "answer", MAX_ANSWER_BYTES, numbers=True)
    task_id = make_task_id(stem, index, problem_text, *parts)
    return check_task(Task(task_id, "math", problem_text, gold))


def judge_task(stem: str, index: int, problem: object, reference: object, *parts: str) -> Task:
    """A judge-scored task: the judge sees the question and the reference (``verifiers.judge``)."""
    question = text(problem, "problem", MAX_PROBLEM_BYTES)
    gold = text(normalise_answer(reference), "reference answer", MAX_ANSWER_BYTES, numbers=True)
    task_id = make_task_id(stem, index, question, "judge", *parts)
    # The validator hands the judge ``verifier`` + gold; the question must travel in it.
    return check_task(Task(task_id, "llm_judge", question, gold, {"question": question}))
