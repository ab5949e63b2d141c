"""Serving: ``fmstack serve`` against llama-cpp-python's own server, both on SmolLM2, measured by
``fmstack bench serve``'s library at concurrency 1, 4 and 16 with the same prompts.

    make bench            # or: .venv/bin/python bench/serve.py [--max-tokens 64]
                          #     [--concurrency 1,4,16] [--prompts 8,16,32] [--threads 1]

Writes bench/results/serve.json. Both servers run as subprocesses on loopback ports with the same
GGUF file, one CPU thread each (the machine has 2 cores and the client needs one), n_ctx 2048,
flash attention on (fmstack's llamacpp default), greedy decoding and the same max_tokens.
llama-cpp-python's server runs with ``--interrupt_requests False``: by default a new request cuts
the running one short and reports it as a success.

Both servers are up for the whole run and the levels alternate (fmstack then llama-cpp-python at
each concurrency), so a change in the machine's background load hits both alike. Each server gets
one warm-up request first. The prompts ask for long answers so that most requests run to
max_tokens; at concurrency c the 8 prompts are cycled over c's request count.

Per (server, concurrency): output tokens/s, requests/s, TTFT/TPOT/ITL/E2EL (p50, p99, mean) in
ms with vLLM's definitions (see fmstack/bench/serve.py), and completion tokens per request:
min/mean/max, how many ran to max_tokens, stopped early at EOS ("stop") or were cut short
("length" or no reason, yet fewer than max_tokens), plus how many got fewer tokens than the same
prompt alone at concurrency 1 on the same server (greedy, so a shorter answer under load means
it was cut, whatever its finish reason says). llama-cpp-python's stream has no usage chunk, so
its token counts are content chunks (it streams one token per chunk); fmstack reports usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _servers import (
    MODEL,
    PROMPTS,
    ROOT,
    fmstack_command,
    free_port,
    git_state,
    llama_cpp_python_command,
    ratio,
    server,
    show_command,
    summarize,
)

from fmstack.bench.serve import BenchConfig, Prompt, machine, run, write_json
from fmstack.models.registry import smollm2_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--prompts", default="8,16,32",
                    help="requests at each concurrency (same order as --concurrency)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each server")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.prompts.split(",")]
    if len(levels) != len(counts):
        sys.exit("error: --concurrency and --prompts need the same number of values")

    gguf = smollm2_gguf()
    ports = {"fmstack": free_port(), "llama_cpp_python": free_port()}
    commands = {
        "fmstack": fmstack_command(ports["fmstack"], args.threads),
        "llama_cpp_python": llama_cpp_python_command(gguf, ports["llama_cpp_python"],
                                                     args.threads),
    }
    ready = {"fmstack": f"http://127.0.0.1:{ports['fmstack']}/health",
             "llama_cpp_python": f"http://127.0.0.1:{ports['llama_cpp_python']}/v1/models"}
    commit, dirty = git_state()
    results: dict[str, Any] = {
        "benchmark": "serve",
        "command": f"make bench  (python bench/serve.py --max-tokens {args.max_tokens} "
                   f"--concurrency {args.concurrency} --prompts {args.prompts} "
                   f"--threads {args.threads})",
        "commit": commit,
        # The server under test is whatever the checkout holds, committed or not.
        "uncommitted_under_fmstack": dirty,
        "machine": machine(),
        "model": f"SmolLM2-135M-Instruct Q4_1 GGUF ({gguf.name})",
        "servers": {name: show_command(cmd) for name, cmd in commands.items()},
        "settings": {"max_tokens": args.max_tokens, "temperature": 0, "endpoint": "chat",
                     "threads_per_server": args.threads, "levels": dict(zip(
                         [f"c{c}" for c in levels], counts, strict=True)),
                     "prompts": PROMPTS},
        "notes": [
            "metrics as vLLM's bench serve (fmstack/bench/serve.py); latencies in ms",
            "llama-cpp-python's server streams no usage chunk: its completion tokens are the "
            "content chunks (one token each), and its prompt tokens are unknown",
            "loadavg_1min_before_after: the machine's 1-minute load average around each "
            "level; above 2 (the core count) other processes competed for the CPU",
            "shorter_than_same_prompt_at_c1: greedy answers under load that came out shorter "
            "than the same prompt alone on the same server (a cut-short request looks like "
            "this even when its finish reason says stop)",
        ],
        "results": {},
        "ratio_fmstack_over_llama_cpp_python": {},
    }
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    solo: dict[str, dict[int, int]] = {}
    with ExitStack() as stack:
        for name, cmd in commands.items():
            print(f"[bench] starting {name}: {' '.join(cmd)}", flush=True)
            stack.enter_context(server(name, cmd, ready[name], logs / f"bench-serve-{name}.log"))
        for name in commands:
            warm = BenchConfig(base_url=f"http://127.0.0.1:{ports[name]}/v1", model=MODEL,
                               max_tokens=8, concurrency=1)
            run(warm, [Prompt(text="Hello")], progress=False)
        for c, n in zip(levels, counts, strict=True):
            prompts = [Prompt(text=PROMPTS[i % len(PROMPTS)]) for i in range(n)]
            for name in commands:
                print(f"[bench] {name} c={c} n={n}", flush=True)
                config = BenchConfig(base_url=f"http://127.0.0.1:{ports[name]}/v1",
                                     model=MODEL, max_tokens=args.max_tokens, concurrency=c)
                load_before = os.getloadavg()[0]
                result = run(config, prompts)
                if c == 1:
                    solo[name] = {r.index % len(PROMPTS): r.completion_tokens
                                  for r in result.requests if r.ok}
                row = summarize(result, solo.get(name) if c != 1 else None)
                # Other work on the machine moves these numbers; record how busy it was.
                row["loadavg_1min_before_after"] = [round(load_before, 2),
                                                    round(os.getloadavg()[0], 2)]
                results["results"].setdefault(f"c{c}", {})[name] = row
                print(f"[bench]   {row['output_tok_s']} tok/s, TTFT p50 {row['ttft_ms']['p50']} "
                      f"ms, failed {row['failed']}, tokens {row['completion_tokens']['min']}-"
                      f"{row['completion_tokens']['max']}", flush=True)
            pair = results["results"][f"c{c}"]
            f, ll = pair["fmstack"], pair["llama_cpp_python"]
            results["ratio_fmstack_over_llama_cpp_python"][f"c{c}"] = {
                "output_tok_s": ratio(f["output_tok_s"], ll["output_tok_s"]),
                "request_throughput": ratio(f["request_throughput_req_s"],
                                            ll["request_throughput_req_s"]),
                "ttft_p50": ratio(f["ttft_ms"]["p50"], ll["ttft_ms"]["p50"]),
                "ttft_p99": ratio(f["ttft_ms"]["p99"], ll["ttft_ms"]["p99"]),
                "tpot_p50": ratio(f["tpot_ms"]["p50"], ll["tpot_ms"]["p50"]),
            }
            write_json(args.out, results)  # after each level, so an interrupted run keeps it
    # Every request completed and got its full answer: none failed, none was cut short by
    # finish reason, none came out shorter than the same prompt alone.
    results["all_requests_complete_and_uncut"] = {
        f"{c}/{name}": not (row["failed"] or row["completion_tokens"]["cut_short"]
                            or row["completion_tokens"]["shorter_than_same_prompt_at_c1"])
        for c, pair in results["results"].items() for name, row in pair.items()}
    write_json(args.out, results)
    print(f"[bench] ratios fmstack/llama-cpp-python: "
          f"{results['ratio_fmstack_over_llama_cpp_python']}")
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
