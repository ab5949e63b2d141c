"""Evaluation metrics: small documented functions, each registered by name.

``get_metric("f1")`` returns the registered metric (callable, with its range and direction);
an unknown name raises ``ConfigError`` listing the known ones. See ``registry`` for the calling
conventions. Heavy dependencies (sacrebleu, rouge-score, sentence-transformers) are imported
on first use, so importing this package is cheap.

=======================  ==========  =====================================================
metric                   range       notes
=======================  ==========  =====================================================
exact_match, f1          [0, 1]      SQuAD normalization by default
contains, regex          {0, 1}      substring / ``re.search`` (``full=True``: whole text)
json_valid, json_schema  {0, 1}      strict JSON; ``allow_fences`` accepts a code fence
numeric_match            {0, 1}      GSM8K-style number extraction, compared as numbers
bleu, corpus_bleu        [0, 100]    sacrebleu, equal to its scores
chrf, corpus_chrf        [0, 100]    sacrebleu; ``word_order=2`` is chrF++
rouge1, rouge2, rougeL   [0, 1]      rouge-score; ``measure`` = fmeasure/precision/recall
semantic_similarity      [-1, 1]     cosine of MiniLM embeddings (shared embedder)
perplexity               [1, inf)    per token, lower is better, tokenizer-dependent
bits_per_byte            [0, inf)    lower is better, comparable across tokenizers
latency, ttft, tpot      [0, inf)    seconds, from ``Completion.timings``
cost                     [0, inf)    USD, from ``Completion.cost``
hit_rate_at_k, mrr       [0, 1]      retrieval: ranked ids vs relevant ids (``retrieval``)
recall_at_k, ndcg_at_k   [0, 1]      nDCG with linear gains; ``k`` option (default 10)
precision_at_k           [0, 1]      denominator k
average_precision        [0, 1]      mean over queries = MAP
passes_tests             {0, 1}      unit tests in the Sandbox (``code``); pass@k via epochs
judge, judge_reference   [0, 1]      AI judge verdict (rubric scale or pass labels)
context_relevance        [0, 1]      RAG judge (``rag``): context vs question, 1-5 rescaled
answer_relevance         [0, 1]      RAG judge: does the answer address the question, 1-5
faithfulness             {0, .5, 1}  RAG judge: answer's claims vs the ``context`` component
=======================  ==========  =====================================================
"""

from __future__ import annotations

from fmstack.eval.metrics.code import passes_tests, program_for
from fmstack.eval.metrics.judge import judge, judge_reference
from fmstack.eval.metrics.model import (
    LMScore,
    SemanticSimilarity,
    bits_per_byte,
    bits_per_byte_from_logprobs,
    corpus_bits_per_byte,
    corpus_perplexity,
    cost,
    latency,
    lm_score,
    output_tokens_per_second,
    perplexity,
    perplexity_from_logprobs,
    semantic_similarity,
    shared_embedder,
    tpot,
    ttft,
)
from fmstack.eval.metrics.numeric import extract_number, numeric_match
from fmstack.eval.metrics.overlap import (
    bleu,
    chrf,
    corpus_bleu,
    corpus_chrf,
    rouge,
    rouge1,
    rouge2,
    rouge_l,
)
from fmstack.eval.metrics.rag import answer_relevance, context_relevance, faithfulness
from fmstack.eval.metrics.registry import METRICS, MetricSpec, get_metric, metric, metric_names
from fmstack.eval.metrics.retrieval import (
    average_precision,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from fmstack.eval.metrics.text import (
    contains,
    exact_match,
    json_schema_valid,
    json_valid,
    normalize,
    regex_match,
    token_f1,
)

__all__ = [
    "METRICS",
    "LMScore",
    "MetricSpec",
    "SemanticSimilarity",
    "answer_relevance",
    "average_precision",
    "bits_per_byte",
    "bits_per_byte_from_logprobs",
    "bleu",
    "chrf",
    "contains",
    "context_relevance",
    "corpus_bits_per_byte",
    "corpus_bleu",
    "corpus_chrf",
    "corpus_perplexity",
    "cost",
    "exact_match",
    "extract_number",
    "faithfulness",
    "get_metric",
    "hit_rate_at_k",
    "json_schema_valid",
    "json_valid",
    "judge",
    "judge_reference",
    "latency",
    "lm_score",
    "metric",
    "metric_names",
    "mrr",
    "ndcg_at_k",
    "normalize",
    "numeric_match",
    "output_tokens_per_second",
    "passes_tests",
    "perplexity",
    "perplexity_from_logprobs",
    "precision_at_k",
    "program_for",
    "recall_at_k",
    "regex_match",
    "rouge",
    "rouge1",
    "rouge2",
    "rouge_l",
    "semantic_similarity",
    "shared_embedder",
    "token_f1",
    "tpot",
    "ttft",
]
