"""Run a suite: every case x model x prompt x epoch, scored, stored one sample at a time.

``run_suite(suite)`` is the whole runner. What it guarantees:

* **Bounded concurrency**: ``suite.concurrency`` worker threads. Local backends hold a lock
  around decoding, so more workers mostly help remote APIs; results do not depend on it.
* **Cache**: each completion is stored under sha256(model and its load options, params incl.
  seed, request, epoch[, target]) in ``eval_cache``; a hit makes no model call (so nothing is
  traced for it) and an unchanged suite re-runs for free. Only successful completions are cached.
* **Resume**: ``run_id=`` continues that run. Samples stored ``ok`` are skipped, never-run
  samples run, and errored ones are redone only with ``retry_errors=True``. Every sample is one
  transaction, so an interrupt (Ctrl-C, or ``KeyboardInterrupt`` from ``on_sample``) loses
  nothing finished: the samples in flight are allowed to finish and are stored, the run is
  marked ``interrupted`` and ``RunInterrupted`` (a KeyboardInterrupt carrying the run id) is
  raised.
* **Determinism**: a sampled call gets ``seed = suite.seed + epoch`` (unless the params set a
  seed); greedy calls (temperature 0) are left unseeded, they need none.
* **Errors**: a model or metric error marks that sample ``error`` with the message; the run
  goes on. Models load lazily, once each, with tracing on, when a sample first needs a call.

Scoring: per-sample metrics get ``(prediction, reference)``, ``(prediction,)`` or
``(completion,)`` as the registry says; a metric that takes a ``model`` option gets the model
under test unless the suite gives one. Corpus metrics (corpus BLEU, ...) are computed over
the samples in the summary only. The summary holds, per metric, the mean and the standard error
*across cases* (epochs of one case are averaged first, since they are not independent draws of
the dataset), overall, per (model, prompt) group and per slice value.

A **target** (``suite.target``) replaces the model call: the runner calls it with the loaded
model, the request and the case, caches what it returns (its completion and components) under
the same kind of key plus the target's fingerprint, and counts each call as one model call.

A **conversation** case runs its turns in order, each a cached call on the whole history so far
(so a resumed or repeated run replays finished turns from the cache); the sample stores every
turn (``turns``: user message, output, per-turn scores) and its ``scores`` are the per-task
aggregates. The summary adds ``turns``: per metric, the stats of turn 1, turn 2, ...
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, FmstackError
from fmstack.eval.passk import pass_at_from_scores
from fmstack.eval.suite import (
    NO_MODEL,
    Case,
    ModelConfig,
    ResolvedMetric,
    ResolvedSuite,
    Suite,
    SuitePrompt,
    Target,
    load_suite,
    render,
)
from fmstack.models.types import Choice, Completion, Message, Request
from fmstack.store.evals import EvalStore

if TYPE_CHECKING:
    from fmstack.models.base import Model


class MetricError(FmstackError):
    """A metric could not score a sample (the sample is marked error, the run goes on)."""


class RunInterrupted(KeyboardInterrupt):
    """The run was interrupted; its finished samples are stored. Resume with ``run_id``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"eval run {run_id} interrupted; resume it with run_id={run_id!r}")
        self.run_id = run_id


@dataclass
class RunResult:
    """What a run did. ``str(result)`` is the run id."""

    run_id: str
    status: str
    summary: dict[str, Any]
    samples: list[dict[str, Any]]  # written by this invocation (the store has them all)
    model_calls: int = 0  # completions obtained from a model in this invocation
    cache_hits: int = 0
    skipped: int = 0  # already stored by an earlier invocation of this run
    errors: int = 0  # samples that errored in this invocation

    def __str__(self) -> str:
        return self.run_id


@dataclass
class _Task:
    key: str
    case: Case
    model: ModelConfig
    prompt: SuitePrompt
    epoch: int


@dataclass
class _Outcome:
    sample: dict[str, Any]
    calls: int = 0  # completions that came from a model (or a target) call
    hits: int = 0  # completions that came from the cache


@dataclass
class _Output:
    """What one call produced: the completion and, from a target, named intermediate outputs."""

    completion: Completion
    components: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # a target's wall time (its completion may time one call)

    def to_json(self) -> dict[str, Any]:
        return {"completion": self.completion.model_dump(mode="json"),
                "components": self.components, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Output:
        return cls(Completion.model_validate(data["completion"]), data.get("components") or {},
                   data.get("seconds"))

    @property
    def latency(self) -> float | None:
        return self.seconds if self.seconds is not None else self.completion.timings.total


@dataclass
class _Models:
    """Each model loaded once, on first need, shared by the workers."""

    loaded: dict[str, Model] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, config: ModelConfig) -> Model:
        with self.lock:
            if config.uri not in self.loaded:
                from fmstack.models.registry import load_model

                self.loaded[config.uri] = load_model(config.uri, trace=True, **config.options)
            return self.loaded[config.uri]

    def close(self) -> None:
        for model in self.loaded.values():
            model.close()


def run_suite(
    suite: Suite | ResolvedSuite | str | Path,
    *,
    run_id: str | None = None,
    resume: str | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run (or with ``run_id``/``resume``, its alias, continue) a suite; see the module doc.
    ``on_sample`` is called in the calling thread after each sample is stored."""
    if run_id is not None and resume is not None and run_id != resume:
        raise ConfigError(f"run_id={run_id!r} and resume={resume!r} name different runs")
    run_id = run_id or resume
    if retry_errors and run_id is None:
        raise ConfigError("retry_errors needs a run to resume (run_id=...)")
    if isinstance(suite, (str, Path)):
        suite = load_suite(suite)
    resolved = suite.resolve() if isinstance(suite, Suite) else suite

    store = EvalStore()
    try:
        return _run(resolved, store, run_id, retry_errors, progress, on_sample)
    finally:
        store.close()


def _run(
    rs: ResolvedSuite, store: EvalStore, run_id: str | None, retry_errors: bool,
    progress: bool, on_sample: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    suite_path = str(rs.suite.path) if rs.suite.path is not None else None
    done: dict[str, str] = {}
    if run_id is not None:
        run = store.get_run(run_id)
        run_id = str(run["id"])
        if run["suite_hash"] != rs.hash:
            raise ConfigError(f"run {run_id} was made from a different version of suite "
                              f"{run['suite_name']!r} (start a new run instead)")
        done = {s["sample_key"]: s["status"] for s in store.samples(run_id)}
        store.set_status(run_id, "running")
    else:
        run_id = store.create_run(suite_name=rs.suite.name, suite_path=suite_path,
                                  suite_hash=rs.hash, config=rs.config)

    tasks = [t for t in _tasks(rs)
             if t.key not in done or (done[t.key] == "error" and retry_errors)]
    result = RunResult(run_id=run_id, status="running", summary={}, samples=[],
                       skipped=len(_tasks(rs)) - len(tasks))
    models = _Models()
    bar = _Bar(len(tasks), rs.suite.name, progress)
    pool = ThreadPoolExecutor(max_workers=rs.suite.concurrency, thread_name_prefix="fmstack-eval")
    futures: set[Future[_Outcome]] = set()
    try:
        futures = {pool.submit(_run_task, rs, t, models, store, run_id) for t in tasks}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                _record(fut.result(), run_id, store, result, bar)
                if on_sample is not None:
                    on_sample(result.samples[-1])
    except KeyboardInterrupt:
        # Let samples already being computed finish and keep them: their model calls are
        # paid for (and traced), and a resume must not repeat them.
        pool.shutdown(wait=True, cancel_futures=True)
        stored = {s["sample_key"] for s in result.samples}
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                outcome = fut.result()
                if outcome.sample["sample_key"] not in stored:
                    _record(outcome, run_id, store, result, bar)
        bar.close()
        models.close()
        store.finish_run(run_id, "interrupted", None)
        raise RunInterrupted(run_id) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        models.close()
        store.finish_run(run_id, "failed", None)
        raise
    pool.shutdown(wait=True)
    bar.close()
    models.close()
    result.summary = summarize(store.samples(run_id), rs)
    result.status = "finished"
    store.finish_run(run_id, "finished", result.summary)
    return result


def _record(outcome: _Outcome, run_id: str, store: EvalStore, result: RunResult,
            bar: _Bar) -> None:
    store.add_sample(run_id, outcome.sample)
    result.samples.append(outcome.sample)
    result.model_calls += outcome.calls
    result.cache_hits += outcome.hits
    result.errors += outcome.sample["status"] == "error"
    bar.advance()


def _tasks(rs: ResolvedSuite) -> list[_Task]:
    return [
        _Task(f"{case.id}|{model.uri}|{prompt.name}|{epoch}", case, model, prompt, epoch)
        for model in rs.models for prompt in rs.prompts for case in rs.cases
        for epoch in range(rs.suite.epochs)
    ]


# ----- one sample ---------------------------------------------------------------------------


def _run_task(
    rs: ResolvedSuite, task: _Task, models: _Models, store: EvalStore, run_id: str
) -> _Outcome:
    sample: dict[str, Any] = {
        "sample_key": task.key, "case_id": str(task.case.id), "model": task.model.uri,
        "prompt": task.prompt.name, "epoch": task.epoch, "expected": task.case.expected,
        "metadata": task.case.metadata, "status": "ok", "error": None, "scores": {},
    }
    outcome = _Outcome(sample)
    try:
        request = _request(rs, task)
        # Tags reach the trace (not the cache key): a trace names the run and sample it served.
        request.tags.update(eval_run=run_id, eval_sample=task.key)
        sample["input"] = {
            "messages": [m.model_dump() for m in request.messages or []],
            "prompt": request.prompt,
            "params": request.params.model_dump(mode="json", exclude_defaults=True),
        }
        if task.case.turns:
            _conversation(rs, task, request, models, store, outcome)
        else:
            out = _produce(rs, task, request, models, store, outcome)
            sample.update(output=out.completion.text, trace_id=out.completion.trace_id,
                          latency_s=out.latency, cost=out.completion.cost,
                          components=out.components or None)
            sample["scores"] = _score(rs.metrics, task, request, out, models,
                                      task.case.expected, required=True)
    except Exception as e:
        sample.update(status="error", error=f"{type(e).__name__}: {e}")
    return outcome


def _conversation(rs: ResolvedSuite, task: _Task, request: Request, models: _Models,
                  store: EvalStore, outcome: _Outcome) -> None:
    """Run a conversation case turn by turn: the prompt's messages, then each turn's user
    message after the model's reply. Each turn is scored against its own expected value."""
    assert task.case.turns and request.messages is not None
    sample = outcome.sample
    expected = [task.case.expected, *(t.expected for t in task.case.turns)]
    users = [request.messages[-1].content]
    messages = list(request.messages)
    turns: list[dict[str, Any]] = []
    try:
        for n, want in enumerate(expected):
            if n:
                user = render(task.case.turns[n - 1].user, task.case.vars,
                              f"case {task.case.id} turn {n + 1}")
                messages += [Message(role="assistant", content=turns[-1]["output"]),
                             Message(role="user", content=user)]
                users.append(user)
            turn_request = request.model_copy(update={"messages": list(messages)})
            out = _produce(rs, task, turn_request, models, store, outcome)
            turns.append({"turn": n + 1, "user": users[n], "expected": want,
                          "output": out.completion.text, "trace_id": out.completion.trace_id,
                          "latency_s": out.latency, "cost": out.completion.cost,
                          "components": out.components or None,
                          "scores": _score(rs.metrics, task, turn_request, out, models, want,
                                           required=False)})
    finally:
        # Turns done before an error are kept, so the report shows how far it got.
        sample["turns"] = turns
    sample.update(output=turns[-1]["output"], trace_id=turns[-1]["trace_id"],
                  latency_s=sum(t["latency_s"] or 0.0 for t in turns),
                  cost=sum(t["cost"] or 0.0 for t in turns))
    scores: dict[str, float] = {}
    for m in rs.metrics:
        values = [t["scores"][m.key] for t in turns if m.key in t["scores"]]
        if values:
            scores[m.key] = _AGGREGATES[m.config.aggregate](values)
    sample["scores"] = scores


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda v: sum(v) / len(v), "min": min, "max": max, "last": lambda v: v[-1],
}


def _produce(rs: ResolvedSuite, task: _Task, request: Request, models: _Models,
             store: EvalStore, outcome: _Outcome) -> _Output:
    """One completion for ``request``: from the cache, else from the model (or the target)."""
    key = cache_key(task.model, request, task.epoch, rs.target)
    cached = store.cache_get(key)
    if cached is not None and "completion" in cached:
        outcome.hits += 1
        return _Output.from_json(cached)
    if rs.target is None:
        out = _Output(models.get(task.model).complete(request))
    else:
        started = time.perf_counter()
        model = None if task.model.uri == NO_MODEL else models.get(task.model)
        returned = rs.target.fn(model, request, task.case)
        out = _target_output(returned, rs.target)
        out.seconds = time.perf_counter() - started
    outcome.calls += 1
    store.cache_put(key, out.to_json())
    return out


def _target_output(value: Any, target: Target) -> _Output:
    """A target's return value as an _Output: a Completion, or a dict with ``final`` (a
    Completion or text) and JSON-serialisable components."""
    if isinstance(value, Completion):
        return _Output(value)
    if not isinstance(value, dict) or "final" not in value:
        raise ConfigError(f"target {target.name} must return a Completion or a dict with a "
                          f"'final' key, not {type(value).__name__}")
    final = value["final"]
    if isinstance(final, str):
        final = Completion(model=target.name,
                           choices=[Choice(text=final, finish_reason="stop")])
    if not isinstance(final, Completion):
        raise ConfigError(f"target {target.name}: 'final' must be a Completion or text, not "
                          f"{type(final).__name__}")
    components = {k: v for k, v in value.items() if k != "final"}
    try:
        json.dumps(components)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"target {target.name}: components must be JSON data ({e})") from None
    return _Output(final, components)


def _request(rs: ResolvedSuite, task: _Task) -> Request:
    request = task.prompt.request(task.case.vars, **rs.params)
    params = request.params
    if not params.greedy and "seed" not in rs.params:
        request.params = params.model_copy(update={"seed": rs.suite.seed + task.epoch})
    return request


def cache_key(model: ModelConfig | str, request: Request, epoch: int,
              target: Target | None = None) -> str:
    """The eval-cache key: the model with its load options (a different ``n_ctx`` or file is a
    different model), params (seed included), the rendered request, the epoch, and the
    target's name and fingerprint when a target produces the output."""
    config = model if isinstance(model, ModelConfig) else ModelConfig(uri=model)
    payload = {
        "model": config.uri,
        "options": config.options,
        "params": request.params.model_dump(mode="json"),
        "messages": [m.model_dump() for m in request.messages] if request.messages else None,
        "prompt": request.prompt,
        "epoch": epoch,
        "target": [target.name, target.fingerprint] if target is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _score(metrics: list[ResolvedMetric], task: _Task, request: Request, out: _Output,
           models: _Models, expected: Any, *, required: bool) -> dict[str, float]:
    """Per-sample metric values. ``expected`` is this output's reference (a conversation
    turn's own); with ``required=False`` a metric whose reference is missing is skipped
    (a turn with nothing to compare) instead of failing the sample."""
    scores: dict[str, float] = {}
    for m in metrics:
        if m.spec.level == "corpus":
            continue
        try:
            args = _args(m, task, request, out, expected)
        except _NoReference:
            if required:
                raise ConfigError(f"case {task.case.id} has no {m.config.reference!r} value "
                                  f"to compare with (metric {m.key})") from None
            continue
        try:
            scores[m.key] = float(m.spec.fn(*args, **_options(m, task, models)))
        except Exception as e:
            raise MetricError(f"metric {m.key}: {e}") from e
    return scores


class _NoReference(Exception):
    pass


def _args(m: ResolvedMetric, task: _Task, request: Request, out: _Output,
          expected: Any) -> list[Any]:
    args: list[Any] = []
    for name in m.spec.inputs:
        if name == "completion":
            args.append(out.completion)
        elif name == "request":
            args.append(request)
        elif name == "case":
            args.append(task.case)
        elif name == "components":
            args.append(out.components)
        elif name == "prediction":
            args.append(component(out.completion, m.config.field, out.components))
        elif name == "reference":
            args.append(reference(task.case, m.config.reference, expected))
    return args


def reference(case: Case, path: str, expected: Any) -> Any:
    """The value a metric compares with: ``expected`` (the case's, or a conversation turn's),
    ``expected.KEY``, ``vars.KEY`` or ``metadata.KEY``."""
    head, _, key = path.partition(".")
    source: Any = {"expected": expected, "vars": case.vars, "metadata": case.metadata}[head]
    if key:
        if not isinstance(source, dict) or key not in source:
            raise _NoReference(path)
        source = source[key]
    if source is None:
        raise _NoReference(path)
    return source


def _options(m: ResolvedMetric, task: _Task, models: _Models) -> dict[str, Any]:
    """The metric's options; a ``model`` option (an alias, URI or {uri, options}) becomes the
    loaded model, shared across the run, and defaults to the model under test."""
    options = dict(m.config.options)
    if "model" in inspect.signature(m.spec.fn).parameters:
        given = options.get("model")
        if given is None:
            if task.model.uri == NO_MODEL:
                raise ConfigError(f"metric {m.key} needs a model and the suite has none: "
                                  "give the metric a model option")
            options["model"] = models.get(task.model)
        elif isinstance(given, str | dict):
            config = (ModelConfig(uri=given) if isinstance(given, str)
                      else ModelConfig.model_validate(given))
            options["model"] = models.get(config)
    return options


def component(completion: Completion, name: str,
              components: dict[str, Any] | None = None) -> Any:
    """The part of an output a metric scores: ``final`` (the text), a component a target
    returned (as it returned it: a list of retrieved ids stays a list), or a top-level key of
    the parsed JSON output (non-string values as JSON text)."""
    if name == "final":
        return completion.text
    if components and name in components:
        return components[name]
    parsed = completion.parsed
    if not isinstance(parsed, dict):
        have = f" (components: {', '.join(components)})" if components else ""
        raise ConfigError(f"field {name!r} is neither a component the target returned nor a "
                          f"key of a JSON object output{have}")
    if name not in parsed:
        raise ConfigError(f"field {name!r} is not in the output (has: {', '.join(parsed)})")
    value = parsed[name]
    return value if isinstance(value, str) else json.dumps(value)


# ----- summary ------------------------------------------------------------------------------


def _stat(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    stderr = None
    if n > 1:
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return {"mean": mean, "stderr": stderr, "n": n}


def _stats(samples: Iterable[dict[str, Any]], rs: ResolvedSuite) -> dict[str, Any]:
    ok = [s for s in samples if s["status"] == "ok"]
    out: dict[str, Any] = {}
    for m in rs.metrics:
        if m.spec.level == "corpus":
            if not ok:
                continue
            try:
                args: list[Any] = [[s["output"] or "" for s in ok]]
                if "references" in m.spec.inputs:
                    args.append([s["expected"] for s in ok])
                value = float(m.spec.fn(*args, **m.config.options))
            except Exception as e:
                out[m.key] = {"mean": None, "stderr": None, "n": len(ok), "error": str(e)}
                continue
            out[m.key] = {"mean": value, "stderr": None, "n": len(ok)}
        else:
            per_case: dict[tuple[str, str, str], list[float]] = defaultdict(list)
            for s in ok:
                if m.key in (s["scores"] or {}):
                    per_case[(s["case_id"], s["model"], s["prompt"])].append(s["scores"][m.key])
            if not per_case:
                continue
            out[m.key] = _stat([sum(v) / len(v) for v in per_case.values()])
            if m.config.pass_at:
                out[m.key]["pass_at"] = _pass_at(per_case.values(), m.config.pass_at)
        if m.config.threshold is not None and out[m.key]["mean"] is not None:
            mean, limit = out[m.key]["mean"], m.config.threshold
            out[m.key]["threshold"] = limit
            out[m.key]["passed"] = mean >= limit if m.spec.higher_is_better else mean <= limit
    return out


def _pass_at(per_case: Iterable[list[float]], ks: list[int]) -> dict[str, float | None]:
    cases = list(per_case)
    return {str(k): pass_at_from_scores(cases, k) for k in sorted(set(ks))}


def turn_stats(samples: Iterable[dict[str, Any]], rs: ResolvedSuite) -> dict[str, Any]:
    """Per-turn scores of conversation samples: ``{metric: [stats of turn 1, turn 2, ...]}``,
    each across cases like the per-task figures (epochs of a case averaged first)."""
    by_turn: dict[str, dict[int, dict[tuple[str, str, str], list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for s in samples:
        if s["status"] != "ok":
            continue
        for t in s.get("turns") or []:
            for key, value in (t.get("scores") or {}).items():
                by_turn[key][int(t["turn"])][(s["case_id"], s["model"], s["prompt"])].append(
                    value)
    out: dict[str, Any] = {}
    for m in rs.metrics:
        if m.key in by_turn:
            turns = by_turn[m.key]
            out[m.key] = [_stat([sum(v) / len(v) for v in turns[n].values()]) if turns.get(n)
                          else None for n in range(1, max(turns) + 1)]
    return out


def summarize(samples: list[dict[str, Any]], rs: ResolvedSuite) -> dict[str, Any]:
    """``{metric: {mean, stderr, n[, threshold, passed]}}`` over all samples, plus ``groups``
    (per ``model|prompt``) and ``slices`` (``{field: {value: {metric: stats}}}``). Samples
    whose metadata lacks a slice field are left out of that slice. ``stderr`` is None for a
    single case; errored samples are not scored (the report counts them). A metric with
    ``pass_at`` gets ``pass_at: {k: value}``; conversations add ``turns`` (see turn_stats)."""
    summary = _stats(samples, rs)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[f"{s['model']}|{s['prompt']}"].append(s)
    summary["groups"] = {g: _stats(ss, rs) for g, ss in groups.items()}
    slices: dict[str, dict[str, Any]] = {}
    for name in rs.suite.slices:
        values: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in samples:
            meta = s.get("metadata") or {}
            if name in meta:
                values[str(meta[name])].append(s)
        slices[name] = {v: _stats(ss, rs) for v, ss in sorted(values.items())}
    summary["slices"] = slices
    turns = turn_stats(samples, rs)
    if turns:
        summary["turns"] = turns
    return summary


# ----- progress -----------------------------------------------------------------------------


class _Bar:
    """A rich progress bar with an ETA (or nothing)."""

    def __init__(self, total: int, name: str, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._started = time.perf_counter()
        if enabled and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(f"eval {name}", total=total)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
