"""The serve gateway through real servers on loopback: replicas, retries and fallbacks to a
dead upstream, timeouts, the bounded queue's 429, cancellation when a client goes away, the
response and prefix caches, embeddings, CORS and /metrics. SmolLM2 through llama.cpp is
every local model; upstreams are real fmstack servers (or a port where nothing listens)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, serving

from fmstack.models.base import Model
from fmstack.models.embeddings import load_embedder
from fmstack.models.registry import load_model
from fmstack.serve.app import create_app
from fmstack.serve.cache import ResponseCache
from fmstack.serve.gateway import Gateway, Replica, Route, RouteSpec

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# A raw prompt SmolLM2 continues for a long time: for requests that must still be running.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


@pytest.fixture(scope="module")
def models() -> Iterator[list[Model]]:
    loaded = [load_model("smollm2", n_threads=1), load_model("smollm2", n_threads=1)]
    yield loaded
    for m in loaded:
        m.close()


def _route(models: list[Model], name: str, **spec: Any) -> Route:
    return Route(RouteSpec(name=name, uris=[m.name for m in models], **spec),
                 [Replica(m) for m in models])


@pytest.fixture(scope="module")
def base(models: list[Model]) -> Iterator[str]:
    dead = load_model(f"openai:smollm2@http://127.0.0.1:{free_port()}/v1", max_retries=0,
                      timeout=5)
    gateway = Gateway([
        _route(models, "smollm2", policy="round_robin"),
        Route(RouteSpec(name="flaky", uris=[dead.name], retries=1, backoff=0.01,
                        fallbacks=["smollm2"]), [Replica(dead)]),
        _route(models[:1], "slow", timeout=0.3, retries=0),
        _route(models[1:], "tight", max_queue=0),
        _route(models[:1], "solo"),
    ])
    app = create_app(gateway, cache=ResponseCache(), embeddings=["minilm"],
                     cors_origins=["http://app.example"])
    with serving(app) as url:
        yield url


def metric(base: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    text = httpx.get(base + "/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def chat(base: str, model: str = "smollm2", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, **extra}
    return httpx.post(base + "/v1/chat/completions", json=body, timeout=120)


def test_replicas_take_turns(base: str) -> None:
    served = [chat(base, temperature=0.5).headers["x-fmstack-replica"] for _ in range(2)]
    assert sorted(served) == ["smollm2#0", "smollm2#1"]


def test_a_dead_upstream_is_retried_then_falls_back(base: str) -> None:
    before = metric(base, "fmstack_upstream_retries_total", model="flaky")
    r = chat(base, "flaky", seed=7, temperature=0.5)
    assert r.status_code == 200, r.text
    assert r.headers["x-fmstack-replica"].startswith("smollm2#")
    assert r.json()["choices"][0]["message"]["content"]
    # Two attempts on the dead upstream (the first and one retry) before the fallback.
    assert metric(base, "fmstack_upstream_retries_total", model="flaky") == before + 2
    assert metric(base, "fmstack_fallbacks_total", model="flaky") >= 1


def test_a_slow_attempt_times_out_with_504_and_the_server_keeps_serving(base: str) -> None:
    r = httpx.post(base + "/v1/completions", json={
        "model": "slow", "prompt": COUNTING, "max_tokens": 400, "temperature": 0},
        timeout=60)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    wait_for(lambda: httpx.get(base + "/health").json()["queues"]["slow"]["running"] == 0)
    assert chat(base).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(base: str) -> None:
    long = threading.Thread(target=lambda: httpx.post(base + "/v1/completions", json={
        "model": "tight", "prompt": COUNTING, "max_tokens": 60, "temperature": 0},
        timeout=120))
    long.start()
    wait_for(lambda: httpx.get(base + "/health").json()["queues"]["tight"]["running"] == 1)
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="tight", messages=QUESTION,  # type: ignore[arg-type]
                                       max_tokens=4)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert "busy" in caught.value.message
    long.join()
    assert metric(base, "fmstack_requests_total", model="tight", endpoint="chat/completions",
                  status="429") == 1


def test_a_client_that_leaves_mid_stream_cancels_its_generation(
        base: str, models: list[Model]) -> None:
    traces = models[0].tracer  # the store the module's models were loaded with
    assert traces is not None and traces.path == models[1].tracer.path  # type: ignore[union-attr]
    before = metric(base, "fmstack_cancelled_total", model="smollm2")
    with httpx.stream("POST", base + "/v1/completions", timeout=60, json={
            "model": "smollm2", "prompt": COUNTING, "max_tokens": 500, "temperature": 0,
            "stream": True}) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen == 3:
                break
    wait_for(lambda: metric(base, "fmstack_cancelled_total", model="smollm2") == before + 1)
    wait_for(lambda: httpx.get(base + "/health").json()["queues"]["smollm2"]["running"] == 0)
    # The model layer traced the call as cancelled, well short of its 500 tokens.
    cancelled = [t for t in traces.list(limit=10) if t["error"] and "cancelled" in t["error"]]
    assert cancelled and cancelled[0]["prompt"] == COUNTING


def test_a_client_that_leaves_before_the_answer_cancels_it(base: str) -> None:
    before = metric(base, "fmstack_cancelled_total", model="smollm2")
    body = json.dumps({"model": "smollm2", "prompt": COUNTING, "max_tokens": 500,
                       "temperature": 0}).encode()
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: httpx.get(base + "/health").json()["queues"]["smollm2"]["running"]
                 == 1)
    wait_for(lambda: metric(base, "fmstack_cancelled_total", model="smollm2") == before + 1)
    wait_for(lambda: httpx.get(base + "/health").json()["queues"]["smollm2"]["running"] == 0)


def test_deterministic_requests_are_answered_from_the_cache(base: str) -> None:
    first = chat(base, max_tokens=6)
    again = chat(base, max_tokens=6)
    assert first.headers["x-fmstack-cache"] == "miss" and again.headers["x-fmstack-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    # A streamed request with the same content is served from the cache too.
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=60, json={
            "model": "smollm2", "messages": QUESTION, "max_tokens": 6, "temperature": 0,
            "stream": True}) as r:
        assert r.headers["x-fmstack-cache"] == "hit"
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
    # Sampling without a seed is never cached.
    sampled = chat(base, max_tokens=6, temperature=0.8)
    assert "x-fmstack-cache" not in sampled.headers
    assert metric(base, "fmstack_response_cache_total", model="smollm2", result="hit") >= 2


def test_a_shared_prefix_is_reused_and_reported(base: str) -> None:
    system = {"role": "system", "content": "You are a geography tutor. " * 30}
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    outs = []
    for q in ("Name a river in France.", "Name a mountain in Spain."):
        # On the route with one replica, so the second request finds the first's KV cache.
        outs.append(client.chat.completions.create(
            model="solo", messages=[system, {"role": "user", "content": q}],  # type: ignore[list-item]
            max_tokens=2, temperature=0.7))
    details = outs[1].usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens > 150  # the ~180-token system prompt
    assert details.cached_tokens < outs[1].usage.prompt_tokens  # type: ignore[union-attr]
    assert metric(base, "fmstack_prefix_cache_hit_tokens_total", model="solo") >= \
        details.cached_tokens


def test_embeddings_match_the_embedder(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    out = client.embeddings.create(model="minilm", input=texts)  # base64 on the wire
    reference = load_embedder("minilm").embed(texts)
    assert [d.index for d in out.data] == [0, 1] and out.usage.prompt_tokens > 10
    for d, ref in zip(out.data, reference, strict=True):
        assert len(d.embedding) == 384
        assert max(abs(a - float(b)) for a, b in zip(d.embedding, ref, strict=True)) < 1e-5
    floats = httpx.post(base + "/v1/embeddings", json={"model": "minilm", "input": texts[0],
                                                        "encoding_format": "float"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(out.data[0].embedding, abs=1e-6)
    for body, status, needle in [
        ({"model": "nope", "input": "x"}, 404, "not served"),
        ({"model": "minilm", "input": ""}, 400, "input"),
        ({"model": "minilm", "input": ["a", ""]}, 400, "empty string"),
        ({"model": "minilm", "input": "x", "dimensions": 12}, 400, "dimensions"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ]:
        r = httpx.post(base + "/v1/embeddings", json=body)
        assert r.status_code == status and needle in r.json()["error"]["message"], r.text


def test_cors_allows_the_configured_origin_only(base: str) -> None:
    ok = httpx.options(base + "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(base + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


def test_an_upstream_that_dies_mid_stream_ends_it_with_an_error_event(
        models: list[Model], tmp_path: Path) -> None:
    port = free_port()
    fmstack = Path(sys.executable).parent / "fmstack"
    upstream = subprocess.Popen([str(fmstack), "serve", "-m", "smollm2", "--port", str(port),
                                 "--threads", "1", "--no-ui"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), timeout=60)
        remote = load_model(f"openai:smollm2@http://127.0.0.1:{port}/v1", max_retries=0)
        gateway = Gateway([Route(RouteSpec(name="remote", uris=[remote.name], retries=0),
                                 [Replica(remote)])])
        with serving(create_app(gateway, ui=False)) as url, httpx.stream(
                "POST", url + "/v1/completions", timeout=30, json={
                    "model": "remote", "prompt": COUNTING, "max_tokens": 400,
                    "temperature": 0, "stream": True}) as r:
            events = []
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    upstream.send_signal(signal.SIGKILL)
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])
            assert "error" in error and error["error"]["type"] == "server_error", error
            assert any('"text"' in e for e in events[:3])
    finally:
        upstream.kill()
        upstream.wait()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_load_40_clients_200_requests_and_metrics_that_match(models: list[Model]) -> None:
    """40 concurrent clients send 200 requests to one model whose queue holds 30: every
    request is answered 200 or an intended 429, and /metrics counts exactly what was sent."""
    gateway = Gateway([_route(models[:1], "smollm2", max_queue=30)])
    with serving(create_app(gateway, ui=False)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=300)
        outcomes: list[str] = []
        tokens: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                out = client.chat.completions.create(
                    model="smollm2", max_tokens=3, temperature=0,
                    messages=[{"role": "user", "content": f"Say the number {i}."}])
                with lock:
                    outcomes.append("200")
                    tokens.append(out.usage.completion_tokens)  # type: ignore[union-attr]
            except openai.RateLimitError:
                with lock:
                    outcomes.append("429")
            except Exception as e:  # any other failure fails the test below
                with lock:
                    outcomes.append(f"failed: {e!r}")

        def worker(k: int) -> None:
            for j in range(5):
                one(k * 5 + j)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(outcomes) == 200
        assert sorted(set(outcomes)) <= ["200", "429"], [o for o in outcomes if "failed" in o]
        ok, busy = outcomes.count("200"), outcomes.count("429")
        assert ok >= 30 and busy >= 1, (ok, busy)  # the queue did overflow, and drained
        labels = {"model": "smollm2", "endpoint": "chat/completions"}
        assert metric(url, "fmstack_requests_total", status="200", **labels) == ok
        assert metric(url, "fmstack_requests_total", status="429", **labels) == busy
        assert metric(url, "fmstack_e2e_request_latency_seconds_count", model="smollm2") == ok
        assert metric(url, "fmstack_generation_tokens_total", model="smollm2") == sum(tokens)
        assert metric(url, "fmstack_queue_depth", model="smollm2") == 0


@pytest.mark.slow
def test_a_batch_capable_model_serves_concurrent_requests_in_one_generate(
        session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SmolLM2 through transformers decodes a list together: four concurrent non-streamed
    requests on a route with four slots share generate calls, and each gets its own answer,
    the same as served alone (greedy)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMSTACK_CACHE", str(session_cache))  # the converted checkpoint, shared
        hf = load_model("smollm2-hf", trace=False, n_threads=1)
    try:
        gateway = Gateway([Route(RouteSpec(name="hf", uris=[hf.name], max_concurrency=4),
                                 [Replica(hf)])])
        questions = [f"Name a {thing}." for thing in ("fruit", "colour", "country", "river")]
        with serving(create_app(gateway, ui=False)) as url:
            def ask(q: str) -> str:
                r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
                    "model": "hf", "max_tokens": 6, "temperature": 0,
                    "messages": [{"role": "user", "content": q}]})
                assert r.status_code == 200, r.text
                return str(r.json()["choices"][0]["message"]["content"])

            alone = [ask(q) for q in questions]
            together: list[str] = [""] * 4

            def run(i: int) -> None:
                together[i] = ask(questions[i])

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            batches = metric(url, "fmstack_batch_size_count", model="hf")
            batched = metric(url, "fmstack_batch_size_sum", model="hf")
        assert batched == 8  # every request went through the batcher
        assert batches < 8  # and at least two of the concurrent ones shared a call
        assert together == alone
    finally:
        hf.close()
