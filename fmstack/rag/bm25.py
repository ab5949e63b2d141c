"""Term-based retrieval: BM25 over bm25s, persisted, with metadata filtering.

bm25s precomputes every (term, document) score at build time into a sparse matrix, so a query
is a sum of a few matrix columns: fast, but it has no incremental update. The collection
therefore rebuilds the BM25 index from all chunk texts whenever documents change; tokenizing
and scoring is cheap next to embedding (tens of thousands of chunks per second), so this is
the simple correct choice rather than a compromise.

Scoring variants (``method``) are bm25s's: ``lucene`` (default), ``robertson``, ``atire``,
``bm25l`` and ``bm25+``. How they relate to rank_bm25 (the reference in the tests):

- ``robertson`` times ``(k1 + 1)`` equals rank_bm25's ``BM25Okapi`` exactly, as long as no query
  term occurs in more than half of the documents: for such terms the Robertson idf is negative,
  and bm25s clamps it to 0 while rank_bm25 replaces it with ``epsilon * mean idf``. bm25s leaves
  out the constant ``(k1 + 1)`` factor, which changes no ranking.
- ``bm25+`` (with the same ``delta``) equals rank_bm25's ``BM25Plus`` exactly.

Tokenization mirrors bm25s's own tokenizer (lowercase, scikit-learn's ``\\b\\w\\w+\\b`` tokens,
stopwords, then a Snowball stemmer via PyStemmer) but returns plain token lists, so the same
tokens can be fed to a reference implementation (``BM25Index.tokenize``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmstack.errors import ConfigError, missing
from fmstack.rag.documents import Chunk, Hit

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_META = "fmstack-bm25.json"


@dataclass
class BM25Options:
    """What shapes BM25 scores; stored in the collection manifest and beside the index."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    delta: float = 0.5  # only bm25l and bm25+ use it
    stemmer: str | None = "english"
    stopwords: str | list[str] | None = "en"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"BM25 method {self.method!r} is not one of {', '.join(METHODS)}")
        if not self.k1 >= 0:
            raise ConfigError(f"BM25 k1 must be >= 0, not {self.k1}")
        if not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 b must be between 0 and 1, not {self.b}")
        if self.stopwords is not None and not isinstance(self.stopwords, (str, list)):
            raise ConfigError("BM25 stopwords must be a language code, a list of words or None")


class BM25Index:
    """A BM25 index over chunks. ``build`` (re)indexes everything; ``search`` returns Hits when
    the chunks are known (after ``build``, or ``load(dir, chunks)``), ``search_ids`` returns
    ``(chunk id, score)`` pairs either way."""

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        delta: float = 0.5,
        stemmer: str | None = "english",
        stopwords: str | list[str] | None = "en",
    ) -> None:
        self.options = BM25Options(k1, b, method, delta, stemmer, stopwords)
        self.ids: list[str] = []
        self.chunks: dict[str, Chunk] | None = None
        self._bm25: Any = None
        self._stemmer: Any = None
        self._stopwords: frozenset[str] = frozenset()
        if stemmer is not None:
            try:
                import Stemmer
            except ImportError:
                raise missing("PyStemmer", "rag") from None
            try:
                self._stemmer = Stemmer.Stemmer(stemmer)
            except KeyError:
                raise ConfigError(
                    f"no Snowball stemmer for {stemmer!r}: use one of "
                    f"{', '.join(sorted(Stemmer.algorithms()))}, or None"
                ) from None
        if isinstance(stopwords, str):
            try:
                from bm25s.tokenization import _infer_stopwords
            except ImportError:
                raise missing("bm25s", "rag") from None
            try:
                self._stopwords = frozenset(_infer_stopwords(stopwords))
            except ValueError:
                raise ConfigError(
                    f"unknown stopword language {stopwords!r} (bm25s knows en, de, fr, es, "
                    "it, pt, nl, ru, sv, no, da, tr, zh, ko): or pass a list of words"
                ) from None
        elif stopwords:
            self._stopwords = frozenset(w.lower() for w in stopwords)

    def __repr__(self) -> str:
        return f"<BM25Index {self.options.method} chunks={len(self.ids)}>"

    # ----- tokens --------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens BM25 sees for each text (the same for documents and queries)."""
        out = []
        for text in texts:
            tokens = [t for t in _TOKEN.findall(text.lower()) if t not in self._stopwords]
            if self._stemmer is not None:
                tokens = self._stemmer.stemWords(tokens)
            out.append(tokens)
        return out

    # ----- build and search ----------------------------------------------------------------

    def build(self, chunks: Sequence[Chunk]) -> None:
        """Index these chunks (their ``indexed_text``: context, then text), replacing anything
        indexed before."""
        if not chunks:
            raise ConfigError("cannot build a BM25 index over an empty corpus (no chunks)")
        try:
            import bm25s
        except ImportError:
            raise missing("bm25s", "rag") from None
        opts = self.options
        corpus = self.tokenize([c.indexed_text for c in chunks])
        bm25 = bm25s.BM25(k1=opts.k1, b=opts.b, delta=opts.delta, method=opts.method)
        bm25.index(corpus, show_progress=False)
        self._bm25 = bm25
        self.ids = [c.id for c in chunks]
        self.chunks = {c.id: c for c in chunks}

    def search_ids(
        self, query: str, k: int = 5, allowed: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` best ``(chunk id, score)`` pairs among the chunks sharing a term with the
        query, restricted to ``allowed`` ids before the top-k cut (a filter never leaves fewer
        results than exist)."""
        import numpy as np

        if self._bm25 is None:
            raise ConfigError("the BM25 index is empty: build() or load() it first")
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        bm25 = self._bm25
        token_ids = bm25.get_tokens_ids(self.tokenize([query])[0])
        if not token_ids:
            return []
        scores = np.asarray(bm25.get_scores(token_ids), dtype=np.float64)
        # Only documents containing a query term are results: bm25l/bm25+ give every
        # document a positive baseline score, which would otherwise pad the list with noise.
        data = bm25.scores
        indptr, indices = data["indptr"], data["indices"]
        matched = np.zeros(len(scores), dtype=bool)
        for t in set(token_ids):
            matched[indices[indptr[t] : indptr[t + 1]]] = True
        if allowed is not None:
            keep = np.fromiter((i in allowed for i in self.ids), dtype=bool, count=len(self.ids))
            matched &= keep
        candidates = np.flatnonzero(matched)
        if len(candidates) == 0:
            return []
        cand_scores = scores[candidates]
        if len(candidates) > k:
            top = np.argpartition(-cand_scores, k - 1)[:k]
            candidates, cand_scores = candidates[top], cand_scores[top]
        # Ties broken by index order so results are deterministic.
        order = np.lexsort((candidates, -cand_scores))
        return [(self.ids[candidates[i]], float(cand_scores[i])) for i in order]

    def search(self, query: str, k: int = 5, allowed: set[str] | None = None) -> list[Hit]:
        """Like ``search_ids``, as ranked Hits (``retriever="bm25"``)."""
        if self.chunks is None:
            raise ConfigError("this BM25 index was loaded without its chunks: use search_ids()")
        chunks = self.chunks
        return [
            Hit(chunk=chunks[cid], score=score, rank=rank, retriever="bm25")
            for rank, (cid, score) in enumerate(self.search_ids(query, k, allowed), 1)
        ]

    # ----- persistence ---------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write bm25s's arrays and vocabulary plus the ids and options to ``directory``."""
        if self._bm25 is None:
            raise ConfigError("cannot save an empty BM25 index: build() it first")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(path), show_progress=False)
        meta = {"format": 1, "options": asdict(self.options), "ids": self.ids}
        (path / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, chunks: Sequence[Chunk] | None = None) -> BM25Index:
        """The index saved in ``directory``. A damaged or missing file is a ConfigError naming
        it; pass ``chunks`` to get Hits from ``search``."""
        path = Path(directory)
        meta_file = path / _META
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            options = BM25Options(**meta["options"])
            ids = [str(i) for i in meta["ids"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"cannot read BM25 index {meta_file}: {e}; rebuild the index"
            ) from None
        try:
            import bm25s
        except ImportError:
            raise missing("bm25s", "rag") from None
        try:
            bm25 = bm25s.BM25.load(str(path), show_progress=False)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            where = getattr(e, "filename", None) or path
            raise ConfigError(f"cannot read BM25 index {where}: {e}; rebuild the index") from None
        if bm25.scores.get("num_docs") != len(ids) or len(bm25.scores["indptr"]) < 2:
            raise ConfigError(
                f"BM25 index {path} holds {bm25.scores.get('num_docs')} documents but "
                f"{meta_file.name} lists {len(ids)}: rebuild the index"
            )
        index = cls(**asdict(options))
        index.ids, index._bm25 = ids, bm25
        if chunks is not None:
            index.chunks = {c.id: c for c in chunks}
        return index
