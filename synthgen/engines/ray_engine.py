"""The Ray engine: one plan shard is one task on an actor that holds the pipeline and the auditor.

The driver (the process that runs `synthgen build`) keeps everything that makes a build resumable: the output
folder's lock, the shard markers, the audit state and the manifest. It fits and calibrates the audit once and
gives every worker the same threshold. Workers write shard files atomically to the output folder, which every
node must see at the same path, and return only records; the driver re-hashes the files before it writes a
marker. A worker that dies (process killed, node gone) loses its shard, which goes to another worker; a driver
that dies is resumed by running the same command again. Each accepted shard's wait clock is merged into the
driver's `run.builder.wait`, which `build` logs and records in the manifest as for a local build: seconds are
summed over shards (worker-seconds, not wall time), a retried shard counting once, for the attempt that
succeeded (a dead or rejected attempt returns nothing). See docs/ray.md.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from synthgen.atomic import remove_temp_files
from synthgen.engines.base import ShardRun, ShardsDone
from synthgen.engines.worker import ShardOutcome, ShardWorker, WorkerSpec
from synthgen.errors import SynthgenError
from synthgen.plan import Shard
from synthgen.runtime import Reporter, cpu_threads, first_line

INSTALL = "pip install 'synthgen[ray]'"
# Passed on to the workers when the driver has them: where models and indexes are cached, and hub access.
PASSED_ON = ("SYNTHGEN_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")
WAIT_S = 30.0  # a line about what the driver waits for, this often, while nothing finishes


def import_ray():
    """Ray, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise SynthgenError(f"--engine ray: Ray is not installed; {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Slots:
    """How many workers, and what each asks Ray for."""

    count: int
    cpus: int
    gpus: int  # per worker: 1 where the cluster has GPUs, else 0

    def describe(self) -> str:
        kind = "1 GPU + " if self.gpus else ""
        return f"{self.count} worker(s), each {kind}{self.cpus} CPU thread(s)"


def plan_slots(nodes: list[dict[str, Any]], threads: int, shards: int) -> Slots:
    """One worker per GPU (CPUs: `threads`, at most the node's CPUs per GPU); without GPUs, as many workers of
    `threads` CPUs as the nodes hold. `nodes`: `ray.nodes()`; dead nodes do not count."""
    resources = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    gpu_nodes = [r for r in resources if int(r.get("GPU", 0)) > 0]
    if gpu_nodes:
        per_gpu = min(int(r.get("CPU", 0)) // int(r["GPU"]) for r in gpu_nodes)
        count = sum(int(r["GPU"]) for r in gpu_nodes)
        return Slots(max(1, min(count, shards)), max(1, min(threads, per_gpu)), 1)
    count = sum(int(r.get("CPU", 0)) // threads for r in resources)
    if count == 0:
        most = max((int(r.get("CPU", 0)) for r in resources), default=0)
        raise SynthgenError(
            f"--threads: each Ray worker takes {threads} CPU threads, but no node of the cluster has that many "
            f"free (largest: {most}); pass a smaller --threads (the same as a local build's, for the same bytes)"
        )
    return Slots(min(count, shards), threads, 0)


class RayEngine:
    """Runs the shards on Ray actors; `address`: the cluster (None: RAY_ADDRESS, else a local Ray on this machine).

    `hook(shard)` runs in the worker between generating a shard and writing it (the tests kill workers there);
    `max_attempts`: how many workers may die on one shard before the build stops."""

    name = "ray"

    def __init__(
        self, address: str | None = None, *, hook: Callable[[Shard], None] | None = None, max_attempts: int = 3
    ) -> None:
        self.ray = import_ray()
        self.address = address
        self.hook = hook
        self.max_attempts = max_attempts

    def run(self, run: ShardRun) -> ShardsDone:
        records, todo = run.split()
        resumed = len(records)
        if not todo:  # a finished build never needs the cluster
            return ShardsDone(records, 0, resumed)
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            self._connect()
        try:
            slots = plan_slots(ray.nodes(), cpu_threads(), len(todo))
            run.reporter.log(f"ray: {len(todo)} shard(s) on {slots.describe()}")
            auditor = run.builder.auditor
            spec = WorkerSpec(
                run.loaded,
                run.model,
                run.provenance,
                str(run.folder.path),
                slots.cpus,
                None if auditor is None else auditor.threshold,
                self.hook,
            )
            pool = _Pool(ray, spec, slots, run.reporter, self.max_attempts)
            total = len(run.plan.shards)
            if resumed:
                run.reporter.progress("shards", resumed, total)

            def unmark(shard: Shard) -> None:  # a stale marker must not outlive the files it described
                run.folder.marker(shard.index).unlink(missing_ok=True)

            with contextlib.closing(pool.run(todo, unmark)) as finished:  # closing: every actor is killed on error
                for shard, outcome in finished:
                    for message, warning in outcome.messages:
                        run.reporter.log(message, warning=warning)
                    run.save_audit(shard.index, outcome.audit_state)
                    run.shard_set.write_marker(outcome.record)  # last: the shard is done
                    records[shard.index] = outcome.record
                    run.builder.wait.merge(outcome.wait)  # build logs and records it, as for the local engine
                    run.reporter.progress("shards", len(records), total)
        finally:
            if started:
                ray.shutdown()
        # Workers that died mid-shard left temp files; none writes any more (every actor is gone).
        remove_temp_files(run.folder.path, skip=("model",))
        return ShardsDone(dict(sorted(records.items())), len(todo), resumed)

    def _connect(self) -> None:
        import logging

        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            options["include_dashboard"] = False  # a local Ray instance of our own
        try:
            self.ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SynthgenError(f"--address: cannot join the Ray cluster {self.address}: {first_line(error)}") from None


class _Pool:
    """The actors of one build and the driver's loop: hand out shards, collect records, replace dead workers."""

    def __init__(self, ray, spec: WorkerSpec, slots: Slots, reporter: Reporter, max_attempts: int) -> None:
        from ray import exceptions

        self.ray, self.spec, self.slots, self.reporter = ray, spec, slots, reporter
        self.max_attempts = max_attempts
        self.died = tuple(
            getattr(exceptions, name)
            for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
            if hasattr(exceptions, name)
        )
        self.task_error = exceptions.RayTaskError
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        env.update(SYNTHGEN_THREADS=str(slots.cpus), OMP_NUM_THREADS=str(slots.cpus))
        self.actor_class = ray.remote(ShardWorker).options(
            num_cpus=slots.cpus,
            num_gpus=slots.gpus,
            max_restarts=0,  # the driver replaces a dead worker and hands its shard to whichever is free
            max_task_retries=0,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env},
        )
        self.starting: dict[Any, Any] = {}  # setup ref -> actor
        self.busy: dict[Any, tuple[Any, Shard]] = {}  # run ref -> (actor, shard)
        self.idle: list[Any] = []
        self.deaths = 0

    def run(self, todo: list[Shard], before: Callable[[Shard], None]) -> Iterator[tuple[Shard, ShardOutcome]]:
        """Yield (shard, outcome) as shards finish; `before(shard)` runs on the driver as a shard is handed out."""
        queue, attempts = deque(todo), Counter()
        try:
            for _ in range(self.slots.count):
                self._start()
            while queue or self.busy:
                while self.idle and queue:
                    actor, shard = self.idle.pop(), queue.popleft()
                    before(shard)
                    self.busy[actor.run.remote(shard)] = (actor, shard)
                ready, _ = self.ray.wait([*self.busy, *self.starting], num_returns=1, timeout=WAIT_S)
                if not ready:
                    self._waiting(len(queue))
                    continue
                if ready[0] in self.starting:
                    self._started(ready[0])
                    continue
                actor, shard = self.busy.pop(ready[0])
                outcome = self._outcome(ready[0], shard, attempts)
                if outcome is None:
                    queue.appendleft(shard)
                    self._replace(actor)
                    continue
                self.idle.append(actor)
                yield shard, outcome
        finally:
            for actor in [*self.starting.values(), *(a for a, _ in self.busy.values()), *self.idle]:
                self.ray.kill(actor, no_restart=True)

    def _start(self) -> None:
        actor = self.actor_class.remote(self.spec)
        self.starting[actor.setup.remote()] = actor

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            where = self.ray.get(ref)
        except self.task_error as error:
            raise _cause(error) from None
        except self.died as error:
            self._died(f"a worker died while loading the model ({first_line(error)})")
            self._replace(actor)
            return
        self.reporter.log(f"ray: worker ready on {where}")
        self.idle.append(actor)

    def _outcome(self, ref, shard: Shard, attempts: Counter) -> ShardOutcome | None:
        """The shard's outcome, or None when its worker died (the shard is to be handed out again)."""
        try:
            outcome = self.ray.get(ref)
        except self.task_error as error:
            raise _cause(error) from None
        except self.died as error:
            reason = f"its worker died ({first_line(error)})"
        else:
            if _files_match(self.spec.out_dir, outcome.record):
                return outcome
            reason = (
                "its files are not what the worker wrote; output.dir must be one folder that every node "
                f"sees at {self.spec.out_dir} (a shared filesystem)"
            )
        attempts[shard.index] += 1
        if attempts[shard.index] >= self.max_attempts:
            raise SynthgenError(
                f"shard {shard.index}: {reason}, {attempts[shard.index]} times; finished shards are kept, "
                "run the same command again to resume"
            )
        self.reporter.log(f"shard {shard.index}: {reason}; handing it to another worker", warning=True)
        return None

    def _replace(self, actor) -> None:
        """A dead worker's place goes to a new one (it waits for resources: a node may have gone)."""
        self.ray.kill(actor, no_restart=True)
        self._start()

    def _died(self, reason: str) -> None:
        self.deaths += 1
        if self.deaths > 3 * self.slots.count:
            raise SynthgenError(f"ray: {reason}; {self.deaths} workers died, stopping (finished shards are kept)")
        self.reporter.log(f"ray: {reason}; starting another", warning=True)

    def _waiting(self, queued: int) -> None:
        if not self.busy and not self.idle:
            self.reporter.log(
                f"ray: waiting for {len(self.starting)} worker(s) to start (loading the model and the audit "
                f"index, or waiting for room on the cluster: {self.slots.describe()} asked); {queued} shard(s) queued"
            )


def _cause(error) -> BaseException:
    """A worker's own exception as the driver raises it: a SynthgenError stays one line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, SynthgenError):
        return cause
    return error.as_instanceof_cause() if hasattr(error, "as_instanceof_cause") else error


def _files_match(out_dir: str, record) -> bool:
    """Whether the driver sees the files the worker recorded (same bytes): the output folder is shared."""
    from pathlib import Path

    from synthgen.output.shard_set import files_match

    return files_match(Path(out_dir), record)
