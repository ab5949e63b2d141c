"""Tabular RAG: answer a question from a SQLite (or DuckDB) file by having a model write SQL.

The parts, each usable alone:

* ``SQLDatabase(path)`` opens a database **read-only**, with a row limit and a time limit;
* ``describe_schema(db)`` writes the schema for a prompt: each table's and view's CREATE
  statement plus a few sample rows, so the model sees value formats (``'2024-03-01'`` or
  ``1709251200``?). That layout is the one Rajkumar et al. (2022, "Evaluating the Text-to-SQL
  Capabilities of Large Language Models") found to work best for zero-shot text-to-SQL;
* ``run_sql(db, sql)`` runs one SELECT and returns an ``SQLResult``;
* ``ask_sql(model, db, question)`` renders the schema and question through the
  ``text-to-sql`` prompt file, runs the SQL the model writes, re-asks once with the database's
  error message when it fails, and optionally phrases an answer from the rows. The SQL is
  always part of the answer.

Everything the model writes is untrusted, so safety does not depend on the model or on the
prompt. For SQLite the layers are: the file is opened with ``mode=ro`` (the OS-level open is
read-only, so no journal is written and a missing file is never created), ``PRAGMA
query_only``, ``trusted_schema=OFF`` (a hostile file's views cannot call functions with side
effects), ``SQLITE_LIMIT_ATTACHED=0``, and an authorizer that allows only SELECT, reads,
recursive CTEs and ordinary functions (not ``load_extension`` or ``fts3_tokenizer``) — the
authorizer is the real barrier, checked by SQLite while it compiles each statement, so it also
catches writes hidden behind ``WITH ... DELETE``. ``run_sql`` first checks the text itself (one
statement, starting with SELECT or WITH) only to give the model a clear error message. For
DuckDB: ``read_only=True`` and ``enable_external_access=false`` (no file reads or writes, no
ATTACH, no extension installs), with the configuration locked so a query cannot turn it back on.

A SQLite file in WAL mode gets its ``-wal`` and ``-shm`` files created next to it if they are
missing (a reader needs the shared-memory index); the database file itself is not written.

Time limits: SQLite calls a progress handler every few thousand VM instructions, which
aborts the query past the deadline; DuckDB is interrupted from a timer thread. Both cover
fetching the rows too, since both engines produce rows lazily.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fmstack.errors import ConfigError, OutputValidationError, QueryError, missing

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.prompts.files import PromptFile

Engine = Literal["sqlite", "duckdb"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DUCKDB_MAGIC = b"DUCK"  # at byte offset 8 of a DuckDB file
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    sqlite3.SQLITE_RECURSIVE}
# Functions that reach outside the query: loading native code, or (fts3_tokenizer with two
# arguments) installing a C pointer supplied as a blob.
_DENIED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}
# Authorizer action codes by name, to say what was refused.
_ACTION_NAMES = {getattr(sqlite3, f"SQLITE_{n}"): n.replace("_", " ") for n in (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
    "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE",
    "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
    "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA", "READ", "SELECT",
    "TRANSACTION", "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE",
    "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT", "RECURSIVE")}
_PROGRESS_OPS = 10_000  # VM instructions between deadline checks: well under a millisecond
_MAX_VALUE_BYTES = 10_000_000  # SQLITE_LIMIT_LENGTH: no 1 GB zeroblob() from a query
# A code fence around the whole text: its language tag only counts when a newline follows
# (so "```SELECT 1```" keeps its SELECT); a tag written on the same line is removed below.
_FENCE = re.compile(r"^\s*```(?:[\w-]*[ \t]*\n)?(.*?)\n?\s*```\s*$", re.DOTALL)
_LANG_TAG = re.compile(r"^(?:sql|sqlite|duckdb)\s+(?=(?:select|with)\b)", re.IGNORECASE)


# ----- results ------------------------------------------------------------------------------


@dataclass
class SQLResult:
    """What one query returned: at most ``max_rows`` rows; ``truncated`` says there were more."""

    sql: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    seconds: float

    def to_text(self, max_rows: int = 20, max_width: int = 60) -> str:
        """The rows as a ``|``-separated table with a header, for a prompt or a terminal."""
        lines = [" | ".join(self.columns)]
        for row in self.rows[:max_rows]:
            lines.append(" | ".join(_cell(v, max_width) for v in row))
        shown = min(len(self.rows), max_rows)
        if not self.rows:
            lines.append("(no rows)")
        elif shown < len(self.rows) or self.truncated:
            more = "more than " if self.truncated else ""
            lines.append(f"({shown} of {more}{len(self.rows)} rows shown)")
        return "\n".join(lines)


@dataclass
class SQLAttempt:
    """One round of text-to-SQL: the SQL the model wrote (None when its reply held none) and
    why it failed (None when it ran)."""

    sql: str | None
    error: str | None
    trace_id: int | None = None


@dataclass
class SQLAnswer:
    """The outcome of ``ask_sql``. ``sql`` is the last SQL tried, ``result`` its rows when it
    ran, ``answer`` the phrased answer (when asked for), ``error`` why no SQL ran after all the
    retries. ``trace_ids`` are the model calls made (SQL attempts, then the answer)."""

    question: str
    sql: str | None
    result: SQLResult | None
    answer: str | None = None
    error: str | None = None
    attempts: list[SQLAttempt] = field(default_factory=list)
    trace_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None

    def __str__(self) -> str:
        # The SQL is printed with every answer: the reader must be able to check what was run.
        parts = [f"SQL: {self.sql if self.sql is not None else '(none)'}"]
        if self.error is not None:
            parts.append(f"Error: {self.error}")
        if self.result is not None:
            parts.append(self.result.to_text())
        if self.answer is not None:
            parts.append(f"Answer: {self.answer}")
        return "\n".join(parts)


# ----- opening ------------------------------------------------------------------------------


class SQLDatabase:
    """A read-only connection to a SQLite or DuckDB file with a row and a time limit.

    ``engine`` is found from the file's header unless given. ``connection`` is the raw
    connection (``sqlite3.Connection`` or ``duckdb.DuckDBPyConnection``), already locked down;
    use ``run_sql`` for limits and clear errors."""

    def __init__(
        self, path: str | Path, *, max_rows: int = 200, timeout_s: float = 5.0,
        engine: Engine | None = None,
    ) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ConfigError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) \
                or not 0 < timeout_s < math.inf:
            raise ConfigError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        self.path = Path(path).expanduser()
        self.max_rows = max_rows
        self.timeout_s = float(timeout_s)
        # Checked before connecting: both engines would create a missing file in write mode,
        # and their own errors for it do not name the file.
        if not self.path.exists():
            raise ConfigError(f"{self.path}: no such database file")
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: not a file (expected a SQLite or DuckDB database)")
        self.engine: Engine = engine or _detect_engine(self.path)
        if self.engine == "sqlite":
            self.connection: Any = _open_sqlite(self.path)
        elif self.engine == "duckdb":
            self.connection = _open_duckdb(self.path)
        else:
            raise ConfigError(f"unknown engine {engine!r} (expected sqlite or duckdb)")
        self._deadline = float("inf")  # read by the SQLite progress handler
        self._timed_out = False
        self._denied: str | None = None  # the first action the authorizer refused
        if self.engine == "sqlite":
            self.connection.set_authorizer(self._authorize)
            self.connection.set_progress_handler(self._progress, _PROGRESS_OPS)

    @property
    def dialect(self) -> str:
        return "SQLite" if self.engine == "sqlite" else "DuckDB"

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> SQLDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLDatabase {self.engine} {self.path}>"

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                   source: str | None) -> int:
        if action in _ALLOWED_ACTIONS and not (
                action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS):
            return sqlite3.SQLITE_OK
        what = _ACTION_NAMES.get(action, f"action {action}")
        target = arg2 if action == sqlite3.SQLITE_FUNCTION else arg1
        # SQLite may ask again after a refusal (DROP TABLE then asks to DELETE from
        # sqlite_master): the first refusal is the one that names what the query tried.
        if self._denied is None:
            self._denied = f"{what} {target}" if target else what
        return sqlite3.SQLITE_DENY

    def _progress(self) -> int:
        if time.perf_counter() > self._deadline:
            self._timed_out = True
            return 1  # non-zero aborts the statement with SQLITE_INTERRUPT
        return 0


def _detect_engine(path: Path) -> Engine:
    with path.open("rb") as f:
        head = f.read(16)
    if head == _SQLITE_MAGIC or head == b"":  # SQLite treats an empty file as an empty database
        return "sqlite"
    if head[8:12] == _DUCKDB_MAGIC:
        return "duckdb"
    raise ConfigError(f"{path}: not a SQLite or DuckDB database (unrecognized file header)")


def _open_sqlite(path: Path) -> sqlite3.Connection:
    # A URI path must be percent-encoded: '?' or '#' in a file name would otherwise start the
    # query string and silently drop mode=ro.
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
        # Reading the schema makes SQLite parse the file now, so a corrupt or foreign file is
        # reported here, naming the path, rather than at the first question.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot open as a SQLite database ({e})") from None
    return conn


def _open_duckdb(path: Path) -> Any:
    try:
        import duckdb
    except ImportError:
        raise missing("duckdb", "rag") from None
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False, "autoload_known_extensions": False,
        "autoinstall_known_extensions": False, "lock_configuration": True}
    try:
        return duckdb.connect(str(path), read_only=True, config=config)
    except duckdb.Error as e:
        raise ConfigError(f"{path}: cannot open as a DuckDB database ({e})") from None


def _as_database(db: SQLDatabase | str | Path) -> tuple[SQLDatabase, bool]:
    """The database for ``db`` and whether the caller opened it (and must close it)."""
    if isinstance(db, SQLDatabase):
        return db, False
    if isinstance(db, str | Path):
        return SQLDatabase(db), True
    raise ConfigError(f"expected an SQLDatabase or a path, got {type(db).__name__}")


# ----- running ------------------------------------------------------------------------------


def run_sql(db: SQLDatabase | str | Path, sql: str) -> SQLResult:
    """Run one read-only SELECT (or WITH ... SELECT) and return its first ``db.max_rows`` rows.

    Raises ``QueryError`` for anything else (several statements, a write, a syntax error, a
    query past ``db.timeout_s``), with a message meant for a person or a model to act on."""
    database, owned = _as_database(db)
    try:
        if not isinstance(sql, str):
            raise QueryError(f"SQL must be a string, got {type(sql).__name__}")
        text = sql.strip()
        if database.engine == "sqlite":
            # The one statement as split here runs, not the text: Python's sqlite3 counts the
            # empty statement in "SELECT 1;;" as a second one.
            statement = _check_sqlite_statement(text)
            return _run_sqlite(database, statement, text)
        _check_duckdb_statement(text)
        return _run_duckdb(database, text)
    finally:
        if owned:
            database.close()


def split_statements(sql: str) -> list[str]:
    """The statements in ``sql`` with comments removed, split on top-level semicolons (not
    those inside quotes or comments); empty statements are dropped. A string, quoted
    identifier or block comment left open is a ``QueryError``."""
    out: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            current.append(" ")
        elif ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise QueryError("unterminated /* comment in the SQL")
            i = end + 2
            current.append(" ")
        elif ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while True:
                j = sql.find(close, j)
                if j < 0:
                    kind = "string" if ch == "'" else "quoted identifier"
                    raise QueryError(f"unterminated {kind} starting at {sql[i:i + 20]!r}")
                # A doubled quote is an escaped quote inside the literal (not for [...]).
                if close != "]" and sql.startswith(close * 2, j):
                    j += 2
                    continue
                break
            current.append(sql[i:j + 1])
            i = j + 1
        elif ch == ";":
            out.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    out.append("".join(current).strip())
    return [s for s in out if s]


def _check_sqlite_statement(sql: str) -> str:
    statements = split_statements(sql)
    if not statements:
        raise QueryError("empty SQL: expected one SELECT statement")
    if len(statements) > 1:
        raise QueryError(f"{len(statements)} statements given: run one SELECT at a time")
    # complete_statement uses SQLite's own tokenizer: a second opinion on unbalanced quotes.
    if not sqlite3.complete_statement(sql.rstrip().rstrip(";") + ";"):
        raise QueryError("incomplete SQL statement (unbalanced quotes or comment)")
    first = re.match(r"[A-Za-z]+", statements[0])
    keyword = first.group(0).upper() if first else statements[0][:20]
    if keyword not in ("SELECT", "WITH"):
        raise QueryError(f"only SELECT queries are allowed (read-only database), got {keyword}")
    return statements[0]


def _check_duckdb_statement(sql: str) -> None:
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(_one_line(str(e))) from None
    if not statements:
        raise QueryError("empty SQL: expected one SELECT statement")
    if len(statements) > 1:
        raise QueryError(f"{len(statements)} statements given: run one SELECT at a time")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError("only SELECT queries are allowed (read-only database), got "
                         f"{kind.name}")


def _run_sqlite(db: SQLDatabase, statement: str, sql: str) -> SQLResult:
    conn: sqlite3.Connection = db.connection
    db._denied, db._timed_out = None, False
    started = time.perf_counter()
    db._deadline = started + db.timeout_s
    try:
        cursor = conn.execute(statement)
        rows = cursor.fetchmany(db.max_rows + 1)
        columns = [d[0] for d in cursor.description or ()]
        cursor.close()
    except sqlite3.Error as e:
        if db._timed_out:
            raise QueryError(f"query stopped by the time limit ({db.timeout_s:g} s): make it "
                             "cheaper (filter first, avoid cross joins)") from None
        if db._denied is not None:
            raise QueryError(f"not allowed: {db._denied} (the database is read-only; only "
                             "SELECT queries run)") from None
        raise QueryError(f"{type(e).__name__}: {_one_line(str(e))}") from None
    finally:
        db._deadline = float("inf")
    return SQLResult(sql=sql, columns=columns, rows=[tuple(r) for r in rows[:db.max_rows]],
                     truncated=len(rows) > db.max_rows, seconds=time.perf_counter() - started)


def _run_duckdb(db: SQLDatabase, sql: str) -> SQLResult:
    import duckdb

    conn = db.connection
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        conn.interrupt()

    timer = threading.Timer(db.timeout_s, interrupt)
    started = time.perf_counter()
    timer.start()
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(db.max_rows + 1)
        columns = [d[0] for d in cursor.description or ()]
    except duckdb.Error as e:
        if fired.is_set():
            raise QueryError(f"query stopped by the time limit ({db.timeout_s:g} s): make it "
                             "cheaper (filter first, avoid cross joins)") from None
        raise QueryError(f"{type(e).__name__}: {_one_line(str(e))}") from None
    finally:
        timer.cancel()
    return SQLResult(sql=sql, columns=columns, rows=[tuple(r) for r in rows[:db.max_rows]],
                     truncated=len(rows) > db.max_rows, seconds=time.perf_counter() - started)


# ----- schema -------------------------------------------------------------------------------


def describe_schema(db: SQLDatabase | str | Path, *, sample_rows: int = 3) -> str:
    """Every table and view: its CREATE statement, then its first ``sample_rows`` rows in a
    comment (``sample_rows=0`` leaves them out). Internal ``sqlite_*`` tables are skipped."""
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 0:
        raise ConfigError(f"sample_rows must be an integer >= 0, got {sample_rows!r}")
    database, owned = _as_database(db)
    try:
        objects = (_sqlite_objects(database) if database.engine == "sqlite"
                   else _duckdb_objects(database))
        blocks = []
        for name, create in objects:
            block = create.strip().rstrip(";") + ";"
            if sample_rows:
                block += "\n" + _samples(database, name, sample_rows)
            blocks.append(block)
        return "\n\n".join(blocks) if blocks else "(the database has no tables)"
    finally:
        if owned:
            database.close()


def _sqlite_objects(db: SQLDatabase) -> list[tuple[str, str]]:
    rows = run_sql(db, "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'view') "
                       "AND name NOT LIKE 'sqlite_%' AND sql IS NOT NULL "
                       "ORDER BY type = 'view', name").rows
    return [(str(name), str(sql)) for name, sql in rows]


def _duckdb_objects(db: SQLDatabase) -> list[tuple[str, str]]:
    # information_schema, not duckdb_tables(): the standard views say the same in every
    # DuckDB version. current_database() leaves out the temp catalog's built-in views.
    tables = run_sql(db, "SELECT table_schema, table_name, table_type FROM "
                         "information_schema.tables WHERE table_catalog = current_database() "
                         "AND table_schema NOT IN ('information_schema', 'pg_catalog') "
                         "ORDER BY table_type = 'VIEW', table_schema, table_name").rows
    views = {(s, n): d for s, n, d in run_sql(
        db, "SELECT table_schema, table_name, view_definition FROM information_schema.views "
            "WHERE table_catalog = current_database()").rows}
    columns: dict[tuple[str, str], list[str]] = {}
    for schema, table, column, kind, nullable in run_sql(
            db, "SELECT table_schema, table_name, column_name, data_type, is_nullable FROM "
                "information_schema.columns WHERE table_catalog = current_database() "
                "ORDER BY table_schema, table_name, ordinal_position").rows:
        spec = f"{_quote_ident(column)} {kind}" + (" NOT NULL" if nullable == "NO" else "")
        columns.setdefault((schema, table), []).append(spec)
    out = []
    for schema, table, kind in tables:
        name = _qualified(schema, table)
        if kind == "VIEW" and views.get((schema, table)):
            out.append((name, str(views[(schema, table)])))
        else:
            cols = ",\n  ".join(columns.get((schema, table), []))
            out.append((name, f"CREATE TABLE {name} (\n  {cols}\n)"))
    return out


def _samples(db: SQLDatabase, name: str, n: int) -> str:
    from_clause = name if "." in name or name.startswith('"') else _quote_ident(name)
    try:
        result = run_sql(db, f"SELECT * FROM {from_clause} LIMIT {n}")
    except QueryError as e:
        return f"/* no sample rows from {name}: {e} */"
    body = result.to_text(max_rows=n, max_width=40)
    count = len(result.rows)
    return f"/*\n{count} row{'' if count == 1 else 's'} from {name}:\n{body}\n*/"


def _qualified(schema: str, table: str) -> str:
    return table if schema == "main" else f"{_quote_ident(schema)}.{_quote_ident(table)}"


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    else:
        text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----- asking a model -----------------------------------------------------------------------


def ask_sql(
    model: Model, db: SQLDatabase | str | Path, question: str, *,
    prompt: str | PromptFile = "text-to-sql", retries: int = 1, answer: bool = False,
    answer_prompt: str | PromptFile = "text-to-sql-answer", sample_rows: int = 3,
    max_answer_rows: int = 20,
) -> SQLAnswer:
    """Answer ``question`` from ``db`` with SQL written by ``model``.

    The prompt gets the schema (``describe_schema``), the dialect and the question; its
    ``output_schema`` (``{"sql": string}``) is enforced while decoding where the backend can,
    so the reply parses. A query that fails is sent back with the database's error for up to
    ``retries`` more attempts. With ``answer=True`` a second call phrases the answer from the
    first ``max_answer_rows`` rows. A model that never produces SQL that runs gives an
    SQLAnswer with ``error`` set, not an exception."""
    from fmstack.prompts.library import PromptLibrary

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("the question is empty")
    library = PromptLibrary()
    sql_prompt = library.get(prompt) if isinstance(prompt, str) else prompt
    database, owned = _as_database(db)
    try:
        schema = describe_schema(database, sample_rows=sample_rows)
        out = SQLAnswer(question=question, sql=None, result=None)
        constrained = (sql_prompt.output_schema is not None
                       and "json_schema" in model.capabilities.response_formats)
        values: dict[str, Any] = {"schema": schema, "question": question,
                                  "dialect": database.dialect}
        for attempt in range(retries + 1):
            if out.attempts:
                last = out.attempts[-1]
                values.update(previous_sql=last.sql or "", error=last.error or "")
            step = _ask_once(model, database, sql_prompt, values, constrained, attempt)
            out.attempts.append(step.attempt)
            if step.attempt.trace_id is not None:
                out.trace_ids.append(step.attempt.trace_id)
            out.sql = step.attempt.sql if step.attempt.sql is not None else out.sql
            if step.result is not None:
                out.result = step.result
                break
        if out.result is None:
            out.error = out.attempts[-1].error
            return out
        if answer:
            phrase = library.get(answer_prompt) if isinstance(answer_prompt, str) \
                else answer_prompt
            request = phrase.request({"question": question, "sql": out.result.sql,
                                      "rows": out.result.to_text(max_rows=max_answer_rows)})
            request = request.model_copy(update={"tags": {**request.tags, "task": "text-to-sql"}})
            completion = model.complete(request)
            out.answer = completion.text.strip()
            if completion.trace_id is not None:
                out.trace_ids.append(completion.trace_id)
        return out
    finally:
        if owned:
            database.close()


@dataclass
class _Step:
    attempt: SQLAttempt
    result: SQLResult | None


def _ask_once(model: Model, db: SQLDatabase, prompt: PromptFile, values: dict[str, Any],
              constrained: bool, attempt: int) -> _Step:
    # The file may not declare the retry inputs; only send the variables it declares.
    vars = {k: v for k, v in values.items() if k in prompt.inputs}
    overrides: dict[str, Any] = {} if constrained else {"response_format": None}
    request = prompt.request(vars, **overrides)
    request = request.model_copy(update={"tags": {
        **request.tags, "task": "text-to-sql", "attempt": str(attempt)}})
    try:
        completion = model.complete(request)
    except OutputValidationError as e:
        return _Step(SQLAttempt(None, f"the reply was not the expected JSON ({e})"), None)
    sql = extract_sql(completion.parsed if constrained else None, completion.text)
    if sql is None:
        return _Step(SQLAttempt(None, "the reply held no SQL query", completion.trace_id), None)
    try:
        result = run_sql(db, sql)
    except QueryError as e:
        return _Step(SQLAttempt(sql, str(e), completion.trace_id), None)
    return _Step(SQLAttempt(sql, None, completion.trace_id), result)


def extract_sql(parsed: Any, text: str) -> str | None:
    """The SQL in a model's reply: the ``sql`` field of the parsed JSON, else of the first
    JSON object in ``text``, else ``text`` itself; code fences around it are removed (models
    add them even inside a JSON string)."""
    sql: Any = parsed.get("sql") if isinstance(parsed, dict) else None
    if sql is None:
        start = text.find("{")
        if start >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(text[start:])
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("sql"), str):
                sql = value["sql"]
    if sql is None:
        sql = text
    if not isinstance(sql, str):
        return None
    fenced = _FENCE.match(sql)
    if fenced:
        sql = _LANG_TAG.sub("", fenced.group(1).strip())
    sql = sql.strip()
    return sql or None


__all__ = [
    "SQLAnswer", "SQLAttempt", "SQLDatabase", "SQLResult", "ask_sql", "describe_schema",
    "extract_sql", "run_sql", "split_statements",
]
