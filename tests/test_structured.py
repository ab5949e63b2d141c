"""Structured output: our regex -> GBNF translation checked against Python's ``re`` (the
reference) by sampling real constrained outputs from SmolLM2, plus ``parse`` errors."""

from __future__ import annotations

import re

import pytest

from fmstack.errors import ConfigError, OutputValidationError
from fmstack.models import ChoiceFormat, JsonSchemaFormat, Model, RegexFormat, Request
from fmstack.models.structured import choice_regex, parse, regex_to_gbnf

PATTERNS = [
    r"\d{3}-\d{4}",
    r"(yes|no|maybe)",
    r"[A-Z][a-z]{2,8} [A-Z][a-z]{2,8}",
    r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)",
    r"#[0-9a-fA-F]{6}",
    r"(ab){1,4}c?",
    r"-?\d{1,6}(\.\d{1,2})?",
]
# Bounded repeats only: at high temperature an unbounded [a-z]+ may legally run to max_tokens.


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sampled_outputs_match_the_regex(llamacpp_model: Model, pattern: str) -> None:
    # High temperature explores the grammar; every sample must still fully match.
    requests = [
        Request.chat("Answer:", temperature=1.2, seed=seed, max_tokens=40,
                     response_format={"type": "regex", "pattern": pattern})
        for seed in range(4)
    ]
    for completion in llamacpp_model.generate(requests):
        assert re.fullmatch(pattern, completion.text), (pattern, completion.text)
        assert completion.parsed == completion.text


def test_constructs_a_grammar_cannot_express_are_refused() -> None:
    with pytest.raises(ConfigError, match="backreferences or lookaround"):
        regex_to_gbnf(r"(a)\1")
    with pytest.raises(ConfigError, match="backreferences or lookaround"):
        regex_to_gbnf(r"a(?=b)")


def test_choice_regex_prefers_longer_choices() -> None:
    rx = choice_regex(["no", "none", "a.b"])
    assert re.fullmatch(rx, "none") and re.fullmatch(rx, "a.b") and not re.fullmatch(rx, "axb")


def test_parse_explains_failures() -> None:
    schema = JsonSchemaFormat(schema={"type": "object", "properties": {"a": {"type": "integer"}},
                                      "required": ["a"]})
    assert parse(schema, '{"a": 1}') == {"a": 1}
    with pytest.raises(OutputValidationError, match=r"not valid JSON.*max_tokens"):
        parse(schema, '{"a": ', "length")
    with pytest.raises(OutputValidationError, match=r"at a: 'x' is not of type 'integer'"):
        parse(schema, '{"a": "x"}')
    with pytest.raises(OutputValidationError, match="does not match"):
        parse(RegexFormat(pattern=r"\d+"), "12a")
    with pytest.raises(OutputValidationError, match="not one of"):
        parse(ChoiceFormat(choices=["yes", "no"]), "maybe")
