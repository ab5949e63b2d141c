"""The data that crosses the Model contract: requests in, completions out.

Everything here is a pydantic model so that bad values fail at construction with a message that
names the field, whether they come from Python, the CLI or (later) the HTTP server.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "error"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class JsonSchemaFormat(BaseModel):
    """Output must be JSON that validates against ``json_schema``."""

    # "schema" is the public name (as in the OpenAI API); the attribute cannot be called that
    # because it would shadow BaseModel.schema.
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)
    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(alias="schema")
    name: str = "output"

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as e:
            path = "/".join(str(p) for p in e.absolute_path) or "(root)"
            raise ValueError(f"malformed JSON Schema at {path}: {e.message}") from None
        return value


class RegexFormat(BaseModel):
    """Output must match ``pattern`` in full."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["regex"] = "regex"
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"invalid regex {value!r}: {e}") from None
        return value


class ChoiceFormat(BaseModel):
    """Output must be exactly one of ``choices``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["choice"] = "choice"
    choices: list[str] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(c == "" for c in value):
            raise ValueError("choices must be non-empty strings")
        return value


ResponseFormat = Annotated[
    JsonSchemaFormat | RegexFormat | ChoiceFormat, Field(discriminator="type")
]


class SamplingParams(BaseModel):
    """How to sample. Defaults follow the OpenAI API; ``0`` disables top_k, ``1.0`` disables
    top_p and repetition_penalty, ``0.0`` disables min_p and the frequency/presence penalties.

    ``temperature=0`` means greedy decoding. ``seed`` makes sampling reproducible on one backend.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1, le=128)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop sequences must be non-empty")
        return value

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> SamplingParams:
        if self.top_logprobs and not self.logprobs:
            self.logprobs = True
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Request(BaseModel):
    """One generation request: either a chat (``messages``) or raw text (``prompt``).

    A ``prompt`` is fed to the model as-is (no chat template): plain-text completion, which is
    what base models and scoring want. ``messages`` go through the model's chat template.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[Message] | None = None
    params: SamplingParams = Field(default_factory=SamplingParams)
    # Free-form labels copied into the trace (e.g. prompt name and version, eval case id).
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_input(self) -> Request:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request needs exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @classmethod
    def chat(cls, user: str, *, system: str | None = None, **params: Any) -> Request:
        """Shortcut: a one-turn chat request with optional system message."""
        messages = [Message(role="system", content=system)] if system else []
        messages.append(Message(role="user", content=user))
        return cls(messages=messages, params=SamplingParams(**params))

    @classmethod
    def text(cls, prompt: str, **params: Any) -> Request:
        """Shortcut: a plain-text completion request."""
        return cls(prompt=prompt, params=SamplingParams(**params))


class TopLogprob(BaseModel):
    token: str
    id: int | None = None
    logprob: float


class TokenLogprob(BaseModel):
    """The log-probability of one chosen token, and optionally its most likely alternatives.

    Log-probabilities are of the distribution the model defines (after temperature = 1 softmax),
    not of the truncated/penalized distribution actually sampled from, so they are comparable
    across sampling settings and with ``Model.score``.
    """

    token: str
    id: int | None = None
    logprob: float
    top: list[TopLogprob] = Field(default_factory=list)


class Choice(BaseModel):
    """One sampled continuation (a request with ``n > 1`` yields several)."""

    index: int = 0
    text: str
    finish_reason: FinishReason
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    # Set when a response_format was requested: the parsed, validated value.
    parsed: Any = None

    @property
    def sum_logprob(self) -> float:
        if self.logprobs is None:
            raise ValueError("this choice has no logprobs; request with logprobs=True")
        return sum(t.logprob for t in self.logprobs)

    @property
    def mean_logprob(self) -> float:
        if not self.logprobs:
            raise ValueError("this choice has no logprobs; request with logprobs=True")
        return self.sum_logprob / len(self.logprobs)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the backend reused from its prefix (KV) cache instead of computing.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseModel):
    """Seconds. ``queue`` is time waiting before work began (batching), ``ttft`` time to first
    token from submission, ``tpot`` mean time per output token after the first."""

    queue: float = 0.0
    ttft: float | None = None
    tpot: float | None = None
    total: float = 0.0


class Completion(BaseModel):
    """The answer to one Request: its choices plus usage, timings and cost."""

    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    cost: float = 0.0
    # The exact text the backend tokenized (chat template applied), when the backend knows it.
    rendered_prompt: str | None = None
    trace_id: int | None = None
    # What a guard (fmstack.guard) found and did on this call, when one was applied.
    guard: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> FinishReason:
        return self.choices[0].finish_reason

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        return self.choices[0].logprobs

    @property
    def parsed(self) -> Any:
        return self.choices[0].parsed


class Delta(BaseModel):
    """One streamed piece of text. The last delta has ``finish_reason`` set and carries the
    whole ``completion`` (usage, timings, parsed output)."""

    text: str = ""
    logprob: TokenLogprob | None = None
    finish_reason: FinishReason | None = None
    completion: Completion | None = None


class Scored(BaseModel):
    """Per-token log-probabilities of a given text under the model (teacher forcing).

    ``logprobs[i]`` is log p(token_i | context, token_<i). Tokens of the conditioning
    ``context`` are not included; without a context the first token is conditioned on BOS
    (or, for a model with no BOS, is not scored and is left out).
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float]

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def mean(self) -> float:
        return self.total / len(self.logprobs) if self.logprobs else 0.0
