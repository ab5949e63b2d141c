"""Chunkers: split a ``Document`` into the ``Chunk``s that get indexed and retrieved.

Four plain dataclasses, each with ``split(doc) -> list[Chunk]``:

- ``FixedChunker``: windows of ``size`` characters or tokens, consecutive windows sharing
  ``overlap`` of them;
- ``RecursiveChunker``: the LangChain ``RecursiveCharacterTextSplitter`` recipe: split at the
  coarsest separator present, merge neighbouring pieces up to ``size``, recurse into pieces
  that are still too large with the finer separators;
- ``SentenceChunker``: whole sentences (a regex splitter that knows abbreviations, initials,
  decimals and ellipses) grouped up to ``max_chars``, overlapping by whole sentences;
- ``MarkdownChunker``: one chunk per heading section, carrying its heading path in
  ``metadata["headings"]``; long sections are split further like ``RecursiveChunker``.

Every chunker works on character spans of the document's text and never rewrites it, so
``doc.text[chunk.start:chunk.end] == chunk.text`` always holds (citations and highlighting rely
on it). Chunks inherit a copy of the document's metadata plus ``chunker`` and the chunker's own
fields; for a PDF (whose metadata carries ``page_starts``) each chunk gets the 1-based ``page``
it starts on and the ``page_end`` it ends on, and the per-page offsets themselves are not copied.
Chunk ids come from ``chunk_id`` (document id, position, text hash), so re-chunking unchanged
text gives identical ids.

``get_chunker(name, **options)`` builds one from the CLI's strings and reports a typo in a name
or an option, or an impossible setting, as a one-line ``ConfigError``.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import difflib
import functools
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fmstack.errors import ConfigError, missing
from fmstack.rag.documents import Chunk, Document, chunk_id

Span = tuple[int, int]
# A tokenizer as the token chunker needs it: text in, the character span of each token out
# (spans, not ids, because a chunk must be cut out of the document's own text).
TokenSpans = Callable[[str], list[Span]]

DEFAULT_SEPARATORS: tuple[str, ...] = ("\n\n", "\n", ". ", " ", "")


# --- shared helpers -----------------------------------------------------------------------


def _check_size(chunker: str, size: object, overlap: object, size_name: str = "size") -> None:
    for key, value in ((size_name, size), ("overlap", overlap)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{chunker} chunker: {key} must be an integer, not {value!r}")
    assert isinstance(size, int) and isinstance(overlap, int)
    if size < 1:
        raise ConfigError(f"{chunker} chunker: {size_name} must be at least 1, not {size}")
    if not 0 <= overlap < size:
        raise ConfigError(
            f"{chunker} chunker: overlap ({overlap}) must be at least 0 and less than "
            f"{size_name} ({size})"
        )


def _strip(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _make_chunks(
    doc: Document,
    spans: list[tuple[int, int, dict[str, Any]]],
    chunker: str,
    *,
    strip: bool = True,
) -> list[Chunk]:
    """Chunks for the given spans: whitespace-only spans dropped, ids numbered in order."""
    page_starts = doc.metadata.get("page_starts")
    inherited = {k: v for k, v in doc.metadata.items() if k != "page_starts"}
    chunks: list[Chunk] = []
    for start, end, extra in spans:
        if strip:
            start, end = _strip(doc.text, start, end)
        text = doc.text[start:end]
        # A whitespace-only span, or one inside the previous chunk (the recursive merge can
        # leave the overlap plus whitespace as a "chunk"), adds nothing to an index.
        if not text.strip() or (chunks and chunks[-1].start <= start and end <= chunks[-1].end):
            continue
        metadata = copy.deepcopy(inherited)
        metadata["chunker"] = chunker
        metadata.update(extra)
        if page_starts:
            metadata["page"] = bisect.bisect_right(page_starts, start)
            metadata["page_end"] = bisect.bisect_right(page_starts, end - 1)
        chunks.append(
            Chunk(
                id=chunk_id(doc.id, len(chunks), text),
                doc_id=doc.id,
                text=text,
                start=start,
                end=end,
                source=doc.source,
                metadata=metadata,
            )
        )
    return chunks


# --- fixed windows --------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def word_spans(text: str) -> list[Span]:
    """The default token: a run of word characters, or one punctuation character."""
    return [m.span() for m in _WORD.finditer(text)]


@functools.lru_cache(maxsize=4)
def _hf_token_spans(tokenizer_json: str) -> TokenSpans:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise missing("tokenizers", "embed") from None
    try:
        tokenizer = Tokenizer.from_file(tokenizer_json)
    except Exception as e:  # the Rust side raises a bare Exception on a bad file
        raise ConfigError(f"cannot read tokenizer {tokenizer_json}: {e}") from None
    # Saved tokenizers often truncate to the model's context; a chunker must see every token.
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def spans(text: str) -> list[Span]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        return [(a, b) for a, b in encoding.offsets if b > a]

    return spans


def resolve_tokenizer(tokenizer: str | TokenSpans | None) -> TokenSpans:
    """``None``/``"words"`` (regex words), ``"minilm"`` (the embedder's WordPiece tokenizer,
    so chunks fit its context), a ``tokenizer.json`` file or a model directory holding one,
    or a callable returning token spans."""
    if tokenizer is None or tokenizer == "words":
        return word_spans
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "minilm":
        # Imported here: the embeddings module imports numpy at load.
        from fmstack.models.embeddings import EMBEDDER_PACKAGES, packaged_model_dir

        return _hf_token_spans(
            str(packaged_model_dir(EMBEDDER_PACKAGES["minilm"]) / "tokenizer.json")
        )
    path = Path(tokenizer).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return _hf_token_spans(str(path.resolve()))
    raise ConfigError(
        f"unknown tokenizer {tokenizer!r}: use 'words', 'minilm', a tokenizer.json file "
        "or a model directory holding one"
    )


@dataclass
class FixedChunker:
    """Windows of ``size`` characters (``unit="chars"``) or tokens (``unit="tokens"``); each
    window starts ``size - overlap`` units after the previous one. Token windows start and
    end on token boundaries (a WordPiece window may start inside a word)."""

    size: int = 512
    overlap: int = 64
    unit: str = "chars"
    tokenizer: str | TokenSpans | None = None
    name: ClassVar[str] = "fixed"
    _spans: TokenSpans = field(init=False, repr=False, compare=False, default=word_spans)

    def __post_init__(self) -> None:
        _check_size(self.name, self.size, self.overlap)
        if self.unit not in ("chars", "tokens"):
            raise ConfigError(f"fixed chunker: unit must be 'chars' or 'tokens', not {self.unit!r}")
        if self.unit == "chars" and self.tokenizer is not None:
            raise ConfigError("fixed chunker: a tokenizer applies only to unit='tokens'")
        if self.unit == "tokens":
            self._spans = resolve_tokenizer(self.tokenizer)

    def split(self, doc: Document) -> list[Chunk]:
        step = self.size - self.overlap
        spans: list[tuple[int, int, dict[str, Any]]] = []
        if self.unit == "chars":
            n = len(doc.text)
            for start in range(0, n, step):
                spans.append((start, min(start + self.size, n), {}))
                if start + self.size >= n:
                    break
        else:
            tokens = self._spans(doc.text)
            for i in range(0, len(tokens), step):
                j = min(i + self.size, len(tokens))
                spans.append((tokens[i][0], tokens[j - 1][1], {"n_tokens": j - i}))
                if j == len(tokens):
                    break
        # Not stripped: windows keep their exact size and overlap.
        return _make_chunks(doc, spans, self.name, strip=False)


# --- recursive separators -------------------------------------------------------------------


def _split_at(text: str, start: int, end: int, sep: str) -> list[Span]:
    """Contiguous pieces of ``text[start:end]``, each ending just after a ``sep`` (the
    separator stays with the text before it, so the pieces cover the span exactly)."""
    if not sep:
        return [(i, i + 1) for i in range(start, end)]
    pieces: list[Span] = []
    pos = start
    while (k := text.find(sep, pos, end)) >= 0:
        pieces.append((pos, k + len(sep)))
        pos = k + len(sep)
    if pos < end:
        pieces.append((pos, end))
    return pieces


def _merge(pieces: list[Span], size: int, overlap: int) -> list[Span]:
    """Greedily join contiguous pieces up to ``size``; the next window starts with the tail
    of the previous one (at most ``overlap`` characters of whole pieces)."""
    out: list[Span] = []
    window: deque[Span] = deque()
    total = 0
    for piece in pieces:
        n = piece[1] - piece[0]
        if window and total + n > size:
            out.append((window[0][0], window[-1][1]))
            while window and (total > overlap or total + n > size):
                first = window.popleft()
                total -= first[1] - first[0]
        window.append(piece)
        total += n
    if window:
        out.append((window[0][0], window[-1][1]))
    return out


def recursive_spans(
    text: str,
    start: int,
    end: int,
    size: int,
    overlap: int,
    separators: tuple[str, ...] = DEFAULT_SEPARATORS,
) -> list[Span]:
    """Spans of ``text[start:end]`` no longer than ``size`` (unless the finest separator
    cannot cut a piece), built the RecursiveCharacterTextSplitter way."""
    index = next(
        (i for i, sep in enumerate(separators) if not sep or text.find(sep, start, end) >= 0),
        None,
    )
    if index is None:  # no separator occurs and none is "": the span cannot be cut
        return [(start, end)]
    finer = separators[index + 1 :]
    out: list[Span] = []
    small: list[Span] = []
    for piece in _split_at(text, start, end, separators[index]):
        # "<", not "<=": a piece of exactly ``size`` is cut further, as LangChain does, so
        # our chunks stay identical to the reference splitter's.
        if piece[1] - piece[0] < size:
            small.append(piece)
            continue
        if small:
            out.extend(_merge(small, size, overlap))
            small = []
        out.extend(recursive_spans(text, *piece, size, overlap, finer) if finer else [piece])
    if small:
        out.extend(_merge(small, size, overlap))
    return out


@dataclass
class RecursiveChunker:
    """Chunks of at most ``size`` characters cut at the coarsest separator that works:
    paragraphs, then lines, then sentences, then words, then characters."""

    size: int = 1000
    overlap: int = 100
    separators: tuple[str, ...] = DEFAULT_SEPARATORS
    name: ClassVar[str] = "recursive"

    def __post_init__(self) -> None:
        _check_size(self.name, self.size, self.overlap)
        if isinstance(self.separators, str) or not all(isinstance(s, str) for s in self.separators):
            raise ConfigError("recursive chunker: separators must be a list of strings")
        if not self.separators:
            raise ConfigError("recursive chunker: separators must not be empty")
        self.separators = tuple(self.separators)

    def split(self, doc: Document) -> list[Chunk]:
        spans = recursive_spans(
            doc.text, 0, len(doc.text), self.size, self.overlap, self.separators
        )
        return _make_chunks(doc, [(s, e, {}) for s, e in spans], self.name)


# --- sentences ------------------------------------------------------------------------------

# Words that end with a period without ending a sentence (lowercase, inner dots kept).
_ABBREVIATIONS = """mr mrs ms dr prof sr jr st mt vs e.g i.e cf fig figs eq eqs no nos vol al
approx ca inc ltd co corp dept est gen gov lt col sgt rev jan feb mar apr jun jul aug sep sept
oct nov dec ed eds p pp ch sec"""
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())
_SENTENCE_END = re.compile(
    r"(?P<end>\.{2,}|…|[.!?]+)[\"'”’)\]]*(?P<ws>\s+)|(?P<para>\n[ \t]*\n\s*)"
)
_LAST_WORD = re.compile(r"([\w.]+)$")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _ends_sentence(text: str, m: re.Match[str]) -> bool:
    if m.group("para") is not None or _BLANK_LINE.search(m.group("ws")):
        return True
    nxt = text[m.end()] if m.end() < len(text) else ""
    # "e.g. the", "wait... then", "3 p.m. on": a lowercase start continues the sentence.
    if nxt.islower():
        return False
    if m.group("end") != ".":
        return True
    # A bounded look-back: searching from 0 would make splitting quadratic in the text length.
    word = _LAST_WORD.search(text, max(0, m.start("end") - 40), m.start("end"))
    if word is None:
        return True
    w = word.group(1)
    if w.lower() in ABBREVIATIONS:
        return False
    # Initials ("J. R. R. Tolkien") and dotted acronyms ("U.S.") rarely end a sentence.
    return not (len(w) == 1 and w.isupper()) and not re.fullmatch(r"(?:\w\.)+\w", w)


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans of ``text[start:end]``, surrounding whitespace excluded. A blank line
    always ends a sentence; ``.``/``!``/``?``/``…`` followed by whitespace ends one unless an
    abbreviation, an initial or a lowercase continuation says otherwise. Decimals (``3.14``)
    never split: there is no whitespace after their point."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    pos = start
    for m in _SENTENCE_END.finditer(text, start, end):
        if not _ends_sentence(text, m):
            continue
        stop = m.start() if m.group("para") is not None else m.start("ws")
        s, e = _strip(text, pos, stop)
        if s < e:
            spans.append((s, e))
        pos = m.end()
    s, e = _strip(text, pos, end)
    if s < e:
        spans.append((s, e))
    return spans


@dataclass
class SentenceChunker:
    """Whole sentences grouped up to ``max_chars``; each chunk repeats the last
    ``overlap_sentences`` sentences of the previous one (when they fit). A sentence longer
    than ``max_chars`` is cut like ``RecursiveChunker`` would."""

    max_chars: int = 1000
    overlap_sentences: int = 1
    name: ClassVar[str] = "sentence"

    def __post_init__(self) -> None:
        _check_size(self.name, self.max_chars, 0, "max_chars")
        if (
            not isinstance(self.overlap_sentences, int)
            or isinstance(self.overlap_sentences, bool)
            or self.overlap_sentences < 0
        ):
            raise ConfigError(
                f"sentence chunker: overlap_sentences must be an integer >= 0, "
                f"not {self.overlap_sentences!r}"
            )

    def split(self, doc: Document) -> list[Chunk]:
        text = doc.text
        units: list[Span] = []
        for s, e in split_sentences(text):
            if e - s <= self.max_chars:
                units.append((s, e))
            else:
                units.extend(recursive_spans(text, s, e, self.max_chars, 0))
        spans: list[tuple[int, int, dict[str, Any]]] = []
        i = 0
        while i < len(units):
            j = i + 1
            while j < len(units) and units[j][1] - units[i][0] <= self.max_chars:
                j += 1
            spans.append((units[i][0], units[j - 1][1], {"sentences": j - i}))
            if j == len(units):
                break
            # Step back for the overlap, but always move forward and keep room for unit j.
            i = max(j - self.overlap_sentences, i + 1)
            while i < j and units[j][1] - units[i][0] > self.max_chars:
                i += 1
        return _make_chunks(doc, spans, self.name)


# --- Markdown sections ----------------------------------------------------------------------

_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def markdown_headings(text: str) -> Iterator[tuple[int, int, str]]:
    """``(offset, level, title)`` of each ATX heading (``#`` .. ``######``) outside fenced
    code blocks, where ``offset`` is the start of the heading's line. Setext headings
    (underlined with ``===``/``---``) are not recognised."""
    fence: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        opener = _FENCE.match(bare)
        if fence is not None:
            # A closing fence: the same character, at least as long, nothing after it.
            closer = opener.group(1) if opener else ""
            if (
                closer
                and bare.strip() == closer
                and closer[0] == fence[0]
                and len(closer) >= len(fence)
            ):
                fence = None
        elif opener:
            fence = opener.group(1)
        elif heading := _ATX.fullmatch(bare):
            yield pos, len(heading.group(1)), (heading.group(2) or "").strip()
        pos += len(line)


@dataclass
class MarkdownChunker:
    """One chunk per heading section (the heading line included), with the heading path in
    ``metadata["headings"]``; text before the first heading has the path ``[]``. Sections
    over ``max_chars`` are split by ``RecursiveChunker`` rules with ``overlap``. A section
    with no text of its own that is followed by a subsection yields no chunk: its title
    lives on in its subsections' paths."""

    max_chars: int = 1500
    overlap: int = 100
    name: ClassVar[str] = "markdown"

    def __post_init__(self) -> None:
        _check_size(self.name, self.max_chars, self.overlap, "max_chars")

    def split(self, doc: Document) -> list[Chunk]:
        text = doc.text
        heads = list(markdown_headings(text))
        sections: list[tuple[int, int, list[str]]] = []
        if not heads or heads[0][0] > 0:
            sections.append((0, heads[0][0] if heads else len(text), []))
        stack: list[tuple[int, str]] = []
        for k, (offset, level, title) in enumerate(heads):
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            end = heads[k + 1][0] if k + 1 < len(heads) else len(text)
            line_end = text.find("\n", offset, end)
            body_empty = line_end < 0 or not text[line_end:end].strip()
            if body_empty and k + 1 < len(heads) and heads[k + 1][1] > level:
                continue
            sections.append((offset, end, [t for _, t in stack]))
        spans: list[tuple[int, int, dict[str, Any]]] = []
        for start, end, path in sections:
            s, e = _strip(text, start, end)
            pieces = (
                [(s, e)]
                if e - s <= self.max_chars
                else recursive_spans(text, s, e, self.max_chars, self.overlap)
            )
            spans.extend((a, b, {"headings": list(path)}) for a, b in pieces)
        return _make_chunks(doc, spans, self.name)


# --- by name --------------------------------------------------------------------------------

Chunker = FixedChunker | RecursiveChunker | SentenceChunker | MarkdownChunker
CHUNKERS: dict[str, type[Chunker]] = {
    c.name: c for c in (FixedChunker, RecursiveChunker, SentenceChunker, MarkdownChunker)
}


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_chunker(name: str, **options: Any) -> Chunker:
    """A chunker by name (``fixed``, ``recursive``, ``sentence``, ``markdown``). Integer
    options may be given as strings, as the CLI passes them."""
    cls = CHUNKERS.get(name)
    if cls is None:
        raise ConfigError(
            f"unknown chunker {name!r}{_did_you_mean(name, list(CHUNKERS))}; "
            f"known: {', '.join(sorted(CHUNKERS))}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(
                f"unknown option {key!r} for the {name} chunker"
                f"{_did_you_mean(key, list(fields))}; options: {', '.join(fields)}"
            )
        if isinstance(fields[key].default, int) and isinstance(value, str):
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(
                    f"{name} chunker: {key} must be an integer, not {value!r}"
                ) from None
    return cls(**options)


def chunker_spec(chunker: Chunker) -> dict[str, Any]:
    """The chunker as ``{"name": ..., **options}``, JSON-ready, so an index can record how it
    was chunked and ``get_chunker(**spec)`` rebuilds the same chunker."""
    spec: dict[str, Any] = {"name": chunker.name}
    for f in dataclasses.fields(chunker):
        if f.init:
            value = getattr(chunker, f.name)
            if callable(value):
                raise ConfigError(
                    f"{chunker.name} chunker: a {f.name} given as a function cannot be "
                    "recorded; name it instead ('words', 'minilm' or a tokenizer.json path)"
                )
            spec[f.name] = list(value) if isinstance(value, tuple) else value
    return spec
