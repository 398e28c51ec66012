"""The recipe: a validated YAML description of one synthetic dataset (model, classes, sampling, audit, output).

Loading never raises anything but `SynthgenError`, whose one-line message names the file and field path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from synthgen.errors import SynthgenError
from synthgen.sources.spec import SourceSpec

CLASS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Scheduler = Literal["ddim", "dpm-solver++", "euler", "ddpm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingConfig(_Strict):
    """Train a compact MSDM (VAE + UNet + text encoder) on `data` before generating."""

    data: SourceSpec = Field(description="Training images with captions (`text`) and labels.")
    preset: Literal["tiny"] = Field("tiny", description="Model size preset.")
    resolution: PositiveInt = Field(64, description="Training and generation side in pixels.")
    vae_steps: NonNegativeInt = Field(600, description="Optimizer steps for the VAE.")
    unet_steps: PositiveInt = Field(1500, description="Optimizer steps for the UNet and text encoder.")
    batch_size: PositiveInt = Field(16)
    learning_rate: PositiveFloat = Field(1e-3)
    prompt_dropout: float = Field(0.1, ge=0, lt=1, description="Share of captions replaced by '' (for CFG).")
    seed: int = Field(0)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16")
        return value


class ModelConfig(_Strict):
    """Either a pretrained diffusers pipeline (`pretrained`) or a model trained by synthgen (`train`)."""

    pretrained: str | None = Field(None, description="Local diffusers pipeline folder or Hugging Face hub id.")
    revision: str | None = Field(None, description="Hub revision (with a hub id).")
    train: TrainingConfig | None = Field(None, description="Train an MSDM on this data instead.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelConfig:
        if (self.pretrained is None) == (self.train is None):
            raise ValueError("give exactly one of `pretrained` or `train`")
        return self


class PromptTemplate(_Strict):
    """A prompt with `{variable}` slots and a relative weight."""

    template: str = Field(min_length=1)
    weight: PositiveFloat = 1.0


class ClassConfig(_Strict):
    """How many images of one class and which prompts make them."""

    count: PositiveInt = Field(description="Number of images of this class in the output.")
    prompts: list[str | PromptTemplate] = Field(min_length=1, description="Prompt templates.")
    variables: dict[str, list[str]] = Field(
        default_factory=dict, description="Values for `{name}` slots; all combinations are used."
    )

    @field_validator("variables")
    @classmethod
    def _non_empty_values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, options in value.items():
            if not options:
                raise ValueError(f"variable '{name}' has no values")
        return value

    @model_validator(mode="after")
    def _slots_defined(self) -> ClassConfig:
        import string

        for template in self.templates():
            for _, slot, _, _ in string.Formatter().parse(template.template):
                if slot is not None and slot not in self.variables:
                    raise ValueError(f"prompt '{template.template}' uses {{{slot}}} but `variables` has no '{slot}'")
        return self

    def templates(self) -> list[PromptTemplate]:
        return [p if isinstance(p, PromptTemplate) else PromptTemplate(template=p) for p in self.prompts]


class SamplingConfig(_Strict):
    """Classifier-free-guidance sampling settings."""

    scheduler: Scheduler = "ddim"
    steps: PositiveInt = Field(30, le=1000)
    guidance_scale: float = Field(3.5, ge=0)
    resolution: PositiveInt | None = Field(None, description="Output side in pixels; default: the model's.")
    batch_size: PositiveInt = 8
    seed: int = Field(0, description="Base seed; every sample's own seed derives from it.")
    negative_prompt: str = ""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class AuditConfig(_Strict):
    """Memorization audit: nearest training neighbour of every synthetic image."""

    enabled: bool = True
    data: SourceSpec | None = Field(None, description="Training data to audit against; default: model.train.data.")
    embedder: str = Field("pixel", description="Image embedder for the nearest-neighbour search.")
    threshold: float = Field(0.95, gt=-1, le=1, description="Similarity at or above which a sample is a copy.")
    action: Literal["flag", "drop"] = Field("flag", description="Keep flagged samples (flag) or replace them.")
    max_retries: NonNegativeInt = Field(3, description="With drop: new seeds tried per flagged sample.")


class OutputConfig(_Strict):
    dir: str = Field("out", description="Output folder; relative to the recipe file.")
    formats: list[Literal["parquet", "webdataset"]] = Field(["parquet", "webdataset"], min_length=1)
    shard_size: PositiveInt = Field(1000, description="Samples per shard (the unit of work and resumption).")
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)


class Recipe(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    domain: str = Field("", description="Free text, e.g. colonoscopy or radiology; goes to the dataset card.")
    model: ModelConfig
    classes: dict[str, ClassConfig] = Field(min_length=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value: dict[str, ClassConfig]) -> dict[str, ClassConfig]:
        import re

        for name in value:
            if not re.match(CLASS_NAME_PATTERN, str(name)):
                raise ValueError(f"class name '{name}' must be letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _audit_has_data(self) -> Recipe:
        if self.audit.enabled and self.audit.data is None and self.model.train is None:
            raise ValueError("audit.data is required when the model is pretrained (nothing to audit against)")
        return self

    def audit_data(self) -> SourceSpec | None:
        if not self.audit.enabled:
            return None
        return self.audit.data or (self.model.train.data if self.model.train else None)


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
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)

    def output_dir(self, override: str | Path | None = None) -> Path:
        return Path(override) if override is not None else self.resolve(self.recipe.output.dir)


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("str", "PromptTemplate") or str(item).startswith("function-"):
            continue  # union branch names are noise for users
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, source: str) -> str:
    """First problem of a pydantic error as `file: field.path: reason` (plus a count of the others)."""
    problems = error.errors()
    first = problems[0]
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown key (not allowed here)"
    elif first["type"] == "missing":
        reason = "required field is missing"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"{source}: {_format_location(first['loc'])}: {reason}{more}"


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SynthgenError(f"{source}: a recipe must be a YAML mapping of keys, but this file is {kind}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise SynthgenError(format_validation_error(error, source)) from None


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe file; every failure is a one-line `SynthgenError`."""
    path = Path(path)
    if not path.exists():
        raise SynthgenError(f"{path}: recipe file not found")
    if not path.is_file():
        raise SynthgenError(f"{path}: recipe must be a file, not a folder")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SynthgenError(f"{path}: recipe is not UTF-8 text") from None
    except OSError as error:
        raise SynthgenError(f"{path}: cannot read recipe ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SynthgenError(f"{path}: not valid YAML{where}: {problem}") from None
    recipe = parse_recipe(data, str(path))
    return LoadedRecipe(recipe=recipe, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())


def json_schema() -> dict[str, Any]:
    """JSON Schema of recipes, for editors (yaml-language-server) and docs."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "synthgen recipe"
    return schema


def canonical_json(recipe: Recipe) -> str:
    return json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
