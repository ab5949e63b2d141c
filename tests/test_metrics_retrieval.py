"""Retrieval metrics against values worked out by hand from their definitions, and nDCG against
an independent implementation over random rankings."""

from __future__ import annotations

import math
import random

import pytest

from fmstack.errors import ConfigError
from fmstack.eval.metrics import get_metric
from fmstack.eval.metrics.retrieval import (
    average_precision,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

# Ranks:        1    2    3    4    5    6
RETRIEVED = ["a", "x", "b", "y", "z", "c"]
RELEVANT = {"a", "b", "c", "d"}  # d is never retrieved


def test_binary_metrics_by_hand() -> None:
    # Relevant at ranks 1, 3, 6; |R| = 4.
    assert hit_rate_at_k(RETRIEVED, RELEVANT, k=1) == 1.0
    assert hit_rate_at_k(["x", "y", "a"], RELEVANT, k=2) == 0.0
    assert hit_rate_at_k(["x", "y", "a"], RELEVANT, k=3) == 1.0
    assert recall_at_k(RETRIEVED, RELEVANT, k=3) == pytest.approx(2 / 4)
    assert recall_at_k(RETRIEVED, RELEVANT, k=6) == pytest.approx(3 / 4)
    assert precision_at_k(RETRIEVED, RELEVANT, k=3) == pytest.approx(2 / 3)
    assert precision_at_k(RETRIEVED, RELEVANT, k=5) == pytest.approx(2 / 5)
    assert mrr(RETRIEVED, RELEVANT) == 1.0
    assert mrr(["x", "y", "b"], RELEVANT) == pytest.approx(1 / 3)
    assert mrr(["x", "y", "b"], RELEVANT, k=2) == 0.0
    # AP = (1/1 + 2/3 + 3/6) / 4
    assert average_precision(RETRIEVED, RELEVANT) == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    # Cut at 3: the hit at rank 6 is gone, the denominator stays |R| = 4.
    assert average_precision(RETRIEVED, RELEVANT, k=3) == pytest.approx((1 + 2 / 3) / 4)


def test_ndcg_graded_by_hand() -> None:
    grades = {"a": 3, "b": 2, "c": 1, "n": 0}
    # Retrieved b, n, a: DCG@3 = 2/log2(2) + 0/log2(3) + 3/log2(4) = 2 + 1.5 = 3.5
    # Ideal a, b, c:   IDCG@3 = 3 + 2/log2(3) + 1/2
    expected = 3.5 / (3 + 2 / math.log2(3) + 0.5)
    assert ndcg_at_k(["b", "n", "a"], grades, k=3) == pytest.approx(expected)
    # k=1: the ideal list is cut at 1 too: 2 / 3.
    assert ndcg_at_k(["b", "n", "a"], grades, k=1) == pytest.approx(2 / 3)
    assert ndcg_at_k(["a", "b", "c"], grades, k=3) == pytest.approx(1.0)
    # Linear gains, not 2^g - 1: with exponential gains this would be (7 + 0) / (7 + 3/log2 3).
    assert ndcg_at_k(["a", "x", "b"], {"a": 3, "b": 2}, k=3) == pytest.approx(
        (3 + 2 / 2) / (3 + 2 / math.log2(3)))


def _reference_ndcg(retrieved: list[str], grades: dict[str, int], k: int) -> float:
    """Written differently on purpose: ideal DCG from sorting a gain vector, discounts from a
    precomputed table, repeats removed before cutting at k (plus padding with zero gains)."""
    discounts = [1 / math.log2(i + 2) for i in range(k)]
    seen: list[str] = []
    vector = []
    for doc in retrieved:
        vector.append(0 if doc in seen else grades.get(doc, 0))
        seen.append(doc)
    vector = (vector + [0] * k)[:k]
    ideal = (sorted((g for g in grades.values() if g > 0), reverse=True) + [0] * k)[:k]
    dcg = sum(g * d for g, d in zip(vector, discounts, strict=True))
    idcg = sum(g * d for g, d in zip(ideal, discounts, strict=True))
    return dcg / idcg


def test_ndcg_matches_an_independent_implementation_on_random_rankings() -> None:
    rng = random.Random(7)
    pool = [f"d{i}" for i in range(30)]
    for _ in range(300):
        judged = rng.sample(pool, rng.randint(1, 12))
        grades = {d: rng.randint(0, 3) for d in judged}
        if not any(grades.values()):
            grades[judged[0]] = 1
        # Repeats allowed: retrieval lists built with replacement.
        retrieved = [rng.choice(pool) for _ in range(rng.randint(0, 20))]
        k = rng.randint(1, 25)
        assert ndcg_at_k(retrieved, grades, k=k) == pytest.approx(
            _reference_ndcg(retrieved, grades, k), abs=1e-12)


def test_edge_cases() -> None:
    # k beyond the list: scored on what is there; precision still divides by k.
    assert recall_at_k(["a"], {"a"}, k=100) == 1.0
    assert precision_at_k(["a"], {"a"}, k=10) == pytest.approx(0.1)
    assert ndcg_at_k(["a"], {"a"}, k=50) == 1.0
    # An empty list scores 0, not an error.
    assert recall_at_k([], {"a"}, k=5) == 0.0
    assert mrr([], {"a"}) == 0.0
    # Repeats earn once, keep their slot.
    assert precision_at_k(["a", "a", "a"], {"a"}, k=3) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "a"], {"a", "b"}, k=2) == pytest.approx(0.5)
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}, k=3) == pytest.approx(
        (1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert average_precision(["a", "a", "b"], {"a", "b"}) == pytest.approx((1 + 2 / 3) / 2)
    # Grades <= 0 are judged non-relevant.
    assert recall_at_k(["n", "a"], {"a": 1, "n": 0, "m": -1}, k=1) == 0.0
    assert recall_at_k(["n", "a"], {"a": 1, "n": 0, "m": -1}, k=2) == 1.0


@pytest.mark.parametrize("fn", [hit_rate_at_k, recall_at_k, precision_at_k, mrr, ndcg_at_k,
                                average_precision])
def test_no_relevant_documents_is_an_error(fn: object) -> None:
    with pytest.raises(ConfigError, match="no relevant documents"):
        fn(["a"], set())  # type: ignore[operator]
    with pytest.raises(ConfigError, match="no relevant documents"):
        fn(["a"], {"a": 0})  # type: ignore[operator]


def test_bad_inputs() -> None:
    for k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="k must be an integer >= 1"):
            recall_at_k(["a"], {"a"}, k=k)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be"):
        mrr(["a"], {"a"}, k=0)
    with pytest.raises(ConfigError, match="grade of 'a' must be a finite number"):
        ndcg_at_k(["a"], {"a": float("nan")})
    with pytest.raises(ConfigError, match="relevant must be a collection"):
        recall_at_k(["a"], "a")
    with pytest.raises(ConfigError, match="ids must be strings"):
        recall_at_k([1], {"a"})  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="JSON array"):
        recall_at_k("a, b", {"a"})


def test_registered_for_suites() -> None:
    """A suite names them; the runner passes (prediction, reference) and k as an option, and a
    list field of a JSON output arrives as JSON text."""
    for name in ("hit_rate_at_k", "recall_at_k", "precision_at_k", "mrr", "ndcg_at_k",
                 "average_precision"):
        spec = get_metric(name)
        assert spec.inputs == ("prediction", "reference")
        assert spec.level == "sample"
        assert (spec.low, spec.high, spec.higher_is_better) == (0.0, 1.0, True)
    spec = get_metric("recall_at_k")
    assert spec('["x", "a", "b"]', ["a", "b", "c"], k=2) == pytest.approx(1 / 3)
    assert get_metric("ndcg_at_k")('["b", "n", "a"]', {"a": 3, "b": 2, "c": 1},
                                   k=1) == pytest.approx(2 / 3)
