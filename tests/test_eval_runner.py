"""Eval suites and the runner, on the real SmolLM2 (llama.cpp) and a real SQLite file.

The end-to-end test interrupts a run part-way, resumes it and checks the trace store: every
sample was computed by exactly one model call, and a re-run of the unchanged suite is free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import ConfigError
from fmstack.eval.runner import RunInterrupted, run_suite
from fmstack.eval.suite import Case, InlinePromptConfig, ModelConfig, Suite, load_suite
from fmstack.store.evals import EvalStore
from fmstack.store.traces import TraceStore

REPO = Path(__file__).resolve().parents[1]
SMOL = ModelConfig(uri="smollm2", options={"n_threads": 2})
PLAIN = InlinePromptConfig(name="plain", system="Answer with the city name only.",
                           user="What is the capital of {{ country }}?")
CAPITALS = [
    ("fr", "France", "Paris", "europe"), ("de", "Germany", "Berlin", "europe"),
    ("es", "Spain", "Madrid", "europe"), ("cn", "China", "Beijing", "asia"),
    ("th", "Thailand", "Bangkok", "asia"), ("eg", "Egypt", "Cairo", "africa"),
]


def capital_cases(n: int = len(CAPITALS)) -> list[Case]:
    return [Case(id=i, vars={"country": c}, expected=e, metadata={"continent": k})
            for i, c, e, k in CAPITALS[:n]]


def suite(**overrides: Any) -> Suite:
    fields: dict[str, Any] = {
        "name": "capitals-test", "models": [SMOL], "prompts": [PLAIN],
        "cases": capital_cases(), "params": {"temperature": 0, "max_tokens": 8},
        "metrics": ["contains", {"name": "exact_match", "threshold": 0.99, "label": "em"}],
        "slices": ["continent"], "concurrency": 2,
    }
    fields.update(overrides)
    return Suite.model_validate(fields)


def traces() -> int:
    store = TraceStore()
    try:
        return store.count()
    finally:
        store.close()


def stored(run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with EvalStore() as store:
        return store.get_run(run_id), store.samples(run_id)


def test_interrupted_run_resumes_without_repeating_calls_and_rerun_is_free() -> None:
    s = suite()
    seen: list[str] = []

    def stop_after_two(sample: dict[str, Any]) -> None:
        seen.append(sample["sample_key"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        run_suite(s, progress=False, on_sample=stop_after_two)
    run_id = info.value.run_id
    run, first = stored(run_id)
    assert run["status"] == "interrupted"
    # The sample in flight at the interrupt (concurrency 2) was finished and kept.
    assert 2 <= len(first) < len(CAPITALS)
    assert traces() == len(first)
    assert all(x["status"] == "ok" for x in first)

    resumed = run_suite(s, run_id=run_id[:6], progress=False)  # a unique prefix will do
    run, samples = stored(run_id)
    assert resumed.run_id == run_id and run["status"] == "finished"
    assert resumed.skipped == len(first) and resumed.model_calls == len(CAPITALS) - len(first)
    keys = {x["sample_key"] for x in samples}
    assert keys == {f"{c[0]}|smollm2|plain|0" for c in CAPITALS}
    assert traces() == len(keys)  # one model call per distinct sample, none repeated
    trace_ids = {x["trace_id"] for x in samples}
    assert len(trace_ids) == len(keys) and None not in trace_ids
    store = TraceStore()
    tags = [store.get(i)["tags"] for i in trace_ids]  # type: ignore[index]
    store.close()
    assert {(t["eval_run"], t["eval_sample"]) for t in tags} == {(run_id, k) for k in keys}

    again = run_suite(s, progress=False)
    assert again.run_id != run_id
    assert (again.cache_hits, again.model_calls) == (len(CAPITALS), 0)
    assert traces() == len(keys)
    by_key = {x["sample_key"]: x["output"] for x in samples}
    assert {x["sample_key"]: x["output"] for x in again.samples} == by_key
    assert again.summary == json.loads(json.dumps(resumed.summary))

    # Slices and overall stats, by hand from the stored samples.
    summary = run["summary"]
    for metric in ("contains", "em"):
        values = [x["scores"][metric] for x in samples]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert summary[metric]["mean"] == pytest.approx(mean)
        assert summary[metric]["stderr"] == pytest.approx(sd / math.sqrt(len(values)))
        assert summary[metric]["n"] == len(values)
        for continent in ("europe", "asia", "africa"):
            part = [x["scores"][metric] for x in samples
                    if x["metadata"]["continent"] == continent]
            got = summary["slices"]["continent"][continent][metric]
            assert got["mean"] == pytest.approx(sum(part) / len(part))
            assert got["n"] == len(part)
    assert summary["slices"]["continent"]["africa"]["em"]["stderr"] is None  # one case
    assert summary["em"]["threshold"] == 0.99
    assert summary["em"]["passed"] is (summary["em"]["mean"] >= 0.99)
    assert summary["groups"]["smollm2|plain"]["contains"] == summary["contains"]


def test_errored_samples_are_retried_only_with_retry_errors() -> None:
    cases = [*capital_cases(2), Case(id="huge", vars={"country": "France " * 700},
                                     expected="Paris", metadata={"continent": "europe"})]
    s = suite(cases=cases, models=[ModelConfig(uri="smollm2",
                                               options={"n_threads": 2, "n_ctx": 512})])
    first = run_suite(s, progress=True)  # the rich bar must not get in the way
    bad = [x for x in first.samples if x["status"] == "error"]
    assert [x["case_id"] for x in bad] == ["huge"]
    assert "ContextLengthError" in bad[0]["error"]
    assert first.summary["contains"]["n"] == 2  # errors are not scored
    calls = traces()
    assert calls == 3  # the failed call is traced too

    plain = run_suite(s, run_id=first.run_id, progress=False)
    assert (plain.model_calls, plain.skipped, plain.errors) == (0, 3, 0)
    assert traces() == calls

    retried = run_suite(s, run_id=first.run_id, retry_errors=True, progress=False)
    assert retried.skipped == 2 and [x["case_id"] for x in retried.samples] == ["huge"]
    assert retried.errors == 1 and traces() == calls + 1
    _, samples = stored(first.run_id)
    assert len(samples) == 3  # the retried sample replaced its earlier try

    with pytest.raises(ConfigError, match="different version"):
        run_suite(suite(cases=capital_cases(1)), run_id=first.run_id, progress=False)


def test_epochs_get_seeds_and_json_fields_are_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "city.prompt").write_text(
        "---\ninputs:\n  country: {type: string}\n"
        "output_schema:\n  type: object\n  properties: {city: {type: string, maxLength: 20}}\n"
        "  required: [city]\n---\n"
        "user:\nWhat is the capital of {{ country }}? Reply in JSON.\n"
    )
    s = suite(prompts=["city.prompt"], base_dir=tmp_path, cases=capital_cases(2), epochs=2,
              params={"temperature": 0.7, "max_tokens": 24},
              metrics=[{"name": "exact_match", "field": "city"}, "json_valid"])
    result = run_suite(s, progress=False)
    assert result.errors == 0, [x["error"] for x in result.samples]
    for x in result.samples:
        assert x["input"]["params"]["seed"] == x["epoch"]
        city = json.loads(x["output"])["city"]
        assert x["scores"]["exact_match[city]"] == float(city.strip().lower()
                                                          == x["expected"].lower())
        assert x["scores"]["json_valid"] == 1.0
    assert result.summary["exact_match[city]"]["n"] == 2  # epochs are averaged per case

    # Seeded sampling reproduces the outputs with an empty cache (a fresh database).
    monkeypatch.setenv("FMSTACK_DB", str(tmp_path / "fresh.db"))
    again = run_suite(s, progress=False)
    assert again.model_calls == 4
    assert ({x["sample_key"]: x["output"] for x in again.samples}
            == {x["sample_key"]: x["output"] for x in result.samples})


def test_example_suite_loads(tmp_path: Path) -> None:
    loaded = load_suite(REPO / "examples/suites/capitals.yaml")
    resolved = loaded.resolve()
    assert [p.name for p in resolved.prompts] == ["capital", "plain"]
    assert len(resolved.cases) == 12
    assert resolved.cases[7].expected == ["New Delhi", "Delhi"]
    assert resolved.cases[0].metadata == {"continent": "europe"}

    (tmp_path / "d.csv").write_text("id,country,expected,metadata.continent\n"
                                    "fr,France,Paris,europe\nke,Kenya,Nairobi,africa\n")
    s = suite(cases=None, dataset="d.csv", base_dir=tmp_path).resolve()
    assert [(c.id, c.vars, c.metadata) for c in s.cases] == [
        ("fr", {"country": "France"}, {"continent": "europe"}),
        ("ke", {"country": "Kenya"}, {"continent": "africa"}),
    ]


GOOD = """\
name: bad
models: [smollm2]
prompts:
  - {name: plain, user: "Capital of {{ country }}?"}
dataset: data.jsonl
metrics:
  - exact_match
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "words"),
    [
        ("metrics:", "metrcs:", 6, ["metrcs", "unknown key (did you mean 'metrics'?)"]),
        ("dataset: data.jsonl", "dataset: data.jsonl\nepochs: 0", 6,
         ["epochs", "greater than or equal to 1"]),
        ("models: [smollm2]", "models: [smollm3]", 2, ["unknown model 'smollm3'"]),
        ("  - exact_match", "  - {threshold: 0.5}", 7, ["metrics.0.name: Field required"]),
        ("user:", "usr:", 4, ["prompts.0.usr: unknown key (did you mean 'user'?)"]),
        ("dataset: data.jsonl", "dataset: data.jsonl\nparams: {temprature: 0}", 6,
         ["params.temprature: unknown key (did you mean 'temperature'?)"]),
        ("data.jsonl", "nope.jsonl", 5, ["nope.jsonl", "does not exist"]),
        ("  - exact_match", "  - exact_matsh", 7, ["unknown metric 'exact_matsh'"]),
        ("  - exact_match", "  - {name: contains, ignorecase: true}", 7,
         ["no option ignorecase", "ignore_case"]),
        ('  - {name: plain, user: "Capital of {{ country }}?"}', "  - no-such-prompt", 4,
         ["unknown prompt 'no-such-prompt'"]),
        ("epochs", "epochs", 1, []),  # sanity: the good suite loads
    ],
)
def test_bad_suites_name_file_and_line(
    tmp_path: Path, old: str, new: str, line: int, words: list[str]
) -> None:
    (tmp_path / "data.jsonl").write_text('{"country": "France", "expected": "Paris"}\n')
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD.replace(old, new))
    if not words:
        assert len(load_suite(path).resolve().cases) == 1
        return
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    for word in words:
        assert word in message
    assert "\n" not in message


def test_dataset_row_missing_a_variable_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text(
        '{"country": "France", "expected": "Paris"}\n\n{"id": "x", "countri": "Spain"}\n')
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:3: (row 2) case x: prompt plain "
                              "needs variable country"), message

    (tmp_path / "data.jsonl").write_text('{"country": "France"\n')
    with pytest.raises(ConfigError, match=r"data\.jsonl:1: \(row 1\) not valid JSON"):
        load_suite(path)


def test_eval_store_run_ids() -> None:
    with EvalStore() as store:
        a = store.create_run(suite_name="s", suite_path=None, suite_hash="h", config={},
                             run_id="rabc0000001")
        store.create_run(suite_name="s", suite_path=None, suite_hash="h", config={},
                         run_id="rabc0000002")
        assert store.get_run("rabc0000001")["id"] == a
        with pytest.raises(ConfigError, match="ambiguous"):
            store.get_run("rabc")
        with pytest.raises(ConfigError, match="no eval run 'zzz'"):
            store.get_run("zzz")
        store.finish_run(a, "finished", {"em": {"mean": 1.0, "stderr": None, "n": 1}})
        assert store.get_run(a)["summary"]["em"]["mean"] == 1.0
        assert [r["id"] for r in store.runs()] == ["rabc0000002", "rabc0000001"]
