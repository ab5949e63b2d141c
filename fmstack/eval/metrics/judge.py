"""AI judges as suite metrics: ``judge`` (a rubric or a classification) and
``judge_reference`` (graded against the case's reference answer).

Each wraps ``fmstack.eval.judges`` (prompt files with the rubric and examples, output
constrained to the verdict set) and turns the verdict into a number in [0, 1]: a 1..N scale
maps linearly ((v - low) / (high - low)); a label scores 1 when it is one of ``pass_labels``
(default: the first label of the verdict set, e.g. ``correct`` for ``judge-reference``).

The judge model is the metric's ``model`` option (an alias or URI in a suite, loaded once per
run); without one, the model under test judges itself, which is cheap but biased: name a
stronger judge where you have one. The question shown to the judge is the case variable named
by ``question`` when the case has it, else the request's last user message (or raw prompt).
A reply that yields no verdict fails that sample with the judge's reply in the message.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError
from fmstack.eval.metrics.registry import metric

if TYPE_CHECKING:
    from fmstack.eval.judges import Judge
    from fmstack.eval.suite import Case
    from fmstack.models.base import Model
    from fmstack.models.types import Request

_JUDGES: dict[tuple[Any, ...], Judge] = {}
_LOCK = threading.Lock()


def _judge(model: Model, prompt: str, labels: Sequence[str] | None, scale: int | None,
           constraint: str, reference: bool, kind: str | None = None) -> Judge:
    """One Judge per configuration and model (building one reads and checks its prompt).
    ``kind`` replaces the class's ``judge`` trace tag (the RAG metrics name themselves)."""
    from fmstack.eval.judges import Judge, ReferenceJudge

    key = (id(model), prompt, tuple(labels) if labels else None, scale, constraint, reference,
           kind)
    with _LOCK:
        if key not in _JUDGES:
            cls = ReferenceJudge if reference else Judge
            _JUDGES[key] = cls(model, prompt, labels=labels, scale=scale,
                               constraint=constraint,  # type: ignore[arg-type]
                               tags={"judge": kind} if kind else None)
        return _JUDGES[key]


def _question(request: Request, case: Case, var: str) -> str:
    if var in case.vars:
        return str(case.vars[var])
    if request.messages:
        users = [m.content for m in request.messages if m.role == "user"]
        if users:
            return users[-1]
    return request.prompt or ""


def _score(judge: Judge, verdict: Any, pass_labels: Sequence[str] | None) -> float:
    if not verdict.ok:
        raise ConfigError(f"the judge gave no verdict: {verdict.error}")
    verdicts = judge.verdicts
    if verdicts.is_scale:
        low, high = verdicts.low, verdicts.high
        return (int(verdict.value) - low) / (high - low) if high > low else 1.0
    passing = list(pass_labels) if pass_labels else [verdicts.labels[0]]
    unknown = [p for p in passing if p not in verdicts.labels]
    if unknown:
        raise ConfigError(f"pass_labels {unknown} are not verdicts of this judge "
                          f"({', '.join(verdicts.labels)})")
    return 1.0 if verdict.value in passing else 0.0


@metric("judge", inputs=("prediction", "request", "case"))
def judge(prediction: str, request: Request, case: Case, *, model: Model,
          prompt: str = "judge-rubric", question: str = "question",
          labels: list[str] | None = None, scale: int | None = None,
          pass_labels: list[str] | None = None, criterion: str | None = None,
          constraint: str = "json_schema") -> float:
    """An AI judge's verdict on the answer, as a score in [0, 1] (rubric or labels)."""
    j = _judge(model, prompt, labels, scale, constraint, reference=False)
    vars: dict[str, Any] = {"question": _question(request, case, question), "answer": prediction}
    if criterion is not None:
        vars["criterion"] = criterion
    return _score(j, j.grade_one(**vars), pass_labels)


@metric("judge_reference", inputs=("prediction", "reference", "request", "case"))
def judge_reference(prediction: str, reference: Any, request: Request, case: Case, *,
                    model: Model, prompt: str = "judge-reference", question: str = "question",
                    pass_labels: list[str] | None = None,
                    constraint: str = "json_schema") -> float:
    """An AI judge's verdict on the answer against the reference, as a score in [0, 1]."""
    j = _judge(model, prompt, None, None, constraint, reference=True)
    verdict = j.grade_one(question=_question(request, case, question), answer=prediction,
                          reference=str(reference))
    return _score(j, verdict, pass_labels)
