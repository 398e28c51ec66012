"""The synthgen CLI with its writes hooked, for `fault_injection.py`: it logs every write event and can SIGKILL
itself at a chosen one (a `kill -9` landing exactly there).

    python bench/fault_child.py EVENTS KILL WHEN ROOT -- SYNTHGEN-ARGS...

EVENTS: a JSON-lines file each event is appended to (n, event, path relative to ROOT, seconds since start).
KILL: "0" (only log), an event number ("17"), or "KIND~REGEX" (the first event of that kind whose path matches,
e.g. "torch.save~unet-step-0000004"); WHEN: "before" or "after" that event. Events: renames, unlinks, rmdir,
rmtree, fsync, mkstemp/mkdtemp, opening a file to write, torch.save, tar and Parquet appends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tarfile
import time


class Hooks:
    """Counts write events (appending each to EVENTS) and SIGKILLs this process at the one KILL names."""

    def __init__(self, events: str, kill: str, when: str, root: str) -> None:
        self.log = open(events, "a", buffering=1)  # noqa: SIM115 - open until the process ends or is killed
        self.kill, self.when, self.root, self.count = kill, when, root, 0
        self.started, self.folder = time.monotonic(), ""

    def hit(self, name: str, path: str) -> bool:
        if self.kill.isdigit():
            return self.count == int(self.kill)
        kind, _, pattern = self.kill.partition("~")
        return name == kind and re.search(pattern, path) is not None

    def label(self, path: object) -> str:
        if hasattr(path, "write"):  # a file object (torch.save into an open file)
            path = path.name
        text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path)
        text = os.path.relpath(text, self.root) if text.startswith(self.root) else text
        if "/" not in text:  # rmtree deletes by name inside the folder it walks
            return f"{self.folder}/{text}"
        self.folder = text
        return text

    def event(self, name: str, path: object, call):
        self.count += 1
        record = {"n": self.count, "event": name, "path": self.label(path), "t": time.monotonic() - self.started}
        hit = self.hit(name, record["path"])
        if hit and self.when == "before":
            self.log.write(json.dumps({**record, "kill": "before"}) + "\n")
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            return call()  # (it may raise: unlink(missing_ok=True) of a file already renamed away)
        finally:
            self.log.write(json.dumps(record) + "\n")
            if hit:
                self.log.write(json.dumps({**record, "kill": "after"}) + "\n")
                os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner: object, attr: str, name: str, path_of) -> None:
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            return self.event(name, path_of(*args, **kwargs), lambda: original(*args, **kwargs))

        setattr(owner, attr, wrapper)

    def wrap_open(self) -> None:
        """Opening a file to write (logs, tokenizer files, np.save into a temp file) is an event too."""
        import builtins
        import io

        original = builtins.open

        def hooked(file, mode="r", *args, **kwargs):
            call = lambda: original(file, mode, *args, **kwargs)  # noqa: E731
            return self.event("open", file, call) if any(c in mode for c in "wax+") else call()

        builtins.open = io.open = hooked


def _fd_path(fd: int, *_: object) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def main(argv: list[str]) -> None:
    events, kill, when, root = argv[:4]
    import tempfile

    import pyarrow.parquet as pq
    import torch

    hooks = Hooks(events, kill, when, root)
    first = lambda path, *a, **k: path  # noqa: E731
    temp = lambda *a, **k: f"{k.get('dir', '')}/{k.get('prefix', '')}*"  # noqa: E731
    hooks.wrap(os, "replace", "rename", lambda src, dst, *a, **k: dst)
    hooks.wrap(os, "rename", "rename", lambda src, dst, *a, **k: dst)
    hooks.wrap(os, "unlink", "unlink", first)
    hooks.wrap(os, "rmdir", "rmdir", first)
    hooks.wrap(os, "fsync", "fsync", _fd_path)
    hooks.wrap(shutil, "rmtree", "rmtree", first)
    hooks.wrap(tempfile, "mkstemp", "mkstemp", temp)
    hooks.wrap(tempfile, "mkdtemp", "mkdtemp", temp)
    hooks.wrap(torch, "save", "torch.save", lambda obj, f, *a, **k: f)
    hooks.wrap(tarfile.TarFile, "addfile", "tar append", lambda self, *a, **k: self.name)
    hooks.wrap(pq.ParquetWriter, "write_table", "parquet append", lambda self, *a, **k: getattr(self, "where", "?"))
    hooks.wrap_open()
    from synthgen.cli import app

    app(args=argv[argv.index("--") + 1 :], prog_name="synthgen")


if __name__ == "__main__":
    main(sys.argv[1:])
