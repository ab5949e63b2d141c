"""Prompt files: YAML front matter plus a Jinja2 body with ``system:``/``user:``/``assistant:``
sections, parsed and checked in full at load time.

Everything a file can get wrong is found when it is loaded, not when a model is already running:
YAML and Jinja syntax (reported as ``path:line:``), unknown front-matter keys, bad sampling
params, a malformed output schema, few-shot examples that do not fit the declared inputs, and
template variables that are not declared inputs. Rendering then only has to check the values.

The version of a prompt is the first 12 hex digits of the sha256 of the file's bytes, so it
changes exactly when the content changes (whitespace included).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, ValidationError

from fmstack.errors import PromptError
from fmstack.models.types import JsonSchemaFormat, Message, Request, SamplingParams

InputType = Literal["string", "integer", "number", "boolean", "array", "object"]
SectionRole = Literal["system", "user", "assistant"]
Source = Literal["user", "builtin"]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
ROLES: tuple[SectionRole, ...] = ("system", "user", "assistant")
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,),
}
_RECORDED: set[tuple[str, str, str]] = set()  # (database, name, version) stored this process
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}

# One environment for all prompts: sandboxed (a prompt file is data, not code) and strict (a
# typo in a variable name must fail, not render as an empty string).
_ENV = SandboxedEnvironment(
    undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False
)


class InputSpec(BaseModel):
    """One typed input variable. A ``default`` (even ``null``) makes it optional."""

    model_config = ConfigDict(extra="forbid")
    type: InputType = "string"
    description: str = ""
    default: Any = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class Example(BaseModel):
    """One few-shot example: input values and the answer the model should give."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any]
    output: str


class _FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    model: str | None = None
    params: SamplingParams = SamplingParams()
    inputs: dict[str, InputSpec] = {}
    examples: list[Example] = []
    output_schema: dict[str, Any] | None = None


@dataclass
class PromptFile:
    """A parsed, validated prompt file. Build one with ``load_prompt`` or ``parse_prompt``."""

    name: str
    description: str
    path: Path | None
    source: Source
    text: str
    version: str
    model: str | None
    params: SamplingParams
    inputs: dict[str, InputSpec]
    examples: list[Example]
    output_schema: dict[str, Any] | None
    sections: list[tuple[SectionRole, str]]
    # File line of each section's first template line, to report Jinja errors in file terms.
    section_lines: list[int] = field(default_factory=list, repr=False)

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else f"<prompt {self.name}>"

    # ----- variables ------------------------------------------------------------------------

    def check_inputs(self, vars: dict[str, Any]) -> dict[str, Any]:
        """The values to render with: ``vars`` checked against the declared inputs, defaults
        filled in. Missing, unknown and mistyped variables are a PromptError naming them."""
        unknown = sorted(set(vars) - set(self.inputs))
        if unknown:
            declared = ", ".join(self.inputs) or "none"
            raise PromptError(f"prompt {self.name}: unknown variable {', '.join(unknown)} "
                              f"(declared: {declared})")
        missing = [k for k, spec in self.inputs.items() if spec.required and k not in vars]
        if missing:
            raise PromptError(f"prompt {self.name}: missing variable {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, spec in self.inputs.items():
            value = vars.get(key, spec.default)
            # None is a value only where the file made it the default (an optional input).
            if not (value is None and not spec.required and spec.default is None):
                _check_type(self.name, key, spec.type, value)
            values[key] = value
        return values

    def coerce_vars(self, raw: dict[str, str]) -> dict[str, Any]:
        """Convert command-line strings (``--var k=v``) to each variable's declared type."""
        out: dict[str, Any] = {}
        for key, text in raw.items():
            spec = self.inputs.get(key)
            out[key] = _coerce(self.name, key, spec.type, text) if spec is not None else text
        return out

    # ----- rendering ------------------------------------------------------------------------

    def messages(
        self, vars: dict[str, Any], examples: list[Example] | None = None
    ) -> list[Message]:
        """The chat messages for ``vars``. Few-shot examples (default: all of the file's) go
        before the last user section as user/assistant pairs, the user turn rendered from that
        section's template with the example's inputs."""
        values = self.check_inputs(vars)
        shots = self.examples if examples is None else examples
        last_user = max((i for i, (role, _) in enumerate(self.sections) if role == "user"),
                        default=None)
        if shots and last_user is None:
            raise PromptError(f"{self.where}: few-shot examples need a user section")
        out: list[Message] = []
        for i, (role, _) in enumerate(self.sections):
            if i == last_user:
                for n, ex in enumerate(shots, start=1):
                    try:
                        ex_values = self.check_inputs(ex.inputs)
                    except PromptError as e:
                        raise PromptError(f"example {n}: {e}") from None
                    out.append(Message(role="user", content=self._render(i, ex_values)))
                    out.append(Message(role="assistant", content=ex.output))
            out.append(Message(role=role, content=self._render(i, values)))
        return out

    def request(
        self, vars: dict[str, Any], *, examples: list[Example] | None = None,
        record: bool = True, **param_overrides: Any,
    ) -> Request:
        """A chat Request: the messages, the file's params then ``param_overrides``, the output
        schema as a json_schema response format, and tags naming this prompt and version.
        The version is recorded in the store (``record=False`` skips that)."""
        settings = self.params.model_dump(exclude_unset=True)
        if self.output_schema is not None:
            settings["response_format"] = JsonSchemaFormat(schema=self.output_schema)
        settings.update(param_overrides)
        try:
            params = SamplingParams.model_validate(settings)
        except ValidationError as e:
            raise PromptError(f"prompt {self.name}: {_validation_message(e)}") from None
        request = Request(messages=self.messages(vars, examples), params=params,
                          tags={"prompt": self.name, "prompt_version": self.version})
        if record:
            self.record()
        return request

    def record(self) -> bool:
        """Store this version's content; True if it was not recorded before."""
        from fmstack.config import db_path
        from fmstack.store.prompts import PromptVersions

        # Chains render the same prompt many times: one insert per version per process will do.
        key = (str(db_path()), self.name, self.version)
        if key in _RECORDED:
            return False
        with PromptVersions() as store:
            new = store.record(self.name, self.version, self.text, self.path)
        _RECORDED.add(key)
        return new

    def _render(self, index: int, values: dict[str, Any]) -> str:
        role, source = self.sections[index]
        try:
            text = _ENV.from_string(source).render(values)
        except TemplateError as e:
            raise PromptError(f"{self.where}: rendering the {role} section: {e}") from None
        return _strip_blank_lines(text)


# ----- loading ------------------------------------------------------------------------------


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def load_prompt(path: str | Path, *, source: Source = "user") -> PromptFile:
    """Read and validate a prompt file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{path}: no such prompt file") from None
    except OSError as e:
        raise PromptError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_prompt(text, path=path, source=source, version=version_of(data))


def parse_prompt(
    text: str, *, path: Path | None = None, source: Source = "user", version: str | None = None,
    name: str | None = None,
) -> PromptFile:
    """Parse prompt-file content. ``name`` (else the file stem) is used when the front matter
    has none."""
    where = str(path) if path is not None else "<prompt>"
    lines = text.replace("\r\n", "\n").split("\n")
    front_lines: list[str] = []
    body_start = 0  # index into lines
    if lines and lines[0].rstrip() == "---":
        close = next((i for i in range(1, len(lines)) if lines[i].rstrip() == "---"), None)
        if close is None:
            raise PromptError(f"{where}:1: front matter opened with '---' is never closed")
        front_lines, body_start = lines[1:close], close + 1
    front = _parse_front_matter(front_lines, where)

    name = front.name or name or (path.stem if path is not None else None)
    if name is None:
        raise PromptError(f"{where}: the prompt needs a name (front matter 'name:')")
    if not NAME_PATTERN.match(name):
        raise PromptError(f"{where}: invalid prompt name {name!r} (lowercase letters, digits, "
                          "'_', '.', '-'; starting with a letter or digit)")
    sections, starts = _split_sections(lines, body_start, where)
    prompt = PromptFile(
        name=name, description=front.description, path=path, source=source, text=text,
        version=version or version_of(text.encode("utf-8")), model=front.model,
        params=front.params, inputs=front.inputs, examples=front.examples,
        output_schema=front.output_schema, sections=sections, section_lines=starts,
    )
    _check_templates(prompt)
    _check_defaults_and_examples(prompt, front_lines)
    if front.output_schema is not None:
        try:
            JsonSchemaFormat(schema=front.output_schema)
        except ValidationError as e:
            raise PromptError(f"{_at(where, front_lines, 'output_schema')} output_schema: "
                              f"{_validation_message(e)}") from None
    return prompt


def _parse_front_matter(front_lines: list[str], where: str) -> _FrontMatter:
    try:
        data = yaml.safe_load("\n".join(front_lines)) if front_lines else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        # +2: the mark is 0-based and the front matter starts after the opening '---' line.
        line = f":{mark.line + 2}" if mark is not None else ""
        raise PromptError(f"{where}{line}: YAML syntax error in front matter: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PromptError(f"{where}:2: front matter must be a YAML mapping of keys to values")
    try:
        return _FrontMatter.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]["loc"]
        key = str(first[0]) if first else ""
        raise PromptError(f"{_at(where, front_lines, key)} {_validation_message(e)}") from None


def _split_sections(
    lines: list[str], start: int, where: str
) -> tuple[list[tuple[SectionRole, str]], list[int]]:
    """The (role, template) sections of the body and the file line each template starts on."""
    markers = [i for i in range(start, len(lines)) if lines[i].rstrip() in
               ("system:", "user:", "assistant:")]
    if not markers:
        if not "\n".join(lines[start:]).strip():
            raise PromptError(f"{where}: the prompt has no body")
        return [("user", "\n".join(lines[start:]))], [start + 1]
    stray = next((i for i in range(start, markers[0]) if lines[i].strip()), None)
    if stray is not None:
        raise PromptError(f"{where}:{stray + 1}: text before the first role marker "
                          "(start the body with 'system:', 'user:' or 'assistant:')")
    sections: list[tuple[SectionRole, str]] = []
    starts: list[int] = []
    for k, m in enumerate(markers):
        end = markers[k + 1] if k + 1 < len(markers) else len(lines)
        role: SectionRole = lines[m].rstrip()[:-1]  # type: ignore[assignment]
        source = "\n".join(lines[m + 1:end])
        if not source.strip():
            raise PromptError(f"{where}:{m + 1}: the {role} section is empty")
        sections.append((role, source))
        starts.append(m + 2)  # 1-based line of the template's first line
    return sections, starts


def _check_templates(prompt: PromptFile) -> None:
    for (role, source), first in zip(prompt.sections, prompt.section_lines, strict=True):
        try:
            ast = _ENV.parse(source)
        except TemplateSyntaxError as e:
            line = first + (e.lineno or 1) - 1
            raise PromptError(f"{prompt.where}:{line}: Jinja syntax error in the {role} "
                              f"section: {e.message}") from None
        undeclared = sorted(meta.find_undeclared_variables(ast) - set(prompt.inputs))
        if undeclared:
            var = undeclared[0]
            hit = next((n for n, text in enumerate(source.split("\n"))
                        if re.search(rf"\b{re.escape(var)}\b", text)), 0)
            declared = ", ".join(prompt.inputs) or "none"
            raise PromptError(f"{prompt.where}:{first + hit}: the {role} section uses undeclared "
                              f"variable {', '.join(undeclared)} (declared inputs: {declared})")


def _check_defaults_and_examples(prompt: PromptFile, front_lines: list[str]) -> None:
    for key, spec in prompt.inputs.items():
        if not spec.required and spec.default is not None:
            try:
                _check_type(prompt.name, key, spec.type, spec.default)
            except PromptError as e:
                raise PromptError(f"{_at(prompt.where, front_lines, 'inputs')} default: "
                                  f"{e}") from None
    for n, ex in enumerate(prompt.examples, start=1):
        try:
            prompt.check_inputs(ex.inputs)
        except PromptError as e:
            at = _at(prompt.where, front_lines, "examples")
            raise PromptError(f"{at} example {n} does not match the declared inputs: "
                              f"{str(e).removeprefix(f'prompt {prompt.name}: ')}") from None
    if prompt.examples and not any(role == "user" for role, _ in prompt.sections):
        raise PromptError(f"{prompt.where}: few-shot examples need a user section")


# ----- values -------------------------------------------------------------------------------


def _check_type(prompt: str, key: str, kind: str, value: Any) -> None:
    ok = isinstance(value, _PY_TYPES[kind]) and not (
        kind in ("integer", "number") and isinstance(value, bool))
    if not ok:
        raise PromptError(f"prompt {prompt}: variable {key} must be {_a(kind)}, got "
                          f"{type(value).__name__} {_short(value)}")


def _coerce(prompt: str, key: str, kind: str, text: str) -> Any:
    try:
        if kind == "string":
            return text
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eEn") else int(text)
        if kind == "boolean":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        value = json.loads(text)
    except ValueError:
        raise PromptError(f"prompt {prompt}: variable {key} must be {_a(kind)}, got "
                          f"{_short(text)}") from None
    if not isinstance(value, _PY_TYPES[kind]):
        raise PromptError(f"prompt {prompt}: variable {key} must be {_a(kind)} (JSON), got "
                          f"{_short(text)}")
    return value


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _strip_blank_lines(text: str) -> str:
    # Leading blank lines go but the first line keeps its indentation; trailing space goes.
    return re.sub(r"\A(?:[ \t]*\n)+", "", text).rstrip()


def _at(where: str, front_lines: list[str], key: str) -> str:
    """``path:line:`` of a top-level front-matter key (``path:`` if it is not found)."""
    for i, line in enumerate(front_lines):
        if key and re.match(rf"{re.escape(key)}\s*:", line):
            return f"{where}:{i + 2}:"
    return f"{where}:"


def _validation_message(e: ValidationError) -> str:
    parts = []
    for item in e.errors():
        loc = ".".join(str(p) for p in item["loc"])
        msg = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def unified_diff(old: str, new: str, old_label: str, new_label: str) -> str:
    """A unified diff of two prompt texts ('' when they are equal)."""
    def lines(text: str) -> list[str]:
        return [line if line.endswith("\n") else line + "\n"
                for line in text.splitlines(keepends=True)]

    diff = "".join(difflib.unified_diff(lines(old), lines(new), old_label, new_label))
    if not diff and old != new:
        return f"--- {old_label}\n+++ {new_label}\n(only the final newline differs)\n"
    return diff
