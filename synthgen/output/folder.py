"""`OutputFolder`: the one owner of a build's output folder, its `.synthgen/` state, markers and lock.

An output folder belongs to one recipe (its sha256 is in `.synthgen/build.json`): building another recipe
into it is refused unless `--overwrite`, and a non-empty folder that is not a synthgen output is never
touched. Resuming is refused when the finished shards have another layout than this synthgen writes
(`layout.py`: a version that added a column would mix two schemas). Everything else in synthgen asks
this class for paths under `.synthgen/` instead of spelling them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from synthgen.atomic import remove_temp_files, write_json, write_text
from synthgen.errors import SynthgenError
from synthgen.recipe import LoadedRecipe

STATE_DIR = ".synthgen"
# What a build writes at the top of its folder: removed when another recipe's build replaces it (--overwrite).
OWNED = (
    "data",
    "webdataset",
    "audit",
    "model",
    STATE_DIR,
    "manifest.json",
    "README.md",
    "recipe.yaml",
    "preview.png",
)


class OutputFolder:
    """A build's output folder: whether it may be used, claiming it, locking it, and its state files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state = self.path / STATE_DIR

    @property
    def build_file(self) -> Path:
        return self.state / "build.json"

    def marker(self, index: int) -> Path:
        """The completion marker of shard `index` (written last, after its files)."""
        return self.state / "shards" / f"shard-{index:05d}.json"

    def markers(self) -> list[Path]:
        return sorted((self.state / "shards").glob("shard-*.json"))

    def audit_state(self, index: int) -> Path:
        """The audit rows of finished shard `index`, so a resumed build's report covers every shard."""
        return self.state / "audit" / f"shard-{index:05d}.json"

    def check(self, loaded: LoadedRecipe, overwrite: bool = False) -> str:
        """The folder must be new, empty, or a build of this very recipe (or --overwrite); no side effects."""
        if self.path.exists() and not self.path.is_dir():
            raise SynthgenError(f"output.dir: {self.path} exists and is a file")
        if self.build_file.is_file():
            if self._built_by(loaded):
                self._check_layout(loaded)
                return f"{self.path} (resumes the build there)"
            if not overwrite:
                raise SynthgenError(
                    f"output.dir: {self.path} holds a build of a different recipe (or an edited one); "
                    "pass --overwrite to replace it or choose another --out"
                )
            return f"{self.path} (its earlier build will be replaced)"
        if self.path.is_dir() and any(e.name != STATE_DIR for e in self.path.iterdir()):
            # (only `.synthgen/` without build.json: a first build killed before it claimed the folder)
            raise SynthgenError(
                f"output.dir: {self.path} exists and is not a synthgen output; choose an empty or new folder"
            )
        return str(self.path)

    def _check_layout(self, loaded: LoadedRecipe) -> None:
        """A resume must not mix two shard layouts (another synthgen version's columns): see `layout.py`."""
        from synthgen.output.layout import check_resume_layout  # pyarrow: only when there is a build to resume

        output = loaded.recipe.output
        check_resume_layout(self.path, self.markers(), output.formats, output.image_format, list(loaded.recipe.classes))

    def claim(self, loaded: LoadedRecipe, overwrite: bool) -> None:
        """Make the folder this recipe's (`check` decides whether that is allowed); --overwrite clears another's."""
        self.check(loaded, overwrite)
        if self.build_file.is_file() and self._built_by(loaded):
            return
        if self.build_file.is_file():  # another recipe's build, and --overwrite was given
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.build_file, {"recipe_sha256": loaded.sha256, "recipe_name": loaded.recipe.name})

    def _clear(self) -> None:
        """Remove another recipe's build; build.json goes last, so a kill midway leaves a folder that the same
        command (with --overwrite) clears again, never one that looks foreign."""
        entries = [self.path / name for name in OWNED if name != STATE_DIR]
        keep = (self.build_file, self.state / "lock")  # the lock: a build of the old recipe may still hold it
        entries += [entry for entry in sorted(self.state.iterdir()) if entry not in keep]
        for target in entries:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        self.build_file.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder while writing, so two builds never interleave shards.

        Holding it proves no other build writes here, so the temp files found then are dead writes of a
        killed build: they are removed (`model/`, hard links into the model cache, is not walked)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; builds there are not guarded
            yield
            return
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SynthgenError(
                    f"{self.path}: another synthgen build is writing here; wait for it or use another --out"
                ) from None
            remove_temp_files(self.path, skip=("model",))
            yield

    def mark_done(self) -> None:
        write_text(self.state / "done", "complete\n")

    def _built_by(self, loaded: LoadedRecipe) -> bool:
        try:
            return json.loads(self.build_file.read_text()).get("recipe_sha256") == loaded.sha256
        except (OSError, ValueError, AttributeError):
            return False
