"""Reranking: re-score the top candidates of a first-stage retriever with a slower, better judge.

A retriever (BM25, dense, hybrid) scores query and chunk independently; a reranker reads the
query and the chunk together, which is slower per pair but sees their interaction. Two kinds:

* ``CrossEncoderReranker``: a sentence-transformers ``CrossEncoder`` (a BERT-style model with a
  one-logit head, trained on query/passage pairs, e.g. MS MARCO) loaded from a local directory.
  Nothing is downloaded, and no trained cross-encoder ships offline with fmstack: ranking
  quality depends entirely on the checkpoint the user points at.
* ``LLMReranker``: any fmstack ``Model`` that can score text, asked "Is this passage relevant
  to the query? Answer yes or no." (``rag-relevance`` prompt). The relevance is the
  probability of "yes" among {"yes", "no"} for the assistant's first token, read by teacher
  forcing (``Model.score``) rather than sampled, so it is deterministic and graded rather than
  a hard label. With SmolLM2-135M it is barely better than chance: a mechanism to use with a
  stronger model, not a quality claim.

Both return new ``Hit``s ranked 1.. by the new score; ties keep the first-stage order.
``get_reranker`` builds one from a CLI spec (``cross-encoder:PATH`` or ``llm:MODEL``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, ModelNotFoundError, missing
from fmstack.prompts.library import get_prompt
from fmstack.rag.documents import Hit

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.prompts.files import PromptFile

# The answer tokens counted as each verdict: chat models answer "Yes"/"No" as often as the
# lower-case words the prompt asks for (SmolLM2 prefers "No" to "no" by 4 nats), and leaving
# one case out would read a capitalised answer as no opinion at all.
YES_WORDS: tuple[str, ...] = ("yes", "Yes")
NO_WORDS: tuple[str, ...] = ("no", "No")


def _check_top_k(top_k: int | None, who: str) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"{who}: top_k must be an integer >= 1 or None, not {top_k!r}")


def _ranked(hits: Sequence[Hit], scores: Sequence[float], retriever: str,
            top_k: int | None) -> list[Hit]:
    # Sorting positions (not chunk ids) on ties keeps the first stage's order, which is the
    # better tie-breaker than an arbitrary id.
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [Hit(chunk=hits[i].chunk, score=float(scores[i]), rank=rank, retriever=retriever)
            for rank, i in enumerate(order, 1)]


# ----- cross-encoder ----------------------------------------------------------------------------


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder from a local directory (never the hub).

    The directory must hold a sequence-classification model (``config.json`` architectures
    ``*ForSequenceClassification``): a plain embedding model would load with a freshly random
    head and rank by noise, so it is refused. Scores are what ``CrossEncoder.predict`` returns
    (after the model's own activation, a sigmoid for one-label models). Ranking quality needs a
    real trained cross-encoder checkpoint (e.g. ms-marco-MiniLM-L-6-v2 saved locally)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        max_length: int | None = None,
    ) -> None:
        path = Path(model_path).expanduser()
        config = path / "config.json"
        if not config.is_file():
            raise ModelNotFoundError(f"{path}: not a cross-encoder model directory "
                                     "(no config.json)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        try:
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError) as e:
            raise ModelNotFoundError(f"{config}: unreadable model config ({e})") from None
        if not any(str(a).endswith("ForSequenceClassification") for a in architectures or []):
            raise ConfigError(
                f"{path}: not a cross-encoder (config.json architectures {architectures!r} have "
                "no *ForSequenceClassification head; an embedding model cannot rerank)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once, at huggingface_hub's import
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise missing("sentence-transformers", "embed") from None
        try:
            self._model: Any = CrossEncoder(str(path), device=device, local_files_only=True,
                                            max_length=max_length)
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(f"cannot load cross-encoder {path}: {first}") from None
        self.path = path
        self.batch_size = batch_size

    def predict(self, query: str, passages: Sequence[str]) -> list[float]:
        """The model's score of each (query, passage) pair, higher is more relevant."""
        if not passages:
            return []
        scores = self._model.predict([(query, p) for p in passages], batch_size=self.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
        return [float(s) for s in scores]

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int | None = None) -> list[Hit]:
        """``hits`` re-scored and re-ranked (best first), cut to ``top_k``. The chunk's
        ``indexed_text`` (context included) is what the model reads, as the retrievers did."""
        _check_top_k(top_k, "CrossEncoderReranker.rerank")
        scores = self.predict(query, [h.chunk.indexed_text for h in hits])
        return _ranked(hits, scores, "cross-encoder", top_k)

    def __repr__(self) -> str:
        return f"<CrossEncoderReranker {self.path}>"


# ----- LLM judging relevance -------------------------------------------------------------------


@dataclass(frozen=True)
class Relevance:
    """One judgement: log-probabilities of the answer starting with "yes" or "no" (case
    variants summed), and ``p_yes``, the probability of "yes" given that it is one of the two."""

    logp_yes: float
    logp_no: float

    @property
    def p_yes(self) -> float:
        return math.exp(self.logp_yes - _logsumexp([self.logp_yes, self.logp_no]))

    @property
    def p_no(self) -> float:
        return math.exp(self.logp_no - _logsumexp([self.logp_yes, self.logp_no]))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def truncate_tokens(model: Model, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens under ``model``'s tokenizer."""
    ids = model.tokenize(text)
    if len(ids) <= max_tokens:
        return text
    return model.detokenize(ids[:max_tokens])


class LLMReranker:
    """Rerank by an LLM's probability that a passage is relevant ("yes" vs "no").

    The prompt (default ``rag-relevance``, inputs ``query`` and ``passage``) is rendered with
    the model's chat template up to the assistant's turn; ``Model.score`` then gives the
    teacher-forced log-probability of each answer word as the first assistant token, which
    equals that token's logprob in ``Model.complete(..., logprobs=True)``. Passages longer
    than ``max_passage_tokens`` are cut, so a long chunk cannot overflow the context window."""

    def __init__(
        self,
        model: Model,
        *,
        prompt: str | PromptFile = "rag-relevance",
        max_passage_tokens: int = 512,
    ) -> None:
        if not model.capabilities.score:
            raise ConfigError(f"model {model.name} cannot score text (no prompt logprobs), so "
                              "it cannot judge relevance by the logprob of 'yes'")
        if (isinstance(max_passage_tokens, bool) or not isinstance(max_passage_tokens, int)
                or max_passage_tokens < 1):
            raise ConfigError(f"max_passage_tokens must be an integer >= 1, "
                              f"not {max_passage_tokens!r}")
        self.model = model
        self.prompt = get_prompt(prompt)
        missing_inputs = {"query", "passage"} - set(self.prompt.inputs)
        if missing_inputs:
            raise ConfigError(f"{self.prompt.where}: a relevance prompt needs the inputs query "
                              f"and passage (missing: {', '.join(sorted(missing_inputs))})")
        self.max_passage_tokens = max_passage_tokens

    def context(self, query: str, passage: str) -> str:
        """The exact text the answer is scored after: the chat, ready for the assistant."""
        passage = truncate_tokens(self.model, passage, self.max_passage_tokens)
        return self.model.render_chat(self.prompt.messages({"query": query, "passage": passage}))

    def judge(self, query: str, passage: str) -> Relevance:
        """How likely the model answers "yes" rather than "no" for this pair."""
        context = self.context(query, passage)
        words = [*YES_WORDS, *NO_WORDS]
        if self.model.backend == "llamacpp":
            # llama.cpp's logits depend on how the prompt was split into decode batches (up to
            # ~0.15 nats on SmolLM2 between a full prefill, a prefill reusing the previous
            # prompt's KV prefix, and a one-token decode), so reusing whatever the cache held
            # would make a passage's score depend on the passage judged before it. Evicting the
            # cache (a context that differs at token 0), then priming it with this context,
            # gives every judgement the same path: one full prefill, then each answer word
            # after a one-token decode of the context's last token, as a generation would.
            self.model.score(["."], contexts=["."])
            self.model.score(words[:1], contexts=[context])
        # One context for every answer word: the llama.cpp backend keeps it in its KV cache,
        # so each word costs one token of decoding.
        scored = self.model.score(words, contexts=[context] * len(words))
        logps = [s.total for s in scored]
        n_yes = len(YES_WORDS)
        return Relevance(logp_yes=_logsumexp(logps[:n_yes]), logp_no=_logsumexp(logps[n_yes:]))

    def rerank(self, query: str, hits: Sequence[Hit], top_k: int | None = None) -> list[Hit]:
        """``hits`` scored by P(yes) in [0, 1] and re-ranked (best first), cut to ``top_k``."""
        _check_top_k(top_k, "LLMReranker.rerank")
        scores = [self.judge(query, h.chunk.indexed_text).p_yes for h in hits]
        return _ranked(hits, scores, "llm", top_k)

    def __repr__(self) -> str:
        return f"<LLMReranker {self.model.name} prompt={self.prompt.name}>"


Reranker = CrossEncoderReranker | LLMReranker


def get_reranker(spec: str, *, batch_size: int = 32, device: str = "cpu",
                 n_threads: int | None = None) -> Reranker:
    """A reranker from a CLI spec: ``cross-encoder:PATH`` (a local CrossEncoder directory) or
    ``llm:MODEL`` (a model alias or URI for ``load_model``, e.g. ``llm:smollm2``)."""
    kind, sep, target = spec.partition(":")
    if not sep or not target:
        raise ConfigError(f"reranker {spec!r}: expected 'cross-encoder:PATH' or 'llm:MODEL'")
    if kind == "cross-encoder":
        return CrossEncoderReranker(target, batch_size=batch_size, device=device)
    if kind == "llm":
        from fmstack.models.registry import load_model

        options: dict[str, Any] = {} if n_threads is None else {"n_threads": n_threads}
        return LLMReranker(load_model(target, **options))
    raise ConfigError(f"reranker {spec!r}: unknown kind {kind!r}; expected "
                      "'cross-encoder:PATH' or 'llm:MODEL'")
