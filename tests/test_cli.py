"""The fmstack CLI end to end, on the real SmolLM2 model through llama.cpp.

Most commands run in-process through typer's CliRunner (each loads the model, ~0.2 s); chat,
the console script's own error handling and the demo run as real subprocesses with pipes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner, Result

from fmstack.cli import app, common
from fmstack.store import TraceStore

VENV_BIN = Path(sys.executable).parent
FMSTACK = VENV_BIN / "fmstack"
QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


def invoke(*args: str, input: str | None = None) -> Result:
    # A wide terminal, so tables do not cut the text the tests look for.
    result = CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args: str, input: str | None = None) -> Result:
    result = invoke(*args, input=input)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def gen_json(*args: str, input: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(ok("generate", *args, "--json", input=input).stdout)
    return out


def error_line(result: Result, exit_code: int = 1) -> str:
    """The run failed with exactly one ``error:`` line on stderr and no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def traces() -> list[dict[str, Any]]:
    store = TraceStore()
    try:
        return list(reversed(store.list(limit=1000)))
    finally:
        store.close()


def assert_store_consistent() -> None:
    """Every row is whole: a finished call with its output and usage, or a recorded error."""
    store = TraceStore()
    try:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for row in store.list(limit=1000):
            assert row["params"] is not None and row["created_at"]
            if row["error"] is None:
                assert row["output"] is not None and row["finish_reason"] is not None
                assert row["completion_tokens"] is not None
    finally:
        store.close()


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "120"}


# ----- no model needed ------------------------------------------------------------------------


def test_help_lists_commands_without_heavy_imports() -> None:
    done = subprocess.run([str(FMSTACK), "--help"], capture_output=True, text=True, env=env(),
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("models", "generate", "chat", "logs"):
        assert command in done.stdout
    probe = ("import sys, fmstack.cli; "
             "print(sorted(m for m in ('llama_cpp', 'torch', 'transformers', 'openai') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env(), timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_cli_default_model_is_the_library_default() -> None:
    from fmstack.models import DEFAULT_MODEL

    assert common.DEFAULT_MODEL == DEFAULT_MODEL


def test_models_lists_aliases_backends_and_user_aliases(fmstack_home: Path,
                                                         smollm2_path: Path) -> None:
    fmstack_home.mkdir(parents=True, exist_ok=True)
    (fmstack_home / "aliases.json").write_text(json.dumps({
        "mine": f"llamacpp:{smollm2_path}",
        "gone": "llamacpp:/nowhere/model.gguf",
        "tiny": "smollm2",
    }))
    report = json.loads(ok("models", "--json").stdout)
    aliases = {a["name"]: a for a in report["aliases"]}
    assert report["default"] == "smollm2"
    assert aliases["smollm2"]["usable"] is True
    assert aliases["smollm2"]["target"] == str(smollm2_path)
    assert {"smollm2-hf", "gemma3-270m"} <= set(aliases)
    assert aliases["mine"]["source"] == "user" and aliases["mine"]["usable"] is True
    assert aliases["gone"]["usable"] is False and "file not found" in aliases["gone"]["missing"]
    assert aliases["tiny"]["target"] == str(smollm2_path)
    backends = {b["name"]: b for b in report["backends"]}
    assert {"llamacpp", "hf", "openai"} <= set(backends)
    assert backends["llamacpp"]["installed"] is True

    table = ok("models").stdout
    for word in ("smollm2 (default)", "gemma3-270m", "mine", "llamacpp", "openai"):
        assert word in table


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-t", "-0.5"], "error: --temperature: Input should be greater than or equal to 0"),
        (["--top-p", "0"], "error: --top-p: Input should be greater than 0"),
        (["--top-p", "1.5"], "error: --top-p: Input should be less than or equal to 1"),
        (["--n", "0"], "error: --n: Input should be greater than or equal to 1"),
        (["--max-tokens", "0"], "error: --max-tokens: Input should be greater than or equal"),
        (["--regex", "("], "error: --regex: invalid regex '('"),
        (["--regex", "a", "--choice", "b"], "error: use only one of --json-schema, --regex"),
        (["--best-of", "2", "--vote", "2"], "error: use only one of --best-of and --vote"),
        (["--stream", "--n", "2"], "error: --stream supports --n 1 only"),
        (["-m", "nosuchmodel"], "error: unknown model 'nosuchmodel': use an alias (gemma3-270m, "
                                "smollm2, smollm2-hf)"),
    ],
)
def test_bad_flags_fail_in_one_line_before_any_call(args: list[str], expected: str) -> None:
    line = error_line(invoke("generate", QUESTION, *args))
    assert line.startswith(expected), line
    assert traces() == []
    assert_store_consistent()


def test_bad_json_schema_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    assert error_line(invoke("generate", QUESTION, "--json-schema", str(missing))) == (
        f"error: --json-schema: no such file: {missing}")

    not_json = tmp_path / "schema.txt"
    not_json.write_text("{type: object")
    line = error_line(invoke("generate", QUESTION, "--json-schema", str(not_json)))
    assert line.startswith(f"error: --json-schema: {not_json} is not valid JSON")

    malformed = tmp_path / "bad.json"
    malformed.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "strin"}}}))
    line = error_line(invoke("generate", QUESTION, "--json-schema", str(malformed)))
    assert line.startswith("error: --json-schema: malformed JSON Schema at properties/a/type")
    assert traces() == []


def test_usage_errors_from_the_console_script_are_one_line() -> None:
    done = subprocess.run([str(FMSTACK), "generate", "hi", "--top-k", "many"],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "--top-k" in lines[0] and "integer" in lines[0]


def test_empty_stdin_prompt_is_an_error() -> None:
    assert error_line(invoke("generate", input="\n")) == "error: the prompt is empty"


# ----- generate on SmolLM2 --------------------------------------------------------------------


def test_generate_greedy_human_and_json() -> None:
    # With its default system prompt this 135M model rambles about France; a plain one makes
    # the greedy answer the expected sentence.
    human = ok("generate", QUESTION, "--system", SYSTEM, "-t", "0", "--max-tokens", "16")
    assert "Paris" in human.stdout
    footer = human.stderr.strip().splitlines()[-1]
    assert re.search(r"\d+ prompt \+ \d+ completion tokens · TTFT \d+ ms · [\d.]+ tok/s", footer)
    assert footer.endswith("trace 1")

    data = gen_json(QUESTION, "--system", SYSTEM, "-t", "0", "--max-tokens", "16")
    assert data["text"] == data["choices"][0]["text"] == human.stdout.strip()
    assert 0 < data["usage"]["completion_tokens"] <= 16
    assert data["usage"]["prompt_tokens"] > 5
    assert data["timings"]["total"] > 0 and data["timings"]["ttft"] > 0
    assert data["trace_id"] == 2

    rows = traces()
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[1]["messages"] == [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": QUESTION}]
    assert rows[1]["output"] == data["text"]
    assert rows[1]["params"]["temperature"] == 0


def test_generate_system_raw_stop_and_no_trace() -> None:
    data = gen_json("Reply with the single word: banana", "--system", "You are terse.",
                    "-t", "0", "--max-tokens", "12", "--no-trace")
    assert data["trace_id"] is None and traces() == []

    raw = gen_json("1, 2, 3, 4,", "--raw", "-t", "0", "--max-tokens", "12", "--stop", "7")
    assert "7" not in raw["text"] and raw["choices"][0]["finish_reason"] == "stop"
    row = traces()[-1]
    assert row["prompt"] == "1, 2, 3, 4," and row["messages"] is None
    assert row["params"]["stop"] == ["7"]


def test_every_sampling_flag_reaches_the_request() -> None:
    flags = {"--temperature": 0.7, "--top-k": 20, "--top-p": 0.9, "--min-p": 0.05,
             "--repetition-penalty": 1.1, "--frequency-penalty": 0.5,
             "--presence-penalty": 0.25, "--seed": 11, "--max-tokens": 5}
    args = [str(a) for flag, value in flags.items() for a in (flag, value)]
    gen_json(QUESTION, *args, "--stop", "\n\n", "--stop", "END", "--top-logprobs", "3")
    params = traces()[-1]["params"]
    for flag, value in flags.items():
        assert params[flag[2:].replace("-", "_")] == value
    assert params["stop"] == ["\n\n", "END"]
    assert params["logprobs"] is True and params["top_logprobs"] == 3


def test_generate_json_schema_file_output_validates(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    path = tmp_path / "city.json"
    path.write_text(json.dumps(schema))
    data = gen_json("Describe Paris as JSON.", "--json-schema", str(path), "-t", "0",
                    "--max-tokens", "48")
    value = json.loads(data["text"])
    jsonschema.validate(value, schema)
    assert data["choices"][0]["parsed"] == value


def test_generate_choice_and_regex() -> None:
    choices = ["red", "green", "blue"]
    flags = [arg for c in choices for arg in ("--choice", c)]
    data = gen_json("What colour is the sky on a clear day?", *flags, "-t", "0")
    assert data["text"] in choices

    data = gen_json("Give a three-digit number.", "--regex", "[0-9]{3}", "-t", "0.8",
                    "--seed", "1")
    assert re.fullmatch(r"[0-9]{3}", data["text"])


def test_generate_best_of_picks_the_highest_score() -> None:
    data = gen_json("Name a fruit.", "--best-of", "3", "-t", "1.0", "--seed", "5",
                    "--max-tokens", "12")
    best = data["best_of"]
    assert best["n"] == 3 and len(best["scores"]) == len(data["choices"]) == 3
    assert best["winner"] == max(range(3), key=lambda i: best["scores"][i])
    assert data["text"] == data["choices"][best["winner"]]["text"]
    for choice, score in zip(data["choices"], best["scores"], strict=True):
        logprobs = [t["logprob"] for t in choice["logprobs"]]
        assert score == pytest.approx(sum(logprobs) / len(logprobs))

    human = ok("generate", "Name a fruit.", "--best-of", "3", "-t", "1.0", "--seed", "5",
               "--max-tokens", "12")
    assert "best of 3" in human.stdout and "winner: #" in human.stdout


def test_generate_vote_reports_majority() -> None:
    data = gen_json("What is 2 + 2? Reply with just the number.", "--vote", "3", "-t", "0.5",
                    "--seed", "2", "--max-tokens", "8")
    vote = data["vote"]
    assert sum(vote["counts"].values()) == 3 == len(vote["answers"]) == len(data["choices"])
    assert vote["answer"] == data["text"] == max(vote["counts"], key=vote["counts"].get)
    assert vote["answers"] == [c["text"].strip() for c in data["choices"]]

    data = gen_json("What is 7 + 5? Reply with just the number.", "--vote", "5", "-t", "0.5",
                    "--seed", "3", "--max-tokens", "12", "--extract", r"-?\d+")
    vote = data["vote"]
    last_numbers = [(re.findall(r"-?\d+", c["text"]) or [None])[-1] for c in data["choices"]]
    assert vote["answers"] == last_numbers
    assert vote["answer"] == max(vote["counts"], key=vote["counts"].get)
    assert error_line(invoke("generate", QUESTION, "--extract", "x")) == (
        "error: --extract only applies to --vote")


def test_generate_stream_matches_blocking_output() -> None:
    streamed = ok("generate", QUESTION, "--stream", "-t", "0", "--max-tokens", "16")
    blocking = gen_json(QUESTION, "-t", "0", "--max-tokens", "16")
    assert streamed.stdout == blocking["text"] + "\n"
    assert "tok/s" in streamed.stderr
    assert [r["kind"] for r in traces()] == ["stream", "generate"]


def test_generate_reads_prompt_from_stdin() -> None:
    from_arg = gen_json(QUESTION, "-t", "0", "--max-tokens", "12")
    from_dash = gen_json("-", "-t", "0", "--max-tokens", "12", input=QUESTION + "\n")
    from_none = gen_json("-t", "0", "--max-tokens", "12", input=QUESTION + "\n")
    assert from_arg["text"] == from_dash["text"] == from_none["text"]
    assert all(r["messages"][-1]["content"] == QUESTION for r in traces())


def test_generate_logprobs_table_and_numbered_samples() -> None:
    result = ok("generate", QUESTION, "-t", "0", "--max-tokens", "6", "--top-logprobs", "2")
    assert "logprob" in result.stdout and "top alternatives" in result.stdout
    data = gen_json(QUESTION, "-t", "0", "--max-tokens", "6", "--logprobs")
    assert len(data["choices"][0]["logprobs"]) == data["usage"]["completion_tokens"]

    result = ok("generate", "Name an animal.", "--n", "2", "-t", "1", "--seed", "3",
                "--max-tokens", "8")
    assert re.search(r"^\[1\] ", result.stdout, re.M) and re.search(r"^\[2\] ", result.stdout,
                                                                    re.M)


# ----- errors that need a model or an endpoint ------------------------------------------------


def test_missing_model_file() -> None:
    line = error_line(invoke("generate", QUESTION, "-m", "llamacpp:/nowhere/model.gguf"))
    assert "/nowhere/model.gguf" in line
    assert_store_consistent()


def test_prompt_longer_than_context_window() -> None:
    prompt = "word " * 3000
    line = error_line(invoke("generate", "-", "--max-tokens", "8", input=prompt))
    assert "context" in line.lower()
    assert_store_consistent()
    rows = traces()
    assert all(r["error"] and "context" in r["error"].lower() for r in rows)


def test_openai_unreachable_endpoint_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-000000")
    line = error_line(invoke("generate", QUESTION, "-m", "openai:gpt-x@http://127.0.0.1:9/v1",
                             "--max-tokens", "4"))
    assert "127.0.0.1:9" in line
    monkeypatch.delenv("OPENAI_API_KEY")
    line = error_line(invoke("generate", QUESTION, "-m", "openai:gpt-4o-mini"))
    assert "OPENAI_API_KEY" in line
    assert_store_consistent()
    assert all("sk-test-not-a-real-key" not in json.dumps(r) for r in traces())


# ----- logs -----------------------------------------------------------------------------------


def test_logs_list_show_and_filters() -> None:
    data = gen_json(QUESTION, "-t", "0", "--max-tokens", "8")
    error_line(invoke("generate", "-", "--max-tokens", "8", input="word " * 3000))

    rows = json.loads(ok("logs", "--json").stdout)
    assert [r["id"] for r in rows][-1] == data["trace_id"]
    good = next(r for r in rows if r["id"] == data["trace_id"])
    assert good["messages"][-1]["content"] == QUESTION and good["output"] == data["text"]

    table = ok("logs").stdout
    assert "What is the capital" in table and "smollm2" in table

    errors = json.loads(ok("logs", "--errors", "--json").stdout)
    assert errors and all(r["error"] for r in errors)
    assert json.loads(ok("logs", "-n", "1", "--json").stdout)[0]["id"] == rows[0]["id"]
    assert json.loads(ok("logs", "--model", "other", "--json").stdout) == []

    shown = json.loads(ok("logs", "show", str(data["trace_id"]), "--json").stdout)
    assert shown == good
    full = ok("logs", "show", str(data["trace_id"])).stdout
    assert QUESTION in full and data["text"].strip()[:20] in full

    line = error_line(invoke("logs", "show", "999"))
    assert line.startswith("error: no trace with id 999 (the newest is")


def test_logs_empty_store() -> None:
    assert "no traces yet" in ok("logs").stdout
    assert json.loads(ok("logs", "--json").stdout) == []


# ----- chat -----------------------------------------------------------------------------------


def test_chat_over_a_pipe_keeps_history_and_obeys_commands(fmstack_home: Path) -> None:
    lines = [
        "My name is Ada. Say hello.",
        "What is my name?",
        "/reset",
        "/system You answer in one word.",
        "Name a colour.",
        "/exit",
        "this line is never sent",
    ]
    done = subprocess.run(
        [str(FMSTACK), "chat", "-t", "0", "--max-tokens", "24"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, env=env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rows = traces()
    assert [len(r["messages"]) for r in rows] == [1, 3, 2]
    assert rows[1]["messages"][1] == {"role": "assistant", "content": rows[0]["output"]}
    assert rows[2]["messages"][0] == {"role": "system", "content": "You answer in one word."}
    assert all(r["kind"] == "stream" for r in rows)
    for row in rows:
        assert row["output"].strip() in done.stdout
    assert "(conversation reset)" in done.stderr


def test_chat_ends_cleanly_at_eof_and_rejects_bad_flags() -> None:
    done = subprocess.run([str(FMSTACK), "chat", "-t", "0", "--max-tokens", "8"],
                          input="Hi!\n", capture_output=True, text=True, env=env(), timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert len(traces()) == 1

    line = error_line(invoke("chat", "--top-p", "2", input="hello\n"))
    assert line == "error: --top-p: Input should be less than or equal to 1"


# ----- demo -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_to_completion() -> None:
    done = subprocess.run([sys.executable, "-m", "fmstack.demo"], capture_output=True, text=True,
                          env=env(), timeout=300)
    assert done.returncode == 0, done.stderr
    for heading in ("1. generate", "2. structured output", "3. best-of-N",
                    "4. self-consistency", "5. a prompt file", "6. guards", "7. the traces",
                    "tour finished"):
        assert heading in done.stdout
    assert "Paris" in done.stdout
    flat = " ".join(done.stdout.split())  # rich wraps long lines
    # The guard step: the injection is refused, and the vault gives the address back.
    assert "guard blocked (injection)" in flat
    assert "model The new address of the office manager is ada@example.org" in flat
    # The prompt-file step: its traced prompt is the text it showed, tagged with its version.
    assert "traced prompt identical to the text above" in flat
    assert '"prompt": "capital"' in flat
    assert re.search(r"(\d+) traces in", done.stdout)
    # Six calls, the blocked request (traced, never sent to the model) and the guarded one.
    assert int(re.search(r"(\d+) traces in", done.stdout).group(1)) == len(traces()) == 8  # type: ignore[union-attr]

