"""The training folder DIR: who owns it, whether a rerun resumes or is refused, and the final install.

DIR/.checkpoints/run.json records the settings of the run that owns DIR (the recipe's training settings,
the data fingerprint, the privacy block). A rerun with the same settings resumes from the latest
checkpoint; different settings are refused in one line unless `--overwrite` (or unless nothing was
checkpointed yet: a run that failed early is simply restarted); a non-empty folder that is not
a synthgen training folder or pipeline is never touched. `model_index.json` is written last, so DIR is a
loadable pipeline exactly when training finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from synthgen.atomic import remove_temp_files, write_json
from synthgen.errors import SynthgenError
from synthgen.training.checkpoints import CHECKPOINT_DIR, CheckpointStore

RUN_FILE = "run.json"
MODEL_INDEX = "model_index.json"
DATA_CACHE = "data"  # DIR/.checkpoints/data: the decoded training images (training/data.py)
_STAGING = ".staging-"


def settings_fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ (for a one-line refusal that says what changed)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


class TrainingFolder:
    """DIR and the files synthgen keeps in it while (and after) training."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.work = self.path / CHECKPOINT_DIR

    @property
    def finished(self) -> bool:
        return (self.path / MODEL_INDEX).is_file()

    def claim(self, settings: dict[str, Any], overwrite: bool) -> bool:
        """Make DIR this run's; returns True when it holds an earlier run of the same settings (resume).

        What killed runs left in DIR (temp files, staging folders, torn checkpoints) is removed here."""
        resumed = self._claim(settings, overwrite)
        remove_temp_files(self.path)
        for staging in self.path.glob(f"{_STAGING}*"):
            shutil.rmtree(staging, ignore_errors=True)
        CheckpointStore(self.work).remove_leftovers()
        return resumed

    def _claim(self, settings: dict[str, Any], overwrite: bool) -> bool:
        run_file = self.work / RUN_FILE
        fingerprint = settings_fingerprint(settings)
        if run_file.is_file():
            previous = json.loads(run_file.read_text())
            if previous.get("fingerprint") == fingerprint:
                return True
            if not overwrite and self._has_progress():
                changed = ", ".join(_differences(previous.get("settings", {}), settings)[:6]) or "synthgen version"
                raise SynthgenError(
                    f"{self.path} holds a training run with other settings ({changed} differ); rerun the same "
                    "recipe to resume it, or pass --overwrite to start over"
                )
            self._wipe()
        elif self._only_work_folder():  # a run killed before it wrote run.json: nothing in it to keep
            self._wipe()
        elif self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            if not self.finished:
                raise SynthgenError(
                    f"{self.path} exists and is not a synthgen training folder; choose a new or empty folder"
                )
            if not overwrite:
                raise SynthgenError(f"{self.path} already holds a pipeline; pass --overwrite to replace it")
            self._wipe()
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"fingerprint": fingerprint, "settings": settings})
        return False

    def _only_work_folder(self) -> bool:
        return self.path.is_dir() and [entry.name for entry in self.path.iterdir()] == [CHECKPOINT_DIR]

    def _has_progress(self) -> bool:
        """Whether DIR holds anything a changed recipe would lose (a checkpoint or a finished pipeline)."""
        return self.finished or any(self.work.glob("*-step-*/meta.json"))

    def _wipe(self) -> None:
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.path))

    def install(self, staging: Path) -> None:
        """Move a saved pipeline from `staging` into DIR; model_index.json goes last (the completeness mark).

        The decoded training images go before it: a finished model folder never carries them, even when the
        run is killed right after (a rerun of a finished run is refused, so nothing would remove them later)."""
        (self.path / MODEL_INDEX).unlink(missing_ok=True)
        try:
            for entry in sorted(staging.iterdir()):
                if entry.name == MODEL_INDEX:
                    continue
                target = self.path / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
            shutil.rmtree(self.work / DATA_CACHE, ignore_errors=True)
            os.replace(staging / MODEL_INDEX, self.path / MODEL_INDEX)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
