"""Prompt files on the real SmolLM2 model: what render() shows is byte for byte what the backend
tokenized (checked through the trace, for llama.cpp and transformers), versions follow content,
and every kind of bad input is one PromptError naming the problem."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmstack.errors import PromptError
from fmstack.models import JsonSchemaFormat, Model, load_model
from fmstack.prompts import (
    BUILTIN_DIR,
    Example,
    PromptLibrary,
    load_prompt,
    parse_prompt,
    render,
    version_of,
)
from fmstack.store import TraceStore
from fmstack.store.prompts import PromptVersions

SUMMARIZE = """\
---
description: Summarize a text in N bullet points.
params:
  temperature: 0
  max_tokens: 24
inputs:
  text: {type: string, description: The text to summarize}
  bullets: {type: integer, default: 2}
examples:
  - inputs: {text: "Cats sleep a lot. They also purr.", bullets: 2}
    output: "- Cats sleep a lot\\n- Cats purr"
---
system:
You are a concise assistant.

user:
Summarize in {{ bullets }} bullets:
{{ text }}
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.prompt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def prompt_dir(tmp_path: Path) -> Path:
    return tmp_path / "prompts"


@pytest.fixture(scope="module")
def hf_model(session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    # Module scope runs before the per-test home exists: share the session's GGUF conversion.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMSTACK_CACHE", str(session_cache))
        mp.setenv("FMSTACK_HOME", str(tmp_path_factory.mktemp("hf-home")))
        model = load_model("smollm2-hf", trace=False, n_threads=1)
    yield model
    model.close()


# ----- the rendered prompt is what the backend tokenized ------------------------------------


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("hf", marks=pytest.mark.slow)])
def test_render_equals_traced_prompt(
    backend: str, request: pytest.FixtureRequest, prompt_dir: Path
) -> None:
    model: Model = request.getfixturevalue("llamacpp_model" if backend == "llamacpp"
                                           else "hf_model")
    prompt = load_prompt(write(prompt_dir, "summarize", SUMMARIZE))
    values = {"text": "Dogs bark at night. They also fetch sticks.", "bullets": 3}
    rendered = render(prompt, values, model)
    # Shared models are loaded untraced; trace this call into the test's own store.
    model.tracer = TraceStore()
    try:
        completion = model.complete(rendered.request)
    finally:
        model.tracer = None
    assert completion.trace_id is not None
    row = TraceStore().get(completion.trace_id)
    assert row is not None
    assert row["rendered_prompt"] == rendered.text  # byte for byte, chat template included
    assert rendered.text.encode() == row["rendered_prompt"].encode()
    assert rendered.token_count == completion.usage.prompt_tokens == row["prompt_tokens"]
    assert row["tags"] == {"prompt": "summarize", "prompt_version": prompt.version}
    # The few-shot pair precedes the real question, and the values reached the text.
    assert rendered.text.index("Cats purr") < rendered.text.index("Summarize in 3 bullets")
    assert "Dogs bark at night" in rendered.text
    assert rendered.text.startswith("<|im_start|>system\nYou are a concise assistant.<|im_end|>")


def test_output_schema_becomes_enforced_json(llamacpp_model: Model, prompt_dir: Path) -> None:
    prompt = load_prompt(write(prompt_dir, "person", """\
---
params: {temperature: 0, max_tokens: 48}
inputs:
  who: {type: string}
output_schema:
  type: object
  properties:
    name: {type: string, maxLength: 20}
  required: [name]
  additionalProperties: false
---
Invent a {{ who }}. Reply in JSON with a name.
"""))
    request = prompt.request({"who": "pirate"})
    assert isinstance(request.params.response_format, JsonSchemaFormat)
    completion = llamacpp_model.complete(request)
    assert set(completion.parsed) == {"name"}


# ----- rendering rules ----------------------------------------------------------------------


def test_sections_examples_and_params(prompt_dir: Path) -> None:
    prompt = load_prompt(write(prompt_dir, "summarize", SUMMARIZE))
    assert prompt.name == "summarize" and prompt.source == "user"
    assert [role for role, _ in prompt.sections] == ["system", "user"]
    msgs = prompt.messages({"text": "T"})
    assert [(m.role, m.content) for m in msgs] == [
        ("system", "You are a concise assistant."),
        ("user", "Summarize in 2 bullets:\nCats sleep a lot. They also purr."),
        ("assistant", "- Cats sleep a lot\n- Cats purr"),
        ("user", "Summarize in 2 bullets:\nT"),  # the default filled in
    ]
    # examples=[] turns few-shot off; explicit examples replace the file's.
    assert [m.role for m in prompt.messages({"text": "T"}, examples=[])] == ["system", "user"]
    own = prompt.messages({"text": "T"}, examples=[Example(inputs={"text": "X"}, output="- x")])
    assert [m.content for m in own][1:3] == ["Summarize in 2 bullets:\nX", "- x"]
    request = prompt.request({"text": "T"}, max_tokens=5)
    assert request.params.temperature == 0 and request.params.max_tokens == 5
    with pytest.raises(PromptError, match=r"max_tokens: Input should be greater than or equal"):
        prompt.request({"text": "T"}, max_tokens=0)


def test_body_without_markers_is_one_user_section_and_blank_lines_are_stripped() -> None:
    prompt = parse_prompt("---\ninputs:\n  xs: {type: array}\n---\n\n\n"
                          "{% for x in xs %}\n- {{ x }}\n{% endfor %}\n\n", name="bare")
    [message] = prompt.messages({"xs": [1, 2]})
    assert message.role == "user"
    assert message.content == "- 1\n\n- 2"
    assert parse_prompt("Just text.\n", name="plain").messages({})[0].content == "Just text."


def test_sandbox_blocks_attribute_escapes() -> None:
    prompt = parse_prompt("---\ninputs:\n  t: {type: string}\n---\n"
                          "{{ t.__class__.__mro__ }}\n", name="escape")
    with pytest.raises(PromptError, match=r"rendering the user section: .*unsafe"):
        prompt.messages({"t": "x"})


def test_cli_strings_are_coerced_to_declared_types() -> None:
    prompt = parse_prompt("""\
---
inputs:
  n: {type: integer}
  x: {type: number}
  ok: {type: boolean}
  tags: {type: array}
  opts: {type: object}
  s: {type: string}
---
{{ n }} {{ x }} {{ ok }} {{ tags }} {{ opts }} {{ s }}
""", name="types")
    values = prompt.coerce_vars({"n": "3", "x": "2.5", "ok": "yes", "tags": '["a"]',
                                 "opts": '{"k": 1}', "s": "42"})
    assert values == {"n": 3, "x": 2.5, "ok": True, "tags": ["a"], "opts": {"k": 1}, "s": "42"}
    assert prompt.messages(values)[0].content == "3 2.5 True ['a'] {'k': 1} 42"
    for key, text, kind in [("n", "three", "an integer"), ("ok", "maybe", "a boolean"),
                            ("tags", "{}", "an array"), ("opts", "[", "an object")]:
        with pytest.raises(PromptError, match=rf"variable {key} must be {kind}"):
            prompt.coerce_vars({key: text})


# ----- versions -----------------------------------------------------------------------------


def test_versions_change_exactly_when_content_changes(prompt_dir: Path) -> None:
    path = write(prompt_dir, "summarize", SUMMARIZE)
    v1 = load_prompt(path)
    assert v1.version == version_of(SUMMARIZE.encode()) and len(v1.version) == 12
    v1.request({"text": "a"})  # a request records its version
    write(prompt_dir, "summarize", SUMMARIZE)  # rewritten, identical
    assert load_prompt(path).version == v1.version
    edited = SUMMARIZE.replace("concise", "concize")  # one character
    write(prompt_dir, "summarize", edited)
    v2 = load_prompt(path)
    assert v2.version != v1.version
    v2.request({"text": "a"})
    v2.request({"text": "b"})  # recording is idempotent
    write(prompt_dir, "summarize", edited + "\n")  # whitespace is content too
    assert load_prompt(path).version not in (v1.version, v2.version)

    with PromptVersions() as store:
        rows = store.versions("summarize")
        assert [r["version"] for r in rows] == [v1.version, v2.version]
        assert rows[0]["content"] == SUMMARIZE and rows[1]["content"] == edited
        assert store.get("summarize", v1.version[:4])["content"] == SUMMARIZE
        assert store.record("summarize", v1.version, SUMMARIZE, path) is False
        with pytest.raises(PromptError, match=r"no version 'ffff' of prompt 'summarize' "
                                              r"\(recorded: "):
            store.get("summarize", "ffff")

    library = PromptLibrary([prompt_dir])
    diff = library.diff("summarize", v1.version, v2.version)
    assert f"--- summarize@{v1.version}" in diff and f"+++ summarize@{v2.version}" in diff
    assert "-You are a concise assistant." in diff and "+You are a concize assistant." in diff
    changed = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert changed == ["-You are a concise assistant.", "+You are a concize assistant."]
    assert library.diff("summarize", v1.version, v1.version) == ""
    current = library.diff("summarize", v2.version)  # against the file as it is now
    assert f"+++ summarize@{load_prompt(path).version} (current)" in current
    assert [line for line in current.splitlines()[2:] if line[:1] in "+-"] == ["+"]


# ----- the library --------------------------------------------------------------------------


def test_user_prompt_overrides_builtin(prompt_dir: Path) -> None:
    builtin = PromptLibrary([]).get("critique")
    assert builtin.source == "builtin" and builtin.path is not None
    assert builtin.path.parent == BUILTIN_DIR
    write(prompt_dir, "critique", "---\ndescription: mine\ninputs:\n  answer: {}\n---\n"
                                  "Criticise: {{ answer }}\n")
    library = PromptLibrary([prompt_dir])
    mine = library.get("critique")
    assert (mine.source, mine.description) == ("user", "mine")
    assert mine.messages({"answer": "42"})[0].content == "Criticise: 42"
    assert [p.name for p in library.list()].count("critique") == 1


def test_search_path_from_environment(
    prompt_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmstack_home: Path
) -> None:
    write(fmstack_home / "prompts", "homed", "Hello from home.\n")
    assert PromptLibrary().get("homed").source == "user"
    other = tmp_path / "other"
    write(prompt_dir, "first", "1\n")
    write(other, "first", "2\n")
    write(other, "second", "2\n")
    monkeypatch.setenv("FMSTACK_PROMPTS", f"{prompt_dir}{os.pathsep}{other}")
    library = PromptLibrary()
    assert library.dirs == [prompt_dir, other]
    assert library.get("first").text == "1\n"  # the earlier directory wins
    assert "second" in library.names() and "homed" not in library.names()


def test_broken_file_is_reported_not_hidden(prompt_dir: Path) -> None:
    write(prompt_dir, "good", "fine\n")
    write(prompt_dir, "bad", "---\nname: [\n---\nx\n")
    library = PromptLibrary([prompt_dir])
    assert "good" in library.names()
    assert len(library.problems) == 1 and "bad.prompt:2" in str(library.problems[0])
    with pytest.raises(PromptError, match=r"bad\.prompt:2: YAML syntax error"):
        library.get("bad")


# ----- bad input ----------------------------------------------------------------------------

BAD_FILES: list[tuple[str, str, str]] = [
    ("yaml", "---\ndescription: ok\ninputs:\n  text: {type: string\n---\nx\n",
     r"yaml\.prompt:4: YAML syntax error in front matter"),
    ("yaml_colon", "---\ndescription: ok\nmodel: a: b\n---\nx\n",
     r"yaml_colon\.prompt:3: YAML syntax error in front matter: mapping values are not "
     r"allowed here"),
    ("jinja", "---\ninputs:\n  t: {}\n---\nsystem:\nok\n\nuser:\nline one\n{{ t }\n",
     r"jinja\.prompt:10: Jinja syntax error in the user section"),
    ("undeclared", "---\ninputs:\n  text: {}\n---\nuser:\n{{ text }}\nand {{ txt }}\n",
     r"undeclared\.prompt:7: the user section uses undeclared variable txt "
     r"\(declared inputs: text\)"),
    ("example_unknown", "---\ninputs:\n  q: {}\nexamples:\n  - inputs: {question: hi}\n"
     "    output: yo\n---\n{{ q }}\n",
     r"example_unknown\.prompt:4: example 1 does not match the declared inputs: "
     r"unknown variable question"),
    ("example_type", "---\ninputs:\n  n: {type: integer}\nexamples:\n  - inputs: {n: two}\n"
     "    output: '2'\n---\n{{ n }}\n",
     r"example 1 does not match the declared inputs: variable n must be an integer"),
    ("example_missing", "---\ninputs:\n  a: {}\n  b: {}\nexamples:\n  - inputs: {a: 1}\n"
     "    output: x\n---\n{{ a }}{{ b }}\n",
     r"example 1 does not match the declared inputs: missing variable b"),
    ("unknown_key", "---\ndescripton: typo\n---\nx\n",
     r"unknown_key\.prompt:2: descripton: unknown key"),
    ("bad_params", "---\nparams:\n  temperature: 9\n---\nx\n",
     r"bad_params\.prompt:2: params\.temperature: Input should be less than or equal to 5"),
    ("bad_type", "---\ninputs:\n  x: {type: text}\n---\n{{ x }}\n",
     r"bad_type\.prompt:2: inputs\.x\.type: Input should be 'string'"),
    ("bad_default", "---\ninputs:\n  x: {type: integer, default: many}\n---\n{{ x }}\n",
     r"bad_default\.prompt:2: default: .*variable x must be an integer"),
    ("bad_schema", "---\noutput_schema: {type: 12}\n---\nx\n",
     r"bad_schema\.prompt:2: output_schema: .*malformed JSON Schema"),
    ("stray", "---\n---\nhello\nuser:\nx\n", r"stray\.prompt:3: text before the first role"),
    ("empty_section", "system:\n\nuser:\nhi\n", r"empty_section\.prompt:1: the system section "
     r"is empty"),
    ("unclosed", "---\ndescription: x\n", r"unclosed\.prompt:1: front matter opened"),
    ("Bad-Name", "x\n", r"invalid prompt name 'Bad-Name'"),
    ("nobody", "---\ndescription: x\n---\n\n", r"nobody\.prompt: the prompt has no body"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_name_file_line_and_problem(
    prompt_dir: Path, name: str, text: str, message: str
) -> None:
    path = write(prompt_dir, name, text)
    with pytest.raises(PromptError, match=message) as info:
        load_prompt(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(("values", "message"), [
    ({}, r"prompt summarize: missing variable text$"),
    ({"text": 3}, r"prompt summarize: variable text must be a string, got int 3$"),
    ({"text": "a", "bullets": "3"}, r"variable bullets must be an integer, got str '3'$"),
    ({"text": "a", "bullets": True}, r"variable bullets must be an integer, got bool True$"),
    ({"text": "a", "bulets": 3}, r"unknown variable bulets \(declared: text, bullets\)$"),
])
def test_bad_variables(prompt_dir: Path, values: dict[str, Any], message: str) -> None:
    prompt = load_prompt(write(prompt_dir, "summarize", SUMMARIZE))
    with pytest.raises(PromptError, match=message):
        prompt.messages(values)


def test_unknown_prompt_lists_known_ones(prompt_dir: Path) -> None:
    write(prompt_dir, "summarize", SUMMARIZE)
    with pytest.raises(PromptError) as info:
        PromptLibrary([prompt_dir]).get("sumarize")
    message = str(info.value)
    assert message.startswith("unknown prompt 'sumarize' (known: ")
    known = re.search(r"known: ([^;]*);", message)
    assert known is not None and "summarize" in known.group(1) and "critique" in known.group(1)


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"nothere\.prompt: no such prompt file"):
        load_prompt(tmp_path / "nothere.prompt")
    (tmp_path / "latin.prompt").write_bytes(b"caf\xe9\n")
    with pytest.raises(PromptError, match=r"latin\.prompt: not UTF-8 text \(byte 3\)"):
        load_prompt(tmp_path / "latin.prompt")


def test_diff_of_a_final_newline_is_not_empty() -> None:
    from fmstack.prompts import unified_diff

    assert "only the final newline differs" in unified_diff("a", "a\n", "old", "new")
    assert unified_diff("a\n", "a\n", "old", "new") == ""


def test_optional_input_with_null_default_accepts_none() -> None:
    prompt = parse_prompt("---\ninputs:\n  t: {}\n  note: {default: null}\n---\n"
                          "{{ t }}{% if note %} ({{ note }}){% endif %}\n", name="opt")
    assert prompt.messages({"t": "a"})[0].content == "a"
    assert prompt.messages({"t": "a", "note": None})[0].content == "a"
    assert prompt.messages({"t": "a", "note": "n"})[0].content == "a (n)"
    with pytest.raises(PromptError, match=r"variable t must be a string, got NoneType None"):
        prompt.messages({"t": None})


def test_estimated_cost_uses_the_price_table(
    llamacpp_model: Model, prompt_dir: Path, fmstack_home: Path
) -> None:
    prompt = load_prompt(write(prompt_dir, "summarize", SUMMARIZE))
    free = render(prompt, {"text": "x"}, llamacpp_model)
    assert free.estimated_cost == 0.0
    (fmstack_home / "prices.json").write_text('{"smollm2": {"input": 2.0, "output": 10.0}}')
    priced = render(prompt, {"text": "x"}, llamacpp_model, max_tokens=100)
    assert priced.token_count == free.token_count
    assert priced.estimated_cost == pytest.approx((free.token_count * 2.0 + 100 * 10.0) / 1e6)
