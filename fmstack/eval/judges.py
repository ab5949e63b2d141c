"""AI as a judge: rubric scoring, reference-guided grading and pairwise comparison, plus the
judge's agreement with human labels (accuracy, Cohen's kappa).

A judge is a prompt file and a model. The file holds the rubric, the few-shot examples and the
set of verdicts (its ``output_schema`` has one property, ``verdict``: an ``enum`` of labels or
an integer with ``minimum``/``maximum``), so all three are versioned together; every request
is tagged with the prompt's name and version plus ``judge`` (the kind) and ``sample`` (the
index in the batch), and goes through the Model, so every judge call is traced.

The verdict is constrained while decoding, so it always parses on a backend that enforces
formats: ``constraint="json_schema"`` (default; ``{"verdict": ...}``) or ``"choice"`` (the bare
label). ``constraint="none"`` is for backends that cannot enforce either: the reply is parsed
leniently, and a reply that still does not parse is that sample's error. Any fmstack error on
one sample (a reply cut off by ``max_tokens``, a prompt too long for the context, a missing
variable) becomes ``Verdict.error`` for that sample only; the rest of the batch still runs.

Pairwise comparison asks twice, the second time with the answers swapped, and counts a
disagreement between the two orders as a tie (position bias cancels instead of deciding).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from fmstack.errors import CapabilityError, ConfigError, FmstackError
from fmstack.models.types import ChoiceFormat, JsonSchemaFormat, ResponseFormat
from fmstack.prompts.files import Example, PromptFile
from fmstack.prompts.library import PromptLibrary

if TYPE_CHECKING:
    from fmstack.models.base import Model

Constraint = Literal["json_schema", "choice", "none"]
CONSTRAINTS: tuple[str, ...] = get_args(Constraint)
Winner = Literal["a", "b", "tie"]
Label = str | int


@dataclass
class Verdict:
    """One judged sample: ``value`` is the label (str) or score (int), or None with ``error``
    saying why the judge gave no usable verdict."""

    value: Label | None
    error: str | None = None
    text: str | None = None  # the judge's raw reply, when there was one
    trace_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Verdicts:
    """The allowed verdicts: string labels, or the integers ``low..high`` of a scale."""

    labels: tuple[str, ...] = ()
    low: int = 0
    high: int = 0

    @property
    def is_scale(self) -> bool:
        return not self.labels

    @property
    def texts(self) -> list[str]:
        return list(self.labels) if self.labels else [str(i) for i in range(self.low,
                                                                             self.high + 1)]

    def schema(self) -> dict[str, Any]:
        prop: dict[str, Any] = ({"enum": list(self.labels)} if self.labels else
                                {"type": "integer", "minimum": self.low, "maximum": self.high})
        return {"type": "object", "properties": {"verdict": prop}, "required": ["verdict"],
                "additionalProperties": False}

    def check(self, value: Any) -> Label | None:
        """``value`` as a verdict, or None if it is not one of them."""
        if self.labels:
            return value if isinstance(value, str) and value in self.labels else None
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if self.low <= value <= self.high else None


def _verdicts_from_schema(prompt: PromptFile) -> Verdicts:
    schema = prompt.output_schema or {}
    prop = schema.get("properties", {}).get("verdict")
    where = f"prompt {prompt.name}"
    if not isinstance(prop, dict):
        raise ConfigError(f"{where}: a judge prompt's output_schema needs a 'verdict' property "
                          "(an enum of labels or an integer with minimum and maximum)")
    if "enum" in prop:
        labels = prop["enum"]
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise ConfigError(f"{where}: the verdict enum must list non-empty strings")
        return Verdicts(labels=tuple(labels))
    if prop.get("type") == "integer" and "minimum" in prop and "maximum" in prop:
        return _scale(prop["minimum"], prop["maximum"], where)
    raise ConfigError(f"{where}: the verdict must be an enum of labels or an integer with "
                      f"minimum and maximum, got {json.dumps(prop)}")


def _scale(low: Any, high: Any, where: str) -> Verdicts:
    if not (isinstance(low, int) and isinstance(high, int)) or low >= high:
        raise ConfigError(f"{where}: a scale needs integers low < high, got {low}..{high}")
    return Verdicts(low=low, high=high)


class Judge:
    """Grades samples (dicts of the prompt's variables) with a judge prompt on a model.

    ``labels`` (classification) or ``scale`` (``N`` for 1..N, or ``(low, high)``) set the
    verdicts for a prompt that declares a ``labels`` input, such as the builtin
    ``judge-classify``; a prompt without one fixes its verdicts in its ``output_schema``.
    ``params`` override the prompt file's sampling params (e.g. ``max_tokens``).
    """

    kind = "rubric"

    def __init__(
        self,
        model: Model,
        prompt: str | PromptFile = "judge-rubric",
        *,
        labels: Sequence[str] | None = None,
        scale: int | tuple[int, int] | None = None,
        constraint: Constraint = "json_schema",
        library: PromptLibrary | None = None,
        tags: Mapping[str, str] | None = None,
        **params: Any,
    ) -> None:
        if constraint not in CONSTRAINTS:
            raise ConfigError(f"unknown judge constraint {constraint!r} "
                              f"(use {', '.join(CONSTRAINTS)})")
        self.model = model
        self.prompt = prompt if isinstance(prompt, PromptFile) else (
            library or PromptLibrary()).get(prompt)
        self.constraint: Constraint = constraint
        self.verdicts = self._resolve_verdicts(labels, scale)
        self.tags = dict(tags or {})
        self.params = params
        self.format: ResponseFormat | None = None
        if constraint == "json_schema":
            self.format = JsonSchemaFormat(schema=self.verdicts.schema(), name="verdict")
        elif constraint == "choice":
            self.format = ChoiceFormat(choices=self.verdicts.texts)
        if self.format is not None and self.format.type not in model.capabilities.response_formats:
            raise CapabilityError(f"backend {model.backend} cannot enforce {self.format.type} "
                                  "output: pass constraint='none' to parse the judge's free "
                                  "text (a reply that does not parse becomes a per-sample error)")
        self.examples = [self._example(ex) for ex in self.prompt.examples]

    def _resolve_verdicts(
        self, labels: Sequence[str] | None, scale: int | tuple[int, int] | None
    ) -> Verdicts:
        where = f"prompt {self.prompt.name}"
        if labels is not None and scale is not None:
            raise ConfigError("give a judge labels or a scale, not both")
        if labels is None and scale is None:
            if self.prompt.output_schema is None:
                raise ConfigError(f"{where} has no output_schema: give the judge labels=[...] "
                                  "or scale=N")
            return _verdicts_from_schema(self.prompt)
        if "labels" not in self.prompt.inputs:
            raise ConfigError(f"{where} fixes its verdicts in its output_schema (it declares no "
                              "'labels' input): drop labels/scale or use another prompt")
        if labels is not None:
            names = list(labels)
            if len(names) < 2 or len(set(names)) != len(names) or not all(
                    isinstance(x, str) and x.strip() for x in names):
                raise ConfigError(f"judge labels must be 2 or more distinct non-empty strings, "
                                  f"got {names!r}")
            return Verdicts(labels=tuple(names))
        low, high = (1, scale) if isinstance(scale, int) else scale  # type: ignore[misc]
        return _scale(low, high, "judge scale")

    def _example(self, ex: Example) -> Example:
        # The file's examples answer in JSON; a choice-constrained judge must see bare labels,
        # or the few-shot turns would teach a format the grammar then forbids.
        if self.constraint != "choice":
            return ex
        try:
            value = json.loads(ex.output)["verdict"]
        except (ValueError, KeyError, TypeError):
            return ex
        return ex.model_copy(update={"output": str(value)})

    # ----- running --------------------------------------------------------------------------

    def grade(self, samples: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        """One Verdict per sample, in order. A failing sample does not stop the others."""
        return [self._ask(dict(vars), {"sample": str(i)}) for i, vars in enumerate(samples)]

    def grade_one(self, **vars: Any) -> Verdict:
        return self._ask(vars, {})

    def _ask(self, vars: dict[str, Any], tags: dict[str, str]) -> Verdict:
        if "labels" in self.prompt.inputs and "labels" not in vars:
            vars["labels"] = self.verdicts.texts
        try:
            overrides = dict(self.params)
            overrides["response_format"] = self.format
            request = self.prompt.request(vars, examples=self.examples, **overrides)
            request = request.model_copy(update={"tags": {
                **request.tags, "judge": self.kind, **self.tags, **tags}})
            completion = self.model.complete(request)
        except FmstackError as e:
            return Verdict(None, error=f"{type(e).__name__}: {e}")
        text = completion.text
        value = self._value(completion.parsed if self.format is not None else None, text)
        if value is None:
            allowed = ", ".join(self.verdicts.texts)
            return Verdict(None, error=f"judge reply {text[:80]!r} is not a verdict "
                           f"(expected one of: {allowed})", text=text,
                           trace_id=completion.trace_id)
        return Verdict(value, text=text, trace_id=completion.trace_id)

    def _value(self, parsed: Any, text: str) -> Label | None:
        if self.constraint == "json_schema":
            return self.verdicts.check(parsed.get("verdict") if isinstance(parsed, dict) else None)
        if self.constraint == "choice":
            return self._from_text(str(parsed))
        return self.parse_reply(text)

    def _from_text(self, text: str) -> Label | None:
        if self.verdicts.is_scale:
            return self.verdicts.check(int(text)) if re.fullmatch(r"-?\d+", text) else None
        return self.verdicts.check(text)

    def parse_reply(self, text: str) -> Label | None:
        """The verdict in an unconstrained reply, or None: the first JSON object's
        ``verdict`` when the reply has one, else the whole reply as a bare label (case and
        surrounding quotes, backticks, asterisks and full stops ignored) or integer."""
        found = re.search(r"\{.*?\}", text, re.DOTALL)
        if found is not None:
            try:
                obj = json.loads(found.group(0))
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "verdict" in obj:
                return self.verdicts.check(obj["verdict"])
        bare = text.strip().strip("\"'`*.").strip()
        if not self.verdicts.is_scale:
            folded = {label.lower(): label for label in self.verdicts.labels}
            return folded.get(bare.lower())
        return self._from_text(bare)


class ReferenceJudge(Judge):
    """Grades an answer against a reference answer; samples carry ``question``, ``answer``
    and ``reference`` (or whatever the prompt declares, which must include ``reference``)."""

    kind = "reference"

    def __init__(self, model: Model, prompt: str | PromptFile = "judge-reference",
                 **options: Any) -> None:
        super().__init__(model, prompt, **options)
        if "reference" not in self.prompt.inputs:
            raise ConfigError(f"prompt {self.prompt.name} declares no 'reference' input, so it "
                              "cannot grade against a reference")


# ----- pairwise -----------------------------------------------------------------------------


# (question, first answer shown, second answer shown) -> "A", "B" or "tie"
JudgeFn = Callable[[str, str, str], str]


@dataclass
class PairVerdict:
    """Both orders of one comparison. ``forward`` is the verdict with answer a shown first,
    ``backward`` with b shown first, both translated to "a"/"b"/"tie"; ``winner`` is their
    common verdict, "tie" when they disagree, None when either order failed."""

    winner: Winner | None
    forward: Winner | None
    backward: Winner | None
    verdicts: tuple[Verdict, Verdict]
    error: str | None = None

    @property
    def consistent(self) -> bool:
        return self.forward is not None and self.forward == self.backward


def combine(forward: Winner, backward: Winner) -> Winner:
    """The swap rule: a verdict stands only when both orders give it."""
    return forward if forward == backward else "tie"


class PairwiseJudge:
    """Which of two answers is better, judged in both orders.

    The prompt's verdicts must be exactly ``A``, ``B`` and ``tie`` (the builtin
    ``judge-pairwise``) and it must declare ``question``, ``answer_a`` and ``answer_b``.
    Verdicts become rankings battles as ``(model_x, model_y, v.winner)`` for each ``v`` whose
    winner is not None.
    ``judge_fn`` replaces the model with a caller's function of (question, first, second)
    returning ``"A"``, ``"B"`` or ``"tie"`` (a human, a rule, a cached verdict): the swap
    logic is the same.
    """

    def __init__(
        self,
        model: Model | None = None,
        prompt: str | PromptFile = "judge-pairwise",
        *,
        judge_fn: JudgeFn | None = None,
        constraint: Constraint = "json_schema",
        library: PromptLibrary | None = None,
        tags: Mapping[str, str] | None = None,
        **params: Any,
    ) -> None:
        if (model is None) == (judge_fn is None):
            raise ConfigError("a pairwise judge needs exactly one of a model or a judge_fn")
        self.judge_fn = judge_fn
        self.judge: Judge | None = None
        if model is not None:
            self.judge = Judge(model, prompt, constraint=constraint, library=library,
                               tags=tags, **params)
            self.judge.kind = "pairwise"
            if set(self.judge.verdicts.labels) != {"A", "B", "tie"}:
                raise ConfigError(f"prompt {self.judge.prompt.name}: pairwise verdicts must be "
                                  f"A, B and tie, got {self.judge.verdicts.texts}")
            missing = {"question", "answer_a", "answer_b"} - set(self.judge.prompt.inputs)
            if missing:
                raise ConfigError(f"prompt {self.judge.prompt.name} lacks the pairwise "
                                  f"input(s) {', '.join(sorted(missing))}")

    def compare(self, question: str, answer_a: str, answer_b: str) -> PairVerdict:
        return self._compare(question, answer_a, answer_b, {})

    def compare_many(self, pairs: Sequence[tuple[str, str, str]]) -> list[PairVerdict]:
        """``pairs`` of (question, answer_a, answer_b); one PairVerdict each, in order."""
        return [self._compare(q, a, b, {"sample": str(i)}) for i, (q, a, b) in enumerate(pairs)]

    def _compare(self, question: str, a: str, b: str, tags: dict[str, str]) -> PairVerdict:
        first = self._ask(question, a, b, {**tags, "order": "ab"})
        second = self._ask(question, b, a, {**tags, "order": "ba"})
        forward = _as_winner(first.value, swapped=False)
        backward = _as_winner(second.value, swapped=True)
        if forward is None or backward is None:
            failed = [f"{order} order: {v.error}" for order, v in (("a-first", first),
                                                                   ("b-first", second))
                      if v.error is not None]
            return PairVerdict(None, forward, backward, (first, second), "; ".join(failed))
        return PairVerdict(combine(forward, backward), forward, backward, (first, second))

    def _ask(self, question: str, first: str, second: str, tags: dict[str, str]) -> Verdict:
        if self.judge is not None:
            return self.judge._ask({"question": question, "answer_a": first,
                                    "answer_b": second}, tags)
        assert self.judge_fn is not None
        reply = self.judge_fn(question, first, second)
        if reply not in ("A", "B", "tie"):
            return Verdict(None, error=f"judge_fn returned {reply!r}, not A, B or tie",
                           text=str(reply))
        return Verdict(reply, text=reply)


def _as_winner(value: Label | None, *, swapped: bool) -> Winner | None:
    if value == "tie":
        return "tie"
    if value in ("A", "B"):
        shown_first = value == "A"
        return "a" if shown_first != swapped else "b"
    return None


# ----- agreement with humans ----------------------------------------------------------------

Weights = Literal["linear", "quadratic"]


@dataclass
class Agreement:
    """How often the judge matched the human labels, and Cohen's kappa (agreement beyond
    chance: 1 perfect, 0 chance level, negative worse than chance; nan when undefined, i.e.
    both raters used one and the same label throughout). Samples the judge failed on are
    ``skipped`` and left out of both numbers."""

    n: int
    accuracy: float
    kappa: float
    skipped: int = 0
    labels: list[Label] = field(default_factory=list)


def cohen_kappa(
    a: Sequence[Label], b: Sequence[Label], *, labels: Sequence[Label] | None = None,
    weights: Weights | None = None,
) -> float:
    """Cohen's kappa between two raters, as ``sklearn.metrics.cohen_kappa_score`` defines it:
    ``1 - sum(w * observed) / sum(w * expected)`` over the confusion matrix, with ``w`` 0 on
    the diagonal and 1 off it, or ``|i - j|`` / ``(i - j)**2`` between label positions for
    ``weights`` linear / quadratic (for ordinal scales; positions follow ``labels``, default
    the sorted labels seen)."""
    if len(a) != len(b):
        raise ConfigError(f"kappa needs equal-length ratings, got {len(a)} and {len(b)}")
    if not a:
        raise ConfigError("kappa needs at least one rated sample")
    order = list(labels) if labels is not None else sorted(set(a) | set(b), key=_sort_key)
    index = {label: i for i, label in enumerate(order)}
    unknown = [x for x in (*a, *b) if x not in index]
    if unknown:
        raise ConfigError(f"rating {unknown[0]!r} is not one of the labels {order}")
    k = len(order)
    observed = np.zeros((k, k))
    np.add.at(observed, ([index[x] for x in a], [index[y] for y in b]), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    pos = np.arange(k)
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights == "linear":
        w = np.abs(pos[:, None] - pos[None, :]).astype(float)
    elif weights == "quadratic":
        w = ((pos[:, None] - pos[None, :]) ** 2).astype(float)
    else:
        raise ConfigError(f"unknown kappa weights {weights!r} (use linear or quadratic)")
    chance = float((w * expected).sum())
    if chance == 0.0:
        return float("nan")
    return 1.0 - float((w * observed).sum()) / chance


def agreement(
    judged: Sequence[Verdict | Label | None], human: Sequence[Label], *,
    weights: Weights | None = None,
) -> Agreement:
    """The judge's agreement with human labels, sample by sample. ``judged`` holds Verdicts
    (or bare labels); a failed verdict (or None) is skipped. Labels compare with ``==``, so
    a scale judge's ints must meet int human labels."""
    if len(judged) != len(human):
        raise ConfigError(f"{len(judged)} judge verdicts but {len(human)} human labels")
    values = [j.value if isinstance(j, Verdict) else j for j in judged]
    pairs = [(v, h) for v, h in zip(values, human, strict=True) if v is not None]
    if not pairs:
        raise ConfigError("no sample has a judge verdict to compare with the human label")
    ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    accuracy = sum(x == y for x, y in pairs) / len(pairs)
    labels = sorted(set(ours) | set(theirs), key=_sort_key)
    return Agreement(n=len(pairs), accuracy=accuracy,
                     kappa=cohen_kappa(ours, theirs, labels=labels, weights=weights),
                     skipped=len(values) - len(pairs), labels=labels)


def _sort_key(label: Label) -> tuple[int, Label]:
    # ints before strings, so a mixed set still sorts instead of raising TypeError.
    return (0, label) if isinstance(label, int) else (1, label)
