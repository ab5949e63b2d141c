"""The model layer: one contract (``Model``) over llama.cpp, transformers and OpenAI-compatible
APIs. Start with ``load_model("smollm2")``."""

from fmstack.models.base import Capabilities, Model
from fmstack.models.registry import DEFAULT_MODEL, load_model, resolve
from fmstack.models.tts import BestOfN, Vote, best_of_n, self_consistency
from fmstack.models.types import (
    Choice,
    ChoiceFormat,
    Completion,
    Delta,
    JsonSchemaFormat,
    Message,
    RegexFormat,
    Request,
    SamplingParams,
    Scored,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)

__all__ = [
    "DEFAULT_MODEL",
    "BestOfN",
    "Capabilities",
    "Choice",
    "ChoiceFormat",
    "Completion",
    "Delta",
    "JsonSchemaFormat",
    "Message",
    "Model",
    "RegexFormat",
    "Request",
    "SamplingParams",
    "Scored",
    "Timings",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "Vote",
    "best_of_n",
    "load_model",
    "resolve",
    "self_consistency",
]
