"""Prompt techniques: few-shot selection (checked against numpy on a labelled set),
chain-of-thought, self-critique/revise and chains, run on the real SmolLM2 (and Gemma 3 270M).

The models are far too small for the techniques to improve answers; these tests check the
mechanics only: which requests were sent, with which tags and params, and what fed what.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmstack.errors import CapabilityError, ConfigError, PromptError
from fmstack.models import ChoiceFormat, Completion, Message, Model, Request, load_model
from fmstack.models.embeddings import Embedder, load_embedder
from fmstack.prompts import Example, PromptLibrary, load_prompt
from fmstack.prompts.techniques import (
    Chain,
    Step,
    chain_of_thought,
    extract_answer,
    select_examples,
    self_critique,
    similarities,
)
from fmstack.store.prompts import PromptVersions

TOPICS = {
    "sports": [
        "Who won the football match last night?",
        "How many players are on a basketball team?",
        "What is the offside rule in soccer?",
        "When do the next Olympic games take place?",
    ],
    "cooking": [
        "How long should I boil an egg?",
        "At what temperature do I bake bread?",
        "How do I make a tomato sauce for pasta?",
        "Can I replace butter with olive oil in a cake?",
    ],
    "programming": [
        "How do I reverse a list in Python?",
        "How do I read a file line by line in Python?",
        "Why does my Python function return None?",
        "How do I fix a syntax error in my JavaScript code?",
    ],
    "weather": [
        "Will it rain tomorrow in London?",
        "Why does the sky get dark before a storm?",
        "What causes a heat wave in summer?",
        "How is snowfall measured?",
    ],
}
QUERIES = {
    "sports": ["Which team won the championship final?", "How long does a rugby game last?"],
    "cooking": ["How do I roast vegetables in the oven?",
                "Which spices should I add when cooking a curry?"],
    "programming": ["How do I sort a dictionary by value in Python?",
                    "How do I catch an exception in my Python code?"],
    "weather": ["Is a thunderstorm forecast for this weekend?",
                "How much rain will fall in the storm tonight?"],
}
# The label is the example's output: a topic classifier's few-shot pool.
POOL = [Example(inputs={"question": q}, output=topic) for topic, qs in TOPICS.items() for q in qs]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    yield load_embedder("minilm")


@pytest.fixture
def smollm2() -> Iterator[Model]:
    # Per test (loading takes a fraction of a second) so its traces land in this test's home.
    with load_model("smollm2", n_threads=2) as model:
        yield model


def trace_of(model: Model, completion: Completion) -> dict[str, Any]:
    assert model.tracer is not None and completion.trace_id is not None
    row = model.tracer.get(completion.trace_id)
    assert row is not None
    return row


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.prompt"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


# ----- few-shot selection -------------------------------------------------------------------


def test_similar_picks_the_nearest_examples_of_the_query_topic(embedder: Embedder) -> None:
    # The reference: cosine similarities computed directly with numpy from the raw vectors.
    pool = embedder.embed([ex.inputs["question"] for ex in POOL]).astype(np.float64)
    pool_norms = np.linalg.norm(pool, axis=1)
    for topic, queries in QUERIES.items():
        for query in queries:
            picked = select_examples(POOL, {"question": query}, k=3, strategy="similar",
                                     embedder=embedder)
            assert [ex.output for ex in picked] == [topic] * 3, query
            q = embedder.embed([query])[0].astype(np.float64)
            cos = (pool @ q) / (pool_norms * np.linalg.norm(q))
            order = np.argsort(-cos, kind="stable")
            assert picked == [POOL[i] for i in order[:3]], query
            chosen = [cos[POOL.index(ex)] for ex in picked]
            assert chosen == sorted(chosen, reverse=True)
    scores = similarities(POOL, {"question": query}, embedder=embedder)
    np.testing.assert_allclose(scores, cos, atol=1e-5)


def test_similar_compares_only_the_chosen_fields(embedder: Embedder) -> None:
    # A long instruction shared by every example would otherwise dominate the comparison.
    instruction = "Classify the topic of the question below. " * 5
    pool = [Example(inputs={"instruction": instruction, **ex.inputs}, output=ex.output)
            for ex in POOL]
    query = {"instruction": instruction, "question": QUERIES["cooking"][0]}
    picked = select_examples(pool, query, k=4, strategy="similar", embedder=embedder,
                             fields=["question"])
    assert [ex.output for ex in picked] == ["cooking"] * 4
    with pytest.raises(ConfigError, match="fields answer are not inputs"):
        select_examples(pool, query, k=2, strategy="similar", embedder=embedder,
                        fields=["answer"])


def test_fixed_and_seeded_random_strategies() -> None:
    query = {"question": "anything"}
    assert select_examples(POOL, query, k=3) == POOL[:3]
    assert select_examples(POOL, query, k=3, strategy="fixed", seed=9) == POOL[:3]
    a = select_examples(POOL, query, k=4, strategy="random", seed=1)
    assert a == select_examples(POOL, query, k=4, strategy="random", seed=1)
    b = select_examples(POOL, query, k=4, strategy="random", seed=2)
    assert a != b
    for pick in (a, b):
        assert len(pick) == 4 and all(ex in POOL for ex in pick)
        assert len({POOL.index(ex) for ex in pick}) == 4  # without replacement
    # Whole pool at random: a permutation.
    everything = select_examples(POOL, query, k=len(POOL), strategy="random", seed=3)
    assert sorted(POOL.index(ex) for ex in everything) == list(range(len(POOL)))


def test_selection_errors() -> None:
    query = {"question": "q"}
    with pytest.raises(ConfigError, match="k=17 examples but the pool has only 16"):
        select_examples(POOL, query, k=17)
    with pytest.raises(ConfigError, match="k must be at least 1, got 0"):
        select_examples(POOL, query, k=0, strategy="random")
    with pytest.raises(ConfigError, match=r"unknown few-shot strategy 'nearest'.*similar"):
        select_examples(POOL, query, k=2, strategy="nearest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty inputs"):
        select_examples(POOL, {"question": " "}, k=2, strategy="similar")


def test_selected_examples_become_the_prompts_few_shot_turns(
    embedder: Embedder, tmp_path: Path
) -> None:
    shots = "\n".join(f"  - inputs: {{question: {json.dumps(ex.inputs['question'])}}}\n"
                      f"    output: {ex.output}" for ex in POOL)
    prompt = load_prompt(write(tmp_path, "topic", f"""
---
inputs:
  question: {{type: string}}
examples:
{shots}
---
system:
Answer with the topic of the question.

user:
{{{{ question }}}}
"""))
    query = {"question": QUERIES["programming"][0]}
    picked = select_examples(prompt.examples, query, k=2, strategy="similar", embedder=embedder)
    messages = prompt.request(query, examples=picked, record=False).messages
    assert messages is not None
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Answer with the topic of the question."),
        ("user", picked[0].inputs["question"]), ("assistant", "programming"),
        ("user", picked[1].inputs["question"]), ("assistant", "programming"),
        ("user", query["question"]),
    ]


# ----- chain-of-thought ---------------------------------------------------------------------


def test_chain_of_thought_appends_the_packaged_instruction() -> None:
    cot = PromptLibrary([]).get("cot")
    original = Request.chat("What is 12 + 30?", system="Be brief.", temperature=0, max_tokens=8)
    original.tags["prompt"] = "sum"
    request = chain_of_thought(original)
    assert request.messages is not None and original.messages is not None
    assert original.messages[-1].content == "What is 12 + 30?"  # the input is not modified
    assert request.messages[0] == original.messages[0]
    instruction = cot.messages({"marker": "Answer:"})[-1].content
    assert 'starting with "Answer:"' in instruction
    assert request.messages[-1].content == f"What is 12 + 30?\n\n{instruction}"
    assert request.tags == {"prompt": "sum", "technique": "cot", "cot_version": cot.version}
    assert request.params == original.params

    raw = chain_of_thought(Request.text("Q: What is 12 + 30?"), marker="Final:")
    assert raw.prompt is not None and raw.prompt.startswith("Q: What is 12 + 30?\n\n")
    assert raw.prompt.rstrip().endswith('starting with "Final:".')

    with pytest.raises(ConfigError, match=r"free-text output.*choice response_format"):
        chain_of_thought(Request.chat("x", response_format=ChoiceFormat(choices=["a"])))
    with pytest.raises(ConfigError, match="needs a user message"):
        chain_of_thought(Request(messages=[Message(role="system", content="s")]))


def test_a_users_cot_prompt_overrides_the_builtin(tmp_path: Path) -> None:
    write(tmp_path, "cot", """
---
inputs:
  marker: {type: string, default: "Answer:"}
---
Reason briefly, then write {{ marker }} and the answer.
""")
    request = chain_of_thought(Request.chat("Q?"), library=PromptLibrary([tmp_path]))
    assert request.messages is not None
    assert request.messages[-1].content == (
        "Q?\n\nReason briefly, then write Answer: and the answer.")


def test_extract_answer() -> None:
    assert extract_answer("12 + 30 = 42.\nAnswer: 42") == "42"
    assert extract_answer("Answer: 41\nWait, no.\n**Answer:** 42") == "42"
    assert extract_answer("so the final answer: Paris is the capital") == "Paris is the capital"
    assert extract_answer("Answer: 7\nAnswer:") == "7"  # an empty last line does not count
    assert extract_answer("Result => 5", marker="=>") == "5"
    assert extract_answer("**Answer:**\n\n42\n") is None  # the line after the marker is blank
    assert extract_answer("Answer:\n  42\nThanks") == "42"
    assert extract_answer("no marker here") is None


def test_chain_of_thought_on_smollm2_is_traced(smollm2: Model) -> None:
    request = chain_of_thought(Request.chat(
        "Tom has 3 apples and buys 2 more. How many apples does he have?",
        temperature=0, max_tokens=48))
    completion = smollm2.complete(request)
    assert completion.text.strip()
    row = trace_of(smollm2, completion)
    assert row["tags"] == request.tags and row["tags"]["technique"] == "cot"
    assert row["messages"][-1]["content"].endswith('starting with "Answer:".')
    assert "Think step by step" in (row["rendered_prompt"] or "")
    with PromptVersions() as store:
        assert store.get("cot", request.tags["cot_version"])["content"] == \
            PromptLibrary([]).get("cot").text
    # Whatever the small model wrote, the extractor returns a piece of it or nothing.
    found = extract_answer(completion.text)
    assert found is None or found in completion.text


# ----- self-critique ------------------------------------------------------------------------


def test_self_critique_two_rounds_with_another_critic(smollm2: Model, smollm2_path: Path) -> None:
    library = PromptLibrary([])
    request = Request.chat("Name the capital of France in one sentence.",
                           temperature=0, max_tokens=24)
    with load_model(f"llamacpp:{smollm2_path}", n_threads=2) as critic:
        result = self_critique(smollm2, request, rounds=2, critic_model=critic,
                               library=library, critique_params={"max_tokens": 24})
        assert not result.stopped_early
        assert len(result.critiques) == 2 and len(result.revisions) == 2
        assert result.draft.text.strip() and all(c.text.strip() for c in result.critiques)
        assert result.final == result.revisions[-1].text
        versions = {name: library.get(name).version for name in ("critique", "revise")}
        calls: list[tuple[Model, Completion, str | None, str]] = [
            (smollm2, result.draft, None, "draft")]
        for n in (1, 2):
            calls.append((critic, result.critiques[n - 1], "critique", f"critique-{n}"))
            calls.append((smollm2, result.revisions[n - 1], "revise", f"revise-{n}"))
        rows = {}
        for model, completion, prompt, step in calls:
            row = trace_of(model, completion)
            assert row["model"] == model.name  # the critic's calls are the critic's
            expected = {"technique": "self_critique", "step": step}
            if prompt is not None:
                expected |= {"prompt": prompt, "prompt_version": versions[prompt]}
            assert row["tags"] == expected
            rows[step] = row
        assert critic.name != smollm2.name

    def user_turn(step: str) -> str:
        return str(rows[step]["messages"][-1]["content"])

    # What fed what: draft -> critique 1 -> revision 1 -> critique 2 -> revision 2.
    assert f"<answer>\n{result.draft.text.strip()}\n</answer>" in user_turn("critique-1")
    assert result.draft.text.strip() in user_turn("revise-1")
    assert result.critiques[0].text.strip() in user_turn("revise-1")
    assert f"<answer>\n{result.revisions[0].text.strip()}\n</answer>" in user_turn("critique-2")
    assert result.critiques[1].text.strip() in user_turn("revise-2")
    assert "Name the capital of France" in user_turn("critique-2")
    # Revisions keep the original request's params; critiques take the file's plus overrides.
    assert rows["revise-1"]["params"] == rows["draft"]["params"] == {
        "temperature": 0.0, "max_tokens": 24}
    assert rows["critique-1"]["params"] == {"temperature": 0.0, "max_tokens": 24}
    with PromptVersions() as store:
        assert [v["version"] for v in store.versions("critique")] == [versions["critique"]]
        assert [v["version"] for v in store.versions("revise")] == [versions["revise"]]


def test_self_critique_stops_when_the_critic_finds_no_issues(smollm2: Model) -> None:
    request = Request.chat("Say hello.", temperature=0, max_tokens=12)
    # Constrained decoding forces the verdict, so the early stop is exercised for real.
    result = self_critique(smollm2, request, rounds=3, critique_params={
        "response_format": ChoiceFormat(choices=["NO ISSUES"]), "max_tokens": 8})
    assert result.stopped_early
    assert [c.text for c in result.critiques] == ["NO ISSUES"]
    assert result.revisions == [] and result.final == result.draft.text


def test_self_critique_bad_arguments(smollm2: Model) -> None:
    with pytest.raises(ConfigError, match="rounds >= 1, got 0"):
        self_critique(smollm2, Request.chat("x"), rounds=0)
    with pytest.raises(ConfigError, match="n must be 1, got 2"):
        self_critique(smollm2, Request.chat("x", n=2, temperature=1))
    assert smollm2.tracer is not None and smollm2.tracer.count() == 0  # refused before any call


# ----- chains -------------------------------------------------------------------------------

FACTS = """
---
description: Facts about a topic, as a base-model completion.
params: {temperature: 0, max_tokens: 20, stop: ["\\n\\n"]}
inputs:
  topic: {type: string}
---
Three facts about {{ topic }}:
-
"""
SUMMARIZE = """
---
params: {temperature: 0, max_tokens: 20}
inputs:
  notes: {type: string}
  style: {type: string, default: one sentence}
---
system:
You summarize notes.

user:
Summarize these notes in {{ style }}:
{{ notes }}
"""


def test_chain_steps_on_different_models(smollm2: Model, tmp_path: Path) -> None:
    write(tmp_path, "facts", FACTS)
    write(tmp_path, "summarize", SUMMARIZE)
    library = PromptLibrary([tmp_path])
    with load_model("gemma3-270m", n_threads=2) as gemma:
        chain = Chain("city-notes", [
            Step("facts", output="facts", model=gemma, raw=True),  # a base model: raw text
            Step("summarize", output="summary", model=smollm2, vars={"notes": "facts"}),
        ], library=library)
        assert chain.inputs == {"topic": True}
        result = chain.run({"topic": "Paris"})
        first, second = result.steps
        assert first.request.messages is None
        assert first.request.prompt == "Three facts about Paris:\n-"
        row1 = trace_of(gemma, first.completion)
        assert row1["model"] == "gemma3-270m" and row1["prompt"] == first.request.prompt
        assert row1["tags"] == {"prompt": "facts", "prompt_version": library.get("facts").version,
                                "chain": "city-notes", "step": "facts"}
        assert row1["params"]["max_tokens"] == 20

        # Gemma has no chat template: without raw=True the step fails, naming chain and step.
        bad = Chain("city-notes", [Step("facts", output="facts", model=gemma)], library=library)
        with pytest.raises(CapabilityError, match=r"^chain city-notes step 1 \(facts\): "):
            bad.run({"topic": "Paris"})

    assert result["facts"] == first.completion.text.strip() != ""
    row2 = trace_of(smollm2, second.completion)
    assert row2["model"] == "smollm2"
    assert row2["tags"] == {"prompt": "summarize",
                            "prompt_version": library.get("summarize").version,
                            "chain": "city-notes", "step": "summary"}
    # The first step's output is the second step's input.
    assert row2["messages"][-1]["content"] == (
        f"Summarize these notes in one sentence:\n{result['facts']}")
    assert result.output == result["summary"] == second.completion.text.strip()
    assert result.outputs == {"facts": result["facts"], "summary": result["summary"]}


def test_chain_on_one_model_with_different_params_and_structured_output(
    smollm2: Model, tmp_path: Path
) -> None:
    write(tmp_path, "city", """
---
params: {temperature: 0, max_tokens: 40}
inputs:
  country: {type: string}
output_schema:
  type: object
  properties: {city: {type: string, maxLength: 20}}
  required: [city]
  additionalProperties: false
---
What is the capital of {{ country }}? Reply in JSON.
""")
    write(tmp_path, "sentence", """
---
inputs:
  place: {type: object}
---
Write one sentence about {{ place.city }}.
""")
    chain = Chain("capital", [
        Step("city", output="place"),
        Step("sentence", output="sentence",
             params={"temperature": 0.8, "seed": 11, "max_tokens": 16}),
    ], model=smollm2, library=PromptLibrary([tmp_path]))
    result = chain.run({"country": "France"})
    first, second = result.steps
    # A prompt with an output schema yields the parsed object, which the next prompt reads.
    assert result["place"] == json.loads(first.completion.text)
    assert isinstance(result["place"], dict) and set(result["place"]) == {"city"}
    assert second.request.messages is not None
    assert second.request.messages[-1].content == (
        f"Write one sentence about {result['place']['city']}.")
    rows = [trace_of(smollm2, s.completion) for s in result.steps]
    assert rows[0]["params"]["temperature"] == 0.0 and rows[0]["params"]["max_tokens"] == 40
    assert rows[0]["params"]["response_format"]["schema"]["required"] == ["city"]
    assert rows[1]["params"] == {"temperature": 0.8, "seed": 11, "max_tokens": 16}
    assert [r["tags"]["step"] for r in rows] == ["place", "sentence"]
    assert {r["tags"]["chain"] for r in rows} == {"capital"}


def test_chain_errors(smollm2: Model, tmp_path: Path) -> None:
    write(tmp_path, "facts", FACTS)
    write(tmp_path, "summarize", SUMMARIZE)
    lib = PromptLibrary([tmp_path])

    def chain(*steps: Step, name: str = "c", model: Model | None = smollm2) -> Chain:
        return Chain(name, steps, model=model, library=lib)

    with pytest.raises(PromptError, match="unknown prompt 'nope'"):
        chain(Step("nope", output="x"))
    with pytest.raises(ConfigError, match=r"step 1 \(x\): prompt facts has no variable subject"):
        chain(Step("facts", output="x", vars={"subject": "topic"}))
    with pytest.raises(ConfigError, match="'x' is already the output of step 1"):
        chain(Step("facts", output="x"), Step("facts", output="x"))
    with pytest.raises(ConfigError, match="no model"):
        chain(Step("facts", output="x"), model=None)
    with pytest.raises(ConfigError, match="invalid chain name 'My Chain'"):
        chain(Step("facts", output="x"), name="My Chain")
    with pytest.raises(ConfigError, match="has no steps"):
        Chain("c", [], model=smollm2, library=lib)

    two = chain(Step("facts", output="facts"),
                Step("summarize", output="summary", vars={"notes": "facts"}))
    with pytest.raises(ConfigError, match="missing input topic"):
        two.run({})
    with pytest.raises(ConfigError, match=r"unused input colour \(the steps read: topic\)"):
        two.run({"topic": "Paris", "colour": "red"})
    with pytest.raises(ConfigError, match="input facts is also a step's output"):
        two.run({"topic": "Paris", "facts": "x"})
    # A step reads only chain inputs and earlier outputs (its own included: no loops).
    with pytest.raises(ConfigError, match=r"step 1 \(summary\) reads 'facts', which step 2 "):
        chain(Step("summarize", output="summary", vars={"notes": "facts"}),
              Step("facts", output="facts"))
    with pytest.raises(ConfigError, match=r"step 1 \(notes\) reads 'notes', which step 1 "):
        chain(Step("summarize", output="notes"))
    assert smollm2.tracer is not None and smollm2.tracer.count() == 0
