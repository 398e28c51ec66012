"""The local engine: this process generates, audits and writes the shards, one set of denoising streams running
through all of them (`ShardBuilder.run_many`); each shard is written as soon as it is complete."""

from __future__ import annotations

from typing import Any

from synthgen.engines.base import ShardRun, ShardsDone
from synthgen.plan import Shard
from synthgen.sample import Sample


class LocalEngine:
    name = "local"

    def run(self, run: ShardRun) -> ShardsDone:
        records, todo = run.split()
        total, resumed = len(run.plan.shards), len(records)
        if resumed:
            run.reporter.progress("shards", resumed, total)
        written = 0

        def write(shard: Shard, samples: list[Sample], log: Any) -> None:
            nonlocal written
            records[shard.index] = run.shard_set.write_shard(shard.index, samples)
            run.save_audit(shard.index, log.state() if log is not None else None)
            written += 1
            run.reporter.progress("shards", resumed + written, total)

        run.builder.run_many(todo, write)
        return ShardsDone(dict(sorted(records.items())), len(todo), resumed)
