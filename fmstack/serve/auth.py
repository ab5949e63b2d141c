"""API keys and per-key rate limits for ``fmstack serve``.

A key is ``fms-`` plus 32 random bytes (URL-safe base64). Only its SHA-256 is stored, in the
``api_keys`` table of the fmstack SQLite file: the secret carries 256 random bits, so a slow
password hash would buy nothing, and a fast one lets ``verify`` be a single index lookup per
request. The first characters (``prefix``) are kept in the clear so that a listing can tell keys
apart without revealing them.

``verify`` reads the table on every request instead of caching, so a key revoked from another
process (``fmstack keys revoke`` while the server runs) is refused from the next request on.
``last_used_at`` is written at most once a minute per key, so a busy key does not turn every
request into a database write.

Rate limits are token buckets held in memory by the server process (``RateLimiter``): a key with
``rate_limit`` N may burst N requests, then gets N per minute, refilled continuously.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fmstack.config import db_path
from fmstack.errors import ConfigError
from fmstack.serve.errors import APIError
from fmstack.store.db import connect

SECRET_PREFIX = "fms-"
PREFIX_CHARS = 10  # "fms-" + 6 random characters: 36 bits, enough to tell keys apart
MAX_NAME_CHARS = 64
# last_used_at is a hint for "is this key still in use?", so minute resolution is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key, without its secret."""

    id: int
    name: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    rate_limit: int | None  # requests per minute; None = unlimited


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``secret`` is the plaintext, available this once only."""

    info: KeyInfo
    secret: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _info(row: sqlite3.Row) -> KeyInfo:
    return KeyInfo(id=row["id"], name=row["name"], prefix=row["prefix"],
                   created_at=row["created_at"], last_used_at=row["last_used_at"],
                   revoked_at=row["revoked_at"], rate_limit=row["rate_limit"])


def _check_name(name: str) -> str:
    if not name or name != name.strip():
        raise ConfigError(f"key name {name!r} is empty or has leading/trailing spaces")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"key name is {len(name)} characters; at most {MAX_NAME_CHARS}")
    if not name.isprintable():
        raise ConfigError(f"key name {name!r} has control characters")
    return name


def _check_rate_limit(rate_limit: int | None) -> int | None:
    # bool is an int in Python; True as "1 request per minute" would be a surprise.
    if rate_limit is not None and (
        isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 1
    ):
        raise ConfigError(
            f"rate limit must be a whole number of requests per minute >= 1, got {rate_limit!r}"
        )
    return rate_limit


class KeyStore:
    """The API keys in the fmstack SQLite file. Thread-safe: one connection behind a lock."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or db_path()
        self._conn = connect(self.path)
        self._lock = threading.Lock()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, name: str, *, rate_limit: int | None = None) -> NewKey:
        """A new key named ``name`` (unique among active keys); the secret is returned once."""
        _check_name(name)
        _check_rate_limit(rate_limit)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row: dict[str, Any] = {"name": name, "prefix": secret[:PREFIX_CHARS],
                               "hash": _digest(secret), "created_at": _now(),
                               "rate_limit": rate_limit}
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO api_keys (name, prefix, hash, created_at, rate_limit)"
                    " VALUES (:name, :prefix, :hash, :created_at, :rate_limit)", row)
            except sqlite3.IntegrityError:
                # The partial unique index on active names decides, so two processes creating
                # the same name at once cannot both win.
                raise ConfigError(
                    f"an active key named {name!r} already exists; revoke it first "
                    "(fmstack keys revoke) or pick another name") from None
            key_id = cur.lastrowid
            stored = self._conn.execute("SELECT * FROM api_keys WHERE id = ?",
                                        (key_id,)).fetchone()
        return NewKey(info=_info(stored), secret=secret)

    def list(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        """Keys in creation order."""
        sql = "SELECT * FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id").fetchall()
        return [_info(r) for r in rows]

    def revoke(self, name_or_prefix: str) -> KeyInfo:
        """Revoke the one active key whose name or listed prefix is ``name_or_prefix``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM api_keys WHERE name = ? OR prefix = ? ORDER BY id",
                (name_or_prefix, name_or_prefix)).fetchall()
            active = [r for r in rows if r["revoked_at"] is None]
            if not active:
                if rows:
                    raise ConfigError(f"key {name_or_prefix!r} is already revoked "
                                      f"(at {rows[-1]['revoked_at']})")
                raise ConfigError(f"no API key named or prefixed {name_or_prefix!r} "
                                  "(see: fmstack keys list)")
            if len(active) > 1:
                found = ", ".join(f"{r['name']} ({r['prefix']})" for r in active)
                raise ConfigError(f"{name_or_prefix!r} matches {len(active)} active keys: "
                                  f"{found}; name one by its prefix")
            self._conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                               (_now(), active[0]["id"]))
            row = self._conn.execute("SELECT * FROM api_keys WHERE id = ?",
                                     (active[0]["id"],)).fetchone()
        return _info(row)

    def verify(self, secret: str) -> KeyInfo | None:
        """The active key with this secret, or None for an unknown or revoked one."""
        digest = _digest(secret)
        with self._lock:
            row = self._conn.execute("SELECT * FROM api_keys WHERE hash = ?",
                                     (digest,)).fetchone()
            # The lookup already matched on the hash; the constant-time comparison keeps the
            # check itself free of timing differences should the lookup ever change shape.
            if row is None or not hmac.compare_digest(row["hash"], digest):
                return None
            if row["revoked_at"] is not None:
                return None
            info = _info(row)
            now = datetime.now(UTC)
            stale = (now - LAST_USED_RESOLUTION).isoformat(timespec="milliseconds")
            # ISO-8601 UTC strings of one format sort as the times they name.
            if info.last_used_at is None or info.last_used_at < stale:
                used = now.isoformat(timespec="milliseconds")
                try:
                    self._conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                                       (used, info.id))
                except sqlite3.OperationalError:
                    return info  # a busy database must not fail the request over a hint
                info = replace(info, last_used_at=used)
        return info

    def active(self) -> bool:
        """Whether any key is unrevoked (a server with none would refuse everyone)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1").fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RateLimiter:
    """One token bucket per key id: burst ``rate_limit``, refilled at ``rate_limit``/60 per s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)

    def acquire(self, info: KeyInfo, now: float | None = None) -> float | None:
        """Take one request for ``info``: None when allowed, else the seconds to wait."""
        limit = info.rate_limit
        if limit is None:
            return None
        now = time.monotonic() if now is None else now
        per_second = limit / 60.0
        with self._lock:
            tokens, at = self._buckets.get(info.id, (float(limit), now))
            tokens = min(float(limit), tokens + max(0.0, now - at) * per_second)
            if tokens >= 1.0:
                self._buckets[info.id] = (tokens - 1.0, now)
                return None
            self._buckets[info.id] = (tokens, now)
            return (1.0 - tokens) / per_second


_BEARER_HINT = "send 'Authorization: Bearer <api key>' (keys: fmstack keys create)"


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def authenticate(header: str | None, keys: KeyStore, limiter: RateLimiter) -> KeyInfo:
    """The key behind an ``Authorization`` header, charged one request; else a 401 or 429.

    Messages never quote the header: it may hold a real key sent to the wrong place."""
    if header is None or not header.strip():
        raise _unauthorized(f"missing Authorization header; {_BEARER_HINT}")
    scheme, *rest = header.split(None, 1)
    if scheme.lower() != "bearer":
        raise _unauthorized(f"Authorization header is not a Bearer token; {_BEARER_HINT}")
    token = rest[0].strip() if rest else ""
    if not token:
        raise _unauthorized(f"Authorization header has an empty Bearer token; {_BEARER_HINT}")
    info = keys.verify(token)
    if info is None:
        raise _unauthorized("unknown or revoked API key")
    wait = limiter.acquire(info)
    if wait is not None:
        wait = math.ceil(wait * 10) / 10  # shown to a tenth, never as "0.0 s"
        raise APIError(
            429, f"rate limit of {info.rate_limit} requests per minute for key {info.name} "
            f"reached; retry in {wait:.1f} s", type="rate_limit_error",
            code="rate_limit_exceeded", headers={"Retry-After": str(math.ceil(wait))})
    return info
