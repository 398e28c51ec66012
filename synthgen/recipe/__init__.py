"""The recipe: a validated YAML description of one synthetic dataset (model, classes, sampling, audit, output).

`schema` holds the pydantic models (`model_schema` the `model:` and `privacy:` blocks, `eval_schema` the `eval:`
block); `loading` reads a file and turns every failure into one line naming the file and field. Callers import
from here.
"""

from synthgen.recipe.eval_schema import EvalConfig
from synthgen.recipe.loading import (
    MAX_RECIPE_BYTES,
    canonical_json,
    format_validation_error,
    json_schema,
    load_recipe,
    parse_recipe,
)
from synthgen.recipe.model_schema import (
    LoRAConfig,
    ModelConfig,
    PrivacyConfig,
    TextEncoderConfig,
    TrainingConfig,
    TrainingLoopConfig,
)
from synthgen.recipe.schema import (
    AuditConfig,
    ClassConfig,
    LoadedRecipe,
    OutputConfig,
    PromptTemplate,
    Recipe,
    SamplingConfig,
)

__all__ = [
    "MAX_RECIPE_BYTES",
    "AuditConfig",
    "ClassConfig",
    "EvalConfig",
    "LoRAConfig",
    "LoadedRecipe",
    "ModelConfig",
    "OutputConfig",
    "PrivacyConfig",
    "PromptTemplate",
    "Recipe",
    "SamplingConfig",
    "TextEncoderConfig",
    "TrainingConfig",
    "TrainingLoopConfig",
    "canonical_json",
    "format_validation_error",
    "json_schema",
    "load_recipe",
    "parse_recipe",
]
