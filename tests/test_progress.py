"""Progress without a terminal (issue 13): plain timestamped lines on stderr, the same in `--log-file`.

A build under nohup, CI or a batch scheduler has no TTY; it must still write progress to its log, line by line.
The line period comes from a fake clock here, never from sleeping.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from synthgen import cli_session
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.progress import PlainReporter, Reporters, duration, open_log, progress_every

SYNTHGEN = str(Path(sys.executable).parent / "synthgen")
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
TRAIN_RECIPE = {
    "name": "progress-test",
    "model": {
        "train": {
            "data": {"type": "demo", "per_class": 2, "resolution": 32},
            "resolution": 32,
            "vae_steps": 2,
            "unet_steps": 4,
            "batch_size": 2,
            "validation_split": 0.0,
            "checkpoint_every": 2,
        }
    },
    "classes": {"polyp": {"count": 1, "prompts": ["colonoscopy phantom showing a small polyp"]}},
}


class Flushed(io.StringIO):
    """A stream that records what had been flushed (what `tail -f` on a log would show)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = ""

    def flush(self) -> None:
        self.flushed = self.getvalue()


def reporter(every: float = 30.0) -> tuple[PlainReporter, Flushed, list[float]]:
    now = [0.0]
    stream = Flushed()
    return PlainReporter(stream, every, clock=lambda: now[0], stamp=lambda: "T"), stream, now


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_stage_gets_a_start_line_timed_lines_with_rate_and_eta_and_an_end_line() -> None:
    plain, stream, now = reporter(every=30)
    for step in range(1, 121):
        now[0] = float(step)  # one step a second
        plain.progress("training UNet", step, 120)
    assert lines(stream) == [
        "T training UNet started: 1/120 (0%)",
        "T training UNet: 31/120 (25%), 1 steps/s, elapsed 0:00:30, ETA 0:01:29",
        "T training UNet: 61/120 (50%), 1 steps/s, elapsed 0:01:00, ETA 0:00:59",
        "T training UNet: 91/120 (75%), 1 steps/s, elapsed 0:01:30, ETA 0:00:29",
        "T training UNet done: 120/120 (100%), 1 steps/s, elapsed 0:01:59",
    ]
    assert stream.flushed == stream.getvalue()  # every line is flushed as it is written


def test_new_stage_closes_open_ones_and_a_repeated_stage_counts_afresh() -> None:
    plain, stream, now = reporter()
    plain.log("model: m (cached)")
    plain.progress("privacy metrics", 0, None)
    now[0] = 5
    plain.progress("generating", 2, 4)
    now[0] = 6
    plain.progress("generating", 4, 4)
    plain.progress("shards", 1, 2)
    now[0] = 8
    plain.progress("generating", 4, 4)  # the next shard's round: a new `done` line, timed from its own start
    plain.log("a copy was left out", warning=True)
    plain.finish()
    assert lines(stream) == [
        "T model: m (cached)",
        "T privacy metrics started",
        "T privacy metrics ended: elapsed 0:00:05",
        "T generating started: 2/4 (50%)",
        "T generating done: 4/4 (100%), 2 images/s, elapsed 0:00:01",
        "T shards started: 1/2 (50%)",
        "T generating done: 4/4 (100%), elapsed 0:00:00",
        "T warning: a copy was left out",
        "T shards ended: 1/2 (50%), elapsed 0:00:02",
    ]


def test_reporters_give_screen_and_log_the_same_lines_whatever_their_clocks() -> None:
    """Each plain reporter reading its own clock could stamp a line a second later or print another rate."""
    from io import StringIO

    ticks = iter(range(1, 1000))
    streams = [StringIO(), StringIO()]
    plain = [
        PlainReporter(stream, every=0, clock=lambda: float(next(ticks)), stamp=lambda: f"S{next(ticks)}")
        for stream in streams
    ]
    both = Reporters(plain)
    both.log("hello")
    for done in range(1, 4):
        both.progress("training UNet", done, 3)
    both.finish()
    first, second = (stream.getvalue().splitlines() for stream in streams)
    assert first == second and len(first) == 5 and "steps/s" in first[-1]


def test_reporters_fan_out_and_the_period_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, a, _ = reporter()
    second, b, _ = reporter()
    both = Reporters([first, second])
    both.log("hello")
    both.progress("training VAE", 1, 2)
    both.finish()
    assert lines(a) == lines(b) and len(lines(a)) == 3
    assert duration(3725) == "1:02:05"
    monkeypatch.delenv("SYNTHGEN_PROGRESS_EVERY", raising=False)
    assert progress_every() == 30
    monkeypatch.setenv("SYNTHGEN_PROGRESS_EVERY", "2.5")
    assert progress_every() == 2.5 and progress_every("7", "--progress-every") == 7
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SynthgenError, match="--progress-every: must be a"):
            progress_every(bad, "--progress-every")
    with pytest.raises(SynthgenError, match="--log-file: .* is a folder"):
        open_log(tmp_path)
    log = open_log(tmp_path / "new" / "run.log")  # the folder is made; the file is appended to
    log.log("one")
    log.close()
    assert (tmp_path / "new" / "run.log").read_text().endswith(" one\n")


def test_a_terminal_gets_bars_and_anything_else_plain_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli_session.Session, "log", None)
    monkeypatch.setattr(cli_session, "console", Console(file=io.StringIO(), force_terminal=True))
    with cli_session.reporting() as chosen:
        assert [type(r).__name__ for r in chosen.reporters] == ["RichReporter"]
    monkeypatch.setattr(cli_session, "console", Console(file=io.StringIO(), force_terminal=False))
    log = open_log(tmp_path / "log.txt")
    monkeypatch.setattr(cli_session.Session, "log", log)
    with cli_session.reporting() as chosen:
        assert [type(r).__name__ for r in chosen.reporters] == ["PlainReporter", "PlainReporter"]
    log.close()
    assert "CPU thread" in (tmp_path / "log.txt").read_text()


def test_errors_reach_the_log_file_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(app, ["--log-file", str(log), "train", str(missing), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    text = log.read_text().splitlines()
    assert re.match(STAMP + r"synthgen \S+: train \(pid \d+, in /", text[0])
    assert re.match(STAMP + "error: .*missing.yaml", text[-1]) and len(text) == 2
    result = CliRunner().invoke(app, ["--log-file", str(tmp_path), "schema"])
    assert result.exit_code == 2 and "--log-file:" in result.output and "is a folder" in result.output
    result = CliRunner().invoke(app, ["--progress-every", "0", "schema"])
    assert result.exit_code == 2 and "--progress-every: must be a positive number" in result.output


@pytest.mark.slow
def test_train_without_a_terminal_writes_progress_lines_to_stderr_and_the_log_file(tmp_path: Path) -> None:
    """As under nohup: stdout and stderr are files, stdin is not a terminal."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TRAIN_RECIPE))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHGEN_PROGRESS_EVERY": "0.001"}
    env.pop("FORCE_COLOR", None)
    command = [SYNTHGEN, "--threads", "1", "--log-file", str(tmp_path / "train.log")]
    command += ["train", str(recipe), "--out", str(tmp_path / "model"), "--device", "cpu"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, timeout=600)
    err = (tmp_path / "stderr").read_text()
    assert done.returncode == 0, err
    progress = [line for line in err.splitlines() if "training" in line]
    assert progress and all(re.match(STAMP, line) for line in progress)
    assert any(re.search(r"training VAE started: 1/2", line) for line in progress)
    assert any(re.search(r"training UNet: \d/4 \(\d+%\), [\d.]+ steps/s, elapsed \S+, ETA \S+$", x) for x in progress)
    assert any(re.search(r"training UNet done: 4/4 \(100%\), [\d.]+ steps/s, elapsed", line) for line in progress)
    assert re.search(STAMP + "using 1 CPU thread$", err, re.M)
    log = (tmp_path / "train.log").read_text()
    assert all(line in log for line in progress)  # the same lines, timestamps included
    assert log.splitlines()[-1].endswith("train: finished")
    assert "saved" in (tmp_path / "stdout").read_text()
    info = json.loads((tmp_path / "model" / "synthgen_model.json").read_text())
    assert info["steps"] == {"vae": 2, "unet": 4} and info["budget"] is None


@pytest.mark.slow
def test_build_under_nohup_writes_progress_to_its_log(tmp_path: Path) -> None:
    """`nohup synthgen build recipe.yaml > run.log 2>&1`: training, generation and shards all show in run.log."""
    recipe = json.loads(json.dumps(TRAIN_RECIPE))
    recipe.update(sampling={"steps": 2, "batch_size": 2}, audit={"threshold": 0.99}, output={"dir": "out"})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHGEN_CACHE": str(tmp_path / "cache")}
    env.pop("FORCE_COLOR", None)
    nohup = [shutil.which("nohup")] if shutil.which("nohup") else []
    with open(tmp_path / "run.log", "w") as log:
        command = [*nohup, SYNTHGEN, "build", "recipe.yaml"]
        done = subprocess.run(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    text = (tmp_path / "run.log").read_text()
    assert done.returncode == 0, text
    for stage in ("training VAE done: 2/2", "training UNet done: 4/4", "generating done: 1/1", "shards done: 1/1"):
        assert re.search(STAMP + re.escape(stage), text, re.M), stage
    assert re.search(STAMP + r"model: \S+ \(trained now\)$", text, re.M)
