"""One exception type for every user-facing failure, so the CLI can print one line and exit non-zero."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path


class SynthgenError(Exception):
    """A problem the user can fix (bad recipe, missing file, unreadable data); its message is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def tidy_path(path: str | PathLike[str]) -> Path:
    """The same location without `x/..` and `./` (`work/../data` -> `data`), for messages users read.

    Folding `..` textually is wrong when it follows a symlink; then the resolved path is returned instead.
    """
    text = os.fspath(path)
    folded = os.path.normpath(text)
    if folded == text or ".." not in Path(text).parts:
        return Path(folded)
    return Path(folded) if Path(folded).resolve() == Path(text).resolve() else Path(text).resolve()
