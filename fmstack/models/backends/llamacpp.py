"""llama.cpp backend: any GGUF file through llama-cpp-python.

How it drives llama.cpp, and why:

* **Our own decode loop, not ``Llama.create_completion``.** ``Llama`` loads the model and
  context, tokenizes and holds the GGUF metadata; tokens go through ``llama_decode`` with one
  reusable batch, and each step samples with a llama.cpp sampler chain applied to a copy of the
  step's raw logits (``llama_sampler_apply``, exactly what ``llama_sampler_sample`` does
  inside). Owning the loop is what makes every ``SamplingParams`` field exact: per-sample seeds
  (``seed + i`` for sample ``i``), top_k/min_p passed explicitly (the high-level API defaults
  them to 40/0.05), logprobs of the raw distribution read from the very logits that were
  sampled (so asking for logprobs cannot change the output, and no ``logits_all`` buffer of
  ``n_ctx x n_vocab`` floats is needed), stop strings that never leak into streamed text, UTF-8
  characters split across tokens, and per-token timings.
* **Sampler order** is penalties, grammar, temperature, top_k, top_p, min_p, then a seeded
  draw (or argmax at temperature 0). Temperature comes before the truncations, as in
  transformers and vLLM, so top_p/min_p act on the distribution actually sampled (llama.cpp's
  own default applies temperature last). Penalties count the tokens generated so far, not the
  prompt, as llama.cpp and the OpenAI API define them.
* **Flash attention is on by default.** Without it, llama.cpp's CPU attention gives a token
  decoded alone different logits than the same token decoded inside a batch (max |diff| 1.6 on
  SmolLM2, enough to flip the argmax); with it the two are bit-identical. That makes
  ``score()`` (one batched pass) agree with the logprobs of a generation (one token at a
  time).
* **KV-prefix reuse.** The cache remembers which tokens it holds; a new prompt (or the next of
  ``n`` samples) only decodes what differs from the cached prefix. Every decode step re-checks
  that, so a stream interleaved with another call on the same model stays correct. It is not
  bit-exact: a prompt prefilled in two pieces (a cached prefix, then the rest) gives other
  logits than the same prompt prefilled at once. Measured on SmolLM2 Q4_1, an 89-token prompt
  split after token 8..80 moved the last position's logits by up to 1.16 (max abs), and a
  scored token's logprob by 0.34 nats (llama.cpp's CPU kernels are not invariant to how the
  tokens are batched). Greedy outputs can therefore depend on what the cache held before;
  callers that need order-independent numbers (the LLM reranker) clear the cache first.
* **Structured output** compiles ``structured.to_gbnf(fmt)`` with ``llama_sampler_init_grammar``
  (in llama-cpp-python 0.3.36 ``LlamaGrammar.from_string`` only stores the text; parsing happens
  here, and a grammar llama.cpp rejects is a ConfigError instead of a NULL sampler).
* **Chat templates** come from the GGUF (``tokenizer.chat_template``), rendered with
  llama-cpp-python's ``Jinja2ChatFormatter`` (sandboxed, the transformers conventions). The
  rendered text is tokenized with special tokens parsed; BOS is added only where the model adds
  one and the template did not already write it (no double BOS).
* Requests in a batch run one after another (``capabilities.batch`` is False); a lock guards
  the llama.cpp context so the server can call one model from several threads.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fmstack.errors import (
    CapabilityError,
    ConfigError,
    ContextLengthError,
    ModelNotFoundError,
    missing,
)
from fmstack.models import structured
from fmstack.models.base import Capabilities, Model
from fmstack.models.types import (
    Choice,
    Completion,
    Delta,
    FinishReason,
    Message,
    Request,
    SamplingParams,
    Scored,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from fmstack.store.traces import TraceStore

    Logits = npt.NDArray[np.float32]

# llama.cpp treats this seed as "pick a random one"; explicit seeds are folded below it.
_RANDOM_SEED = 0xFFFFFFFF


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise missing("llama-cpp-python", "llamacpp") from None
    return llama_cpp


def _log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    import numpy as np

    x = logits.astype(np.float64)
    x -= x.max()
    x -= np.log(np.exp(x).sum())
    return x


@dataclass
class _Prompt:
    text: str
    ids: list[int]


@dataclass
class _Sample:
    """One sampled continuation as it is decoded."""

    text: str = ""
    finish_reason: FinishReason = "length"
    token_ids: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # len(text) after each token
    logprobs: list[TokenLogprob] = field(default_factory=list)
    generated: int = 0  # tokens sampled, end-of-turn included
    first_at: float | None = None
    last_at: float | None = None
    cached: int = 0  # prompt tokens the KV cache already held when this sample began

    def choice(self, index: int, with_logprobs: bool) -> Choice:
        return Choice(
            index=index,
            text=self.text,
            finish_reason=self.finish_reason,
            token_ids=self.token_ids,
            logprobs=self.logprobs if with_logprobs else None,
        )


class _Taker:
    """Takes one sample's tokens as they are sampled: text, stop strings, end of turn.

    ``take`` returns the text now safe to show, or None when the token ended the sample (end
    of turn, or a stop string completed). Text that might be the start of a stop string is
    held back until it is known not to be one, and bytes of a character split across tokens
    until the character is complete; after the last token, ``out.text`` past what was shown
    is the rest. Shared by the one-sequence loop here and the batching engine."""

    def __init__(self, model: LlamaCppModel, params: SamplingParams, out: _Sample) -> None:
        self.model, self.out = model, out
        self.stops = params.stop
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.shown = 0

    def take(self, token: int, lp: TokenLogprob | None) -> str | None:
        model, out, stops = self.model, self.out, self.stops
        now = time.perf_counter()
        out.generated += 1
        out.first_at = out.first_at or now
        out.last_at = now
        if model._ll.llama_vocab_is_eog(model._vocab, token):
            out.finish_reason = "stop"
            return None
        before = len(out.text)
        out.text += self.utf8.decode(model._piece(token, False))
        out.token_ids.append(token)
        out.ends.append(len(out.text))
        if lp is not None:
            out.logprobs.append(lp)
        cut = model._find_stop(out.text, stops, max(0, before - self.longest_stop + 1))
        if cut is not None:
            model._truncate(out, cut)
            out.finish_reason = "stop"
            return None
        # Bytes of a character the last token left unfinished stay out of the text (they are
        # still in token_ids): a cut-off character is not text, and a stream never shows one.
        safe = len(out.text) - model._held_back(out.text, stops)
        piece = out.text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return piece


class LlamaCppModel(Model):
    """A GGUF model run in-process by llama.cpp."""

    backend: ClassVar[str] = "llamacpp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        chat=True,
        completion=True,
        streaming=True,
        logprobs=True,
        max_top_logprobs=20,
        score=True,
        tokenize=True,
        batch=False,
        response_formats=frozenset({"json_schema", "regex", "choice"}),
        local=True,
    )

    def __init__(
        self,
        target: str,
        *,
        name: str,
        tracer: TraceStore | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        flash_attn: bool = True,
        seed: int | None = None,
    ) -> None:
        """Load ``target``, a GGUF file. ``n_ctx`` is the context window in tokens (llama.cpp
        rounds it up to a multiple of 256; ``context_length`` is the real one), ``n_threads``
        the CPU threads (default: half the logical cores), ``n_batch`` the prompt tokens per
        decode call, ``n_gpu_layers`` the layers to offload where llama.cpp was built with a GPU
        backend, ``seed`` the seed of requests that set none (default: fresh randomness)."""
        super().__init__(name, tracer=tracer)
        if n_ctx < 1:
            raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise ConfigError(f"n_threads must be >= 1, got {n_threads}")
        if n_batch < 1:
            raise ConfigError(f"n_batch must be >= 1, got {n_batch}")
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        ll = _llama_cpp()
        self._ll = ll
        self._closed = False
        # Re-entrant: a generate() call holds it for a whole request (so concurrent callers
        # take turns per request instead of evicting each other's KV cache every token), and
        # the decode steps inside take it again.
        self._lock = threading.RLock()
        # Every llama_decode runs on this one thread. llama.cpp's CPU backend uses OpenMP, which
        # keeps a team of spinning worker threads per *calling* thread: decoding from several
        # caller threads (an eval runner with concurrency 4, a server's request threads) left
        # idle teams spinning on the cores the active one needed, and ran ~1.7x slower.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmstack-llamacpp")
        self.seed = seed  # used by requests that set no seed of their own
        # One thread count for prompt and decode: llama-cpp-python's default uses every logical
        # core for prompts, whose spinning threads stall badly when the cores are shared.
        threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.n_threads, self.flash_attn = threads, flash_attn
        try:
            self._llm = ll.Llama(
                str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                flash_attn=flash_attn,
                verbose=False,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise ModelNotFoundError(
                f"{path} is not a GGUF model llama.cpp can load: {e}"
            ) from None
        self.path = path
        self._n_ctx = int(ll.llama_n_ctx(self._llm.ctx))
        self._n_batch = n_batch
        self._vocab = ll.llama_model_get_vocab(self._llm.model)
        self._n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        bos = int(ll.llama_vocab_bos(self._vocab))
        self._bos: int | None = bos if bos >= 0 else None
        self._add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab)) and self._bos is not None
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        # What the KV cache holds, and the logits after its last token (None: not known).
        self._kv: list[int] = []
        self._kv_logits: Logits | None = None
        self._reused = 0  # tokens the last _forward took from the cache
        self._candidates: Any = None  # the token array samplers work on, allocated once
        self._all_ids: Any = None
        self._formatter: Any = None
        self._no_chat = "has no chat template in its GGUF metadata; send a raw prompt"
        template = self._llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos = int(ll.llama_vocab_eos(self._vocab))
            try:
                self._formatter = Jinja2ChatFormatter(
                    template,
                    eos_token=self._token_text(eos) if eos >= 0 else "",
                    bos_token=self._token_text(bos) if bos >= 0 else "",
                    add_generation_prompt=True,
                )
            except Exception as e:  # a template Jinja cannot compile: raw prompts still work
                self._no_chat = f"has a chat template that does not compile ({e})"

    # ----- tokens and templates -----------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        self._check_open()
        if not special:
            return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        ids = list(self._llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=True))
        # A template that writes BOS itself plus the tokenizer's own BOS would give two.
        if self._add_bos and len(ids) >= 2 and ids[0] == ids[1] == self._bos:
            ids = ids[1:]
        return ids

    def detokenize(self, ids: Sequence[int], *, special: bool = False) -> str:
        """The text of ``ids``; ``special=True`` writes control tokens (``<|im_end|>``) too."""
        self._check_open()
        if any(not 0 <= i < self._n_vocab for i in ids):
            raise ConfigError(f"token ids must be in [0, {self._n_vocab})")
        out = b"".join(self._piece(i, special) for i in ids)
        return out.decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self._formatter is None:
            raise CapabilityError(f"{self.name} {self._no_chat}")
        try:
            rendered = self._formatter(messages=[m.model_dump() for m in messages]).prompt
        except Exception as e:  # a template's raise_exception() or a Jinja error
            raise ConfigError(
                f"the chat template of {self.name} rejected the messages: {e}"
            ) from None
        return str(rendered)

    def _token_text(self, token: int) -> str:
        return bytes(self._ll.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:  # the piece is longer than the buffer: -n is the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return bytes(buf.raw[:n])

    def _prepare(self, request: Request) -> _Prompt:
        if request.messages is not None:
            text = self.render_chat(request.messages)
        else:
            assert request.prompt is not None
            text = request.prompt
        ids = self.tokenize(text, special=True)
        if not ids:
            raise ConfigError("the prompt is empty: nothing to condition the generation on")
        if len(ids) + 1 > self._n_ctx:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens but the context window of {self.name} is "
                f"{self._n_ctx} tokens (prompt + at least 1 generated token must fit; "
                "shorten the prompt or load with a larger n_ctx)"
            )
        return _Prompt(text=text, ids=ids)

    # ----- the llama.cpp context ----------------------------------------------------------

    def _forward(
        self,
        seq: list[int],
        from_pos: int,
        on_logits: Callable[[int, Logits], None] | None = None,
    ) -> Logits:
        """Make the KV cache hold ``seq`` and return the logits after its last token.

        Positions ``>= from_pos`` are (re)decoded with their logits passed to ``on_logits``;
        earlier ones are reused from the cache where it already holds them. Caller holds the lock.
        """
        import numpy as np

        ll = self._ll
        if len(seq) > self._n_ctx:
            raise ContextLengthError(
                f"{len(seq)} tokens do not fit the context window of {self._n_ctx} tokens"
            )
        reuse = 0
        for a, b in zip(self._kv, seq, strict=False):
            if a != b:
                break
            reuse += 1
        if (
            on_logits is None
            and reuse == len(seq) == len(self._kv)
            and self._kv_logits is not None
        ):
            self._reused = reuse
            return self._kv_logits
        reuse = min(reuse, from_pos, len(seq) - 1)  # decode at least the last token
        mem = ll.llama_get_memory(self._llm.ctx)
        if not ll.llama_memory_seq_rm(mem, -1, reuse, -1):
            # Some caches (recurrent, sliding-window) cannot drop a tail: start over.
            ll.llama_memory_clear(mem, True)
            reuse = 0
        self._kv, self._kv_logits = seq[:reuse], None
        self._reused = reuse
        batch = self._batch
        last: Logits | None = None
        for start in range(reuse, len(seq), self._n_batch):
            chunk = seq[start : start + self._n_batch]
            batch.n_tokens = len(chunk)
            for k, token in enumerate(chunk):
                pos = start + k
                batch.token[k] = token
                batch.pos[k] = pos
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = pos == len(seq) - 1 or (on_logits is not None and pos >= from_pos)
            rc = self._decoder.submit(ll.llama_decode, self._llm.ctx, batch).result()
            if rc != 0:
                ll.llama_memory_clear(mem, True)
                self._kv = []
                raise RuntimeError(f"llama_decode failed with code {rc}")
            self._kv = seq[: start + len(chunk)]
            for k in range(len(chunk)):
                pos = start + k
                if batch.logits[k]:
                    row = np.ctypeslib.as_array(
                        ll.llama_get_logits_ith(self._llm.ctx, k), shape=(self._n_vocab,)
                    )
                    if on_logits is not None and pos >= from_pos:
                        on_logits(pos, row)
                    if pos == len(seq) - 1:
                        last = row.copy()
        assert last is not None
        self._kv_logits = last
        return last

    def _sampler(self, params: SamplingParams, seed: int, grammar: str | None) -> Any:
        """A llama.cpp sampler chain for one sample (the caller frees it)."""
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        p = params
        if (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) != (1.0, 0.0, 0.0):
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    self._n_vocab,
                    p.max_tokens,  # window: every token generated so far
                    p.repetition_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
        if grammar is not None:
            g = ll.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
            if not g:
                ll.llama_sampler_free(chain)
                raise ConfigError("llama.cpp rejected the grammar built for response_format")
            ll.llama_sampler_chain_add(chain, g)
        if p.greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        if p.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _pick(self, chain: Any, logits: Logits) -> int:
        """Apply the sampler chain to a copy of ``logits`` and accept the chosen token."""
        import numpy as np

        ll = self._ll
        if self._candidates is None:
            fields = [("id", np.int32), ("logit", np.float32), ("p", np.float32)]
            self._candidates = np.empty(self._n_vocab, dtype=np.dtype(fields))
            self._all_ids = np.arange(self._n_vocab, dtype=np.int32)
        data = self._candidates
        data["id"] = self._all_ids  # samplers sort the array in place: refill it every step
        data["logit"] = logits
        data["p"] = 0.0
        arr = ll.llama_token_data_array(
            data=data.ctypes.data_as(ll.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        ll.llama_sampler_apply(chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("the llama.cpp sampler selected no token")
        chosen = arr.data[arr.selected]
        if chosen.logit == -math.inf:
            # The grammar allowed no token at all (a dead end, e.g. an empty character class):
            # accepting one would make llama.cpp abort the whole process, so stop this sample.
            raise ConfigError("the response_format's grammar allows no token at this point "
                              "(it can never be satisfied); check the pattern or schema")
        token = int(chosen.id)
        ll.llama_sampler_accept(chain, token)
        return token

    def _logprob(self, token: int, logits: Logits, top: int) -> TokenLogprob:
        import numpy as np

        lp = _log_softmax(logits)
        alts: list[TopLogprob] = []
        if top:
            best = np.argpartition(lp, -top)[-top:]
            best = best[np.argsort(-lp[best], kind="stable")]
            alts = [
                TopLogprob(token=self._piece_text(int(i)), id=int(i), logprob=float(lp[i]))
                for i in best
            ]
        return TokenLogprob(
            token=self._piece_text(token), id=token, logprob=float(lp[token]), top=alts
        )

    def _piece_text(self, token: int) -> str:
        return self._piece(token, True).decode("utf-8", errors="replace")

    # ----- generation ---------------------------------------------------------------------

    def _decode(
        self, prompt: _Prompt, params: SamplingParams, seed: int, grammar: str | None, out: _Sample
    ) -> Generator[tuple[str, TokenLogprob | None], None, None]:
        """Sample one continuation into ``out``; yields, per token, the text now safe to show
        and the token's logprob (when asked). After the last token, ``out.text`` past what was
        shown is the rest. Text that might be the start of a stop string is held back until it is
        known not to be one, and bytes of a character split across tokens until the character
        is complete.
        """
        ll = self._ll
        taker = _Taker(self, params, out)
        with self._lock:
            self._check_open()
            chain = self._sampler(params, seed, grammar)
        try:
            seq = list(prompt.ids)
            # Default finish_reason is "length": max_tokens hit, or the context window full.
            while out.generated < params.max_tokens and len(seq) <= self._n_ctx:
                with self._lock:
                    self._check_open()
                    logits = self._forward(seq, len(seq) - 1)
                    if out.generated == 0:
                        out.cached = self._reused
                    token = self._pick(chain, logits)
                    lp = (
                        self._logprob(token, logits, params.top_logprobs)
                        if params.logprobs
                        else None
                    )
                shown = taker.take(token, lp)
                if shown is None:
                    break
                seq.append(token)
                yield shown, lp
        finally:
            ll.llama_sampler_free(chain)

    @staticmethod
    def _find_stop(text: str, stops: list[str], start: int) -> int | None:
        hits = [i for s in stops if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    @staticmethod
    def _held_back(text: str, stops: list[str]) -> int:
        """Length of the longest tail of ``text`` that could begin a stop string."""
        held = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    @staticmethod
    def _truncate(out: _Sample, cut: int) -> None:
        """Cut the text before a stop string; keep the tokens that wrote any text before it."""
        keep = 0
        for start in [0, *out.ends[:-1]]:
            if start >= cut:
                break
            keep += 1
        out.text = out.text[:cut]
        del out.token_ids[keep:], out.ends[keep:]
        if out.logprobs:
            del out.logprobs[keep:]

    def _seeds(self, params: SamplingParams) -> list[int]:
        base = params.seed if params.seed is not None else self.seed
        if base is None:
            return [_RANDOM_SEED] * params.n
        return [(base + i) % _RANDOM_SEED for i in range(params.n)]

    def _grammar(self, params: SamplingParams) -> str | None:
        fmt = params.response_format
        return structured.to_gbnf(fmt) if fmt is not None else None

    def _complete(self, request: Request, submitted: float) -> Completion:
        started = time.perf_counter()
        prompt = self._prepare(request)
        params = request.params
        grammar = self._grammar(params)
        samples: list[_Sample] = []
        with self._lock:
            for seed in self._seeds(params):
                sample = _Sample()
                for _ in self._decode(prompt, params, seed, grammar, sample):
                    pass
                samples.append(sample)
        return self._completion(prompt, params, samples, submitted, started)

    def _completion(
        self,
        prompt: _Prompt,
        params: SamplingParams,
        samples: list[_Sample],
        submitted: float,
        started: float,
    ) -> Completion:
        firsts = [s.first_at for s in samples if s.first_at is not None]
        after_first = sum(max(s.generated - 1, 0) for s in samples)
        decode_secs = sum(
            s.last_at - s.first_at
            for s in samples
            if s.first_at is not None and s.last_at is not None
        )
        return Completion(
            model=self.name,
            choices=[s.choice(i, params.logprobs) for i, s in enumerate(samples)],
            usage=Usage(
                prompt_tokens=len(prompt.ids),
                completion_tokens=sum(s.generated for s in samples),
                cached_tokens=samples[0].cached if samples else 0,
            ),
            timings=Timings(
                queue=started - submitted,
                ttft=min(firsts) - submitted if firsts else None,
                tpot=decode_secs / after_first if after_first else None,
                total=time.perf_counter() - submitted,
            ),
            rendered_prompt=prompt.text,
        )

    def _generate(self, requests: list[Request]) -> list[Completion]:
        submitted = time.perf_counter()
        # Everything is checked before any decoding, so a bad request fails the batch fast.
        for r in requests:
            self._prepare(r)
            self._grammar(r.params)
        return [self._complete(r, submitted) for r in requests]

    def _stream(self, request: Request) -> Iterator[Delta]:
        submitted = time.perf_counter()
        prompt = self._prepare(request)
        params = request.params
        grammar = self._grammar(params)
        sample = _Sample()
        shown = 0
        steps = self._decode(prompt, params, self._seeds(params)[0], grammar, sample)
        try:
            for text, lp in steps:
                shown += len(text)
                if text or lp is not None:
                    yield Delta(text=text, logprob=lp)
        finally:
            steps.close()  # frees the sampler even when the consumer stops early
        completion = self._completion(prompt, params, [sample], submitted, submitted)
        yield Delta(
            text=sample.text[shown:], finish_reason=sample.finish_reason, completion=completion
        )

    # ----- scoring ------------------------------------------------------------------------

    def _score(self, texts: list[str], contexts: list[str] | None) -> list[Scored]:
        scored = []
        for i, text in enumerate(texts):
            if contexts is not None:
                prefix = self.tokenize(contexts[i], special=True)
            else:
                prefix = [self._bos] if self._bos is not None else []
            body = self.tokenize(text)
            if not body:
                raise ConfigError(f"text {i} has no tokens to score")
            ids = prefix + body
            if len(ids) > self._n_ctx:
                raise ContextLengthError(
                    f"text {i} with its context is {len(ids)} tokens but the context window "
                    f"is {self._n_ctx} tokens"
                )
            first = max(len(prefix), 1)  # with no BOS and no context, token 0 is not scored
            logprobs: dict[int, float] = {}

            def keep(
                pos: int, row: Logits, ids: list[int] = ids, into: dict[int, float] = logprobs
            ) -> None:
                into[pos + 1] = float(_log_softmax(row)[ids[pos + 1]])

            if len(ids) > 1:
                with self._lock:
                    self._check_open()
                    self._forward(ids[:-1], first - 1, keep)
            scored_ids = ids[first:]
            scored.append(
                Scored(
                    text=text,
                    tokens=[self._piece_text(t) for t in scored_ids],
                    token_ids=scored_ids,
                    logprobs=[logprobs[p] for p in range(first, len(ids))],
                )
            )
        return scored

    # ----- lifetime -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"model {self.name} is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._decoder.shutdown(wait=True)
            self._ll.llama_batch_free(self._batch)
            self._llm.close()
            self._kv, self._kv_logits = [], None
