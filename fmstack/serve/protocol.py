"""OpenAI's wire format: request bodies in, fmstack Requests out, and responses back.

Kept apart from the routes so the mapping between the two APIs reads in one place: which
OpenAI field becomes which ``SamplingParams`` field, and how a ``Completion`` is shaped as a
``chat.completion``, a ``text_completion`` or a stream chunk.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmstack.models.types import (
    Choice,
    Completion,
    JsonSchemaFormat,
    SamplingParams,
    TokenLogprob,
)
from fmstack.serve.errors import APIError


def validation_error(e: ValidationError, prefix: str = "") -> APIError:
    """The first problem pydantic found, as a 400 naming the field."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    return APIError(400, f"{prefix}{field}: {err['msg']}", param=prefix + field)


class Body(BaseModel):
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

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatBody(Body):
    # Kept as OpenAI-shaped dicts: tool calls, tool results and content parts are turned into
    # fmstack Messages by fmstack.serve.tools.plan_tools.
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionBody(Body):
    prompt: str
    logprobs: int | None = None  # type: ignore[assignment]  # legacy API: a count


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: str = "float"
    dimensions: int | None = None


def parse(raw: bytes, cls: type[BaseModel], max_bytes: int) -> Any:
    """A request body, checked: size, JSON, then the fields."""
    if len(raw) > max_bytes:
        raise APIError(413, f"request body of {len(raw)} bytes is over the limit of "
                            f"{max_bytes} bytes")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise APIError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        body = cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
    if isinstance(body, Body) and body.stream and body.n > 1:
        raise APIError(400, "n > 1 cannot be streamed: ask for stream=false or n=1", param="n")
    return body


def sampling_params(body: Body, response_format: JsonSchemaFormat | None = None) -> SamplingParams:
    values: dict[str, Any] = {"n": body.n}
    for name in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        if getattr(body, name) is not None:
            values[name] = getattr(body, name)
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        values["max_tokens"] = limit
    if body.stop is not None:
        values["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    if isinstance(body, CompletionBody):
        if body.logprobs:
            values.update(logprobs=True, top_logprobs=body.logprobs)
    elif body.logprobs:
        values.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    fmt = _response_format(body.response_format)
    if fmt is not None and response_format is not None:
        raise APIError(400, "response_format cannot be combined with tools: the tool call "
                            "already constrains the output", param="response_format")
    fmt = fmt or response_format
    if fmt is not None:
        values["response_format"] = fmt
    try:
        return SamplingParams.model_validate(values)
    except ValidationError as e:
        raise validation_error(e) from None


def _response_format(fmt: dict[str, Any] | None) -> JsonSchemaFormat | None:
    if fmt is None:
        return None
    kind = fmt.get("type")
    try:
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise APIError(400, "response_format.json_schema.schema must be a JSON Schema "
                                    "object", param="response_format")
            return JsonSchemaFormat(schema=spec["schema"], name=spec.get("name", "output"))
        if kind == "json_object":
            return JsonSchemaFormat(schema={"type": "object"})
    except ValidationError as e:
        raise APIError(400, f"response_format.json_schema.schema is not a valid JSON Schema: "
                            f"{e.errors()[0]['msg']}", param="response_format") from None
    if kind != "text":
        raise APIError(400, f"response_format.type {kind!r} is not one of text, json_object, "
                            "json_schema", param="response_format")
    return None


# ----- responses ------------------------------------------------------------------------------


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def usage(c: Completion) -> dict[str, Any]:
    return {"prompt_tokens": c.usage.prompt_tokens,
            "completion_tokens": c.usage.completion_tokens,
            "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": c.usage.cached_tokens}}


def chat_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": None,
                         "top_logprobs": [{"token": a.token, "logprob": a.logprob,
                                           "bytes": None} for a in t.top]}
                        for t in tokens]}


def text_logprobs(choice: Choice) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, offsets into the returned text."""
    if choice.logprobs is None:
        return None
    offsets, at = [], 0
    for t in choice.logprobs:
        offsets.append(at)
        at += len(t.token)
    return {"tokens": [t.token for t in choice.logprobs],
            "token_logprobs": [t.logprob for t in choice.logprobs],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in choice.logprobs],
            "text_offset": offsets}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
