"""AI judges on the real SmolLM2: constrained verdicts that always parse and are in range,
traced with the judge prompt's name and version, pairwise judging in both orders with the swap
rule, per-sample errors that leave the rest of the batch alone, and Cohen's kappa against
sklearn's."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from sklearn.metrics import cohen_kappa_score

from fmstack.errors import CapabilityError, ConfigError
from fmstack.eval.judges import (
    Judge,
    PairwiseJudge,
    ReferenceJudge,
    Verdict,
    agreement,
    cohen_kappa,
    combine,
)
from fmstack.models import load_model
from fmstack.models.base import Model
from fmstack.prompts import PromptLibrary

QA = [
    {"question": "What is the capital of France?", "answer": "Paris."},
    {"question": "What is 2 + 2?", "answer": "5"},
    {"question": "Name a mammal that can fly.", "answer": "The bat."},
]


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    """A traced SmolLM2. The tracer is bound to the module's first FMSTACK_HOME, so tests read
    traces through ``model.tracer`` rather than opening the per-test store."""
    m = load_model("smollm2", n_threads=2)
    yield m
    m.close()


def trace_of(model: Model, verdict: Verdict) -> dict[str, Any]:
    assert model.tracer is not None and verdict.trace_id is not None
    row = model.tracer.get(verdict.trace_id)
    assert row is not None
    return row


# ----- rubric and reference judges on SmolLM2 -------------------------------------------------


def test_rubric_judge_scores_in_range_and_traces_prompt_version(model: Model) -> None:
    judge = Judge(model)  # builtin judge-rubric: integer 1..5 in a json_schema
    prompt = PromptLibrary().get("judge-rubric")
    verdicts = judge.grade(QA)
    assert len(verdicts) == 3
    for i, v in enumerate(verdicts):
        assert v.ok, v.error
        assert isinstance(v.value, int) and 1 <= v.value <= 5
        row = trace_of(model, v)
        assert row["error"] is None
        assert row["tags"] == {"prompt": "judge-rubric", "prompt_version": prompt.version,
                               "judge": "rubric", "sample": str(i)}
        # The rubric and few-shot examples from the file are what the model saw.
        assert "Rubric:" in row["messages"][0]["content"]
        assert row["messages"][2] == {"role": "assistant", "content": '{"verdict": 5}'}
        # (The trace drops default-valued fields, the format's "type" among them.)
        assert row["params"]["response_format"]["schema"] == judge.verdicts.schema()


def test_classification_with_caller_labels_and_choice_constraint(model: Model) -> None:
    labels = ["helpful", "unhelpful", "harmful"]
    judge = Judge(model, "judge-classify", labels=labels, constraint="choice",
                  tags={"case": "demo"})
    verdicts = judge.grade([{**s, "criterion": "Is the answer helpful?"} for s in QA])
    for v in verdicts:
        assert v.ok and v.value in labels and v.text == v.value
        row = trace_of(model, v)
        assert row["params"]["response_format"]["choices"] == labels
        assert row["tags"]["prompt"] == "judge-classify" and row["tags"]["case"] == "demo"
        assert "Labels: helpful, unhelpful, harmful" in row["messages"][-1]["content"]


def test_scale_judge_with_choice_constraint_sees_bare_examples(model: Model) -> None:
    verdict = Judge(model, "judge-classify", scale=(0, 3), constraint="choice").grade_one(
        question="What colour is the sky?", answer="Blue.", criterion="Correctness, 0 to 3.")
    assert verdict.ok and verdict.value in (0, 1, 2, 3)
    rubric = Judge(model, constraint="choice")
    # The file's JSON examples are rewritten to bare labels to match the choice grammar.
    assert [ex.output for ex in rubric.examples] == ["5", "1", "3"]
    v = rubric.grade_one(**QA[0])
    assert isinstance(v.value, int) and 1 <= v.value <= 5
    assert trace_of(model, v)["messages"][2]["content"] == "5"


def test_reference_judge_verdicts(model: Model) -> None:
    judge = ReferenceJudge(model)
    samples = [
        {"question": "What is 6 times 7?", "answer": "42", "reference": "42"},
        {"question": "Who wrote Hamlet?", "answer": "Charles Dickens",
         "reference": "William Shakespeare"},
    ]
    verdicts = judge.grade(samples)
    assert all(v.ok and v.value in ("correct", "incorrect") for v in verdicts)
    row = trace_of(model, verdicts[1])
    assert row["tags"]["judge"] == "reference" and row["tags"]["prompt"] == "judge-reference"
    assert "<reference>\nWilliam Shakespeare\n</reference>" in row["messages"][-1]["content"]


def test_failures_are_per_sample(model: Model) -> None:
    judge = Judge(model)
    huge = {"question": "Summarise this.", "answer": "word " * 5000}  # beyond 2048 tokens
    verdicts = judge.grade([QA[0], huge, {"question": "no answer field"}, QA[2]])
    assert [v.ok for v in verdicts] == [True, False, False, True]
    assert verdicts[1].error is not None and verdicts[1].error.startswith("ContextLengthError")
    assert verdicts[2].error is not None and "missing variable answer" in verdicts[2].error
    # A reply cut off before the JSON closes cannot parse: an error for each sample, traced.
    assert model.tracer is not None
    before = model.tracer.count()
    cut = Judge(model, max_tokens=2).grade(QA[:2])
    assert all(v.value is None and v.error is not None for v in cut)
    assert all("OutputValidationError" in (v.error or "") and "max_tokens" in (v.error or "")
               for v in cut)
    assert model.tracer.count() == before + 2
    assert model.tracer.list(limit=1)[0]["error"].startswith("OutputValidationError")


def test_unconstrained_judge_parses_or_reports_each_reply(model: Model) -> None:
    reference = Judge(model, "judge-reference", constraint="none", max_tokens=16)
    classify = Judge(model, "judge-classify", labels=["yes", "no"], constraint="none",
                     max_tokens=16)
    verdicts = [
        reference.grade_one(question="What is 6 times 7?", answer="42", reference="42"),
        classify.grade_one(question="Is the sky blue?", answer="yes",
                           criterion="Is the answer right?"),
    ]
    for v in verdicts:
        assert "response_format" not in trace_of(model, v)["params"]
        assert v.text is not None
        if v.ok:
            assert v.value in ("correct", "incorrect")
        else:
            assert v.error is not None and "is not a verdict (expected one of: yes, no)" in \
                v.error
    # Greedy SmolLM2 copies the JSON of judge-reference's few-shot examples, but answers the
    # example-free classify prompt in prose: one parsed verdict, one per-sample error.
    assert [v.ok for v in verdicts] == [True, False]


def test_parse_reply(model: Model) -> None:
    labels = Judge(model, "judge-classify", labels=["Yes", "No"], constraint="none")
    assert labels.parse_reply('Sure. {"verdict": "No"} is my answer') == "No"
    assert labels.parse_reply('{"verdict": "maybe"}') is None
    assert labels.parse_reply("  **yes.** ") == "Yes"
    assert labels.parse_reply("The answer is yes.") is None
    scale = Judge(model, constraint="none")
    assert scale.parse_reply('{"verdict": 4}') == 4
    assert scale.parse_reply("3") == 3
    assert scale.parse_reply("9") is None and scale.parse_reply('{"verdict": true}') is None


def test_backend_that_cannot_enforce_is_told_up_front() -> None:
    # An OpenAI-compatible endpoint enforces json_schema only; nothing is sent at load time.
    remote = load_model("openai:judge@http://127.0.0.1:9/v1", trace=False)
    with pytest.raises(CapabilityError, match="cannot enforce choice output: pass "
                       "constraint='none'"):
        Judge(remote, constraint="choice")
    assert Judge(remote, constraint="none").format is None


def test_judge_configuration_errors(model: Model) -> None:
    with pytest.raises(ConfigError, match="fixes its verdicts in its output_schema"):
        Judge(model, "judge-rubric", labels=["good", "bad"])
    with pytest.raises(ConfigError, match="has no output_schema: give the judge labels"):
        Judge(model, "judge-classify")
    with pytest.raises(ConfigError, match="labels or a scale, not both"):
        Judge(model, "judge-classify", labels=["x", "y"], scale=5)
    with pytest.raises(ConfigError, match="2 or more distinct"):
        Judge(model, "judge-classify", labels=["same", "same"])
    with pytest.raises(ConfigError, match="a scale needs integers low < high"):
        Judge(model, "judge-classify", scale=1)
    with pytest.raises(ConfigError, match="unknown judge constraint 'regex'"):
        Judge(model, constraint="regex")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="declares no 'reference' input"):
        ReferenceJudge(model, "judge-rubric")
    with pytest.raises(ConfigError, match="pairwise verdicts must be A, B and tie"):
        PairwiseJudge(model, "judge-reference")
    with pytest.raises(ConfigError, match="exactly one of a model or a judge_fn"):
        PairwiseJudge()


def test_user_prompt_overrides_builtin(model: Model, tmp_path: Any) -> None:
    (tmp_path / "judge-reference.prompt").write_text(
        "---\ninputs:\n  question: {}\n  answer: {}\n  reference: {}\n"
        "output_schema:\n  type: object\n  properties:\n    verdict: {enum: [same, different]}\n"
        "  required: [verdict]\n---\nuser:\nQ: {{ question }}\nA: {{ answer }}\n"
        "Reference: {{ reference }}\nSame as the reference, or different?\n")
    judge = ReferenceJudge(model, library=PromptLibrary([tmp_path]))
    assert judge.prompt.source == "user" and judge.verdicts.labels == ("same", "different")
    v = judge.grade_one(question="2+2?", answer="4", reference="4")
    assert v.value in ("same", "different")
    assert trace_of(model, v)["tags"]["prompt_version"] == judge.prompt.version


# ----- pairwise --------------------------------------------------------------------------------


def test_swap_rule() -> None:
    assert combine("a", "a") == "a" and combine("b", "b") == "b"
    assert combine("a", "b") == "tie" and combine("a", "tie") == "tie"
    assert combine("tie", "tie") == "tie"


def test_pairwise_swap_logic_with_a_judge_function() -> None:
    seen: list[tuple[str, str]] = []

    def first_always(question: str, first: str, second: str) -> str:
        seen.append((first, second))
        return "A"

    verdict = PairwiseJudge(judge_fn=first_always).compare("q?", "short", "a longer answer")
    # Both orders were asked, the second with the answers swapped.
    assert seen == [("short", "a longer answer"), ("a longer answer", "short")]
    # Pure position bias: each order prefers whichever answer came first, so it is a tie.
    assert (verdict.forward, verdict.backward, verdict.winner) == ("a", "b", "tie")
    assert not verdict.consistent

    def longer(question: str, first: str, second: str) -> str:
        return "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"

    pairs = [("q", "tiny", "much longer"), ("q", "much longer", "tiny"), ("q", "same", "same")]
    results = PairwiseJudge(judge_fn=longer).compare_many(pairs)
    assert [r.winner for r in results] == ["b", "a", "tie"]
    assert all(r.consistent for r in results)

    def garbage(question: str, first: str, second: str) -> str:
        return "A" if first == "x" else "maybe"

    broken = PairwiseJudge(judge_fn=garbage).compare("q", "x", "y")
    assert broken.winner is None and broken.forward == "a" and broken.backward is None
    assert broken.error == "b-first order: judge_fn returned 'maybe', not A, B or tie"


def test_pairwise_on_smollm2_runs_both_orders(model: Model) -> None:
    judge = PairwiseJudge(model, constraint="choice")
    pairs = [
        ("What is the capital of France?", "Paris.", "London."),
        ("What is 3 + 4?", "It is 12.", "7"),
    ]
    results = judge.compare_many(pairs)
    for i, (result, (question, a, b)) in enumerate(zip(results, pairs, strict=True)):
        first, second = result.verdicts
        assert first.ok and second.ok
        assert first.value in ("A", "B", "tie") and second.value in ("A", "B", "tie")
        # The recorded verdicts translate back to answers as the swap requires...
        to_answer = {"A": "a", "B": "b", "tie": "tie"}
        swapped = {"A": "b", "B": "a", "tie": "tie"}
        assert result.forward == to_answer[str(first.value)]
        assert result.backward == swapped[str(second.value)]
        # ...and the winner is their agreement, a tie when they disagree.
        assert result.winner == (result.forward if result.forward == result.backward
                                 else "tie")
        rows = [trace_of(model, first), trace_of(model, second)]
        assert [r["tags"]["order"] for r in rows] == ["ab", "ba"]
        assert all(r["tags"]["judge"] == "pairwise" and r["tags"]["sample"] == str(i)
                   for r in rows)
        shown = [r["messages"][-1]["content"] for r in rows]
        assert f"<answer_a>\n{a}\n</answer_a>" in shown[0]
        assert f"<answer_a>\n{b}\n</answer_a>" in shown[1]
        assert question in shown[0] and question in shown[1]
    # Greedy decoding: the same comparison gives the same verdicts again.
    again = judge.compare(*pairs[0])
    assert (again.forward, again.backward) == (results[0].forward, results[0].backward)


# ----- agreement -------------------------------------------------------------------------------

LABEL_SETS: list[tuple[list[Any], list[Any]]] = [
    (["yes", "no", "yes", "yes", "no", "no", "yes"],
     ["yes", "no", "no", "yes", "no", "yes", "yes"]),
    ([1, 2, 3, 4, 5, 3, 2, 1, 4], [1, 3, 3, 5, 5, 2, 2, 2, 4]),
    (["a", "b", "c", "a", "b", "c", "a"], ["c", "a", "b", "c", "a", "b", "b"]),  # below chance
    (["x", "x", "y", "y"], ["x", "x", "y", "y"]),
    (["A", "B", "tie", "A", "A", "B"], ["A", "A", "tie", "B", "A", "tie"]),
]


@pytest.mark.parametrize(("ours", "theirs"), LABEL_SETS)
def test_kappa_equals_sklearn(ours: list[Any], theirs: list[Any]) -> None:
    assert cohen_kappa(ours, theirs) == pytest.approx(cohen_kappa_score(ours, theirs), abs=1e-12)
    weights: Literal["linear", "quadratic"]
    for weights in ("linear", "quadratic"):
        assert cohen_kappa(ours, theirs, weights=weights) == pytest.approx(
            cohen_kappa_score(ours, theirs, weights=weights), abs=1e-12)


def test_kappa_undefined_and_bad_input() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(cohen_kappa_score(["a", "a"], ["a", "a"]))
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
    with pytest.raises(ConfigError, match="equal-length ratings, got 2 and 1"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="rating 'c' is not one of the labels"):
        cohen_kappa(["a", "c"], ["a", "b"], labels=["a", "b"])
    with pytest.raises(ConfigError, match="unknown kappa weights"):
        cohen_kappa(["a"], ["a"], weights="cubic")  # type: ignore[arg-type]


def test_agreement_skips_failed_verdicts() -> None:
    judged: list[Verdict | str | None] = [
        Verdict("yes"), Verdict(None, error="OutputValidationError: ..."), Verdict("no"),
        Verdict("yes"), "no", None,
    ]
    human = ["yes", "no", "yes", "yes", "no", "yes"]
    result = agreement(judged, human)
    assert (result.n, result.skipped) == (4, 2)
    assert result.accuracy == pytest.approx(3 / 4)
    kept_ours, kept_theirs = ["yes", "no", "yes", "no"], ["yes", "yes", "yes", "no"]
    assert result.kappa == pytest.approx(cohen_kappa_score(kept_ours, kept_theirs))
    assert result.labels == ["no", "yes"]
    with pytest.raises(ConfigError, match="3 judge verdicts but 2 human labels"):
        agreement(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ConfigError, match="no sample has a judge verdict"):
        agreement([None], ["a"])
