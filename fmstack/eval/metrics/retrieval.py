"""Retrieval metrics: how well a ranked list of ids matches the judged relevant ones.

Every metric takes ``retrieved`` (ids, best first) and ``relevant`` (a collection of relevant
ids, or a mapping id -> grade as in a qrels row), plus the cutoff ``k`` as a keyword option.
They are per-query scores; the eval runner's mean over cases is the usual corpus figure (the
mean of ``average_precision`` is MAP, the mean of ``mrr`` is MRR).

Definitions (``R`` = relevant ids, ``top_k`` = the first ``k`` retrieved):

* ``hit_rate_at_k``: 1 if any id of ``top_k`` is relevant, else 0;
* ``recall_at_k``: ``|top_k ∩ R| / |R|``;
* ``precision_at_k``: ``|top_k ∩ R| / k``; the denominator is ``k`` even when fewer than
  ``k`` ids were retrieved (as trec_eval's P@k), so returning less is not rewarded;
* ``mrr``: ``1 / rank`` of the first relevant id (within ``k`` if given), 0 if none;
* ``ndcg_at_k``: ``DCG@k / IDCG@k`` with ``DCG = Σ gain_i / log2(i + 1)`` over ranks
  ``i = 1..k``; the gain is the grade itself (linear gains, as trec_eval's ndcg, not the
  ``2^grade - 1`` exponential form) and IDCG is the DCG of the judged grades sorted best first;
* ``average_precision``: ``Σ_{relevant ranks i ≤ k} precision@i / |R|`` (trec_eval's AP; with
  ``k`` it is AP cut at ``k``, still divided by all of ``R``).

Conventions:

* Grades ``<= 0`` mean "judged, not relevant" (qrels often list such rows); a collection of
  ids means grade 1 each.
* A query with no relevant id is an error (``ConfigError``), not a 0 or a 1: every one of
  these metrics is undefined for it, and trec_eval drops such queries rather than scoring
  them. Remove it from the qrels.
* ``k`` larger than the list scores what is there; ids past ``k`` are ignored.
* An id retrieved twice earns credit once, at its first rank: the repeat keeps its slot (it
  still pushes later ids down and counts in precision's denominator) but is not relevant, so
  a retriever cannot score above 1 by repeating a hit.
* The registered metrics accept ``retrieved`` as a JSON array in a string too, since that is
  how the eval runner passes a list field of a JSON output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence

from fmstack.errors import ConfigError
from fmstack.eval.metrics.registry import metric

Relevant = Mapping[str, float] | Collection[str]


def _ids(retrieved: Sequence[str] | str, name: str) -> list[str]:
    if isinstance(retrieved, str):
        try:
            decoded = json.loads(retrieved)
        except json.JSONDecodeError:
            decoded = None
        if not isinstance(decoded, list):
            raise ConfigError(f"{name}: retrieved must be a list of ids (or a JSON array of "
                              f"them), not the text {retrieved[:60]!r}")
        retrieved = decoded
    out = []
    for item in retrieved:
        if not isinstance(item, str):
            raise ConfigError(f"{name}: retrieved ids must be strings, not {item!r}")
        out.append(item)
    return out


def _grades(relevant: Relevant, name: str) -> dict[str, float]:
    """Positive grades only (id -> grade); ConfigError if nothing is relevant."""
    if isinstance(relevant, str):
        raise ConfigError(f"{name}: relevant must be a collection of ids or a mapping "
                          f"id -> grade, not the string {relevant[:60]!r}")
    if isinstance(relevant, Mapping):
        grades = {}
        for doc_id, grade in relevant.items():
            if (isinstance(grade, bool) or not isinstance(grade, int | float)
                    or not math.isfinite(grade)):
                raise ConfigError(f"{name}: grade of {doc_id!r} must be a finite number, "
                                  f"not {grade!r}")
            if grade > 0:
                grades[str(doc_id)] = float(grade)
    else:
        grades = {str(doc_id): 1.0 for doc_id in relevant}
    if not grades:
        raise ConfigError(f"{name}: the query has no relevant documents, so the metric is "
                          "undefined (drop the query from the qrels)")
    return grades


def _check_k(k: int | None, name: str, optional: bool = False) -> None:
    if k is None and optional:
        return
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name}: k must be an integer >= 1, not {k!r}")


def _gains(retrieved: Sequence[str] | str, relevant: Relevant, k: int | None,
           name: str) -> tuple[list[float], dict[str, float]]:
    """The grade earned at each of the first ``k`` ranks (0 for misses and repeats)."""
    _check_k(k, name, optional=True)
    ids = _ids(retrieved, name)
    grades = _grades(relevant, name)
    seen: set[str] = set()
    gains = []
    for doc_id in ids[:k] if k is not None else ids:
        gains.append(grades.get(doc_id, 0.0) if doc_id not in seen else 0.0)
        seen.add(doc_id)
    return gains, grades


@metric("hit_rate_at_k")
def hit_rate_at_k(retrieved: Sequence[str] | str, relevant: Relevant, *, k: int = 10) -> float:
    """1.0 if any of the first k retrieved ids is relevant, else 0.0."""
    _check_k(k, "hit_rate_at_k")
    gains, _ = _gains(retrieved, relevant, k, "hit_rate_at_k")
    return 1.0 if any(g > 0 for g in gains) else 0.0


@metric("recall_at_k")
def recall_at_k(retrieved: Sequence[str] | str, relevant: Relevant, *, k: int = 10) -> float:
    """Share of the relevant ids found in the first k retrieved."""
    _check_k(k, "recall_at_k")
    gains, grades = _gains(retrieved, relevant, k, "recall_at_k")
    return sum(1 for g in gains if g > 0) / len(grades)


@metric("precision_at_k")
def precision_at_k(retrieved: Sequence[str] | str, relevant: Relevant, *, k: int = 10) -> float:
    """Share of the first k ranks holding a relevant id (denominator k, however many came)."""
    _check_k(k, "precision_at_k")
    gains, _ = _gains(retrieved, relevant, k, "precision_at_k")
    return sum(1 for g in gains if g > 0) / k


@metric("mrr")
def mrr(retrieved: Sequence[str] | str, relevant: Relevant, *, k: int | None = None) -> float:
    """Reciprocal rank of the first relevant id (within k if given), 0.0 if there is none."""
    gains, _ = _gains(retrieved, relevant, k, "mrr")
    return next((1.0 / rank for rank, g in enumerate(gains, 1) if g > 0), 0.0)


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))


@metric("ndcg_at_k")
def ndcg_at_k(retrieved: Sequence[str] | str, relevant: Relevant, *, k: int = 10) -> float:
    """Normalized DCG of the first k ranks, linear gains (gain = grade), log2 discount."""
    _check_k(k, "ndcg_at_k")
    gains, grades = _gains(retrieved, relevant, k, "ndcg_at_k")
    ideal = sorted(grades.values(), reverse=True)[:k]
    return _dcg(gains) / _dcg(ideal)


@metric("average_precision")
def average_precision(retrieved: Sequence[str] | str, relevant: Relevant, *,
                      k: int | None = None) -> float:
    """Mean of precision@i over the ranks i of relevant hits, divided by all relevant ids
    (the mean over queries is MAP)."""
    gains, grades = _gains(retrieved, relevant, k, "average_precision")
    found, total = 0, 0.0
    for rank, g in enumerate(gains, 1):
        if g > 0:
            found += 1
            total += found / rank
    return total / len(grades)
