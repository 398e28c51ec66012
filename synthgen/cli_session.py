"""What the CLI shows and keeps of a run: the global options' session, rich bars or plain lines, the --log-file,
and one-line user errors.

Kept apart from `cli.py` (the commands and their arguments), which every command wraps with `user_errors`
and reports through `reporting()`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.progress import DEFAULT_EVERY, PlainReporter, Reporters, open_log, progress_every
from synthgen.runtime import Reporter, cpu_threads, set_cpu_threads

console = Console(stderr=True)
out = Console()


class Session:
    """What the global options set for this invocation: the --log-file's reporter and the progress line period."""

    log: PlainReporter | None = None
    every: float = DEFAULT_EVERY


def note(text: str) -> None:
    """A line for the --log-file only (the screen has its own: the red error line, the bars)."""
    if Session.log is not None:
        Session.log.write(text)


def _close_log() -> None:
    if Session.log is not None:
        Session.log.close()
        Session.log = None


def apply_global_options(ctx: typer.Context, threads: str | None, log_file: Path | None, every: str | None) -> None:
    """Apply --threads (before any library sizes its thread pool), --progress-every and --log-file."""
    Session.log, Session.every = None, progress_every(every, "--progress-every")
    if threads is not None:
        set_cpu_threads(threads, "--threads")
    elif os.environ.get("SYNTHGEN_THREADS", "").strip():  # libraries' own OpenMP / BLAS pools follow it too
        with contextlib.suppress(SynthgenError):  # a bad value is reported by the commands that use threads
            os.environ["OMP_NUM_THREADS"] = str(cpu_threads())
    if log_file is not None:
        Session.log = log = open_log(log_file, Session.every)
        ctx.call_on_close(_close_log)
        log.write(f"synthgen {__version__}: {ctx.invoked_subcommand} (pid {os.getpid()}, in {Path.cwd()})")


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `SynthgenError` into one red line and exit code 2; Ctrl-C into a hint that reruns resume."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = command(*args, **kwargs)
            note(f"{command.__name__}: finished")
            return result
        except SynthgenError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            note(f"error: {error}")
            raise typer.Exit(error.exit_code) from None
        except OSError as error:  # disk full, permission denied, a file where a folder should be...
            where = f"{error.filename}: " if error.filename else ""
            message = where + (error.strerror or str(error))
            console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            note(f"error: {message}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] finished shards are kept; run the same command to resume")
            note("interrupted: finished shards are kept; run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


class RichReporter(Reporter):
    """Maps pipeline progress callbacks (stage, done, total) onto rich progress bars, one per stage."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def log(self, message: str, warning: bool = False) -> None:
        style = "yellow" if warning else None
        self._progress.console.print(message, style=style, markup=False, highlight=False)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self._tasks:
            self.finish()  # a new stage means the earlier ones are over
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)

    def finish(self) -> None:
        """Close bars of stages whose length was unknown (or that ended early), so their clocks stop."""
        for task in self._progress.tasks:
            if not task.finished:
                self._progress.update(task.id, total=task.completed)


@contextlib.contextmanager
def reporting() -> Iterator[Reporter]:
    """The one reporter choice of every long command: bars on a terminal, else plain timed lines on stderr (logs,
    CI, batch jobs, nohup); and the same lines in the --log-file. Starts by saying how many CPU threads it uses."""
    with contextlib.ExitStack() as stack:
        if console.is_terminal and not console.is_dumb_terminal:
            screen: Reporter = RichReporter(stack.enter_context(progress_bars()))
        else:
            screen = PlainReporter(None, Session.every)  # stderr as it is at each line (tests swap it)
        reporter = Reporters([screen] + ([Session.log] if Session.log is not None else []))
        count = cpu_threads()
        reporter.log(f"using {count} CPU thread{'s' if count != 1 else ''}")
        yield reporter
        reporter.finish()


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
