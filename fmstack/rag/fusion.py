"""Hybrid retrieval: merge the ranked lists of several retrievers into one.

* ``reciprocal_rank_fusion`` (Cormack, Clarke & Büttcher, SIGIR 2009): a chunk's score is
  ``Σ_lists w / (k + rank)`` over the lists it appears in. It uses ranks only, so BM25 scores
  (unbounded) and cosine similarities (within [-1, 1]) need no calibration against each other;
  ``k`` (60 in the paper) damps the lead of the very top ranks.
* ``weighted_score_fusion``: each list's scores are normalized (min-max to [0, 1], or z-scores)
  and summed with weights; a chunk missing from a list gets 0 from it. It keeps the score
  gaps RRF throws away, at the price of trusting each retriever's score scale.

Both take lists of ``Hit`` (best first, ``Hit.rank`` 1-based) and return new Hits ranked
1.., ``retriever`` ``"rrf"`` / ``"weighted"``, each carrying the ``Chunk`` object of the first
list it appeared in. Chunks are matched by ``Chunk.id``. Equal fused scores are ordered by chunk
id, so the output never depends on dict or input-list order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from fmstack.errors import ConfigError
from fmstack.rag.documents import Chunk, Hit

Normalize = Literal["minmax", "zscore"] | None


def _weights(weights: Sequence[float] | None, n: int, name: str) -> list[float]:
    if weights is None:
        return [1.0] * n
    values = list(weights)
    if len(values) != n:
        raise ConfigError(f"{name}: {len(values)} weights for {n} rankings")
    for i, w in enumerate(values):
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{name}: weight {i} must be a finite number >= 0, not {w!r}")
    if n and not any(values):
        raise ConfigError(f"{name}: all weights are 0, nothing would be ranked")
    return [float(w) for w in values]


def _check_limit(limit: int | None, name: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{name}: limit must be an integer >= 1, not {limit!r}")


def _ranked(scores: dict[str, float], chunks: dict[str, Chunk], retriever: str,
            limit: int | None) -> list[Hit]:
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))
    if limit is not None:
        order = order[:limit]
    return [Hit(chunk=chunks[cid], score=scores[cid], rank=rank, retriever=retriever)
            for rank, cid in enumerate(order, 1)]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]],
    *,
    k: int = 60,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> list[Hit]:
    """Fuse ranked lists by ``Σ weight / (k + rank)``. ``rank`` is each Hit's own 1-based
    ``rank``; a chunk listed twice in one list counts once, at its best rank."""
    name = "reciprocal_rank_fusion"
    if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k <= 0:
        raise ConfigError(f"{name}: k must be a number > 0, not {k!r}")
    ws = _weights(weights, len(rankings), name)
    _check_limit(limit, name)
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    for i, (hits, w) in enumerate(zip(rankings, ws, strict=True)):
        best: dict[str, int] = {}
        for hit in hits:
            if isinstance(hit.rank, bool) or not isinstance(hit.rank, int) or hit.rank < 1:
                raise ConfigError(f"{name}: ranking {i} has a hit of {hit.chunk.id} with rank "
                                  f"{hit.rank!r}; ranks start at 1")
            cid = hit.chunk.id
            chunks.setdefault(cid, hit.chunk)
            best[cid] = min(best.get(cid, hit.rank), hit.rank)
        for cid, rank in best.items():
            scores[cid] = scores.get(cid, 0.0) + w / (k + rank)
    return _ranked(scores, chunks, "rrf", limit)


def _normalized(hits: Sequence[Hit], normalize: Normalize, name: str, i: int) -> dict[str, float]:
    raw: dict[str, float] = {}
    for hit in hits:
        if (isinstance(hit.score, bool) or not isinstance(hit.score, int | float)
                or not math.isfinite(hit.score)):
            raise ConfigError(f"{name}: ranking {i} has a hit of {hit.chunk.id} with score "
                              f"{hit.score!r}; scores must be finite numbers")
        # A chunk listed twice keeps its best score, as in RRF it keeps its best rank.
        raw[hit.chunk.id] = max(raw.get(hit.chunk.id, -math.inf), float(hit.score))
    if not raw or normalize is None:
        return raw
    values = list(raw.values())
    if normalize == "minmax":
        low, high = min(values), max(values)
        # All scores equal (or a single hit): nothing separates them, and they are this
        # retriever's best, so each gets the top of the range rather than 0.
        if high == low:
            return dict.fromkeys(raw, 1.0)
        return {cid: (s - low) / (high - low) for cid, s in raw.items()}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((s - mean) ** 2 for s in values) / len(values))
    if std == 0:
        return dict.fromkeys(raw, 0.0)
    return {cid: (s - mean) / std for cid, s in raw.items()}


def weighted_score_fusion(
    rankings: Sequence[Sequence[Hit]],
    weights: Sequence[float] | None = None,
    *,
    normalize: Normalize = "minmax",
    limit: int | None = None,
) -> list[Hit]:
    """Fuse ranked lists by ``Σ weight * normalized score``.

    ``normalize``: ``"minmax"`` maps each list to [0, 1] (its worst hit gets 0, like a missing
    chunk; a list whose scores are all equal maps to 1); ``"zscore"`` uses ``(s - mean) / std``
    over the list (population std; an all-equal list maps to 0), so a missing chunk counts as an
    average one of that list; ``None`` sums raw scores (only sensible when the retrievers share
    a scale)."""
    name = "weighted_score_fusion"
    if normalize not in ("minmax", "zscore", None):
        raise ConfigError(f"{name}: normalize must be 'minmax', 'zscore' or None, "
                          f"not {normalize!r}")
    ws = _weights(weights, len(rankings), name)
    _check_limit(limit, name)
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    for i, (hits, w) in enumerate(zip(rankings, ws, strict=True)):
        for hit in hits:
            chunks.setdefault(hit.chunk.id, hit.chunk)
        for cid, s in _normalized(hits, normalize, name, i).items():
            scores[cid] = scores.get(cid, 0.0) + w * s
    # Chunks only in zero-weight lists still appear, with score 0, so no input is dropped.
    for cid in chunks:
        scores.setdefault(cid, 0.0)
    return _ranked(scores, chunks, "weighted", limit)
