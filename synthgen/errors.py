"""One exception type for every user-facing failure, so the CLI can print one line and exit non-zero."""

from __future__ import annotations


class SynthgenError(Exception):
    """A problem the user can fix (bad recipe, missing file, unreadable data); its message is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
