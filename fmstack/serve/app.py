"""``fmstack serve``: an OpenAI-compatible HTTP API and gateway over fmstack models (FastAPI).

Endpoints: ``/v1/chat/completions`` (tools included) and ``/v1/completions`` (streamed as
server-sent events or not), ``/v1/embeddings``, ``/v1/models``, ``/health``, ``/metrics``
(Prometheus) and the web UI at ``/`` with its ``/api/*`` routes (``fmstack.serve.ui``).

A request's path: the auth dependency (API keys and per-key rate limits, when keys are on) →
the body parsed and checked, every 4xx before any work (``protocol``) → the prompt measured
against the context window → the exact-response cache (deterministic requests only) → the
gateway (``gateway``: the route's queue, a replica, retries, fallbacks, timeouts) → the
response. A client that disconnects, before or during the stream, cancels its generation.
Every generation goes through the Model layer, so it is traced like any other call.

FastAPI is imported at module level (it resolves the handlers' annotations there); the CLI
imports this module only when serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fmstack.errors import FmstackError, OutputValidationError
from fmstack.guard.core import GuardBlocked
from fmstack.guard.guard import Guard, OutputStream, Screened
from fmstack.models.types import Completion, Delta, Request
from fmstack.serve import protocol
from fmstack.serve.cache import ResponseCache, deterministic
from fmstack.serve.errors import APIError
from fmstack.serve.gateway import Attempt, Gateway, Route, client_error
from fmstack.serve.metrics import ServerMetrics
from fmstack.serve.protocol import ChatBody, CompletionBody, EmbeddingBody, sse

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.models.embeddings import Embedder
    from fmstack.serve.auth import KeyStore
    from fmstack.store.traces import TraceStore

T = TypeVar("T")

# Larger bodies are refused before parsing (a 10 MB prompt is a client error, not work).
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_EMBEDDING_INPUTS = 2048
# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class _StatusCounter:
    """ASGI middleware: counts every /v1 answer by model, endpoint and status.

    Pure ASGI rather than BaseHTTPMiddleware, which would buffer streams and hide client
    disconnects from the handlers."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 499  # nothing sent: the client went away first (nginx's convention)

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            model = scope.get("state", {}).get("model", "-")
            self.metrics.requests.labels(model, path.removeprefix("/v1/"), str(status)).inc()


def create_app(served: Mapping[str, Model] | Gateway, *, keys: KeyStore | None = None,
               cache: ResponseCache | None = None, embeddings: Sequence[str] = (),
               cors_origins: Sequence[str] = (), traces: TraceStore | None = None,
               ui: bool = True, guards: Mapping[str, Guard] | None = None,
               key_guards: Mapping[str, Guard] | None = None) -> FastAPI:
    """The API over ``served``: name -> loaded Model, or a Gateway of routes.

    ``keys``: require an API key on /v1 and /api routes (per-key rate limits apply).
    ``cache``: answer repeated deterministic requests from it. ``embeddings``: embedder
    aliases served on /v1/embeddings, loaded on first use. ``cors_origins``: browser origins
    allowed to call the API. ``traces``: the store the UI browses (default: the user's).
    ``guards``: a Guard per served name; ``key_guards``: a Guard per API key name, which
    replaces the route's for that key's requests. A blocked request is a 400 with code
    ``guard_blocked`` and a ``reason``.
    """
    guards, key_guards = dict(guards or {}), dict(key_guards or {})
    gateway = served if isinstance(served, Gateway) else Gateway.of(dict(served))
    metrics = ServerMetrics(
        lambda: [(r.name, r.waiting, r.running) for r in gateway.routes.values()],
        lambda: [(r.name, engine.stats()) for r in gateway.routes.values()
                 for rep in r.replicas if (engine := getattr(rep.model, "engine", None))])
    gateway.on_retry = lambda route, e: metrics.retries.labels(route).inc()
    gateway.on_batch = lambda route, size: metrics.batch_size.labels(route).observe(size)
    embedders = _Embedders(embeddings)
    limiter = None
    if keys is not None:
        from fmstack.serve.auth import RateLimiter

        limiter = RateLimiter()

    async def auth(http: HTTPRequest) -> None:
        if keys is None or not http.url.path.startswith(("/v1/", "/api/")):
            return
        from fmstack.serve.auth import authenticate

        assert limiter is not None
        info = await run_in_threadpool(authenticate, http.headers.get("authorization"), keys,
                                       limiter)
        http.state.key = info.name

    app = FastAPI(title="fmstack", docs_url=None, redoc_url=None,
                  dependencies=[Depends(auth)])
    app.add_middleware(_StatusCounter, metrics=metrics)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Retry-After", "x-fmstack-cache"])
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def body_of(http: HTTPRequest, cls: type[T]) -> T:
        body: T = protocol.parse(await http.body(), cls, MAX_BODY_BYTES)  # type: ignore[arg-type]
        return body

    def route_of(http: HTTPRequest, name: str) -> Route:
        route = gateway.route(name)
        http.state.model = route.name  # for the status counter: only served names
        return route

    def tags(http: HTTPRequest, api: str) -> dict[str, str]:
        key = getattr(http.state, "key", None)
        return {"api": api, **({"api_key": key} if key else {})}

    async def watch(http: HTTPRequest, work: Awaitable[T], model: str) -> T:
        """``work``, cancelled if the client disconnects first (uvicorn does not cancel a
        handler whose client left; without this a queued request would still run)."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                metrics.cancelled.labels(model).inc()
                raise ClientGone

    def guard_of(http: HTTPRequest, route: Route) -> Guard | None:
        key = getattr(http.state, "key", None)
        if key is not None and key in key_guards:
            return key_guards[key]
        return guards.get(route.name)

    async def screen(guard: Guard, route: Route, request: Request) -> Screened:
        try:
            screened = await run_in_threadpool(guard.screen_traced, request, route.model)
        except GuardBlocked as e:
            metrics.guard.labels(route.name, "input", e.reason).inc()
            raise client_error(e) from None
        return screened

    async def generate(http: HTTPRequest, route: Route, request: Request, stream: bool,
                       include_usage: bool, make: _Shaper) -> Response:
        """Run ``request`` on ``route`` and answer it, streamed or whole."""
        started = time.perf_counter()
        headers: dict[str, str] = {}
        guard = guard_of(http, route)
        screened = await screen(guard, route, request) if guard is not None else None
        if screened is not None:
            request = screened.request
        key = None
        if cache is not None and deterministic(request):
            key = cache.key(route.name, request)
            hit = cache.get(key)
            metrics.cache.labels(route.name, "hit" if hit else "miss").inc()
            headers["x-fmstack-cache"] = "hit" if hit else "miss"
            if hit is not None:
                if stream:
                    return StreamingResponse(_replay(hit, make, include_usage),
                                             media_type="text/event-stream", headers=headers)
                return JSONResponse(make.whole(hit), headers=headers)
        attempt = Attempt(route=route.name, replica="")

        def done(c: Completion) -> None:
            metrics.completed(route.name, c, time.perf_counter() - started)
            if attempt.fallback:
                metrics.fallbacks.labels(route.name).inc()
            if key is not None and cache is not None:
                cache.put(key, c)

        try:
            if not stream:
                try:
                    c = await watch(http, gateway.complete(route.name, request, attempt),
                                    route.name)
                except OutputValidationError as e:
                    c = _cut_short(e)
                if guard is not None and screened is not None:
                    c = await watch(http, check_answer(guard, screened, route, c), route.name)
                done(c)
                headers["x-fmstack-replica"] = attempt.replica
                return JSONResponse(make.whole(c), headers=headers)
            deltas = gateway.run(route.name, request, stream=True, attempt=attempt)
            if guard is not None and screened is not None:
                deltas = guard_stream(guard, screened, route, deltas)
            # The first delta is awaited before answering, so a full queue, a dead upstream
            # or a timeout before any token is an HTTP error, not a broken stream.
            first = await watch(http, deltas.__anext__(), route.name)
        except ClientGone:
            return Response(status_code=499)
        except FmstackError as e:
            raise client_error(e) from None
        except StopAsyncIteration:
            return JSONResponse(APIError(500, "the model ended without answering",
                                         type="server_error").body(), status_code=500)
        headers["x-fmstack-replica"] = attempt.replica
        return StreamingResponse(
            _events(first, deltas, make, include_usage, done,
                    lambda: metrics.cancelled.labels(route.name).inc()),
            media_type="text/event-stream", headers=headers)

    async def check_answer(guard: Guard, screened: Screened, route: Route,
                           c: Completion) -> Completion:
        """The output policy on a whole answer; a blocked answer is re-asked through the
        gateway (``reask`` in the policy), then refused with a 400."""
        loop = asyncio.get_running_loop()

        def retry(r: Request) -> Completion:
            work = gateway.complete(route.name, r, Attempt(route=route.name, replica=""))
            return asyncio.run_coroutine_threadsafe(work, loop).result()

        try:
            return await run_in_threadpool(guard.answer, screened, c, retry, route.model.tracer)
        except GuardBlocked as e:
            metrics.guard.labels(route.name, "output", e.reason).inc()
            raise client_error(e) from None

    async def guard_stream(guard: Guard, screened: Screened, route: Route,
                           deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
        """The output policy on a stream (``OutputStream``): a block before the first text is
        a 400; after it, an error event ends the stream."""
        out = OutputStream(guard, screened, route.model.tracer)
        try:
            async for delta in deltas:
                checked = out.check(delta)
                if checked is not None:
                    yield checked
        except GuardBlocked as e:
            metrics.guard.labels(route.name, "output", e.reason).inc()
            raise
        finally:
            with contextlib.suppress(BaseException):
                await deltas.aclose()

    async def check_fits(route: Route, request: Request) -> None:
        """A prompt over the context window is a 400 before any work (streams included)."""
        model = route.model
        window = model.context_length
        if window is None:  # a remote model: its own server checks
            return

        def count() -> int:
            text = (model.render_chat(request.messages) if request.messages is not None
                    else request.prompt or "")
            return len(model.tokenize(text, special=request.messages is not None))

        try:
            used = await run_in_threadpool(count)
        except FmstackError as e:
            raise client_error(e) from None
        if used >= window:
            raise APIError(400, f"the prompt is {used} tokens; the context window of "
                                f"{route.name} is {window} tokens",
                           param="messages" if request.messages is not None else "prompt",
                           code="context_length_exceeded")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(gateway.routes),
                "queues": {r.name: {"waiting": r.waiting, "running": r.running,
                                    "replicas": [r.label(rep) for rep in r.replicas]}
                           for r in gateway.routes.values()}}

    @app.get("/metrics")
    def prometheus() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        names = [*gateway.routes, *embeddings]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "fmstack"} for name in names]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(http: HTTPRequest) -> Response:
        from fmstack.serve.tools import plan_tools

        body = await body_of(http, ChatBody)
        route = route_of(http, body.model)
        plan = plan_tools(body.messages, body.tools, body.tool_choice,
                          parallel_tool_calls=body.parallel_tool_calls)
        request = Request(messages=plan.messages,
                          params=protocol.sampling_params(body, plan.response_format),
                          tags=tags(http, "chat.completions"))
        await check_fits(route, request)
        return await generate(http, route, request, body.stream, body.include_usage,
                              _ChatShaper(body.model, plan if plan.active else None))

    @app.post("/v1/completions", response_model=None)
    async def completions(http: HTTPRequest) -> Response:
        body = await body_of(http, CompletionBody)
        route = route_of(http, body.model)
        request = Request(prompt=body.prompt, params=protocol.sampling_params(body),
                          tags=tags(http, "completions"))
        await check_fits(route, request)
        return await generate(http, route, request, body.stream, body.include_usage,
                              _TextShaper(body.model))

    @app.post("/v1/embeddings")
    async def embed(http: HTTPRequest) -> dict[str, Any]:
        body = await body_of(http, EmbeddingBody)
        if body.model not in embeddings:
            served = ", ".join(embeddings) or "none"
            raise APIError(404, f"embedding model {body.model!r} is not served here "
                                f"(embedding models: {served})", param="model",
                           code="model_not_found")
        http.state.model = body.model
        texts = [body.input] if isinstance(body.input, str) else body.input
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"input has {len(texts)} texts; at most "
                                f"{MAX_EMBEDDING_INPUTS} per request", param="input")
        if any(not t for t in texts):
            raise APIError(400, "input holds an empty string", param="input")
        if body.encoding_format not in ("float", "base64"):
            raise APIError(400, f"encoding_format {body.encoding_format!r} is not float or "
                                "base64", param="encoding_format")
        embedder = await run_in_threadpool(embedders.get, body.model)
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise APIError(400, f"{body.model} makes {embedder.dim}-dimensional vectors; "
                                f"dimensions={body.dimensions} is not supported",
                           param="dimensions")
        vectors, tokens = await run_in_threadpool(_embed, embedder, texts)
        metrics.embedding_inputs.labels(body.model).inc(len(texts))
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode()
                               if body.encoding_format == "base64" else v.tolist())}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    if ui:
        from fmstack.serve import ui as ui_routes
        from fmstack.store.traces import TraceStore

        app.include_router(ui_routes.router({n: r.model for n, r in gateway.routes.items()},
                                            traces or TraceStore()))
    app.state.gateway, app.state.metrics, app.state.cache = gateway, metrics, cache
    return app


# ----- shaping answers ------------------------------------------------------------------------


class _Shaper:
    """How one endpoint shapes a whole answer and stream chunks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    prefix = "cmpl"
    chunk_object = "text_completion"

    def base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, c: Completion) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> dict[str, Any] | None:
        return None

    def piece(self, delta: Delta) -> dict[str, Any] | None:
        """The chunk for one delta (None: nothing to send yet)."""
        raise NotImplementedError

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self.base(self.chunk_object), "choices": [choice]}


class _TextShaper(_Shaper):
    def whole(self, c: Completion) -> dict[str, Any]:
        return {**self.base("text_completion"), "usage": protocol.usage(c),
                "choices": [{"index": ch.index, "text": ch.text,
                             "logprobs": protocol.text_logprobs(ch),
                             "finish_reason": protocol.finish_reason(ch.finish_reason)}
                            for ch in c.choices]}

    def piece(self, delta: Delta) -> dict[str, Any] | None:
        finish = None if delta.finish_reason is None else protocol.finish_reason(
            delta.finish_reason)
        if not delta.text and finish is None:
            return None
        return self.chunk({"index": 0, "text": delta.text, "logprobs": None,
                           "finish_reason": finish})


class _ChatShaper(_Shaper):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, model: str, plan: Any) -> None:
        super().__init__(model)
        self.plan = plan  # a ToolPlan when tools are on: the answer is parsed at the end

    def _message(self, text: str, reason: str) -> tuple[dict[str, Any], str]:
        if self.plan is None:
            return {"role": "assistant", "content": text}, protocol.finish_reason(reason)
        from fmstack.serve.tools import reply_message

        reply = reply_message(text, self.plan)
        if reason == "length":
            reply.finish_reason = "length"
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return message, reply.finish_reason

    def whole(self, c: Completion) -> dict[str, Any]:
        choices = []
        for ch in c.choices:
            message, finish = self._message(ch.text, ch.finish_reason)
            choices.append({"index": ch.index, "finish_reason": finish, "message": message,
                            "logprobs": protocol.chat_logprobs(ch.logprobs)})
        return {**self.base("chat.completion"), "usage": protocol.usage(c), "choices": choices}

    def opening(self) -> dict[str, Any] | None:
        return self.chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                           "finish_reason": None})

    def piece(self, delta: Delta) -> dict[str, Any] | None:
        if self.plan is not None:
            # A tool call is JSON under a constraint: sent whole once it is complete.
            if delta.completion is None:
                return None
            message, finish = self._message(delta.completion.text,
                                            delta.completion.finish_reason)
            out: dict[str, Any] = {}
            if message.get("content"):
                out["content"] = message["content"]
            if message.get("tool_calls"):
                out["tool_calls"] = [{"index": i, **call}
                                     for i, call in enumerate(message["tool_calls"])]
            return self.chunk({"index": 0, "delta": out, "finish_reason": finish})
        reason = None if delta.finish_reason is None else protocol.finish_reason(
            delta.finish_reason)
        if not delta.text and reason is None:
            return None
        out = {"content": delta.text} if delta.text else {}
        if delta.logprob is not None:
            lp = protocol.chat_logprobs([delta.logprob])
            return self.chunk({"index": 0, "delta": out, "logprobs": lp,
                               "finish_reason": reason})
        return self.chunk({"index": 0, "delta": out, "finish_reason": reason})


async def _events(first: Delta, deltas: AsyncIterator[Delta], make: _Shaper,
                  include_usage: bool, done: Callable[[Completion], None],
                  cancelled: Callable[[], None]) -> AsyncIterator[str]:
    """The SSE stream: the opening chunk, a chunk per delta, usage when asked, ``[DONE]``.

    An error after the stream began ends it with an error event. A client that goes away
    cancels this generator inside ``anext(deltas)``, and the gateway stops the generation."""
    opening = make.opening()
    if opening is not None:
        yield sse(opening)
    final: Completion | None = None
    try:
        delta: Delta | None = first
        while delta is not None:
            if delta.completion is not None:
                final = delta.completion
            chunk = make.piece(delta)
            if chunk is not None:
                yield sse(chunk)
            delta = await anext(deltas, None)
    except FmstackError as e:
        try:
            final = _cut_short(e)
        except FmstackError:
            yield sse(client_error(e).body())
            yield sse("[DONE]")
            return
        chunk = make.piece(Delta(finish_reason="length", completion=final))
        if chunk is not None:
            yield sse(chunk)
    except (asyncio.CancelledError, GeneratorExit):
        cancelled()
        raise
    finally:
        with contextlib.suppress(BaseException):
            await deltas.aclose()  # type: ignore[attr-defined]
    if final is not None:
        done(final)
        if include_usage:
            yield sse({**make.base(make.chunk_object), "choices": [],
                       "usage": protocol.usage(final)})
    yield sse("[DONE]")


def _cut_short(e: FmstackError) -> Completion:
    """The answer of a structured request cut short by ``max_tokens``: returned as it is with
    finish_reason "length", as OpenAI does (re-raises any other error)."""
    c = e.completion if isinstance(e, OutputValidationError) else None
    if c is None or any(ch.finish_reason != "length" for ch in c.choices):
        raise e
    return c


async def _replay(c: Completion, make: _Shaper, include_usage: bool) -> AsyncIterator[str]:
    """A cached answer as a stream: the whole text in one chunk."""
    opening = make.opening()
    if opening is not None:
        yield sse(opening)
    choice = c.choices[0]
    chunk = make.piece(Delta(text=choice.text))
    if chunk is not None:
        yield sse(chunk)
    last = make.piece(Delta(finish_reason=choice.finish_reason, completion=c))
    if last is not None:
        yield sse(last)
    if include_usage:
        yield sse({**make.base(make.chunk_object), "choices": [], "usage": protocol.usage(c)})
    yield sse("[DONE]")


# ----- embeddings -----------------------------------------------------------------------------


class _Embedders:
    """Embedding models by alias, each loaded on first use (sentence-transformers is slow to
    import; a server that never embeds never pays for it)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._loaded:
                from fmstack.models.embeddings import load_embedder

                try:
                    self._loaded[name] = load_embedder(name)
                except FmstackError as e:
                    raise APIError(500, f"cannot load embedding model {name}: {e}",
                                   type="server_error") from None
            return self._loaded[name]


def _embed(embedder: Embedder, texts: list[str]) -> tuple[Any, int]:
    tokenizer = embedder._model.tokenizer
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    return embedder.embed(texts), tokens
