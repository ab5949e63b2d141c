"""A named, persisted, incrementally updated retrieval index: ``$FMSTACK_HOME/rag/<name>/``.

Layout::

    rag/<name>/manifest.json       what the collection is, and which state is current
    rag/<name>/state-000007/       one complete state:
        chunks.db                  SQLite: documents (id, source, sha256, metadata) and chunks
        bm25/                      BM25Index.save
        dense/                     DenseIndex.save (absent for a BM25-only collection)

An update never touches the current state. ``upsert``/``delete`` copy ``chunks.db`` into a
temporary directory beside the states, apply the change, rebuild BM25 from all chunk texts,
rebuild the FAISS structure from stored vectors (embedding only new or changed chunks), rename
the directory to the next state and only then replace ``manifest.json`` (write a temp file,
``os.replace``): that replace is the commit. An update interrupted at any point (an exception,
KeyboardInterrupt mid-embedding, a killed process) leaves the previous manifest naming the
previous, intact state; leftovers are removed by the next update. One writer at a time: an
update holds an exclusive lock on ``rag/<name>/.lock`` (POSIX ``flock``) and refuses to run
from a Collection opened before another update committed. A Collection reads the state that
was current when it was opened (its files load lazily): reopen it to see later updates.

Embeddings are tied to the model that made them: the manifest stores the embedder's name,
dimension and a fingerprint of its files (sha256 over the model directory's JSON configs and
the names and sizes of all its files), and opening a collection with a different model, or a
model whose files changed under the same alias, is an error rather than silently wrong
neighbours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmstack.config import home
from fmstack.errors import ConfigError
from fmstack.rag.bm25 import BM25Index, BM25Options
from fmstack.rag.dense import DenseIndex, DenseOptions, Progress, get_embedder
from fmstack.rag.documents import Chunk, Document, Hit

FORMAT = 1
MODES = ("bm25", "dense")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_MANIFEST = "manifest.json"
_SCHEMA = """
CREATE TABLE documents (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, metadata TEXT NOT NULL
);
CREATE TABLE chunks (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES documents(id), text TEXT NOT NULL,
    context TEXT, start INTEGER NOT NULL, "end" INTEGER NOT NULL, source TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX chunks_doc ON chunks(doc_id);
"""


def rag_dir() -> Path:
    return home() / "rag"


def list_collections() -> list[str]:
    """Names of the collections under ``$FMSTACK_HOME/rag``, sorted."""
    root = rag_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / _MANIFEST).is_file())


def drop(name: str) -> None:
    """Delete a collection and everything in it."""
    path = _existing(name)
    # Rename first so a half-deleted tree is never mistaken for a collection.
    trash = Path(tempfile.mkdtemp(prefix=f".drop-{name}.", dir=path.parent))
    os.replace(path, trash / name)
    shutil.rmtree(trash, ignore_errors=True)


def embedder_fingerprint(name: str) -> str:
    """sha256 over a sentence-transformers directory's JSON files (contents) and every file's
    relative path and size: cheap (no weights are read) and changes when the model does."""
    from fmstack.models.embeddings import EMBEDDER_PACKAGES, packaged_model_dir

    path = packaged_model_dir(EMBEDDER_PACKAGES[name]) if name in EMBEDDER_PACKAGES else Path(name)
    path = path.expanduser()
    if not path.is_dir():
        raise ConfigError(f"embedder {name!r} is neither an alias nor a model directory")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:  # caches and lock files are not the model
            continue
        digest.update(f"{rel}\0{file.stat().st_size}\0".encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class UpsertResult:
    """What an upsert (or delete) changed. Document counts are by id; ``chunks_embedded`` is
    how many chunks went through the embedder (new or changed chunk text only)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0


@dataclass
class CollectionStats:
    name: str
    path: Path
    documents: int
    chunks: int
    embedder: str | None
    dense_kind: str | None
    bytes_on_disk: int
    created: str
    updated: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _existing(name: str) -> Path:
    path = rag_dir() / name
    if not _NAME.match(name) or not (path / _MANIFEST).is_file():
        names = list_collections()
        known = f"existing: {', '.join(names)}" if names else "there are none yet"
        raise ConfigError(f"no RAG collection named {name!r} ({known})")
    return path


def _doc_sha(doc: Document) -> str:
    sha = doc.metadata.get("sha256")
    if isinstance(sha, str) and sha:
        return sha
    return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()


def _row_to_chunk(row: Sequence[Any]) -> Chunk:
    cid, doc_id, text, context, start, end, source, metadata = row
    return Chunk(
        id=cid, doc_id=doc_id, text=text, start=start, end=end, source=source,
        metadata=json.loads(metadata), context=context,
    )  # fmt: skip


_CHUNK_COLUMNS = 'id, doc_id, text, context, start, "end", source, metadata'


class Collection:
    """An opened collection. Create one with ``Collection.create``, open one with
    ``Collection.open``; ``upsert``/``delete`` change it, ``search`` reads it."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.name = path.name
        self.manifest = manifest
        self._db: sqlite3.Connection | None = None
        self._bm25: BM25Index | None = None
        self._dense: DenseIndex | None = None

    # ----- lifecycle -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        *,
        embedder: str | None = "minilm",
        dense: str = "flat",
        dense_options: dict[str, Any] | None = None,
        bm25_options: dict[str, Any] | None = None,
        chunker_config: dict[str, Any] | None = None,
    ) -> Collection:
        """A new, empty collection. ``embedder=None`` makes it BM25-only."""
        if not _NAME.match(name):
            raise ConfigError(
                f"collection name {name!r} must be letters, digits, '.', '_' or '-' "
                "(not starting with '.' or '-', at most 100 characters)"
            )
        path = rag_dir() / name
        if path.exists():
            raise ConfigError(f"RAG collection {name!r} already exists at {path}: drop it first")
        try:
            bm25 = BM25Options(**(bm25_options or {}))
            dense_opts = DenseOptions(kind=dense, **(dense_options or {}))
        except TypeError as e:
            raise ConfigError(f"bad index option: {e}") from None
        BM25Index(**asdict(bm25))  # fail now on an unknown stemmer or stopword language
        embed_info = None
        if embedder is not None:
            fingerprint = embedder_fingerprint(embedder)
            model = get_embedder(embedder)
            embed_info = {"name": embedder, "dim": model.dim, "fingerprint": fingerprint}
        now = _now()
        manifest = {
            "format": FORMAT,
            "name": name,
            "embedder": embed_info,
            "dense": asdict(dense_opts) if embedder is not None else None,
            "bm25": asdict(bm25),
            "chunker": chunker_config or {},
            "counts": {"documents": 0, "chunks": 0},
            "created": now,
            "updated": now,
            "state": None,
        }
        try:
            json.dumps(manifest)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"chunker_config must be JSON-serialisable: {e}") from None
        rag_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".create-{name}.", dir=rag_dir()))
        _write_json(tmp / _MANIFEST, manifest)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"RAG collection {name!r} already exists at {path}") from None
        return cls(path, manifest)

    @classmethod
    def open(cls, name: str, *, embedder: str | None = None) -> Collection:
        """An existing collection. ``embedder`` (default: the one it was built with) must be
        the same model, checked by fingerprint."""
        path = _existing(name)
        manifest = _read_manifest(path / _MANIFEST)
        built = manifest.get("embedder")
        if built is not None or embedder is not None:
            if built is None:
                raise ConfigError(
                    f"RAG collection {name!r} is BM25-only (built without an embedder); "
                    f"it cannot be queried with embedder {embedder!r}"
                )
            using = embedder or built["name"]
            fingerprint = embedder_fingerprint(using)
            if fingerprint != built["fingerprint"]:
                raise ConfigError(
                    f"RAG collection {name!r} was embedded with {built['name']!r} (fingerprint "
                    f"{built['fingerprint']}); {using!r} has fingerprint {fingerprint}: query "
                    "with the same model, or rebuild the collection with this one"
                )
            manifest = {**manifest, "embedder": {**built, "name": using}}
        return cls(path, manifest)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._bm25 = self._dense = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        counts = self.manifest["counts"]
        return f"<Collection {self.name} docs={counts['documents']} chunks={counts['chunks']}>"

    # ----- reading -------------------------------------------------------------------------

    @property
    def has_dense(self) -> bool:
        return self.manifest.get("embedder") is not None

    @property
    def state_dir(self) -> Path | None:
        state = self.manifest.get("state")
        return self.path / state if state else None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            state = self.state_dir
            if state is None:
                raise ConfigError(
                    f"RAG collection {self.name!r} is empty: upsert documents into it first"
                )
            db_file = state / "chunks.db"
            if not state.is_dir():
                raise ConfigError(
                    f"RAG collection {self.name!r} was updated since it was opened here "
                    f"({state.name} is gone): open it again"
                )
            if not db_file.is_file():
                raise ConfigError(f"{db_file} is missing: rebuild the collection")
            # Read-only: the current state is never written; updates work on a copy.
            self._db = sqlite3.connect(
                f"{db_file.as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            try:
                self._db.execute("SELECT count(*) FROM chunks").fetchone()
            except sqlite3.DatabaseError as e:
                self._db.close()
                self._db = None
                raise ConfigError(f"cannot read {db_file}: {e}; rebuild the collection") from None
        return self._db

    def chunk(self, chunk_id: str) -> Chunk:
        """The stored chunk with this id."""
        row = (
            self._conn()
            .execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id = ?", (chunk_id,))
            .fetchone()
        )
        if row is None:
            raise ConfigError(f"RAG collection {self.name!r} has no chunk {chunk_id!r}")
        return _row_to_chunk(row)

    def _chunks(self, ids: Sequence[str]) -> dict[str, Chunk]:
        out: dict[str, Chunk] = {}
        conn = self._conn()
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE id IN ({marks})", part
            ).fetchall()
            out.update((r[0], _row_to_chunk(r)) for r in rows)
        return out

    def _allowed(self, where: dict[str, Any]) -> set[str]:
        """Chunk ids matching every condition: equality on a metadata key (a list means any
        of its values); ``doc_id`` and ``source`` match the chunk's own fields, and a
        ``source`` with ``*``, ``?`` or ``[`` is a glob."""
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in where.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"filter keys must be non-empty strings, not {key!r}")
            if key in ("doc_id", "source"):
                column = key
            else:
                if '"' in key:
                    raise ConfigError(f"filter key {key!r} must not contain a double quote")
                # The JSON path as an SQL string literal (quotes doubled); keys may hold dots.
                column = "json_extract(metadata, '$.\"" + key.replace("'", "''") + "\"')"
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            if not values:
                return set()
            ors = []
            for v in values:
                if v is not None and not isinstance(v, (str, int, float, bool)):
                    raise ConfigError(
                        f"filter {key!r}: values must be strings, numbers, booleans or null, "
                        f"not {type(v).__name__}"
                    )
                if v is None:
                    ors.append(f"{column} IS NULL")
                    continue
                glob = key == "source" and isinstance(v, str) and any(c in v for c in "*?[")
                ors.append(f"{column} GLOB ?" if glob else f"{column} = ?")
                params.append(v)
            clauses.append("(" + " OR ".join(ors) + ")")
        sql = "SELECT id FROM chunks" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return {r[0] for r in self._conn().execute(sql, params)}

    def search(
        self, query: str, k: int = 5, mode: str = "bm25", where: dict[str, Any] | None = None,
        *, vector: Any = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` from one retriever (``bm25`` or ``dense``),
        among chunks matching ``where`` (filtered before the top-k cut). ``vector`` (dense
        only) searches with that embedding instead of the query's own (HyDE)."""
        if mode not in MODES:
            raise ConfigError(f"search mode {mode!r} is not one of {', '.join(MODES)}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        if self.manifest["counts"]["chunks"] == 0:
            raise ConfigError(
                f"RAG collection {self.name!r} is empty: upsert documents into it first"
            )
        allowed = self._allowed(where) if where else None
        if allowed is not None and not allowed:
            return []
        if mode == "bm25":
            pairs = self._bm25_index().search_ids(query, k, allowed)
        else:
            pairs = self._dense_index().search_ids(query if vector is None else vector, k,
                                                   allowed)
        chunks = self._chunks([cid for cid, _ in pairs])
        return [
            Hit(chunk=chunks[cid], score=score, rank=rank, retriever=mode)
            for rank, (cid, score) in enumerate(pairs, 1)
        ]

    def _bm25_index(self) -> BM25Index:
        if self._bm25 is None:
            self._conn()  # the empty-collection error comes first
            assert self.state_dir is not None
            self._bm25 = BM25Index.load(self.state_dir / "bm25")
        return self._bm25

    def _dense_index(self) -> DenseIndex:
        if self._dense is None:
            info = self.manifest.get("embedder")
            if info is None:
                raise ConfigError(
                    f"RAG collection {self.name!r} is BM25-only (created with embedder=None): "
                    "search it with mode='bm25'"
                )
            self._conn()
            assert self.state_dir is not None
            dense = DenseIndex.load(self.state_dir / "dense", embedder=info["name"])
            if dense.embedder.dim != info["dim"]:
                raise ConfigError(
                    f"embedder {info['name']!r} gives {dense.embedder.dim}-d vectors; "
                    f"RAG collection {self.name!r} holds {info['dim']}-d ones: rebuild it"
                )
            self._dense = dense
        return self._dense

    def stats(self) -> CollectionStats:
        info = self.manifest.get("embedder")
        dense = self.manifest.get("dense")
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return CollectionStats(
            name=self.name,
            path=self.path,
            documents=self.manifest["counts"]["documents"],
            chunks=self.manifest["counts"]["chunks"],
            embedder=info["name"] if info else None,
            dense_kind=dense["kind"] if dense else None,
            bytes_on_disk=size,
            created=self.manifest["created"],
            updated=self.manifest["updated"],
        )

    # ----- writing -------------------------------------------------------------------------

    def upsert(
        self,
        documents: Iterable[Document],
        chunk: Callable[[Document], list[Chunk]],
        *,
        progress: bool | Progress = False,
        batch_size: int = 64,
    ) -> UpsertResult:
        """Add new documents and replace changed ones (same id, different sha256: the
        ``sha256`` metadata field if the loader set one, else the text's). Unchanged documents
        are not re-chunked or re-embedded. ``progress``: True for a progress bar while
        embedding, or a callable ``(done, total)`` called after each batch of ``batch_size``."""
        started = time.perf_counter()
        docs = list(documents)
        seen: set[str] = set()
        for doc in docs:
            if doc.id in seen:
                raise ConfigError(f"document id {doc.id!r} appears twice in one upsert")
            seen.add(doc.id)
        known = self._doc_shas()
        if not docs and not known:
            raise ConfigError(f"empty corpus: no documents to index into {self.name!r}")
        result = UpsertResult()
        changed: list[tuple[Document, str, list[Chunk]]] = []
        for doc in docs:
            sha = _doc_sha(doc)
            if known.get(doc.id) == sha:
                result.unchanged += 1
                continue
            chunks = list(chunk(doc))
            for c in chunks:
                if c.doc_id != doc.id:
                    raise ConfigError(
                        f"chunk {c.id!r} says doc_id {c.doc_id!r} but came from document "
                        f"{doc.id!r}: the chunker must keep the document's id"
                    )
            changed.append((doc, sha, chunks))
            if doc.id in known:
                result.updated += 1
            else:
                result.added += 1
        if changed:
            self._commit(changed, [], result, progress, batch_size)
        result.seconds = time.perf_counter() - started
        return result

    def delete(self, doc_ids: Iterable[str]) -> UpsertResult:
        """Remove documents (and their chunks) by id; unknown ids are an error."""
        started = time.perf_counter()
        ids = list(dict.fromkeys(doc_ids))
        known = self._doc_shas()
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ConfigError(
                f"RAG collection {self.name!r} has no document(s) {', '.join(map(repr, unknown))}"
            )
        result = UpsertResult(deleted=len(ids))
        if ids:
            self._commit([], ids, result, False, 64)
        result.seconds = time.perf_counter() - started
        return result

    def document_ids(self) -> list[str]:
        """The ids of the indexed documents, sorted."""
        return sorted(self._doc_shas())

    def _doc_shas(self) -> dict[str, str]:
        if self.state_dir is None:
            return {}
        return dict(self._conn().execute("SELECT id, sha256 FROM documents").fetchall())

    def _commit(
        self,
        changed: list[tuple[Document, str, list[Chunk]]],
        deleted: list[str],
        result: UpsertResult,
        progress: bool | Progress,
        batch_size: int,
    ) -> None:
        """Build the next state in a temporary directory and switch the manifest to it."""
        with _writer_lock(self.path):
            stored = _read_manifest(self.path / _MANIFEST)
            if stored["state"] != self.manifest["state"]:
                raise ConfigError(
                    f"RAG collection {self.name!r} was updated since it was opened here: "
                    "open it again, then retry"
                )
            self._build_state(changed, deleted, result, progress, batch_size, stored)

    def _build_state(
        self,
        changed: list[tuple[Document, str, list[Chunk]]],
        deleted: list[str],
        result: UpsertResult,
        progress: bool | Progress,
        batch_size: int,
        stored: dict[str, Any],
    ) -> None:
        self._clean_leftovers()
        old_state = self.state_dir
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.path))
        try:
            db_file = tmp / "chunks.db"
            db = sqlite3.connect(db_file)
            try:
                if old_state is not None:
                    self._conn().backup(db)
                else:
                    db.executescript(_SCHEMA)
                result.chunks_removed = _apply(db, changed, deleted)
                result.chunks_added = sum(len(cs) for _, _, cs in changed)
                db.commit()
                n_docs = db.execute("SELECT count(*) FROM documents").fetchone()[0]
                rows = db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks ORDER BY id").fetchall()
            finally:
                db.close()
            chunks = [_row_to_chunk(r) for r in rows]
            if not chunks and n_docs:
                raise ConfigError(
                    f"empty corpus: the chunker gave no chunks for {n_docs} document(s)"
                )
            if chunks:
                bm25 = BM25Index(**self.manifest["bm25"])
                bm25.build(chunks)
                bm25.save(tmp / "bm25")
                info = self.manifest.get("embedder")
                if info is not None:
                    dense = self._previous_dense(old_state, info["name"])
                    dense.batch_size = batch_size
                    with _embedding_progress(progress, self.name) as report:
                        result.chunks_embedded = dense.build(chunks, progress=report)
                    dense.save(tmp / "dense")
            number = int(old_state.name.split("-")[1]) + 1 if old_state is not None else 1
            state = self.path / f"state-{number:06d}"
            os.rename(tmp, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = {
            **self.manifest,
            "state": state.name,
            "counts": {"documents": n_docs, "chunks": len(chunks)},
            "updated": _now(),
        }
        # The stored manifest keeps the name the collection was built with.
        _write_json(self.path / _MANIFEST, {**manifest, "embedder": stored.get("embedder")})
        self.close()
        self.manifest = manifest
        if old_state is not None:
            shutil.rmtree(old_state, ignore_errors=True)

    def _previous_dense(self, old_state: Path | None, embedder: str) -> DenseIndex:
        opts = dict(self.manifest["dense"])
        if old_state is not None and (old_state / "dense").is_dir():
            return DenseIndex.load(old_state / "dense", embedder=embedder)
        return DenseIndex(embedder, **opts)

    def _clean_leftovers(self) -> None:
        """Remove build directories and states an interrupted update left behind."""
        current = self.manifest.get("state")
        for p in self.path.iterdir():
            if p.is_dir() and p.name != current and p.name.startswith((".build-", "state-")):
                shutil.rmtree(p, ignore_errors=True)


def _apply(
    db: sqlite3.Connection, changed: list[tuple[Document, str, list[Chunk]]], deleted: list[str]
) -> int:
    """Apply document replacements and deletions to ``db``; return how many chunks went."""
    removed = 0
    for doc_id in [d.id for d, _, _ in changed] + deleted:
        removed += db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,)).rowcount
        db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
    for doc, sha, chunks in changed:
        db.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?)",
            (doc.id, doc.source, sha, json.dumps(doc.metadata, ensure_ascii=False, default=str)),
        )
        try:
            db.executemany(
                f"INSERT INTO chunks ({_CHUNK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.id, c.doc_id, c.text, c.context, c.start, c.end, c.source,
                     json.dumps(c.metadata, ensure_ascii=False, default=str))
                    for c in chunks
                ],
            )  # fmt: skip
        except sqlite3.IntegrityError:
            ids = [c.id for c in chunks]
            dup = next(i for i in ids if ids.count(i) > 1 or _exists(db, i, doc.id))
            raise ConfigError(f"chunk id {dup!r} of document {doc.id!r} is not unique") from None
    return removed


def _exists(db: sqlite3.Connection, chunk_id: str, doc_id: str) -> bool:
    row = db.execute("SELECT doc_id FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
    return row is not None and row[0] != doc_id


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``path/.lock`` (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer is the caller's responsibility
        yield
        return
    with open(path / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"RAG collection {path.name!r} is being updated by another writer: retry when "
                "it has finished"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _embedding_progress(progress: bool | Progress, name: str) -> Iterator[Progress | None]:
    """A rich progress bar (progress=True), the caller's callback, or nothing."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield None
        return
    from rich import progress as rp

    bar = rp.Progress(
        rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
        rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
    )  # fmt: skip
    task = bar.add_task(f"embedding {name}", total=None)
    bar.start()
    try:
        yield lambda done, total: bar.update(task, completed=done, total=total)
    finally:
        bar.stop()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; rebuild the collection") from None
    required = ("format", "embedder", "dense", "bm25", "counts", "state", "created", "updated")
    missing_keys = [k for k in required if not isinstance(manifest, dict) or k not in manifest]
    if missing_keys:
        raise ConfigError(
            f"{path} is not a collection manifest (missing {', '.join(missing_keys)}): "
            "rebuild the collection"
        )
    if manifest["format"] != FORMAT:
        raise ConfigError(
            f"{path} has format {manifest['format']}; this fmstack reads format {FORMAT}: "
            "rebuild the collection"
        )
    return dict(manifest)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
