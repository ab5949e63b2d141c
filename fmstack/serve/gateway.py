"""Routing requests to models: replicas, fallbacks, retries, timeouts and per-model queues.

A **Route** is what a client names in ``model``: one or more replicas (loaded Models: local
backends or upstream OpenAI-compatible servers) plus the names of fallback routes. A request
takes a slot on a replica (``max_concurrency`` slots each) and waits in the route's queue when
all slots are busy; a queue holding ``max_queue`` waiters answers 429 with ``Retry-After``,
estimated from the route's recent service times.

Every generation runs on its own worker thread (the backends block), and streams its deltas to
the event loop. That one path gives three things: a client that goes away cancels its
generation within a token (the worker stops pulling from the backend's stream, which releases
the model); a slow attempt is abandoned after ``timeout`` seconds; and an upstream failure
before anything reached the client is retried (with exponential backoff, on another replica
when there is one), then handed to the fallback routes in order. A failure after the first
token cannot be retried without sending text twice: the stream ends with an error event.
Client errors (a bad parameter, a prompt over the window) are never retried.

Batching: a GGUF model in the engine backend (``capabilities.continuous``) decodes concurrent
requests together by itself, so its route simply admits ``max_concurrency`` (its slot count)
at once. A backend that decodes only a list passed to one call (``capabilities.batch``, the hf
backend) gets a ``Batcher``: non-streamed requests that hold slots at the same time share one
``generate`` call, taking whatever queued while the previous batch ran (``max_concurrency``
above 1). The plain llamacpp backend decodes one sequence at a time; streams to a list-batching
backend are never batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fmstack.errors import (
    CapabilityError,
    ConfigError,
    ContextLengthError,
    EndpointError,
    FmstackError,
    OutputValidationError,
)
from fmstack.guard.core import GuardBlocked
from fmstack.models.types import Completion, Delta, Request
from fmstack.serve.errors import APIError

if TYPE_CHECKING:
    from fmstack.models.base import Model

Policy = Literal["round_robin", "least_busy"]


class RouteSpec(BaseModel):
    """How one served name behaves (a ``models:`` entry of the serve config)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    # Alias or URI of each replica; the same URI twice loads it twice (two local copies).
    uris: list[str] = Field(min_length=1)
    options: dict[str, object] = Field(default_factory=dict)
    policy: Policy = "least_busy"
    fallbacks: list[str] = Field(default_factory=list)
    retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(0.25, ge=0.0, le=30.0)  # seconds before the first retry; doubles
    timeout: float | None = Field(None, gt=0)  # seconds an attempt may take
    max_concurrency: int = Field(1, ge=1, le=1024)  # slots per replica
    max_queue: int = Field(64, ge=0, le=100_000)  # waiting requests beyond the running ones
    # A guard policy (built-in name or YAML file, fmstack.guard) for this name's requests.
    guard: str | None = None


class QueueFull(APIError):
    def __init__(self, route: str, waiting: int, retry_after: int) -> None:
        super().__init__(429, f"model {route!r} is busy: {waiting} requests are already "
                              f"waiting; retry in {retry_after} s", type="rate_limit_error",
                         code="queue_full", headers={"Retry-After": str(retry_after)})


class Cancelled(FmstackError):
    """The client went away; its generation was stopped."""


class AttemptTimeout(EndpointError):
    """An attempt took longer than the route's ``timeout``."""


class Batcher:
    """Runs the requests submitted to a batch-capable model in ``generate`` calls of up to
    ``max_batch``: one worker thread takes everything that queued while it was busy."""

    def __init__(self, model: Model, max_batch: int = 16,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.model, self.max_batch, self.on_batch = model, max_batch, on_batch
        self._pending: list[tuple[Request, Future[Completion]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, request: Request) -> Future[Completion]:
        done: Future[Completion] = Future()
        with self._cond:
            self._pending.append((request, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name="fmstack-batcher")
                self._thread.start()
            self._cond.notify()
        return done

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                outs = self.model.generate([r for r, _ in batch])
            except Exception as e:
                if len(batch) == 1:
                    batch[0][1].set_exception(e)
                    continue
                # One bad request must not fail the others: run them one by one.
                for r, done in batch:
                    try:
                        done.set_result(self.model.complete(r))
                    except Exception as one:
                        done.set_exception(one)
                continue
            for (_, done), out in zip(batch, outs, strict=True):
                done.set_result(out)


@dataclass
class Replica:
    model: Model
    active: int = 0
    served: int = 0
    failed: int = 0
    batcher: Batcher | None = None  # set by the Gateway for batch-capable models


@dataclass
class Route:
    spec: RouteSpec
    replicas: list[Replica]
    waiting: int = 0
    # Mean seconds per request (exponentially weighted), for Retry-After.
    service_s: float = 1.0
    _cond: asyncio.Condition | None = None
    _turn: Iterator[int] = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> int:
        return sum(r.active for r in self.replicas)

    def label(self, replica: Replica) -> str:
        """``URI#index``: replicas of one URI share a name, the index tells them apart."""
        i = self.replicas.index(replica)
        uri = self.spec.uris[i] if i < len(self.spec.uris) else replica.model.name
        return f"{uri}#{i}"

    @property
    def model(self) -> Model:
        """The first replica: what ``/api/render`` and context checks use."""
        return self.replicas[0].model

    def _has_free(self) -> bool:
        return any(r.active < self.spec.max_concurrency for r in self.replicas)

    def _pick(self, avoid: set[int]) -> Replica:
        """A free replica by the route's policy (call only when one is free)."""
        free = [r for r in self.replicas if r.active < self.spec.max_concurrency]
        # A replica that just failed is tried last, not never (it may be the only one).
        preferred = [r for r in free if id(r) not in avoid] or free
        if self.spec.policy == "least_busy":
            least = min(r.active for r in preferred)
            preferred = [r for r in preferred if r.active == least]
        return preferred[next(self._turn) % len(preferred)]

    @contextlib.asynccontextmanager
    async def slot(self, avoid: set[int] | None = None) -> AsyncIterator[Replica]:
        """Wait for a free replica (in arrival order) and hold it; 429 when the queue is full."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        avoid = avoid or set()
        if not self._has_free() and self.waiting >= self.spec.max_queue:
            slots = self.spec.max_concurrency * len(self.replicas)
            wait = math.ceil(self.service_s * (self.waiting + 1) / slots)
            raise QueueFull(self.name, self.waiting, max(1, wait))
        self.waiting += 1
        try:
            async with self._cond:
                await self._cond.wait_for(self._has_free)
                replica = self._pick(avoid)
                replica.active += 1
        finally:
            self.waiting -= 1
        started = time.monotonic()
        try:
            yield replica
        finally:
            replica.active -= 1
            self.service_s = 0.8 * self.service_s + 0.2 * (time.monotonic() - started)
            async with self._cond:
                self._cond.notify_all()


def retryable(e: BaseException) -> bool:
    """Worth another attempt: the upstream did not answer, timed out, or failed on its side."""
    return isinstance(e, EndpointError) and (e.status is None or e.status >= 500
                                             or e.status == 429)


def client_error(e: FmstackError) -> APIError:
    """The HTTP answer for an error raised by a model."""
    if isinstance(e, GuardBlocked):
        return APIError(400, str(e), code="guard_blocked", extra={"reason": e.reason,
                                                                  "where": e.where},
                        headers={"x-fmstack-guard": e.reason})
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, CapabilityError | ConfigError):
        return APIError(400, str(e))
    if isinstance(e, AttemptTimeout):
        return APIError(504, str(e), type="server_error", code="timeout")
    if isinstance(e, EndpointError):
        return APIError(502, f"upstream failed: {e}", type="server_error", code="upstream_error")
    if isinstance(e, OutputValidationError):
        return APIError(500, str(e), type="server_error", code="invalid_output")
    return APIError(500, str(e), type="server_error")


class _Generation:
    """One request on its own worker thread; its deltas arrive on an asyncio queue.

    ``stop()`` asks the worker to stop pulling from the backend; it does so before the next
    token, and the backend's stream is closed on the worker thread (generators must be closed
    by the thread that runs them, and closing releases the model's lock)."""

    def __init__(self, replica: Replica, request: Request, stream: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(replica, request, stream),
                                        name="fmstack-generation", daemon=True)
        self._thread.start()

    def _put(self, item: Delta | BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self, replica: Replica, request: Request, stream: bool) -> None:
        model = replica.model
        try:
            if not stream:
                # One call, no mid-way cancellation: n > 1, a backend that cannot stream, or
                # a batch-capable one (where requests share generate calls).
                if replica.batcher is not None:
                    completion = replica.batcher.submit(request).result()
                else:
                    completion = model.complete(request)
                self._put(Delta(finish_reason=completion.finish_reason, completion=completion))
            else:
                deltas = model.stream(request)
                try:
                    for delta in deltas:
                        if self._stop.is_set():
                            break
                        self._put(delta)
                finally:
                    deltas.close()  # type: ignore[attr-defined]
        except BaseException as e:  # handed to the event loop, which raises it
            self._put(e)
        finally:
            self._put(None)

    def stop(self) -> None:
        self._stop.set()

    async def deltas(self, timeout: float | None) -> AsyncIterator[Delta]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                self.stop()
                raise AttemptTimeout(f"no answer within {timeout:g} s") from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass
class Attempt:
    """What the gateway reports about how a request was served."""

    route: str
    replica: str
    retries: int = 0
    fallback: bool = False


class Gateway:
    """The served names and how to reach them."""

    def __init__(self, routes: Sequence[Route],
                 on_retry: Callable[[str, BaseException], None] | None = None) -> None:
        self.routes = {r.name: r for r in routes}
        if len(self.routes) != len(routes):
            raise ConfigError("two routes have the same name")
        for r in routes:
            for f in r.spec.fallbacks:
                if f not in self.routes:
                    raise ConfigError(f"route {r.name!r} falls back to {f!r}, which is not "
                                      f"served (routes: {', '.join(self.routes)})")
                if f == r.name:
                    raise ConfigError(f"route {r.name!r} falls back to itself")
        self.on_retry = on_retry
        self.on_batch: Callable[[str, int], None] | None = None
        for r in routes:
            if r.spec.max_concurrency < 2:
                continue
            for rep in r.replicas:
                caps = rep.model.capabilities
                # A continuous-batching engine batches concurrent calls by itself, and lets
                # each finish on its own: a Batcher would only make short answers wait.
                if caps.batch and not caps.continuous and rep.batcher is None:
                    rep.batcher = Batcher(rep.model, r.spec.max_concurrency,
                                          on_batch=self._batched(r.name))

    def _batched(self, route: str) -> Callable[[int], None]:
        def report(size: int) -> None:
            if self.on_batch is not None:
                self.on_batch(route, size)
        return report

    @classmethod
    def of(cls, models: dict[str, Model] | Sequence[tuple[str, Model]]) -> Gateway:
        """One single-replica route per model, with default settings."""
        pairs = list(models.items()) if isinstance(models, dict) else list(models)
        return cls([Route(RouteSpec(name=name, uris=[model.name]), [Replica(model)])
                    for name, model in pairs])

    def route(self, name: str) -> Route:
        if name not in self.routes:
            raise APIError(404, f"model {name!r} is not served here (models: "
                                f"{', '.join(self.routes)})", param="model",
                           code="model_not_found")
        return self.routes[name]

    def close(self) -> None:
        for r in self.routes.values():
            for rep in r.replicas:
                rep.model.close()

    async def run(self, name: str, request: Request, *, stream: bool,
                  attempt: Attempt | None = None) -> AsyncGenerator[Delta, None]:
        """The deltas of ``request`` on route ``name`` (``stream=False``: the caller wants
        only the final delta, which lets a batch-capable replica batch it).

        Failures before the first delta are retried and then sent to the fallbacks; the last
        error is raised. Closing the iterator (a client that went away) stops the generation.
        """
        chain = [self.route(name)]
        chain += [self.routes[f] for f in chain[0].spec.fallbacks]
        last: BaseException | None = None
        full: QueueFull | None = None
        for k, route in enumerate(chain):
            avoid: set[int] = set()
            for n in range(route.spec.retries + 1):
                if n:
                    await asyncio.sleep(route.spec.backoff * 2 ** (n - 1))
                try:
                    async with route.slot(avoid) as replica:
                        if attempt is not None:
                            attempt.route = route.name
                            attempt.replica = route.label(replica)
                            attempt.fallback, attempt.retries = k > 0, n
                        sent = False
                        caps = replica.model.capabilities
                        # A whole answer is streamed internally too (so it can be cancelled)
                        # unless the replica batches requests.
                        streaming = request.params.n == 1 and caps.streaming and (
                            stream or replica.batcher is None)
                        gen = _Generation(replica, request, streaming)
                        try:
                            async for delta in gen.deltas(route.spec.timeout):
                                sent = True
                                yield delta
                            replica.served += 1
                            return
                        except BaseException as e:
                            gen.stop()
                            if sent or not retryable(e):
                                raise
                            replica.failed += 1
                            avoid.add(id(replica))
                            last = e
                            if self.on_retry is not None:
                                self.on_retry(route.name, e)
                except QueueFull as e:
                    full = e
                    break  # a full queue is not retried here: try the fallbacks
        if last is not None:
            raise last
        assert full is not None
        raise full

    async def complete(self, name: str, request: Request,
                       attempt: Attempt | None = None) -> Completion:
        """The whole completion (non-streaming); cancellation reaches it through the task."""
        final: Completion | None = None
        gen = self.run(name, request, stream=False, attempt=attempt)
        try:
            async for delta in gen:
                if delta.completion is not None:
                    final = delta.completion
        finally:
            await gen.aclose()
        if final is None:
            raise FmstackError("the model ended without a completion")
        return final
