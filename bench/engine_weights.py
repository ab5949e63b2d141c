"""Why the engine decodes Q4_1 as F16 with many slots (issue 7, fmstack.models.engine.weights).

    make bench            # or: .venv/bin/python bench/engine_weights.py [--sequences 1,4,16]

Writes bench/results/engine_weights.json.

1. Decode cost by weight type: SmolLM2 in each GGUF type, made from the shipped Q4_1 file by
   ``llama_model_quantize`` (cached; requantizing loses quality, but the cost of a step depends
   only on the type), decoding N sequences one token each per step on one llama.cpp context
   (per-sequence KV streams, flash attention, as the engine runs). Per (type, N): milliseconds
   per step and tokens/s, the median of ``--rounds`` rounds that alternate over the types.
   A type without a batched CPU kernel costs nearly N times one sequence per step.
2. Quality of the F16 copy against the file it was made from: bits per byte and perplexity on
   the Shakespeare slice of ``fmstack bench quant`` (same chunking and scoring), and the
   relative RMS difference of all weights (dequantized by ``gguf``).
3. Batch stability, per weights (file, f16): the engine with 16 slots decodes 16 prompts, 128
   greedy tokens each, all together, then one at a time, then two at a time. Per pairing: how
   many answers are token-identical to the batch of 16, and the largest logprob difference
   over the tokens they share. llama.cpp's Q4_1 kernel treats every row alike; on F16 one row
   takes another kernel than two or more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _servers import git_state

from fmstack.bench.serve import machine
from fmstack.config import cache_dir
from fmstack.errors import FmstackError, MissingDependencyError
from fmstack.models.backends.llamacpp import _llama_cpp
from fmstack.models.engine.weights import expand_f16, file_type, requantize, type_name
from fmstack.models.registry import smollm2_gguf

RESULTS = Path(__file__).parent / "results" / "engine_weights.json"
# llama.cpp's enum llama_ftype.
TYPES = {"F16": 1, "Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q5_1": 9, "Q5_0": 8, "Q4_K_M": 15,
         "Q4_1": 3, "Q4_0": 2, "Q3_K_M": 12, "Q2_K": 10}
PROMPT = 40  # tokens each sequence holds before the measured steps


def variant(source: Path, name: str) -> Path:
    """``source`` in type ``name``: the source itself, its F16 copy, or a cached requant."""
    if TYPES[name] == file_type(source):
        return source
    if name == "F16":
        return expand_f16(source)
    target = cache_dir() / "weights" / f"{source.stem}.bench.{name}.gguf"
    if not target.is_file():
        try:
            requantize(source, target, TYPES[name])
        except FmstackError as e:
            sys.exit(f"error: could not make {name} from {source}: {e}")
    return target


class Stepper:
    """One model file, decoding N sequences a token each per step on a fresh context."""

    def __init__(self, path: Path, threads: int) -> None:
        self.ll = _llama_cpp()
        self.threads = threads
        self.model = self.ll.llama_model_load_from_file(str(path).encode(),
                                                        self.ll.llama_model_default_params())
        if not self.model:
            sys.exit(f"error: llama.cpp could not load {path}")

    def ms_per_step(self, n: int, steps: int) -> float:
        ll = self.ll
        cp = ll.llama_context_default_params()
        rows = max(n * PROMPT, n)
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n * 512, rows, rows
        cp.n_seq_max, cp.kv_unified, cp.flash_attn_type = n, False, 1
        cp.n_threads = cp.n_threads_batch = self.threads
        ctx = ll.llama_init_from_model(self.model, cp)
        batch = ll.llama_batch_init(rows, 0, 1)
        try:
            def decode(items: list[tuple[int, int, int, bool]]) -> None:
                batch.n_tokens = len(items)
                for i, (tok, pos, seq, logits) in enumerate(items):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, logits
                if ll.llama_decode(ctx, batch) != 0:
                    sys.exit("error: llama_decode failed")

            # Arbitrary ordinary token ids: the cost of a step does not depend on them.
            decode([(100 + (7 * s + 13 * p) % 1000, p, s, p == PROMPT - 1)
                    for s in range(n) for p in range(PROMPT)])
            start = time.perf_counter()
            for k in range(steps):
                decode([(200 + (s + k) % 1000, PROMPT + k, s, True) for s in range(n)])
            return 1000 * (time.perf_counter() - start) / steps
        finally:
            ll.llama_batch_free(batch)
            ll.llama_free(ctx)

    def close(self) -> None:
        self.ll.llama_model_free(self.model)


def tensor_types(path: Path) -> dict[str, int] | None:
    """Tensors per ggml type: a K-quant of SmolLM2 holds other types for most tensors (their
    576 columns are not a multiple of 256), so its row is not that K-quant's speed."""
    try:
        from fmstack.bench.quant import gguf_info

        return gguf_info(path).tensor_types
    except MissingDependencyError:  # gguf is in the bench extra
        return None


def speeds(source: Path, names: list[str], sequences: list[int], rounds: int, steps: int,
           threads: int) -> dict[str, Any]:
    files = {name: variant(source, name) for name in names}
    steppers = {name: Stepper(path, threads) for name, path in files.items()}
    runs: dict[str, dict[int, list[float]]] = {name: {n: [] for n in sequences} for name in names}
    try:
        for r in range(rounds):
            for n in sequences:
                for name in names:
                    runs[name][n].append(steppers[name].ms_per_step(n, steps))
            print(f"[weights] round {r + 1}/{rounds} done", flush=True)
    finally:
        for s in steppers.values():
            s.close()
    out: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {"file": str(files[name]), "tensor_types": tensor_types(files[name])}
        for n in sequences:
            ms = statistics.median(runs[name][n])
            row[f"n{n}"] = {"ms_per_step": round(ms, 1), "tok_s": round(1000 * n / ms, 1),
                            "rounds_ms": [round(x, 1) for x in runs[name][n]]}
        base = row[f"n{sequences[0]}"]["ms_per_step"]
        row["step_cost_vs_fewest"] = {f"n{n}": round(row[f"n{n}"]["ms_per_step"] / base, 2)
                                      for n in sequences}
        out[name] = row
        print(f"[weights] {name:7s} " + "  ".join(
            f"n={n}: {row[f'n{n}']['ms_per_step']} ms ({row[f'n{n}']['tok_s']} tok/s)"
            for n in sequences), flush=True)
    return out


def quality(source: Path, ppl_chars: int, threads: int) -> dict[str, Any]:
    from fmstack.bench.quant import QuantConfig, measure_quality, weight_error

    config = QuantConfig(ppl_chars=ppl_chars, threads=threads)
    copy = expand_f16(source)
    out: dict[str, Any] = {"settings": {"ppl_chars": ppl_chars, "chunk_tokens":
                                        config.chunk_tokens, "work": config.work}}
    for label, path in (("file", source), ("f16_copy", copy)):
        q = measure_quality(path, config)
        out[label] = {"path": str(path), "type": type_name(file_type(path)),
                      "size_bytes": path.stat().st_size,
                      "bits_per_byte": round(q.bits_per_byte, 5),
                      "perplexity": round(q.perplexity, 3), "n_tokens": q.n_tokens}
        print(f"[weights] {label}: {out[label]['bits_per_byte']} bits/byte, perplexity "
              f"{out[label]['perplexity']}", flush=True)
    err = weight_error(copy, source)
    out["f16_copy_weight_rel_rmse_vs_file"] = err
    print(f"[weights] F16 copy vs file: relative RMS weight difference {err}", flush=True)
    return out


def stability(source: Path, threads: int, max_tokens: int) -> dict[str, Any]:
    from fmstack.models.registry import load_model
    from fmstack.models.types import Completion, Message, Request, SamplingParams

    words = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig",
             "hen", "elk", "yak", "eel", "bat", "rat", "emu", "ape"]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=True)
    requests = [Request(messages=[Message(role="user", content=f"Write a short story about a "
                                          f"{w}.")], params=params) for w in words]

    def compare(base: list[Completion], other: list[Completion]) -> dict[str, Any]:
        same, worst = 0, 0.0
        for a, b in zip(base, other, strict=True):
            same += a.choices[0].token_ids == b.choices[0].token_ids
            for x, y in zip(a.choices[0].logprobs or [], b.choices[0].logprobs or [],
                            strict=False):
                if x.id != y.id:
                    break
                worst = max(worst, abs(x.logprob - y.logprob))
        return {"identical": f"{same}/{len(base)}", "max_abs_logprob_diff": worst}

    out: dict[str, Any] = {"prompts": len(requests), "max_tokens": max_tokens, "slots": 16}
    for weights in ("file", "f16"):
        model = load_model(f"engine:{source}", parallel=16, n_ctx=16 * 512, n_threads=threads,
                           trace=False, weights=weights, exact_prefix=True)
        try:
            batch = model.generate(requests)
            alone = [model.generate([r])[0] for r in requests]
            pairs = [c for i in range(0, len(requests), 2)
                     for c in model.generate(requests[i:i + 2])]
        finally:
            model.close()
        out[weights] = {"alone_vs_16": compare(batch, alone), "pairs_vs_16": compare(batch, pairs)}
        print(f"[weights] batch stability, {weights}: {out[weights]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES), help="GGUF types to time")
    ap.add_argument("--sequences", default="1,4,16", help="sequences decoded per step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32, help="measured steps per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ppl-chars", type=int, default=20_000,
                    help="characters of Shakespeare for bits per byte (bench quant's slice)")
    ap.add_argument("--max-tokens", type=int, default=128,
                    help="greedy tokens per answer in the batch-stability check")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    names = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in names if t not in TYPES]
    if bad or not names:
        sys.exit(f"error: unknown type(s) {bad}; choose from {', '.join(TYPES)}")
    try:
        sequences = [int(x) for x in args.sequences.split(",")]
    except ValueError:
        sys.exit(f"error: --sequences {args.sequences!r} is not a list of integers")
    if not sequences or min(sequences) < 1 or args.rounds < 1 or args.steps < 1:
        sys.exit("error: --sequences, --rounds and --steps must be positive")

    source = smollm2_gguf()
    started = time.time()
    commit, dirty = git_state()
    result: dict[str, Any] = {
        "benchmark": "engine_weights",
        "command": "python bench/engine_weights.py " + " ".join(sys.argv[1:]),
        "commit": commit, "uncommitted_under_fmstack": dirty, "machine": machine(),
        "model": f"SmolLM2-135M-Instruct ({source})",
        "settings": {"threads": args.threads, "rounds": args.rounds, "steps": args.steps,
                     "prompt_tokens_per_sequence": PROMPT, "flash_attn": True,
                     "kv_unified": False},
        "decode": speeds(source, names, sorted(set(sequences)), args.rounds, args.steps,
                         args.threads),
        "quality": quality(source, args.ppl_chars, args.threads),
        "batch_stability": stability(source, args.threads, args.max_tokens),
    }
    result["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"[weights] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
