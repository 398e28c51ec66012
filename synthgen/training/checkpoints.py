"""Resume points: DIR/.checkpoints/<phase>-step-<N>/ (state.pt + meta.json), written atomically, last 2 kept.

A checkpoint holds everything that decides the rest of the run: weights, optimizer, EMA, LR schedule, the
batch sampler's and augmentation generator's states, the global RNG states (torch, numpy, python; dropout
and DP noise draw from them) and the step. Restoring it makes a resumed run continue exactly where the
interrupted one was, so on a CPU the result equals an uninterrupted run bit for bit.

A phase that finished keeps only its final checkpoint (the next phase starts from it); the last phase's
final checkpoint stays after training so a run can be extended with more steps.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.atomic import atomic_dir, discard, write_json

CHECKPOINT_DIR = ".checkpoints"
_NAME = re.compile(r"^(?P<phase>[a-z_]+)-step-(?P<step>\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    phase: str
    step: int
    path: Path

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())


class CheckpointStore:
    """The checkpoints of one training folder (`root` is DIR/.checkpoints)."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    def all(self, phase: str) -> list[Checkpoint]:
        """The phase's complete checkpoints, oldest first (a folder without meta.json is a torn write)."""
        found = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                match = _NAME.match(path.name)
                if match and match["phase"] == phase and (path / "meta.json").is_file():
                    found.append(Checkpoint(phase, int(match["step"]), path))
        return sorted(found, key=lambda c: c.step)

    def latest(self, phase: str) -> Checkpoint | None:
        found = self.all(phase)
        return found[-1] if found else None

    def save(self, phase: str, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Checkpoint:
        """Write state.pt, then meta.json (the completeness marker), then rename the folder into place."""
        import torch

        final = self.root / f"{phase}-step-{step:07d}"
        with atomic_dir(final) as staging:
            try:
                with open(staging / "state.pt", "wb") as handle:
                    torch.save(state, handle)
            except (OSError, RuntimeError) as error:
                named = _disk_error(error, final)
                if named is None:
                    raise
                raise named from error
            write_json(staging / "meta.json", {"phase": phase, "step": step, **meta})
        for old in self.all(phase)[: -self.keep]:
            discard(old.path)
        return Checkpoint(phase, step, final)

    def remove_leftovers(self) -> None:
        """What killed runs left: staging and discarded folders (dot names) and torn checkpoints (no meta.json).

        Only for the folder's one writer (the run that claimed it)."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            torn = _NAME.match(path.name) and not (path / "meta.json").is_file()
            if path.name.startswith(".") or torn:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def load(self, checkpoint: Checkpoint) -> dict[str, Any]:
        import torch

        return torch.load(checkpoint.path / "state.pt", map_location="cpu", weights_only=True)

    def keep_only_final(self, phase: str) -> None:
        """A finished phase needs only its last checkpoint (the next phase's starting point)."""
        for old in self.all(phase)[:-1]:
            discard(old.path)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _disk_error(error: BaseException, path: Path) -> OSError | None:
    """A failed write (a full disk) as an OSError naming the checkpoint; torch.save into a file object raises it
    itself or as the context of its "enforce fail at inline_container.cc" RuntimeError."""
    cause = error if isinstance(error, OSError) else error.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
    return None


def capture_rng() -> dict[str, Any]:
    """Global RNG states in types `torch.load(weights_only=True)` accepts (tensors, ints, floats, tuples)."""
    import torch

    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's global RNGs (each phase starts from its own seed)."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def latest_checkpoint_name(folder: Path, phases: tuple[str, ...] = ("vae", "unet")) -> str | None:
    """The newest resume point in a training folder (for the Ctrl-C message), or None."""
    store = CheckpointStore(Path(folder) / CHECKPOINT_DIR)
    for phase in reversed(phases):
        latest = store.latest(phase)
        if latest is not None:
            return latest.path.name
    return None
