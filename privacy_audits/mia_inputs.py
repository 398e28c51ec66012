"""Inputs of a recipe's privacy audit, for regenerate.sh: its trained model, its training images and a holdout set.

    python privacy_audits/mia_inputs.py RECIPE WORKDIR
    -> five lines: model folder, train dir, holdout dir (may be empty), the recipe's audit embedder and threshold

The training data is written as an imagefolder (the CLI cannot name a demo source with non-default settings). The
holdout is what the model never saw: for demo phantoms the same classes, count and resolution drawn with another
seed; for a recipe that trains on the `train` side of a source `split:`, the `holdout` side (other patients);
for other data set HOLDOUT=path (else the third line is empty and regenerate.sh skips membership inference).
The model comes from the model cache the build just filled (resolve_model does not retrain a cached model).
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from synthgen.recipe import load_recipe
from synthgen.resolve import resolve_model
from synthgen.sources import open_source
from synthgen.sources.base import Source
from synthgen.sources.groups import source_groups

HOLDOUT_SEED_OFFSET = 1_000_003  # any other seed draws different phantoms of the same distribution


def write_imagefolder(source: Source, folder: Path, groups: dict[str, str] | None = None) -> None:
    """Every readable image of `source` as PNG plus metadata.csv (file_name, label, text[, patient_id]).

    `groups` (key -> patient) is written as `patient_id`, so the audit calibrates by patient as the build did
    (without it the copy's renamed files would fall back to sequence groups).
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "text"] + (["patient_id"] if groups is not None else []))
        for index, sample in enumerate(source):
            name = f"images/{index:06d}.png"
            sample.image.save(folder / name)
            group = [groups.get(sample.key, sample.key)] if groups is not None else []
            writer.writerow([name, sample.label, sample.text, *group])


def split_groups(source: Source, split: Any) -> dict[str, str] | None:
    """Key -> patient of a split source's images (the column, else the file-name pattern), as its split has them."""
    if split is None:
        return None
    groups, _ = source_groups(source, split.by, split.name_pattern)
    return groups


def main(recipe: str, work: str) -> None:
    loaded = load_recipe(Path(recipe))
    config = loaded.recipe.model.train
    if config is None:
        raise SystemExit(f"{recipe}: uses a pretrained model; give its training and holdout data by hand")
    model = resolve_model(loaded).path
    train_dir, holdout_dir = Path(work) / "train", Path(work) / "holdout"
    train_source = open_source(config.data, loaded.base_dir)
    write_imagefolder(train_source, train_dir, split_groups(train_source, config.data.split))
    holdout = ""
    if config.data.type == "demo":
        spec = config.data.model_copy(update={"seed": config.data.seed + HOLDOUT_SEED_OFFSET})
        write_imagefolder(open_source(spec, loaded.base_dir), holdout_dir)
        holdout = str(holdout_dir)
    elif config.data.split is not None and config.data.split.side == "train":
        # A recipe that trains on one side of a patient split: the other side's patients were never seen.
        spec = config.data.model_copy(update={"split": config.data.split.model_copy(update={"side": "holdout"})})
        holdout_source = open_source(spec, loaded.base_dir)
        write_imagefolder(holdout_source, holdout_dir, split_groups(holdout_source, spec.split))
        holdout = str(holdout_dir)
    elif os.environ.get("HOLDOUT"):
        holdout = os.environ["HOLDOUT"]
    audit = loaded.recipe.audit
    print(model, train_dir, holdout, audit.embedder, audit.threshold, sep="\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
