"""The query side of retrieval: make the question a better search query before searching.

* ``rewrite_query``: a follow-up such as "and what about its population?" retrieves nothing
  useful on its own; the model rewrites it into a standalone question from the conversation
  (``rag-rewrite`` prompt). With no conversation there is nothing to resolve, so the question
  is returned as is, without a model call.
* ``hyde`` and ``hyde_vector``: HyDE (Gao et al., "Precise Zero-Shot Dense Retrieval without
  Relevance Labels", 2022). The model writes hypothetical passages that answer the question
  (``rag-hyde`` prompt); a passage looks more like the documents than a question does, so its
  embedding lands nearer them. As in the paper the query vector is the mean of the normalized
  embeddings of the question and the passages, renormalized here so it is a unit vector like
  every other fmstack embedding (cosine = dot product). A made-up passage may be wrong; only
  its neighbourhood in embedding space matters, never its facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError
from fmstack.prompts.library import get_prompt

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from fmstack.models.base import Model
    from fmstack.models.types import Message
    from fmstack.prompts.files import PromptFile

# Labels a small model likes to repeat before its answer ("Standalone question: ...").
_LEAD_IN = re.compile(r"^\s*(standalone|rewritten|rephrased)?\s*(question|query)\s*:\s*",
                      re.IGNORECASE)


def format_conversation(conversation: Sequence[Message]) -> str:
    """One ``role: text`` line per turn (newlines inside a turn folded to spaces), the form the
    ``rag-rewrite`` prompt's examples use. System turns are left out: they instruct the
    assistant and say nothing about what the user's question refers to."""
    lines = []
    for m in conversation:
        if m.role == "system":
            continue
        lines.append(f"{m.role}: {' '.join(m.content.split())}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _LEAD_IN.sub("", line).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


def rewrite_query(
    model: Model,
    conversation: Sequence[Message],
    question: str,
    *,
    prompt: str | PromptFile = "rag-rewrite",
    **params: Any,
) -> str:
    """``question`` rewritten into a standalone, single-line question using ``conversation``
    (earlier turns, oldest first, not including ``question``). ``params`` override the prompt
    file's sampling params. If the model returns nothing usable the question is returned
    unchanged, so retrieval never runs on an empty query."""
    if not question.strip():
        raise ConfigError("rewrite_query: the question is empty")
    transcript = format_conversation(conversation)
    if not transcript:
        return question
    request = get_prompt(prompt).request(
        {"conversation": transcript, "question": question}, **params
    )
    return _one_line(model.complete(request).text) or question


def hyde(
    model: Model,
    question: str,
    *,
    prompt: str | PromptFile = "rag-hyde",
    n: int = 1,
    **params: Any,
) -> list[str]:
    """``n`` hypothetical passages answering ``question`` (sampled in one request at the
    prompt's temperature, 0.7 by default, so they differ). Empty outputs are dropped, so the
    list may be shorter than ``n``; ``hyde_vector`` copes with none at all."""
    if not question.strip():
        raise ConfigError("hyde: the question is empty")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"hyde: n must be an integer >= 1, not {n!r}")
    request = get_prompt(prompt).request({"question": question}, n=n, **params)
    completion = model.complete(request)
    return [text for text in (c.text.strip() for c in completion.choices) if text]


def hyde_vector(embedder: Any, question: str, passages: Sequence[str]) -> npt.NDArray[np.float32]:
    """The HyDE query vector: the mean of the unit embeddings of ``question`` and each passage,
    scaled back to unit length. ``embedder`` is an ``fmstack.models.embeddings.Embedder`` (or
    anything with ``embed(texts) -> (n, dim)`` unit rows). Shape ``(dim,)``, float32."""
    import numpy as np

    if isinstance(passages, str):
        raise ConfigError("hyde_vector: passages must be a list of strings, not one string")
    vectors = np.asarray(embedder.embed([question, *passages]), dtype=np.float32)
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        # Passages exactly opposite the question: no direction to search in. Fall back to
        # the question's own embedding rather than return NaNs.
        return np.asarray(vectors[0], dtype=np.float32)
    return np.asarray(mean / norm, dtype=np.float32)
