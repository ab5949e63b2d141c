"""Embedding-based retrieval: sentence embeddings in a FAISS index of the user's choice.

Embedding is the expensive part (MiniLM on 2 CPU cores: roughly 50-100 short chunks a second);
building a FAISS structure from vectors takes well under a second for flat, IVF and LSH and a
few seconds for HNSW at tens of thousands of vectors. So the index keeps the embeddings
themselves (``vectors.npy``, one float32 row per chunk, in ``ids`` order, each row tagged with
the sha256 of the text it embeds) and ``build(chunks)`` makes the index match a new chunk list
by embedding only chunks whose id and text are new, then rebuilding the FAISS structure from
the stored vectors. That is how the collection adds, updates and deletes documents.

Kinds: ``flat`` (exact inner product), ``hnsw``, ``ivf``, ``ivfpq`` and ``lsh``. Embeddings
are unit vectors, so inner product is cosine similarity; every kind but LSH searches with
``METRIC_INNER_PRODUCT``. LSH compares sign bits of randomly rotated vectors by Hamming
distance, so its candidate list is approximate in a coarser way than the others. Whatever the
kind, the candidates an index returns are re-scored with the exact cosine from the stored
vectors (``k`` dot products), so a Hit's score is always the true cosine and scores from
different kinds (and from filtered searches) are comparable; the index kind only decides which
candidates are found.

Metadata filters arrive as a set of allowed chunk ids and are applied inside FAISS (an
``IDSelector``) before the top-k cut. Where FAISS cannot filter (LSH), or a filtered
graph/cluster search found fewer than ``k`` allowed rows, the allowed rows are searched
exactly instead: filtered results are never silently short.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, missing
from fmstack.rag.documents import Chunk, Hit

if TYPE_CHECKING:
    import numpy as np

    from fmstack.models.embeddings import Embedder, Vectors

KINDS = ("flat", "hnsw", "ivf", "ivfpq", "lsh")
_META = "dense.json"
_VECTORS = "vectors.npy"
_FAISS = "index.faiss"
# faiss's k-means wants this many training points per centroid (it warns below it).
_POINTS_PER_CENTROID = 39

Progress = Callable[[int, int], None]


@dataclass
class DenseOptions:
    """The FAISS index and its parameters; stored in the collection manifest."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 64
    ef_construction: int = 200
    nlist: int | None = None  # IVF cells; None: about 4 * sqrt(n), capped by training size
    nprobe: int = 8
    pq_m: int = 8  # sub-quantizers; must divide the embedding dimension
    pq_bits: int = 8
    lsh_bits: int | None = None  # None: 2 * dimension

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"dense index kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("hnsw_m", "ef_search", "ef_construction", "nprobe", "pq_m", "pq_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"dense option {name} must be a positive integer, not {value!r}")
        for name in ("nlist", "lsh_bits"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"dense option {name} must be a positive integer or None")
        if self.pq_bits > 16:
            raise ConfigError(f"pq_bits must be at most 16, not {self.pq_bits}")


_EMBEDDERS: dict[str, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(name: str) -> Embedder:
    """``load_embedder(name)``, loaded once per process: every collection and index that uses
    the same model shares it (loading MiniLM costs a second or two)."""
    from fmstack.models.embeddings import load_embedder

    with _EMBEDDERS_LOCK:
        if name not in _EMBEDDERS:
            _EMBEDDERS[name] = load_embedder(name)
        return _EMBEDDERS[name]


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class DenseIndex:
    """Chunks embedded by ``embedder`` (an alias, a model path or an Embedder) in a FAISS
    index. Options are ``DenseOptions``'s fields."""

    def __init__(
        self,
        embedder: str | Embedder = "minilm",
        kind: str = "flat",
        *,
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        import numpy as np

        unknown = set(options) - set(DenseOptions.__dataclass_fields__) - {"kind"}
        if unknown:
            raise ConfigError(
                f"unknown dense option(s) {', '.join(sorted(unknown))}: expected "
                f"{', '.join(f for f in DenseOptions.__dataclass_fields__ if f != 'kind')}"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        self.options = DenseOptions(kind=kind, **options)
        self._embedder: Embedder | None = None if isinstance(embedder, str) else embedder
        self.embedder_name = embedder if isinstance(embedder, str) else embedder.name
        self.batch_size = batch_size
        self.ids: list[str] = []
        self.shas: list[str] = []
        self.vectors: Vectors = np.zeros((0, 0), dtype=np.float32)
        self.chunks: dict[str, Chunk] | None = None
        self.effective_kind = self.options.kind  # what was built, after fallbacks
        self._faiss: Any = None
        self._row: dict[str, int] = {}

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder_name)
        return self._embedder

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"<DenseIndex {self.effective_kind} {self.embedder_name} chunks={len(self)}>"

    # ----- build ---------------------------------------------------------------------------

    def build(
        self,
        chunks: Sequence[Chunk],
        *,
        progress: Progress | None = None,
        vectors: Vectors | None = None,
    ) -> int:
        """Make the index hold exactly these chunks, in this order. Chunks whose id and
        ``indexed_text`` are already stored keep their vectors; the rest are embedded in
        batches of ``batch_size`` (``progress(done, total)`` is called after each). Returns
        how many chunks were embedded. ``vectors`` (one unit-length row per chunk, made by this
        index's embedder, e.g. cached by a benchmark) skips embedding altogether."""
        import numpy as np

        if not chunks:
            raise ConfigError("cannot build a dense index over an empty corpus (no chunks)")
        shas = [text_sha(c.indexed_text) for c in chunks]
        todo: list[int] = []
        if vectors is not None:
            new = np.ascontiguousarray(vectors, dtype=np.float32)
            if new.ndim != 2 or new.shape[0] != len(chunks):
                raise ConfigError(
                    f"vectors have shape {new.shape}; expected one row for each of "
                    f"{len(chunks)} chunks"
                )
        else:
            old = {(i, s): r for r, (i, s) in enumerate(zip(self.ids, self.shas, strict=True))}
            rows = [old.get((c.id, s)) for c, s in zip(chunks, shas, strict=True)]
            todo = [n for n, r in enumerate(rows) if r is None]
            dim = self.vectors.shape[1] if len(self.ids) else self.embedder.dim
            new = np.empty((len(chunks), dim), dtype=np.float32)
            kept = [(n, r) for n, r in enumerate(rows) if r is not None]
            if kept:
                new[[n for n, _ in kept]] = self.vectors[[r for _, r in kept]]
        if todo:
            embedder = self.embedder
            if embedder.dim != new.shape[1]:
                raise ConfigError(
                    f"embedder {embedder.name} gives {embedder.dim}-dimensional vectors, but "
                    f"this index holds {new.shape[1]}-dimensional ones: rebuild it from scratch"
                )
            if progress is not None:
                progress(0, len(todo))
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                new[batch] = embedder.embed([chunks[n].indexed_text for n in batch])
                if progress is not None:
                    progress(min(start + self.batch_size, len(todo)), len(todo))
        vectors = new
        self.ids = [c.id for c in chunks]
        if len(set(self.ids)) != len(self.ids):
            raise ConfigError("chunk ids must be unique within an index")
        self.shas = shas
        self.vectors = vectors
        self.chunks = {c.id: c for c in chunks}
        self._row = {cid: n for n, cid in enumerate(self.ids)}
        self._faiss = self._make_faiss(vectors)
        return len(todo)

    def _make_faiss(self, vectors: Vectors) -> Any:
        faiss = _import_faiss()
        opts = self.options
        n, dim = vectors.shape
        kind = opts.kind
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "ivfpq" and dim % opts.pq_m:
            raise ConfigError(f"pq_m={opts.pq_m} must divide the embedding dimension {dim}")
        if kind == "ivfpq" and n < 2**opts.pq_bits:
            warnings.warn(
                f"IVF-PQ with pq_bits={opts.pq_bits} needs at least {2**opts.pq_bits} vectors to "
                f"train its codebooks; {n} given, so this index is IVF (flat cells) instead",
                RuntimeWarning,
                stacklevel=3,
            )
            kind = "ivf"
        nlist = 0
        if kind in ("ivf", "ivfpq"):
            nlist = self._nlist(n)
            if nlist == 0:
                warnings.warn(
                    f"{n} vectors are too few to train IVF cells (at least "
                    f"{_POINTS_PER_CENTROID} per cell); this index is exact (flat) instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                kind = "flat"
        if kind == "flat":
            index = faiss.index_factory(dim, "Flat", ip)
        elif kind == "hnsw":
            index = faiss.index_factory(dim, f"HNSW{opts.hnsw_m},Flat", ip)
            index.hnsw.efConstruction = opts.ef_construction
        elif kind == "ivf":
            index = faiss.index_factory(dim, f"IVF{nlist},Flat", ip)
        elif kind == "ivfpq":
            index = faiss.index_factory(dim, f"IVF{nlist},PQ{opts.pq_m}x{opts.pq_bits}np", ip)
        else:
            # rotate_data: random hyperplanes (SimHash), so Hamming distance tracks the angle.
            index = faiss.IndexLSH(dim, opts.lsh_bits or 2 * dim, True)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        self.effective_kind = kind
        return index

    def _nlist(self, n: int) -> int:
        """IVF cell count: the user's, or about 4 * sqrt(n); never more than leaves faiss
        ``_POINTS_PER_CENTROID`` training points per cell (0: too few points for IVF)."""
        cap = n // _POINTS_PER_CENTROID
        wanted = self.options.nlist or max(1, round(4 * math.sqrt(n)))
        if self.options.nlist and wanted > cap and cap > 0:
            warnings.warn(
                f"nlist={wanted} needs {wanted * _POINTS_PER_CENTROID} vectors to train; "
                f"{n} given, so nlist={cap}",
                RuntimeWarning,
                stacklevel=4,
            )
        return min(wanted, cap)

    # ----- search --------------------------------------------------------------------------

    def embed_query(self, query: str) -> Vectors:
        return self.embedder.embed([query])[0]

    def search_ids(
        self, query: str | Vectors, k: int = 5, allowed: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest ``(chunk id, cosine)`` pairs to a query (text, or an embedding
        already made), among ``allowed`` ids if given (applied before the top-k cut)."""
        import numpy as np

        if self._faiss is None:
            raise ConfigError("the dense index is empty: build() or load() it first")
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        q = self.embed_query(query) if isinstance(query, str) else np.asarray(query, np.float32)
        if q.shape != (self.vectors.shape[1],):
            raise ConfigError(
                f"query vector has shape {q.shape}, the index holds {self.vectors.shape[1]}-d rows"
            )
        n = len(self.ids)
        if allowed is None:
            rows = self._faiss_rows(q, min(k, n), None)
        else:
            allowed_rows = np.array(
                sorted(self._row[i] for i in allowed if i in self._row), dtype=np.int64
            )
            if len(allowed_rows) == 0:
                return []
            want = min(k, len(allowed_rows))
            rows = np.zeros(0, dtype=np.int64)
            if self.effective_kind != "lsh":
                rows = self._faiss_rows(q, want, allowed_rows)
            if len(rows) < want:
                rows = _exact_rows(self.vectors, q, want, allowed_rows)
        # Exact cosine for the candidates, so scores mean the same for every kind.
        scores = np.asarray(self.vectors[rows], dtype=np.float32) @ q
        order = np.lexsort((rows, -scores))
        return [(self.ids[rows[i]], float(scores[i])) for i in order]

    def _faiss_rows(self, q: Vectors, k: int, allowed_rows: np.ndarray | None) -> np.ndarray:
        faiss = _import_faiss()

        opts = self.options
        kind = self.effective_kind
        sel = faiss.IDSelectorBatch(allowed_rows) if allowed_rows is not None else None
        params: Any
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(opts.ef_search, k))
        elif kind in ("ivf", "ivfpq"):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(opts.nprobe, self._faiss.nlist))
        elif sel is not None:
            params = faiss.SearchParameters(sel=sel)
        else:
            params = None
        _, found = self._faiss.search(q[None, :], k, params=params)
        rows: np.ndarray = found[0]
        return rows[rows >= 0]

    def search(self, query: str, k: int = 5, allowed: set[str] | None = None) -> list[Hit]:
        """Like ``search_ids``, as ranked Hits (``retriever="dense"``)."""
        if self.chunks is None:
            raise ConfigError("this dense index was loaded without its chunks: use search_ids()")
        chunks = self.chunks
        return [
            Hit(chunk=chunks[cid], score=score, rank=rank, retriever="dense")
            for rank, (cid, score) in enumerate(self.search_ids(query, k, allowed), 1)
        ]

    # ----- persistence ---------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write the vectors, ids and the FAISS index to ``directory``."""
        import numpy as np

        if self._faiss is None:
            raise ConfigError("cannot save an empty dense index: build() it first")
        faiss = _import_faiss()

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / _VECTORS, np.ascontiguousarray(self.vectors), allow_pickle=False)
        faiss.write_index(self._faiss, str(path / _FAISS))
        meta = {
            "format": 1,
            "embedder": self.embedder_name,
            "dim": int(self.vectors.shape[1]),
            "options": asdict(self.options),
            "effective_kind": self.effective_kind,
            "ids": self.ids,
            "shas": self.shas,
        }
        (path / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: str | Embedder | None = None,
        chunks: Sequence[Chunk] | None = None,
        batch_size: int = 64,
    ) -> DenseIndex:
        """The index saved in ``directory`` (vectors memory-mapped). The embedder defaults to
        the one it was built with; it is loaded only when a text query or new chunk needs it.
        A damaged file is a ConfigError naming it."""
        import numpy as np

        path = Path(directory)
        meta_file = path / _META
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            options = DenseOptions(**meta["options"])
            ids, shas, dim = list(meta["ids"]), list(meta["shas"]), int(meta["dim"])
            effective_kind = str(meta["effective_kind"])
            name = str(meta["embedder"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"cannot read dense index {meta_file}: {e}; rebuild the index"
            ) from None
        vectors_file = path / _VECTORS
        try:
            vectors = np.load(vectors_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read embeddings {vectors_file}: {e}; rebuild the index"
            ) from None
        if vectors.dtype != np.float32 or vectors.shape != (len(ids), dim):
            raise ConfigError(
                f"embeddings {vectors_file} hold {vectors.dtype} {vectors.shape}, expected "
                f"float32 ({len(ids)}, {dim}): rebuild the index"
            )
        faiss = _import_faiss()
        faiss_file = path / _FAISS
        try:
            index = faiss.read_index(str(faiss_file))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
            raise ConfigError(
                f"cannot read FAISS index {faiss_file} ({first.strip()[:120]}): rebuild the index"
            ) from None
        if index.ntotal != len(ids) or index.d != dim:
            raise ConfigError(
                f"FAISS index {faiss_file} holds {index.ntotal} vectors of {index.d} dimensions; "
                f"{meta_file.name} lists {len(ids)} of {dim}: rebuild the index"
            )
        out = cls(
            embedder if embedder is not None else name, batch_size=batch_size, **asdict(options)
        )
        out.ids, out.shas, out.vectors, out._faiss = ids, shas, vectors, index
        out.effective_kind = effective_kind
        out._row = {cid: n for n, cid in enumerate(ids)}
        if chunks is not None:
            out.chunks = {c.id: c for c in chunks}
        return out


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise missing("faiss-cpu", "rag") from None
    return faiss


def _exact_rows(vectors: Vectors, q: Vectors, k: int, rows: np.ndarray) -> np.ndarray:
    """The ``k`` rows among ``rows`` with the highest inner product with ``q``."""
    import numpy as np

    scores = np.asarray(vectors[rows], dtype=np.float32) @ q
    if len(rows) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        return rows[top]
    return rows
