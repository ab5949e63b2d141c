"""Numeric answers for math problems, GSM8K style.

``extract_number`` takes the number after the first ``####`` marker when there is one (GSM8K's
reference format, and what a few-shot prompt in that format teaches a model to write), else the
last number anywhere in the text (lm-eval-harness's "flexible extract"). It reads what people
write around numbers: thousands separators (``1,234``), a sign (``-5``, ``−5``, ``-$5``,
``$-5``), decimals (``3.50``, ``.5``), a currency sign (``$``) and a percent sign (``50%``
reads as 50, as GSM8K writes percentages). It does not read fractions (``3/4`` is two
numbers), words (``seven``) or scientific notation.
"""

from __future__ import annotations

import math
import re

from fmstack.errors import ConfigError
from fmstack.eval.metrics.registry import metric

_NUMBER = re.compile(
    r"""
    (?<![\w.])                        # not the tail of a word or of a decimal
    (?P<sign>[-−]?)(?:\$\s?)?(?P<sign2>[-−]?)     # -5, -$5, $-5, $ 5; "3 - 5" is not -5
    (?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?       # 1,234 or 1234 (absent in .5)
    (?:\.(?P<frac>\d+))?              # .50; a sentence-ending period has no digits after it
    %?
    """,
    re.VERBOSE,
)
_MARKER = "####"


def _numbers(text: str) -> list[float]:
    values = []
    for m in _NUMBER.finditer(text):
        whole, frac = m.group("int"), m.group("frac")
        if whole is None and frac is None:
            continue
        digits = (whole or "0").replace(",", "") + ("." + frac if frac else "")
        negative = bool(m.group("sign") or m.group("sign2"))
        values.append(-float(digits) if negative else float(digits))
    return values


def extract_number(text: str) -> float | None:
    """The answer number in ``text`` (the first number after a ``####`` marker if there is one,
    else the last number), or None when there is none."""
    # The first marker, not the last: a model that keeps writing after its answer often starts
    # an invented next question, whose "####" is not the answer to this one.
    for segment in text.split(_MARKER)[1:]:
        after = _numbers(segment)
        if after:
            return after[0]
    found = _numbers(text)
    return found[-1] if found else None


def _as_number(reference: str | float | int) -> float:
    if isinstance(reference, bool):
        raise ConfigError("numeric_match: the reference is a bool, not a number")
    if isinstance(reference, int | float):
        return float(reference)
    if isinstance(reference, str):
        value = extract_number(reference)
        if value is None:
            raise ConfigError(f"numeric_match: no number in the reference {reference!r}")
        return value
    raise ConfigError(f"numeric_match: the reference must be a number or text, not {reference!r}")


@metric("numeric_match")
def numeric_match(
    prediction: str, reference: str | float | int, *, tolerance: float = 0.0
) -> float:
    """1.0 if the number extracted from the prediction equals the reference (a number, or text
    to extract one from) as numbers (3 == 3.0), within ``tolerance``; 0.0 otherwise, including
    when the prediction has no number."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ConfigError(f"numeric_match: tolerance must be >= 0, not {tolerance}")
    expected = _as_number(reference)
    got = extract_number(prediction)
    if got is None:
        return 0.0
    return float(abs(got - expected) <= tolerance)
