"""Reports of one eval run: summary tables (overall and by slice), an HTML page, Markdown.

Everything is computed from the run's samples, not from the stored summary, so a run that was
interrupted (no summary yet) reports what it finished, and the numbers always match the
drill-down beneath them. Results are grouped by model × prompt: a mean over different models
answers no question anyone asks.

Statistics per group and metric, the same as the runner's stored summary: the epochs of a case
are averaged first (they are not independent draws of the dataset), then ``mean`` and
``stderr`` (standard error of the mean) are taken across cases, and ``n`` counts the cases.
Only samples that are ``ok`` and carry the score count. A suite metric with a ``threshold``
is checked per model × prompt: a mean that misses it is marked (✗), and ``failures`` lists
them (``fmstack eval run`` exits 1 on any). Corpus-level metrics (corpus BLEU, ...) have no
per-sample scores and appear only in the run's stored summary.

The HTML page is self-contained (inline CSS, inline SVG bar charts, no scripts, nothing
fetched) and escapes every piece of text that came from a dataset or a model.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fmstack.eval.compare import higher_is_better, json_column, numeric_scores, suite_metrics
from fmstack.eval.passk import pass_at_from_scores

Group = tuple[str, str]  # (model, prompt)


@dataclass(frozen=True)
class Stat:
    mean: float
    stderr: float | None
    n: int


@dataclass
class Table:
    """Rows of groups (model, prompt) with per-metric stats, sample and error counts."""

    stats: dict[Group, dict[str, Stat]] = field(default_factory=dict)
    samples: dict[Group, int] = field(default_factory=dict)
    errors: dict[Group, int] = field(default_factory=dict)


@dataclass
class Summary:
    metrics: list[str]
    groups: list[Group]
    overall: Table
    slices: dict[str, dict[str, Table]]  # field -> value -> table
    # metric -> (threshold, higher_is_better), for the suite metrics that set a threshold
    thresholds: dict[str, tuple[float, bool]] = field(default_factory=dict)
    turns: dict[str, Table] = field(default_factory=dict)  # turn number -> per-turn scores

    def misses(self, metric: str, stat: Stat | None) -> bool:
        """Whether ``stat`` misses the metric's threshold (False when it has none)."""
        if stat is None or metric not in self.thresholds:
            return False
        limit, higher = self.thresholds[metric]
        return stat.mean < limit if higher else stat.mean > limit

    def failures(self) -> list[tuple[Group, str, float, float]]:
        """``(group, metric, mean, threshold)`` for each model × prompt that misses one."""
        return [(g, m, st.mean, self.thresholds[m][0]) for g in self.groups
                for m, st in sorted(self.overall.stats.get(g, {}).items())
                if self.misses(m, st)]

    def header(self, metric: str) -> str:
        if metric not in self.thresholds:
            return metric
        limit, higher = self.thresholds[metric]
        return f"{metric} ({'≥' if higher else '≤'} {limit:g})"

    def cell(self, metric: str, stat: Stat | None) -> str:
        return fmt_stat(stat) + (" ✗" if self.misses(metric, stat) else "")


def _stat(per_case: Mapping[str, list[float]]) -> Stat:
    case_means = [sum(vs) / len(vs) for vs in per_case.values()]
    k = len(case_means)
    mean = sum(case_means) / k
    stderr = None
    if k > 1:
        stderr = math.sqrt(sum((x - mean) ** 2 for x in case_means) / (k - 1) / k)
    return Stat(mean, stderr, k)


def _table(samples: Sequence[Mapping[str, Any]],
           pass_at: Mapping[str, Sequence[int]] | None = None) -> Table:
    """Per-group stats; ``pass_at`` (metric -> ks) adds ``METRIC pass@K`` over each case's
    epochs (n = the cases that have K scores; no stderr)."""
    # group -> metric -> case -> values
    acc: dict[Group, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    table = Table()
    for s in samples:
        g = (str(s.get("model")), str(s.get("prompt")))
        table.samples[g] = table.samples.get(g, 0) + 1
        if s.get("status", "ok") != "ok":
            table.errors[g] = table.errors.get(g, 0) + 1
        acc[g]  # a group with only errors still gets a row
        for metric, value in numeric_scores(s).items():
            acc[g][metric][str(s.get("case_id"))].append(value)
    table.stats = {g: {m: _stat(cases) for m, cases in ms.items()} for g, ms in acc.items()}
    for g, ms in acc.items():
        for metric, ks in (pass_at or {}).items():
            for k in ks:
                estimate = pass_at_from_scores(ms.get(metric, {}).values(), k)
                if estimate is not None:
                    n = sum(len(v) >= k for v in ms[metric].values())
                    table.stats[g][pass_at_key(metric, k)] = Stat(estimate, None, n)
    return table


def pass_at_key(metric: str, k: int) -> str:
    return f"{metric} pass@{k}"


def _turn_tables(samples: Sequence[Mapping[str, Any]]) -> dict[str, Table]:
    """Conversation samples' per-turn scores as one table per turn number."""
    by_turn: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for s in samples:
        if s.get("status", "ok") != "ok":
            continue
        turns = s.get("turns")
        turns = json.loads(turns) if isinstance(turns, str) else turns
        for t in turns or []:
            by_turn[int(t["turn"])].append({"model": s.get("model"), "prompt": s.get("prompt"),
                                            "case_id": s.get("case_id"),
                                            "scores": t.get("scores") or {}})
    return {str(n): _table(by_turn[n]) for n in sorted(by_turn)}


def _slice_value(sample: Mapping[str, Any], name: str) -> str:
    meta = json_column(sample, "metadata")
    value = meta.get(name) if isinstance(meta, Mapping) else None
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def run_slices(run: Mapping[str, Any]) -> list[str]:
    """The slice fields the suite asked for (its ``slices``), from the run's config."""
    config = json_column(run, "config")
    slices = config.get("slices") if isinstance(config, Mapping) else None
    return [str(s) for s in slices] if isinstance(slices, list) else []


def summarize(
    samples: Sequence[Mapping[str, Any]],
    slices: Sequence[str] = (),
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> Summary:
    """Overall and per-slice tables of the samples (see the module docstring); ``metrics``
    are the suite's metric entries by key (``compare.suite_metrics``), for thresholds."""
    scored = {m for s in samples for m in numeric_scores(s)}
    # The suite's order first (the order its author chose), then anything else by name.
    names = [k for k in (metrics or {}) if k in scored] + sorted(scored - set(metrics or {}))
    pass_at = {key: [int(k) for k in e["pass_at"]] for key, e in (metrics or {}).items()
               if key in scored and e.get("pass_at")}
    names = [n for key in names for n in (key, *(pass_at_key(key, k) for k in
                                                 pass_at.get(key, [])))]
    groups = sorted({(str(s.get("model")), str(s.get("prompt"))) for s in samples})
    by_slice: dict[str, dict[str, Table]] = {}
    for name in slices:
        buckets: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for s in samples:
            buckets[_slice_value(s, name)].append(s)
        by_slice[name] = {value: _table(buckets[value], pass_at) for value in sorted(buckets)}
    thresholds = {key: (float(e["threshold"]), higher_is_better(key, metrics))
                  for key, e in (metrics or {}).items() if e.get("threshold") is not None}
    return Summary(names, groups, _table(samples, pass_at), by_slice, thresholds,
                   _turn_tables(samples))


def summarize_run(run: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> Summary:
    """``summarize`` with the slices and metric thresholds of the run's suite, plus the
    corpus-level metrics (no per-sample scores) from the runner's stored per-group summary."""
    metrics = suite_metrics(run)
    summary = summarize(samples, run_slices(run), metrics)
    stored = json_column(run, "summary")
    groups = stored.get("groups") if isinstance(stored, Mapping) else None
    if not isinstance(groups, Mapping):
        return summary
    for g in summary.groups:
        for key, stat in (groups.get(f"{g[0]}|{g[1]}") or {}).items():
            mean = stat.get("mean") if isinstance(stat, Mapping) else None
            if key in summary.metrics and key in summary.overall.stats.get(g, {}):
                continue
            if isinstance(mean, int | float) and not isinstance(mean, bool):
                summary.overall.stats.setdefault(g, {})[key] = Stat(
                    float(mean), stat.get("stderr"), int(stat.get("n") or 0))
                if key not in summary.metrics:
                    summary.metrics.append(key)
    return summary


def fmt_stat(stat: Stat | None) -> str:
    if stat is None:
        return "–"
    if stat.stderr is None:
        return f"{stat.mean:.3f}"
    return f"{stat.mean:.3f} ± {stat.stderr:.3f}"


def group_header(groups: Sequence[Group]) -> str:
    """What a group label shows: ``model``, ``prompt`` or ``model · prompt``; a part that is
    the same throughout is left out (it is in the run's config)."""
    models = {m for m, _ in groups}
    prompts = {p for _, p in groups}
    if len(prompts) == 1 and len(models) > 1:
        return "model"
    if len(models) == 1 and len(prompts) > 1:
        return "prompt"
    return "model · prompt"


def group_label(g: Group, groups: Sequence[Group]) -> str:
    header = group_header(groups)
    return g[0] if header == "model" else g[1] if header == "prompt" else f"{g[0]} · {g[1]}"


# ----- Markdown -------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(
    table: Table, summary: Summary, lead: tuple[str, str] | None = None
) -> list[str]:
    """Header, rule and rows; ``lead`` = (column name, value) adds a first column."""
    head = [*([lead[0]] if lead else []), "model · prompt", "samples", "errors",
            *(summary.header(m) for m in summary.metrics)]
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for g in summary.groups:
        if g not in table.samples:
            continue
        stats = table.stats.get(g, {})
        cells = [*([lead[1]] if lead else []), f"{g[0]} · {g[1]}", str(table.samples[g]),
                 str(table.errors.get(g, 0)),
                 *(summary.cell(m, stats.get(m)) for m in summary.metrics)]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def markdown_report(run: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str:
    """The summary tables of a run as GitHub-flavoured Markdown (mean ± stderr)."""
    summary = summarize_run(run, samples)
    lines = [f"# Eval run {run.get('id')}: {_md_cell(str(run.get('suite_name') or ''))}", "",
             f"status **{run.get('status')}** · {len(samples)} samples · "
             f"created {run.get('created_at')}", "", "## Overall", ""]
    lines += _md_table(summary.overall, summary)
    lines += [f"\n✗ {m} of {g[0]} · {g[1]}: {mean:.3f} misses the threshold {limit:g}"
              for g, m, mean, limit in summary.failures()]
    for name, values in summary.slices.items():
        lines += ["", f"## By {_md_cell(name)}", ""]
        for i, (value, table) in enumerate(values.items()):
            rows = _md_table(table, summary, lead=(name, value))
            lines += rows if i == 0 else rows[2:]  # one header for all the values
    if summary.turns:
        lines += ["", "## By turn (conversations)", ""]
        for i, (turn, table) in enumerate(summary.turns.items()):
            rows = _md_table(table, summary, lead=("turn", turn))
            lines += rows if i == 0 else rows[2:]
    return "\n".join(lines) + "\n"


# ----- HTML -----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}
.chart h3{font-size:1em;margin:.5em 0}
details{border:1px solid #ddd;border-radius:4px;margin:.3em 0;padding:.3em .6em}
details.error{border-color:#d33}
summary{cursor:pointer}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5em;margin:.2em 0}
.meta{color:#666}.err,td.fail{color:#b00}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(
    table: Table, summary: Summary, lead: str | None = None
) -> tuple[str, list[str]]:
    """The header row and the body rows (a leading column header when ``lead`` is given)."""
    head = ([lead] if lead else []) + ["model · prompt", "samples", "errors",
                                       *(summary.header(m) for m in summary.metrics)]
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for g in summary.groups:
        if g not in table.samples:
            continue
        stats = table.stats.get(g, {})
        cells = [f"<td>{_e(g[0])} · {_e(g[1])}</td>",
                 f"<td class=num>{table.samples[g]}</td>",
                 f"<td class=num>{table.errors.get(g, 0)}</td>"]
        cells += [f"<td class=\"num{' fail' if summary.misses(m, stats.get(m)) else ''}\">"
                  f"{_e(summary.cell(m, stats.get(m)))}</td>" for m in summary.metrics]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows[0], rows[1:]


def _table_html(table: Table, summary: Summary) -> str:
    head, body = _html_table(table, summary)
    return "<table>" + head + "".join(body) + "</table>"


def _slice_html(name: str, values: Mapping[str, Table], summary: Summary) -> str:
    out = []
    head = ""
    for value, table in values.items():
        h, body = _html_table(table, summary, lead=name)
        head = h
        cell = f"<td rowspan={len(body)}>{_e(value)}</td>"
        out += [body[0].replace("<tr>", "<tr>" + cell, 1), *body[1:]] if body else []
    return "<table>" + head + "".join(out) + "</table>"


def _bar_chart(metric: str, summary: Summary) -> str:
    """Horizontal bars, one per group, with a ± stderr whisker; scaled to the metric's range
    when it is bounded, else to the largest bar."""
    from fmstack.eval.metrics import METRICS

    stats = [(g, summary.overall.stats.get(g, {}).get(metric)) for g in summary.groups]
    present = [(g, s) for g, s in stats if s is not None]
    spec = METRICS.get(metric)
    top = max((s.mean + (s.stderr or 0) for _, s in present), default=1.0)
    if spec is not None and math.isfinite(spec.high) and spec.low == 0 and spec.high >= top:
        top = spec.high
    top = top if top > 0 else 1.0
    label_w, bar_w, row_h = 180, 300, 24
    height = row_h * len(present) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 110}" '
             f'height="{height}" role="img" aria-label="{_e(metric)}">']
    for i, (g, s) in enumerate(present):
        y = 4 + i * row_h
        w = max(0.0, s.mean) / top * bar_w
        label = group_label(g, summary.groups)
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f"{_e(label[:28])}</text>")
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                     f'fill="#4a7bd0"><title>{_e(label)}: {_e(fmt_stat(s))}</title></rect>')
        if s.stderr:
            lo = max(0.0, s.mean - s.stderr) / top * bar_w + label_w
            hi = min(top, s.mean + s.stderr) / top * bar_w + label_w
            parts.append(f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + row_h / 2:.1f}" '
                         f'y2="{y + row_h / 2:.1f}" stroke="#222" stroke-width="1.5"/>')
        parts.append(f'<text x="{label_w + bar_w + 8}" y="{y + 15}" font-size="12">'
                     f"{_e(fmt_stat(s))}</text>")
    if metric in summary.thresholds and 0 <= summary.thresholds[metric][0] <= top:
        x = label_w + summary.thresholds[metric][0] / top * bar_w
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#b00" '
                     f'stroke-dasharray="4 3"><title>threshold '
                     f'{summary.thresholds[metric][0]:g}</title></line>')
    parts.append("</svg>")
    return f'<div class=chart><h3>{_e(metric)}</h3>{"".join(parts)}</div>'


def _pre(value: Any) -> str:
    if value is None:
        return '<span class=meta>none</span>'
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
    return f"<pre>{_e(text)}</pre>"


def _turn_html(t: Mapping[str, Any]) -> str:
    scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted((t.get("scores") or {}).items()))
    return (f"<p><b>turn {_e(t.get('turn'))}</b> <span class=meta>{_e(scores)}</span></p>"
            f"user {_pre(t.get('user'))}assistant {_pre(t.get('output'))}"
            + (f"expected {_pre(t.get('expected'))}" if t.get("expected") is not None else ""))


def _sample_html(s: Mapping[str, Any]) -> str:
    status = str(s.get("status", "ok"))
    scores = numeric_scores(s)
    score_text = ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()))
    title = (f"<b>{_e(s.get('case_id'))}</b> · {_e(s.get('model'))} · {_e(s.get('prompt'))} · "
             f"epoch {_e(s.get('epoch'))} · "
             + (f"<span class=err>{_e(status)}</span>" if status != "ok" else _e(score_text)))
    rows = [("input", _pre(json_column(s, "input"))),
            ("expected", _pre(json_column(s, "expected"))),
            ("output", _pre(s.get("output"))),
            ("scores", _pre(json_column(s, "scores")))]
    components = json_column(s, "components")
    if components:
        rows += [(f"component {_e(k)}", _pre(v)) for k, v in components.items()]
    turns = json_column(s, "turns")
    if turns:
        rows.append(("turns", "".join(_turn_html(t) for t in turns)))
    if s.get("error"):
        rows.append(("error", f"<pre class=err>{_e(s.get('error'))}</pre>"))
    meta = json_column(s, "metadata")
    if meta:
        rows.append(("metadata", _pre(meta)))
    facts = []
    if s.get("trace_id") is not None:
        facts.append(f"trace {_e(s.get('trace_id'))} (fmstack logs show {_e(s.get('trace_id'))})")
    if s.get("latency_s") is not None:
        facts.append(f"latency {float(s['latency_s']):.3f} s")
    if s.get("cost"):
        facts.append(f"cost ${float(s['cost']):.6f}")
    if facts:
        rows.append(("call", f"<span class=meta>{' · '.join(facts)}</span>"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    cls = ' class="error"' if status != "ok" else ""
    return f"<details{cls}><summary>{title}</summary><table>{body}</table></details>"


def html_report(run: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> str:
    """One self-contained HTML page for the run (see the module docstring)."""
    summary = summarize_run(run, samples)
    name = str(run.get("suite_name") or "")
    errors = sum(summary.overall.errors.values())
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(name)} · eval run {_e(run.get('id'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(name)} <span class=meta>run {_e(run.get('id'))}</span></h1>",
        f"<p class=meta>status {_e(run.get('status'))} · {len(samples)} samples · "
        f"{errors} errors · created {_e(run.get('created_at'))}"
        + (f" · finished {_e(run.get('finished_at'))}" if run.get("finished_at") else "")
        + (f" · suite {_e(run.get('suite_path'))}" if run.get("suite_path") else "") + "</p>",
        "<h2>Overall</h2>", _table_html(summary.overall, summary),
        "<p class=meta>mean ± standard error across cases; ✗ misses the suite's threshold</p>",
    ]
    if summary.metrics:
        parts.append("<div class=charts>"
                     + "".join(_bar_chart(m, summary) for m in summary.metrics) + "</div>")
    for slice_name, values in summary.slices.items():
        parts += [f"<h2>By {_e(slice_name)}</h2>", _slice_html(slice_name, values, summary)]
    if summary.turns:
        parts += ["<h2>By turn (conversations)</h2>",
                  "<p class=meta>each turn's reply scored against that turn's expected value; "
                  "the tables above hold the per-task scores</p>",
                  _slice_html("turn", summary.turns, summary)]
    ordered = sorted(samples, key=lambda s: (s.get("status", "ok") == "ok", str(s.get("model")),
                                             str(s.get("prompt")), str(s.get("case_id")),
                                             int(s.get("epoch") or 0)))
    parts.append(f"<h2>Samples ({len(samples)}, errors first)</h2>")
    parts += [_sample_html(s) for s in ordered]
    parts.append("</body></html>\n")
    return "\n".join(parts)
