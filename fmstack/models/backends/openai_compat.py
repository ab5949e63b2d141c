"""The ``openai`` backend: any OpenAI-compatible HTTP endpoint, through the official client.

Targets: ``gpt-4o-mini`` (base URL ``$OPENAI_BASE_URL`` or https://api.openai.com/v1) or
``name@http://host:port/v1``. Chat requests go to ``/chat/completions``; raw-text prompts to the
legacy ``/completions`` endpoint, which is what base models and plain continuation want.

The API key is read from the environment variable ``api_key_env`` when the client is made and
is handed only to that client: it is not an attribute of the model, and error messages built
here have it scrubbed. A loopback endpoint (127.0.0.1, localhost, ::1) needs no key; the
client then sends a placeholder, since it refuses to run without one.

Sampling parameters the OpenAI API has no field for (``top_k``, ``min_p``,
``repetition_penalty``) raise ``CapabilityError`` when set, unless ``extra_sampling=True``
declares that the server takes them as extra body fields (vLLM and llama.cpp do). In that mode
they are always sent, neutral values included, because llama.cpp's servers otherwise apply
their own non-neutral defaults (top_k=40, min_p=0.05, repeat_penalty=1.1) and greedy decoding
would silently stop being greedy.

What llama-cpp-python 0.3.36's server (``python -m llama_cpp.server``) does with the OpenAI
fields, read from its source and checked by tests/test_openai_backend.py:

* ``response_format`` accepts only ``{"type": "json_object", "schema": ...}`` (the Anyscale
  form); the OpenAI ``json_schema`` form is a 422. ``json_schema_style="json_object"`` sends
  the schema that way. The server falls back to unconstrained JSON when it cannot convert a
  schema, so every output is still validated here (``Model._finish``).
* ``n`` is accepted and ignored (one choice). When a server returns fewer choices than asked,
  this backend asks again for the rest, with ``seed + i`` for the i-th choice when seeded.
* ``logprobs``/``top_logprobs`` work on both endpoints; its top list also carries the chosen
  token, so the alternatives are re-sorted and cut to ``top_logprobs`` here.
* ``seed``, ``stop`` and streaming work. ``stream_options`` is ignored: streamed replies carry
  no usage, so completion tokens are counted from the deltas and prompt tokens stay 0.
* Prompt logprobs (``echo=True``) are off by one token for models without a BOS token, such
  as SmolLM2, so ``score`` is not offered: ``capabilities.score`` is False.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from fmstack.errors import (
    CapabilityError,
    ConfigError,
    ContextLengthError,
    EndpointError,
    missing,
)
from fmstack.models.base import Capabilities, Model
from fmstack.models.types import (
    Choice,
    Completion,
    Delta,
    FinishReason,
    JsonSchemaFormat,
    Request,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

if TYPE_CHECKING:
    from fmstack.store.traces import TraceStore

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Sent to loopback servers that need no key: the client will not start without one.
PLACEHOLDER_KEY = "fmstack-no-key"
REDACTED = "[REDACTED]"

# Parameters with no OpenAI field, with the value that leaves sampling untouched.
_EXTRA_SAMPLING = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
_CONTEXT_ERROR = re.compile(
    r"context.length|context window|maximum context|too many tokens|prompt is too long", re.I
)


def split_target(target: str, base_url: str | None = None) -> tuple[str, str]:
    """``(model, base_url)`` for ``name`` or ``name@http(s)://host:port/v1``."""
    model, url = target, None
    at = re.search(r"@(?=[A-Za-z][A-Za-z0-9+.-]*://)", target)
    if at is not None:
        model, url = target[: at.start()], target[at.end() :]
    if url is not None and base_url is not None and url.rstrip("/") != base_url.rstrip("/"):
        raise ConfigError(f"target {target!r} names {url} but base_url={base_url!r} was also given")
    url = url or base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not model:
        raise ConfigError(f"target {target!r} has no model name (expected name@{url})")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"base URL {url!r} is not an http(s)://host[:port]/path URL")
    return model, url.rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIModel(Model):
    """A model behind an OpenAI-compatible API. Not local: every call is an HTTP request."""

    backend = "openai"
    capabilities = Capabilities(
        score=False,
        tokenize=False,
        local=False,
        response_formats=frozenset({"json_schema"}),
    )

    def __init__(
        self,
        target: str,
        *,
        name: str,
        tracer: TraceStore | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 2,
        extra_sampling: bool = False,
        json_schema_style: Literal["json_schema", "json_object"] = "json_schema",
        context_length: int | None = None,
    ) -> None:
        super().__init__(name, tracer=tracer)
        self.model, self.base_url = split_target(target, base_url)
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if json_schema_style not in ("json_schema", "json_object"):
            raise ConfigError(
                "json_schema_style must be 'json_schema' or 'json_object', "
                f"got {json_schema_style!r}"
            )
        if context_length is not None and context_length < 1:
            raise ConfigError(f"context_length must be >= 1, got {context_length}")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.extra_sampling = extra_sampling
        self.json_schema_style = json_schema_style
        self._context_length = context_length

        key = os.environ.get(api_key_env) or None
        if key is None and not is_loopback(self.base_url):
            raise EndpointError(f"set {api_key_env} to the API key for {self.base_url}")
        try:
            import openai
        except ImportError:
            raise missing("openai", "openai") from None
        self._client: Any = openai.OpenAI(
            api_key=key or PLACEHOLDER_KEY,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def context_length(self) -> int | None:
        # The OpenAI API does not report it; only what the user configured is known.
        return self._context_length

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<OpenAIModel {self.model} at {self.base_url}>"

    # ----- checks -------------------------------------------------------------------------

    def _check(self, request: Request) -> None:
        super()._check(request)
        p = request.params
        if not self.extra_sampling:
            for field, neutral in _EXTRA_SAMPLING.items():
                if getattr(p, field) != neutral:
                    raise CapabilityError(
                        f"the OpenAI API has no {field} parameter: leave it at {neutral}, or "
                        "pass extra_sampling=True if the server accepts it (vLLM and llama.cpp do)"
                    )
        if p.response_format is not None and not request.is_chat:
            raise CapabilityError(
                "structured output on the openai backend needs chat messages "
                "(the completions endpoint has no response_format)"
            )

    # ----- request building ---------------------------------------------------------------

    def _kwargs(self, request: Request, *, stream: bool = False) -> dict[str, Any]:
        p = request.params
        kw: dict[str, Any] = {
            "model": self.model,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "frequency_penalty": p.frequency_penalty,
            "presence_penalty": p.presence_penalty,
        }
        if p.seed is not None:
            kw["seed"] = p.seed
        if p.stop:
            kw["stop"] = list(p.stop)
        if p.n > 1:
            kw["n"] = p.n
        if request.is_chat:
            assert request.messages is not None
            kw["messages"] = [m.model_dump() for m in request.messages]
            if p.logprobs:
                kw["logprobs"] = True
                kw["top_logprobs"] = p.top_logprobs
            if isinstance(p.response_format, JsonSchemaFormat):
                kw["response_format"] = self._response_format(p.response_format)
        else:
            kw["prompt"] = request.prompt
            if p.logprobs:
                kw["logprobs"] = p.top_logprobs
        if self.extra_sampling:
            # llama.cpp spells it repeat_penalty, vLLM repetition_penalty; each ignores the other.
            kw["extra_body"] = {
                "top_k": p.top_k,
                "min_p": p.min_p,
                "repeat_penalty": p.repetition_penalty,
                "repetition_penalty": p.repetition_penalty,
            }
        if stream:
            kw["stream"] = True
            kw["stream_options"] = {"include_usage": True}
        return kw

    def _response_format(self, fmt: JsonSchemaFormat) -> dict[str, Any]:
        if self.json_schema_style == "json_object":
            return {"type": "json_object", "schema": fmt.json_schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": fmt.name, "schema": fmt.json_schema, "strict": True},
        }

    def _create(self, request: Request, kw: dict[str, Any]) -> Any:
        endpoint = self._client.chat.completions if request.is_chat else self._client.completions
        with self._errors():
            return endpoint.create(**kw)

    # ----- generation ---------------------------------------------------------------------

    def _generate(self, requests: list[Request]) -> list[Completion]:
        return [self._complete_one(r) for r in requests]

    def _complete_one(self, request: Request) -> Completion:
        p = request.params
        started = time.perf_counter()
        kw = self._kwargs(request)
        response = self._create(request, kw)
        choices = self._choices(request, response)
        usage = _usage(response)
        model = getattr(response, "model", None) or self.model
        # Servers that ignore n (llama-cpp-python's) answer with one choice: ask for the rest.
        while len(choices) < p.n:
            more = dict(kw, n=p.n - len(choices))
            if p.seed is not None:
                more["seed"] = p.seed + len(choices)
            if more["n"] == 1:
                del more["n"]
            response = self._create(request, more)
            extra = self._choices(request, response)
            if not extra:
                raise EndpointError(f"{self.base_url} returned no choices")
            choices.extend(extra)
            more_usage = _usage(response)
            usage.prompt_tokens += more_usage.prompt_tokens
            usage.completion_tokens += more_usage.completion_tokens
        choices = choices[: p.n]
        for i, choice in enumerate(choices):
            choice.index = i
        return Completion(
            model=model,
            choices=choices,
            usage=usage,
            timings=Timings(total=time.perf_counter() - started),
            rendered_prompt=request.prompt,
        )

    def _choices(self, request: Request, response: Any) -> list[Choice]:
        k = request.params.top_logprobs
        out = []
        for c in getattr(response, "choices", None) or []:
            if request.is_chat:
                text = c.message.content or ""
                content = getattr(c.logprobs, "content", None) if c.logprobs else None
                lps = [_chat_logprob(t, k) for t in content] if content is not None else None
            else:
                text = c.text or ""
                lps = _text_logprobs(c.logprobs, k) if c.logprobs is not None else None
            if request.params.logprobs and lps is None:
                raise EndpointError(f"{self.base_url} returned no logprobs although asked for them")
            out.append(
                Choice(
                    index=c.index or 0,
                    text=text,
                    finish_reason=_finish(c.finish_reason),
                    logprobs=lps,
                )
            )
        return out

    # ----- streaming ----------------------------------------------------------------------

    def _stream(self, request: Request) -> Iterator[Delta]:
        k = request.params.top_logprobs
        started = time.perf_counter()
        first: float | None = None
        last = started
        pieces: list[str] = []
        logprobs: list[TokenLogprob] = []
        chunks_with_text = 0
        finish: FinishReason = "stop"
        seen_finish = False
        usage: Usage | None = None
        model = self.model
        stream = self._create(request, self._kwargs(request, stream=True))
        try:
            with self._errors():
                for chunk in stream:
                    model = getattr(chunk, "model", None) or model
                    if getattr(chunk, "usage", None) is not None:
                        usage = _usage(chunk)
                    for c in chunk.choices or []:
                        if request.is_chat:
                            text = (c.delta.content if c.delta is not None else None) or ""
                            content = getattr(c.logprobs, "content", None) if c.logprobs else None
                            lps = [_chat_logprob(t, k) for t in content or []]
                        else:
                            text = c.text or ""
                            lps = _text_logprobs(c.logprobs, k) if c.logprobs else []
                        if c.finish_reason is not None:
                            finish, seen_finish = _finish(c.finish_reason), True
                        if not text and not lps:
                            continue
                        last = time.perf_counter()
                        if first is None:
                            first = last
                        if text:
                            chunks_with_text += 1
                            pieces.append(text)
                        logprobs.extend(lps)
                        for i, lp in enumerate(lps or [None]):
                            yield Delta(text=text if i == 0 else "", logprob=lp)
        finally:
            stream.close()
        if not seen_finish:
            self._stream_failed(request)
        if usage is None:
            # No usage chunk (stream_options unsupported): count what arrived instead.
            usage = Usage(completion_tokens=len(logprobs) or chunks_with_text)
        total = time.perf_counter() - started
        n_out = usage.completion_tokens
        timings = Timings(
            ttft=None if first is None else first - started,
            tpot=(last - first) / (n_out - 1) if first is not None and n_out > 1 else None,
            total=total,
        )
        choice = Choice(
            text="".join(pieces),
            finish_reason=finish,
            logprobs=logprobs if request.params.logprobs else None,
        )
        completion = Completion(
            model=model,
            choices=[choice],
            usage=usage,
            timings=timings,
            rendered_prompt=request.prompt,
        )
        yield Delta(finish_reason=finish, completion=completion)

    def _stream_failed(self, request: Request) -> None:
        """A stream that ends without a finish_reason broke on the server. llama-cpp-python's
        server fails that way on errors found after streaming began (such as a prompt longer
        than the context); the same request unstreamed, cut to one token, shows the error."""
        kw = self._kwargs(request)
        kw["max_tokens"] = 1
        kw.pop("n", None)
        self._create(request, kw)
        raise EndpointError(f"{self.base_url} closed the stream before it finished")

    # ----- errors -------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the client's exceptions into fmstack's one-line errors."""
        import openai

        url = self.base_url
        try:
            yield
        except openai.APITimeoutError:
            raise EndpointError(f"{url} did not answer within {self.timeout:g} s") from None
        except openai.APIConnectionError as e:
            raise EndpointError(f"cannot reach {url}: {self._scrub(_root_cause(e))}") from None
        except openai.AuthenticationError as e:
            why = self._scrub(_server_message(e))
            if os.environ.get(self.api_key_env):
                raise EndpointError(
                    f"{url} rejected the API key in {self.api_key_env} (401: {why})", status=401
                ) from None
            raise EndpointError(
                f"{url} wants an API key (401: {why}): set {self.api_key_env}", status=401
            ) from None
        except openai.APIStatusError as e:
            why = self._scrub(_server_message(e))
            if e.code == "context_length_exceeded" or _CONTEXT_ERROR.search(why):
                raise ContextLengthError(f"{url}: {why}") from None
            hint = ""
            if "response_format" in why and "json_schema" in why:
                hint = " (for llama-cpp-python's server use json_schema_style='json_object')"
            raise EndpointError(
                f"{url} answered HTTP {e.status_code}: {why}{hint}", status=e.status_code
            ) from None

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, REDACTED) if key else text


# ----- response parsing -------------------------------------------------------------------


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _usage(response: Any) -> Usage:
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    return Usage(
        prompt_tokens=getattr(u, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(u, "completion_tokens", 0) or 0,
    )


def _top(alternatives: list[tuple[str, float]], k: int) -> list[TopLogprob]:
    best = sorted(alternatives, key=lambda a: a[1], reverse=True)[:k]
    return [TopLogprob(token=t, logprob=lp) for t, lp in best]


def _chat_logprob(item: Any, k: int) -> TokenLogprob:
    alternatives = [(t.token, t.logprob) for t in item.top_logprobs or []]
    return TokenLogprob(token=item.token, logprob=item.logprob, top=_top(alternatives, k))


def _text_logprobs(lp: Any, k: int) -> list[TokenLogprob]:
    tokens = lp.tokens or []
    values = lp.token_logprobs or []
    tops = lp.top_logprobs or [None] * len(tokens)
    out = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        if value is None:  # the first token of an echoed prompt has no logprob
            continue
        out.append(TokenLogprob(token=token, logprob=value, top=_top(list((top or {}).items()), k)))
    return out


def _server_message(e: Any, limit: int = 400) -> str:
    """The server's own words, on one line."""
    text = " ".join(_raw_message(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
            return "; ".join(
                f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}"
                for d in detail
                if isinstance(d, dict)
            )
        if detail is not None:
            return str(detail)
    if isinstance(body, str) and body:
        return body
    return str(getattr(e, "message", e))


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return str(e) or type(e).__name__
