"""`synthgen validate` against a battery of bad recipes: one `error:` line naming file and field, no traceback.

Most cases run in-process through typer's CliRunner (fast); a few run `python -m synthgen.cli` in a real
subprocess to prove that no traceback reaches a terminal. Nothing here builds or trains anything.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from synthgen.cli import app

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "recipes" / "demo.yaml"
RUNNER = CliRunner()

# A small valid recipe: a tiny MSDM trained on 2 demo phantoms per class; `output.dir` stays inside the case folder.
BASE: dict[str, Any] = {
    "name": "battery",
    "model": {"train": {"data": {"type": "demo", "per_class": 2}}},
    "classes": {
        "polyp": {
            "count": 4,
            "prompts": ["colonoscopy phantom showing a {size} polyp"],
            "variables": {"size": ["small", "large"]},
        },
        "normal": {"count": 4, "prompts": ["colonoscopy phantom showing normal mucosa"]},
    },
    "output": {"dir": "out"},
}
# The same with a local pretrained pipeline (a folder with model_index.json) and an imagefolder to audit against.
PRETRAINED: dict[str, Any] = {
    **BASE,
    "model": {"pretrained": "pipeline"},
    "audit": {"data": {"type": "imagefolder", "path": "train_images"}},
}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Outcome:
    result = RUNNER.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def run_subprocess(*args: str, env: dict[str, str] | None = None) -> Outcome:
    process = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    return Outcome(process.returncode, process.stdout, process.stderr)


def assert_one_line_error(outcome: Outcome, *fragments: str) -> str:
    """Exit != 0, nothing on stdout, exactly one non-empty `error:` line on stderr containing `fragments`."""
    assert outcome.code != 0, outcome
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    line = lines[0]
    assert line.startswith("error: ") and line.removeprefix("error: ").strip(), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def make_png(path: Path, color: tuple[int, int, int] = (200, 90, 80)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)


def make_fixtures(folder: Path) -> None:
    """What the valid PRETRAINED recipe points at: a pipeline folder and a small imagefolder."""
    (folder / "pipeline").mkdir()
    (folder / "pipeline" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    make_png(folder / "train_images" / "polyp" / "a.png")
    make_png(folder / "train_images" / "normal" / "b.png", (120, 60, 50))


def mutate(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `base` with dotted paths set (`sampling__steps="ten"` sets sampling.steps); DELETE removes."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


DELETE = object()


def case_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    make_fixtures(folder)
    return folder


def write_recipe(folder: Path, content: dict[str, Any] | str | bytes, name: str = "recipe.yaml") -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# --- the valid baselines ---------------------------------------------------------------------------------


def test_demo_recipe_is_valid(tmp_path):
    out = tmp_path / "demo-out"
    outcome = run_cli("validate", str(DEMO_RECIPE), "--out", str(out))
    assert outcome.code == 0, outcome.stderr
    assert "ok:" in outcome.stdout and "plan: 48 images in 2 shard(s): polyp 16, ulcer 16, normal 16" in outcome.stdout
    assert not out.exists()


@pytest.mark.parametrize("base", [BASE, PRETRAINED], ids=["train", "pretrained"])
def test_base_recipes_are_valid(tmp_path, base):
    folder = case_folder(tmp_path)
    before = snapshot(folder)
    path = write_recipe(folder, base)
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    assert outcome.stderr == ""
    assert snapshot(folder) == before | {"recipe.yaml"}


def test_validate_resumable_output_folder(tmp_path):
    """A folder holding a build of this very recipe is fine (the build resumes there)."""
    import hashlib
    import json

    folder = case_folder(tmp_path)
    path = write_recipe(folder, BASE)
    state = folder / "out" / ".synthgen" / "build.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"recipe_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    assert "resumes" in outcome.stdout
    state.write_text(json.dumps({"recipe_sha256": "0" * 64}))
    assert_one_line_error(run_cli("validate", str(path)), "recipe.yaml", "output.dir", "--overwrite")


# --- the battery ------------------------------------------------------------------------------------------

Setup = Callable[[Path], None]


@dataclass
class Bad:
    id: str
    content: dict[str, Any] | str | bytes
    fragments: tuple[str, ...]
    setup: Setup | None = None


def _as_file(name: str) -> Setup:
    return lambda folder: (folder / name).write_text("i am a file")


def _non_empty(name: str) -> Setup:
    def setup(folder: Path) -> None:
        (folder / name).mkdir()
        (folder / name / "notes.txt").write_text("mine")

    return setup


def _folder(name: str) -> Setup:
    return lambda folder: (folder / name).mkdir()


def _parquet_without_image_column(folder: Path) -> None:
    pq.write_table(pa.table({"caption": ["x"]}), folder / "table.parquet")


def _parquet_of_broken_images(folder: Path) -> None:
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": b"not an image", "path": "a.png"}], struct), "text": ["x"]})
    pq.write_table(table, folder / "broken.parquet")


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    return buffer.getvalue()


NO_AUDIT = {"enabled": False}


# --- data for the data checks (issue 13): a labelled imagefolder, and the three kinds of unreadable image

XRAY_ROWS = [("images/a.png", "covid19"), ("images/b.png", "covid19"), ("images/c.png", "pneumonia")]


def _xray_folder(folder: Path, rows: list[tuple[str, str]] = XRAY_ROWS, name: str = "xray") -> None:
    """An imagefolder whose metadata.csv has file_name, label, text (no `diagnosis`): labels covid19 x2, pneumonia."""
    root = folder / name
    root.mkdir(parents=True, exist_ok=True)
    for file_name, _ in rows:
        if file_name.endswith(".png"):
            make_png(root / file_name)
    lines = ["file_name,label,text"] + [f"{file_name},{label},chest X-ray {label}" for file_name, label in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    noise.save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    return data[: len(data) // 3]


BROKEN_ROWS = [("images/cut.jpg", "covid19"), ("images/junk.jpg", "covid19"), ("images/gone.jpg", "pneumonia")]


def _write_broken(root: Path) -> None:
    """A truncated JPEG, a garbage file with an image name; `images/gone.jpg` is listed but never written."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "cut.jpg").write_bytes(_truncated_jpeg())
    (root / "images" / "junk.jpg").write_bytes(b"\x00garbage, not an image" * 20)


def _broken_folder(folder: Path) -> None:
    _xray_folder(folder, BROKEN_ROWS, "broken")
    _write_broken(folder / "broken")


def _xray_parquet(folder: Path) -> None:
    table = pa.table({"image": [_png_bytes()], "caption": ["chest X-ray"], "label": ["covid19"]})
    pq.write_table(table, folder / "xray.parquet")


XRAY_DATA = {"type": "imagefolder", "path": "xray"}
COVID = {"count": 2, "prompts": ["chest X-ray PA view, finding: covid19"]}
XRAY = mutate(BASE, model__train__data=XRAY_DATA, classes={"covid19": COVID})

BAD: list[Bad] = [
    # --- not a recipe at all
    Bad("empty-file", "", ("recipe.yaml", "empty")),
    Bad("only-comments", "# a recipe\n# to be written\n", ("recipe.yaml", "empty")),
    Bad("tabs", "name: x\n\tmodel: {}\n", ("recipe.yaml", "not valid YAML", "line 2")),
    Bad("unbalanced-brackets", "name: [a, b\nclasses: {\n", ("recipe.yaml", "not valid YAML")),
    Bad("yaml-list", "- name: x\n- classes: {}\n", ("recipe.yaml", "mapping", "list")),
    Bad("yaml-scalar", "just some words\n", ("recipe.yaml", "mapping", "just some words")),
    Bad("yaml-number", "42\n", ("recipe.yaml", "mapping", "42")),
    Bad("binary-bytes", _png_bytes(), ("recipe.yaml", "not UTF-8")),
    Bad("latin-1", "name: caf\xe9\n".encode("latin-1"), ("recipe.yaml", "not UTF-8")),
    Bad("nul-character", "name: a\x00b\n", ("recipe.yaml", "not valid YAML")),
    Bad("duplicate-key", yaml.safe_dump(BASE, sort_keys=False) + "name: again\n", ("recipe.yaml", "duplicate key")),
    Bad("python-tag", "name: !!python/object/apply:os.system [ls]\n", ("recipe.yaml", "not valid YAML")),
    Bad("impossible-date", "name: 2024-13-45\n", ("recipe.yaml", "not valid YAML")),
    Bad("deep-nesting", "name: " + "[" * 3000 + "]" * 3000 + "\n", ("recipe.yaml", "not valid YAML")),
    # --- unknown keys
    Bad("unknown-top-level-key", mutate(BASE, sampler={"steps": 3}), ("recipe.yaml", "sampler", "unknown key")),
    Bad("unknown-sampling-key", mutate(BASE, sampling__stepz=10), ("sampling.stepz", "unknown key")),
    Bad("unknown-output-key", mutate(BASE, output__foo=1), ("output.foo", "unknown key")),
    Bad("unknown-class-key", mutate(BASE, classes__normal__cout=3), ("classes.normal.cout", "unknown key")),
    Bad("unknown-train-key", mutate(BASE, model__train__epochs=3), ("model.train.epochs", "unknown key")),
    Bad("unknown-data-key", mutate(BASE, model__train__data__folder="x"), ("model.train.data.folder", "unknown")),
    Bad("unknown-audit-key", mutate(BASE, audit__treshold=0.9), ("audit.treshold", "unknown key")),
    # --- wrong types and ranges
    Bad("steps-not-a-number", mutate(BASE, sampling__steps="ten"), ("sampling.steps", "integer", "'ten'")),
    Bad("steps-too-many", mutate(BASE, sampling__steps=5000), ("sampling.steps", "1000")),
    Bad("count-negative", mutate(BASE, classes__normal__count=-3), ("classes.normal.count", "greater than 0")),
    Bad("count-zero", mutate(BASE, classes__normal__count=0), ("classes.normal.count", "greater than 0")),
    Bad("count-fraction", mutate(BASE, classes__normal__count=1.5), ("classes.normal.count", "integer", "1.5")),
    Bad("count-huge", mutate(BASE, classes__normal__count=10**10), ("classes.normal.count", "1000000")),
    Bad("count-missing", mutate(BASE, classes__normal__count=DELETE), ("classes.normal.count", "missing")),
    Bad(
        "guidance-negative",
        mutate(BASE, sampling__guidance_scale=-1),
        ("sampling.guidance_scale", "greater than or equal to 0"),
    ),
    Bad(
        "threshold-above-1",
        mutate(BASE, audit__threshold=2),
        ("audit.threshold", "must be a similarity in (-1, 1] or auto (got 2)"),
    ),
    Bad("formats-zip", mutate(BASE, output__formats=["zip"]), ("output.formats[0]", "'zip'")),
    Bad("formats-empty", mutate(BASE, output__formats=[]), ("output.formats", "at least 1")),
    Bad("image-format-gif", mutate(BASE, output__image_format="gif"), ("output.image_format", "'gif'")),
    Bad("jpeg-quality-0", mutate(BASE, output__jpeg_quality=0), ("output.jpeg_quality",)),
    Bad("shard-size-0", mutate(BASE, output__shard_size=0), ("output.shard_size", "greater than 0")),
    Bad("output-dir-empty", mutate(BASE, output__dir=""), ("output.dir",)),
    Bad("train-resolution-17", mutate(BASE, model__train__resolution=17), ("model.train.resolution", "16")),
    Bad("sampling-resolution-100", mutate(BASE, sampling__resolution=100), ("sampling.resolution", "multiple of 8")),
    Bad("scheduler-unknown", mutate(BASE, sampling__scheduler="pndm"), ("sampling.scheduler", "'pndm'")),
    Bad("device-unknown", mutate(BASE, sampling__device="tpu"), ("sampling.device", "'tpu'")),
    Bad("action-unknown", mutate(BASE, audit__action="delete"), ("audit.action", "'delete'")),
    Bad("preset-unknown", mutate(BASE, model__train__preset="huge"), ("model.train.preset", "'huge'")),
    Bad("prompt-dropout-1", mutate(BASE, model__train__prompt_dropout=1), ("model.train.prompt_dropout",)),
    Bad("sampling-null", mutate(BASE, sampling=None), ("sampling", "mapping", "null")),
    Bad("sampling-list", mutate(BASE, sampling=[1, 2]), ("sampling", "mapping", "list")),
    Bad("name-with-space", mutate(BASE, name="my data"), ("recipe.yaml", "name", "'my data'")),
    Bad("name-missing", mutate(BASE, name=DELETE), ("name", "missing")),
    # --- classes and prompts
    Bad("classes-empty", mutate(BASE, classes={}), ("classes", "at least 1")),
    Bad("classes-missing", mutate(BASE, classes=DELETE), ("classes", "missing")),
    Bad("class-name-space", mutate(BASE, classes={"big polyp": BASE["classes"]["normal"]}), ("classes.big polyp",)),
    Bad("class-name-dot", mutate(BASE, classes={"a.b": BASE["classes"]["normal"]}), ("classes.a.b", "class name")),
    Bad(
        "class-name-number",
        "name: x\nmodel: {train: {data: demo}}\nclasses:\n  1: {count: 1, prompts: [a]}\n",
        ("classes.1", "quotes"),
    ),
    Bad(
        "class-name-yes",
        "name: x\nmodel: {train: {data: demo}}\nclasses:\n  yes: {count: 1, prompts: [a]}\n",
        ("classes.true", "quotes"),
    ),
    Bad(
        "class-null",
        "name: x\nmodel: {train: {data: demo}}\nclasses:\n  polyp:\n",
        ("classes.polyp", "mapping", "null"),
    ),
    Bad("prompts-empty", mutate(BASE, classes__normal__prompts=[]), ("classes.normal.prompts", "at least 1")),
    Bad("prompts-missing", mutate(BASE, classes__normal__prompts=DELETE), ("classes.normal.prompts", "missing")),
    Bad("prompts-a-string", mutate(BASE, classes__normal__prompts="hello"), ("classes.normal.prompts", "list")),
    Bad(
        "prompt-empty-string", mutate(BASE, classes__normal__prompts=[""]), ("classes.normal.prompts[0]", "1 character")
    ),
    Bad(
        "prompt-template-empty",
        mutate(BASE, classes__normal__prompts=[{"template": ""}]),
        ("classes.normal.prompts[0].template",),
    ),
    Bad(
        "prompt-weight-zero",
        mutate(BASE, classes__normal__prompts=[{"template": "a", "weight": 0}]),
        ("classes.normal.prompts[0].weight", "greater than 0"),
    ),
    Bad(
        "prompt-unknown-key",
        mutate(BASE, classes__normal__prompts=[{"template": "a", "wieght": 2}]),
        ("classes.normal.prompts[0].wieght", "unknown key"),
    ),
    Bad(
        "slot-without-variable",
        mutate(BASE, classes__normal__prompts=["a {site} view"]),
        ("classes.normal.prompts[0]", "{site}", "variables"),
    ),
    Bad("slot-positional", mutate(BASE, classes__normal__prompts=["a {0} view"]), ("classes.normal.prompts[0]", "{0}")),
    Bad(
        "slot-attribute",
        mutate(BASE, classes__polyp__prompts=["a {size.x} polyp"]),
        ("classes.polyp.prompts[0]", "{size.x}"),
    ),
    Bad(
        "slot-bad-format-spec",
        mutate(BASE, classes__polyp__prompts=["a {size:d} polyp"]),
        ("classes.polyp.prompts[0]", "cannot be filled in"),
    ),
    Bad("lone-brace", mutate(BASE, classes__normal__prompts=["a { view"]), ("classes.normal.prompts[0]", "{{")),
    Bad(
        "variable-empty-list",
        mutate(BASE, classes__polyp__variables={"size": []}),
        ("classes.polyp.variables.size", "no values"),
    ),
    Bad(
        "variable-number-values",
        mutate(BASE, classes__polyp__variables={"size": [1, 2]}),
        ("classes.polyp.variables.size[0]", "string"),
    ),
    # --- the model
    Bad("model-both", mutate(BASE, model__pretrained="pipeline"), ("recipe.yaml", "model", "exactly one")),
    Bad("model-neither", mutate(BASE, model={}), ("recipe.yaml", "model", "exactly one")),
    Bad("model-missing", mutate(BASE, model=DELETE), ("model", "missing")),
    Bad("pretrained-empty", mutate(PRETRAINED, model__pretrained=""), ("model.pretrained",)),
    Bad(
        "pretrained-not-a-folder-nor-id",
        mutate(PRETRAINED, model__pretrained="./no/such/pipeline"),
        ("recipe.yaml", "model.pretrained", "neither"),
    ),
    Bad(
        "pretrained-folder-without-index",
        mutate(PRETRAINED, model__pretrained="train_images"),
        ("recipe.yaml", "model.pretrained", "model_index.json"),
    ),
    Bad(
        "train-data-missing-path",
        mutate(BASE, model__train__data={"path": "no-such-folder"}),
        ("recipe.yaml", "model.train.data", "no-such-folder"),
    ),
    Bad("train-data-no-path", mutate(BASE, model__train__data={}), ("model.train.data", "path")),
    Bad("train-data-missing", mutate(BASE, model__train={"resolution": 64}), ("model.train.data", "missing")),
    Bad(
        "train-data-empty-imagefolder",
        mutate(BASE, model__train__data={"type": "imagefolder", "path": "empty"}),
        ("recipe.yaml", "model.train.data", "no image files"),
        _folder("empty"),
    ),
    Bad(
        "train-data-imagefolder-is-file",
        mutate(BASE, model__train__data={"type": "imagefolder", "path": "f.png"}),
        ("model.train.data", "not a folder"),
        _as_file("f.png"),
    ),
    Bad(
        "train-data-unknown-kind",
        mutate(BASE, model__train__data={"path": "notes"}),
        ("model.train.data", "set `type`"),
        _non_empty("notes"),
    ),
    Bad(
        "train-data-parquet-no-image-column",
        mutate(BASE, model__train__data={"path": "table.parquet"}),
        ("model.train.data", "image_column", "caption"),
        _parquet_without_image_column,
    ),
    Bad(
        "train-data-parquet-undecodable",
        mutate(BASE, model__train__data={"path": "broken.parquet"}),
        ("model.train.data", "no readable images"),
        _parquet_of_broken_images,
    ),
    Bad(
        "train-data-demo-unknown-class",
        mutate(BASE, model__train__data={"type": "demo", "classes": ["tumour"]}),
        ("model.train.data", "tumour"),
    ),
    # --- the data checks: named columns, classes against labels, unreadable images (issue 13)
    Bad(
        "label-column-not-in-metadata",
        mutate(XRAY, model__train__data={**XRAY_DATA, "label_column": "diagnosis"}),
        (
            "model.train.data.label_column: 'diagnosis' is not a column of",
            "xray/metadata.csv (columns: file_name, label, text)",
        ),
        _xray_folder,
    ),
    Bad(
        "text-column-not-in-parquet",
        mutate(XRAY, model__train__data={"path": "xray.parquet", "text_column": "text"}),
        ("model.train.data.text_column: 'text' is not a column of", "xray.parquet (columns: image, caption, label)"),
        _xray_parquet,
    ),
    Bad(
        "key-column-in-class-folders",
        mutate(XRAY, model__train__data={"path": "train_images", "key_column": "id"}),
        ("model.train.data.key_column: 'id' is not a column of", "no metadata.csv or metadata.jsonl"),
    ),
    Bad(
        "audit-label-column-missing",
        mutate(PRETRAINED, audit__data={"path": "xray", "label_column": "grade"}),
        ("audit.data.label_column: 'grade' is not a column of", "columns: file_name, label, text"),
        _xray_folder,
    ),
    Bad(
        "audit-holdout-missing-path",
        mutate(XRAY, audit__holdout={"path": "other-patients"}),
        ("audit.holdout: data path not found", "other-patients"),
        _xray_folder,
    ),
    Bad(
        "class-not-in-training-labels",
        mutate(XRAY, classes={"covid": COVID}),
        (
            "classes.covid: no training image is labelled 'covid'",
            "the data's labels are covid19 (2), pneumonia (1)",
            "add `labels: [covid19]`",
        ),
        _xray_folder,
    ),
    Bad(
        "class-mapping-to-absent-label",
        mutate(XRAY, classes={"covid": {**COVID, "labels": ["covid-19"]}}),
        (
            "classes.covid.labels: no training image is labelled 'covid-19'",
            "covid19 (2), pneumonia (1)",
            "did you mean `labels: [covid19]`?",
        ),
        _xray_folder,
    ),
    Bad(
        "demo-class-not-in-phantoms",
        mutate(BASE, classes__tumour=BASE["classes"]["normal"]),
        ("classes.tumour: no training image is labelled 'tumour'", "polyp (2)", "normal (2)"),
    ),
    Bad("class-labels-empty", mutate(XRAY, classes__covid19__labels=[]), ("classes.covid19.labels", "at least 1")),
    Bad(
        "no-image-readable",
        mutate(XRAY, model__train__data={"path": "broken"}),
        (
            "model.train.data: no readable images in imagefolder",
            "(3 unreadable: images/cut.jpg: cannot decode image: OSError: image file is truncated",
            "images/junk.jpg: cannot decode image: not a recognised image format",
            "images/gone.jpg: file not found)",
        ),
        _broken_folder,
    ),
    # --- the audit
    Bad("audit-pretrained-without-data", mutate(PRETRAINED, audit={}), ("recipe.yaml", "audit.data", "required")),
    Bad(
        "audit-data-missing-path",
        mutate(PRETRAINED, audit__data={"path": "gone"}),
        ("recipe.yaml", "audit.data", "gone"),
    ),
    Bad(
        "audit-embedder-unknown",
        mutate(BASE, audit__embedder="clip-xxl"),
        ("recipe.yaml", "audit.embedder", "clip-xxl"),
    ),
    # --- the output folder
    Bad(
        "output-dir-is-a-file",
        mutate(BASE, output__dir="taken"),
        ("recipe.yaml", "output.dir", "is a file"),
        _as_file("taken"),
    ),
    Bad(
        "output-dir-not-ours",
        mutate(BASE, output__dir="mine"),
        ("recipe.yaml", "output.dir", "not a synthgen output"),
        _non_empty("mine"),
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[bad.id for bad in BAD])
def test_bad_recipe(tmp_path, bad: Bad):
    folder = case_folder(tmp_path)
    if bad.setup is not None:
        bad.setup(folder)
    path = write_recipe(folder, bad.content)
    before = snapshot(folder)
    line = assert_one_line_error(run_cli("validate", str(path)), *bad.fragments)
    assert path.name in line  # every message names the recipe file
    assert snapshot(folder) == before  # validate creates nothing (no output folder)


def test_bad_case_ids_unique():
    assert len({bad.id for bad in BAD}) == len(BAD)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert_one_line_error(run_cli("validate", str(path)), str(path), "not found")
    assert list(tmp_path.iterdir()) == []


def test_folder_instead_of_file(tmp_path):
    assert_one_line_error(run_cli("validate", str(tmp_path)), str(tmp_path), "folder")


def test_hub_id_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = case_folder(tmp_path)
    path = write_recipe(folder, mutate(PRETRAINED, model__pretrained="synthgen-tests/not-a-real-model-0"))
    assert_one_line_error(
        run_cli("validate", str(path)),
        "recipe.yaml",
        "model.pretrained",
        "not-a-real-model-0",
        "not in the local cache",
    )


def test_unavailable_device(tmp_path):
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    missing = next((name for name, ok in available.items() if not ok), None)
    if missing is None:
        pytest.skip("both cuda and mps are available here")
    folder = case_folder(tmp_path)
    path = write_recipe(folder, mutate(BASE, sampling__device=missing))
    assert_one_line_error(run_cli("validate", str(path)), "recipe.yaml", "sampling.device", missing, "not available")


def test_out_option_pointing_at_a_file(tmp_path):
    folder = case_folder(tmp_path)
    path = write_recipe(folder, BASE)
    (folder / "taken.txt").write_text("x")
    outcome = run_cli("validate", str(path), "--out", str(folder / "taken.txt"))
    assert_one_line_error(outcome, "recipe.yaml", "--out", "taken.txt", "is a file")


def test_first_of_several_problems_is_reported_with_a_count(tmp_path):
    folder = case_folder(tmp_path)
    path = write_recipe(folder, mutate(BASE, sampling__steps=0, output__shard_size=0))
    assert_one_line_error(run_cli("validate", str(path)), "sampling.steps", "(and 1 more problem)")


def test_long_path_stays_one_line(tmp_path):
    """Rich must not wrap a long message across lines, even at a narrow terminal width."""
    folder = tmp_path / ("a-rather-long-folder-name-" * 6)
    folder.mkdir()
    make_fixtures(folder)
    path = write_recipe(folder, mutate(BASE, sampling__stepz=3))
    outcome = run_cli("validate", str(path))
    assert_one_line_error(outcome, str(path), "sampling.stepz")


def test_brackets_in_user_values_are_printed_verbatim(tmp_path):
    folder = case_folder(tmp_path)
    path = write_recipe(folder, mutate(BASE, name="[/x] [bold]"))
    assert_one_line_error(run_cli("validate", str(path)), "'[/x] [bold]'")


# --- a real terminal process: no traceback, one line ------------------------------------------------------


def test_subprocess_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    assert_one_line_error(run_subprocess("validate", str(path)), str(path), "not found")


def test_subprocess_schema_and_yaml_errors(tmp_path):
    bad_yaml = write_recipe(tmp_path, "name: [unclosed\n", "broken.yaml")
    assert_one_line_error(run_subprocess("validate", str(bad_yaml)), "broken.yaml", "not valid YAML")
    folder = case_folder(tmp_path)
    unknown = write_recipe(folder, mutate(BASE, classes__normal__cout=3))
    assert_one_line_error(run_subprocess("validate", str(unknown)), "recipe.yaml", "classes.normal.cout")


def test_subprocess_validate_stage_errors(tmp_path):
    folder = case_folder(tmp_path)
    (folder / "taken").write_text("x")
    path = write_recipe(folder, mutate(BASE, output__dir="taken"))
    before = snapshot(folder)
    assert_one_line_error(
        run_subprocess("validate", str(path), env={"COLUMNS": "40"}), "recipe.yaml", "output.dir", "is a file"
    )
    assert snapshot(folder) == before


def test_subprocess_hub_id_offline(tmp_path):
    folder = case_folder(tmp_path)
    path = write_recipe(folder, mutate(PRETRAINED, model__pretrained="synthgen-tests/not-a-real-model-1"))
    outcome = run_subprocess("validate", str(path), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(outcome, "model.pretrained", "not-a-real-model-1")
