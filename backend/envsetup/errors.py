"""What setup-env raises: a failure with its fix, or a cancellation."""

from __future__ import annotations


class SetupError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" ({self.hint})" if self.hint else "")


class SetupCancelled(Exception):
    pass
