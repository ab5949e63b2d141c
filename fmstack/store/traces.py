"""Traces: one row per model call (successful or not), in SQLite under ``FMSTACK_HOME``.

A trace holds the prompt, the parameters, the output, usage, timings, cost and any error.
Secrets never reach the file: API keys are not part of a request, and anything in the logged
text that looks like a key (or equals a key found in the environment) is redacted.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.config import db_path
from fmstack.store.db import connect

if TYPE_CHECKING:
    from fmstack.models.types import Completion, Request

_KEY_PATTERN = re.compile(
    # fms-: fmstack's own API keys (fmstack keys create).
    r"\b(sk-[A-Za-z0-9_\-]{16,}|fms-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}"
    r"|Bearer\s+[A-Za-z0-9._\-]{16,})"
)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.I)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace API keys and environment secrets in ``text``."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return _KEY_PATTERN.sub(REDACTED, text)


def _dumps(value: Any) -> str:
    return redact(json.dumps(value, ensure_ascii=False))


class TraceStore:
    """Append-only log of model calls. Thread-safe; one transaction per call."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self._conn = connect(self.path)
        self._lock = threading.Lock()

    def log_call(
        self,
        *,
        model: str,
        backend: str,
        request: Request,
        completion: Completion | None,
        error: BaseException | None,
        seconds: float,
        kind: str = "generate",
        guard: dict[str, Any] | None = None,
    ) -> int:
        """Write one trace; returns its id."""
        row: dict[str, Any] = {
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "model": model,
            "backend": backend,
            "kind": kind,
            "prompt": redact(request.prompt) if request.prompt is not None else None,
            "messages": _dumps([m.model_dump() for m in request.messages])
            if request.messages is not None
            else None,
            "params": _dumps(_params(request)),
            "tags": _dumps(request.tags),
            "error": redact(f"{type(error).__name__}: {error}") if error is not None else None,
            "total_s": seconds,
            "guard": _dumps(guard) if guard is not None else None,
        }
        if completion is not None:
            row.update(
                rendered_prompt=redact(completion.rendered_prompt)
                if completion.rendered_prompt is not None
                else None,
                output=redact(completion.text),
                choices=_dumps([c.model_dump(mode="json") for c in completion.choices]),
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                queue_s=completion.timings.queue,
                ttft_s=completion.timings.ttft,
                tpot_s=completion.timings.tpot,
                total_s=completion.timings.total,
                cost=completion.cost,
            )
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            cur = self._conn.execute(
                f"INSERT INTO traces ({cols}) VALUES ({marks})", tuple(row.values())
            )
        return int(cur.lastrowid or 0)

    def set_guard(self, trace_id: int, guard: dict[str, Any]) -> None:
        """Record what a guard did on a call traced earlier (its output check comes after the
        model's own trace is written)."""
        with self._lock:
            self._conn.execute("UPDATE traces SET guard = ? WHERE id = ?",
                               (_dumps(guard), trace_id))

    def list(
        self,
        *,
        limit: int = 20,
        model: str | None = None,
        errors_only: bool = False,
        offset: int = 0,
        q: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first, skipping the newest ``offset``. ``q`` keeps the traces whose prompt,
        messages, rendered prompt or output contain it (case-insensitive for ASCII)."""
        where: list[str] = []
        args: list[object] = []
        if model:
            where.append("model = ?")
            args.append(model)
        if errors_only:
            where.append("error IS NOT NULL")
        if q:
            # Messages are stored as JSON, so q is also looked for in its JSON-escaped form
            # (a quote or a newline in it would not match the stored text otherwise).
            needles = sorted({q, json.dumps(q, ensure_ascii=False)[1:-1]})
            likes = [f"{col} LIKE ? ESCAPE '\\'" for col in _SEARCHED for _ in needles]
            where.append("(" + " OR ".join(likes) + ")")
            args.extend(_like(n) for _ in _SEARCHED for n in needles)
        sql = "SELECT * FROM traces"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args.extend([limit, offset])
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_decode(r) for r in rows]

    def get(self, trace_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM traces WHERE id = ?", (trace_id,)).fetchone()
        return _decode(row) if row is not None else None

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


_SEARCHED = ("prompt", "messages", "rendered_prompt", "output")


def _like(needle: str) -> str:
    """A LIKE pattern matching ``needle`` anywhere, with its own % and _ taken literally."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", needle) + "%"


def _params(request: Request) -> dict[str, Any]:
    # Only what differs from the defaults keeps traces short, but a response format is logged
    # whole: its "type" is a default and would otherwise be dropped.
    params = request.params.model_dump(mode="json", exclude_defaults=True)
    fmt = request.params.response_format
    if fmt is not None:
        params["response_format"] = fmt.model_dump(mode="json")
    return params


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in ("messages", "params", "choices", "tags", "guard"):
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
