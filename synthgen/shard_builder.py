"""One shard's work: generate its jobs, audit the samples, and regenerate dropped copies with fresh seeds.

Shared by every engine that runs shards (the local loop in `build`, and workers elsewhere): it holds no files
and no output folder, only the generator and the auditor, and returns the kept samples plus the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from synthgen.plan import Job, Shard
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Reporter
from synthgen.sample import Sample


class ShardBuilder:
    """Generates one shard's samples, audits them and replaces dropped copies with fresh seeds."""

    def __init__(self, loaded: LoadedRecipe, generator: Callable[[], Any], auditor, reporter: Reporter):
        self.recipe = loaded.recipe
        self.generator = generator
        self.auditor = auditor
        self.reporter = reporter

    def run(self, shard: Shard) -> tuple[list[Sample], Any]:
        from synthgen.audit import AuditLog

        log = AuditLog(self.auditor) if self.auditor else None
        kept: dict[str, Sample] = {}
        pending: list[Job] = list(shard.jobs)
        audit = self.recipe.audit
        while pending:
            samples = self._generate(pending)
            if log is None:
                kept.update((s.key, s) for s in samples)
                break
            retry: list[Job] = []
            for job, sample, verdict in zip(pending, samples, self.auditor.check(samples), strict=True):
                sample.metadata.update(self.auditor.sample_metadata(verdict))
                drop = verdict.flagged and audit.action == "drop"
                log.add(sample, verdict, dropped=drop, attempt=job.attempt)
                if not drop:
                    kept[job.key] = sample
                elif job.attempt < audit.max_retries:
                    retry.append(job.retry())
                else:
                    self.reporter.log(f"{job.key}: still a copy after {job.attempt + 1} tries; left out", warning=True)
            pending = retry
        return [kept[job.key] for job in shard.jobs if job.key in kept], log

    def _generate(self, jobs: list[Job]) -> list[Sample]:
        return self.generator().generate(jobs, lambda done, total: self.reporter.progress("generating", done, total))
