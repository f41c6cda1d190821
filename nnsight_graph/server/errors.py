"""The server's error answer: an HTTP status, a stable machine-readable code, the message and
a hint that names the fix (`{code, message, hint}` as JSON)."""

from __future__ import annotations


class ApiError(Exception):
    """An error answer: HTTP status, stable code, message and a hint that names the fix."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.headers = headers or {}


__all__ = ["ApiError"]
