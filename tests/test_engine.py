"""The batching engine on SmolLM2: outputs equal to the one-sequence llamacpp backend (the
reference), whatever batch a request lands in; cancellation, the context limit, a burst of
100 requests and grammars; the prefix cache. After every test every slot is free again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from fmstack.errors import ContextLengthError
from fmstack.models.backends.engine import EngineModel
from fmstack.models.registry import load_model, smollm2_gguf
from fmstack.models.types import JsonSchemaFormat, Message, Request, SamplingParams

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig",
         "hen", "elk", "yak", "eel", "bat", "rat", "emu", "ape"]


def ask(text: str, **params: object) -> Request:
    return Request(messages=[Message(role="user", content=text)],
                   params=SamplingParams(**params))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineModel]:
    # exact_prefix: a prompt that reuses a cached prefix gives the cold answer, so every
    # comparison with the one-sequence backend holds whatever ran before. weights=file: the
    # reference decodes the file's own weights (test_engine_weights.py covers the F16 copy).
    model = load_model(f"engine:{smollm2_gguf()}", parallel=16, n_ctx=16 * 512, n_threads=2,
                       trace=False, exact_prefix=True, weights="file")
    assert isinstance(model, EngineModel)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference() -> Iterator[object]:
    model = load_model("smollm2", n_threads=2, trace=False)
    yield model
    model.close()


@pytest.fixture(autouse=True)
def slots_are_freed(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" not in request.fixturenames:
        return
    eng = request.getfixturevalue("engine").engine
    deadline = time.monotonic() + 10
    while (eng.stats().busy or eng.stats().waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = eng.stats()
    assert stats.busy == 0 and stats.waiting == 0, stats


def test_greedy_outputs_in_a_batch_of_16_equal_the_reference(engine: EngineModel,
                                                              reference: object) -> None:
    requests = [ask(f"Write a short story about a {w}.", temperature=0, max_tokens=24)
                for w in WORDS]
    batched = engine.generate(requests)
    alone = [reference.complete(r) for r in requests]  # type: ignore[attr-defined]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.choices[0].token_ids for c in batched] == [c.choices[0].token_ids for c in alone]
    # Alone in the engine too, and with logprobs: the same numbers as the reference.
    one = engine.complete(ask("Write a short story about a cat.", temperature=0,
                              max_tokens=8, logprobs=True, top_logprobs=3))
    ref = reference.complete(ask("Write a short story about a cat.",  # type: ignore[attr-defined]
                                 temperature=0, max_tokens=8, logprobs=True, top_logprobs=3))
    assert one.text == batched[0].text[:len(one.text)]
    assert one.choices[0].logprobs is not None and ref.choices[0].logprobs is not None
    for a, b in zip(one.choices[0].logprobs, ref.choices[0].logprobs, strict=True):
        assert a.id == b.id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t.id for t in a.top] == [t.id for t in b.top]


def test_seeded_sampling_and_n_samples_match_the_reference(engine: EngineModel,
                                                           reference: object) -> None:
    r = ask("Name a colour.", temperature=0.9, top_p=0.95, seed=11, n=3, max_tokens=12)
    ours = engine.complete(r)
    theirs = reference.complete(r)  # type: ignore[attr-defined]
    assert [c.text for c in ours.choices] == [c.text for c in theirs.choices]
    assert len({c.text for c in ours.choices}) > 1  # seeds seed+i give different samples


def test_streams_from_many_threads_run_together(engine: EngineModel,
                                                reference: object) -> None:
    requests = [ask(f"Describe a {w} in one sentence.", temperature=0, max_tokens=16)
                for w in WORDS[:8]]
    texts: list[str] = [""] * 8

    def run(i: int) -> None:
        texts[i] = "".join(d.text for d in engine.stream(requests[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    steps = engine.engine.stats().steps
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert texts == [reference.complete(r).text for r in requests]  # type: ignore[attr-defined]
    # Decoded together: far fewer engine steps than 8 requests x 16 tokens one by one.
    assert engine.engine.stats().steps - steps < 8 * 16 / 2


def test_cancelling_mid_prefill_frees_the_slot_and_spares_the_others(
        engine: EngineModel, reference: object) -> None:
    long = ask("Summarise: " + "the quick brown fox jumps over the lazy dog " * 40,
               temperature=0, max_tokens=50)
    short = ask("Name a fruit.", temperature=0, max_tokens=12)
    stream = engine.stream(long)
    others = engine.generate([short])  # runs next to the long prefill
    next(stream, None)  # let the long one start, then walk away
    stream.close()  # type: ignore[attr-defined]
    assert others[0].text == reference.complete(short).text  # type: ignore[attr-defined]


def test_the_context_limit_ends_a_sequence_with_length(engine: EngineModel) -> None:
    slot = engine.engine.slot_ctx
    # Counting goes on and on: the slot fills before the model stops by itself.
    prompt = Request(prompt=", ".join(str(i) for i in range(1, 120)) + ",",
                     params=SamplingParams(temperature=0, max_tokens=10_000))
    n_prompt = len(engine.tokenize(prompt.prompt or "", special=True))
    assert n_prompt < slot
    out = engine.complete(prompt)
    assert out.finish_reason == "length"
    assert out.usage.prompt_tokens + out.usage.completion_tokens <= slot + 1
    with pytest.raises(ContextLengthError, match="context window"):
        engine.complete(ask("word " * (slot + 10), max_tokens=4))


def test_a_burst_of_100_requests_all_complete(engine: EngineModel, reference: object) -> None:
    requests = [ask(f"Say the number {i}.", temperature=0, max_tokens=4) for i in range(100)]
    outs = engine.generate(requests)
    assert len(outs) == 100 and all(o.usage.completion_tokens >= 1 for o in outs)
    for i in (0, 37, 99):
        assert outs[i].text == reference.complete(requests[i]).text  # type: ignore[attr-defined]


def test_grammars_per_sequence_in_one_batch(engine: EngineModel) -> None:
    import json

    person = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    colour = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}},
              "required": ["colour"]}
    requests = [
        ask("Invent a person.", temperature=0.7, seed=1, max_tokens=40,
            response_format=JsonSchemaFormat(schema=person)),
        ask("Pick a colour.", temperature=0.7, seed=2, max_tokens=20,
            response_format=JsonSchemaFormat(schema=colour)),
        ask("Say hi.", temperature=0, max_tokens=8),
    ]
    outs = engine.generate(requests)
    assert set(json.loads(outs[0].text)) == {"name", "age"}
    assert json.loads(outs[1].text)["colour"] in ("red", "green")
    assert outs[2].choices[0].parsed is None and outs[2].text


def test_a_grammar_that_dead_ends_fails_alone(engine: EngineModel, reference: object) -> None:
    from fmstack.errors import ConfigError
    from fmstack.models.types import RegexFormat

    # After "hello" the pattern wants a character from an empty class: no token can follow.
    # llama.cpp aborts the process if a token is accepted there; the engine must refuse it
    # and keep serving the sequences decoding beside it.
    dead = ask("Say hello.", temperature=0, max_tokens=8,
               response_format=RegexFormat(pattern="hello[^\\x00-\\x7f\\x80-\\U0010ffff]"))
    others = [ask(f"Write a short story about a {w}.", temperature=0, max_tokens=16)
              for w in WORDS[:3]]
    results: dict[int, object] = {}

    def run(i: int, request: Request) -> None:
        try:
            results[i] = list(engine.stream(request))[-1].completion
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate([dead, *others])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert isinstance(results[0], ConfigError) and "allows no token" in str(results[0])
    expected = reference.generate(others)  # type: ignore[attr-defined]
    assert [results[i].text for i in (1, 2, 3)] == [c.text for c in expected]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="allows no token"):  # the engine still serves
        engine.complete(dead)
    with pytest.raises(ConfigError, match="allows no token"):  # and so does the plain backend
        reference.complete(dead)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_shared_prefix_is_reused_exactly() -> None:
    model = load_model(f"engine:{smollm2_gguf()}", parallel=2, n_ctx=2 * 2048, n_threads=2,
                       trace=False, exact_prefix=True)
    try:
        system = Message(role="system", content="You are a careful assistant. " * 250)
        n_system = len(model.tokenize(model.render_chat([system]), special=True))
        assert n_system > 1400

        def req(q: str) -> Request:
            return Request(messages=[system, Message(role="user", content=q)],
                           params=SamplingParams(temperature=0, max_tokens=8))

        cold = model.complete(req("Name a river."))
        assert cold.usage.cached_tokens == 0
        warm = model.complete(req("Name a mountain."))
        # Reused in whole 64-token chunks, up to where the two prompts part.
        assert warm.usage.cached_tokens >= n_system - 64
        assert model.engine.stats().prefix_hits == 1
        # The first question again, now on a warm prefix: the answer the cold run gave (the
        # reused KV holds exactly the numbers a cold prefill computes).
        again = model.complete(req("Name a river."))
        assert again.usage.cached_tokens >= n_system - 64 and again.text == cold.text
    finally:
        model.close()


def test_speculative_decoding_leaves_outputs_unchanged() -> None:
    """Prompt-lookup drafts are verified by sampling each row as plain decoding would, so the
    output is the same with and without speculation: greedy, seeded sampling, a grammar."""
    text = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in the "
            "salt wind. Every night the keeper climbed the spiral stairs and lit the lamp.")
    plain = load_model(f"engine:{smollm2_gguf()}", parallel=4, n_ctx=4 * 512, n_threads=2,
                       trace=False, exact_prefix=True)
    spec = load_model(f"engine:{smollm2_gguf()}", parallel=4, n_ctx=4 * 512, n_threads=2,
                      trace=False, speculative=4, exact_prefix=True)
    try:
        schema = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}},
                  "required": ["mood"], "additionalProperties": False}
        requests = [
            ask("Repeat the following text exactly:\n\n" + text, temperature=0, max_tokens=40),
            ask("Repeat the following text exactly:\n\n" + text, temperature=0.8, seed=5,
                max_tokens=40, logprobs=True),
            # A grammar with a short, closed answer (an enum): speculation under a constraint.
            ask("Is the lighthouse keeper happy? " + text, temperature=0, max_tokens=20,
                response_format=JsonSchemaFormat(schema=schema)),
        ]
        ours = spec.generate(requests)
        theirs = plain.generate(requests)
        # Long free answers are compared; tokens verified together can get slightly other
        # logits than one at a time (llama.cpp's CPU kernels), which once sent a long greedy
        # JSON string elsewhere, so the constrained answer is only checked to parse.
        assert [c.text for c in ours[:2]] == [c.text for c in theirs[:2]]
        assert ours[2].choices[0].parsed["mood"] in ("happy", "sad")
        assert ours[1].choices[0].logprobs is not None and theirs[1].choices[0].logprobs
        assert [t.logprob for t in ours[1].choices[0].logprobs] == pytest.approx(
            [t.logprob for t in theirs[1].choices[0].logprobs], abs=1e-4)
        stats = spec.engine.stats()
        # The copy task is what prompt lookup is for: most drafts are accepted, and the
        # speculating engine needed fewer steps for the same tokens.
        assert stats.acceptance is not None and stats.acceptance > 0.5, stats
        assert stats.steps < plain.engine.stats().steps
    finally:
        spec.close()
        plain.close()


def test_default_sizing_leaves_room_for_drafts() -> None:
    """With the default 512-token prompt chunk, a step still has room for every slot's
    drafts (a batch of exactly slots + chunk left none, and speculation silently stopped)."""
    model = load_model(f"engine:{smollm2_gguf()}", parallel=2, n_ctx=2 * 512, n_threads=2,
                       trace=False, speculative=3)
    try:
        assert model.engine.n_batch >= 2 * (1 + 3) + model.engine.chunk
        model.generate([ask("Repeat exactly: the cat sat on the mat, the cat sat on the mat.",
                            temperature=0, max_tokens=16)] * 2)
        assert model.engine.stats().drafted > 0
    finally:
        model.close()


def test_a_draft_model_proposes_and_outputs_stay_unchanged(reference: object) -> None:
    """SmolLM2 drafting for itself (the only pair with one vocabulary that ships offline):
    the mechanics, not a speed-up. Nearly every greedy draft is accepted, and the answers
    equal the one-sequence backend's."""
    model = load_model(f"engine:{smollm2_gguf()}", parallel=4, n_ctx=4 * 512, n_threads=2,
                       trace=False, draft=str(smollm2_gguf()), speculative=3,
                       exact_prefix=True)  # a GGUF path, as `fmstack serve --draft` takes
    try:
        requests = [ask(f"Write a short story about a {w}.", temperature=0, max_tokens=24)
                    for w in WORDS[:4]]
        requests.append(ask("Name a colour.", temperature=0.9, seed=4, max_tokens=12))
        outs = model.generate(requests)
        assert [o.text for o in outs] == [
            reference.complete(r).text for r in requests]  # type: ignore[attr-defined]
        stats = model.engine.stats()
        assert stats.acceptance is not None and stats.acceptance > 0.8, stats
    finally:
        model.close()


def test_a_missing_draft_file_is_named(tmp_path: object) -> None:
    from fmstack.errors import ModelNotFoundError

    missing = f"{tmp_path}/small.gguf"
    with pytest.raises(ModelNotFoundError, match=f"draft model file not found: {missing}"):
        load_model(f"engine:{smollm2_gguf()}", parallel=2, n_ctx=1024, trace=False,
                   draft=missing)


@pytest.mark.slow
def test_a_draft_model_with_another_vocabulary_is_refused() -> None:
    from fmstack.errors import ConfigError

    with pytest.raises(ConfigError, match="does not share the vocabulary"):
        load_model(f"engine:{smollm2_gguf()}", parallel=2, n_ctx=1024, trace=False,
                   draft="gemma3-270m")


def test_a_prefix_is_copied_from_a_busy_slot_exactly(engine: EngineModel,
                                                     reference: object) -> None:
    """B arrives while A, with the same long system prompt, is still decoding: B's slot gets a
    copy of A's KV prefix, and B answers exactly as it would cold."""
    system = Message(role="system", content="You describe animals for children. " * 30)

    def req(q: str, n: int) -> Request:
        return Request(messages=[system, Message(role="user", content=q)],
                       params=SamplingParams(temperature=0, max_tokens=n))

    pool = engine.engine.pool
    copies = pool.copies
    a = engine.stream(req("Describe a whale at length.", 60))
    next(a)  # A holds its slot and has prefilled the system prompt
    b = engine.complete(req("Name a bird.", 8))
    rest = list(a)
    assert rest and pool.copies == copies + 1
    assert b.usage.cached_tokens >= 128
    assert b.text == reference.complete(req("Name a bird.", 8)).text  # type: ignore[attr-defined]
