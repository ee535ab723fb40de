"""The add-on's one error type: what went wrong, and what to do about it. No bpy."""

from __future__ import annotations


class AddonError(Exception):
    """A problem the user can act on: ``message`` says what happened, ``hint`` the fix ("" when there is none)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def report_text(self) -> str:
        """One line for an operator's report."""
        return f"{self.message}. {self.hint}" if self.hint else self.message
