"""API keys and rate limits for ``fmstack serve``: the key store on a real SQLite file, the token
bucket on a deterministic clock, ``authenticate``'s errors, ``fmstack keys`` through typer's
CliRunner, and a real keyed server driven by the official ``openai`` client."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
from servers import free_port  # tests/ is on sys.path under pytest
from typer.testing import CliRunner, Result

from fmstack.cli import app
from fmstack.config import db_path
from fmstack.errors import ConfigError
from fmstack.serve.auth import KeyInfo, KeyStore, RateLimiter, authenticate
from fmstack.serve.errors import APIError


@pytest.fixture
def store(fmstack_home: Path) -> Iterator[KeyStore]:
    keys = KeyStore(db_path())
    yield keys
    keys.close()


def db_bytes(path: Path) -> bytes:
    """Everything SQLite wrote for this database: the file and its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# ----- KeyStore -------------------------------------------------------------------------------


def test_only_the_hash_of_a_key_is_stored_and_it_verifies(store: KeyStore) -> None:
    new = store.create("ci", rate_limit=30)
    assert new.secret.startswith("fms-") and len(new.secret) >= 4 + 43
    assert new.secret.startswith(new.info.prefix) and len(new.info.prefix) == 10
    assert (new.info.name, new.info.rate_limit, new.info.revoked_at) == ("ci", 30, None)
    other = store.create("dev")
    assert other.secret != new.secret and other.info.rate_limit is None

    raw = db_bytes(store.path)
    for secret in (new.secret, other.secret):
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert digest.encode() in raw  # what is stored is the hash...
        assert secret.encode() not in raw  # ...never the key, nor its secret part
        assert secret[10:].encode() not in raw and secret[10:30].encode() not in raw

    verified = store.verify(new.secret)
    assert verified is not None and verified.last_used_at is not None
    assert verified == replace(new.info, last_used_at=verified.last_used_at)
    assert store.verify(new.secret + "x") is None and store.verify("") is None
    assert store.verify(new.secret[:-1]) is None
    assert [k.name for k in store.list()] == ["ci", "dev"] and store.active()


def test_a_revoked_key_no_longer_verifies_even_from_another_connection(store: KeyStore) -> None:
    new = store.create("ci")
    assert store.verify(new.secret) is not None
    # Revoked through a second connection, as `fmstack keys revoke` does beside a running server.
    with KeyStore(store.path) as elsewhere:
        revoked = elsewhere.revoke("ci")
    assert revoked.revoked_at is not None and revoked.id == new.info.id
    assert store.verify(new.secret) is None
    assert not store.active()
    assert [k.name for k in store.list()] == ["ci"] and store.list(include_revoked=False) == []
    # The name is free again, for a new secret; the old one stays dead.
    again = store.create("ci")
    assert store.verify(again.secret) is not None and store.verify(new.secret) is None
    # Revoking by the listed prefix works as well as by name.
    assert store.revoke(again.info.prefix).id == again.info.id


def test_names_are_unique_among_active_keys_and_bad_input_is_refused(store: KeyStore) -> None:
    store.create("ci")
    with pytest.raises(ConfigError, match="an active key named 'ci' already exists"):
        store.create("ci")
    assert len(store.list()) == 1
    for name in ("", " ci", "a" * 65, "tab\there"):
        with pytest.raises(ConfigError, match="key name"):
            store.create(name)
    for limit in (0, -5, True, 2.5):
        with pytest.raises(ConfigError, match="rate limit must be a whole number"):
            store.create("x", rate_limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no API key named or prefixed 'nobody'"):
        store.revoke("nobody")
    store.revoke("ci")
    with pytest.raises(ConfigError, match="'ci' is already revoked"):
        store.revoke("ci")


def test_revoke_refuses_a_string_that_matches_two_keys(store: KeyStore) -> None:
    first = store.create("first")
    store.create(first.info.prefix)  # a key *named* like the other key's prefix
    with pytest.raises(ConfigError, match="matches 2 active keys"):
        store.revoke(first.info.prefix)
    assert store.verify(first.secret) is not None


def test_last_used_is_written_at_most_once_a_minute(store: KeyStore) -> None:
    new = store.create("ci")
    first = store.verify(new.secret)
    assert first is not None and first.last_used_at is not None
    second = store.verify(new.secret)
    assert second is not None and second.last_used_at == first.last_used_at
    [stored] = store.list()
    assert stored.last_used_at == first.last_used_at
    # Two minutes later (moved back in the file), the next use records itself again.
    old = (datetime.now(UTC) - timedelta(minutes=2)).isoformat(timespec="milliseconds")
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE api_keys SET last_used_at = ?", (old,))
    third = store.verify(new.secret)
    assert third is not None and third.last_used_at is not None and third.last_used_at > old
    assert store.list()[0].last_used_at == third.last_used_at


def test_verify_from_many_threads(store: KeyStore) -> None:
    secrets = [store.create(f"k{i}").secret for i in range(4)]
    results: list[str | None] = []
    lock = threading.Lock()

    def work(secret: str) -> None:
        for _ in range(50):
            info = store.verify(secret)
            with lock:
                results.append(info.name if info else None)

    threads = [threading.Thread(target=work, args=(s,)) for s in secrets * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results), key=str) == ["k0", "k1", "k2", "k3"] and len(results) == 400


# ----- RateLimiter ----------------------------------------------------------------------------


def key(id: int, rate_limit: int | None) -> KeyInfo:
    return KeyInfo(id=id, name=f"k{id}", prefix="fms-xxxxxx", created_at="",
                   last_used_at=None, revoked_at=None, rate_limit=rate_limit)


def test_token_bucket_bursts_then_refills_continuously() -> None:
    limiter, k = RateLimiter(), key(1, 3)  # 3 per minute: one token every 20 s
    assert [limiter.acquire(k, now=100.0) for _ in range(3)] == [None, None, None]
    assert limiter.acquire(k, now=100.0) == pytest.approx(20.0)
    assert limiter.acquire(k, now=110.0) == pytest.approx(10.0)  # half a token back
    assert limiter.acquire(k, now=120.0) is None
    assert limiter.acquire(k, now=120.0) == pytest.approx(20.0)
    # A long idle spell refills to the burst, not beyond it.
    assert [limiter.acquire(k, now=10_000.0) for _ in range(4)] == [None, None, None,
                                                                   pytest.approx(20.0)]
    # Keys have their own buckets; a key without a limit is never refused.
    assert limiter.acquire(key(2, 3), now=10_000.0) is None
    free = key(3, None)
    assert all(limiter.acquire(free, now=10_000.0) is None for _ in range(1000))


# ----- authenticate ---------------------------------------------------------------------------


def unauthorized(header: str | None, store: KeyStore) -> APIError:
    with pytest.raises(APIError) as caught:
        authenticate(header, store, RateLimiter())
    e = caught.value
    assert (e.status, e.type, e.code) == (401, "invalid_request_error", "invalid_api_key")
    assert e.headers == {"WWW-Authenticate": "Bearer"}
    return e


def test_authenticate_errors_are_precise_and_never_quote_the_key(store: KeyStore) -> None:
    new = store.create("ci", rate_limit=1)
    assert "missing Authorization header" in unauthorized(None, store).message
    assert "missing Authorization header" in unauthorized("  ", store).message
    e = unauthorized(f"Basic {new.secret}", store)
    assert "not a Bearer token" in e.message and new.secret not in e.message
    assert "empty Bearer token" in unauthorized("Bearer   ", store).message
    e = unauthorized(f"Bearer {new.secret}x", store)
    assert e.message == "unknown or revoked API key"

    limiter = RateLimiter()
    # The scheme is case-insensitive (RFC 7235).
    assert authenticate(f"bearer {new.secret}", store, limiter).name == "ci"
    with pytest.raises(APIError) as caught:
        authenticate(f"Bearer {new.secret}", store, limiter)
    e = caught.value
    assert (e.status, e.type, e.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert e.headers == {"Retry-After": "60"}
    assert e.message.startswith("rate limit of 1 requests per minute for key ci reached; "
                                "retry in ") and new.secret not in e.message
    store.revoke("ci")
    assert unauthorized(f"Bearer {new.secret}", store).message == "unknown or revoked API key"


# ----- fmstack keys ---------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, ["keys", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_keys_cli_create_list_revoke() -> None:
    made = invoke("create", "ci", "--rate-limit", "5")
    assert made.exit_code == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("fms-") and "\n" not in secret
    assert "will not be shown again" in made.stderr and secret not in made.stderr
    with KeyStore() as store:  # the CLI wrote to the same FMSTACK_HOME database
        info = store.verify(secret)
    assert info is not None and (info.name, info.rate_limit) == ("ci", 5)

    as_json = json.loads(invoke("create", "dev", "--json").stdout)
    assert as_json["name"] == "dev" and as_json["secret"].startswith(as_json["prefix"])
    assert as_json["rate_limit"] is None

    listed = invoke("list")
    assert listed.exit_code == 0
    assert "ci" in listed.stdout and info.prefix in listed.stdout and "5/min" in listed.stdout
    assert "unlimited" in listed.stdout and "never" in listed.stdout
    assert secret not in listed.stdout and as_json["secret"] not in listed.stdout
    rows = json.loads(invoke("list", "--json").stdout)
    assert [r["name"] for r in rows] == ["ci", "dev"] and "secret" not in rows[0]

    gone = invoke("revoke", "ci")
    assert gone.exit_code == 0 and "revoked key 'ci'" in gone.stdout
    rows = json.loads(invoke("list", "--json").stdout)
    assert rows[0]["revoked_at"] is not None and rows[1]["revoked_at"] is None
    assert [r["name"] for r in json.loads(invoke("list", "--active", "--json").stdout)] == ["dev"]
    assert json.loads(invoke("revoke", as_json["prefix"], "--json").stdout)["name"] == "dev"
    assert "no API keys yet" not in invoke("list").stdout


def test_keys_cli_errors_are_one_line() -> None:
    assert "no API keys yet" in invoke("list").stdout
    assert "no API key named or prefixed 'nobody'" in error_line(invoke("revoke", "nobody"))
    assert "rate limit must be a whole number" in error_line(
        invoke("create", "x", "--rate-limit", "0"))
    assert invoke("create", "ci").exit_code == 0
    assert "already exists" in error_line(invoke("create", "ci"))


# ----- a keyed server, through the openai client ----------------------------------------------


@contextmanager
def keyed_server(keys: KeyStore) -> Iterator[str]:
    import uvicorn

    from fmstack.models.registry import load_model
    from fmstack.serve.app import create_app

    model = load_model("smollm2", n_threads=1)
    port = free_port()
    app_ = create_app({"smollm2": model}, keys=keys)
    server = uvicorn.Server(uvicorn.Config(app_, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        model.close()


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def test_a_keyed_server_refuses_missing_bad_revoked_and_over_limit_keys(store: KeyStore) -> None:
    good = store.create("app")
    limited = store.create("batch", rate_limit=2)
    with keyed_server(store) as base:
        with urllib.request.urlopen(base + "/health", timeout=10) as r:  # open without a key
            assert r.status == 200

        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.urlopen(base + "/v1/models", timeout=10)
        assert raw.value.code == 401
        error = json.loads(raw.value.read())["error"]
        assert error["code"] == "invalid_api_key"
        assert error["message"].startswith("missing Authorization header")
        # The openai client will not start without a key; Omit drops the header it builds.
        with pytest.raises(openai.AuthenticationError) as caught:
            client(base, "unused").models.list(extra_headers={"Authorization": openai.Omit()})
        assert caught.value.status_code == 401
        assert "missing Authorization header" in str(caught.value.message)
        assert caught.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError, match="unknown or revoked API key"):
            client(base, good.secret + "x").models.list()

        ok = client(base, good.secret)
        assert [m.id for m in ok.models.list().data] == ["smollm2"]
        out = ok.chat.completions.create(model="smollm2", max_tokens=2, temperature=0,
                                         messages=[{"role": "user", "content": "Hi"}])
        assert out.choices[0].message.content is not None

        # Two requests a minute for "batch": the third is a 429 with Retry-After.
        batch = client(base, limited.secret)
        batch.models.list()
        batch.models.list()
        with pytest.raises(openai.RateLimitError) as limit:
            batch.models.list()
        assert limit.value.status_code == 429
        assert 1 <= int(limit.value.response.headers["retry-after"]) <= 60
        assert "rate limit of 2 requests per minute for key batch" in str(limit.value.message)
        assert ok.models.list().data  # other keys are not held back

        # Revoked from the CLI while the server runs: refused from the next request on.
        assert invoke("revoke", "app").exit_code == 0
        with pytest.raises(openai.AuthenticationError, match="unknown or revoked API key"):
            ok.models.list()
