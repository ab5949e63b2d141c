"""Metrics that need a model: semantic similarity (an embedder) and perplexity / bits per byte
(a language model's logprobs), plus latency and cost read off a Completion.

Perplexity and bits per byte come from ``Model.score`` (teacher-forced logprobs, natural log):

* perplexity = exp(-mean logprob per token). It is per *token*, so it depends on the tokenizer:
  two models with different vocabularies are not comparable by perplexity (a tokenizer with
  longer tokens has fewer, harder predictions and a higher perplexity for the same text).
* bits per byte = -sum(logprob) / ln 2 / (UTF-8 bytes of the text). The total log-likelihood of
  a text does not depend on how it is cut into tokens, and the byte count is the text's own,
  so bpb *is* comparable across tokenizers and models.

Both are conditioned on BOS only (or on ``context``, whose tokens are not scored). A backend
whose model has no BOS cannot score a text's first token; bpb still divides by all the text's
bytes then, so it reads slightly low for short texts on such models. Over several
texts, the corpus numbers pool tokens and bytes (a long text weighs more), which is what
language-model benchmarks report; they are not the mean of per-text values. A text longer
than the model's context window raises ``ContextLengthError``: split it first.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fmstack.errors import CapabilityError, ConfigError
from fmstack.eval.metrics.registry import metric
from fmstack.eval.metrics.text import Reference, references

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.models.embeddings import Embedder
    from fmstack.models.types import Completion

_INF = math.inf

# ----- semantic similarity ------------------------------------------------------------------

_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def shared_embedder(name: str = "minilm") -> Embedder:
    """One embedder per name for the whole process: loading MiniLM takes about a second and
    ~100 MB, far more than embedding a sentence, so metrics never load it per call."""
    with _embedders_lock:
        if name not in _embedders:
            from fmstack.models.embeddings import load_embedder

            _embedders[name] = load_embedder(name)
        return _embedders[name]


class SemanticSimilarity:
    """Cosine similarity of MiniLM (or any) sentence embeddings, in [-1, 1] (in practice
    mostly [0, 1]); with several references, the best one counts."""

    def __init__(self, embedder: Embedder | str = "minilm") -> None:
        self.embedder = shared_embedder(embedder) if isinstance(embedder, str) else embedder

    def __call__(self, prediction: str, reference: Reference) -> float:
        return self.batch([prediction], [reference])[0]

    def batch(self, predictions: Sequence[str], refs: Sequence[Reference]) -> list[float]:
        """Scores of many pairs, embedding every text in one pass."""
        if len(predictions) != len(refs):
            raise ConfigError(f"{len(predictions)} predictions but {len(refs)} references")
        per_sample = [references(r) for r in refs]
        flat = [r for rs in per_sample for r in rs]
        pred_vecs = self.embedder.embed(list(predictions))
        ref_vecs = self.embedder.embed(flat)
        scores, k = [], 0
        for i, rs in enumerate(per_sample):
            # Rows are unit length, so the dot product is the cosine.
            scores.append(float(max(ref_vecs[k : k + len(rs)] @ pred_vecs[i])))
            k += len(rs)
        return scores


@metric("semantic_similarity", low=-1.0)
def semantic_similarity(
    prediction: str, reference: Reference, *, embedder: Embedder | str = "minilm"
) -> float:
    """Cosine similarity of the sentence embeddings of prediction and reference, in [-1, 1]."""
    return SemanticSimilarity(embedder)(prediction, reference)


# ----- perplexity and bits per byte ---------------------------------------------------------


@dataclass(frozen=True)
class LMScore:
    """Log-likelihood of some text under a model, pooled over tokens and bytes."""

    total_logprob: float  # natural log, summed over scored tokens
    n_tokens: int
    n_bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(-self.total_logprob / self.n_tokens)

    @property
    def bits_per_byte(self) -> float:
        return -self.total_logprob / math.log(2) / self.n_bytes


def perplexity_from_logprobs(logprobs: Sequence[float]) -> float:
    """exp(-mean) of natural-log token logprobs."""
    if not logprobs:
        raise ConfigError("perplexity of no tokens is undefined")
    return math.exp(-sum(logprobs) / len(logprobs))


def bits_per_byte_from_logprobs(logprobs: Sequence[float], text: str) -> float:
    """-sum(logprobs) / ln 2 / (UTF-8 bytes of ``text``)."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ConfigError("bits per byte of an empty text is undefined")
    return -sum(logprobs) / math.log(2) / n_bytes


def lm_score(
    model: Model, texts: Sequence[str], *, contexts: Sequence[str] | None = None
) -> LMScore:
    """Score ``texts`` with ``model`` and pool the result (one ``Model.score`` call)."""
    if isinstance(texts, str):
        raise ConfigError("lm_score takes a list of texts, not a single string")
    if not texts:
        raise ConfigError("no texts to score")
    scored = model.score(list(texts), contexts=contexts)
    n_tokens = sum(len(s.logprobs) for s in scored)
    if n_tokens == 0:
        raise ConfigError("the model scored no tokens of these texts")
    return LMScore(
        total_logprob=sum(s.total for s in scored),
        n_tokens=n_tokens,
        n_bytes=sum(len(t.encode("utf-8")) for t in texts),
    )


def _contexts(context: str | None) -> list[str] | None:
    return None if context is None else [context]


@metric("perplexity", inputs=("prediction",), low=1.0, high=_INF, higher_is_better=False)
def perplexity(prediction: str, *, model: Model, context: str | None = None) -> float:
    """Per-token perplexity of the text under ``model``, in [1, inf); lower is better. Not
    comparable across tokenizers."""
    return lm_score(model, [prediction], contexts=_contexts(context)).perplexity


@metric("bits_per_byte", inputs=("prediction",), high=_INF, higher_is_better=False)
def bits_per_byte(prediction: str, *, model: Model, context: str | None = None) -> float:
    """Bits per UTF-8 byte of the text under ``model``, in [0, inf); lower is better.
    Comparable across tokenizers."""
    return lm_score(model, [prediction], contexts=_contexts(context)).bits_per_byte


@metric("corpus_perplexity", inputs=("predictions",), low=1.0, high=_INF, higher_is_better=False)
def corpus_perplexity(predictions: Sequence[str], *, model: Model) -> float:
    """Perplexity pooled over all tokens of all texts, in [1, inf)."""
    return lm_score(model, predictions).perplexity


@metric("corpus_bits_per_byte", inputs=("predictions",), high=_INF, higher_is_better=False)
def corpus_bits_per_byte(predictions: Sequence[str], *, model: Model) -> float:
    """Bits per byte pooled over all texts, in [0, inf)."""
    return lm_score(model, predictions).bits_per_byte


# ----- latency and cost ---------------------------------------------------------------------


def _timing(completion: Completion, name: str) -> float:
    value = getattr(completion.timings, name)
    if value is None:
        raise CapabilityError(
            f"completion from {completion.model} has no {name} timing "
            "(the backend did not measure it, e.g. a single output token)"
        )
    return float(value)


@metric("latency", inputs=("completion",), high=_INF, higher_is_better=False)
def latency(completion: Completion) -> float:
    """Seconds from request to the whole completion (``timings.total``)."""
    return _timing(completion, "total")


@metric("ttft", inputs=("completion",), high=_INF, higher_is_better=False)
def ttft(completion: Completion) -> float:
    """Seconds to the first output token."""
    return _timing(completion, "ttft")


@metric("tpot", inputs=("completion",), high=_INF, higher_is_better=False)
def tpot(completion: Completion) -> float:
    """Mean seconds per output token after the first."""
    return _timing(completion, "tpot")


@metric("output_tokens_per_second", inputs=("completion",), high=_INF)
def output_tokens_per_second(completion: Completion) -> float:
    """Output tokens divided by total seconds (all choices' tokens count)."""
    total = latency(completion)
    if total <= 0:
        raise CapabilityError(f"completion from {completion.model} has no total time")
    return completion.usage.completion_tokens / total


@metric("cost", inputs=("completion",), high=_INF, higher_is_better=False)
def cost(completion: Completion) -> float:
    """US dollars the call cost by the price table (0.0 for local models)."""
    return float(completion.cost)
