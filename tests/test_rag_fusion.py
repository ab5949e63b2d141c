"""Fusion against values computed by hand from the formulas: RRF (Cormack et al. 2009,
``Σ 1/(k + r)``) and weighted sums of min-max / z-score normalized scores."""

from __future__ import annotations

import math
import random

import pytest

from fmstack.errors import ConfigError
from fmstack.rag.documents import Chunk, Hit, chunk_id
from fmstack.rag.fusion import reciprocal_rank_fusion, weighted_score_fusion


def _chunk(name: str) -> Chunk:
    text = f"text of {name}"
    return Chunk(id=chunk_id(name, 0, text), doc_id=name, text=text, start=0, end=len(text),
                 source=f"{name}.txt")


CHUNKS = {name: _chunk(name) for name in ("c1", "c2", "c3", "c4")}


def _hits(*pairs: tuple[str, float], retriever: str = "r") -> list[Hit]:
    return [Hit(chunk=CHUNKS[name], score=score, rank=rank, retriever=retriever)
            for rank, (name, score) in enumerate(pairs, 1)]


BM25 = _hits(("c1", 12.0), ("c2", 9.0), ("c3", 3.0), retriever="bm25")
DENSE = _hits(("c3", 0.9), ("c1", 0.8), ("c4", 0.5), retriever="dense")


def _names(hits: list[Hit]) -> list[str]:
    return [h.chunk.doc_id for h in hits]


def test_rrf_by_hand() -> None:
    fused = reciprocal_rank_fusion([BM25, DENSE])
    expected = {"c1": 1 / 61 + 1 / 62, "c3": 1 / 63 + 1 / 61, "c2": 1 / 62, "c4": 1 / 63}
    assert _names(fused) == ["c1", "c3", "c2", "c4"]
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.chunk.doc_id], abs=1e-15)
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    assert {h.retriever for h in fused} == {"rrf"}
    # The fused hit carries the chunk object of the first list it appeared in.
    assert fused[0].chunk is CHUNKS["c1"]


def test_rrf_k_and_weights_by_hand() -> None:
    # k = 1, unweighted: c1 = 1/2 + 1/3 beats c3 = 1/4 + 1/2; with the dense list weighted 2,
    # c3 = 1/4 + 2/2 beats c1 = 1/2 + 2/3.
    assert _names(reciprocal_rank_fusion([BM25, DENSE], k=1))[:2] == ["c1", "c3"]
    fused = reciprocal_rank_fusion([BM25, DENSE], k=1, weights=[1.0, 2.0])
    expected = {"c1": 1 / 2 + 2 / 3, "c3": 1 / 4 + 2 / 2, "c2": 1 / 3, "c4": 2 / 4}
    assert _names(fused) == ["c3", "c1", "c4", "c2"]
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.chunk.doc_id])
    assert _names(reciprocal_rank_fusion([BM25, DENSE], k=1, weights=[1, 2], limit=2)) == [
        "c3", "c1"]


def test_rrf_against_a_direct_formula_on_random_lists() -> None:
    rng = random.Random(3)
    names = [f"d{i}" for i in range(40)]
    chunks = {n: _chunk(n) for n in names}
    for _ in range(50):
        lists = [rng.sample(names, rng.randint(0, 15)) for _ in range(rng.randint(1, 4))]
        weights = [rng.uniform(0, 3) for _ in lists]
        k = rng.randint(1, 100)
        rankings = [[Hit(chunks[n], 0.0, r) for r, n in enumerate(ls, 1)] for ls in lists]
        direct: dict[str, float] = {}
        for ls, w in zip(lists, weights, strict=True):
            for r, n in enumerate(ls, 1):
                direct[chunks[n].id] = direct.get(chunks[n].id, 0.0) + w / (k + r)
        fused = reciprocal_rank_fusion(rankings, k=k, weights=weights)
        assert [h.chunk.id for h in fused] == sorted(direct, key=lambda c: (-direct[c], c))
        assert [h.score for h in fused] == pytest.approx([direct[h.chunk.id] for h in fused])


def test_ties_are_broken_by_chunk_id() -> None:
    a = _hits(("c2", 1.0), ("c1", 0.5))
    b = _hits(("c1", 1.0), ("c2", 0.5))
    ids = sorted([CHUNKS["c1"].id, CHUNKS["c2"].id])
    for fused in (reciprocal_rank_fusion([a, b]), reciprocal_rank_fusion([b, a]),
                  weighted_score_fusion([a, b]), weighted_score_fusion([b, a])):
        assert fused[0].score == fused[1].score
        assert [h.chunk.id for h in fused] == ids


def test_rrf_repeat_in_one_list_counts_once_at_best_rank() -> None:
    repeated = [Hit(CHUNKS["c1"], 1.0, 1), Hit(CHUNKS["c1"], 1.0, 3), Hit(CHUNKS["c2"], 1.0, 2)]
    fused = reciprocal_rank_fusion([repeated])
    assert [(h.chunk.doc_id, h.score) for h in fused] == [("c1", 1 / 61), ("c2", 1 / 62)]


def test_weighted_minmax_by_hand() -> None:
    # BM25 12, 9, 3 -> 1, 2/3, 0; dense 0.9, 0.8, 0.5 -> 1, 0.75, 0; missing chunks get 0.
    fused = weighted_score_fusion([BM25, DENSE], [0.3, 0.7])
    expected = {"c1": 0.3 * 1 + 0.7 * 0.75, "c2": 0.3 * (6 / 9), "c3": 0.3 * 0 + 0.7 * 1,
                "c4": 0.0}
    assert _names(fused) == ["c1", "c3", "c2", "c4"]
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.chunk.doc_id])
    assert {h.retriever for h in fused} == {"weighted"}
    assert [h.rank for h in fused] == [1, 2, 3, 4]


def test_weighted_zscore_and_raw_by_hand() -> None:
    def z(values: list[float]) -> list[float]:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [(v - mean) / std for v in values]

    zb, zd = z([12.0, 9.0, 3.0]), z([0.9, 0.8, 0.5])
    expected = {"c1": zb[0] + 2 * zd[1], "c2": zb[1], "c3": zb[2] + 2 * zd[0], "c4": 2 * zd[2]}
    fused = weighted_score_fusion([BM25, DENSE], [1, 2], normalize="zscore")
    assert {h.chunk.doc_id: h.score for h in fused} == pytest.approx(expected)
    assert _names(fused) == sorted(expected, key=lambda n: -expected[n])

    raw = weighted_score_fusion([BM25, DENSE], [1, 10], normalize=None)
    assert {h.chunk.doc_id: h.score for h in raw} == pytest.approx(
        {"c1": 12 + 8.0, "c2": 9.0, "c3": 3 + 9.0, "c4": 5.0})


def test_weighted_degenerate_lists() -> None:
    single = _hits(("c4", 7.0))
    fused = weighted_score_fusion([BM25, single])  # one hit: min == max -> 1
    assert {h.chunk.doc_id: h.score for h in fused} == pytest.approx(
        {"c1": 1.0, "c2": 2 / 3, "c3": 0.0, "c4": 1.0})
    flat = _hits(("c1", 2.0), ("c2", 2.0))
    assert [h.score for h in weighted_score_fusion([flat], normalize="zscore")] == [0.0, 0.0]
    # A zero-weight list's chunks stay in the output with score 0.
    fused = weighted_score_fusion([BM25, DENSE], [1, 0])
    assert {h.chunk.doc_id: h.score for h in fused}["c4"] == 0.0
    assert weighted_score_fusion([[], []]) == []
    assert reciprocal_rank_fusion([]) == []


def test_validation_errors() -> None:
    for k in (0, -5, float("nan")):
        with pytest.raises(ConfigError, match="k must be a number > 0"):
            reciprocal_rank_fusion([BM25], k=k)  # type: ignore[arg-type]
    for fuse in (reciprocal_rank_fusion, weighted_score_fusion):
        with pytest.raises(ConfigError, match="1 weights for 2 rankings"):
            fuse([BM25, DENSE], weights=[1.0])
        with pytest.raises(ConfigError, match="weight 1 must be a finite number >= 0"):
            fuse([BM25, DENSE], weights=[1.0, -0.5])
        with pytest.raises(ConfigError, match="all weights are 0"):
            fuse([BM25, DENSE], weights=[0, 0])
        with pytest.raises(ConfigError, match="limit must be an integer >= 1"):
            fuse([BM25], limit=0)
    with pytest.raises(ConfigError, match="normalize must be"):
        weighted_score_fusion([BM25], normalize="softmax")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ranks start at 1"):
        reciprocal_rank_fusion([[Hit(CHUNKS["c1"], 1.0, 0)]])
    with pytest.raises(ConfigError, match="scores must be finite"):
        weighted_score_fusion([[Hit(CHUNKS["c1"], float("nan"), 1)]])
