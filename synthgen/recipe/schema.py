"""The recipe schema: pydantic models of one synthetic dataset (classes, sampling, audit, output, and the `Recipe`
that holds them). The `model:` and `privacy:` blocks are in model_schema.py, `eval:` in eval_schema.py, and the
strict base model and `FieldError` in schema_base.py.

Unknown keys are rejected everywhere (`extra="forbid"`); validators raise `FieldError` to point below the
validated field. `loading.py` turns any failure into a one-line `SynthgenError`.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from synthgen.recipe.eval_schema import EvalConfig
from synthgen.recipe.model_schema import ModelConfig, PrivacyConfig
from synthgen.recipe.schema_base import FieldError, NonEmptyStr, _Strict
from synthgen.runtime import tidy_path
from synthgen.sources.spec import SourceSpec, valid_regex

CLASS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_CLASS_COUNT = 1_000_000  # keeps sample keys `<class>-<6 digits>` unique and the plan small enough to hold
Scheduler = Literal["ddim", "dpm-solver++", "euler", "ddpm"]


class PromptTemplate(_Strict):
    """A prompt with `{variable}` slots and a relative weight."""

    template: str = Field(min_length=1)
    weight: PositiveFloat = 1.0


class ClassConfig(_Strict):
    """How many images of one class and which prompts make them."""

    count: PositiveInt = Field(le=MAX_CLASS_COUNT, description="Number of images of this class in the output.")
    prompts: list[NonEmptyStr | PromptTemplate] = Field(min_length=1, description="Prompt templates.")
    variables: dict[str, list[str]] = Field(
        default_factory=dict, description="Values for `{name}` slots; all combinations are used."
    )
    labels: list[NonEmptyStr] | None = Field(
        None,
        min_length=1,
        description="The training data's label(s) this class stands for (checked by validate); default: the class "
        "name itself. E.g. class `covid` with `labels: [covid19]`.",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _numeric_labels(cls, value: Any) -> Any:
        """`labels: [0, 1]` means the data labels '0' and '1' (numeric label columns read as text)."""
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("variables")
    @classmethod
    def _non_empty_values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, options in value.items():
            if not options:
                raise FieldError((name,), f"variable '{name}' has no values")
        return value

    @model_validator(mode="after")
    def _slots_defined(self) -> ClassConfig:
        for index, template in enumerate(self.templates()):
            text = template.template
            try:
                slots = [slot for _, slot, _, _ in string.Formatter().parse(text) if slot is not None]
            except ValueError as error:
                reason = f"prompt '{text}' is not a valid template ({error}); write {{{{ and }}}} for a brace"
                raise FieldError(("prompts", index), reason) from None
            for slot in slots:
                if not slot.isidentifier():
                    raise FieldError(
                        ("prompts", index),
                        f"prompt '{text}' has slot {{{slot}}}; a slot is a variable name (letters, digits, '_')",
                    )
                if slot not in self.variables:
                    raise FieldError(
                        ("prompts", index), f"prompt '{text}' uses {{{slot}}} but `variables` has no '{slot}'"
                    )
            try:  # format specs and conversions ({size:d}, {size!z}) fail only when filled in
                text.format(**{name: values[0] for name, values in self.variables.items()})
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
                raise FieldError(("prompts", index), f"prompt '{text}' cannot be filled in: {error}") from None
        return self

    def templates(self) -> list[PromptTemplate]:
        return [p if isinstance(p, PromptTemplate) else PromptTemplate(template=p) for p in self.prompts]


class SamplingConfig(_Strict):
    """Classifier-free-guidance sampling settings."""

    scheduler: Scheduler = "ddim"
    steps: PositiveInt = Field(30, le=1000)
    guidance_scale: float = Field(3.5, ge=0)
    resolution: Annotated[int, Field(gt=0, multiple_of=8)] | None = Field(
        None, description="Output side in pixels, a multiple of 8; default: the model's."
    )
    batch_size: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="Images per sampler call; auto: synthgen's choice for the device and image size (48 at 64 px "
        "on a CPU). Recorded per sample (sampling_numerics): float rounding may depend on it.",
    )
    streams: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="Denoising streams on a CPU: threads that each sample their own batches with cpu_threads / "
        "streams torch threads; auto: one one-thread stream per CPU thread (at most 8) for small models, else 1; "
        "always 1 on CUDA and MPS and for pipelines that are not Stable-Diffusion-style (SDXL, FLUX, Kandinsky). "
        "The bytes depend on the threads per stream (recorded in sampling_numerics), "
        "not on the number of streams.",
    )
    seed: int = Field(0, description="Base seed; every sample's own seed derives from it.")
    negative_prompt: str = ""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class AuditConfig(_Strict):
    """Memorization audit: nearest training image of every synthetic image, copies flagged (and dropped)."""

    enabled: bool = True
    data: SourceSpec | None = Field(
        None, description="Training data to audit against; default: the data the model trains on."
    )
    holdout: SourceSpec | None = Field(
        None, description="Images of the same domain the model never saw (other patients): holdout metrics."
    )
    embedder: str = Field(
        "copydetect",
        description="Copy detector or embedder: copydetect (default, no weights), pixel, or a plug-in with local "
        "weights: sscd:PATH, dinov2:PATH, timm:PATH, open_clip:PATH.",
    )
    threshold: float | Literal["auto"] = Field(
        "auto",
        description="Similarity at or above which a sample is a copy; auto: calibrated on the training data.",
    )
    target_fpr: float = Field(
        0.01, gt=0, lt=0.5, description="With threshold auto: share of novel images allowed to be flagged."
    )
    index: Literal["auto", "exact", "ivf", "hnsw"] = Field(
        "auto", description="Nearest-neighbour index: exact while fastest, approximate + exact re-rank beyond."
    )
    action: Literal["flag", "drop"] = Field("flag", description="Keep flagged samples (flag) or replace them.")
    max_retries: NonNegativeInt = Field(3, description="With drop: new seeds tried per flagged sample.")
    group_by: str = Field(
        "auto",
        min_length=1,
        description="With threshold auto: images of one group (patient) are left out of each other's "
        "leave-one-out search. auto: the column the training data's split reads (split.by), else a patient_id "
        "column, else video sequences from file-name numbering; or a metadata column; or sequence.",
    )
    group_pattern: str | None = Field(
        None,
        min_length=1,
        description="Regex on the file name giving the group where the group_by column is empty (its first "
        "non-empty capture group); default: the split's name_pattern.",
    )

    @field_validator("group_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return valid_regex(value)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_range(cls, value: Any) -> Any:
        problem = f"must be a similarity in (-1, 1] or auto (got {describe_value(value)})"
        if isinstance(value, str):
            if value.strip().lower() == "auto":
                return "auto"
            raise ValueError(problem)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 < value <= 1:
            raise ValueError(problem)
        return float(value)


class OutputConfig(_Strict):
    dir: str = Field("out", min_length=1, description="Output folder; relative to the recipe file.")
    formats: list[Literal["parquet", "webdataset"]] = Field(["parquet", "webdataset"], min_length=1)
    shard_size: PositiveInt = Field(1000, description="Samples per shard (the unit of work and resumption).")
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    export_model: bool = Field(
        False,
        description="Put the model folder into the output as model/ (hard links where possible, else a copy).",
    )


class Recipe(_Strict):
    name: str = Field(min_length=1, pattern=NAME_PATTERN, description="Dataset name (letters, digits, _ . -).")
    description: str = ""
    domain: str = Field("", description="Free text, e.g. colonoscopy or radiology; goes to the dataset card.")
    model: ModelConfig
    classes: dict[str, ClassConfig] = Field(
        min_length=1,
        description="Class name -> what to generate for it.",
        json_schema_extra={"propertyNames": {"pattern": CLASS_NAME_PATTERN}},
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig | None = Field(
        None, description="Train with differential privacy (DP-SGD); the budget goes into every sample's provenance."
    )
    eval: EvalConfig | None = Field(None, description="Evaluate the written set against real data (synthgen eval).")

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value: dict[str, ClassConfig]) -> dict[str, ClassConfig]:
        for name in value:
            if not re.match(CLASS_NAME_PATTERN, str(name)):
                raise FieldError(
                    (name,),
                    f"class name '{name}' must start with a letter or digit and hold only letters, digits, '_' or '-'",
                )
        return value

    @model_validator(mode="after")
    def _audit_has_data(self) -> Recipe:
        if self.audit.enabled and self.audit.data is None and self.model.training_data() is None:
            raise FieldError(
                ("audit", "data"),
                "required when model.pretrained is used (nothing else to audit against); "
                "add an audit.data source or set audit.enabled: false",
            )
        return self

    @model_validator(mode="after")
    def _eval_has_real(self) -> Recipe:
        if (
            self.eval is not None
            and self.eval.enabled
            and self.eval.real is None
            and self.model.training_data() is None
        ):
            raise FieldError(
                ("eval", "real"), "required when model.pretrained is used (no training data to compare with)"
            )
        return self

    @model_validator(mode="after")
    def _privacy_covers_training(self) -> Recipe:
        """Refuse recipes whose DP guarantee would be void: every part that sees the data must be trained privately."""
        if self.privacy is None:
            return self
        if self.model.train is None and self.model.lora is None:
            raise FieldError(("privacy",), "privacy applies to training, but this recipe trains nothing")
        train = self.model.train
        if (
            train is not None
            and train.text_encoder.pretrained is None
            and train.text_encoder.tokenizer_corpus == "captions"
        ):
            raise FieldError(
                ("model", "train", "text_encoder", "tokenizer_corpus"),
                "with privacy the tokenizer must not be learnt from the private captions (DP-SGD does not cover it, "
                "and rare words such as names would enter its vocabulary); use prompts or auto",
            )
        return self

    def class_labels(self) -> dict[str, list[str]]:
        """Class name -> the training data labels it stands for (its `labels`, else its own name)."""
        return {name: list(config.labels or [name]) for name, config in self.classes.items()}

    def audit_data(self) -> SourceSpec | None:
        if not self.audit.enabled:
            return None
        return self.audit.data or self.model.training_data()


class LoadedRecipe(BaseModel):
    """A validated recipe plus where it came from (for relative paths and provenance)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    path: Path
    sha256: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """Resolve a path written in the recipe relative to the recipe's folder (`~` expanded)."""
        candidate = Path(relative).expanduser()
        return tidy_path(candidate if candidate.is_absolute() else (self.base_dir / candidate))

    def output_dir(self, override: str | Path | None = None) -> Path:
        return tidy_path(override) if override is not None else self.resolve(self.recipe.output.dir)


def describe_value(value: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"
