"""Denoising streams: N threads, each sampling its own batches with its own pipeline copy and torch threads,
while the calling thread finishes the batches (VAE decode, PIL, encoding, audit) in plan order.

Why: on a CPU a small UNet's ops are too small to scale across OpenMP threads; two one-thread streams on two
cores made 1.37x the images of one two-thread stream with the tiny MSDM (docs/performance.md). A batch's bytes
depend only on its own jobs and the threads per stream, never on how many streams run or which one ran it.
Bounded: a stream starts batch k only while fewer than `streams + depth` batches wait beyond the one being
finished (back-pressure), so at most that many batches are in memory.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from synthgen.generation.batching import latent_side
from synthgen.runtime import torch_threads

MAX_AUTO_STREAMS = 8  # beyond this many cores, auto gives each stream several threads
# Denoiser parameters x latent pixels per call up to which `auto` runs one-thread streams: 12x the tiny MSDM's
# call at 64 px and batch 48 (1.7 M x 256 x 48), so the CPU presets tiny and small; base and SD-1.5-sized
# UNets (hundreds of millions of parameters) have large convolutions that scale across threads, and each
# stream would hold its own activations.
STREAM_WORK_LIMIT = 2.5e11

Task = Callable[[int, threading.Event], Any]  # (stream index, stop event) -> the denoised batch


@dataclass
class WaitClock:
    """Seconds the denoiser waited on the finishing thread (back-pressure + the final drain), out of the
    generation's wall time; summed over calls. The build logs `line()` and can record `record()`."""

    waited: float = 0.0
    total: float = 0.0
    streams: int = 0
    threads: int = 0
    calls: int = field(default=0, repr=False)

    def add(self, waited: float, total: float, streams: int, threads: int) -> None:
        self.waited += waited
        self.total += total
        self.streams, self.threads = streams, threads
        self.calls += 1

    def merge(self, other: WaitClock) -> None:
        """Add another clock's figures (a Ray worker's, for one shard): seconds are summed, so over several
        workers `total` is worker-seconds of generation, not the build's wall time; streams and threads are the
        last merged clock's (the driver gives every worker the same threads). An empty clock adds nothing."""
        if other.calls:
            self.add(other.waited, other.total, other.streams, other.threads)
            self.calls += other.calls - 1

    def line(self) -> str:
        return (
            f"generation: denoiser waited {self.waited:.1f} s of {self.total:.1f} s on the finishing thread "
            "(decode, encode, audit)"
        )

    def record(self) -> dict[str, Any]:
        """What a build summary or manifest keeps of its generation."""
        return {
            "streams": self.streams,
            "threads_per_stream": self.threads,
            "denoiser_waited_s": round(self.waited, 3),
            "generation_s": round(self.total, 3),
        }


class StreamStopped(Exception):
    """Raised inside a stream's pipeline call (step callback) when the run is stopping: a stream failed, or
    the finishing thread did."""


def stop_callback(stop: threading.Event) -> Callable[..., dict[str, Any]]:
    """A diffusers `callback_on_step_end` that aborts the call at the next step once `stop` is set; otherwise it
    hands the step's tensors back unchanged (the same bytes as no callback)."""

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if stop.is_set():
            raise StreamStopped
        return tensors

    return on_step_end


def can_copy(pipeline: Any) -> bool:
    """Whether `stream_copy` gives an independent sampler: one scheduler, no sub-pipelines (Kandinsky's
    combined pipelines call their prior's and decoder's own schedulers)."""
    return hasattr(pipeline, "scheduler") and not any(
        hasattr(pipeline, name) for name in ("prior_pipe", "decoder_pipe")
    )


def stream_copy(pipeline: Any) -> Any:
    """The pipeline for another stream: the same modules (weights shared, only read), its own scheduler
    (`set_timesteps` and `step` keep state: timesteps, step index, solver history) and its own call state
    (`_guidance_scale`, `_num_timesteps`, ... are set on the pipeline object by every call)."""
    twin = copy.copy(pipeline)
    twin.scheduler = copy.deepcopy(pipeline.scheduler)
    return twin


def plan_streams(
    setting: int | Literal["auto"],
    pipeline: Any,
    device: Any,
    threads: int,
    batch: int,
    resolution: int,
    prompts_encoded_once: bool = True,
) -> tuple[int, int]:
    """(streams, torch threads per stream) for `threads` CPU threads.

    auto: on a CPU with two threads or more and a small denoiser call, one stream per thread (at most
    MAX_AUTO_STREAMS, the threads shared out beyond); otherwise one stream of every thread. CUDA and MPS,
    pipelines with sub-pipelines, and pipelines whose prompts are not encoded once before the streams start
    (not `prompts_encoded_once`: SDXL, FLUX, ... tokenize and encode in every call, and tokenizers are not
    promised thread-safe) always run one stream.
    """
    if getattr(device, "type", str(device)) != "cpu" or not can_copy(pipeline) or not prompts_encoded_once:
        return 1, threads
    if setting == "auto":
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        parameters = sum(p.numel() for p in denoiser.parameters()) if denoiser is not None else 0
        work = parameters * latent_side(pipeline, resolution) ** 2 * batch
        count = min(threads, MAX_AUTO_STREAMS) if threads >= 2 and 0 < work <= STREAM_WORK_LIMIT else 1
    else:
        count = int(setting)
    return count, max(1, threads // count)


Work = tuple[Task, Callable[[Any], "list[Work] | None"]]  # a batch to denoise, and what finishes its result
Feed = Callable[[], "list[Work]"]  # the next work items when the queue runs dry; [] once there are no more


class _Board:
    """What the streams and the finishing thread share: the queue of work not yet started, results by index,
    how far the finishing thread got, the first failure, and the stop flag; one condition variable guards them.

    Work gets its index when a stream claims it, so the finishing thread finishes in claim order. The queue is
    refilled from `feed` only when it runs dry, and work a finish returns (a shard's retries) goes to its front:
    a few groups are in flight at a time, whatever the number still to come."""

    def __init__(self, window: int, feed: Feed) -> None:
        self.cond = threading.Condition()
        self.queue: deque[Work] = deque()
        self.feed = feed
        self.finishers: dict[int, Callable[[Any], list[Work] | None]] = {}
        self.results: dict[int, Any] = {}
        self.claimed = 0  # work items handed to streams so far (the next one gets this index)
        self.taken = 0  # results handed to the finishing thread so far
        self.window = window
        self.failure: tuple[int, int, BaseException] | None = None
        self.stop = threading.Event()
        self.last_done = 0.0  # perf_counter when a stream last put a batch

    def _refill(self) -> None:
        if not self.queue:
            self.queue.extend(self.feed())
            if self.queue:
                self.cond.notify_all()  # whoever refilled, a waiting stream may claim now

    def claim(self) -> tuple[int, Task] | None:
        """The next work item for a stream, waiting while it would run too far ahead of the finishing thread or
        while nothing is queued (a finish may still add a shard's retries); None once stopping."""
        with self.cond:
            while not self.stop.is_set():
                if self.claimed < self.taken + self.window:
                    self._refill()
                    if self.queue:
                        task, finisher = self.queue.popleft()
                        index, self.claimed = self.claimed, self.claimed + 1
                        self.finishers[index] = finisher
                        return index, task
                self.cond.wait()
            return None

    def put(self, index: int, value: Any) -> None:
        with self.cond:
            self.results[index] = value
            self.last_done = time.perf_counter()
            self.cond.notify_all()

    def push_front(self, work: list[Work]) -> None:
        with self.cond:
            self.queue.extendleft(reversed(work))
            self.cond.notify_all()

    def fail(self, stream: int, index: int, error: BaseException) -> None:
        with self.cond:
            if self.failure is None:
                self.failure = (stream, index, error)
            self.halt()

    def halt(self) -> None:
        with self.cond:
            self.stop.set()
            self.cond.notify_all()

    def take(self, index: int) -> tuple[Any, Callable[[Any], list[Work] | None]] | None:
        """Result `index` and its finisher once a stream made it; None when there is no more work (everything
        claimed is finished, nothing is queued, the feed is dry); the first stream failure instead, as soon as
        there is one."""
        with self.cond:
            while index not in self.results and self.failure is None:
                if index >= self.claimed:
                    self._refill()
                    if not self.queue:
                        return None
                self.cond.wait()
            if self.failure is not None:
                stream, batch, error = self.failure
                error.add_note(f"(in denoising stream {stream}, batch {batch}; the other streams were stopped)")
                raise error
            self.taken = index + 1
            self.cond.notify_all()
            return self.results.pop(index), self.finishers.pop(index)


def _once(work: list[Work]) -> Feed:
    """A feed that gives `work` once, then nothing."""
    given = [work]
    return lambda: given.pop() if given else []


class Streams:
    """Runs denoising work on `count` streams of `threads` torch threads each and finishes the results in claim
    order on the calling thread. One stream without `overlap` runs everything inline, one batch after the other
    (no CPU to spare for a second thread)."""

    def __init__(self, count: int, threads: int, overlap: bool = True, depth: int = 1) -> None:
        self.count, self.threads, self.depth = count, threads, depth
        self.inline = count == 1 and not overlap

    def run(self, tasks: Sequence[Task], finish: Callable[[int, Any], None]) -> tuple[float, float]:
        """Denoise every task and call `finish(k, result)` in task order here; returns (waited, total) seconds:
        how long the denoiser waited on `finish`, and the wall time of the whole run."""

        def finisher(k: int) -> Callable[[Any], None]:
            return lambda result: finish(k, result)

        return self.run_feed(_once([(task, finisher(k)) for k, task in enumerate(tasks)]))

    def run_feed(self, feed: Feed) -> tuple[float, float]:
        """Denoise work from `feed` until it is dry and every finisher ran (a finisher may return more work: it
        runs next); returns (waited, total) seconds as `run` does."""
        started = time.perf_counter()
        waited = self._inline(feed) if self.inline else self._concurrent(feed)
        return waited, time.perf_counter() - started

    def _inline(self, feed: Feed) -> float:
        waited, never, queue = 0.0, threading.Event(), deque[Work]()
        while True:
            if not queue:
                queue.extend(feed())
                if not queue:
                    return waited
            task, finisher = queue.popleft()
            result = task(0, never)
            began = time.perf_counter()
            queue.extendleft(reversed(finisher(result) or []))
            waited += time.perf_counter() - began  # the denoiser is idle while this thread finishes

    def _concurrent(self, feed: Feed) -> float:
        """Streams on their own threads; this thread finishes. Waiting = the streams' mean time blocked (back-
        pressure, or no work until a finish adds some) plus the drain (last batch denoised to last finished)."""
        board = _Board(self.count + self.depth, feed)
        blocked = [0.0] * self.count
        workers = [
            threading.Thread(target=self._stream, args=(stream, board, blocked), name=f"synthgen-stream-{stream}")
            for stream in range(self.count)
        ]
        for worker in workers:
            worker.start()
        index, drain = 0, 0.0
        try:
            while (item := board.take(index)) is not None:
                result, finisher = item
                more = finisher(result)
                if more:
                    board.push_front(more)
                index += 1
            drain = time.perf_counter() - board.last_done if index else 0.0
        finally:
            board.halt()  # a failure here (finish, or a stream's error re-raised) stops the other streams
            for worker in workers:
                worker.join()
        # A stream still waiting for work when the run ended counts until the end: the drain covers that span.
        return sum(blocked) / max(1, self.count) + max(0.0, drain)

    def _stream(self, stream: int, board: _Board, blocked: list[float]) -> None:
        """Stream `stream`: claims the next work item, denoises it with its own torch thread count, repeats."""
        import torch

        with torch_threads(self.threads), torch.inference_mode():  # both are per thread
            while True:
                began = time.perf_counter()
                claimed = board.claim()
                if claimed is None:
                    return
                blocked[stream] += time.perf_counter() - began
                index, task = claimed
                try:
                    result = task(stream, board.stop)
                except StreamStopped:
                    return
                except BaseException as error:  # noqa: BLE001 - handed to the finishing thread, raised there
                    board.fail(stream, index, error)
                    return
                board.put(index, result)
