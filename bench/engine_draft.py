"""Draft-model speculation in the engine, on the one pair that installs offline: SmolLM2 at F16
as the target and its own quantized files as drafts (issue 7).

    make bench            # or: .venv/bin/python bench/engine_draft.py [--threads 2]

Writes bench/results/engine_draft.json.

No smaller model with SmolLM2's vocabulary ships offline, so the drafts are SmolLM2 itself,
quantized: the Q4_1 file the package ships and a Q2_K made from the F16 one by
``llama-quantize`` (``fmstack.bench.quant.make_variants``, cached; the F16 file is converted
from the Q4_1 weights, so it holds exactly what the drafts approximate). A draft proposes
``k`` tokens per step for each sequence; the target verifies them in the same batch as
everything else (``fmstack.models.engine``).

Per draft, k and concurrency: decode tokens/s (tokens after the first over the time after the
first token; requests at one concurrency level run together, so the time is the slowest
one's), best of ``--repeats``; the acceptance rate; whether the greedy answers equal the
target's own without speculation; and each model's own decode speed alone, whose ratio (the
draft's cost per token relative to the target's) bounds what speculation can give.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine_features import decode_tok_s

from fmstack.models.registry import load_model, smollm2_gguf
from fmstack.models.types import Message, Request, SamplingParams

RESULTS = Path(__file__).parent / "results" / "engine_draft.json"
PROMPTS = (
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works.",
    "What are the benefits of regular exercise?",
    "Describe a busy market in a small town on a Saturday morning.",
)
MAX_TOKENS = 128


def decode_rate(model: Any, conc: int, repeats: int) -> tuple[float, list[str]]:
    """Best decode tokens/s over ``repeats`` and the answers, ``conc`` prompts together."""
    requests = [Request(messages=[Message(role="user", content=p)],
                        params=SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
                for p in PROMPTS[:conc]]
    best = 0.0
    texts: list[str] = []
    for _ in range(repeats):
        outs = model.generate(requests)
        best = max(best, decode_tok_s(outs))
        texts = [o.text for o in outs]
    return best, texts


def measure(path: Path, conc: int, threads: int, repeats: int, *, draft: Path | None = None,
            k: int = 0) -> dict[str, Any]:
    options: dict[str, Any] = {"draft": str(draft), "speculative": k} if draft else {}
    model = load_model(f"engine:{path}", parallel=conc, n_ctx=conc * 1024, n_threads=threads,
                       trace=False, **options)
    try:
        rate, texts = decode_rate(model, conc, repeats)
        stats = model.engine.stats()  # type: ignore[attr-defined]
    finally:
        model.close()
    return {"decode_tok_s": round(rate, 1), "texts": texts,
            "acceptance": None if stats.acceptance is None else round(stats.acceptance, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--levels", default="1,4", help="concurrency levels")
    ap.add_argument("--k", default="2,4", help="draft tokens per step")
    args = ap.parse_args()
    from fmstack.bench.quant import make_variants

    started = time.perf_counter()
    shipped = Path(smollm2_gguf())
    variants = make_variants(shipped, ["Q2_K"], log=lambda s: print(f"[draft] {s}", flush=True))
    made = {qtype: path for qtype, path, _ in variants.made}
    if "F16" not in made:
        sys.exit("bench/engine_draft.py needs an F16 SmolLM2 to serve as the target: "
                 + "; ".join(variants.notes))
    target = made["F16"]
    drafts = {"Q4_1": shipped, **({"Q2_K": made["Q2_K"]} if "Q2_K" in made else {})}
    levels = [int(c) for c in args.levels.split(",")]
    ks = [int(k) for k in args.k.split(",")]
    out: dict[str, Any] = {}
    for conc in levels:
        base = measure(target, conc, args.threads, args.repeats)
        level: dict[str, Any] = {"target_F16_alone": {"decode_tok_s": base["decode_tok_s"]}}
        print(f"[draft] c={conc} F16 alone: {base['decode_tok_s']} tok/s", flush=True)
        for name, path in drafts.items():
            alone = measure(path, conc, args.threads, args.repeats)
            row: dict[str, Any] = {
                "draft_alone_decode_tok_s": alone["decode_tok_s"],
                # Below 1 the draft is cheaper per token than the target; speculation needs
                # it far below 1, since the verified rows are not free on a CPU either.
                "draft_cost_per_token_vs_target": round(
                    base["decode_tok_s"] / alone["decode_tok_s"], 2)}
            for k in ks:
                spec = measure(target, conc, args.threads, args.repeats, draft=path, k=k)
                row[f"k{k}"] = {"decode_tok_s": spec["decode_tok_s"],
                                "speedup_over_target_alone": round(
                                    spec["decode_tok_s"] / base["decode_tok_s"], 2),
                                "acceptance": spec["acceptance"],
                                "outputs_equal_target_alone": spec["texts"] == base["texts"]}
                print(f"[draft] c={conc} draft {name} k={k}: {row[f'k{k}']}", flush=True)
            level[f"draft_{name}"] = row
        out[f"c{conc}"] = level
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    result = {
        "benchmark": "engine_draft",
        "command": "python bench/engine_draft.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "target": f"{target.name} (engine backend, n_threads={args.threads})",
        "drafts": {name: path.name for name, path in drafts.items()},
        "notes": variants.notes,
        "settings": {"prompts": list(PROMPTS), "max_tokens": MAX_TOKENS,
                     "repeats": args.repeats, "greedy": True},
        "results": out,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
