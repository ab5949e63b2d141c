"""An OpenAI-compatible HTTP API over fmstack models (FastAPI): the first slice of
``fmstack serve`` (issue 6).

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (non-streaming and server-sent
events, with a final usage chunk when ``stream_options.include_usage`` is set; ``n``, ``stop``,
``seed``, ``logprobs``/``top_logprobs``, ``response_format`` ``json_object``/``json_schema``),
``/v1/models`` and ``/health``. Requests are checked before any work: an unknown model is a
404, a bad field a 400 naming it, ``n > 1`` with streaming a 400, a body over 4 MB a 413;
errors use OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``. Each
request goes through the Model layer, so it is traced like any other call.

FastAPI is imported at module level (it resolves the handlers' annotations there); the CLI
imports this module only when serving. Not yet built (issue 6): batching across requests, a
bounded queue with 429s, the response cache, API keys, /metrics, the web UI, tools, several
backends behind one name (replicas, fallbacks).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from fmstack.errors import CapabilityError, ConfigError, ContextLengthError, FmstackError
from fmstack.models.types import (
    Completion,
    JsonSchemaFormat,
    Message,
    Request,
    SamplingParams,
)
from fmstack.serve.errors import APIError

if TYPE_CHECKING:
    from fmstack.models.base import Model

# Larger bodies are refused before parsing (a 10 MB prompt is a client error, not work).
MAX_BODY_BYTES = 4 * 1024 * 1024


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI's API does (clients send `user`, `metadata`, ...).
    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str
    logprobs: int | None = None  # type: ignore[assignment]  # legacy API: a count


def _params(body: _Body, chat: bool) -> SamplingParams:
    values: dict[str, Any] = {"n": body.n}
    for name in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        if getattr(body, name) is not None:
            values[name] = getattr(body, name)
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        values["max_tokens"] = limit
    if body.stop is not None:
        values["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    if chat:
        if body.logprobs:
            values.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    elif isinstance(body, CompletionBody) and body.logprobs:
        values.update(logprobs=True, top_logprobs=body.logprobs)
    fmt = body.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise APIError(400, "response_format.json_schema.schema must be a JSON Schema "
                                    "object", param="response_format")
            values["response_format"] = JsonSchemaFormat(schema=spec["schema"],
                                                         name=spec.get("name", "output"))
        elif kind == "json_object":
            values["response_format"] = JsonSchemaFormat(schema={"type": "object"})
        elif kind != "text":
            raise APIError(400, f"response_format.type {kind!r} is not one of text, "
                                "json_object, json_schema", param="response_format")
    try:
        return SamplingParams.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise APIError(400, f"{field}: {err['msg']}", param=field) from None


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.usage.prompt_tokens,
            "completion_tokens": c.usage.completion_tokens,
            "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens}


def _chat_logprobs(choice: Any) -> dict[str, Any] | None:
    if choice.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": None,
                         "top_logprobs": [{"token": a.token, "logprob": a.logprob,
                                           "bytes": None} for a in t.top]}
                        for t in choice.logprobs]}


def create_app(models: Mapping[str, Model]) -> FastAPI:
    """The API over ``models`` (name -> loaded Model); requests pick one by ``model``."""
    app = FastAPI(title="fmstack", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def model_for(name: str) -> Model:
        if name not in models:
            raise APIError(404, f"model {name!r} is not served here (models: "
                                f"{', '.join(models)})", param="model",
                           code="model_not_found")
        return models[name]

    async def parse(http: HTTPRequest, cls: type[_Body]) -> Any:
        raw = await http.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"request body of {len(raw)} bytes is over the limit of "
                                f"{MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        try:
            body = cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise APIError(400, f"{field}: {err['msg']}", param=field) from None
        if body.stream and body.n > 1:
            raise APIError(400, "n > 1 cannot be streamed: ask for stream=false or n=1",
                           param="n")
        return body

    def check_fits(model: Model, request: Request) -> None:
        """A prompt over the context window is a 400 before any work (streams included)."""
        window = model.context_length
        if window is None:  # a remote model: its own server checks
            return
        text = (model.render_chat(request.messages) if request.messages is not None
                else request.prompt or "")
        used = len(model.tokenize(text, special=request.messages is not None))
        if used >= window:
            raise APIError(400, f"the prompt is {used} tokens; the context window of "
                                f"{model.name} is {window} tokens",
                           param="messages" if request.messages is not None else "prompt",
                           code="context_length_exceeded")

    def run(model: Model, request: Request) -> Completion:
        try:
            return model.complete(request)
        except (ContextLengthError, CapabilityError, ConfigError) as e:
            raise APIError(400, str(e)) from None
        except FmstackError as e:
            raise APIError(500, str(e), type="server_error") from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "fmstack"} for name in models]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(http: HTTPRequest) -> Any:
        body: ChatBody = await parse(http, ChatBody)
        model = model_for(body.model)
        request = Request(messages=body.messages, params=_params(body, chat=True),
                          tags={"api": "chat.completions"})
        await run_in_threadpool(check_fits, model, request)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_chat_events(model, request, rid, body.model,
                                                  include_usage),
                                     media_type="text/event-stream")
        c = await run_in_threadpool(run, model, request)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": body.model, "usage": _usage(c),
                "choices": [{"index": ch.index, "finish_reason": _finish(ch.finish_reason),
                             "message": {"role": "assistant", "content": ch.text},
                             "logprobs": _chat_logprobs(ch)} for ch in c.choices]}

    @app.post("/v1/completions", response_model=None)
    async def completions(http: HTTPRequest) -> Any:
        body: CompletionBody = await parse(http, CompletionBody)
        model = model_for(body.model)
        request = Request(prompt=body.prompt, params=_params(body, chat=False),
                          tags={"api": "completions"})
        await run_in_threadpool(check_fits, model, request)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_text_events(model, request, rid, body.model,
                                                  include_usage),
                                     media_type="text/event-stream")
        c = await run_in_threadpool(run, model, request)
        return {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": body.model, "usage": _usage(c),
                "choices": [{"index": ch.index, "text": ch.text, "logprobs": None,
                             "finish_reason": _finish(ch.finish_reason)} for ch in c.choices]}

    return app


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _stream(model: Model, request: Request) -> Iterator[Any]:
    """The model's deltas; an error mid-stream ends the stream with an error event."""
    try:
        yield from model.stream(request)
    except FmstackError as e:
        yield APIError(400 if isinstance(e, ConfigError | ContextLengthError) else 500, str(e))


def _events(model: Model, request: Request, base: dict[str, Any], include_usage: bool,
            choice: Callable[[str, str | None], dict[str, Any]],
            first: dict[str, Any] | None = None) -> Iterator[str]:
    """The SSE stream of one request: ``first`` (if any), a chunk per delta shaped by
    ``choice(text, finish_reason)``, the usage chunk when asked for, then ``[DONE]``."""
    if first is not None:
        yield _sse({**base, "choices": [first]})
    final: Completion | None = None
    for delta in _stream(model, request):
        if isinstance(delta, APIError):
            yield _sse(delta.body())
            break
        finish = None
        if delta.finish_reason is not None:
            finish, final = _finish(delta.finish_reason), delta.completion
        if delta.text or finish:
            yield _sse({**base, "choices": [choice(delta.text, finish)]})
    else:
        if include_usage and final is not None:
            yield _sse({**base, "choices": [], "usage": _usage(final)})
    yield _sse("[DONE]")


def _chat_events(model: Model, request: Request, rid: str, name: str,
                 include_usage: bool) -> Iterator[str]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": name}
    return _events(model, request, base, include_usage,
                   lambda text, finish: {"index": 0, "delta": {"content": text} if text else {},
                                         "finish_reason": finish},
                   first={"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None})


def _text_events(model: Model, request: Request, rid: str, name: str,
                 include_usage: bool) -> Iterator[str]:
    base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name}
    return _events(model, request, base, include_usage,
                   lambda text, finish: {"index": 0, "text": text, "logprobs": None,
                                         "finish_reason": finish})
