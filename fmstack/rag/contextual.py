"""Contextual retrieval (Anthropic, "Introducing Contextual Retrieval", 2024).

A chunk cut out of a document often lacks what makes it findable ("Its revenue grew 3%":
whose? when?). At index time a model reads the whole document and the chunk and writes one or
two sentences situating the chunk; that context goes in ``Chunk.context`` and is prepended to
the chunk's text for both BM25 and dense indexing (``Chunk.indexed_text``).

Cost, and how it is kept down:

* **Prefix reuse.** The ``rag-context`` prompt puts the document before the chunk, so every
  chunk of one document renders to the same text up to ``<chunk>``. The llama.cpp backend keeps
  the KV cache of the previous prompt and decodes only what differs, so the document is read
  once per document, not once per chunk (as prompt caching does for hosted APIs). Chunks are
  processed in document order, one document at a time, to keep that prefix warm.
* **A cache on disk.** Contexts are stored in SQLite under ``fmstack.config.cache_dir()``,
  keyed by (model name, prompt version, sha256 of the document text, chunk id), so re-indexing
  an unchanged corpus makes no model calls, and editing the prompt file or the document
  recomputes exactly what it invalidates. A context is written as soon as it is made, so an
  interrupted run resumes where it stopped. The model is identified by its name (an alias or
  URI): two different files loaded under one alias would share entries.
* **Long documents** that do not fit the context window with the chunk and the answer are cut
  to a window around the chunk, with a note saying so; that is never an error. Different
  windows per chunk lose the prefix reuse, which only long documents pay for.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.config import cache_dir
from fmstack.errors import CapabilityError, ConfigError
from fmstack.prompts.library import get_prompt
from fmstack.rag.documents import Chunk, Document

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.models.types import Request
    from fmstack.prompts.files import PromptFile

Progress = Callable[[int, int], None]  # (chunks done, chunks in total)

TRUNCATION_NOTE = "[... document truncated: only the part around the chunk is shown ...]"
# Room left for the chat template, the instructions and a margin when sizing the document.
_OVERHEAD_TOKENS = 64
_DEFAULT_CONTEXT_LENGTH = 4096  # for models that do not say (remote APIs)


def doc_sha(doc: Document) -> str:
    return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()


class ContextCache:
    """The SQLite table of contexts already written. Cheap to open; one file per cache dir."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "rag_contexts.sqlite"
        self._conn = sqlite3.connect(self.path, timeout=30)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS contexts (model TEXT NOT NULL, prompt_version TEXT NOT "
            "NULL, doc_sha TEXT NOT NULL, chunk_id TEXT NOT NULL, context TEXT NOT NULL, "
            "PRIMARY KEY (model, prompt_version, doc_sha, chunk_id))"
        )
        self._conn.commit()

    def get(self, model: str, version: str, sha: str, chunk_ids: list[str]) -> dict[str, str]:
        """The cached contexts among ``chunk_ids``, by chunk id."""
        rows = self._conn.execute(
            "SELECT chunk_id, context FROM contexts WHERE model = ? AND prompt_version = ? "
            "AND doc_sha = ?", (model, version, sha),
        ).fetchall()
        wanted = set(chunk_ids)
        return {cid: text for cid, text in rows if cid in wanted}

    def put(self, model: str, version: str, sha: str, chunk_id: str, context: str) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO contexts VALUES (?, ?, ?, ?, ?)",
                               (model, version, sha, chunk_id, context))

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM contexts").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ContextCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_span(doc: Document, chunk: Chunk) -> tuple[int, int]:
    """Where the chunk lies in the document's text: its offsets when they hold, else where its
    text is found, else the start (a chunker that rewrote the text)."""
    if 0 <= chunk.start <= chunk.end <= len(doc.text) and \
            doc.text[chunk.start:chunk.end] == chunk.text:
        return chunk.start, chunk.end
    at = doc.text.find(chunk.text)
    return (at, at + len(chunk.text)) if at >= 0 else (0, 0)


def count_tokens(model: Model, text: str) -> int:
    """Tokens of ``text`` under ``model``; about 4 characters a token for a model that cannot
    tokenize (a remote API), which is what sizing a window needs, not an exact count."""
    if model.capabilities.tokenize:
        try:
            return len(model.tokenize(text))
        except CapabilityError:
            pass
    return (len(text) + 3) // 4


def document_view(model: Model, doc: Document, chunk: Chunk, max_doc_tokens: int,
                  doc_tokens: int | None = None) -> str:
    """The document as the prompt shows it for ``chunk``: the whole text when it fits in
    ``max_doc_tokens``, else a window of about that many tokens centred on the chunk, with
    ``TRUNCATION_NOTE`` where text was cut. ``doc_tokens`` saves re-counting the document."""
    text = doc.text
    n_tokens = count_tokens(model, text) if doc_tokens is None else doc_tokens
    if n_tokens <= max_doc_tokens:
        return text
    start, end = _chunk_span(doc, chunk)
    # Size the window in characters from the document's own chars-per-token, then shrink it
    # until it fits: tokenizing a few candidate windows is cheap next to generating.
    chars = int(len(text) * max_doc_tokens / n_tokens)
    while chars > 0:
        middle = (start + end) // 2
        lo = max(0, min(middle - chars // 2, len(text) - chars))
        hi = min(len(text), lo + chars)
        window = text[lo:hi]
        view = (TRUNCATION_NOTE + "\n" if lo > 0 else "") + window + \
            ("\n" + TRUNCATION_NOTE if hi < len(text) else "")
        if count_tokens(model, view) <= max_doc_tokens:
            return view
        chars = int(chars * 0.9)
    return TRUNCATION_NOTE


def context_request(
    prompt: PromptFile, document: str, chunk: Chunk, **params: Any
) -> Request:
    """The request that asks for ``chunk``'s context, the document first (see module doc)."""
    return prompt.request({"document": document, "chunk": chunk.text}, **params)


def _clean(text: str) -> str:
    # One paragraph: the context is prepended to the chunk, and stray blank lines would
    # blur where the context ends and the chunk begins.
    return " ".join(text.split())


def contextualize(
    model: Model,
    doc: Document,
    chunks: list[Chunk],
    *,
    prompt: str | PromptFile = "rag-context",
    max_doc_tokens: int | None = None,
    progress: Progress | None = None,
    cache: bool = True,
    **params: Any,
) -> list[Chunk]:
    """Copies of ``chunks`` (all of ``doc``) with ``context`` set by ``model``.

    ``max_doc_tokens`` caps the document's share of the prompt (default: what the context
    window leaves after the chunk, the answer's ``max_tokens`` and the instructions).
    ``progress(done, total)`` is called after each chunk, cached ones included. ``cache=False``
    neither reads nor writes the cache. ``params`` override the prompt's sampling params."""
    for c in chunks:
        if c.doc_id != doc.id:
            raise ConfigError(f"contextualize: chunk {c.id} belongs to {c.doc_id}, "
                              f"not to {doc.id} ({doc.source})")
    if max_doc_tokens is not None and (isinstance(max_doc_tokens, bool)
                                       or not isinstance(max_doc_tokens, int)
                                       or max_doc_tokens < 1):
        raise ConfigError(f"contextualize: max_doc_tokens must be an integer >= 1, "
                          f"not {max_doc_tokens!r}")
    prompt_file = get_prompt(prompt)
    missing_inputs = {"document", "chunk"} - set(prompt_file.inputs)
    if missing_inputs:
        raise ConfigError(f"{prompt_file.where}: a context prompt needs the inputs document "
                          f"and chunk (missing: {', '.join(sorted(missing_inputs))})")
    total = len(chunks)
    if not chunks:
        return []
    sha = doc_sha(doc)
    store = ContextCache() if cache else None
    try:
        known = store.get(model.name, prompt_file.version, sha, [c.id for c in chunks]) \
            if store else {}
        answer_tokens = int(params.get("max_tokens", prompt_file.params.max_tokens))
        window = model.context_length or _DEFAULT_CONTEXT_LENGTH
        doc_tokens = count_tokens(model, doc.text)
        out: list[Chunk] = []
        for done, chunk in enumerate(chunks, 1):
            context = known.get(chunk.id)
            if context is None:
                budget = max_doc_tokens
                if budget is None:
                    chunk_tokens = count_tokens(model, chunk.text)
                    budget = window - chunk_tokens - answer_tokens - _OVERHEAD_TOKENS \
                        - _instruction_tokens(model, prompt_file)
                    budget = max(budget, 16)
                document = document_view(model, doc, chunk, budget, doc_tokens)
                completion = model.complete(
                    context_request(prompt_file, document, chunk, **params)
                )
                context = _clean(completion.text)
                if store is not None:
                    store.put(model.name, prompt_file.version, sha, chunk.id, context)
                known[chunk.id] = context
            out.append(replace(chunk, context=context or None))
            if progress is not None:
                progress(done, total)
        return out
    finally:
        if store is not None:
            store.close()


_INSTRUCTION_TOKENS: dict[tuple[str, str], int] = {}


def _instruction_tokens(model: Model, prompt: PromptFile) -> int:
    """Tokens of the rendered prompt with an empty document and chunk: the fixed cost."""
    key = (model.name, prompt.version)
    if key not in _INSTRUCTION_TOKENS:
        messages = prompt.messages({"document": "", "chunk": ""})
        try:
            text = model.render_chat(messages)
        except CapabilityError:  # a remote chat API applies its template server-side
            text = "\n".join(m.content for m in messages)
        _INSTRUCTION_TOKENS[key] = count_tokens(model, text) + 8 * len(messages)
    return _INSTRUCTION_TOKENS[key]
