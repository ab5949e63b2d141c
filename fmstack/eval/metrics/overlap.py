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
import re
from collections.abc import Sequence
from typing import Any, Literal

from fmstack.errors import ConfigError, missing
from fmstack.eval.metrics.registry import metric
from fmstack.eval.metrics.text import Reference, references

Measure = Literal["fmeasure", "precision", "recall"]
_MEASURES = ("fmeasure", "precision", "recall")
_ROUGE_TYPE = re.compile(r"rouge[1-9]|rougeL|rougeLsum")


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise missing("sacrebleu", "eval") from None
    return sacrebleu


@functools.lru_cache(maxsize=32)
def _bleu(tokenize: str, lowercase: bool, smooth_method: str, effective_order: bool) -> Any:
    sacrebleu = _sacrebleu()
    from sacrebleu.metrics.bleu import _TOKENIZERS

    if tokenize not in _TOKENIZERS:
        raise ConfigError(
            f"bleu: unknown tokenize {tokenize!r}; use one of {', '.join(_TOKENIZERS)}"
        )
    smoothers = sacrebleu.metrics.BLEU.SMOOTH_DEFAULTS
    if smooth_method not in smoothers:
        raise ConfigError(
            f"bleu: unknown smooth_method {smooth_method!r}; use one of {', '.join(smoothers)}"
        )
    try:
        return sacrebleu.metrics.BLEU(
            tokenize=tokenize,
            lowercase=lowercase,
            smooth_method=smooth_method,
            effective_order=effective_order,
        )
    except (ImportError, RuntimeError, OSError) as e:
        # ja-mecab and ko-mecab need extra packages; spm/flores download a model on first use.
        why = " ".join(str(e).split())
        raise ConfigError(f"bleu: tokenize {tokenize!r} is not available here: {why}") from None


@functools.lru_cache(maxsize=32)
def _chrf(char_order: int, word_order: int, beta: int) -> Any:
    if char_order < 1 or word_order < 0 or beta < 0:
        raise ConfigError(
            f"chrf: need char_order >= 1, word_order >= 0, beta >= 0 "
            f"(got {char_order}, {word_order}, {beta})"
        )
    return _sacrebleu().metrics.CHRF(char_order=char_order, word_order=word_order, beta=beta)


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
    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)


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
    if not _ROUGE_TYPE.fullmatch(rouge_type):
        raise ConfigError(
            f"rouge: unknown type {rouge_type!r}; use rouge1..rouge9, rougeL or rougeLsum"
        )
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
