"""A small pool of killable child processes that run verifier jobs in their main thread.

Why not threads or concurrent.futures: math-verify's timeouts need SIGALRM, which only works in a
process's main thread, and some inputs hang past the alarm, so a stuck job must be killed with
SIGKILL and its process replaced. ``ProcessPoolExecutor`` cannot kill one job, hence this pool.

Children are started with the ``spawn`` context by default (fork+exec, safe in a process that
runs trio and threads). Each child serves one job at a time over its own Pipe; a caller thread
takes an idle child, sends the job, and waits on the pipe for at most ``timeout`` seconds.

Semantics (the same for every job function):

* :meth:`VerifierPool.run` returns the job's :class:`Result`. A job that exceeds ``timeout`` has its
  child SIGKILLed and replaced, and ``run`` returns ``Result(score=0, passed=False,
  error="timeout: ...")``; a child that dies (segfault, ``os._exit``, OOM kill) is replaced and
  ``run`` returns ``Result(score=0, passed=False, error="crash: ...")``. Both are properties of the
  (untrusted) answer being judged, so they come back as results, not exceptions.
* An exception raised by the job itself (e.g. VerifierError for an unusable gold answer), an
  unpicklable job, a job that returns something other than a Result, or a closed pool raise
  VerifierError: those are faults of the task or the caller.
* :meth:`VerifierPool.call` is the lower-level form for any return value; it raises
  :class:`JobTimeout` / :class:`WorkerCrashed` (both VerifierError) instead.

The timeout counts from the moment the job is handed to a ready child; waiting for a free child
and a replacement child's start-up do not count against it.

As with any ``spawn`` pool, children re-import the parent's ``__main__`` script, so a program that
creates a pool from a script must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers import math_verifier
from flopnet.verifiers.result import Result

JobFn = str | Callable[..., Any]

log = logging.getLogger(__name__)


def job_name(fn: Callable[..., Any]) -> str:
    """The ``"package.module:function"`` name a child imports ``fn`` by, taken from the function
    itself (so a moved or renamed module cannot leave a stale string behind)."""
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or fn.__module__ == "__main__":
        raise VerifierError(f"{name} cannot be imported by name in a child process")
    return name


#: ``warmup`` entry that imports math-verify/sympy and runs one check in each child at start.
MATH_WARMUP = job_name(math_verifier.warm_up)
CHECK_MATH = job_name(math_verifier.check_math)


class JobTimeout(VerifierError):
    """A job ran past its hard timeout; its child was killed."""


class WorkerCrashed(VerifierError):
    """A child process died while running a job."""


def resolve_job(fn: JobFn) -> Callable[..., Any]:
    """The function a job names: a callable as is, or ``"package.module:function"`` imported."""
    if callable(fn):
        return fn
    module, sep, name = fn.partition(":")
    if not sep or not module or not name:
        raise VerifierError(f"job name must look like 'package.module:function', got {fn!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise VerifierError(f"{fn!r} is not callable")
    return obj


def _watch_parent(parent_pid: int) -> None:
    # A child stuck in a job would outlive a parent that died without closing the pool. PDEATHSIG
    # is unsuitable: it fires when the *thread* that spawned the child exits (trio's worker threads
    # do), so poll instead.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _child_main(conn: Connection, parent_pid: int, warmup: Sequence[str]) -> None:
    """Child loop: warm up, report ready, then run (fn, args, kwargs) jobs until EOF or None."""
    # Ctrl-C in the node's terminal reaches the whole process group; the parent closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    warm_errors = []
    for name in warmup:
        try:
            resolve_job(name)()
        except Exception as exc:  # a failed warm-up only costs speed; report it, keep serving
            warm_errors.append(f"{name}: {type(exc).__name__}: {exc}")
    conn.send(("ready", warm_errors))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            # Unpickle here, inside the try: a job whose module cannot be imported in the child
            # is reported to the caller instead of killing the child.
            job = pickle.loads(data)
            if job is None:
                return
            fn, args, kwargs = job
            value = resolve_job(fn)(*args, **kwargs)
            reply: tuple[Any, ...] = ("ok", value)
            payload = pickle.dumps(reply)  # fail here, not half-way through a send
        except BaseException as exc:
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            reply = (
                "err",
                type(exc).__name__,
                str(exc),
                isinstance(exc, VerifierError),
                traceback.format_exc(limit=8),
            )
            payload = pickle.dumps(reply)
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, warmup: Sequence[str]) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.conn: Connection = parent_conn
        self.proc: BaseProcess = ctx.Process(
            target=_child_main,
            args=(child_conn, os.getpid(), tuple(warmup)),
            name="flopnet-verifier",
            daemon=True,
        )
        self.proc.start()
        child_conn.close()  # so EOF on our end means the child is gone
        self.ready = False
        self.jobs = 0
        self.warm_errors: list[str] = []

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        # Start-up failures are the host's problem, not the answer's: plain VerifierError.
        try:
            if not self.conn.poll(timeout):
                raise VerifierError(f"verifier child did not start within {timeout:.0f} s")
            _, warm_errors = self.conn.recv()
        except (EOFError, OSError):
            raise VerifierError(f"verifier child died at start-up ({self.exit_desc()})") from None
        self.ready = True
        self.warm_errors = list(warm_errors)

    def exit_desc(self) -> str:
        self.proc.join(timeout=1.0)
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def kill(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.proc.join(timeout=5.0)
        self.conn.close()

    def stop(self, grace: float) -> None:
        """Ask the child to exit; kill it if it does not within ``grace`` seconds."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(timeout=grace)
        self.kill()


class VerifierPool:
    """``workers`` child processes running verifier jobs; thread-safe, context manager.

    ``warmup`` names zero-argument functions (``"module:function"``) each child runs before taking
    jobs, e.g. :data:`MATH_WARMUP`. ``max_jobs_per_worker`` recycles a child after that many jobs to
    bound memory growth (sympy caches); None disables it.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        context: str = "spawn",
        warmup: Sequence[str] = (),
        start_timeout: float = 120.0,
        max_jobs_per_worker: int | None = 2000,
    ) -> None:
        if workers < 1:
            raise VerifierError("a verifier pool needs at least one worker")
        if context not in ("spawn", "forkserver"):
            # fork would copy a trio/threaded parent's locks mid-flight.
            raise VerifierError(f"unsupported multiprocessing context {context!r}")
        self._ctx = multiprocessing.get_context(context)
        self._warmup = tuple(warmup)
        self._start_timeout = start_timeout
        self._max_jobs = max_jobs_per_worker
        self._cond = threading.Condition()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._idle: list[_Worker] = [_Worker(self._ctx, self._warmup) for _ in range(workers)]
        self._all: set[_Worker] = set(self._idle)
        self._size = workers
        self._stats = dict.fromkeys(
            ("jobs", "timeouts", "crashes", "errors", "replaced", "start_failures"), 0
        )

    # -- public API -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def stats(self) -> dict[str, int]:
        """Counters: jobs, timeouts, crashes, errors (job exceptions), replaced, start_failures."""
        with self._cond:
            return dict(self._stats)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every idle child has started (and warmed up); optional, for start-up."""
        deadline = time.monotonic() + (self._start_timeout if timeout is None else timeout)
        # Take every child, as call() does, so no job shares a pipe with this wait.
        taken = [self._acquire() for _ in range(self._size)]
        try:
            for w in taken:
                w.wait_ready(max(0.0, deadline - time.monotonic()))
        finally:
            for w in taken:
                if w.ready:
                    self._idle_again(w)
                else:
                    self._discard(w, "start_failures")

    def warm_errors(self) -> list[str]:
        """Warm-up failures reported by the children started so far (empty when all went well)."""
        with self._cond:
            return sorted({e for w in self._all for e in w.warm_errors})

    def call(self, fn: JobFn, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in a child and return its value.

        ``fn`` is a module-level function (pickled by reference, so the child must be able to
        import its module) or a ``"module:function"`` string. Raises JobTimeout, WorkerCrashed or
        VerifierError (job exception, closed pool).
        """
        if timeout <= 0:
            raise VerifierError("timeout must be positive")
        try:
            job = pickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise VerifierError(f"job is not picklable: {exc}") from None
        worker = self._acquire()
        try:
            worker.wait_ready(self._start_timeout)
        except BaseException:
            self._discard(worker, "start_failures")
            raise
        worker.jobs += 1
        with self._cond:
            self._stats["jobs"] += 1
        try:
            worker.conn.send_bytes(job)
            reply = worker.conn.recv() if worker.conn.poll(timeout) else None
        except (EOFError, OSError):
            desc = worker.exit_desc()
            self._discard(worker, "crashes")
            if self._closed:
                raise VerifierError("verifier pool closed") from None
            raise WorkerCrashed(f"crash: verifier child died ({desc})") from None
        except BaseException:
            # Interrupted mid-job (KeyboardInterrupt, trio cancellation): child state unknown.
            self._discard(worker, None)
            raise
        if reply is None:
            self._discard(worker, "timeouts")
            raise JobTimeout(f"timeout: job exceeded {timeout:g} s; verifier child killed")
        self._release(worker)
        if reply[0] == "ok":
            return reply[1]
        _, type_name, message, is_verifier_error, tb = reply
        with self._cond:
            self._stats["errors"] += 1
        log.debug("verifier job %r raised in the child:\n%s", fn, tb)
        if is_verifier_error:
            raise VerifierError(message)
        raise VerifierError(f"verifier job raised {type_name}: {message}")

    def run(self, fn: JobFn, *args: Any, timeout: float, **kwargs: Any) -> Result:
        """Run a job that returns a Result; timeouts and crashes become zero results with error."""
        try:
            value = self.call(fn, *args, timeout=timeout, **kwargs)
        except (JobTimeout, WorkerCrashed) as exc:
            return Result.failure(str(exc))
        if not isinstance(value, Result):
            raise VerifierError(f"verifier job returned {type(value).__name__}, not Result")
        return value

    def submit(self, fn: JobFn, *args: Any, timeout: float, **kwargs: Any) -> Future[Result]:
        """:meth:`run` on a helper thread; returns a concurrent.futures Future."""
        with self._cond:
            if self._closed:
                raise VerifierError("verifier pool closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._size, thread_name_prefix="verifier")
            executor = self._executor
        return executor.submit(self.run, fn, *args, timeout=timeout, **kwargs)

    def close(self, grace: float = 2.0) -> None:
        """Stop every child (busy ones are killed; their callers get VerifierError). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, busy = list(self._idle), [w for w in self._all if w not in self._idle]
            self._idle.clear()
            self._all.clear()
            self._cond.notify_all()
            executor, self._executor = self._executor, None
        for w in busy:
            w.kill()
        for w in idle:
            w.stop(grace)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and not self._closed:
                self._cond.wait()
            if self._closed:
                raise VerifierError("verifier pool closed")
            return self._idle.pop()

    def _idle_again(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.kill()

    def _release(self, worker: _Worker) -> None:
        recycle = self._max_jobs is not None and worker.jobs >= self._max_jobs
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                if not recycle:
                    self._idle.append(worker)
                    self._cond.notify()
                    return
        if closed:
            worker.kill()
            return
        worker.stop(grace=2.0)
        self._replace(worker)

    def _discard(self, worker: _Worker, counter: str | None) -> None:
        worker.kill()
        if counter is not None:
            with self._cond:
                self._stats[counter] += 1
        self._replace(worker)

    def _replace(self, old: _Worker) -> None:
        with self._cond:
            self._all.discard(old)
            if self._closed:
                return
            self._stats["replaced"] += 1
        new = _Worker(self._ctx, self._warmup)
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._all.add(new)
                self._idle.append(new)
                self._cond.notify()
        if closed:
            new.kill()


def verify_math(
    pool: VerifierPool,
    response: str,
    gold: Any,
    *,
    require_boxed: bool = True,
    timeout_s: int = 5,
    hard_timeout: float | None = None,
) -> Result:
    """:func:`verifiers.math_verifier.check_math` in a pool child.

    ``hard_timeout`` (default ``3 * timeout_s + 2``) is the kill deadline; it must exceed
    math-verify's own alarms, which cover gold parse, answer parse and each comparison separately.
    """
    limit = hard_timeout if hard_timeout is not None else 3.0 * max(1, timeout_s) + 2.0
    return pool.run(
        CHECK_MATH, response, gold, require_boxed=require_boxed, timeout_s=timeout_s, timeout=limit
    )
