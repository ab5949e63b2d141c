"""Loaders: files and directories in, ``Document``s out.

``load(path)`` reads one file or walks a directory (sorted, so two loads list documents in the
same order) and returns a ``LoadResult``: the documents, and the files or rows it skipped with
the reason. A bad file never stops a load: binary or non-UTF-8 text, a corrupt PDF, an empty
file, a JSONL line that does not parse are each logged as a warning, recorded in ``skipped``
and the load goes on. Only a path that does not exist (or an explicitly named file of a type
we cannot read) is an error.

Formats, chosen by extension:

- ``.txt``: the text as is (``\\r\\n`` becomes ``\\n``, as for every text format);
- ``.md``/``.markdown``: the text as is; ``title`` is the first heading;
- ``.html``/``.htm``: visible text with paragraph breaks, without script/style/nav/template/svg
  content; ``title`` from ``<title>`` (else the first ``<h1>``). The standard library's
  ``html.parser`` is enough for this (it tolerates broken markup and decodes entities), so
  no HTML dependency is needed;
- ``.pdf`` (pypdf, extra ``rag``): one document per file, pages joined by a blank line, and
  ``page_starts`` (the character offset where each page begins) so a chunk can cite its page;
- ``.jsonl``: one document per line, text from ``text_field``, the other fields as metadata
  (where a field shares a name with a standard key below, the standard key wins), id
  ``file.jsonl#<id_field value or line number>``; ids must be unique within a file;
- ``.csv``: one document per row, the same way (row numbers count data rows from 1).

Ids are paths relative to the loaded root (for a single file: its name), so re-loading the
same tree gives the same ids. Metadata always has ``source`` (the absolute path), ``type``,
``mtime`` and ``sha256``: of the file's bytes, or for a row, of that row (its line's bytes
for JSONL, its fields as canonical JSON for CSV), so an unchanged hash means an unchanged
document and an incremental index can skip it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from fmstack.errors import ConfigError, missing
from fmstack.rag.chunkers import markdown_headings
from fmstack.rag.documents import Document

log = logging.getLogger(__name__)

TYPES: dict[str, str] = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".jsonl": "jsonl",
    ".csv": "csv",
}


@dataclass
class Skipped:
    """A file (or a row, as ``file.jsonl:LINE``) that was not loaded, and why."""

    path: str
    reason: str


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI: ``12 documents, 2 skipped``."""
        return f"{len(self.documents)} documents, {len(self.skipped)} skipped"


class _Skip(Exception):
    """Raised inside a reader: this file (or row) is not loadable, for the given reason."""


@dataclass
class _Source:
    """What a reader gets: the file, its id prefix, its bytes and the metadata every document
    from it starts with."""

    path: Path
    doc_id: str
    data: bytes
    base: dict[str, Any]
    text_field: str
    id_field: str
    skipped: list[Skipped]


def load(
    path: str | Path,
    *,
    glob: str | None = None,
    recursive: bool = True,
    text_field: str = "text",
    id_field: str = "id",
) -> LoadResult:
    """Load one file, or every supported file under a directory.

    ``glob`` (e.g. ``"*.md"``) selects files in a directory, below every subfolder when
    ``recursive``; without it every file with a supported extension is taken. Hidden files
    and folders (``.git``) are left out of a walk. ``text_field``/``id_field`` name the text
    and the id of JSONL and CSV rows.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"no such file or directory: {root}")
    result = LoadResult()
    if root.is_dir():
        for file in _walk(root, glob, recursive):
            rel = file.relative_to(root).as_posix()
            if file.suffix.lower() not in TYPES:
                _skip(result, rel, f"unsupported file type {file.suffix or '(none)'!r}")
                continue
            _load_file(file, rel, result, text_field, id_field)
    else:
        if root.suffix.lower() not in TYPES:
            raise ConfigError(
                f"{root}: unsupported file type {root.suffix or '(none)'!r} "
                f"(supported: {', '.join(TYPES)})"
            )
        _load_file(root, root.name, result, text_field, id_field)
    return result


def _walk(root: Path, glob: str | None, recursive: bool) -> list[Path]:
    if glob is None:
        candidates: Iterator[Path] = root.rglob("*") if recursive else root.glob("*")
        files = [p for p in candidates if p.suffix.lower() in TYPES]
    else:
        files = list(root.rglob(glob) if recursive else root.glob(glob))
    visible = [
        p
        for p in files
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(visible, key=lambda p: p.relative_to(root).as_posix())


def _skip(result: LoadResult | list[Skipped], where: str, reason: str) -> None:
    log.warning("skipped %s: %s", where, reason)
    (result.skipped if isinstance(result, LoadResult) else result).append(Skipped(where, reason))


def _load_file(file: Path, doc_id: str, result: LoadResult, text_field: str, id_field: str) -> None:
    kind = TYPES[file.suffix.lower()]
    try:
        data = file.read_bytes()
        mtime = file.stat().st_mtime
    except OSError as e:
        _skip(result, doc_id, f"unreadable: {e.strerror or e}")
        return
    if not data.strip():
        _skip(result, doc_id, "empty")
        return
    source = str(file.resolve())
    base: dict[str, Any] = {
        "source": source,
        "type": kind,
        "mtime": mtime,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    src = _Source(file, doc_id, data, base, text_field, id_field, result.skipped)
    try:
        documents = READERS[kind](src)
    except _Skip as e:
        _skip(result, doc_id, str(e))
        return
    result.documents.extend(documents)


def _document(src: _Source, text: str, **metadata: Any) -> Document:
    if not text.strip():
        raise _Skip("empty")
    return Document(
        id=src.doc_id,
        text=text,
        source=src.base["source"],
        metadata={**src.base, **{k: v for k, v in metadata.items() if v is not None}},
    )


def _decode(data: bytes) -> str:
    """UTF-8 (a BOM allowed) or BOM-marked UTF-16; anything else is not text we read."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise _Skip("not valid UTF-16 text") from None
    else:
        if b"\x00" in data:
            raise _Skip("binary file (contains NUL bytes)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise _Skip(f"not UTF-8 text (invalid byte at offset {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- text, Markdown, HTML -------------------------------------------------------------------


def _read_text(src: _Source) -> list[Document]:
    return [_document(src, _decode(src.data))]


def _read_markdown(src: _Source) -> list[Document]:
    text = _decode(src.data)
    title = next((t for _, _, t in markdown_headings(text) if t), None)
    return [_document(src, text, title=title)]


class _HTMLText(HTMLParser):
    """Visible text of a page: block elements become paragraph breaks, ``<br>`` a line break,
    other whitespace collapses to one space (except inside ``<pre>``)."""

    # <head> is not listed: its text-bearing parts are hidden anyway, and an unclosed <head>
    # (common in hand-written pages) would otherwise hide the whole body.
    HIDDEN = frozenset({"script", "style", "nav", "noscript", "template", "svg"})
    LINES = frozenset({"li", "tr", "td", "th", "dt", "dd"})
    _BLOCKS = """p div section article main aside header footer h1 h2 h3 h4 h5 h6 ul ol li dl dt dd
    table thead tbody tfoot tr th td blockquote pre figure figcaption form fieldset details summary
    address hr caption"""
    BLOCKS = frozenset(_BLOCKS.split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0
        self.breaks = 0  # newlines owed before the next text
        self.in_title = False
        self.title = ""
        self.in_h1 = False
        self.h1 = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.breaks = max(self.breaks, 1)
        elif tag in self.BLOCKS:
            self.breaks = max(self.breaks, 1 if tag in self.LINES else 2)
            self.pre += tag == "pre"
            self.in_h1 = self.in_h1 or tag == "h1"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.breaks = max(self.breaks, 1)
        elif tag in self.BLOCKS:
            self.breaks = 2

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.breaks = max(self.breaks, 1 if tag in self.LINES else 2)
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            if tag == "h1":
                self.in_h1 = False

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
            return
        if self.hidden:
            return
        if self.in_h1:
            self.h1 += data
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self.breaks or not self.parts or self.parts[-1].endswith((" ", "\n")):
                data = data.lstrip(" ")
            if not data:
                return
        if self.breaks and self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * self.breaks)
        self.breaks = 0
        self.parts.append(data)

    def text(self) -> str:
        return "".join(self.parts).strip()


def _read_html(src: _Source) -> list[Document]:
    parser = _HTMLText()
    parser.feed(_decode(src.data))
    parser.close()
    title = " ".join(parser.title.split()) or " ".join(parser.h1.split()) or None
    return [_document(src, parser.text(), title=title)]


# --- PDF ------------------------------------------------------------------------------------


def _read_pdf(src: _Source) -> list[Document]:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise missing("pypdf", "rag") from None
    # pypdf raises many exception types on malformed files (PdfReadError, ValueError,
    # KeyError, ...); any of them means this file is corrupt, not that the load should stop.
    try:
        reader = PdfReader(io.BytesIO(src.data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Skip("encrypted PDF")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        info = reader.metadata
        title = info.title if info is not None else None
    except _Skip:
        raise
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e).strip() else ""
        raise _Skip(f"corrupt PDF ({type(e).__name__}: {detail})") from None
    if not any(pages):
        raise _Skip("no extractable text in PDF (scanned pages?)")
    starts: list[int] = []
    pos = 0
    for text in pages:
        starts.append(pos)
        pos += len(text) + 2  # the blank line that joins pages
    text = "\n\n".join(pages)
    return [
        _document(
            src, text, title=str(title) if title else None, pages=len(pages), page_starts=starts
        )
    ]


# --- rows: JSONL and CSV --------------------------------------------------------------------


def _row_document(
    src: _Source, row: dict[str, Any], where: int, row_sha: str, seen: dict[str, int]
) -> Document | None:
    """A row's document, or ``None`` (recorded as skipped) if it has no usable text or its
    id repeats an earlier row's."""
    place = f"{src.doc_id}:{where}"
    text = row.get(src.text_field)
    if not isinstance(text, str):
        reason = (
            f"no {src.text_field!r} field"
            if text is None
            else f"{src.text_field!r} field is {type(text).__name__}, not a string"
        )
        _skip(src.skipped, place, reason)
        return None
    if not text.strip():
        _skip(src.skipped, place, "empty")
        return None
    raw_id = row.get(src.id_field)
    row_id = str(raw_id) if raw_id not in (None, "") else str(where)
    if row_id in seen:
        _skip(src.skipped, place, f"duplicate id {row_id!r} (first at {seen[row_id]})")
        return None
    seen[row_id] = where
    fields = {k: v for k, v in row.items() if k != src.text_field}
    return Document(
        id=f"{src.doc_id}#{row_id}",
        text=text.replace("\r\n", "\n"),
        source=src.base["source"],
        metadata={**fields, **src.base, "sha256": row_sha, "row": where},
    )


def _read_jsonl(src: _Source) -> list[Document]:
    text = _decode(src.data)
    documents: list[Document] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            _skip(src.skipped, f"{src.doc_id}:{number}", f"invalid JSON: {e.msg}")
            continue
        if not isinstance(row, dict):
            _skip(src.skipped, f"{src.doc_id}:{number}", "not a JSON object")
            continue
        sha = hashlib.sha256(line.encode("utf-8")).hexdigest()
        if (doc := _row_document(src, row, number, sha, seen)) is not None:
            documents.append(doc)
    return documents


def _read_csv(src: _Source) -> list[Document]:
    reader = csv.DictReader(io.StringIO(_decode(src.data), newline=""), restkey="_extra")
    try:
        columns = reader.fieldnames or []
        if src.text_field not in columns:
            raise _Skip(f"no {src.text_field!r} column (columns: {', '.join(columns)})")
        documents: list[Document] = []
        seen: dict[str, int] = {}
        for number, row in enumerate(reader, start=1):
            sha = hashlib.sha256(
                json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8")
            ).hexdigest()
            if (doc := _row_document(src, row, number, sha, seen)) is not None:
                documents.append(doc)
    except csv.Error as e:
        raise _Skip(f"malformed CSV: {e}") from None
    return documents


READERS: dict[str, Callable[[_Source], list[Document]]] = {
    "text": _read_text,
    "markdown": _read_markdown,
    "html": _read_html,
    "pdf": _read_pdf,
    "jsonl": _read_jsonl,
    "csv": _read_csv,
}
