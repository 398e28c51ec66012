"""`manifest.json`: every shard file of a build with its sha256, totals and class counts, plus the build's facts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.atomic import write_json
from synthgen.output.shard_set import ShardRecord
from synthgen.provenance import utc_now


def write_manifest(
    out_dir: str | Path,
    records: Iterable[ShardRecord] | Mapping[int, ShardRecord],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `manifest.json`: every shard file with its sha256, totals, class counts, plus `extra`."""
    out_dir = Path(out_dir)
    items = sorted(records.values() if isinstance(records, Mapping) else records, key=lambda r: r.index)
    shards = [{"index": r.index, **asdict(f)} for r in items for f in r.files]
    classes: Counter[str] = Counter()
    per_format: dict[str, Counter[str]] = {}
    for record in items:
        classes.update(record.class_counts)
        for f in record.files:
            counts = per_format.setdefault(f.format, Counter())
            counts.update(num_shards=1, num_samples=f.num_samples, bytes=f.bytes)
    totals = {
        "num_samples": sum(len(r.keys) for r in items),
        "num_shards": len(items),
        "bytes": sum(t["bytes"] for t in per_format.values()),
        "per_format": {fmt: dict(t) for fmt, t in per_format.items()},
    }
    manifest: dict[str, Any] = {
        "synthgen_version": __version__,
        "created_at": utc_now(),
        "formats": sorted(per_format),
        "shards": shards,
        "totals": totals,
        "class_counts": dict(sorted(classes.items())),
    }
    clash = sorted(set(manifest) & set(extra or {}))
    if clash:
        raise ValueError(f"manifest extra keys clash with reserved keys: {', '.join(clash)}")
    manifest.update(extra or {})
    write_json(out_dir / "manifest.json", manifest)
    return out_dir / "manifest.json"
