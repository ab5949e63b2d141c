"""The engine loop: continuous batching over one llama.cpp context.

One thread runs the loop; every ``llama_decode`` happens on it (llama.cpp's OpenMP threads
spin per calling thread, so one caller is fastest). A step:

1. finishes cancelled sequences (their slot frees at once) and admits waiting requests into
   free slots (placing each where the prefix cache saves most);
2. builds one batch: a token for every decoding sequence, then prompt chunks of prefilling
   sequences, oldest first, while the token budget (``n_batch``) lasts; the rows go in slot
   order, so llama.cpp runs the decode tokens as one micro-batch (``slots.py``). A chunk
   ends at the next multiple of ``chunk`` positions and is never split, so a long prompt is
   prefilled over several steps, interleaved with everyone else's decoding, and always in the
   same pieces (which keeps its numbers independent of the batch it lands in);
3. decodes, then samples every sequence whose last token got logits with its own llama.cpp
   sampler chain (seed, grammar, penalties, temperature, top-k/p, min-p), reads logprobs from
   the same logits, and streams the text to the sequence's queue.

**Speculative decoding** (``speculative=k``): a decoding sequence also feeds up to ``k`` draft
tokens, all with logits: found by prompt lookup (the continuation of the latest earlier
occurrence of its last n-gram) or proposed by a draft model (``draft.py``). The rows are then
sampled in order exactly as one-token steps would be, and drafts are kept while they equal
what was sampled; the rest of the KV is dropped. The sampling is what plain decoding does,
so a step just yields up to ``k + 1`` tokens when the drafts are right; but tokens verified
together can get slightly other logits than one at a time (llama.cpp's CPU kernels are not
invariant to that), so a long greedy answer can occasionally differ (``docs/engine.md``).

Measured on SmolLM2 (``/root/scratch/eng_exp.py`` in the session that wrote this; the test
suite checks it): with one KV stream per sequence and flash attention, a sequence's greedy
tokens are identical whether it runs alone, in a batch, or next to another's prefill, and a
KV prefix copied from another stream continues exactly as if computed in place.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fmstack.errors import ConfigError, ContextLengthError, FmstackError
from fmstack.models.engine.slots import Slot, SlotPool

if TYPE_CHECKING:
    from fmstack.models.backends.llamacpp import LlamaCppModel, _Prompt, _Sample, _Taker
    from fmstack.models.types import SamplingParams, TokenLogprob

# What a sequence's queue carries: a piece of text (with its token's logprob), then the end.
_END = object()


@dataclass
class _Seq:
    prompt: _Prompt
    params: SamplingParams
    seed: int
    grammar: str | None
    out: _Sample
    taker: _Taker
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    slot: Slot | None = None
    chain: Any = None
    fed: int = 0  # tokens of prompt + output now in the slot's KV
    pending: int | None = None  # the last sampled token, fed at the next step
    cancelled: bool = False
    error: BaseException | None = None
    plain_greedy: bool = False  # argmax, no grammar or penalties: the chain would only copy


    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt.ids)


class SequenceHandle:
    """One submitted sequence: iterate for ``(text, logprob)`` pieces; ``cancel()`` frees its
    slot at the next step. After the iteration ends, ``sample`` holds the whole result."""

    def __init__(self, engine: Engine, seq: _Seq) -> None:
        self._engine, self._seq = engine, seq

    @property
    def sample(self) -> _Sample:
        return self._seq.out

    @property
    def started(self) -> float:
        return self._seq.started or self._seq.submitted

    def __iter__(self) -> Iterator[tuple[str, TokenLogprob | None]]:
        seq = self._seq
        while True:
            item = seq.events.get()
            if item is _END:
                if seq.error is not None:
                    raise seq.error
                return
            yield item

    def cancel(self) -> None:
        self._engine._cancel(self._seq)


@dataclass(frozen=True)
class EngineStats:
    slots: int
    busy: int
    waiting: int
    prefix_hits: int
    prefix_saved_tokens: int
    steps: int
    decoded_tokens: int
    drafted: int
    accepted: int
    # Where the engine thread's time goes: inside llama_decode, and in whole steps (decode plus
    # building the batch and sampling). The difference is the Python cost of a step.
    decode_seconds: float = 0.0
    step_seconds: float = 0.0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


class Engine:
    """Continuous batching for one GGUF model (``model`` supplies weights, tokenizer and
    sampler chains; the engine makes its own context with ``n_slots`` KV streams)."""

    def __init__(self, model: LlamaCppModel, *, n_slots: int = 16, n_ctx: int | None = None,
                 chunk: int = 64, n_batch: int | None = None, threads: int | None = None,
                 speculative: int = 0, ngram: int = 3, draft: LlamaCppModel | None = None,
                 exact_prefix: bool = False) -> None:
        """``speculative``: up to that many draft tokens per sequence and step (0: off),
        proposed by ``draft`` (a model with the same vocabulary) or, without one, by prompt
        lookup, matching the last ``ngram`` (down to 1) tokens. ``exact_prefix``: reuse cached
        prefixes in whole chunks only, so warm answers equal cold ones (``slots.py``)."""
        if n_slots < 1:
            raise ConfigError(f"n_slots must be >= 1, got {n_slots}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        ll = model._ll
        self.model, self._ll = model, ll
        n_ctx = n_ctx or 1024 * n_slots
        n_batch = n_batch or max(512, n_slots * (1 + speculative) + chunk)
        if n_batch < n_slots + chunk:
            raise ConfigError(f"n_batch {n_batch} cannot hold a token per slot and a prompt "
                              f"chunk ({n_slots} + {chunk})")
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False  # a KV stream per slot: see the module docstring
        params.flash_attn_type = 1 if model.flash_attn else 0
        params.n_threads = params.n_threads_batch = threads or model.n_threads
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(model._llm.model, params)
        if not self._ctx:
            raise ConfigError(f"llama.cpp could not make a context of {n_ctx} tokens for "
                              f"{n_slots} slots")
        self._mem = ll.llama_get_memory(self._ctx)
        self.n_slots, self.chunk, self.n_batch = n_slots, chunk, n_batch
        # Each slot holds n_ctx / n_slots positions (llama.cpp rounds n_ctx up).
        self.slot_ctx = int(ll.llama_n_ctx_seq(self._ctx))
        self.pool = SlotPool(n_slots, granularity=chunk if exact_prefix else 1)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self.decoded_tokens = 0
        self.decode_seconds = self.step_seconds = 0.0
        if speculative < 0 or ngram < 1:
            raise ConfigError("speculative must be >= 0 and ngram >= 1")
        self.speculative, self.ngram = speculative, ngram
        self.drafted = 0  # draft tokens proposed
        self.drafter = None
        if draft is not None:
            from fmstack.models.engine.draft import Drafter

            self.drafter = Drafter(draft, model, n_slots=n_slots, n_ctx=n_ctx, n_batch=n_batch)
        self.accepted = 0  # of which the target model's own sampling agreed
        self._thread = threading.Thread(target=self._loop, name="fmstack-engine", daemon=True)
        self._thread.start()

    # ----- public -------------------------------------------------------------------------

    def submit(self, prompt: _Prompt, params: SamplingParams, seed: int,
               grammar: str | None) -> SequenceHandle:
        """Queue one sequence; it starts when a slot is free."""
        from fmstack.models.backends.llamacpp import _Sample, _Taker

        if len(prompt.ids) + 1 > self.slot_ctx:
            raise ContextLengthError(
                f"prompt is {len(prompt.ids)} tokens but a slot of {self.model.name}'s engine "
                f"holds {self.slot_ctx} tokens (prompt + at least 1 generated token must fit)")
        out = _Sample()
        seq = _Seq(prompt, params, seed, grammar, out, _Taker(self.model, params, out))
        seq.plain_greedy = params.greedy and grammar is None and (
            params.repetition_penalty, params.frequency_penalty, params.presence_penalty
        ) == (1.0, 0.0, 0.0)
        with self._cond:
            if self._closed:
                raise ConfigError(f"the engine of {self.model.name} is closed")
            self._waiting.append(seq)
            self._cond.notify()
        return SequenceHandle(self, seq)

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(slots=self.n_slots, busy=self.pool.busy,
                               waiting=len(self._waiting), prefix_hits=self.pool.hits,
                               prefix_saved_tokens=self.pool.saved_tokens, steps=self.steps,
                               decoded_tokens=self.decoded_tokens, drafted=self.drafted,
                               accepted=self.accepted, decode_seconds=self.decode_seconds,
                               step_seconds=self.step_seconds)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for seq in [*self._waiting, *self._running]:
                seq.cancelled = True
            self._cond.notify()
        self._thread.join()
        if self.drafter is not None:
            self.drafter.close()
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)

    # ----- the loop -----------------------------------------------------------------------

    def _cancel(self, seq: _Seq) -> None:
        with self._cond:
            seq.cancelled = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._waiting)
                                    or bool(self._running))
                for seq in [s for s in self._waiting if s.cancelled]:
                    self._waiting.remove(seq)
                    self._end(seq)
                for seq in [s for s in self._running if s.cancelled]:
                    self._finish(seq)
                if self._closed and not self._running:
                    for seq in self._waiting:
                        self._end(seq)
                    self._waiting.clear()
                    return
                self._admit()
            if self._running:
                try:
                    started = time.perf_counter()
                    self._step()
                    self.step_seconds += time.perf_counter() - started
                except Exception as e:  # the context is in an unknown state: fail everyone
                    with self._cond:
                        for seq in list(self._running):
                            seq.error = FmstackError(f"engine step failed: {e}")
                            self._finish(seq)
                        self._ll.llama_memory_clear(self._mem, True)
                        for slot in self.pool.slots:
                            slot.tokens = []

    def _admit(self) -> None:
        """Move waiting sequences into free slots, placing each by the prefix cache."""
        ll = self._ll
        while self._waiting and self.pool.free:
            seq = self._waiting.popleft()
            placement = self.pool.place(seq.prompt.ids)
            assert placement is not None
            slot = placement.slot
            if placement.copy_from is not None:
                # A whole-stream copy (the only kind llama.cpp does across streams), then trim.
                ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                ll.llama_memory_seq_cp(self._mem, placement.copy_from.seq_id, slot.seq_id, -1, -1)
                slot.tokens = list(placement.copy_from.tokens)
            ll.llama_memory_seq_rm(self._mem, slot.seq_id, placement.reuse, -1)
            del slot.tokens[placement.reuse:]
            seq.slot, seq.fed = slot, placement.reuse
            seq.out.cached = placement.reuse
            seq.started = time.perf_counter()
            try:
                seq.chain = self.model._sampler(seq.params, seq.seed, seq.grammar)
            except FmstackError as e:
                seq.error = e
                self._running.append(seq)
                self._finish(seq)
                continue
            self._running.append(seq)

    def _step(self) -> None:
        ll, batch = self._ll, self._batch
        # Per sequence with logits this step: the batch rows to sample, in order, and the
        # draft tokens those rows verify (row k checks draft k; the last row has no draft).
        rows: dict[int, tuple[_Seq, list[int], list[int]]] = {}
        n = 0

        def put(seq: _Seq, token: int, logits: bool) -> None:
            nonlocal n
            assert seq.slot is not None
            batch.token[n] = token
            batch.pos[n] = seq.fed
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot.seq_id
            batch.logits[n] = logits
            if logits:
                rows.setdefault(id(seq), (seq, [], []))[1].append(n)
            seq.slot.tokens.append(token)
            seq.fed += 1
            n += 1

        decoding = [s for s in self._running if s.pending is not None]
        # Room for drafts: what the batch holds beyond one token per decoding sequence and
        # one prompt chunk, shared out evenly.
        spare = self.n_batch - len(decoding) - self.chunk
        per_seq = min(self.speculative, spare // max(len(decoding), 1))
        proposals = self._drafts(decoding, per_seq) if per_seq > 0 else {}
        # What each sequence feeds this step: its pending token and drafts, or its next
        # prompt chunk (prompts oldest first while the budget lasts; a later prompt does not
        # overtake an earlier one).
        plan: list[tuple[_Seq, list[int]]] = []
        for seq in decoding:
            token, seq.pending = seq.pending, None
            assert token is not None
            plan.append((seq, [token, *proposals.get(id(seq), [])]))
        used = sum(len(tokens) for _, tokens in plan)
        for seq in self._running:
            if not seq.prefilling:
                continue
            end = min((seq.fed // self.chunk + 1) * self.chunk, len(seq.prompt.ids))
            if used + end - seq.fed > self.n_batch:
                break
            plan.append((seq, seq.prompt.ids[seq.fed:end]))
            used += end - seq.fed
        # Rows go in slot order. With a KV stream per slot llama.cpp splits a batch into
        # micro-batches of consecutive sequence ids (llama_batch_allocr::split_equal), each a
        # whole pass over the weights; in admission order 16 decoding rows could take several.
        plan.sort(key=lambda entry: entry[0].slot.seq_id)  # type: ignore[union-attr]
        for seq, tokens in plan:
            if seq.prefilling:
                last = len(seq.prompt.ids) - 1
                for token in tokens:
                    put(seq, token, seq.fed == last)
            else:
                for token in tokens:
                    put(seq, token, True)
                rows[id(seq)][2].extend(tokens[1:])
        batch.n_tokens = n
        started = time.perf_counter()
        rc = ll.llama_decode(self._ctx, batch)
        self.decode_seconds += time.perf_counter() - started
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.steps += 1
        self.decoded_tokens += n
        for seq, indices, drafts in rows.values():
            try:
                self._verify(seq, indices, drafts)
            except Exception as e:  # one sequence's failure (a grammar) ends only it
                seq.error = e if isinstance(e, FmstackError) else FmstackError(
                    f"sampling failed: {e}")
                with self._cond:
                    self._finish(seq)

    def _drafts(self, decoding: list[_Seq], per_seq: int) -> dict[int, list[int]]:
        """Draft tokens for each decoding sequence (by ``id``), from the draft model when
        there is one, else by prompt lookup."""
        wants: list[tuple[_Seq, list[int], int]] = []
        for seq in decoding:
            assert seq.slot is not None and seq.pending is not None
            # Within max_tokens, and within the slot (the pending token and drafts must fit).
            limit = min(per_seq, seq.params.max_tokens - seq.out.generated - 1,
                        self.slot_ctx - seq.fed - 2)
            if limit > 0:
                wants.append((seq, [*seq.slot.tokens, seq.pending], limit))
        if self.drafter is not None:
            found = self.drafter.propose([(s.slot.seq_id, h, k)  # type: ignore[union-attr]
                                          for s, h, k in wants])
        else:
            found = [self._lookup(h, k) for _, h, k in wants]
        self.drafted += sum(len(f) for f in found)
        return {id(s): f for (s, _, _), f in zip(wants, found, strict=True)}

    def _lookup(self, history: list[int], limit: int) -> list[int]:
        """Prompt lookup: the tokens that followed the latest earlier occurrence of the last
        ``ngram`` tokens (down to 1) of the prompt and output so far."""
        for size in range(self.ngram, 0, -1):
            if len(history) <= size:
                continue
            tail = history[-size:]
            # Scan backwards: the most recent match is the likeliest continuation.
            for start in range(len(history) - size - 1, -1, -1):
                if history[start:start + size] == tail:
                    follow = history[start + size:start + size + limit]
                    if follow:
                        return follow
        return []

    def _verify(self, seq: _Seq, indices: list[int], drafts: list[int]) -> None:
        """Sample each row in order with the sequence's own chain, as plain decoding would
        one step at a time (same logits, same sampler state, same random draws): a draft is
        kept while the sampled token equals it. So speculation never changes the output, for
        any sampling parameters; only how many tokens one step yields."""
        import numpy as np

        ll, model, params = self._ll, self.model, seq.params
        assert seq.slot is not None
        first_fed = seq.fed - len(indices)  # KV position of the first row's token
        for k, row in enumerate(indices):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, row),
                                           shape=(model._n_vocab,))
            # Plain greedy: what llama.cpp's greedy sampler picks (the first highest logit),
            # without copying the vocabulary into a candidate array for it.
            token = (int(np.argmax(logits)) if seq.plain_greedy
                     else model._pick(seq.chain, logits))
            lp = model._logprob(token, logits, params.top_logprobs) if params.logprobs else None
            piece = seq.taker.take(token, lp)
            ended = piece is None
            if piece is not None:
                seq.events.put((piece, lp))
            accepted = k < len(drafts) and token == drafts[k]
            if accepted:
                self.accepted += 1
            full = first_fed + k + 2 > self.slot_ctx
            if ended or seq.out.generated >= params.max_tokens or full or not accepted:
                # Rows past this one computed tokens that will not be kept: drop them.
                keep = first_fed + k + 1
                if keep < seq.fed:
                    ll.llama_memory_seq_rm(self._mem, seq.slot.seq_id, keep, -1)
                    del seq.slot.tokens[keep:]
                    seq.fed = keep
                if ended or seq.out.generated >= params.max_tokens or full:
                    with self._cond:
                        self._finish(seq)
                else:
                    seq.pending = token
                return

    def _finish(self, seq: _Seq) -> None:
        """End a running sequence (caller holds the lock): free its sampler and its slot."""
        with contextlib.suppress(ValueError):
            self._running.remove(seq)
        if seq.chain is not None:
            self._ll.llama_sampler_free(seq.chain)
            seq.chain = None
        if seq.slot is not None:
            self.pool.release(seq.slot)
        self._end(seq)

    def _end(self, seq: _Seq) -> None:
        if seq.cancelled and seq.error is None:
            seq.error = FmstackError("cancelled")
        seq.events.put(_END)
