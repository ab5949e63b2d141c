"""The web UI of ``fmstack serve`` (issue 6, point 7): a playground and a traces browser at ``/``.

The page is plain HTML, CSS and JavaScript under ``static/``, shipped in the package and served
by this router, so nothing is built or downloaded at run time and it works offline. The
playground talks to the OpenAI routes (``/v1/models``, ``/v1/chat/completions`` streamed) like
any client would; this router adds what those routes cannot give it:

* ``GET /api/traces?q=&model=&limit=&offset=``: recent traces, newest first, one compact row each;
* ``GET /api/traces/{id}``: one trace in full;
* ``POST /api/render``: the exact prompt text a chat becomes after the model's chat template,
  and its token count.

Errors are ``APIError``s, answered in OpenAI's error shape by the app's handler. The app adds
its auth dependency to the ``/api/*`` routes when API keys are on; the page and its static files
stay public (they hold no data).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from fmstack.errors import CapabilityError, FmstackError
from fmstack.models.types import Message
from fmstack.serve.errors import APIError

if TYPE_CHECKING:
    from fmstack.models.base import Model
    from fmstack.store.traces import TraceStore

STATIC = Path(__file__).parent / "static"
PREVIEW_CHARS = 200
MAX_LIMIT = 200


class RenderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[Message] = Field(min_length=1)


def router(models: Mapping[str, Model], traces: TraceStore) -> APIRouter:
    """The UI's routes: the page, its static files and the ``/api/*`` JSON routes."""
    api = APIRouter()
    # Only files that ship with the package are served: a name is looked up in this table,
    # never joined onto a path, so ``..`` and the like cannot reach anything else.
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}

    def static(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise APIError(404, f"no static file {name!r}", code="not_found")
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        # no-cache: the browser revalidates, so a new fmstack version's page is picked up.
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @api.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return static("index.html")

    @api.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        return static(name)

    @api.get("/api/traces")
    def list_traces(http: HTTPRequest) -> dict[str, Any]:
        query = http.query_params
        limit = _int_param(query.get("limit"), "limit", default=50, low=1, high=MAX_LIMIT)
        offset = _int_param(query.get("offset"), "offset", default=0, low=0, high=None)
        # One row more than asked says whether there is a next page without a COUNT(*).
        rows = traces.list(limit=limit + 1, offset=offset, q=query.get("q") or None,
                           model=query.get("model") or None)
        return {"object": "list", "data": [_row(r) for r in rows[:limit]],
                "has_more": len(rows) > limit, "offset": offset, "limit": limit}

    @api.get("/api/traces/{trace_id}")
    def get_trace(trace_id: str) -> dict[str, Any]:
        trace = traces.get(_int_param(trace_id, "id", default=0, low=1, high=None))
        if trace is None:
            raise APIError(404, f"no trace with id {trace_id!r}", param="id", code="not_found")
        return trace

    @api.post("/api/render")
    async def render(http: HTTPRequest) -> dict[str, Any]:
        try:
            body = RenderBody.model_validate_json(await http.body())
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "body"
            raise APIError(400, f"{field}: {err['msg']}", param=field) from None
        if body.model not in models:
            raise APIError(404, f"model {body.model!r} is not served here (models: "
                                f"{', '.join(models)})", param="model", code="model_not_found")
        return await run_in_threadpool(_render, models[body.model], body.model, body.messages)

    return api


def _render(model: Model, name: str, messages: list[Message]) -> dict[str, Any]:
    try:
        prompt = model.render_chat(messages)
        tokens = len(model.tokenize(prompt, special=True))
    except CapabilityError:
        raise APIError(400, f"the backend of {name!r} ({model.backend}) does not expose its "
                            "chat template, so its final prompt cannot be shown",
                       param="model") from None
    except FmstackError as e:
        raise APIError(400, str(e)) from None
    return {"model": name, "prompt": prompt, "prompt_tokens": tokens}


def _int_param(raw: str | None, name: str, *, default: int, low: int,
               high: int | None) -> int:
    """A whole-number query or path parameter, or a 400 naming it."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name} must be a whole number, got {raw!r}", param=name) from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise APIError(400, f"{name} must be {bounds}, got {value}", param=name)
    return value


def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= PREVIEW_CHARS:
        return text
    return text[:PREVIEW_CHARS] + "…"


def _input_text(trace: dict[str, Any]) -> str | None:
    """What the caller asked: the raw prompt, or the last user turn of a chat (the system
    prompt and history are the same across a conversation, the question is not)."""
    if trace.get("prompt") is not None:
        return str(trace["prompt"])
    messages = trace.get("messages") or []
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    if users:
        return str(users[-1])
    return str(messages[-1].get("content", "")) if messages else None


def _row(trace: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": trace["id"], "created_at": trace["created_at"], "model": trace["model"],
        "kind": trace["kind"], "input": _preview(_input_text(trace)),
        "output": _preview(trace.get("output")), "finish_reason": trace.get("finish_reason"),
        "prompt_tokens": trace.get("prompt_tokens"),
        "completion_tokens": trace.get("completion_tokens"),
        "ttft_s": trace.get("ttft_s"), "tpot_s": trace.get("tpot_s"),
        "total_s": trace.get("total_s"), "cost": trace.get("cost"),
        "error": _preview(trace.get("error")),
    }
