"""Decode speed and time to first token of SmolLM2 on each local backend, batch 1 and batch 8.

    make bench            # or: .venv/bin/python bench/models.py [--max-tokens 64] [--repeats 3]

Writes bench/results/models.json. Every figure is measured in this run; ratios are against the
llamacpp backend measured in the same run, and llama-cpp-python called directly (no fmstack)
is measured too, so the overhead of our layer is visible.

Definitions (per request, from the Completion's timings):
* ttft_s: submission to first generated token (for a batch: includes waiting for the others
  ahead of it when the backend runs requests one by one);
* decode_tok_s: (completion_tokens - 1) / (total - ttft), the steady decode rate of one stream;
* throughput_tok_s: all completion tokens of the batch / wall time of the batch call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fmstack.models import Completion, Model, Request, load_model

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a bicycle works.",
    "Describe a walk through a busy market.",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue, step by step.",
    "Tell the history of a small village.",
    "Describe how bread is baked, in detail.",
    "Write a long poem about the sea.",
]


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "llama_cpp_python": llama_cpp.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def requests(batch: int, max_tokens: int, offset: int = 0) -> list[Request]:
    # Long-answer prompts keep most streams at max_tokens (the contract has no min_tokens).
    # Each run starts at a different prompt so no run finds its whole prompt already cached.
    return [
        Request.chat(PROMPTS[(offset + i) % len(PROMPTS)], temperature=0, max_tokens=max_tokens)
        for i in range(batch)
    ]


def summarize(completions: list[Completion], wall: float) -> dict[str, Any]:
    ttfts = [c.timings.ttft for c in completions if c.timings.ttft is not None]
    rates = [
        (c.usage.completion_tokens - 1) / (c.timings.total - c.timings.ttft)
        for c in completions
        if c.timings.ttft is not None and c.usage.completion_tokens > 1
        and c.timings.total > c.timings.ttft
    ]
    tokens = sum(c.usage.completion_tokens for c in completions)
    return {
        "completion_tokens": tokens,
        "wall_s": round(wall, 4),
        "throughput_tok_s": round(tokens / wall, 2),
        "ttft_s_mean": round(statistics.mean(ttfts), 4) if ttfts else None,
        "decode_tok_s_mean": round(statistics.mean(rates), 2) if rates else None,
    }


def bench_model(model: Model, batch: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    model.generate(requests(1, 8))  # warm-up: first-call allocations, caches
    runs = []
    for r in range(repeats):
        reqs = requests(batch, max_tokens, offset=r + 1)
        start = time.perf_counter()
        completions = model.generate(reqs)
        runs.append(summarize(completions, time.perf_counter() - start))
    best = max(runs, key=lambda r: r["throughput_tok_s"])
    return {"batch": batch, "runs": runs, "best": best}


def bench_llama_cpp_direct(
    path: str, max_tokens: int, repeats: int, threads: int
) -> dict[str, Any]:
    """The peer: llama-cpp-python's own API on the same prompts, batch 1, no fmstack."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                flash_attn=True, verbose=False)
    llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0)
    runs = []
    for r in range(repeats):
        start = time.perf_counter()
        first = None
        tokens = 0
        for chunk in llm.create_chat_completion(
            [{"role": "user", "content": PROMPTS[(r + 1) % len(PROMPTS)]}],
            max_tokens=max_tokens, temperature=0, top_k=0, min_p=0.0, top_p=1.0, stream=True,
        ):
            delta = chunk["choices"][0]["delta"].get("content")  # type: ignore[index]
            if delta:
                tokens += 1  # one chunk per token in llama-cpp-python's streaming
                if first is None:
                    first = time.perf_counter() - start
        wall = time.perf_counter() - start
        runs.append({
            "completion_tokens": tokens,
            "wall_s": round(wall, 4),
            "throughput_tok_s": round(tokens / wall, 2),
            "ttft_s_mean": round(first, 4) if first else None,
            "decode_tok_s_mean": round((tokens - 1) / (wall - first), 2) if first else None,
        })
    llm.close()
    return {"batch": 1, "runs": runs, "best": max(runs, key=lambda r: r["throughput_tok_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="llamacpp,hf")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads for every backend and the peer (default: all cores)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "models.json"))
    args = ap.parse_args()

    aliases = {"llamacpp": "smollm2", "hf": "smollm2-hf"}
    results: dict[str, Any] = {
        "benchmark": "models",
        "command": "make bench  (python bench/models.py "
        f"--max-tokens {args.max_tokens} --repeats {args.repeats} --threads {args.threads})",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF; hf backend: dequantized to float32)",
        "settings": {"max_tokens": args.max_tokens, "greedy": True, "repeats": args.repeats,
                     "threads": args.threads},
        "notes": [
            "best = the run with the highest throughput of `repeats` runs",
            "both llama.cpp paths reuse the KV cache of the prompt prefix they share with the "
            "previous request (SmolLM2's chat template opens with the same system prompt), so "
            "their TTFT covers only the new part of the prompt; the hf backend has no prefix "
            "cache and always processes the whole prompt",
            "the llamacpp backend decodes a batch one request after another (capabilities.batch "
            "is False), so its batch-8 TTFT includes waiting for the requests ahead; hf decodes "
            "the 8 together",
        ],
        "backends": {},
    }
    for backend in args.backends.split(","):
        print(f"[bench] {backend} ...", flush=True)
        model = load_model(aliases[backend], trace=False, n_threads=args.threads)
        results["backends"][backend] = {
            f"batch{b}": bench_model(model, b, args.max_tokens, args.repeats) for b in (1, 8)
        }
        model.close()
    from fmstack.models.registry import smollm2_gguf

    print("[bench] llama-cpp-python direct ...", flush=True)
    results["peer_llama_cpp_direct"] = {
        "batch1": bench_llama_cpp_direct(
            str(smollm2_gguf()), args.max_tokens, args.repeats, args.threads
        )
    }

    ref = results["backends"].get("llamacpp")
    ratios: dict[str, Any] = {}
    if ref:
        for backend, by_batch in results["backends"].items():
            for key, res in by_batch.items():
                base = ref[key]["best"]["throughput_tok_s"]
                ratios[f"{backend}/{key}"] = round(res["best"]["throughput_tok_s"] / base, 3)
        peer = results["peer_llama_cpp_direct"]["batch1"]["best"]["throughput_tok_s"]
        ratios["llamacpp_backend_vs_direct/batch1"] = round(
            ref["batch1"]["best"]["throughput_tok_s"] / peer, 3
        )
    results["throughput_ratio_vs_llamacpp"] = ratios

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps({"ratios": ratios, **{
        f"{b}/{k}": v["best"] for b, d in results["backends"].items() for k, v in d.items()
    }}, indent=2))
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
