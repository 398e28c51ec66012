"""sha256 of data files for source fingerprints, remembered by stat so an unchanged file is read only once.

A fingerprint built from sizes and mtimes changes whenever data is copied, restored or re-mounted with fresh
timestamps, and a changed fingerprint retrains a cached model (an hour on a CPU) on the very same images. The
bytes decide instead; the memo (`cache_root()/file-hashes/`, one JSON per data folder) keys each hash by size,
mtime, ctime and inode, so a repeated fingerprint costs a stat per file and any rewrite (which moves the ctime,
which no tool can set back) is read again. The memo names files by a hash of their path, never the path: file
names can carry patient names (tests/test_phi_scan.py scans the cache too).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from synthgen.atomic import write_json
from synthgen.runtime import cache_root

log = logging.getLogger(__name__)
MEMO_FORMAT = 1
MISSING = "missing"


def file_hashes(root: Path, files: Iterable[Path]) -> list[str]:
    """The sha256 of each file (or "missing" when it cannot be read), reusing the memo of `root` where valid."""
    memo_path = _memo_path(root)
    memo = _load(memo_path)
    hashes, changed = [], False
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            hashes.append(MISSING)
            continue
        name = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:32]  # file names may hold PHI
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        known = memo.get(name)
        if known is None or known[:4] != signature:
            try:
                with path.open("rb") as handle:
                    known = [*signature, hashlib.file_digest(handle, "sha256").hexdigest()]
            except OSError:
                hashes.append(MISSING)
                continue
            memo[name], changed = known, True
        hashes.append(known[4])
    if changed:
        _save(memo_path, memo)
    return hashes


def _memo_path(root: Path) -> Path:
    key = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:20]
    return cache_root() / "file-hashes" / f"{key}.json"


def _load(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return {name: entry for name, entry in data["files"].items() if isinstance(entry, list) and len(entry) == 5}


def _save(path: Path, files: dict[str, list]) -> None:
    """Write the memo; an unwritable cache only costs re-reading next time."""
    try:
        write_json(path, {"format": MEMO_FORMAT, "files": files})
    except OSError as error:
        log.debug("file hash memo %s not written: %s", path, error)
