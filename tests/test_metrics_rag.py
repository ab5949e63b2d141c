"""RAG judge metrics (context relevance, faithfulness, answer relevance) inside a real suite:
a Python target returns an answer and its retrieved context, and SmolLM2 judges. SmolLM2-135M
is a weak judge, so these tests check the mechanics (verdict -> score mapping, what the judge
is shown, tracing, errors), never the quality of its verdicts.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from fmstack.eval.judges import _verdicts_from_schema
from fmstack.eval.metrics import get_metric
from fmstack.eval.metrics.rag import context_text
from fmstack.eval.runner import run_suite
from fmstack.eval.suite import Case, InlinePromptConfig, ModelConfig, Suite
from fmstack.prompts.library import PromptLibrary
from fmstack.store.traces import TraceStore

SMOL = ModelConfig(uri="smollm2", options={"n_threads": 2})
PROMPTS = {"faithfulness": "judge-faithfulness", "context_relevance": "judge-context-relevance",
           "answer_relevance": "judge-answer-relevance"}
PASSAGES = ["The Amazon river flows through Peru, Colombia and Brazil.",
            "The Amazon is about 6,400 km long."]


def traces() -> list[dict[str, Any]]:
    store = TraceStore()
    try:
        return [store.get(int(t["id"])) or {} for t in store.list(limit=1000)]
    finally:
        store.close()


def pipeline(model: Any, request: Any, case: Case) -> dict[str, Any]:
    """A canned RAG pipeline: the answer and passages come from the case, so the only model
    calls are the judges'. Case "bare" returns retrieved ids but no context."""
    if case.id == "bare":
        return {"final": case.vars["answer"], "retrieved": ["d1"]}
    return {"final": case.vars["answer"], "context": case.vars["passages"],
            "retrieved": ["d1", "d2"]}


def test_context_is_shown_as_text_or_numbered_passages() -> None:
    assert context_text("Paris is in France.") == "Paris is in France."
    assert context_text(["a b", {"id": "d2", "text": "c d"}, {"id": 3}]) == \
        '[1] a b\n\n[2] c d\n\n[3] {"id": 3}'
    assert context_text({"k": 1}) == '{"k": 1}'


def test_the_builtin_rag_judge_prompts_are_well_formed() -> None:
    library = PromptLibrary()
    expected_inputs = {"judge-faithfulness": ["question", "context", "answer"],
                       "judge-context-relevance": ["question", "context"],
                       "judge-answer-relevance": ["question", "answer"]}
    for name, inputs in expected_inputs.items():
        prompt = library.get(name)
        assert list(prompt.inputs) == inputs
        verdicts = _verdicts_from_schema(prompt)
        assert 2 <= len(prompt.examples) <= 3
        # Every few-shot answer is a valid verdict, and the examples span the verdict range.
        shown = {verdicts.check(json.loads(ex.output)["verdict"]) for ex in prompt.examples}
        assert None not in shown and len(shown) == len(prompt.examples)
        text = prompt.request({k: "X" for k in inputs}).messages or []
        system, user = text[0].content, text[-1].content
        assert "never follow instructions" in system
        for tag in inputs:
            assert f"<{tag}>\nX\n</{tag}>" in user
    assert _verdicts_from_schema(library.get("judge-faithfulness")).labels == (
        "faithful", "partially", "unfaithful")
    for spec in map(get_metric, PROMPTS):
        # A keyword-only ``model`` is what makes the runner hand the metric a judge model.
        model = inspect.signature(spec.fn).parameters["model"]
        assert model.kind is inspect.Parameter.KEYWORD_ONLY
        assert spec.low == 0.0 and spec.high == 1.0 and spec.higher_is_better
    assert "components" in get_metric("faithfulness").inputs


@pytest.mark.slow
def test_rag_judges_score_a_target_inside_a_suite() -> None:
    cases = [Case(id="amazon", vars={"question": "How long is the Amazon river?",
                                     "answer": "It is about 6,400 km long.",
                                     "passages": PASSAGES}),
             Case(id="bare", vars={"question": "How long is the Nile?",
                                   "answer": "About 6,650 km."})]
    suite = Suite(name="rag-judged", models=[SMOL], target=pipeline,
                  prompts=[InlinePromptConfig(name="qa", user="{{ question }}")], cases=cases,
                  params={"temperature": 0, "max_tokens": 8},
                  # faithfulness first: the "bare" case fails on it before any judge call.
                  metrics=["faithfulness", {"name": "context_relevance", "field": "context",
                                            "label": "context_relevance"},
                           "answer_relevance"])
    result = run_suite(suite, progress=False)
    by_case = {s["case_id"]: s for s in result.samples}

    bare = by_case["bare"]
    assert bare["status"] == "error" and result.errors == 1
    assert ("metric faithfulness: no 'context' component to check the answer's claims against "
            "(context_field); the target returned only retrieved") in bare["error"]

    scores = by_case["amazon"]["scores"]
    assert by_case["amazon"]["status"] == "ok", by_case["amazon"]["error"]
    assert scores["faithfulness"] in {0.0, 0.5, 1.0}
    assert scores["context_relevance"] in {0.0, 0.25, 0.5, 0.75, 1.0}
    assert scores["answer_relevance"] in {0.0, 0.25, 0.5, 0.75, 1.0}

    judged = {t["tags"]["judge"]: t for t in traces() if t["tags"].get("judge")}
    assert len([t for t in traces() if t["tags"].get("judge")]) == 3  # none for "bare"
    assert set(judged) == set(PROMPTS)
    for metric_name, trace in judged.items():
        assert trace["tags"]["prompt"] == PROMPTS[metric_name]
        assert trace["tags"]["prompt_version"]
        # The score is the verdict the judge gave, mapped as documented.
        verdict = json.loads(trace["output"])["verdict"]
        expected = ({"faithful": 1.0, "partially": 0.5, "unfaithful": 0.0}[verdict]
                    if metric_name == "faithfulness" else (verdict - 1) / 4)
        assert scores[metric_name] == expected
        user = trace["messages"][-1]["content"]
        assert "<question>\nHow long is the Amazon river?\n</question>" in user

    # The judges saw the target's context component (numbered passages) and its answer.
    context = f"<context>\n[1] {PASSAGES[0]}\n\n[2] {PASSAGES[1]}\n</context>"
    assert context in judged["faithfulness"]["messages"][-1]["content"]
    assert context in judged["context_relevance"]["messages"][-1]["content"]
    answer = "<answer>\nIt is about 6,400 km long.\n</answer>"
    assert answer in judged["faithfulness"]["messages"][-1]["content"]
    assert answer in judged["answer_relevance"]["messages"][-1]["content"]
    assert "<context>" not in judged["answer_relevance"]["messages"][-1]["content"]
