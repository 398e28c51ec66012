"""The recipe's `eval:` block: measure the built set against real data after writing it (`synthgen eval`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from synthgen.sources.spec import SourceSpec


class EvalConfig(BaseModel):
    """Fidelity, diversity, label fidelity and downstream utility of the built set (docs/evaluation.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    real: SourceSpec | None = Field(
        None,
        description="Real reference images; default: the data the model trains on (required for a pretrained "
        "model used as is).",
    )
    test: SourceSpec | None = Field(
        None,
        description="Real images of patients the generator never saw (e.g. the holdout side of the training data's "
        "`split`): the test set of the utility classifiers. Without it, utility is skipped unless `split_by` is set.",
    )
    split_by: str | None = Field(
        None,
        min_length=1,
        description="Without `test`: hold out whole groups of `real` by this column as the test set.",
    )
    features: str | None = Field(
        None,
        min_length=1,
        description="Feature space (default: synthgen's, no downloaded weights; or e.g. "
        "dinov2:/path, inception:/path, open_clip:/path).",
    )
    seeds: PositiveInt = Field(3, description="Classifier seeds per regime (mean and 95% CI over them).")
    bootstrap: PositiveInt = Field(200, description="Resamples for the FD confidence interval.")
    max_per_class: PositiveInt | None = Field(500, description="Images read per class and set (a seeded draw).")
    classifier_resolution: PositiveInt = Field(64, multiple_of=8, description="Side of the utility classifier's input.")
    classifier_steps: PositiveInt = Field(150, description="Training steps of each utility classifier (same budget).")
    utility: bool = Field(True, description="Train and test the downstream classifiers (the slow part).")
    show_real_images: bool = Field(
        False, description="Show real images in the report's grids (off: only synthetic images are embedded)."
    )
