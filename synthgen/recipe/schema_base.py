"""What every block of the recipe schema builds on: strict models (unknown keys rejected) and `FieldError`.

Kept apart from schema.py so that model_schema.py and schema.py both import them without a cycle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonEmptyStr = Annotated[str, Field(min_length=1)]


class FieldError(ValueError):
    """A validator's error about a field below the validated one (`path` is appended to pydantic's location)."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
