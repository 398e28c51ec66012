"""What a training run shows its user: `training_log.jsonl`, `loss.png` and `samples/step-N.png` grids.

One JSON line per optimizer step (step, phase, loss, val_loss, lr, seconds; epsilon under DP) and one per
event (start, resume). A resumed run first cuts the log back to its checkpoint, so the log of an
interrupted-and-resumed run reads like an uninterrupted one plus a `resume` line. matplotlib is imported
only when a plot is drawn (it costs a second to import).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.atomic import atomic_path, write_text

LOG_FILE = "training_log.jsonl"
PLOT_FILE = "loss.png"
SAMPLES_DIR = "samples"


class TrainingLog:
    """Append-only JSON-lines log of one training folder; `phases` gives the order of phases."""

    def __init__(self, path: Path, phases: Sequence[str]) -> None:
        self.path = Path(path)
        self.phases = list(phases)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                continue
        return records

    def _position(self, record: dict[str, Any]) -> tuple[int, int]:
        phase = record.get("phase")
        return (self.phases.index(phase) if phase in self.phases else -1, int(record.get("step") or 0))

    def truncate_after(self, phase: str | None, step: int) -> None:
        """Forget what happened after (phase, step): those steps are about to be redone."""
        limit = (self.phases.index(phase), step) if phase is not None else (-1, 0)
        kept = [r for r in self.records() if self._position(r) <= limit]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def event(self, event: str, phase: str | None = None, step: int = 0, **fields: Any) -> None:
        self.write({"event": event, "phase": phase, "step": step, **fields})

    def steps(self, phase: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("phase") == phase and "event" not in r]


def plot_log(log: TrainingLog, path: Path) -> None:
    """loss.png: per phase, training loss (raw and smoothed) and validation loss; epsilon when no loss is logged.

    Skipped when matplotlib is not installed: a missing plot must not stop a training run.
    """
    try:
        import matplotlib
    except ImportError:
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in log.phases if log.steps(p)]
    if not phases:
        return
    figure, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.6), squeeze=False)
    for axis, phase in zip(axes[0], phases, strict=True):
        rows = log.steps(phase)
        _plot_phase(axis, phase, rows)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _plot_phase(axis: Any, phase: str, rows: list[dict[str, Any]]) -> None:
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    validation = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    epsilon = [(r["step"], r["epsilon"]) for r in rows if r.get("epsilon") is not None]
    axis.set_title(phase)
    axis.set_xlabel("step")
    if losses:
        steps, values = zip(*losses, strict=True)
        axis.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="train")
        window = max(1, len(values) // 30)
        sums = np.cumsum(np.concatenate([[0.0], values]))
        starts = np.maximum(0, np.arange(1, len(values) + 1) - window)
        smooth = (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)
        axis.plot(steps, smooth, color="tab:blue", linewidth=1.5, label=f"train (mean of {window})")
        axis.set_yscale("log")
        axis.set_ylabel("loss")
    if validation:
        steps, values = zip(*validation, strict=True)
        axis.plot(steps, values, "o-", color="tab:orange", label="validation")
    if epsilon and not losses:
        steps, values = zip(*epsilon, strict=True)
        axis.plot(steps, values, "o-", color="tab:green", label="epsilon spent")
        axis.set_ylabel("epsilon (losses are not released under DP)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper right", fontsize=8)


def write_sample_grid(path: Path, rows: list[tuple[str, list[Any]]], tile: int = 96) -> Path:
    """A grid of PIL images, one row per class (its name in a left margin), columns = fixed seeds."""
    from PIL import Image, ImageDraw

    margin = 90
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (margin + columns * tile, len(rows) * tile), "white")
    draw = ImageDraw.Draw(grid)
    for y, (label, images) in enumerate(rows):
        draw.text((4, y * tile + tile // 2 - 6), label[:14], fill="black")
        for x, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((tile, tile)), (margin + x * tile, y * tile))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
