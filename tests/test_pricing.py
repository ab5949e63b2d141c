"""Cost comes from the user's price table; local models are free until the table says not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmstack.errors import ConfigError
from fmstack.models import Model, Request
from fmstack.models.pricing import cost_of
from fmstack.models.types import Usage


def test_cost_from_the_price_table(fmstack_home: Path, llamacpp_model: Model) -> None:
    request = Request.chat("Say hi.", temperature=0, max_tokens=4)
    assert llamacpp_model.complete(request).cost == 0.0
    fmstack_home.mkdir(parents=True, exist_ok=True)
    (fmstack_home / "prices.json").write_text(
        json.dumps({"smollm2": {"input": 1.0, "output": 2.0}})
    )
    out = llamacpp_model.complete(request)
    expected = (out.usage.prompt_tokens * 1.0 + out.usage.completion_tokens * 2.0) / 1e6
    assert out.cost == pytest.approx(expected) and out.cost > 0


def test_bad_price_table_is_named(fmstack_home: Path) -> None:
    fmstack_home.mkdir(parents=True, exist_ok=True)
    (fmstack_home / "prices.json").write_text(json.dumps({"m": {"input": 1}}))
    with pytest.raises(ConfigError, match="'m' needs \"input\" and \"output\""):
        cost_of(["m"], Usage(prompt_tokens=1))
