"""The dataset card (`README.md`): a Hugging Face YAML header plus what a user must know before use.

A synthetic medical dataset is only usable responsibly if its card says how it was made, what the
memorization audit found and what privacy guarantee (if any) holds, so the card always states all
three, including "none" when that is the truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from synthgen import __version__
from synthgen.atomic import write_text
from synthgen.output.writers import hf_features

_SIZE_BUCKETS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]


def size_category(n: int) -> str:
    """The Hugging Face `size_categories` bucket for `n` examples."""
    return next((name for limit, name in _SIZE_BUCKETS if n < limit), "10M<n<100M")


def _yaml_feature(column: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """One feature as `dataset_info.features` spells it in a card (`datasets.Features._to_yaml_list`)."""
    if spec["_type"] == "ClassLabel":
        return {"name": column, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(spec["names"])}}}}
    return {"name": column, "dtype": "image" if spec["_type"] == "Image" else spec["dtype"]}


def _header(name: str, class_counts: Mapping[str, int], classes: Sequence[str], formats: list[str]) -> dict[str, Any]:
    if "parquet" in formats:
        data_files = [{"split": "train", "path": "data/*.parquet"}]
    else:
        data_files = [{"split": "train", "path": "webdataset/*.tar"}]
    features = [_yaml_feature(column, spec) for column, spec in hf_features(classes).items()]
    total = sum(class_counts.values())
    return {
        "pretty_name": " ".join(name.split()),
        "license": "other",
        "tags": ["synthetic", "medical-imaging", "synthgen"],
        "task_categories": ["image-classification"],
        "size_categories": [size_category(total)],
        "configs": [{"config_name": "default", "data_files": data_files}],
        "dataset_info": {"features": features, "splits": [{"name": "train", "num_examples": total}]},
    }


def _get(mapping: Mapping[str, Any] | None, key: str, default: str = "unknown") -> Any:
    value = (mapping or {}).get(key)
    return default if value is None or value == "" else value


def _class_table(class_counts: Mapping[str, int], classes: Sequence[str]) -> list[str]:
    """Classes in label order: `index` is the stored `label` (ClassLabel, `.cls`), `class` its name."""
    total = sum(class_counts.values()) or 1
    rows = ["| index | class | images | share |", "|---:|---|---:|---:|"]
    for index, label in enumerate(classes):
        count = class_counts.get(label, 0)
        rows.append(f"| {index} | {label} | {count} | {100 * count / total:.1f}% |")
    rows.append(f"| | **total** | **{sum(class_counts.values())}** | 100% |")
    return rows


def _loading(formats: list[str]) -> list[str]:
    lines = ["## How to load", ""]
    if "parquet" in formats:
        lines += [
            "With Hugging Face `datasets` (the `image` column decodes to a PIL image):",
            "",
            "```python",
            "from datasets import load_dataset",
            "",
            'ds = load_dataset("parquet", data_files="data/*.parquet", split="train")',
            'names = ds.features["label"].names  # ClassLabel: `label` is the class index',
            'print(names[ds[0]["label"]], ds[0]["label_name"], ds[0]["prompt"], ds[0]["image"].size)',
            "```",
            "",
            "With `pyarrow` (provenance columns without decoding images):",
            "",
            "```python",
            "import pyarrow.dataset as pds",
            "",
            'table = pds.dataset("data", format="parquet").to_table(columns=["key", "label_name", "seed"])',
            "```",
            "",
        ]
    if "webdataset" in formats:
        lines += [
            "With `webdataset` (each sample has `png`/`jpg`, `cls` class index, `json` provenance, `txt` prompt):",
            "",
            "```python",
            "import glob",
            "import webdataset as wds",
            "",
            'ds = wds.WebDataset(sorted(glob.glob("webdataset/*.tar")), shardshuffle=False).decode("pil")',
            "for sample in ds:",
            '    image, index, meta = sample.get("png", sample.get("jpg")), sample["cls"], sample["json"]',
            '    name, prompt = meta["label_name"], sample["txt"]',
            "```",
            "",
        ]
    return lines


def _audit(audit: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Memorization audit", ""]
    if not audit:
        return lines + [
            "**No memorization audit was run.** Nothing is known about whether images copy "
            "training data; do not share this dataset as if it were anonymous.",
            "",
        ]
    threshold = _get(audit, "threshold")
    return lines + [
        f"Every generated image was embedded with the `{_get(audit, 'embedder')}` embedder and compared with "
        "its nearest neighbour in the training data (cosine similarity, 1.0 = identical embedding). "
        f"An image at or above the threshold **{threshold}** counts as a likely copy.",
        "",
        "| checked | flagged | dropped and regenerated | action | max similarity |",
        "|---:|---:|---:|---|---:|",
        f"| {_get(audit, 'checked')} | {_get(audit, 'flagged', '0')} | {_get(audit, 'dropped', '0')} "
        f"| {_get(audit, 'action')} | {_get(audit, 'max_similarity')} |",
        "",
        "Flagged images that were kept carry `audit_flagged = true` in their provenance. Every image's own "
        "`audit_similarity` is in its provenance. A low similarity is evidence against pixel-level copying "
        "under this embedder only; it is not a privacy guarantee.",
        "",
    ]


def _privacy(dp: Mapping[str, Any] | None, audit: Mapping[str, Any] | None = None) -> list[str]:
    """What the DP guarantee is, what it covers and, as plainly, what it does not (docs/privacy.md)."""
    lines = ["## Privacy budget", ""]
    if not dp or dp.get("epsilon") is None:
        return lines + [
            "The model was **not trained with differential privacy: no formal guarantee** "
            "limits what images can reveal about individual training records.",
            "",
        ]
    covers = ", ".join(f"`{part}`" for part in dp.get("covers") or []) or "the trained model"
    lines += [
        f"The model was trained with differential privacy (DP-SGD) at **ε = {dp['epsilon']}**, "
        f"**δ = {_get(dp, 'delta')}** ({_get(dp, 'accountant')} accountant; target ε {_get(dp, 'target_epsilon')}), "
        f"per training image. Trained under this guarantee: {covers}. Generated images are post-processing of "
        "the model and inherit it. The unit is one image: a patient with k training images is protected at "
        "about k·ε (group privacy).",
        "",
    ]
    if dp.get("noise_multiplier") is not None:
        phases = ", ".join(
            f"{name} {n} steps at sample rate {float((dp.get('sample_rate') or {}).get(name, 0)):.4g}"
            for name, n in (dp.get("steps") or {}).items()
        )
        lines += [
            f"Noise multiplier {float(dp['noise_multiplier']):.4g}, per-image gradient clipping at "
            f"{_get(dp, 'max_grad_norm')}" + (f"; {phases}" if phases else "") + ".",
            "",
        ]
    not_covered = list(dp.get("not_covered") or [])
    if audit and audit.get("action") == "drop":
        not_covered.insert(
            0,
            "**this dataset was filtered with `audit.action: drop`**: which generated images were published "
            "depends on the private training images, so the ε above does not strictly hold for the published set",
        )
    if not_covered:
        lines += ["Not covered by the guarantee:", "", *[f"- {item}" for item in not_covered], ""]
    return lines


def _model_folder(model: Mapping[str, Any] | None) -> list[str]:
    """Where the model folder is: in the set (`--export-model`), else on the machine that built it."""
    if not model or not model.get("path"):
        return []
    if model.get("exported_path"):
        return [
            f"- model folder: `{model['exported_path']}/` in this dataset (a diffusers pipeline: "
            f'`DiffusionPipeline.from_pretrained("{model["exported_path"]}")`; built from `{model["path"]}`)'
        ]
    return [
        f"- model folder: `{model['path']}` on the machine that built this dataset (not included; "
        "`synthgen build --export-model` puts it into the set as `model/`)"
    ]


def _what_this_is(
    prov: Mapping[str, Any], domain: str, formats: list[str], model: Mapping[str, Any] | None = None
) -> list[str]:
    return [
        "## What this is",
        "",
        f"**Every image is synthetic**: generated by a diffusion model, not acquired from a patient. "
        f"Domain: {domain or 'unspecified'}.",
        "",
        f"- model: `{_get(prov, 'model_id')}` (sha256 `{_get(prov, 'model_sha256')}`)",
        *_model_folder(model),
        f"- recipe: `{_get(prov, 'recipe_name')}` (sha256 `{_get(prov, 'recipe_sha256')}`)",
        f"- sampler: {_get(prov, 'scheduler')}, {_get(prov, 'steps')} steps, "
        f"guidance scale {_get(prov, 'guidance_scale')}",
        f"- made with synthgen {_get(prov, 'synthgen_version', __version__)}; formats: {', '.join(formats)}",
        "",
        "Each image carries its provenance (prompt, seed, model and recipe hashes, sampler settings, audit "
        "verdict, privacy budget) as columns (Parquet) or a `.json` member (WebDataset). "
        "`manifest.json` lists every shard with its sha256; `synthgen inspect` re-checks them.",
        "",
    ]


LIMITATIONS = [
    "## Limitations",
    "",
    "- Synthetic images can look plausible yet be anatomically or clinically wrong; they are not "
    "a substitute for real data in clinical validation.",
    "- The model reproduces the biases, artefacts and class balance problems of its training data; "
    "labels are the prompts' intent, not an expert's reading of the image.",
    "- The memorization audit only detects near-copies visible to its embedder.",
    "- `license: other`: terms follow the licenses of the model and of its training data.",
    "",
]


def write_dataset_card(
    out_dir: str | Path,
    *,
    name: str,
    description: str,
    domain: str,
    class_counts: Mapping[str, int],
    formats: Iterable[str],
    provenance_summary: Mapping[str, Any],
    audit_summary: Mapping[str, Any] | None,
    dp: Mapping[str, Any] | None,
    preview: str | None = None,
    classes: Sequence[str] | None = None,
    model: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out_dir/README.md`.

    `provenance_summary` keys used: recipe_name, recipe_sha256, model_id, model_sha256, scheduler,
    steps, guidance_scale, synthgen_version. `audit_summary`: embedder, threshold, action, checked,
    flagged, dropped, max_similarity (None = no audit). `dp`: privacy.json (epsilon, delta, accountant,
    covers, not_covered, ...; None = not private).
    `preview`: relative path of a sample grid to show under the class table. `classes`: names in label
    order (None: sorted). `model`: the manifest's `model` block (id, sha256, path, exported_path).
    """
    formats = list(formats)
    classes = list(classes) if classes is not None else sorted(class_counts)
    header = yaml.safe_dump(_header(name, class_counts, classes, formats), sort_keys=False, allow_unicode=True)
    body = [
        f"# {' '.join(name.split())}",
        "",
        description.strip() or f"A synthetic {domain or 'medical'} image dataset.",
        "",
        *_what_this_is(provenance_summary, domain, formats, model),
        "## Classes",
        "",
        *_class_table(class_counts, classes),
        "",
        *([f"![generated samples, one row per class]({preview})", ""] if preview else []),
        *_loading(formats),
        *_audit(audit_summary),
        *_privacy(dp, audit_summary),
        *LIMITATIONS,
    ]
    path = Path(out_dir) / "README.md"
    write_text(path, f"---\n{header}---\n\n" + "\n".join(body))
    return path
