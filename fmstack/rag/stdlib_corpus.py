"""A retrieval benchmark built from the running interpreter's standard library docstrings.

Nothing is downloaded or shipped: ``build_stdlib_corpus()`` walks a fixed list of pure-Python
stdlib modules and turns every public function, class and method with a docstring of its own
into one query and one document:

* the **query** is the docstring's first sentence ("Serialize ``obj`` to a JSON formatted
  ``str``.");
* the **document** is the rest of the docstring (the first sentence removed), with id the
  qualified name (``json.dumps``) and metadata ``module``, ``kind`` (function/class/method)
  and ``qualname``;
* the query's one relevant document (grade 1) is its own docstring's rest. Queries whose text
  is identical (``"Return self."``-style sentences shared by several objects) are merged into
  one query with all of those documents relevant.

What is left out, and why:

* private names (a leading ``_``, which also drops dunder methods), names outside ``__all__``
  when a module defines one, objects defined in another public module (re-exports would be
  counted twice; objects of private implementation modules such as ``_heapq`` and of a
  package's submodules count as the exporting module's) and aliases
  (``bisect.bisect = bisect_right``, ``__iadd__ = __add__``), whose docstring is another's;
* objects without a docstring of their own: ``__doc__`` is read directly, never
  ``inspect.getdoc``, which would copy a base class's docstring onto an override;
* duplicated documents: when two objects' documents are the same text (a ``functools.wraps``
  copy, an alias), only the first in sorted order is kept, since no retriever could tell them
  apart;
* documents under ``min_words`` words and queries under ``min_query_words`` words.

First sentences: signature lines that C functions put first (``dumps(obj) -> str``,
``deque([iterable[, maxlen]]) --> deque object``) and the ``Name(field: type)`` docstrings
``dataclasses`` writes are dropped; the sentence then runs over the first paragraph up to the
first period followed by whitespace (not counting "e.g.", "i.e.", "etc." and friends), or to
the end of the paragraph.

The result depends on the Python version (docstrings change between releases), so reports
should state ``StdlibCorpus.python_version``. Everything is sorted by id: the same interpreter
and arguments always give the same corpus.

Qrels file (what ``write_qrels`` writes and ``fmstack rag eval N QRELS`` reads): JSON Lines,
one query per line, ``{"query_id": str, "query": str, "relevant": {doc_id: grade}}`` with
grades positive numbers (1 here; graded judgments may use larger numbers).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import random
import re
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmstack.errors import ConfigError
from fmstack.rag.documents import Document

# Pure-Python modules (each has a .py file) that import without side effects, spread over
# text, data, files, networking protocols, concurrency and the language itself, so queries
# range from narrow ("Encode bytes-like object b using Ascii85 and return a bytes object.") to
# vague ("Determine if rollover should occur.", relevant to two handlers' methods).
# Never: test suites, idlelib, tkinter, turtle, antigravity, this (side effects or GUI).
DEFAULT_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "email.message", "email.utils", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "graphlib", "gzip",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar", "inspect",
    "ipaddress", "json", "logging", "logging.handlers", "mailbox", "mimetypes", "operator",
    "optparse", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "posixpath", "pprint",
    "queue", "random", "re", "shlex", "shutil", "smtplib", "socketserver", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tokenize",
    "traceback", "typing", "urllib.parse", "urllib.request", "uuid", "warnings", "zipfile",
)
EXCLUDED_MODULES = ("idlelib", "tkinter", "turtle", "turtledemo", "antigravity", "this",
                    "test", "lib2to3", "__main__")

_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.",
                            "no.", "mr.", "dr.", "st.", "incl.", "esp."})


@dataclass
class Query:
    """A benchmark query and its judged documents (doc id -> grade; higher is more relevant)."""

    id: str
    text: str
    relevant: dict[str, float]


@dataclass
class StdlibCorpus:
    """Documents and queries of one build; ``skipped`` counts what was left out, by reason."""

    documents: list[Document]
    queries: list[Query]
    python_version: str
    modules: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


# ----- docstrings -> (query, document) ------------------------------------------------------


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "([":
            depth += 1
        elif text[i] in ")]":
            depth -= 1
            if depth == 0:
                return i
    return -1


# "int, int, int -> Construct a date ..." and "[sep] -> string ...": argument types before an
# arrow, with no name in front (prose such as "scheme -> URL mappings" has no commas-only
# prefix, so it is left alone).
_TYPES_ARROW = re.compile(r"(?:[\w\[\]]+(?:,\s*[\w\[\]]+)*)?[ \t]*-{1,2}>[ \t]+")
# "csv_reader = reader(iterable ...)" usage lines and "expr = BoolOp(...) | ..." grammar lines.
_USAGE = re.compile(r"\w+ = [\w.]+\(")


def _drop_signatures(text: str, name: str) -> str:
    """``text`` without the signatures C functions and dataclasses put first:
    ``name(args)`` (possibly wrapped over lines, repeated, followed by ``-> result`` or
    ``--> result``), ``name(args) - description`` (the description is kept), a leading
    ``types -> `` arrow, or a first paragraph of usage/grammar lines."""
    while True:
        text = text.lstrip()
        m = re.match(r"(?:[\w.]+\.)?(\w+)\(", text)
        if not m or m.group(1) != name:
            break
        close = _matching_paren(text, m.end() - 1)
        if close < 0:
            break
        rest = text[close + 1:]
        arrow = re.match(r"[ \t]*\n?[ \t]*-{1,2}>[^\n]*", rest)
        described = re.match(r"[ \t]+-{1,2}[ \t]+", rest)
        if arrow:
            text = rest[arrow.end():]
        elif described:
            return rest[described.end():].strip()
        elif re.match(r"[ \t]*(\n|$)", rest):
            text = rest
        else:  # "name(x) is ..." is prose that happens to start with a call
            break
    if _USAGE.match(text):
        parts = re.split(r"\n\s*\n", text, maxsplit=1)
        text = parts[1] if len(parts) > 1 else ""
    arrow = _TYPES_ARROW.match(text)
    if arrow:
        text = text[arrow.end():]
    return text.strip()


def _sentence_end(paragraph: str) -> int:
    """Index just past the first sentence of a whitespace-collapsed paragraph."""
    for m in re.finditer(r"[.!?](?=\s|$)", paragraph):
        word = paragraph[: m.end()].rsplit(" ", 1)[-1].lower()
        if word.lstrip("(") in _ABBREVIATIONS:
            continue
        return m.end()
    return len(paragraph)


def split_docstring(doc: str, name: str) -> tuple[str, str]:
    """``(first sentence, rest)`` of a raw ``__doc__``: signature lines dropped, the sentence
    taken from the first paragraph (whitespace collapsed), the rest keeping its paragraphs."""
    text = _drop_signatures(inspect.cleandoc(doc), name)
    paragraphs = re.split(r"\n\s*\n", text, maxsplit=1)
    first = " ".join(paragraphs[0].split())
    end = _sentence_end(first)
    sentence, tail = first[:end].strip(), first[end:].strip()
    rest = "\n\n".join(p for p in (tail, *paragraphs[1:]) if p.strip())
    return sentence, rest.strip()


# ----- walking the modules ------------------------------------------------------------------


@dataclass
class _Entry:
    qualname: str  # module-qualified: json.JSONEncoder.encode
    kind: str
    module: str
    name: str
    doc: str
    source: str


def _defined_here(obj: Any, module: str) -> bool:
    """Whether ``module`` is the public home of ``obj``: it was defined there, in one of the
    package's submodules (``json.JSONEncoder`` lives in ``json.encoder``), or in a private
    implementation module (``_heapq``, ``_thread``, ``email._parseaddr``), whose objects are
    documented under the public module that exports them."""
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    return (owner == module or owner.startswith(module + ".")
            or any(part.startswith("_") for part in owner.split(".")))


def _public_names(mod: Any) -> list[str]:
    names = [n for n in vars(mod) if not n.startswith("_")]
    exported = getattr(mod, "__all__", None)
    if exported is not None:
        allowed = set(exported)
        names = [n for n in names if n in allowed]
    return sorted(names)


def _as_routine(raw: Any) -> Any | None:
    """The function behind a class attribute if it is a method of any flavour, else None
    (properties, constants and nested classes are not methods)."""
    if isinstance(raw, staticmethod | classmethod):
        return raw.__func__
    if inspect.isfunction(raw) or inspect.isbuiltin(raw) or inspect.ismethoddescriptor(raw):
        return raw
    return None


def _source(mod: Any) -> str:
    path = getattr(mod, "__file__", None)
    if not path:
        return mod.__name__
    stdlib = sysconfig.get_paths()["stdlib"]
    try:
        return Path(path).resolve().relative_to(Path(stdlib).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _entries(module: str) -> Iterator[_Entry]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a DeprecationWarning on import is not ours to show
        try:
            mod = importlib.import_module(module)
        except ImportError as e:  # e.g. a module this platform or build lacks
            raise ConfigError(f"stdlib corpus: cannot import {module} ({e})") from None
    source = _source(mod)
    for name in _public_names(mod):
        obj = getattr(mod, name)
        # An alias (``bisect = bisect_right``) would duplicate the original's docstring.
        if getattr(obj, "__name__", None) != name or not _defined_here(obj, module):
            continue
        if inspect.isclass(obj):
            yield _Entry(f"{module}.{name}", "class", module, name, obj.__doc__ or "", source)
            for attr in sorted(vars(obj)):
                if attr.startswith("_"):
                    continue
                method = _as_routine(vars(obj)[attr])
                # Defined in this class under this name: not an alias (``__iadd__ = __add__``,
                # ``converter = time.localtime``), whose docstring belongs to another object.
                if getattr(method, "__qualname__", None) == f"{obj.__qualname__}.{attr}":
                    yield _Entry(f"{module}.{name}.{attr}", "method", module, attr,
                                 getattr(method, "__doc__", None) or "", source)
        elif inspect.isroutine(obj):
            yield _Entry(f"{module}.{name}", "function", module, name, obj.__doc__ or "", source)


def _check_module(module: str) -> None:
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ConfigError(f"stdlib corpus: {module!r} is not a module name")
    top = module.split(".")[0]
    if top in EXCLUDED_MODULES or module.split(".")[-1].startswith("test"):
        raise ConfigError(f"stdlib corpus: module {module} is excluded (test, GUI or side "
                          f"effects on import)")
    if top not in sys.stdlib_module_names:
        raise ConfigError(f"stdlib corpus: {module} is not a standard library module")


def build_stdlib_corpus(
    modules: Sequence[str] | None = None,
    *,
    min_words: int = 8,
    min_query_words: int = 3,
    limit: int | None = None,
    seed: int = 0,
) -> StdlibCorpus:
    """The docstring benchmark over ``modules`` (default ``DEFAULT_MODULES``).

    ``limit`` keeps a random sample of that many documents (chosen with ``seed``, then sorted
    again) and only the queries about them: a smaller benchmark of the same kind. To score
    fewer queries against the full corpus, sample ``corpus.queries`` instead."""
    if min_words < 0 or min_query_words < 0:
        raise ConfigError("stdlib corpus: min_words and min_query_words must be >= 0")
    if limit is not None and limit < 1:
        raise ConfigError(f"stdlib corpus: limit must be >= 1, not {limit}")
    names = sorted(dict.fromkeys(DEFAULT_MODULES if modules is None else modules))
    if not names:
        raise ConfigError("stdlib corpus: no modules given")
    for module in names:
        _check_module(module)

    skipped = {"no_docstring": 0, "short_document": 0, "short_query": 0, "duplicate": 0}
    seen_ids: set[str] = set()
    seen_bodies: set[str] = set()
    kept: list[tuple[_Entry, str, str]] = []
    entries = sorted((e for m in names for e in _entries(m)), key=lambda e: e.qualname)
    for entry in entries:
        if not entry.doc.strip():
            skipped["no_docstring"] += 1
            continue
        sentence, body = split_docstring(entry.doc, entry.name)
        if len(body.split()) < max(min_words, 1):
            skipped["short_document"] += 1
        elif len(sentence.split()) < max(min_query_words, 1):
            skipped["short_query"] += 1
        elif entry.qualname in seen_ids or body in seen_bodies:
            skipped["duplicate"] += 1
        else:
            seen_ids.add(entry.qualname)
            seen_bodies.add(body)
            kept.append((entry, sentence, body))

    if limit is not None and limit < len(kept):
        chosen = random.Random(seed).sample(range(len(kept)), limit)
        kept = [kept[i] for i in sorted(chosen)]
    if not kept:
        raise ConfigError(f"stdlib corpus: no documents in {', '.join(names)} "
                          f"(min_words={min_words}, min_query_words={min_query_words})")

    documents = [
        Document(id=e.qualname, text=body, source=e.source,
                 metadata={"module": e.module, "kind": e.kind,
                           "qualname": e.qualname[len(e.module) + 1:]})
        for e, _, body in kept
    ]
    by_text: dict[str, Query] = {}
    for e, sentence, _ in kept:
        query = by_text.setdefault(sentence, Query(id=e.qualname, text=sentence, relevant={}))
        query.relevant[e.qualname] = 1.0
    queries = sorted(by_text.values(), key=lambda q: q.id)
    return StdlibCorpus(documents, queries, sys.version.split()[0], names, skipped)


# ----- qrels --------------------------------------------------------------------------------


def write_qrels(corpus: StdlibCorpus | Sequence[Query], path: str | Path) -> Path:
    """Write the queries as a qrels JSONL file (atomically: a temp file, then a rename)."""
    queries = corpus.queries if isinstance(corpus, StdlibCorpus) else corpus
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for q in queries:
                row = {"query_id": q.id, "query": q.text, "relevant": q.relevant}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _grade(value: Any, where: str, doc_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: grade of {doc_id!r} must be a finite number, not {value!r}")
    return float(value)


def read_qrels(path: str | Path) -> list[Query]:
    """The queries of a qrels JSONL file; blank lines are ignored, anything malformed raises a
    ConfigError naming ``file:line`` and the problem. A grade of 0 (judged not relevant) is
    kept; the metrics count only positive grades as relevant."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{p}: qrels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read qrels ({e})") from None
    queries: list[Query] = []
    ids: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: a row must be a JSON object, not {type(row).__name__}")
        missing = [k for k in ("query_id", "query", "relevant") if k not in row]
        if missing:
            raise ConfigError(f"{where}: missing key {', '.join(missing)}")
        extra = sorted(set(row) - {"query_id", "query", "relevant"})
        if extra:
            raise ConfigError(f"{where}: unknown key {', '.join(extra)}")
        qid, text, relevant = row["query_id"], row["query"], row["relevant"]
        if not isinstance(qid, str) or not qid:
            raise ConfigError(f"{where}: query_id must be a non-empty string")
        if qid in ids:
            raise ConfigError(f"{where}: query_id {qid!r} repeats line {ids[qid]}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: query must be a non-empty string")
        if not isinstance(relevant, dict) or not relevant:
            raise ConfigError(f"{where}: relevant must be a non-empty object "
                              "{doc_id: grade}")
        grades = {str(d): _grade(g, where, d) for d, g in relevant.items()}
        if not any(g > 0 for g in grades.values()):
            raise ConfigError(f"{where}: query {qid!r} has no document with a positive grade")
        ids[qid] = n
        queries.append(Query(id=qid, text=text, relevant=grades))
    if not queries:
        raise ConfigError(f"{p}: qrels file has no queries")
    return queries
