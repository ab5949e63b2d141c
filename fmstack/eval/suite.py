"""Eval suites: prompts x models x dataset x metrics, from a YAML file or from Python.

```yaml
name: capitals
models: [smollm2]                       # aliases/URIs, or {uri: smollm2, options: {n_threads: 2}}
prompts:
  - capital                             # a prompt name, or a path relative to the suite file
  - {name: plain, user: "What is the capital of {{ country }}?"}   # inline (user, system)
dataset: capitals.jsonl                 # JSONL or CSV relative to the suite file, or `cases:`
params: {temperature: 0, max_tokens: 16}
epochs: 1
seed: 0
concurrency: 2
metrics: [exact_match, {name: contains, threshold: 0.8, ignore_case: true}]
slices: [continent]
```

A case is ``{id, vars, expected, metadata}``. In a JSONL row every key other than ``id``,
``expected`` and ``metadata`` is a variable; in a CSV, ``id`` and ``expected`` are columns,
``metadata.X`` columns are metadata and the rest are variables. A file prompt receives only the
variables it declares (a dataset may carry columns for other prompts); an inline prompt gets
all of them, rendered with the same sandboxed, strict Jinja rules as prompt files.

A metric entry is a name from ``fmstack.eval.metrics`` plus ``threshold`` (the mean must reach
it, or stay under it for lower-is-better metrics), ``field`` (what to score: ``final``, the
output text; a component a target returned, such as ``context``; or a top-level key of the
JSON output of a prompt with an ``output_schema``), ``reference`` (what to compare with:
``expected`` (default), ``expected.KEY``, ``vars.KEY`` or ``metadata.KEY`` of the case),
``label`` (the name in results; default the metric name, ``name[field]`` for other fields),
``aggregate`` (how a conversation's per-turn scores make its per-task score: ``mean``,
``min``, ``max`` or ``last``), ``pass_at`` (list of k: with epochs, pass@k of this 0/1 metric
over each case's epochs, by the unbiased estimator) and the metric's own keyword options.

**Prompts** are prompt files, or inline: ``{name, user, system}`` for a chat, or
``{name, text}`` for a raw completion prompt (no chat template; the text is sent exactly as
rendered, trailing whitespace included).

**Targets.** By default a sample is one model call. ``target: file.py:function`` (relative to
the suite) or ``package.module:function`` names a Python function that produces the output
instead, e.g. a RAG pipeline: ``fn(model, request, case) -> Completion | dict``. A dict holds
``final`` (a Completion or text) plus any named intermediate outputs (``context``,
``retrieved_ids``, ...), each stored with the sample and scorable by a metric's ``field``.
A suite with a target may list no models: the target is called with ``model=None`` and the
samples' model is ``none`` (a retriever evaluated on its own).

**Conversations.** A case with ``turns`` (a list of ``{user, expected}`` or plain strings) is
a multi-turn task: the prompt is the first turn (compared with the case's ``expected``), then
each turn's user message (a template over the case's variables) is added after the model's
previous reply. Every metric scores every turn that has what it needs (per-turn scores); the
sample's score is their ``aggregate`` (per-task score).

Everything is checked when the suite is loaded, before any model runs: a typo'd key, a missing
dataset file, an unknown metric, metric option or prompt, a case missing a variable a prompt
needs. Each is a ConfigError naming the file and the line (YAML) or the dataset row.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fmstack.errors import ConfigError, PromptError
from fmstack.models.types import Message, Request, SamplingParams
from fmstack.prompts.files import PromptFile

# Same rules as prompt files: sandboxed (a suite is data) and strict (a typo'd variable fails).
_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False,
                            autoescape=False)
_CASE_KEYS = ("id", "expected", "metadata", "turns")
# The model name of samples from a suite whose target runs without a model.
NO_MODEL = "none"


class ModelConfig(BaseModel):
    """A model with backend options (e.g. ``n_threads``)."""

    model_config = ConfigDict(extra="forbid")
    uri: str
    options: dict[str, Any] = {}


class InlinePromptConfig(BaseModel):
    """A prompt written inside the suite: a user template and an optional system template, or
    ``text``, a raw completion prompt."""

    model_config = ConfigDict(extra="forbid")
    name: str
    user: str | None = None
    system: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> InlinePromptConfig:
        if (self.user is None) == (self.text is None):
            raise ValueError("an inline prompt needs 'user' (a chat) or 'text' (a raw prompt)")
        if self.text is not None and self.system is not None:
            raise ValueError("a raw 'text' prompt has no 'system' message")
        return self


class MetricConfig(BaseModel):
    """A metric by registry name; extra keys are the metric's keyword options."""

    model_config = ConfigDict(extra="allow")
    name: str
    threshold: float | None = None
    field: str = "final"
    reference: str = "expected"
    label: str | None = None
    aggregate: Literal["mean", "min", "max", "last"] = "mean"
    pass_at: list[Annotated[int, Field(ge=1)]] = []

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        return self.name if self.field == "final" else f"{self.name}[{self.field}]"


class Turn(BaseModel):
    """A follow-up user message of a conversation case, and what its reply should match."""

    model_config = ConfigDict(extra="forbid")
    user: str
    expected: Any = None


class Case(BaseModel):
    """One dataset row; with ``turns``, a conversation."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None
    vars: dict[str, Any] = {}
    expected: Any = None
    metadata: dict[str, Any] = {}
    turns: list[Turn] | None = None

    @field_validator("turns", mode="before")
    @classmethod
    def _plain_turns(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"user": t} if isinstance(t, str) else t for t in value]
        return value


class Suite(BaseModel):
    """A suite, built from Python directly or by ``load_suite(path)``. Relative paths (dataset,
    prompt files) resolve against ``base_dir`` (the suite file's folder; default: the cwd)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    models: list[str | ModelConfig] = []
    prompts: list[str | InlinePromptConfig | InstanceOf[PromptFile]] = Field(min_length=1)
    dataset: str | None = None
    cases: list[Case] | None = None
    params: dict[str, Any] = {}
    epochs: int = Field(1, ge=1)
    seed: int = 0
    concurrency: int = Field(1, ge=1)
    metrics: list[str | MetricConfig] = Field(min_length=1)
    slices: list[str] = []
    target: str | InstanceOf[Callable[..., Any]] | None = None
    base_dir: Path | None = Field(None, exclude=True)
    path: Path | None = Field(None, exclude=True)  # the suite file, when loaded from one
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    _resolved: ResolvedSuite | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> Suite:
        if (self.dataset is None) == (self.cases is None):
            raise ValueError("give exactly one of 'dataset' (a file) or 'cases' (inline)")
        if not self.models and self.target is None:
            raise ValueError("give at least one model (only a suite with a target may have "
                             "none: the target is then called with model=None)")
        return self

    def resolve(self) -> ResolvedSuite:
        """Load prompts and dataset, check every case against every prompt and every metric
        against the registry (once; the result is kept)."""
        if self._resolved is None:
            self._resolved = _resolve(self, self._lines)
        return self._resolved


@dataclass
class SuitePrompt:
    """A prompt ready to render: a prompt file or an inline template pair."""

    name: str
    version: str
    required: list[str]
    file: PromptFile | None = None
    user: str | None = None
    system: str | None = None
    text: str | None = None  # a raw completion prompt

    def request(self, vars: dict[str, Any], **params: Any) -> Request:
        if self.file is not None:
            mine = {k: v for k, v in vars.items() if k in self.file.inputs}
            return self.file.request(mine, **params)
        tags = {"prompt": self.name, "prompt_version": self.version}
        if self.text is not None:
            # Sent exactly as rendered: a code prompt's trailing newline and indentation matter.
            prompt = render(self.text, vars, f"inline prompt {self.name}", strip=False)
            return Request(prompt=prompt, params=SamplingParams(**params), tags=tags)
        messages = []
        for role, source in (("system", self.system), ("user", self.user)):
            if source is not None:
                content = render(source, vars, f"inline prompt {self.name}: {role}")
                messages.append(Message(role=role, content=content))
        return Request(messages=messages, params=SamplingParams(**params), tags=tags)

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return self.file.output_schema if self.file is not None else None


def render(source: str, vars: dict[str, Any], what: str, *, strip: bool = True) -> str:
    """Render an inline template (a prompt or a conversation turn) with the suite's rules."""
    try:
        text = _ENV.from_string(source).render(vars)
    except TemplateError as e:
        raise PromptError(f"{what}: rendering: {e}") from None
    return text.strip() if strip else text


@dataclass
class Target:
    """A Python function that produces a sample's output (see the module doc). ``fingerprint``
    (a hash of its source) is part of the suite hash and the cache key, so editing the
    function re-runs it instead of serving stale cached outputs."""

    name: str
    fn: Callable[..., Any]
    fingerprint: str


@dataclass
class ResolvedMetric:
    key: str
    config: MetricConfig
    spec: Any  # MetricSpec (imported lazily: the metrics package registers on import)


@dataclass
class ResolvedSuite:
    """A suite with everything loaded and checked; ``hash`` identifies its content."""

    suite: Suite
    models: list[ModelConfig]
    prompts: list[SuitePrompt]
    cases: list[Case]  # ids filled in, as strings
    metrics: list[ResolvedMetric]
    params: dict[str, Any]
    target: Target | None = None
    config: dict[str, Any] = field(default_factory=dict)
    hash: str = ""


# ----- loading ------------------------------------------------------------------------------


def load_suite(path: str | Path) -> Suite:
    """Read, validate and resolve a suite file; ConfigError with ``path:line:`` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such suite file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the suite ({e})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: YAML syntax error: "
                          f"{getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a suite must be a YAML mapping (name, models, prompts, ...)")
    lines: dict[tuple[str | int, ...], int] = {}
    _index_lines(node, (), lines)
    data = {**data, "base_dir": path.parent, "path": path}
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        loc, msg = _explain(e, Suite)
        at = ".".join(str(p) for p in loc)
        raise ConfigError(f"{_where(str(path), lines, loc)} {at + ': ' if at else ''}{msg}"
                          ) from None
    suite._lines = lines
    suite.resolve()
    return suite


def _index_lines(node: yaml.Node | None, loc: tuple[str | int, ...],
                 out: dict[tuple[str | int, ...], int]) -> None:
    if node is None:
        return
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = (*loc, key.value)
            out[k] = key.start_mark.line + 1
            _index_lines(value, k, out)
            out[k] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*loc, i), out)


def _where(file: str, lines: dict[tuple[str | int, ...], int],
           loc: tuple[str | int, ...]) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{file}:{lines[loc[:n]]}:"
    return f"{file}:"


_MODELS: dict[str, type[BaseModel]] = {
    c.__name__: c for c in (ModelConfig, InlinePromptConfig, MetricConfig, Case, Turn)
}


def _explain(e: ValidationError, root: type[BaseModel]) -> tuple[tuple[str | int, ...], str]:
    """The one error worth reporting, as (path in the YAML, message). A typo'd key also makes
    the real key "missing", and an entry that may be a string or a mapping fails both ways:
    the unknown key, and the mapping's own complaint, are the real news."""
    def model_of(p: str | int) -> str | None:
        # A model with an after-validator shows up as "function-after[_check(), Name]".
        name = p.rstrip("]").rpartition(" ")[2] if isinstance(p, str) else None
        return name if name in _MODELS else None

    def branch(p: str | int) -> bool:  # a union member's label, not a key in the YAML
        return isinstance(p, str) and (p == "str" or "[" in p) and model_of(p) is None

    def rank(err: Any) -> tuple[bool, bool]:
        return err["type"] != "extra_forbidden", any(branch(p) for p in err["loc"])

    err = sorted(e.errors(), key=rank)[0]
    owner: type[BaseModel] = root
    loc: list[str | int] = []
    for p in err["loc"]:
        if (name := model_of(p)) is not None:
            owner = _MODELS[name]
        elif not branch(p):
            loc.append(p)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = [k for k in owner.model_fields if k not in ("base_dir", "path")]
        close = difflib.get_close_matches(str(loc[-1]), known, 1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    return tuple(loc), msg


# ----- resolving ----------------------------------------------------------------------------


def _resolve(suite: Suite, lines: dict[tuple[str | int, ...], int]) -> ResolvedSuite:
    file = str(suite.path) if suite.path is not None else f"<suite {suite.name}>"
    base = suite.base_dir or Path.cwd()

    def at(*loc: str | int) -> str:
        return _where(file, lines, loc)

    try:
        SamplingParams.model_validate(suite.params)
    except ValidationError as e:
        loc, msg = _explain(e, SamplingParams)
        raise ConfigError(f"{at('params', *loc)} params.{'.'.join(map(str, loc))}: {msg}"
                          ) from None

    models = [m if isinstance(m, ModelConfig) else ModelConfig(uri=m) for m in suite.models]
    for i, m in enumerate(models):
        _check_model(m.uri, at("models", i))
    if not models:  # a target that needs no model (a retriever, a rule-based pipeline)
        models = [ModelConfig(uri=NO_MODEL)]
    prompts = [_prompt(p, base, at("prompts", i)) for i, p in enumerate(suite.prompts)]
    _unique([p.name for p in prompts], "prompt", at("prompts"))
    _unique([m.uri for m in models], "model", at("models"))
    metrics = _metrics(suite, at)
    cases = _cases(suite, base, file, lines, prompts)
    target = _target(suite.target, base, at("target")) if suite.target is not None else None
    config = {
        "name": suite.name, "description": suite.description,
        "models": [m.model_dump() for m in models],
        "prompts": [{"name": p.name, "version": p.version,
                     "path": str(p.file.path) if p.file and p.file.path else None,
                     "user": p.user, "system": p.system, "text": p.text} for p in prompts],
        "params": suite.params, "epochs": suite.epochs, "seed": suite.seed,
        "concurrency": suite.concurrency,
        "metrics": [{"key": m.key, **m.config.model_dump(), **m.config.options}
                    for m in metrics],
        "slices": suite.slices,
        "target": {"name": target.name, "fingerprint": target.fingerprint} if target else None,
        "cases": [c.model_dump(exclude_none=True) for c in cases],
    }
    # Concurrency changes nothing in the results, so it is not part of the identity.
    ident = {k: v for k, v in config.items() if k not in ("concurrency", "description")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return ResolvedSuite(suite=suite, models=models, prompts=prompts, cases=cases,
                         metrics=metrics, params=dict(suite.params), target=target,
                         config=config, hash=digest[:16])


def _check_model(uri: str, where: str) -> None:
    """An unknown model fails at load, not on every sample; nothing is loaded or assembled
    here (resolving some aliases writes their weights out)."""
    from fmstack.models.registry import BUILTIN_ALIASES, backends, user_aliases

    backend, sep, target = uri.partition(":")
    if uri in BUILTIN_ALIASES or uri in user_aliases() or (sep and target
                                                            and backend in backends()):
        return
    names = ", ".join(sorted({*BUILTIN_ALIASES, *user_aliases()}))
    raise ConfigError(f"{where} unknown model {uri!r}: use an alias ({names}) or a URI "
                      f"backend:target with backend one of {', '.join(sorted(backends()))}")


def _unique(names: list[str], what: str, where: str) -> None:
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where} {what} {dup!r} appears twice")


def _prompt(entry: str | InlinePromptConfig | PromptFile, base: Path, where: str) -> SuitePrompt:
    if isinstance(entry, PromptFile):
        return _file_prompt(entry)
    if isinstance(entry, InlinePromptConfig):
        required: set[str] = set()
        for role, source in (("user", entry.user), ("system", entry.system),
                             ("text", entry.text)):
            if source is not None:
                required |= _variables(source, f"{where} inline prompt {entry.name}: {role}")
        content = json.dumps([entry.system, entry.user, entry.text])
        return SuitePrompt(name=entry.name, required=sorted(required), user=entry.user,
                           system=entry.system, text=entry.text,
                           version=hashlib.sha256(content.encode()).hexdigest()[:12])
    from fmstack.prompts.library import PromptLibrary

    local = base / entry
    try:
        if local.suffix == ".prompt" or local.exists():
            return _file_prompt(PromptLibrary().get(str(local)))
        return _file_prompt(PromptLibrary().get(entry))
    except PromptError as e:
        raise ConfigError(f"{where} {e}") from None


def _variables(source: str, what: str) -> set[str]:
    try:
        return set(meta.find_undeclared_variables(_ENV.parse(source)))
    except TemplateSyntaxError as e:
        raise ConfigError(f"{what}: Jinja syntax error: {e.message}") from None


def _target(entry: str | Callable[..., Any], base: Path, where: str) -> Target:
    """Import ``file.py:function`` (relative to the suite) or ``module:function``."""
    import importlib
    import importlib.util

    if callable(entry):
        fn, name = entry, f"{entry.__module__}:{getattr(entry, '__qualname__', repr(entry))}"
    else:
        module_name, sep, attr = entry.rpartition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"{where} target {entry!r} must be 'file.py:function' or "
                              "'package.module:function'")
        name = entry
        try:
            if module_name.endswith(".py"):
                path = (base / module_name).resolve()
                if not path.is_file():
                    raise ConfigError(f"{where} target file {path} does not exist")
                spec = importlib.util.spec_from_file_location(
                    f"fmstack_target_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}", path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(module_name)
        except ConfigError:
            raise
        except Exception as e:  # the user's module failed to import: say where and why
            raise ConfigError(f"{where} cannot import target {entry!r}: "
                              f"{type(e).__name__}: {e}") from None
        found = getattr(module, attr, None)
        if not callable(found):
            raise ConfigError(f"{where} target {entry!r}: {module_name} has no function {attr!r}")
        fn = found
    given = getattr(fn, "fingerprint", None)
    if isinstance(given, str):  # a callable object that knows what its output depends on
        return Target(name=name, fn=fn, fingerprint=given)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # a builtin or a lambda typed in a REPL: identity by name only
        source = name
    return Target(name=name, fn=fn, fingerprint=hashlib.sha256(source.encode()).hexdigest()[:12])


def _file_prompt(p: PromptFile) -> SuitePrompt:
    required = [k for k, spec in p.inputs.items() if spec.required]
    return SuitePrompt(name=p.name, version=p.version, required=required, file=p)


def _metrics(suite: Suite, at: Any) -> list[ResolvedMetric]:
    from fmstack.eval.metrics import get_metric

    out: list[ResolvedMetric] = []
    for i, entry in enumerate(suite.metrics):
        config = MetricConfig(name=entry) if isinstance(entry, str) else entry
        try:
            spec = get_metric(config.name)
        except ConfigError as e:
            raise ConfigError(f"{at('metrics', i)} {e}") from None
        params = inspect.signature(spec.fn).parameters
        allowed = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        unknown = sorted(set(config.options) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{at('metrics', i)} metric {config.name} has no option "
                              f"{', '.join(unknown)} (options: {known})")
        head = config.reference.split(".", 1)
        if head[0] not in ("expected", "vars", "metadata") or (head[0] != "expected"
                                                                 and len(head) == 1):
            raise ConfigError(f"{at('metrics', i)} metric {config.name}: reference "
                              f"{config.reference!r} must be expected, expected.KEY, vars.KEY "
                              "or metadata.KEY")
        if config.pass_at and suite.epochs < max(config.pass_at):
            raise ConfigError(f"{at('metrics', i)} metric {config.name}: pass_at "
                              f"{max(config.pass_at)} needs at least that many epochs "
                              f"(the suite has {suite.epochs})")
        out.append(ResolvedMetric(key=config.key, config=config, spec=spec))
    _unique([m.key for m in out], "metric", at("metrics"))
    return out


def _cases(suite: Suite, base: Path, file: str, lines: dict[tuple[str | int, ...], int],
           prompts: list[SuitePrompt]) -> list[Case]:
    if suite.cases is not None:
        rows = [(c, _where(file, lines, ("cases", i))) for i, c in enumerate(suite.cases)]
    else:
        assert suite.dataset is not None
        rows = _read_dataset(base / suite.dataset, _where(file, lines, ("dataset",)))
    if not rows:
        raise ConfigError(f"{_where(file, lines, ('dataset',))} the dataset has no cases")
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for index, (case, where) in enumerate(rows):
        case_id = str(case.id) if case.id is not None else str(index)
        if case_id in seen:
            raise ConfigError(f"{where} case id {case_id!r} is also used at {seen[case_id]}")
        seen[case_id] = where
        for prompt in prompts:
            missing = [v for v in prompt.required if v not in case.vars]
            if missing:
                raise ConfigError(f"{where} case {case_id}: prompt {prompt.name} needs variable "
                                  f"{', '.join(missing)} (case has: "
                                  f"{', '.join(case.vars) or 'none'})")
            if prompt.file is not None:
                mine = {k: v for k, v in case.vars.items() if k in prompt.file.inputs}
                try:
                    prompt.file.check_inputs(mine)
                except PromptError as e:
                    raise ConfigError(f"{where} case {case_id}: {e}") from None
            if case.turns and prompt.text is not None:
                raise ConfigError(f"{where} case {case_id} is a conversation (turns) but prompt "
                                  f"{prompt.name} is a raw text prompt; use a chat prompt")
        for n, turn in enumerate(case.turns or [], start=2):
            missing = sorted(_variables(turn.user, f"{where} case {case_id} turn {n}")
                             - set(case.vars))
            if missing:
                raise ConfigError(f"{where} case {case_id} turn {n} needs variable "
                                  f"{', '.join(missing)}")
        cases.append(case.model_copy(update={"id": case_id}))
    return cases


def _read_dataset(path: Path, where: str) -> list[tuple[Case, str]]:
    if not path.exists():
        raise ConfigError(f"{where} dataset file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".csv":
            return _read_csv(path)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    raise ConfigError(f"{where} dataset {path.name}: expected a .jsonl or .csv file")


def _row_case(raw: dict[str, Any], where: str) -> Case:
    vars_ = {k: v for k, v in raw.items() if k not in _CASE_KEYS}
    fields = {k: raw[k] for k in _CASE_KEYS if k in raw}
    if "vars" in fields or "vars" in vars_:
        # A row may also spell its variables as an explicit "vars" object.
        nested = vars_.pop("vars", {})
        if not isinstance(nested, dict):
            raise ConfigError(f"{where} 'vars' must be an object")
        vars_.update(nested)
    try:
        return Case.model_validate({**fields, "vars": vars_})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where} {loc}: {err['msg']}") from None


def _read_jsonl(path: Path) -> list[tuple[Case, str]]:
    out: list[tuple[Case, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}: (row {len(out) + 1})"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where} not valid JSON: {e.msg}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} a row must be a JSON object")
        out.append((_row_case(raw, where), where))
    return out


def _read_csv(path: Path) -> list[tuple[Case, str]]:
    out: list[tuple[Case, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            where = f"{path}:{reader.line_num}: (row {len(out) + 1})"
            meta_ = {k.removeprefix("metadata."): v for k, v in row.items()
                     if k and k.startswith("metadata.")}
            raw: dict[str, Any] = {k: v for k, v in row.items()
                                   if k and not k.startswith("metadata.")}
            if meta_:
                raw["metadata"] = meta_
            out.append((_row_case(raw, where), where))
    return out
