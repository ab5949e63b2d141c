"""Grounded answers: a question plus retrieved chunks in, an answer citing its sources out.

The sources are numbered ``1..N`` in rank order and rendered by a prompt file (builtin
``rag-answer``) inside ``<source id="n">`` tags: retrieved text is untrusted data, so any
closing tag inside it is neutralised, and the system message says not to follow instructions
found there. The answer cites sources as ``[n]``; ``Answer.cited`` holds the chunks it cited
(numbers outside 1..N are dropped and listed in ``Answer.invalid_citations``).

The "no relevant context" path: with no sources (nothing retrieved, or nothing above
``min_score``) the model is not called and the answer says so; a model that replies with the
prompt's refusal sentence gives ``grounded=False`` too. Sources that would overflow the
context window are dropped from the end (lowest ranked first) and counted in ``dropped``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, FmstackError
from fmstack.rag.documents import Hit

if TYPE_CHECKING:
    from fmstack.guard.core import Policy
    from fmstack.guard.guard import Guard, Screened
    from fmstack.models.base import Model
    from fmstack.models.types import Completion, Request
    from fmstack.prompts.files import PromptFile

NO_ANSWER = "I don't know based on the provided sources."
NO_SOURCES = "I found nothing relevant to this question in the indexed documents."
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Answer:
    """A grounded answer. ``sources`` are the hits as numbered for the model (1-based);
    ``cited`` the ones the text cites, in order of first citation."""

    question: str
    text: str
    sources: list[Hit]
    cited: list[Hit] = field(default_factory=list)
    grounded: bool = True
    invalid_citations: list[int] = field(default_factory=list)
    dropped: int = 0  # sources left out to fit the context window
    # Retrieved chunks a guard left out (source, chunk id, reason, detail).
    blocked_sources: list[dict[str, Any]] = field(default_factory=list)
    completion: Completion | None = None

    @classmethod
    def from_text(cls, question: str, text: str, sources: list[Hit], *, dropped: int = 0,
                  completion: Completion | None = None) -> Answer:
        """The answer a model wrote over ``sources``: its citations resolved to chunks, and
        ``grounded`` False when it is the prompt's refusal sentence."""
        text = text.strip()
        numbers = citations(text)
        return cls(question, text, sources,
                   cited=[sources[n - 1] for n in numbers if 1 <= n <= len(sources)],
                   grounded=NO_ANSWER.rstrip(".").lower() not in text.lower(),
                   invalid_citations=[n for n in numbers if not 1 <= n <= len(sources)],
                   dropped=dropped, completion=completion)

    @property
    def trace_id(self) -> int | None:
        return self.completion.trace_id if self.completion is not None else None

    def __str__(self) -> str:
        lines = [self.text]
        if self.cited:
            lines.append("")
            lines += [f"[{self.sources.index(h) + 1}] {h.chunk.source}" for h in self.cited]
        return "\n".join(lines)


def citations(text: str) -> list[int]:
    """The source numbers cited as ``[n]`` or ``[n, m]``, in order of first appearance."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            n = int(part)
            if n not in seen:
                seen.append(n)
    return seen


def _untrusted(text: str) -> str:
    # A chunk must not be able to close its own <source> tag and pose as instructions.
    return re.sub(r"</?\s*source\b", lambda m: m.group(0).replace("<", "&lt;"), text,
                  flags=re.IGNORECASE)


def _source(n: int, hit: Hit) -> dict[str, Any]:
    title = hit.chunk.metadata.get("title") or hit.chunk.source
    return {"n": n, "title": _untrusted(str(title)).replace('"', "'"),
            "text": _untrusted(hit.chunk.text)}


@dataclass
class GroundedRequest:
    """A request over numbered sources: the hits that fit, and how many did not."""

    request: Request
    sources: list[Hit]
    dropped: int


def build_request(model: Model, question: str, hits: Sequence[Hit], *,
                  prompt: str | PromptFile = "rag-answer",
                  reserve_tokens: int | None = None, **params: Any) -> GroundedRequest:
    """The request for ``question`` over as many of ``hits`` as fit the model's context
    window, keeping room for the answer (``reserve_tokens``, default the prompt's
    ``max_tokens``)."""
    from fmstack.prompts.library import get_prompt

    if not question.strip():
        raise ConfigError("the question is empty")
    file = get_prompt(prompt)
    for name in ("question", "sources"):
        if name not in file.inputs:
            raise ConfigError(f"prompt {file.name} must declare a {name!r} input to answer "
                              "from sources")
    kept = list(hits)
    while True:
        request = file.request({"question": question,
                                "sources": [_source(i + 1, h) for i, h in enumerate(kept)]},
                               **params)
        window = model.context_length
        if window is None or not kept:  # a remote model: its server enforces the window
            return GroundedRequest(request, kept, len(hits) - len(kept))
        room = reserve_tokens if reserve_tokens is not None else request.params.max_tokens or 0
        assert request.messages is not None
        used = len(model.tokenize(model.render_chat(request.messages), special=True))
        if used + room <= window:
            return GroundedRequest(request, kept, len(hits) - len(kept))
        kept.pop()


def citation_pattern(n_sources: int) -> str:
    """A regex for an answer in which every sentence ends with citations of sources
    ``1..n_sources`` (``... [2][3].``), one to three sentences, or the refusal sentence."""
    numbers = "|".join(str(i) for i in range(1, n_sources + 1))
    claim = rf"[^\[\]\n.]{{1,120}} (\[({numbers})\])+\."
    refusal = NO_ANSWER.replace(".", r"\.")
    return rf"{refusal}|{claim}( {claim}){{0,2}}"


def answer(model: Model, question: str, hits: Sequence[Hit], *,
           prompt: str | PromptFile = "rag-answer", min_score: float | None = None,
           on_text: Callable[[str], None] | None = None, require_citations: bool = False,
           guard: Guard | None = None, **params: Any) -> Answer:
    """Answer ``question`` from ``hits`` (best first) with citations; see the module doc.
    ``on_text`` receives the answer's text as it streams. ``require_citations`` constrains
    decoding (``citation_pattern``) so that every sentence cites a source that exists, or the
    answer is the refusal: small models otherwise often answer without citing.

    ``guard`` (fmstack.guard): the question goes through its input policy (GuardBlocked if
    blocked); each retrieved chunk too, at query time, since retrieved text is where indirect
    injections hide: a chunk a rule blocks is left out (``Answer.blocked_sources``), a redacted
    one is used redacted; the answer goes through the output policy. All of it is recorded in
    the answer's trace (``guard``)."""
    usable = [h for h in hits if min_score is None or h.score >= min_score]
    screening: list[dict[str, Any]] = []
    blocked_sources: list[dict[str, Any]] = []
    vault = None
    if guard is not None:
        from fmstack.guard.guard import Screened
        from fmstack.models.types import Request as _Request

        asked = guard.screen_traced(_Request.chat(question), model)
        screening, vault = asked.verdicts, asked.vault
        # The sources share the question's vault, so one answer restores all placeholders.
        policy = guard.input if vault is None else dataclasses.replace(guard.input, redactor=vault)
        usable = _screen_sources(policy, usable, screening, blocked_sources)
    if not usable:
        if on_text is not None:
            on_text(NO_SOURCES)
        return Answer(question, NO_SOURCES, [], grounded=False)
    built = build_request(model, question, usable, prompt=prompt, **params)
    request, sources, dropped = built.request, built.sources, built.dropped
    if not sources:
        raise ConfigError("not even one source fits the model's context window with the "
                          "question; use smaller chunks or a model with a longer context")
    if require_citations:
        from fmstack.models.types import RegexFormat

        fmt = RegexFormat(pattern=citation_pattern(len(sources)))
        request.params = request.params.model_copy(update={"response_format": fmt})
    completion: Completion | None = None
    if guard is not None:
        completion = _guarded_call(guard, model, request, Screened(guard.plant(request),
                                                                   screening, vault), on_text)
    elif on_text is None:
        completion = model.complete(request)
    else:
        for delta in model.stream(request):
            if delta.text:
                on_text(delta.text)
            if delta.completion is not None:
                completion = delta.completion
    assert completion is not None
    result = Answer.from_text(question, completion.text, sources, dropped=dropped,
                              completion=completion)
    result.blocked_sources = blocked_sources
    return result


def _screen_sources(policy: Policy, hits: list[Hit], screening: list[dict[str, Any]],
                    blocked: list[dict[str, Any]]) -> list[Hit]:
    kept = []
    for hit in hits:
        verdict = policy.check(hit.chunk.text)
        where = f"source {hit.chunk.source}#{hit.chunk.id}"
        if verdict.findings:
            screening.append({"where": where, **verdict.to_json()})
        if not verdict.ok:
            assert verdict.blocked is not None
            blocked.append({"source": hit.chunk.source, "chunk": hit.chunk.id,
                            "reason": verdict.blocked.kind, "detail": verdict.blocked.detail})
            continue
        if verdict.text != hit.chunk.text:
            hit = dataclasses.replace(hit, chunk=dataclasses.replace(hit.chunk,
                                                                     text=verdict.text))
        kept.append(hit)
    return kept


def _guarded_call(guard: Guard, model: Model, request: Request, screened: Screened,
                  on_text: Callable[[str], None] | None) -> Completion:
    from fmstack.guard.guard import OutputStream

    if on_text is None:
        done = model.complete(screened.request)
        return guard.answer(screened, done, model.complete, model.tracer)
    out = OutputStream(guard, screened, model.tracer)
    completion: Completion | None = None
    for delta in model.stream(screened.request):
        checked = out.check(delta)
        if checked is not None:
            if checked.text:
                on_text(checked.text)
            completion = checked.completion or completion
    if completion is None:
        raise FmstackError("the model's stream ended without a completion")
    return completion
