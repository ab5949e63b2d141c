"""The ``engine`` backend: a GGUF model served by fmstack's batching engine.

``engine:/path/model.gguf`` (or ``load_model("smollm2", backend="engine")``-style routing in
``fmstack serve``) loads the model as the llamacpp backend does, then hands every generation
to an ``Engine`` (``fmstack.models.engine``): requests from any number of threads, and the
``n`` samples of one request, run as sequences decoded together (continuous batching), with a
prefix cache across requests. Everything else (tokenizer, chat template, ``score``) is the
llamacpp backend's, on its own one-sequence context.

``n_ctx`` is the engine's whole KV budget, split evenly over ``parallel`` slots: a request's
window (``context_length``) is ``n_ctx / parallel``, like llama.cpp's ``llama-server -c -np``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fmstack.errors import ConfigError, ModelNotFoundError
from fmstack.models.backends.llamacpp import LlamaCppModel, _Prompt
from fmstack.models.base import Capabilities
from fmstack.models.types import Completion, Delta, Request

if TYPE_CHECKING:
    from fmstack.models.engine import Engine, SequenceHandle
    from fmstack.store.traces import TraceStore


class EngineModel(LlamaCppModel):
    """A GGUF model whose generations run in a continuous-batching engine."""

    backend: ClassVar[str] = "engine"
    capabilities: ClassVar[Capabilities] = Capabilities(
        batch=True, continuous=True,
        response_formats=frozenset({"json_schema", "regex", "choice"}),
    )

    def __init__(self, target: str, *, name: str, tracer: TraceStore | None = None,
                 parallel: int = 8, n_ctx: int | None = None, chunk: int | None = None,
                 n_threads: int | None = None, n_batch: int = 512, n_gpu_layers: int = 0,
                 flash_attn: bool = True, seed: int | None = None, speculative: int = 0,
                 draft: str | None = None, exact_prefix: bool = False,
                 weights: str = "auto") -> None:
        """``parallel`` slots (sequences decoded at once), ``n_ctx`` tokens of KV cache in all
        (default 2048 per slot), prompts prefilled in ``chunk``-token pieces (default 512, 64
        with ``exact_prefix``), interleaved with decoding; ``speculative``
        draft tokens per step (0: off), by prompt lookup or, with ``draft`` (a GGUF model alias
        or path with the same vocabulary), by that model (``speculative`` then defaults to 4).
        ``exact_prefix``: reuse cached prefixes only where that keeps answers bit-identical to
        a cold run (whole chunks), instead of every matching token. ``weights``: ``file``
        decodes with the file's own weights, ``f16`` with an F16 copy of them (cached; much
        faster for many sequences at once where the file's type has no batched CPU kernel),
        ``auto`` picks F16 where that was measured to pay (``fmstack.models.engine.weights``)."""
        if parallel < 1:
            raise ConfigError(f"parallel must be >= 1, got {parallel}")
        total = n_ctx or 2048 * parallel
        if total // parallel < 16:
            raise ConfigError(f"n_ctx {total} leaves {total // parallel} tokens per slot for "
                              f"{parallel} slots: raise n_ctx or lower parallel")
        from fmstack.models.engine.weights import choose

        source = Path(target).expanduser()
        if not source.is_file():
            raise ModelNotFoundError(f"model file not found: {source}")
        self.weights = choose(source, weights, n_slots=parallel, n_gpu_layers=n_gpu_layers)
        super().__init__(str(self.weights.path), name=name, tracer=tracer,
                         n_ctx=total // parallel,
                         n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                         flash_attn=flash_attn, seed=seed)
        from fmstack.models.engine import Engine

        # Prompt tokens per sequence and step. Exact reuse needs small chunks at fixed
        # positions; otherwise a prompt fills the step, as llama-server does: on 48 GSM8K
        # prompts at 16 slots, 512 gave 19% more output tokens/s than 64
        # (bench/engine_steps.py --chunks 64,512 --dataset gsm8k).
        if chunk is None:
            chunk = 64 if exact_prefix else 512

        self._draft: LlamaCppModel | None = None
        try:
            if draft is not None:
                self._draft = _load_draft(draft, n_threads)
                speculative = speculative or 4
            self.engine: Engine = Engine(self, n_slots=parallel, n_ctx=total, chunk=chunk,
                                         # Room for every slot's token and drafts, plus
                                         # a prompt chunk: drafts only get what is left.
                                         n_batch=max(n_batch,
                                                     parallel * (1 + speculative) + chunk),
                                         speculative=speculative, draft=self._draft,
                                         exact_prefix=exact_prefix)
        except BaseException:
            if self._draft is not None:
                self._draft.close()
            super().close()
            raise
        # The engine's slots may be a little larger (llama.cpp rounds n_ctx up); the window a
        # request gets is the smaller of the two, so a prompt that passes the check fits both.
        self._n_ctx = min(self._n_ctx, self.engine.slot_ctx)

    def _handles(self, request: Request) -> tuple[_Prompt, list[SequenceHandle]]:
        prompt = self._prepare(request)
        grammar = self._grammar(request.params)
        handles: list[SequenceHandle] = []
        try:
            for seed in self._seeds(request.params):
                handles.append(self.engine.submit(prompt, request.params, seed, grammar))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return prompt, handles

    def _collect(self, request: Request, prompt: _Prompt, handles: list[SequenceHandle],
                 submitted: float) -> Completion:
        try:
            for h in handles:
                for _ in h:
                    pass
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        started = min(h.started for h in handles)
        return self._completion(prompt, request.params, [h.sample for h in handles],
                                submitted, started)

    def _generate(self, requests: list[Request]) -> list[Completion]:
        submitted = time.perf_counter()
        # Everything is submitted before anything is awaited: the engine decodes them together.
        pending: list[tuple[Request, _Prompt, list[SequenceHandle]]] = []
        try:
            for r in requests:
                pending.append((r, *self._handles(r)))
        except BaseException:
            for _, _, hs in pending:
                for h in hs:
                    h.cancel()
            raise
        return [self._collect(r, p, hs, submitted) for r, p, hs in pending]

    def _stream(self, request: Request) -> Iterator[Delta]:
        submitted = time.perf_counter()
        prompt, (handle,) = self._handles(request)
        shown = 0
        try:
            for text, lp in handle:
                shown += len(text)
                if text or lp is not None:
                    yield Delta(text=text, logprob=lp)
        finally:
            handle.cancel()  # a no-op once finished; frees the slot when the reader stops
        sample = handle.sample
        completion = self._completion(prompt, request.params, [sample],
                                      submitted, handle.started)
        yield Delta(text=sample.text[shown:], finish_reason=sample.finish_reason,
                    completion=completion)

    def close(self) -> None:
        if not self._closed:
            self.engine.close()
            if self._draft is not None:
                self._draft.close()
        super().close()


def _load_draft(uri: str, n_threads: int | None) -> LlamaCppModel:
    """The draft model: an alias, a URI, or the path of a GGUF file (as ``--draft`` takes)."""
    from fmstack.models.registry import resolve

    uri = str(uri)
    if uri.endswith(".gguf"):
        if not Path(uri).is_file():
            raise ModelNotFoundError(f"draft model file not found: {uri}")
        backend, target = "llamacpp", uri
    else:
        backend, target = resolve(uri)
    if backend not in ("llamacpp", "engine"):
        raise ConfigError(f"draft model {uri} must be a GGUF model (llamacpp), not {backend}")
    # Its own one-sequence context is not used for drafting: keep it small.
    return LlamaCppModel(target, name=uri, n_ctx=256, n_threads=n_threads)
