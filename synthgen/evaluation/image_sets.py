"""The images an evaluation compares: read once from any source, capped per class, split by patient, checked.

Every set (real reference, synthetic, real test) is read through `synthgen.sources`, so an imagefolder, Parquet,
WebDataset or a synthgen build folder all work; a build folder with Parquet shards is read the way training code
reads it, through `synthgen.data.SyntheticDataset` (class names from its manifest, random access: a capped read
decodes only the images it keeps). A cap per class bounds the cost on big data; the cap draws a seeded random
subset, not the first files, so one patient or video at the top of a folder does not stand in for the class.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen.errors import SynthgenError
from synthgen.sources import open_source
from synthgen.sources.base import Source
from synthgen.sources.groups import SEQUENCE, column_groups, holdout_mask, sequence_groups
from synthgen.sources.spec import SourceSpec

MAX_SIDE = 256  # images are kept at most this large in memory: every feature space and classifier works below it


@dataclass
class ImageSet:
    """Decoded images of one side of the comparison, with their labels, keys, prompts and groups."""

    name: str
    description: str
    images: list[Image.Image]
    labels: list[str]
    keys: list[str]
    prompts: list[str]
    metadata: list[dict] = field(default_factory=list)
    skipped: int = 0
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, positions: np.ndarray | list[int], name: str | None = None) -> ImageSet:
        pick = [int(p) for p in positions]
        return ImageSet(
            name or self.name,
            self.description,
            [self.images[i] for i in pick],
            [self.labels[i] for i in pick],
            [self.keys[i] for i in pick],
            [self.prompts[i] for i in pick],
            [self.metadata[i] for i in pick] if self.metadata else [],
            self.skipped,
            self.fingerprint,
        )

    def is_grayscale(self) -> bool:
        """True when every image's channels agree (JPEG colour noise of a few levels tolerated)."""
        for image in self.images[:200]:
            pixels = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.int16)
            if np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max() > 8:
                return False
        return True


def read_set(
    name: str,
    spec: SourceSpec | str | Path | Source,
    *,
    base_dir: Path | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ImageSet:
    """Decode the images of `spec` (at most `max_per_class` per label, a seeded draw); `name` prefixes errors."""
    build = _parquet_build(spec, base_dir)
    if build is not None:
        return _read_build(name, build, max_per_class, seed)
    try:
        source = (
            spec if isinstance(spec, Source) else open_source(str(spec) if isinstance(spec, Path) else spec, base_dir)
        )
        labels = source.labels()
    except SynthgenError as error:
        raise SynthgenError(f"--{name}: {error}") from None
    keep = _capped_positions(labels, max_per_class, seed)
    images, kept_labels, keys, prompts, metadata = [], [], [], [], []
    for count, sample in enumerate(source):
        position = count + len(source.skipped)  # the item's place in `labels()`, which lists unreadable ones too
        if keep is not None and position not in keep:
            continue
        image = sample.image.convert("RGB")
        if max(image.size) > MAX_SIDE:
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        images.append(image)
        kept_labels.append(sample.label)
        keys.append(sample.key)
        prompts.append(sample.text)
        metadata.append({k: v for k, v in sample.metadata.items() if isinstance(v, str | int | float)})
        if progress is not None and len(images) % 500 == 0:
            progress(f"{name}: {len(images)} images read")
    if not images:
        raise SynthgenError(f"--{name}: no readable images in {source.description}")
    if any(not label for label in kept_labels):
        missing = sum(not label for label in kept_labels)
        raise SynthgenError(f"--{name}: {missing} of {len(images)} images have no label in {source.description}")
    return ImageSet(
        name, source.description, images, kept_labels, keys, prompts, metadata, len(source.skipped), _fp(source)
    )


def _parquet_build(spec: SourceSpec | str | Path | Source, base_dir: Path | None) -> Path | None:
    """The folder when `spec` names a synthgen build that wrote Parquet shards, else None."""
    if not isinstance(spec, str | Path):
        return None
    folder = Path(spec) if base_dir is None or Path(spec).is_absolute() else base_dir / spec
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        return folder if any(e.get("format") == "parquet" for e in manifest["shards"]) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a build folder (or not a readable one): the sources decide and explain


def _read_build(name: str, folder: Path, max_per_class: int | None, seed: int) -> ImageSet:
    """A build's images through `SyntheticDataset`: only the capped positions are decoded."""
    from synthgen.data import SyntheticDataset

    try:
        dataset = SyntheticDataset(folder, transform=lambda image: image)
    except SynthgenError as error:
        raise SynthgenError(f"--{name}: {error}") from None
    labels = [dataset.classes[i] for i in dataset.labels]
    keep = _capped_positions(labels, max_per_class, seed)
    positions = range(len(dataset)) if keep is None else sorted(keep)
    images, keys = [], []
    for position in positions:
        try:
            image = dataset[position][0].convert("RGB")
        except SynthgenError as error:
            raise SynthgenError(f"--{name}: {error}") from None
        if max(image.size) > MAX_SIDE:
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        images.append(image)
        keys.append(dataset.keys[position])
    if not images:
        raise SynthgenError(f"--{name}: no images in the build {folder}")
    return ImageSet(
        name,
        f"synthgen build {folder}",
        images,
        [labels[p] for p in positions],
        keys,
        [dataset.prompts[p] for p in positions],
        [],
        0,
        dataset.fingerprint,
    )


def _fp(source: object) -> str:
    try:
        return str(source.fingerprint())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a reader without a fingerprint simply has none
        return ""


def _capped_positions(labels: list[str], cap: int | None, seed: int) -> set[int] | None:
    """Positions to keep so that no label has more than `cap` (a seeded draw per label); None keeps all."""
    if cap is None:
        return None
    by_label: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted(by_label):
        positions = by_label[label]
        chosen = positions if len(positions) <= cap else rng.choice(positions, cap, replace=False).tolist()
        keep.update(int(p) for p in chosen)
    return keep


def groups_of(images: ImageSet, by: str) -> list[str]:
    """The patient / sequence group of every image: metadata column `by`, or `sequence` from the keys."""
    if by == SEQUENCE:
        return sequence_groups(images.keys)
    if not any(by in row for row in images.metadata):
        columns = sorted({k for row in images.metadata for k in row})
        raise SynthgenError(
            f"--split-by: {images.description} has no column {by!r} (columns: {', '.join(columns) or 'none'})"
        )
    groups, _ = column_groups((str(row.get(by, "")) for row in images.metadata), images.keys)
    return groups


def split_by_group(images: ImageSet, by: str, holdout: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, test) with whole groups on one side, as `synthgen split` decides them; never split by image."""
    held = holdout_mask(groups_of(images, by), holdout, seed)
    if held.all() or not held.any():
        raise SynthgenError(f"--split-by: {by} leaves one side empty; pass --test with held-out patients instead")
    return images.subset(np.flatnonzero(~held), "real"), images.subset(np.flatnonzero(held), "test")


def pixel_digest(image: Image.Image) -> str:
    """sha256 of the decoded pixels: the same image however it was named or re-saved losslessly."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def shared_images(test: ImageSet, real: ImageSet) -> list[str]:
    """Keys of `test` images whose pixels also occur in `real` (the generator's training data)."""
    seen = {pixel_digest(image) for image in real.images}
    return [key for key, image in zip(test.keys, test.images, strict=True) if pixel_digest(image) in seen]


def check_classes(real: ImageSet, synthetic: ImageSet, test: ImageSet | None) -> list[str]:
    """The classes compared: every synthetic class must exist in the real data (and test set), by name."""
    real_classes = set(real.classes())
    missing = sorted(set(synthetic.classes()) - real_classes)
    if missing:
        raise SynthgenError(
            f"--synthetic: classes {', '.join(missing)} are not labels of the real data "
            f"(real labels: {', '.join(sorted(real_classes))}); name recipe classes after the real labels"
        )
    classes = synthetic.classes()
    if len(classes) < 2:
        raise SynthgenError(f"--synthetic: needs at least 2 classes to evaluate, found {', '.join(classes)}")
    if test is not None:
        absent = sorted(set(classes) - set(test.classes()))
        if absent:
            raise SynthgenError(f"--test: has no images of class {', '.join(absent)}")
    return classes


def rename(images: ImageSet, label_map: dict[str, str] | None) -> ImageSet:
    """Data labels renamed to the class names they stand for (labels the map lacks stay as they are)."""
    if label_map:
        images.labels = [label_map.get(label, label) for label in images.labels]
    return images


def restrict(images: ImageSet, classes: list[str]) -> ImageSet:
    """Only the images of `classes` (real data may hold labels the synthetic set does not generate)."""
    wanted = set(classes)
    return images.subset([i for i, label in enumerate(images.labels) if label in wanted])
