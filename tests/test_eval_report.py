"""Eval reports, the comparison gate and the ``fmstack eval`` CLI.

Runs are written through the real EvalStore into the per-test SQLite file; the CLI runs
in-process through typer's CliRunner. The bootstrap interval is checked against a direct numpy
computation with the same seed and, independently, against scipy's paired bootstrap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from fmstack.cli import app
from fmstack.errors import ConfigError
from fmstack.eval.compare import compare_runs, parse_thresholds
from fmstack.eval.report import fmt_stat, html_report, markdown_report, summarize, summarize_run
from fmstack.store import TraceStore
from fmstack.store.evals import EvalStore

SCRIPT = "<script>alert('x')</script>"
CONTINENTS = ["europe", "europe", "asia", "asia", "africa", "europe"]


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def make_run(
    store: EvalStore,
    exact: Sequence[float | None],
    *,
    latency: Sequence[float] | None = None,
    model: str = "smollm2",
    prompt: str = "plain",
    epochs: int = 1,
    script_output: bool = False,
    metrics: list[dict[str, Any]] | None = None,
    summary: dict[str, Any] | None = None,
) -> str:
    """A run with one sample per case (x epochs); ``None`` in ``exact`` makes an error sample.
    ``metrics`` are the suite's metric entries stored in the run's config (thresholds)."""
    run_id = store.create_run(suite_name="capitals", suite_path="capitals.yaml", suite_hash="h",
                              config={"slices": ["continent"], "metrics": metrics or []})
    for epoch in range(epochs):
        for i, score in enumerate(exact):
            sample: dict[str, Any] = {
                "sample_key": f"c{i}|{model}|{prompt}|{epoch}", "case_id": f"c{i}",
                "model": model, "prompt": prompt, "epoch": epoch,
                "input": {"country": f"country {i}"}, "expected": f"city {i}",
                "metadata": {"continent": CONTINENTS[i % len(CONTINENTS)]},
                "trace_id": 100 + i, "latency_s": 0.5,
            }
            if score is None:
                sample.update(status="error", error="EndpointError: model crashed",
                              output=None, scores=None)
            else:
                sample.update(status="ok", output=SCRIPT if script_output and i == 0
                              else f"city {i}",
                              scores={"exact_match": score,
                                      "latency": (latency or [0.5] * len(exact))[i]})
            store.add_sample(run_id, sample)
    store.finish_run(run_id, "finished", summary)
    return run_id


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


# ----- compare --------------------------------------------------------------------------------


def _samples(scores: list[float], metric: str = "exact_match") -> list[dict[str, Any]]:
    return [{"case_id": str(i), "model": "m", "prompt": "p", "epoch": 0, "status": "ok",
             "scores": {metric: s}} for i, s in enumerate(scores)]


def test_bootstrap_interval_equals_numpy_reference_and_agrees_with_scipy() -> None:
    import scipy.stats

    gen = np.random.default_rng(7)
    a = gen.binomial(1, 0.6, 80).astype(float)
    b = np.clip(a + gen.choice([-1.0, 0.0, 0.0, 1.0], 80), 0, 1)
    result = compare_runs("A", _samples(list(a)), "B", _samples(list(b)),
                          resamples=3000, seed=11, confidence=0.9)
    m, errors = result.metrics
    assert errors.metric == "error_rate" and errors.delta == 0.0 and not errors.regressed
    # Reference: the paired percentile bootstrap written out directly with the same seed.
    diffs = b - a
    rng = np.random.default_rng(11)
    means = diffs[rng.integers(0, len(diffs), (3000, len(diffs)))].mean(axis=1)
    low, high = np.quantile(means, [0.05, 0.95])
    assert m.n == 80 and m.delta == pytest.approx(diffs.mean())
    assert (m.ci_low, m.ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert m.mean_a == pytest.approx(a.mean()) and m.mean_b == pytest.approx(b.mean())
    # Independent: scipy's paired percentile bootstrap (its own draws) lands close by.
    ref = scipy.stats.bootstrap((a, b), lambda x, y, axis: (y - x).mean(axis=axis),
                                paired=True, vectorized=True, n_resamples=20000,
                                confidence_level=0.9, method="percentile", rng=3)
    assert m.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert m.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.02)


def test_gate_rule_directions_thresholds_and_pairing() -> None:
    base = [1.0] * 30 + [0.0] * 10
    worse = [0.0] * 15 + [1.0] * 15 + [0.0] * 10
    assert compare_runs("A", _samples(base), "B", _samples(worse)).regressed == ["exact_match"]
    better = compare_runs("A", _samples(worse), "B", _samples(base))
    assert better.regressed == [] and better.metrics[0].improved
    same = compare_runs("A", _samples(base), "B", _samples(base)).metrics[0]
    assert (same.delta, same.ci_low, same.ci_high, same.regressed) == (0.0, 0.0, 0.0, False)
    # A tolerated drop: the interval of -0.375 does not reach below -0.6.
    assert compare_runs("A", _samples(base), "B", _samples(worse),
                        thresholds={"*": 0.6}).regressed == []
    # Lower is better for latency: slower is a regression, faster is not.
    fast, slow = _samples([0.1] * 20, "latency"), _samples([0.3] * 20, "latency")
    assert compare_runs("A", fast, "B", slow).regressed == ["latency"]
    assert compare_runs("A", slow, "B", fast).regressed == []
    # Different single model/prompt pairs are paired by case and epoch.
    other = [{**s, "model": "gemma"} for s in _samples(worse)]
    result = compare_runs("A", _samples(base), "B", other)
    assert result.paired_by == "case, epoch" and result.pairs == 40 and result.regressed
    # Samples that error in B but not in A: excluded from exact_match, caught by error_rate.
    crashed = [{**s, "status": "error", "scores": None} if i < 10 else s
               for i, s in enumerate(_samples(base))]
    result = compare_runs("A", _samples(base), "B", crashed)
    assert result.regressed == ["error_rate"]
    assert result.metrics[0].n == 30 and result.metrics[0].delta == 0.0
    assert result.metrics[1].delta == pytest.approx(0.25)
    # A labelled score takes its direction from the suite's entry (latency: lower is better).
    entries = {"speed": {"key": "speed", "name": "latency"}}
    fast_l, slow_l = _samples([0.1] * 20, "speed"), _samples([0.3] * 20, "speed")
    assert compare_runs("A", fast_l, "B", slow_l, metrics=entries).regressed == ["speed"]
    assert compare_runs("A", fast_l, "B", slow_l).regressed == []  # unknown key: higher
    with pytest.raises(ConfigError, match="unknown metric"):
        compare_runs("A", _samples(base), "B", _samples(worse), thresholds={"f1": 0.1})
    for bad in ("exact_match", "em=-1", "=0.1", "em=x"):
        with pytest.raises(ConfigError, match="METRIC=DELTA"):
            parse_thresholds([bad])


# ----- reports --------------------------------------------------------------------------------


def test_summary_stderr_is_across_cases_with_epochs() -> None:
    store = EvalStore()
    run_id = make_run(store, [1.0, 0.0, 1.0, None], epochs=2)
    summary = summarize(store.samples(run_id), ["continent"])
    stat = summary.overall.stats[("smollm2", "plain")]["exact_match"]
    case_means = np.array([1.0, 0.0, 1.0])
    assert stat.n == 3 and stat.mean == pytest.approx(2 / 3)
    assert stat.stderr == pytest.approx(case_means.std(ddof=1) / np.sqrt(3))
    assert summary.overall.errors[("smollm2", "plain")] == 2
    asia = summary.slices["continent"]["asia"].stats[("smollm2", "plain")]["exact_match"]
    assert (asia.mean, asia.n) == (1.0, 1)  # case c3 (asia) errored: only c2 is scored
    store.close()


def test_html_report_is_escaped_self_contained_and_has_the_numbers() -> None:
    store = EvalStore()
    run_id = make_run(store, [1.0, 0.0, 1.0, 1.0, 0.0, None], script_output=True)
    page = html_report(store.get_run(run_id), store.samples(run_id))
    store.close()
    parser = _Parsed()
    parser.feed(page)
    text = "".join(parser.text)
    assert "script" not in parser.tags and SCRIPT not in page
    assert SCRIPT in text  # shown as text, escaped in the source
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert parser.tags.count("details") == 6 and parser.tags.count("svg") == 2
    # exact_match: 3 of 5 scored; stderr of [1,0,1,1,0] across 5 cases.
    stderr = np.std([1, 0, 1, 1, 0], ddof=1) / np.sqrt(5)
    assert f"0.600 ± {stderr:.3f}" in text
    # By continent: europe holds c0, c1, c5 (error) -> 0.500; asia c2, c3 -> 1.000.
    assert "0.500 ± 0.500" in text and "EndpointError: model crashed" in text
    assert "trace 100" in text and "country 0" in text


def test_markdown_report_tables() -> None:
    store = EvalStore()
    run_id = make_run(store, [1.0, 0.0, 1.0, 1.0, 0.0, None])
    md = markdown_report(store.get_run(run_id), store.samples(run_id))
    store.close()
    lines = md.splitlines()
    assert "| model · prompt | samples | errors | exact_match | latency |" in lines
    overall = next(line for line in lines if line.startswith("| smollm2 · plain | 6 | 1 |"))
    assert "0.600 ±" in overall
    assert any(line.startswith("| continent | model · prompt |") for line in lines)
    assert "| europe | smollm2 · plain | 3 | 1 | 0.500 ± 0.500 |" in md


# ----- CLI ------------------------------------------------------------------------------------


def test_cli_list_show_report(tmp_path: Path) -> None:
    store = EvalStore()
    run_id = make_run(store, [1.0, 0.0, 1.0, 1.0, 0.0, None], script_output=True)
    store.close()
    listed = invoke("eval", "list")
    assert listed.exit_code == 0 and run_id in listed.stdout and "capitals" in listed.stdout
    rows = json.loads(invoke("eval", "list", "--json").stdout)
    assert [(r["id"], r["samples"], r["errors"]) for r in rows] == [(run_id, 6, 1)]

    shown = invoke("eval", "show", run_id[:4])
    assert shown.exit_code == 0, shown.stderr
    assert "by continent" in shown.stdout and "0.600 ±" in shown.stdout
    assert "--retry-errors" in shown.stdout
    data = json.loads(invoke("eval", "show", run_id, "--json").stdout)
    europe = data["summary"]["slices"]["continent"]["europe"][0]["metrics"]["exact_match"]
    assert europe["mean"] == 0.5 and europe["n"] == 2

    out = tmp_path / "r" / "report.html"
    assert invoke("eval", "report", run_id, "-o", str(out)).exit_code == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and "&lt;script&gt;" in out.read_text()
    md = invoke("eval", "report", run_id, "--markdown")
    assert md.exit_code == 0 and md.stdout.startswith(f"# Eval run {run_id}")

    missing = invoke("eval", "show", "nope")
    assert missing.exit_code == 1 and "error: no eval run 'nope'" in missing.stderr


def test_cli_compare_gates_a_regression() -> None:
    store = EvalStore()
    good = make_run(store, [1.0] * 12 + [0.0] * 3)
    bad = make_run(store, [0.0] * 8 + [1.0] * 4 + [0.0] * 3)
    same = make_run(store, [1.0] * 12 + [0.0] * 3)
    store.close()
    regressed = invoke("eval", "compare", good, bad)
    assert regressed.exit_code == 1
    assert "REGRESSED" in regressed.stdout
    assert "error: regression in exact_match" in regressed.stderr
    assert invoke("eval", "compare", bad, good).exit_code == 0
    unchanged = invoke("eval", "compare", good, same, "--json")
    assert unchanged.exit_code == 0
    data = json.loads(unchanged.stdout)
    assert data["regressed"] == [] and data["pairs"] == 15
    assert [(m["metric"], m["delta"]) for m in data["metrics"]] == [
        ("exact_match", 0.0), ("latency", 0.0), ("error_rate", 0.0)]
    tolerated = invoke("eval", "compare", good, bad, "--threshold", "exact_match=0.9")
    assert tolerated.exit_code == 0
    bad_flag = invoke("eval", "compare", good, bad, "--threshold", "exact_match")
    assert bad_flag.exit_code == 1 and "METRIC=DELTA" in bad_flag.stderr


def test_thresholds_are_marked_and_listed() -> None:
    store = EvalStore()
    entries = [{"key": "exact_match", "name": "exact_match", "threshold": 0.7},
               {"key": "latency", "name": "latency", "threshold": 1.0}]
    run_id = make_run(store, [1.0, 0.0, 1.0, 1.0, 0.0], metrics=entries)
    run, samples = store.get_run(run_id), store.samples(run_id)
    store.close()
    md = markdown_report(run, samples)
    assert "| exact_match (≥ 0.7) | latency (≤ 1) |" in md
    assert "| 0.600 ± 0.245 ✗ | 0.500 ± 0.000 |" in md
    assert "✗ exact_match of smollm2 · plain: 0.600 misses the threshold 0.7" in md
    parser = _Parsed()
    parser.feed(html_report(run, samples))
    assert "0.600 ± 0.245 ✗" in "".join(parser.text)
    shown = invoke("eval", "show", run_id, "--json")
    assert json.loads(shown.stdout)["summary"]["failures"] == [
        {"model": "smollm2", "prompt": "plain", "metric": "exact_match", "mean": 0.6,
         "threshold": 0.7}]


def test_suite_order_and_corpus_metrics_from_the_stored_summary() -> None:
    store = EvalStore()
    entries = [{"key": "latency", "name": "latency"}, {"key": "exact_match", "name": "exact_match"},
               {"key": "corpus_bleu", "name": "corpus_bleu"}]
    stored = {"groups": {"smollm2|plain": {"corpus_bleu": {"mean": 31.5, "stderr": None,
                                                           "n": 4}}}}
    run_id = make_run(store, [1.0, 0.0, 1.0, 1.0], metrics=entries, summary=stored)
    md = markdown_report(store.get_run(run_id), store.samples(run_id))
    store.close()
    assert "| model · prompt | samples | errors | latency | exact_match | corpus_bleu |" in md
    assert "| smollm2 · plain | 4 | 0 | 0.500 ± 0.000 | 0.750 ± 0.250 | 31.500 |" in md


SUITE = """\
name: tiny-capitals
models: [{{uri: smollm2, options: {{n_threads: 2}}}}]
prompts:
  - {{name: plain, user: "What is the capital of {{{{ country }}}}? Answer with the city only."}}
cases:
  - {{id: fr, vars: {{country: France}}, expected: Paris, metadata: {{continent: europe}}}}
  - {{id: jp, vars: {{country: Japan}}, expected: Tokyo, metadata: {{continent: asia}}}}
  - {{id: it, vars: {{country: Italy}}, expected: Rome, metadata: {{continent: europe}}}}
params: {{temperature: 0, max_tokens: 12}}
metrics:
  - {{name: contains, threshold: {threshold}}}
  - f1
slices: [continent]
"""


def n_traces() -> int:
    traces = TraceStore()
    try:
        return len(traces.list(limit=1000))
    finally:
        traces.close()


@pytest.mark.slow
def test_cli_run_on_smollm2_then_show_report_and_threshold_gate(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(SUITE.format(threshold=0))
    first = invoke("eval", "run", str(suite), "--no-progress")
    assert first.exit_code == 0, first.stderr
    store = EvalStore()
    (run,) = store.runs()
    samples = store.samples(run["id"])
    assert run["status"] == "finished" and len(samples) == 3
    assert all(s["status"] == "ok" and s["trace_id"] is not None for s in samples)
    # The report's statistics equal the runner's own stored summary.
    summary = summarize_run(run, samples)
    for metric in ("contains", "f1"):
        ours = summary.overall.stats[("smollm2", "plain")][metric]
        assert ours.mean == pytest.approx(run["summary"][metric]["mean"])
        assert ours.n == run["summary"][metric]["n"] == 3
        europe = summary.slices["continent"]["europe"].stats[("smollm2", "plain")][metric]
        assert europe.mean == pytest.approx(run["summary"]["slices"]["continent"]["europe"]
                                            [metric]["mean"])
    assert f"run {run['id']} · tiny-capitals · finished · 3 samples" in first.stdout
    assert "contains (≥ 0)" in first.stdout and "by continent" in first.stdout

    page = invoke("eval", "report", run["id"], "-o", str(tmp_path / "tiny.html"))
    assert page.exit_code == 0
    parser = _Parsed()
    parser.feed((tmp_path / "tiny.html").read_text())
    text = "".join(parser.text)
    assert parser.tags.count("details") == 3 and "What is the capital of Japan?" in text
    assert fmt_stat(summary.overall.stats[("smollm2", "plain")]["f1"]) in text

    # An unreachable threshold fails the run (exit 1) without new model calls (cached).
    suite.write_text(SUITE.format(threshold=1.5))
    traced = n_traces()
    assert traced >= 3
    gated = invoke("eval", "run", str(suite), "--no-progress")
    assert gated.exit_code == 1 and "error: below threshold: contains" in gated.stderr
    assert n_traces() == traced
    newest = store.runs()[0]
    assert newest["id"] != run["id"]
    outputs = sorted((s["case_id"], s["output"]) for s in store.samples(newest["id"]))
    assert outputs == sorted((s["case_id"], s["output"]) for s in samples)
    store.close()

    wrong = invoke("eval", "run", str(suite), "--retry-errors")
    assert wrong.exit_code == 1 and "--retry-errors needs --resume" in wrong.stderr
    missing = invoke("eval", "run", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1 and "nope.yaml" in missing.stderr


@pytest.mark.slow
def test_cli_run_interrupted_by_ctrl_c_then_resumed_without_repeated_calls() -> None:
    suite = Path(__file__).parents[1] / "examples" / "suites" / "capitals.yaml"
    fmstack = Path(sys.executable).parent / "fmstack"
    # A job started in the background inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([str(fmstack), "eval", "run", str(suite), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    store = EvalStore()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        runs = store.runs()
        if runs and len(store.samples(runs[0]["id"])) >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
    (run,) = store.runs()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == (f"error: interrupted: run {run['id']} keeps its finished samples; "
                              f"continue with: fmstack eval run {suite} --resume {run['id']}")
    done_before = len(store.samples(run["id"]))
    assert run["status"] == "interrupted" and 3 <= done_before < 24
    assert n_traces() == done_before

    resumed = invoke("eval", "run", str(suite), "--resume", run["id"][:5], "--no-progress")
    assert f"run {run['id']} · capitals · finished · 24 samples" in resumed.stdout
    # The suite sets a threshold on `contains`: exit 1 exactly when a prompt misses it.
    missed = summarize_run(store.get_run(run["id"]), store.samples(run["id"])).failures()
    assert resumed.exit_code == (1 if missed else 0), resumed.stderr
    assert n_traces() == 24  # each sample called the model exactly once over both invocations
    store.close()
