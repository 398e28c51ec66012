"""The local engine: this process generates, audits and writes one shard after another."""

from __future__ import annotations

from synthgen.engines.base import ShardRun, ShardsDone


class LocalEngine:
    name = "local"

    def run(self, run: ShardRun) -> ShardsDone:
        records, todo = run.split()
        total, resumed = len(run.plan.shards), len(records)
        if resumed:
            run.reporter.progress("shards", resumed, total)
        for written, shard in enumerate(todo, 1):
            samples, log = run.builder.run(shard)
            records[shard.index] = run.shard_set.write_shard(shard.index, samples)
            run.save_audit(shard.index, log.state() if log is not None else None)
            run.reporter.progress("shards", resumed + written, total)
        return ShardsDone(dict(sorted(records.items())), len(todo), resumed)
