"""The serving engine against its peers (issue 7): ``fmstack serve``, llama-cpp-python's server
and llama.cpp's own ``llama-server``, all on SmolLM2, loaded by ``fmstack bench serve``'s library
at concurrency 1, 4, 16 and 32 with the same prompts, 128 output tokens, streaming clients.

    make bench            # or: make llama-cpp-tools && .venv/bin/python bench/engine.py
                          #   [--levels 1,4,16,32] [--prompts-per-level 8,16,32,64]
                          #   [--servers fmstack,llama_cpp_python,llama_server] [--threads 2]

Writes bench/results/engine.json (atomically, after every level, so an interrupted run keeps
what it measured).

One server runs at a time, on a loopback port, with the same GGUF file and the same thread
count (2 by default: the machine has 2 cores, and every server gets all of them; the client
shares them). Each gets one warm-up request after it starts.

* ``fmstack serve --model smollm2 --threads T``; when ``fmstack serve --help`` lists
  ``--parallel`` (the engine), also ``--parallel S --ctx-size S*512``. Which mode was measured
  is written in the results (``fmstack_mode``). With 16 or 32 slots its default ``--weights
  auto`` decodes an F16 copy of the Q4_1 weights (docs/engine.md), so two more rows separate
  the engine from the weights: ``fmstack_file`` (``--weights file``: the Q4_1 weights, as the
  peers use) and ``llama_server_f16`` (llama-server on that same F16 copy).
* llama-cpp-python's server with ``--interrupt_requests False`` (by default a new request cuts
  the running one short and reports it as a success), n_ctx 2048, flash attention on. It serves
  one request at a time, so a level's request count is capped (``--serialized-max-prompts``)
  for it, and for fmstack serve when it has no engine: the cap bounds the run, not the result,
  since throughput at a fixed concurrency does not depend on the count once it exceeds it.
* ``llama-server`` built by ``make llama-cpp-tools`` from the llama.cpp sources inside the
  llama-cpp-python sdist of the installed version, with ``-np S -c S*512 -fa on``: S = 16 slots
  for concurrency up to 16 (as in the issue's table) and S = c above that (32 at c=32), so no
  request waits for a slot. Continuous batching is on by default; with an explicit ``-np`` the
  KV cache is split per slot (not unified), 512 positions each: a prompt here is under 64
  tokens and the answer at most 128.

The machine may be shared: before each level the benchmark waits (``--wait-quiet``, default
600 s) until processes outside it use under 15% of the CPU, measures their share during the
level (``other_processes_cpu_pct``), and runs a disturbed level again (``--retries``), keeping
the least disturbed attempt. llama.cpp's threads wait for each other at every step, so a
2-thread server next to one busy process on 2 cores slows down many times over.

Per (server, concurrency): output tokens/s, TTFT p50/p99, TPOT p50, goodput (requests/s that
meet every SLO, default ttft:2000 tpot:100 in ms: a first token within 2 s and then at least
10 tokens/s, about reading speed), requests and failures, and completion tokens per request
min/mean/max with how many ran to max_tokens, stopped at EOS, or were cut short (see
bench/_servers.py). Then the ratios the issue's goals name: fmstack/llama-cpp-python at c=1
(goal >= 0.95) and c=16 (goal >= 4), fmstack/llama-server at c=16 (goal >= 1.0), and the
same ratios for fmstack_file, and fmstack over llama_server_f16.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
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

from fmstack.bench.serve import (
    BenchConfig,
    BenchResult,
    Prompt,
    machine,
    parse_goodput,
    run,
    write_json,
)

SERVERS = ("fmstack", "fmstack_file", "llama_cpp_python", "llama_server", "llama_server_f16")
# The same engine or server on other weights, so that a ratio separates the engine from the
# weights: fmstack serve --weights file decodes the Q4_1 file's own weights (as every peer
# does); llama_server_f16 is llama-server on the F16 copy that fmstack serve decodes by default
# at 16 slots (fmstack.models.engine.weights).
FMSTACK_EXTRA = {"fmstack": [], "fmstack_file": ["--weights", "file"]}
# (numerator, denominator) servers whose output tok/s ratios the results report.
RATIOS = (("fmstack", "llama_cpp_python"), ("fmstack", "llama_server"),
          ("fmstack_file", "llama_cpp_python"), ("fmstack_file", "llama_server"),
          ("fmstack", "llama_server_f16"))
LLAMA_BIN = ROOT / "build" / "llama.cpp" / "bin"
# Slots of a batching server for every level up to this concurrency (the issue's table used 16).
MIN_SLOTS = 16
# Other processes' share of the CPU (all cores) under which a level counts as undisturbed.
QUIET_PCT = 15.0
# (server, concurrency, what) -> the goal's threshold, from the issue.
GOALS = {
    ("llama_cpp_python", 1): 0.95,
    ("llama_cpp_python", 16): 4.0,
    ("llama_server", 16): 1.0,
}
# The issue's table (2-core machine, SmolLM2 Q4_1, 128 tokens, streaming): output tok/s by
# concurrency, and TTFT p50 at c=16 in ms.
ISSUE_TABLE = {
    "llama_cpp_python": {"c1": 62.5, "c4": 30.2, "c16": 28.8, "ttft_p50_ms_c16": 61500.0},
    "llama_server": {"c1": 85.7, "c4": 123.7, "c16": 159.0, "ttft_p50_ms_c16": 270.0},
}


@dataclass(frozen=True)
class Level:
    concurrency: int
    prompts: int


@dataclass
class Launch:
    """One server process and the levels measured on it. ``slots`` is None for a server that
    serves one request at a time."""

    server: str
    slots: int | None
    levels: list[Level] = field(default_factory=list)


def plan(server: str, levels: Sequence[Level], batching: bool) -> list[Launch]:
    """The processes to start for ``server``: one for all levels when it serves requests one at
    a time; otherwise one with MIN_SLOTS slots for the levels up to MIN_SLOTS and one per
    higher concurrency with as many slots as requests in flight."""
    if not batching:
        return [Launch(server, None, list(levels))]
    launches: dict[int, Launch] = {}
    for level in levels:
        slots = max(MIN_SLOTS, level.concurrency)
        launches.setdefault(slots, Launch(server, slots)).levels.append(level)
    return [launches[s] for s in sorted(launches)]


def fmstack_has_engine() -> bool:
    """Whether this checkout's ``fmstack serve`` takes ``--parallel`` (the engine's sizing)."""
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "fmstack"), "serve", "--help"],
        capture_output=True, text=True, env=dict(os.environ, COLUMNS="200", NO_COLOR="1"),
    ).stdout
    return "--parallel" in help_text and "--ctx-size" in help_text


def llama_server_binary() -> Path:
    path = LLAMA_BIN / "llama-server"
    if not path.is_file():
        sys.exit(f"error: {path} not found: build it with `make llama-cpp-tools`, or leave "
                 "llama_server out of --servers")
    return path


def command(launch: Launch, port: int, threads: int, gguf: Path, per_slot_ctx: int,
            fmstack_extra: Sequence[str] = (),
            llama_server: Path = LLAMA_BIN / "llama-server",
            f16_gguf: Path | None = None) -> tuple[list[str], str]:
    """The command that starts ``launch``'s server, and the URL that answers 200 once it is
    ready. ``f16_gguf``: the F16 copy of ``gguf``, for llama_server_f16."""
    base = f"http://127.0.0.1:{port}"
    if launch.server in FMSTACK_EXTRA:
        extra = [*FMSTACK_EXTRA[launch.server], *fmstack_extra]
        if launch.slots is not None:
            extra = ["--parallel", str(launch.slots),
                     "--ctx-size", str(launch.slots * per_slot_ctx), *extra]
        return fmstack_command(port, threads, extra), f"{base}/health"
    if launch.server == "llama_cpp_python":
        return llama_cpp_python_command(gguf, port, threads), f"{base}/v1/models"
    if launch.server in ("llama_server", "llama_server_f16"):
        slots = launch.slots or MIN_SLOTS
        weights = gguf
        if launch.server == "llama_server_f16":
            if f16_gguf is None:
                raise ValueError("llama_server_f16 needs the F16 copy of the model")
            weights = f16_gguf
        cmd = [str(llama_server), "-m", str(weights), "--alias", MODEL,
               "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads),
               "-np", str(slots), "-c", str(slots * per_slot_ctx), "-fa", "on"]
        # /health answers 503 while the model loads, 200 once it can serve.
        return cmd, f"{base}/health"
    raise ValueError(f"unknown server {launch.server!r}")


def goal_ratios(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """fmstack's output tok/s over each peer's at every level both ran, and the issue's goals
    with whether they were met (None when a side was not measured)."""
    out: dict[str, Any] = {f"{a}_over_{b}": {} for a, b in RATIOS}
    out["goals"] = {}
    for level, rows in results.items():
        for a, b in RATIOS:
            if a in rows or b in rows:
                out[f"{a}_over_{b}"][level] = ratio(rows.get(a, {}).get("output_tok_s"),
                                                    rows.get(b, {}).get("output_tok_s"))
    for (peer, c), threshold in GOALS.items():
        value = out[f"fmstack_over_{peer}"].get(f"c{c}")
        out["goals"][f"c{c} fmstack/{peer} >= {threshold:g}"] = {
            "ratio": value, "met": None if value is None else value >= threshold}
    return out


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The results as a Markdown table, one row per (server, concurrency)."""
    lines = ["| server | c | requests | failed | output tok/s | TTFT p50 ms | TTFT p99 ms | "
             "TPOT p50 ms | goodput req/s | tokens min/mean/max | cut short |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x: Any) -> str:
        return "-" if x is None else f"{x:g}" if isinstance(x, float) else str(x)

    def concurrency(level: str) -> int:
        return int(level.lstrip("c"))

    for name in SERVERS:
        for level in sorted(results, key=concurrency):
            row = results[level].get(name)
            if row is None:
                continue
            tok = row["completion_tokens"]
            cut = (tok["cut_short"] or 0) + (tok["shorter_than_same_prompt_at_c1"] or 0)
            lines.append(
                f"| {name} | {concurrency(level)} | {row['requests']} | {row['failed']} | "
                f"{fmt(row['output_tok_s'])} | {fmt(row['ttft_ms']['p50'])} | "
                f"{fmt(row['ttft_ms']['p99'])} | {fmt(row['tpot_ms']['p50'])} | "
                f"{fmt(row.get('goodput_req_s'))} | "
                f"{fmt(tok['min'])}/{fmt(tok['mean'])}/{fmt(tok['max'])} | {cut} |")
    return "\n".join(lines)


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process and its descendants), from
    /proc; None where there is no /proc. Steal time is left out: it is the hypervisor's."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    except (OSError, ValueError):
        return None
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # After the ")" that closes the command name: state, ppid, ..., utime (14), stime (15).
        fields = text[text.rindex(")") + 2:].split()
        parent[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    me, mine = os.getpid(), 0
    for pid, t in ticks.items():
        p = pid
        while p > 1:
            if p == me:
                mine += t
                break
            p = parent.get(p, 0)
    return user + nice + system + irq + softirq, mine


def others_cpu_pct(before: tuple[int, int] | None, after: tuple[int, int] | None,
                   seconds: float) -> float | None:
    """The share of the machine's CPU (all cores) that processes outside this benchmark and
    its servers used between two ``cpu_ticks`` samples."""
    if before is None or after is None or seconds <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    hz = os.sysconf("SC_CLK_TCK")
    return round(max(0.0, 100.0 * others / (hz * seconds * (os.cpu_count() or 1))), 1)


def wait_for_quiet(max_wait_s: float, threshold_pct: float = QUIET_PCT) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold_pct`` of the
    machine over 3 s; returns the seconds waited. llama.cpp's threads wait for each other at
    every step, so one busy neighbour on a 2-core machine slows a 2-thread server many times
    over (a decode step of 17 ms took 1 s while another benchmark ran)."""
    start, check = time.monotonic(), 0
    while True:
        before, t0 = cpu_ticks(), time.monotonic()
        time.sleep(3.0)
        busy = others_cpu_pct(before, cpu_ticks(), time.monotonic() - t0)
        waited = time.monotonic() - start
        if busy is None or busy < threshold_pct:
            return round(t0 - start, 1)  # the check that found it quiet is not waiting
        if waited >= max_wait_s:
            return round(waited, 1)
        if check % 10 == 0:
            print(f"[bench]   other processes use {busy}% of the CPU; waiting "
                  f"({waited:.0f} of at most {max_wait_s:g} s)", flush=True)
        check += 1


def measure(config: BenchConfig, prompts: list[Prompt], wait_quiet_s: float,
            retries: int) -> tuple[BenchResult, dict[str, Any]]:
    """Run one level after waiting for a quiet CPU; when other processes still took QUIET_PCT
    or more of it during the level, run the level again (up to ``retries`` times) and keep the
    least disturbed attempt. Returns it with how disturbed it was."""
    best: tuple[BenchResult, dict[str, Any]] | None = None
    attempts = 0
    while attempts <= retries:
        attempts += 1
        waited = wait_for_quiet(wait_quiet_s) if wait_quiet_s > 0 else 0.0
        load = os.getloadavg()[0]
        ticks, t0 = cpu_ticks(), time.monotonic()
        result = run(config, prompts, progress=False)
        others = others_cpu_pct(ticks, cpu_ticks(), time.monotonic() - t0)
        info = {"loadavg_1min_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
                "other_processes_cpu_pct": others, "waited_for_quiet_s": waited}
        if best is None or (others or 0.0) < (best[1]["other_processes_cpu_pct"] or 0.0):
            best = (result, info)
        if others is None or others < QUIET_PCT:
            break
        if attempts <= retries:
            print(f"[bench]   other processes took {others}% of the CPU during the level; "
                  "running it again", flush=True)
    assert best is not None
    best[1]["attempts"] = attempts
    return best


def parse_levels(levels: str, counts: str) -> list[Level]:
    cs = [int(c) for c in levels.split(",")]
    ns = [int(n) for n in counts.split(",")]
    if len(cs) != len(ns):
        raise ValueError("--levels and --prompts-per-level need the same number of values")
    if any(c < 1 for c in cs) or any(n < 1 for n in ns):
        raise ValueError("concurrency levels and prompt counts must be positive")
    return [Level(c, n) for c, n in zip(cs, ns, strict=True)]


def llama_server_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return " ".join((done.stdout + done.stderr).split())[:300]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--levels", default="1,4,16,32", help="concurrency levels")
    ap.add_argument("--prompts-per-level", default="8,16,32,64",
                    help="requests at each level (same order as --levels)")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help=f"which of {', '.join(SERVERS)} to run")
    ap.add_argument("--serialized-max-prompts", type=int, default=32,
                    help="cap on a level's requests for servers that serve one at a time")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of every server")
    ap.add_argument("--per-slot-ctx", type=int, default=512,
                    help="context positions per slot of a batching server")
    ap.add_argument("--goodput", default="ttft:2000 tpot:100", help="SLOs in ms, as vLLM's")
    ap.add_argument("--fmstack-extra", default="",
                    help="extra flags for fmstack serve, e.g. '--max-concurrency 16'")
    ap.add_argument("--wait-quiet", type=float, default=600.0,
                    help="seconds to wait before each level for other processes to leave the "
                         "CPU (0: do not wait)")
    ap.add_argument("--retries", type=int, default=2,
                    help="times to rerun a level that other processes disturbed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    args = ap.parse_args()
    try:
        levels = parse_levels(args.levels, args.prompts_per_level)
        goodput = parse_goodput([args.goodput])
    except Exception as e:  # a bad flag is a one-line error, not a traceback
        sys.exit(f"error: {e}")
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SERVERS]
    if unknown or not names:
        sys.exit(f"error: unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")

    from fmstack.models.registry import smollm2_gguf

    gguf = smollm2_gguf()
    engine = fmstack_has_engine()
    batching = {"fmstack": engine, "fmstack_file": engine, "llama_cpp_python": False,
                "llama_server": True, "llama_server_f16": True}
    f16_gguf = None
    if "llama_server_f16" in names:
        from fmstack.models.engine.weights import expand_f16

        f16_gguf = expand_f16(gguf)
    fmstack_extra = args.fmstack_extra.split()
    commit, dirty = git_state()
    load = os.getloadavg()
    results: dict[str, Any] = {
        "benchmark": "engine",
        "command": "make bench  (python bench/engine.py " + " ".join(sys.argv[1:]) + ")",
        "commit": commit,
        "uncommitted_under_fmstack": dirty,
        "machine": {**machine(), "loadavg_1_5_15_at_start": [round(x, 2) for x in load]},
        "model": f"SmolLM2-135M-Instruct Q4_1 GGUF ({gguf})",
        "weights": {
            "fmstack": "fmstack serve's default --weights auto: at 16 or 32 slots it decodes an "
                       "F16 copy of the Q4_1 weights (Q4_1 has no batched CPU kernel in "
                       "llama.cpp); its log line says so",
            "fmstack_file": "fmstack serve --weights file: the Q4_1 file's own weights",
            "llama_cpp_python": "the Q4_1 file", "llama_server": "the Q4_1 file",
            "llama_server_f16": f"the F16 copy fmstack serve decodes ({f16_gguf})"},
        "fmstack_mode": (
            "engine: fmstack serve --help lists --parallel, so it ran with --parallel S "
            f"--ctx-size S*{args.per_slot_ctx}" if engine else
            "pre-engine: this checkout's fmstack serve has no --parallel flag, so what was "
            "measured is the llama-cpp-python backend behind the gateway, one request at a "
            "time per replica (--max-concurrency defaults to 1); rerun once the engine lands"),
        "settings": {
            "max_tokens": args.max_tokens, "temperature": 0, "endpoint": "chat",
            "stream": True, "threads_per_server": args.threads,
            "per_slot_ctx": args.per_slot_ctx, "goodput_slo_ms": goodput,
            "levels": {f"c{lv.concurrency}": lv.prompts for lv in levels},
            "serialized_max_prompts": args.serialized_max_prompts,
            "prompts": PROMPTS,
        },
        "servers": {},
        "notes": [
            "one server at a time; metrics as vLLM's bench serve (fmstack/bench/serve.py); "
            "latencies in ms",
            f"{args.threads} threads for every server on this {os.cpu_count()}-core machine; "
            "the load generator runs on the same cores",
            "a server that serves one request at a time (llama-cpp-python's; fmstack serve "
            f"without the engine) gets at most {args.serialized_max_prompts} requests per "
            "level: see 'requests' in each row",
            "llama-cpp-python's server streams no usage chunk: its completion tokens are the "
            "content chunks (one token each)",
            "a failure 'RemoteProtocolError: Server disconnected without sending a response' "
            "is a request sent on a kept-alive connection that the server had closed; the "
            "load generator does not retry, so it counts as failed and its tokens are not in "
            "output tok/s",
            "shorter_than_same_prompt_at_c1: greedy answers under load shorter than the same "
            "prompt alone on the same server; a cut-short request looks like this, but so "
            "does an answer whose batched numerics took another greedy path to an earlier EOS",
            "other_processes_cpu_pct: the share of the machine's CPU (all cores) used during "
            "that level by processes other than this benchmark and its server (from /proc); "
            f"waited_for_quiet_s: how long the level waited for it to drop under {QUIET_PCT:g}% "
            f"first (at most {args.wait_quiet:g} s); a level disturbed anyway was run again "
            f"(up to {args.retries} times) and the least disturbed attempt kept ('attempts'); "
            "loadavg_1min_before_after counts our own server and client too",
        ],
        "results": {},
    }
    if {"llama_server", "llama_server_f16"} & set(names):
        binary = llama_server_binary()
        results["llama_server_build"] = {
            "binary": str(binary.relative_to(ROOT)),
            "version": llama_server_version(binary),
            "built_by": "make llama-cpp-tools (tools/build_llama_cpp.sh)"}
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    for name in names:
        solo: dict[int, int] | None = None
        for launch in plan(name, levels, batching[name]):
            port = free_port()
            cmd, ready = command(launch, port, args.threads, gguf, args.per_slot_ctx,
                                 fmstack_extra, f16_gguf=f16_gguf)
            label = name if launch.slots is None else f"{name} ({launch.slots} slots)"
            results["servers"].setdefault(name, []).append(
                {"slots": launch.slots, "levels": [f"c{lv.concurrency}" for lv in launch.levels],
                 "command": show_command(cmd)})
            print(f"[bench] starting {label}: {' '.join(cmd)}", flush=True)
            with ExitStack() as stack:
                log = logs / f"bench-engine-{name}-{launch.slots or 1}.log"
                stack.enter_context(server(name, cmd, ready, log))
                base_url = f"http://127.0.0.1:{port}/v1"
                run(BenchConfig(base_url=base_url, model=MODEL, max_tokens=8, concurrency=1),
                    [Prompt(text="Hello")], progress=False)
                for level in launch.levels:
                    n = level.prompts if launch.slots is not None else min(
                        level.prompts, args.serialized_max_prompts)
                    prompts = [Prompt(text=PROMPTS[i % len(PROMPTS)]) for i in range(n)]
                    print(f"[bench] {label} c={level.concurrency} n={n}", flush=True)
                    config = BenchConfig(base_url=base_url, model=MODEL,
                                         max_tokens=args.max_tokens,
                                         concurrency=level.concurrency, goodput=goodput)
                    result, disturbance = measure(config, prompts, args.wait_quiet,
                                                  args.retries)
                    if level.concurrency == 1:
                        solo = {r.index % len(PROMPTS): r.completion_tokens
                                for r in result.requests if r.ok}
                    row = summarize(result, solo if level.concurrency != 1 else None)
                    row["slots"] = launch.slots
                    row.update(disturbance)
                    results["results"].setdefault(f"c{level.concurrency}", {})[name] = row
                    tok = row["completion_tokens"]
                    print(f"[bench]   {row['output_tok_s']} tok/s, TTFT p50 "
                          f"{row['ttft_ms']['p50']} ms, TPOT p50 {row['tpot_ms']['p50']} ms, "
                          f"failed {row['failed']}, tokens {tok['min']}-{tok['max']}, "
                          f"cut {tok['cut_short']}, others' CPU "
                          f"{disturbance['other_processes_cpu_pct']}%", flush=True)
                    results.update(goal_ratios(results["results"]))
                    write_json(args.out, results)
    results["all_requests_complete_and_uncut"] = {
        f"{level}/{name}": not (row["failed"] or row["completion_tokens"]["cut_short"]
                                or row["completion_tokens"]["shorter_than_same_prompt_at_c1"])
        for level, rows in results["results"].items() for name, row in rows.items()}
    results.update(goal_ratios(results["results"]))
    results["issue_7_table"] = {
        "issue": ISSUE_TABLE,
        "this_run": {peer: {**{f"c{c}": results["results"].get(f"c{c}", {}).get(peer, {})
                               .get("output_tok_s") for c in (1, 4, 16)},
                            "ttft_p50_ms_c16": results["results"].get("c16", {}).get(peer, {})
                            .get("ttft_ms", {}).get("p50")}
                     for peer in ISSUE_TABLE},
    }
    results["table_markdown"] = table(results["results"])
    write_json(args.out, results)
    print(results["table_markdown"])
    print(f"[bench] goals: {results['goals']}")
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
