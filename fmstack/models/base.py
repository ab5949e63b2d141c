"""The Model contract every backend implements.

A backend is a small class: capability flags plus a handful of ``_``-methods that do the work
(``_generate``, ``_stream``, ``_score``, ``tokenize``, ``detokenize``, ``render_chat``). The
public methods here wrap them with what every backend must share, so no backend can forget it:

* requests are checked against the capabilities up front (a backend never silently ignores a
  parameter it cannot honour: it raises ``CapabilityError``);
* structured outputs are parsed and validated;
* cost is computed from the price table;
* every call is written to the trace store, including calls that fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from fmstack.errors import CapabilityError, ConfigError, FmstackError, OutputValidationError
from fmstack.models import structured
from fmstack.models.pricing import cost_of
from fmstack.models.types import Completion, Delta, Message, Request, Scored

if TYPE_CHECKING:
    from fmstack.store.traces import TraceStore


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Checked before any work starts."""

    chat: bool = True
    completion: bool = True  # raw-text prompts without a chat template
    streaming: bool = True
    logprobs: bool = True
    max_top_logprobs: int = 20
    score: bool = True  # teacher-forced logprobs of given text
    tokenize: bool = True
    batch: bool = False  # True when a list of requests is decoded together, not one by one
    # True when calls from many threads are decoded together too (a continuous-batching engine)
    continuous: bool = False
    response_formats: frozenset[str] = field(
        default_factory=lambda: frozenset({"json_schema", "regex", "choice"})
    )
    local: bool = True  # runs in this process, no network

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.__dict__)
        out["response_formats"] = sorted(self.response_formats)
        return out


class Model:
    """Base class of all backends. Use ``fmstack.models.load_model`` to get one."""

    backend: ClassVar[str] = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, name: str, *, tracer: TraceStore | None = None) -> None:
        self.name = name
        self.tracer = tracer

    # ----- public API ---------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Run a batch of requests; one Completion per request, in order."""
        requests = list(requests)
        for r in requests:
            self._check(r)
        started = time.perf_counter()
        try:
            completions = self._generate(requests)
        except Exception as e:
            for r in requests:
                self._trace(r, None, e, time.perf_counter() - started)
            raise
        for request, completion in zip(requests, completions, strict=True):
            self._finish(request, completion, started)
        return completions

    def complete(self, request: Request) -> Completion:
        """Run one request."""
        return self.generate([request])[0]

    def stream(self, request: Request) -> Iterator[Delta]:
        """Yield text pieces as they are decoded; the last Delta carries the Completion."""
        self._check(request)
        if not self.capabilities.streaming:
            raise CapabilityError(f"backend {self.backend} cannot stream")
        if request.params.n != 1:
            raise ConfigError("streaming supports n=1 only")
        started = time.perf_counter()
        finished = False
        try:
            for delta in self._stream(request):
                if delta.completion is not None:
                    finished = True
                    self._finish(request, delta.completion, started, kind="stream")
                yield delta
        except GeneratorExit:
            # The caller stopped reading (a client that went away): traced as unfinished.
            if not finished:
                stopped = FmstackError("cancelled: the stream was closed before it finished")
                self._trace(request, None, stopped, time.perf_counter() - started, kind="stream")
            raise
        except Exception as e:
            self._trace(request, None, e, time.perf_counter() - started, kind="stream")
            raise

    def score(self, texts: Sequence[str], *, contexts: Sequence[str] | None = None) -> list[Scored]:
        """Teacher-forced per-token logprobs of each text, optionally conditioned on a context
        (the context's own tokens are not scored). Texts are raw: no chat template."""
        if not self.capabilities.score:
            raise CapabilityError(f"backend {self.backend} cannot score text (no prompt logprobs)")
        texts = list(texts)
        if contexts is not None and len(contexts) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(contexts)} contexts")
        if any(t == "" for t in texts):
            raise ConfigError("cannot score an empty text")
        if contexts is not None and any(c == "" for c in contexts):
            # Backends disagree on what "" would mean (BOS or nothing): make the caller say.
            raise ConfigError("empty context: pass contexts=None to condition on BOS only")
        return self._score(texts, list(contexts) if contexts is not None else None)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``. ``special=True`` parses special tokens such as ``<|im_end|>``
        and adds BOS where the model uses one (what the backend does to a rendered prompt)."""
        raise CapabilityError(f"backend {self.backend} cannot tokenize")

    def detokenize(self, ids: Sequence[int], *, special: bool = False) -> str:
        """The text of ``ids``; ``special=True`` also writes control tokens (``<|im_end|>``)."""
        raise CapabilityError(f"backend {self.backend} cannot detokenize")

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The exact text the model sees for a chat: its chat template applied, ready for the
        assistant's turn."""
        raise CapabilityError(f"backend {self.backend} does not expose its chat template")

    @property
    def context_length(self) -> int | None:
        """Tokens the model can attend to (prompt plus output), when known."""
        return None

    def close(self) -> None:
        """Free the model's resources. Safe to call twice."""

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # ----- what a backend implements ------------------------------------------------------

    def _generate(self, requests: list[Request]) -> list[Completion]:
        raise NotImplementedError

    def _stream(self, request: Request) -> Iterator[Delta]:
        raise NotImplementedError

    def _score(self, texts: list[str], contexts: list[str] | None) -> list[Scored]:
        raise NotImplementedError

    # ----- shared machinery ---------------------------------------------------------------

    def _check(self, request: Request) -> None:
        caps, p = self.capabilities, request.params
        if request.is_chat and not caps.chat:
            raise CapabilityError(f"backend {self.backend} does not support chat messages")
        if not request.is_chat and not caps.completion:
            raise CapabilityError(
                f"backend {self.backend} does not support raw-text prompts; send messages"
            )
        if p.logprobs and not caps.logprobs:
            raise CapabilityError(f"backend {self.backend} cannot return logprobs")
        if p.top_logprobs > caps.max_top_logprobs:
            raise CapabilityError(
                f"backend {self.backend} returns at most {caps.max_top_logprobs} top_logprobs"
            )
        fmt = p.response_format
        if fmt is not None and fmt.type not in caps.response_formats:
            can = ", ".join(sorted(caps.response_formats)) or "none"
            raise CapabilityError(
                f"backend {self.backend} cannot enforce {fmt.type} output while decoding "
                f"(it can enforce: {can})"
            )

    def _finish(
        self, request: Request, completion: Completion, started: float, kind: str = "generate"
    ) -> None:
        fmt = request.params.response_format
        error: Exception | None = None
        if fmt is not None:
            try:
                for choice in completion.choices:
                    choice.parsed = structured.parse(fmt, choice.text, choice.finish_reason)
            except Exception as e:  # record the bad output before surfacing the error
                error = e
                if isinstance(e, OutputValidationError):
                    e.completion = completion
        if completion.timings.total == 0.0:
            completion.timings.total = time.perf_counter() - started
        completion.cost = cost_of([completion.model, self.name], completion.usage)
        self._trace(request, completion, error, completion.timings.total, kind=kind)
        if error is not None:
            raise error

    def _trace(
        self,
        request: Request,
        completion: Completion | None,
        error: Exception | None,
        secs: float,
        kind: str = "generate",
    ) -> None:
        if self.tracer is None:
            return
        trace_id = self.tracer.log_call(
            model=self.name,
            backend=self.backend,
            request=request,
            completion=completion,
            error=error,
            seconds=secs,
            kind=kind,
        )
        if completion is not None:
            completion.trace_id = trace_id
