"""``fmstack bench serve``: vLLM's serving metrics computed from hand-made timestamps, Poisson
arrivals, prompt loading, and short real runs against llama-cpp-python's own server and against
``fmstack serve`` (both subprocesses on loopback ports, SmolLM2, one thread)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import free_port, llama_cpp_server  # tests/ is on sys.path under pytest
from typer.testing import CliRunner, Result

from fmstack.bench.serve import (
    BenchConfig,
    Prompt,
    RequestResult,
    arrival_times,
    calculate_metrics,
    load_prompts,
    parse_goodput,
    percentile,
    run,
)
from fmstack.cli import app
from fmstack.errors import ConfigError

MODEL = "smollm2"


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ----- metric arithmetic ----------------------------------------------------------------------


def synthetic() -> list[RequestResult]:
    return [
        # 4 tokens: TTFT 100 ms, ITLs 20/30/50 ms, E2EL 250 ms -> TPOT (250-100)/3 = 50 ms.
        RequestResult(index=0, ok=True, status=200, ttft_s=0.1, itl_s=[0.02, 0.03, 0.05],
                      e2el_s=0.25, content_chunks=4, usage_completion_tokens=4,
                      prompt_tokens=10, finish_reason="length"),
        # 2 tokens, stopped at EOS: TPOT (320-300)/1 = 20 ms.
        RequestResult(index=1, ok=True, status=200, ttft_s=0.3, itl_s=[0.01], e2el_s=0.32,
                      content_chunks=2, usage_completion_tokens=2, prompt_tokens=20,
                      finish_reason="stop"),
        # 1 token: no TPOT (vLLM counts it as 0 for goodput); "length" with 1 < 4: cut short.
        RequestResult(index=2, ok=True, status=200, ttft_s=0.2, e2el_s=0.2, content_chunks=1,
                      usage_completion_tokens=1, prompt_tokens=30, finish_reason="length"),
        RequestResult(index=3, status=429, error="HTTP 429: queue full"),
        RequestResult(index=4, error="ReadError: connection reset"),
        # No usage chunk: 3 content chunks count as 3 tokens -> TPOT (260-50)/2 = 105 ms.
        RequestResult(index=5, ok=True, status=200, ttft_s=0.05, itl_s=[0.1, 0.1], e2el_s=0.26,
                      content_chunks=3),
    ]


def test_metrics_match_hand_computed_values() -> None:
    m = calculate_metrics(synthetic(), duration_s=2.0, max_tokens=4)
    assert (m.completed, m.failed, m.rate_limited) == (4, 2, 1)
    assert m.total_output_tokens == 4 + 2 + 1 + 3 and m.total_input_tokens == 60
    assert m.prompt_tokens_reported == 3
    assert m.request_throughput == pytest.approx(2.0)
    assert m.output_throughput == pytest.approx(5.0)
    assert m.total_token_throughput == pytest.approx(35.0)
    assert m.request_goodput is None and m.good_requests is None

    tpots = [50.0, 20.0, 105.0]
    ttfts = [100.0, 300.0, 200.0, 50.0]
    itls = [20.0, 30.0, 50.0, 10.0, 100.0, 100.0]
    e2els = [250.0, 320.0, 200.0, 260.0]
    for summary, values in ((m.tpot_ms, tpots), (m.ttft_ms, ttfts), (m.itl_ms, itls),
                            (m.e2el_ms, e2els)):
        assert summary.n == len(values)
        assert summary.mean == pytest.approx(np.mean(values))
        assert summary.median == pytest.approx(np.median(values))
        assert summary.std == pytest.approx(np.std(values))
        assert summary.p99 == pytest.approx(np.percentile(values, 99))
        assert summary.p90 == pytest.approx(np.percentile(values, 90))

    lengths = m.lengths
    assert (lengths.min, lengths.max, lengths.mean) == (1, 4, 2.5)
    assert (lengths.full_length, lengths.stopped_early, lengths.cut_short) == (1, 1, 2)
    assert lengths.usage_reported == 3


@pytest.mark.parametrize(("slo", "good"), [
    # TTFT <= 250 and TPOT <= 60: requests 0 (100, 50) and 2 (200, TPOT 0); not 1 (TTFT 300)
    # nor 5 (TPOT 105).
    ({"ttft": 250, "tpot": 60}, 2),
    ({"e2el": 255}, 2),  # 250 and 200 pass, 320 and 260 do not
    ({"tpot": 100}, 3),  # 50, 20 and the one-token request pass; 105 does not
    ({"ttft": 49}, 0),
])
def test_goodput_counts_requests_meeting_every_slo(slo: dict[str, float], good: int) -> None:
    m = calculate_metrics(synthetic(), duration_s=2.0, max_tokens=4, goodput=slo)
    assert m.good_requests == good
    assert m.request_goodput == pytest.approx(good / 2.0)


def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        values = rng.exponential(size=n).tolist()
        for p in (0, 1, 50, 90, 99, 99.9, 100):
            assert percentile(values, p) == pytest.approx(np.percentile(values, p))


def test_poisson_arrivals_are_seeded_with_mean_gap_one_over_rate() -> None:
    times = arrival_times(20000, rate=5.0, seed=1)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 5.0, rel=0.05)  # exponential: std equals the mean
    assert arrival_times(50, 5.0, seed=1) == times[:50]
    assert arrival_times(50, 5.0, seed=2) != times[:50]
    assert arrival_times(4, float("inf"), seed=1) == [0.0] * 4


def test_goodput_specs() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(["ttft:500 e2el:2000,tpot:7.5"]) == {
        "ttft": 500.0, "e2el": 2000.0, "tpot": 7.5}
    for bad in ("ttft=500", "ttft:", "ttft:-1", "latency:5", "tpot:fast", "e2el:inf"):
        with pytest.raises(ConfigError, match="bad goodput SLO"):
            parse_goodput([bad])


# ----- prompts --------------------------------------------------------------------------------


def test_prompts_from_gsm8k_and_jsonl(tmp_path: Path) -> None:
    gsm = load_prompts("gsm8k", 5)
    assert len(gsm) == 5 and len({p.text for p in gsm}) == 5
    assert all(p.text and len(p.text) > 20 and p.messages is None for p in gsm)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one"}\n\n'
                    '{"messages": [{"role": "system", "content": "s"}, '
                    '{"role": "user", "content": "two"}]}\n')
    got = load_prompts(path, 5)
    assert [p.text for p in got] == ["one", None, "one", None, "one"]
    assert got[1].messages == ({"role": "system", "content": "s"},
                               {"role": "user", "content": "two"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected a non-empty string 'prompt'"):
        load_prompts(bad, 2)
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(bad, 2)
    with pytest.raises(ConfigError, match="dataset file not found"):
        load_prompts(tmp_path / "nope.jsonl", 2)
    with pytest.raises(ConfigError, match="num_prompts"):
        load_prompts(path, 0)


# ----- the CLI's bad input --------------------------------------------------------------------


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert "bad goodput SLO 'latency:5'" in error_line(invoke(
        "bench", "serve", "--base-url", dead, "--goodput", "ttft:500", "latency:5"))
    assert "bad goodput SLO 'ttft=5'" in error_line(invoke(
        "bench", "serve", "--base-url", dead, "--goodput", "ttft=5"))
    assert "dataset file not found" in error_line(invoke(
        "bench", "serve", "--base-url", dead, "--dataset", str(tmp_path / "missing.jsonl")))
    assert "either a concurrency or a request rate" in error_line(invoke(
        "bench", "serve", "--base-url", dead, "-c", "2", "--request-rate", "3"))
    assert "unexpected argument" in error_line(invoke(
        "bench", "serve", "--base-url", dead, "stray"))
    out = tmp_path / "r.json"
    line = error_line(invoke("bench", "serve", "--base-url", dead, "-n", "2", "--out", str(out)))
    assert line.startswith(f"error: cannot reach {dead}")
    assert not out.exists()


# ----- faults: a hand-written HTTP server that misbehaves on purpose ----------------------------


class Faulty(http.server.BaseHTTPRequestHandler):
    """Answers by the prompt: ``busy`` a 429, ``break`` a stream cut before [DONE], ``garbage``
    a chunk that is not JSON, ``oops`` an error event, anything else a good two-token stream."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.reply(200, b'{"object": "list", "data": [{"id": "m"}]}')

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if prompt == "busy":
            self.reply(429, b'{"error": {"message": "queue full", "type": "rate_limit"}}')
            return

        def event(data: Any) -> bytes:
            return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()

        def delta(text: str | None, finish: str | None = None) -> bytes:
            d = {} if text is None else {"content": text}
            return event({"choices": [{"index": 0, "delta": d, "finish_reason": finish}]})

        events = [delta(None), delta("Hel"), delta("lo")]
        if prompt == "break":
            pass  # the connection closes with no [DONE] and no finish reason
        elif prompt == "garbage":
            events.append(b"data: {not json\n\n")
        elif prompt == "oops":
            events.append(event({"error": {"message": "upstream died"}}))
        else:
            events += [delta(None, "stop"),
                       event({"choices": [], "usage": {"prompt_tokens": 5,
                                                       "completion_tokens": 2}}),
                       event("[DONE]")]
        payload = b"".join(events)
        self.reply(200, payload, "text/event-stream")


@pytest.fixture(scope="module")
def faulty_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_failures_are_counted_and_kept(faulty_url: str) -> None:
    prompts = [Prompt(text=t) for t in ("fine", "busy", "break", "garbage", "oops", "fine")]
    config = BenchConfig(base_url=faulty_url, model="m", max_tokens=2, concurrency=3)
    result = run(config, prompts, progress=False)
    m = result.metrics
    assert (m.completed, m.failed, m.rate_limited) == (2, 4, 1)
    assert m.total_output_tokens == 4 and m.total_input_tokens == 10
    assert m.lengths.full_length == 2 and m.lengths.usage_reported == 2
    by_index = {r.index: r.error or "" for r in result.requests}
    assert by_index[1] == "HTTP 429: queue full"
    assert by_index[2] == "the stream ended before [DONE] or a finish reason"
    assert by_index[3].startswith("JSONDecodeError")
    assert "upstream died" in by_index[4]
    assert result.errors == [by_index[i] for i in (1, 2, 3, 4)]
    # The role-only first chunk is not a token: TTFT is the "Hel" chunk, one ITL gap to "lo".
    good = [r for r in result.requests if r.ok]
    assert all(r.content_chunks == 2 and len(r.itl_s) == 1 and r.output_chars == 5
               for r in good)


# ----- real servers ---------------------------------------------------------------------------


def nonstreamed_tokens(base_url: str, prompt: Prompt, max_tokens: int) -> int:
    """The server's own usage count for the same greedy request, not streamed."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt.text}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base_url + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return int(json.loads(r.read())["usage"]["completion_tokens"])


@pytest.fixture(scope="module")
def fmstack_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("fmstack-serve") / "serve.log"
    cmd = [str(Path(sys.executable).parent / "fmstack"), "serve", "--model", MODEL,
           "--port", str(port), "--threads", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, HF_HUB_OFFLINE="1"))
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
                    assert time.monotonic() < deadline, "fmstack serve did not start"
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def check_run(requests: list[dict[str, Any]], base_url: str, prompts: list[Prompt],
              max_tokens: int) -> None:
    for row, prompt in zip(requests, prompts, strict=True):
        assert row["ok"] and row["status"] == 200 and row["error"] is None, row
        assert 0 < row["ttft_ms"] < row["e2el_ms"], row
        assert 1 <= row["completion_tokens"] <= max_tokens
        # The count the benchmark used equals the server's own usage for the same request.
        assert row["completion_tokens"] == nonstreamed_tokens(base_url, prompt, max_tokens)


@pytest.mark.slow
def test_cli_run_against_llama_cpp_python(tmp_path: Path, smollm2_path: Path) -> None:
    out = tmp_path / "results.json"
    with llama_cpp_server(smollm2_path, tmp_path / "llama.log") as url:
        done = invoke("bench", "serve", "--base-url", url, "--model", MODEL, "-n", "6",
                      "--max-tokens", "8", "-c", "2", "--goodput", "ttft:600000", "tpot:600000",
                      "--api-key", "sk-not-to-be-written", "--out", str(out))
        assert done.exit_code == 0, done.stderr + done.stdout
        data = json.loads(out.read_text())
        prompts = load_prompts("gsm8k", 6)
        check_run(data["requests"], url, prompts, 8)
    assert "Output token throughput" in done.stdout and "TTFT" in done.stdout
    m = data["metrics"]
    assert (m["completed"], m["failed"], m["good_requests"]) == (6, 0, 6)
    assert m["request_goodput"] == pytest.approx(6 / m["duration_s"])
    assert m["total_output_tokens"] == sum(r["completion_tokens"] for r in data["requests"])
    # llama-cpp-python streams no usage chunk: the tokens are counted as content chunks.
    assert m["lengths"]["usage_reported"] == 0 and m["prompt_tokens_reported"] == 0
    assert "not reported by the server" in done.stdout
    assert data["settings"]["concurrency"] == 2 and data["settings"]["dataset"] == "gsm8k"
    assert data["settings"]["goodput"] == {"ttft": 600000.0, "tpot": 600000.0}
    assert data["machine"]["cpu_count"] == os.cpu_count()
    assert "sk-not-to-be-written" not in out.read_text()


@pytest.mark.slow
def test_library_runs_against_fmstack_serve(fmstack_url: str) -> None:
    prompts = load_prompts("gsm8k", 6)
    config = BenchConfig(base_url=fmstack_url, model=MODEL, max_tokens=8, concurrency=2)
    result = run(config, prompts, progress=False)
    assert result.metrics.completed == 6 and result.errors == []
    check_run([r.record() for r in result.requests], fmstack_url, prompts, 8)
    for r in result.requests:
        assert r.usage_completion_tokens is not None and r.prompt_tokens
        assert len(r.itl_s) == r.content_chunks - 1
    assert result.metrics.total_input_tokens == sum(r.prompt_tokens or 0
                                                    for r in result.requests)

    # Poisson arrivals: no request leaves before its scheduled time, and they leave in order.
    config = BenchConfig(base_url=fmstack_url, model=MODEL, max_tokens=2, request_rate=20.0,
                         seed=3, max_concurrency=2)
    result = run(config, prompts[:4], progress=False)
    assert result.metrics.completed == 4
    planned = arrival_times(4, 20.0, seed=3)
    starts = [r.start_s for r in result.requests]
    assert all(s >= p - 1e-3 for s, p in zip(starts, planned, strict=True)), (starts, planned)

    # An unknown model is a counted failure with the server's message, not a crash.
    config = BenchConfig(base_url=fmstack_url, model="no-such-model", max_tokens=2)
    result = run(config, prompts[:2], progress=False)
    assert (result.metrics.completed, result.metrics.failed) == (0, 2)
    assert result.errors and result.errors[0].startswith("HTTP 4")
    assert "no-such-model" in result.errors[0]
