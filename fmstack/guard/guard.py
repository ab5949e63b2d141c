"""A Guard applies an input policy to what goes into a model and an output policy to what comes
out, and records what it did. It is configured by a policy file:

.. code-block:: yaml

    input:                      # user and tool messages (system messages are trusted)
      - {scanner: unicode, action: block}
      - {scanner: injection, action: block, threshold: 0.5}
      - {scanner: pii, action: redact}
    output:
      - {scanner: canary, action: block}     # plants a canary in the system prompt
      - {scanner: secrets, action: redact}
    vault: true       # redactions are reversible: the model sees <EMAIL_1>, the user the address
    reask: 1          # an output a rule blocks is sent back once with the reason, then blocked
    spotlight: datamark   # tool output is marked as data (delimit | datamark | encode)
    max_chars: 1000000

``load_policy("default")`` loads a built-in policy (``fmstack/guard/policies/*.yaml``);
``load_policy("my.yaml")`` a file. ``guarded(model, guard)`` returns a model whose ``generate``
and ``stream`` go through the guard; ``fmstack serve`` and RAG use the same Guard.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fmstack.errors import ConfigError
from fmstack.guard.core import (
    DEFAULT_MAX_CHARS,
    Finding,
    GuardBlocked,
    Policy,
    Verdict,
    rules_from_config,
)
from fmstack.guard.output import CanaryScanner
from fmstack.guard.spotlight import Spotlight
from fmstack.models.base import Model
from fmstack.models.types import Completion, Delta, Message, Request

if TYPE_CHECKING:
    from fmstack.store.traces import TraceStore

POLICY_DIR = Path(__file__).parent / "policies"
# Roles whose text comes from outside the application and is scanned on the way in. System
# messages are the application's own; earlier assistant turns were scanned as outputs.
SCANNED_ROLES = ("user", "tool")
# Characters a guarded stream holds back, so that a match still being written (a key, an
# e-mail address) is redacted or blocked before any of it leaves.
STREAM_HOLDBACK = 96
_POLICY_KEYS = {"input", "output", "vault", "reask", "max_chars", "spotlight", "description"}


@dataclass
class Screened:
    """A request after the input policy: what to send the model, and what was done."""

    request: Request
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    vault: Any = None  # fmstack.guard.vault.Vault when the policy keeps redactions reversible

    def show(self, text: str) -> str:
        """An answer as the user sees it: vault placeholders put back."""
        return self.vault.restore(text) if self.vault is not None else text


@dataclass
class Guard:
    """An input policy, an output policy and what goes with them: a vault (reversible
    redaction), a re-ask budget for blocked answers, spotlighting of tool output, and the canary
    its output policy plants (one token per Guard, so a server's routes that share a policy file
    share it). ``screen`` a request, send ``Screened.request``, then ``answer`` (or stream
    through ``OutputStream``)."""

    input: Policy = field(default_factory=Policy)
    output: Policy = field(default_factory=Policy)
    vault: bool = False
    reask: int = 0
    name: str = "custom"
    # Tool output (role "tool") is transformed so the model can tell it is data (spotlight.py).
    spotlight: Spotlight | None = None

    def __post_init__(self) -> None:
        if self.reask < 0:
            raise ConfigError(f"reask must be 0 or more, got {self.reask}")

    @property
    def canary(self) -> CanaryScanner | None:
        for rule in self.output.rules:
            if isinstance(rule.scanner, CanaryScanner):
                return rule.scanner
        return None

    # ----- input --------------------------------------------------------------------------

    def screen(self, request: Request) -> Screened:
        """Apply the input policy to the request's untrusted text; plant the canary. Raises
        GuardBlocked (with ``.record``) when a rule blocks."""
        vault = _new_vault() if self.vault else None
        policy = self.input if vault is None else dataclasses.replace(self.input, redactor=vault)
        verdicts: list[dict[str, Any]] = []

        def check(text: str, where: str) -> str:
            verdict = policy.check(text)
            if verdict.findings:
                verdicts.append({"where": where, **verdict.to_json()})
            if not verdict.ok:
                blocked = GuardBlocked(verdict, where="input")
                blocked.record = self.record(verdicts, blocked=blocked)
                raise blocked
            return verdict.text

        if request.prompt is not None:
            new = request.model_copy(update={"prompt": check(request.prompt, "prompt")})
        else:
            messages = [
                m.model_copy(update={"content": check(m.content, f"messages[{i}]")})
                if m.role in SCANNED_ROLES else m
                for i, m in enumerate(request.messages or [])
            ]
            new = self.plant(self._spotlit(request.model_copy(update={"messages": messages})))
        return Screened(new, verdicts, vault)

    def _spotlit(self, request: Request) -> Request:
        messages = request.messages or []
        if self.spotlight is None or not any(m.role == "tool" for m in messages):
            return request
        spot = self.spotlight
        marked = [m.model_copy(update={"content": spot.apply(m.content)}) if m.role == "tool"
                  else m for m in messages]
        return request.model_copy(update={"messages": _with_system_line(marked,
                                                                        spot.instructions())})

    def plant(self, request: Request) -> Request:
        """``request`` with the canary line added to its system prompt (a chat request when
        the output policy has a canary rule; otherwise unchanged)."""
        canary = self.canary
        if canary is None or request.messages is None:
            return request
        return request.model_copy(update={"messages": self._planted(request.messages)})

    def _planted(self, messages: list[Message]) -> list[Message]:
        assert self.canary is not None
        return _with_system_line(messages, self.canary.instruction())

    # ----- output -------------------------------------------------------------------------

    def screen_traced(self, request: Request, model: Model) -> Screened:
        """``screen``, tracing a blocked request in ``model``'s trace store (the model never
        sees it, so nothing else would)."""
        started = time.perf_counter()
        try:
            return self.screen(request)
        except GuardBlocked as e:
            if model.tracer is not None:
                model.tracer.log_call(model=model.name, backend=model.backend, request=request,
                                      completion=None, error=e,
                                      seconds=time.perf_counter() - started, guard=e.record)
            raise

    def check_output(self, text: str) -> Verdict:
        """Apply the output policy to one answer (GuardBlocked is the caller's to raise)."""
        return self.output.check(text)

    def answer(self, s: Screened, completion: Completion,
               retry: Callable[[Request], Completion] | None = None,
               tracer: TraceStore | None = None) -> Completion:
        """Check every choice of ``completion``; with ``retry`` (the model's ``complete``), a
        blocked chat answer is re-asked up to ``reask`` times. Redactions are applied, vault
        placeholders restored, ``completion.guard`` set and written to the trace. Raises
        GuardBlocked when an answer stays blocked."""
        outputs: list[dict[str, Any]] = []
        reasks = 0
        for i, choice in enumerate(completion.choices):
            verdict = self.check_output(choice.text)
            while (not verdict.ok and retry is not None and reasks < self.reask
                   and s.request.is_chat):
                reasks += 1
                outputs.append({"where": f"choices[{i}]", "reask": reasks, **verdict.to_json()})
                again = retry(_reask_request(s.request, choice.text, verdict))
                _set_guard(tracer, again, self.record(s.verdicts, outputs, reasks))
                choice = again.choices[0].model_copy(update={"index": i})
                verdict = self.check_output(choice.text)
            if not verdict.ok:
                self.block_output(s, verdict, outputs, reasks, completion.trace_id, tracer)
            if verdict.findings:
                outputs.append({"where": f"choices[{i}]", **verdict.to_json()})
            completion.choices[i] = choice.model_copy(update={"text": s.show(verdict.text)})
        completion.guard = self.record(s.verdicts, outputs, reasks)
        _set_guard(tracer, completion, completion.guard)
        return completion

    def block_output(self, s: Screened, verdict: Verdict, outputs: list[dict[str, Any]],
                     reasks: int, trace_id: int | None, tracer: TraceStore | None) -> None:
        """Raise GuardBlocked for an answer, recording it on the call's trace."""
        blocked = GuardBlocked(verdict, where="output")
        outputs = [*outputs, {"where": "output", **verdict.to_json()}]
        blocked.record = self.record(s.verdicts, outputs, reasks, blocked=blocked)
        if trace_id is not None and tracer is not None:
            tracer.set_guard(trace_id, blocked.record)
        raise blocked

    def record(self, input_verdicts: list[dict[str, Any]],
               output_verdicts: Sequence[dict[str, Any]] = (), reasks: int = 0,
               blocked: GuardBlocked | None = None) -> dict[str, Any]:
        """What the guard did on one call, as stored in the trace and returned to callers."""
        return {
            "policy": self.name,
            "input": input_verdicts,
            "output": list(output_verdicts),
            "reasks": reasks,
            "blocked": {"where": blocked.where, "reason": blocked.reason, "detail": str(blocked)}
            if blocked else None,
        }


def load_policy(name_or_path: str | Path) -> Guard:
    """A Guard from a built-in policy name (``default``, ``strict``, ``audit``) or a YAML file."""
    path = Path(name_or_path)
    builtin = POLICY_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        if not builtin.is_file():
            names = ", ".join(sorted(p.stem for p in POLICY_DIR.glob("*.yaml")))
            raise ConfigError(f"no guard policy {str(name_or_path)!r}: not a file, and not a "
                              f"built-in policy ({names})")
        path = builtin
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read guard policy {path}: {e}") from e
    return guard_from_config(data, name=path.stem, where=str(path))


def guard_from_config(data: Any, *, name: str = "custom", where: str = "policy") -> Guard:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a guard policy is a mapping with input/output rule lists")
    unknown = set(data) - _POLICY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(expected {', '.join(sorted(_POLICY_KEYS))})")
    max_chars = data.get("max_chars", DEFAULT_MAX_CHARS)
    if not isinstance(max_chars, int) or max_chars <= 0:
        raise ConfigError(f"{where}: max_chars must be a positive integer, got {max_chars!r}")
    reask = data.get("reask", 0)
    if not isinstance(reask, int) or reask < 0:
        raise ConfigError(f"{where}: reask must be a non-negative integer, got {reask!r}")
    policies = {}
    for side in ("input", "output"):
        entries = data.get(side) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: {side} must be a list of rules")
        policies[side] = Policy(rules_from_config(entries, f"{where}: {side}"),
                                max_chars=max_chars)
    spot = data.get("spotlight")
    if spot is not None and not isinstance(spot, str | dict):
        raise ConfigError(f"{where}: spotlight must be a mode (delimit, datamark, encode) or "
                          f"a mapping of Spotlight options")
    spotlight = None
    if spot is not None:
        options = {"mode": spot} if isinstance(spot, str) else spot
        try:
            spotlight = Spotlight(**{"source": "tool_output", **options})
        except TypeError as e:
            raise ConfigError(f"{where}: spotlight: {e}") from e
    return Guard(policies["input"], policies["output"], vault=bool(data.get("vault", False)),
                 reask=reask, name=name, spotlight=spotlight)


def _new_vault() -> Any:
    from fmstack.guard.vault import Vault

    return Vault()


class GuardedModel:
    """A model whose calls go through a Guard. It has the Model's public methods; ``generate``
    and ``stream`` raise GuardBlocked when the guard blocks (the call is traced with the
    reason), and every Completion carries ``guard``: what was found and done."""

    def __init__(self, model: Model, guard: Guard) -> None:
        self.model = model
        self.guard = guard
        self.name = model.name
        self.capabilities = model.capabilities

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        screened = [self.guard.screen_traced(r, self.model) for r in requests]
        completions = self.model.generate([s.request for s in screened])
        return [self.guard.answer(s, c, self.model.complete, self.model.tracer)
                for s, c in zip(screened, completions, strict=True)]

    def complete(self, request: Request) -> Completion:
        return self.generate([request])[0]

    def stream(self, request: Request) -> Iterator[Delta]:
        """Stream through the output policy (see ``OutputStream``)."""
        s = self.guard.screen_traced(request, self.model)
        out = OutputStream(self.guard, s, self.model.tracer)
        for delta in self.model.stream(s.request):
            checked = out.check(delta)
            if checked is not None:
                yield checked

    # The rest of the Model surface, unguarded: these produce no text for a user.
    def score(self, texts: Sequence[str], *, contexts: Sequence[str] | None = None) -> Any:
        return self.model.score(texts, contexts=contexts)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.model.tokenize(text, special=special)

    def render_chat(self, messages: Sequence[Message]) -> str:
        return self.model.render_chat(messages)

    def close(self) -> None:
        self.model.close()


class OutputStream:
    """The output policy over a stream: text is released ``STREAM_HOLDBACK`` characters behind
    the model, so a redaction or a block lands before the text leaves. Every feed re-checks
    the whole answer so far (cheap for the pattern scanners; keep model-based scanners out of
    streamed output policies). A redaction that would reach text already sent blocks the
    stream instead: it fails closed. Streams are not re-asked."""

    def __init__(self, guard: Guard, screened: Screened, tracer: TraceStore | None = None,
                 ) -> None:
        self.guard, self.screened, self.tracer = guard, screened, tracer
        self.raw = ""
        self.sent = ""

    def check(self, delta: Delta) -> Delta | None:
        """The model's next delta as it may be sent: its text held back or redacted (None when
        nothing can be sent yet); the last one carries the checked Completion."""
        if delta.completion is None:
            text = self.feed(delta.text)
            return delta.model_copy(update={"text": text}) if text else None
        text, completion = self._finish(delta.text, delta.completion)
        return delta.model_copy(update={"text": text, "completion": completion})

    def feed(self, text: str) -> str:
        """Take the model's next piece; return the text that may be sent now."""
        self.raw += text
        verdict = self.guard.check_output(self.raw)
        if not verdict.ok:
            self.guard.block_output(self.screened, verdict, [], 0, None, self.tracer)
        shown = self.screened.show(verdict.text)
        return self._release(shown[: max(len(self.sent), len(shown) - STREAM_HOLDBACK)])

    def _finish(self, text: str, completion: Completion) -> tuple[str, Completion]:
        """The last piece and the Completion: the rest of the (checked) answer, and the
        Completion with its guard record."""
        self.raw += text
        checked = self.guard.answer(self.screened, completion, None, self.tracer)
        return self._release(checked.text, completion.trace_id), checked

    def _release(self, shown: str, trace_id: int | None = None) -> str:
        if not shown.startswith(self.sent):
            late = Finding("stream", "guard_error", 0, len(self.raw), action="block",
                           detail="a redaction reached text already streamed; stream stopped")
            self.guard.block_output(self.screened, Verdict(self.raw, [late], late), [], 0,
                                    trace_id, self.tracer)
        new, self.sent = shown[len(self.sent):], shown
        return new


def guarded(model: Model, guard: Guard | str | Path) -> GuardedModel:
    """``model`` with ``guard`` (a Guard, or a policy name or file) on every call."""
    return GuardedModel(model, guard if isinstance(guard, Guard) else load_policy(guard))


def _with_system_line(messages: list[Message], line: str) -> list[Message]:
    """``messages`` with ``line`` appended to the system message (one is added if none)."""
    if messages and messages[0].role == "system":
        first = messages[0]
        return [first.model_copy(update={"content": f"{first.content}\n\n{line}"}),
                *messages[1:]]
    return [Message(role="system", content=line), *messages]


def _set_guard(tracer: TraceStore | None, completion: Completion,
               record: dict[str, Any]) -> None:
    if tracer is not None and completion.trace_id is not None:
        tracer.set_guard(completion.trace_id, record)


def _reask_request(request: Request, answer: str, verdict: Verdict) -> Request:
    blocked = verdict.blocked
    why = blocked.detail if blocked is not None and blocked.detail else "it broke a rule"
    messages = [*(request.messages or []), Message(role="assistant", content=answer),
                Message(role="user", content=f"Your answer was rejected: {why}. "
                                             "Answer the original request again, correctly.")]
    return request.model_copy(update={"messages": messages})
