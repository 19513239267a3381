"""The model runs in a child process; the trio daemon talks to it over a pipe.

Keeping torch out of the daemon keeps the event loop responsive (a forward pass never blocks
libp2p), lets a crashed or hung model be killed without losing the node, and keeps the daemon's
own start fast. The child serves three operations: ``generate`` (worker: sample, build TOPLOC
proofs), ``check`` (validator, an audit: one prefill, verify proofs, replay sampling, decode text)
and ``inspect`` (validator, an unaudited submission: decode text, check how it ends). Requests are
served one at a time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import logging
import multiprocessing
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio

from flopnet.protocol.errors import FlopnetError

log = logging.getLogger(__name__)
START_TIMEOUT_S = 300.0
# The trio-typing stubs that libp2p pulls in predate trio's ``abandon_on_cancel`` keyword.
_run_sync: Any = trio.to_thread.run_sync


@dataclass(frozen=True)
class ModelInfo:
    """What the child reports once its model is loaded."""

    name: str
    seed: int
    dtype: str
    weights_sha256: str
    n_params: int
    n_params_no_embeddings: int
    vocab_size: int
    load_seconds: float
    gpu_names: tuple[str, ...] = ()
    config: dict[str, Any] | None = None  # the HF config, for the validator's FLOP formula
    plan: dict[str, Any] | None = None  # node.inference.hardware.Plan, when one was made
    backend: str = "hf"


def _child_main(
    conn: Connection,
    model: str,
    seed: int,
    dtype: str,
    threads: int,
    max_seq_tokens: int,
    backend_choice: str,
    revision: str,
) -> None:
    # Heavy imports happen here, in the child only.
    import torch

    from flopnet.node.model.hf_backend import GenerationRequest, HFBackend
    from flopnet.node.model.loader import load_model
    from flopnet.proof.completion import check_completion
    from flopnet.proof.policy import decide, policy_from_params
    from flopnet.proof.sampling import (
        SamplingParams,
        replay_check,
        replay_sampling,
        replay_shortfalls,
    )
    from flopnet.proof.stream import ProofStream
    from flopnet.proof.toploc import verify_proofs
    from flopnet.protocol.errors import ConfigError

    started = time.perf_counter()
    try:
        plan = None
        if max_seq_tokens:
            # Before loading: a model that cannot fit is refused with numbers, not an OOM.
            from flopnet.node.model.hardware import detect, model_config, plan_for

            needed = model_config(model, revision)
            plan = plan_for(
                detect(),
                needed,
                dtype,
                max_seq_tokens,
                model_name=model,
                backend=None if backend_choice == "auto" else backend_choice,
            ).as_dict()
        loaded = load_model(
            model,
            seed=seed,
            dtype=dtype,
            threads=threads,
            backend=backend_choice,
            plan=plan,
            max_seq_tokens=max_seq_tokens,
            revision=revision,
        )
        backend = loaded.backend
        info = ModelInfo(
            name=model,
            seed=seed,
            dtype=dtype,
            weights_sha256=loaded.weights_sha256,
            n_params=loaded.n_params,
            n_params_no_embeddings=loaded.n_params_no_embeddings,
            vocab_size=backend.vocab_size,
            load_seconds=time.perf_counter() - started,
            gpu_names=tuple(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ),
            config=loaded.config,
            plan=plan,
            backend=loaded.backend_name,
        )
    except Exception as exc:
        conn.send({"ok": False, "error": f"model load failed: {type(exc).__name__}: {exc}"})
        return
    conn.send({"ok": True, "result": info})
    # On a GPU, proofs of full chunks are built on a thread while the model keeps decoding; on
    # a CPU after decoding (a thread would only compete with the decode for cores).
    device = getattr(backend, "device", None)  # HFBackend only; vLLM decodes out of process
    proof_pool = (
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flopnet-proofs")
        if device is not None and device.type != "cpu"
        else None
    )

    def generate(req: dict[str, Any]) -> dict[str, Any]:
        params = SamplingParams(temperature=req["temperature"], top_p=req["top_p"])
        stream = ProofStream(proof_pool)
        gen = backend.generate(
            req["prompt_ids"],
            seed=req["seed"],
            params=params,
            max_new_tokens=req["max_new_tokens"],
            **stream.backend_kwargs(),
        )
        t0 = time.perf_counter()  # what proof building adds after decoding: the last chunk
        proofs = stream.proofs(0, gen.hidden)
        return {
            "token_ids": list(gen.token_ids),
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "proofs": proofs,
            "prefill_s": gen.prefill_s,
            "decode_s": gen.decode_s,
            "proof_s": time.perf_counter() - t0,
        }

    def policy_of(req: dict[str, Any]) -> Any:
        # The manifest's proof policy, as plain numbers (NetworkParams.proof_params). A bad one is
        # the validator's own fault, never the worker's: an internal error, not a failed proof.
        try:
            return policy_from_params(req["policy"])
        except FlopnetError as exc:
            raise RuntimeError(f"bad proof policy in the check request: {exc}") from None

    def replay_collector(item: dict[str, Any]) -> tuple[list[float], Any]:
        # The replay runs on each chunk of logits as the prefill makes it; none is kept.
        params = SamplingParams(temperature=item["temperature"], top_p=item["top_p"])
        shortfalls: list[float] = []
        tokens = item["token_ids"]

        def replay_chunk(lo: int, rows: torch.Tensor) -> None:
            part = tokens[lo : lo + len(rows)]
            found = replay_shortfalls(rows, part, item["seed"], params, start_position=lo)
            shortfalls.extend(found.tolist())

        return shortfalls, replay_chunk

    def conclude(
        item: dict[str, Any], pre: Any, shortfalls: list[float] | None, policy: Any, t: float
    ) -> dict[str, Any]:
        t1 = time.perf_counter()
        # Results cross the pipe as plain data so the daemon never unpickles torch-backed types.
        checks = verify_proofs(pre.hidden, list(item["proofs"]))
        if shortfalls is not None:
            replay = replay_check(shortfalls, policy.replay_tolerance)
        else:
            params = SamplingParams(temperature=item["temperature"], top_p=item["top_p"])
            replay = replay_sampling(
                pre.logits,
                item["token_ids"],
                item["seed"],
                params,
                tolerance=policy.replay_tolerance,
            )
        # Tokens that are there are checked above; an output cut short is caught by how it ends.
        completion = check_completion(
            item["token_ids"], eos_id=backend.eos_id, max_new_tokens=item["max_new_tokens"]
        )
        decision = decide(checks, replay, policy, completion)  # the one verdict, every reason
        return {
            "passed": decision.passed,
            "reasons": list(decision.reasons),
            "checks": [dataclasses.asdict(c) for c in checks],
            "replay_mismatches": replay.mismatches,
            "replay_checked": replay.checked,
            "text": backend.tokenizer.decode(item["token_ids"]),
            "prefill_s": t,
            "verify_s": time.perf_counter() - t1,
        }

    def check(req: dict[str, Any]) -> dict[str, Any]:
        policy = policy_of(req)
        t0 = time.perf_counter()
        if isinstance(backend, HFBackend):
            shortfalls, on_logits = replay_collector(req)
            pre = backend.prefill(req["prompt_ids"], req["token_ids"], on_logits=on_logits)
            return conclude(req, pre, shortfalls, policy, time.perf_counter() - t0)
        pre = backend.prefill(req["prompt_ids"], req["token_ids"])
        return conclude(req, pre, None, policy, time.perf_counter() - t0)

    def check_batch(req: dict[str, Any]) -> list[dict[str, Any]]:
        # Several audits in one padded prefill; each item's outcome is its own: a malformed one
        # answers {"error", "kind"} and never fails the others.
        policy = policy_of(req)
        items: list[dict[str, Any]] = req["items"]
        out: list[dict[str, Any]] = [{} for _ in items]
        good: list[int] = []
        for i, item in enumerate(items):
            ids = [*item["prompt_ids"], *item["token_ids"]]
            if not item["prompt_ids"] or not item["token_ids"]:
                out[i] = {"error": "empty prompt or output", "kind": "ConfigError"}
            elif any(not 0 <= t < backend.vocab_size for t in ids):
                out[i] = {
                    "error": f"token ids must be in [0, {backend.vocab_size})",
                    "kind": "ConfigError",
                }
            else:
                good.append(i)
        if not isinstance(backend, HFBackend):
            for i in good:
                out[i] = guarded(lambda i=i: check({**items[i], "policy": req["policy"]}))
            return out
        collectors = [replay_collector(items[i]) for i in good]
        t0 = time.perf_counter()
        pres = backend.prefill_batch(
            [(items[i]["prompt_ids"], items[i]["token_ids"]) for i in good],
            on_logits=lambda row, lo, rows: collectors[row][1](lo, rows),
        )
        t = (time.perf_counter() - t0) / max(1, len(good))
        for row, (i, pre) in enumerate(zip(good, pres, strict=True)):
            out[i] = guarded(
                lambda i=i, pre=pre, row=row: conclude(items[i], pre, collectors[row][0], policy, t)
            )
        return out

    def guarded(run: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = run()
        except FlopnetError as exc:
            return {"error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # our failure on this item, not the worker's
            return {"error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
        return result

    def inspect(req: dict[str, Any]) -> dict[str, Any]:
        # An unaudited submission: no prefill, only what costs nothing (decode, how it ends).
        token_ids = list(req["token_ids"])
        if any(not 0 <= t < backend.vocab_size for t in token_ids):
            raise ConfigError(f"token ids must be in [0, {backend.vocab_size})")
        completion = check_completion(
            token_ids, eos_id=backend.eos_id, max_new_tokens=req["max_new_tokens"]
        )
        return {
            "complete": completion.complete,
            "reasons": [f"completion: {r}" for r in completion.reasons],
            "text": backend.tokenizer.decode(token_ids),
        }

    def generate_batch(req: dict[str, Any]) -> list[dict[str, Any]]:
        # Rows decode together (one forward pass per step for all); each is sampled and proven
        # exactly as on its own, up to the kernels' arithmetic the proof check tolerates.
        rows = [
            GenerationRequest(
                prompt_ids=r["prompt_ids"],
                seed=r["seed"],
                params=SamplingParams(temperature=r["temperature"], top_p=r["top_p"]),
                max_new_tokens=r["max_new_tokens"],
            )
            for r in req["requests"]
        ]
        t0 = time.perf_counter()
        stream = ProofStream(proof_pool)
        gens = backend.generate_batch(rows, **stream.backend_kwargs())
        decode_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        proofs = stream.all_proofs([gen.hidden for gen in gens])
        proof_s = time.perf_counter() - t1  # the batch's, like decode_s
        return [
            {
                "token_ids": list(gen.token_ids),
                "text": gen.text,
                "finish_reason": gen.finish_reason,
                "proofs": row_proofs,
                "prefill_s": gen.prefill_s,
                "decode_s": decode_s,
                "proof_s": proof_s,
            }
            for gen, row_proofs in zip(gens, proofs, strict=True)
        ]

    ops = {
        "generate": generate,
        "generate_batch": generate_batch,
        "check": check,
        "check_batch": check_batch,
        "inspect": inspect,
    }
    try:
        _serve(conn, ops)
    finally:
        # vLLM keeps engine processes and a temporary checkpoint: shut them down and remove it.
        close = getattr(backend, "close", None)
        if close is not None:
            close()
        if proof_pool is not None:
            proof_pool.shutdown(wait=False)


def _serve(conn: Connection, ops: dict[str, Any]) -> None:
    import torch

    with torch.inference_mode():
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                return
            if req is None:
                return
            try:
                conn.send({"ok": True, "result": ops[req["op"]](req)})
            except FlopnetError as exc:
                conn.send({"ok": False, "error": str(exc), "kind": type(exc).__name__})
            except Exception as exc:
                conn.send(
                    {
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "kind": "internal",
                        "trace": traceback.format_exc(limit=5),
                    }
                )


# ModelServiceError.kind of a model process that died, hung or is not running: nothing about
# the request is known, so the caller restarts the process and asks again.
UNAVAILABLE = "unavailable"


class ModelServiceError(FlopnetError):
    """The model child process failed or answered with an error."""

    def __init__(self, message: str, kind: str = "internal") -> None:
        super().__init__(message)
        self.kind = kind


class ModelService:
    """Owns the model child process; ``await call(op, ...)`` from trio."""

    def __init__(
        self,
        model: str,
        seed: int,
        dtype: str,
        threads: int = 0,
        max_seq_tokens: int = 0,
        backend: str = "hf",
        revision: str = "",
    ) -> None:
        # max_seq_tokens > 0: check first that the model and one such sequence fit here.
        # backend: "hf", "vllm", or "auto" (the hardware plan's choice).
        self._args = (model, seed, dtype, threads, max_seq_tokens, backend, revision)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self.info: ModelInfo | None = None

    async def start(self) -> ModelInfo:
        """Spawn the child and wait until its model is loaded."""
        info: ModelInfo = await _run_sync(self._start_blocking, abandon_on_cancel=True)
        return info

    async def restart(self) -> ModelInfo:
        """Stop the child (if it is still there) and start a fresh one, off the event loop and
        under the call lock, so a call of another role never meets a half-replaced process."""
        log.warning("restarting the model process")

        def restart_blocking() -> ModelInfo:
            with self._lock:
                self.close()
                return self._start_blocking()

        info: ModelInfo = await _run_sync(restart_blocking, abandon_on_cancel=True)
        return info

    def _start_blocking(self) -> ModelInfo:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_child_main,
            args=(child, *self._args),
            name="flopnet-model",
            # vLLM starts processes of its own, which a daemonic process may not; the child
            # still ends with us: it exits when its pipe closes, and close() kills it.
            daemon=not self._may_run_vllm(),
        )
        self._process.start()
        child.close()
        self._conn = parent
        reply: ModelInfo = self._recv(START_TIMEOUT_S)
        self.info = reply
        return reply

    def _may_run_vllm(self) -> bool:
        backend = self._args[5]
        return backend == "vllm" or (
            backend == "auto" and importlib.util.find_spec("vllm") is not None
        )

    def _recv(self, timeout: float) -> Any:
        conn = self._conn  # read once: a restart may replace it
        if conn is None:
            raise ModelServiceError("the model process is not running", UNAVAILABLE)
        if not conn.poll(timeout):
            # Its answer may still come and would then be read as the next one's: restart it.
            raise ModelServiceError(
                f"the model process did not answer within {timeout}s", UNAVAILABLE
            )
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            raise ModelServiceError("the model process died", UNAVAILABLE) from None
        if not reply["ok"]:
            raise ModelServiceError(reply["error"], reply.get("kind", "internal"))
        return reply["result"]

    def _call(self, req: dict[str, Any], timeout: float) -> Any:
        with self._lock:
            if self._conn is None or self._process is None or not self._process.is_alive():
                raise ModelServiceError("the model process is not running", UNAVAILABLE)
            self._conn.send(req)
            return self._recv(timeout)

    async def call(self, op: str, *, timeout: float = 600.0, **kwargs: Any) -> Any:
        """Run one operation in the child; raise ModelServiceError on failure."""
        req = {"op": op, **kwargs}
        return await _run_sync(self._call, req, timeout, abandon_on_cancel=True)

    @property
    def pid(self) -> int | None:
        """The model process's pid while it runs."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._conn = self._process = None
