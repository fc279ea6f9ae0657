"""The one error the pure core raises: a request field that is not acceptable."""

from __future__ import annotations


class RequestInvalid(ValueError):
    """A request field failed validation; `message` names the field and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
