"""Which weights the engine decodes with: the GGUF file's own, or an F16 expansion of them.

llama.cpp's CPU backend multiplies a batch of tokens by most weight formats with tiled kernels
(llamafile's sgemm; the repacked Q4_0, Q4_K... layouts) that load each weight once for the
whole batch. Q4_1 and Q5_1 have none: they take one dot product per weight row and token, so
a step for 16 sequences costs about 9 single-token steps. On the 2-core x86 (AVX2) machine
of ``bench/engine_weights.py``, SmolLM2's Q4_1 decodes 16 sequences at 150-160 tokens/s where
its F16 copy does 260-290, while one sequence is 1.3-1.5x slower in F16 (twice the bytes to
stream per token).

So with many slots on the CPU the engine can decode with the same weights stored as F16:
``llama_model_quantize`` dequantizes each tensor (the value ``d * q + m`` a Q4_1 kernel would
use) and rounds it to F16, which keeps about 11 significant bits of a number that had at most
5 to start with. Answers are not bit-identical to the file's kernels (those also round every
activation to 8 bits first) but come from the same weights; bits per byte on Shakespeare are
in ``bench/results/engine_weights.json``. On F16 llama.cpp multiplies a single row with another
kernel than two or more, so a sequence alone in its step gets slightly other logits than in a
batch (docs/engine.md, Exactness); the file's Q4_1 kernel does not. The copy is made once
(about a second for a 135M model) and cached under the cache directory's ``weights/``.

``weights="auto"`` (the engine's default) expands only where it was measured to pay: on the
CPU, with at least ``AUTO_MIN_SLOTS`` slots, for a file of one of the ``SLOW_BATCHED`` types,
when the copy fits in half the free memory and in the cache's free disk space.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fmstack.errors import ConfigError, FmstackError, ModelNotFoundError

WEIGHTS: tuple[str, ...] = ("auto", "file", "f16")

# llama.cpp file types (``general.file_type``, enum llama_ftype) measured to have no batched
# CPU kernel, with the bits per weight of their tensors: the F16 copy is at most 16 / bits
# times the file's size. Only types measured (bench/engine_weights.py) are here: SmolLM2's
# K-quant files fall back to other types for most tensors (576 columns), so they say nothing.
SLOW_BATCHED: dict[int, float] = {3: 5.0, 9: 6.0}  # Q4_1, Q5_1
# Below 8 slots F16 does not pay: 1-2 sequences decode slower from it, 4 about as fast.
AUTO_MIN_SLOTS = 8

_LLAMA_FTYPE_MOSTLY_F16 = 1


@dataclass(frozen=True)
class WeightsChoice:
    """The file to load, which weights it holds (``file`` or ``f16``) and why, in words."""

    path: Path
    weights: Literal["file", "f16"]
    reason: str


def file_type(path: Path) -> int | None:
    """A GGUF file's weight type (llama.cpp's ``general.file_type``, e.g. 3 for Q4_1), from its
    metadata alone (a vocabulary-only load: no tensors are read); None when it names none."""
    from fmstack.models.backends.llamacpp import _llama_cpp

    ll = _llama_cpp()
    _quiet()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelNotFoundError(f"{path} is not a GGUF model llama.cpp can load")
    try:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
    finally:
        ll.llama_model_free(model)
    return int(buf.value.decode()) if n >= 0 else None


def type_name(code: int | None) -> str:
    """llama.cpp's name for a file type: ``Q4_1``, ``Q4_K - Medium``..."""
    from fmstack.models.backends.llamacpp import _llama_cpp

    name = _llama_cpp().llama_ftype_name(code) if code is not None else None
    return name.decode() if name else f"file type {code}"


def _quiet() -> None:
    """Keep llama.cpp's informational log (a line per tensor) off stderr: llama-cpp-python
    routes it through this logger, as every ``Llama(verbose=False)`` sets it."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def _free_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose(path: Path, weights: str, *, n_slots: int, n_gpu_layers: int = 0) -> WeightsChoice:
    """Resolve ``weights`` (auto, file or f16) for a GGUF file served with ``n_slots`` slots;
    ``f16`` makes (or reuses) the expanded copy."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    if weights == "file":
        return WeightsChoice(path, "file", "as asked")
    if weights == "f16":
        if file_type(path) == _LLAMA_FTYPE_MOSTLY_F16:  # already F16: no second copy
            return WeightsChoice(path, "f16", "the file is F16")
        return WeightsChoice(expand_f16(path), "f16", "as asked")
    if n_gpu_layers:
        return WeightsChoice(path, "file", "layers are offloaded to a GPU")
    code = file_type(path)
    if code is None:
        return WeightsChoice(path, "file", "the file names no weight type")
    if code not in SLOW_BATCHED:
        return WeightsChoice(path, "file", f"{type_name(code)} is not a type measured to "
                             "decode faster as F16")
    if n_slots < AUTO_MIN_SLOTS:
        return WeightsChoice(path, "file", f"{n_slots} slots (F16 pays from {AUTO_MIN_SLOTS})")
    need = int(path.stat().st_size * 16 / SLOW_BATCHED[code])
    free = _free_memory()
    if free is not None and need > free // 2:
        return WeightsChoice(path, "file", f"an F16 copy (~{need >> 20} MiB) would take more "
                             f"than half the free memory ({free >> 20} MiB)")
    # auto only picks a speed-up: a cache that cannot hold the copy serves the file instead.
    try:
        disk = shutil.disk_usage(_cache_dir()).free
        if not _cached(path).is_file() and need > disk:
            return WeightsChoice(path, "file", f"an F16 copy (~{need >> 20} MiB) does not "
                                 f"fit on the cache's disk ({disk >> 20} MiB free)")
        copy = expand_f16(path)
    except (OSError, FmstackError) as e:
        return WeightsChoice(path, "file", f"the F16 copy could not be made: {e}")
    return WeightsChoice(copy, "f16",
                         f"{type_name(code)} has no batched CPU kernel; {n_slots} slots")


def _cache_dir() -> Path:
    from fmstack.config import cache_dir

    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(path: Path) -> Path:
    """Where the F16 copy of ``path`` lives: keyed by the file's path, size and mtime, so an
    edited or replaced file gets a new copy."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return _cache_dir() / f"{path.stem}-{digest}.F16.gguf"


def requantize(source: Path, target: Path, ftype: int) -> None:
    """Write ``source`` to ``target`` with its weights in llama.cpp file type ``ftype`` (e.g. 1,
    F16), dequantizing quantized tensors first: into a temporary name, renamed when complete,
    so an interrupted run leaves no half file."""
    from fmstack.models.backends.llamacpp import _llama_cpp

    ll = _llama_cpp()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = max(1, os.cpu_count() or 1)
    _quiet()
    try:
        rc = ll.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                     ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise FmstackError(f"llama_model_quantize returned {rc}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def expand_f16(path: Path) -> Path:
    """The F16 copy of a GGUF file's weights, made once and cached."""
    try:
        target = _cached(path)
        if not target.is_file():
            requantize(path, target, _LLAMA_FTYPE_MOSTLY_F16)
    except (OSError, FmstackError) as e:
        raise FmstackError(f"could not expand {path} to F16 ({e}); serve it with "
                           "weights=file") from None
    return target
