"""A shard's work: generate its jobs, audit the samples, and regenerate dropped copies with fresh seeds.

Shared by every engine that runs shards (the local loop in `build`, and workers elsewhere): it holds no files
and no output folder, only the generator and the auditor, and returns the kept samples plus the audit log.
`run` does one shard (a Ray task); `run_many` runs the local engine's shards through one set of denoising
streams, so the streams never stop at a shard's end.
Each batch is encoded for the shards and audited as soon as its images exist (on the generator's finishing
thread, while the denoising streams sample the next ones); verdicts are then applied in job order, so the
result is the same as generating everything first and auditing after. `wait` sums, over every shard this
builder generated, how long the denoiser waited on that finishing work (the build logs `wait.line()`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from synthgen.generation.streams import WaitClock
from synthgen.plan import Job, Shard
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Reporter
from synthgen.sample import Sample

if TYPE_CHECKING:
    from synthgen.generate import Group


class _ShardAudit:
    """One shard's audit bookkeeping: its log, the samples kept so far, and which jobs to sample again."""

    def __init__(self, shard: Shard, builder: ShardBuilder) -> None:
        from synthgen.audit import AuditLog

        self.shard, self.builder = shard, builder
        self.log = AuditLog(builder.auditor) if builder.auditor else None
        self.kept: dict[str, Sample] = {}

    def apply(self, jobs: list[Job], samples: list[Sample], verdicts: dict[str, Any]) -> list[Job]:
        """Take the verdicts of one pass over `jobs`; returns the jobs to sample again (dropped copies with tries
        left)."""
        if self.log is None:
            self.kept.update((s.key, s) for s in samples)
            return []
        auditor, audit, retry = self.builder.auditor, self.builder.recipe.audit, []
        for job, sample in zip(jobs, samples, strict=True):
            verdict = verdicts.pop(sample.key)
            sample.metadata.update(auditor.sample_metadata(verdict))
            drop = verdict.flagged and audit.action == "drop"
            self.log.add(sample, verdict, dropped=drop, attempt=job.attempt)
            if not drop:
                self.kept[job.key] = sample
            elif job.attempt < audit.max_retries:
                retry.append(job.retry())
            else:
                self.builder.reporter.log(
                    f"{job.key}: still a copy after {job.attempt + 1} tries; left out", warning=True
                )
        return retry

    def result(self) -> tuple[list[Sample], Any]:
        return [self.kept[job.key] for job in self.shard.jobs if job.key in self.kept], self.log


class ShardBuilder:
    """Generates shards' samples, audits them and replaces dropped copies with fresh seeds."""

    def __init__(self, loaded: LoadedRecipe, generator: Callable[[], Any], auditor, reporter: Reporter):
        self.recipe = loaded.recipe
        self.generator = generator
        self.auditor = auditor
        self.reporter = reporter
        self.wait = WaitClock()  # calls == 0 until something was generated

    def run(self, shard: Shard) -> tuple[list[Sample], Any]:
        """One shard: (kept samples in job order, its audit log or None)."""
        state = _ShardAudit(shard, self)
        pending: list[Job] = list(shard.jobs)
        while pending:
            verdicts: dict[str, Any] = {}
            samples = self._generate(pending, verdicts if state.log is not None else None)
            pending = state.apply(pending, samples, verdicts)
        return state.result()

    def run_many(self, shards: Sequence[Shard], done: Callable[[Shard, list[Sample], Any], None]) -> None:
        """Every shard of `shards`, calling `done(shard, samples, log)` as each is complete (not necessarily in
        order: a shard with retries completes after the shards sampled meanwhile). One set of denoising streams
        runs through all of them, so the streams sample the next shard while the last batches of one are
        finished and written; each shard's batches, and so its bytes, are those of `run(shard)`."""
        generator = self.generator()
        if not hasattr(generator, "generate_groups"):  # a generator of another kind (tests): shard by shard
            for shard in shards:
                done(shard, *self.run(shard))
            return
        verdicts: dict[str, Any] = {}  # filled by the audit on the finishing thread, taken by `apply`

        def group(state: _ShardAudit, jobs: list[Job]) -> Group:
            def complete(samples: list[Sample]) -> Group | None:
                retry = state.apply(jobs, samples, verdicts)
                if retry:
                    return group(state, retry)
                done(state.shard, *state.result())
                return None

            return jobs, complete

        groups = (group(_ShardAudit(shard, self), list(shard.jobs)) for shard in shards)
        prompts = [job.prompt for shard in shards for job in shard.jobs]
        finish = self._finish(verdicts if self.auditor else None)
        generator.generate_groups(groups, prompts, self._progress(), finish, self.wait)

    def _progress(self) -> Callable[[int, int], None]:
        return functools.partial(self.reporter.progress, "generating")

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
        generator, finish, progress = self.generator(), self._finish(verdicts), self._progress()
        parameters = inspect.signature(generator.generate).parameters
        if "clock" in parameters:
            return generator.generate(jobs, progress, finish=finish, clock=self.wait)
        if "finish" in parameters:
            return generator.generate(jobs, progress, finish=finish)
        samples = generator.generate(jobs, progress)  # a generator of another kind (tests): finish afterwards
        finish(samples)
        return samples
