"""Retrieval quality and speed on the stdlib docstring benchmark, with bm25s, rank_bm25 and raw
FAISS measured as peers in the same run.

    make bench            # or: .venv/bin/python bench/rag.py [--rerank-queries 50] [--parts ...]

Writes bench/results/rag.json, rewritten after each part so an interrupted run keeps what
finished; a part that did not run says "not measured: <why>" instead of a number.

Corpus: ``build_stdlib_corpus()`` with its defaults (the running interpreter's docstrings, so
the numbers belong to that Python version). Each document is indexed as one chunk (its whole
text, id ``chunk_id(doc_id, 0, text)``): the documents are docstrings, already short, so a
chunker would only split a few long ones and the metrics would need a chunk -> document map.

* quality: for every query, BM25 and dense (flat) candidates from ``Collection.search`` (40
  each, ``retrieve``'s default for hybrid; the query embedded once, in one batched call for all
  queries, since one embedder call per query and mode took minutes on the loaded machine), then
  bm25, dense, hybrid RRF (k=60) and hybrid weighted (minmax, 0.5/0.5) fused by
  ``fmstack.rag.fusion`` exactly as ``retrieve`` does (checked against ``retrieve`` on the
  first 20 queries and recorded), plus dense over an HNSW ``DenseIndex`` built from the same
  stored vectors. nDCG@10, recall@10, MRR (of the top 10) and hit@1 averaged over queries with
  ``fmstack.eval.metrics.retrieval``; HNSW also gets recall@10 against flat's top 10. The
  fusion settings are the library defaults, not tuned (there is no held-out split).
* rerank: SmolLM2 ``LLMReranker`` over the hybrid RRF top 20 (``retrieve(candidates=20,
  reranker=...)``), cut to 10, on a seeded random sample of queries (slow on CPU: about 20
  judgements a query); the same ``retrieve`` call without the reranker on the same queries is
  the baseline, so the delta is paired. Partial results are written after every query.
* bm25_speed: index build (tokenizing included) and per-query latency over all queries for our
  ``BM25Index`` vs bm25s called directly, both through ``BM25.retrieve`` and through the
  low-level calls BM25Index itself makes (its own Tokenizer with the same regex, stopwords and
  stemmer: the tokens are checked equal) vs rank_bm25's ``BM25Okapi`` (fed our tokens); and
  ``Collection.search`` (bm25, chunk rows read from SQLite) on the BM25-only collection.
* dense_speed: query embedding latency (one query per call) and batched throughput, raw FAISS
  flat vs HNSW search latency on the precomputed query vectors (the bare index our DenseIndex
  built, same efSearch), our DenseIndex search on the same vectors, Collection.search (dense,
  given the vector), and flat's top 10 against a numpy brute force.
* indexing: whole-collection ``Collection.upsert`` (chunk, embed, BM25, FAISS, SQLite, atomic
  state switch) for a BM25-only and a BM25 + MiniLM flat collection in a temp FMSTACK_HOME;
  the embedding share (and so the document embedding throughput) is timed from the upsert's
  progress callback, so the corpus is embedded once per run.

Latencies: each query is timed alone (one call, one query) after a warm-up; p50/p99 are over
all timed queries, queries/s = queries / summed latency.

``--parts quality,rerank`` (etc.) re-measures only those parts and keeps the others from the
existing rag.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from models import machine  # bench/models.py's description of the machine

from fmstack.eval.metrics.retrieval import hit_rate_at_k, mrr, ndcg_at_k, recall_at_k
from fmstack.rag.collection import Collection
from fmstack.rag.dense import DenseIndex
from fmstack.rag.documents import Chunk, Document, Hit, chunk_id
from fmstack.rag.fusion import reciprocal_rank_fusion, weighted_score_fusion
from fmstack.rag.pipeline import retrieve
from fmstack.rag.stdlib_corpus import Query, StdlibCorpus, build_stdlib_corpus

OUT = Path(__file__).parent / "results" / "rag.json"
PARTS = ("indexing", "quality", "rerank", "bm25_speed", "dense_speed")
K = 10


def write(results: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, OUT)


def whole_document(doc: Document) -> list[Chunk]:
    return [Chunk(id=chunk_id(doc.id, 0, doc.text), doc_id=doc.id, text=doc.text, start=0,
                  end=len(doc.text), source=doc.source, metadata=dict(doc.metadata))]


def latency(fn: Callable[[Any], object], inputs: Sequence[Any], warmup: int = 5) -> dict[str, Any]:
    """Per-call latency of ``fn`` over ``inputs``, one call each, after ``warmup`` calls."""
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "queries": len(times),
        "mean_ms": round(1000 * statistics.mean(times), 4),
        "p50_ms": round(1000 * statistics.median(times), 4),
        "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 4),
        "queries_per_s": round(len(times) / sum(times), 1),
    }


def best_of(fn: Callable[[], object], repeats: int) -> dict[str, Any]:
    """Wall time of ``fn`` ``repeats`` times (a fresh build each time): min and median."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"repeats": repeats, "min_s": round(min(times), 4),
            "median_s": round(statistics.median(times), 4)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


# ----- quality --------------------------------------------------------------------------------


def scores(ranked: Sequence[Sequence[str]], queries: Sequence[Query]) -> dict[str, Any]:
    """Mean metrics over queries; ``ranked[i]`` is the doc ids retrieved for ``queries[i]``."""
    rows = {"ndcg@10": ndcg_at_k, "recall@10": recall_at_k}
    out: dict[str, Any] = {"queries": len(queries)}
    for name, fn in rows.items():
        out[name] = statistics.mean(fn(list(r), q.relevant, k=K) for r, q in zip(ranked, queries,
                                                                             strict=True))
    out["mrr@10"] = statistics.mean(mrr(list(r), q.relevant, k=K)
                                    for r, q in zip(ranked, queries, strict=True))
    out["hit@1"] = statistics.mean(hit_rate_at_k(list(r), q.relevant, k=1)
                                   for r, q in zip(ranked, queries, strict=True))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def doc_ids(hits: Sequence[Hit]) -> list[str]:
    return [h.chunk.doc_id for h in hits]


def ranked_lists(coll: Collection, text: str, vector: Any, deep: int) -> list[list[Hit]]:
    """BM25 and dense candidates for one query, as ``retrieve`` fetches them; the query's
    vector is embedded once for all modes (batched beforehand: one embedder call per query
    and mode took minutes over 797 queries on the loaded 2-core machine)."""
    return [coll.search(text, deep, "bm25"), coll.search(text, deep, "dense", vector=vector)]


def modes(lists: list[list[Hit]]) -> dict[str, list[Hit]]:
    """Every first-stage mode from the same candidate lists, fused as ``retrieve`` fuses."""
    return {
        "bm25": lists[0][:K],
        "dense_flat": lists[1][:K],
        "hybrid_rrf": reciprocal_rank_fusion(lists, k=60)[:K],
        "hybrid_weighted": weighted_score_fusion(lists, [0.5, 0.5])[:K],
    }


def pipeline_check(coll: Collection, queries: list[Query], qvecs: Any, deep: int) -> str:
    """How many queries get exactly ``retrieve``'s ids from the composition above."""
    same = 0
    for q, v in zip(queries, qvecs, strict=True):
        ours = modes(ranked_lists(coll, q.text, v, deep))
        ref = {
            "bm25": retrieve(coll, q.text, k=K, mode="bm25"),
            "dense_flat": retrieve(coll, q.text, k=K, mode="dense"),
            "hybrid_rrf": retrieve(coll, q.text, k=K, mode="hybrid", fusion="rrf", rrf_k=60),
            "hybrid_weighted": retrieve(coll, q.text, k=K, mode="hybrid", fusion="weighted",
                                        weights=[0.5, 0.5]),
        }
        same += all([h.chunk.id for h in ours[m]] == [h.chunk.id for h in ref[m]] for m in ref)
    return f"{same}/{len(queries)} queries: every mode's top {K} identical to retrieve()"


def quality(flat: Collection, queries: list[Query], qvecs: Any,
            hnsw: DenseIndex) -> dict[str, Any]:
    deep = max(4 * K, 20)  # retrieve's default candidates for hybrid
    start = time.perf_counter()
    ranked: dict[str, list[list[str]]] = {}
    for q, v in zip(queries, qvecs, strict=True):
        for name, hits in modes(ranked_lists(flat, q.text, v, deep)).items():
            ranked.setdefault(name, []).append(doc_ids(hits))
        ranked.setdefault("dense_hnsw", []).append(
            doc_ids(hnsw.search(v, K)))
    out: dict[str, Any] = {
        "how": f"per query: Collection.search bm25 and dense (flat), {deep} candidates each "
               "(retrieve's default for hybrid), the query embedded once; bm25/dense = their "
               f"top {K}; hybrid = fmstack.rag.fusion over both lists, top {K}; dense_hnsw = "
               "DenseIndex(kind=hnsw) built from the collection's stored vectors",
        "pipeline_check": pipeline_check(flat, queries[:20], qvecs[:20], deep),
    }
    for name, lists in ranked.items():
        out[name] = scores(lists, queries)
        print("quality", name, json.dumps(out[name]), flush=True)
    overlap = [len(set(h) & set(f)) / len(f) for h, f in
               zip(ranked["dense_hnsw"], ranked["dense_flat"], strict=True) if f]
    out["dense_hnsw"]["recall@10_vs_flat_top10"] = round(statistics.mean(overlap), 4)
    out["dense_hnsw"]["options"] = (f"M={hnsw.options.hnsw_m} efConstruction="
                                    f"{hnsw.options.ef_construction} efSearch="
                                    f"{hnsw.options.ef_search}")
    best_single = max(out["bm25"]["ndcg@10"], out["dense_flat"]["ndcg@10"])
    out["goal_hybrid_rrf_beats_both_on_ndcg@10"] = out["hybrid_rrf"]["ndcg@10"] > best_single
    out["fusion_held_out"] = held_out_fusion(flat, queries, qvecs, deep)
    out["faiss_recall@10_vs_flat"] = faiss_recall(flat, qvecs, ranked["dense_flat"])
    out["retrieval_seconds"] = round(time.perf_counter() - start, 1)
    return out


def faiss_recall(flat: Collection, qvecs: Any, flat_top: list[list[str]]) -> dict[str, Any]:
    """recall@10 of every FAISS kind against exact search (flat's top 10), each index built
    from the collection's stored vectors with DenseIndex's default options."""
    assert flat.state_dir is not None
    stored = DenseIndex.load(flat.state_dir / "dense", embedder="minilm")
    by_row = {cid: n for n, cid in enumerate(stored.ids)}
    out: dict[str, Any] = {}
    for kind in ("hnsw", "ivf", "ivfpq", "lsh"):
        index = DenseIndex(stored.embedder, kind)
        chunks = [Chunk(id=cid, doc_id=cid, text="", start=0, end=0, source="")
                  for cid in stored.ids]
        index.build(chunks, vectors=stored.vectors[[by_row[c.id] for c in chunks]])
        # flat_top holds document ids; a whole-document chunk's id is "<doc_id>#0-<hash>".
        overlap = [len({cid.rpartition("#")[0] for cid, _ in index.search_ids(v, K)}
                       & set(top)) / len(top)
                   for v, top in zip(qvecs, flat_top, strict=True) if top]
        out[kind] = {"recall@10": round(statistics.mean(overlap), 4),
                     "effective_kind": index.effective_kind,
                     "options": {k: v for k, v in vars(index.options).items() if v is not None}}
    return out


def held_out_fusion(flat: Collection, queries: list[Query], qvecs: Any,
                    deep: int) -> dict[str, Any]:
    """Fusion settings chosen on a random half of the queries (seeded), scored on the other
    half: the honest figure for "hybrid beats both", since the defaults above were not tuned
    and choosing among them on all queries would tune on the test set."""
    import random

    order = list(range(len(queries)))
    random.Random(1).shuffle(order)
    halves = {"tune": sorted(order[: len(order) // 2]), "test": sorted(order[len(order) // 2:])}
    lists = [ranked_lists(flat, q.text, v, deep) for q, v in zip(queries, qvecs, strict=True)]
    def rrf(rrf_k: int) -> Callable[[list[list[Hit]]], list[Hit]]:
        return lambda ls: reciprocal_rank_fusion(ls, k=rrf_k)

    def weighted(w: float, norm: str) -> Callable[[list[list[Hit]]], list[Hit]]:
        return lambda ls: weighted_score_fusion(ls, [w, 1 - w], normalize=norm)  # type: ignore[arg-type]

    candidates: dict[str, Callable[[list[list[Hit]]], list[Hit]]] = {
        "bm25": lambda ls: ls[0], "dense_flat": lambda ls: ls[1]}
    for rrf_k in (1, 5, 10, 20, 60):
        candidates[f"rrf k={rrf_k}"] = rrf(rrf_k)
    for w in (0.3, 0.4, 0.5, 0.6, 0.7):
        for norm in ("minmax", "zscore"):
            candidates[f"weighted {norm} bm25={w}"] = weighted(w, norm)

    def ndcg(name: str, idx: list[int]) -> float:
        return statistics.mean(ndcg_at_k(doc_ids(candidates[name](lists[i])[:K]),
                                         queries[i].relevant, k=K) for i in idx)

    fused = [c for c in candidates if c not in ("bm25", "dense_flat")]
    best_rrf = max((c for c in fused if c.startswith("rrf")), key=lambda c: ndcg(c, halves["tune"]))
    best_any = max(fused, key=lambda c: ndcg(c, halves["tune"]))
    test = {name: round(ndcg(name, halves["test"]), 4)
            for name in dict.fromkeys(["bm25", "dense_flat", "rrf k=60", best_rrf, best_any,
                                       "weighted minmax bm25=0.5"])}
    single = max(test["bm25"], test["dense_flat"])
    return {"split": "queries shuffled with random.Random(1); first half tunes, second tests",
            "queries": {k: len(v) for k, v in halves.items()},
            "chosen_on_tune": {"best_rrf": best_rrf, "best_overall": best_any},
            "ndcg@10_on_test_half": test,
            "best_rrf_beats_both_on_test": test[best_rrf] > single,
            "best_overall_beats_both_on_test": test[best_any] > single}


def rerank(flat: Collection, queries: list[Query], n: int, seed: int, llm_threads: int,
           partial: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from fmstack.models.registry import load_model
    from fmstack.rag.rerank import LLMReranker

    sample = sorted(random.Random(seed).sample(range(len(queries)), min(n, len(queries))))
    subset = [queries[i] for i in sample]
    candidates = 20
    model = load_model("smollm2", trace=False, n_threads=llm_threads)
    reranker = LLMReranker(model)
    out: dict[str, Any] = {
        "sample": f"random.Random({seed}).sample of {len(subset)} of the {len(queries)} "
                  "queries (sorted by id)",
        "reranker": "LLMReranker(smollm2: SmolLM2-135M-Instruct Q4_1, llamacpp, "
                    f"n_threads={llm_threads}), rag-relevance prompt, P(yes) vs P(no)",
        "first_stage": f"retrieve(mode=hybrid, fusion=rrf, rrf_k=60, candidates={candidates}, "
                       f"k={K}): the fused top {candidates} reranked, cut to {K}; the baseline "
                       "is the same call without the reranker",
    }
    base: list[list[str]] = []
    reranked: list[list[str]] = []
    per_query: list[float] = []
    for i, q in enumerate(subset):
        base.append(doc_ids(retrieve(flat, q.text, k=K, mode="hybrid", candidates=candidates)))
        start = time.perf_counter()
        reranked.append(doc_ids(retrieve(flat, q.text, k=K, mode="hybrid",
                                         candidates=candidates, reranker=reranker)))
        per_query.append(time.perf_counter() - start)
        print(f"rerank {i + 1}/{len(subset)} {per_query[-1]:.1f}s", flush=True)
        without, with_ = scores(base, subset[:i + 1]), scores(reranked, subset[:i + 1])
        out.update(
            queries=i + 1,
            hybrid_rrf_without_rerank=without,
            hybrid_rrf_with_llm_rerank=with_,
            delta={m: round(with_[m] - without[m], 4)
                   for m in ("ndcg@10", "recall@10", "mrr@10", "hit@1")},
            seconds_per_query_mean=round(statistics.mean(per_query), 2),
        )
        if i + 1 < len(subset):
            partial({**out, "status": f"partial: {i + 1} of {len(subset)} queries done"})
    model.close()
    return out


# ----- speed ----------------------------------------------------------------------------------


def bm25_speed(chunks: list[Chunk], queries: list[Query], coll: Collection,
               repeats: int, rank_bm25_queries: int | None) -> dict[str, Any]:
    import bm25s
    import numpy as np
    import Stemmer
    from rank_bm25 import BM25Okapi

    from fmstack.rag.bm25 import BM25Index

    texts = [c.indexed_text for c in chunks]
    qtexts = [q.text for q in queries]
    ours = BM25Index()
    build_ours = best_of(lambda: ours.build(chunks), repeats)

    stemmer = Stemmer.Stemmer("english")
    peer: dict[str, Any] = {}

    def build_bm25s() -> None:
        tok = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=stemmer)
        ids = tok.tokenize(texts, show_progress=False, return_as="ids")
        model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        model.index(ids, show_progress=False)
        peer.update(tok=tok, model=model)

    build_peer = best_of(build_bm25s, repeats)
    tok, model = peer["tok"], peer["model"]

    def query_bm25s(text: str) -> list[int]:
        ids = tok.tokenize([text], update_vocab=False, show_progress=False, return_as="ids")
        if not ids[0]:
            return []
        docs, _ = model.retrieve(ids, k=K, show_progress=False, n_threads=1)
        return [int(d) for d in docs[0]]

    def query_bm25s_scores(text: str) -> list[int]:
        # bm25s's low-level calls, the ones BM25Index makes: its overhead is everything else.
        ids = tok.tokenize([text], update_vocab=False, show_progress=False, return_as="ids")
        if not ids[0]:
            return []
        s = model.get_scores(model.get_tokens_ids(ids[0]))
        top = np.argpartition(-s, K - 1)[:K]
        return [int(i) for i in top[np.argsort(-s[top], kind="stable")]]

    corpus_tokens = ours.tokenize(texts)
    okapi: dict[str, Any] = {}

    def build_okapi() -> None:
        okapi["m"] = BM25Okapi(ours.tokenize(texts), k1=1.5, b=0.75)

    build_rank = best_of(build_okapi, repeats)

    def query_okapi(text: str) -> list[int]:
        s = okapi["m"].get_scores(ours.tokenize([text])[0])
        return [int(i) for i in np.argsort(-s, kind="stable")[:K]]

    # The same tokens reach both libraries: checked once, so a ratio compares like with like.
    peer_tokens = tok.tokenize(texts, update_vocab=False, show_progress=False,
                               return_as="string")
    same_tokens = peer_tokens == corpus_tokens
    agree = statistics.mean(
        len({ours.ids[i] for i in query_bm25s(t)} & {c for c, _ in ours.search_ids(t, K)})
        / max(1, len(ours.search_ids(t, K))) for t in qtexts)

    lat_ours = latency(lambda t: ours.search_ids(t, K), qtexts)
    lat_peer = latency(query_bm25s, qtexts)
    lat_low = latency(query_bm25s_scores, qtexts)
    okapi_q = qtexts if rank_bm25_queries is None else qtexts[:rank_bm25_queries]
    lat_okapi = latency(query_okapi, okapi_q)
    lat_coll = latency(lambda t: coll.search(t, K, "bm25"), qtexts)
    return {
        "chunks": len(chunks),
        "settings": "k1=1.5 b=0.75, lucene idf (rank_bm25: BM25Okapi, its own idf), English "
                    "stopwords, Snowball English stemmer; k=10; bm25s retrieve n_threads=1",
        "same_tokens_ours_vs_bm25s": same_tokens,
        "top10_overlap_ours_vs_bm25s": round(agree, 4),
        "build": {"fmstack_BM25Index": build_ours, "bm25s_direct": build_peer,
                  "rank_bm25_BM25Okapi": build_rank},
        "query": {"fmstack_BM25Index.search_ids": lat_ours, "bm25s_direct": lat_peer,
                  "bm25s_direct_get_scores_argpartition": lat_low,
                  "rank_bm25_BM25Okapi": lat_okapi,
                  "fmstack_Collection.search_bm25": lat_coll},
        "ratios": {
            "build_ours_over_bm25s": ratio(build_ours["min_s"], build_peer["min_s"]),
            "build_ours_over_rank_bm25": ratio(build_ours["min_s"], build_rank["min_s"]),
            "query_p50_ours_over_bm25s": ratio(lat_ours["p50_ms"], lat_peer["p50_ms"]),
            "query_mean_ours_over_bm25s": ratio(lat_ours["mean_ms"], lat_peer["mean_ms"]),
            "query_p50_ours_over_bm25s_get_scores": ratio(lat_ours["p50_ms"], lat_low["p50_ms"]),
            "query_mean_ours_over_bm25s_get_scores": ratio(lat_ours["mean_ms"],
                                                           lat_low["mean_ms"]),
            "query_p50_ours_over_rank_bm25": ratio(lat_ours["p50_ms"], lat_okapi["p50_ms"]),
            "query_p50_collection_over_bm25s": ratio(lat_coll["p50_ms"], lat_peer["p50_ms"]),
        },
        # Against the faster of the two ways of calling bm25s, so the goal is not met by
        # comparing with retrieve()'s own per-call overhead alone.
        "goal_query_overhead_over_bm25s_under_20pct":
            lat_ours["mean_ms"] < 1.2 * min(lat_peer["mean_ms"], lat_low["mean_ms"]),
    }


def faiss_kind(kind: str, embedder: Any, chunks: list[Chunk], vectors: Any,
               qvecs: Any) -> dict[str, Any]:
    """Build time from stored vectors, and search latency: the bare FAISS index our
    DenseIndex built (the peer) vs DenseIndex.search_ids on the same query vectors."""
    index = DenseIndex(embedder, kind)
    build = best_of(lambda: index.build(chunks, vectors=vectors), 3)
    raw = index._faiss
    if kind == "hnsw":
        raw.hnsw.efSearch = index.options.ef_search
    rows = list(range(len(qvecs)))
    return {
        "options": "exact inner product" if kind == "flat" else
                   f"M={index.options.hnsw_m} efConstruction={index.options.ef_construction} "
                   f"efSearch={index.options.ef_search}",
        "build_from_vectors": build,
        "faiss_direct_search": latency(lambda i: raw.search(qvecs[i:i + 1], K), rows),
        "fmstack_DenseIndex.search_ids_vector": latency(
            lambda i: index.search_ids(qvecs[i], K), rows),
    }


def dense_speed(chunks: list[Chunk], queries: list[Query], flat: Collection,
                stored: DenseIndex, qvecs: Any, embed_queries: int) -> dict[str, Any]:
    import faiss
    import numpy as np
    import torch

    from fmstack.rag.dense import get_embedder

    embedder = get_embedder("minilm")
    vectors = stored.vectors
    qtexts = [q.text for q in queries][:embed_queries]
    out: dict[str, Any] = {
        "embedder": "minilm (all-MiniLM-L6-v2, 384-d, sentence-transformers, CPU)",
        "torch_threads": torch.get_num_threads(), "faiss_omp_threads": faiss.omp_get_max_threads(),
        "query_embedding_one_at_a_time": latency(lambda t: embedder.embed([t]), qtexts),
    }
    for kind in ("flat", "hnsw"):
        out[kind] = faiss_kind(kind, embedder, chunks, vectors, qvecs)
    out["collection_search_dense_flat_vector"] = latency(
        lambda i: flat.search(queries[i].text, K, "dense", vector=qvecs[i]),
        list(range(len(qvecs))))
    out["ratios"] = {
        "faiss_hnsw_over_flat_p50": ratio(out["hnsw"]["faiss_direct_search"]["p50_ms"],
                                          out["flat"]["faiss_direct_search"]["p50_ms"]),
        "ours_over_faiss_flat_p50": ratio(
            out["flat"]["fmstack_DenseIndex.search_ids_vector"]["p50_ms"],
            out["flat"]["faiss_direct_search"]["p50_ms"]),
        "ours_over_faiss_hnsw_p50": ratio(
            out["hnsw"]["fmstack_DenseIndex.search_ids_vector"]["p50_ms"],
            out["hnsw"]["faiss_direct_search"]["p50_ms"]),
    }
    # Cross-check: our flat index ranks as a numpy brute force over the same vectors (as sets:
    # exact ties may order differently).
    brute = np.argsort(-(qvecs @ np.asarray(vectors).T), axis=1, kind="stable")[:, :K]
    same = [{stored.ids[j] for j in brute[i]} == {c for c, _ in stored.search_ids(qvecs[i], K)}
            for i in range(len(qvecs))]
    out["flat_top10_equals_numpy_bruteforce"] = f"{sum(same)}/{len(same)} queries"
    return out


# ----- collections ----------------------------------------------------------------------------


def build_collections(docs: list[Document], dense: bool = True
                      ) -> tuple[dict[str, Collection], dict[str, Any]]:
    """A BM25-only and a BM25 + MiniLM flat collection, each from one upsert. The embedding
    time inside the upsert is read from its progress callback (first call: embedding starts;
    last: done), so the documents are embedded once for every part of the benchmark."""
    made: dict[str, Collection] = {}
    timings: dict[str, Any] = {}
    for name, embedder in (("stdlib-bm25", None), ("stdlib-flat", "minilm"))[:2 if dense else 1]:
        coll = Collection.create(name, embedder=embedder, dense="flat",
                                 chunker_config={"name": "whole-document"})
        marks: list[tuple[float, int]] = []

        def progress(done: int, total: int, marks: list[tuple[float, int]] = marks) -> None:
            marks.append((time.perf_counter(), done))

        start = time.perf_counter()
        result = coll.upsert(docs, whole_document, progress=progress)
        wall = time.perf_counter() - start
        coll = Collection.open(name)
        row: dict[str, Any] = {
            "dense": None if embedder is None else f"{embedder} flat",
            "documents": result.added, "chunks_embedded": result.chunks_embedded,
            "upsert_s": round(wall, 2), "documents_per_s": round(result.added / wall, 1),
        }
        if marks:
            embed_s = marks[-1][0] - marks[0][0]
            row["embedding_inside_upsert"] = {
                "chunks": marks[-1][1], "seconds": round(embed_s, 2),
                "chunks_per_s": round(marks[-1][1] / embed_s, 2),
                "batch": "64 chunks per DenseIndex batch, sentence-transformers batch_size 32",
            }
            row["upsert_s_without_embedding"] = round(wall - embed_s, 2)
        timings[name] = row
        made[name] = coll
        print("indexing", name, json.dumps(row), flush=True)
    return made, timings


def dense_setup(flat: Collection, chunks: list[Chunk], queries: list[Query]) -> tuple[
        DenseIndex, list[Chunk], Any, dict[str, Any], DenseIndex]:
    """The embeddings the upsert stored (every dense part reuses them), the chunks in their
    row order, all query vectors from one batched call, and an HNSW index over the vectors."""
    from fmstack.rag.dense import get_embedder

    assert flat.state_dir is not None
    by_id = {c.id: c for c in chunks}
    stored = DenseIndex.load(flat.state_dir / "dense", embedder="minilm", chunks=chunks)
    ordered = [by_id[cid] for cid in stored.ids]
    embedder = get_embedder("minilm")
    start = time.perf_counter()
    qvecs = embedder.embed([q.text for q in queries])
    seconds = time.perf_counter() - start
    batched = {"queries": len(queries), "seconds": round(seconds, 2),
               "queries_per_s": round(len(queries) / seconds, 1)}
    hnsw = DenseIndex(embedder, "hnsw")
    hnsw.build(ordered, vectors=stored.vectors)
    return stored, ordered, qvecs, batched, hnsw


def corpus_info(corpus: StdlibCorpus, seconds: float) -> dict[str, Any]:
    words = [len(d.text.split()) for d in corpus.documents]
    return {
        "builder": "fmstack.rag.stdlib_corpus.build_stdlib_corpus() (defaults)",
        "python_version": corpus.python_version,
        "modules": len(corpus.modules),
        "documents": len(corpus.documents),
        "queries": len(corpus.queries),
        "queries_with_several_relevant": sum(len(q.relevant) > 1 for q in corpus.queries),
        "document_words_mean": round(statistics.mean(words), 1),
        "document_words_max": max(words),
        "skipped": corpus.skipped,
        "chunking": "one chunk per document (whole docstring rest); metrics on document ids",
        "build_seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rerank-queries", type=int, default=50,
                    help="queries for the LLM rerank part (about 20 judgements each)")
    ap.add_argument("--rank-bm25-queries", type=int, default=0,
                    help="queries timed for rank_bm25 (0: all)")
    ap.add_argument("--repeats", type=int, default=5, help="index builds timed per library")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rerank query sample")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch and FAISS threads")
    ap.add_argument("--llm-threads", type=int, default=None,
                    help="llama.cpp threads for the reranker (default: --threads)")
    ap.add_argument("--embed-queries", type=int, default=200,
                    help="queries embedded one at a time for the query-embedding latency")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated subset of " + ",".join(PARTS))
    args = ap.parse_args()
    args.llm_threads = args.llm_threads or args.threads
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    results: dict[str, Any] = {}
    if set(parts) != set(PARTS) and OUT.is_file():
        results = json.loads(OUT.read_text())
    command = " ".join([Path(sys.executable).name, *sys.argv])

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    # Settings that differ between runs go in each part's stamp (a --parts run keeps the other
    # parts, measured under their own command); only what every part shares is global.
    results.update(benchmark="rag", machine=machine(),
                   settings={"k": K, "metrics": "means over queries of nDCG@10 (linear gains), "
                             "recall@10, MRR of the top 10, hit@1",
                             "fusion_tuning": "the modes table uses RRF k=60 and weights 0.5/0.5 "
                                              "untuned; quality.fusion_held_out chooses "
                                              "settings on half the queries and scores them "
                                              "on the other half"},
                   notes=[
                       "the 2-core machine was shared with other engineers' tests and "
                       "benchmarks while this ran (1-minute load averages are recorded per "
                       "part): absolute times are pessimistic and noisy; ratios between peers "
                       "timed back to back in the same part are the figures to compare",
                   ])
    for part in parts:
        results[part] = "not measured: not reached yet (interrupted, or out of time)"
    write(results)
    stamp = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
             "threads": {"torch_faiss": args.threads, "llama_cpp": args.llm_threads}}

    start = time.perf_counter()
    corpus = build_stdlib_corpus()
    results["corpus"] = corpus_info(corpus, time.perf_counter() - start)
    write(results)
    docs, queries = corpus.documents, corpus.queries
    chunks = [c for d in docs for c in whole_document(d)]

    with tempfile.TemporaryDirectory() as home:
        os.environ["FMSTACK_HOME"] = home
        start = time.perf_counter()
        # Embedding the corpus is most of the run's time: skip it when no part needs it.
        colls, timings = build_collections(docs, dense=bool(set(parts) - {"bm25_speed"}))
        if "indexing" in parts:
            results["indexing"] = {**timings, "seconds": round(time.perf_counter() - start, 1),
                                   "load_avg_1min_after": round(os.getloadavg()[0], 2),
                                   **stamp}
            write(results)
        part_fns: dict[str, Callable[[], dict[str, Any]]] = {
            "bm25_speed": lambda: bm25_speed(chunks, queries, colls["stdlib-bm25"],
                                             args.repeats, args.rank_bm25_queries or None),
        }
        if "stdlib-flat" in colls:
            flat = colls["stdlib-flat"]
            stored, ordered, qvecs, batched, hnsw = dense_setup(flat, chunks, queries)
            part_fns.update({
                "quality": lambda: quality(flat, queries, qvecs, hnsw),
                "dense_speed": lambda: {"query_embedding_batched": batched,
                                        **dense_speed(ordered, queries, flat, stored, qvecs,
                                                      args.embed_queries)},
                "rerank": lambda: rerank(flat, queries, args.rerank_queries, args.seed,
                                         args.llm_threads,
                                         lambda partial: write({**results, "rerank": {
                                             **partial, **stamp}})),
            })
        for part in ("quality", "bm25_speed", "dense_speed", "rerank"):
            if part not in parts:
                continue
            start = time.perf_counter()
            load = os.getloadavg()[0]
            results[part] = {**part_fns[part](), "seconds": round(time.perf_counter() - start, 1),
                             "load_avg_1min_before_after": [round(load, 2),
                                                            round(os.getloadavg()[0], 2)],
                             **stamp}
            write(results)
            print(part, json.dumps(results[part]), flush=True)
        for coll in colls.values():
            coll.close()


if __name__ == "__main__":
    main()
