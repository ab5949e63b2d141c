"""The llama.cpp backend against the real SmolLM2-135M-Instruct (and Gemma 3 270M base)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fmstack.errors import CapabilityError, ConfigError, ContextLengthError, ModelNotFoundError
from fmstack.models import (
    ChoiceFormat,
    JsonSchemaFormat,
    Message,
    Model,
    RegexFormat,
    Request,
    best_of_n,
    load_model,
    self_consistency,
)
from fmstack.models.backends.llamacpp import LlamaCppModel
from fmstack.store.traces import TraceStore

QUESTION = "Name three fruits and say one thing about each."


@pytest.fixture(scope="module")
def model(llamacpp_model: Model) -> LlamaCppModel:
    assert isinstance(llamacpp_model, LlamaCppModel)
    return llamacpp_model


@pytest.fixture(scope="module")
def greedy(model: LlamaCppModel) -> str:
    """The greedy answer to QUESTION: several tests check other paths against it."""
    return model.complete(Request.chat(QUESTION, temperature=0, max_tokens=40)).text


# ----- determinism and sampling parameters -------------------------------------------------


def test_greedy_is_deterministic(model: LlamaCppModel, greedy: str) -> None:
    again = model.complete(Request.chat(QUESTION, temperature=0, max_tokens=40))
    assert again.text == greedy
    assert len(greedy) > 20


def test_seeded_sampling_is_reproducible(model: LlamaCppModel) -> None:
    def sample(seed: int) -> str:
        r = Request.chat(QUESTION, temperature=0.8, seed=seed, max_tokens=24)
        return model.complete(r).text

    first = sample(7)
    assert sample(7) == first
    # Two other seeds both reproducing seed 7's 24 tokens would mean the seed is ignored.
    assert sample(8) != first or sample(9) != first


def test_truncating_samplers_reduce_to_greedy(model: LlamaCppModel, greedy: str) -> None:
    # At temperature 1, keeping only the most likely token (top_k=1, a tiny top_p, or min_p=1)
    # must reproduce greedy decoding whatever the seed: each sampler really truncates.
    for params in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        r = Request.chat(QUESTION, temperature=1.0, seed=3, max_tokens=40, **params)
        assert model.complete(r).text == greedy, params


def test_penalties_change_repetitive_output(model: LlamaCppModel) -> None:
    prompt = "one two one two one two one two one two one two"

    def most_repeated(**params: float) -> tuple[str, int]:
        c = model.complete(Request.text(prompt, temperature=0, max_tokens=24, **params))
        return c.text, Counter(c.choices[0].token_ids).most_common(1)[0][1]

    plain, plain_max = most_repeated()
    for params in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                   {"repetition_penalty": 2.0}):
        text, top = most_repeated(**params)
        assert text != plain, params
        assert top < plain_max, params


def test_n_samples_differ_and_reproduce(model: LlamaCppModel) -> None:
    r = Request.chat(QUESTION, temperature=1.0, seed=11, n=3, max_tokens=16)
    c = model.complete(r)
    texts = [ch.text for ch in c.choices]
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    assert len(set(texts)) > 1
    assert [ch.text for ch in model.complete(r).choices] == texts
    # Sample i uses seed + i: sample 1 of seed 11 is sample 0 of seed 12.
    alone = model.complete(Request.chat(QUESTION, temperature=1.0, seed=12, max_tokens=16))
    assert alone.text == texts[1]
    # Usage counts every sampled token (end-of-turn tokens too, which are not in token_ids).
    assert c.usage.completion_tokens >= sum(len(ch.token_ids) for ch in c.choices) > 0


# ----- finish reasons and stop strings -----------------------------------------------------


def test_max_tokens_gives_length(model: LlamaCppModel) -> None:
    c = model.complete(Request.chat(QUESTION, temperature=0, max_tokens=5))
    assert c.finish_reason == "length"
    assert c.usage.completion_tokens == 5
    assert len(c.choices[0].token_ids) == 5


def test_end_of_turn_gives_stop(model: LlamaCppModel) -> None:
    c = model.complete(Request.chat("Say hello.", temperature=0, max_tokens=60))
    assert c.finish_reason == "stop"
    assert "<|im_end|>" not in c.text
    # The end-of-turn token was generated (and counted) but is not part of the text.
    assert c.usage.completion_tokens == len(c.choices[0].token_ids) + 1


def test_stop_string_is_honoured(model: LlamaCppModel, greedy: str) -> None:
    # Two words from the middle of the greedy answer: a stop string spanning tokens, so the
    # stream must hold back the first word until it knows whether the second follows.
    pairs = re.findall(r"\w+ \w+", greedy)
    stop = pairs[len(pairs) // 2]
    expected = greedy[: greedy.index(stop)]
    r = Request.chat(QUESTION, temperature=0, max_tokens=40, stop=[stop, "@@never@@"])
    c = model.complete(r)
    assert c.text == expected
    assert stop not in c.text
    assert c.finish_reason == "stop"
    streamed = list(model.stream(r))
    assert "".join(d.text for d in streamed) == expected
    assert streamed[-1].finish_reason == "stop"


# ----- logprobs and scoring ----------------------------------------------------------------


def test_logprobs_sum_to_the_score_of_the_output(model: LlamaCppModel, greedy: str) -> None:
    r = Request.chat(QUESTION, temperature=0, max_tokens=40, logprobs=True)
    c = model.complete(r)
    assert c.text == greedy  # asking for logprobs does not change the output
    lps = c.logprobs
    assert lps is not None and len(lps) == len(c.choices[0].token_ids)
    assert all(lp.logprob <= 0 for lp in lps)
    assert c.rendered_prompt is not None
    scored = model.score([c.text], contexts=[c.rendered_prompt])[0]
    assert scored.token_ids == c.choices[0].token_ids
    # Measured: identical to ~1e-12 (flash attention makes batched and one-token decodes agree).
    assert scored.total == pytest.approx(c.choices[0].sum_logprob, abs=1e-3)
    for got, want in zip(lps, scored.logprobs, strict=True):
        assert got.logprob == pytest.approx(want, abs=1e-4)


def test_top_logprobs_rank_the_greedy_choice_first(model: LlamaCppModel) -> None:
    r = Request.chat(QUESTION, temperature=0, max_tokens=12, top_logprobs=5)
    lps = model.complete(r).logprobs
    assert lps is not None and len(lps) == 12
    for lp in lps:
        assert len(lp.top) == 5
        assert lp.top[0].id == lp.id
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True)


def test_score_without_context_is_conditioned_on_bos(model: LlamaCppModel) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    bare = model.score([text])[0]
    bos = model.detokenize([1], special=True)  # SmolLM2's BOS, <|im_start|>
    with_bos = model.score([text], contexts=[bos])[0]
    assert bare.token_ids == model.tokenize(text)
    assert bare.logprobs == pytest.approx(with_bos.logprobs, abs=1e-6)
    garbled = model.score(["dog lazy the over jumps fox brown quick The."])[0]
    assert bare.mean > garbled.mean


def test_score_refuses_ambiguous_input(model: LlamaCppModel) -> None:
    with pytest.raises(ConfigError, match="empty context"):
        model.score(["text"], contexts=[""])
    with pytest.raises(ConfigError, match="empty text"):
        model.score([""])
    with pytest.raises(ConfigError, match="1 texts but 2 contexts"):
        model.score(["text"], contexts=["a", "b"])


# ----- structured output -------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20},
                               "zip": {"type": "integer"}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "address"],
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    "array of objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
        "minItems": 2,
        "maxItems": 3,
    },
}


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_json_schema_output_validates(model: LlamaCppModel, kind: str) -> None:
    schema = SCHEMAS[kind]
    r = Request.chat(f"Give me an example {kind} as JSON.", temperature=0, max_tokens=120,
                     response_format=JsonSchemaFormat(schema=schema))
    c = model.complete(r)
    assert c.finish_reason == "stop"
    jsonschema.validate(c.parsed, schema)


def test_regex_and_choice_outputs_obey_the_format(model: LlamaCppModel) -> None:
    r = Request.chat("What is your phone number?", temperature=0, max_tokens=20,
                     response_format=RegexFormat(pattern=r"\d{3}-\d{4}"))
    c = model.complete(r)
    assert re.fullmatch(r"\d{3}-\d{4}", c.text)
    choices = ["yes", "no", "maybe"]
    for seed in range(3):
        r = Request.chat("Is the sky green?", temperature=1.0, seed=seed, max_tokens=10,
                         response_format=ChoiceFormat(choices=choices))
        c = model.complete(r)
        assert c.text in choices and c.parsed == c.text


# ----- streaming ---------------------------------------------------------------------------


def test_stream_matches_generate(model: LlamaCppModel, greedy: str) -> None:
    deltas = list(model.stream(Request.chat(QUESTION, temperature=0, max_tokens=40)))
    assert len(deltas) > 10  # really incremental
    assert "".join(d.text for d in deltas) == greedy
    last = deltas[-1]
    assert last.finish_reason == "length" and last.completion is not None
    assert last.completion.text == greedy
    assert last.completion.usage.completion_tokens == 40
    assert last.completion.usage.prompt_tokens > 0
    assert all(d.completion is None for d in deltas[:-1])


def test_stream_never_splits_a_character(model: LlamaCppModel) -> None:
    # SmolLM2 writes these emoji as several byte tokens each.
    r = Request.text("Fruit emoji: 🍎 🍌 🍇 🍉 🍓 🍒", temperature=0, max_tokens=20)
    c = model.complete(r)
    pieces = [model.detokenize([t]) for t in c.choices[0].token_ids]
    assert any("\ufffd" in p for p in pieces)  # the case under test does occur
    assert "\ufffd" not in c.text and any(ord(ch) > 0xFFFF for ch in c.text)
    deltas = list(model.stream(r))
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == c.text


def test_stream_interleaved_with_another_call(model: LlamaCppModel, greedy: str) -> None:
    stream = model.stream(Request.chat(QUESTION, temperature=0, max_tokens=40))
    head = [next(stream) for _ in range(5)]
    # Another request uses the same llama.cpp context mid-stream; the stream must not notice.
    other = Request.text("Completely different prompt", temperature=0, max_tokens=5)
    model.complete(other)
    rest = list(stream)
    assert "".join(d.text for d in head + rest) == greedy


def test_threads_share_one_model(model: LlamaCppModel) -> None:
    prompts = ["Count to five.", "Name a color.", "Say hi."]
    expected = [
        model.complete(Request.chat(p, temperature=0, max_tokens=8)).text for p in prompts
    ]
    got: dict[int, str] = {}

    def work(i: int) -> None:
        got[i] = model.complete(Request.chat(prompts[i], temperature=0, max_tokens=8)).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == expected


# ----- prompts, tokens, usage and timings ---------------------------------------------------


def test_render_chat_is_the_prompt_the_model_saw(model: LlamaCppModel) -> None:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    rendered = model.render_chat(messages)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    c = model.complete(Request.chat("Hi", system="Be brief.", max_tokens=3))
    assert c.rendered_prompt is not None and c.usage.prompt_tokens > 0
    assert c.rendered_prompt == rendered
    ids = model.tokenize(rendered, special=True)
    assert len(ids) == c.usage.prompt_tokens
    assert ids[0] == 1 and ids.count(1) == 3  # each <|im_start|> is one token; no extra BOS
    assert model.detokenize(ids, special=True) == rendered
    raw = model.complete(Request.text("Once upon a time", max_tokens=3))
    assert raw.rendered_prompt == "Once upon a time"
    assert raw.usage.prompt_tokens == len(model.tokenize("Once upon a time", special=True))


def test_batch_timings(model: LlamaCppModel) -> None:
    first, second = model.generate([
        Request.chat("Say hello.", temperature=0, max_tokens=6),
        Request.chat("Say goodbye.", temperature=0, max_tokens=6),
    ])
    for c in (first, second):
        t = c.timings
        assert t.ttft is not None and t.tpot is not None
        assert 0 < t.ttft <= t.total and t.tpot > 0
        assert t.queue <= t.ttft
    # Requests run one after another: the second waited for all of the first.
    assert second.timings.queue >= first.timings.total


# ----- errors and traces -------------------------------------------------------------------


def test_missing_model_file() -> None:
    with pytest.raises(ModelNotFoundError, match=r"/no/such/model\.gguf"):
        load_model("llamacpp:/no/such/model.gguf")


def test_prompt_longer_than_context(smollm2_path: Path) -> None:
    with load_model(f"llamacpp:{smollm2_path}", n_ctx=256) as model:
        window = model.context_length
        assert window == 256
        prompt = "word " * 300
        n = len(model.tokenize(prompt, special=True))
        with pytest.raises(ContextLengthError, match=rf"{n} tokens.* {window} tokens"):
            model.complete(Request.text(prompt, max_tokens=5))
        with pytest.raises(ContextLengthError):
            list(model.stream(Request.text(prompt, max_tokens=5)))
        # A prompt that fits with room for a few tokens stops at the window's end: "length".
        short = "word " * (window - 8)
        c = model.complete(Request.text(short, temperature=0, max_tokens=50))
        assert c.finish_reason == "length"
        assert c.usage.completion_tokens < 50
        # The last sampled token is never decoded, so one more than the window is sampled.
        assert c.usage.prompt_tokens + c.usage.completion_tokens == window + 1
    rows = TraceStore().list()
    assert len(rows) == 3
    assert [r["error"] is not None for r in rows] == [False, True, True]
    failed = rows[1:]
    for row in failed:
        assert "ContextLengthError" in row["error"] and "256" in row["error"]
        assert row["output"] is None and row["prompt_tokens"] is None


def test_successful_calls_are_traced() -> None:
    with load_model("smollm2") as model:
        c = model.complete(Request.chat("Say hello.", temperature=0, max_tokens=8))
        deltas = list(model.stream(Request.chat("Say hi.", temperature=0, max_tokens=4)))
    rows = TraceStore().list()
    assert [r["kind"] for r in rows] == ["stream", "generate"]
    row = rows[1]
    assert row["id"] == c.trace_id and row["error"] is None
    assert row["model"] == "smollm2" and row["backend"] == "llamacpp"
    assert row["output"] == c.text and row["rendered_prompt"] == c.rendered_prompt
    assert row["prompt_tokens"] == c.usage.prompt_tokens
    assert row["completion_tokens"] == c.usage.completion_tokens
    assert row["ttft_s"] == c.timings.ttft
    assert rows[0]["output"] == "".join(d.text for d in deltas)


@pytest.mark.slow
def test_gemma3_270m_generates() -> None:
    with load_model("gemma3-270m", trace=False) as model:
        c = model.complete(Request.text("The capital of France is", temperature=0, max_tokens=8))
        assert c.finish_reason == "length" and c.usage.completion_tokens == 8
        assert len(c.choices[0].token_ids) == 8 and c.text.strip()
        ids = model.tokenize("The capital of France is", special=True)
        assert ids[0] == 2 and ids[1] != 2  # Gemma adds its BOS <bos> (id 2)
        assert c.usage.prompt_tokens == len(ids)
        # Text that already starts with BOS (as chat templates write it) gets no second one.
        assert model.tokenize("<bos>The capital of France is", special=True) == ids
        # A base model: no chat template in the GGUF, so chat is refused up front.
        with pytest.raises(CapabilityError, match="no chat template"):
            model.complete(Request.chat("Hi"))


# ----- test-time compute -------------------------------------------------------------------


def test_best_of_n_picks_the_highest_mean_logprob(model: LlamaCppModel) -> None:
    r = Request.chat(QUESTION, temperature=1.0, seed=5, max_tokens=16)
    result = best_of_n(model, r, n=4)
    means = []
    for choice in result.completion.choices:
        assert choice.logprobs is not None
        means.append(sum(lp.logprob for lp in choice.logprobs) / len(choice.logprobs))
    assert len(set(means)) > 1
    assert result.best.mean_logprob == pytest.approx(max(means))
    assert result.scores == pytest.approx(means)

    longest = best_of_n(model, r, n=4, scorer=lambda ch: len(ch.text))
    assert longest.text == max((ch.text for ch in longest.completion.choices), key=len)


def test_self_consistency_returns_the_majority(model: LlamaCppModel) -> None:
    r = Request.chat("Which is a fruit: apple, brick or chair?", temperature=1.0, seed=2,
                     max_tokens=5,
                     response_format=ChoiceFormat(choices=["apple", "brick", "chair"]))
    vote = self_consistency(model, r, n=7)
    answers = [c.text for c in vote.completion.choices]
    counts = Counter(answers)
    assert vote.answers == answers
    assert vote.answer == counts.most_common(1)[0][0]
    assert vote.counts[vote.answer] == max(counts.values()) > 1  # votes really collided
