"""Atomic file writes: a reader never sees a half-written output, an interrupted run leaves no partial file.

A write goes to `.NAME.XXXXXXXX.tmp` beside NAME and is renamed onto it only when complete. A process killed
mid-write (`kill -9`, power loss) cannot clean up, so whoever next owns the folder (a build holding its lock,
a training run claiming its folder) calls `remove_temp_files`: every such name there is a dead write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_SUFFIX = ".tmp"
# `.NAME.XXXXXXXX.tmp` (atomic_path), and `.NAME.*.tmp` folders staged the same way (e.g. model export).
TEMP_NAME = re.compile(r"^\..+\.tmp$")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A full disk (ENOSPC, EDQUOT) is re-raised naming `path`, so the one-line error says which file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as error:
        if error.errno in DISK_FULL and error.filename in (None, str(tmp_path)):
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; it replaces `path` (discarded first) only if the block succeeds.

    Readers see the old folder or the new one, never a mix; a kill leaves a `.NAME.*.tmp` that
    `remove_temp_files` (or the folder's owner) clears."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield stage
        if path.exists() or path.is_symlink():
            discard(path)
        os.replace(stage, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def discard(path: str | os.PathLike) -> None:
    """Delete a file or folder; a folder is renamed to a temp name first, so it is never seen half-deleted."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def remove_temp_files(folder: str | os.PathLike, skip: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temp files and folders (`.NAME.*.tmp`) that killed writes left anywhere under `folder`.

    Only for the folder's single writer (a build holding its lock, a training run that claimed its folder);
    `skip` names top-level entries not to walk into (e.g. hard links into a model cache). Returns what went.
    """
    root, removed = Path(folder), []
    for top, dirs, files in os.walk(root):
        if Path(top) == root:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [d for d in dirs if TEMP_NAME.match(d)]:
            dirs.remove(name)
            shutil.rmtree(Path(top) / name, ignore_errors=True)
            removed.append(Path(top) / name)
        for name in files:
            if TEMP_NAME.match(name):
                (Path(top) / name).unlink(missing_ok=True)
                removed.append(Path(top) / name)
    return removed
