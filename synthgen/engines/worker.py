"""One Ray actor's work, without Ray: load the model and the auditor once, then write whole shards.

A worker generates and audits a shard (`ShardBuilder`, the same code as the local engine), writes its files
atomically to the shared output folder (`ShardSet.write_files`) and returns only their record, the audit rows
and the shard's generation wait clock (a few numbers): images never travel back. It never writes a marker: the
driver does that, so a worker that dies leaves a shard that is simply not done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synthgen.engines.base import ModelRef
from synthgen.generation.streams import WaitClock
from synthgen.plan import Shard
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Reporter


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, fixed by the driver so every worker makes the same samples."""

    loaded: LoadedRecipe
    model: ModelRef
    provenance: dict[str, Any]
    out_dir: str
    threads: int  # torch, FAISS and OpenCV threads: the same count as a local build, for the same floats
    threshold: float | None  # the driver's audit threshold (calibrated once); None: no audit
    hook: Callable[[Shard], None] | None = None  # tests: called after a shard is generated, before it is written


@dataclass
class ShardOutcome:
    """What a worker returns for one shard: its files' record, its audit rows, lines for the user, and how long
    its denoiser waited on the finishing thread (this shard only; the driver sums the shards it accepts)."""

    record: Any  # output.shard_set.ShardRecord
    audit_state: dict[str, Any] | None
    messages: list[tuple[str, bool]]
    node: str = ""
    wait: WaitClock = field(default_factory=WaitClock)


class _Collect(Reporter):
    """A worker's log lines, returned with the shard so the driver shows them; progress stays in the worker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bool]] = []

    def log(self, message: str, warning: bool = False) -> None:
        self.messages.append((message, warning))


class ShardWorker:
    """Holds the pipeline and the auditor of one build; `run` writes one shard's files."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.builder = None
        self.shard_set = None
        self.reporter = _Collect()

    def setup(self) -> str:
        """Load the model and fit the auditor (with the driver's threshold); returns where this worker runs."""
        from synthgen.models.loading import load_model
        from synthgen.output.shard_set import ShardSet
        from synthgen.runtime import pick_device, set_cpu_threads
        from synthgen.shard_builder import ShardBuilder

        spec, recipe = self.spec, self.spec.loaded.recipe
        set_cpu_threads(spec.threads, "ray worker threads")  # before torch sizes its pools
        device = pick_device(recipe.sampling.device)
        model = spec.model
        pipeline = load_model(model.path, model.model_id, model.sha256, device, model.allow_pickle)
        from synthgen.generate import Generator

        generator = Generator(pipeline, recipe.sampling, spec.provenance)
        output = recipe.output
        self.shard_set = ShardSet(
            spec.out_dir, output.formats, output.image_format, output.jpeg_quality, classes=list(recipe.classes)
        )
        self.builder = ShardBuilder(spec.loaded, lambda: generator, self._auditor(), self.reporter)
        return f"{_host()} ({device.type}, {spec.threads} CPU threads)"

    def _auditor(self):
        """The recipe's detector fitted on the audit data, judging with the driver's fixed threshold."""
        if self.spec.threshold is None:
            return None
        from synthgen.audit import Auditor
        from synthgen.sources import open_source

        loaded = self.spec.loaded
        data = loaded.recipe.audit_data()
        assert data is not None  # the driver has an auditor, so the recipe has audit data
        source = open_source(data, loaded.base_dir)
        # cache: a fitted entry already in the cache (same data, settings and code) is loaded, not refitted
        return Auditor.from_recipe(source, loaded.recipe.audit, threshold=self.spec.threshold, cache=True)

    def run(self, shard: Shard) -> ShardOutcome:
        """Generate, audit and write shard `shard` (files only); returns its record and audit rows."""
        assert self.builder is not None and self.shard_set is not None, "setup() first"
        self.reporter.messages = []
        self.builder.wait = WaitClock()  # this shard's figures alone: a retried shard is counted where it succeeds
        samples, log = self.builder.run(shard)
        if self.spec.hook is not None:
            self.spec.hook(shard)
        record = self.shard_set.write_files(shard.index, samples)
        state = log.state() if log is not None else None
        return ShardOutcome(record, state, list(self.reporter.messages), _host(), self.builder.wait)


def _host() -> str:
    import socket

    return socket.gethostname()
