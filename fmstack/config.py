"""Where fmstack keeps user state: ``$FMSTACK_HOME`` (default ``~/.fmstack``).

Tests point ``FMSTACK_HOME`` at a temporary directory so they never touch the user's files.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The user directory, created on first use."""
    path = Path(os.environ.get("FMSTACK_HOME") or Path.home() / ".fmstack").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    """The SQLite file holding traces (and, later, eval runs, feedback, prompt versions)."""
    return Path(os.environ.get("FMSTACK_DB") or home() / "fmstack.db")


def cache_dir() -> Path:
    """Derived artefacts that are slow to rebuild (e.g. GGUF files dequantized for transformers).
    ``FMSTACK_CACHE`` overrides it, so tests can share one cache across temporary homes."""
    path = Path(os.environ.get("FMSTACK_CACHE") or home() / "cache").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
