"""The vLLM inference backend (extra ``gpu``): the same seeded sampling and proofs as HFBackend.

vLLM runs the model in its own worker process(es); two pieces of this module run there too:

* **Capture.** A forward pre-hook on the model's ``logits_processor`` module (installed on every
  worker with ``LLM.collective_rpc``) keeps the tensor it is called with: the post-norm hidden
  states of the rows whose logits are about to be computed. Logits are computed outside vLLM's
  compiled graph (torch.compile, CUDA graphs), so the hook fires in every execution mode.
* **Sampling.** :class:`SeededSampler`, a vLLM v1 logits processor (``LLM(logits_processors=...)``)
  that is not argmax-invariant, so it runs before vLLM's own sampler. For each row of a flopnet
  request (recognised by ``SamplingParams.extra_args["flopnet"]``) it computes
  ``proof.sampling.sample_token(logits, seed, i, params)`` with ``i`` the number of tokens the
  request has produced so far, masks every other token to ``-inf`` and lets vLLM's greedy sampler
  pick that one. In the same call it stores the row's hidden state (from the hook) under
  (request tag, i): rows of other requests, warm-up and dummy runs carry no flopnet entry and are
  dropped; a row whose token vLLM discards (a partial chunked prefill) is stored under the
  position that the real row later overwrites. States are recorded on tensor-parallel rank 0 only.

The validator side (:meth:`VLLMBackend.prefill`) runs prompt + output as one prompt with
``prompt_logprobs`` on, which makes vLLM compute logits for every prompt position through the same
``logits_processor``; a forward hook then records each call's states and logits.

Worker-side state is per process and assumes one engine call at a time per backend (the model
service serves requests one at a time). Passing functions and tensors through ``collective_rpc``
needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``, which the constructor sets.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flopnet.node.model.hf_backend import FinishReason, Generation, GenerationRequest, Prefill
from flopnet.node.model.models import ModelSpec, build_model
from flopnet.node.model.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from flopnet.proof.sampling import SamplingParams, sample_token
from flopnet.protocol.errors import ConfigError, FlopnetError

# The key of our entry in vLLM's ``SamplingParams.extra_args``.
EXTRA_KEY = "flopnet"
# FQCN of the logits processor, resolved lazily through this module's ``__getattr__``.
SAMPLER_FQCN = f"{__name__}:SeededSampler"


class VLLMBackendError(FlopnetError):
    """vLLM failed to start or to run a request, or its outputs could not be mapped back."""


# --------------------------------------------------------------------------------------------------
# Worker side: runs inside vLLM's worker processes.


@dataclass
class _Row:
    """A flopnet request in vLLM's persistent batch."""

    tag: str
    seed: int
    params: SamplingParams
    output_ids: list[int]  # vLLM's running list of the request's output tokens (a reference)


@dataclass
class _WorkerState:
    hidden: torch.Tensor | None = None  # input of the latest logits_processor call
    record_calls: bool = False  # prefill: keep every call's (states, logits)
    calls: list[list[Any]] = field(default_factory=list)  # [states, logits, was_sampled]
    records: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    rank0: bool | None = None
    capture: bool = True  # off: seeded sampling only, no states kept (for measurements)


_STATE = _WorkerState()


def _is_rank0() -> bool:
    if _STATE.rank0 is None:
        try:
            from vllm.distributed import get_tensor_model_parallel_rank

            _STATE.rank0 = get_tensor_model_parallel_rank() == 0
        except (ImportError, AssertionError, RuntimeError):
            _STATE.rank0 = True  # no tensor-parallel group: a single worker
    return _STATE.rank0


def _pre_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    hidden = kwargs.get("hidden_states")
    if hidden is None and len(args) > 1:
        hidden = args[1]
    _STATE.hidden = hidden if isinstance(hidden, torch.Tensor) else None


def _post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
    if not _STATE.record_calls or not _is_rank0():
        return
    if _STATE.hidden is None or not isinstance(output, torch.Tensor):
        return
    _STATE.calls.append(
        [
            _STATE.hidden.to(device="cpu", dtype=torch.bfloat16, copy=True),
            output.to(device="cpu", dtype=torch.float32, copy=True),
            False,
        ]
    )


def _find_logits_processor(model: torch.nn.Module) -> torch.nn.Module:
    found = getattr(model, "logits_processor", None)
    if isinstance(found, torch.nn.Module):
        return found
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    for module in model.modules():
        if isinstance(module, LogitsProcessor):
            return module
    raise RuntimeError(f"{type(model).__name__} has no logits_processor module to hook")


def _install_hooks(worker: Any) -> str:
    """collective_rpc target: hook the logits processor of this worker's model (idempotent)."""
    for handle in _STATE.handles:
        handle.remove()
    model = worker.model_runner.get_model()
    target = _find_logits_processor(model)
    _STATE.handles = [
        target.register_forward_pre_hook(_pre_hook, with_kwargs=True),
        target.register_forward_hook(_post_hook, with_kwargs=True),
    ]
    return type(target).__name__


def _set_capture(worker: Any, on: bool) -> None:
    """collective_rpc target: hooks on and states kept (the default), or hooks off."""
    _STATE.capture = on
    _STATE.hidden = None
    _STATE.records.clear()
    if on:
        _install_hooks(worker)
    else:
        for handle in _STATE.handles:
            handle.remove()
        _STATE.handles = []


def _take_records(worker: Any, tags: list[str]) -> dict[str, dict[int, torch.Tensor]] | None:
    """collective_rpc target: hand over (and forget) the states recorded for ``tags``."""
    if not _is_rank0():
        return None
    return {tag: _STATE.records.pop(tag, {}) for tag in tags}


def _set_record_calls(worker: Any, on: bool) -> None:
    """collective_rpc target: start or stop keeping every logits call (for prefill)."""
    _STATE.record_calls = on
    _STATE.calls = []


def _take_calls(worker: Any) -> list[list[Any]] | None:
    """collective_rpc target: the calls kept since :func:`_set_record_calls` (rank 0)."""
    calls, _STATE.calls = _STATE.calls, []
    _STATE.record_calls = False
    return calls if _is_rank0() else None


def worker_pending(worker: Any) -> tuple[int, int, bool]:
    """collective_rpc target: (requests with states not yet taken, calls kept, keeping calls?).

    ``(0, 0, False)`` between engine calls: nothing the hooks saw is left behind.
    """
    return len(_STATE.records), len(_STATE.calls), _STATE.record_calls


def _row_from_params(params: Any, output_ids: list[int]) -> _Row | None:
    extra = getattr(params, "extra_args", None) or {}
    entry = extra.get(EXTRA_KEY)
    if not isinstance(entry, dict):
        return None
    return _Row(
        tag=str(entry["tag"]),
        seed=int(entry["seed"]),  # a decimal string: seeds may exceed 64 bits
        params=SamplingParams(temperature=float(entry["temperature"]), top_p=float(entry["top_p"])),
        output_ids=output_ids,
    )


def _make_sampler_class() -> type:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class SeededSampler(LogitsProcessor):
        """Forces token i of each flopnet request to ``sample_token(logits, seed, i, params)``."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.rows: dict[int, _Row] = {}

        def is_argmax_invariant(self) -> bool:
            return False  # it decides the token, so it must run before greedy sampling too

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            # Order fixed by vLLM: removed, then added, then moved.
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt, output_ids in batch_update.added:
                row = _row_from_params(params, output_ids)
                if row is None:
                    self.rows.pop(index, None)
                else:
                    self.rows[index] = row
            for a, b, direction in batch_update.moved:
                row_a = self.rows.pop(a, None)
                row_b = self.rows.pop(b, None)
                if row_a is not None:
                    self.rows[b] = row_a
                if direction == MoveDirectionality.SWAP and row_b is not None:
                    self.rows[a] = row_b

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            capture = _STATE.capture
            hidden = _STATE.hidden
            if capture and (hidden is None or hidden.shape[0] != logits.shape[0]):
                raise RuntimeError(
                    "flopnet capture: hidden states of this step do not match the logits "
                    f"({None if hidden is None else tuple(hidden.shape)} vs {tuple(logits.shape)})"
                )
            if _STATE.record_calls and _STATE.calls:
                _STATE.calls[-1][2] = True  # the call just recorded fed the sampler
            record = capture and hidden is not None and _is_rank0()
            cpu_logits = logits.detach().to(device="cpu", dtype=torch.float32)
            for index, row in self.rows.items():
                if index >= logits.shape[0]:
                    continue
                position = len(row.output_ids)
                token = sample_token(cpu_logits[index], row.seed, position, row.params)
                logits[index].fill_(-math.inf)
                logits[index, token] = 0.0
                if record:
                    assert hidden is not None
                    state = hidden[index].to(device="cpu", dtype=torch.bfloat16, copy=True)
                    _STATE.records.setdefault(row.tag, {})[position] = state
            return logits

    SeededSampler.__module__ = __name__
    SeededSampler.__qualname__ = "SeededSampler"
    return SeededSampler


_SAMPLER_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    # vLLM loads the processor by FQCN; building it on first access keeps vllm a lazy import.
    global _SAMPLER_CLASS
    if name == "SeededSampler":
        if _SAMPLER_CLASS is None:
            _SAMPLER_CLASS = _make_sampler_class()
        return _SAMPLER_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# Client side.


def _write_seeded_model(spec: ModelSpec, tokenizer: ByteTokenizer, directory: Path) -> None:
    """Save the seeded model as a Hugging Face checkpoint vLLM can load (no tokenizer files)."""
    model, _ = build_model(spec)
    cfg: Any = model.config
    # A LlamaConfig defaults eos to 2, a byte here; vLLM would stop on it.
    cfg.bos_token_id = tokenizer.bos_id
    cfg.eos_token_id = tokenizer.eos_id
    cfg.pad_token_id = tokenizer.pad_id
    save: Any = model.save_pretrained
    save(str(directory), safe_serialization=True)
    generation_config = directory / "generation_config.json"
    if generation_config.exists():
        generation_config.unlink()


class VLLMBackend:
    """A :class:`ModelSpec` served by vLLM, with the seeded sampler and proof capture.

    ``enforce_eager`` skips torch.compile and graph capture (faster start, used by the tests);
    capture works either way. ``tensor_parallel_size`` > 1 shards the model (states are read on
    rank 0). ``num_threads`` pins vLLM's CPU worker to CPUs 0..n-1 (CPU builds only; by default
    vLLM keeps one core for its scheduler process). Other keyword arguments go to ``vllm.LLM``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        max_model_len: int = 4096,
        num_threads: int | None = None,
        kv_cache_gib: int = 1,
        **llm_kwargs: Any,
    ) -> None:
        if tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        if num_threads is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{num_threads - 1}"
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError(f"the vLLM backend needs vllm (extra 'gpu'): {exc}") from exc

        self.spec = spec
        self._tmpdir: str | None = None
        self.tokenizer: Tokenizer
        if spec.seeded:
            byte_tok = ByteTokenizer()
            self.tokenizer = byte_tok
            self._tmpdir = tempfile.mkdtemp(prefix=f"flopnet-vllm-{spec.name}-")
            _write_seeded_model(spec, byte_tok, Path(self._tmpdir))
            model_path, revision = self._tmpdir, None
        else:
            assert spec.hf_id is not None
            self.tokenizer = HFTokenizer(
                spec.hf_id, revision=spec.revision, trust_remote_code=spec.trust_remote_code
            )
            model_path, revision = spec.hf_id, spec.revision
        self.eos_id = self.tokenizer.eos_id
        try:
            self.llm: Any = vllm.LLM(
                model=model_path,
                revision=revision,
                skip_tokenizer_init=True,  # the publisher assigns token ids
                dtype=spec.dtype,
                trust_remote_code=spec.trust_remote_code,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=enforce_eager,
                max_model_len=max_model_len,
                generation_config="vllm",  # no stop tokens or defaults from the checkpoint
                logits_processors=[SAMPLER_FQCN],
                seed=0,
                **{"disable_log_stats": False, **llm_kwargs},  # stats carry per-request timings
            )
            hooked = self.llm.collective_rpc(_install_hooks)
            model_config = self.llm.llm_engine.model_config
            self.hidden_size = int(model_config.get_hidden_size())
            self.vocab_size = int(model_config.get_vocab_size())
        except (ValueError, TypeError, OSError) as exc:
            self.close()
            raise ConfigError(f"vLLM cannot load model {spec.name!r}: {exc}") from exc
        except Exception as exc:
            self.close()
            raise VLLMBackendError(f"vLLM failed to start: {type(exc).__name__}: {exc}") from exc
        self.hooked_modules: list[str] = list(hooked)
        self.capture = True
        if spec.seeded and self.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(f"vocab_size {self.vocab_size} != tokenizer's")

    def set_capture(self, on: bool) -> None:
        """Keep hidden states (default) or not; without, ``Generation.hidden`` is empty.

        Sampling stays seeded either way: this only removes the cost of the capture, for
        measuring it. :meth:`prefill` needs capture on.
        """
        self.llm.collective_rpc(_set_capture, args=(bool(on),))
        self.capture = bool(on)

    def close(self) -> None:
        """Stop vLLM's engine and remove the temporary checkpoint."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            # Best effort: the engine may already be gone (a failed start, a dead worker).
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- requests ---------------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(i) for i in ids]
        if any(i < 0 or i >= self.vocab_size for i in out):
            raise ConfigError(f"token ids must be in [0, {self.vocab_size})")
        return out

    def _sampling_params(
        self, tag: str, seed: int, params: SamplingParams, max_tokens: int, **extra: Any
    ) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            # Greedy over the logits that SeededSampler leaves: exactly its one token.
            temperature=0.0,
            max_tokens=max_tokens,
            stop_token_ids=[self.eos_id],
            detokenize=False,
            extra_args={
                EXTRA_KEY: {
                    "tag": tag,
                    "seed": str(int(seed)),
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                }
            },
            **extra,
        )

    def _run(self, prompts: list[dict[str, Any]], sampling: list[Any]) -> list[Any]:
        try:
            outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"vLLM rejected the request: {exc}") from exc
        except Exception as exc:
            raise VLLMBackendError(f"vLLM generation failed: {type(exc).__name__}: {exc}") from exc
        return list(outputs)

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        seed: int,
        params: SamplingParams,
        max_new_tokens: int,
    ) -> Generation:
        """Decode with the seeded sampler, as :meth:`HFBackend.generate`."""
        return self.generate_batch([GenerationRequest(prompt_ids, seed, params, max_new_tokens)])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Submit all requests to vLLM at once (its scheduler batches them continuously)."""
        if not requests:
            return []
        prompts, sampling, tags = [], [], []
        for req in requests:
            if not req.prompt_ids:
                raise ConfigError("prompt is empty")
            if req.max_new_tokens < 1:
                raise ConfigError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
            tag = uuid.uuid4().hex
            tags.append(tag)
            prompts.append({"prompt_token_ids": self._check_ids(req.prompt_ids)})
            sampling.append(self._sampling_params(tag, req.seed, req.params, req.max_new_tokens))
        t0 = time.perf_counter()
        outputs = self._run(prompts, sampling)
        elapsed = time.perf_counter() - t0
        records = self._take(tags) if self.capture else {}
        results = []
        for req, tag, out in zip(requests, tags, outputs, strict=True):
            completion = out.outputs[0]
            tokens = [int(t) for t in completion.token_ids]
            finish: FinishReason = "eos" if tokens and tokens[-1] == self.eos_id else "length"
            if finish == "length" and len(tokens) < req.max_new_tokens:
                raise VLLMBackendError(
                    f"vLLM stopped after {len(tokens)} tokens ({completion.finish_reason})"
                )
            rows = records.get(tag, {})
            missing = [i for i in range(len(tokens)) if i not in rows]
            if missing and self.capture:
                raise VLLMBackendError(
                    f"no hidden state captured for {len(missing)} of {len(tokens)} positions"
                )
            hidden = (
                torch.stack([rows[i] for i in range(len(tokens))])
                if tokens and self.capture
                else torch.empty((0, self.hidden_size), dtype=torch.bfloat16)
            )
            prefill_s, decode_s = _timings(out, elapsed)
            text_ids = tokens[:-1] if finish == "eos" else tokens
            results.append(
                Generation(
                    token_ids=tokens,
                    text=self.tokenizer.decode(text_ids),
                    finish_reason=finish,
                    hidden=hidden,
                    prefill_s=prefill_s,
                    decode_s=decode_s,
                )
            )
        return results

    def _take(self, tags: list[str]) -> dict[str, dict[int, torch.Tensor]]:
        try:
            replies = self.llm.collective_rpc(_take_records, args=(tags,))
        except Exception as exc:
            raise VLLMBackendError(f"reading captured states failed: {exc}") from exc
        for reply in replies:
            if reply is not None:
                return dict(reply)
        raise VLLMBackendError("no worker reported as tensor-parallel rank 0")

    def prefill(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> Prefill:
        """One prefill over prompt + output, as :meth:`HFBackend.prefill` (same rows returned).

        Runs ``prompt + output[:-1]`` as a prompt with ``prompt_logprobs`` on (no KV cache read,
        one sampled token discarded): vLLM then computes logits for every prompt position in
        order, one call per prefill chunk, and the last position's in the sampling call.
        """
        if not prompt_ids:
            raise ConfigError("prompt is empty")
        if not self.capture:
            raise ConfigError("prefill needs capture on (set_capture(True))")
        p, g = len(prompt_ids), len(output_ids)
        if g == 0:
            return Prefill(
                hidden=torch.empty((0, self.hidden_size), dtype=torch.bfloat16),
                logits=torch.empty((0, self.vocab_size), dtype=torch.float32),
                elapsed_s=0.0,
            )
        ids = self._check_ids([*prompt_ids, *output_ids])
        n = p + g - 1  # positions fed in
        tag = uuid.uuid4().hex
        sampling = self._sampling_params(
            tag,
            0,
            SamplingParams(temperature=0.0),
            1,
            prompt_logprobs=0,
            skip_reading_prefix_cache=True,
        )
        self.llm.collective_rpc(_set_record_calls, args=(True,))
        t0 = time.perf_counter()
        try:
            self._run([{"prompt_token_ids": ids[:n]}], [sampling])
        finally:
            calls = next((c for c in self.llm.collective_rpc(_take_calls) if c is not None), None)
            self._take([tag])
        elapsed = time.perf_counter() - t0
        if calls is None:
            raise VLLMBackendError("no worker reported as tensor-parallel rank 0")
        # Prompt-logprob calls cover positions 0..n-2 in order; the last sampling call is n-1.
        prompt_calls = [c for c in calls if not c[2]]
        sampled = [c for c in calls if c[2]]
        if not sampled or (prompt_calls and sum(c[0].shape[0] for c in prompt_calls) != n - 1):
            raise VLLMBackendError(
                f"prefill captured {sum(c[0].shape[0] for c in prompt_calls)} prompt rows and "
                f"{len(sampled)} sampling calls for {n} positions"
            )
        states = torch.cat([*(c[0] for c in prompt_calls), sampled[-1][0][-1:]])
        logits = torch.cat([*(c[1] for c in prompt_calls), sampled[-1][1][-1:]])
        return Prefill(
            hidden=states[p - 1 : p - 1 + g].clone(),
            logits=logits[p - 1 : p - 1 + g].clone(),
            elapsed_s=elapsed,
        )


def _timings(out: Any, elapsed: float) -> tuple[float, float]:
    """(time to first token, decode time) from vLLM's request metrics, else the wall time."""
    m = getattr(out, "metrics", None)
    first = getattr(m, "first_token_ts", 0.0) or 0.0
    last = getattr(m, "last_token_ts", 0.0) or 0.0
    scheduled = getattr(m, "scheduled_ts", 0.0) or 0.0
    if first and last and scheduled and last >= first >= scheduled:
        return first - scheduled, last - first
    return 0.0, elapsed
