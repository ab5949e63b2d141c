"""The engine's prefix cache and speculative decoding, measured on SmolLM2 through the Python
API (no HTTP), each against the same engine with the feature unused, in one run.

    make bench            # or: .venv/bin/python bench/engine_features.py [--threads 2]

Writes bench/results/engine_features.json.

* prefix_cache (default token-granular reuse) and prefix_cache_exact (``exact_prefix``: whole
  chunks only): a ~1,500-token system prompt shared by several questions. Cold: a system
  prompt the engine has never seen (each cold request starts with its own distinct line, so
  nothing is shared); warm: the same system prompt as the previous request, another question.
  Time to first token (``Completion.timings.ttft``: submit to first token) per request; medians
  and their ratio. Greedy, 8 output tokens. The warm answers are compared with the answers a
  cold engine gives to the same messages (how many of the rounds were equal).
* speculative: a copy task ("Repeat the following text exactly"), greedy, 160 output tokens
  max, at concurrency 1 and 4; prompt lookup with k = 2, 4, 8, 16 draft tokens against k = 0.
  Decode throughput = tokens after the first / (total - ttft), summed over requests; the
  median of ``--repeats`` rounds (default 5) that alternate between the settings, each
  run on a fresh engine (the machine is shared); the outputs of the first round checked
  identical to k = 0's, and the rounds (all cold) whose outputs equal them counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmstack.models.registry import load_model, smollm2_gguf
from fmstack.models.types import Completion, Message, Request, SamplingParams

RESULTS = Path(__file__).parent / "results" / "engine_features.json"

STORY = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in the salt "
    "wind. Every night the keeper climbed the spiral stairs, lit the great lamp, and watched "
    "the ships pass. He had done this for forty years, and he knew every rock and current of "
    "the bay. Storms came and went, ships were saved and lost, and still the light turned "
    "through the dark."
)


def engine(threads: int, parallel: int, n_ctx: int, speculative: int = 0,
           exact_prefix: bool = False) -> Any:
    return load_model(f"engine:{smollm2_gguf()}", parallel=parallel, n_ctx=n_ctx,
                      n_threads=threads, speculative=speculative, exact_prefix=exact_prefix,
                      trace=False)


def decode_tok_s(outs: list[Completion]) -> float:
    """Tokens after the first over the time after the first token. The requests ran together,
    so the time is the slowest one's."""
    after = sum(max(o.usage.completion_tokens - 1, 0) for o in outs)
    return after / max(o.timings.total - (o.timings.ttft or 0.0) for o in outs)


def prefix_cache(threads: int, rounds: int, exact: bool) -> dict[str, Any]:
    rules = ("Answer in one short sentence. Be accurate and polite. Cite no sources. "
             "Use plain words. ") * 79
    questions = ["Name a river.", "Name a mountain.", "Name a city.", "Name a lake.",
                 "Name a desert.", "Name a forest.", "Name an island.", "Name a sea."]

    def chat(system: str, q: str) -> Request:
        return Request(messages=[Message(role="system", content=system),
                                 Message(role="user", content=q)],
                       params=SamplingParams(temperature=0, max_tokens=8))

    model = engine(threads, parallel=2, n_ctx=2 * 2048, exact_prefix=exact)
    try:
        n_system = len(model.tokenize(model.render_chat([Message(role="system",
                                                                 content=rules)]),
                                      special=True))
        cold, warm, cached, equal = [], [], [], 0
        for i in range(rounds):
            # A first line of its own: shares nothing with any earlier prompt.
            system = f"Session {i}: {i * 7919 % 1000} {rules}"
            c = model.complete(chat(system, questions[i % len(questions)]))
            cold.append(c.timings.ttft)
            w = model.complete(chat(system, questions[(i + 1) % len(questions)]))
            warm.append(w.timings.ttft)
            cached.append(w.usage.cached_tokens)
            reference = engine(threads, parallel=1, n_ctx=2048)
            try:
                equal += reference.complete(chat(system, questions[(i + 1) % len(questions)])
                                            ).text == w.text
            finally:
                reference.close()
    finally:
        model.close()
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    return {"system_prompt_tokens": n_system, "rounds": rounds,
            "ttft_cold_s": [round(x, 4) for x in cold], "ttft_warm_s": [round(x, 4) for x in warm],
            "ttft_cold_median_s": round(cold_s, 4), "ttft_warm_median_s": round(warm_s, 4),
            "speedup_warm_over_cold": round(cold_s / warm_s, 2),
            "cached_tokens_warm": cached, "warm_answers_equal_cold_engine": f"{equal}/{rounds}",
            "goal": ">= 5x faster warm"}


def speculative(threads: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"task": "Repeat the following text exactly: <a 5-sentence story>",
                           "max_tokens": 160, "repeats": repeats, "levels": {}}
    ks = (0, 2, 4, 8, 16)
    for conc in (1, 4):
        requests = [Request(messages=[Message(role="user", content=(
            f"Repeat the following text exactly:\n\n{STORY}" + (f" ({i})" if i else "")))],
            params=SamplingParams(temperature=0, max_tokens=160)) for i in range(conc)]
        rates: dict[int, list[float]] = {k: [] for k in ks}
        texts: dict[int, list[list[str]]] = {k: [] for k in ks}
        tokens: dict[int, list[int]] = {}
        drafted = {k: 0 for k in ks}
        accepted = {k: 0 for k in ks}
        # Rounds alternate between the settings, so a slow spell of a shared machine lands
        # on all of them rather than on one. Each run gets a fresh engine (loading takes a
        # fraction of a second): every answer is cold, and only one engine exists at a time
        # (several idle ones slowed the running one down in a trial).
        for _ in range(repeats):
            for k in ks:
                model = engine(threads, parallel=conc, n_ctx=conc * 1024, speculative=k)
                try:
                    outs = model.generate(requests)
                    stats = model.engine.stats()
                finally:
                    model.close()
                rates[k].append(decode_tok_s(outs))
                texts[k].append([o.text for o in outs])
                tokens.setdefault(k, [o.usage.completion_tokens for o in outs])
                drafted[k] += stats.drafted
                accepted[k] += stats.accepted
        level: dict[str, Any] = {}
        for k in ks:
            acceptance = accepted[k] / drafted[k] if drafted[k] else None
            level[f"k{k}"] = {"decode_tok_s": round(statistics.median(rates[k]), 1),
                              "decode_tok_s_rounds": [round(r, 1) for r in rates[k]],
                              "completion_tokens": tokens[k],
                              "acceptance": None if acceptance is None else round(acceptance, 3),
                              "outputs_equal_k0": texts[k][0] == texts[0][0],
                              # Of all rounds (each cold): how many gave k0's first answers.
                              "rounds_equal_k0": sum(t == texts[0][0] for t in texts[k])}
        base = level["k0"]["decode_tok_s"]
        for k in ks[1:]:
            level[f"k{k}"]["speedup_over_k0"] = round(level[f"k{k}"]["decode_tok_s"] / base, 2)
        out["levels"][f"c{conc}"] = level
    out["goal"] = ">= 1.5x"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    result: dict[str, Any] = {
        "benchmark": "engine_features",
        "command": "python bench/engine_features.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_1min_at_start": os.getloadavg()[0]},
        "model": f"SmolLM2-135M-Instruct Q4_1 (engine backend, n_threads={args.threads})",
        "prefix_cache": prefix_cache(args.threads, args.rounds, exact=False),
        "prefix_cache_exact": prefix_cache(args.threads, args.rounds, exact=True),
        "speculative": speculative(args.threads, args.repeats),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(json.dumps({k: result[k] for k in ("prefix_cache", "prefix_cache_exact",
                                             "speculative")}, indent=2))


if __name__ == "__main__":
    main()
