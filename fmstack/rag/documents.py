"""The two records every RAG part passes around: a loaded ``Document`` and its ``Chunk``s.

Ids are content-derived so that re-indexing the same files gives the same ids (qrels, eval
cache entries and citations stay valid): a document's id is its source (a path relative to the
loaded root, or ``file.jsonl#row``), a chunk's id is ``<doc_id>#<n>-<hash>``, where ``n`` is its
position in the document and ``hash`` is the first 10 hex digits of sha256 of its text, so an
edited chunk gets a new id while its untouched neighbours keep theirs only if their text and
position did not change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """A loaded source: its text, where it came from, and metadata (file type, title, row
    fields, ...). ``id`` is stable across loads of the same source."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of a document that is indexed and retrieved. ``start``/``end`` are character
    offsets into the document's text (``doc.text[start:end] == text`` unless a chunker
    rewrites text, e.g. contextual retrieval prepends a context, which goes in ``context``).
    ``metadata`` starts as the document's and may gain chunker fields (``headings``)."""

    id: str
    doc_id: str
    text: str
    start: int
    end: int
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    context: str | None = None  # contextual retrieval: a model-written situating sentence

    @property
    def indexed_text(self) -> str:
        """What BM25 and the embedder see: the context (if any) before the chunk's text."""
        return f"{self.context}\n\n{self.text}" if self.context else self.text


def chunk_id(doc_id: str, n: int, text: str) -> str:
    """``<doc_id>#<n>-<sha256(text)[:10]>``: stable for unchanged content at the same place."""
    return f"{doc_id}#{n}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


@dataclass
class Hit:
    """A retrieved chunk with its score from one retriever (higher is better) and its rank
    (1-based) in that retriever's list. Fusion and reranking produce new Hits."""

    chunk: Chunk
    score: float
    rank: int
    retriever: str = ""
