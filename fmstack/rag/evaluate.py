"""A retriever as an eval suite: qrels in, a stored eval run with retrieval metrics out.

Each query of a qrels file (``fmstack.rag.stdlib_corpus.read_qrels`` format) is a case; the
suite's target retrieves from the collection and returns the *document* ids of the hits in
rank order (the first chunk of a document decides its rank), which hit rate, recall,
precision, MRR and nDCG at ``k`` score against the query's graded relevant documents. The run
is stored like any other (``fmstack eval show / report / compare``) and cached under the
target's fingerprint: the collection's state, mode, k and reranker, so re-indexing or changing
a setting re-runs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.eval.suite import Case, InlinePromptConfig, MetricConfig, Suite

if TYPE_CHECKING:
    from fmstack.models.types import Request
    from fmstack.rag.collection import Collection

METRICS = ("hit_rate_at_k", "recall_at_k", "precision_at_k", "mrr", "ndcg_at_k")


class RetrievalTarget:
    """The suite target: ``(model, request, case) -> {"final", "retrieved", "chunks"}``."""

    def __init__(self, collection: str, *, k: int, mode: str | None,
                 rerank: str | None = None, fusion: str = "weighted", rrf_k: int = 60) -> None:
        from fmstack.rag.collection import Collection

        self.collection: Collection = Collection.open(collection)
        self.k, self.mode, self.rerank, self.fusion, self.rrf_k = k, mode, rerank, fusion, rrf_k
        self._reranker: Any = None
        self.__qualname__ = f"RetrievalTarget[{collection}]"
        state = {"collection": collection, "state": self.collection.manifest.get("state"),
                 "updated": self.collection.manifest.get("updated"), "k": k, "mode": mode,
                 "rerank": rerank, "fusion": fusion, "rrf_k": rrf_k}
        self.fingerprint = hashlib.sha256(json.dumps(state, sort_keys=True).encode()
                                          ).hexdigest()[:12]

    def __call__(self, model: Any, request: Request, case: Case) -> dict[str, Any]:
        from fmstack.rag.pipeline import retrieve

        if self.rerank and self._reranker is None:
            from fmstack.rag.rerank import get_reranker

            self._reranker = get_reranker(self.rerank)
        hits = retrieve(self.collection, str(case.vars["query"]), k=self.k,
                        mode=self.mode, reranker=self._reranker,  # type: ignore[arg-type]
                        fusion=self.fusion, rrf_k=self.rrf_k)  # type: ignore[arg-type]
        docs = list(dict.fromkeys(h.chunk.doc_id for h in hits))
        return {"final": hits[0].chunk.text if hits else "", "retrieved": docs,
                "chunks": [h.chunk.id for h in hits]}


def retrieval_suite(collection: str, qrels: str | Path, *, k: int = 10,
                    mode: str | None = None, rerank: str | None = None,
                    limit: int | None = None, fusion: str = "weighted",
                    rrf_k: int = 60) -> Suite:
    """The suite for ``fmstack rag eval`` (see the module doc)."""
    from fmstack.rag.stdlib_corpus import read_qrels

    queries = read_qrels(qrels)[:limit]
    cases = [Case(id=q.id, vars={"query": q.text}, expected=q.relevant) for q in queries]
    target = RetrievalTarget(collection, k=k, mode=mode, rerank=rerank, fusion=fusion,
                             rrf_k=rrf_k)
    return Suite(
        name=f"rag-{collection}",
        description=f"retrieval on {Path(qrels).name}: mode {mode or 'default'}, k={k}, "
                    f"fusion {fusion}" + (f" (k={rrf_k})" if fusion == "rrf" else "")
                    + (f", rerank {rerank}" if rerank else ""),
        prompts=[InlinePromptConfig(name="query", user="{{ query }}")],
        cases=cases, target=target, concurrency=1,
        metrics=[MetricConfig.model_validate({"name": m, "field": "retrieved", "label": m,
                                              **({} if m == "mrr" else {"k": k})})
                 for m in METRICS],
    )
