"""One shard's work: generate its jobs, audit the samples, and regenerate dropped copies with fresh seeds.

Shared by every engine that runs shards (the local loop in `build`, and workers elsewhere): it holds no files
and no output folder, only the generator and the auditor, and returns the kept samples plus the audit log.
Each batch is encoded for the shards and audited as soon as its images exist (on the generator's finishing
thread, while the denoising streams sample the next ones); verdicts are then applied in job order, so the
result is the same as generating everything first and auditing after. `wait` sums, over every shard this
builder generated, how long the denoiser waited on that finishing work (the build logs `wait.line()`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from synthgen.generation.streams import WaitClock
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
        self.wait = WaitClock()  # calls == 0 until something was generated

    def run(self, shard: Shard) -> tuple[list[Sample], Any]:
        from synthgen.audit import AuditLog

        log = AuditLog(self.auditor) if self.auditor else None
        kept: dict[str, Sample] = {}
        pending: list[Job] = list(shard.jobs)
        audit = self.recipe.audit
        while pending:
            verdicts: dict[str, Any] = {}
            samples = self._generate(pending, verdicts if log is not None else None)
            if log is None:
                kept.update((s.key, s) for s in samples)
                break
            retry: list[Job] = []
            for job, sample in zip(pending, samples, strict=True):
                verdict = verdicts[sample.key]
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

    def _finish(self, verdicts: dict[str, Any] | None) -> Callable[[list[Sample]], None]:
        """What happens to each batch where its images are made: encoding for the shards, then the audit check."""
        from synthgen.output.writers import pre_encode

        output = self.recipe.output

        def finish(samples: list[Sample]) -> None:
            for sample in samples:
                pre_encode(sample, output.image_format, output.jpeg_quality)
            if verdicts is not None:
                verdicts.update((s.key, v) for s, v in zip(samples, self.auditor.check(samples), strict=True))

        return finish

    def _generate(self, jobs: list[Job], verdicts: dict[str, Any] | None) -> list[Sample]:
        generator, finish = self.generator(), self._finish(verdicts)
        progress = functools.partial(self.reporter.progress, "generating")
        parameters = inspect.signature(generator.generate).parameters
        if "clock" in parameters:
            return generator.generate(jobs, progress, finish=finish, clock=self.wait)
        if "finish" in parameters:
            return generator.generate(jobs, progress, finish=finish)
        samples = generator.generate(jobs, progress)  # a generator of another kind (tests): finish afterwards
        finish(samples)
        return samples
