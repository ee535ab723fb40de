"""Errors that reach the user: each carries a stable code, a message and a hint with the fix."""

from __future__ import annotations


class BackendError(Exception):
    def __init__(self, code: str, message: str, hint: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" ({self.hint})" if self.hint else "")


class JobCancelled(Exception):
    """Raised at a cancellation check; unwinds the running job cleanly."""

