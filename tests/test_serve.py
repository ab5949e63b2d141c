"""``fmstack serve``'s API: a real uvicorn server on a loopback port serving SmolLM2 (llama.cpp),
called with the official ``openai`` client and with raw HTTP for the malformed requests."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from servers import free_port  # tests/ is on sys.path under pytest

from fmstack.models.registry import load_model
from fmstack.serve.app import create_app

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    import uvicorn

    model = load_model("smollm2", n_threads=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app({"smollm2": model}), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    model.close()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def post(base_url: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(base_url + path, data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_completion_with_the_openai_client(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                         temperature=0, max_tokens=12, seed=1)
    assert out.object == "chat.completion" and out.model == "smollm2"
    assert out.choices[0].message.content and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.completion_tokens > 0
    # Greedy decoding on the same model is repeatable through the API.
    again = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                           temperature=0, max_tokens=12)
    assert again.choices[0].message.content == out.choices[0].message.content
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]


def test_streaming_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=12,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                           temperature=0, max_tokens=12)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_json_schema_logprobs_n_and_completions(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    out = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=40,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        logprobs=True, top_logprobs=2)
    content = out.choices[0].message.content or ""
    assert isinstance(json.loads(content)["city"], str)
    assert out.choices[0].logprobs is not None
    tokens = out.choices[0].logprobs.content or []
    assert tokens and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
    several = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                             temperature=0.9, max_tokens=8, n=3, seed=7)
    assert [c.index for c in several.choices] == [0, 1, 2]
    text = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=6,
                                     temperature=0, stop=["\n"])
    assert text.object == "text_completion" and text.choices[0].text


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404,
     "model 'gpt-9' is not served here"),
    (b'{"model": "smollm2", "messages": []}', 400, "messages"),
    (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
     b'"max_tokens": -1}', 400, "max_tokens"),
    (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "n": 2, '
     b'"stream": true}', 400, "n > 1 cannot be streamed"),
    (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
     b'"temperature": "hot"}', 400, "temperature"),
    (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
     b'"response_format": {"type": "xml"}}', 400, "response_format.type"),
    (b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], '
     b'"response_format": {"type": "json_schema", "json_schema": {"name": "x", '
     b'"schema": {"type": "nonsense"}}}}', 400, "not a valid JSON Schema"),
    (b'{"model": "smollm2", "prompt": "hi"}', 400, "messages"),
])
def test_bad_requests_get_openai_shaped_errors(base_url: str, body: bytes, status: int,
                                               words: str) -> None:
    code, data = post(base_url, "/chat/completions", body)
    assert code == status and words in data["error"]["message"], data
    assert set(data["error"]) == {"message", "type", "param", "code"}


def test_oversized_and_overlong_prompts_are_refused_and_the_server_keeps_serving(
        base_url: str, client: openai.OpenAI) -> None:
    huge = json.dumps({"model": "smollm2",
                       "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()
    code, data = post(base_url, "/chat/completions", huge)
    assert code == 413 and "over the limit" in data["error"]["message"]
    long = json.dumps({"model": "smollm2",
                       "messages": [{"role": "user", "content": "word " * 4000}]}).encode()
    code, data = post(base_url, "/chat/completions", long)
    assert code == 400 and "context window" in data["error"]["message"]
    assert data["error"]["code"] == "context_length_exceeded"
    # A stream is refused the same way, before it starts.
    streamed = json.dumps({"model": "smollm2", "stream": True,
                           "messages": [{"role": "user", "content": "word " * 4000}]}).encode()
    code, data = post(base_url, "/chat/completions", streamed)
    assert code == 400 and "context window" in data["error"]["message"]
    ok = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
    assert ok.choices[0].message.content is not None


def test_the_serve_command_serves_until_stopped() -> None:
    import subprocess
    import sys
    from pathlib import Path

    fmstack = Path(sys.executable).parent / "fmstack"
    port = free_port()
    proc = subprocess.Popen([str(fmstack), "serve", "-m", "smollm2", "--port", str(port),
                             "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
                    assert health["status"] == "ok" and health["models"] == ["smollm2"]
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = subprocess.run([str(fmstack), "serve", "--port", "70000"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "--port 70000 is not a TCP port" in bad.stderr


def test_structured_output_cut_by_max_tokens_is_returned_with_finish_reason_length(
        client: openai.OpenAI) -> None:
    """As OpenAI does: the partial JSON comes back with finish_reason "length" (not a 500),
    whole or streamed, and for a tool call too."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    out = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                         max_tokens=3, temperature=0, response_format=fmt)  # type: ignore[arg-type]
    choice = out.choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    assert choice.message.content.startswith("{")
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                            max_tokens=3, temperature=0, response_format=fmt,  # type: ignore[arg-type]
                                            stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    tool = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    called = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                            max_tokens=4, temperature=0, tools=[tool],  # type: ignore[list-item]
                                            tool_choice="required")
    assert called.choices[0].finish_reason == "length"
    assert called.choices[0].message.tool_calls is None
