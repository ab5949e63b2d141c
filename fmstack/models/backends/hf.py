"""The ``hf`` backend: a local transformers checkpoint, or a GGUF file dequantized into one.

Generation is our own decode loop over the model's forward pass with a KV cache, not
``model.generate``: a batch mixes requests with different sampling parameters, response formats
and stop strings, and the loop gives each row its own logits processing, random generator and
grammar matcher, streams tokens as they come and measures time to first token. The sampling
steps themselves are transformers' logits processors where it has them (temperature, top-k,
top-p, min-p, repetition penalty); frequency and presence penalties follow OpenAI's definition
(over generated tokens only), which transformers does not implement.

Rows of a batch are left-padded so every row's next token sits in the last column; rows that
finish are dropped from the batch (and the KV cache) at once. Structured output is enforced
with xgrammar: a matcher per row masks the logits before sampling.

Loading a GGUF file dequantizes it (about 40 s for SmolLM2), so the converted checkpoint is
saved once under ``fmstack.config.cache_dir()``, keyed by the file's path, size and mtime, and
loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fmstack.config import cache_dir
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
    import torch

    from fmstack.store.traces import TraceStore

_DTYPES = ("float32", "float16", "bfloat16")
# Chat models often end a turn with a token other than the tokenizer's EOS (GGUF conversions in
# particular keep the base model's end-of-text as EOS); llama.cpp also stops on these by name.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
# Rows x positions x vocabulary floats that _score may hold at once (about 256 MB).
_SCORE_LOGIT_BUDGET = 64_000_000
_REGEX_META = frozenset("\\.^$|?*+()[]{}/")


def _import_torch() -> Any:
    # Before the first import of huggingface_hub, which reads it once; every load below also
    # passes local_files_only=True.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise missing("transformers", "hf") from None
    return torch


def converted_checkpoint(gguf: Path) -> Path:
    """The transformers checkpoint dequantized from ``gguf``: converted on first use, then
    cached (written to a temporary directory and renamed, so a crash leaves nothing half-made)."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = cache_dir() / "hf-gguf" / f"{gguf.stem}-{digest}"
    if (target / "config.json").exists():
        return target
    torch = _import_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, local_files_only=True
            )
            # dequantize=True gives a plain dense model; without it transformers attaches a GGUF
            # quantizer (even when it ends up dequantizing) and refuses to save_pretrained.
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                dtype=torch.float32,
                local_files_only=True,
                quantization_config=GgufConfig(dequantize=True),
            )
        except ImportError as e:  # the GGUF reader and accelerate are optional in transformers
            raise missing(e.name or "gguf", "hf") from None
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(
                f"transformers cannot load GGUF file {gguf}: {first}"
            ) from None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class _Row:
    """One sequence being decoded: a request's prompt and one of its ``n`` samples."""

    request: int
    index: int
    prompt: list[int]
    params: SamplingParams
    limit: int  # most tokens this row may generate (max_tokens, capped by the context)
    generator: torch.Generator | None = None
    warpers: list[Any] = field(default_factory=list)
    repetition: Any = None
    matcher: Any = None
    counts: torch.Tensor | None = None  # generated-token counts, for frequency/presence
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    text: str = ""
    ends: list[int] = field(default_factory=list)  # len(text) after each token in ids
    emitted: int = 0  # characters already streamed
    finish: FinishReason | None = None
    steps: int = 0  # decode steps, including the one that picked an end token
    first_at: float | None = None
    last_at: float | None = None


class HFModel(Model):
    """A causal LM through transformers, on CPU or CUDA, with batched generation."""

    backend: ClassVar[str] = "hf"
    capabilities: ClassVar[Capabilities] = Capabilities(batch=True)

    def __init__(
        self,
        target: str,
        *,
        name: str,
        tracer: TraceStore | None = None,
        device: str = "auto",
        dtype: str = "float32",
        n_threads: int | None = None,
        max_batch: int = 16,
    ) -> None:
        super().__init__(name, tracer=tracer)
        torch = _import_torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, not {max_batch}")
        if n_threads is not None:
            if n_threads < 1:
                raise ConfigError(f"n_threads must be at least 1, not {n_threads}")
            torch.set_num_threads(n_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if not (device == "cpu" or device.startswith("cuda")):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")

        path = Path(target).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path not found: {path}")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelNotFoundError(
                    f"{path} is neither a transformers checkpoint directory nor a .gguf file"
                )
            path = converted_checkpoint(path)
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is not a transformers checkpoint (no config.json)")
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, dtype), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(f"transformers cannot load {path}: {first}") from None
        self._torch = torch
        self._device = torch.device(device)
        self._model: Any = model.to(self._device).eval()
        self._max_batch = max_batch
        self.path = path
        self._vocab = int(self._model.get_output_embeddings().weight.shape[0])
        self._bos: int | None = self._tok.bos_token_id
        self._pad: int = next(
            (t for t in (self._tok.pad_token_id, self._tok.eos_token_id, 0) if t is not None), 0
        )
        self._end_ids = self._end_tokens()
        self._grammars: dict[str, Any] = {}
        self._compiler: Any = None
        # One forward pass at a time: a server calls in from several threads, and the KV cache
        # of a decode in progress belongs to that call.
        self._lock = threading.RLock()

    # ----- tokens and templates -----------------------------------------------------------

    def _end_tokens(self) -> frozenset[int]:
        ids: set[int] = set()
        for value in (self._tok.eos_token_id, self._model.generation_config.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        special = set(self._tok.all_special_tokens) | {
            str(t) for t in getattr(self._tok, "added_tokens_decoder", {}).values()
        }
        for token in _END_OF_TURN:
            if token in special:
                token_id = self._tok.convert_tokens_to_ids(token)
                if isinstance(token_id, int) and token_id >= 0:
                    ids.add(token_id)
        return frozenset(ids)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if not special:
            return list(
                self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            )
        # A text that already starts with BOS (a chat template that writes it) must not get a
        # second one.
        bos = self._tok.bos_token
        add = not (bos and text.startswith(bos))
        return list(self._tok(text, add_special_tokens=add)["input_ids"])

    def detokenize(self, ids: Sequence[int], *, special: bool = False) -> str:
        """The text of ``ids``; ``special=True`` writes control tokens (``<|im_end|>``) too."""
        if any(not 0 <= i < self._vocab for i in ids):
            raise ConfigError(f"token ids must be in [0, {self._vocab})")
        return str(
            self._tok.decode(
                list(ids), skip_special_tokens=not special, clean_up_tokenization_spaces=False
            )
        )

    def render_chat(self, messages: Sequence[Message]) -> str:
        if not self._tok.chat_template:
            raise CapabilityError(f"{self.name} has no chat template; send a raw-text prompt")
        rendered = self._tok.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    @property
    def context_length(self) -> int | None:
        value = getattr(self._model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_model", None) is not None:
                self._model = None
                self._grammars.clear()
                if self._device.type == "cuda":
                    self._torch.cuda.empty_cache()

    def _live(self) -> Any:
        if self._model is None:
            raise ConfigError(f"model {self.name} is closed")
        return self._model

    def _prompt_ids(self, request: Request) -> tuple[str, list[int]]:
        if request.messages is not None:
            rendered = self.render_chat(request.messages)
            # The template already wrote every special token the model expects (as
            # transformers' own apply_chat_template(tokenize=True) assumes).
            return rendered, list(self._tok(rendered, add_special_tokens=False)["input_ids"])
        assert request.prompt is not None
        return request.prompt, self.tokenize(request.prompt, special=True)

    # ----- structured output --------------------------------------------------------------

    def _matcher(self, params: SamplingParams) -> Any:
        fmt = params.response_format
        if fmt is None:
            return None
        try:
            import xgrammar as xgr
        except ImportError:
            raise missing("xgrammar", "hf") from None
        key = fmt.model_dump_json()
        compiled = self._grammars.get(key)
        if compiled is None:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tok, vocab_size=self._vocab, stop_token_ids=sorted(self._end_ids)
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            try:
                if fmt.type == "json_schema":
                    compiled = self._compiler.compile_json_schema(
                        json.dumps(fmt.json_schema), any_whitespace=False
                    )
                elif fmt.type == "regex":
                    compiled = self._compiler.compile_regex(fmt.pattern)
                else:
                    compiled = self._compiler.compile_regex(_xgr_regex(fmt.choices))
            except Exception as e:  # xgrammar raises RuntimeError with a multi-line message
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"xgrammar cannot enforce this {fmt.type}: {first}") from None
            self._grammars[key] = compiled
        return xgr.GrammarMatcher(compiled)

    # ----- generation ---------------------------------------------------------------------

    def _rows(self, index: int, prompt: list[int], params: SamplingParams) -> list[_Row]:
        from transformers import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        torch = self._torch
        ctx = self.context_length
        limit = params.max_tokens if ctx is None else min(params.max_tokens, ctx - len(prompt))
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7))
        rows = []
        for i in range(params.n):
            row = _Row(request=index, index=i, prompt=prompt, params=params, limit=limit)
            if not params.greedy:
                seed = (base_seed + i) % 2**63  # torch takes 64-bit seeds; ours are unbounded
                row.generator = torch.Generator(device=self._device).manual_seed(seed)
                row.warpers.append(TemperatureLogitsWarper(params.temperature))
                if params.top_k > 0:
                    row.warpers.append(TopKLogitsWarper(params.top_k))
                if params.top_p < 1.0:
                    row.warpers.append(TopPLogitsWarper(params.top_p))
                if params.min_p > 0.0:
                    row.warpers.append(MinPLogitsWarper(params.min_p))
            if params.repetition_penalty != 1.0:
                row.repetition = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
            if params.frequency_penalty or params.presence_penalty:
                row.counts = torch.zeros(self._vocab, device=self._device)
            if params.logprobs:
                row.logprobs = []
            row.matcher = self._matcher(params)
            rows.append(row)
        return rows

    def _prepare(self, requests: list[Request]) -> tuple[list[str], list[list[_Row]]]:
        ctx = self.context_length
        rendered, rows = [], []
        for i, request in enumerate(requests):
            text, ids = self._prompt_ids(request)
            if ctx is not None and len(ids) >= ctx:
                raise ContextLengthError(
                    f"prompt is {len(ids)} tokens but {self.name}'s context window is {ctx} "
                    "tokens (prompt plus output must fit)"
                )
            if not ids:
                raise ConfigError("the prompt tokenizes to nothing; give the model some text")
            rendered.append(text)
            rows.append(self._rows(i, ids, request.params))
        return rendered, rows

    def _generate(self, requests: list[Request]) -> list[Completion]:
        with self._lock:
            return self._generate_locked(requests)

    def _generate_locked(self, requests: list[Request]) -> list[Completion]:
        started = time.perf_counter()
        rendered, per_request = self._prepare(requests)
        # Pack whole requests into batches of at most max_batch rows (a request with a larger
        # n gets a batch of its own).
        batches: list[list[_Row]] = [[]]
        for rows in per_request:
            if batches[-1] and len(batches[-1]) + len(rows) > self._max_batch:
                batches.append([])
            batches[-1].extend(rows)
        queued: dict[int, float] = {}
        first_began: float | None = None
        for batch in batches:
            began = time.perf_counter()
            first_began = began if first_began is None else first_began
            for row in batch:
                queued.setdefault(row.request, began - first_began)
            for _ in self._decode(batch):
                pass
        return [
            self._completion(rows, text, started, queued[i])
            for i, (rows, text) in enumerate(zip(per_request, rendered, strict=True))
        ]

    def _stream(self, request: Request) -> Iterator[Delta]:
        with self._lock:
            yield from self._stream_locked(request)

    def _stream_locked(self, request: Request) -> Iterator[Delta]:
        started = time.perf_counter()
        rendered, per_request = self._prepare([request])
        row = per_request[0][0]
        stops = row.params.stop
        sent = 0  # logprobs already streamed
        for _ in self._decode([row]):
            if row.finish is not None:
                break
            safe = _safe_prefix(row.text, stops)
            piece = safe[row.emitted :]
            row.emitted = len(safe)
            # A token's logprob goes out with (or after) the last of its text, so a token held
            # back as a possible stop string and then dropped is never reported.
            ready: list[TokenLogprob | None] = []
            if row.logprobs is not None:
                while sent < len(row.logprobs) and row.ends[sent] <= row.emitted:
                    ready.append(row.logprobs[sent])
                    sent += 1
            for i, lp in enumerate(ready or [None]):
                if piece or lp is not None:
                    yield Delta(text=piece if i == 0 else "", logprob=lp)
        completion = self._completion([row], rendered[0], started, 0.0)
        rest: list[TokenLogprob | None] = list(row.logprobs[sent:]) if row.logprobs else []
        piece = row.text[row.emitted :]
        for lp in rest[:-1]:
            yield Delta(text=piece, logprob=lp)
            piece = ""
        yield Delta(
            text=piece,
            logprob=rest[-1] if rest else None,
            finish_reason=row.finish,
            completion=completion,
        )

    def _completion(
        self, rows: list[_Row], rendered: str, started: float, queue: float
    ) -> Completion:
        firsts = [r.first_at for r in rows if r.first_at is not None]
        lasts = [r.last_at for r in rows if r.last_at is not None]
        longest = max(rows, key=lambda r: r.steps)
        timings = Timings(queue=queue)
        if firsts and lasts:
            first, last = min(firsts), max(lasts)
            timings.ttft = first - started
            timings.tpot = (last - first) / (longest.steps - 1) if longest.steps > 1 else None
            timings.total = last - started
        choices = [
            Choice(
                index=r.index,
                text=r.text,
                finish_reason=r.finish or "length",
                token_ids=r.ids,
                logprobs=r.logprobs,
            )
            for r in rows
        ]
        usage = Usage(
            prompt_tokens=len(rows[0].prompt), completion_tokens=sum(len(r.ids) for r in rows)
        )
        return Completion(
            model=self.name, choices=choices, usage=usage, timings=timings, rendered_prompt=rendered
        )

    def _decode(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Decode ``rows`` together, yielding the rows that took a step after each step
        (finished rows are reported once more, then dropped)."""
        torch = self._torch
        model = self._live()
        dev = self._device
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        # Left padding shifts each row: positions count only its real tokens.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        mask = mask.to(dev)
        with torch.inference_mode():
            out = model(
                input_ids=ids.to(dev),
                attention_mask=mask,
                position_ids=positions.to(dev),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            next_pos = torch.tensor([len(r.prompt) for r in rows], device=dev)
            active = list(rows)
            while True:
                picked = self._pick(active, logits)
                now = time.perf_counter()
                for row, token in zip(active, picked, strict=True):
                    self._accept(row, token, now)
                yield active
                keep = [i for i, r in enumerate(active) if r.finish is None]
                if not keep:
                    return
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(index)
                    mask, next_pos = mask[index], next_pos[index]
                    picked = [picked[i] for i in keep]
                    active = [active[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                out = model(
                    input_ids=torch.tensor(picked, device=dev)[:, None],
                    attention_mask=mask,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                next_pos = next_pos + 1

    def _pick(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """The next token of each row; records logprobs of the raw distribution."""
        torch = self._torch
        wants = any(r.logprobs is not None for r in rows)
        raw = torch.log_softmax(logits, dim=-1) if wants else None
        work = logits.clone()
        grammar_rows = [i for i, r in enumerate(rows) if r.matcher is not None]
        if grammar_rows:
            import xgrammar as xgr

            bitmask = xgr.allocate_token_bitmask(len(rows), self._vocab)
            for i in grammar_rows:
                rows[i].matcher.fill_next_token_bitmask(bitmask, i)
            xgr.apply_token_bitmask_inplace(work, bitmask.to(work.device), indices=grammar_rows)
        picked = []
        for i, r in enumerate(rows):
            p = r.params
            x = work[i : i + 1]
            if r.repetition is not None:
                # transformers' definition: over the prompt and the generated tokens.
                seen = torch.tensor([r.prompt + r.ids], device=x.device)
                x = r.repetition(seen, x)
            if r.counts is not None:
                x = x - p.frequency_penalty * r.counts - p.presence_penalty * (r.counts > 0)
            if r.generator is None:
                token = int(x.argmax(dim=-1).item())
            else:
                for warp in r.warpers:
                    x = warp(None, x)
                probs = torch.softmax(x, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=r.generator).item())
            if raw is not None and r.logprobs is not None and token not in self._end_ids:
                r.logprobs.append(self._token_logprob(raw[i], token, p.top_logprobs))
            picked.append(token)
        return picked

    def _token_logprob(self, row: torch.Tensor, token: int, top: int) -> TokenLogprob:
        alts: list[TopLogprob] = []
        if top:
            values, ids = row.topk(top)
            alts = [
                TopLogprob(token=self.detokenize([t], special=True), id=t, logprob=v)
                for v, t in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        return TokenLogprob(
            token=self.detokenize([token], special=True),
            id=token,
            logprob=float(row[token]),
            top=alts,
        )

    def _accept(self, row: _Row, token: int, now: float) -> None:
        row.steps += 1
        row.first_at = row.first_at if row.first_at is not None else now
        row.last_at = now
        if token in self._end_ids:
            row.finish = "stop"
            return
        if row.matcher is not None and not row.matcher.accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} that its own mask allowed")
        row.ids.append(token)
        if row.counts is not None:
            row.counts[token] += 1
        row.text = self.detokenize(row.ids)
        row.ends.append(len(row.text))
        cut = _find_stop(row.text, row.params.stop)
        if cut is not None:
            row.text = row.text[:cut]
            # Keep only the tokens that produced the returned text.
            while row.ids and (row.ends[-2] if len(row.ends) > 1 else 0) >= cut:
                row.ids.pop()
                row.ends.pop()
                if row.logprobs:
                    row.logprobs.pop()
            row.finish = "stop"
        elif row.matcher is not None and row.matcher.is_terminated():
            row.finish = "stop"
        elif len(row.ids) >= row.limit:
            row.finish = "length"

    # ----- scoring ------------------------------------------------------------------------

    def _score(self, texts: list[str], contexts: list[str] | None) -> list[Scored]:
        with self._lock:
            return self._score_locked(texts, contexts)

    def _score_locked(self, texts: list[str], contexts: list[str] | None) -> list[Scored]:
        torch = self._torch
        model = self._live()
        ctx = self.context_length
        items: list[tuple[list[int], int]] = []  # (sequence, index of its first scored token)
        for i, text in enumerate(texts):
            prefix = self.tokenize(contexts[i], special=True) if contexts is not None else []
            if not prefix and self._bos is not None:
                prefix = [self._bos]
            seq = prefix + self.tokenize(text)
            if ctx is not None and len(seq) > ctx:
                raise ContextLengthError(
                    f"text {i} with its context is {len(seq)} tokens but {self.name}'s context "
                    f"window is {ctx} tokens"
                )
            # With nothing to condition on, the first token has no prediction to score.
            items.append((seq, max(len(prefix), 1)))
        results: list[Scored | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        while order:
            chunk = [order.pop(0)]
            while order:
                trial = [*chunk, order[0]]
                keep = max(len(items[i][0]) - items[i][1] for i in trial) + 1
                if len(trial) * keep * self._vocab > _SCORE_LOGIT_BUDGET:
                    break
                chunk.append(order.pop(0))
            width = max(len(items[i][0]) for i in chunk)
            keep = max(len(items[i][0]) - items[i][1] for i in chunk) + 1
            ids = torch.full((len(chunk), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, i in enumerate(chunk):
                seq = items[i][0]
                ids[b, width - len(seq) :] = torch.tensor(seq)
                mask[b, width - len(seq) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            dev = self._device
            with torch.inference_mode():
                out = model(
                    input_ids=ids.to(dev),
                    attention_mask=mask.to(dev),
                    position_ids=positions.to(dev),
                    use_cache=False,
                    logits_to_keep=keep,
                )
                logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            for b, i in enumerate(chunk):
                seq, first = items[i]
                targets = seq[first:]
                # Left padding puts every row's last token in the last column; the logits
                # predicting token t sit one column before it.
                rows = logprobs[b, keep - 1 - len(targets) : keep - 1]
                values = rows.gather(-1, torch.tensor(targets, device=dev)[:, None])[:, 0]
                results[i] = Scored(
                    text=texts[i],
                    tokens=[self.detokenize([t], special=True) for t in targets],
                    token_ids=targets,
                    logprobs=values.tolist(),
                )
        return [r for r in results if r is not None]


def _xgr_regex(choices: list[str]) -> str:
    """``structured.choice_regex`` without the escapes (``\\ ``, ``\\-``, ...) that Python's
    ``re.escape`` adds to non-metacharacters: xgrammar's ECMAScript-style parser warns on each
    one (matching the character anyway)."""
    return re.sub(
        r"\\(.)",
        lambda m: m[0] if m[1] in _REGEX_META else m[1],
        structured.choice_regex(choices),
        flags=re.DOTALL,
    )


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of ``text`` that can be streamed now: no unfinished UTF-8 character at the end
    (the tokenizer shows it as U+FFFD) and no tail that could still become a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    text = text[:end]
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return text[:-k]
    return text
