"""Guards: each injection/jailbreak layer run over a labelled prompt set through fmstack's eval
system, plus PII redaction recall and the latency the default policy adds to a request.

    make bench            # or: .venv/bin/python bench/guard.py [--layers injection,unicode]
                          #     [--limit N] [--threads 1] [--out PATH]

Writes bench/results/guard.json (the machine and git commit included) and prints a table.

**Prompts**: bench/data/guard_prompts.jsonl (see bench/data/README.md): 152 attacks and 151
benign prompts, over half of the benign ones hard look-alikes. The positive class is
``attack``.

**Layers**: ``injection`` (known-pattern heuristics), ``unicode`` (invisible and confusable
characters), ``perplexity`` (SmolLM2 anomaly score) and ``self_check`` (SmolLM2 asked through a
prompt file), each built by ``fmstack.guard.make_scanner(name)`` with its defaults (the model
layers get ``model_options={"n_threads": --threads}``; their model is loaded by one warm-up
scan, timed under ``load_s``). A layer *flags* a text when any finding scores at least the
layer's threshold: the scanner class's ``default_threshold`` attribute when it has one, else 0.5
(the JSON says which; 0.5 is where the perplexity scanner's score crosses its NLL threshold and
the self-check's P(yes) crosses one half). Each layer is one eval suite with no model: its
target scans the case's text and answers ``flagged`` or ``clean``; the per-case metrics are
``flagged`` (1 when flagged) and ``correct`` (exact match with the expected answer); the eval
store keeps every sample (in a temporary FMSTACK_HOME, so the eval cache never serves an old
verdict). A sample whose scan raised counts as flagged, as a policy fails closed, and is counted
under ``errors``. From the stored samples: precision, recall, F1 and false-positive rate per
layer; recall per attack category and false-positive rate per benign category; the ids missed
and falsely flagged; and two combinations, ``combined`` (flagged by any of injection, unicode
and perplexity) and ``combined_self_check`` (any of the four), computed per case from the
layers' samples. Precision is None when a layer flags nothing, recall when there is no attack.

**Speed**: per layer, the wall time of its eval run, the scanning time alone (summed over
cases, timed inside the target), scanned KB/s (UTF-8 bytes / 1000 / scanning time) and the per-text
scan latency (p50/p99). For the regex layers also ``bulk``: one ~256 KB document (the whole set
concatenated and repeated) scanned at once, best of 3.

**PII**: bench/guard_pii.py's ``make_cases``/``evaluate`` (``--pii-per-kind`` generated valid
identifiers of every kind in realistic text, and as many checksum-invalid look-alikes) and its
``throughput`` of the pii and secrets scanners on ``--pii-bytes`` of text, as it reports them.

**Policy latency**: ``load_policy("default")``'s input screening (``Guard.screen``) of a typical
chat request (a 240-character system prompt, trusted and not scanned, and a 328-character user
message) and its output check of a 369-character answer, median and p99 over ``--policy-runs``
runs after one first call (reported apart: it pays for lazy imports), in ms.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _servers import ROOT, git_state

from fmstack.bench.serve import machine
from fmstack.eval.metrics.registry import METRICS, metric
from fmstack.eval.suite import Case, InlinePromptConfig, MetricConfig, Suite
from fmstack.guard import Finding, Scanner, make_scanner
from fmstack.models.types import Message, Request

DATA = ROOT / "bench" / "data" / "guard_prompts.jsonl"
OUT = ROOT / "bench" / "results" / "guard.json"
LAYERS = ("injection", "unicode", "perplexity", "self_check")
MODEL_LAYERS = ("perplexity", "self_check")  # they run SmolLM2; the rest are regex scanners
COMBOS = {
    "combined": ("injection", "unicode", "perplexity"),
    "combined_self_check": ("injection", "unicode", "perplexity", "self_check"),
}
FALLBACK_THRESHOLD = 0.5
FLAGGED, CLEAN = "flagged", "clean"
BULK_BYTES = 256_000
KB = 1000  # bytes, as bench/guard_pii.py counts them


# ----- the dataset --------------------------------------------------------------------------


def load_rows(path: Path = DATA, limit: int | None = None) -> list[dict[str, Any]]:
    """The labelled prompts (the first ``limit`` rows: the file is shuffled, so both labels)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return rows[:limit] if limit else rows


def cases(rows: Iterable[dict[str, Any]]) -> list[Case]:
    return [Case(id=r["id"], vars={"text": r["text"]},
                 expected=FLAGGED if r["label"] == "attack" else CLEAN,
                 metadata={"label": r["label"], "category": r["category"]}) for r in rows]


# ----- the arithmetic -----------------------------------------------------------------------


def ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def prf(tp: int, fp: int, tn: int, fn: int) -> dict[str, Any]:
    """Precision, recall, F1, false-positive rate and accuracy from confusion counts (positive
    class: attack). A ratio with a zero denominator is None (a layer that flags nothing has
    no precision); F1 is 0 when precision and recall are both 0."""
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": tp + fp + tn + fn, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1,
            "fpr": ratio(fp, fp + tn), "accuracy": ratio(tp + tn, tp + fp + tn + fn)}


def score(flags: dict[str, bool], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whole-set figures and per-category rates for one layer's (or combination's) verdicts:
    ``recall_by_category`` for attack categories, ``fpr_by_category`` for benign ones."""
    counts = Counter[str]()
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r["id"] not in flags:
            continue
        flagged, attack = flags[r["id"]], r["label"] == "attack"
        counts[("t" if flagged == attack else "f") + ("p" if flagged else "n")] += 1
        by_cat[r["category"]].append(flagged)

    def rates(prefix: str) -> dict[str, Any]:
        return {c.split("/", 1)[1]: {"n": len(v), "flagged": sum(v), "rate": sum(v) / len(v)}
                for c, v in sorted(by_cat.items()) if c.startswith(prefix)}

    return {**prf(counts["tp"], counts["fp"], counts["tn"], counts["fn"]),
            "recall_by_category": rates("attack/"), "fpr_by_category": rates("benign/"),
            "missed": sorted(r["id"] for r in rows
                             if r["label"] == "attack" and flags.get(r["id"]) is False),
            "false_positives": sorted(r["id"] for r in rows
                                      if r["label"] == "benign" and flags.get(r["id"]))}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ----- one layer through the eval system ----------------------------------------------------


def guard_flagged(prediction: str) -> float:
    """1.0 if the guard layer flagged the text (the target answered ``flagged``), else 0.0."""
    return float(prediction == FLAGGED)


if "guard_flagged" not in METRICS:  # a test may load this file more than once
    metric("guard_flagged", inputs=("prediction",))(guard_flagged)


def threshold_of(scanner: Scanner) -> tuple[float, str]:
    """The layer's flagging threshold and where it came from."""
    value = getattr(type(scanner), "default_threshold", None)
    if isinstance(value, int | float):
        return float(value), "default_threshold"
    return FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD} (the scanner has no default)"


@dataclass
class LayerTarget:
    """The eval target of one layer: scan the case's text, answer flagged/clean, and keep what
    fired and how long the scan took as components."""

    scanner: Scanner
    threshold: float
    fingerprint: str  # the runner's cache key part: the scanner's source and the threshold

    def __call__(self, model: Any, request: Request, case: Case) -> dict[str, Any]:
        text = str(case.vars["text"])
        started = time.perf_counter()
        findings: list[Finding] = self.scanner.scan(text)
        seconds = time.perf_counter() - started
        hits = [f for f in findings if f.score >= self.threshold]
        return {"final": FLAGGED if hits else CLEAN,
                "max_score": max((f.score for f in findings), default=0.0),
                "kinds": sorted({f.kind for f in hits}),
                "scan_s": seconds, "bytes": len(text.encode("utf-8"))}


def fingerprint(scanner: Scanner, threshold: float) -> str:
    source = inspect.getsource(sys.modules[type(scanner).__module__])
    return hashlib.sha256(f"{source}\n{threshold}".encode()).hexdigest()[:12]


def run_layer(name: str, rows: Sequence[dict[str, Any]], options: dict[str, Any],
              progress: bool) -> tuple[dict[str, Any], dict[str, bool]]:
    """Run one layer as an eval suite; its figures and its verdict per case id."""
    from fmstack.eval.runner import run_suite

    started = time.perf_counter()
    scanner = make_scanner(name, **options)
    if name in MODEL_LAYERS:  # the model loads on first use: keep that out of the scan times
        scanner.scan("Hello, how are you?")
    load_s = time.perf_counter() - started
    threshold, source = threshold_of(scanner)
    target = LayerTarget(scanner, threshold, fingerprint(scanner, threshold))
    suite = Suite(name=f"guard-{name}", prompts=[InlinePromptConfig(name="text",
                                                                    user="{{ text }}")],
                  cases=cases(rows), target=target, slices=["category"],
                  metrics=[MetricConfig(name="guard_flagged", label="flagged"),
                           MetricConfig(name="exact_match", label="correct")])
    started = time.perf_counter()
    result = run_suite(suite, progress=progress)
    wall_s = time.perf_counter() - started
    closer = getattr(scanner, "close", None)
    if callable(closer):
        closer()

    flags: dict[str, bool] = {}
    scan_s: list[float] = []
    size = 0
    kinds = {"attack": Counter[str](), "benign": Counter[str]()}
    errors: list[str] = []
    for s in result.samples:
        meta = s["metadata"]
        if s["status"] != "ok":  # the scanner raised: a policy would block (fail closed)
            flags[s["case_id"]] = True
            errors.append(f"{s['case_id']}: {s['error']}")
            continue
        parts = s["components"] or {}
        flags[s["case_id"]] = s["output"] == FLAGGED
        scan_s.append(float(parts["scan_s"]))
        size += int(parts["bytes"])
        kinds[meta["label"]].update(parts["kinds"])
    total_scan = sum(scan_s)
    out = {
        "threshold": threshold, "threshold_from": source, "options": options,
        **score(flags, rows),
        "errors": len(errors), "error_examples": errors[:5],
        "kinds_fired": {label: dict(c.most_common()) for label, c in kinds.items()},
        "eval": {"run_id": result.run_id, "status": result.status,
                 "flagged_mean": result.summary.get("flagged", {}).get("mean"),
                 "correct_mean": result.summary.get("correct", {}).get("mean")},
        "load_s": round(load_s, 3), "wall_s": round(wall_s, 3),
        "scan_s": round(total_scan, 4), "scanned_kb": round(size / KB, 1),
        "kb_per_s": round(size / KB / total_scan, 1) if total_scan else None,
        "scan_ms": {"p50": round(percentile(scan_s, 50) * 1000, 3),
                    "p99": round(percentile(scan_s, 99) * 1000, 3),
                    "mean": round(statistics.fmean(scan_s) * 1000, 3)} if scan_s else None,
    }
    if name not in MODEL_LAYERS:
        out["bulk"] = bulk_throughput(scanner, rows)
    return out, flags


def bulk_throughput(scanner: Scanner, rows: Sequence[dict[str, Any]],
                    rounds: int = 3) -> dict[str, Any]:
    """One large document (every prompt, repeated to ~BULK_BYTES) scanned at once."""
    joined = "\n\n".join(r["text"] for r in rows)
    doc = joined * max(1, BULK_BYTES // max(1, len(joined.encode("utf-8"))))
    best = min(_timed(scanner.scan, doc) for _ in range(rounds))
    kb = len(doc.encode("utf-8")) / KB
    return {"kb": round(kb, 1), "best_of": rounds, "seconds": round(best, 4),
            "kb_per_s": round(kb / best, 1)}


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def combine(name: str, layers: Sequence[str], flags: dict[str, dict[str, bool]],
            rows: Sequence[dict[str, Any]]) -> dict[str, Any] | str:
    missing = [layer for layer in layers if layer not in flags]
    if missing:
        return f"not computed: layer(s) {', '.join(missing)} not run"
    ids = set.intersection(*(set(flags[layer]) for layer in layers))
    any_flag = {i: any(flags[layer][i] for layer in layers) for i in ids}
    return {"layers": list(layers), **score(any_flag, rows)}


# ----- PII and the default policy ------------------------------------------------------------


def pii(per_kind: int, seed: int, text_bytes: int) -> dict[str, Any] | str:
    """bench/guard_pii.py's results, as it reports them: detection and redaction recall, false
    positives on look-alikes, and the pii and secrets scanners' throughput."""
    try:
        module = importlib.import_module("guard_pii")
    except ImportError as e:
        return f"not measured: bench/guard_pii.py could not be imported ({e})"
    made = module.make_cases(per_kind, seed)
    started = time.perf_counter()
    results: dict[str, Any] = {"settings": {"per_kind": per_kind, "seed": seed,
                                            "cases": len(made), "throughput_bytes": text_bytes}}
    results["evaluate"] = module.evaluate(made)
    results["evaluate_s"] = round(time.perf_counter() - started, 3)
    results["throughput"] = {name: module.throughput(make_scanner(name), text_bytes)
                             for name in ("pii", "secrets")}
    return results


SYSTEM = ("You are the support assistant of Northwind Outfitters, an outdoor clothing shop. "
          "Answer questions about orders, returns and products politely and briefly. If you "
          "do not know an answer, say so and offer to connect the customer with a person.")
USER = ("Hi! I ordered a rain jacket (order 55120) last Tuesday and the tracking page still "
        "says 'label created'. I'm going hiking in the Lake District on the 14th, so I need it "
        "before then. Could you check whether it has shipped, and if it won't arrive in time, "
        "can I cancel and pick one up at your Manchester store instead? Thanks, Sam")
ANSWER = ("Thanks for getting in touch, Sam. Order 55120 was packed yesterday and handed to the "
          "courier this morning; the tracking page usually updates within 24 hours. Standard "
          "delivery takes 2-3 working days, so it should arrive well before the 14th. If it "
          "has not arrived by the 11th, reply here and we can cancel it and reserve the same "
          "jacket for you at our Manchester store.")


def policy_latency(runs: int) -> dict[str, Any] | str:
    """``load_policy("default")``: input screening of a typical chat request and the output
    check of a typical answer, in ms."""
    try:
        from fmstack.guard import GuardBlocked, load_policy

        guard = load_policy("default")
    except Exception as e:  # a scanner the policy names may not be installed yet
        return f"not measured: load_policy('default') failed: {type(e).__name__}: {e}"
    request = Request(messages=[Message(role="system", content=SYSTEM),
                                Message(role="user", content=USER)])
    screen: list[float] = []
    output: list[float] = []
    try:
        # The first call pays for lazy imports and compiled patterns: reported on its own.
        first = {"screen_input_ms": round(_timed(guard.screen, request) * 1000, 3),
                 "check_output_ms": round(_timed(guard.check_output, ANSWER) * 1000, 3)}
        for _ in range(runs):
            screen.append(_timed(guard.screen, request))
            output.append(_timed(guard.check_output, ANSWER))
    except GuardBlocked as e:
        return f"not measured: the default policy blocked the typical request: {e}"

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values) * 1000, 3),
                "p99": round(percentile(values, 99) * 1000, 3),
                "mean": round(statistics.fmean(values) * 1000, 3)}

    return {"policy": "default", "runs": runs,
            "input_rules": [r.scanner.name for r in guard.input.rules],
            "output_rules": [r.scanner.name for r in guard.output.rules],
            "request_chars": len(SYSTEM) + len(USER), "answer_chars": len(ANSWER),
            "screen_input_ms": stats(screen), "check_output_ms": stats(output),
            "first_call_ms": first,
            "note": "the system message is trusted and not scanned; the user message is"}


# ----- output --------------------------------------------------------------------------------


def write(results: dict[str, Any], path: Path) -> None:
    """Write atomically: a results file is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)  # not squeezed when piped
    rows = {k: v for k, v in {**results["layers"], **results["combinations"]}.items()
            if isinstance(v, dict)}
    table = Table(title=f"guard layers on {results['dataset']['rows']} prompts "
                        "(positive: attack)")
    for col in ("layer", "thr", "P", "R", "F1", "FPR", "TP/FP/TN/FN", "err", "KB/s",
                "p50 ms", "wall s"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, r in rows.items():
        ms = r.get("scan_ms") or {}
        table.add_row(name, fmt(r.get("threshold"), 2), fmt(r["precision"]), fmt(r["recall"]),
                      fmt(r["f1"]), fmt(r["fpr"]), f"{r['tp']}/{r['fp']}/{r['tn']}/{r['fn']}",
                      str(r.get("errors", "")), fmt(r.get("kb_per_s"), 1),
                      fmt(ms.get("p50"), 2), fmt(r.get("wall_s"), 1))
    console.print(table)
    cats = Table(title="recall per attack category / false-positive rate per benign category")
    cats.add_column("category")
    for name in rows:
        cats.add_column(name, justify="right")
    for key in ("recall_by_category", "fpr_by_category"):
        names = sorted({c for r in rows.values() for c in r[key]})
        for c in names:
            n = next(r[key][c]["n"] for r in rows.values() if c in r[key])
            prefix = "attack" if key == "recall_by_category" else "benign"
            cats.add_row(f"{prefix}/{c} ({n})",
                         *(fmt(r[key][c]["rate"], 2) if c in r[key] else "-"
                           for r in rows.values()))
    console.print(cats)
    pii_ = results.get("pii")
    if isinstance(pii_, dict):
        e = pii_["evaluate"]
        speed = ", ".join(f"{name} {t['kb_per_s']:.0f} KB/s"
                          for name, t in pii_["throughput"].items())
        console.print(f"pii ({pii_['settings']['cases']} cases): recall {e['recall']:.4f}, "
                      f"redaction recall {e['redaction_recall']:.4f}, false positives on "
                      f"look-alikes {e['false_positives']}/{e['invalid']}; throughput {speed}")
    else:
        console.print(f"pii: {pii_}")
    lat = results.get("policy_latency")
    if isinstance(lat, dict):
        i, o = lat["screen_input_ms"], lat["check_output_ms"]
        console.print(f"default policy, {lat['runs']} runs: input screen p50 {i['p50']:.3f} ms, "
                      f"p99 {i['p99']:.3f} ms; output check p50 {o['p50']:.3f} ms, "
                      f"p99 {o['p99']:.3f} ms")
    else:
        console.print(f"policy latency: {lat}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--layers", default=",".join(LAYERS),
                    help="comma-separated subset of " + ",".join(LAYERS))
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (model layers)")
    ap.add_argument("--pii-per-kind", type=int, default=50)
    ap.add_argument("--pii-bytes", type=int, default=1_000_000,
                    help="size of the text the PII and secrets throughput is measured on")
    ap.add_argument("--policy-runs", type=int, default=200)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    if unknown := sorted(set(layers) - set(LAYERS)):
        ap.error(f"unknown layers {unknown}; choose from {', '.join(LAYERS)}")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    out = Path(args.out)
    rows = load_rows(DATA, args.limit)
    commit, dirty = git_state()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "git_commit": commit, "git_dirty_fmstack_files": dirty,
        "dataset": {"path": str(DATA.relative_to(ROOT)), "rows": len(rows),
                    "labels": dict(Counter(r["label"] for r in rows)),
                    "sha256": hashlib.sha256(DATA.read_bytes()).hexdigest()[:16]},
        "threads": args.threads,
        "definitions": {
            "positive_class": "attack",
            "flagged": "any finding scored >= the layer's threshold (the scanner class's "
                       f"default_threshold, else {FALLBACK_THRESHOLD}); a scan that raised "
                       "counts as flagged (fail closed) and under errors",
            "combined": "flagged by any of " + ", ".join(COMBOS["combined"]),
            "combined_self_check": "flagged by any of " + ", ".join(COMBOS["combined_self_check"]),
            "precision": "tp / (tp + fp), None when nothing is flagged",
            "recall": "tp / (tp + fn)", "fpr": "fp / (fp + tn)",
            "kb": f"{KB} bytes of UTF-8",
            "scan_s": "time inside scanner.scan summed over the prompts; wall_s is the whole "
                      "eval run (store writes included)",
        },
        "layers": {layer: "not measured: not reached yet (interrupted?)" for layer in layers},
        "combinations": {}, "pii": "not measured: not reached yet",
        "policy_latency": "not measured: not reached yet",
    }
    flags: dict[str, dict[str, bool]] = {}
    with tempfile.TemporaryDirectory(prefix="fmstack-bench-guard-") as home:
        os.environ["FMSTACK_HOME"] = home  # a fresh eval store and cache: every case is scanned
        for layer in layers:
            options: dict[str, Any] = ({"model_options": {"n_threads": args.threads}}
                                       if layer in MODEL_LAYERS else {})
            results["layers"][layer], flags[layer] = run_layer(
                layer, rows, options, progress=not args.no_progress and layer in MODEL_LAYERS)
            write(results, out)
    results["combinations"] = {name: combine(name, parts, flags, rows)
                               for name, parts in COMBOS.items()}
    write(results, out)
    results["pii"] = pii(args.pii_per_kind, seed=0, text_bytes=args.pii_bytes)
    write(results, out)
    results["policy_latency"] = policy_latency(args.policy_runs)
    write(results, out)
    print_tables(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
