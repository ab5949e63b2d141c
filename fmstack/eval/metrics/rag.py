"""RAG metrics with AI judges: ``context_relevance`` (is the retrieved context what the
question needs?), ``faithfulness`` (is every claim in the answer supported by that context?)
and ``answer_relevance`` (does the answer address the question?).

Each is a thin layer over the ``judge`` machinery in ``fmstack.eval.metrics.judge``: the same
cached Judge per model and prompt, the same question lookup (the case variable named by
``question``, else the request's last user message), the same constrained verdicts, and the
same ``model`` option (an alias or URI in a suite; by default the model under test judges,
which is cheap but biased). Every judge call is traced with its prompt's name and version and
``judge`` = the metric's name. The builtin prompts are ``judge-context-relevance``,
``judge-faithfulness`` and ``judge-answer-relevance``; ``prompt`` names another.

Scores, all in [0, 1]:

* ``context_relevance`` and ``answer_relevance``: a 1..5 rubric, rescaled linearly
  (1 -> 0, 2 -> 0.25, 3 -> 0.5, 4 -> 0.75, 5 -> 1).
* ``faithfulness``: a label, ``faithful`` -> 1, ``partially`` -> 0.5, ``unfaithful`` -> 0.
  Labels rather than a 1..5 scale because faithfulness is a count of supported claims, not a
  quality: "all supported", "some unsupported", "contradicted or main claim unsupported" are
  definitions a judge can check, where "a 3" is not. A prompt of your own may list other
  labels, best first; they score evenly from 1 down to 0 (or give it a numeric scale).

Where the context comes from: ``context_relevance`` judges its prediction, so a suite points
it at the target's component with ``field: context``; ``faithfulness`` reads the component
named by ``context_field`` itself (the prediction is the answer). A context that is a list
(retrieved passages) is shown to the judge numbered, one passage per block.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError
from fmstack.eval.metrics.judge import _judge, _question, _score
from fmstack.eval.metrics.registry import metric

if TYPE_CHECKING:
    from fmstack.eval.judges import Judge, Verdict
    from fmstack.eval.suite import Case
    from fmstack.models.base import Model
    from fmstack.models.types import Request


def context_text(value: Any) -> str:
    """A context component as the judge reads it: text as is; a list of passages (strings,
    or dicts with a ``text`` key such as serialised chunks) numbered ``[1] ...``; anything
    else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        parts = [item if isinstance(item, str) else
                 str(item["text"]) if isinstance(item, dict) and "text" in item else
                 json.dumps(item) for item in value]
        return "\n\n".join(f"[{i}] {p}" for i, p in enumerate(parts, 1))
    return json.dumps(value)


def _graded(judge: Judge, verdict: Verdict) -> float:
    """A label verdict graded by its position (first label 1, last 0, evenly between); a
    scale goes through the ``judge`` metric's linear rescaling."""
    labels = judge.verdicts.labels
    if judge.verdicts.is_scale or not verdict.ok:
        return _score(judge, verdict, None)
    return 1.0 - labels.index(str(verdict.value)) / max(len(labels) - 1, 1)


@metric("context_relevance", inputs=("prediction", "request", "case"))
def context_relevance(prediction: Any, request: Request, case: Case, *, model: Model,
                      prompt: str = "judge-context-relevance", question: str = "question",
                      constraint: str = "json_schema") -> float:
    """An AI judge's 1-5 rating of how relevant the context is to the question, in [0, 1]
    (use with ``field: context``)."""
    j = _judge(model, prompt, None, None, constraint, reference=False, kind="context_relevance")
    verdict = j.grade_one(question=_question(request, case, question),
                          context=context_text(prediction))
    return _graded(j, verdict)


@metric("faithfulness", inputs=("prediction", "request", "case", "components"))
def faithfulness(prediction: str, request: Request, case: Case, components: dict[str, Any],
                 *, model: Model, context_field: str = "context",
                 prompt: str = "judge-faithfulness", question: str = "question",
                 constraint: str = "json_schema") -> float:
    """An AI judge's verdict on whether the answer's claims are supported by the context:
    faithful 1, partially 0.5, unfaithful 0."""
    if context_field not in components:
        returned = (f"only {', '.join(sorted(components))}" if components else
                    "no components (give the suite a target that returns the context)")
        raise ConfigError(f"no {context_field!r} component to check the answer's claims "
                          f"against (context_field); the target returned {returned}")
    j = _judge(model, prompt, None, None, constraint, reference=False, kind="faithfulness")
    verdict = j.grade_one(question=_question(request, case, question),
                          context=context_text(components[context_field]),
                          answer=str(prediction))
    return _graded(j, verdict)


@metric("answer_relevance", inputs=("prediction", "request", "case"))
def answer_relevance(prediction: str, request: Request, case: Case, *, model: Model,
                     prompt: str = "judge-answer-relevance", question: str = "question",
                     constraint: str = "json_schema") -> float:
    """An AI judge's 1-5 rating of how directly the answer addresses the question, in
    [0, 1]."""
    j = _judge(model, prompt, None, None, constraint, reference=False, kind="answer_relevance")
    verdict = j.grade_one(question=_question(request, case, question), answer=str(prediction))
    return _graded(j, verdict)
