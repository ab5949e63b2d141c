"""The metric registry: every metric registers under a name so a suite file can refer to it.

A metric is a plain function decorated with ``@metric("name")``; the decorator records how to
call it and how to read its number (range, direction, whether it is a per-sample or a corpus
score) and returns the function unchanged, so Python callers use it directly.

Calling conventions, named by ``MetricSpec.inputs`` (passed positionally, in that order):

* ``("prediction", "reference")`` — a per-sample text metric: ``fn(output_text, reference)``;
* ``("prediction",)`` — a per-sample metric that needs no reference (JSON-valid, perplexity);
* ``("completion",)`` — reads a ``Completion`` (latency, cost), not its text;
* ``"request"``, ``"case"`` and ``"components"`` may follow: the Request that produced the
  output, the suite Case (its variables and metadata) and the target's intermediate outputs
  (a dict, empty without a target), for metrics that need the question or the retrieved
  context (AI judges, RAG faithfulness);
* ``("predictions", "references")`` — a corpus metric over all samples at once (corpus BLEU is
  not the mean of sentence BLEU, so a runner must not average these).

Options a metric takes beyond its inputs are keyword-only (``fn(pred, ref, ignore_case=True)``),
so a suite can pass them from YAML.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fmstack.errors import ConfigError

Level = Literal["sample", "corpus"]
F = TypeVar("F", bound=Callable[..., float])


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: the function plus what a runner and a report need to know."""

    name: str
    fn: Callable[..., float]
    inputs: tuple[str, ...]
    level: Level
    low: float
    high: float
    higher_is_better: bool

    @property
    def description(self) -> str:
        """The first line of the function's docstring."""
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return self.fn(*args, **kwargs)


METRICS: dict[str, MetricSpec] = {}


def metric(
    name: str,
    *,
    inputs: tuple[str, ...] = ("prediction", "reference"),
    low: float = 0.0,
    high: float = 1.0,
    higher_is_better: bool = True,
) -> Callable[[F], F]:
    """Register the decorated function as metric ``name``. Its level follows from ``inputs``:
    a metric over ``predictions`` (plural) scores the whole corpus at once."""
    if not name or not name.replace("_", "").isalnum():
        raise ConfigError(f"metric name {name!r} must be letters, digits and underscores")
    if low > high or math.isnan(low) or math.isnan(high):
        raise ConfigError(f"metric {name}: range [{low}, {high}] is empty")
    level: Level = "corpus" if "predictions" in inputs else "sample"

    def register(fn: F) -> F:
        if name in METRICS and METRICS[name].fn is not fn:
            raise ConfigError(f"metric {name!r} is already registered (by {METRICS[name].fn!r})")
        METRICS[name] = MetricSpec(name, fn, inputs, level, low, high, higher_is_better)
        return fn

    return register


def get_metric(name: str) -> MetricSpec:
    """The metric registered as ``name``; a ConfigError listing the known names otherwise."""
    spec = METRICS.get(name)
    if spec is None:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}")
    return spec


def metric_names() -> list[str]:
    return sorted(METRICS)
