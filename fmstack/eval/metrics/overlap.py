"""N-gram overlap with references: BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score).

These call the reference implementations rather than re-deriving them, so the numbers are the
ones papers report: BLEU and chrF on sacrebleu's 0–100 scale with its defaults (13a tokenizer,
exponential smoothing; sentence BLEU uses effective order, as ``sacrebleu.sentence_bleu`` does),
ROUGE on rouge-score's 0–1 scale.

Caveats worth knowing: sentence-level BLEU is noisy (BLEU is a corpus metric: the corpus score
is not the mean of sentence scores, so use ``corpus_bleu`` for a system-level number);
rouge-score's default tokenizer keeps only ASCII letters and digits, so ROUGE of non-English
text is meaningless without a custom tokenizer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from fmstack.errors import ConfigError, missing
from fmstack.eval.metrics.registry import metric
from fmstack.eval.metrics.text import Reference, references

Measure = Literal["fmeasure", "precision", "recall"]
_MEASURES = ("fmeasure", "precision", "recall")


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise missing("sacrebleu", "eval") from None
    return sacrebleu


@functools.lru_cache(maxsize=32)
def _bleu(tokenize: str, lowercase: bool, smooth_method: str, effective_order: bool) -> Any:
    try:
        return _sacrebleu().metrics.BLEU(
            tokenize=tokenize,
            lowercase=lowercase,
            smooth_method=smooth_method,
            effective_order=effective_order,
        )
    except (KeyError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"bleu: bad option ({e})") from None


@functools.lru_cache(maxsize=32)
def _chrf(char_order: int, word_order: int, beta: int) -> Any:
    try:
        return _sacrebleu().metrics.CHRF(char_order=char_order, word_order=word_order, beta=beta)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"chrf: bad option ({e})") from None


def _streams(predictions: Sequence[str], refs: Sequence[Reference]) -> list[list[str | None]]:
    """Per-sample references turned into sacrebleu's reference streams (one list per reference
    position); samples with fewer references are padded with None, which sacrebleu skips."""
    if isinstance(predictions, str):
        raise ConfigError("corpus metrics take a list of predictions, not a single string")
    if len(predictions) != len(refs):
        raise ConfigError(f"{len(predictions)} predictions but {len(refs)} references")
    if not predictions:
        raise ConfigError("corpus metrics need at least one prediction")
    per_sample = [references(r) for r in refs]
    width = max(len(r) for r in per_sample)
    return [[r[k] if k < len(r) else None for r in per_sample] for k in range(width)]


@metric("bleu", high=100.0)
def bleu(
    prediction: str,
    reference: Reference,
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
) -> float:
    """Sentence BLEU in [0, 100], equal to ``sacrebleu.sentence_bleu(...).score``."""
    scorer = _bleu(tokenize, lowercase, smooth_method, True)
    return float(scorer.sentence_score(prediction, references(reference)).score)


@metric("corpus_bleu", inputs=("predictions", "references"), high=100.0)
def corpus_bleu(
    predictions: Sequence[str],
    refs: Sequence[Reference],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
) -> float:
    """Corpus BLEU in [0, 100], equal to ``sacrebleu.corpus_bleu(...).score``; ``refs[i]`` holds
    the reference(s) of ``predictions[i]``."""
    scorer = _bleu(tokenize, lowercase, smooth_method, False)
    return float(scorer.corpus_score(list(predictions), _streams(predictions, refs)).score)


@metric("chrf", high=100.0)
def chrf(
    prediction: str,
    reference: Reference,
    *,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
) -> float:
    """Sentence chrF in [0, 100] (chrF++ with ``word_order=2``), equal to
    ``sacrebleu.sentence_chrf(...).score``."""
    scorer = _chrf(char_order, word_order, beta)
    return float(scorer.sentence_score(prediction, references(reference)).score)


@metric("corpus_chrf", inputs=("predictions", "references"), high=100.0)
def corpus_chrf(
    predictions: Sequence[str],
    refs: Sequence[Reference],
    *,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
) -> float:
    """Corpus chrF in [0, 100], equal to ``sacrebleu.corpus_chrf(...).score``."""
    scorer = _chrf(char_order, word_order, beta)
    return float(scorer.corpus_score(list(predictions), _streams(predictions, refs)).score)


@functools.lru_cache(maxsize=16)
def _rouge_scorer(rouge_type: str, use_stemmer: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise missing("rouge-score", "eval") from None
    try:
        return rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)
    except ValueError as e:
        raise ConfigError(f"rouge: {e}") from None


def rouge(
    prediction: str,
    reference: Reference,
    *,
    rouge_type: str = "rougeL",
    measure: Measure = "fmeasure",
    use_stemmer: bool = False,
) -> float:
    """ROUGE of ``rouge_type`` (rouge1, rouge2, rougeL, rougeLsum, rougeN) in [0, 1] as
    rouge-score computes it; with several references, the one with the best F-measure counts
    (rouge-score's ``score_multi``)."""
    if measure not in _MEASURES:
        raise ConfigError(f"rouge: measure must be one of {', '.join(_MEASURES)}, not {measure!r}")
    scorer = _rouge_scorer(rouge_type, use_stemmer)
    refs = references(reference)
    scores = (
        scorer.score(refs[0], prediction)
        if len(refs) == 1
        else scorer.score_multi(refs, prediction)
    )
    return float(getattr(scores[rouge_type], measure))


@metric("rouge1")
def rouge1(
    prediction: str,
    reference: Reference,
    *,
    measure: Measure = "fmeasure",
    use_stemmer: bool = False,
) -> float:
    """ROUGE-1 (unigram overlap) in [0, 1]; F-measure unless ``measure`` says otherwise."""
    return rouge(
        prediction, reference, rouge_type="rouge1", measure=measure, use_stemmer=use_stemmer
    )


@metric("rouge2")
def rouge2(
    prediction: str,
    reference: Reference,
    *,
    measure: Measure = "fmeasure",
    use_stemmer: bool = False,
) -> float:
    """ROUGE-2 (bigram overlap) in [0, 1]; F-measure unless ``measure`` says otherwise."""
    return rouge(
        prediction, reference, rouge_type="rouge2", measure=measure, use_stemmer=use_stemmer
    )


@metric("rougeL")
def rouge_l(
    prediction: str,
    reference: Reference,
    *,
    measure: Measure = "fmeasure",
    use_stemmer: bool = False,
) -> float:
    """ROUGE-L (longest common subsequence) in [0, 1]; F-measure unless ``measure`` says
    otherwise."""
    return rouge(
        prediction, reference, rouge_type="rougeL", measure=measure, use_stemmer=use_stemmer
    )
