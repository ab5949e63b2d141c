"""Shared fixtures. Every test runs with its own FMSTACK_HOME (a temp dir), so traces, aliases
and prices never touch the user's files; slow-to-build artefacts share one cache per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Session-scoped fixtures run before the per-test home below exists: give them a throwaway
# home too, so no test ever writes to the user's ~/.fmstack.
os.environ["FMSTACK_HOME"] = tempfile.mkdtemp(prefix="fmstack-test-home-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is available."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fmstack-cache")


@pytest.fixture(autouse=True)
def fmstack_home(tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fmstack-home"
    monkeypatch.setenv("FMSTACK_HOME", str(home))
    monkeypatch.setenv("FMSTACK_CACHE", str(session_cache))
    monkeypatch.delenv("FMSTACK_DB", raising=False)
    return home


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from fmstack.models.registry import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def llamacpp_model() -> Iterator[object]:
    """One SmolLM2 llama.cpp model for the session (loading is cheap, but not free).
    Tracing is off here; tests that check traces load their own."""
    from fmstack.models import load_model

    model = load_model("smollm2", trace=False)
    yield model
    model.close()
