"""Query side (rewrite, HyDE) and contextual retrieval, with the real SmolLM2 and MiniLM.

SmolLM2-135M is weak: these tests check structure (a one-line rewrite that is not the prompt,
non-empty passages, contexts set and cached), never answer quality. Model calls are counted in
the trace store, which lives under this test's FMSTACK_HOME."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fmstack.errors import ConfigError
from fmstack.models.types import Message
from fmstack.rag.contextual import (
    TRUNCATION_NOTE,
    ContextCache,
    context_request,
    contextualize,
    count_tokens,
    doc_sha,
    document_view,
)
from fmstack.rag.documents import Chunk, Document, chunk_id
from fmstack.rag.query import _one_line, format_conversation, hyde, hyde_vector, rewrite_query


@pytest.fixture
def traced() -> Iterator[Any]:
    """SmolLM2 writing traces to this test's own store (loading takes ~0.2 s)."""
    from fmstack.models import load_model

    model = load_model("smollm2", n_threads=2)
    yield model
    model.close()


def calls(model: Any) -> int:
    return int(model.tracer.count())


CONVERSATION = [
    Message(role="system", content="You are a helpful assistant."),
    Message(role="user", content="Tell me about Paris."),
    Message(role="assistant", content="Paris is the capital of France,\non the Seine."),
]


# ----- rewrite ---------------------------------------------------------------------------------


def test_no_conversation_returns_the_question_without_a_model_call(traced: Any) -> None:
    assert rewrite_query(traced, [], "What is the population of Paris?") == \
        "What is the population of Paris?"
    only_system = [Message(role="system", content="Be brief.")]
    assert rewrite_query(traced, only_system, "Why?") == "Why?"
    assert calls(traced) == 0
    with pytest.raises(ConfigError, match="question is empty"):
        rewrite_query(traced, CONVERSATION, "  ")


def test_rewrite_is_one_line_and_not_the_prompt(traced: Any) -> None:
    out = rewrite_query(traced, CONVERSATION, "and what about its population?", max_tokens=32)
    assert out.strip() and "\n" not in out
    for prompt_text in ("<conversation>", "<question>", "Standalone question", "rewrite"):
        assert prompt_text not in out
    assert calls(traced) == 1
    [trace] = traced.tracer.list(limit=1)
    assert trace["tags"]["prompt"] == "rag-rewrite"


def test_conversation_transcript_and_answer_cleanup() -> None:
    assert format_conversation(CONVERSATION) == (
        "user: Tell me about Paris.\nassistant: Paris is the capital of France, on the Seine.")
    assert _one_line('\n Standalone question: "What is the population of Paris?"\nmore') == \
        "What is the population of Paris?"
    assert _one_line("   \n") == ""


# ----- HyDE ------------------------------------------------------------------------------------


def test_hyde_passages(traced: Any) -> None:
    passages = hyde(traced, "How do plants make food from sunlight?", n=2, max_tokens=12, seed=3)
    assert len(passages) == 2 and all(p.strip() == p and p for p in passages)
    assert calls(traced) == 1  # both samples in one request
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        hyde(traced, "q", n=0)


@pytest.fixture(scope="module")
def embedder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fmstack.models.embeddings import load_embedder

    return load_embedder("minilm", n_threads=1)


def test_hyde_vector_is_the_normalized_mean(embedder: Any) -> None:
    question = "How do plants make food from sunlight?"
    passages = ["Photosynthesis turns light, water and CO2 into glucose.",
                "Chlorophyll in leaves absorbs sunlight."]
    vector = hyde_vector(embedder, question, passages)
    # Reference: each text embedded on its own, averaged, renormalized.
    rows = np.stack([embedder.embed([t])[0] for t in [question, *passages]])
    expected = rows.mean(axis=0) / np.linalg.norm(rows.mean(axis=0))
    assert vector.shape == (embedder.dim,) and vector.dtype == np.float32
    assert np.allclose(vector, expected, atol=1e-5)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(vector, rows[0], atol=1e-3)  # the passages moved it
    assert np.allclose(hyde_vector(embedder, question, []), rows[0], atol=1e-5)
    with pytest.raises(ConfigError, match="not one string"):
        hyde_vector(embedder, question, "a passage")


# ----- contextual retrieval ----------------------------------------------------------------


def make_doc(text: str, pieces: list[str], doc_id: str = "notes.md") -> tuple[Document,
                                                                               list[Chunk]]:
    doc = Document(id=doc_id, text=text, source=doc_id)
    chunks, at = [], 0
    for n, piece in enumerate(pieces):
        start = text.index(piece, at)
        at = start + len(piece)
        chunks.append(Chunk(id=chunk_id(doc_id, n, piece), doc_id=doc_id, text=piece,
                            start=start, end=at, source=doc_id))
    return doc, chunks


PIECES = [
    "ACME Corp annual report 2023. Chapter 2: results.",
    "Revenue grew by 3% over the previous quarter.",
    "The board approved a dividend of 1 euro per share.",
]


def test_contextualize_sets_contexts_and_caches_them(traced: Any) -> None:
    doc, chunks = make_doc("\n\n".join(PIECES), PIECES)
    seen: list[tuple[int, int]] = []
    out = contextualize(traced, doc, chunks, max_tokens=8,
                        progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert calls(traced) == 3
    assert [c.id for c in out] == [c.id for c in chunks] and all(c.context for c in out)
    for c in out:
        assert c.context is not None and "\n" not in c.context
        assert c.indexed_text == f"{c.context}\n\n{c.text}"
    assert all(c.context is None for c in chunks)  # the inputs are not mutated
    traces = traced.tracer.list(limit=3)
    assert {t["tags"]["prompt"] for t in traces} == {"rag-context"}

    # Re-indexing the same document: every context from the cache, no model call.
    seen.clear()
    again = contextualize(traced, doc, chunks, max_tokens=8,
                          progress=lambda done, total: seen.append((done, total)))
    assert calls(traced) == 3 and seen == [(1, 3), (2, 3), (3, 3)]
    assert [c.context for c in again] == [c.context for c in out]

    # The key holds the document's hash and the prompt version: another version misses.
    with ContextCache() as cache:
        assert len(cache.get(traced.name, "other-version", doc_sha(doc),
                             [c.id for c in chunks])) == 0


def test_document_comes_first_so_the_prefix_is_shared(traced: Any) -> None:
    """Every chunk's rendered prompt starts with the same text, the whole document included,
    which is what lets llama.cpp reuse the document's KV cache across its chunks."""
    from fmstack.prompts.library import PromptLibrary

    doc, chunks = make_doc("\n\n".join(PIECES), PIECES)
    prompt = PromptLibrary().get("rag-context")
    rendered = [traced.render_chat(context_request(prompt, doc.text, c).messages)
                for c in chunks]
    shared = os.path.commonprefix(rendered)  # noqa: RUF071 - strings, not paths
    assert doc.text in shared
    assert all(r[len(shared):].lstrip().startswith(c.text[:10]) or c.text in r[len(shared):]
               for r, c in zip(rendered, chunks, strict=True))


LONG_TEXT = " ".join(
    f"Paragraph {i}: the committee discussed item {i} of the agenda at length." for i in range(150)
)


def test_long_document_is_cut_around_the_chunk(traced: Any) -> None:
    target = "Paragraph 120: the committee discussed item 120 of the agenda at length."
    doc, [chunk] = make_doc(LONG_TEXT, [target])
    view = document_view(traced, doc, chunk, 100)
    assert target in view and view.startswith(TRUNCATION_NOTE) and view.endswith(TRUNCATION_NOTE)
    assert count_tokens(traced, view) <= 100
    assert document_view(traced, doc, chunk, 10_000) == LONG_TEXT


def test_document_longer_than_the_context_window_is_not_an_error() -> None:
    from fmstack.models import load_model

    with load_model("smollm2", n_threads=2, n_ctx=512) as small:
        target = "Paragraph 7: the committee discussed item 7 of the agenda at length."
        doc, [chunk] = make_doc(LONG_TEXT, [target], doc_id="minutes.txt")
        assert count_tokens(small, LONG_TEXT) > 512
        [out] = contextualize(small, doc, [chunk], max_tokens=8, cache=False)
        assert out.context
        assert small.tracer is not None
        [trace] = small.tracer.list(limit=1)
        assert TRUNCATION_NOTE in str(trace["messages"])


def test_contextualize_rejects_a_chunk_of_another_document(traced: Any) -> None:
    doc, chunks = make_doc("\n\n".join(PIECES), PIECES)
    _, [stray] = make_doc("Something else.", ["Something else."], doc_id="other.md")
    with pytest.raises(ConfigError, match=r"belongs to other\.md, not to notes\.md"):
        contextualize(traced, doc, [*chunks, stray])
    assert contextualize(traced, doc, []) == []
    assert calls(traced) == 0
