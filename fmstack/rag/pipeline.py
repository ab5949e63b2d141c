"""Retrieve-then-generate, composed from the RAG parts: the call path of ``fmstack rag ask``.

``retrieve`` runs one retriever or both (``hybrid``: BM25 and dense, ``candidates`` each,
fused by weighted min-max scores (the default, see DEFAULT_FUSION) or Reciprocal Rank
Fusion), optionally searches the dense index with a HyDE vector, and reranks the fused
candidates before the top-``k`` cut. ``ask`` first
rewrites a follow-up question into a standalone one (when there is a conversation), then
retrieves, then answers with citations (``fmstack.rag.answer``). Every part is a plain
function of its own module; this file only wires them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fmstack.errors import ConfigError
from fmstack.rag.answer import Answer, answer
from fmstack.rag.documents import Hit
from fmstack.rag.fusion import reciprocal_rank_fusion, weighted_score_fusion

if TYPE_CHECKING:
    from fmstack.guard.guard import Guard
    from fmstack.models.base import Model
    from fmstack.models.types import Message
    from fmstack.rag.collection import Collection

Mode = Literal["bm25", "dense", "hybrid"]
MODES: tuple[str, ...] = ("bm25", "dense", "hybrid")


class Reranker(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit], top_k: int | None = None) -> list[Hit]:
        ...


@dataclass
class RagResult:
    """What ``ask`` did: the standalone query it searched, the retrieved hits, the answer."""

    question: str
    query: str
    hits: list[Hit]
    answer: Answer
    hyde: list[str] = field(default_factory=list)  # the hypothetical passages, if any

    @property
    def text(self) -> str:
        return self.answer.text


def default_mode(collection: Collection) -> Mode:
    return "hybrid" if collection.has_dense else "bm25"


# The default fusion for hybrid search. On the stdlib benchmark (bench/rag.py, quality.
# fusion_held_out), settings chosen on half the queries and scored on the other half: weighted
# min-max 0.5/0.5 nDCG@10 0.527, RRF k=1 0.517, RRF k=60 0.498, dense alone 0.511, BM25 0.427.
DEFAULT_FUSION: Literal["rrf", "weighted"] = "weighted"


def retrieve(
    collection: Collection, query: str, *, k: int = 5, mode: Mode | None = None,
    candidates: int | None = None, fusion: Literal["rrf", "weighted"] = DEFAULT_FUSION,
    rrf_k: int = 60, weights: Sequence[float] | None = None,
    where: dict[str, Any] | None = None, reranker: Reranker | None = None,
    hyde_passages: Sequence[str] = (),
) -> list[Hit]:
    """The ``k`` best chunks for ``query`` (see the module doc). ``candidates`` (default
    ``max(4k, 20)`` when fusing or reranking, else ``k``) is how deep each retriever goes."""
    mode = mode or default_mode(collection)
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    if hyde_passages and mode == "bm25":
        raise ConfigError("HyDE works on embeddings: use mode dense or hybrid")
    deep = candidates or (max(4 * k, 20) if mode == "hybrid" or reranker else k)
    if deep < k:
        raise ConfigError(f"candidates ({deep}) must be at least k ({k})")
    vector = None
    if hyde_passages:
        from fmstack.rag.dense import get_embedder
        from fmstack.rag.query import hyde_vector

        info = collection.manifest["embedder"]
        vector = hyde_vector(get_embedder(info["name"]), query, list(hyde_passages))
    lists: list[list[Hit]] = []
    if mode in ("bm25", "hybrid"):
        lists.append(collection.search(query, deep, "bm25", where))
    if mode in ("dense", "hybrid"):
        lists.append(collection.search(query, deep, "dense", where, vector=vector))
    if len(lists) == 1:
        hits = lists[0]
    elif fusion == "rrf":
        hits = reciprocal_rank_fusion(lists, k=rrf_k, weights=weights)
    elif fusion == "weighted":
        hits = weighted_score_fusion(lists, weights)
    else:
        raise ConfigError(f"fusion {fusion!r} is not one of rrf, weighted")
    if reranker is not None:
        return reranker.rerank(query, hits[:deep], top_k=k)
    return hits[:k]


def ask(
    collection: Collection, model: Model, question: str, *,
    conversation: Sequence[Message] = (), rewrite: bool = True, hyde: bool = False,
    k: int = 5, mode: Mode | None = None, reranker: Reranker | None = None,
    where: dict[str, Any] | None = None, min_score: float | None = None,
    on_text: Callable[[str], None] | None = None, prompt: str = "rag-answer",
    fusion: Literal["rrf", "weighted"] = DEFAULT_FUSION, rrf_k: int = 60,
    guard: Guard | None = None, **params: Any,
) -> RagResult:
    """Answer ``question`` from the collection with citations (see the module doc)."""
    from fmstack.rag import query as q

    search = question
    if rewrite and conversation:
        search = q.rewrite_query(model, conversation, question)
    passages = q.hyde(model, search) if hyde else []
    hits = retrieve(collection, search, k=k, mode=mode, reranker=reranker, where=where,
                    hyde_passages=passages, fusion=fusion, rrf_k=rrf_k)
    result = answer(model, question if search == question else search, hits, prompt=prompt,
                    min_score=min_score, on_text=on_text, guard=guard, **params)
    return RagResult(question=question, query=search, hits=hits, answer=result, hyde=passages)
