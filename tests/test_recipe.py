"""Recipe schema: parsing, defaults, path resolution, sha256, YAML strictness, JSON Schema, the docs' examples."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.recipe import (
    LoadedRecipe,
    Recipe,
    canonical_json,
    json_schema,
    load_recipe,
    parse_recipe,
)
from synthgen.sources import SourceSpec

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
SCHEMA_FILE = REPO / "recipes" / "recipe.schema.json"
DOCS = REPO / "docs" / "recipes.md"

MINIMAL = """\
name: minimal
model:
  train:
    data: {type: demo}
classes:
  polyp:
    count: 3
    prompts: [a polyp]
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_demo_recipe_parses():
    loaded = load_recipe(DEMO)
    recipe = loaded.recipe
    assert recipe.name == "demo"
    assert list(recipe.classes) == ["polyp", "ulcer", "normal"]
    assert [c.count for c in recipe.classes.values()] == [16, 16, 16]
    assert recipe.model.pretrained is None and recipe.model.train is not None
    assert recipe.model.train.data.type == "demo"
    assert recipe.model.train.data.per_class == 48
    assert recipe.model.train.resolution == 64 and recipe.model.train.preset == "tiny"
    assert recipe.classes["polyp"].variables["size"] == ["small", "large"]
    assert (recipe.sampling.steps, recipe.sampling.batch_size) == (25, 16)
    assert (recipe.audit.embedder, recipe.audit.threshold) == ("copydetect", "auto")  # the defaults
    assert (recipe.audit.action, recipe.audit.max_retries) == ("drop", 2)
    assert recipe.output.shard_size == 24
    assert loaded.path == DEMO.resolve()
    assert loaded.output_dir() == DEMO.parent.parent / "out/demo"  # shown as out/demo, not recipes/../out/demo


def test_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL)).recipe
    assert (recipe.description, recipe.domain) == ("", "")
    train = recipe.model.train
    assert train.model_dump(exclude={"data"}) == {
        "preset": "tiny",
        "resolution": 64,
        "vae": None,
        "vae_steps": 600,
        "channels": "auto",
        "unet_steps": 1500,
        "batch_size": 16,
        "gradient_accumulation": 1,
        "learning_rate": 1e-3,
        "prompt_dropout": 0.1,
        "mixed_precision": "auto",
        "ema_decay": 0.999,
        "validation_split": 0.05,
        "split_by": None,
        "checkpoint_every": 500,
        "max_minutes": None,
        "seed": 0,
        "text_encoder": {"pretrained": None, "train": True, "tokenizer_corpus": "auto"},
    }
    assert recipe.model.lora is None and recipe.privacy is None
    assert recipe.model.revision is None
    assert recipe.sampling.model_dump() == {
        "scheduler": "ddim",
        "steps": 30,
        "guidance_scale": 3.5,
        "resolution": None,
        "batch_size": "auto",
        "streams": "auto",
        "seed": 0,
        "negative_prompt": "",
        "device": "auto",
    }
    assert recipe.audit.model_dump() == {
        "enabled": True,
        "data": None,
        "holdout": None,
        "embedder": "copydetect",
        "threshold": "auto",
        "target_fpr": 0.01,
        "group_by": "auto",
        "group_pattern": None,
        "index": "auto",
        "action": "flag",
        "max_retries": 3,
    }
    assert recipe.output.model_dump() == {
        "dir": "out",
        "formats": ["parquet", "webdataset"],
        "shard_size": 1000,
        "image_format": "png",
        "jpeg_quality": 95,
        "export_model": False,
    }
    spec = SourceSpec()
    columns = (spec.image_column, spec.text_column, spec.label_column, spec.key_column)
    assert columns == ("image", "text", "label", None)
    assert (spec.type, spec.path, spec.limit) == (None, None, None)
    assert (spec.per_class, spec.resolution, spec.seed) == (48, 64, 0)
    assert recipe.classes["polyp"].variables == {}


def test_prompt_forms(tmp_path):
    text = MINIMAL.replace(
        "prompts: [a polyp]",
        "prompts:\n      - a {size} polyp\n      - {template: 'an {size} one', weight: 2.5}\n"
        "    variables: {size: [small, large]}",
    )
    config = load_recipe(write(tmp_path, text)).recipe.classes["polyp"]
    templates = config.templates()
    assert [(t.template, t.weight) for t in templates] == [("a {size} polyp", 1.0), ("an {size} one", 2.5)]


def test_audit_data_defaults_to_training_data(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL)).recipe
    assert recipe.audit_data() == recipe.model.train.data
    disabled = load_recipe(write(tmp_path, MINIMAL + "audit: {enabled: false}\n")).recipe
    assert disabled.audit_data() is None
    own = load_recipe(write(tmp_path, MINIMAL + "audit: {data: {path: elsewhere, limit: 5}}\n")).recipe
    assert own.audit_data() == SourceSpec(path="elsewhere", limit=5)


def test_pretrained_with_audit_data_parses():
    recipe = parse_recipe(
        {
            "name": "x",
            "model": {"pretrained": "owner/model", "revision": "main"},
            "classes": {"a": {"count": 1, "prompts": ["p"]}},
            "audit": {"data": {"type": "parquet", "path": "train.parquet", "text_column": None}},
        }
    )
    assert recipe.model.pretrained == "owner/model" and recipe.model.revision == "main"
    assert recipe.audit.data.text_column is None


def test_resolve_relative_to_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes" / "nested"
    folder.mkdir(parents=True)
    path = write(folder, MINIMAL + "output: {dir: ../built}\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    loaded = load_recipe(Path("recipes/nested/recipe.yaml"))
    assert loaded.path == path.resolve() and loaded.path.is_absolute()
    assert loaded.base_dir == folder.resolve()
    assert loaded.resolve("data/images") == folder.resolve() / "data/images"
    assert loaded.resolve(str(tmp_path / "abs")) == tmp_path / "abs"
    assert loaded.resolve("~/x") == Path.home() / "x"
    assert loaded.output_dir() == folder.resolve().parent / "built"  # `..` folded away for display
    assert loaded.output_dir(tmp_path / "override") == tmp_path / "override"
    assert loaded.output_dir("rel") == Path("rel")  # --out is relative to the working directory, as typed


def test_sha256_is_the_files_sha256(tmp_path):
    path = write(tmp_path, MINIMAL + "# a comment changes the hash\n")
    assert load_recipe(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_recipe(DEMO).sha256 == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    other = write(tmp_path, MINIMAL, "other.yaml")
    assert load_recipe(other).sha256 != load_recipe(path).sha256


def test_canonical_json_is_stable_and_ignores_formatting(tmp_path):
    a = load_recipe(write(tmp_path, MINIMAL, "a.yaml")).recipe
    b = load_recipe(write(tmp_path, MINIMAL.replace("[a polyp]", "\n      - a polyp") + "# x\n", "b.yaml")).recipe
    assert canonical_json(a) == canonical_json(b)
    assert json.loads(canonical_json(a))["classes"]["polyp"]["count"] == 3


def test_bom_and_merge_keys_are_fine(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_recipe(bom).recipe.name == "minimal"
    merged = MINIMAL.replace(
        "  polyp:\n    count: 3\n    prompts: [a polyp]\n",
        "  polyp: &base\n    count: 3\n    prompts: [a polyp]\n  ulcer:\n    <<: *base\n    count: 5\n",
    )
    recipe = load_recipe(write(tmp_path, merged)).recipe
    assert recipe.classes["ulcer"].count == 5 and recipe.classes["ulcer"].prompts == ["a polyp"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (MINIMAL + "name: again\n", r"line 9, column 1: duplicate key 'name'"),
        (MINIMAL.replace("count: 3", "count: 3\n    count: 4"), r"line 8, column 5: duplicate key 'count'"),
    ],
)
def test_duplicate_keys_are_errors(tmp_path, text, pattern):
    with pytest.raises(SynthgenError, match=pattern):
        load_recipe(write(tmp_path, text))


def test_error_messages_are_one_line_and_name_file_and_field(tmp_path):
    path = write(tmp_path, MINIMAL.replace("prompts: [a polyp]", "prompts:\n      - {template: x, weight: -1}"))
    with pytest.raises(SynthgenError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"{path}: classes.polyp.prompts[0].weight: Input should be greater than 0 (got -1)"


def test_parse_recipe_rejects_non_mappings():
    for data, words in ((None, "empty"), ([], "a list"), ("x", "'x'"), (3, "3")):
        with pytest.raises(SynthgenError, match=re.escape(words)):
            parse_recipe(data, "inline")


def test_oversized_file_is_refused_without_reading(tmp_path, monkeypatch):
    import synthgen.recipe.loading as recipe_module

    monkeypatch.setattr(recipe_module, "MAX_RECIPE_BYTES", 100)
    with pytest.raises(SynthgenError, match="MiB"):
        load_recipe(write(tmp_path, MINIMAL + "#" * 200 + "\n"))


# --- JSON Schema -------------------------------------------------------------------------------------------


def test_committed_schema_is_current():
    """recipes/recipe.schema.json must be regenerated (`synthgen schema --out ...`) whenever the schema changes."""
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


def test_schema_command_prints_the_schema(tmp_path):
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()
    out = tmp_path / "schema.json"
    assert CliRunner().invoke(app, ["schema", "--out", str(out)]).exit_code == 0
    assert out.read_text() == SCHEMA_FILE.read_text()


def test_schema_basics():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "synthgen recipe"
    assert set(schema["required"]) == {"name", "model", "classes"}
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        target = definition if "properties" in definition else definition["anyOf"][0]
        assert target["additionalProperties"] is False, name
    json.dumps(schema)  # serialisable


def test_schema_is_valid_json_schema_and_accepts_the_demo():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(DEMO.read_text()))) == []
    for example in doc_recipes():
        assert list(validator.iter_errors(example)) == []
    bad = yaml.safe_load(DEMO.read_text())
    bad["sampling"]["stepz"] = 3
    bad["classes"]["a b"] = bad["classes"].pop("normal")
    messages = " ".join(error.message for error in validator.iter_errors(bad))
    assert "stepz" in messages and "a b" in messages


def test_demo_declares_the_schema_for_editors():
    assert "# yaml-language-server: $schema=recipe.schema.json" in DEMO.read_text().splitlines()


# --- docs/recipes.md ------------------------------------------------------------------------------------------


def doc_recipes() -> list[dict]:
    """The full recipes in docs/recipes.md (yaml blocks with a top-level `name:`)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return [yaml.safe_load(block) for block in blocks if re.search(r"^name:", block, flags=re.MULTILINE)]


def test_docs_examples_are_valid_recipes():
    examples = doc_recipes()
    assert len(examples) >= 2
    for example in examples:
        Recipe.model_validate(example)


def test_docs_mention_every_field():
    text = DOCS.read_text()

    def fields(model) -> set[str]:
        return set(model.model_fields)

    from synthgen.recipe import (
        AuditConfig,
        ClassConfig,
        LoRAConfig,
        ModelConfig,
        OutputConfig,
        PrivacyConfig,
        SamplingConfig,
        TextEncoderConfig,
        TrainingConfig,
    )

    models = (Recipe, ModelConfig, TrainingConfig, TextEncoderConfig, LoRAConfig, PrivacyConfig, ClassConfig)
    models += (SamplingConfig, AuditConfig, OutputConfig, SourceSpec)
    missing = sorted(
        f"{model.__name__}.{name}" for model in models for name in fields(model) if f"`{name}`" not in text
    )
    assert missing == []


def test_loaded_recipe_is_a_model():
    loaded = load_recipe(DEMO)
    assert isinstance(loaded, LoadedRecipe)
    assert loaded.base_dir == DEMO.parent.resolve()


def test_docs_demo_example_is_the_shipped_demo():
    """The demo shown in docs/recipes.md must not drift from recipes/demo.yaml."""
    shipped = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    shown = next(example for example in doc_recipes() if example["name"] == "demo")
    assert Recipe.model_validate(shown) == Recipe.model_validate(shipped)


PRETRAINED = MINIMAL.replace("  train:\n    data: {type: demo}\n", "  pretrained: some/pipeline\n")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            PRETRAINED.replace("classes:", "audit: {enabled: false}\nprivacy: {target_epsilon: 8}\nclasses:"),
            r"privacy: privacy applies to training, but this recipe trains nothing",
        ),
        (
            MINIMAL.replace("data: {type: demo}", "data: {type: demo}\n    text_encoder: {tokenizer_corpus: captions}")
            + "privacy: {target_epsilon: 8}\n",
            r"model\.train\.text_encoder\.tokenizer_corpus: with privacy the tokenizer must not be learnt",
        ),
        (
            MINIMAL.replace("  train:\n", "  lora: {data: demo}\n  train:\n"),
            r"model\.lora: LoRA fine-tunes a pretrained pipeline; set `pretrained` too",
        ),
        (MINIMAL + "audit: {threshold: 1.5}\n", r"audit\.threshold: must be a similarity in \(-1, 1\] or auto"),
        (MINIMAL + "audit: {threshold: sometimes}\n", r"audit\.threshold: "),
        (MINIMAL + "privacy: {target_epsilon: 0}\n", r"privacy\.target_epsilon: Input should be greater than 0"),
        (MINIMAL.replace("data: {type: demo}", "data: {type: demo}\n    preset: huge"), r"model\.train\.preset: "),
    ],
)
def test_training_privacy_and_audit_refusals(tmp_path, text, pattern):
    with pytest.raises(SynthgenError, match=pattern):
        load_recipe(write(tmp_path, text))


def test_privacy_lora_and_auto_threshold_parse(tmp_path):
    private = load_recipe(write(tmp_path, MINIMAL + "privacy: {target_epsilon: 8, delta: 1.0e-5}\n")).recipe
    assert private.privacy is not None and private.privacy.accountant == "prv" and private.privacy.delta == 1e-5
    assert private.model.train.text_encoder.tokenizer_corpus == "auto"
    lora = PRETRAINED.replace("  pretrained: some/pipeline\n", "  pretrained: some/pipeline\n  lora: {data: demo}\n")
    recipe = load_recipe(write(tmp_path, lora)).recipe
    assert recipe.model.lora.rank == 8 and recipe.model.lora.learning_rate == 1e-4
    assert recipe.audit_data() == recipe.model.lora.data  # fine-tuning data is what the audit compares against
    fixed = load_recipe(write(tmp_path, MINIMAL + "audit: {threshold: 0.9}\n")).recipe
    assert fixed.audit.threshold == 0.9 and private.audit.threshold == "auto"
