"""Progress as plain text: timestamped lines for logs, CI and batch schedulers, where no one sees a bar.

`PlainReporter` writes one line when a stage starts, one when it ends, and at most one every `every` seconds
in between (done/total, percent, rate, elapsed, ETA), each flushed at once, so `tail -f` on a `nohup` log
shows a long run moving. `Reporters` sends the same calls to several reporters (stderr and a `--log-file`).
The CLI draws rich bars instead on a terminal; Python callers may use these directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from synthgen.errors import SynthgenError
from synthgen.runtime import Reporter

EVERY_VARIABLE = "SYNTHGEN_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def progress_every(value: str | float | None = None, name: str = EVERY_VARIABLE) -> float:
    """Seconds between progress lines: `value` (a flag), else $SYNTHGEN_PROGRESS_EVERY, else 30; must be > 0."""
    if value is None:
        value = os.environ.get(EVERY_VARIABLE, "").strip() or None
        if value is None:
            return DEFAULT_EVERY
    try:
        seconds = float(value)
    except ValueError:
        raise SynthgenError(f"{name}: must be a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise SynthgenError(f"{name}: must be a positive number of seconds, got {value!r}")
    return seconds


def unit(stage: str) -> str:
    """What a stage counts, for its rate: optimizer steps, shards, or images (everything else)."""
    if stage.startswith("training"):
        return "steps"
    return "shards" if stage.startswith("shard") else "images"


def duration(seconds: float) -> str:
    """H:MM:SS, the way rich's bars show elapsed and remaining time."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Stage:
    started: float  # when the stage (or its current round) was first reported
    base: int  # `done` at that moment: the rate counts only work done since
    done: int = 0
    total: int | None = None
    printed: float = 0.0  # when its last line was written
    ended: bool = False


class PlainReporter(Reporter):
    """Timestamped progress and log lines on a text stream (stderr, a log file), flushed line by line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        every: float = DEFAULT_EVERY,
        clock: Callable[[], float] = time.monotonic,
        stamp: Callable[[], str] = lambda: time.strftime("%Y-%m-%d %H:%M:%S"),
    ) -> None:
        self.stream = stream
        self.every = every
        self.clock = clock
        self.stamp = stamp
        self.owns_stream = False  # close() closes the stream (a log file this reporter opened)
        self._stages: dict[str, _Stage] = {}

    def close(self) -> None:
        if self.owns_stream and self.stream is not None:
            self.stream.close()

    def write(self, text: str) -> None:
        """One timestamped line, flushed (a log read with `tail -f` or after a crash is never behind)."""
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(f"{self.stamp()} {text}\n")
        stream.flush()

    def log(self, message: str, warning: bool = False) -> None:
        self.write(f"warning: {message}" if warning else message)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        now = self.clock()
        state = self._stages.get(stage)
        if state is None:
            self.finish()  # a new stage means the earlier ones are over (as the bars do)
            state = self._stages[stage] = _Stage(now, done, done, total)
            self._line(stage, state, now, "started")
        elif state.ended or done < state.done:  # a stage that runs again (one round per shard): count afresh
            state.started, state.base, state.ended = now, done, False
        state.done, state.total = done, total
        if total is not None and total > 0 and done >= total and not state.ended:
            self._end(stage, state, now, "done")
        elif now - state.printed >= self.every:
            self._line(stage, state, now)

    def finish(self) -> None:
        """Close the stages still open (unknown length, or ended short of their total) with a last line."""
        now = self.clock()
        for stage, state in self._stages.items():
            if not state.ended:
                self._end(stage, state, now, "ended")

    def _end(self, stage: str, state: _Stage, now: float, word: str) -> None:
        state.ended = True
        self._line(stage, state, now, word)

    def _line(self, stage: str, state: _Stage, now: float, word: str = "") -> None:
        """`stage [word]: done/total (pct), rate, elapsed, ETA`; a start line says only where it starts."""
        state.printed = now
        elapsed = now - state.started
        parts = []
        if state.total is not None or state.done:  # an unknown length with nothing counted shows no count
            count = f"{state.done}/{state.total}" if state.total is not None else str(state.done)
            share = f" ({100 * state.done // state.total}%)" if state.total and state.done <= state.total else ""
            parts.append(count + share)
        if word != "started":
            rate = (state.done - state.base) / elapsed if elapsed > 0 and state.done > state.base else None
            if rate is not None:
                parts.append(f"{rate:.3g} {unit(stage)}/s")
            parts.append(f"elapsed {duration(elapsed)}")
            if rate is not None and state.total and state.done < state.total and not word:
                parts.append(f"ETA {duration((state.total - state.done) / rate)}")
        self.write(f"{stage}{' ' + word if word else ''}" + (": " + ", ".join(parts) if parts else ""))


def open_log(path: str | Path, every: float = DEFAULT_EVERY, flag: str = "--log-file") -> PlainReporter:
    """A `PlainReporter` appending to the file `path` (its folder is made; an earlier log is kept); `close()` it."""
    path = Path(path)
    if path.is_dir():
        raise SynthgenError(f"{flag}: {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by PlainReporter.close
    except OSError as error:
        raise SynthgenError(f"{flag}: {path}: {error.strerror or error}") from None
    reporter = PlainReporter(stream, every)
    reporter.owns_stream = True
    return reporter


class _Moment:
    """One clock reading and timestamp for every plain reporter of a `Reporters` call: read each on its own, the
    screen's line and the log file's could differ by a second in the stamp or a digit in the rate."""

    def __init__(self, clock: Callable[[], float], stamp: Callable[[], str]) -> None:
        self._clock, self._stamp = clock, stamp
        self._held: tuple[float, str] | None = None

    def clock(self) -> float:
        return self._held[0] if self._held is not None else self._clock()

    def stamp(self) -> str:
        return self._held[1] if self._held is not None else self._stamp()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held = (self._clock(), self._stamp())
        try:
            yield
        finally:
            self._held = None


class Reporters(Reporter):
    """Several reporters as one (bars or lines on the screen, and the same lines in a log file).

    Calls are serialised (threads report too), and the plain reporters share one moment per call, so the lines on
    stderr and in the log file are the same lines, timestamps, rates and elapsed times included."""

    def __init__(self, reporters: Iterable[Reporter]) -> None:
        self.reporters = list(reporters)
        self._lock = threading.RLock()  # re-entrant: a reporter that reports through this one again
        plain = [reporter for reporter in self.reporters if isinstance(reporter, PlainReporter)]
        self._moment = _Moment(plain[0].clock, plain[0].stamp) if len(plain) > 1 else None
        for reporter in plain if self._moment is not None else []:
            reporter.clock, reporter.stamp = self._moment.clock, self._moment.stamp

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        with self._lock, self._moment.held() if self._moment is not None else contextlib.nullcontext():
            yield

    def log(self, message: str, warning: bool = False) -> None:
        with self._call():
            for reporter in self.reporters:
                reporter.log(message, warning)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        with self._call():
            for reporter in self.reporters:
                reporter.progress(stage, done, total)

    def finish(self) -> None:
        with self._call():
            for reporter in self.reporters:
                finish = getattr(reporter, "finish", None)
                if finish is not None:
                    finish()
