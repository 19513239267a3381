"""One interface for every task type: ``Verifiers.verify(task, response) -> Result``.

A :class:`TaskType` names the job that judges it (a ``module:function`` run in a killable
:class:`~verifiers.pool.VerifierPool` child), its default hard timeout and how many of its jobs
may run at once; its ``prepare`` function checks the task in the caller's process and builds the
job's arguments. :data:`REGISTRY` holds the built-in types (``task["task_type"]``):

=========================  ==================================================================
``math``                   ``gold`` (or ``answer``): string, number or list of alternatives
``code``                   ``tests`` (+ ``entry_point``, ``test_setup_code``, ``language``,
                           ``time_limit``, ``memory_limit_mb``): see :mod:`verifiers.code_tests`
``code_output_prediction`` ``gold``: the expected output text (+ ``field``, default "output")
``llm_judge``              ``question`` (or ``problem``/``prompt``) and ``gold`` (or
                           ``reference``/``answer``); needs ``VerifyOptions.judge_url``
=========================  ==================================================================

Every verdict carries the rule checks (:mod:`verifiers.rules`). ``verify`` never raises for a
bad task, a missing sandbox or a dead child: it returns a zero result with ``error`` set.
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers import code, judge, output_prediction
from flopnet.verifiers.code_tests import parse_tests
from flopnet.verifiers.pool import CHECK_MATH, MATH_WARMUP, VerifierPool, job_name, resolve_job
from flopnet.verifiers.result import Result
from flopnet.verifiers.rules import attach_rules, run_rules
from flopnet.verifiers.sandbox import SandboxConfig, select_sandbox


@dataclass(frozen=True)
class VerifyOptions:
    """Policy and settings shared by all task types (the node's or the CLI's configuration)."""

    require_boxed: bool = True
    math_timeout_s: int = 5
    sandbox: str = "auto"
    allow_unsafe: bool = False
    docker_url: str | None = None
    require_fence: bool = True
    code_budget_s: float = 60.0
    judge_url: str | None = None
    judge_model: str = "judge"
    judge_api_key: str | None = None
    judge_threshold: float = 0.5
    judge_timeout_s: float = 60.0
    max_tokens: int | None = None
    rules_gate: bool = False
    #: Per-type limits on jobs running at once, e.g. {"code": 1}; default: the pool size.
    concurrency: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """What one verification runs in a pool child."""

    fn: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout_s: float


Prepare = Callable[[Mapping[str, Any], str, VerifyOptions, "Verifiers"], Job]


@dataclass(frozen=True)
class TaskType:
    """A task type: its name and aliases, how to build its job, its concurrency."""

    name: str
    prepare: Prepare
    aliases: tuple[str, ...] = ()
    concurrency: int | None = None


class Registry:
    """Task types by name and alias."""

    def __init__(self, types: Iterable[TaskType] = ()) -> None:
        self._types: dict[str, TaskType] = {}
        self._names: dict[str, str] = {}
        for t in types:
            self.register(t)

    def register(self, task_type: TaskType) -> None:
        """Add (or replace) a task type."""
        self._types[task_type.name] = task_type
        for name in (task_type.name, *task_type.aliases):
            self._names[name] = task_type.name

    def get(self, name: object) -> TaskType:
        """The type called ``name`` (or an alias); VerifierError when unknown."""
        if not isinstance(name, str) or name not in self._names:
            raise VerifierError(f"unknown task_type {name!r} (known: {', '.join(self.names())})")
        return self._types[self._names[name]]

    def names(self) -> list[str]:
        return sorted(self._types)


# -- the job every verification runs in a pool child -------------------------------------------


def run_job(
    fn: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    response: str,
    limits: tuple[int | None, int | None],
    gate: bool,
) -> Result:
    """Pool-child entry point: the task type's check, then the rule checks attached.

    The rule checks run here rather than in the caller because an n-gram pass over a long
    response costs milliseconds of the caller's GIL; children run in parallel.
    """
    result = resolve_job(fn)(*args, **kwargs)
    if not isinstance(result, Result):
        raise VerifierError(f"verifier job {fn} returned {type(result).__name__}, not Result")
    checks = run_rules(response, response_tokens=limits[0], max_tokens=limits[1])
    return attach_rules(result, checks, gate=gate)


RUN_JOB = job_name(run_job)


# -- the built-in types -----------------------------------------------------------------------


def _prepare_math(task: Mapping[str, Any], response: str, o: VerifyOptions, v: Verifiers) -> Job:
    gold = task.get("gold", task.get("answer"))
    if gold is None:
        raise VerifierError("math task has no 'gold' answer")
    require_boxed = task.get("require_boxed", o.require_boxed)
    secs = max(1, int(o.math_timeout_s))
    return Job(
        CHECK_MATH,
        (response, gold),
        {"require_boxed": bool(require_boxed), "timeout_s": secs},
        3.0 * secs + 2.0,  # the gold parse, the answer parse and the comparison each get an alarm
    )


def _prepare_code(task: Mapping[str, Any], response: str, o: VerifyOptions, v: Verifiers) -> Job:
    tests = parse_tests(task)  # a malformed task fails here, before it costs a child
    return Job(
        job_name(code.check_code),
        (dict(task), response),
        {"sandbox": v.sandbox(), "require_fence": o.require_fence, "budget_s": o.code_budget_s},
        code.hard_timeout(tests, o.code_budget_s),
    )


def _prepare_output(task: Mapping[str, Any], response: str, o: VerifyOptions, v: Verifiers) -> Job:
    output_prediction.gold_output(task)
    name = task.get("field", "output")
    return Job(
        job_name(output_prediction.check_output_prediction),
        (dict(task), response),
        {"field": name},
        10.0,
    )


def _prepare_judge(task: Mapping[str, Any], response: str, o: VerifyOptions, v: Verifiers) -> Job:
    if not o.judge_url:
        raise VerifierError("no LLM judge configured (set judge_url / --judge-url)")
    return Job(
        job_name(judge.check_judge),
        (dict(task), response),
        {
            "url": o.judge_url,
            "model": o.judge_model,
            "api_key": o.judge_api_key,
            "threshold": o.judge_threshold,
            "timeout_s": o.judge_timeout_s,
        },
        o.judge_timeout_s + 10.0,
    )


REGISTRY = Registry(
    [
        TaskType("math", _prepare_math, aliases=("verifiable_math",)),
        TaskType("code", _prepare_code, aliases=("verifiable_code",)),
        TaskType(
            "code_output_prediction", _prepare_output, aliases=("output_prediction", "code_output")
        ),
        TaskType("llm_judge", _prepare_judge, aliases=("stem", "swe", "judge")),
    ]
)


# -- the facade -------------------------------------------------------------------------------


class Verifiers:
    """Verifies responses of any registered task type in a pool of killable children.

    Thread-safe. Owns its pool unless one is passed. The sandbox for code is chosen at the first
    code task (``VerifyOptions.sandbox``), so a math-only validator needs none.
    """

    def __init__(
        self,
        options: VerifyOptions | None = None,
        *,
        pool: VerifierPool | None = None,
        workers: int = 2,
        registry: Registry = REGISTRY,
    ) -> None:
        self.options = options or VerifyOptions()
        self.registry = registry
        self._own_pool = pool is None
        self.pool = pool if pool is not None else VerifierPool(workers, warmup=(MATH_WARMUP,))
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._sandbox: SandboxConfig | None = None
        self._executor: ThreadPoolExecutor | None = None

    def sandbox(self) -> SandboxConfig:
        """The sandbox for code (probed once); SandboxUnavailable says what to install."""
        with self._lock:
            if self._sandbox is None:
                o = self.options
                self._sandbox = select_sandbox(
                    o.sandbox, allow_unsafe=o.allow_unsafe, docker_url=o.docker_url
                )
            return self._sandbox

    def _semaphore(self, task_type: TaskType) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._sems.get(task_type.name)
            if sem is None:
                limit = self.options.concurrency.get(task_type.name, task_type.concurrency)
                size = self.pool.size if limit is None else max(1, min(limit, self.pool.size))
                sem = self._sems[task_type.name] = threading.BoundedSemaphore(size)
            return sem

    def verify(
        self, task: Mapping[str, Any], response: str, *, response_tokens: int | None = None
    ) -> Result:
        """Judge ``response`` to ``task``; the rule checks ride along with every verdict."""
        max_tokens = task.get("max_tokens", self.options.max_tokens) if task else None
        limits = (response_tokens, max_tokens if isinstance(max_tokens, int) else None)
        gate = self.options.rules_gate
        try:
            if not isinstance(task, Mapping):
                raise VerifierError("task must be a mapping")
            if not isinstance(response, str):
                raise VerifierError(f"response must be a string, got {type(response).__name__}")
            task_type = self.registry.get(task.get("task_type"))
            job = task_type.prepare(task, response, self.options, self)
            with self._semaphore(task_type):
                # The response appears twice but pickles once (pickle memoizes the object).
                result = self.pool.run(
                    RUN_JOB, job.fn, job.args, job.kwargs, response, limits, gate,
                    timeout=job.timeout_s,
                )  # fmt: skip
        except VerifierError as exc:
            result = Result.failure(str(exc))
        if not result.rules:
            # The job never got to its rule checks (timeout, crash, unusable task).
            checks = run_rules(response, response_tokens=limits[0], max_tokens=limits[1])
            result = attach_rules(result, checks, gate=gate)
        return result

    def verify_many(
        self, items: Iterable[tuple[Mapping[str, Any], str, int | None]], *, window: int = 0
    ) -> Iterator[Result]:
        """Verify (task, response, response_tokens) items concurrently; results in input order.

        At most ``window`` (default 4 × pool size) items are in flight, so a large input file is
        streamed, not loaded.
        """
        window = window or 4 * self.pool.size
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(window, thread_name_prefix="verify")
            executor = self._executor
        pending: deque[Future[Result]] = deque()
        for task, response, tokens in items:
            pending.append(executor.submit(self.verify, task, response, response_tokens=tokens))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Stop the helper threads and, if owned, the pool."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if self._own_pool:
            self.pool.close()

    def __enter__(self) -> Verifiers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Verifiers | None = None
_default_lock = threading.Lock()


def default_verifiers() -> Verifiers:
    """A process-wide :class:`Verifiers` with default options (closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Verifiers()
            atexit.register(_default.close)
        return _default


def verify(task: Mapping[str, Any], response: str, *, response_tokens: int | None = None) -> Result:
    """``default_verifiers().verify(task, response)``: the one-call interface."""
    return default_verifiers().verify(task, response, response_tokens=response_tokens)
