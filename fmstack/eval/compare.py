"""Compare two eval runs metric by metric, with paired bootstrap intervals, and gate regressions.

Samples of run A and run B are paired by what they answered: ``(case_id, model, prompt,
epoch)`` when both runs cover the same model × prompt combinations, or ``(case_id, epoch)``
when each run has exactly one combination (the usual "did my change help?" comparison: a new
prompt, a new model). Pairing matters: both runs saw the same cases, so the per-case
differences have far less variance than the two means apart, and the interval is honest only
if it resamples cases, not the two runs independently.

For each metric, over the pairs where both samples are ``ok`` and carry a numeric score:

- ``delta = mean(B) - mean(A)`` (in the metric's own units);
- a percentile bootstrap interval of ``delta``: ``resamples`` draws of the pairs with
  replacement (``numpy.random.default_rng(seed)``, indices drawn as one
  ``integers(0, n, (resamples, n))`` array), the ``(1 - confidence) / 2`` and
  ``(1 + confidence) / 2`` quantiles of the resampled mean differences.

The gate rule: a metric **regresses** when the whole interval lies on the worse side of
``-threshold``, i.e. we are confident (at ``confidence``) that B is worse than A by more than
``threshold``. For a higher-is-better metric that is ``ci_high < -threshold``; for a
lower-is-better one (latency, cost, perplexity: the registry's ``higher_is_better``) it is
``ci_low > threshold``. The default threshold is 0: any regression the data is sure of fails,
noise does not. ``fmstack eval compare`` exits 1 when any metric regresses.

Errored samples have no scores, so each metric compares only the pairs where both succeeded;
the share of errored samples is compared separately as ``error_rate`` (lower is better, gated
like the others), so a candidate that fails where the baseline answered cannot pass unseen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fmstack.errors import ConfigError

PairKey = tuple[str, ...]
# The pseudo-metric comparing how many samples errored (always compared, listed last).
ERROR_RATE = "error_rate"


@dataclass(frozen=True)
class MetricDelta:
    """One metric's comparison. ``ci_low``/``ci_high`` bound ``delta`` (None below 2 pairs)."""

    metric: str
    n: int
    mean_a: float | None
    mean_b: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool
    threshold: float
    regressed: bool
    improved: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    run_a: str
    run_b: str
    paired_by: str
    pairs: int
    confidence: float
    resamples: int
    seed: int
    metrics: list[MetricDelta]
    only_in_a: list[str]
    only_in_b: list[str]

    @property
    def regressed(self) -> list[str]:
        return [m.metric for m in self.metrics if m.regressed]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regressed"] = self.regressed
        return d


def json_column(sample: Mapping[str, Any], name: str) -> Any:
    """A sample column, JSON-decoded when the store handed it over as text."""
    value = sample.get(name)
    # Only the columns that always hold a JSON object: a plain-text ``expected`` of "42" must
    # stay the string it is.
    if isinstance(value, str) and name in ("scores", "metadata", "config", "summary",
                                           "components", "turns"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def numeric_scores(sample: Mapping[str, Any]) -> dict[str, float]:
    """The sample's finite numeric scores (booleans count as 0/1); empty for an errored one."""
    if sample.get("status", "ok") != "ok":
        return {}
    scores = json_column(sample, "scores")
    if not isinstance(scores, Mapping):
        return {}
    out = {}
    for name, value in scores.items():
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[str(name)] = float(value)
    return out


def _combos(samples: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    return {(str(s.get("model")), str(s.get("prompt"))) for s in samples}


def pair_samples(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> tuple[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]]:
    """Match samples of the two runs; returns how they were paired and the pairs."""
    combos_a, combos_b = _combos(a), _combos(b)
    if combos_a == combos_b:
        how = "case, model, prompt, epoch"

        def key(s: Mapping[str, Any]) -> PairKey:
            return (str(s.get("case_id")), str(s.get("model")), str(s.get("prompt")),
                    str(s.get("epoch", 0)))
    elif len(combos_a) == 1 and len(combos_b) == 1:
        how = "case, epoch"

        def key(s: Mapping[str, Any]) -> PairKey:
            return (str(s.get("case_id")), str(s.get("epoch", 0)))
    else:
        raise ConfigError(
            f"cannot pair the runs' samples: A covers {len(combos_a)} model/prompt "
            f"combinations and B {len(combos_b)}, and they differ; compare runs of one model "
            "and one prompt each, or runs of the same models and prompts"
        )
    by_key = {key(s): s for s in a}
    pairs = [(by_key[key(s)], s) for s in b if key(s) in by_key]
    return how, pairs


def bootstrap_mean_ci(
    diffs: np.ndarray, *, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (see the module docstring)."""
    n = len(diffs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (resamples, n))
    means = diffs[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def suite_metrics(run: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The suite's metric entries by score key (``{key, name, threshold, field, ...}``), read
    from the run's stored config; empty when the config has none."""
    config = json_column(run, "config")
    entries = config.get("metrics") if isinstance(config, Mapping) else None
    if not isinstance(entries, list):
        return {}
    return {str(e.get("key", e.get("name"))): dict(e) for e in entries
            if isinstance(e, Mapping) and (e.get("key") or e.get("name"))}


def higher_is_better(key: str, metrics: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """The direction of a score key: its suite entry's registered metric, else the registered
    metric the key names (``f1[answer]`` is f1's), else higher."""
    from fmstack.eval.metrics import METRICS

    entry = (metrics or {}).get(key)
    for name in (entry.get("name") if entry else None, key, key.split("[")[0]):
        if name in METRICS:
            return METRICS[name].higher_is_better
    return True


def compare_runs(
    run_a: str,
    samples_a: Sequence[Mapping[str, Any]],
    run_b: str,
    samples_b: Sequence[Mapping[str, Any]],
    *,
    thresholds: Mapping[str, float] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> Comparison:
    """Per-metric deltas B - A with paired bootstrap intervals and the gate verdict.

    ``thresholds`` maps a metric name (or ``*`` for every metric) to the tolerated regression in
    the metric's units (>= 0); metrics not named use ``*`` or 0. ``metrics`` (the suite's
    entries by key, see ``suite_metrics``) tells each score's direction.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    thresholds = dict(thresholds or {})
    for name, value in thresholds.items():
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"threshold for {name} must be a number >= 0, got {value}")
    if not samples_a or not samples_b:
        empty = run_a if not samples_a else run_b
        raise ConfigError(f"run {empty} has no samples to compare")
    how, pairs = pair_samples(samples_a, samples_b)
    if not pairs:
        raise ConfigError(f"runs {run_a} and {run_b} share no cases (paired by {how})")

    names_a = {m for s in samples_a for m in numeric_scores(s)}
    names_b = {m for s in samples_b for m in numeric_scores(s)}
    unknown = set(thresholds) - names_a - names_b - {"*", ERROR_RATE}
    if unknown:
        raise ConfigError(f"--threshold names unknown metric(s) {sorted(unknown)}; the runs "
                          f"have {sorted(names_a | names_b | {ERROR_RATE})}")
    deltas = []
    for metric in sorted(names_a & names_b):
        both = [(sa[metric], sb[metric]) for sa, sb in
                ((numeric_scores(x), numeric_scores(y)) for x, y in pairs)
                if metric in sa and metric in sb]
        higher = higher_is_better(metric, metrics)
        threshold = thresholds.get(metric, thresholds.get("*", 0.0))
        if not both:
            deltas.append(MetricDelta(metric, 0, None, None, None, None, None, higher,
                                      threshold, False, False))
            continue
        deltas.append(_delta(metric, np.array(both, dtype=float), higher, threshold,
                             resamples=resamples, confidence=confidence, seed=seed))
    deltas.append(_error_rate(pairs, thresholds, resamples=resamples, confidence=confidence,
                              seed=seed))
    return Comparison(
        run_a=run_a, run_b=run_b, paired_by=how, pairs=len(pairs), confidence=confidence,
        resamples=resamples, seed=seed, metrics=deltas,
        only_in_a=sorted(names_a - names_b), only_in_b=sorted(names_b - names_a),
    )


def _delta(
    metric: str, arr: np.ndarray, higher: bool, threshold: float, *,
    resamples: int, confidence: float, seed: int,
) -> MetricDelta:
    """The comparison of one metric from an (n, 2) array of paired (A, B) values."""
    diffs = arr[:, 1] - arr[:, 0]
    low: float | None = None
    high: float | None = None
    if len(diffs) > 1:
        low, high = bootstrap_mean_ci(diffs, resamples=resamples, confidence=confidence,
                                      seed=seed)
    regressed = improved = False
    if low is not None and high is not None:
        # Oriented so that positive means better: B - A, or A - B when lower is better.
        worse_bound, better_bound = (high, low) if higher else (-low, -high)
        regressed = worse_bound < -threshold
        improved = better_bound > 0
    return MetricDelta(metric, len(diffs), float(arr[:, 0].mean()), float(arr[:, 1].mean()),
                       float(diffs.mean()), low, high, higher, threshold, regressed, improved)


def _error_rate(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    thresholds: Mapping[str, float], *, resamples: int, confidence: float, seed: int,
) -> MetricDelta:
    # Errored samples carry no scores, so the metrics above compare only pairs that both
    # succeeded: a candidate that crashes on the hard cases would look no worse. The share of
    # errored samples is therefore compared (and gated) like any lower-is-better metric.
    arr = np.array([[s.get("status", "ok") != "ok" for s in pair] for pair in pairs],
                   dtype=float)
    threshold = thresholds.get(ERROR_RATE, thresholds.get("*", 0.0))
    return _delta(ERROR_RATE, arr, False, threshold, resamples=resamples,
                  confidence=confidence, seed=seed)


def parse_thresholds(specs: Sequence[str]) -> dict[str, float]:
    """``["exact_match=0.02", "*=0"]`` -> ``{"exact_match": 0.02, "*": 0.0}``."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or not (math.isfinite(number) and number >= 0):
            raise ConfigError(f"--threshold expects METRIC=DELTA with DELTA >= 0 (e.g. "
                              f"exact_match=0.02), got {spec!r}")
        out[name.strip()] = number
    return out
