"""The ``openai`` backend against a real OpenAI-compatible server nobody here wrote:
llama-cpp-python's own (``python -m llama_cpp.server``) serving SmolLM2 on loopback, reached
through the official ``openai`` client. One server per session; a second one, started with
``--api_key``, checks what happens to keys."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from servers import free_port, llama_cpp_server  # tests/ is on sys.path under pytest

from fmstack.errors import (
    CapabilityError,
    ConfigError,
    ContextLengthError,
    EndpointError,
    OutputValidationError,
)
from fmstack.models import Completion, Message, Request, SamplingParams, load_model
from fmstack.models.backends.openai_compat import OpenAIModel
from fmstack.store.traces import TraceStore

SERVER_KEY = "fmstack-test-server-key-7f3a9c"
POEM = "Write a short poem about the sea."
POEM_TOKENS = 24


@pytest.fixture(scope="session")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp_server(smollm2_path, log) as url:
        yield url


@pytest.fixture(scope="session")
def keyed_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama-server-keyed") / "server.log"
    with llama_cpp_server(smollm2_path, log, api_key=SERVER_KEY) as url:
        yield url


def served(url: str, **options: Any) -> OpenAIModel:
    """The model as a llama-cpp-python server wants it: llama.cpp's extra sampling fields and
    its json_object form of structured output."""
    options.setdefault("extra_sampling", True)
    options.setdefault("json_schema_style", "json_object")
    options.setdefault("trace", False)
    model = load_model(f"openai:smollm2@{url}", **options)
    assert isinstance(model, OpenAIModel)
    return model


@pytest.fixture
def model(server: str) -> Iterator[OpenAIModel]:
    m = served(server)
    yield m
    m.close()


@pytest.fixture(scope="session")
def poem(server: str) -> Completion:
    """The greedy poem, decoded once: several tests compare against it."""
    with served(server) as m:
        return m.complete(Request.chat(POEM, temperature=0, max_tokens=POEM_TOKENS))


# ----- generation against the real server -------------------------------------------------


def test_chat_greedy_is_deterministic(model: OpenAIModel) -> None:
    request = Request.chat(
        "What is the capital of France? Answer in one sentence.", temperature=0, max_tokens=16
    )
    first, second = model.complete(request), model.complete(request)
    assert first.text == second.text
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.model == "smollm2"  # the id the server reports (this one echoes the request)
    assert first.timings.total > 0 and first.cost == 0.0


def test_greedy_matches_llama_cpp_in_process(poem: Completion, smollm2_path: Path) -> None:
    """With extra_sampling, neutral top_k/min_p/repeat_penalty are sent, so the server decodes
    truly greedily; its defaults (repeat_penalty=1.1, ...) would change this poem."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path), n_ctx=2048, n_threads=1, verbose=False)
    try:
        ref = llm.create_chat_completion(
            messages=[{"role": "user", "content": POEM}],
            temperature=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0, max_tokens=POEM_TOKENS,
        )  # fmt: skip
    finally:
        llm.close()
    assert poem.text == ref["choices"][0]["message"]["content"]  # type: ignore[index]


def test_top_k_reaches_the_server(model: OpenAIModel, poem: Completion) -> None:
    hot = Request.chat(POEM, temperature=1.5, top_k=1, seed=1, max_tokens=POEM_TOKENS)
    assert model.complete(hot).text == poem.text  # top_k=1 is greedy at any temperature


def test_plain_completion_uses_the_completions_endpoint(model: OpenAIModel) -> None:
    c = model.complete(Request.text("The quick brown fox", temperature=0, max_tokens=8))
    assert c.text and not c.text.startswith("The quick")  # a continuation, no chat template
    assert c.finish_reason == "length"
    assert c.usage.completion_tokens == 8
    assert c.rendered_prompt == "The quick brown fox"


def test_stop_sequences(model: OpenAIModel, poem: Completion) -> None:
    full = poem.text
    words = full.split()
    stop = " " + words[len(words) // 2]
    request = Request.chat(POEM, temperature=0, max_tokens=POEM_TOKENS, stop=[stop])
    cut = model.complete(request)
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = list(model.stream(request))
    assert "".join(d.text for d in streamed) == cut.text


def test_stream_matches_greedy_generation(model: OpenAIModel, poem: Completion) -> None:
    full = poem
    deltas = list(model.stream(Request.chat(POEM, temperature=0, max_tokens=POEM_TOKENS)))
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == full.text
    last = deltas[-1]
    assert last.finish_reason == full.finish_reason == "length"
    assert last.completion is not None and last.completion.text == full.text
    # llama-cpp-python streams no usage chunk: completion tokens are counted from the deltas.
    assert last.completion.usage.completion_tokens == full.usage.completion_tokens == POEM_TOKENS
    t = last.completion.timings
    assert t.ttft is not None and t.tpot is not None
    assert 0 < t.ttft <= t.total


def test_stream_plain_completion(model: OpenAIModel) -> None:
    request = Request.text("Once upon a time", temperature=0, max_tokens=12)
    deltas = list(model.stream(request))
    assert "".join(d.text for d in deltas) == model.complete(request).text


def test_logprobs_with_top_alternatives(model: OpenAIModel) -> None:
    c = model.complete(
        Request.chat("Name a colour.", temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    )
    lps = c.logprobs
    assert lps is not None and len(lps) == c.usage.completion_tokens
    assert "".join(t.token for t in lps) == c.text
    for t in lps:
        assert t.logprob <= 0
        assert len(t.top) == 3
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert t.top[0].token == t.token  # greedy picks the most likely token
        assert t.top[0].logprob == pytest.approx(t.logprob)
    # Sampled tokens are often not the most likely one; the server then lists them among the
    # alternatives as well, and the list must still hold exactly top_logprobs entries.
    hot = model.complete(
        Request.chat("Name a colour.", temperature=1.5, seed=3, max_tokens=8, top_logprobs=1)
    )
    assert hot.logprobs is not None
    assert all(len(t.top) == 1 and t.logprob <= t.top[0].logprob + 1e-6 for t in hot.logprobs)
    assert any(t.top[0].token != t.token for t in hot.logprobs)


def test_logprobs_on_plain_completion_and_stream(model: OpenAIModel) -> None:
    request = Request.text("The quick brown fox", temperature=0, max_tokens=6, top_logprobs=2)
    c = model.complete(request)
    assert c.logprobs is not None and len(c.logprobs) == 6
    assert all(len(t.top) == 2 for t in c.logprobs)
    deltas = list(model.stream(request))
    streamed = [d.logprob for d in deltas if d.logprob is not None]
    assert [t.token for t in streamed] == [t.token for t in c.logprobs]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in c.logprobs])


SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "integer"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}},
        "required": ["sentiment"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "colors": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["colors"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_json_schema_output_validates(model: OpenAIModel, kind: str) -> None:
    schema = SCHEMAS[kind]
    c = model.complete(
        Request.chat(
            f"Reply with a JSON example ({kind}).",
            temperature=0,
            max_tokens=96,
            response_format={"type": "json_schema", "schema": schema},
        )
    )
    jsonschema.validate(c.parsed, schema)
    assert c.parsed is not None


def test_openai_json_schema_form_is_refused_by_llama_cpp_server(server: str) -> None:
    """llama-cpp-python's server only knows {"type": "json_object", "schema": ...}; the
    server's refusal comes back as one line naming the fix."""
    with served(server, json_schema_style="json_schema") as m:
        request = Request.chat(
            "Hi", max_tokens=8, response_format={"type": "json_schema", "schema": SCHEMAS["enum"]}
        )
        with pytest.raises(EndpointError, match=r"response_format.*json_object") as info:
            m.complete(request)
    assert "\n" not in str(info.value)


def test_n_choices_are_filled_in_when_the_server_ignores_n(model: OpenAIModel) -> None:
    """The server returns one choice whatever n is; the backend asks again with seed + i."""
    c = model.complete(Request.chat(POEM, temperature=1.0, seed=7, n=2, max_tokens=8))
    assert [ch.index for ch in c.choices] == [0, 1]
    singles = [
        model.complete(Request.chat(POEM, temperature=1.0, seed=s, max_tokens=8)).text
        for s in (7, 8)
    ]
    assert [ch.text for ch in c.choices] == singles
    assert c.usage.completion_tokens == 16


def test_prompt_longer_than_context(model: OpenAIModel) -> None:
    long = "hello " * 3000
    with pytest.raises(ContextLengthError, match="maximum context length is 2048"):
        model.complete(Request.chat(long, max_tokens=8))
    with pytest.raises(ContextLengthError):
        model.complete(Request.text(long, max_tokens=8))
    # The server fails that stream after it began; the error is still the real one.
    with pytest.raises(ContextLengthError):
        list(model.stream(Request.chat(long, max_tokens=8)))


def test_structured_output_is_validated_even_when_cut_short(model: OpenAIModel) -> None:
    request = Request.chat(
        "JSON please.",
        temperature=0,
        max_tokens=3,
        response_format={"type": "json_schema", "schema": SCHEMAS["nested"]},
    )
    with pytest.raises(OutputValidationError, match="max_tokens"):
        model.complete(request)


# ----- endpoints, keys and traces ---------------------------------------------------------


def test_unreachable_endpoint_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with served(url, max_retries=0, trace=True) as m:
        with pytest.raises(EndpointError, match=f"cannot reach {url}.*refused"):
            m.complete(Request.chat("hi"))
        assert m.tracer is not None
        [row] = m.tracer.list()
        assert "EndpointError" in row["error"] and url in row["error"]


def test_missing_key_fails_before_any_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(EndpointError, match=r"set OPENAI_API_KEY .*https://api\.openai\.com/v1"):
        load_model("openai:gpt-4o-mini", trace=False)
    with pytest.raises(EndpointError, match=r"set TEAM_LLM_KEY .*https://llm\.example\.com/v1"):
        load_model("openai:m@https://llm.example.com/v1", api_key_env="TEAM_LLM_KEY", trace=False)


def test_loopback_needs_no_key(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with served(server) as m:
        assert m.complete(Request.chat("Say hi.", temperature=0, max_tokens=4)).text


def test_keyed_server_401s(keyed_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMSTACK_TEST_CRED", raising=False)
    m = served(keyed_server, api_key_env="FMSTACK_TEST_CRED", max_retries=0)
    with pytest.raises(EndpointError, match=r"wants an API key.*set FMSTACK_TEST_CRED"):
        m.complete(Request.chat("hi", max_tokens=2))
    monkeypatch.setenv("FMSTACK_TEST_CRED", "not-the-right-key-123456")
    m = served(keyed_server, api_key_env="FMSTACK_TEST_CRED", max_retries=0)
    with pytest.raises(EndpointError, match="rejected the API key in FMSTACK_TEST_CRED"):
        m.complete(Request.chat("hi", max_tokens=2))


def test_trace_written_without_the_key(
    keyed_server: str, monkeypatch: pytest.MonkeyPatch, fmstack_home: Path
) -> None:
    # The variable's name is not one the trace store redacts by pattern (KEY, TOKEN, ...), so
    # nothing but the backend itself keeps the key out of the file.
    monkeypatch.setenv("FMSTACK_TEST_CRED", SERVER_KEY)
    with served(keyed_server, api_key_env="FMSTACK_TEST_CRED", trace=True) as m:
        ok = m.complete(Request.chat("Say hi.", temperature=0, max_tokens=6))
        assert ok.trace_id is not None
        monkeypatch.setenv("FMSTACK_TEST_CRED", "wrong-" + SERVER_KEY)
    m = served(keyed_server, api_key_env="FMSTACK_TEST_CRED", trace=True, max_retries=0)
    with pytest.raises(EndpointError):
        m.complete(Request.chat("hi", max_tokens=2))
    store = TraceStore()
    row = store.get(ok.trace_id)
    assert row is not None and row["output"] == ok.text and row["backend"] == "openai"
    assert store.count() == 2
    store.close()
    files = list(fmstack_home.glob("fmstack.db*"))
    assert files
    for f in files:
        data = f.read_bytes()
        assert SERVER_KEY.encode() not in data


# ----- what the backend refuses up front --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("top_k", 40), ("min_p", 0.05), ("repetition_penalty", 1.1)]
)
def test_parameters_without_an_openai_field(server: str, field: str, value: float) -> None:
    m = served(server, extra_sampling=False)
    request = Request(
        messages=[Message(role="user", content="hi")],
        params=SamplingParams.model_validate({field: value}),
    )
    with pytest.raises(CapabilityError, match=f"no {field} parameter.*extra_sampling"):
        m.complete(request)


@pytest.mark.parametrize(
    "fmt", [{"type": "regex", "pattern": "[0-9]+"}, {"type": "choice", "choices": ["a", "b"]}]
)
def test_regex_and_choice_are_capability_errors(model: OpenAIModel, fmt: dict[str, Any]) -> None:
    with pytest.raises(CapabilityError, match=f"cannot enforce {fmt['type']}"):
        model.complete(Request.chat("hi", response_format=fmt))


def test_other_refusals(model: OpenAIModel) -> None:
    schema_on_text = Request.text("hi", response_format={"type": "json_schema", "schema": {}})
    with pytest.raises(CapabilityError, match="needs chat messages"):
        model.complete(schema_on_text)
    with pytest.raises(CapabilityError, match="score"):
        model.score(["some text"])
    with pytest.raises(CapabilityError, match="tokenize"):
        model.tokenize("some text")
    assert model.capabilities.local is False


# ----- targets ----------------------------------------------------------------------------


def test_targets_and_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000000")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    m = load_model("openai:gpt-4o-mini", trace=False)
    assert isinstance(m, OpenAIModel)
    assert (m.model, m.base_url) == ("gpt-4o-mini", "https://api.openai.com/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example.com/v1/")
    m = load_model("openai:gpt-4o-mini", trace=False)
    assert isinstance(m, OpenAIModel) and m.base_url == "https://gateway.example.com/v1"
    m = load_model("openai:org/model@v2@http://10.0.0.5:8000/v1", trace=False)
    assert isinstance(m, OpenAIModel)
    assert (m.model, m.base_url) == ("org/model@v2", "http://10.0.0.5:8000/v1")
    assert m.context_length is None
    m = load_model("openai:x@http://127.0.0.1:9/v1", trace=False, context_length=2048)
    assert m.context_length == 2048
    with pytest.raises(ConfigError, match="not an http"):
        load_model("openai:x@ftp://host/v1", trace=False)
    with pytest.raises(ConfigError, match="no model name"):
        load_model("openai:@http://127.0.0.1:9/v1", trace=False)
    with pytest.raises(ConfigError, match="json_schema_style"):
        load_model("openai:x@http://127.0.0.1:9/v1", trace=False, json_schema_style="grammar")
