"""Where an engine step's time goes, in one process and behind `fmstack serve` (issue 7).

    python bench/engine_steps.py [--requests 48] [--out bench/results/engine_steps.json]
    python bench/engine_steps.py --chunks 64,512 --dataset gsm8k --out /tmp/chunks.json
    python bench/engine_steps.py --placement --out bench/results/engine_placement.json

The same load both ways: 16 slots, 16 streams at a time, 128 greedy output tokens per
request, the prompts of bench/engine.py. In process, 16 threads stream from one EngineModel. In
the server, `fmstack bench serve` drives `fmstack serve --parallel 16` over HTTP. Either way the
engine's own counters say how long it spent inside `llama_decode` and in whole steps; the
difference is the Python of a step (batch building, sampling, handing tokens out).

``--placement`` compares, in process, 4 sequences held in slots 0-3 with the same 4 in slots
3, 7, 11 and 15 (llama.cpp decodes each run of consecutive sequence ids as its own
micro-batch), which is why the engine keeps busy slots together.

``--chunks 64,512`` runs only the in-process case, once per prompt chunk size, which is how the
default chunk was chosen (``--dataset gsm8k`` for prompts of a realistic length; answers may
then end before 128 tokens, and tokens/s counts what was generated).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _servers import PROMPTS, free_port, git_state
from engine import wait_for_quiet

from fmstack.bench.serve import machine

SLOTS = 16
MAX_TOKENS = 128
THREADS = 2
CTX = SLOTS * 512


def per_step(steps: float, decode_s: float, step_s: float, wall_s: float,
             tokens: int) -> dict[str, Any]:
    return {"steps": int(steps), "output_tokens": tokens, "wall_s": round(wall_s, 2),
            "output_tok_s": round(tokens / wall_s, 1),
            "decode_ms_per_step": round(1000 * decode_s / steps, 1),
            "python_ms_per_step": round(1000 * (step_s - decode_s) / steps, 2)}


def prompts(dataset: str, n: int) -> list[str]:
    if dataset == "short":
        return [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    from fmstack.bench.serve import load_prompts

    # One user message per prompt: a messages row keeps its last message's text.
    return [p.text if p.text is not None else (p.messages or ({"content": ""},))[-1]["content"]
            for p in load_prompts(dataset, n)]


def in_process(texts: list[str], chunk: int | None = None,
               clients: int = SLOTS) -> dict[str, Any]:
    from fmstack.models.registry import load_model, smollm2_gguf
    from fmstack.models.types import Message, Request, SamplingParams

    model = load_model(f"engine:{smollm2_gguf()}", parallel=SLOTS, n_ctx=CTX,
                       n_threads=THREADS, trace=False, chunk=chunk)
    todo: queue.Queue[str] = queue.Queue()
    for text in texts:
        todo.put(text)
    tokens: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                text = todo.get_nowait()
            except queue.Empty:
                return
            request = Request(messages=[Message(role="user", content=text)],
                              params=SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
            for delta in model.stream(request):
                if delta.completion is not None:
                    with lock:
                        tokens.append(delta.completion.usage.completion_tokens)

    try:
        before = model.engine.stats()  # type: ignore[attr-defined]
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        after = model.engine.stats()  # type: ignore[attr-defined]
    finally:
        model.close()
    return per_step(after.steps - before.steps, after.decode_seconds - before.decode_seconds,
                    after.step_seconds - before.step_seconds, wall, sum(tokens))


def placement(texts: list[str], rounds: int = 3) -> dict[str, Any]:
    """Decode time per step of 4 sequences in slots 0-3 against slots 3, 7, 11 and 15: the
    other slots are held busy, so the engine can place them nowhere else."""
    from fmstack.models.registry import load_model, smollm2_gguf
    from fmstack.models.types import Message, Request, SamplingParams

    model = load_model(f"engine:{smollm2_gguf()}", parallel=SLOTS, n_ctx=CTX,
                       n_threads=THREADS, trace=False)
    engine = model.engine  # type: ignore[attr-defined]
    layouts = {"slots_0_1_2_3": (0, 1, 2, 3), "slots_3_7_11_15": (3, 7, 11, 15)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}

    def run(slots: tuple[int, ...]) -> dict[str, Any]:
        with engine._cond:
            for slot in engine.pool.slots:
                slot.busy = slot.seq_id not in slots
        tokens: list[int] = []

        def one(text: str) -> None:
            request = Request(messages=[Message(role="user", content=text)],
                              params=SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
            tokens.append(model.complete(request).usage.completion_tokens)

        before = engine.stats()
        started = time.perf_counter()
        threads = [threading.Thread(target=one, args=(text,)) for text in texts[:len(slots)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        after = engine.stats()
        with engine._cond:
            for slot in engine.pool.slots:
                slot.busy = False
        return per_step(after.steps - before.steps, after.decode_seconds - before.decode_seconds,
                        after.step_seconds - before.step_seconds, wall, sum(tokens))

    try:
        for _ in range(rounds):  # alternated, so a slow spell of the machine hits both
            for name, slots in layouts.items():
                runs[name].append(run(slots))
                print(f"[steps] {name}: {runs[name][-1]}", flush=True)
    finally:
        model.close()
    return {name: {"runs": r, "decode_ms_per_step_median": sorted(
        x["decode_ms_per_step"] for x in r)[len(r) // 2]} for name, r in runs.items()}


def _engine_counters(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    out = {}
    for key in ("steps", "decode_seconds", "step_seconds"):
        m = re.search(rf'fmstack_engine_{key}_total{{model="smollm2"}} ([0-9.e+]+)', text)
        if m is None:
            raise RuntimeError(f"/metrics has no fmstack_engine_{key}_total")
        out[key] = float(m.group(1))
    return out


def in_server(n: int, clients: int = SLOTS) -> dict[str, Any]:
    fmstack = str(Path(sys.executable).parent / "fmstack")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [fmstack, "serve", "--model", "smollm2", "--port", str(port), "--threads", str(THREADS),
         "--parallel", str(SLOTS), "--ctx-size", str(CTX), "--no-ui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("fmstack serve did not start") from None
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "prompts.jsonl"
            data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
            out = Path(tmp) / "result.json"
            before = _engine_counters(base)
            started = time.perf_counter()
            subprocess.run(
                [fmstack, "bench", "serve", "--base-url", base + "/v1", "--model", "smollm2",
                 "--concurrency", str(clients), "--num-prompts", str(n), "--max-tokens",
                 str(MAX_TOKENS), "--ignore-eos", "--temperature", "0", "--dataset", str(data),
                 "--out", str(out)], check=True, capture_output=True)
            wall = time.perf_counter() - started
            after = _engine_counters(base)
            metrics = json.loads(out.read_text())["metrics"]
        result = per_step(after["steps"] - before["steps"],
                          after["decode_seconds"] - before["decode_seconds"],
                          after["step_seconds"] - before["step_seconds"], wall,
                          int(metrics["total_output_tokens"]))
        result["tpot_ms_p50"] = round(metrics["tpot_ms"]["median"], 1)
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--dataset", default="short", help="short (bench/engine.py's prompts), "
                    "gsm8k or a JSONL file")
    ap.add_argument("--chunks", default=None, help="compare prompt chunk sizes in process, "
                    "e.g. 64,512")
    ap.add_argument("--placement", action="store_true",
                    help="4 sequences in slots 0-3 against slots 3, 7, 11 and 15, in process")
    ap.add_argument("--concurrency", type=int, default=SLOTS,
                    help=f"streams at a time (the engine has {SLOTS} slots either way)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine_steps.json"))
    args = ap.parse_args()
    texts = prompts(args.dataset, args.requests)
    results: dict[str, Any] = {}
    if args.placement:
        wait_for_quiet(120.0)
        results["placement"] = placement(texts)
    elif args.chunks:
        for chunk in (int(c) for c in args.chunks.split(",")):
            wait_for_quiet(120.0)
            results[f"in_process_chunk_{chunk}"] = in_process(texts, chunk,
                                                                args.concurrency)
            print(f"[steps] chunk {chunk}: {results[f'in_process_chunk_{chunk}']}", flush=True)
    else:
        if args.dataset != "short":
            ap.error("the server comparison uses the short prompts (no --dataset)")
        wait_for_quiet(120.0)
        results["in_process"] = in_process(texts, clients=args.concurrency)
        print(f"[steps] in_process: {results['in_process']}", flush=True)
        wait_for_quiet(120.0)
        results["fmstack_serve"] = in_server(args.requests, args.concurrency)
        print(f"[steps] fmstack_serve: {results['fmstack_serve']}", flush=True)
    commit, dirty = git_state()
    report = {"benchmark": "engine_steps", "command": " ".join(sys.argv), "commit": commit,
              "uncommitted_under_fmstack": dirty,
              "machine": machine(), "settings": {"slots": SLOTS, "threads": THREADS,
                                                 "max_tokens": MAX_TOKENS, "ctx": CTX,
                                                 "requests": args.requests,
                                                 "concurrency": args.concurrency,
                                                 "dataset": args.dataset},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"[steps] wrote {args.out}")


if __name__ == "__main__":
    main()
