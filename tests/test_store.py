"""The trace store: a real SQLite file, one row per call, secrets redacted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fmstack.models import Completion, Request
from fmstack.models.types import Choice, Timings, Usage
from fmstack.store import TraceStore, redact
from fmstack.store.db import MIGRATIONS, connect


def _completion(text: str) -> Completion:
    return Completion(
        model="m",
        choices=[Choice(text=text, finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        timings=Timings(ttft=0.1, tpot=0.05, total=0.2),
    )


def test_log_list_get_round_trip(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    req = Request.chat("hello", temperature=0)
    tid = store.log_call(model="m", backend="b", request=req, completion=_completion("hi"),
                         error=None, seconds=0.2)
    eid = store.log_call(model="m", backend="b", request=req, completion=None,
                         error=ValueError("boom"), seconds=0.01)
    rows = store.list()
    assert [r["id"] for r in rows] == [eid, tid]  # newest first
    row = store.get(tid)
    assert row is not None
    assert row["output"] == "hi" and row["prompt_tokens"] == 3 and row["ttft_s"] == 0.1
    assert row["messages"] == [{"role": "user", "content": "hello"}]
    assert row["params"] == {"temperature": 0.0}
    assert store.list(errors_only=True)[0]["error"] == "ValueError: boom"
    assert store.count() == 2
    fmt_req = Request.chat("hi", response_format={"type": "choice", "choices": ["a", "b"]})
    fid = store.log_call(model="m", backend="b", request=fmt_req, completion=None,
                         error=None, seconds=0.0)
    logged = store.get(fid)
    assert logged is not None
    assert logged["params"]["response_format"] == {"type": "choice", "choices": ["a", "b"]}
    assert store.get(10_000) is None


def test_secrets_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", "supersecretvalue123")
    assert "supersecretvalue123" not in redact("key=supersecretvalue123")
    assert "sk-" not in redact("token sk-abcdefghijklmnopqrstuvwxyz")
    store = TraceStore(tmp_path / "t.db")
    req = Request.chat("my key is supersecretvalue123 and sk-abcdefghijklmnopqrstu")
    store.log_call(model="m", backend="b", request=req, completion=_completion("ok"),
                   error=None, seconds=0.0)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # db plus any WAL/SHM left
    assert b"supersecretvalue123" not in raw
    assert b"sk-abcdefghijklmnopqrstu" not in raw


def test_schema_is_versioned_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    connect(path).close()  # idempotent
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer than this fmstack"):
        connect(path)
