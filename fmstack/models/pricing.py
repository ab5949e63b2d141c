"""Cost of a call, from a price table the user edits: ``$FMSTACK_HOME/prices.json``.

The file maps a model name (as it appears in ``Completion.model``) to USD per million tokens::

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60}}

fmstack ships no prices of its own: prices change, and a stale figure is worse than none.
Local models cost zero unless the table names them (to account for your own hardware).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from fmstack.config import home
from fmstack.errors import ConfigError
from fmstack.models.types import Usage


def prices_path() -> Path:
    return home() / "prices.json"


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> dict[str, dict[str, float]]:
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected an object mapping model name to prices")
    for name, row in table.items():
        if not isinstance(row, dict) or not {"input", "output"} <= set(row):
            raise ConfigError(
                f'{path}: entry {name!r} needs "input" and "output" (USD per 1M tokens)'
            )
    return table


def price_table() -> dict[str, dict[str, float]]:
    path = prices_path()
    if not path.exists():
        return {}
    return _load(path, path.stat().st_mtime)


def cost_of(names: list[str], usage: Usage) -> float:
    """USD for ``usage``, priced by the first of ``names`` the table has; 0.0 if none."""
    table = price_table()
    row = next((table[n] for n in names if n in table), None)
    if row is None:
        return 0.0
    return (usage.prompt_tokens * row["input"] + usage.completion_tokens * row["output"]) / 1e6
