"""Loaders on real files written into a temporary tree: every format, a directory walk with
globs, stable ids and hashes, and bad files skipped (and counted) instead of failing the load.
The PDF is a hand-written minimal PDF with real text content streams, read back by pypdf."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fmstack.errors import ConfigError, MissingDependencyError
from fmstack.rag.chunkers import RecursiveChunker
from fmstack.rag.loaders import LoadResult, Skipped, load


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: Helvetica text, one line per string, one page per list."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


PAGE_ONE = ["Retrieval needs good chunks.", "Page one talks about apples (red ones)."]
PAGE_TWO = ["The second page is about kiwis.", "Kiwis are green inside."]

HTML = """<!DOCTYPE html>
<html><head><title>  The   Garden  </title>
<style>body { color: red; }</style>
<script>var secret = "do not index";</script>
</head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Growing   tomatoes</h1>
<p>Tomatoes need <b>sun</b> &amp; water.
   They grow fast.</p>
<p>Line one<br>Line two</p>
<ul><li>Stake them</li><li>Prune them</li></ul>
<pre>def water():
    return "daily"</pre>
<noscript>Enable JavaScript</noscript>
</body></html>
"""

MARKDOWN = (
    "Some intro.\n\n```\n# not the title\n```\n\n# Real Title\n\nBody text.\n\n## Part\n\nMore.\n"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("Plain text file.\r\nSecond line.\n")
    (root / "notes.md").write_text(MARKDOWN)
    (root / "page.html").write_text(HTML)
    (root / "paper.pdf").write_bytes(make_pdf([PAGE_ONE, PAGE_TWO]))
    (root / "sub" / "b.txt").write_text("Nested file.")
    (root / "sub" / "deeper" / "c.markdown").write_text("# Deep\n\nDeep text.")
    (root / ".git" / "config.txt").write_text("hidden, never loaded")
    (root / ".hidden.txt").write_text("hidden, never loaded")
    (root / "rows.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "q1", "text": "First row.", "lang": "en", "score": 3}),
                json.dumps({"text": "Row without an id.", "tags": ["x", "y"]}),
                "",
                "{not json",
                json.dumps({"id": "q3", "body": "no text field"}),
                json.dumps({"id": "q1", "text": "Same id again."}),
                json.dumps(["not", "an", "object"]),
                json.dumps({"id": 7, "text": "   "}),
                json.dumps({"id": 8, "text": "Numeric id."}),
                json.dumps({"id": 9, "text": 42}),
            ]
        )
        + "\n"
    )
    (root / "table.csv").write_text(
        'id,text,author\nr1,"A row, with a comma.",ann\n,"Multi\nline row.",bob\nr3,,cy\n'
    )
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (root / "empty.md").write_text("")
    (root / "blank.txt").write_text("  \n\n \t\n")
    (root / "corrupt.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nthis is not a pdf"
    )
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "wrong.csv").write_text("title,body\nx,y\n")
    return root


EXPECTED_IDS = [
    "a.txt",
    "notes.md",
    "page.html",
    "paper.pdf",
    "rows.jsonl#q1",
    "rows.jsonl#2",
    "rows.jsonl#8",
    "sub/b.txt",
    "sub/deeper/c.markdown",
    "table.csv#r1",
    "table.csv#2",
]


def test_directory_load_ids_metadata_and_skips(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fmstack.rag.loaders"):
        result = load(tree)
    assert isinstance(result, LoadResult)
    assert [d.id for d in result.documents] == EXPECTED_IDS
    skipped = {s.path: s.reason for s in result.skipped}
    assert skipped == {
        "binary.txt": "binary file (contains NUL bytes)",
        "blank.txt": "empty",
        "corrupt.pdf": skipped["corrupt.pdf"],
        "empty.md": "empty",
        "latin1.txt": "not UTF-8 text (invalid byte at offset 3)",
        "rows.jsonl:4": skipped["rows.jsonl:4"],
        "rows.jsonl:5": "no 'text' field",
        "rows.jsonl:6": "duplicate id 'q1' (first at 1)",
        "rows.jsonl:7": "not a JSON object",
        "rows.jsonl:8": "empty",
        "rows.jsonl:10": "'text' field is int, not a string",
        "table.csv:3": "empty",
        "wrong.csv": "no 'text' column (columns: title, body)",
    }
    assert skipped["corrupt.pdf"].startswith("corrupt PDF (")
    assert skipped["rows.jsonl:4"].startswith("invalid JSON: ")
    assert result.summary() == f"{len(EXPECTED_IDS)} documents, 13 skipped"
    # Each skip is a logged warning naming the file.
    warned = [r.getMessage() for r in caplog.records if r.name == "fmstack.rag.loaders"]
    assert len(warned) == 13
    assert "skipped binary.txt: binary file (contains NUL bytes)" in warned

    for doc in result.documents:
        file = tree / doc.id.split("#")[0]
        assert doc.source == doc.metadata["source"] == str(file.resolve())
        assert doc.metadata["mtime"] == file.stat().st_mtime
        assert doc.text.strip()
        if "#" not in doc.id:
            assert doc.metadata["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    types = {d.id: d.metadata["type"] for d in result.documents}
    assert types["a.txt"] == "text" and types["sub/deeper/c.markdown"] == "markdown"
    assert types["page.html"] == "html" and types["paper.pdf"] == "pdf"
    assert types["rows.jsonl#q1"] == "jsonl" and types["table.csv#r1"] == "csv"


def test_reload_is_identical_and_an_edit_changes_one_hash(tree: Path) -> None:
    first = load(tree)
    second = load(tree)
    assert [(d.id, d.text, d.metadata) for d in first.documents] == [
        (d.id, d.text, d.metadata) for d in second.documents
    ]
    (tree / "sub" / "b.txt").write_text("Nested file, edited.")
    rows = (tree / "rows.jsonl").read_text().replace("First row.", "First row, edited.")
    (tree / "rows.jsonl").write_text(rows)
    third = load(tree)
    before = {d.id: d.metadata["sha256"] for d in first.documents}
    after = {d.id: d.metadata["sha256"] for d in third.documents}
    assert before.keys() == after.keys()
    changed = {doc_id for doc_id in before if before[doc_id] != after[doc_id]}
    # A row's hash covers that row only: editing one row leaves its neighbours unchanged.
    assert changed == {"sub/b.txt", "rows.jsonl#q1"}


def test_text_and_markdown(tree: Path) -> None:
    docs = {d.id: d for d in load(tree).documents}
    assert docs["a.txt"].text == "Plain text file.\nSecond line.\n"
    notes = docs["notes.md"]
    assert notes.text == MARKDOWN
    assert notes.metadata["title"] == "Real Title"  # the fenced "# not the title" is code
    assert docs["sub/deeper/c.markdown"].metadata["title"] == "Deep"
    assert "title" not in docs["a.txt"].metadata


def test_html_to_clean_text(tree: Path) -> None:
    [page] = load(tree / "page.html").documents
    assert page.id == "page.html"
    assert page.metadata["title"] == "The Garden"
    assert page.text == (
        "Growing tomatoes\n\n"
        "Tomatoes need sun & water. They grow fast.\n\n"
        "Line one\nLine two\n\n"
        "Stake them\nPrune them\n\n"
        'def water():\n    return "daily"'
    )


def test_html_title_falls_back_to_h1_and_tolerates_broken_markup(tmp_path: Path) -> None:
    path = tmp_path / "broken.htm"
    # An unclosed <head>, <p> and <i>, and escaped entities.
    path.write_text(
        "<html><head><meta charset=utf-8><body><h1>Main &lt;Topic&gt;</h1><p>Unclosed <i>text"
    )
    [doc] = load(path).documents
    assert doc.metadata["title"] == "Main <Topic>"
    assert doc.text == "Main <Topic>\n\nUnclosed text"


def test_pdf_pages_and_page_citations(tree: Path) -> None:
    from pypdf import PdfReader

    [pdf] = load(tree / "paper.pdf").documents
    assert pdf.id == "paper.pdf"
    assert pdf.metadata["pages"] == 2
    starts = pdf.metadata["page_starts"]
    reference = [p.extract_text().strip() for p in PdfReader(tree / "paper.pdf").pages]
    assert pdf.text == "\n\n".join(reference)
    assert pdf.text[starts[0] : starts[1]].strip() == reference[0]
    assert pdf.text[starts[1] :] == reference[1]
    for line in PAGE_ONE:
        assert 0 <= pdf.text.index(line) < starts[1]
    for line in PAGE_TWO:
        assert pdf.text.index(line) >= starts[1]
    chunks = RecursiveChunker(size=45, overlap=0).split(pdf)
    for chunk in chunks:
        expected = 2 if chunk.start >= starts[1] else 1
        assert chunk.metadata["page"] == chunk.metadata["page_end"] == expected
        assert chunk.metadata["type"] == "pdf"
    kiwi = next(c for c in chunks if "kiwis" in c.text)
    assert kiwi.metadata["page"] == 2
    assert next(c for c in chunks if "apples" in c.text).metadata["page"] == 1


def test_jsonl_rows(tree: Path) -> None:
    docs = {d.id: d for d in load(tree / "rows.jsonl").documents}
    assert list(docs) == ["rows.jsonl#q1", "rows.jsonl#2", "rows.jsonl#8"]
    q1 = docs["rows.jsonl#q1"]
    assert q1.text == "First row."
    assert (q1.metadata["id"], q1.metadata["lang"], q1.metadata["score"]) == ("q1", "en", 3)
    assert q1.metadata["row"] == 1 and "text" not in q1.metadata
    line = (tree / "rows.jsonl").read_text().split("\n")[0]
    assert q1.metadata["sha256"] == hashlib.sha256(line.encode()).hexdigest()
    assert docs["rows.jsonl#2"].metadata["tags"] == ["x", "y"]


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"qid": "a", "question": "Why?", "text": "ignored"})
        + "\n"
        + json.dumps({"qid": "b", "question": "How?"})
        + "\n"
    )
    result = load(path, text_field="question", id_field="qid")
    assert [(d.id, d.text) for d in result.documents] == [
        ("qa.jsonl#a", "Why?"),
        ("qa.jsonl#b", "How?"),
    ]
    assert result.documents[0].metadata["text"] == "ignored"


def test_csv_rows(tree: Path) -> None:
    result = load(tree / "table.csv")
    assert [(d.id, d.text, d.metadata["author"]) for d in result.documents] == [
        ("table.csv#r1", "A row, with a comma.", "ann"),
        ("table.csv#2", "Multi\nline row.", "bob"),
    ]
    assert result.skipped == [Skipped("table.csv:3", "empty")]


def test_globs_and_recursion(tree: Path) -> None:
    def ids(result: LoadResult) -> list[str]:
        return [d.id for d in result.documents]

    assert ids(load(tree, glob="*.txt", recursive=False)) == ["a.txt"]
    assert ids(load(tree, glob="*.txt")) == ["a.txt", "sub/b.txt"]
    assert ids(load(tree, glob="sub/**/*")) == ["sub/b.txt", "sub/deeper/c.markdown"]
    top = load(tree, recursive=False)
    assert "sub/b.txt" not in ids(top) and "a.txt" in ids(top)
    # A glob can match a file we cannot read: it is skipped and counted, not an error.
    assert load(tree, glob="*.png").skipped == [
        Skipped("image.png", "unsupported file type '.png'")
    ]
    assert load(tree, glob="*.none") == LoadResult()


def test_single_files_and_bad_paths(tree: Path, tmp_path: Path) -> None:
    [doc] = load(tree / "sub" / "b.txt").documents
    assert doc.id == "b.txt"
    with pytest.raises(ConfigError, match=r"no such file or directory: .*missing\.txt"):
        load(tree / "missing.txt")
    with pytest.raises(ConfigError, match=r"image\.png: unsupported file type '\.png'"):
        load(tree / "image.png")
    empty = load(tree / "empty.md")
    assert empty.documents == [] and empty.skipped == [Skipped("empty.md", "empty")]


def test_encodings(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeffWith a BOM.".encode())
    (tmp_path / "utf16.txt").write_bytes("UTF-16 text: naïve.".encode("utf-16"))
    (tmp_path / "mac.md").write_bytes(b"# Old\rMac line endings\r")
    docs = {d.id: d.text for d in load(tmp_path).documents}
    assert docs == {
        "bom.txt": "With a BOM.",
        "mac.md": "# Old\nMac line endings\n",
        "utf16.txt": "UTF-16 text: naïve.",
    }


def test_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error while reading (here a permission error, which root never gets from a
    chmod, so it is raised for that one path) skips the file and names the cause."""
    (tmp_path / "ok.txt").write_text("fine")
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    read_bytes = Path.read_bytes

    def guarded(self: Path) -> bytes:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    result = load(tmp_path)
    assert [d.id for d in result.documents] == ["ok.txt"]
    assert result.skipped == [Skipped("locked.txt", "unreadable: Permission denied")]


def test_missing_pypdf_names_the_extra(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdf", None)  # what an uninstalled package looks like
    with pytest.raises(MissingDependencyError, match=r"pip install 'fmstack\[rag\]'"):
        load(tree / "paper.pdf")


def test_imports_stay_light() -> None:
    """Loading the modules pulls in no heavy or optional package: they load on first use."""
    code = (
        "import sys, fmstack.rag.loaders, fmstack.rag.chunkers; "
        "print(sorted({'numpy', 'pypdf', 'tokenizers', 'torch', 'bs4', "
        "'langchain_text_splitters'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
