"""`preview.png`: a grid of generated samples, one row per class, for the dataset card and a quick look.

Only synthetic images go in; it is read back from the finished Parquet or WebDataset shards, so it also
shows what a resumed build wrote earlier.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from synthgen.atomic import atomic_path

PREVIEW_FILE = "preview.png"


def write_preview(out_dir: Path, classes: list[str], per_class: int = 8, tile: int = 96) -> Path | None:
    """Write the grid (classes in recipe order, the first `per_class` samples of each); None if empty."""
    from synthgen.sources import open_source

    picked: dict[str, list[Image.Image]] = {label: [] for label in classes}
    shards = out_dir / "data" if (out_dir / "data").is_dir() else out_dir / "webdataset"
    if not shards.is_dir():
        return None
    for sample in open_source(str(shards)):
        row = picked.get(sample.label)
        if row is not None and len(row) < per_class:
            row.append(sample.image.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC))
        if all(len(row) == per_class for row in picked.values()):
            break
    rows = [(label, images) for label, images in picked.items() if images]
    if not rows:
        return None
    grid = Image.new("RGB", (per_class * tile, len(rows) * tile), "white")
    for y, (_, images) in enumerate(rows):
        for x, image in enumerate(images):
            grid.paste(image, (x * tile, y * tile))
    path = out_dir / PREVIEW_FILE
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
