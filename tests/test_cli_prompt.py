"""``fmstack prompt`` end to end on the real SmolLM2 model through llama.cpp: every command,
its --json form, and bad input as a single ``error:`` line with exit code 1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fmstack.cli import app
from fmstack.prompts import load_prompt, render
from fmstack.store import TraceStore

CAPITAL = """\
---
description: Name the capital of a country.
params:
  temperature: 0
  max_tokens: 8
inputs:
  country: {type: string, description: The country}
  shots: {type: integer, default: 1}
examples:
  - inputs: {country: Japan}
    output: Tokyo
---
system:
You answer with the city name only.

user:
What is the capital of {{ country }}?
"""


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    directory = tmp_path / "prompts"
    directory.mkdir()
    (directory / "capital.prompt").write_text(CAPITAL, encoding="utf-8")
    return directory


def test_list(prompts: Path) -> None:
    (prompts / "critique.prompt").write_text("---\ndescription: my critique\n---\nHi.\n")
    table = ok("prompt", "--prompts", str(prompts), "list").stdout
    assert "capital" in table and "Name the capital of a country." in table
    assert load_prompt(prompts / "capital.prompt").version in table
    rows: list[dict[str, Any]] = json.loads(
        ok("prompt", "list", "--prompts", str(prompts), "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["capital"]["source"] == "user"
    assert by_name["critique"]["source"] == "user"  # the user's file overrides the builtin
    assert by_name["critique"]["description"] == "my critique"
    assert by_name["revise"]["source"] == "builtin"
    assert [r["name"] for r in rows] == sorted(by_name)


def test_list_reports_a_broken_file_and_keeps_the_rest(prompts: Path) -> None:
    (prompts / "broken.prompt").write_text("---\nparams: {temperature: hot}\n---\nx\n")
    result = ok("prompt", "list", "--prompts", str(prompts))
    assert "capital" in result.stdout and "broken" not in result.stdout
    assert "warning: skipped" in result.stderr and "broken.prompt:2" in result.stderr


def test_show(prompts: Path) -> None:
    version = load_prompt(prompts / "capital.prompt").version
    text = ok("prompt", "show", "capital", "--prompts", str(prompts)).stdout
    assert "no versions recorded yet" in text and "country" in text
    ok("prompt", "render", "capital", "--prompts", str(prompts), "--var", "country=Spain")
    shown: dict[str, Any] = json.loads(
        ok("prompt", "show", "capital", "--prompts", str(prompts), "--json").stdout)
    assert shown["text"] == CAPITAL and shown["version"] == version
    assert shown["inputs"]["country"] == {"type": "string", "description": "The country",
                                          "required": True}
    assert shown["inputs"]["shots"]["default"] == 1 and not shown["inputs"]["shots"]["required"]
    assert shown["params"] == {"temperature": 0.0, "max_tokens": 8}
    assert [v["version"] for v in shown["versions"]] == [version]
    assert shown["versions"][0]["current"] is True


def test_render_prints_the_exact_text_and_run_sends_it(
    prompts: Path, llamacpp_model: Any
) -> None:
    path = prompts / "capital.prompt"
    expected = render(load_prompt(path), {"country": "France"}, llamacpp_model)
    result = ok("prompt", "render", "capital", "--prompts", str(prompts),
                "--var", "country=France", "-m", "smollm2")
    assert result.stdout == expected.text  # it ends with the assistant header's newline
    assert f"{expected.token_count} tokens" in result.stderr
    assert "estimated cost $0" in result.stderr

    data: dict[str, Any] = json.loads(ok("prompt", "render", str(path), "--var",
                                         "country=France", "--json").stdout)
    assert data["text"] == expected.text and data["token_count"] == expected.token_count
    assert data["version"] == expected.prompt.version
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "user"]

    run = ok("prompt", "run", "capital", "--prompts", str(prompts), "--var", "country=France")
    assert "Paris" in run.stdout
    assert f"capital@{expected.prompt.version}" in run.stderr
    row = TraceStore().list(limit=1)[0]
    assert row["kind"] == "stream"
    assert row["rendered_prompt"] == expected.text
    assert row["prompt_tokens"] == expected.token_count
    assert row["tags"] == {"prompt": "capital", "prompt_version": expected.prompt.version}


def test_run_json_with_sampling_flags(prompts: Path) -> None:
    data: dict[str, Any] = json.loads(ok(
        "prompt", "run", "capital", "--prompts", str(prompts), "--var", "country=France",
        "--max-tokens", "2", "--json").stdout)
    assert data["prompt"] == "capital" and data["usage"]["completion_tokens"] <= 2
    row = TraceStore().get(data["trace_id"])
    assert row is not None
    assert row["params"]["max_tokens"] == 2 and row["params"]["temperature"] == 0.0


def test_run_no_trace(prompts: Path) -> None:
    ok("prompt", "run", "capital", "--prompts", str(prompts), "--var", "country=Peru",
       "--no-trace", "--max-tokens", "2")
    assert TraceStore().count() == 0


def test_diff(prompts: Path) -> None:
    path = prompts / "capital.prompt"
    old = load_prompt(path).version
    ok("prompt", "render", "capital", "--prompts", str(prompts), "--var", "country=Chile")
    path.write_text(CAPITAL.replace("city name only", "city name"), encoding="utf-8")
    new = load_prompt(path).version
    # Without V2: against the current file (which it records).
    diff = ok("prompt", "diff", "capital", old[:6], "--prompts", str(prompts)).stdout
    assert "-You answer with the city name only." in diff
    assert "+You answer with the city name." in diff
    assert f"+++ capital@{new} (current)" in diff
    path.unlink()  # recorded versions outlive the file
    both = ok("prompt", "diff", "capital", old, new).stdout
    assert both.splitlines()[:2] == [f"--- capital@{old}", f"+++ capital@{new}"]
    same = ok("prompt", "diff", "capital", old, old)
    assert same.stdout == "" and "identical" in same.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["render", "nope"], r"error: unknown prompt 'nope' \(known: .*capital"),
    (["render", "capital"], r"error: prompt capital: missing variable country$"),
    (["render", "capital", "--var", "country=X", "--var", "shots=two"],
     r"error: prompt capital: variable shots must be an integer, got 'two'$"),
    (["render", "capital", "--var", "country=X", "--var", "city=Y"],
     r"error: prompt capital: unknown variable city \(declared: country, shots\)$"),
    (["render", "capital", "--var", "country"], r"error: --var expects KEY=VALUE, got 'country'"),
    (["run", "capital", "--var", "country=X", "--top-p", "2"],
     r"error: --top-p: Input should be less than or equal to 1$"),
    (["diff", "capital", "abc123"], r"error: no version 'abc123' of prompt 'capital'"),
    (["diff", "capital", "xyz"], r"error: version 'xyz' of prompt 'capital' is not a hex"),
    (["show", "broken"], r"error: .*broken\.prompt:5: Jinja syntax error in the user section"),
    (["render", "undeclared", "--var", "a=1"],
     r"error: .*undeclared\.prompt:4: the user section uses undeclared variable b"),
])
def test_bad_input_is_one_error_line(prompts: Path, args: list[str], message: str) -> None:
    (prompts / "broken.prompt").write_text("---\n---\nuser:\nok\n{% if %}\n")
    (prompts / "undeclared.prompt").write_text("---\ninputs: {a: {}}\n---\n{{ a }} {{ b }}\n")
    line = error_line(invoke("prompt", args[0], "--prompts", str(prompts), *args[1:]))
    assert re.search(message, line), line
    assert TraceStore().count() == 0  # nothing reached a model


def test_console_script_error_exit(prompts: Path) -> None:
    fmstack = Path(sys.executable).parent / "fmstack"
    done = subprocess.run(
        [str(fmstack), "prompt", "--prompts", str(prompts), "run", "nope"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"})
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: unknown prompt 'nope'")
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_prompt_model_is_the_default_and_m_overrides_it(prompts: Path) -> None:
    (prompts / "pinned.prompt").write_text("---\nmodel: no-such-model\n---\nSay hi.\n")
    line = error_line(invoke("prompt", "render", "pinned", "--prompts", str(prompts)))
    assert "no-such-model" in line
    shown = ok("prompt", "render", "pinned", "--prompts", str(prompts), "-m", "smollm2")
    assert "Say hi." in shown.stdout and "smollm2" in shown.stderr
