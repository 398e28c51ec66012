"""`SourceSpec`: where images come from (recipe `data:` blocks and CLI `--train/--candidates` paths)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

SourceType = Literal["imagefolder", "parquet", "webdataset", "synthgen", "demo", "dicom"]
DICOM_ONLY = ("window", "label_tag", "mask_bands")  # SourceSpec fields only the dicom reader reads


def valid_regex(value: str | None) -> str | None:
    """A pydantic check: `value` compiles as a regular expression (None passes)."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
    return value


class SplitSpec(BaseModel):
    """One side of a patient- or sequence-disjoint split, chosen while reading (same sides as `synthgen split`).

    A recipe trains on `side: train` and evaluates on `side: holdout` of the same `by`/`holdout`/`seed`, so the
    test patients are never seen by the generator, without a copied folder.
    """

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, description="Metadata column whose value groups images (patient_id), or sequence.")
    holdout: float = Field(0.2, gt=0, lt=1, description="Share of the images on the holdout side.")
    seed: int = Field(0, description="Seed of the group order (same seed, same split).")
    side: Literal["train", "holdout"] = Field(description="Which side this source reads.")
    name_pattern: str | None = Field(
        None,
        min_length=1,
        description="Regex on the file name that gives the group where the `by` column is empty (its first "
        "non-empty capture group), e.g. NIH ChestX-ray14's patient number: 'nih14__\\w+?__(\\d{8})_'.",
    )

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return valid_regex(value)


class WindowSpec(BaseModel):
    """A VOI window in modality units (after rescale slope/intercept): Hounsfield units for CT."""

    model_config = ConfigDict(extra="forbid")

    center: float = Field(description="Window centre (level), e.g. 40 for a CT soft-tissue window.")
    width: float = Field(gt=0, description="Window width, e.g. 400; values outside centre +- width/2 clip.")


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
    split: SplitSpec | None = Field(
        None, description="imagefolder: read one side of a split by patient or sequence (as `synthgen split`)."
    )
    # Only for DICOM folders (docs/dicom.md).
    window: WindowSpec | None = Field(
        None, description="dicom: VOI window of every image, instead of the files' own (default: theirs, else min..max)"
    )
    label_tag: str | None = Field(
        None,
        min_length=1,
        description="dicom: header attribute that gives the label (keyword like BodyPartExamined, or a tag like "
        "0018,0015); patient-identifying attributes are refused.",
    )
    mask_bands: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="dicom: black out this share of rows at the top and at the bottom of every image (burnt-in "
        "text), e.g. 0.08.",
    )
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
