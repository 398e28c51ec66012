"""The harness every synthgen training run shares (MSDM's VAE + UNet phases, LoRA): a `TrainingRun`.

A run owns its folder DIR from start to finish: the machine set-up (device, threads, quiet libraries), the
claim on DIR (resume or refuse, `folder.TrainingFolder`), the checkpoints, the log and its start or resume
event, the training data (decoded once, cached in DIR/.checkpoints/data, split), the loop settings (precision,
batch, checkpoints, loss plot), each phase through `loop.run_phase`, and the end: the staged pipeline installed,
the loss plot redrawn, the data cache dropped and the `done` event logged. What a model trains, and what it
writes into the staging folder, is the plug-in's (`msdm_run`, `lora_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthgen.errors import SynthgenError
from synthgen.recipe import TrainingLoopConfig
from synthgen.runtime import Progress, pick_device, quiet_libraries, use_cpu_threads
from synthgen.sources.base import Source
from synthgen.sources.groups import SEQUENCE, is_own_group
from synthgen.training.checkpoints import CheckpointStore
from synthgen.training.data import TrainingData, drop_cache, load_training_data, split_groups, split_indices
from synthgen.training.folder import TrainingFolder
from synthgen.training.loop import (
    Budget,
    LoopSettings,
    Phase,
    PhaseResult,
    PrivateTraining,
    resolve_precision,
    run_phase,
)
from synthgen.training.training_log import LOG_FILE, PLOT_FILE, TrainingLog, plot_log

Notify = Callable[[str], None]


class TrainingRun:
    """One training run into `out_dir`; `phases` in training order (the log and resume points follow it)."""

    def __init__(
        self,
        out_dir: Path,
        phases: Sequence[str],
        source: Source,
        device: str = "auto",
        progress: Progress | None = None,
        notify: Notify | None = None,
    ) -> None:
        quiet_libraries()
        self.device = pick_device(device)
        use_cpu_threads()
        self.started = time.time()
        self.phases = tuple(phases)
        self.source = source
        self.fingerprint = source.fingerprint()
        self.progress = progress
        self.notify = notify or (lambda message: None)
        self.folder = TrainingFolder(Path(out_dir))
        self.store = CheckpointStore(self.folder.work)
        self.log = TrainingLog(self.folder.path / LOG_FILE, self.phases)
        self.split_by: str | None = None  # the validation split's grouping (`load_data`)

    @property
    def path(self) -> Path:
        return self.folder.path

    def claim(self, settings: dict[str, Any], overwrite: bool) -> bool:
        """Make DIR this run's (see `TrainingFolder.claim`); True when it resumes an earlier run of these settings."""
        return self.folder.claim(settings, overwrite)

    def begin(self, **start: Any) -> None:
        """Cut the log back to the latest checkpoint and log where the run starts (`start` fields on a fresh run)."""
        point = next((c for c in (self.store.latest(p) for p in reversed(self.phases)) if c is not None), None)
        self.log.truncate_after(point.phase if point else None, point.step if point else 0)
        if point is not None:
            self.log.event("resume", point.phase, point.step, checkpoint=point.path.name)
            self.notify(f"resuming from {point.path.name} ({point.phase} step {point.step})")
        else:
            self.log.event("start", None, 0, **start, device=self.device.type)

    def load_data(
        self, resolution: int, validation_split: float, seed: int, split_by: str | None = None, field: str = "split_by"
    ) -> tuple[TrainingData, TrainingData, TrainingData]:
        """(all, train, validation): the source decoded at `resolution` (cached in DIR) and split deterministically,
        by image or, with `split_by`, by group (a patient column or `sequence`; `field` names it in errors)."""
        data = load_training_data(self.source, resolution, self.folder.work / "data", split_by, field)
        self.split_by = split_by
        if data.groups is not None:
            train_idx, val_idx = split_groups(data.groups, validation_split, seed)
        else:
            train_idx, val_idx = split_indices(len(data), validation_split, seed)
        return data, data.subset(train_idx), data.subset(val_idx)

    def loop_settings(self, config: TrainingLoopConfig) -> LoopSettings:
        """The recipe's loop settings on this run's device; loss.png is redrawn at every checkpoint."""
        autocast, scaler = resolve_precision(config.mixed_precision, self.device)
        settings = LoopSettings(
            config.batch_size, config.micro_batch_size(), config.checkpoint_every, config.seed, self.device
        )
        settings.autocast_dtype, settings.grad_scaler = autocast, scaler
        settings.plot_path = self.folder.path / PLOT_FILE
        settings.budget = Budget(config.max_minutes * 60) if config.max_minutes else None
        return settings

    def run_phase(self, phase: Phase, settings: LoopSettings, private: PrivateTraining | None = None) -> PhaseResult:
        """One phase through the loop; the budget counts the earlier phases' time, and a phase that a later one
        has built on (cut short by the budget) is left as it is."""
        order = self.phases.index(phase.name)
        if settings.budget is not None:
            settings.budget.spent = self.elapsed(self.phases[:order])
        final = any(self.store.latest(later) is not None for later in self.phases[order + 1 :])
        result = run_phase(phase, settings, self.store, self.log, self.progress, private, final=final)
        if result.stopped and not final and settings.budget is not None:
            minutes = (settings.budget.spent + result.elapsed) / 60
            self.notify(
                f"max_minutes spent ({minutes:.1f} of {settings.budget.seconds / 60:g} minutes): "
                f"{phase.name} stopped at the checkpoint of step {result.steps} of {result.planned}"
            )
        return result

    def elapsed(self, phases: Sequence[str] | None = None) -> float:
        """Seconds of training (what `max_minutes` counts) in the latest checkpoints of `phases` (default: all)."""
        total = 0.0
        for name in self.phases if phases is None else phases:
            latest = self.store.latest(name)
            total += float(latest.meta().get("elapsed", 0.0)) if latest is not None else 0.0
        return total

    def budget_record(self, config: TrainingLoopConfig, results: dict[str, PhaseResult]) -> dict[str, Any] | None:
        """The model info's `budget`: the limit, minutes used, planned and done steps, and whether it stopped
        training (None without `max_minutes`)."""
        if not config.max_minutes:
            return None
        return {
            "max_minutes": config.max_minutes,
            "minutes": round(self.elapsed() / 60, 2),
            "stopped": any(result.stopped for result in results.values()),
            "planned_steps": {name: result.planned for name, result in results.items()},
            "steps": {name: result.steps for name, result in results.items()},
        }

    def refuse_spent_budget(self, config: TrainingLoopConfig, phase: str, planned: int) -> None:
        """A finished model that the budget stopped short is not trained again by a rerun with the same budget."""
        last = self.store.latest(phase)
        if not (self.folder.finished and config.max_minutes and last is not None and last.step < planned):
            return
        used = self.elapsed() / 60
        if used >= config.max_minutes:
            raise SynthgenError(
                f"{self.folder.path} already holds this model, stopped by max_minutes after {used:.1f} minutes at "
                f"{phase} step {last.step} of {planned}; raise max_minutes (or remove it) to train it further, "
                "or pass --overwrite to start over"
            )

    def training_data(self, data: TrainingData, train: TrainingData, val: TrainingData, labels: bool) -> dict:
        """The model info's `training_data`: never file names or captions; per-label counts only when `labels`."""
        record = {
            "description": self.source.description,
            "sha256": self.fingerprint,
            "images": len(train),
            "validation_images": len(val),
            "skipped": data.skipped,
        }
        if labels:
            record["labels"] = train.label_counts()
        if data.groups is not None and labels:  # group counts, like label counts, are left out under DP
            record["split"] = split_record(self.split_by, data, train, val)
        return record

    def seconds(self) -> float:
        return round(time.time() - self.started, 1)

    def staging(self) -> Path:
        """An empty folder inside DIR to write the finished model into (see `install`)."""
        return self.folder.staging()

    def install(self, staging: Path, phase: str, steps: int) -> Path:
        """Move the staged model into DIR (model_index.json last), redraw loss.png, drop the data cache, log done."""
        self.folder.install(staging)
        plot_log(self.log, self.folder.path / PLOT_FILE)
        drop_cache(self.folder.work / "data")
        self.log.event("done", phase, steps, seconds=self.seconds())
        return self.folder.path


def split_record(split_by: str | None, data: TrainingData, train: TrainingData, val: TrainingData) -> dict[str, Any]:
    """How the validation split was cut: the grouping, groups per side (disjoint), images that had no group value."""
    record: dict[str, Any] = {
        "by": split_by,
        "groups": {"train": len(set(train.groups or ())), "validation": len(set(val.groups or ()))},
    }
    if split_by != SEQUENCE:
        record["images_without_group"] = sum(map(is_own_group, data.groups or ()))
    return record
