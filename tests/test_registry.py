"""Aliases, URIs and backend registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmstack.errors import ConfigError, ModelNotFoundError
from fmstack.models import load_model, resolve
from fmstack.models.registry import backends


def test_builtin_backends_register_through_entry_points() -> None:
    assert {"llamacpp", "hf", "openai"} <= set(backends())


def test_aliases_resolve_to_real_files(smollm2_path: Path) -> None:
    assert smollm2_path.is_file()
    assert resolve("smollm2") == ("llamacpp", str(smollm2_path))
    assert resolve("smollm2-hf") == ("hf", str(smollm2_path))
    assert resolve("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")


def test_unknown_alias_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve("gpt5-local")
    msg = str(info.value)
    assert "gpt5-local" in msg and "smollm2" in msg and "gemma3-270m" in msg and "llamacpp" in msg
    with pytest.raises(ModelNotFoundError, match="empty target"):
        resolve("llamacpp:")


def test_user_aliases_file(fmstack_home: Path, smollm2_path: Path) -> None:
    fmstack_home.mkdir(parents=True, exist_ok=True)
    (fmstack_home / "aliases.json").write_text(json.dumps({"tiny": f"llamacpp:{smollm2_path}"}))
    assert resolve("tiny") == ("llamacpp", str(smollm2_path))
    (fmstack_home / "aliases.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"aliases\.json"):
        resolve("tiny")


def test_unknown_backend_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"no option n_ctxx"):
        load_model("smollm2", trace=False, n_ctxx=10)
