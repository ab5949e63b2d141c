"""``fmstack eval``: run suites, list and show runs, write reports, compare runs as a CI gate.

``eval compare A B`` exits 1 when a metric regresses beyond its threshold (the rule is in
``fmstack.eval.compare``): put it after ``eval run`` in CI to stop a change that makes the
suite worse with confidence.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fmstack.cli import common
from fmstack.errors import ConfigError

if TYPE_CHECKING:
    from fmstack.eval.compare import Comparison
    from fmstack.eval.report import Summary, Table

app = typer.Typer(
    help="Evaluation runs: run a suite, list and show runs, report, compare (a CI gate).",
    add_completion=False,
    no_args_is_help=True,
)

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id or unique prefix.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _load(run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from fmstack.store.evals import EvalStore

    with EvalStore() as store:
        run = store.get_run(run_id)
        return run, store.samples(run["id"])


@app.command("run")
def run(
    suite: Annotated[Path, typer.Argument(metavar="SUITE", help="Suite YAML file.")],
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="RUN", help="Continue this run.")
    ] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="With --resume: also redo errored samples.")
    ] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No progress bar.")
    ] = False,
) -> None:
    """Run a suite; results go to the store (then: fmstack eval show RUN).

    Exits 1 when a model × prompt misses a metric threshold set in the suite."""
    with common.user_errors():
        if retry_errors and resume is None:
            raise ConfigError("--retry-errors needs --resume RUN (errors of which run?)")
        from fmstack.eval.runner import RunInterrupted, run_suite

        try:
            run_id = run_suite(suite, resume=resume, retry_errors=retry_errors,
                               progress=not no_progress)
        except RunInterrupted as e:
            common.print_error(f"interrupted: run {e.run_id} keeps its finished samples; "
                               f"continue with: fmstack eval run {suite} --resume {e.run_id}")
            raise typer.Exit(130) from None
        run_row, samples = _load(str(run_id))
    summary = _print_summary(run_row, samples)
    failures = summary.failures()
    if failures:
        raise common.fail("below threshold: " + "; ".join(
            f"{m} {mean:.3f} vs {limit:g} ({g[0]} · {g[1]})" for g, m, mean, limit in failures))


@app.command("list")
def list_runs(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List eval runs, newest first."""
    with common.user_errors():
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        from fmstack.store.evals import EvalStore

        with EvalStore() as store:
            rows = store.runs(limit=limit)
            counts = {r["id"]: _counts(store.samples(r["id"])) for r in rows}
    if as_json:
        common.print_json([{**r, "samples": counts[r["id"]][0], "errors": counts[r["id"]][1]}
                           for r in rows])
        return
    console = common.out()
    if not rows:
        console.print("no eval runs yet (fmstack eval run SUITE)", style="dim")
        return
    from rich.table import Table as RichTable

    table = RichTable(box=None, pad_edge=False, header_style="bold")
    for name in ("run", "created", "suite", "status", "samples", "errors"):
        table.add_column(name, justify="right" if name in ("samples", "errors") else "left")
    for r in rows:
        n, errors = counts[r["id"]]
        table.add_row(r["id"], _local(r["created_at"]), str(r["suite_name"]), str(r["status"]),
                      str(n), str(errors), style="red" if r["status"] == "failed" else None)
    console.print(table)


@app.command("show")
def show(run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Show a run's results: overall and by slice (mean ± stderr across cases)."""
    with common.user_errors():
        run_row, samples = _load(run_id)
    if as_json:
        from dataclasses import asdict

        from fmstack.eval.report import summarize_run

        summary = summarize_run(run_row, samples)
        common.print_json({"run": run_row, "summary": _summary_json(summary, asdict)})
        return
    _print_summary(run_row, samples)


@app.command("report")
def report(
    run_id: RunArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE",
                                  help="Where to write (default: eval-RUN.html or stdout "
                                       "for --markdown).")
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown tables.")] = False,
) -> None:
    """Write a run's report: a self-contained HTML page, or Markdown tables."""
    with common.user_errors():
        from fmstack.eval.report import html_report, markdown_report

        run_row, samples = _load(run_id)
        text = (markdown_report if markdown else html_report)(run_row, samples)
        if markdown and output is None:
            typer.echo(text, nl=False)
            return
        path = output or Path(f"eval-{run_row['id']}.html")
        _write_atomic(path, text)
    common.err().print(f"wrote {path}", markup=False)


@app.command("compare")
def compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="The baseline run.")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="The candidate run.")],
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", metavar="METRIC=DELTA",
                     help="Tolerated regression of a metric in its units (repeatable; "
                          "*=DELTA for all). Default 0."),
    ] = None,
    confidence: Annotated[float, typer.Option("--confidence", help="Interval level.")] = 0.95,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap draws.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Per-metric deltas B - A with paired bootstrap intervals; exit 1 on a regression.

    A metric regresses when its whole interval is worse than -threshold (default 0)."""
    with common.user_errors():
        from fmstack.eval.compare import compare_runs, parse_thresholds, suite_metrics

        limits = parse_thresholds(threshold or [])
        a, samples_a = _load(run_a)
        b, samples_b = _load(run_b)
        result = compare_runs(a["id"], samples_a, b["id"], samples_b, thresholds=limits,
                              confidence=confidence, resamples=resamples, seed=seed,
                              metrics={**suite_metrics(a), **suite_metrics(b)})
    if as_json:
        common.print_json(result.as_dict())
    else:
        _print_comparison(result)
    if result.regressed:
        common.print_error(f"regression in {', '.join(result.regressed)} "
                           f"({result.run_b} vs {result.run_a})")
        raise typer.Exit(1)


# ----- helpers --------------------------------------------------------------------------------


@app.command("bench")
def bench(
    benchmark: Annotated[str, typer.Argument(
        metavar="BENCHMARK", help="humaneval, gsm8k or shakespeare.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model alias or URI.")] = "smollm2",
    limit: Annotated[int | None, typer.Option(
        "--limit", help="First N problems (shakespeare: chunks).")] = None,
    n: Annotated[int, typer.Option("--n", help="humaneval: samples per problem.")] = 1,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="humaneval: sampling temperature (default 0, or 0.8 with --n > 1).",
    )] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="Tokens per answer (gsm8k 256, humaneval 384).")] = None,
    chat: Annotated[bool, typer.Option(
        "--chat", help="humaneval: ask a chat model for the whole function in a code fence "
        "(default: the raw prompt, continued).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for a local model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a built-in benchmark: GSM8K exact match, HumanEval pass@k, Shakespeare bits/byte.

    GSM8K and HumanEval run as eval suites (stored and cached: fmstack eval show RUN works)."""
    with common.user_errors():
        from fmstack.eval import benchmarks as b

        if benchmark not in b.BENCHMARKS:
            raise ConfigError(f"unknown benchmark {benchmark!r}; choose from "
                              f"{', '.join(b.BENCHMARKS)}")
        if benchmark != "humaneval" and (n != 1 or temperature is not None or chat):
            raise ConfigError("--n, --temperature and --chat apply to humaneval only")
        options: dict[str, Any] = {} if threads is None else {"n_threads": threads}
        result: Any
        if benchmark == "gsm8k":
            result = b.run_gsm8k(model, limit=limit, options=options,
                                 max_tokens=max_tokens or 256, progress=not as_json)
            line = f"GSM8K exact match {result.exact_match:.3f} on {result.n} problems " \
                   f"({result.errors} errors), run {result.run_id}"
        elif benchmark == "humaneval":
            temp = temperature if temperature is not None else (0.8 if n > 1 else 0.0)
            ks = tuple(k for k in (1, 10, 100) if k <= n)
            result = b.run_humaneval(model, limit=limit, n=n, temperature=temp, ks=ks,
                                     max_tokens=max_tokens or 384, chat=chat, options=options,
                                     progress=not as_json)
            line = f"HumanEval on {result.n_problems} problems, n={n}, T={temp:g}: " + \
                ", ".join(f"pass@{k} {v:.3f}" for k, v in result.pass_at.items()) + \
                f" ({result.errors} errors), run {result.run_id}"
        else:
            if max_tokens is not None:
                raise ConfigError("--max-tokens does not apply to shakespeare (it scores text)")
            result = b.run_shakespeare(model, limit=limit, options=options)
            line = f"Shakespeare ({result.work}, {result.chunks} chunks, {result.n_bytes} bytes):" \
                   f" {result.bits_per_byte:.4f} bits/byte, perplexity {result.perplexity:.2f}"
    if as_json:
        common.print_json({"benchmark": benchmark, **result.to_dict()})
        return
    common.out().print(line)


def _counts(samples: list[dict[str, Any]]) -> tuple[int, int]:
    return len(samples), sum(1 for s in samples if s.get("status") != "ok")


def _local(iso: str | None) -> str:
    from fmstack.cli.logs import _local_time

    return _local_time(iso) if iso else ""


def _write_atomic(path: Path, text: str) -> None:
    # A reader (a browser, CI's artefact upload) never sees half a page.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp makes the file private (0600); a report gets the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary_json(summary: Summary, asdict: Any) -> dict[str, Any]:
    def table(t: Table) -> list[dict[str, Any]]:
        return [{"model": g[0], "prompt": g[1], "samples": t.samples[g],
                 "errors": t.errors.get(g, 0),
                 "metrics": {m: asdict(s) for m, s in t.stats.get(g, {}).items()}}
                for g in summary.groups if g in t.samples]

    return {"overall": table(summary.overall),
            "thresholds": {m: {"threshold": t, "higher_is_better": h}
                           for m, (t, h) in summary.thresholds.items()},
            "failures": [{"model": g[0], "prompt": g[1], "metric": m, "mean": mean,
                          "threshold": limit} for g, m, mean, limit in summary.failures()],
            "slices": {name: {value: table(t) for value, t in values.items()}
                       for name, values in summary.slices.items()},
            "turns": {turn: table(t) for turn, t in summary.turns.items()}}


def _print_summary(run_row: dict[str, Any], samples: list[dict[str, Any]]) -> Summary:
    from rich.table import Table as RichTable

    from fmstack.eval.report import summarize_run

    summary = summarize_run(run_row, samples)
    console = common.out()
    n, errors = _counts(samples)
    console.print(f"run {run_row['id']} · {run_row['suite_name']} · {run_row['status']} · "
                  f"{n} samples · {errors} errors", style="bold", markup=False)

    from fmstack.eval.report import group_header, group_label

    def table(lead: str | None, rows: list[tuple[str, Table]]) -> RichTable:
        # Numbers never wrap; the label columns give way on a narrow terminal. The errors
        # column appears only when something errored.
        out = RichTable(box=None, pad_edge=False, header_style="bold")
        if lead:
            out.add_column(lead)
        out.add_column(group_header(summary.groups))
        for name in ("samples", *(["errors"] if errors else []),
                     *(summary.header(m) for m in summary.metrics)):
            out.add_column(name, justify="right", no_wrap=True)
        for value, tab in rows:
            for g in summary.groups:
                if g not in tab.samples:
                    continue
                stats = tab.stats.get(g, {})
                out.add_row(*([value] if lead else []), group_label(g, summary.groups),
                            str(tab.samples[g]),
                            *([str(tab.errors.get(g, 0))] if errors else []),
                            *(summary.cell(m, stats.get(m)) for m in summary.metrics))
        return out

    console.print(table(None, [("", summary.overall)]))
    for g, m, mean, limit in summary.failures():
        console.print(f"✗ {m} of {g[0]} · {g[1]}: {mean:.3f} misses the threshold {limit:g}",
                      style="red", markup=False)
    for name, values in summary.slices.items():
        console.print(f"\nby {name}", style="bold", markup=False)
        console.print(table(name, list(values.items())))
    if summary.turns:
        console.print("\nby turn (conversations; the table above is per task)", style="bold",
                      markup=False)
        console.print(table("turn", list(summary.turns.items())))
    if errors:
        console.print(f"\n{errors} errored samples: fmstack eval run SUITE --resume "
                      f"{run_row['id']} --retry-errors", style="dim", markup=False)
    return summary


def _print_comparison(result: Comparison) -> None:
    from rich.table import Table as RichTable

    console = common.out()
    console.print(f"{result.run_b} vs {result.run_a} · {result.pairs} paired samples (by "
                  f"{result.paired_by}) · {result.confidence:.0%} paired bootstrap, "
                  f"{result.resamples} resamples", style="bold", markup=False)
    table = RichTable(box=None, pad_edge=False, header_style="bold")
    for name in ("metric", "n", "A", "B", "B - A", "interval", "verdict"):
        table.add_column(name, justify="left" if name in ("metric", "verdict") else "right")

    def num(x: float | None, signed: bool = False) -> str:
        return "–" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")

    for m in result.metrics:
        verdict = ("REGRESSED" if m.regressed else "improved" if m.improved
                   else "no data" if m.n == 0 else "no clear change")
        if m.threshold:
            verdict += f" (tolerance {m.threshold:g})"
        interval = ("–" if m.ci_low is None
                    else f"[{num(m.ci_low, True)}, {num(m.ci_high, True)}]")
        table.add_row(m.metric + ("" if m.higher_is_better else " ↓"), str(m.n),
                      num(m.mean_a), num(m.mean_b), num(m.delta, True), interval, verdict,
                      style="red" if m.regressed else "green" if m.improved else None)
    console.print(table)
    console.print("↓ lower is better", style="dim")
    for label, names in (("only in A", result.only_in_a), ("only in B", result.only_in_b)):
        if names:
            console.print(f"{label} (not compared): {', '.join(names)}", style="dim",
                          markup=False)
