"""The SQLite file behind fmstack: one connection helper and the schema, versioned.

WAL mode lets a CLI read traces while a server writes them. Each logical write is one
transaction, so a crash leaves either the whole row or nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE traces (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT NOT NULL,
        kind TEXT NOT NULL,
        prompt TEXT,
        messages TEXT,
        rendered_prompt TEXT,
        params TEXT NOT NULL,
        output TEXT,
        choices TEXT,
        finish_reason TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        queue_s REAL,
        ttft_s REAL,
        tpot_s REAL,
        total_s REAL,
        cost REAL,
        error TEXT,
        tags TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX traces_created ON traces(created_at);
    CREATE INDEX traces_model ON traces(model);
    """,
    # 2: prompt versions (content hashes of prompt files, so old versions can be diffed).
    """
    CREATE TABLE prompt_versions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        content TEXT NOT NULL,
        path TEXT,
        created_at TEXT NOT NULL,
        UNIQUE(name, version)
    );
    """,
    # 3: eval runs, their samples (one row per case x model x prompt x epoch) and the cache
    # of completions that makes a re-run of an unchanged suite free.
    """
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY,
        suite_name TEXT NOT NULL,
        suite_path TEXT,
        suite_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        summary TEXT
    );
    CREATE INDEX eval_runs_created ON eval_runs(created_at);
    CREATE TABLE eval_samples (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        sample_key TEXT NOT NULL,
        case_id TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        input TEXT,
        expected TEXT,
        output TEXT,
        scores TEXT,
        metadata TEXT,
        status TEXT NOT NULL,
        error TEXT,
        trace_id INTEGER,
        latency_s REAL,
        cost REAL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (run_id, sample_key)
    );
    CREATE TABLE eval_cache (
        key TEXT PRIMARY KEY,
        completion TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # v4: a sample's intermediate outputs (a target's components, e.g. retrieved context) and,
    # for a conversation, each turn with its own output and scores.
    """
    ALTER TABLE eval_samples ADD COLUMN components TEXT;
    ALTER TABLE eval_samples ADD COLUMN turns TEXT;
    """,
    # v5: API keys for `fmstack serve` (fmstack.serve.auth): only the SHA-256 of a key is kept;
    # a name is unique among the keys not revoked.
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT,
        rate_limit INTEGER
    );
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
    """,
    # v6: what a guard (fmstack.guard) did on the call: findings and actions, input and output.
    """
    ALTER TABLE traces ADD COLUMN guard TEXT;
    """,
]


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema v{version} is newer than this fmstack understands "
            f"(v{len(MIGRATIONS)}); upgrade fmstack"
        )
    for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
