"""The model child process: loads the network's model and serves requests one at a time.

Runs only in the child (it imports torch). Requests are the records of
:mod:`flopnet.node.model.calls`; each answer crosses the pipe as ``("ok", record)`` or
``("err", ModelError)``. The child measures and never decides: proof limits are applied in the
daemon. ``generate`` (worker) samples with the seeded sampler and builds TOPLOC proofs; ``audit``
(validator) runs one prefill over prompt + output, compares the proofs with its own states and
replays the sampling chunk by chunk; ``inspect`` (validator, an unaudited submission) only
decodes and checks how the output ends.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

from flopnet.node.model.calls import (
    AuditMeasures,
    AuditRequest,
    Generated,
    GenerateRequest,
    Inspection,
    InspectRequest,
    LoadSpec,
    ModelError,
    ModelInfo,
    ModelInputError,
    ModelInternalError,
)
from flopnet.node.model.hf_backend import Generation, GenerationRequest, HFBackend
from flopnet.node.model.streaming import OutputCallback, OutputStream
from flopnet.proof.completion import check_completion
from flopnet.proof.sampling import SamplingParams, replay_shortfalls
from flopnet.proof.stream import ProofStream
from flopnet.proof.toploc import verify_proofs
from flopnet.protocol.errors import FlopnetError


def _params(request: GenerateRequest) -> SamplingParams:
    return SamplingParams(temperature=request.temperature, top_p=request.top_p)


class ModelChild:
    """A loaded backend and the operations the daemon may ask of it."""

    def __init__(self, backend: Any, info: ModelInfo) -> None:
        self.backend = backend
        self.info = info
        # On a GPU, proofs of full chunks are built on a thread while the model keeps decoding;
        # on a CPU after decoding (a thread would only compete with the decode for cores).
        device = getattr(backend, "device", None)  # HFBackend only; vLLM decodes out of process
        self._proof_pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flopnet-proofs")
            if device is not None and device.type != "cpu"
            else None
        )
        # Where a generation's text deltas go while it runs (set by serve: the pipe).
        self.progress: OutputCallback | None = None

    @classmethod
    def load(cls, spec: LoadSpec) -> ModelChild:
        """Plan (a model that cannot fit is refused with numbers, not an OOM), then load."""
        from flopnet.node.model.loader import load_model

        started = time.perf_counter()
        plan = None
        if spec.max_seq_tokens:
            from flopnet.node.model.hardware import detect, model_config, plan_for

            plan = plan_for(
                detect(),
                model_config(spec.model, spec.revision),
                spec.dtype,
                spec.max_seq_tokens,
                model_name=spec.model,
                backend=None if spec.backend == "auto" else spec.backend,
            ).as_dict()
        loaded = load_model(
            spec.model,
            seed=spec.seed,
            dtype=spec.dtype,
            threads=spec.threads,
            backend=spec.backend,
            plan=plan,
            max_seq_tokens=spec.max_seq_tokens,
            revision=spec.revision,
        )
        backend = loaded.backend
        info = ModelInfo(
            name=spec.model,
            seed=spec.seed,
            dtype=spec.dtype,
            weights_sha256=loaded.weights_sha256,
            n_params=loaded.n_params,
            n_params_no_embeddings=loaded.n_params_no_embeddings,
            vocab_size=backend.vocab_size,
            load_seconds=time.perf_counter() - started,
            eos_id=backend.eos_id,
            gpu_names=tuple(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ),
            config=loaded.config,
            plan=plan,
            backend=loaded.backend_name,
        )
        return cls(backend, info)

    def close(self) -> None:
        """Shut the backend down (vLLM keeps engine processes and a temporary checkpoint)."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        if self._proof_pool is not None:
            self._proof_pool.shutdown(wait=False)

    # -- the operations ----------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> None:
        vocab = self.backend.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ModelInputError(f"token ids must be in [0, {vocab})")

    @staticmethod
    def _generated(gen: Generation, proofs: list[bytes], decode_s: float, proof_s: float) -> Any:
        return Generated(
            token_ids=tuple(gen.token_ids),
            text=gen.text,
            finish_reason=gen.finish_reason,
            proofs=tuple(proofs),
            prefill_s=gen.prefill_s,
            decode_s=decode_s,
            proof_s=proof_s,
        )

    def _output_stream(self, rows: int) -> OutputStream | None:
        if self.progress is None or not getattr(self.backend, "streams_tokens", False):
            return None
        tokenizer = self.backend.tokenizer
        return OutputStream(
            rows,
            tokenizer.decode,
            self.progress,
            skip=frozenset({tokenizer.eos_id}),
        )

    def _decode_kwargs(self, proofs: ProofStream, output: OutputStream | None) -> dict[str, Any]:
        kwargs = proofs.backend_kwargs()
        if output is not None:
            kwargs["on_token"] = output.on_token
        return kwargs

    def generate(self, request: GenerateRequest) -> Generated:
        """One sample, proven; its text is sent through :attr:`progress` as it grows."""
        stream = ProofStream(self._proof_pool)
        output = self._output_stream(1)
        gen = self.backend.generate(
            request.prompt_ids,
            seed=request.seed,
            params=_params(request),
            max_new_tokens=request.max_new_tokens,
            **self._decode_kwargs(stream, output),
        )
        if output is not None:
            output.close()
        t0 = time.perf_counter()  # what proof building adds after decoding: the last chunk
        proofs = stream.proofs(0, gen.hidden)
        result: Generated = self._generated(gen, proofs, gen.decode_s, time.perf_counter() - t0)
        return result

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generated]:
        """Rows decoded together (one forward pass per step for all); each is sampled and proven
        exactly as on its own, up to the kernels' arithmetic the proof check tolerates."""
        rows = [
            GenerationRequest(
                prompt_ids=list(r.prompt_ids),
                seed=r.seed,
                params=_params(r),
                max_new_tokens=r.max_new_tokens,
            )
            for r in requests
        ]
        t0 = time.perf_counter()
        stream = ProofStream(self._proof_pool)
        output = self._output_stream(len(rows))
        gens = self.backend.generate_batch(rows, **self._decode_kwargs(stream, output))
        if output is not None:
            output.close()
        decode_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        proofs = stream.all_proofs([gen.hidden for gen in gens])
        proof_s = time.perf_counter() - t1  # the batch's, like decode_s
        return [
            self._generated(gen, row_proofs, decode_s, proof_s)
            for gen, row_proofs in zip(gens, proofs, strict=True)
        ]

    def _collector(self, request: AuditRequest) -> tuple[list[float], Callable[[int, Any], None]]:
        # The replay runs on each chunk of logits as the prefill makes it; none is kept.
        shortfalls: list[float] = []
        sample, tokens = request.sample, request.token_ids
        params = _params(sample)

        def replay_chunk(lo: int, rows: torch.Tensor) -> None:
            part = tokens[lo : lo + len(rows)]
            found = replay_shortfalls(rows, part, sample.seed, params, start_position=lo)
            shortfalls.extend(found.tolist())

        return shortfalls, replay_chunk

    def _measures(
        self, request: AuditRequest, pre: Any, shortfalls: list[float] | None, prefill_s: float
    ) -> AuditMeasures:
        t1 = time.perf_counter()
        checks = verify_proofs(pre.hidden, list(request.proofs))
        if shortfalls is None:  # a backend that hands over all logits at once (vLLM)
            sample = request.sample
            shortfalls = replay_shortfalls(
                pre.logits, request.token_ids, sample.seed, _params(sample)
            ).tolist()
        # Tokens that are there are measured above; an output cut short shows in how it ends.
        completion = check_completion(
            request.token_ids,
            eos_id=self.backend.eos_id,
            max_new_tokens=request.sample.max_new_tokens,
        )
        return AuditMeasures(
            checks=tuple(checks),
            shortfalls=tuple(float(s) for s in shortfalls),
            completion=completion,
            text=self.backend.tokenizer.decode(list(request.token_ids)),
            prefill_s=prefill_s,
            verify_s=time.perf_counter() - t1,
        )

    def _check_audit(self, request: AuditRequest) -> None:
        if not request.sample.prompt_ids or not request.token_ids:
            raise ModelInputError("empty prompt or output")
        self._check_ids((*request.sample.prompt_ids, *request.token_ids))

    def audit(self, request: AuditRequest) -> AuditMeasures:
        """One prefill over prompt + output; proofs compared, sampling replayed (with the
        weights upcast for that prefill when the request names a precision)."""
        self._check_audit(request)
        if request.precision:
            if not isinstance(self.backend, HFBackend):
                raise ModelInternalError(
                    f"a {request.precision} prefill needs the hf backend, not {self.info.backend}"
                )
            with self.backend.at_precision(request.precision):
                return self.audit(dataclasses.replace(request, precision=""))
        t0 = time.perf_counter()
        if isinstance(self.backend, HFBackend):
            shortfalls, on_logits = self._collector(request)
            prompt = request.sample.prompt_ids
            pre = self.backend.prefill(prompt, request.token_ids, on_logits=on_logits)
            return self._measures(request, pre, shortfalls, time.perf_counter() - t0)
        pre = self.backend.prefill(request.sample.prompt_ids, request.token_ids)
        return self._measures(request, pre, None, time.perf_counter() - t0)

    def audit_batch(self, requests: Sequence[AuditRequest]) -> list[AuditMeasures | ModelError]:
        """Several audits in one padded prefill; each item's outcome is its own: a malformed
        item answers its error and never fails the others."""
        out: list[AuditMeasures | ModelError] = [
            ModelInternalError("not measured") for _ in requests
        ]
        good: list[int] = []
        for i, request in enumerate(requests):
            try:
                self._check_audit(request)
                good.append(i)
            except ModelError as exc:
                out[i] = exc
        if not isinstance(self.backend, HFBackend):
            for i in good:
                out[i] = _guarded(functools.partial(self.audit, requests[i]))
            return out
        collectors = [self._collector(requests[i]) for i in good]
        t0 = time.perf_counter()
        pres = self.backend.prefill_batch(
            [(requests[i].sample.prompt_ids, requests[i].token_ids) for i in good],
            on_logits=lambda row, lo, rows: collectors[row][1](lo, rows),
        )
        t = (time.perf_counter() - t0) / max(1, len(good))
        for row, (i, pre) in enumerate(zip(good, pres, strict=True)):
            measure = functools.partial(self._measures, requests[i], pre, collectors[row][0], t)
            out[i] = _guarded(measure)
        return out

    def inspect(self, request: InspectRequest) -> Inspection:
        """An unaudited submission: no prefill, only what costs nothing."""
        self._check_ids(request.token_ids)
        completion = check_completion(
            request.token_ids, eos_id=self.backend.eos_id, max_new_tokens=request.max_new_tokens
        )
        return Inspection(completion, self.backend.tokenizer.decode(list(request.token_ids)))

    def handle(self, op: str, payload: Any) -> Any:
        """Run one operation by name (the daemon sends ``(op, payload)``)."""
        handlers: dict[str, Callable[[Any], Any]] = {
            "generate": self.generate,
            "generate_batch": self.generate_batch,
            "audit": self.audit,
            "audit_batch": self.audit_batch,
            "inspect": self.inspect,
        }
        handler = handlers.get(op)
        if handler is None:
            raise ModelInternalError(f"unknown model operation {op!r}")
        return handler(payload)

    def serve(self, conn: Connection) -> None:
        """Answer requests until the pipe closes or ``None`` arrives."""
        self.progress = lambda deltas: conn.send(("progress", list(deltas)))
        with torch.inference_mode():
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                if request is None:
                    return
                op, payload = request
                try:
                    reply: tuple[str, Any] = ("ok", self.handle(op, payload))
                except Exception as exc:
                    reply = ("err", _as_model_error(exc))
                conn.send(reply)


def _as_model_error(exc: Exception) -> ModelError:
    """A failure as the daemon sees it: a malformed input is the submitter's; anything else
    of ours (with its traceback, for the log)."""
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, FlopnetError):  # ProofError, ConfigError: the data cannot be evaluated
        return ModelInputError(str(exc))
    detail = traceback.format_exc(limit=5)
    return ModelInternalError(f"{type(exc).__name__}: {exc}\n{detail}")


def _guarded(run: Callable[[], AuditMeasures]) -> AuditMeasures | ModelError:
    try:
        return run()
    except Exception as exc:
        return _as_model_error(exc)


def child_main(conn: Connection, spec: LoadSpec) -> None:
    """The child process's entry point: load, report, serve, and close the backend on exit."""
    if spec.devices is not None:
        # Before CUDA starts (torch starts it at its first CUDA call): the child sees only the
        # GPUs the contributor chose.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in spec.devices)
    try:
        child = ModelChild.load(spec)
    except Exception as exc:
        conn.send(("err", ModelInternalError(f"model load failed: {type(exc).__name__}: {exc}")))
        return
    conn.send(("ok", child.info))
    try:
        child.serve(conn)
    finally:
        child.close()
