"""Metrics on the text itself: exact match, token F1, contains, regex, JSON validity.

Exact match and F1 follow the SQuAD v2 evaluation script by default: both sides are lowercased,
ASCII punctuation (``string.punctuation``) is removed, the articles a/an/the are dropped and
whitespace is collapsed, in that order. Each step can be switched off. Where several references
are given, a prediction scores the best of them (as SQuAD scores against all gold answers).
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fmstack.errors import ConfigError
from fmstack.eval.metrics.registry import metric

Reference = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def references(reference: Reference) -> list[str]:
    """A reference argument as a non-empty list of strings (a bare string is one reference)."""
    if isinstance(reference, str):
        return [reference]
    if not isinstance(reference, Sequence):
        raise ConfigError(
            f"a reference must be a string or a list of strings, not {type(reference).__name__}"
        )
    refs = list(reference)
    if not refs:
        raise ConfigError("no reference given: need a string or a non-empty list of strings")
    bad = next((r for r in refs if not isinstance(r, str)), None)
    if bad is not None:
        raise ConfigError(f"references must be strings, got {type(bad).__name__}: {bad!r}")
    return refs


def normalize(
    text: str,
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
    collapse_whitespace: bool = True,
) -> str:
    """SQuAD's ``normalize_answer`` with each step optional (same order, same character sets)."""
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    if strip_articles:
        # Only lowercase articles are words to drop: with lowercase=False, "The" is content.
        text = _ARTICLES.sub(" ", text)
    if collapse_whitespace:
        text = " ".join(text.split())
    return text


@metric("exact_match")
def exact_match(
    prediction: str,
    reference: Reference,
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
    collapse_whitespace: bool = True,
) -> float:
    """1.0 if the normalized prediction equals a normalized reference, else 0.0."""
    opts = {
        "lowercase": lowercase,
        "strip_punctuation": strip_punctuation,
        "strip_articles": strip_articles,
        "collapse_whitespace": collapse_whitespace,
    }
    pred = normalize(prediction, **opts)
    return float(any(pred == normalize(r, **opts) for r in references(reference)))


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        # SQuAD v2: an empty answer is right only when the reference is empty too.
        return float(pred_tokens == ref_tokens)
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@metric("f1")
def token_f1(
    prediction: str,
    reference: Reference,
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
) -> float:
    """SQuAD token F1 in [0, 1]: harmonic mean of token precision and recall (bag of words)
    after normalization; the best over references."""
    opts = {
        "lowercase": lowercase,
        "strip_punctuation": strip_punctuation,
        "strip_articles": strip_articles,
    }
    pred = normalize(prediction, **opts).split()
    return max(_f1(pred, normalize(r, **opts).split()) for r in references(reference))


@metric("contains")
def contains(
    prediction: str, reference: Reference, *, ignore_case: bool = False, require_all: bool = False
) -> float:
    """1.0 if the prediction contains a reference substring (all of them with
    ``require_all``), else 0.0."""
    needles = references(reference)
    if any(n == "" for n in needles):
        raise ConfigError("contains: an empty reference string is contained in everything")
    hay = prediction.casefold() if ignore_case else prediction
    found = [(n.casefold() if ignore_case else n) in hay for n in needles]
    return float(all(found) if require_all else any(found))


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise ConfigError(f"invalid regex {pattern!r}: {e}") from None


@metric("regex")
def regex_match(
    prediction: str, reference: str, *, full: bool = False, ignore_case: bool = False
) -> float:
    """1.0 if the regex ``reference`` matches somewhere in the prediction (the whole of it with
    ``full``), else 0.0."""
    if not isinstance(reference, str):
        raise ConfigError(f"regex: the pattern must be a string, not {type(reference).__name__}")
    pattern = _compile(reference, re.IGNORECASE if ignore_case else 0)
    found = pattern.fullmatch(prediction) if full else pattern.search(prediction)
    return float(found is not None)


_FENCE = re.compile(r"^\s*```[\w-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def parse_json(text: str, *, allow_fences: bool = False) -> tuple[bool, Any]:
    """``(True, value)`` if ``text`` is one JSON value (optionally inside a Markdown code
    fence), else ``(False, None)``."""
    if allow_fences:
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1)
    try:
        return True, json.loads(text)
    except ValueError:  # JSONDecodeError, and RecursionError-free for normal inputs
        return False, None


@metric("json_valid", inputs=("prediction",))
def json_valid(prediction: str, *, allow_fences: bool = False) -> float:
    """1.0 if the prediction is valid JSON (strict: no trailing text), else 0.0."""
    return float(parse_json(prediction, allow_fences=allow_fences)[0])


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ConfigError(f"malformed JSON Schema at {where}: {e.message}") from None
    return cls(schema)


@metric("json_schema")
def json_schema_valid(
    prediction: str, reference: dict[str, Any] | str, *, allow_fences: bool = False
) -> float:
    """1.0 if the prediction is JSON that validates against the schema ``reference`` (a dict
    or its JSON text), else 0.0."""
    if isinstance(reference, str):
        try:
            reference = json.loads(reference)
        except ValueError as e:
            raise ConfigError(f"json_schema: the schema is not valid JSON: {e}") from None
    if not isinstance(reference, dict):
        raise ConfigError(f"json_schema: the schema must be an object, not {reference!r}")
    validator = _validator(json.dumps(reference, sort_keys=True))
    ok, value = parse_json(prediction, allow_fences=allow_fences)
    return float(ok and validator.is_valid(value))
