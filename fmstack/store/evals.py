"""Eval runs in the fmstack SQLite file: runs, their samples, and the completion cache.

A run is one execution of a suite (``eval_runs``); each sample is one case x model x prompt x
epoch (``eval_samples``, keyed by ``sample_key``); ``eval_cache`` maps a hash of model, params,
request and epoch to the completion, so re-running an unchanged suite makes no model calls.
Every write is its own transaction (``INSERT OR REPLACE``), so an interrupted run keeps every
sample it finished and a resumed run overwrites a retried sample in place.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmstack.config import db_path
from fmstack.errors import ConfigError
from fmstack.store.db import connect

RUN_STATUSES = ("running", "finished", "interrupted", "failed")
SAMPLE_COLUMNS = (
    "sample_key", "case_id", "model", "prompt", "epoch", "input", "expected", "output", "scores",
    "metadata", "status", "error", "trace_id", "latency_s", "cost", "components", "turns",
)
_JSON_COLUMNS = ("input", "expected", "scores", "metadata", "components", "turns")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    return "r" + secrets.token_hex(5)


class EvalStore:
    """The ``eval_*`` tables. Thread-safe: the runner's workers share one instance."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self._conn = connect(self.path)
        self._lock = threading.Lock()

    # ----- runs -----------------------------------------------------------------------------

    def create_run(
        self, *, suite_name: str, suite_path: str | None, suite_hash: str,
        config: dict[str, Any], run_id: str | None = None,
    ) -> str:
        """Insert a run in status ``running``; returns its id."""
        run_id = run_id or new_run_id()
        with self._lock:
            self._conn.execute(
                "INSERT INTO eval_runs (id, suite_name, suite_path, suite_hash, created_at, status,"
                " config) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (run_id, suite_name, suite_path, suite_hash, _now(),
                 json.dumps(config, ensure_ascii=False)),
            )
        return run_id

    def set_status(self, run_id: str, status: str) -> None:
        """Change a run's status (e.g. back to ``running`` when it is resumed)."""
        _check_status(status)
        with self._lock:
            self._conn.execute("UPDATE eval_runs SET status = ? WHERE id = ?", (status, run_id))

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None) -> None:
        """Record the end of a run: its final status and summary."""
        _check_status(status)
        with self._lock:
            self._conn.execute(
                "UPDATE eval_runs SET status = ?, summary = ?, finished_at = ? WHERE id = ?",
                (status, json.dumps(summary) if summary is not None else None, _now(), run_id),
            )

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Every run, newest first."""
        sql = "SELECT * FROM eval_runs ORDER BY created_at DESC, rowid DESC"
        args: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_decode_run(r) for r in rows]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run by id or unique id prefix; ConfigError if none or several match."""
        if not run_id:
            raise ConfigError("empty run id")
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM eval_runs WHERE id LIKE ? ESCAPE '\\' ORDER BY created_at",
                (run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        exact = [r for r in rows if r["id"] == run_id]
        if exact:
            return _decode_run(exact[0])
        if len(rows) == 1:
            return _decode_run(rows[0])
        if rows:
            raise ConfigError(f"run id {run_id!r} is ambiguous: "
                              f"{', '.join(r['id'] for r in rows)}")
        raise ConfigError(f"no eval run {run_id!r} in {self.path} (see: fmstack eval list)")

    # ----- samples --------------------------------------------------------------------------

    def add_sample(self, run_id: str, sample: dict[str, Any]) -> None:
        """Write one sample (replacing an earlier try of the same ``sample_key``)."""
        unknown = set(sample) - set(SAMPLE_COLUMNS)
        if unknown:
            raise ConfigError(f"unknown sample field(s): {', '.join(sorted(unknown))}")
        row = {k: sample.get(k) for k in SAMPLE_COLUMNS}
        for key in _JSON_COLUMNS:
            if row[key] is not None:
                row[key] = json.dumps(row[key], ensure_ascii=False)
        cols = ["run_id", *row, "created_at"]
        values = [run_id, *row.values(), _now()]
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO eval_samples ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)})",
                values,
            )

    def samples(self, run_id: str) -> list[dict[str, Any]]:
        """The run's samples in the order they were written (a retried sample moves to the end)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM eval_samples WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for key in _JSON_COLUMNS:
                if d[key] is not None:
                    d[key] = json.loads(d[key])
            out.append(d)
        return out

    # ----- cache ----------------------------------------------------------------------------

    def cache_get(self, key: str) -> dict[str, Any] | None:
        """The cached completion (as JSON data) for ``key``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT completion FROM eval_cache WHERE key = ?", (key,)
            ).fetchone()
        return json.loads(row["completion"]) if row is not None else None

    def cache_put(self, key: str, completion: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO eval_cache (key, completion, created_at) VALUES (?, ?, ?)",
                (key, json.dumps(completion, ensure_ascii=False), _now()),
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EvalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ConfigError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")


def _decode_run(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("config", "summary"):
        if d[key] is not None:
            d[key] = json.loads(d[key])
    return d
