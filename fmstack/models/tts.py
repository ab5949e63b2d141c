"""Test-time compute: spend more samples to get a better answer.

* ``best_of_n`` samples N candidates and keeps the one a scorer likes best; the default scorer
  is the candidate's mean token logprob (the model's own confidence, length-normalised so
  short answers are not favoured just for being short).
* ``self_consistency`` samples N answers and returns the majority (Wang et al., 2022), after
  an optional ``extract`` step that maps a full answer to what is voted on (e.g. the number
  at the end of a math solution).

Both issue a single request with ``n=N`` so a batching backend decodes the samples together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from fmstack.errors import ConfigError
from fmstack.models.base import Model
from fmstack.models.types import Choice, Completion, Request

Scorer = Callable[[Choice], float]


def mean_logprob(choice: Choice) -> float:
    """The default best-of-N scorer: mean logprob of the sampled tokens."""
    return choice.mean_logprob


@dataclass
class BestOfN:
    best: Choice
    scores: list[float]  # one per candidate, in completion.choices order
    completion: Completion  # all candidates, with usage and cost of the whole search

    @property
    def text(self) -> str:
        return self.best.text


def best_of_n(model: Model, request: Request, n: int, scorer: Scorer | None = None) -> BestOfN:
    """Sample ``n`` candidates for ``request`` and return the best by ``scorer``."""
    if n < 1:
        raise ConfigError(f"best-of-N needs n >= 1, got {n}")
    if request.params.temperature == 0.0 and n > 1:
        raise ConfigError("best-of-N with temperature 0 samples the same answer n times; "
                          "set temperature > 0")
    needs_logprobs = scorer is None
    params = request.params.model_copy(
        update={"n": n, "logprobs": request.params.logprobs or needs_logprobs}
    )
    completion = model.complete(request.model_copy(update={"params": params}))
    score = scorer or mean_logprob
    scores = [score(c) for c in completion.choices]
    best = max(range(len(scores)), key=lambda i: scores[i])
    return BestOfN(best=completion.choices[best], scores=scores, completion=completion)


@dataclass
class Vote:
    answer: str | None  # None when no sample produced an extractable answer
    counts: dict[str, int]  # answer -> votes, most common first
    answers: list[str | None]  # the extracted answer of each sample, in order
    completion: Completion

    @property
    def agreement(self) -> float:
        """Share of samples that voted for the winning answer."""
        if self.answer is None:
            return 0.0
        return self.counts[self.answer] / len(self.answers)


def self_consistency(
    model: Model,
    request: Request,
    n: int,
    extract: Callable[[str], str | None] | None = None,
) -> Vote:
    """Sample ``n`` answers and return the most common one (ties: the earliest sampled)."""
    if n < 1:
        raise ConfigError(f"self-consistency needs n >= 1, got {n}")
    params = request.params.model_copy(update={"n": n})
    completion = model.complete(request.model_copy(update={"params": params}))
    get = extract or (lambda text: text.strip())
    answers = [get(c.text) for c in completion.choices]
    counts = Counter(a for a in answers if a is not None)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], answers.index(kv[0]))))
    winner = next(iter(ordered), None)
    return Vote(answer=winner, counts=ordered, answers=answers, completion=completion)
