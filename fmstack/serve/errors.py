"""The server's error: an HTTP status plus OpenAI's JSON error shape."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``.

    ``headers`` are sent with it (``Retry-After`` on a 429, ``WWW-Authenticate`` on a 401)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type,
                                                                       param, code)
        self.headers = headers or {}
        self.extra = extra or {}  # fields beyond OpenAI's (a guard's reason code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}
