"""The exceptions fmstack raises on purpose.

Every error a user can cause (a bad flag, a missing file, an unreachable endpoint) is an
``FmstackError`` with a one-line message that names the problem. The CLI prints that line and
exits non-zero; anything else escaping is a bug in fmstack.
"""

from __future__ import annotations

from typing import Any


class FmstackError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(FmstackError):
    """Invalid configuration or parameters (bad sampling value, malformed schema, ...)."""


class ModelNotFoundError(FmstackError):
    """An unknown alias or URI, or a model file that does not exist."""


class MissingDependencyError(FmstackError):
    """An optional dependency is not installed; the message carries the exact install hint."""


class CapabilityError(FmstackError):
    """The backend cannot do what was asked (e.g. regex output over an OpenAI API)."""


class ContextLengthError(FmstackError):
    """The prompt (plus requested tokens) does not fit the model's context window."""


class EndpointError(FmstackError):
    """A remote endpoint is unreachable, rejected the key, or answered with an error.

    ``status`` is the HTTP status it answered, None when it did not answer (a gateway retries
    those and 5xx/429, never other 4xx)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OutputValidationError(FmstackError):
    """A structured output did not parse or did not validate against its format.

    ``completion`` is the answer that failed (its text, finish reason and usage), when a model
    produced one: a server can still return a reply cut short by ``max_tokens``."""

    def __init__(self, message: str, *, completion: Any = None) -> None:
        super().__init__(message)
        self.completion = completion


class QueryError(FmstackError):
    """A database query that was refused (not a single read-only SELECT), failed in the
    database, or ran past its time limit. Text-to-SQL feeds the message back to the model."""


class PromptError(FmstackError):
    """A prompt file that does not parse or validate, bad variables for it, or an unknown prompt.
    The message starts with ``path:line:`` when the line is known."""


def missing(package: str, extra: str) -> MissingDependencyError:
    """The error for an optional import that failed, with the exact install command."""
    return MissingDependencyError(
        f"{package} is not installed: pip install 'fmstack[{extra}]' (or: pip install {package})"
    )
