"""Invisible and look-alike Unicode: what a human reviewer cannot see but a model reads.

``UnicodeScanner`` (registry name ``unicode``) reports four kinds, consecutive characters of a
kind grouped into one finding:

* ``unicode.invisible``: zero-width characters (U+200B-U+200D, U+2060), soft hyphens, invisible
  operators, Hangul fillers and a byte-order mark anywhere but at the start: used to split
  trigger words so keyword filters miss them ("ig\u200bnore"). Score 0.9 inside a word, 0.7
  for a run elsewhere, 0.4 for a single one between words (stray ones occur in pasted text).
  Also two or more variation selectors in a row (one selects an emoji's style; a run of them
  can encode arbitrary bytes, "emoji smuggling"): ``detail`` shows the bytes they encode.
  Score 0.8, 0.95 for four or more.
* ``unicode.bidi``: bidirectional overrides, embeddings and isolates (the "Trojan Source"
  characters, U+202A-U+202E and U+2066-U+2069) that make text display in another order than it
  is read. Score 0.9 for overrides, 0.8 otherwise. The marks U+200E/U+200F are normal in
  right-to-left text and score 0.3 (below the default ``min_score``).
* ``unicode.tag``: Unicode tag characters (U+E0000-U+E007F). Each mirrors an ASCII character,
  invisibly, which is how "ASCII smuggling" hides instructions; ``detail`` spells out the hidden
  text (truncated). Score 1.0. Emoji subdivision flags (black flag + tags + cancel tag, e.g.
  England's flag) are legitimate and not reported.
* ``unicode.confusable``: a word that mixes Latin letters with Cyrillic or Greek ones (``pаypal``
  with a Cyrillic ``а``): score 0.9; fullwidth ASCII forms (``ｉｇｎｏｒｅ``) and mathematical
  alphanumerics (``𝐢𝐠𝐧𝐨𝐫𝐞``), both used to dodge keyword filters: score 0.6, 0.3 in text that
  also holds CJK characters (where fullwidth forms are ordinary typography).

How: the text is searched for non-ASCII characters with one regex (pure-ASCII text costs one
linear pass); only those positions are examined. A text flooded with hidden characters gets its
first ``MAX_FINDINGS`` (1,000) findings one by one and the rest of the text as one more span.
``normalize`` is the cleaned copy the injection heuristics match on, with the map back to
offsets in the original text.

Blind spots: whole words written in another script's look-alikes (an all-Cyrillic ``асе``) are
not reported, nor are confusables outside Latin/Cyrillic/Greek (Armenian, Cherokee); zero-width
joiners between emoji and joiners inside scripts that need them (Arabic, Indic) are allowed on
purpose, so smuggling through those positions goes unseen here.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from fmstack.errors import ConfigError
from fmstack.guard.core import Finding

DEFAULT_MIN_SCORE = 0.5
MAX_FINDINGS = 1000  # past this many, the rest of the text is one finding (see _flood)
CATEGORIES = ("invisible", "bidi", "tag", "confusable")

INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u2060\u2061\u2062"
    "\u2063\u2064\u3164\ufeff\uffa0"
)
BIDI_OVERRIDE = frozenset("\u202d\u202e")
BIDI_OTHER = frozenset("\u202a\u202b\u202c\u2066\u2067\u2068\u2069")
BIDI_MARK = frozenset("\u200e\u200f")
TAG_FIRST, TAG_LAST, TAG_CANCEL = 0xE0000, 0xE007F, 0xE007F
BLACK_FLAG = "\U0001f3f4"

# Cyrillic and Greek letters that render like Latin ones, folded for matching. Not the full
# Unicode confusables table: the letters attackers actually use in Latin-script words.
CONFUSABLE_FOLD = str.maketrans({
    "а": "a", "в": "b", "с": "c", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
    "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y",
    "х": "x", "ԁ": "d", "ɡ": "g", "ԝ": "w", "ӏ": "l",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ϲ": "c", "ϳ": "j",
})

# Runs worth looking at: anything non-ASCII. ASCII text is settled by this one search.
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Characters that are findings on their own: searched for directly, so ordinary non-Latin
# prose costs one regex pass, not a Python loop per character.
_SPECIAL = re.compile(
    "[" + "".join(sorted(INVISIBLE | BIDI_OVERRIDE | BIDI_OTHER | BIDI_MARK))
    + "\U000e0000-\U000e007f\uff01-\uff5e\U0001d400-\U0001d7ff\ufe00-\ufe0f"
    + "\U000e0100-\U000e01ef]+"
)
# A Latin letter next to a non-ASCII character: where a mixed-script word must show itself.
_MIXED_SEED = re.compile(r"[a-zA-Z][^\x00-\x7f]|[^\x00-\x7f][a-zA-Z]")
# Spans the normalizer rewrites: whitespace runs (collapsed) and non-ASCII runs (folded).
# A non-ASCII run carries on over single spaces, so non-Latin prose is a few long runs.
_IRREGULAR = re.compile(r"\s{2,}|[^\x00-\x7f](?:[^\x00-\x7f]| (?=[^\x00-\x7f]))*")
# Leetspeak: a digit or symbol touching a letter. Seeds are found linearly, then widened to
# the word by hand (a single regex for "a word holding a leet character" backtracks badly).
_LEET_SEED = re.compile(r"[a-z][0134578@$]|[0134578@$][a-z]")
_LEET = str.maketrans("0134578@$", "oieastbas")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


@dataclass
class Normalized:
    """A matching copy of a text: NFKC-folded, lower-cased, invisible characters removed,
    Cyrillic/Greek look-alikes and leetspeak folded to Latin, whitespace runs collapsed (to a
    newline when the run holds one, else a space). ``span`` maps a span of ``text`` back to the
    original string.

    The map is piecewise: segment ``k`` starts at ``text[norm_starts[k]]`` and at
    ``original[orig_starts[k]]``; a ``linear`` segment advances one original character per
    character, any other maps all its characters to its one original start (a collapsed
    whitespace run, or one character that folded to several such as ``ﬁ``)."""

    text: str
    original_length: int
    norm_starts: list[int] = field(default_factory=list)
    orig_starts: list[int] = field(default_factory=list)
    linear: list[bool] = field(default_factory=list)

    def offset(self, i: int) -> int:
        """The original index of normalized index ``i`` (``len(text)`` maps to the end)."""
        if i >= len(self.text):
            return self.original_length
        k = bisect.bisect_right(self.norm_starts, i) - 1
        if k < 0:
            return i
        base = self.orig_starts[k]
        return base + (i - self.norm_starts[k]) if self.linear[k] else base

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span covering normalized ``text[start:end]`` (``end > start``)."""
        if end <= start:
            at = self.offset(start)
            return at, at
        last = self.offset(end - 1)
        # A non-linear segment's one original character may be several wide in the original
        # (a collapsed whitespace run): extend to the next segment's start.
        k = bisect.bisect_right(self.norm_starts, end - 1) - 1
        if k >= 0 and not self.linear[k]:
            nxt = self.orig_starts[k + 1] if k + 1 < len(self.orig_starts) else None
            last = (nxt if nxt is not None else self.original_length) - 1
        return self.offset(start), last + 1


def normalize(text: str) -> Normalized:
    """The matching copy of ``text`` with its offset map (see ``Normalized``)."""
    out: list[str] = []
    starts: list[int] = []
    origs: list[int] = []
    linear: list[bool] = []
    npos = 0  # length of the normalized text so far

    def add(orig: int, piece: str, is_linear: bool) -> None:
        nonlocal npos
        # Extend the last segment when this piece continues it one-for-one (long runs of
        # non-Latin text then cost one segment, not one per character).
        if not (is_linear and linear and linear[-1] and origs[-1] + npos - starts[-1] == orig):
            starts.append(npos)
            origs.append(orig)
            linear.append(is_linear)
        out.append(piece)
        npos += len(piece)

    fold = _fold_char
    pos = 0
    for m in _IRREGULAR.finditer(text):
        a, b = m.span()
        if a > pos:
            add(pos, text[pos:a].lower(), True)
        run = m.group()
        if b - a == 1:  # one character: the common case in text dense with hidden characters
            piece = fold(run)
            if piece:
                add(a, piece, len(piece) == 1)
        elif run.isspace():
            add(a, "\n" if "\n" in run else " ", False)
        else:
            folded = [fold(ch) for ch in run]
            if all(len(f) == 1 for f in folded):  # one segment for the whole run
                add(a, "".join(folded), True)
            else:
                for k, piece in enumerate(folded, start=a):
                    if piece:
                        add(k, piece, len(piece) == 1)
        pos = b
    if pos < len(text):
        add(pos, text[pos:].lower(), True)
    return Normalized(_fold_leet("".join(out)), len(text), starts, origs, linear)


@functools.lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    if ch in INVISIBLE or unicodedata.category(ch) == "Cf":
        return ""
    if ch.isspace():
        return " "
    ch = ch.translate(CONFUSABLE_FOLD)
    # NFKD then dropping combining marks folds fullwidth, math alphanumerics and accents alike.
    # Variation selectors are marks of class 0, so the category is checked too.
    decomposed = unicodedata.normalize("NFKD", ch)
    kept = "".join(c for c in decomposed
                   if not unicodedata.combining(c) and unicodedata.category(c) not in ("Mn", "Me"))
    return kept.casefold().translate(CONFUSABLE_FOLD)


def _fold_leet(text: str) -> str:
    m = _LEET_SEED.search(text)
    if m is None:
        return text
    chars = list(text)
    while m is not None:
        a = m.start()
        while a > 0 and text[a - 1] in _WORD_CHARS:
            a -= 1
        b = m.end()
        while b < len(text) and text[b] in _WORD_CHARS:
            b += 1
        # Folding "mp3" to "mpe" too is harmless: this copy is only matched against phrases.
        chars[a:b] = text[a:b].translate(_LEET)
        m = _LEET_SEED.search(text, b)  # on from the word's end: each character seen once
    return "".join(chars)


# ----- the scanner ----------------------------------------------------------------------------


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def _kind_of(ch: str) -> tuple[str, float] | None:
    """The category and score of one character on its own, or None when it is ordinary."""
    cp = ord(ch)
    if TAG_FIRST <= cp <= TAG_LAST:
        return "tag", 1.0
    if ch in BIDI_OVERRIDE:
        return "bidi", 0.9
    if ch in BIDI_OTHER:
        return "bidi", 0.8
    if ch in BIDI_MARK:
        return "bidi", 0.3
    if ch in INVISIBLE:
        return "invisible", 0.7
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:
        return "variation", 0.8
    if 0xFF01 <= cp <= 0xFF5E or 0x1D400 <= cp <= 0x1D7FF:
        return "confusable", 0.6
    return None


def _variation_bytes(run: str) -> bytes:
    """The bytes a run of variation selectors encodes, one per selector (the known smuggling
    scheme: U+FE00-U+FE0F are bytes 0-15, U+E0100-U+E01EF bytes 16-255)."""
    out = bytearray()
    for c in run:
        cp = ord(c)
        out.append(cp - 0xFE00 if cp <= 0xFE0F else cp - 0xE0100 + 16)
    return bytes(out)


def _is_emoji(ch: str) -> bool:
    return ord(ch) >= 0x1F000 or 0x2600 <= ord(ch) <= 0x27BF


class UnicodeScanner:
    """Reports invisible, bidirectional, tag and confusable characters (see the module docs).

    Options: ``categories`` (a subset of ``invisible``, ``bidi``, ``tag``, ``confusable``;
    default all), ``min_score`` (findings scored below it are not reported; 0.5)."""

    name: ClassVar[str] = "unicode"

    def __init__(self, *, categories: Sequence[str] | None = None,
                 min_score: float = DEFAULT_MIN_SCORE) -> None:
        chosen = [c.removeprefix("unicode.") for c in (categories or CATEGORIES)]
        unknown = sorted(set(chosen) - set(CATEGORIES))
        if unknown:
            raise ConfigError(f"unicode scanner: unknown categories {', '.join(unknown)} "
                              f"(known: {', '.join(CATEGORIES)})")
        if not 0.0 <= min_score <= 1.0:
            raise ConfigError(f"unicode scanner: min_score must be in [0, 1], got {min_score}")
        self.categories = frozenset(chosen)
        self.min_score = float(min_score)

    def scan(self, text: str) -> list[Finding]:
        if not _NON_ASCII.search(text):
            return []
        findings: list[Finding] = []
        has_cjk = bool(_CJK.search(text))
        for m in _SPECIAL.finditer(text):
            findings.extend(f for f in self._runs(text, m.start(), m.end(), has_cjk)
                            if self._keep(f))
            if len(findings) > MAX_FINDINGS:
                return self._flood(text, findings)
        if "confusable" in self.categories:
            for f in self._mixed_words(text):
                if self._keep(f):
                    findings.append(f)
                if len(findings) > MAX_FINDINGS:
                    return self._flood(text, findings)
        return sorted(findings, key=lambda f: (f.start, f.end, f.kind))

    def _keep(self, f: Finding) -> bool:
        return f.kind.split(".")[1] in self.categories and f.score >= self.min_score

    def _flood(self, text: str, findings: list[Finding]) -> list[Finding]:
        # A text that is mostly hidden characters: report the first findings one by one and
        # the rest of the text as one span, instead of building a million findings.
        findings.sort(key=lambda f: (f.start, f.end, f.kind))
        kept = findings[:MAX_FINDINGS]
        last = kept[-1]
        rest = Finding(self.name, last.kind, last.end, len(text), last.score,
                       f"more than {MAX_FINDINGS:,} findings: the rest of the text is reported "
                       "as one span")
        return [*kept, rest]

    def _runs(self, text: str, start: int, end: int, has_cjk: bool) -> Iterable[Finding]:
        i = start
        while i < end:
            ch = text[i]
            found = _kind_of(ch)
            if found is None or (ch == "\ufeff" and i == 0):
                i += 1
                continue
            kind, score = found
            j = i + 1
            while j < end and (k := _kind_of(text[j])) is not None and k[0] == kind:
                score = max(score, k[1])
                j += 1
            finding = self._finding(text, i, j, kind, score, has_cjk)
            if finding is not None:
                yield finding
            i = j

    def _finding(self, text: str, i: int, j: int, kind: str, score: float,
                 has_cjk: bool) -> Finding | None:
        run = text[i:j]
        before = text[i - 1] if i > 0 else ""
        after = text[j] if j < len(text) else ""
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in run})[:4])
        n = len(run)
        if kind == "tag":
            hidden = "".join(chr(ord(c) - TAG_FIRST) for c in run if ord(c) != TAG_CANCEL)
            if before == BLACK_FLAG and run[-1] == chr(TAG_CANCEL) and hidden.isalnum():
                return None  # a subdivision flag such as England's
            shown = "".join(c if c.isprintable() else "?" for c in hidden)
            if len(shown) > 60:
                shown = shown[:60] + "..."
            return Finding(self.name, "unicode.tag", i, j, score,
                           f"{n} invisible tag characters spelling {shown!r}")
        if kind == "variation":
            if n < 2:
                return None  # one selector after a character picks its emoji or text style
            hidden = _variation_bytes(run).decode("utf-8", errors="replace")
            shown = "".join(c if c.isprintable() else "?" for c in hidden)
            shown = shown[:60] + "..." if len(shown) > 60 else shown
            return Finding(self.name, "unicode.invisible", i, j, 0.8 if n < 4 else 0.95,
                           f"{n} variation selectors in a row, which can hide bytes "
                           f"(read as {shown!r})")
        if kind == "invisible":
            if set(run) <= {"\u200d", "\u200c"} and (
                    _is_emoji(before) or _is_emoji(after) or unicodedata.category(after) == "Mn"
                    or (before.isalpha() and not before.isascii()
                        and _script(before) not in ("LATIN", "CYRILLIC", "GREEK"))):
                return None  # emoji sequences and scripts that need joiners
            if before.isalnum() and after.isalnum():
                score = 0.9
            elif n == 1:
                score = 0.4  # one stray zero-width space between words splits nothing
            return Finding(self.name, "unicode.invisible", i, j, score,
                           f"{n} invisible character{'s' * (n > 1)} ({codes})"
                           + (" inside a word" if score == 0.9 else ""))
        if kind == "bidi":
            return Finding(self.name, "unicode.bidi", i, j, score,
                           f"{n} bidirectional control character{'s' * (n > 1)} ({codes}) "
                           "that can make text display in a different order than it is read")
        if has_cjk:
            score = 0.3
        return Finding(self.name, "unicode.confusable", i, j, score,
                       f"{n} fullwidth or mathematical look-alike letter{'s' * (n > 1)} ({codes})")

    def _mixed_words(self, text: str) -> Iterable[Finding]:
        done = -1
        for m in _MIXED_SEED.finditer(text):
            if m.start() < done:
                continue
            if not any(c.translate(CONFUSABLE_FOLD) != c for c in m.group()):
                continue
            a, b = m.start(), m.end()
            # Widen to the whole word, bounded so a pathological "word" stays linear.
            while a > 0 and m.start() - a < 64 and text[a - 1].isalpha():
                a -= 1
            while b < len(text) and b - m.end() < 64 and text[b].isalpha():
                b += 1
            done = b
            word = text[a:b]
            scripts = {_script(c) for c in word if c.isalpha()}
            if "LATIN" in scripts and scripts & {"CYRILLIC", "GREEK"}:
                others = sorted(scripts - {"LATIN"})
                yield Finding(self.name, "unicode.confusable", a, b, 0.9,
                              f"a {len(word)}-letter word mixing Latin with "
                              f"{' and '.join(o.title() for o in others)} look-alike letters")
