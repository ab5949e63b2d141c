"""Text-to-SQL over real database files: read-only execution, row and time limits, schema
descriptions, and the ask-run-retry loop with the real SmolLM2.

Query results are checked against the same SQL run through a plain sqlite3 (or duckdb)
connection. SmolLM2-135M writes poor SQL, so the model tests check the mechanics (the reply is
produced under the prompt's schema, what runs is what the database returns, failures are
re-asked once with the error, hostile SQL changes nothing), never the quality of its SQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import ConfigError, MissingDependencyError, QueryError
from fmstack.models.types import Request
from fmstack.prompts.files import PromptFile
from fmstack.prompts.library import PromptLibrary
from fmstack.rag.sql import (
    SQLDatabase,
    ask_sql,
    describe_schema,
    extract_sql,
    run_sql,
    split_statements,
)

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, city TEXT,
                        signup_date TEXT);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT, price REAL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                     product_id INTEGER REFERENCES products(id), quantity INTEGER,
                     order_date TEXT, status TEXT);
CREATE VIEW order_totals AS
  SELECT o.id AS order_id, c.name AS customer, p.name AS product, p.price * o.quantity AS total
  FROM orders o JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = o.product_id;
"""
CUSTOMERS = [("Ana Silva", "Lisbon"), ("Ben Okafor", "Lagos"), ("Chloé Martin", "Paris"),
             ("Dev Patel", "Mumbai"), ("Eva Novak", "Prague"), ("Farid Haddad", "Beirut"),
             ("Grace Kim", "Seoul"), ("Hugo Weber", "Berlin"), ("Ines Costa", "Lisbon"),
             ("Jon Berg", "Oslo"), ("Kofi Mensah", "Accra"), ("Lena Fischer", "Berlin")]
PRODUCTS = [("Notebook", "stationery", 3.5), ("Fountain pen", "stationery", 24.0),
            ("Desk lamp", "furniture", 39.9), ("Office chair", "furniture", 149.0),
            ("USB-C cable", "electronics", 9.99), ("Headphones", "electronics", 79.0),
            ("Coffee mug", "kitchen", 7.25), ("Water bottle", "kitchen", 15.0)]
N_ORDERS = 36
QUERIES = [
    "SELECT * FROM customers ORDER BY id",
    "SELECT city, COUNT(*) AS n FROM customers GROUP BY city ORDER BY n DESC, city",
    "SELECT p.category, SUM(o.quantity * p.price) AS revenue FROM orders o "
    "JOIN products p ON p.id = o.product_id GROUP BY p.category ORDER BY revenue DESC",
    "SELECT customer, ROUND(SUM(total), 2) FROM order_totals GROUP BY customer "
    "ORDER BY 2 DESC LIMIT 5",
    "WITH big AS (SELECT * FROM orders WHERE quantity >= 3) SELECT status, COUNT(*) FROM big "
    "GROUP BY status ORDER BY status",
    "SELECT name FROM products WHERE price > (SELECT AVG(price) FROM products) ORDER BY name",
    "SELECT id, name FROM customers WHERE signup_date LIKE '2024-0%' AND city = 'Lisbon'",
]
# What SQLite's authorizer and mode=ro must stop, whatever gets past the text check.
WRITES = [
    "INSERT INTO customers (name, city) VALUES ('Mallory', 'Nowhere')",
    "REPLACE INTO products VALUES (1, 'x', 'y', 0)",
    "UPDATE products SET price = 0",
    "DELETE FROM orders",
    "DROP TABLE orders",
    "DROP VIEW order_totals",
    "CREATE TABLE evil (x)",
    "CREATE TEMP TABLE scratch (x)",
    "CREATE INDEX idx ON orders(status)",
    "ALTER TABLE customers ADD COLUMN pwned TEXT",
    "PRAGMA journal_mode = WAL",
    "PRAGMA user_version = 7",
    "VACUUM",
    "BEGIN IMMEDIATE",
    "SELECT load_extension('/tmp/evil.so')",
    "WITH x AS (SELECT 1) DELETE FROM orders",
    "WITH x AS (SELECT 1) INSERT INTO customers (name) SELECT 'Mallory' FROM x",
]


def _build(path: Path) -> Path:
    rng = random.Random(5)
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO customers (name, city, signup_date) VALUES (?, ?, ?)",
                     [(n, c, f"2024-{1 + i % 12:02d}-{3 + i:02d}")
                      for i, (n, c) in enumerate(CUSTOMERS)])
    conn.executemany("INSERT INTO products (name, category, price) VALUES (?, ?, ?)", PRODUCTS)
    conn.executemany(
        "INSERT INTO orders (customer_id, product_id, quantity, order_date, status) "
        "VALUES (?, ?, ?, ?, ?)",
        [(rng.randint(1, len(CUSTOMERS)), rng.randint(1, len(PRODUCTS)), rng.randint(1, 5),
          f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
          rng.choice(["shipped", "pending", "cancelled"])) for _ in range(N_ORDERS)])
    conn.commit()
    conn.close()
    return path


def _direct(path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return _build(tmp_path / "shop.db")


@pytest.fixture
def db(shop: Path) -> Iterator[SQLDatabase]:
    with SQLDatabase(shop, timeout_s=2.0) as database:
        yield database


# ----- running queries ----------------------------------------------------------------------


@pytest.mark.parametrize("sql", QUERIES)
def test_run_sql_returns_what_sqlite_returns(db: SQLDatabase, shop: Path, sql: str) -> None:
    result = run_sql(db, sql)
    columns, rows = _direct(shop, sql)
    assert result.columns == columns
    assert result.rows == rows and rows
    assert not result.truncated and result.sql == sql and result.seconds >= 0


def test_run_sql_on_a_path_opens_and_closes(shop: Path) -> None:
    result = run_sql(shop, "SELECT COUNT(*) FROM orders;")
    assert result.rows == [(N_ORDERS,)]


def test_row_limit_truncates(shop: Path) -> None:
    with SQLDatabase(shop, max_rows=10) as small:
        cut = run_sql(small, "SELECT * FROM orders ORDER BY id")
        assert cut.truncated and cut.rows == _direct(shop, "SELECT * FROM orders ORDER BY id "
                                                           "LIMIT 10")[1]
        exact = run_sql(small, "SELECT * FROM orders ORDER BY id LIMIT 10")
        assert not exact.truncated and len(exact.rows) == 10
        assert "(10 of more than 10 rows shown)" in cut.to_text()
    with SQLDatabase(shop, max_rows=N_ORDERS) as enough:
        assert not run_sql(enough, "SELECT * FROM orders").truncated


def test_runaway_query_is_stopped_by_the_time_limit(shop: Path) -> None:
    with SQLDatabase(shop, timeout_s=0.5) as database:
        started = time.perf_counter()
        with pytest.raises(QueryError, match=r"time limit \(0.5 s\)"):
            run_sql(database, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
                              "WHERE n < 1000000000) SELECT COUNT(*) FROM r")
        assert time.perf_counter() - started < 5
        # The limit is per query: the connection is usable again, and a legit recursive CTE runs.
        assert run_sql(database, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 "
                                 "FROM r WHERE n < 100) SELECT SUM(n) FROM r").rows == [(5050,)]


def test_time_limit_covers_fetching_rows(shop: Path) -> None:
    # The first row (all ids 1) comes at once; finding the rest means scanning 36^5 rows while
    # run_sql fetches, after execute() has returned.
    with SQLDatabase(shop, timeout_s=0.3) as database, pytest.raises(QueryError,
                                                                      match="time limit"):
        run_sql(database, "SELECT a.id FROM orders a, orders b, orders c, orders d, orders e "
                          "WHERE a.id * b.id * c.id * d.id * e.id = 1")


@pytest.mark.parametrize("sql", [
    "SELECT 1; SELECT 2",
    "SELECT * FROM customers; DROP TABLE orders",
    "SELECT 1;\n-- a comment\nDELETE FROM orders;",
])
def test_multiple_statements_are_rejected(db: SQLDatabase, shop: Path, sql: str) -> None:
    before = _sha(shop)
    with pytest.raises(QueryError, match="2 statements given"):
        run_sql(db, sql)
    assert _sha(shop) == before


def test_semicolons_in_strings_and_comments_are_one_statement(db: SQLDatabase) -> None:
    assert run_sql(db, "SELECT ';' AS s, 'it''s; fine' AS t; -- ; DROP TABLE orders").rows \
        == [(";", "it's; fine")]
    assert run_sql(db, "/* ; */ SELECT [name] FROM products WHERE id = 1;;").rows \
        == [("Notebook",)]


def test_split_statements() -> None:
    assert split_statements("SELECT 'a;b'; SELECT \"x;\" -- c;\n; ") == \
        ["SELECT 'a;b'", 'SELECT "x;"']
    assert split_statements("/* x; */ SELECT `a;` FROM [t;]") == ["SELECT `a;` FROM [t;]"]
    assert split_statements(" ; -- only a comment") == []
    with pytest.raises(QueryError, match="unterminated string"):
        split_statements("SELECT 'oops")
    with pytest.raises(QueryError, match="unterminated /\\* comment"):
        split_statements("SELECT 1 /* never closed")


@pytest.mark.parametrize("sql, message", [
    ("", "empty SQL"),
    ("  -- nothing\n", "empty SQL"),
    ("EXPLAIN SELECT 1", "only SELECT queries are allowed .* got EXPLAIN"),
    ("SELECT nope FROM orders", "OperationalError: no such column: nope"),
    ("SELEC * FROM orders", "got SELEC"),
])
def test_bad_queries_get_a_one_line_error(db: SQLDatabase, sql: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as info:
        run_sql(db, sql)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_rejected_and_the_file_is_unchanged(shop: Path, sql: str) -> None:
    before = _sha(shop)
    with SQLDatabase(shop) as database:
        with pytest.raises(QueryError, match=r"only SELECT|not allowed"):
            run_sql(database, sql)
        # The real barrier: the same statement on the raw connection, past the text check.
        with pytest.raises(sqlite3.DatabaseError,
                           match=r"not authorized|authorization denied|readonly"):
            database.connection.execute(sql)
        assert run_sql(database, "SELECT COUNT(*) FROM orders").rows == [(N_ORDERS,)]
    assert _sha(shop) == before
    # No journal, WAL or shared-memory file was left next to it either.
    assert [p.name for p in shop.parent.iterdir() if p.name.startswith("shop")] == ["shop.db"]


def test_hidden_writes_name_what_was_refused(db: SQLDatabase) -> None:
    with pytest.raises(QueryError, match="not allowed: DELETE orders"):
        run_sql(db, "WITH x AS (SELECT 1) DELETE FROM orders")
    with pytest.raises(QueryError, match="not allowed: FUNCTION load_extension"):
        run_sql(db, "SELECT load_extension('/tmp/evil.so')")


def test_attach_is_refused_and_creates_no_file(shop: Path, tmp_path: Path) -> None:
    target = tmp_path / "attached.db"
    before = _sha(shop)
    with SQLDatabase(shop) as database:
        with pytest.raises(QueryError, match="only SELECT"):
            run_sql(database, f"ATTACH DATABASE '{target}' AS x")
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            database.connection.execute(f"ATTACH DATABASE '{target}' AS x")
    assert not target.exists() and _sha(shop) == before


def test_opening_is_read_only_at_the_os_level(shop: Path) -> None:
    # Even with the authorizer removed, mode=ro makes SQLite refuse to write the file.
    before = _sha(shop)
    with SQLDatabase(shop) as database:
        database.connection.set_authorizer(None)
        database.connection.execute("PRAGMA query_only = OFF")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            database.connection.execute("DELETE FROM orders")
    assert _sha(shop) == before


# ----- opening ------------------------------------------------------------------------------


def test_a_missing_database_is_a_clear_error_and_no_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: no such database file"):
        SQLDatabase(path)
    with pytest.raises(ConfigError, match="no such database file"):
        run_sql(path, "SELECT 1")
    assert not path.exists()


def test_a_directory_or_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        SQLDatabase(tmp_path)
    text = tmp_path / "notes.db"
    text.write_text("these are not the tables you are looking for\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(text))}: not a SQLite or DuckDB"):
        SQLDatabase(text)
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(broken))}: cannot open as a SQLite"):
        SQLDatabase(broken)


def test_bad_limits_are_config_errors(shop: Path) -> None:
    with pytest.raises(ConfigError, match="max_rows"):
        SQLDatabase(shop, max_rows=0)
    with pytest.raises(ConfigError, match="timeout_s"):
        SQLDatabase(shop, timeout_s=-1)
    with pytest.raises(ConfigError, match="sample_rows"):
        describe_schema(shop, sample_rows=-1)


def test_a_uri_like_file_name_stays_read_only(tmp_path: Path) -> None:
    # Unescaped, '?mode=rwc' in the name would become the URI's query and open it writable.
    path = _build(tmp_path / "shop?mode=rwc#x.db")
    before = _sha(path)
    with SQLDatabase(path) as database:
        assert run_sql(database, "SELECT COUNT(*) FROM customers").rows == [(len(CUSTOMERS),)]
        with pytest.raises(sqlite3.DatabaseError):
            database.connection.execute("DELETE FROM orders")
    assert _sha(path) == before
    assert not (tmp_path / "shop").exists()


# ----- schema -------------------------------------------------------------------------------


def test_describe_schema_has_create_statements_and_sample_rows(shop: Path) -> None:
    text = describe_schema(shop)
    _, creates = _direct(shop, "SELECT name, sql FROM sqlite_master WHERE type IN "
                               "('table', 'view') AND name NOT LIKE 'sqlite_%'")
    assert len(creates) == 4
    for name, create in creates:
        assert create + ";" in text
        assert f"3 rows from {name}:" in text
    assert "sqlite_sequence" not in text  # AUTOINCREMENT's bookkeeping table
    # Tables come first, then views: a view's sample rows follow its own CREATE VIEW.
    assert text.index("CREATE TABLE orders") < text.index("CREATE VIEW order_totals")
    for name, city in CUSTOMERS[:3]:
        assert f"{name} | {city}" in text
    assert CUSTOMERS[3][0] not in text
    assert "order_id | customer | product | total" in text


def test_describe_schema_sample_rows_is_configurable(db: SQLDatabase) -> None:
    assert "rows from" not in describe_schema(db, sample_rows=0)
    one = describe_schema(db, sample_rows=1)
    assert "1 row from customers:" in one and CUSTOMERS[1][0] not in one


def test_describe_an_empty_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert describe_schema(empty) == "(the database has no tables)"


# ----- DuckDB -------------------------------------------------------------------------------


@pytest.fixture
def duck(tmp_path: Path, shop: Path) -> Path:
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "shop.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                 "city VARCHAR, signup_date DATE)")
    conn.execute("CREATE TABLE orders (id INTEGER, customer_id INTEGER, quantity INTEGER)")
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                     _direct(shop, "SELECT * FROM customers")[1])
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                     _direct(shop, "SELECT id, customer_id, quantity FROM orders")[1])
    conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE quantity >= 4")
    conn.close()
    return path


def test_duckdb_runs_queries_like_a_direct_connection(duck: Path) -> None:
    import duckdb

    sql = ("SELECT c.city, SUM(o.quantity) AS q FROM orders o JOIN customers c "
           "ON c.id = o.customer_id GROUP BY c.city ORDER BY q DESC, c.city")
    direct = duckdb.connect(str(duck), read_only=True)
    expected = direct.execute(sql).fetchall()
    direct.close()
    with SQLDatabase(duck, max_rows=3) as database:
        assert database.engine == "duckdb" and database.dialect == "DuckDB"
        result = run_sql(database, sql)
        assert result.columns == ["city", "q"]
        assert result.rows == expected[:3] and result.truncated
        with pytest.raises(QueryError, match="2 statements given"):
            run_sql(database, "SELECT 1; SELECT 2")


def test_duckdb_schema_from_information_schema(duck: Path) -> None:
    text = describe_schema(duck, sample_rows=2)
    assert "CREATE TABLE customers (\n  id INTEGER NOT NULL,\n  name VARCHAR NOT NULL,\n" \
           "  city VARCHAR,\n  signup_date DATE\n);" in text
    assert "CREATE VIEW big_orders AS SELECT" in text
    assert "2 rows from customers:" in text and "Ana Silva | Lisbon | 2024-01-03" in text
    assert "duckdb_tables" not in text  # DuckDB's own temp views are not the user's schema


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders VALUES (99, 1, 1)",
    "DROP TABLE orders",
    "CREATE TABLE evil (x INTEGER)",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "COPY orders TO '{tmp}/leak.csv'",
    "SELECT * FROM read_csv('{tmp}/leak.csv')",
    "INSTALL httpfs",
    "SET enable_external_access = true",
])
def test_duckdb_refuses_writes_and_file_access(duck: Path, tmp_path: Path, sql: str) -> None:
    sql = sql.format(tmp=tmp_path)
    before = _sha(duck)
    (tmp_path / "leak.csv").write_text("secret\n42\n")
    with SQLDatabase(duck) as database:
        with pytest.raises(QueryError):
            run_sql(database, sql)
        with pytest.raises(Exception, match=r"read-only|Permission|locked|disabled"):
            database.connection.execute(sql)
    assert _sha(duck) == before
    assert not (tmp_path / "other.duckdb").exists()
    assert (tmp_path / "leak.csv").read_text() == "secret\n42\n"


def test_duckdb_runaway_query_is_stopped(duck: Path) -> None:
    with SQLDatabase(duck, timeout_s=0.5) as database:
        started = time.perf_counter()
        with pytest.raises(QueryError, match="time limit"):
            run_sql(database, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
                              "WHERE n < 1000000000) SELECT COUNT(*) FROM r")
        assert time.perf_counter() - started < 5
        assert run_sql(database, "SELECT COUNT(*) FROM orders").rows == [(N_ORDERS,)]


def test_missing_duckdb_names_the_extra(duck: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)  # what an uninstalled package looks like
    with pytest.raises(MissingDependencyError, match=r"duckdb is not installed: pip install "
                                                     r"'fmstack\[rag\]'"):
        SQLDatabase(duck)


def test_importing_the_module_pulls_in_no_database_driver() -> None:
    code = ("import sys, fmstack.rag.sql; "
            "print(sorted({'duckdb', 'numpy', 'llama_cpp', 'jinja2'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ----- asking a model -----------------------------------------------------------------------


def test_extract_sql() -> None:
    assert extract_sql({"sql": "```sql\nSELECT 1\n```"}, "") == "SELECT 1"
    assert extract_sql(None, 'Sure! {"sql": "SELECT 2"} done') == "SELECT 2"
    assert extract_sql(None, "```\nSELECT 3;\n```") == "SELECT 3;"
    assert extract_sql({"sql": "```SELECT 4```"}, "") == "SELECT 4"
    assert extract_sql({"sql": "```sql SELECT 5```"}, "") == "SELECT 5"
    assert extract_sql(None, "```sqlite\nWITH a AS (SELECT 6) SELECT * FROM a\n```") == \
        "WITH a AS (SELECT 6) SELECT * FROM a"
    assert extract_sql({"sql": "   "}, "") is None


def test_the_retry_prompt_shows_what_failed() -> None:
    prompt = PromptLibrary().get("text-to-sql")
    first = prompt.messages({"schema": "S", "question": "Q"})[-1].content
    assert first.endswith("<question>\nQ\n</question>")
    retry = prompt.messages({"schema": "S", "question": "Q", "previous_sql": "SELECT x",
                             "error": "no such column: x"})[-1].content
    assert retry.endswith("This query failed:\n<sql>\nSELECT x\n</sql>\n"
                          "Error: no such column: x\nWrite a corrected query.")
    # A reply that held no SQL still changes the prompt, or greedy decoding would repeat it.
    no_sql = prompt.messages({"schema": "S", "question": "Q", "previous_sql": "",
                              "error": "the reply held no SQL query"})[-1].content
    assert "The previous reply failed.\nError: the reply held no SQL query" in no_sql


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    from fmstack.models.registry import load_model

    # One thread: the test machine's 2 cores are shared, and llama.cpp's spinning thread team
    # slows down badly when oversubscribed.
    model = load_model("smollm2", n_threads=1)
    # The weights are memory-mapped: page them in here, not inside the first test's timing.
    model.complete(Request.chat("Hi", max_tokens=1))
    yield model
    model.close()


def _forced(sql: str) -> PromptFile:
    """The builtin text-to-sql prompt with its output schema narrowed to one constant SQL
    text: the real model then writes exactly ``sql`` (decoding is constrained to it), which
    makes a failing or hostile reply reproducible."""
    builtin = PromptLibrary().get("text-to-sql")
    schema = {"type": "object", "properties": {"sql": {"const": sql}}, "required": ["sql"],
              "additionalProperties": False}
    return dataclasses.replace(builtin, output_schema=schema)


@pytest.mark.slow
def test_ask_sql_runs_the_models_sql_read_only(smollm2: Any, shop: Path) -> None:
    before = _sha(shop)
    schema = PromptLibrary().get("text-to-sql").output_schema
    assert schema is not None
    pattern = schema["properties"]["sql"]["pattern"]
    with SQLDatabase(shop) as database:
        out = ask_sql(smollm2, database, "How many orders have the status 'shipped'?",
                      answer=True)
    assert 1 <= len(out.attempts) <= 2
    for attempt in out.attempts:
        # Decoded under the prompt's schema: every attempt is a one-line SELECT/WITH.
        assert attempt.sql is not None and re.search(pattern, attempt.sql)
    assert out.sql == out.attempts[-1].sql
    assert f"SQL: {out.sql}" in str(out)
    traces = [smollm2.tracer.get(i) for i in out.trace_ids]
    assert [t["tags"]["prompt"] for t in traces][:len(out.attempts)] == \
        ["text-to-sql"] * len(out.attempts)
    if out.result is not None:  # whatever the model wrote, the rows are the database's
        assert out.sql is not None
        assert out.error is None and out.attempts[-1].error is None
        assert out.result.rows == _direct(shop, out.sql)[1][:200]
        assert out.answer and traces[-1]["tags"]["prompt"] == "text-to-sql-answer"
        assert out.result.to_text().splitlines()[0] in traces[-1]["messages"][-1]["content"]
    else:
        assert out.error == out.attempts[-1].error and out.answer is None
    assert _sha(shop) == before


def test_a_failing_query_is_re_asked_once_with_the_error(smollm2: Any, shop: Path,
                                                         tmp_path: Path) -> None:
    prompt = _forced("SELECT nope FROM orders")
    # sample_rows=0: a shorter prompt (the forced reply does not read it), a faster test.
    out = ask_sql(smollm2, shop, "How many orders are there?", prompt=prompt, sample_rows=0)
    assert [a.sql for a in out.attempts] == ["SELECT nope FROM orders"] * 2
    assert out.result is None and out.answer is None
    assert out.error == "OperationalError: no such column: nope"
    assert "Error: OperationalError: no such column: nope" in str(out)
    first, second = (smollm2.tracer.get(i) for i in out.trace_ids)
    assert "failed" not in first["messages"][-1]["content"]
    retry = second["messages"][-1]["content"]
    assert "<sql>\nSELECT nope FROM orders\n</sql>" in retry
    assert "Error: OperationalError: no such column: nope" in retry
    assert second["tags"]["attempt"] == "1"
    assert len(ask_sql(smollm2, shop, "How many orders?", prompt=prompt, retries=0,
                       sample_rows=0).attempts) == 1


@pytest.mark.parametrize("sql", ["DROP TABLE orders", "SELECT 1; DELETE FROM orders",
                                 "WITH x AS (SELECT 1) DELETE FROM orders",
                                 "ATTACH DATABASE 'evil.db' AS evil"])
def test_hostile_model_output_changes_nothing(smollm2: Any, shop: Path, tmp_path: Path,
                                              sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _sha(shop)
    out = ask_sql(smollm2, shop, "Clean up the database.", prompt=_forced(sql), retries=0,
                  sample_rows=0)
    assert out.result is None and out.sql == sql
    assert out.error is not None and re.search("only SELECT|not allowed|statements given",
                                               out.error)
    assert _sha(shop) == before and not (tmp_path / "evil.db").exists()


def test_fenced_sql_is_unwrapped_and_answered(smollm2: Any, shop: Path, tmp_path: Path) -> None:
    # One line: llama-cpp-python's grammar for a JSON "const" writes a newline raw, not as \n.
    prompt = _forced("```sql SELECT COUNT(*) AS n FROM orders```")
    out = ask_sql(smollm2, shop, "How many orders are there?", prompt=prompt, answer=True,
                  sample_rows=0)
    assert out.sql == "SELECT COUNT(*) AS n FROM orders" and len(out.attempts) == 1
    assert out.result is not None and out.result.rows == [(N_ORDERS,)]
    assert out.answer  # phrased by SmolLM2: its wording is not checked
    answer_trace = smollm2.tracer.get(out.trace_ids[-1])
    assert answer_trace["tags"]["prompt"] == "text-to-sql-answer"
    assert f"n\n{N_ORDERS}" in answer_trace["messages"][-1]["content"]
    assert str(out).startswith("SQL: SELECT COUNT(*) AS n FROM orders\n")


def test_ask_sql_bad_arguments(smollm2: Any, shop: Path) -> None:
    with pytest.raises(ConfigError, match="retries"):
        ask_sql(smollm2, shop, "q", retries=-1)
    with pytest.raises(ConfigError, match="question is empty"):
        ask_sql(smollm2, shop, "  ")
    with pytest.raises(ConfigError, match="no such database file"):
        ask_sql(smollm2, shop.parent / "missing.db", "How many orders?")
