"""Prompt techniques as plain helpers over prompt files and the Model contract.

* ``select_examples``: few-shot examples chosen fixed (the first k), at random (seeded), or by
  embedding similarity to the input (nearest first).
* ``chain_of_thought`` / ``extract_answer``: append the packaged ``cot`` instruction to a
  request, and read the final answer line back out of the reply.
* ``self_critique``: draft, critique (``critique.prompt``), revise (``revise.prompt``), for a
  number of rounds; the critic may be another model.
* ``Chain``: a task decomposed into prompt steps, each on its own model, where a step's output
  becomes a variable of later steps.

Nothing here hides a prompt: the instructions live in prompt files under ``builtin/`` that a
user's file of the same name overrides, every request carries tags naming the prompt, its
version and the technique's step, and every model call is traced like any other.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from fmstack.errors import ConfigError, FmstackError
from fmstack.models.types import Completion, Message, Request
from fmstack.prompts.files import NAME_PATTERN, Example, PromptFile
from fmstack.prompts.library import PromptLibrary

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.models.embeddings import Embedder

Strategy = Literal["fixed", "random", "similar"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
# The critique prompt's reply when it finds nothing to fix; a user's critique.prompt that
# overrides the builtin one should keep this phrase for self_critique to stop early.
NO_ISSUES = "NO ISSUES"


# ----- few-shot selection -------------------------------------------------------------------


def inputs_text(inputs: Mapping[str, Any], fields: Sequence[str] | None = None) -> str:
    """The text an example's inputs are compared by: the values (of ``fields``, default all)
    one per line, strings as they are and anything else as JSON."""
    keys = list(fields) if fields is not None else list(inputs)
    return "\n".join(
        v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
        for v in (inputs[k] for k in keys if k in inputs)
    )


def select_examples(
    examples: Sequence[Example],
    inputs: Mapping[str, Any],
    k: int,
    strategy: Strategy = "fixed",
    seed: int = 0,
    embedder: Embedder | None = None,
    *,
    fields: Sequence[str] | None = None,
) -> list[Example]:
    """``k`` few-shot examples for a request with ``inputs``.

    ``fixed``: the first k. ``random``: k drawn without replacement by a generator seeded with
    ``seed`` (same seed, same pick). ``similar``: the k whose inputs are nearest to ``inputs`` by
    cosine similarity of their embeddings, nearest first (ties keep the pool's order);
    ``fields`` limits the comparison to some inputs (e.g. the question, not a shared instruction)
    and ``embedder`` defaults to the packaged MiniLM.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown few-shot strategy {strategy!r} (use {', '.join(STRATEGIES)})")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if k > len(examples):
        raise ConfigError(f"asked for k={k} examples but the pool has only {len(examples)}")
    pool = list(examples)
    if strategy == "fixed":
        return pool[:k]
    if strategy == "random":
        return random.Random(seed).sample(pool, k)
    scores = similarities(pool, inputs, embedder=embedder, fields=fields)
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))
    return [pool[i] for i in order[:k]]


def similarities(
    examples: Sequence[Example],
    inputs: Mapping[str, Any],
    *,
    embedder: Embedder | None = None,
    fields: Sequence[str] | None = None,
) -> list[float]:
    """Cosine similarity of each example's inputs to ``inputs``, in the pool's order."""
    if fields is not None:
        declared = set(inputs).union(*(ex.inputs for ex in examples))
        unknown = [f for f in fields if f not in declared]
        if unknown:
            raise ConfigError(f"fields {', '.join(unknown)} are not inputs of the examples")
    query = inputs_text(inputs, fields)
    if not query.strip():
        raise ConfigError("cannot rank examples by similarity to empty inputs")
    if embedder is None:
        embedder = _default_embedder()
    vectors = embedder.embed([query, *(inputs_text(ex.inputs, fields) for ex in examples)])
    return [float(s) for s in vectors[1:] @ vectors[0]]


_EMBEDDER: Embedder | None = None


def _default_embedder() -> Embedder:
    # Loading MiniLM takes seconds; one copy serves every selection in the process.
    global _EMBEDDER
    if _EMBEDDER is None:
        from fmstack.models.embeddings import load_embedder

        _EMBEDDER = load_embedder()
    return _EMBEDDER


# ----- chain-of-thought ---------------------------------------------------------------------


def chain_of_thought(
    request: Request, *, marker: str = "Answer:", library: PromptLibrary | None = None
) -> Request:
    """A copy of ``request`` asking for reasoning before a final line starting with
    ``marker``: the ``cot`` prompt is appended to the last user message (or, for a raw-text
    request, to the prompt). Tags name the cot prompt's version."""
    if request.params.response_format is not None:
        raise ConfigError(
            "chain-of-thought needs free-text output, but the request sets a "
            f"{request.params.response_format.type} response_format"
        )
    cot = (library or PromptLibrary()).get("cot")
    instruction = cot.messages({"marker": marker})[-1].content
    cot.record()
    tags = {**request.tags, "technique": "cot", "cot_version": cot.version}
    if request.messages is None:
        return request.model_copy(update={
            "prompt": f"{(request.prompt or '').rstrip()}\n\n{instruction}\n", "tags": tags})
    last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=None)
    if last_user is None:
        raise ConfigError("chain-of-thought needs a user message to add its instruction to")
    messages = list(request.messages)
    old = messages[last_user]
    messages[last_user] = Message(role="user", content=f"{old.content.rstrip()}\n\n{instruction}")
    return request.model_copy(update={"messages": messages, "tags": tags})


def extract_answer(text: str, marker: str = "Answer:") -> str | None:
    """What follows the last ``marker`` (case-insensitive) on its line, or on the next line
    when the marker ends its line, without markdown emphasis; None when there is no such
    answer. Usable as the ``extract`` of ``self_consistency``."""
    pattern = re.compile(rf"{re.escape(marker.strip())}[ \t*_]*\n?[ \t]*(.*)$",
                         re.IGNORECASE | re.MULTILINE)
    for found in reversed(pattern.findall(text)):
        answer = found.strip().strip("*_").strip()
        if answer:
            return str(answer)
    return None


# ----- self-critique and revision -----------------------------------------------------------


@dataclass
class Critique:
    """The draft, one critique per round, one revision per round that found issues."""

    draft: Completion
    critiques: list[Completion]
    revisions: list[Completion]
    # True when a critique answered NO_ISSUES, which ends the loop without a revision.
    stopped_early: bool = False

    @property
    def final(self) -> str:
        return (self.revisions[-1] if self.revisions else self.draft).text


def self_critique(
    model: Model,
    request: Request,
    rounds: int = 1,
    critic_model: Model | None = None,
    *,
    library: PromptLibrary | None = None,
    critique_params: Mapping[str, Any] | None = None,
) -> Critique:
    """Answer ``request``, then ``rounds`` times: ``critic_model`` (default ``model``)
    critiques the current answer with ``critique.prompt`` and ``model`` rewrites it with
    ``revise.prompt`` under the original request's sampling params. ``critique_params``
    override the critique prompt's own params."""
    if rounds < 1:
        raise ConfigError(f"self-critique needs rounds >= 1, got {rounds}")
    if request.params.n != 1:
        raise ConfigError(f"self-critique revises one answer: n must be 1, got {request.params.n}")
    library = library or PromptLibrary()
    critique_prompt, revise_prompt = library.get("critique"), library.get("revise")
    critic = critic_model or model
    task = _task_text(request)

    def tagged(r: Request, step: str) -> Request:
        return r.model_copy(update={"tags": {**r.tags, "technique": "self_critique",
                                             "step": step}})

    draft = model.complete(tagged(request, "draft"))
    answer = draft.text
    critiques: list[Completion] = []
    revisions: list[Completion] = []
    for n in range(1, rounds + 1):
        ask = critique_prompt.request({"task": task, "answer": answer},
                                      **dict(critique_params or {}))
        critique = critic.complete(tagged(ask, f"critique-{n}"))
        critiques.append(critique)
        if critique.text.strip().upper().startswith(NO_ISSUES):
            return Critique(draft, critiques, revisions, stopped_early=True)
        fix = revise_prompt.request({"task": task, "answer": answer, "critique": critique.text})
        # The revision is the answer to the original request, so it keeps that request's
        # params (length, temperature, output format) rather than the revise file's defaults.
        fix = fix.model_copy(update={"params": request.params})
        revision = model.complete(tagged(fix, f"revise-{n}"))
        revisions.append(revision)
        answer = revision.text
    return Critique(draft, critiques, revisions)


def _task_text(request: Request) -> str:
    if request.messages is None:
        return request.prompt or ""
    turns = [m for m in request.messages if m.role in ("system", "user")]
    if len(turns) == 1:
        return turns[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in request.messages)


# ----- chains -------------------------------------------------------------------------------


@dataclass
class Step:
    """One step of a Chain.

    ``vars`` maps the prompt's variables to names in the chain's scope (the chain inputs and
    the outputs of earlier steps); without it every declared variable is taken from the scope
    by its own name when there (else its default applies). ``raw=True`` sends the rendered
    sections as one plain-text prompt, for base models that have no chat template.
    """

    prompt: str | PromptFile
    output: str
    model: Model | None = None
    vars: Mapping[str, str] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    examples: list[Example] | None = None
    raw: bool = False


@dataclass
class StepResult:
    step: str  # the step's output name
    prompt: PromptFile
    request: Request
    completion: Completion
    value: Any  # parsed JSON when the prompt has an output schema, else the stripped text


@dataclass
class ChainResult:
    inputs: dict[str, Any]
    outputs: dict[str, Any]  # step output name -> value, in step order
    steps: list[StepResult]

    @property
    def output(self) -> Any:
        """The last step's value."""
        return self.steps[-1].value

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]


class Chain:
    """Steps run in order; each request is tagged {prompt, prompt_version, chain, step}.

    Everything that can be checked without running a model is checked at construction (unknown
    prompts, variables the prompt does not declare, duplicate output names, steps without a
    model) and at the start of ``run`` (missing or unused chain inputs).
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        *,
        model: Model | None = None,
        library: PromptLibrary | None = None,
    ) -> None:
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"invalid chain name {name!r} (lowercase letters, digits, '_', "
                              "'.', '-')")
        if not steps:
            raise ConfigError(f"chain {name} has no steps")
        self.name = name
        self.steps = list(steps)
        lib = library or PromptLibrary()
        self.prompts: list[PromptFile] = []
        self.models: list[Model] = []
        self.bindings: list[dict[str, str]] = []  # per step: prompt variable -> scope name
        produced: dict[str, int] = {}
        for i, step in enumerate(self.steps, start=1):
            label = f"chain {name} step {i} ({step.output})"
            prompt = step.prompt if isinstance(step.prompt, PromptFile) else lib.get(step.prompt)
            if step.output in produced:
                raise ConfigError(f"{label}: output name {step.output!r} is already the output "
                                  f"of step {produced[step.output]}")
            if step.vars is not None:
                unknown = sorted(set(step.vars) - set(prompt.inputs))
                if unknown:
                    raise ConfigError(f"{label}: prompt {prompt.name} has no variable "
                                      f"{', '.join(unknown)} (declared: "
                                      f"{', '.join(prompt.inputs) or 'none'})")
                binding = dict(step.vars)
            else:
                binding = {v: v for v in prompt.inputs}
            chosen = step.model or model
            if chosen is None:
                raise ConfigError(f"{label}: no model (give the step or the chain one)")
            produced[step.output] = i
            self.prompts.append(prompt)
            self.models.append(chosen)
            self.bindings.append(binding)
        for i, binding in enumerate(self.bindings, start=1):
            later = sorted(src for src in binding.values() if produced.get(src, 0) >= i)
            if later:
                src = later[0]
                raise ConfigError(f"chain {name} step {i} ({self.steps[i - 1].output}) reads "
                                  f"{src!r}, which step {produced[src]} produces: a step reads "
                                  "only chain inputs and earlier outputs")

    @property
    def inputs(self) -> dict[str, bool]:
        """The chain inputs the steps read, mapped to whether one is required."""
        needed: dict[str, bool] = {}
        produced: set[str] = set()
        for step, prompt, binding in zip(self.steps, self.prompts, self.bindings, strict=True):
            for var, source in binding.items():
                if source not in produced:
                    required = prompt.inputs[var].required or step.vars is not None
                    needed[source] = needed.get(source, False) or required
            produced.add(step.output)
        return needed

    def run(self, inputs: Mapping[str, Any] | None = None) -> ChainResult:
        """Run every step in order and return all their completions and values."""
        given = dict(inputs or {})
        outputs = {step.output for step in self.steps}
        clash = sorted(set(given) & outputs)
        if clash:
            raise ConfigError(f"chain {self.name}: input {', '.join(clash)} is also a step's "
                              "output name")
        wanted = self.inputs
        missing = [k for k, required in wanted.items() if required and k not in given]
        if missing:
            raise ConfigError(f"chain {self.name}: missing input {', '.join(missing)}")
        unused = sorted(set(given) - set(wanted))
        if unused:
            raise ConfigError(f"chain {self.name}: unused input {', '.join(unused)} (the steps "
                              f"read: {', '.join(wanted) or 'nothing'})")
        scope: dict[str, Any] = dict(given)
        results: list[StepResult] = []
        for i, (step, prompt, model, binding) in enumerate(
            zip(self.steps, self.prompts, self.models, self.bindings, strict=True), start=1
        ):
            vars = {var: scope[src] for var, src in binding.items() if src in scope}
            try:
                request = self._request(step, prompt, vars)
                completion = model.complete(request)
            except FmstackError as e:
                raise type(e)(f"chain {self.name} step {i} ({step.output}): {e}") from e
            value = completion.parsed if request.params.response_format else completion.text.strip()
            scope[step.output] = value
            results.append(StepResult(step.output, prompt, request, completion, value))
        return ChainResult(given, {r.step: r.value for r in results}, results)

    def _request(self, step: Step, prompt: PromptFile, vars: dict[str, Any]) -> Request:
        request = prompt.request(vars, examples=step.examples, **dict(step.params))
        tags = {**request.tags, "chain": self.name, "step": step.output}
        if step.raw:
            text = "\n\n".join(m.content for m in request.messages or [])
            return Request(prompt=text, params=request.params, tags=tags)
        return request.model_copy(update={"tags": tags})
