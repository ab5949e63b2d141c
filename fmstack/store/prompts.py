"""Prompt versions: the content of every prompt file version fmstack has used, by content hash.

A version is recorded the first time a prompt is rendered into a request, so an old version can
still be shown and diffed after the file has been edited. Recording is idempotent: the same
(name, version) is stored once, with the time it was first seen.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmstack.config import db_path
from fmstack.errors import PromptError
from fmstack.store.db import connect


class PromptVersions:
    """The ``prompt_versions`` table of the fmstack SQLite file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self._conn = connect(self.path)
        self._lock = threading.Lock()

    def record(self, name: str, version: str, content: str, path: str | Path | None) -> bool:
        """Store one version; True if it was new, False if it was already recorded."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO prompt_versions (name, version, content, path, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, version, content, str(path) if path is not None else None,
                 datetime.now(UTC).isoformat(timespec="milliseconds")),
            )
        return cur.rowcount == 1

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every recorded version of ``name``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM prompt_versions WHERE name = ? ORDER BY id", (name,)
            ).fetchall()
        return [dict(r) for r in rows]

    def get(self, name: str, version: str) -> dict[str, Any]:
        """One recorded version; ``version`` may be any unique prefix of the hash."""
        if not version or not all(c in "0123456789abcdef" for c in version.lower()):
            raise PromptError(f"version {version!r} of prompt {name!r} is not a hex hash prefix")
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM prompt_versions WHERE name = ? AND version LIKE ? ORDER BY id",
                (name, version.lower() + "%"),
            ).fetchall()
        if len(rows) == 1:
            return dict(rows[0])
        if rows:
            found = ", ".join(r["version"] for r in rows)
            raise PromptError(f"version {version!r} of prompt {name!r} is ambiguous ({found})")
        known = [r["version"] for r in self.versions(name)]
        hint = f"recorded: {', '.join(known)}" if known else "no versions recorded yet"
        raise PromptError(f"no version {version!r} of prompt {name!r} ({hint})")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PromptVersions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
