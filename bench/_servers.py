"""What the serving benchmarks (bench/serve.py, bench/engine.py) share: the prompts, starting a
server as a subprocess until it answers, the commands of the servers they compare, and one
results row per (server, concurrency) out of a ``BenchResult``.

Imported as ``_servers`` by the scripts beside it (Python puts a script's folder on sys.path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fmstack.bench.serve import BenchResult

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2"
# Prompts that ask for long answers, so that most requests run to max_tokens; a level with n
# requests cycles through them.
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


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the benchmark dies, however it dies (an interrupted
    asyncio run does not always reach the ``finally`` that stops the server)."""
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the finally below still stops it on a normal exit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(name: str, cmd: list[str], ready_url: str, log: Path,
           timeout: float = 180.0) -> Iterator[None]:
    """Run ``cmd`` until ``ready_url`` answers 200; stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, HF_HUB_OFFLINE="1"),
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass  # not listening yet, or a 503 while llama-server loads the model
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: "
                                       + log.read_text(errors="replace")[-2000:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not up after {timeout:g} s")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fmstack_command(port: int, threads: int, extra: Sequence[str] = ()) -> list[str]:
    return [str(Path(sys.executable).parent / "fmstack"), "serve", "--model", MODEL,
            "--port", str(port), "--threads", str(threads), *extra]


def llama_cpp_python_command(gguf: Path, port: int, threads: int,
                             n_ctx: int = 2048) -> list[str]:
    # Without --interrupt_requests False a new request cuts the running one short and the
    # server reports it as a success; with it, requests are served one at a time.
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--interrupt_requests", "False", "--n_ctx", str(n_ctx), "--flash_attn", "True",
            "--n_threads", str(threads), "--n_threads_batch", str(threads)]


def show_command(cmd: Sequence[str]) -> str:
    """A command for a results file: the program's name, not this machine's path to it."""
    return " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))


def git_state() -> tuple[str, list[str]]:
    """The commit, and the files under fmstack/ that differ from it (the server under test is
    whatever the checkout holds, committed or not)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fmstack"], cwd=ROOT,
                           capture_output=True, text=True).stdout
    return commit, [line[3:] for line in dirty.splitlines() if line]


def r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def summarize(result: BenchResult, solo: dict[int, int] | None,
              n_prompts: int = len(PROMPTS)) -> dict[str, Any]:
    """One results row. ``solo`` maps a prompt (index mod ``n_prompts``) to its completion
    tokens alone at concurrency 1 on the same server: under greedy decoding a shorter answer
    under load means it was cut, whatever its finish reason says."""
    m = result.metrics
    tokens = [r.completion_tokens for r in result.requests]
    shorter = None
    if solo is not None:
        shorter = sum(1 for r in result.requests
                      if r.ok and r.index % n_prompts in solo
                      and r.completion_tokens < solo[r.index % n_prompts])
    row: dict[str, Any] = {
        "requests": len(result.requests),
        "completed": m.completed,
        "failed": m.failed,
        "rate_limited": m.rate_limited,
        "errors": result.errors,
        "duration_s": r2(m.duration_s),
        "output_tok_s": r2(m.output_throughput),
        "request_throughput_req_s": round(m.request_throughput, 3),
        "ttft_ms": {"p50": r2(m.ttft_ms.median), "p99": r2(m.ttft_ms.p99),
                    "mean": r2(m.ttft_ms.mean)},
        "tpot_ms": {"p50": r2(m.tpot_ms.median), "p99": r2(m.tpot_ms.p99),
                    "mean": r2(m.tpot_ms.mean)},
        "itl_ms": {"p50": r2(m.itl_ms.median), "p99": r2(m.itl_ms.p99),
                   "mean": r2(m.itl_ms.mean)},
        "e2el_ms": {"p50": r2(m.e2el_ms.median), "p99": r2(m.e2el_ms.p99),
                    "mean": r2(m.e2el_ms.mean)},
    }
    if m.request_goodput is not None:
        row["goodput_req_s"] = round(m.request_goodput, 3)
        row["good_requests"] = m.good_requests
    row["completion_tokens"] = {
        "min": m.lengths.min, "mean": r2(m.lengths.mean), "max": m.lengths.max,
        "full_length": m.lengths.full_length,
        "stopped_early_eos": m.lengths.stopped_early,
        "cut_short": m.lengths.cut_short,
        "over_max_tokens": m.lengths.over_length,
        "shorter_than_same_prompt_at_c1": shorter,
        "from_usage_chunk": m.lengths.usage_reported,
        "per_request": tokens,
        "finish_reasons": [r.finish_reason for r in result.requests],
    }
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)
