"""``fmstack rag``: index files into a named collection, search it, ask it, evaluate it.

``rag index`` is incremental: re-indexing a folder re-chunks and re-embeds only documents whose
content changed (``--prune`` also removes documents that are gone), and an interrupted build
leaves the previous index as it was. ``rag eval`` runs the retriever through the eval system
(one stored run, so ``fmstack eval show/report/compare`` work on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common
from fmstack.errors import ConfigError

if TYPE_CHECKING:
    from fmstack.rag.documents import Hit

app = typer.Typer(
    help="Retrieval-augmented generation: index, search, ask, eval, list, drop, corpus, sql.",
    add_completion=False,
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Collection name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ModeOpt = Annotated[str | None, typer.Option(
    "--mode", help="bm25, dense or hybrid (default: hybrid when the collection has "
    "embeddings, else bm25).")]
KOpt = Annotated[int, typer.Option("--k", "-k", help="How many chunks to retrieve.")]
RerankOpt = Annotated[str | None, typer.Option(
    "--rerank", metavar="SPEC", help="Rerank the candidates: llm:MODEL or cross-encoder:PATH.")]
FusionOpt = Annotated[str, typer.Option(
    "--fusion", help="Hybrid fusion: weighted (min-max scores, 0.5/0.5) or rrf.")]
RrfKOpt = Annotated[int, typer.Option("--rrf-k", help="RRF's k (with --fusion rrf).")]
WhereOpt = Annotated[list[str] | None, typer.Option(
    "--where", metavar="KEY=VALUE", help="Metadata filter (repeatable; source accepts a glob).")]


def _where(items: list[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where {item!r}: expected KEY=VALUE")
        out.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def _hit_json(h: Hit) -> dict[str, Any]:
    return {"rank": h.rank, "score": h.score, "retriever": h.retriever, "id": h.chunk.id,
            "doc_id": h.chunk.doc_id, "source": h.chunk.source, "text": h.chunk.text,
            "context": h.chunk.context, "metadata": h.chunk.metadata}


@app.command("index")
def index(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A file or a folder.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Collection name.")],
    glob: Annotated[str | None, typer.Option("--glob", help="Files to take in a folder.")] = None,
    chunker: Annotated[str, typer.Option(
        "--chunker", help="fixed, recursive, sentence or markdown.")] = "recursive",
    size: Annotated[int | None, typer.Option(
        "--size", help="Chunk size (characters; fixed: --unit) [default: the chunker's].")
    ] = None,
    overlap: Annotated[int | None, typer.Option("--overlap", help="Chunk overlap.")] = None,
    dense: Annotated[str, typer.Option(
        "--dense", help="FAISS index: flat, hnsw, ivf, ivfpq, lsh, or none (BM25 only).")
    ] = "flat",
    embedder: Annotated[str, typer.Option("--embedder", help="Embedding model.")] = "minilm",
    contextual: Annotated[str | None, typer.Option(
        "--contextual", metavar="MODEL", help="Contextual retrieval: MODEL writes a context "
        "for each chunk from its document before indexing (slow; cached).")] = None,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Remove indexed documents that are no longer under PATH.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index PATH into collection NAME (created on first use; later runs are incremental)."""
    with common.user_errors():
        from fmstack.rag.chunkers import chunker_spec, get_chunker
        from fmstack.rag.collection import Collection, list_collections
        from fmstack.rag.loaders import load

        options: dict[str, Any] = {}
        size_key = "max_chars" if chunker in ("sentence", "markdown") else "size"
        if size is not None:
            options[size_key] = size
        if overlap is not None:
            options["overlap_sentences" if chunker == "sentence" else "overlap"] = overlap
        split = get_chunker(chunker, **options)
        loaded = load(path, glob=glob)
        for s in loaded.skipped:
            common.err().print(f"skipped {s.path}: {s.reason}", style="yellow", markup=False)
        if name in list_collections():
            col = Collection.open(name)
        else:
            if not loaded.documents:
                raise ConfigError(f"empty corpus: nothing to index under {path}")
            col = Collection.create(name, embedder=None if dense == "none" else embedder,
                                    dense="flat" if dense == "none" else dense,
                                    chunker_config=chunker_spec(split))
        chunk_fn = split.split
        if contextual is not None:
            chunk_fn = _contextual_chunker(contextual, split.split)
        with col:
            result = col.upsert(loaded.documents, chunk_fn, progress=not as_json)
            removed = None
            if prune:
                present = {d.id for d in loaded.documents}
                gone = [d for d in col.document_ids() if d not in present]
                removed = col.delete(gone) if gone else None
            stats = col.stats()
    report = {"collection": name, "added": result.added, "updated": result.updated,
              "unchanged": result.unchanged, "removed": removed.deleted if removed else 0,
              "chunks_embedded": result.chunks_embedded, "skipped_files": len(loaded.skipped),
              "documents": stats.documents, "chunks": stats.chunks,
              "seconds": round(result.seconds, 2)}
    if as_json:
        common.print_json(report)
        return
    common.out().print(
        f"{name}: {result.added} added, {result.updated} updated, {result.unchanged} unchanged"
        + (f", {report['removed']} removed" if prune else "")
        + f", {len(loaded.skipped)} files skipped · {stats.documents} documents, "
        f"{stats.chunks} chunks · {result.chunks_embedded} embedded in "
        f"{result.seconds:.1f} s", markup=False)


def _contextual_chunker(model_uri: str, split: Any) -> Any:
    from fmstack.models.registry import load_model
    from fmstack.rag.contextual import contextualize

    model = load_model(model_uri)

    def chunk(doc: Any) -> Any:
        return contextualize(model, doc, split(doc))

    return chunk


@app.command("search")
def search(
    name: NameArg,
    query: Annotated[str, typer.Argument(metavar="QUERY")],
    mode: ModeOpt = None,
    k: KOpt = 5,
    rerank: RerankOpt = None,
    where: WhereOpt = None,
    fusion: FusionOpt = "weighted",
    rrf_k: RrfKOpt = 60,
    as_json: JsonOpt = False,
) -> None:
    """The best chunks for QUERY."""
    with common.user_errors():
        from fmstack.rag.collection import Collection
        from fmstack.rag.pipeline import retrieve
        from fmstack.rag.rerank import get_reranker

        filters = _where(where)  # flags are checked before anything is opened or loaded
        reranker = get_reranker(rerank) if rerank else None
        with Collection.open(name) as col:
            hits = retrieve(col, query, k=k, mode=mode, reranker=reranker,  # type: ignore[arg-type]
                            where=filters, fusion=fusion, rrf_k=rrf_k)  # type: ignore[arg-type]
    if as_json:
        common.print_json([_hit_json(h) for h in hits])
        return
    if not hits:
        common.out().print("no results", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col_name in ("#", "score", "source", "text"):
        table.add_column(col_name, justify="right" if col_name in ("#", "score") else "left",
                         no_wrap=col_name != "text")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", h.chunk.doc_id,
                      common.shorten(" ".join(h.chunk.text.split()), 100))
    common.out().print(table)


@app.command("ask")
def ask(
    name: NameArg,
    question: Annotated[str, typer.Argument(metavar="QUESTION")],
    model: common.ModelOpt = common.DEFAULT_MODEL,
    mode: ModeOpt = None,
    k: KOpt = 5,
    rerank: RerankOpt = None,
    where: WhereOpt = None,
    hyde: Annotated[bool, typer.Option(
        "--hyde", help="Search with hypothetical answers (HyDE) as well.")] = False,
    fusion: FusionOpt = "weighted",
    rrf_k: RrfKOpt = 60,
    cite: Annotated[bool, typer.Option(
        "--cite", help="Constrain the answer: every sentence cites a source, or it is the "
        "refusal (for small models that forget to cite).")] = False,
    max_tokens: common.MaxTokens = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer QUESTION from the collection, citing the sources as [n] (streams)."""
    with common.user_errors():
        from fmstack.models.registry import load_model
        from fmstack.rag.collection import Collection
        from fmstack.rag.pipeline import ask as rag_ask
        from fmstack.rag.rerank import get_reranker

        filters = _where(where)
        reranker = get_reranker(rerank) if rerank else None
        lm = load_model(model)
        console = common.out()

        def show(text: str) -> None:
            console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

        params: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
        try:
            with Collection.open(name) as col:
                result = rag_ask(col, lm, question, k=k, mode=mode,  # type: ignore[arg-type]
                                 reranker=reranker, where=filters, hyde=hyde,
                                 require_citations=cite, fusion=fusion,  # type: ignore[arg-type]
                                 rrf_k=rrf_k,
                                 on_text=None if as_json else show, **params)
        finally:
            lm.close()
    a = result.answer
    if as_json:
        common.print_json({
            "question": question, "query": result.query, "answer": a.text,
            "grounded": a.grounded, "trace_id": a.trace_id,
            "cited": [a.sources.index(h) + 1 for h in a.cited],
            "invalid_citations": a.invalid_citations, "dropped_sources": a.dropped,
            "sources": [_hit_json(h) for h in a.sources]})
        return
    console.print()
    if a.sources:
        console.print()
        for n, h in enumerate(a.sources, 1):
            mark = "*" if h in a.cited else " "
            console.print(f"{mark}[{n}] {h.chunk.doc_id}  "
                          f"{common.shorten(' '.join(h.chunk.text.split()), 80)}",
                          markup=False, style="dim" if h not in a.cited else None)
        if a.invalid_citations:
            console.print(f"(cites sources that do not exist: {a.invalid_citations})",
                          markup=False, style="yellow")


@app.command("eval")
def evaluate(
    name: NameArg,
    qrels: Annotated[Path, typer.Argument(metavar="QRELS", help="Queries with relevance "
                                          "judgements (JSONL: query_id, query, relevant).")],
    mode: ModeOpt = None,
    k: KOpt = 10,
    rerank: RerankOpt = None,
    fusion: FusionOpt = "weighted",
    rrf_k: RrfKOpt = 60,
    limit: Annotated[int | None, typer.Option("--limit", help="First N queries.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieval quality on QRELS: hit rate, recall, precision, MRR and nDCG at k, as a
    stored eval run (fmstack eval show RUN). Relevant ids are document ids."""
    with common.user_errors():
        from fmstack.eval.runner import run_suite
        from fmstack.rag.evaluate import retrieval_suite

        if fusion not in ("weighted", "rrf"):
            raise ConfigError(f"--fusion {fusion!r}: use weighted or rrf")
        suite = retrieval_suite(name, qrels, k=k, mode=mode, rerank=rerank, limit=limit,
                                fusion=fusion, rrf_k=rrf_k)
        result = run_suite(suite, progress=not as_json)
    metrics = {key: v for key, v in result.summary.items()
               if isinstance(v, dict) and "mean" in v}
    if as_json:
        common.print_json({"run_id": result.run_id, "collection": name, "k": k,
                           "mode": mode, "rerank": rerank, "queries": len(result.samples),
                           "errors": result.errors,
                           "metrics": {m: v["mean"] for m, v in metrics.items()}})
        return
    common.out().print(f"{name} · {len(result.samples)} queries · k={k} · run "
                       f"{result.run_id} ({result.errors} errors)", markup=False)
    for key, v in metrics.items():
        common.out().print(f"  {key:<20} {v['mean']:.4f}", markup=False)


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Collections and their sizes."""
    with common.user_errors():
        from fmstack.rag.collection import Collection, list_collections

        rows = []
        for n in list_collections():
            with Collection.open(n) as col:
                rows.append(col.stats())
    if as_json:
        common.print_json([{"name": s.name, "documents": s.documents, "chunks": s.chunks,
                            "embedder": s.embedder, "dense": s.dense_kind,
                            "bytes": s.bytes_on_disk, "updated": s.updated} for s in rows])
        return
    if not rows:
        common.out().print("no collections (fmstack rag index PATH --name NAME)", markup=False)
    for s in rows:
        index = f"{s.embedder} {s.dense_kind}" if s.embedder else "BM25 only"
        common.out().print(f"{s.name}  {s.documents} documents, {s.chunks} chunks, {index}, "
                           f"{s.bytes_on_disk / 1e6:.1f} MB, updated {s.updated}", markup=False)


@app.command("drop")
def drop(name: NameArg) -> None:
    """Delete a collection and its files."""
    with common.user_errors():
        from fmstack.rag.collection import drop as drop_collection

        drop_collection(name)
    common.out().print(f"dropped {name}", markup=False)


@app.command("corpus")
def corpus(
    which: Annotated[str, typer.Argument(metavar="CORPUS", help="stdlib")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into.")],
    limit: Annotated[int | None, typer.Option("--limit", help="Sample N documents.")] = None,
) -> None:
    """Write a benchmark corpus: stdlib docstrings as docs.jsonl plus qrels.jsonl."""
    with common.user_errors():
        if which != "stdlib":
            raise ConfigError(f"unknown corpus {which!r}; known: stdlib")
        from fmstack.rag.stdlib_corpus import Query as Q
        from fmstack.rag.stdlib_corpus import build_stdlib_corpus, write_qrels

        built = build_stdlib_corpus(limit=limit)
        out.mkdir(parents=True, exist_ok=True)
        docs = out / "docs.jsonl"
        with docs.open("w", encoding="utf-8") as f:
            for d in built.documents:
                f.write(json.dumps({"id": d.id, "text": d.text, **d.metadata},
                                   ensure_ascii=False) + "\n")
        # The loader names a JSONL row "<file>#<id>": the qrels use those document ids.
        queries = [Q(id=q.id, text=q.text,
                     relevant={f"{docs.name}#{d}": g for d, g in q.relevant.items()})
                   for q in built.queries]
        write_qrels(queries, out / "qrels.jsonl")
    common.out().print(f"{len(built.documents)} documents -> {docs}, {len(queries)} queries "
                       f"-> {out / 'qrels.jsonl'} (Python {built.python_version})",
                       markup=False)


@app.command("sql")
def sql(
    database: Annotated[Path, typer.Argument(metavar="DB", help="A SQLite or DuckDB file.")],
    question: Annotated[str, typer.Argument(metavar="QUESTION")],
    model: common.ModelOpt = common.DEFAULT_MODEL,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Rows kept from the query.")] = 200,
    timeout: Annotated[float, typer.Option("--timeout", help="Query time limit, seconds.")
                       ] = 5.0,
    no_answer: Annotated[bool, typer.Option(
        "--no-answer", help="Show the SQL and rows only (no phrased answer).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Text-to-SQL: MODEL writes a query for QUESTION, run read-only; the SQL is shown."""
    with common.user_errors():
        from fmstack.models.registry import load_model
        from fmstack.rag.sql import SQLDatabase, ask_sql

        with SQLDatabase(database, max_rows=max_rows, timeout_s=timeout) as db:
            lm = load_model(model)
            try:
                result = ask_sql(lm, db, question, answer=not no_answer)
            finally:
                lm.close()
    if as_json:
        common.print_json({
            "question": question, "sql": result.sql, "ok": result.ok, "error": result.error,
            "answer": result.answer, "trace_ids": result.trace_ids,
            "columns": result.result.columns if result.result else None,
            "rows": result.result.rows if result.result else None,
            "truncated": result.result.truncated if result.result else None})
        if not result.ok:
            raise typer.Exit(1)
        return
    console = common.out()
    console.print(f"SQL: {result.sql}", markup=False, style="bold")
    if result.result is not None:
        console.print(result.result.to_text(), markup=False)
    if result.answer:
        console.print(f"\n{result.answer}", markup=False)
    if not result.ok:
        raise common.fail(f"no query ran: {result.error}")
