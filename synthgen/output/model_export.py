"""`model/` in the output folder: the build's model, so the set carries what made it (`--export-model`).

With the folder inside the set, `synthgen audit --model OUT/model` and `DiffusionPipeline.from_pretrained`
need no cache and no search. Files are hard links where the filesystem allows (no extra space; the model
cache never rewrites a file in place, training installs new files by rename), else copies. Checkpoints and
temp files stay behind (`content_files`, the same files `sha256_tree` hashes). The folder is staged beside
its final place and renamed, so `model/` is complete or absent; one that already hashes as the model is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synthgen.atomic import atomic_dir, discard
from synthgen.errors import SynthgenError
from synthgen.provenance import content_files, sha256_tree

MODEL_DIR = "model"
_STAGE_PREFIX = ".model."  # `.model.*.tmp`: staging and replaced folders, removed on the next build


def model_record(out_dir: Path, path: Path, model_id: str, sha256: str, export: bool) -> dict[str, str | None]:
    """The manifest's `model` block, after making `out_dir/model` match the request (see `place_model`)."""
    exported = place_model(out_dir, path, sha256, export)
    return {"id": model_id, "sha256": sha256, "path": str(Path(path).resolve()), "exported_path": exported}


def place_model(out_dir: Path, source: Path, sha256: str, export: bool) -> str | None:
    """Export the model (unless `model/` already hashes as `sha256`); returns its path in the set, or None.

    Without `export`, a `model/` that an earlier `--export-model` build left is kept when it is this very
    model, and removed when it is not (a set names one model).
    """
    out_dir, target = Path(out_dir), Path(out_dir) / MODEL_DIR
    for stale in out_dir.glob(f"{_STAGE_PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    current = (target / "model_index.json").is_file() and sha256_tree(target) == sha256
    if current:
        return MODEL_DIR
    if not export:
        if target.exists():
            discard(target)
        return None
    with atomic_dir(target) as stage:  # `.model.*.tmp` until complete and checked
        for relative, file in content_files(source):
            _link_or_copy(file, stage / relative)
        got = sha256_tree(stage)
        if got != sha256:
            raise SynthgenError(
                f"--export-model: {source} changed during the build (sha256 {got[:12]}…, expected {sha256[:12]}…); "
                "build again"
            )
    return MODEL_DIR


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (following a hub snapshot's symlinks to the blob), else a copy (another filesystem)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
