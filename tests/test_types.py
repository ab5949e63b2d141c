"""SamplingParams, Request and response formats reject bad values with messages naming them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fmstack.models import (
    ChoiceFormat,
    JsonSchemaFormat,
    RegexFormat,
    Request,
    SamplingParams,
)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("temperature", -0.1, "greater than or equal to 0"),
        ("top_p", 0.0, "greater than 0"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("n", 0, "greater than or equal to 1"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("min_p", 2.0, "less than or equal to 1"),
        ("top_k", -1, "greater than or equal to 0"),
        ("top_logprobs", 21, "less than or equal to 20"),
        ("frequency_penalty", 3.0, "less than or equal to 2"),
        ("repetition_penalty", 0.0, "greater than 0"),
    ],
)
def test_bad_sampling_values_name_the_field(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    err = info.value.errors()[0]
    assert err["loc"] == (field,)
    assert fragment in err["msg"]


def test_unknown_sampling_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="tempreature"):
        SamplingParams(tempreature=0.5)  # type: ignore[call-arg]


def test_stop_accepts_a_string_and_top_logprobs_implies_logprobs() -> None:
    p = SamplingParams(stop="\n", top_logprobs=3)
    assert p.stop == ["\n"]
    assert p.logprobs is True
    with pytest.raises(ValidationError, match="non-empty"):
        SamplingParams(stop=[""])


def test_request_needs_exactly_one_input() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Request()
    with pytest.raises(ValidationError, match="exactly one"):
        Request(prompt="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValidationError, match="must not be empty"):
        Request(messages=[])
    r = Request.chat("hi", system="be brief", temperature=0)
    assert [m.role for m in r.messages or []] == ["system", "user"]
    assert r.params.greedy


def test_response_formats_validate_their_payload() -> None:
    with pytest.raises(ValidationError, match="malformed JSON Schema"):
        JsonSchemaFormat(schema={"type": "objekt"})
    with pytest.raises(ValidationError, match="invalid regex"):
        RegexFormat(pattern="(unclosed")
    with pytest.raises(ValidationError):
        ChoiceFormat(choices=[])
    p = SamplingParams(response_format={"type": "choice", "choices": ["yes", "no"]})
    assert isinstance(p.response_format, ChoiceFormat)
    p = SamplingParams(response_format={"type": "json_schema", "schema": {"type": "object"}})
    assert isinstance(p.response_format, JsonSchemaFormat)
    with pytest.raises(ValidationError):
        SamplingParams(response_format={"type": "xml"})
