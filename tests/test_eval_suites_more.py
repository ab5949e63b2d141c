"""Suite features beyond one prompt -> one answer, on the real SmolLM2 and a real SQLite file:
conversations (per-turn and per-task scores), targets with scorable intermediate components,
raw text prompts, metric reference paths, pass@k over epochs, and the cache key's coverage.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import ConfigError
from fmstack.eval.passk import pass_at_k
from fmstack.eval.report import html_report, markdown_report
from fmstack.eval.runner import run_suite
from fmstack.eval.suite import Case, InlinePromptConfig, ModelConfig, Suite, load_suite
from fmstack.store.evals import EvalStore
from fmstack.store.traces import TraceStore

SMOL = ModelConfig(uri="smollm2", options={"n_threads": 2})
CITY = InlinePromptConfig(name="city", system="Answer with the city name only.",
                          user="What is the capital of {{ country }}?")


def samples(run_id: str) -> list[dict[str, Any]]:
    with EvalStore() as store:
        return store.samples(run_id)


def reports(run_id: str) -> tuple[str, str]:
    with EvalStore() as store:
        run, stored = store.get_run(run_id), store.samples(run_id)
    return markdown_report(run, stored), html_report(run, stored)


def traces() -> list[dict[str, Any]]:
    store = TraceStore()
    try:
        return [store.get(int(t["id"])) or {} for t in store.list(limit=1000)]
    finally:
        store.close()


def conversation_suite() -> Suite:
    cases = [
        Case(id="fr", vars={"country": "France", "other": "Germany"}, expected="Paris",
             turns=[{"user": "And of {{ other }}?", "expected": "Berlin"},
                    "Thank you. Say the word goodbye."]),
        Case(id="es", vars={"country": "Spain", "other": "Italy"}, expected="Madrid",
             turns=[{"user": "And of {{ other }}?", "expected": "Rome"}]),
    ]
    return Suite(name="conv", models=[SMOL], prompts=[CITY], cases=cases,
                 params={"temperature": 0, "max_tokens": 12},
                 metrics=["contains", {"name": "contains", "aggregate": "min", "label": "all"}])


def test_conversation_scores_every_turn_and_the_task() -> None:
    result = run_suite(conversation_suite(), progress=False)
    assert result.errors == 0 and result.model_calls == 5  # 3 turns + 2 turns
    by_case = {s["case_id"]: s for s in samples(result.run_id)}
    fr = by_case["fr"]
    assert [t["turn"] for t in fr["turns"]] == [1, 2, 3]
    assert fr["turns"][1]["user"] == "And of Germany?"  # the turn is a template over the vars
    # Turn 3 has nothing to compare with: no score, and it does not count in the task score.
    assert "contains" in fr["turns"][0]["scores"] and fr["turns"][2]["scores"] == {}
    per_turn = [t["scores"]["contains"] for t in fr["turns"][:2]]
    assert fr["scores"]["contains"] == pytest.approx(sum(per_turn) / 2)
    assert fr["scores"]["all"] == min(per_turn)
    assert fr["output"] == fr["turns"][-1]["output"]

    # Each turn's call carried the whole history, the model's own earlier replies included.
    calls = [t for t in traces() if t["tags"].get("eval_sample", "").startswith("fr|")]
    last = max(calls, key=lambda t: len(t["messages"]))
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user",
                                                     "assistant", "user"]
    assert last["messages"][2]["content"] == fr["turns"][0]["output"]

    turns = result.summary["turns"]["contains"]
    assert len(turns) == 2 and turns[0]["n"] == 2 and turns[1]["n"] == 2
    first = [by_case[c]["turns"][0]["scores"]["contains"] for c in ("fr", "es")]
    assert turns[0]["mean"] == pytest.approx(sum(first) / 2)

    md, page = reports(result.run_id)
    assert "## By turn (conversations)" in md
    assert "| 2 | smollm2 · city | 2 | 0 |" in md  # turn 2: both cases scored
    assert "turn 3" in page and "And of Germany?" in page

    again = run_suite(conversation_suite(), progress=False)  # every turn from the cache
    assert again.model_calls == 0 and again.cache_hits == 5


TARGET = '''
from fmstack.models.types import Request

def answer(model, request, case):
    """A toy two-stage pipeline: "retrieve" by keyword, then ask the model with the context."""
    docs = {"d1": "Paris is the capital of France.", "d2": "Berlin is in Germany.",
            "d3": "Madrid is the capital of Spain."}
    hits = [k for k, v in docs.items() if case.vars["country"] in v]
    context = " ".join(docs[k] for k in hits)
    ask = request.model_copy(update={"messages": [
        *request.messages[:-1],
        request.messages[-1].model_copy(update={"content": context + "\\n" +
                                                request.messages[-1].content})]})
    return {"final": model.complete(ask), "context": context, "retrieved": hits}
'''


def write_target_suite(tmp_path: Path, target_source: str = TARGET) -> Path:
    (tmp_path / "pipeline.py").write_text(textwrap.dedent(target_source))
    (tmp_path / "data.jsonl").write_text(
        '{"id": "fr", "country": "France", "expected": "Paris", "metadata": {"doc": "d1"}}\n'
        '{"id": "es", "country": "Spain", "expected": "Madrid", "metadata": {"doc": "d3"}}\n')
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent("""\
        name: rag-toy
        models: [{uri: smollm2, options: {n_threads: 2}}]
        prompts: [{name: city, system: "Answer with the city name only.",
                   user: "What is the capital of {{ country }}?"}]
        dataset: data.jsonl
        target: pipeline.py:answer
        params: {temperature: 0, max_tokens: 8}
        metrics:
          - contains
          - {name: contains, field: context, label: context_has_answer}
          - {name: contains, field: retrieved, reference: metadata.doc, label: hit}
        """))
    return path


def test_a_target_exposes_components_that_metrics_score(tmp_path: Path) -> None:
    path = write_target_suite(tmp_path)
    result = run_suite(path, progress=False)
    assert result.errors == 0, [s["error"] for s in result.samples]
    by_case = {s["case_id"]: s for s in samples(result.run_id)}
    assert by_case["fr"]["components"] == {"context": "Paris is the capital of France.",
                                           "retrieved": ["d1"]}
    # The context holds the expected answer, and the retrieved ids hold the relevant doc.
    assert all(s["scores"]["context_has_answer"] == 1.0 for s in by_case.values())
    assert all(s["scores"]["hit"] == 1.0 for s in by_case.values())
    assert "component retrieved" in reports(result.run_id)[1]
    # The pipeline really called the model with the retrieved context in the prompt.
    prompts = [m["content"] for t in traces() for m in t["messages"] or [] if m["role"] == "user"]
    assert any(p.startswith("Paris is the capital of France.") for p in prompts)

    assert run_suite(path, progress=False).model_calls == 0  # cached, components included
    # Editing the target changes its fingerprint: its outputs are not served from the cache.
    write_target_suite(tmp_path, TARGET.replace("Berlin is in Germany.", "Berlin, Germany."))
    assert run_suite(path, progress=False).model_calls == 2


def test_a_failing_target_fails_its_samples_with_the_reason(tmp_path: Path) -> None:
    path = write_target_suite(tmp_path, "def answer(model, request, case):\n    return 42\n")
    result = run_suite(path, progress=False)
    assert result.errors == 2
    assert "must return a Completion or a dict with a 'final' key, not int" in \
        result.samples[0]["error"]


def test_raw_text_prompts_are_sent_exactly() -> None:
    prompt = InlinePromptConfig(name="code", text="def {{ name }}(a, b):\n    ")
    suite = Suite(name="raw", models=[SMOL], prompts=[prompt],
                  cases=[Case(id="add", vars={"name": "add"})],
                  params={"temperature": 0, "max_tokens": 8}, metrics=["json_valid"])
    result = run_suite(suite, progress=False)
    sample = samples(result.run_id)[0]
    assert sample["input"]["prompt"] == "def add(a, b):\n    "  # trailing indent kept
    assert sample["input"]["messages"] == []
    assert [t["prompt"] for t in traces()] == ["def add(a, b):\n    "]


def test_model_options_are_part_of_the_cache_key() -> None:
    def suite(options: dict[str, Any]) -> Suite:
        return Suite(name="opts", models=[ModelConfig(uri="smollm2", options=options)],
                     prompts=[CITY], cases=[Case(id="fr", vars={"country": "France"})],
                     params={"temperature": 0, "max_tokens": 4}, metrics=["json_valid"])

    assert run_suite(suite({"n_threads": 2}), progress=False).model_calls == 1
    assert run_suite(suite({"n_threads": 2}), progress=False).model_calls == 0
    # Another context size is another model setup: no stale hit.
    assert run_suite(suite({"n_threads": 2, "n_ctx": 1024}), progress=False).model_calls == 1


def test_pass_at_k_over_epochs_matches_the_estimator() -> None:
    cases = [Case(id=c, vars={"country": c}, expected=e)
             for c, e in (("France", "Paris"), ("Mongolia", "Ulaanbaatar"))]
    suite = Suite(name="passk", models=[SMOL], prompts=[CITY], cases=cases, epochs=3,
                  params={"temperature": 1.0, "max_tokens": 8},
                  metrics=[{"name": "contains", "pass_at": [1, 2, 3]}])
    result = run_suite(suite, progress=False)
    stored = samples(result.run_id)
    assert len(stored) == 6 and len({s["input"]["params"]["seed"] for s in stored}) == 3
    counts = {c.id: (3, sum(s["scores"]["contains"] == 1.0 for s in stored
                            if s["case_id"] == c.id)) for c in cases}
    got = result.summary["contains"]["pass_at"]
    for k in (1, 2, 3):
        want = sum(pass_at_k(n, c, k) for n, c in counts.values()) / 2
        assert got[str(k)] == pytest.approx(want)
    assert got["1"] == pytest.approx(result.summary["contains"]["mean"])  # pass@1 = mean
    md = reports(result.run_id)[0]
    assert "contains pass@3" in md and f"{got['3']:.3f}" in md


@pytest.mark.parametrize(("fragment", "words"), [
    ("metrics: [{name: contains, reference: answer}]", ["reference 'answer' must be"]),
    ("epochs: 2\nmetrics: [{name: contains, pass_at: [5]}]", ["pass_at 5 needs at least"]),
    ("metrics: [contains]\ntarget: nowhere.py:answer", ["target file", "does not exist"]),
    ("metrics: [contains]\ntarget: json:nothing_here", ["json has no function 'nothing_here'"]),
    ("metrics: [contains]\ntarget: answer", ["must be 'file.py:function'"]),
])
def test_bad_suite_options_name_the_line(tmp_path: Path, fragment: str, words: list[str]) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text("name: bad\nmodels: [smollm2]\nprompts: [{name: p, user: 'Hi {{ x }}'}]\n"
                    "cases: [{vars: {x: 1}, expected: a}]\n" + fragment + "\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}:"), info.value
    for word in words:
        assert word in str(info.value)


def test_bad_conversations_are_caught_at_load(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    base = "name: bad\nmodels: [smollm2]\nmetrics: [contains]\n"
    path.write_text(base + "prompts: [{name: p, text: 'Hi {{ x }}'}]\n"
                    "cases: [{vars: {x: 1}, turns: [again]}]\n")
    with pytest.raises(ConfigError, match=r"is a conversation .* raw text prompt"):
        load_suite(path)
    path.write_text(base + "prompts: [{name: p, user: 'Hi {{ x }}'}]\n"
                    "cases: [{vars: {x: 1}, turns: ['and {{ y }}?']}]\n")
    with pytest.raises(ConfigError, match="turn 2 needs variable y"):
        load_suite(path)
    path.write_text(base + "prompts: [{name: p, user: 'Hi', text: 'Hi'}]\ncases: [{}]\n")
    with pytest.raises(ConfigError, match=r"needs 'user' .* or 'text'"):
        load_suite(path)


def test_ai_judges_score_inside_a_suite(tmp_path: Path) -> None:
    # SmolLM2 judging itself checks the plumbing (verdicts constrained, mapped to [0, 1],
    # traced), not the judge's quality.
    (tmp_path / "rambling.prompt").write_text(textwrap.dedent("""\
        ---
        inputs: {question: {type: string}, answer: {type: string}}
        output_schema:
          type: object
          properties: {verdict: {enum: [good, bad]}}
          required: [verdict]
        params: {temperature: 0, max_tokens: 12}
        ---
        user:
        Write a short poem about {{ question }} and {{ answer }}.
        """))
    suite = Suite(
        name="judged", models=[SMOL], prompts=[CITY],
        cases=[Case(id="fr", vars={"country": "France"}, expected="Paris")],
        params={"temperature": 0, "max_tokens": 8},
        metrics=[
            {"name": "judge", "model": {"uri": "smollm2", "options": {"n_threads": 2}}},
            {"name": "judge", "prompt": "judge-classify", "labels": ["yes", "no"],
             "criterion": "Does the answer name a city?", "label": "names_city"},
            "judge_reference",
        ])
    result = run_suite(suite, progress=False)
    assert result.errors == 0, result.samples[0]["error"]
    scores = result.samples[0]["scores"]
    assert scores["judge"] in {0.0, 0.25, 0.5, 0.75, 1.0}  # a 1..5 verdict, rescaled
    assert scores["names_city"] in {0.0, 1.0} and scores["judge_reference"] in {0.0, 1.0}
    judged = [t for t in traces() if t["tags"].get("judge")]
    assert {t["tags"]["judge"] for t in judged} == {"rubric", "reference"} and len(judged) == 3
    assert "<answer>" in judged[0]["messages"][-1]["content"]

    # A judge whose reply is not a verdict fails the sample and says why; the output is kept.
    bad = Suite.model_validate({**suite.model_dump(exclude={"metrics"}), "metrics": [
        {"name": "judge", "prompt": str(tmp_path / "rambling.prompt"), "constraint": "none"}]})
    failed = run_suite(bad, progress=False).samples[0]
    assert failed["status"] == "error" and failed["output"]
    assert "metric judge: the judge gave no verdict" in failed["error"]
    assert "is not a verdict (expected one of: good, bad)" in failed["error"]


@pytest.mark.parametrize("name", ["capitals", "conversation", "pipeline"])
def test_example_suites_load(name: str) -> None:
    resolved = load_suite(Path(__file__).parents[1] / "examples" / "suites" / f"{name}.yaml"
                          ).resolve()
    assert resolved.cases and resolved.metrics
    assert (resolved.target is not None) == (name == "pipeline")
    assert any(c.turns for c in resolved.cases) == (name == "conversation")


def test_a_target_without_a_model_is_evaluated_on_its_own() -> None:
    index = {"paris": ["d1", "d3"], "berlin": ["d2"], "rome": ["d9", "d4"]}

    def retrieve(model: Any, request: Any, case: Case) -> dict[str, Any]:
        assert model is None
        ids = index[case.vars["query"]]
        return {"final": " ".join(ids), "retrieved": ids}

    cases = [Case(id=q, vars={"query": q}, expected=rel)
             for q, rel in (("paris", ["d1"]), ("berlin", ["d2"]), ("rome", ["d4"]))]
    suite = Suite(name="retrieval-only", prompts=[{"name": "q", "user": "{{ query }}"}],
                  cases=cases, target=retrieve,
                  metrics=[{"name": "mrr", "field": "retrieved"},
                           {"name": "hit_rate_at_k", "field": "retrieved", "k": 1}])
    result = run_suite(suite, progress=False)
    assert result.errors == 0 and {s["model"] for s in result.samples} == {"none"}
    assert result.summary["mrr[retrieved]"]["mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert result.summary["hit_rate_at_k[retrieved]"]["mean"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one model"):
        Suite(name="x", prompts=["capital"], cases=cases, metrics=["contains"])
