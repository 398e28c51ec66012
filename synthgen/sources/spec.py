"""`SourceSpec`: where images come from (recipe `data:` blocks and CLI `--train/--candidates` paths)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

SourceType = Literal["imagefolder", "parquet", "webdataset", "synthgen", "demo"]


class SourceSpec(BaseModel):
    """A data source. `type` is detected from `path` when omitted; column names apply to Parquet."""

    model_config = ConfigDict(extra="forbid")

    type: SourceType | None = Field(None, description="Reader; detected from `path` when omitted.")
    path: str | None = Field(None, description="File or folder; relative paths are relative to the recipe.")
    image_column: str = Field("image", description="Parquet: column with image bytes or {bytes, path}.")
    text_column: str | None = Field("text", description="Column with the caption / prompt (optional).")
    label_column: str | None = Field("label", description="Column with the class label (optional).")
    key_column: str | None = Field(None, description="Column with a unique id; defaults to file name / row.")
    limit: PositiveInt | None = Field(None, description="Read at most this many images.")
    # Only for the built-in demo phantoms.
    classes: list[str] | None = Field(None, description="demo: phantom classes to draw.")
    per_class: PositiveInt = Field(48, description="demo: phantoms per class.")
    resolution: PositiveInt = Field(64, description="demo: phantom side in pixels.")
    seed: int = Field(0, description="demo: random seed of the phantoms.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """A bare string is a path (type detected), and the word `demo` is the built-in phantoms."""
        if isinstance(value, str):
            return {"type": "demo"} if value == "demo" else {"path": value}
        return value
