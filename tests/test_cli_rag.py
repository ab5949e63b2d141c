"""``fmstack rag`` end to end: real files, a real collection on disk (BM25 and MiniLM + FAISS),
the eval store, and SmolLM2 through llama.cpp for ``ask``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fmstack.cli import app
from fmstack.store.evals import EvalStore

DOCS = {
    "paris.md": "# Paris\n\nParis is the capital of France. The Eiffel Tower stands in Paris.\n",
    "berlin.md": "# Berlin\n\nBerlin is the capital of Germany. The Brandenburg Gate is there.\n",
    "tea.txt": "Green tea is brewed at about 80 degrees. Black tea takes boiling water.\n",
}


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def error(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 1, result.stdout
    return result.stderr


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text)
    (root / "image.txt").write_bytes(b"\x89PNG\x00\x00binary")
    return root


def test_index_is_incremental_and_search_finds_the_document(corpus: Path) -> None:
    first = ok_json("rag", "index", str(corpus), "--name", "cities", "--dense", "none")
    assert first["added"] == 3 and first["skipped_files"] == 1 and first["documents"] == 3
    hits = ok_json("rag", "search", "cities", "capital of Germany", "-k", "2")
    assert hits[0]["doc_id"] == "berlin.md" and hits[0]["retriever"] == "bm25"
    assert ok_json("rag", "index", str(corpus), "--name", "cities")["unchanged"] == 3

    (corpus / "tea.txt").write_text("Oolong tea is brewed at about 90 degrees.\n")
    (corpus / "berlin.md").unlink()
    again = ok_json("rag", "index", str(corpus), "--name", "cities", "--prune")
    assert (again["updated"], again["unchanged"], again["removed"]) == (1, 1, 1)
    assert [h["doc_id"] for h in ok_json("rag", "search", "cities", "oolong")] == ["tea.txt"]
    filtered = ok_json("rag", "search", "cities", "capital", "--where", "source=*paris.md")
    assert {h["doc_id"] for h in filtered} == {"paris.md"}

    listed = ok_json("rag", "list")
    assert [(c["name"], c["documents"], c["embedder"]) for c in listed] == [("cities", 2, None)]
    assert "dropped cities" in ok("rag", "drop", "cities").stdout
    assert "no RAG collection named 'cities'" in error("rag", "search", "cities", "x")


def test_eval_stores_a_run_with_retrieval_metrics(corpus: Path, tmp_path: Path) -> None:
    ok("rag", "index", str(corpus), "--name", "c", "--dense", "none")
    qrels = tmp_path / "qrels.jsonl"
    qrels.write_text(
        '{"query_id": "q1", "query": "Eiffel Tower", "relevant": {"paris.md": 1}}\n'
        '{"query_id": "q2", "query": "Brandenburg Gate", "relevant": {"berlin.md": 1}}\n'
        '{"query_id": "q3", "query": "capital city", "relevant": {"tea.txt": 1}}\n')
    out = ok_json("rag", "eval", "c", str(qrels), "-k", "1", "--mode", "bm25")
    assert out["queries"] == 3 and out["errors"] == 0
    assert out["metrics"]["hit_rate_at_k"] == pytest.approx(2 / 3)
    assert out["metrics"]["precision_at_k"] == pytest.approx(2 / 3)
    with EvalStore() as store:
        samples = store.samples(out["run_id"])
    assert {s["case_id"]: s["components"]["retrieved"][0] for s in samples}["q1"] == "paris.md"
    assert "hit_rate_at_k" in ok("eval", "show", out["run_id"]).stdout
    # Unchanged collection and settings: the re-run is served from the eval cache.
    again = ok_json("rag", "eval", "c", str(qrels), "-k", "1", "--mode", "bm25")
    assert again["metrics"] == out["metrics"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "q1"}\n')
    assert f"{bad}:1" in error("rag", "eval", "c", str(bad))


@pytest.mark.slow  # MiniLM embeddings and a SmolLM2 answer
def test_hybrid_search_and_ask_with_citations(corpus: Path) -> None:
    ok("rag", "index", str(corpus), "--name", "h", "--chunker", "sentence")
    hits = ok_json("rag", "search", "h", "Which city is the capital of France?", "-k", "3")
    assert hits[0]["doc_id"] == "paris.md" and hits[0]["retriever"] == "weighted"
    rrf = ok_json("rag", "search", "h", "Which city is the capital of France?", "--fusion", "rrf")
    assert rrf[0]["doc_id"] == "paris.md" and rrf[0]["retriever"] == "rrf"
    dense = ok_json("rag", "search", "h", "hot beverage temperature", "--mode", "dense")
    assert dense[0]["doc_id"] == "tea.txt"  # no shared words: only embeddings find it

    # --cite constrains decoding so every sentence cites an existing source (SmolLM2 often
    # forgets otherwise); the citation must point at the retrieved chunk with the fact.
    answer = ok_json("rag", "ask", "h", "What is the capital of France?", "-k", "3", "--cite")
    assert answer["answer"] and answer["trace_id"] is not None
    assert answer["sources"][0]["doc_id"] == "paris.md"
    assert answer["cited"] == [1] and answer["answer"].endswith("[1].")
    assert "Paris" in answer["answer"]
    streamed = ok("rag", "ask", "h", "What is the capital of France?", "-k", "3", "--cite").stdout
    assert "*[1] paris.md" in streamed  # the cited source is marked


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    assert "no such file or directory" in error("rag", "index", str(tmp_path / "nope"),
                                                "--name", "x")
    assert "no RAG collection" in error("rag", "search", "missing", "q")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty corpus" in error("rag", "index", str(empty), "--name", "e")
    assert "expected KEY=VALUE" in error("rag", "search", "missing", "q", "--where", "oops")
    assert "unknown chunker" in error("rag", "index", str(empty), "--name", "e",
                                      "--chunker", "words")


def test_corpus_writes_docs_and_matching_qrels(tmp_path: Path) -> None:
    ok("rag", "corpus", "stdlib", "--out", str(tmp_path), "--limit", "20")
    docs = [json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()]
    qrels = [json.loads(line) for line in (tmp_path / "qrels.jsonl").read_text().splitlines()]
    assert len(docs) == 20 and qrels
    ids = {f"docs.jsonl#{d['id']}" for d in docs}
    assert all(set(q["relevant"]) <= ids for q in qrels)


@pytest.mark.slow  # one SmolLM2 call (or two, with the retry)
def test_sql_shows_the_query_and_never_writes(tmp_path: Path) -> None:
    import hashlib
    import sqlite3

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
        conn.executemany("INSERT INTO customers (name, city) VALUES (?, ?)",
                         [("Ada", "London"), ("Linus", "Helsinki"), ("Grace", "New York")])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = invoke("rag", "sql", str(db), "How many customers are there?", "--no-answer",
                    "--json")
    out = json.loads(result.stdout)
    assert out["sql"].upper().startswith(("SELECT", "WITH"))  # the SQL is always shown
    assert (result.exit_code == 0) == out["ok"] and out["trace_ids"]
    if out["ok"]:
        assert out["rows"] is not None and out["error"] is None
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert "nope.db: no such database file" in error("rag", "sql", str(tmp_path / "nope.db"),
                                                     "x")
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.slow  # SmolLM2 writes one context per chunk
def test_contextual_indexing_puts_a_context_before_each_chunk(tmp_path: Path) -> None:
    doc = tmp_path / "report.md"
    doc.write_text("# Q3 report\n\nRevenue grew 12% to 4.1 million euros.\n\n"
                   "# Outlook\n\nThe company expects slower growth next year.\n")
    out = ok_json("rag", "index", str(doc), "--name", "ctx", "--dense", "none",
                  "--chunker", "markdown", "--contextual", "smollm2")
    assert out["chunks"] == 2
    hits = ok_json("rag", "search", "ctx", "revenue growth", "-k", "2")
    assert all(h["context"] for h in hits)  # stored, and indexed with the chunk
    # Re-indexing an unchanged file makes no model calls (and keeps the contexts).
    assert ok_json("rag", "index", str(doc), "--name", "ctx", "--contextual", "smollm2"
                   )["unchanged"] == 1
