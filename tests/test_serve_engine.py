"""fmstack serve over the batching engine: concurrent streams decoded together with the same
answers as the one-sequence backend, the prefix cache and the engine's counters on /metrics,
and a client that leaves frees its slot."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from servers import serving
from test_serve_gateway import metric

from fmstack.models.backends.engine import EngineModel
from fmstack.models.registry import load_model, smollm2_gguf
from fmstack.models.types import Message, Request, SamplingParams
from fmstack.serve.app import create_app
from fmstack.serve.gateway import Gateway, Replica, Route, RouteSpec


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, EngineModel]]:
    model = load_model(f"engine:{smollm2_gguf()}", parallel=4, n_ctx=4 * 1024, n_threads=2,
                       speculative=2, trace=False, exact_prefix=True)
    assert isinstance(model, EngineModel)
    gateway = Gateway([Route(RouteSpec(name="smollm2", uris=["smollm2"], max_concurrency=4),
                             [Replica(model)])])
    with serving(create_app(gateway, ui=False)) as url:
        yield url, model
    model.close()


def test_concurrent_streams_are_batched_and_answer_as_alone(
        served: tuple[str, EngineModel]) -> None:
    url, model = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    questions = [f"Describe a {w} in one sentence." for w in ("cat", "dog", "owl", "fox")]
    answers: list[str] = [""] * 4
    steps = model.engine.stats().steps

    def run(i: int) -> None:
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": questions[i]}],
            max_tokens=16, temperature=0, stream=True)
        answers[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reference = load_model("smollm2", n_threads=2, trace=False)
    try:
        expected = [reference.complete(Request(
            messages=[Message(role="user", content=q)],
            params=SamplingParams(temperature=0, max_tokens=16))).text for q in questions]
    finally:
        reference.close()
    assert answers == expected
    assert model.engine.stats().steps - steps < 4 * 16  # decoded together, not one by one


def test_prefix_cache_hits_show_in_usage_and_metrics(served: tuple[str, EngineModel]) -> None:
    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    system = {"role": "system", "content": "You answer questions about maps. " * 40}
    before = metric(url, "fmstack_engine_prefix_cache_hits_total", model="smollm2")
    outs = [client.chat.completions.create(
        model="smollm2", messages=[system, {"role": "user", "content": q}],  # type: ignore[list-item]
        max_tokens=2, temperature=0) for q in ("Where is Peru?", "Where is Chad?")]
    cached = outs[1].usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached is not None and cached >= 128  # whole 64-token chunks of the system prompt
    assert metric(url, "fmstack_engine_prefix_cache_hits_total", model="smollm2") > before
    assert metric(url, "fmstack_engine_prefix_cache_saved_tokens_total",
                  model="smollm2") >= cached


def test_a_client_that_leaves_frees_its_engine_slot(served: tuple[str, EngineModel]) -> None:
    url, model = served
    with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
            "model": "smollm2", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 500,
            "temperature": 0, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 6:
                break
    deadline = time.monotonic() + 10
    while model.engine.stats().busy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert model.engine.stats().busy == 0
    assert metric(url, "fmstack_engine_slots_busy", model="smollm2") == 0
    assert metric(url, "fmstack_cancelled_total", model="smollm2") >= 1
